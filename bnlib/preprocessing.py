"""Min-max scaling and z-score standardization, vectorized and validated.

Both follow scikit-learn's conventions, so that ``MinMaxScaler`` and
``StandardScaler`` serve as references in the tests:

* statistics are taken over ``axis`` (``None``: the whole array; ``0`` on an
  (n_samples, n_features) table: one min/max or mean/std per feature, as the
  scalers do);
* the standard deviation is the population one (``ddof=0``);
* a constant slice (all values equal) maps to 0 instead of dividing by zero,
  because there is no spread to scale. The source tutorial divided by zero here
  and produced NaN.

Integer and boolean input give float64; floating input keeps its dtype.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["min_max_normalize", "z_score_normalize"]

Axis = int | tuple[int, ...] | None


def _validate(x: Any, axis: Axis, name: str) -> tuple[np.ndarray, Axis]:
    try:
        array = np.asarray(x)
    except Exception as error:  # ragged lists and the like
        raise TypeError(f"{name} expects a numeric array-like, got {type(x).__name__}: {error}") from error
    if array.dtype.kind not in "biuf":
        raise TypeError(
            f"{name} expects real numbers (bool, int or float), got dtype {array.dtype} "
            f"from {type(x).__name__}; convert with np.asarray(x, dtype=float)"
        )
    if array.ndim == 0:
        raise ValueError(f"{name} expects at least a 1-D array, got a scalar {array!r}; wrap it in a list")
    if array.size == 0:
        raise ValueError(f"{name} expects a non-empty array, got shape {array.shape}")
    if array.dtype.kind != "f":
        array = array.astype(np.float64)
    if not np.isfinite(array).all():
        bad = int(np.size(array) - np.isfinite(array).sum())
        raise ValueError(
            f"{name} expects finite values, got {bad} NaN or infinite value(s) in an array of shape "
            f"{array.shape}; drop or impute them first"
        )
    if axis is not None:
        axes = (axis,) if isinstance(axis, (int, np.integer)) else axis
        if not isinstance(axes, tuple) or not all(isinstance(a, (int, np.integer)) for a in axes):
            raise TypeError(f"{name}: axis must be None, an int or a tuple of ints, got {axis!r}")
        for a in axes:
            if not -array.ndim <= a < array.ndim:
                raise ValueError(
                    f"{name}: axis {a} is out of range for an array of shape {array.shape} "
                    f"({array.ndim}-D); use an axis in [-{array.ndim}, {array.ndim - 1}] or None"
                )
    return array, axis


def min_max_normalize(x: Any, axis: Axis = None) -> np.ndarray:
    """Rescale ``x`` linearly to [0, 1]: ``(x - min) / (max - min)``.

    Args:
        x: numeric array-like.
        axis: axis or axes the min and max are taken over; ``None`` (default)
            uses the whole array, ``0`` scales each column of a table separately.

    Returns:
        An array of the shape of ``x``; each slice's minimum maps to 0 and its
        maximum to 1. A constant slice maps to 0 (scikit-learn's convention).

    Raises:
        TypeError: non-numeric input. ValueError: empty, scalar or non-finite
        input, or an axis out of range.

    Example:
        >>> min_max_normalize([2.0, 4.0, 6.0])
        array([0. , 0.5, 1. ])
        >>> min_max_normalize([[1, 5], [3, 5]], axis=0)
        array([[0., 0.],
               [1., 0.]])
    """
    array, axis = _validate(x, axis, "min_max_normalize")
    low = array.min(axis=axis, keepdims=True)
    high = array.max(axis=axis, keepdims=True)
    span = high - low
    if not np.isfinite(span).all():  # max - min overflowed: halve everything first
        array, low, span = array / 2, low / 2, high / 2 - low / 2
    constant = span == 0
    return np.where(constant, 0.0, (array - low) / np.where(constant, 1.0, span)).astype(array.dtype, copy=False)


def z_score_normalize(x: Any, axis: Axis = None) -> np.ndarray:
    """Standardize ``x`` to mean 0 and standard deviation 1: ``(x - mean) / std``.

    Args:
        x: numeric array-like.
        axis: axis or axes the mean and std are taken over; ``None`` (default)
            uses the whole array, ``0`` standardizes each column separately.

    Returns:
        An array of the shape of ``x``. The std is the population one
        (``ddof=0``), computed in two passes (NumPy's ``std``); a constant slice
        maps to 0 (scikit-learn's ``StandardScaler`` convention).

    Raises:
        TypeError: non-numeric input. ValueError: empty, scalar or non-finite
        input, or an axis out of range.

    Example:
        >>> z_score_normalize([1.0, 2.0, 3.0])
        array([-1.2247...,  0.        ,  1.2247...])
        >>> z_score_normalize([7, 7, 7])
        array([0., 0., 0.])
    """
    array, axis = _validate(x, axis, "z_score_normalize")
    mean = array.mean(axis=axis, keepdims=True)
    std = array.std(axis=axis, keepdims=True)
    # Exactly constant slices: the mean can differ from the value by rounding,
    # so test the data itself rather than std == 0.
    constant = array.max(axis=axis, keepdims=True) == array.min(axis=axis, keepdims=True)
    return np.where(constant, 0.0, (array - mean) / np.where(constant | (std == 0), 1.0, std)).astype(array.dtype, copy=False)
