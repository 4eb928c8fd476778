"""History: the record both trainers return; add_epoch refuses what cannot be a loss, an accuracy or a duration."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bnlib.history import History


def test_add_epoch_takes_numbers_of_any_kind_and_nan_where_undefined():
    h = History()
    h.add_epoch(train_loss=np.float32(0.5), train_accuracy=torch.tensor(0.25), seconds=1)
    assert h.train_loss == [0.5] and h.train_accuracy == [0.25]
    assert math.isnan(h.val_loss[0]) and math.isnan(h.val_accuracy[0])
    h.add_epoch(train_loss=0.4, train_accuracy=math.nan, val_accuracy=1.0, seconds=0.0)
    assert h.epochs == 2


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"train_accuracy": 97.0}, ValueError, "fraction in \\[0, 1\\].*got 97.0.*divided by 100"),
        ({"val_accuracy": -0.1}, ValueError, "val_accuracy must be a fraction"),
        ({"seconds": -1.0}, ValueError, "seconds must be a finite duration"),
        ({"seconds": math.inf}, ValueError, "seconds must be a finite duration"),
        ({"train_loss": "0.5"}, TypeError, "train_loss must be a number, got str"),
        ({"train_accuracy": True}, TypeError, "train_accuracy must be a number, got bool"),
        ({"val_loss": [0.1]}, TypeError, "val_loss must be a number, got list"),
    ],
)
def test_add_epoch_refuses_what_cannot_be_an_epoch_and_appends_nothing(kwargs, error, match):
    h = History()
    with pytest.raises(error, match=match):
        h.add_epoch(**{"train_loss": 0.5, "train_accuracy": 0.5, "seconds": 1.0, **kwargs})
    assert h.epochs == 0 and h.seconds == [] and h.val_loss == []
