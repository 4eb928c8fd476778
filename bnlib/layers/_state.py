"""Parameters and buffers that every normalization layer in bnlib registers the same way.

Private: the layers call these so that the names, shapes, initial values and
dtypes (``weight``/``bias``, ``running_mean``/``running_var``/``num_batches_tracked``,
as torch.nn's layers name them, so that state_dicts load across) live in one place.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from torch import nn

#: Input dtypes a layer with float32 (or float64) state accepts, as torch.nn's norms do under autocast.
REDUCED_PRECISION = (torch.float16, torch.bfloat16)


def accepts_reduced_precision(forward: Callable) -> Callable:
    """Let a norm layer with float32/float64 state take a float16 or bfloat16 input, as torch.nn's norms do.

    Under ``torch.autocast`` the convolution before a norm returns float16 (or
    bfloat16) while the norm's parameters and running statistics stay float32.
    The wrapped ``forward`` then computes in the state's dtype (statistics in
    full precision, running averages updated in it) and returns the input's
    dtype; gradients flow through both casts. Any other dtype mismatch is left
    to ``check_input``, which refuses it with a message.
    """

    @functools.wraps(forward)
    def wrapper(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
        state = next(
            (t for t in (*self.parameters(recurse=False), *self.buffers(recurse=False)) if t.is_floating_point()), None
        )
        if (
            isinstance(x, torch.Tensor)
            and state is not None
            and x.dtype in REDUCED_PRECISION
            and state.dtype not in REDUCED_PRECISION
        ):
            return forward(self, x.to(state.dtype)).to(x.dtype)
        return forward(self, x)

    return wrapper


def check_num_features(num_features: object, what: str = "num_features") -> int:
    """A positive integer channel count, or a ValueError that says what was received."""
    if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
        raise ValueError(f"{what} must be a positive integer (the channel count C), got {num_features!r}")
    return num_features


def check_eps(eps: object) -> float:
    """A finite ``eps > 0``: with 0, a constant channel divides by zero (NaN or inf, silently)."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a positive number such as 1e-5 (finite), got {eps!r}")
    return float(eps)


def check_momentum(momentum: object) -> float | None:  # returned as given, as torch.nn keeps it
    """PyTorch's momentum, the weight of the new batch, in [0, 1]; None for a cumulative average."""
    if momentum is None:
        return None
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0.0 <= momentum <= 1.0:
        raise ValueError(
            "momentum must be in [0, 1] (the weight of the new batch, PyTorch's convention) or None for a "
            f"cumulative average, got {momentum!r}; a Keras momentum of 0.99 is a PyTorch momentum of 0.01"
        )
    return momentum


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
