"""Batch norm at inference time: fold it away, or recompute its statistics.

In evaluation mode a batch-norm layer is a fixed per-channel affine map,

    y = gamma * (x - mean) / sqrt(var + eps) + beta = scale * x + shift,

with ``scale = gamma / sqrt(var + eps)`` and ``shift = beta - mean * scale``.
When it directly follows a convolution or linear layer ``x = W u + b``, the two
compose into one layer with

    W' = W * scale   (each output channel's row or filter scaled)
    b' = (b - mean) * scale + beta,

so the network does the same arithmetic with one layer fewer
(:func:`fold_batchnorm`; the paper's Algorithm 2 already writes inference BN as
this affine map, Ioffe and Szegedy 2015, arXiv 1502.03167).

The running averages that evaluation mode uses are only estimates;
:func:`recompute_batchnorm_statistics` replaces them by the exact statistics of
a data set, seen through the network as it runs at inference.

Conventions follow PyTorch: ``running_var`` is the unbiased variance (divided
by n - 1), ``eps`` is added inside the square root.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["fold_batchnorm", "recompute_batchnorm_statistics", "is_batchnorm"]

_FOLDABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _bnlib_batch_norm_types() -> tuple[type, ...]:
    # bnlib's own batch norms, looked up when called (the same set AdaBN re-estimates in bnlib.layers.adapt).
    from bnlib import layers

    names = ("BatchNorm", "GhostBatchNorm")
    return tuple(t for t in (getattr(layers, name, None) for name in names) if isinstance(t, type))


def is_batchnorm(module: nn.Module) -> bool:
    """True for a batch-norm layer: ``nn.BatchNorm1d/2d/3d``, ``nn.SyncBatchNorm`` or one of bnlib's.

    bnlib's are ``BatchNorm`` and ``GhostBatchNorm``, which keep PyTorch's
    buffers (``running_mean``, ``running_var``). ``bnlib.layers.BatchRenorm``
    stores a running standard deviation instead and is not included; layer,
    instance and group norm keep no running statistics.

    Example:
        >>> is_batchnorm(nn.BatchNorm2d(3)), is_batchnorm(nn.LayerNorm(3))
        (True, False)
    """
    return isinstance(module, (nn.modules.batchnorm._BatchNorm, *_bnlib_batch_norm_types()))


def _named_batchnorms(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, module) for name, module in model.named_modules() if is_batchnorm(module)]


def _describe(name: str, module: nn.Module) -> str:
    return f"{name or '<model>'} ({type(module).__name__})"


def _affine_parameters(
    name: str, bn: nn.Module
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """mean, var, gamma, beta, eps of a batch-norm layer, or a ValueError saying why it has none."""
    mean, var = getattr(bn, "running_mean", None), getattr(bn, "running_var", None)
    if mean is None or var is None:
        raise ValueError(
            f"cannot fold {_describe(name, bn)}: it has no running statistics (track_running_stats=False), "
            "so even in eval mode it normalizes with each batch's own statistics and is not a fixed affine map; "
            "train it with track_running_stats=True, or set them with recompute_batchnorm_statistics after "
            "turning tracking on"
        )
    mean, var = mean.detach(), var.detach()
    gamma = bn.weight.detach() if getattr(bn, "weight", None) is not None else torch.ones_like(mean)
    beta = bn.bias.detach() if getattr(bn, "bias", None) is not None else torch.zeros_like(mean)
    return mean, var, gamma, beta, float(bn.eps)


def _check_is_affine(name: str, bn: nn.Module, probe_shape: tuple[int, ...]) -> None:
    """Refuse a batch-norm layer whose eval-mode output is not the affine map it is folded as."""
    mean, var, gamma, beta, eps = _affine_parameters(name, bn)
    generator = torch.Generator().manual_seed(0)
    probe = torch.randn(probe_shape, generator=generator, dtype=torch.float64).to(device=mean.device, dtype=mean.dtype)
    view = (1, -1) + (1,) * (len(probe_shape) - 2)
    expected = gamma.view(view) * (probe - mean.view(view)) / torch.sqrt(var.view(view) + eps) + beta.view(view)
    was_training = bn.training
    bn.eval()
    try:
        with torch.no_grad():
            actual = bn(probe)
    finally:
        bn.train(was_training)
    tolerance = 1e-4 * (1.0 + expected.abs().max().item())
    if actual.shape != expected.shape or (actual - expected).abs().max().item() > tolerance:
        raise ValueError(
            f"cannot fold {_describe(name, bn)}: in eval mode it is not the affine map "
            "gamma * (x - running_mean) / sqrt(running_var + eps) + beta, so folding would change the model"
        )


@torch.no_grad()
def _fold_pair(layer: nn.Module, bn_name: str, bn: nn.Module) -> None:
    """Fold ``bn`` into ``layer`` in place: W' = W * scale, b' = (b - mean) * scale + beta."""
    mean, var, gamma, beta, eps = _affine_parameters(bn_name, bn)
    scale = gamma / torch.sqrt(var + eps)  # (C,)
    weight = layer.weight
    bias = layer.bias if layer.bias is not None else torch.zeros_like(mean)
    new_weight = weight * scale.reshape((-1,) + (1,) * (weight.dim() - 1)).to(weight.dtype)
    new_bias = ((bias - mean) * scale + beta).to(weight.dtype)
    layer.weight = nn.Parameter(new_weight, requires_grad=weight.requires_grad)
    layer.bias = nn.Parameter(new_bias, requires_grad=weight.requires_grad)


def _check_layer_before(name: str, bn: nn.Module, before_name: str, before: nn.Module, uses: int) -> int:
    """Refuse a layer that ``bn`` cannot be folded into; return its output channel count."""
    channels = getattr(bn, "running_mean", None)
    out = before.out_features if isinstance(before, nn.Linear) else before.out_channels
    if channels is not None and channels.numel() != out:
        raise ValueError(
            f"cannot fold {_describe(name, bn)}: it has {channels.numel()} channels but "
            f"{_describe(before_name, before)} produces {out}"
        )
    if uses > 1:
        raise ValueError(
            f"cannot fold {_describe(name, bn)}: {_describe(before_name, before)} is used {uses} "
            "times in the model, and folding would change its other uses too"
        )
    if torch.nn.utils.parametrize.is_parametrized(before):
        raise ValueError(
            f"cannot fold {_describe(name, bn)}: {_describe(before_name, before)} has a parametrized weight "
            "(e.g. weight norm); remove the parametrization first (torch.nn.utils.parametrize.remove_parametrizations)"
        )
    return out


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Return a copy of ``model`` in eval mode with every batch norm folded into the layer before it.

    Each batch-norm layer (``nn.BatchNorm1d/2d/3d``, ``bnlib.layers.BatchNorm``)
    that directly follows an ``nn.Linear`` or ``nn.Conv1d/2d/3d`` in an
    ``nn.Sequential`` is merged into that layer and replaced by ``nn.Identity``
    (so the other layers keep their names in the ``state_dict``):

        W' = W * gamma / sqrt(running_var + eps)
        b' = (b - running_mean) * gamma / sqrt(running_var + eps) + beta

    The copy computes what the original computes **in eval mode**; in training
    mode the original normalizes with batch statistics, which no fixed weights
    can reproduce. The original model is not modified. A model without batch
    norm comes back as an eval-mode copy, unchanged.

    Paper: Ioffe and Szegedy 2015 (arXiv 1502.03167), Algorithm 2, writes
    inference batch norm as this affine map. PyTorch does the same for one pair
    in ``torch.nn.utils.fusion.fuse_conv_bn_eval``.

    Args:
        model: an ``nn.Sequential``, or a module whose batch-norm layers all sit
            inside ``nn.Sequential`` containers (like ``bnlib.models.LeNet5``).

    Returns:
        The folded copy, in eval mode, on the same device and dtype.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: naming the layer, when a batch norm cannot be folded: it
            follows an activation, pooling or anything but a convolution or
            linear layer (e.g. LeNet-5 with BN after the activation); it is the
            first layer of its container; it sits in a module with its own
            ``forward`` (the layer it follows is unknown); it has no running
            statistics (``track_running_stats=False``); it is another layer with
            running statistics (e.g. ``bnlib.layers.BatchRenorm``, instance
            norm with tracking); its channel count differs
            from the layer before it; or that layer is shared or parametrized.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
        >>> _ = model[1].running_mean.uniform_(-1, 1), model[1].running_var.uniform_(0.5, 2)
        >>> folded = fold_batchnorm(model)
        >>> folded
        Sequential(
          (0): Conv2d(1, 4, kernel_size=(3, 3), stride=(1, 1))
          (1): Identity()
          (2): ReLU()
        )
        >>> x = torch.randn(2, 1, 8, 8)
        >>> bool(torch.allclose(folded(x), model(x), atol=1e-6))
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fold_batchnorm expects a torch.nn.Module, got {type(model).__name__}")
    folded = copy.deepcopy(model).eval()
    uses: dict[int, int] = {}
    for _, module in folded.named_modules(remove_duplicate=False):
        uses[id(module)] = uses.get(id(module), 0) + 1
    parents = dict(folded.named_modules())
    plan: list[tuple[nn.Sequential, str, str, nn.Module, str, nn.Module]] = []
    for name, bn in folded.named_modules():
        if not is_batchnorm(bn):
            if getattr(bn, "running_mean", None) is not None and not isinstance(bn, nn.Identity):
                raise ValueError(
                    f"cannot fold {_describe(name, bn)}: it keeps running statistics but is not a batch norm "
                    "fold_batchnorm knows (nn.BatchNorm1d/2d/3d, bnlib.layers.BatchNorm, GhostBatchNorm)"
                )
            continue
        parent_name, _, child = name.rpartition(".")
        parent = parents[parent_name] if name else None
        if not isinstance(parent, nn.Sequential):
            where = (
                "it is the model itself"
                if parent is None
                else f"its parent {_describe(parent_name, parent)} has its own forward()"
            )
            raise ValueError(
                f"cannot fold {_describe(name, bn)}: {where}, so the layer it follows is unknown; "
                "fold_batchnorm folds batch norms inside nn.Sequential containers only"
            )
        keys = list(parent._modules)
        position = keys.index(child)
        if position == 0:
            raise ValueError(
                f"cannot fold {_describe(name, bn)}: it is the first layer of {_describe(parent_name, parent)}, "
                "so there is no convolution or linear layer before it to fold it into"
            )
        before_key = keys[position - 1]
        before_name = f"{parent_name}.{before_key}" if parent_name else before_key
        before = parent._modules[before_key]
        if not isinstance(before, _FOLDABLE):
            raise ValueError(
                f"cannot fold {_describe(name, bn)}: it follows {_describe(before_name, before)}, not an nn.Linear "
                "or nn.Conv1d/2d/3d. A nonlinearity or pooling between the layer and the batch norm stops the "
                "affine maps from composing (this is the case of batch norm after the activation); put the norm "
                "directly after the convolution or linear layer, or keep this model unfolded"
            )
        out = _check_layer_before(name, bn, before_name, before, uses[id(before)])
        probe_shape = (2, out) if isinstance(before, nn.Linear) else (2, out) + (1,) * (before.weight.dim() - 2)
        _check_is_affine(name, bn, probe_shape)
        plan.append((parent, child, name, bn, before_name, before))
    for parent, child, name, bn, _, before in plan:
        _fold_pair(before, name, bn)
        parent._modules[child] = nn.Identity()
    return folded


def _as_inputs(data: Any) -> torch.Tensor:
    x = data[0] if isinstance(data, (tuple, list)) else data
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"data must be a tensor or array of inputs (N, ...), or an (x, y) pair of them, got {type(data).__name__}"
        )
    if x.dim() < 2 or len(x) == 0:
        raise ValueError(f"data must have a batch axis and at least one example, got shape {tuple(x.shape)}")
    return x


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
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Mean and unbiased variance per channel of what ``layer`` receives over ``inputs``; None if it never ran."""
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
    if moments.mean is None:
        return None
    return moments.mean, moments.m2 / max(moments.count - 1, 1)


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

    Sums are accumulated in float64 and merged across batches with Chan's
    formula, so large data sets lose no precision. Each layer costs one pass
    over ``data`` that stops at that layer.

    Args:
        model: a module with at least one batch-norm layer that tracks running
            statistics. Modules keep their training flags; dropout and every
            other layer run in eval mode during the passes.
        data: the inputs, a tensor or NumPy array ``(N, ...)``, or an ``(x, y)``
            pair whose labels are ignored.
        batch_size: examples per forward pass (keyword-only).
        device: where to compute; default the device of the model's parameters.

    Returns:
        ``model`` itself (updated in place), for chaining.

    Raises:
        TypeError: ``model`` is not a module, or ``data`` is not a tensor/array/pair.
        ValueError: no batch-norm layer, one with ``track_running_stats=False``,
            a non-positive ``batch_size`` or empty data.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
        >>> x = torch.randn(100, 3)
        >>> _ = recompute_batchnorm_statistics(model, x, batch_size=32)
        >>> h = model[0](x)
        >>> bool(torch.allclose(model[1].running_mean, h.mean(0)) and torch.allclose(model[1].running_var, h.var(0)))
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"recompute_batchnorm_statistics expects a torch.nn.Module, got {type(model).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    layers = _named_batchnorms(model)
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no batch-norm layer (nn.BatchNorm1d/2d/3d or bnlib.layers.BatchNorm); "
            "there are no statistics to recompute"
        )
    for name, bn in layers:
        if getattr(bn, "running_mean", None) is None or getattr(bn, "running_var", None) is None:
            raise ValueError(
                f"{_describe(name, bn)} has no running statistics (track_running_stats=False): it always uses "
                "batch statistics, so there is nothing to recompute; build it with track_running_stats=True"
            )
    if device is None:
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    inputs = _as_inputs(data)
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        for name, bn in layers:  # named_modules order: the order layers are registered, input first in Sequentials
            moments = _input_moments(model, bn, inputs, batch_size=batch_size, device=device)
            if moments is None:
                raise ValueError(f"{_describe(name, bn)} never ran during the forward passes over data")
            mean, variance = moments
            bn.running_mean.copy_(mean.to(bn.running_mean.dtype))
            bn.running_var.copy_(variance.to(bn.running_var.dtype))
    finally:
        for module, training in modes.items():
            module.training = training
    return model
