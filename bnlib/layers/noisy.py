"""Batch norm followed by deliberate distribution shift: the "noisy BatchNorm" of Santurkar et al. (2018).

Santurkar, Tsipras, Ilyas and Madry ("How does batch normalization help
optimization?", NeurIPS 2018, arXiv 1805.11604, section 2.1) test whether
batch norm works *because* it keeps each layer's input distribution fixed.
They add noise after every batch norm whose mean is not zero and whose
variance is not one, and which changes at every step: the layer's input
distribution then moves all the time, by construction. If the network still
trains as well as with plain batch norm, stabilizing the distribution is not
what makes batch norm work.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from bnlib import _checks
from bnlib.layers._base import NormBase

__all__ = ["NoisyBatchNorm"]


class NoisyBatchNorm(NormBase):
    r"""A normalization layer followed by random, time-varying scale and shift (training mode only).

    Paper: S. Santurkar, D. Tsipras, A. Ilyas, A. Madry, "How does batch
    normalization help optimization?", NeurIPS 2018 (arXiv 1805.11604), section 2.1.

    Formula: at every forward pass in training mode, draw for each channel
    ``c`` a shift and a scale,

    .. math::  \mu_c \sim U(-m, m), \qquad \sigma_c \sim U(s_{lo}, s_{hi}),

    and for each activation (example ``i``, channel ``c``, position) independent
    ``xi, zeta ~ N(0, 1)``:

    .. math::  y = \sigma_c (1 + j\,\xi)\, \mathrm{BN}(x) + \mu_c + j\,\zeta,

    so every channel leaves the layer with mean about ``mu_c`` and standard
    deviation about ``sigma_c``, values that change at every step, and every
    activation gets its own noise of size ``j`` (``jitter``).

    Conventions:
        - This is our reading of the paper's description (noise that is
          non-zero mean, non-unit variance, i.i.d. per activation and changing
          every step); the exact distributions of their appendix are not
          reproduced, so the defaults are ours.
        - In evaluation mode the layer is exactly its normalization layer:
          the noise is a training-time perturbation.
        - The noise uses torch's global generator (seed it, e.g. ``fit(seed=...)``).
        - Channels are axis 1 of the input: ``(N, C)`` or ``(N, C, H, W)``.

    Args:
        num_features: channels ``C``.
        norm: factory ``num_features -> nn.Module`` for the normalization
            (default :func:`bnlib.layers.make_norm` with ``"batch"``, the book's batch norm).
        mean_range: ``m``: shifts are drawn from ``U(-m, m)`` (>= 0).
        scale_range: ``(s_lo, s_hi)``: scales are drawn from ``U(s_lo, s_hi)``, ``0 < s_lo <= s_hi``.
        jitter: ``j``: size of the per-activation part of the noise (>= 0).

    Shape:
        input ``(N, C, *)``; output the same shape.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> layer = NoisyBatchNorm(3, norm=nn.BatchNorm1d, jitter=0.0)
        >>> y = layer(torch.randn(256, 3))
        >>> bool((y.mean(0).abs() <= 1.0).all()), bool((y.std(0, unbiased=False) >= 1.0 - 1e-4).all())
        (True, True)
        >>> _ = layer.eval(); torch.equal(layer(torch.ones(2, 3)), layer.norm(torch.ones(2, 3)))
        True
    """

    def __init__(
        self,
        num_features: int,
        *,
        norm: Callable[[int], nn.Module] | None = None,
        mean_range: float = 1.0,
        scale_range: tuple[float, float] = (1.0, 3.0),
        jitter: float = 0.1,
    ) -> None:
        super().__init__(num_features)  # eps and gamma/beta belong to the inner norm
        mean_range = _checks.nonnegative_float(
            mean_range, "mean_range", hint="shifts are drawn from U(-mean_range, mean_range)"
        )
        if not isinstance(scale_range, (tuple, list)) or len(scale_range) != 2:
            raise ValueError(f"scale_range must be a pair (low, high) with 0 < low <= high, got {scale_range!r}")
        low = _checks.positive_float(scale_range[0], "scale_range[0]", hint="scales are drawn from U(low, high)")
        high = _checks.positive_float(scale_range[1], "scale_range[1]", hint="scales are drawn from U(low, high)")
        if low > high:
            raise ValueError(f"scale_range must be a pair (low, high) with 0 < low <= high, got {scale_range!r}")
        jitter = _checks.nonnegative_float(jitter, "jitter", hint="the size of the per-activation noise")
        if norm is None:
            from bnlib.layers.factory import make_norm  # the book's own batch norm

            self.norm = make_norm("batch", num_features)
        elif callable(norm):
            self.norm = norm(num_features)
            if not isinstance(self.norm, nn.Module):
                raise TypeError(f"norm({num_features}) must return an nn.Module, got {type(self.norm).__name__}")
        else:
            raise TypeError(
                f"norm must be a callable num_features -> nn.Module (e.g. nn.BatchNorm1d) or None, got {type(norm).__name__}"
            )
        self.mean_range = mean_range
        self.scale_range = (low, high)
        self.jitter = jitter

    def _settings(self) -> dict[str, object]:
        return {"mean_range": self.mean_range, "scale_range": self.scale_range, "jitter": self.jitter}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The inner norm's output, then (in training) a random per-channel scale and shift and per-activation noise."""
        self._check_input(x)
        y = self.norm(x)
        if not self.training:
            return y
        channel = (1, self.num_features) + (1,) * (x.dim() - 2)  # broadcast over N and positions
        low, high = self.scale_range
        shift = (torch.rand(channel, device=x.device, dtype=y.dtype) * 2 - 1) * self.mean_range
        scale = low + torch.rand(channel, device=x.device, dtype=y.dtype) * (high - low)
        if self.jitter > 0:
            scale = scale * (1 + self.jitter * torch.randn_like(y))
            shift = shift + self.jitter * torch.randn_like(y)
        return scale * y + shift
