"""The mathematics of normalization layers as pure functions.

One idea serves every normalization in the book: take the mean and variance
of the activations over some axes, subtract the mean, divide by the square
root of the variance plus a small ``eps``, then scale by ``gamma`` and shift
by ``beta``. Batch, layer, instance and group normalization differ **only in
the axes they reduce over** (Wu and He 2018, figure 2). For an input of shape
(N, C, H, W):

============  ==========================================  =================
method        statistics taken over                       ``moments`` dims
============  ==========================================  =================
batch norm    (N, H, W), one pair per channel             ``(0, 2, 3)``
layer norm    (C, H, W), one pair per sample              ``(1, 2, 3)``
instance norm (H, W), one pair per sample and channel     ``(2, 3)``
group norm    (C/G, H, W) after reshaping to (N, G, C/G,  ``(2, 3, 4)``
              H, W), one pair per sample and group
============  ==========================================  =================

This module has two halves:

* a **NumPy reference** of batch norm, forward and backward, written to be
  read next to the paper (Ioffe and Szegedy 2015, Algorithm 1):
  :func:`batch_norm_forward` and :func:`batch_norm_backward`;
* the **torch helpers** every layer in :mod:`bnlib.layers` is built from:
  :func:`moments` (two-pass mean and variance), :func:`normalize`,
  :func:`affine`, :func:`update_running_` (the momentum update of running
  statistics), :func:`check_input` (the shared error messages), and the
  functional forms :func:`batch_norm`, :func:`layer_norm`,
  :func:`instance_norm` and :func:`group_norm`. They are plain tensor
  operations, so autograd differentiates them and they run on any device.

Variance is always computed in two passes, ``mean((x - mean(x))**2)``, never
as ``E[x**2] - E[x]**2``: the latter cancels catastrophically when the mean
is large relative to the spread (it can even come out negative).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from bnlib import _checks

if TYPE_CHECKING:  # torch is imported lazily so that NumPy users never pay for it
    import torch

__all__ = [
    # NumPy reference
    "batch_norm_forward",
    "batch_norm_backward",
    # torch helpers shared by every norm layer
    "batch_norm_dims",
    "batch_statistics",
    "moments",
    "normalize",
    "affine",
    "running_average",
    "update_running_",
    "copy_together_",
    "check_input",
    "values_readable",
    "check_finite_statistics",
    # torch functional forms
    "batch_norm",
    "layer_norm",
    "instance_norm",
    "group_norm",
]

Dims = int | Sequence[int]


# --------------------------------------------------------------------------
# NumPy reference: batch norm forward and backward
# --------------------------------------------------------------------------


def _np_batch_axes(x: np.ndarray, name: str) -> tuple[int, ...]:
    if x.ndim < 2:
        raise ValueError(
            f"{name} expects an (N, D) or (N, C, H, W) array, got shape {x.shape}; "
            "add a batch axis with x[None] if this is a single example"
        )
    return (0, *range(2, x.ndim))


def batch_norm_forward(
    x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float = 1e-5
) -> tuple[np.ndarray, dict[str, Any]]:
    r"""Batch normalization in training mode, in NumPy (the reference implementation).

    Ioffe and Szegedy (2015), Algorithm 1. With :math:`m` values per feature
    (``m = N`` for (N, D) input, ``m = N*H*W`` per channel for (N, C, H, W)):

    .. math::

        \mu = \frac1m \sum_i x_i,\quad
        \sigma^2 = \frac1m \sum_i (x_i - \mu)^2,\quad
        \hat x_i = \frac{x_i - \mu}{\sqrt{\sigma^2 + \epsilon}},\quad
        y_i = \gamma \hat x_i + \beta.

    The variance is the biased (population) one, computed in two passes, in
    float32 at least (a float16 input is returned as float16, its statistics
    taken in float32, as torch does). Running statistics are not this
    function's business; see :class:`bnlib.layers.BatchNorm`.

    Args:
        x: activations, shape (N, D) or (N, C, H, W) (any (N, C, ...) works).
        gamma: scale, shape (D,) or (C,).
        beta: shift, shape (D,) or (C,).
        eps: added to the variance before the square root (PyTorch's default).

    Returns:
        ``(y, cache)``: ``y`` has the shape of ``x``; ``cache`` holds what
        :func:`batch_norm_backward` needs (``xhat``, ``inv_std``, ``gamma``, ``axes``).

    Raises:
        ValueError: ``x`` has fewer than 2 dimensions, one value per feature
        (a batch of one: the variance is 0 and every output beta), NaN or
        infinite values; ``gamma``/``beta`` do not have one finite entry per
        feature; ``eps`` is not a finite number > 0 (0 divides by zero on a
        constant feature).

    Example:
        >>> x = np.array([[1.0, 10.0], [3.0, 30.0]])
        >>> y, cache = batch_norm_forward(x, np.ones(2), np.zeros(2), eps=1e-12)
        >>> y.round(6)
        array([[-1., -1.],
               [ 1.,  1.]])
    """
    x = np.asarray(x)
    if x.dtype.kind != "f":
        raise TypeError(f"batch_norm_forward expects a floating-point array, got dtype {x.dtype}; use x.astype(float)")
    axes = _np_batch_axes(x, "batch_norm_forward")
    eps = _checks.positive_float(eps, "eps", hint="e.g. 1e-5; eps > 0 keeps a constant feature from dividing by zero")
    compute = np.promote_types(x.dtype, np.float32)  # float16 sums of squares overflow at 65,504: float32 at least
    gamma = _checks.array_like(gamma, "gamma").astype(compute)
    beta = _checks.array_like(beta, "beta").astype(compute)
    if gamma.shape != (x.shape[1],) or beta.shape != (x.shape[1],):
        raise ValueError(
            f"gamma and beta must have shape ({x.shape[1]},), one entry per feature of x with shape {x.shape}; "
            f"got {gamma.shape} and {beta.shape}"
        )
    m = x.size // x.shape[1] if x.shape[1] else 0
    if m < 2:
        raise ValueError(
            f"batch_norm_forward needs more than 1 value per feature to take a variance, got shape {x.shape} "
            f"({m} value(s) per feature): the output would be beta whatever x is; use a batch of 2 or more"
        )
    if not np.isfinite(x).all():
        bad = sorted({int(i) for i in np.argwhere(~np.isfinite(x))[:, 1]})
        raise ValueError(
            f"batch_norm_forward got NaN or infinite values in feature(s) {bad[:10]} of x with shape {x.shape}; "
            "every output of those features would be NaN: find where they come from (np.isfinite(x).all())"
        )
    shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)  # broadcast per feature: (1, C, 1, 1)
    xc = x.astype(compute, copy=False)
    mean = xc.mean(axis=axes, keepdims=True)
    centered = xc - mean
    var = (centered**2).mean(axis=axes, keepdims=True)  # two-pass, biased
    inv_std = 1.0 / np.sqrt(var + eps)
    xhat = centered * inv_std
    y = (gamma.reshape(shape) * xhat + beta.reshape(shape)).astype(x.dtype, copy=False)
    cache = {"xhat": xhat, "inv_std": inv_std, "gamma": gamma.reshape(shape), "axes": axes}
    return y, cache


def batch_norm_backward(dy: np.ndarray, cache: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Gradients of :func:`batch_norm_forward` (training mode), in NumPy.

    The compact per-feature form, with sums over the ``m`` values of one
    feature (the batch axis, plus H and W for images):

    .. math::

        \frac{\partial L}{\partial\beta} = \sum_i dy_i,\quad
        \frac{\partial L}{\partial\gamma} = \sum_i dy_i\,\hat x_i,\quad
        \frac{\partial L}{\partial x_i} = \frac{\gamma}{m\sqrt{\sigma^2+\epsilon}}
        \Big(m\,dy_i - \frac{\partial L}{\partial\beta} - \hat x_i \frac{\partial L}{\partial\gamma}\Big).

    The two subtracted terms are the gradient flowing through the batch mean
    and the batch variance: they remove from ``dy`` its mean and its
    component along ``xhat``, so ``dx`` sums to zero and is orthogonal to ``xhat``
    per feature.

    Args:
        dy: upstream gradient, the shape of ``y``.
        cache: the second value returned by :func:`batch_norm_forward`.

    Returns:
        ``(dx, dgamma, dbeta)`` with shapes ``x.shape``, (C,), (C,).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(8, 3))
        >>> y, cache = batch_norm_forward(x, np.ones(3), np.zeros(3))
        >>> dx, dgamma, dbeta = batch_norm_backward(np.ones_like(y), cache)
        >>> bool(np.allclose(dx, 0)), dbeta   # a constant upstream gradient is absorbed by the mean
        (True, array([8., 8., 8.]))
    """
    if not isinstance(cache, dict) or not {"xhat", "inv_std", "gamma", "axes"} <= set(cache):
        raise TypeError(
            f"cache must be the dict returned by batch_norm_forward, got {type(cache).__name__}; "
            "pass the second value of y, cache = batch_norm_forward(x, gamma, beta)"
        )
    xhat, inv_std, gamma, axes = cache["xhat"], cache["inv_std"], cache["gamma"], cache["axes"]
    dy_in = np.asarray(dy)
    if dy_in.shape != xhat.shape:
        raise ValueError(f"dy must have the shape of the forward input {xhat.shape}, got {dy_in.shape}")
    dy = _checks.array_like(dy_in, "dy").astype(xhat.dtype, copy=False)
    m = xhat.size // xhat.shape[1]
    dbeta = dy.sum(axis=axes, keepdims=True)
    dgamma = (dy * xhat).sum(axis=axes, keepdims=True)
    dx = gamma * inv_std / m * (m * dy - dbeta - xhat * dgamma)
    out = dy_in.dtype if dy_in.dtype.kind == "f" else xhat.dtype
    return dx.astype(out, copy=False), dgamma.reshape(-1), dbeta.reshape(-1)


# --------------------------------------------------------------------------
# torch helpers shared by every normalization layer
# --------------------------------------------------------------------------


def batch_norm_dims(ndim: int) -> tuple[int, ...]:
    """The dims batch norm reduces over for an ``ndim``-D input (N, C, *): all but the channel dim 1.

    Example:
        >>> batch_norm_dims(2), batch_norm_dims(4)
        ((0,), (0, 2, 3))
    """
    if isinstance(ndim, (bool, np.bool_)) or not isinstance(ndim, (int, np.integer)):
        raise TypeError(f"batch_norm_dims: ndim must be an integer (x.ndim), got {type(ndim).__name__} {ndim!r}")
    if ndim < 2:
        raise ValueError(f"batch norm needs at least 2 dims (N, C), got ndim={ndim}")
    return (0, *range(2, ndim))


def moments(
    x: torch.Tensor, dims: Dims, *, unbiased: bool = False, keepdim: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Mean and variance of ``x`` over ``dims``, in two passes.

    The statistics helper every normalization uses; batch, layer, instance
    and group norm differ only in ``dims`` (see the table in the module
    docstring). ``var = sum((x - mean)**2) / (m - 1 if unbiased else m)``
    where ``m`` is the number of values reduced over.

    Normalization uses the biased (``unbiased=False``) variance; PyTorch's
    running variance uses the unbiased one (:func:`update_running_` callers
    pass ``unbiased=True`` or rescale by ``m / (m - 1)``).

    Args:
        x: any floating tensor.
        dims: dim or dims to reduce over (negative values allowed).
        unbiased: divide by ``m - 1`` instead of ``m`` (Bessel's correction).
        keepdim: keep reduced dims with size 1 so the results broadcast against ``x``.

    Returns:
        ``(mean, var)``, each of ``x``'s dtype and device.

    Raises:
        ValueError: no dim to reduce over (``torch.mean(dim=())`` would
            silently reduce over all of them), or ``unbiased=True`` with a
            single value to reduce over.

    Example:
        >>> import torch
        >>> x = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
        >>> mean, var = moments(x, 0)                 # per column, as batch norm on (N, D)
        >>> mean, var
        (tensor([[2., 4.]]), tensor([[1., 4.]]))
        >>> moments(x, 1, keepdim=False)[0]            # per row, as layer norm
        tensor([1.5000, 4.5000])
    """
    import torch

    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"moments expects a torch.Tensor, got {type(x).__name__}; convert with torch.as_tensor(x) "
            "(the NumPy reference is bnlib.functional.batch_norm_forward)"
        )
    if isinstance(dims, (int, np.integer)) and not isinstance(dims, (bool, np.bool_)):
        dims_t = (dims,)
    elif isinstance(dims, (tuple, list)):
        dims_t = tuple(dims)
    else:
        raise TypeError(
            f"moments: dims must be an integer or a tuple of integers, got {type(dims).__name__} {dims!r}; "
            "e.g. dims=(0, 2, 3) for batch norm on (N, C, H, W)"
        )
    for d in dims_t:
        if isinstance(d, (bool, np.bool_)) or not isinstance(d, (int, np.integer)) or not -x.ndim <= d < x.ndim:
            raise ValueError(
                f"moments: dims must be integers in [-{x.ndim}, {x.ndim - 1}] for shape {tuple(x.shape)}, "
                f"got {d!r} in dims={dims!r}"
            )
    dims_t = tuple(int(d) for d in dims_t)
    if not dims_t:
        raise ValueError(
            f"moments needs at least one dim to reduce over, got dims=() for shape {tuple(x.shape)}; "
            "e.g. instance and group norm need spatial dims: pass (N, C, H, W), not (N, C)"
        )
    mean = x.mean(dim=dims_t, keepdim=True)
    count = 1
    for d in dims_t:
        count *= x.shape[d]
    if unbiased and count < 2:
        raise ValueError(
            f"the unbiased variance needs at least 2 values, got {count} over dims {dims_t} of shape {tuple(x.shape)}"
        )
    squares = (x - mean).square().sum(dim=dims_t, keepdim=keepdim)
    var = squares / (count - 1 if unbiased else count)
    if not keepdim:
        mean = mean.reshape(var.shape)
    return mean, var


def normalize(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, eps: float) -> torch.Tensor:
    r"""``(x - mean) / sqrt(var + eps)``: the step every normalization shares.

    ``mean`` and ``var`` must broadcast against ``x`` (use ``keepdim=True``
    in :func:`moments`, or reshape running statistics to (1, C, 1, ...)).
    ``eps`` is a finite number ``> 0``.

    Example:
        >>> import torch
        >>> x = torch.tensor([[1.0], [3.0]])
        >>> normalize(x, *moments(x, 0), eps=1e-12)
        tensor([[-1.],
                [ 1.]])
    """
    eps = _functional_eps(eps, "normalize")
    # One multiply by 1/sqrt(var + eps) instead of a divide, as the frameworks do.
    return (x - mean) * (var + eps).rsqrt()


def affine(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, *, dim: int = 1) -> torch.Tensor:
    """Scale by ``weight`` (gamma) and shift by ``bias`` (beta), each laid along ``x``'s dims from ``dim``.

    A (C,) weight on an (N, C, H, W) input with ``dim=1`` (the default)
    scales each channel; a (C, H, W) weight with ``dim=1`` scales each
    element, as ``torch.nn.LayerNorm`` does. ``None`` skips that half.

    Example:
        >>> import torch
        >>> x = torch.zeros(2, 3, 1, 1)
        >>> affine(x, torch.ones(3), torch.tensor([1.0, 2.0, 3.0]))[0, :, 0, 0]
        tensor([1., 2., 3.])
    """
    param = weight if weight is not None else bias
    if param is None:
        return x
    dim = dim % x.ndim
    shape = [1] * x.ndim
    shape[dim : dim + param.ndim] = param.shape
    if weight is not None:
        x = x * weight.reshape(shape)
    if bias is not None:
        x = x + bias.reshape(shape)
    return x


def running_average(running: torch.Tensor, batch_value: torch.Tensor, momentum: float | torch.Tensor) -> torch.Tensor:
    r"""``(1 - momentum) * running + momentum * batch_value``, out of place: the one running-average formula.

    PyTorch's convention: ``momentum`` is the weight of the **new** batch
    (default 0.1). Keras's ``momentum`` is the weight of the **old** estimate
    (default 0.99), so Keras ``momentum = 1 - torch momentum``. A cumulative
    average (PyTorch's ``momentum=None``) is ``momentum = 1 / t`` at step ``t``;
    ``momentum`` may then be a tensor (no ``float()``, so no GPU
    synchronization and nothing that stops ``torch.func.vmap`` or ``torch.compile``).

    Example:
        >>> import torch
        >>> running_average(torch.zeros(2), torch.tensor([1.0, 2.0]), 0.1)
        tensor([0.1000, 0.2000])
    """
    import torch

    batch_value = batch_value.detach().to(running.dtype)
    if isinstance(momentum, torch.Tensor):
        return running * (1.0 - momentum) + batch_value * momentum
    momentum = _checks.probability(momentum, "momentum", hint="the weight of the new batch (PyTorch's convention)")
    return running.mul(1.0 - momentum).add(batch_value, alpha=momentum)


def update_running_(running: torch.Tensor, batch_value: torch.Tensor, momentum: float) -> torch.Tensor:
    r"""In place: ``running = (1 - momentum) * running + momentum * batch_value``; returns ``running``.

    :func:`running_average` written into ``running``, without recording
    gradients (``batch_value`` is detached). ``momentum`` must be in [0, 1].

    Example:
        >>> import torch
        >>> running = torch.zeros(2)
        >>> update_running_(running, torch.tensor([1.0, 2.0]), momentum=0.1)
        tensor([0.1000, 0.2000])
    """
    momentum = _checks.probability(momentum, "momentum", hint="the weight of the new batch (PyTorch's convention)")
    copy_together_([running], [running_average(running.detach(), batch_value, momentum)])
    return running


def _functorch_active() -> bool:
    import torch

    return torch._C._functorch.peek_interpreter_stack() is not None


def values_readable(x: torch.Tensor) -> bool:
    """True when ``x``'s values can be read in Python now: eager mode, outside ``torch.func`` transforms, not meta.

    The finiteness checks of the batch-norm family read a boolean from a
    tensor. Under ``torch.func.vmap`` (and the other ``torch.func``
    transforms) that is impossible, and under ``torch.compile`` it would split
    the graph; on the meta device there are no values. There the checks are
    skipped, and NaN or infinite input propagates into the output and the
    running statistics, exactly as in ``torch.nn.BatchNorm2d``.

    Example:
        >>> import torch
        >>> values_readable(torch.zeros(2)), values_readable(torch.zeros(2, device="meta"))
        (True, False)
        >>> torch.func.vmap(lambda t: torch.tensor(values_readable(t)))(torch.zeros(3, 2))
        tensor([False, False, False])
    """
    import torch

    if torch.compiler.is_compiling():
        return False
    return not _functorch_active() and x.device.type != "meta"


def copy_together_(targets: Sequence[torch.Tensor], values: Sequence[torch.Tensor]) -> None:
    """Copy each value into its target in one call, so that an interrupt (Ctrl-C) cannot split the writes.

    In eager mode one ``torch._foreach_copy_`` (a single C++ call: Python's
    signal handlers only run between calls); under ``torch.func`` transforms,
    which have no rule for it, and under ``torch.compile`` (where the whole
    graph is one call anyway), consecutive ``copy_`` calls with nothing in
    between. The values are detached (no gradient is recorded); there is no
    ``with torch.no_grad()`` block, whose exit an interrupt could skip and
    leave gradients off.

    Example:
        >>> import torch
        >>> mean, count = torch.zeros(2), torch.tensor(0)
        >>> copy_together_([mean, count], [torch.ones(2), count + 1])
        >>> mean, count
        (tensor([1., 1.]), tensor(1))
    """
    import torch

    values = [value.detach() for value in values]
    if torch.compiler.is_compiling() or _functorch_active():
        for target, value in zip(targets, values, strict=True):
            target.copy_(value)
    else:
        torch._foreach_copy_(list(targets), values)


def check_input(
    x: Any,
    layer: str,
    *,
    num_features: int | None = None,
    min_ndim: int = 2,
    expected: str = "(N, C) or (N, C, *)",
    dtype: torch.dtype | None = None,
    hint: str | None = None,
) -> None:
    """Raise a clear TypeError/ValueError unless ``x`` is a floating tensor of the expected layout.

    The checks (shared by every layer in :mod:`bnlib.layers`): ``x`` is a
    ``torch.Tensor``; it is floating point; it has at least ``min_ndim``
    dims; dim 1 has ``num_features`` channels (when given); its dtype equals
    the layer's parameter ``dtype`` (when given).

    Args:
        x: the layer's input.
        layer: the layer's name for the message, e.g. ``"BatchNorm(16)"``.
        num_features: the channel count expected at dim 1, or ``None``.
        min_ndim: the fewest dims accepted.
        expected: the accepted layouts, for the message.
        dtype: the dtype of the layer's parameters/buffers, or ``None``.
        hint: how to fix too few dims (default: add a batch axis, when one dim is missing).

    Example:
        >>> import torch
        >>> check_input(torch.zeros(4, 3), "BatchNorm(3)", num_features=3)   # fine: returns None
        >>> check_input(torch.zeros(4, 5), "BatchNorm(3)", num_features=3)
        Traceback (most recent call last):
        ...
        ValueError: BatchNorm(3) expected 3 channels at dim 1 of an (N, C) or (N, C, *) input, got shape (4, 5)...
    """
    import torch

    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{layer} expected a torch.Tensor, got {type(x).__name__}; convert with torch.as_tensor(x)")
    if not x.is_floating_point():
        raise TypeError(f"{layer} expected a floating-point tensor, got dtype {x.dtype}; convert with x.float()")
    shape = tuple(x.shape)
    if x.ndim < min_ndim:
        raise ValueError(
            f"{layer} expected an {expected} input with at least {min_ndim} dims, got shape {shape}"
            + (f"; {hint}" if hint else "; add a batch axis with x.unsqueeze(0)" if x.ndim == min_ndim - 1 else "")
        )
    if num_features is not None and shape[1] != num_features:
        hint = (
            "; for channels-last (N, H, W, C) images use x.permute(0, 3, 1, 2)"
            if x.ndim == 4 and shape[-1] == num_features
            else f"; build the layer with num_features={shape[1]} or check the preceding layer's output"
        )
        raise ValueError(
            f"{layer} expected {num_features} channels at dim 1 of an {expected} input, got shape {shape}{hint}"
        )
    if dtype is not None and x.dtype != dtype:
        raise TypeError(
            f"{layer} has {dtype} parameters but got a {x.dtype} input; "
            f"convert one of them, e.g. layer.to({x.dtype}) or x.to({dtype})"
        )


def check_finite_statistics(
    mean: torch.Tensor,
    var: torch.Tensor,
    layer: str,
    *,
    running: tuple[torch.Tensor, torch.Tensor, str] | None = None,
) -> None:
    """Raise ValueError if a batch's statistics (or the running ones they lead to) hold NaN or infinity.

    A single NaN in the input makes its channel's mean NaN, so checking the
    (C,)-sized statistics finds bad input at a fraction of the cost of
    scanning ``x``. ``running`` is ``(new_running_mean, new_running_spread,
    spread_name)`` in the buffers' dtype: a finite batch can still overflow a
    float16 buffer. One GPU synchronization per call. Skipped (returns
    without looking) where :func:`values_readable` is False: under
    ``torch.func`` transforms, ``torch.compile`` and on the meta device.

    Example:
        >>> import torch
        >>> check_finite_statistics(torch.tensor([0.0, float("nan")]), torch.ones(2), "BatchNorm(2)")
        Traceback (most recent call last):
        ...
        ValueError: BatchNorm(2): the batch statistics of channel(s) [1] are NaN or infinite...
    """
    import torch

    if not values_readable(mean):
        return
    checked = (mean, var) if running is None else (mean, var, running[0], running[1])
    if bool(torch.isfinite(torch.cat([t.reshape(-1) for t in checked])).all()):  # the usual case: 4 small ops
        return
    bad = ~(torch.isfinite(mean) & torch.isfinite(var))
    if bad.ndim > 1:  # (k, C), or (1, C, 1, 1) with kept dims: one flag per channel
        bad = bad.reshape(bad.shape[0], -1).any(0)
    overflow = None if running is None else ~(torch.isfinite(running[0]) & torch.isfinite(running[1])).reshape(-1)

    def listed(flags: torch.Tensor) -> list:
        channels = torch.nonzero(flags.reshape(-1)).reshape(-1).tolist()
        return channels[:10] + (["..."] if len(channels) > 10 else [])

    if bool(bad.any()):
        raise ValueError(
            f"{layer}: the batch statistics of channel(s) {listed(bad)} are NaN or infinite, so the input holds NaN or "
            "infinite values (or overflows its dtype); the running statistics were NOT updated. Find where the "
            "non-finite values come from (torch.isfinite(x).all()), e.g. a too-large learning rate"
        )
    raise ValueError(
        f"{layer}: the new running_mean or {running[2]} of channel(s) {listed(overflow)} would be NaN or infinite in "
        f"{running[0].dtype} (the batch statistics are finite but overflow the buffers' dtype); the running "
        "statistics were NOT updated. Scale the input down, or keep the layer in float32 (layer.float()) and use "
        "torch.autocast for reduced precision"
    )


# --------------------------------------------------------------------------
# torch functional forms: the layers in bnlib.layers call these
# --------------------------------------------------------------------------


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    import torch

    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def _functional_eps(eps: object, name: str = "") -> float:
    # One rule with the layers: finite and > 0 (0 divides by zero on a constant channel, inf returns beta).
    return _checks.positive_float(
        eps, f"{name}: eps" if name else "eps", hint="e.g. 1e-5 (PyTorch's default) or 1e-3 (Keras's)"
    )


def _check_parameter(value: torch.Tensor | None, what: str, size: int, name: str) -> None:
    import torch

    if value is None:
        return
    if not isinstance(value, torch.Tensor) or not value.is_floating_point() or tuple(value.shape) != (size,):
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(
            f"{name}: {what} must be a floating-point tensor of shape ({size},) (one per channel), got {got}"
        )


def batch_statistics(
    x: torch.Tensor, *, name: str = "batch_norm", has_running: bool = False
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per-channel mean and biased variance over (N, *), kept as (1, C, 1, ...), and the count m per channel.

    The batch-norm family's statistics. Refuses one value per channel (the
    variance is undefined; PyTorch refuses too) with a message that says
    what to do: ``.eval()`` when there are running statistics
    (``has_running``), a larger batch otherwise.

    Example:
        >>> import torch
        >>> mean, var, m = batch_statistics(torch.tensor([[1.0, 2.0], [3.0, 6.0]]))
        >>> mean.tolist(), var.tolist(), m
        ([[2.0, 4.0]], [[1.0, 4.0]], 2)
    """
    count = x.numel() // x.shape[1] if x.shape[1] else 0
    if count < 2:
        fix = (
            "call .eval() to use the running statistics"
            if has_running
            else "there are no running statistics to fall back on (track_running_stats=False)"
        )
        raise ValueError(
            f"{name}: batch statistics need more than 1 value per channel, got input shape {tuple(x.shape)} "
            f"({count} value(s) per channel); use a batch of 2 or more, or {fix}"
        )
    mean, var = moments(x, batch_norm_dims(x.ndim))
    return mean, var, count


def batch_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    *,
    running_mean: torch.Tensor | None = None,
    running_var: torch.Tensor | None = None,
    training: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
    check_finite: bool = True,
    name: str = "batch_norm",
) -> torch.Tensor:
    r"""Batch normalization of an (N, C) or (N, C, *) tensor with tensor operations.

    Ioffe and Szegedy (2015). In training (or when there are no running
    statistics) the input is normalized with the batch's own per-channel
    mean and biased variance over (N, *), and the running statistics, if
    given, are updated in place following PyTorch:
    ``running_mean <- (1 - momentum) running_mean + momentum * mean`` and the
    same for ``running_var`` with the **unbiased** batch variance. In
    evaluation with running statistics they replace the batch statistics.

    Conventions: a float16/bfloat16 input is normalized in float32 and
    returned in its own dtype; the two running buffers are written together
    (:func:`copy_together_`) after the new values are checked, so a bad batch
    or an interrupt leaves both as they were. An empty batch (N = 0) returns
    an empty output and updates nothing. NaN: in training, NaN or infinite
    batch statistics raise before anything is written (``check_finite``);
    where values cannot be read (:func:`values_readable`: ``torch.func``
    transforms, ``torch.compile``) NaN propagates, as in PyTorch.

    Args:
        x: input (N, C) or (N, C, *).
        weight: gamma, shape (C,), or ``None``.
        bias: beta, shape (C,), or ``None``.
        running_mean: (C,) buffer updated in place, or ``None``.
        running_var: (C,) buffer (unbiased variance) updated in place, or ``None``.
        training: use (and record) batch statistics.
        momentum: weight of the new batch in the running averages, in [0, 1].
        eps: added to the variance; finite and ``> 0``, as for the layers.
        check_finite: in training, raise ValueError on NaN/inf batch
            statistics before the running averages are touched.
        name: how error messages name the caller, e.g. ``"BatchNorm(16)"``.

    Raises:
        ValueError: batch statistics are needed but there is one value per
        channel; non-finite statistics; a bad ``eps`` or ``momentum``; a
        parameter or buffer not of shape (C,).
        TypeError: ``x`` is not a floating-point tensor.

    Example:
        >>> import torch
        >>> x = torch.tensor([[1.0, 10.0], [3.0, 30.0]])
        >>> batch_norm(x, eps=1e-12)
        tensor([[-1., -1.],
                [ 1.,  1.]])
    """
    check_input(x, name)
    eps = _functional_eps(eps, name)
    momentum = _checks.probability(
        momentum, f"{name}: momentum", hint="the weight of the new batch (PyTorch's convention)"
    )
    c = x.shape[1]
    for what, value in (
        ("weight", weight),
        ("bias", bias),
        ("running_mean", running_mean),
        ("running_var", running_var),
    ):
        _check_parameter(value, what, c, name)
    compute = _compute_dtype(x)
    xc = x.to(compute)
    weight = None if weight is None else weight.to(compute)
    bias = None if bias is None else bias.to(compute)
    if x.numel() == 0:  # an empty batch: an empty output, nothing to learn from (as torch)
        return affine(xc, weight, bias).to(x.dtype)
    shape = (1, c) + (1,) * (x.ndim - 2)  # (1, C, 1, 1)
    has_running = running_mean is not None and running_var is not None
    if training or not has_running:
        mean, var, count = batch_statistics(xc, name=name, has_running=has_running)
        if training and has_running:
            new_mean = running_average(running_mean.to(compute), mean.reshape(-1), momentum).to(running_mean.dtype)
            new_var = running_average(running_var.to(compute), var.reshape(-1) * (count / (count - 1)), momentum)
            new_var = new_var.to(running_var.dtype)
            if check_finite:
                check_finite_statistics(mean, var, name, running=(new_mean, new_var, "running_var"))
            copy_together_([running_mean, running_var], [new_mean, new_var])
        elif check_finite and training:
            check_finite_statistics(mean, var, name)
    else:
        mean, var = running_mean.to(compute).reshape(shape), running_var.to(compute).reshape(shape)
    return affine(normalize(xc, mean, var, eps), weight, bias).to(x.dtype)


def _moment_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    name: str,
    grouped_shape: tuple[int, ...],
    dims: tuple[int, ...],
    unit: str,
    fix: str,
) -> torch.Tensor:
    """Normalize ``x`` viewed as ``grouped_shape`` over ``dims``, in float32 for reduced precision; per-channel affine."""
    eps = _functional_eps(eps, name)
    _check_parameter(weight, "weight", x.shape[1], name)
    _check_parameter(bias, "bias", x.shape[1], name)
    grouped = x.to(_compute_dtype(x)).reshape(grouped_shape)
    values = 1
    for d in dims:
        values *= grouped.shape[d]
    if values < 2 and x.numel():
        raise ValueError(f"{name} needs more than 1 {unit}, got shape {tuple(x.shape)}; {fix}")
    mean, var = moments(grouped, dims)
    out = normalize(grouped, mean, var, eps).reshape(x.shape)
    compute = out.dtype
    weight = None if weight is None else weight.to(compute)
    bias = None if bias is None else bias.to(compute)
    return _memory_format_of(x, affine(out, weight, bias).to(x.dtype))


def _memory_format_of(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out`` laid out in memory as ``x`` (channels_last in, channels_last out, as torch.nn's norms)."""
    import torch

    for ndim, memory_format in ((4, torch.channels_last), (5, torch.channels_last_3d)):
        if x.ndim == ndim and not x.is_contiguous() and x.is_contiguous(memory_format=memory_format):
            return out.contiguous(memory_format=memory_format)
    return out


def layer_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    *,
    eps: float = 1e-5,
    name: str = "layer_norm",
) -> torch.Tensor:
    r"""Layer normalization (Ba et al. 2016): each sample over all of (C, *), per-channel affine.

    The same computation in training and evaluation: no running statistics.
    Like every functional form here: float16/bfloat16 is normalized in
    float32 and returned in its own dtype; ``eps`` finite and ``> 0``, as
    for the layers; one value per sample is refused (the output would be
    beta whatever the input). NaN in a sample makes that sample's output NaN
    and no other (as PyTorch).

    Example:
        >>> import torch
        >>> layer_norm(torch.tensor([[1.0, 3.0], [0.0, 10.0]]), eps=1e-12)
        tensor([[-1.,  1.],
                [-1.,  1.]])
    """
    check_input(x, name)
    dims = tuple(range(1, x.ndim))
    return _moment_norm(
        x,
        weight,
        bias,
        eps,
        name,
        tuple(x.shape),
        dims,
        "value per sample",
        "the output would be beta whatever the input",
    )


def instance_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    *,
    eps: float = 1e-5,
    name: str = "instance_norm",
) -> torch.Tensor:
    r"""Instance normalization (Ulyanov et al. 2016): each sample and channel over the spatial dims (*).

    Conventions as :func:`layer_norm`; the input needs spatial dims (N, C, L)
    or (N, C, H, W) with more than one position.

    Example:
        >>> import torch
        >>> instance_norm(torch.tensor([[[1.0, 3.0], [5.0, 9.0]]]), eps=1e-12)   # (N=1, C=2, L=2)
        tensor([[[-1.,  1.],
                 [-1.,  1.]]])
    """
    check_input(
        x,
        name,
        min_ndim=3,
        expected="(N, C, L) or (N, C, H, W)",
        hint="instance norm needs spatial axes: pass (N, C, H, W) or (N, C, L), not (N, C); for (N, C) features "
        "use LayerNorm or BatchNorm",
    )
    dims = tuple(range(2, x.ndim))
    return _moment_norm(
        x, weight, bias, eps, name, tuple(x.shape), dims,
        "spatial position per channel", "instance norm of a single value is always beta",
    )  # fmt: skip


def group_norm(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    *,
    eps: float = 1e-5,
    name: str = "group norm",
) -> torch.Tensor:
    r"""Group normalization (Wu and He 2018): each sample over (C/G, *) within each of G channel groups.

    Reshapes (N, C, *) to (N, G, C/G, *) and reduces over all dims after the
    group dim. ``num_groups=1`` is layer norm; ``num_groups=C`` is instance
    norm. Conventions as :func:`layer_norm`.

    Example:
        >>> import torch
        >>> x = torch.tensor([[1.0, 3.0, 0.0, 10.0]])      # (N=1, C=4), two groups of two
        >>> group_norm(x, 2, eps=1e-12)
        tensor([[-1.,  1., -1.,  1.]])
    """
    check_input(x, name)
    num_groups = _checks.positive_int(num_groups, f"{name}: num_groups", hint="G, the number of channel groups")
    n, c = x.shape[0], x.shape[1]
    if c % num_groups:
        raise ValueError(
            f"{name}: num_channels={c} is not divisible by num_groups={num_groups}; "
            f"choose num_groups among the divisors of {c}"
        )
    per_group = (c // num_groups) * math.prod(x.shape[2:])
    return _moment_norm(
        x, weight, bias, eps, name, (n, num_groups, per_group), (2,), "value per group", "use fewer groups"
    )
