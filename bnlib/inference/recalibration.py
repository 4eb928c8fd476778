"""Re-estimating batch norm's running statistics: exactly over a data set, or AdaBN on a new domain.

A batch-norm layer in evaluation mode divides by statistics it averaged
during training, estimates taken while the weights still moved. Two ways to
replace them, both without labels and without touching a weight:

- :func:`recompute_batchnorm_statistics`: the exact mean and variance of what
  each layer receives over a data set, layer by layer from the input up, in
  float64 (the inference-network reading of Ioffe and Szegedy's Algorithm 2,
  arXiv 1502.03167).
- :func:`adapt_batchnorm`: AdaBN (Li et al. 2016, arXiv 1603.04779): one pass
  over data from a new domain with only the batch norms in training mode and
  PyTorch's cumulative average (``momentum=None``).

What counts as a batch-norm layer is defined once, by :func:`is_batchnorm`,
and both functions (and :func:`bnlib.inference.fold_batchnorm`) use it.
Both refuse data with NaN or inf, and statistics that are not finite in the
buffers' dtype, and then leave every running statistic as it was.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch
from torch import nn

from bnlib.device import resolve_device

__all__ = ["is_batchnorm", "batchnorm_layers", "recompute_batchnorm_statistics", "adapt_batchnorm"]


def _bnlib_batch_norm_types() -> tuple[type, ...]:
    # Looked up when called: bnlib.layers is imported only when a model is inspected.
    from bnlib import layers

    names = ("BatchNorm", "GhostBatchNorm", "BatchRenorm")
    return tuple(t for t in (getattr(layers, name, None) for name in names) if isinstance(t, type))


def is_batchnorm(module: nn.Module) -> bool:
    """True for a batch-norm layer: one that normalizes each channel over the batch in training and by running statistics at inference.

    That is ``torch.nn.BatchNorm1d/2d/3d`` and ``SyncBatchNorm`` (PyTorch's
    ``_BatchNorm`` family), and bnlib's ``BatchNorm``, ``GhostBatchNorm`` and
    ``BatchRenorm``. This is the one definition bnlib uses: the layers
    :func:`recompute_batchnorm_statistics` and :func:`adapt_batchnorm`
    re-estimate and :func:`bnlib.inference.fold_batchnorm` folds.

    ``BatchRenorm`` counts: it differs from batch norm only in training (the
    ``r``, ``d`` corrections); at inference it is the same per-channel affine
    map ``gamma * (x - running_mean) / running_std + beta``, with
    ``running_std`` (the paper's sigma, ``eps`` inside it) in the place of
    ``sqrt(running_var + eps)``, so it can be folded and its statistics
    re-estimated like any batch norm. Layer, group and instance norm are not
    batch norms (they normalize each example on its own, even an instance
    norm that tracks running statistics); ``NoisyBatchNorm`` is not either,
    but the batch norm inside it is.

    Example:
        >>> is_batchnorm(nn.BatchNorm2d(3)), is_batchnorm(nn.LayerNorm(3)), is_batchnorm(nn.InstanceNorm2d(3))
        (True, False, False)
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"is_batchnorm expects an nn.Module (a layer), got {type(module).__name__} {module!r}")
    return isinstance(module, (nn.modules.batchnorm._BatchNorm, *_bnlib_batch_norm_types()))


def _spread_name(module: nn.Module) -> str:
    """The buffer that holds the layer's spread: ``running_std`` for batch renorm, else ``running_var``."""
    return "running_std" if getattr(module, "running_std", None) is not None else "running_var"


def _has_running_statistics(module: nn.Module) -> bool:
    return getattr(module, "running_mean", None) is not None and getattr(module, _spread_name(module), None) is not None


def batchnorm_layers(model: nn.Module) -> list[nn.Module]:
    """The batch-norm layers of ``model`` (:func:`is_batchnorm`) that keep running statistics, in module order.

    A batch norm built with ``track_running_stats=False`` has none: it uses
    each batch's statistics in evaluation mode too, so there is nothing to
    re-estimate and it is left out.

    Example:
        >>> model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.GroupNorm(1, 2))
        >>> [type(m).__name__ for m in batchnorm_layers(model)]
        ['BatchNorm2d']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return [m for m in model.modules() if is_batchnorm(m) and _has_running_statistics(m)]


def _describe(name: str, module: nn.Module) -> str:
    return f"{name or '<model>'} ({type(module).__name__})"


def _layers_to_update(model: nn.Module, caller: str) -> list[tuple[str, nn.Module]]:
    """(name, layer) of every batch norm with running statistics; a ValueError saying why there is none."""
    found = [(name, m) for name, m in model.named_modules() if is_batchnorm(m)]
    tracked = [(name, m) for name, m in found if _has_running_statistics(m)]
    if not found:
        raise ValueError(
            f"{caller}: {type(model).__name__} has no batch-norm layer (nn.BatchNorm1d/2d/3d, bnlib.layers.BatchNorm, "
            "GhostBatchNorm or BatchRenorm), so there are no statistics to re-estimate "
            "(layer, instance and group norm keep none)"
        )
    if not tracked:
        raise ValueError(
            f"{caller}: the batch norms of {type(model).__name__} ({', '.join(_describe(n, m) for n, m in found)}) "
            "keep no running statistics (track_running_stats=False): they always use batch statistics, so there "
            "is nothing to re-estimate; build them with track_running_stats=True"
        )
    return tracked


def _as_inputs(data: Any, caller: str) -> torch.Tensor:
    """The inputs of ``data`` (a tensor, an array, or an (x, y) pair), checked: an example axis, and no NaN or inf."""
    x = data[0] if isinstance(data, (tuple, list)) and len(data) > 0 else data
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"{caller}: data must be a tensor or array of inputs (N, ...), or an (x, y) pair of them "
            f"(a tensor x or a tuple (x, y)), got {type(data).__name__}; "
            "for a DataLoader, concatenate its inputs with torch.cat([x for x, _ in loader])"
        )
    if x.dim() < 1 or len(x) == 0:
        raise ValueError(f"{caller}: data must have a batch axis and at least one example, got shape {tuple(x.shape)}")
    if x.is_floating_point() or x.is_complex():
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            rows = bad.reshape(len(x), -1).any(dim=1)
            raise ValueError(
                f"{caller}: data holds {int(bad.sum())} NaN or infinite value(s) in {int(rows.sum())} of its "
                f"{len(x)} examples (the first at index {int(rows.nonzero()[0, 0])}); one such value makes a "
                "channel's statistics NaN, so nothing was changed. Keep the finite examples: "
                "x = x[torch.isfinite(x).flatten(1).all(1)]"
            )
    return x


def _check_batch_size(batch_size: Any, caller: str) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"{caller}: batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


def _statistics(layers: list[tuple[str, nn.Module]]) -> dict[nn.Module, dict[str, torch.Tensor]]:
    """A copy of every buffer of ``layers``: what :func:`_restore` puts back when anything fails."""
    return {layer: {name: b.detach().clone() for name, b in layer.named_buffers()} for _, layer in layers}


@torch.no_grad()
def _restore(saved: dict[nn.Module, dict[str, torch.Tensor]]) -> None:
    for layer, buffers in saved.items():
        for name, value in buffers.items():
            layer.get_buffer(name).copy_(value)


def _check_finite_buffers(name: str, layer: nn.Module, caller: str, inputs: torch.Tensor) -> None:
    """Refuse running statistics that came out NaN or infinite (e.g. data whose squares overflow the dtype)."""
    for buffer in ("running_mean", _spread_name(layer)):
        value = getattr(layer, buffer)
        if not bool(torch.isfinite(value).all()):
            scale = float(inputs.abs().max())
            raise ValueError(
                f"{caller}: the {buffer} of {_describe(name, layer)} would be NaN or infinite in {value.dtype} "
                f"(the largest |x| in data is {scale:.3g}): the data's scale overflows the layer's statistics; "
                "standardize or rescale the data first. The running statistics were left unchanged"
            )


class _StopForwardError(Exception):
    """Raised by a hook to end a forward pass once the layer of interest has seen its input."""


class _Moments:
    """Per-channel count, mean and sum of squared deviations, merged batch by batch (Chan et al.), in float64."""

    def __init__(self) -> None:
        self.count, self.mean, self.m2 = 0, None, None

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().to(torch.float64)
        dims = [d for d in range(x.dim()) if d != 1]  # every axis but the channels
        n = x.numel() // x.shape[1]
        mean = x.mean(dim=dims)
        m2 = ((x - mean.view((1, -1) + (1,) * (x.dim() - 2))) ** 2).sum(dim=dims)
        if self.mean is None:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        delta, total = mean - self.mean, self.count + n
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * n / total)
        self.count = total


def _input_moments(
    model: nn.Module, layer: nn.Module, inputs: torch.Tensor, *, batch_size: int, device: torch.device
) -> _Moments | None:
    """The moments per channel of what ``layer`` receives over ``inputs``; None if it never ran."""
    moments = _Moments()

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        moments.add(args[0])
        raise _StopForwardError  # nothing after this layer is needed

    handle = layer.register_forward_pre_hook(hook)
    try:
        for start in range(0, len(inputs), batch_size):
            with contextlib.suppress(_StopForwardError):
                model(inputs[start : start + batch_size].to(device))
    finally:
        handle.remove()
    return moments if moments.mean is not None else None


@torch.no_grad()
def _write_moments(layer: nn.Module, moments: _Moments) -> None:
    """running_mean = mean; running_var = the unbiased variance, or running_std = sqrt(biased variance + eps)."""
    layer.running_mean.copy_(moments.mean.to(layer.running_mean.dtype))
    if _spread_name(layer) == "running_std":  # batch renorm's own convention: the paper's sigma
        layer.running_std.copy_((moments.m2 / moments.count + layer.eps).sqrt().to(layer.running_std.dtype))
    else:
        layer.running_var.copy_((moments.m2 / max(moments.count - 1, 1)).to(layer.running_var.dtype))


@torch.no_grad()
def recompute_batchnorm_statistics(
    model: nn.Module,
    data: Any,
    *,
    batch_size: int,
    device: torch.device | str | None = None,
) -> nn.Module:
    """Set every batch norm's running statistics to the exact statistics of ``data``, in place.

    During training, ``running_mean`` and ``running_var`` are exponential moving
    averages of batch statistics taken while the weights were still changing,
    so right after (or early in) training they lag behind the final network.
    This function replaces them, layer by layer from the input up, with the
    mean and the (unbiased) variance, per channel, of what each batch-norm
    layer receives when the network runs in eval mode on all of ``data``, with
    the layers below it already updated. Afterwards, in eval mode, each batch
    norm standardizes its input over ``data`` exactly (up to the factor
    ``n / (n - 1)`` of the unbiased convention, with n = examples x positions).

    This is the inference-network reading of Ioffe and Szegedy's Algorithm 2
    (arXiv 1502.03167) and what AdaBN (Li et al. 2016, arXiv 1603.04779) does
    with data from a new domain. Unlike ``torch.optim.swa_utils.update_bn``
    (which averages per-batch statistics in training mode) the result does not
    depend on ``batch_size``; that only bounds the memory used.

    Conventions:
        - Sums are accumulated in float64 and merged across batches with
          Chan's formula, so large data sets lose no precision. Each layer
          costs one pass over ``data`` that stops at that layer.
        - The layers are those of :func:`batchnorm_layers` (see
          :func:`is_batchnorm`); a ``BatchRenorm`` gets ``running_std =
          sqrt(variance + eps)`` with the biased variance, its own convention.
          ``num_batches_tracked`` and ``momentum`` are not changed.
        - Data with NaN or inf is refused before anything runs; statistics
          that come out NaN or infinite in the buffers' dtype (data whose
          squares overflow float32) are refused too. On any error, Ctrl-C
          included, every running statistic is put back as it was.

    Args:
        model: a module with at least one batch-norm layer that tracks running
            statistics. Modules keep their training flags; dropout and every
            other layer run in eval mode during the passes.
        data: the inputs, a tensor or NumPy array ``(N, ...)``, or an ``(x, y)``
            pair whose labels are ignored.
        batch_size: examples per forward pass (keyword-only).
        device: where to compute (:func:`bnlib.device.resolve_device`: this
            argument, else where the model is); the model is moved there.

    Returns:
        ``model`` itself (updated in place), for chaining.

    Raises:
        TypeError: ``model`` is not a module, or ``data`` is not a tensor/array/pair.
        ValueError: no batch-norm layer with running statistics, a
            non-positive ``batch_size``, empty data, data with NaN or inf, or
            statistics that are not finite.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
        >>> x = torch.randn(100, 3)
        >>> _ = recompute_batchnorm_statistics(model, x, batch_size=32)
        >>> h = model[0](x)
        >>> bool(torch.allclose(model[1].running_mean, h.mean(0)) and torch.allclose(model[1].running_var, h.var(0)))
        True
    """
    caller = "recompute_batchnorm_statistics"
    if not isinstance(model, nn.Module):
        raise TypeError(f"{caller} expects a torch.nn.Module, got {type(model).__name__}")
    batch_size = _check_batch_size(batch_size, caller)
    layers = _layers_to_update(model, caller)
    inputs = _as_inputs(data, caller)
    device = resolve_device(model, device)
    model.to(device)
    modes = {module: module.training for module in model.modules()}
    saved = _statistics(layers)
    done = False
    model.eval()
    try:
        for name, bn in layers:  # named_modules order: the order layers are registered, input first in Sequentials
            moments = _input_moments(model, bn, inputs, batch_size=batch_size, device=device)
            if moments is None:
                raise ValueError(f"{caller}: {_describe(name, bn)} never ran during the forward passes over data")
            _write_moments(bn, moments)
            _check_finite_buffers(name, bn, caller, inputs)
        done = True
    finally:
        if not done:
            _restore(saved)
        for module, training in modes.items():
            module.training = training
    return model


def adapt_batchnorm(
    model: nn.Module,
    data: torch.Tensor | tuple[torch.Tensor, ...],
    *,
    batch_size: int,
    device: torch.device | str | None = None,
) -> nn.Module:
    r"""Re-estimate every batch-norm layer's running statistics on ``data`` (AdaBN); returns ``model``.

    Paper: Y. Li, N. Wang, J. Shi, J. Liu, X. Hou, "Revisiting Batch
    Normalization For Practical Domain Adaptation", arXiv:1603.04779 (2016).

    A batch-norm network stores, in each layer's running mean and variance,
    what its activations looked like on the training data. When the test data
    comes from a shifted domain (other lighting, another scanner, inverted
    colours), those statistics are wrong. AdaBN keeps every learned weight and
    recomputes only the statistics, from unlabelled data of the new domain.

    For each batch-norm layer (see :func:`batchnorm_layers`): reset its
    running statistics, set ``momentum=None`` (PyTorch's cumulative average:
    after :math:`t` batches the running mean is the plain average
    :math:`\frac1t\sum_{s\le t}\mu_s` of the batch means, and likewise the
    variance); then pass ``data`` through the model once, in order, under
    ``torch.no_grad()``, with **only the batch-norm layers** in training mode
    (dropout and everything else in evaluation mode). Finally each layer's
    ``momentum`` and every module's ``training`` flag are restored. Weights
    are not touched, and nothing needs labels. When the pass fails (say, a
    last batch of one sample for a dense layer, statistics that come out NaN
    or infinite, or Ctrl-C), every buffer of the layers is restored too and
    the error is raised: the model is left as it was. Data with NaN or inf is
    refused before anything runs.

    Conventions and limits:
        * With equal batches the running mean is exactly the mean of the
          layer's inputs over ``data``; the running variance is the average
          of the per-batch unbiased variances, which equals the population
          variance (unbiased) only when one batch holds all of ``data``. A
          shorter last batch counts as much as a full one. For the exact
          population statistics use :func:`recompute_batchnorm_statistics`.
        * During the pass each layer normalizes with its batch's statistics
          (training mode), so deeper layers see what they would see in
          training. The paper instead fixes each layer's statistics before
          computing the next; the two agree up to batch noise, which is
          small for large ``batch_size``.
        * :class:`~bnlib.layers.BatchRenorm` layers run as plain batch norm
          during the pass (``r_max=1, d_max=0``), since their corrections
          towards the statistics being reset would be meaningless;
          :class:`~bnlib.layers.GhostBatchNorm` averages over its virtual batches.

    Args:
        model: a trained model with batch-norm layers.
        data: unlabelled inputs of the new domain, a tensor or array (N, ...) or a tuple whose first entry is one.
        batch_size: samples per forward pass (large is better: the batch statistics are less noisy).
        device: where to run (:func:`bnlib.device.resolve_device`: this argument, else where the model is);
            the model is moved there.

    Raises:
        TypeError: ``model`` is not an ``nn.Module`` or ``data`` is not a tensor / array / tuple.
        ValueError: no batch-norm layer with running statistics; empty ``data``; data with NaN or inf;
            statistics that are not finite; ``batch_size < 1``.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.5)).eval()
        >>> shifted = 5 + torch.randn(64, 3)
        >>> _ = adapt_batchnorm(model, shifted, batch_size=64)
        >>> with torch.no_grad():
        ...     torch.allclose(model[1].running_mean, model[0](shifted).mean(0), atol=1e-6)
        True
        >>> model.training, model[1].momentum         # mode and momentum restored
        (False, 0.1)
    """
    caller = "adapt_batchnorm"
    if not isinstance(model, nn.Module):
        raise TypeError(f"{caller} expects an nn.Module, got {type(model).__name__}")
    x = _as_inputs(data, caller)
    batch_size = _check_batch_size(batch_size, caller)
    layers = _layers_to_update(model, caller)
    device = resolve_device(model, device)
    model.to(device)
    modes = {module: module.training for module in model.modules()}
    saved = {
        layer: (layer.momentum, getattr(layer, "r_max", None), getattr(layer, "d_max", None)) for _, layer in layers
    }
    statistics = _statistics(layers)  # the statistics are reset below: a pass that fails puts these back
    adapted = False
    try:
        model.eval()
        for _, layer in layers:
            layer.reset_running_stats()
            layer.momentum = None
            if _spread_name(layer) == "running_std":
                layer.r_max, layer.d_max = 1.0, 0.0
            layer.train()
        with torch.no_grad():
            for start in range(0, len(x), batch_size):
                model(x[start : start + batch_size].to(device))
        for name, layer in layers:
            _check_finite_buffers(name, layer, caller, x)
        adapted = True
    finally:
        if not adapted:
            _restore(statistics)
        for layer, (momentum, r_max, d_max) in saved.items():
            layer.momentum = momentum
            if _spread_name(layer) == "running_std":
                layer.r_max, layer.d_max = r_max, d_max
        for module, training in modes.items():
            module.training = training
    return model
