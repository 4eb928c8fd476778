"""Min-max scaling and z-score standardization, vectorized and validated.

Both follow scikit-learn's conventions, so that ``MinMaxScaler`` and
``StandardScaler`` serve as references in the tests (Pedregosa et al., 2011,
*Scikit-learn: Machine Learning in Python*, JMLR 12):

* statistics are taken over ``axis`` (``None``: the whole array; ``0`` on an
  (n_samples, n_features) table: one min/max or mean/std per feature, as the
  scalers do);
* the standard deviation is the population one (``ddof=0``);
* a constant slice (all values exactly equal) maps to 0 instead of dividing by
  zero, because there is no spread to scale. The source tutorial divided by
  zero here and produced NaN.

Integer and boolean input give float64; floating input keeps its dtype.
Extreme magnitudes are safe: ``max - min`` that overflows the dtype (values
near ``±1e308``) and spreads so small that their squares underflow (values
near ``1e-300``) still give exact results, where the textbook formulas give
inf, NaN or an unscaled output.
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
    if axis is None:
        return array, None
    axes = (axis,) if isinstance(axis, (int, np.integer)) else axis
    # bool is an int subclass; axis=True is a mistake, not axis 1.
    if not isinstance(axes, tuple) or not all(
        isinstance(a, (int, np.integer)) and not isinstance(a, (bool, np.bool_)) for a in axes
    ):
        raise TypeError(f"{name}: axis must be None, an int or a tuple of ints, got {axis!r}")
    for a in axes:
        if not -array.ndim <= a < array.ndim:
            raise ValueError(
                f"{name}: axis {a} is out of range for an array of shape {array.shape} "
                f"({array.ndim}-D); use an axis in [-{array.ndim}, {array.ndim - 1}] or None"
            )
    positive = tuple(int(a) % array.ndim for a in axes)
    if len(set(positive)) != len(positive):
        raise ValueError(f"{name}: axis {axis!r} names the same axis twice; list each axis once")
    return array, positive


def _to_unit_interval(array: np.ndarray, axis: Axis) -> tuple[np.ndarray, np.ndarray]:
    """``(x - min) / (max - min)`` per slice, and a mask of the constant slices (mapped to 0)."""
    low = array.min(axis=axis, keepdims=True)
    high = array.max(axis=axis, keepdims=True)
    with np.errstate(over="ignore"):
        span = high - low
    if not np.isfinite(span).all():
        # max - min overflowed the dtype (e.g. -1e308 and 1e308): halving is exact
        # for such large numbers and brings the span back into range.
        array, low, high = array / 2, low / 2, high / 2
        span = high - low
    constant = span == 0
    scaled = (array - low) / np.where(constant, 1, span)
    return np.where(constant, 0, scaled).astype(array.dtype, copy=False), constant


def min_max_normalize(x: Any, axis: Axis = None) -> np.ndarray:
    r"""Rescale ``x`` linearly to [0, 1]: ``(x - min) / (max - min)``.

    Formula, per slice along ``axis``:
    :math:`x' = (x - \min x) / (\max x - \min x)`.

    Args:
        x: numeric array-like (bool, int or float; any shape with at least one axis).
        axis: axis or axes the min and max are taken over; ``None`` (default)
            uses the whole array, ``0`` scales each column of a table separately,
            as ``sklearn.preprocessing.MinMaxScaler`` does.

    Returns:
        An array of the shape of ``x``; each slice's minimum maps to 0 and its
        maximum to 1, and every value lies in [0, 1]. A constant slice maps to 0
        (scikit-learn's convention) instead of 0/0 = NaN.

    Raises:
        TypeError: non-numeric input (strings, objects, complex) or an axis
            that is not None, an int or a tuple of ints.
        ValueError: empty, scalar or non-finite input, or an axis out of range
            or repeated.

    Shape:
        Input: any shape ``(d0, d1, ...)``. Output: the same shape.

    Example:
        >>> min_max_normalize([2.0, 4.0, 6.0])
        array([0. , 0.5, 1. ])
        >>> min_max_normalize([[1, 5], [3, 5]], axis=0)
        array([[0., 0.],
               [1., 0.]])
    """
    array, axes = _validate(x, axis, "min_max_normalize")
    return _to_unit_interval(array, axes)[0]


def z_score_normalize(x: Any, axis: Axis = None) -> np.ndarray:
    r"""Standardize ``x`` to mean 0 and standard deviation 1: ``(x - mean) / std``.

    Formula, per slice along ``axis``: :math:`z = (x - \mu) / \sigma` with
    :math:`\mu` the mean and :math:`\sigma` the population standard deviation
    (``ddof=0``), as ``sklearn.preprocessing.StandardScaler`` computes them.
    The sums behind them accumulate in float64 whatever the input's dtype.

    Since a z-score does not change when ``x`` is shifted or multiplied by a
    positive number, it is computed from ``min_max_normalize(x)``, whose values
    lie in [0, 1]: squares then neither overflow nor underflow, so data near
    ``1e308`` or ``1e-300`` are standardized exactly. A slice is constant only
    when its values are exactly equal; it maps to 0 (scikit-learn's convention).
    Data that differ only in their last bits are standardized as given, where
    scikit-learn treats a variance below rounding level as zero.

    Args:
        x: numeric array-like (bool, int or float; any shape with at least one axis).
        axis: axis or axes the mean and std are taken over; ``None`` (default)
            uses the whole array, ``0`` standardizes each column separately.

    Returns:
        An array of the shape of ``x`` whose slices have mean 0 and standard
        deviation 1 (or are all 0, for constant slices).

    Raises:
        TypeError: non-numeric input (strings, objects, complex) or an axis
            that is not None, an int or a tuple of ints.
        ValueError: empty, scalar or non-finite input, or an axis out of range
            or repeated.

    Shape:
        Input: any shape ``(d0, d1, ...)``. Output: the same shape.

    Example:
        >>> z_score_normalize([1.0, 2.0, 3.0])
        array([-1.2247...,  0.        ,  1.2247...])
        >>> z_score_normalize([7, 7, 7])
        array([0., 0., 0.])
    """
    array, axes = _validate(x, axis, "z_score_normalize")
    unit, constant = _to_unit_interval(array, axes)
    # Sums accumulate in float64 (a float32 sum over 10^4 rows along axis 0 loses
    # about 3 digits); the arrays themselves stay in the input's dtype.
    centered = unit - unit.mean(axis=axes, keepdims=True, dtype=np.float64).astype(unit.dtype)
    # A non-constant slice holds both 0 and 1 here, so its std is positive.
    std = np.sqrt(np.mean(np.square(centered), axis=axes, keepdims=True, dtype=np.float64)).astype(unit.dtype)
    return np.where(constant, 0, centered / np.where(constant, 1, std)).astype(array.dtype, copy=False)
