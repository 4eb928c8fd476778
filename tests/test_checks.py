"""bnlib._checks, the shared argument checks: NumPy scalars are numbers, flags take only bools, clear messages."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from bnlib import _checks
from bnlib.layers import BatchNorm
from bnlib.models import MLP, LeNet5, init_like_source


@pytest.mark.parametrize("value", [3, np.int64(3), np.int32(3), np.uint8(3)])
def test_integers_of_any_kind_are_counts(value):
    assert _checks.positive_int(value, "n") == 3 and type(_checks.positive_int(value, "n")) is int


@pytest.mark.parametrize("value", [0.1, np.float32(0.1), np.float64(0.1), 1, np.int64(1)])
def test_real_numbers_of_any_kind_are_numbers(value):
    assert _checks.probability(value, "p") == pytest.approx(float(value))
    assert type(_checks.positive_float(value, "x")) is float


@pytest.mark.parametrize(
    ("check", "value", "error", "shown"),
    [
        (_checks.positive_int, True, TypeError, "True (bool)"),
        (_checks.positive_int, np.True_, TypeError, "(bool"),
        (_checks.positive_int, 2.0, TypeError, "2.0 (float)"),
        (_checks.positive_int, "3", TypeError, "'3' (str)"),
        (_checks.positive_int, 0, ValueError, "0 (int)"),
        (_checks.nonnegative_int, -1, ValueError, "-1 (int)"),
        (_checks.positive_float, math.nan, ValueError, "nan (float)"),
        (_checks.positive_float, math.inf, ValueError, "inf (float)"),
        (_checks.positive_float, 0.0, ValueError, "0.0 (float)"),
        (_checks.positive_float, torch.tensor(1.0), TypeError, "(Tensor)"),
        (_checks.positive_float, 1 + 2j, TypeError, "(complex)"),
        (_checks.nonnegative_float, -0.5, ValueError, "-0.5 (float)"),
        (_checks.finite_float, -math.inf, ValueError, "-inf (float)"),
        (_checks.fraction, 0.0, ValueError, "0.0 (float)"),
        (_checks.fraction, 1.0, ValueError, "1.0 (float)"),
        (_checks.probability, np.float32(np.nan), ValueError, "nan) (float32)"),
        (_checks.probability, 1.5, ValueError, "1.5 (float)"),
        (_checks.boolean, "no", TypeError, "'no' (str)"),
        (_checks.boolean, 0, TypeError, "0 (int)"),
        (_checks.boolean, None, TypeError, "None (NoneType)"),
    ],
)
def test_each_check_says_what_it_received_and_expected(check, value, error, shown):
    with pytest.raises(error, match=r"x must be .*got .*" + re.escape(shown)):
        check(value, "x")


def test_wrong_types_are_type_errors_that_old_except_clauses_still_catch():
    with pytest.raises(TypeError) as caught:
        _checks.positive_int("3", "num_features")
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, _checks.ArgumentTypeError)
    with pytest.raises(ValueError, match="hint here"):
        _checks.positive_float(-1, "eps", hint="hint here")


def test_device_and_array_like():
    assert _checks.device("cpu") == torch.device("cpu") and _checks.device(None) is None
    assert _checks.device(torch.device("meta")).type == "meta"
    with pytest.raises(ValueError, match="device must name a torch device.*'gpu'"):
        _checks.device("gpu")
    with pytest.raises(TypeError, match=r"device must be None, a string.*3 \(int\)"):
        _checks.device(3)
    np.testing.assert_array_equal(_checks.array_like(torch.tensor([1, 2]), "x"), [1.0, 2.0])
    assert _checks.array_like([[1, 2], [3, 4]], "x", ndim=2).dtype == np.float64
    for bad, error, message in [
        ("abc", TypeError, "array of numbers, got 'abc'"),
        ([True, False], TypeError, "real numbers, got dtype bool"),
        ([1 + 1j], TypeError, "real numbers, got dtype complex"),
        ([[1, 2], [3]], ValueError, "rectangular array"),
        ([1.0, math.inf], ValueError, r"NaN or infinity at index \(1,\)"),
        ([1.0, 2.0], ValueError, r"must have 2 dim\(s\), got shape \(2,\)"),
    ]:
        with pytest.raises(error, match=message):
            _checks.array_like(bad, "x", ndim=2 if "dim" in message else None)
    assert np.isnan(_checks.array_like([math.nan], "x", finite=False)).all()


def test_layers_and_models_use_them():
    # The examples: a false refusal of NumPy scalars, and flags that took any truthy value.
    layer = BatchNorm(np.int64(3), momentum=np.float32(0.1))
    assert layer.momentum == pytest.approx(0.1) and layer.num_features == 3
    with pytest.raises(TypeError, match="affine must be True or False, got 'no'"):
        BatchNorm(3, affine="no")
    with pytest.raises(TypeError, match="softmax_output must be True or False, got 'no' \\(str\\)"):
        LeNet5(softmax_output="no")  # 'no' is truthy: it switched the double-softmax bug on
    assert isinstance(LeNet5(softmax_output=np.False_).output, torch.nn.Identity)
    assert LeNet5(num_classes=np.int64(3))(torch.zeros(2, 1, 32, 32)).shape == (2, 3)
    for bad, message in [
        (lambda: LeNet5(num_classes="10"), "num_classes must be a positive integer, got '10'"),
        (lambda: LeNet5(in_channels=0), "in_channels must be a positive integer, got 0"),
        (lambda: MLP((784, 2.5, 10)), r"sizes\[1\] must be a positive integer, got 2.5"),
        (lambda: MLP(784), "sizes must be a sequence of layer widths"),
        (lambda: init_like_source(LeNet5(), bias=math.nan), "bias must be a finite number"),
    ]:
        with pytest.raises(ValueError, match=message):
            bad()
    with pytest.raises(TypeError, match="LeNet5 expects a tensor of images"):
        LeNet5()("abc")
    assert MLP((np.int64(4), 3, 2))(torch.zeros(1, 4)).shape == (1, 2)
