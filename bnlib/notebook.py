"""Helpers for the chapters: show tested source, check agreement, time experiments."""

from __future__ import annotations

import inspect
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

__all__ = ["show_source", "source_of", "check_close", "check_that", "Stopwatch", "describe_environment"]


def source_of(obj: Any) -> str:
    """The source code of a bnlib function, class or method, as text."""
    try:
        return inspect.getsource(obj)
    except (TypeError, OSError) as error:
        raise TypeError(
            f"show_source expects a function, class or method defined in Python, got {type(obj).__name__} {obj!r}"
        ) from error


def show_source(obj: Any):
    """Render the tested source of ``obj`` as a highlighted code block.

    Chapters teach from bnlib's own code instead of copies of it. The result is
    an IPython Markdown object: it renders on the built site, in Jupyter, in
    Colab and in Binder; outside a notebook, its ``.data`` is the Markdown text.
    """
    try:
        from IPython.display import Markdown
    except ImportError as error:  # bnlib does not depend on IPython; every notebook kernel has it
        raise ImportError(
            "show_source renders in a notebook and needs IPython: pip install ipython "
            "(outside a notebook, use bnlib.notebook.source_of)"
        ) from error
    return Markdown(f"```python\n{source_of(obj).rstrip()}\n```")


def check_close(what: str, actual: Any, expected: Any, *, atol: float = 1e-6, rtol: float = 1e-5) -> float:
    """Print the largest difference between two arrays and raise when they disagree.

    Used wherever a chapter claims that two things agree, so a wrong result
    fails the build instead of printing quietly. Accepts NumPy arrays, torch
    tensors (any device) and anything ``np.asarray`` takes.

    Raises:
        ValueError: shapes differ, or some ``|actual - expected| > atol + rtol * |expected|``.

    Example:
        >>> check_close("ones", np.ones(3), np.ones(3) + 1e-9)
        ones: max |difference| = 1e-09 (tolerance atol=1e-06, rtol=1e-05): agree
        1e-09
    """
    a, e = _to_numpy(actual), _to_numpy(expected)
    if a.shape != e.shape:
        raise ValueError(f"{what}: shapes differ: {a.shape} vs {e.shape}")
    diff = np.abs(a.astype(np.float64) - e.astype(np.float64))
    worst = float(diff.max()) if diff.size else 0.0
    ok = bool(np.all(diff <= atol + rtol * np.abs(e.astype(np.float64))))
    print(  # noqa: T201  (this chapter helper exists to print the difference)
        f"{what}: max |difference| = {worst:.3g} (tolerance atol={atol:g}, rtol={rtol:g}): {'agree' if ok else 'DISAGREE'}"
    )
    if not ok:
        raise ValueError(f"{what}: the two results disagree (max |difference| = {worst:.3g})")
    return worst


def check_that(what: str, holds: Any, *, detail: str = "") -> None:
    """Print a claim with ``holds`` or ``DOES NOT HOLD``, and raise when it does not hold.

    The yes/no counterpart of :func:`check_close`, for claims that are not
    about numbers agreeing (this call raises, that layer uses batch
    statistics, ...). ``detail`` is printed after the claim.

    Raises:
        ValueError: ``holds`` is false.

    Example:
        >>> check_that("2 > 1", 2 > 1, detail="as expected")
        2 > 1: holds (as expected)
    """
    ok = bool(holds)
    suffix = f" ({detail})" if detail else ""
    print(f"{what}: {'holds' if ok else 'DOES NOT HOLD'}{suffix}")  # noqa: T201  (a chapter helper)
    if not ok:
        raise ValueError(f"{what}: does not hold{suffix}")


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
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


def describe_environment() -> str:
    """One line for a chapter's setup cell: bnlib version, device and run profile."""
    import torch

    from bnlib import __version__
    from bnlib.config import run_profile
    from bnlib.device import get_device

    return f"bnlib {__version__}, torch {torch.__version__}; device: {get_device()}; run profile: {run_profile()}"
