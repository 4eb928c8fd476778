"""Parameters and buffers that every normalization layer in bnlib registers the same way.

Private: the layers call these so that the names, shapes, initial values and
dtypes (``weight``/``bias``, ``running_mean``/``running_var``/``num_batches_tracked``,
as torch.nn's layers name them, so that state_dicts load across) live in one place.
"""

from __future__ import annotations

import torch
from torch import nn


def register_affine(module: nn.Module, num_features: int, affine: bool, device, dtype) -> None:
    """``weight`` (gamma, ones) and ``bias`` (beta, zeros) of shape (num_features,), or both None."""
    if affine:
        module.weight = nn.Parameter(torch.ones(num_features, device=device, dtype=dtype))
        module.bias = nn.Parameter(torch.zeros(num_features, device=device, dtype=dtype))
    else:
        module.register_parameter("weight", None)
        module.register_parameter("bias", None)


def register_running_stats(
    module: nn.Module, num_features: int, track: bool, device, dtype, *, spread: str = "running_var"
) -> None:
    """``running_mean`` (zeros), ``spread`` (ones) and ``num_batches_tracked`` (a long scalar 0).

    ``spread`` names a variance (``running_var``) or a standard deviation
    (``running_std``, batch renormalization); all three are None when ``track``
    is False.
    """
    if track:
        module.register_buffer("running_mean", torch.zeros(num_features, device=device, dtype=dtype))
        module.register_buffer(spread, torch.ones(num_features, device=device, dtype=dtype))
        module.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))
    else:
        for name in ("running_mean", spread, "num_batches_tracked"):
            module.register_buffer(name, None)
