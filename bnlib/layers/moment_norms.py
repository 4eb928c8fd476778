r"""Layer, instance and group normalization: batch norm's helpers, other axes.

Each layer here calls :func:`bnlib.functional.moments` and
:func:`bnlib.functional.normalize` exactly as :class:`bnlib.layers.BatchNorm`
does; only the axes differ. For an (N, C, H, W) input:

* :class:`LayerNorm` reduces over (C, H, W): one mean and variance per sample;
* :class:`InstanceNorm` over (H, W): one per sample and channel;
* :class:`GroupNorm` over (C/G, H, W): one per sample and group of channels.

None of them looks across the batch, so none keeps running statistics: training
and evaluation compute the same thing, and a batch of one is fine. All three
learn a per-channel scale ``weight`` (gamma) and shift ``bias`` (beta) when
``affine=True``, as in the group-norm paper (Wu and He 2018), which is what
makes them interchangeable with batch norm after a convolution.

Shared conventions (:class:`bnlib.layers._base.NormBase`): ``eps`` finite and
``> 0``; float16/bfloat16 input normalized in float32 (a float16 sum of
squares would overflow past 65,504 values and return beta) and returned in its
own dtype, also for a float16 layer. NaN: these layers do not refuse it; a
NaN or infinite value makes the output of its own sample (LayerNorm), sample
and channel (InstanceNorm) or sample and group (GroupNorm) NaN and leaves the
rest of the batch untouched, as PyTorch's layers do. They run under
``torch.func`` transforms and ``torch.compile``.
"""

from __future__ import annotations

import torch

from bnlib import _checks, functional
from bnlib.layers._base import NormBase

__all__ = ["LayerNorm", "InstanceNorm", "GroupNorm"]


class LayerNorm(NormBase):
    r"""Layer normalization: each sample normalized over all its features (C, \*).

    Ba, Kiros and Hinton (2016), "Layer Normalization"; for images as in Wu and
    He (2018): statistics per sample over (C, H, W), a learned scale and shift
    per channel.

    .. math::

        \mu_n = \operatorname{mean}_{c,h,w}\, x_{nchw},\quad
        \sigma_n^2 = \operatorname{mean}_{c,h,w}\,(x_{nchw}-\mu_n)^2,\quad
        y_{nchw} = \gamma_c\,\frac{x_{nchw}-\mu_n}{\sqrt{\sigma_n^2+\epsilon}} + \beta_c .

    How it relates to the frameworks:

    * on (N, D) input it **is** ``torch.nn.LayerNorm(D)`` and Keras
      ``LayerNormalization(epsilon=eps)``;
    * after a convolution, on (N, C, H, W), it equals
      ``torch.nn.LayerNorm([C, H, W])`` whose elementwise weight is constant
      over (H, W), and ``torch.nn.GroupNorm(1, C)`` exactly. We take only C:
      it needs no knowledge of H and W, so ``make_norm("layer", C)`` works in
      any model. Keras's default ``LayerNormalization(axis=-1)`` on NHWC
      images normalizes over channels alone (per pixel); use ``axis=[1, 2, 3]``
      for this layer's statistics.
    * for sequences (N, L, D) normalized over D alone (transformers), use
      ``torch.nn.LayerNorm(D)``: this layer reads dim 1 as channels.

    Args:
        num_features: C, the size of dim 1.
        eps: added to the variance. Default 1e-5 (PyTorch; Keras uses 1e-3).
        affine: learn per-channel ``weight`` (init 1) and ``bias`` (init 0).

    Shape:
        Input (N, C) or (N, C, \*); output the same shape.

    Example:
        >>> x = torch.randn(2, 3, 4, 4)
        >>> y = LayerNorm(3)(x)
        >>> y.mean(dim=(1, 2, 3)).abs().max() < 1e-5
        tensor(True)
    """

    def __init__(self, num_features: int, *, eps: float = 1e-5, affine: bool = True, device=None, dtype=None) -> None:
        super().__init__(num_features, eps=eps, affine=affine, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize ``x`` (N, C, *); the same computation in training and evaluation."""
        self._check_input(x)
        return functional.layer_norm(x, *self._affine_in(self._compute_dtype(x)), eps=self.eps, name=self._name())


class InstanceNorm(NormBase):
    r"""Instance normalization: each sample and channel normalized over its spatial positions (\*).

    Ulyanov, Vedaldi and Lempitsky (2016), "Instance Normalization: The
    Missing Ingredient for Fast Stylization".

    .. math::

        y_{nchw} = \gamma_c\,\frac{x_{nchw}-\mu_{nc}}{\sqrt{\sigma_{nc}^2+\epsilon}} + \beta_c,
        \quad \mu_{nc}, \sigma^2_{nc} \text{ over } (h, w).

    Equals ``torch.nn.InstanceNorm1d/2d(C, affine=True)`` and Keras
    ``GroupNormalization(groups=-1)``. Differences from PyTorch's defaults,
    chosen so that every norm in the book learns the same per-channel
    scale and shift: ``affine`` defaults to True (PyTorch: False), and there
    are no running statistics (PyTorch's default ``track_running_stats=False``).

    Args:
        num_features: C, the size of dim 1.
        eps: added to the variance. Default 1e-5.
        affine: learn per-channel ``weight`` and ``bias``. Default True.

    Shape:
        Input (N, C, L) or (N, C, H, W) (any (N, C, \*) with more than one
        spatial position); output the same shape.

    Raises:
        ValueError: an (N, C) input (no spatial axes) or one spatial position:
        every output would be ``beta``.

    Example:
        >>> y = InstanceNorm(3)(torch.randn(2, 3, 5, 5))
        >>> y.mean(dim=(2, 3)).abs().max() < 1e-5
        tensor(True)
    """

    def __init__(self, num_features: int, *, eps: float = 1e-5, affine: bool = True, device=None, dtype=None) -> None:
        super().__init__(num_features, eps=eps, affine=affine, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize ``x`` (N, C, *); the same computation in training and evaluation."""
        self._check_input(
            x,
            min_ndim=3,
            expected="(N, C, L) or (N, C, H, W)",
            hint="instance norm needs spatial axes; for (N, C) features use LayerNorm or BatchNorm",
        )
        return functional.instance_norm(x, *self._affine_in(self._compute_dtype(x)), eps=self.eps, name=self._name())


class GroupNorm(NormBase):
    r"""Group normalization: each sample normalized within groups of channels over (C/G, \*).

    Wu and He (2018), "Group Normalization". The C channels are split into
    ``num_groups`` contiguous groups of C/G; each sample and group gets its own
    mean and variance; the scale and shift are per channel.

    .. math::

        y_{nchw} = \gamma_c\,\frac{x_{nchw}-\mu_{ng}}{\sqrt{\sigma_{ng}^2+\epsilon}} + \beta_c,
        \quad g = \lfloor c\,G / C \rfloor .

    ``num_groups=1`` is :class:`LayerNorm`; ``num_groups=num_channels`` is
    :class:`InstanceNorm`. Equals ``torch.nn.GroupNorm(G, C)`` and Keras
    ``GroupNormalization(groups=G, epsilon=eps)`` on NHWC input.
    The argument order follows ``torch.nn.GroupNorm``.

    Args:
        num_groups: G, which must divide ``num_channels``.
        num_channels: C, the size of dim 1.
        eps: added to the variance. Default 1e-5.
        affine: learn per-channel ``weight`` and ``bias``. Default True.

    Shape:
        Input (N, C) or (N, C, \*); output the same shape.

    Raises:
        ValueError: ``num_channels`` not divisible by ``num_groups``.

    Example:
        >>> GroupNorm(2, 6)(torch.randn(4, 6, 3, 3)).shape
        torch.Size([4, 6, 3, 3])
        >>> GroupNorm(4, 6)
        Traceback (most recent call last):
        ...
        ValueError: num_channels=6 is not divisible by num_groups=4...
    """

    def __init__(
        self, num_groups: int, num_channels: int, *, eps: float = 1e-5, affine: bool = True, device=None, dtype=None
    ) -> None:
        num_groups = _checks.positive_int(num_groups, "num_groups", hint="G, the number of channel groups")
        num_channels = _checks.positive_int(num_channels, "num_channels", hint="C, the size of dim 1")
        if num_channels % num_groups:
            divisors = [g for g in range(1, num_channels + 1) if num_channels % g == 0]
            raise ValueError(
                f"num_channels={num_channels} is not divisible by num_groups={num_groups}; "
                f"choose num_groups from the divisors of {num_channels}: {divisors}"
            )
        super().__init__(num_channels, eps=eps, affine=affine, device=device, dtype=dtype, features_name="num_channels")
        self.num_groups = num_groups
        self.num_channels = num_channels  # also num_features (C), for code that treats every norm layer alike

    def _positional(self) -> tuple[object, ...]:
        return (self.num_groups, self.num_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize ``x`` (N, C, *); the same computation in training and evaluation."""
        self._check_input(x)
        return functional.group_norm(
            x, self.num_groups, *self._affine_in(self._compute_dtype(x)), eps=self.eps, name=self._name()
        )
