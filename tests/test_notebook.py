"""bnlib.notebook: the chapters' helpers must fail loudly when a claimed agreement does not hold."""

from __future__ import annotations

import html
import inspect
import re
import textwrap

import numpy as np
import pytest
import torch

import bnlib
from bnlib import _checks
from bnlib.notebook import Stopwatch, check_close, check_that, expected_cost, show_source, source_core, source_of


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


def _checked_scale(x, factor, *, name="x"):
    """Multiply ``x`` by ``factor``: a docstring the core leaves out."""
    if factor <= 0:
        raise ValueError(f"factor must be positive, got {factor}")
    elif factor > 1e6:  # noqa: RET506  (an elif that only raises: the core drops it too)
        message = f"factor {factor} is too large"
        raise ValueError(message)
    check_finite(x, name)
    x = _check_array(x)
    factor = _checks.positive_float(factor, "factor")
    if name:  # kept: not a check
        x = x + 0.0
    return x * factor  # the formula line


def check_finite(x, name):  # a stand-in for bnlib's checks, so the source above runs
    return x


def _check_array(x):
    return np.asarray(x)


class _Layer:
    """A class docstring the core leaves out."""

    def forward(self, x):
        """A method docstring."""
        self._check_input(x)
        if self.training:
            self.updates += 1
        elif x is None:
            raise TypeError("no input")
        return x

    def _check_input(self, x):
        if x is None:
            raise TypeError("no input")


def test_source_core_drops_docstrings_and_argument_checks_and_keeps_the_formula():
    core = source_core(_checked_scale)
    assert core.splitlines()[0] == 'def _checked_scale(x, factor, *, name="x"):'
    assert "return x * factor  # the formula line" in core
    assert "if name:  # kept: not a check" in core and "x = x + 0.0" in core
    for gone in (
        "docstring",
        "raise",
        "must be positive",
        "elif",
        "message",
        "check_finite",
        "_check_array",
        "_checks",
    ):
        assert gone not in core, f"{gone!r} should be left out of the core:\n{core}"
    layer = source_core(_Layer)
    assert "docstring" not in layer and "self._check_input(x)" not in layer and "elif" not in layer
    assert "self.updates += 1" in layer and "return x" in layer
    assert "def _check_input(self, x):\n        ..." in layer  # a body that only checked reads "..."


def test_source_core_is_the_whole_source_when_there_is_nothing_to_leave_out():
    def plain(x):
        return x + 1

    assert source_core(plain) == "def plain(x):\n    return x + 1"


def test_show_source_renders_the_core_and_folds_the_full_tested_source():
    pytest.importorskip("IPython")
    rendered = show_source(bnlib.min_max_normalize)
    page = rendered.data
    assert page.startswith('<div class="bnlib-source">') and "bnlib.preprocessing.min_max_normalize" in page
    core_html, folded = page.split("<details>", 1)
    assert folded.count("</details>") == 1 and page.rstrip().endswith("</details></div>")
    full = source_of(bnlib.min_max_normalize)
    assert f"<summary>full tested source ({len(full.splitlines())} lines)</summary>" in folded

    def text(fragment: str) -> str:  # the code as a reader sees it: tags off, entities decoded
        return html.unescape(re.sub(r"<[^>]+>", "", fragment))

    assert textwrap.dedent(full).strip() in text(folded), "the folded part must hold the whole tested source"
    docstring = inspect.getdoc(bnlib.min_max_normalize).splitlines()[0]
    assert docstring in text(folded) and docstring not in text(core_html)
    assert source_core(bnlib.min_max_normalize) in text(core_html)
    assert "def min_max_normalize(" in text(core_html)
    with pytest.raises(TypeError, match="defined in Python"):
        source_of(len)


def test_show_source_shortens_the_lessons_longest_sources():
    from bnlib.layers import BatchNorm
    from bnlib.training import fit

    for obj, at_most in ((fit, 0.6), (BatchNorm.forward, 1.0)):
        core, full = source_core(obj).splitlines(), source_of(obj).splitlines()
        assert len(core) <= at_most * len(full), f"{obj.__qualname__}: core {len(core)} of {len(full)} lines"
        assert '"""' not in "\n".join(core)
    assert "functional.normalize(" in source_core(BatchNorm.forward)


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


def test_describe_environment_says_the_profile_its_cost_and_how_to_pick_another(monkeypatch):
    monkeypatch.setenv("BNLIB_PROFILE", "smoke")
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    lines = bnlib.describe_environment().splitlines()
    assert lines[0].startswith(f"bnlib {bnlib.__version__}, torch ")
    assert lines[1].startswith("run profile: smoke (train 1,024 images")
    assert lines[2].startswith("time per chapter in smoke on a ")
    assert (
        "BNLIB_PROFILE=quick or full" in lines[3]
        and 'os.environ["BNLIB_PROFILE"] = "quick" before import bnlib' in lines[3]
    )
    pd = pytest.importorskip("pandas")
    assert pd.get_option("display.max_colwidth") is None, "verdict tables must print their cells in full"
    pd.reset_option("display.max_colwidth")
    monkeypatch.setenv("JPY_SESSION_NAME", "/home/reader/book/03_lenet5_pytorch.ipynb")
    assert "this chapter in smoke on a " in bnlib.describe_environment()
    pd.reset_option("display.max_colwidth")


def test_expected_cost_reads_the_measured_table(monkeypatch):
    from bnlib import notebook

    table = dict.fromkeys(notebook.CHAPTERS)
    table["01_normalization"] = 42.0
    table["03_lenet5_pytorch"] = 5400.0
    monkeypatch.setitem(notebook.MEASURED_SECONDS, ("quick", "cpu"), table)
    monkeypatch.setitem(notebook.MEASURED_HOW, ("quick", "cpu"), "a test")
    assert (
        expected_cost("quick", "cpu", "01_normalization")
        == "this chapter in quick on a 2-core CPU: about 42 s (a test)"
    )
    assert expected_cost("quick", "cpu", "03_lenet5_pytorch").endswith("about 1.5 h (a test)")
    assert expected_cost("quick", "cpu", "02_batch_norm").endswith("not measured yet")
    summary = expected_cost("quick", "cpu")
    assert "01 42 s, 02 ?, 03 1.5 h" in summary and "(? not measured yet)" in summary
    assert expected_cost("full", "gpu") == "time per chapter in full on a GPU: not measured yet"
    with pytest.raises(ValueError, match="unknown chapter '99_x'"):
        expected_cost("quick", "cpu", "99_x")
    with pytest.raises(ValueError, match="no table for profile 'fast'"):
        expected_cost("fast", "cpu")


def test_the_measured_table_names_every_chapter_of_the_book():
    from pathlib import Path

    from bnlib import notebook

    book = Path(__file__).resolve().parents[1] / "book"
    assert tuple(sorted(p.stem for p in book.glob("[0-9][0-9]_*.md"))) == notebook.CHAPTERS
    for key, table in notebook.MEASURED_SECONDS.items():
        assert tuple(table) == notebook.CHAPTERS, key
        assert all(t is None or t > 0 for t in table.values()), key
        assert any(t is not None for t in table.values()) <= (key in notebook.MEASURED_HOW), (
            f"{key}: say how the times were measured (MEASURED_HOW)"
        )
