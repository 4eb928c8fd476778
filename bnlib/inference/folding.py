"""Folding batch norm into the layer before it: one fixed affine map fewer at inference.

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

Conventions follow PyTorch: ``running_var`` is the unbiased variance (divided
by n - 1), ``eps`` is added inside the square root. A batch renorm's
``running_std`` already holds ``sqrt(var + eps)``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from bnlib.inference.recalibration import _describe, _spread_name, is_batchnorm

__all__ = ["fold_batchnorm"]

_FOLDABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _affine_parameters(name: str, bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """mean, std, gamma, beta of a batch norm's eval-mode map ``gamma * (x - mean) / std + beta``.

    ``std`` is ``sqrt(running_var + eps)``, or a batch renorm's ``running_std``.
    A ValueError, naming the layer, when it has no running statistics or when
    they cannot define that map: a NaN, infinite or negative variance (a
    standard deviation that is not > 0), or a non-finite mean, gamma or beta.
    The checks are explicit (``torch.isfinite``): a comparison with NaN is
    False and would let a NaN through.
    """
    spread = _spread_name(bn)
    mean, value = getattr(bn, "running_mean", None), getattr(bn, spread, None)
    if mean is None or value is None:
        raise ValueError(
            f"cannot fold {_describe(name, bn)}: it has no running statistics (track_running_stats=False), "
            "so even in eval mode it normalizes with each batch's own statistics and is not a fixed affine map; "
            "train it with track_running_stats=True, or set them with recompute_batchnorm_statistics after "
            "turning tracking on"
        )
    mean, value = mean.detach(), value.detach()
    gamma = bn.weight.detach() if getattr(bn, "weight", None) is not None else torch.ones_like(mean)
    beta = bn.bias.detach() if getattr(bn, "bias", None) is not None else torch.zeros_like(mean)
    is_variance = spread == "running_var"  # a variance may be 0 (eps keeps the root positive); a std may not
    nonfinite = ~torch.isfinite(value)
    invalid = nonfinite | ((value < 0) if is_variance else (value <= 0))
    if bool(invalid.any()):
        channels = invalid.nonzero().flatten().tolist()
        expected = ">= 0" if is_variance else "> 0"
        raise ValueError(
            f"cannot fold {_describe(name, bn)}: its {spread} holds {int(nonfinite.sum())} NaN or infinite and "
            f"{int((invalid & ~nonfinite).sum())} out-of-range value(s) (channels {channels[:8]}"
            f"{' ...' if len(channels) > 8 else ''}; first {value[channels[0]].item()!r}), but it must be finite "
            f"and {expected}; folding it would give NaN weights. Re-estimate the statistics "
            "(bnlib.inference.recompute_batchnorm_statistics) or reset them (reset_running_stats())"
        )
    for label, tensor in (("running_mean", mean), ("weight (gamma)", gamma), ("bias (beta)", beta)):
        if not bool(torch.isfinite(tensor).all()):
            raise ValueError(
                f"cannot fold {_describe(name, bn)}: its {label} holds {int((~torch.isfinite(tensor)).sum())} "
                "NaN or infinite value(s); folding it would give non-finite weights"
            )
    std = torch.sqrt(value + float(bn.eps)) if spread == "running_var" else value
    if not bool((torch.isfinite(std) & (std > 0)).all()):
        raise ValueError(
            f"cannot fold {_describe(name, bn)}: sqrt(running_var + eps) is 0 in some channel (eps={bn.eps!r} "
            "and a variance of 0); the layer itself would divide by zero"
        )
    return mean, std, gamma, beta


def _check_is_affine(name: str, bn: nn.Module, probe_shape: tuple[int, ...]) -> None:
    """Refuse a batch-norm layer whose eval-mode output is not the affine map it is folded as."""
    mean, std, gamma, beta = _affine_parameters(name, bn)
    generator = torch.Generator().manual_seed(0)
    probe = torch.randn(probe_shape, generator=generator, dtype=torch.float64).to(device=mean.device, dtype=mean.dtype)
    view = (1, -1) + (1,) * (len(probe_shape) - 2)
    expected = gamma.view(view) * (probe - mean.view(view)) / std.view(view) + beta.view(view)
    was_training = bn.training
    bn.eval()
    try:
        with torch.no_grad():
            actual = bn(probe)
    finally:
        bn.train(was_training)
    tolerance = 1e-4 * (1.0 + expected.abs().max().item())
    # Written so that NaN fails: `not (difference <= tolerance)` is True for a NaN difference.
    agrees = actual.shape == expected.shape and bool(torch.isfinite(actual).all())
    if not (agrees and (actual - expected).abs().max().item() <= tolerance):
        raise ValueError(
            f"cannot fold {_describe(name, bn)}: in eval mode it is not the affine map "
            "gamma * (x - running_mean) / sqrt(running_var + eps) + beta, so folding would change the model"
        )


@torch.no_grad()
def _fold_pair(layer: nn.Module, bn_name: str, bn: nn.Module) -> None:
    """Fold ``bn`` into ``layer`` in place: W' = W * scale, b' = (b - mean) * scale + beta."""
    mean, std, gamma, beta = _affine_parameters(bn_name, bn)
    scale = gamma / std  # (C,)
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

    Each batch-norm layer (:func:`~bnlib.inference.is_batchnorm`: ``nn.BatchNorm1d/2d/3d``,
    bnlib's ``BatchNorm``, ``GhostBatchNorm`` and ``BatchRenorm``) that directly follows an ``nn.Linear`` or ``nn.Conv1d/2d/3d`` in an
    ``nn.Sequential`` is merged into that layer and replaced by ``nn.Identity``
    (so the other layers keep their names in the ``state_dict``):

        W' = W * gamma / sqrt(running_var + eps)
        b' = (b - running_mean) * gamma / sqrt(running_var + eps) + beta

    (for ``BatchRenorm``, ``running_std`` in the place of ``sqrt(running_var + eps)``).
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
            statistics (``track_running_stats=False``) or they are not valid (a
            NaN, infinite or negative running variance, a running std that is
            not > 0, a non-finite mean, gamma or beta: folding would give NaN
            weights); it is another layer with running statistics (instance
            norm with tracking); it is not, in eval mode, the affine map it is
            folded as (checked on a probe, NaN output included); its channel
            count differs from the layer before it; or that layer is shared or
            parametrized. Nothing is folded then.

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
                    "fold_batchnorm knows (nn.BatchNorm1d/2d/3d, bnlib.layers.BatchNorm, GhostBatchNorm, BatchRenorm)"
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
