"""Converting batch-norm hyperparameters between PyTorch and Keras.

The two frameworks use the same words for different numbers:

* **momentum.** PyTorch updates ``running = (1 - m) * running + m * batch``
  (default ``m = 0.1``); Keras updates
  ``moving = m * moving + (1 - m) * batch`` (default ``m = 0.99``). The same
  behaviour needs ``m_keras = 1 - m_torch``; PyTorch's 0.1 is Keras's 0.9,
  and Keras's default 0.99 is PyTorch's 0.01.
* **epsilon.** Both add it to the variance before the square root,
  ``(x - mean) / sqrt(var + eps)``; the defaults differ: 1e-5 in PyTorch,
  1e-3 in Keras.
* **moving variance.** Both normalize a training batch with its biased
  variance (divide by ``n``), but PyTorch stores the *unbiased* batch
  variance (divide by ``n - 1``) in ``running_var`` while Keras stores the
  biased one in ``moving_variance``. ``n`` is the number of values each
  channel's statistics are computed from: ``N`` for a dense layer,
  ``N * H * W`` for a convolution.

None of these functions needs TensorFlow or PyTorch.

Paper: Ioffe and Szegedy (2015), Batch Normalization, ICML, Algorithm 2
(which uses the unbiased variance for inference, as PyTorch does).
"""

from __future__ import annotations

import numbers
from typing import Any, TypeVar

__all__ = [
    "TORCH_EPSILON",
    "KERAS_EPSILON",
    "TORCH_MOMENTUM",
    "KERAS_MOMENTUM",
    "keras_momentum_from_torch",
    "torch_momentum_from_keras",
    "biased_variance",
    "unbiased_variance",
    "keras_batchnorm_kwargs",
    "torch_batchnorm_kwargs",
]

#: Defaults of ``torch.nn.BatchNorm2d`` and ``keras.layers.BatchNormalization``.
TORCH_EPSILON = 1e-5
KERAS_EPSILON = 1e-3
TORCH_MOMENTUM = 0.1
KERAS_MOMENTUM = 0.99

V = TypeVar("V")


def _check_fraction(name: str, value: Any, hint: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number in [0, 1], got {type(value).__name__} {value!r}; {hint}")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}; {hint}")
    return float(value)


def keras_momentum_from_torch(momentum: float | None) -> float:
    """Keras's ``momentum`` for the same update as PyTorch's ``momentum``: ``1 - momentum``.

    **momentum=None, the one rule of bnlib.keras.** PyTorch's ``momentum=None``
    keeps a cumulative average: after ``t`` batches the new one gets weight
    ``1 / t``, a weight that changes every step. Keras's
    ``BatchNormalization`` has one fixed momentum, so no Keras setting
    reproduces it, and every bnlib.keras function that translates a PyTorch
    momentum (this one, :func:`keras_batchnorm_kwargs`,
    :func:`bnlib.keras.porting.torch_to_keras_lenet5`) refuses it with this
    ValueError rather than pick a number silently. To port a trained model,
    set its layers' ``momentum`` to a number first: the momentum changes
    further training, never the predictions.

    Args:
        momentum: PyTorch's weight of the *new* batch statistic, in [0, 1].

    Raises:
        ValueError: ``momentum=None`` or a value outside [0, 1].

    Example:
        >>> keras_momentum_from_torch(0.1)
        0.9
    """
    if momentum is None:
        raise ValueError(
            "momentum=None makes PyTorch keep a cumulative (equal-weight) average, which Keras's "
            "exponential moving average with a fixed momentum cannot express; pass a number in [0, 1] instead "
            "(for a trained PyTorch model, set each batch norm's .momentum to a number, e.g. 0.1, before porting: "
            "it changes further training, not the predictions)"
        )
    m = _check_fraction("momentum", momentum, "PyTorch's default is 0.1")
    return round(1.0 - m, 12)


def torch_momentum_from_keras(momentum: float) -> float:
    """PyTorch's ``momentum`` for the same update as Keras's ``momentum``: ``1 - momentum``.

    Args:
        momentum: Keras's weight of the *old* moving statistic, in [0, 1].

    Example:
        >>> torch_momentum_from_keras(0.99)
        0.01
    """
    m = _check_fraction("momentum", momentum, "Keras's default is 0.99")
    return round(1.0 - m, 12)


def _check_count(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"n must be an integer count of values per channel, got {type(n).__name__} {n!r}")
    if n < 2:
        raise ValueError(
            f"n must be at least 2 to convert between biased and unbiased variance, got {n}; "
            "n is the number of values per channel in the batch (N, or N*H*W for images)"
        )
    return int(n)


def biased_variance(unbiased: V, n: int) -> V:
    """The biased variance (divide by ``n``) from the unbiased one (divide by ``n - 1``).

    ``biased = unbiased * (n - 1) / n``: turns a PyTorch ``running_var``
    update into Keras's ``moving_variance`` update. Works on floats, NumPy
    arrays and tensors.

    Args:
        unbiased: variance(s) computed with ``n - 1`` in the denominator.
        n: values per channel the variance came from (``N`` or ``N * H * W``).

    Example:
        >>> biased_variance(2.0, 4)
        1.5
    """
    n = _check_count(n)
    return unbiased * ((n - 1) / n)


def unbiased_variance(biased: V, n: int) -> V:
    """The unbiased variance from the biased one: ``biased * n / (n - 1)``.

    Example:
        >>> unbiased_variance(1.5, 4)
        2.0
    """
    n = _check_count(n)
    return biased * (n / (n - 1))


def keras_batchnorm_kwargs(
    *, momentum: float = TORCH_MOMENTUM, eps: float = TORCH_EPSILON, affine: bool = True
) -> dict[str, Any]:
    """Arguments of ``keras.layers.BatchNormalization`` that match a PyTorch ``BatchNorm`` built with these.

    The moving variance still differs by the factor ``(n - 1) / n`` (see the
    module docstring); that one is a convention of each framework, not an argument.

    Example:
        >>> keras_batchnorm_kwargs()
        {'momentum': 0.9, 'epsilon': 1e-05, 'center': True, 'scale': True}
    """
    if not isinstance(affine, bool):
        raise TypeError(f"affine must be True or False, got {type(affine).__name__} {affine!r}")
    _check_epsilon(eps)
    return {"momentum": keras_momentum_from_torch(momentum), "epsilon": float(eps), "center": affine, "scale": affine}


def torch_batchnorm_kwargs(
    *, momentum: float = KERAS_MOMENTUM, epsilon: float = KERAS_EPSILON, center: bool = True, scale: bool = True
) -> dict[str, Any]:
    """Arguments of ``torch.nn.BatchNorm2d`` (or 1d) that match a Keras ``BatchNormalization`` built with these.

    Raises:
        ValueError: ``center != scale``: PyTorch's ``affine`` switches gamma
            and beta together; use ``affine=True`` and freeze the one you do not want.

    Example:
        >>> torch_batchnorm_kwargs()
        {'momentum': 0.01, 'eps': 0.001, 'affine': True}
    """
    for name, flag in (("center", center), ("scale", scale)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be True or False, got {type(flag).__name__} {flag!r}")
    if center != scale:
        raise ValueError(
            f"PyTorch's affine=True/False switches beta and gamma together, got center={center}, scale={scale}; "
            "build with affine=True and set requires_grad=False on the parameter you want fixed"
        )
    _check_epsilon(epsilon)
    return {"momentum": torch_momentum_from_keras(momentum), "eps": float(epsilon), "affine": center}


def _check_epsilon(eps: Any) -> None:
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"epsilon must be a positive real number, got {type(eps).__name__} {eps!r}")
    if not float(eps) > 0.0:
        raise ValueError(f"epsilon must be positive (it keeps the square root away from zero), got {eps!r}")
