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


@pytest.mark.parametrize(
    ("actual", "expected", "where"),
    [
        (np.array([1.0, np.nan]), np.array([1.0, 2.0]), "actual has 1 NaN"),
        (np.array([np.nan, np.nan]), np.array([np.nan, np.nan]), "actual has 2 NaN"),  # equal NaNs do not agree
        (
            torch.tensor([1.0, float("inf")]),
            np.array([1.0, float("inf")]),
            r"actual has 1 NaN or infinite value\(s\) of 2 \(first at index \(1,\): inf\)",
        ),
        (np.ones(2), np.array([1.0, -np.inf]), "expected has 1 NaN"),
        (float("nan"), 0.0, "actual has 1 NaN"),
    ],
)
def test_check_close_fails_loudly_on_nan_and_inf(capsys, actual, expected, where):
    # NaN compares false with everything, so "no difference above the tolerance" must not read as agreement.
    with pytest.raises(ValueError, match=where):
        check_close("poisoned", actual, expected, atol=1.0, rtol=1.0)
    assert "agree" not in capsys.readouterr().out


def test_check_close_disagrees_when_the_difference_overflows(capsys):
    with pytest.raises(ValueError, match="disagree"):
        check_close("huge", np.array([1e308]), np.array([-1e308]), atol=1e300, rtol=0)
    assert "DISAGREE" in capsys.readouterr().out


def test_check_close_takes_numpy_scalars_and_integer_arrays(capsys):
    assert check_close("ints", np.arange(3), [0, 1, 2], atol=np.float32(0), rtol=np.float64(0)) == 0.0
    assert check_close("bfloat16", torch.ones(2, dtype=torch.bfloat16), np.ones(2)) == 0.0
    assert capsys.readouterr().out.count("agree") == 2


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"what": 3}, TypeError, "what must be a non-empty string"),
        ({"what": ""}, TypeError, "what must be a non-empty string"),
        ({"atol": float("nan")}, ValueError, "atol must be a finite number >= 0, got nan"),
        ({"atol": -1e-6}, ValueError, "atol must be a finite number >= 0, got -1e-06"),
        ({"rtol": float("inf")}, ValueError, "rtol must be a finite number >= 0, got inf"),
        ({"rtol": "1e-5"}, TypeError, "rtol must be a number, got '1e-5'"),
        ({"atol": True}, TypeError, r"atol must be a number, got True \(bool\)"),
        ({"actual": "abc"}, TypeError, "actual must be numbers"),
        ({"expected": None}, TypeError, "expected must be numbers"),
        ({"actual": [[1.0], [1.0, 2.0]]}, TypeError, "actual cannot be read as an array"),
        ({"actual": np.zeros(0), "expected": np.zeros(0)}, ValueError, "actual is empty"),
        ({"actual": np.zeros((2, 1))}, ValueError, "shapes differ"),
    ],
)
def test_check_close_refuses_malformed_input(kwargs, error, words):
    arguments = {"what": "x", "actual": np.zeros(2), "expected": np.zeros(2)} | kwargs
    what, actual, expected = arguments.pop("what"), arguments.pop("actual"), arguments.pop("expected")
    with pytest.raises(error, match=words):
        check_close(what, actual, expected, **arguments)


def test_check_that_takes_booleans_of_every_kind(capsys):
    check_that("bool", True)
    check_that("numpy bool", np.float64(1.0) > 0)
    check_that("0-d array", np.array(True))
    check_that("tensor", torch.tensor(2.0) > 1)
    with pytest.raises(ValueError, match="tensor false: does not hold"):
        check_that("tensor false", torch.tensor([False]))
    assert capsys.readouterr().out.count(": holds") == 4


@pytest.mark.parametrize(
    ("holds", "detail", "error", "words"),
    [
        (float("nan"), "", TypeError, r"holds must be True or False, got float \(nan\)"),
        (1, "", TypeError, "holds must be True or False, got int"),
        ("no", "", TypeError, "holds must be True or False, got str"),
        ([False], "", TypeError, "holds must be True or False, got list"),
        (None, "", TypeError, "holds must be True or False, got NoneType"),
        (np.array([True, False]), "", TypeError, r"got ndarray of shape \(2,\) and dtype bool.*\.all\(\)"),
        (torch.tensor([1.0]), "", TypeError, "got Tensor of shape"),
        (True, 3, TypeError, "detail must be a string"),
    ],
)
def test_check_that_refuses_what_is_not_a_boolean(capsys, holds, detail, error, words):
    with pytest.raises(error, match=words):
        check_that("claim", holds, detail=detail)
    assert "holds" not in capsys.readouterr().out  # nothing printed as if it had been judged
    with pytest.raises(TypeError, match="what must be a non-empty string"):
        check_that(None, True)


@pytest.mark.parametrize("name", [3, None, ""])
def test_stopwatch_names_are_strings(name):
    watch = Stopwatch()
    with pytest.raises(TypeError, match="name must be a non-empty string"), watch(name):
        pass
    assert watch.seconds == {}
