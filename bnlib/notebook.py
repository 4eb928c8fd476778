"""Helpers for the chapters: show tested source, check agreement, time experiments."""

from __future__ import annotations

import ast
import html
import inspect
import math
import os
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

__all__ = [
    "show_source",
    "source_core",
    "source_html",
    "source_of",
    "check_close",
    "check_that",
    "Stopwatch",
    "describe_environment",
    "expected_cost",
    "MEASURED_SECONDS",
    "MEASURED_HOW",
    "CHAPTERS",
]


def source_of(obj: Any) -> str:
    """The source code of a bnlib function, class or method, as text."""
    try:
        return inspect.getsource(obj)
    except (TypeError, OSError) as error:
        raise TypeError(
            f"show_source expects a function, class or method defined in Python, got {type(obj).__name__} {obj!r}"
        ) from error


def _is_check_call(node: ast.AST) -> bool:
    """A call of a check: ``check_x(...)``, ``_check_x(...)``, ``self._check(...)``, anything in ``_checks``."""
    if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)):
        return False
    func = node.value.func
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "_checks":
        return True  # bnlib._checks: the shared argument checks
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    return name.startswith(("check_", "_check"))


def _raises_only(body: list[ast.stmt]) -> bool:
    """The block ends in ``raise`` and before it only builds the message (assignments, calls)."""
    return (
        bool(body)
        and isinstance(body[-1], ast.Raise)
        and all(isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.Expr)) for stmt in body[:-1])
    )


def _is_argument_check(node: ast.AST) -> bool:
    """``if ...: raise ...`` (an ``elif``/``else`` that only raises too), or a bare check call."""
    if isinstance(node, ast.If):
        if not _raises_only(node.body):
            return False
        orelse = node.orelse
        return not orelse or (len(orelse) == 1 and _is_argument_check(orelse[0])) or _raises_only(orelse)
    return _is_check_call(node)


def _is_checked_argument(node: ast.AST) -> bool:
    """``x = check_x(..., x, ...)``: an argument replaced by its checked (or converted) self."""
    if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
        return False
    if not _is_check_call(ast.Expr(value=node.value)):
        return False
    target = node.targets[0].id
    return any(isinstance(arg, ast.Name) and arg.id == target for arg in node.value.args)


def _is_docstring(node: ast.AST) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def source_core(obj: Any) -> str:
    """The part of ``obj``'s source a lesson reads: no docstrings, no argument checks.

    Drops every docstring (of the function or class and of the methods in it),
    every ``if ...: raise ...`` block, every bare call of a check
    (``check_*(...)``, ``_check*(...)``, also as an attribute such as
    ``self._check_input(x)``, or any function of ``bnlib._checks``) and every
    ``x = check(x, ...)`` that replaces an argument by its checked self; keeps
    everything else, comments included. A body
    left empty reads ``...``. :func:`show_source` shows this and folds the
    full tested source (:func:`source_of`) behind a click.

    Example:
        >>> def scale(x, factor):
        ...     \"\"\"Multiply x by factor.\"\"\"
        ...     if factor <= 0:
        ...         raise ValueError("factor must be positive")
        ...     check_finite(x)
        ...     return x * factor  # the formula
        >>> print(source_core(scale))
        def scale(x, factor):
            return x * factor  # the formula
    """
    source = textwrap.dedent(source_of(obj))
    lines = source.splitlines()
    try:
        tree = ast.parse(source)
    except SyntaxError:  # a lambda or a fragment inspect cut oddly: show it whole
        return source.rstrip()
    drop: set[int] = set()  # 0-based line numbers
    stub: dict[int, str] = {}  # where a function or class body left empty gets "..."

    def removable(node: ast.stmt, index: int) -> bool:
        return (index == 0 and _is_docstring(node)) or _is_argument_check(node) or _is_checked_argument(node)

    def visit(body: list[ast.stmt], *, can_vanish: bool) -> bool:
        """Mark what to drop in ``body``; True when all of it goes (a block that only checked)."""
        removed = []
        for index, node in enumerate(body):
            if removable(node, index):
                removed.append(node)
                continue
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                visit(node.body, can_vanish=False)
            elif isinstance(node, ast.If):
                body_gone = visit(node.body, can_vanish=True)
                else_gone = visit(node.orelse, can_vanish=True) if node.orelse else True
                if body_gone and else_gone:
                    removed.append(node)
                elif else_gone and node.orelse:
                    _drop_else(node)
            else:
                for field in ("body", "orelse", "finalbody"):
                    inner = getattr(node, field, None)
                    if isinstance(inner, list) and inner and isinstance(inner[0], ast.stmt):
                        visit(inner, can_vanish=False)
                for handler in getattr(node, "handlers", []):
                    visit(handler.body, can_vanish=False)
        for node in removed:
            drop.update(range(node.lineno - 1, node.end_lineno))
        everything = len(removed) == len(body)
        if everything and not can_vanish:
            stub[body[0].lineno - 1] = " " * body[0].col_offset + "..."
        return everything

    def _drop_else(node: ast.If) -> None:
        """Drop the ``else:``/``elif`` lines of ``node`` whose branch only checked."""
        begin = node.orelse[0].lineno - 1
        if not lines[begin].lstrip().startswith(("elif", "else")):  # the body starts on the line after "else:"
            begin -= 1
            while begin > node.body[-1].end_lineno - 1 and not lines[begin].strip().startswith("else"):
                begin -= 1
        drop.update(range(begin, node.orelse[-1].end_lineno))

    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            visit(node.body, can_vanish=False)
    kept: list[str] = []
    for number, line in enumerate(lines):
        if number in stub:
            kept.append(stub[number])
        if number in drop:
            continue
        if not line.strip() and (not kept or not kept[-1].strip() or kept[-1].rstrip().endswith(":")):
            continue  # one blank line where a dropped block leaves two, none right after a header
        kept.append(line)
    return "\n".join(kept).rstrip()


def _highlight(code: str) -> str:
    """``code`` as an HTML ``<pre>`` block, highlighted with inline styles (no stylesheet needed) when Pygments is there."""
    try:
        from pygments import highlight
        from pygments.formatters import HtmlFormatter
        from pygments.lexers import PythonLexer
    except ImportError:  # pragma: no cover - every notebook kernel has Pygments (IPython depends on it)
        return f'<pre class="bnlib-code">{html.escape(code)}</pre>'
    return highlight(code, PythonLexer(), HtmlFormatter(noclasses=True, nowrap=False, cssclass="bnlib-code"))


def _qualified_name(obj: Any) -> str:
    module = getattr(obj, "__module__", None) or ""
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or type(obj).__name__
    return f"{module}.{name}" if module else name


def source_html(obj: Any) -> str:
    """The HTML :func:`show_source` renders: the core, then the full tested source inside ``<details>``."""
    full = source_of(obj).rstrip()
    core = source_core(obj)
    n = len(full.splitlines())
    name = html.escape(_qualified_name(obj))
    note = "docstring and argument checks left out" if core != textwrap.dedent(full).rstrip() else "the whole source"
    return (
        f'<div class="bnlib-source">'
        f'<p class="bnlib-source-title" style="margin:0 0 0.25em;font-size:0.9em">'
        f"<code>{name}</code> ({note})</p>"
        f"{_highlight(core)}"
        f"<details><summary>full tested source ({n} lines)</summary>"
        f"{_highlight(textwrap.dedent(full))}</details></div>"
    )


def show_source(obj: Any):
    """Render the part of ``obj``'s tested source a lesson needs, the whole of it one click away.

    Chapters teach from bnlib's own code instead of copies of it. The
    rendering shows :func:`source_core` (no docstrings, no ``if ...: raise``
    argument checks, no bare ``check_*`` calls: the formula lines and the
    forward) highlighted, and below it the full tested source folded in an
    HTML ``<details>`` element ("full tested source (N lines)"). The result is
    an IPython HTML object: it renders on the built site (MyST-NB keeps
    ``text/html`` outputs), in Jupyter, in Colab and in Binder; its ``.data``
    is the HTML text. Outside a notebook use :func:`source_core` or
    :func:`source_of`.
    """
    try:
        from IPython.display import HTML
    except ImportError as error:  # bnlib does not depend on IPython; every notebook kernel has it
        raise ImportError(
            "show_source renders in a notebook and needs IPython: pip install ipython "
            "(outside a notebook, use bnlib.notebook.source_core or source_of)"
        ) from error
    return HTML(source_html(obj))


def _what(what: Any, name: str = "what") -> str:
    if not isinstance(what, str) or not what.strip():
        raise TypeError(
            f"{name} must be a non-empty string naming what is checked, got {what!r} ({type(what).__name__})"
        )
    return what


def _tolerance(value: Any, name: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__}); e.g. {name}=1e-6")
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {number!r}; e.g. {name}=1e-6")
    return number


def _numbers(x: Any, what: str, which: str) -> np.ndarray:
    """``x`` as a NumPy array of finite numbers, or an error that says which side is wrong and where."""
    try:
        array = _to_numpy(x)
    except (TypeError, ValueError) as error:  # a ragged list, an object NumPy cannot read
        raise TypeError(
            f"{what}: {which} cannot be read as an array of numbers ({error}); got {type(x).__name__}"
        ) from error
    if array.dtype.kind not in "biufc":
        raise TypeError(
            f"{what}: {which} must be numbers (an array, tensor or number), got {type(x).__name__} of dtype {array.dtype}"
        )
    if array.size == 0:
        raise ValueError(f"{what}: {which} is empty (shape {array.shape}); there is nothing to compare")
    if array.dtype.kind in "fc":
        bad = ~np.isfinite(array)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"{what}: {which} has {int(bad.sum())} NaN or infinite value(s) of {array.size} "
                f"(first at index {first}: {array[first] if array.ndim else array.item()}); "
                "a NaN never agrees with anything: find where it comes from"
            )
    return array


def check_close(what: str, actual: Any, expected: Any, *, atol: float = 1e-6, rtol: float = 1e-5) -> float:
    """Print the largest difference between two arrays and raise when they disagree.

    Used wherever a chapter claims that two things agree, so a wrong result
    fails the build instead of printing quietly. Accepts NumPy arrays, torch
    tensors (any device) and anything ``np.asarray`` takes.

    Formula: agree when every ``|actual - expected| <= atol + rtol * |expected|``
    (as ``numpy.isclose``, but never agreeing on a NaN or an infinity).

    Raises:
        ValueError: shapes differ, an array is empty or holds NaN/inf (a NaN
            compares false with everything, so it would otherwise look like
            agreement), a tolerance is negative or not finite, or the arrays
            disagree.
        TypeError: ``what`` is not a string, a tolerance is not a number, or
            an array does not hold numbers.

    Example:
        >>> check_close("ones", np.ones(3), np.ones(3) + 1e-9)
        ones: max |difference| = 1e-09 (tolerance atol=1e-06, rtol=1e-05): agree
        1e-09
    """
    what = _what(what)
    atol, rtol = _tolerance(atol, "atol"), _tolerance(rtol, "rtol")
    a, e = _numbers(actual, what, "actual"), _numbers(expected, what, "expected")
    if a.shape != e.shape:
        raise ValueError(f"{what}: shapes differ: {a.shape} vs {e.shape}")
    a = a.astype(np.complex128 if a.dtype.kind == "c" else np.float64)
    e = e.astype(np.complex128 if e.dtype.kind == "c" else np.float64)
    with np.errstate(over="ignore"):  # finite float64 differences can overflow to inf: that is a disagreement
        diff = np.abs(a - e)
        bound = atol + rtol * np.abs(e)
    worst = float(diff.max())
    ok = bool(np.all(diff <= bound))
    print(  # noqa: T201  (this chapter helper exists to print the difference)
        f"{what}: max |difference| = {worst:.3g} (tolerance atol={atol:g}, rtol={rtol:g}): {'agree' if ok else 'DISAGREE'}"
    )
    if not ok:
        raise ValueError(f"{what}: the two results disagree (max |difference| = {worst:.3g})")
    return worst


def _truth(holds: Any, what: str) -> bool:
    """``holds`` as a bool: True/False, np.bool_, or a one-element boolean array or tensor; nothing truthy."""
    if isinstance(holds, (bool, np.bool_)):
        return bool(holds)
    array = _to_numpy(holds) if hasattr(holds, "detach") or isinstance(holds, np.ndarray) else None
    if array is not None and array.dtype.kind == "b" and array.size == 1:
        return bool(array.item())
    shape = f" of shape {tuple(array.shape)} and dtype {array.dtype}" if array is not None else ""
    raise TypeError(
        f"{what}: holds must be True or False, got {type(holds).__name__}{shape} ({holds!r:.60}); "
        "pass a comparison, e.g. a < b, or (array == other).all() for arrays"
    )


def check_that(what: str, holds: Any, *, detail: str = "") -> None:
    """Print a claim with ``holds`` or ``DOES NOT HOLD``, and raise when it does not hold.

    The yes/no counterpart of :func:`check_close`, for claims that are not
    about numbers agreeing (this call raises, that layer uses batch
    statistics, ...). ``detail`` is printed after the claim.

    ``holds`` must be a boolean (``bool``, ``np.bool_``, or a one-element
    boolean array or tensor): a number, a string or a list would be read as
    true whenever it is non-empty or non-zero, NaN included, so it is refused.

    Raises:
        ValueError: ``holds`` is false.
        TypeError: ``holds`` is not a boolean, or ``what``/``detail`` is not a string.

    Example:
        >>> check_that("2 > 1", 2 > 1, detail="as expected")
        2 > 1: holds (as expected)
    """
    what = _what(what)
    if not isinstance(detail, str):
        raise TypeError(f"{what}: detail must be a string, got {detail!r} ({type(detail).__name__})")
    ok = _truth(holds, what)
    suffix = f" ({detail})" if detail else ""
    print(f"{what}: {'holds' if ok else 'DOES NOT HOLD'}{suffix}")  # noqa: T201  (a chapter helper)
    if not ok:
        raise ValueError(f"{what}: does not hold{suffix}")


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":  # NumPy has no bfloat16
            x = x.float()
        x = x.numpy()
    elif hasattr(x, "numpy") and not isinstance(x, np.ndarray):
        x = x.numpy()
    return np.asarray(x)


class Stopwatch:
    """Times named experiments in a chapter and reports them.

    Example:
        >>> watch = Stopwatch()
        >>> with watch("nothing"):
        ...     pass
        >>> list(watch.seconds)
        ['nothing']
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        """Time the block under ``name`` (times of the same name add up)."""
        _what(name, "name")
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def report(self) -> str:
        """A table of the seconds per name and their total."""
        total = sum(self.seconds.values())
        lines = [f"{name:<40s} {secs:8.1f} s" for name, secs in self.seconds.items()]
        return "\n".join([*lines, f"{'total':<40s} {total:8.1f} s"])


CHAPTERS: tuple[str, ...] = (
    "01_normalization",
    "02_batch_norm",
    "03_lenet5_pytorch",
    "04_keras_cnns",
    "05_variants",
    "06_why_bn_works",
    "07_practice",
    "08_claims",
)

# Measured wall-clock seconds of each chapter, per run profile and kind of runtime: "cpu" is a 2-core CPU
# (this project's machines and CI), "gpu" a single GPU (a Colab GPU runtime). None: not measured yet.
# Each value must come from a run of the chapter as it is now (the Stopwatch total, or the time of the
# whole notebook), with MEASURED_HOW saying which run; a changed chapter or profile makes its value stale.
MEASURED_SECONDS: dict[tuple[str, str], dict[str, float | None]] = {
    ("smoke", "cpu"): {  # scripts/run_chapter.py, whole notebook, 2026-12-02, one chapter at a time
        "01_normalization": 14.2,
        "02_batch_norm": 23.0,
        "03_lenet5_pytorch": 16.1,
        "04_keras_cnns": 39.1,
        "05_variants": 22.0,
        "06_why_bn_works": 19.0,
        "07_practice": 19.0,
        "08_claims": 4.7,
    },
    ("quick", "cpu"): dict.fromkeys(CHAPTERS),
    ("full", "cpu"): {  # scripts/run_chapter.py, whole notebook, 2026-12-02, one chapter at a time (README)
        "01_normalization": 40.1,
        "02_batch_norm": 737.6,
        "03_lenet5_pytorch": 2446.8,
        "04_keras_cnns": None,
        "05_variants": None,
        "06_why_bn_works": None,
        "07_practice": 269.3,
        "08_claims": None,
    },
    ("smoke", "gpu"): dict.fromkeys(CHAPTERS),
    ("quick", "gpu"): dict.fromkeys(CHAPTERS),
    ("full", "gpu"): dict.fromkeys(CHAPTERS),
}
MEASURED_HOW: dict[tuple[str, str], str] = {
    ("smoke", "cpu"): "whole notebook, one chapter at a time on an otherwise idle machine",
    ("full", "cpu"): "whole notebook, one chapter at a time on an otherwise idle machine",
}


def _runtime_kind(device: Any) -> str:
    return "cpu" if getattr(device, "type", str(device)) == "cpu" else "gpu"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _this_chapter() -> str | None:
    """The chapter this kernel runs, where the front end says so (Jupyter's session name, VS Code)."""
    names = [os.environ.get("JPY_SESSION_NAME", "")]
    try:
        from IPython import get_ipython

        shell = get_ipython()
        if shell is not None:
            names += [str(shell.user_ns.get(key, "")) for key in ("__session__", "__vsc_ipynb_file__")]
    except ImportError:
        pass
    for name in names:
        for chapter in CHAPTERS:
            if chapter in name:
                return chapter
    return None


def expected_cost(profile: str, runtime: str, chapter: str | None = None) -> str:
    """What a chapter (or each chapter) took when measured in ``profile`` on ``runtime`` ("cpu" or "gpu").

    Reads :data:`MEASURED_SECONDS`; a chapter never measured reads "not measured yet".

    Example:
        >>> expected_cost("quick", "gpu", "03_lenet5_pytorch")
        'this chapter in quick on a GPU: not measured yet'
    """
    if (profile, runtime) not in MEASURED_SECONDS:
        raise ValueError(
            f"expected_cost: no table for profile {profile!r} on runtime {runtime!r}; "
            f"profiles smoke, quick, full; runtimes cpu, gpu"
        )
    table = MEASURED_SECONDS[profile, runtime]
    where = "a 2-core CPU" if runtime == "cpu" else "a GPU"
    how = f" ({MEASURED_HOW[profile, runtime]})" if (profile, runtime) in MEASURED_HOW else ""
    if chapter is not None:
        if chapter not in table:
            raise ValueError(f"expected_cost: unknown chapter {chapter!r}; expected one of {', '.join(CHAPTERS)}")
        seconds = table[chapter]
        took = "not measured yet" if seconds is None else f"about {_duration(seconds)}{how}"
        return f"this chapter in {profile} on {where}: {took}"
    known = {c: t for c, t in table.items() if t is not None}
    if not known:
        return f"time per chapter in {profile} on {where}: not measured yet"
    parts = [f"{c[:2]} {_duration(t) if t is not None else '?'}" for c, t in table.items()]
    missing = " (? not measured yet)" if len(known) < len(table) else ""
    return f"time per chapter in {profile} on {where}{how}: {', '.join(parts)}{missing}"


def describe_environment() -> str:
    """What a chapter's setup cell prints: versions and device, the run profile, its cost here, how to change it.

    Three lines: bnlib, torch and the device; the run profile with its sizes and why
    it was chosen, and what this chapter (or each chapter) took when measured in that
    profile on this kind of runtime (:data:`MEASURED_SECONDS`, else "not measured
    yet"); how to pick another profile (``BNLIB_PROFILE`` in the environment, or in
    Colab ``os.environ["BNLIB_PROFILE"]`` before ``import bnlib``).

    As the setup cell's one call, it also makes pandas print table cells in full
    (``display.max_colwidth = None``; pandas cuts them at 50 characters otherwise,
    and a verdict table's claim must be readable), where pandas is installed.
    """
    import torch

    from bnlib import __version__
    from bnlib.config import run_profile
    from bnlib.device import get_device

    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is a dependency of the chapters, not of bnlib's core
        pass
    else:
        pd.set_option("display.max_colwidth", None)
    device = get_device()
    profile = run_profile()
    others = [name for name in ("smoke", "quick", "full") if name != profile.name]
    suggest = "full" if profile.name == "quick" else "quick"
    return "\n".join(
        [
            f"bnlib {__version__}, torch {torch.__version__}; device: {device}",
            f"run profile: {profile}",
            expected_cost(profile.name, _runtime_kind(device), _this_chapter()),
            (
                f"to pick another: BNLIB_PROFILE={' or '.join(others)} in the environment; in Colab, run "
                f'import os; os.environ["BNLIB_PROFILE"] = "{suggest}" before import bnlib '
                "(unset: full on a GPU runtime, quick on a CPU)"
            ),
        ]
    )
