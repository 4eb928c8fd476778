"""Argument checks shared by bnlib's public functions and classes (private).

One rule per kind of argument, so that every entry point accepts and refuses
the same things with the same kind of message: what was received, what was
expected, and how to fix it.

* **Numbers**: Python ints and floats and NumPy scalars (``np.int64(3)``,
  ``np.float32(0.1)``) are numbers; ``bool`` is not (``True`` is not a
  channel count), nor is a string or a tensor.
* **Booleans**: a flag takes ``True``/``False`` (or ``np.bool_``) only: a
  truthy string such as ``'no'`` is refused rather than read as True.
* **Types**: a wrong type raises :class:`ArgumentTypeError`, which is a
  ``TypeError`` and also a ``ValueError`` (bnlib raised ValueError for these
  before this module existed, so ``except ValueError`` keeps working); a
  value of the right type out of range raises ``ValueError``.

Each check returns the value converted to the plain Python type (``int``,
``float``, ``bool``, ``torch.device``, ``np.ndarray``).

Example:
    >>> import numpy as np
    >>> positive_int(np.int64(3), "num_features"), probability(np.float32(0.5), "momentum")
    (3, 0.5)
    >>> boolean("no", "affine")
    Traceback (most recent call last):
    ...
    bnlib._checks.ArgumentTypeError: affine must be True or False, got 'no' (str); pass a bool, e.g. affine=False
"""

from __future__ import annotations

import math
import numbers
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = [
    "ArgumentTypeError",
    "positive_int",
    "nonnegative_int",
    "finite_float",
    "positive_float",
    "nonnegative_float",
    "fraction",
    "probability",
    "boolean",
    "device",
    "array_like",
]


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type: a TypeError, and a ValueError for code written before the checks were shared."""


def _fix(hint: str) -> str:
    return f"; {hint}" if hint else ""


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} ({type(value).__name__})"


def _is_integer(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value: Any) -> bool:
    return isinstance(value, (numbers.Real, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def positive_int(value: Any, name: str, *, hint: str = "") -> int:
    """An integer ``>= 1`` (Python or NumPy), returned as ``int``.

    Example:
        >>> positive_int(0, "num_groups")
        Traceback (most recent call last):
        ...
        ValueError: num_groups must be a positive integer, got 0 (int)
    """
    if not _is_integer(value):
        raise ArgumentTypeError(f"{name} must be a positive integer, got {_describe(value)}{_fix(hint)}")
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {_describe(value)}{_fix(hint)}")
    return int(value)


def nonnegative_int(value: Any, name: str, *, hint: str = "") -> int:
    """An integer ``>= 0`` (Python or NumPy), returned as ``int``.

    Example:
        >>> nonnegative_int(np.uint8(0), "warmup_steps")
        0
    """
    if not _is_integer(value):
        raise ArgumentTypeError(f"{name} must be a non-negative integer, got {_describe(value)}{_fix(hint)}")
    if value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {_describe(value)}{_fix(hint)}")
    return int(value)


def _real(value: Any, name: str, expected: str, hint: str) -> float:
    if not _is_real(value):
        raise ArgumentTypeError(f"{name} must be {expected}, got {_describe(value)}{_fix(hint)}")
    result = float(value)
    if not math.isfinite(result):
        raise ValueError(f"{name} must be {expected} (finite), got {_describe(value)}{_fix(hint)}")
    return result


def finite_float(value: Any, name: str, *, hint: str = "") -> float:
    """A finite real number of any sign (int, float or NumPy scalar), returned as ``float``.

    Example:
        >>> finite_float(np.int64(-2), "bias")
        -2.0
    """
    return _real(value, name, "a finite number", hint)


def positive_float(value: Any, name: str, *, hint: str = "") -> float:
    """A finite real number ``> 0`` (int, float or NumPy scalar), returned as ``float``.

    Example:
        >>> positive_float(float("inf"), "eps", hint="e.g. 1e-5")
        Traceback (most recent call last):
        ...
        ValueError: eps must be a positive number (finite), got inf (float); e.g. 1e-5
    """
    result = _real(value, name, "a positive number", hint)
    if not result > 0:
        raise ValueError(f"{name} must be a positive number, got {_describe(value)}{_fix(hint)}")
    return result


def nonnegative_float(value: Any, name: str, *, hint: str = "") -> float:
    """A finite real number ``>= 0``, returned as ``float``.

    Example:
        >>> nonnegative_float(np.float32(0.0), "d_max")
        0.0
    """
    result = _real(value, name, "a number >= 0", hint)
    if result < 0:
        raise ValueError(f"{name} must be a number >= 0, got {_describe(value)}{_fix(hint)}")
    return result


def fraction(value: Any, name: str, *, hint: str = "") -> float:
    """A real number strictly between 0 and 1 (a share of something that leaves some on each side).

    Example:
        >>> fraction(1.0, "validation_split")
        Traceback (most recent call last):
        ...
        ValueError: validation_split must be a fraction strictly between 0 and 1, got 1.0 (float)
    """
    result = _real(value, name, "a fraction strictly between 0 and 1", hint)
    if not 0.0 < result < 1.0:
        raise ValueError(f"{name} must be a fraction strictly between 0 and 1, got {_describe(value)}{_fix(hint)}")
    return result


def probability(value: Any, name: str, *, hint: str = "") -> float:
    """A real number in ``[0, 1]`` (both ends allowed), returned as ``float``.

    Example:
        >>> probability(1.5, "p")
        Traceback (most recent call last):
        ...
        ValueError: p must be in [0, 1], got 1.5 (float)
    """
    result = _real(value, name, "in [0, 1]", hint)
    if not 0.0 <= result <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {_describe(value)}{_fix(hint)}")
    return result


def boolean(value: Any, name: str, *, hint: str = "") -> bool:
    """``True`` or ``False`` (``np.bool_`` too); anything else, truthy or not, is refused.

    Example:
        >>> boolean(np.True_, "affine"), boolean(False, "affine")
        (True, False)
    """
    if not isinstance(value, (bool, np.bool_)):
        fix = f"pass a bool, e.g. {name}=False" + (f" ({hint})" if hint else "")
        raise ArgumentTypeError(f"{name} must be True or False, got {_describe(value)}; {fix}")
    return bool(value)


def device(value: Any, name: str = "device") -> torch.device | None:
    """``None``, a ``torch.device`` or a device string (``"cpu"``, ``"cuda:0"``), returned as ``torch.device``.

    Example:
        >>> device("cpu"), device(None)
        (device(type='cpu'), None)
        >>> device("gpu")
        Traceback (most recent call last):
        ...
        ValueError: device must name a torch device such as 'cpu', 'cuda' or 'cuda:0', got 'gpu' (str)...
    """
    import torch

    if value is None:
        return None
    if isinstance(value, torch.device):
        return value
    if not isinstance(value, str):
        raise ArgumentTypeError(
            f"{name} must be None, a string such as 'cpu' or a torch.device, got {_describe(value)}"
        )
    try:
        return torch.device(value)
    except RuntimeError as error:
        raise ValueError(
            f"{name} must name a torch device such as 'cpu', 'cuda' or 'cuda:0', got {_describe(value)} ({error})"
        ) from None


def array_like(value: Any, name: str, *, ndim: int | None = None, finite: bool = True) -> np.ndarray:
    """A real-valued array (list, tuple, NumPy array or CPU tensor), returned as a NumPy array.

    Refused: strings and other non-numeric data (a ``TypeError``), complex
    numbers, the wrong number of dims, and (with ``finite=True``) NaN or
    infinity, each with the position of the first bad entry.

    Example:
        >>> array_like([1, 2.5], "x")
        array([1. , 2.5])
        >>> array_like([1.0, float("nan")], "x")
        Traceback (most recent call last):
        ...
        ValueError: x must hold finite numbers, got NaN or infinity at index (1,) (1 of 2 entries)...
    """
    if isinstance(value, (str, bytes)) or value is None:
        raise ArgumentTypeError(f"{name} must be an array of numbers, got {_describe(value)}")
    if type(value).__module__.startswith("torch"):
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as error:  # ragged nested lists
        raise ValueError(f"{name} must be a rectangular array of numbers, got {_describe(value)} ({error})") from None
    if array.dtype.kind == "b" or array.dtype.kind not in "iuf":
        raise ArgumentTypeError(
            f"{name} must be an array of real numbers, got dtype {array.dtype} from {_describe(value)}; "
            "convert with np.asarray(x, dtype=float)"
        )
    if ndim is not None and array.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dim(s), got shape {array.shape}")
    array = array.astype(np.float64) if array.dtype.kind in "iu" else array
    if finite and not np.isfinite(array).all():
        bad = np.argwhere(~np.isfinite(array))
        raise ValueError(
            f"{name} must hold finite numbers, got NaN or infinity at index {tuple(int(i) for i in bad[0])} "
            f"({len(bad)} of {array.size} entries); remove or replace them first"
        )
    return array
