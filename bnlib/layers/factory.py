r"""Build a normalization layer by name: ``make_norm("batch", 16)``.

Models take the normalization as a parameter (``LeNet5(norm="group")``) and
call :func:`make_norm` for each layer's channel count, so an experiment can
sweep normalizations by name. New kinds are added with :func:`register_norm`.

Built-in kinds (each builder takes ``num_features`` first, then keyword settings):

==============  =====================================================================
``"batch"``     :class:`bnlib.layers.BatchNorm` (ours; (N, C) and (N, C, \*))
``"torch_batch"`` :class:`TorchBatchNorm`: ``nn.BatchNorm2d`` that also accepts (N, C) and (N, C, L)
``"layer"``     :class:`bnlib.layers.LayerNorm` (each sample over (C, \*))
``"instance"``  :class:`bnlib.layers.InstanceNorm` (each sample and channel over (\*))
``"group"``     :class:`bnlib.layers.GroupNorm`, ``num_groups`` defaulting to
                :func:`default_num_groups` (``num_groups=`` overrides)
``"batch_renorm"`` :class:`bnlib.layers.BatchRenorm` (batch renormalization; ``r_max=``, ``d_max=``)
``"ghost"``     :class:`bnlib.layers.GhostBatchNorm`, ``virtual_batch_size`` defaulting to 32
``"virtual"``   :class:`bnlib.layers.VirtualBatchNorm` (Salimans et al.'s reference batch; wrap the
                model in :class:`bnlib.layers.ReferenceBatch` to record the reference)
``"none"``      ``nn.Identity()``: no normalization, for sweeps that include the baseline
==============  =====================================================================
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from bnlib import _checks
from bnlib.layers.batch_norm import BatchNorm
from bnlib.layers.moment_norms import GroupNorm, InstanceNorm, LayerNorm
from bnlib.layers.virtual import VirtualBatchNorm

__all__ = ["make_norm", "register_norm", "known_norms", "default_num_groups", "TorchBatchNorm"]

NormBuilder = Callable[..., nn.Module]

_REGISTRY: dict[str, NormBuilder] = {}


class TorchBatchNorm(nn.BatchNorm2d):
    r"""PyTorch's own ``nn.BatchNorm2d``, accepting (N, C) and (N, C, \*) inputs like ``nn.BatchNorm1d`` too.

    ``torch.nn.functional.batch_norm`` handles any (N, C, \*) input; only
    ``nn.BatchNorm2d``'s input check insists on 4-D. This subclass relaxes
    that check, so one ``make_norm("torch_batch", C)`` serves both the
    convolutional and the dense layers of a model. It *is* an
    ``nn.BatchNorm2d`` (``isinstance`` holds, same ``state_dict`` keys,
    same arithmetic), which makes it the reference our :class:`BatchNorm`
    is compared with.

    Example:
        >>> layer = TorchBatchNorm(3)
        >>> layer(torch.randn(4, 3)).shape, layer(torch.randn(4, 3, 5, 5)).shape
        (torch.Size([4, 3]), torch.Size([4, 3, 5, 5]))
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(
                f"expected an (N, C) or (N, C, *) input with at least 2 dims, got shape {tuple(input.shape)}"
            )


def default_num_groups(num_channels: int, max_groups: int = 4) -> int:
    """The largest divisor of ``num_channels`` that is at most ``max_groups``.

    Wu and He (2018) use G = 32 for networks of 64 to 2048 channels. LeNet-5
    has 6 and 16: at most 4 groups keeps several channels per group (6 -> 3
    groups of 2, 16 -> 4 groups of 4), between layer norm (G = 1) and
    instance norm (G = C).

    Example:
        >>> default_num_groups(6), default_num_groups(16), default_num_groups(7)
        (3, 4, 1)
    """
    num_channels = _checks.positive_int(num_channels, "num_channels", hint="C, the channel count")
    max_groups = _checks.positive_int(max_groups, "max_groups", hint="the most groups to use, e.g. 4")
    return max(g for g in range(1, min(max_groups, num_channels) + 1) if num_channels % g == 0)


def _group(num_features: int, *, num_groups: int | None = None, **kwargs: Any) -> nn.Module:
    return GroupNorm(default_num_groups(num_features) if num_groups is None else num_groups, num_features, **kwargs)


def _none(num_features: int, **kwargs: Any) -> nn.Module:
    if kwargs:
        raise TypeError(f'make_norm("none") takes no settings, got {sorted(kwargs)}')
    return nn.Identity()


def register_norm(kind: str, builder: NormBuilder, *, overwrite: bool = False) -> None:
    """Make ``make_norm(kind, num_features, **kwargs)`` call ``builder(num_features, **kwargs)``.

    Args:
        kind: the name, e.g. ``"ghost"``.
        builder: a callable taking ``num_features`` first and keyword settings,
            returning an ``nn.Module`` (a class such as ``BatchNorm`` works).
        overwrite: replace an existing kind instead of raising.

    Raises:
        ValueError: ``kind`` is already registered and ``overwrite`` is False.
        TypeError: ``kind`` is not a non-empty string or ``builder`` is not callable.

    Example:
        >>> register_norm("batch_no_affine", lambda c, **kw: BatchNorm(c, affine=False, **kw), overwrite=True)
        >>> make_norm("batch_no_affine", 4).affine
        False
    """
    if not isinstance(kind, str) or not kind:
        raise TypeError(f"kind must be a non-empty string, got {kind!r}")
    if not callable(builder):
        raise TypeError(f"builder must be callable (num_features, **kwargs) -> nn.Module, got {type(builder).__name__}")
    if kind in _REGISTRY and not overwrite:
        raise ValueError(f"normalization kind {kind!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[kind] = builder


def known_norms() -> tuple[str, ...]:
    """The registered kinds, sorted.

    Example:
        >>> {"batch", "group", "layer"} <= set(known_norms())
        True
    """
    return tuple(sorted(_REGISTRY))


def make_norm(kind: str, num_features: int, **kwargs: Any) -> nn.Module:
    r"""Build the normalization layer ``kind`` for ``num_features`` channels.

    Args:
        kind: one of :func:`known_norms` (see the module docstring).
        num_features: the channel count C of the (N, C) or (N, C, \*) input.
        **kwargs: passed to the layer, e.g. ``momentum=0.01`` or ``num_groups=2``.

    Raises:
        ValueError: unknown ``kind`` (the message lists the known ones).
        TypeError: ``kind`` is not a string.

    Example:
        >>> make_norm("batch", 16)
        BatchNorm(16, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)
        >>> make_norm("group", 16)
        GroupNorm(4, 16, eps=1e-05, affine=True)
    """
    if not isinstance(kind, str):
        raise TypeError(f"kind must be a string such as 'batch', got {type(kind).__name__} {kind!r}")
    num_features = _checks.positive_int(num_features, "num_features", hint="the channel count C at dim 1")
    builder = _REGISTRY.get(kind)
    if builder is None:
        raise ValueError(f"unknown normalization kind {kind!r}; known kinds: {', '.join(known_norms())}")
    return builder(num_features, **kwargs)


register_norm("batch", BatchNorm)
register_norm("torch_batch", TorchBatchNorm)
register_norm("layer", LayerNorm)
register_norm("instance", InstanceNorm)
register_norm("group", _group)
register_norm("none", _none)


def _batch_renorm(num_features: int, **kwargs: Any) -> nn.Module:
    from bnlib.layers.renorm import BatchRenorm  # imported when used: no import cycle through the package

    return BatchRenorm(num_features, **kwargs)


def _ghost(num_features: int, *, virtual_batch_size: int = 32, **kwargs: Any) -> nn.Module:
    from bnlib.layers.ghost import GhostBatchNorm

    return GhostBatchNorm(num_features, virtual_batch_size, **kwargs)


register_norm("batch_renorm", _batch_renorm)
register_norm("ghost", _ghost)
register_norm("virtual", VirtualBatchNorm)
