"""bnlib.notebook: the chapters' helpers must fail loudly when a claimed agreement does not hold."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import bnlib
from bnlib.notebook import Stopwatch, check_close, check_that, show_source, source_of


def test_check_close_passes_within_tolerance_and_returns_the_difference(capsys):
    worst = check_close("close", torch.tensor([1.0, 2.0]), np.array([1.0, 2.0 + 1e-7]))
    assert worst == pytest.approx(1e-7, rel=1e-3)
    assert "agree" in capsys.readouterr().out


def test_check_close_raises_when_the_results_disagree(capsys):
    with pytest.raises(ValueError, match="disagree"):
        check_close("far", np.zeros(3), np.array([0.0, 0.0, 1e-3]), atol=1e-6, rtol=0)
    assert "DISAGREE" in capsys.readouterr().out
    with pytest.raises(ValueError, match="shapes differ"):
        check_close("shapes", np.zeros(3), np.zeros((3, 1)))


def test_check_that_raises_when_the_claim_does_not_hold(capsys):
    check_that("true claim", np.bool_(True))
    with pytest.raises(ValueError, match="false claim: does not hold"):
        check_that("false claim", False, detail="why")
    assert "DOES NOT HOLD (why)" in capsys.readouterr().out


def test_show_source_renders_the_tested_code():
    rendered = show_source(bnlib.min_max_normalize)
    assert rendered.data.startswith("```python\ndef min_max_normalize(")
    assert source_of(bnlib.min_max_normalize) in rendered.data
    with pytest.raises(TypeError, match="defined in Python"):
        source_of(len)


def test_stopwatch_adds_up_times_of_the_same_name():
    watch = Stopwatch()
    for _ in range(2):
        with watch("step"):
            pass
    with pytest.raises(RuntimeError), watch("failing"):
        raise RuntimeError
    assert set(watch.seconds) == {"step", "failing"}
    assert watch.report().splitlines()[-1].startswith("total")
