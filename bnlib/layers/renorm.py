"""Batch renormalization (Ioffe 2017): batch norm whose training output does not depend on the batch alone.

Batch norm normalizes with the batch's statistics in training and with the
running statistics at inference, so the two modes compute different
functions, and the gap grows as batches get small. Batch renormalization
keeps the batch statistics (and their gradients) but corrects them towards
the running statistics with two per-channel numbers ``r`` and ``d`` that are
treated as constants by backpropagation. With ``r`` and ``d`` unclipped the
training output equals the inference output; clipping them to
``[1/r_max, r_max]`` and ``[-d_max, d_max]`` keeps training stable while the
running statistics are still poor (``r_max=1, d_max=0`` is plain batch norm).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from bnlib.functional import (
    affine,
    batch_norm_dims,
    check_finite_statistics,
    check_input,
    moments,
    update_running_,
)
from bnlib.layers._state import (
    accepts_reduced_precision,
    check_eps,
    check_momentum,
    check_num_features,
    register_affine,
    register_running_stats,
)

__all__ = ["BatchRenorm", "RenormWarmup"]


def _check_positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return value


class BatchRenorm(nn.Module):
    r"""Batch renormalization of an (N, C) or (N, C, \*) input (Ioffe 2017, Algorithm 1).

    Paper: S. Ioffe, "Batch Renormalization: Towards Reducing Minibatch
    Dependence in Batch-Normalized Models", NeurIPS 2017, arXiv:1702.03275.

    In training, with the batch mean :math:`\mu_B` and standard deviation
    :math:`\sigma_B = \sqrt{\mathrm{Var}_B[x] + \epsilon}` (biased variance)
    over (N, \*) per channel, and the running :math:`\mu, \sigma`:

    .. math::

        r = \mathrm{sg}\Big(\mathrm{clip}_{[1/r_{max},\, r_{max}]}\frac{\sigma_B}{\sigma}\Big),\quad
        d = \mathrm{sg}\Big(\mathrm{clip}_{[-d_{max},\, d_{max}]}\frac{\mu_B - \mu}{\sigma}\Big),\quad
        y = \gamma\Big(\frac{x - \mu_B}{\sigma_B}\, r + d\Big) + \beta,

    where sg (stop gradient) makes backpropagation treat ``r`` and ``d`` as
    constants; then :math:`\mu \leftarrow \mu + m(\mu_B - \mu)`,
    :math:`\sigma \leftarrow \sigma + m(\sigma_B - \sigma)`. At inference
    :math:`y = \gamma (x - \mu) / \sigma + \beta`.

    Conventions:
        * Like the paper, the layer tracks the running **standard deviation**
          (``running_std``, with ``eps`` inside it), not the variance, and
          uses the same running pair for ``r, d`` and for inference.
        * ``momentum`` follows PyTorch: the weight of the new batch (0.1
          here means the paper's update rate :math:`\alpha = 0.1`).
          ``momentum=None`` is a cumulative average, as in PyTorch.
        * ``r`` and ``d`` use the running statistics from *before* this
          batch's update.
        * Keras 3 ``BatchNormalization(renorm=True, renorm_clipping={"rmax": r_max,
          "rmin": 1/r_max, "dmax": d_max}, momentum=1-momentum,
          renorm_momentum=1-momentum)`` computes the same outputs and moving
          statistics (Keras's ``moving_variance`` is ``moving_stddev**2 - eps``).
          Keras keeps a second running pair for ``r, d`` (``renorm_mean``,
          ``renorm_stddev``) with its own ``renorm_momentum``; when the two
          momenta differ Keras departs from the paper and from this layer.
        * ``r_max=1, d_max=0`` (the default) is exactly batch norm in
          training; :class:`RenormWarmup` relaxes the limits on a schedule.

    Args:
        num_features: channels C (dim 1 of the input).
        eps: added to the batch variance inside the square root; finite and ``> 0``.
        momentum: weight of the new batch in the running averages, in [0, 1],
            or ``None`` for a cumulative average.
        r_max: clip ``r`` to ``[1/r_max, r_max]``; ``>= 1``.
        d_max: clip ``d`` to ``[-d_max, d_max]``; ``>= 0``.
        affine: learn the per-channel ``weight`` (gamma) and ``bias`` (beta).
        device, dtype: where and in what precision to create parameters and buffers.

    Shape:
        input (N, C) or (N, C, \*); output the same shape.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> layer = BatchRenorm(3, r_max=3.0, d_max=5.0)
        >>> x = 2 + 5 * torch.randn(8, 3, 4, 4)
        >>> y = layer(x)                     # running (0, 1) are far off: r and d clipped
        >>> layer.last_r.tolist() == [3.0, 3.0, 3.0], y.shape
        (True, torch.Size([8, 3, 4, 4]))
        >>> layer.running_mean.shape, layer.running_std.shape
        (torch.Size([3]), torch.Size([3]))
    """

    last_r: torch.Tensor | None
    last_d: torch.Tensor | None

    def __init__(
        self,
        num_features: int,
        *,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        r_max: float = 1.0,
        d_max: float = 0.0,
        affine: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.num_features = check_num_features(num_features)
        self.eps = check_eps(eps)
        self.momentum = check_momentum(momentum)
        self.r_max = r_max
        self.d_max = d_max
        self.affine = affine
        register_affine(self, num_features, affine, device, dtype)
        register_running_stats(self, num_features, True, device, dtype, spread="running_std")
        self.last_r = None
        self.last_d = None

    # r_max and d_max are properties so that a schedule can change them and still get validation.
    @property
    def r_max(self) -> float:
        return self._r_max

    @r_max.setter
    def r_max(self, value: float) -> None:
        value = _check_positive("r_max", value)
        if value < 1:
            raise ValueError(
                f"r_max must be >= 1 (r is clipped to [1/r_max, r_max]), got {value}; r_max=1 is plain batch norm"
            )
        self._r_max = value

    @property
    def d_max(self) -> float:
        return self._d_max

    @d_max.setter
    def d_max(self, value: float) -> None:
        self._d_max = _check_positive("d_max", value, allow_zero=True)

    def reset_running_stats(self) -> None:
        """Running mean 0, running std 1, step counter 0."""
        self.running_mean.zero_()
        self.running_std.fill_(1.0)
        self.num_batches_tracked.zero_()

    @accepts_reduced_precision
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, repr(self), num_features=self.num_features, dtype=self.running_mean.dtype)
        shape = (1, self.num_features) + (1,) * (x.ndim - 2)  # (1, C, 1, 1)
        if not self.training:
            return affine(
                (x - self.running_mean.reshape(shape)) / self.running_std.reshape(shape), self.weight, self.bias
            )
        count = x.numel() // self.num_features
        if count < 2:
            raise ValueError(
                f"{self!r} in training mode needs more than 1 value per channel, got input shape {tuple(x.shape)}; "
                "use a batch of 2 or more, or call .eval() to use the running statistics"
            )
        mean, var = moments(x, batch_norm_dims(x.ndim))  # (1, C, 1, 1), biased
        check_finite_statistics(mean, var, repr(self))
        std = (var + self.eps).sqrt()
        with torch.no_grad():  # r and d are constants for backpropagation (the paper's stop_gradient)
            running_mean = self.running_mean.reshape(shape)
            running_std = self.running_std.reshape(shape)
            r = (std / running_std).clamp(1.0 / self.r_max, self.r_max)
            d = ((mean - running_mean) / running_std).clamp(-self.d_max, self.d_max)
        xhat = (x - mean) / std * r + d
        self.last_r, self.last_d = r.reshape(-1), d.reshape(-1)
        self.num_batches_tracked.add_(1)
        momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        update_running_(self.running_mean, mean.reshape(-1), momentum)
        update_running_(self.running_std, std.reshape(-1), momentum)
        return affine(xhat, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps:g}, momentum={self.momentum}, "
            f"r_max={self.r_max:g}, d_max={self.d_max:g}, affine={self.affine}"
        )


@dataclass(frozen=True)
class RenormWarmup:
    """The paper's schedule for the clipping limits: plain batch norm first, then linearly relaxed.

    Ioffe (2017), section 4.1: ``r_max = 1, d_max = 0`` for the first 5,000
    steps, then relaxed gradually so that ``r_max`` reaches 3 at step 40,000
    and ``d_max`` reaches 5 at step 25,000. The relaxation here is linear
    (the paper says "gradually"); scale the step counts to your run's length.

    Call it with a step to get ``(r_max, d_max)``; :meth:`attach` makes every
    :class:`BatchRenorm` in a model follow it, reading the step from the
    layer's own ``num_batches_tracked`` (one step per training forward), so
    it works with any training loop.

    Args:
        warmup_steps: steps of plain batch norm.
        r_max, d_max: the final limits.
        r_max_steps, d_max_steps: the steps at which the final limits are
            reached (each ``>= warmup_steps``).

    Example:
        >>> schedule = RenormWarmup()
        >>> schedule(0), schedule(5_000), schedule(15_000), schedule(100_000)
        ((1.0, 0.0), (1.0, 0.0), (1.5714..., 2.5), (3.0, 5.0))
    """

    warmup_steps: int = 5_000
    r_max: float = 3.0
    d_max: float = 5.0
    r_max_steps: int = 40_000
    d_max_steps: int = 25_000

    def __post_init__(self) -> None:
        for name in ("warmup_steps", "r_max_steps", "d_max_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if self.r_max_steps < self.warmup_steps or self.d_max_steps < self.warmup_steps:
            raise ValueError(
                f"r_max_steps ({self.r_max_steps}) and d_max_steps ({self.d_max_steps}) must be >= warmup_steps "
                f"({self.warmup_steps}): the limits are relaxed only after the warm-up"
            )
        if _check_positive("r_max", self.r_max) < 1:
            raise ValueError(f"r_max must be >= 1, got {self.r_max}")
        _check_positive("d_max", self.d_max, allow_zero=True)

    def __call__(self, step: int) -> tuple[float, float]:
        def ramp(end: int) -> float:  # 0 until the warm-up ends, 1 from `end` on
            if step <= self.warmup_steps:
                return 0.0
            return 1.0 if end <= self.warmup_steps else min(1.0, (step - self.warmup_steps) / (end - self.warmup_steps))

        return 1.0 + (self.r_max - 1.0) * ramp(self.r_max_steps), self.d_max * ramp(self.d_max_steps)

    def attach(self, model: nn.Module) -> list[torch.utils.hooks.RemovableHandle]:
        """Make every :class:`BatchRenorm` in ``model`` follow this schedule; returns the hook handles.

        Raises:
            ValueError: ``model`` has no BatchRenorm layer.

        Example:
            >>> layer = BatchRenorm(2)
            >>> handles = RenormWarmup(warmup_steps=1, r_max_steps=3, d_max_steps=2).attach(layer)
            >>> for _ in range(3):
            ...     _ = layer(torch.randn(4, 2))
            >>> layer.r_max, layer.d_max       # set before the third step, from step 2
            (2.0, 5.0)
        """
        layers = [m for m in model.modules() if isinstance(m, BatchRenorm)]
        if not layers:
            raise ValueError(
                f"RenormWarmup.attach found no BatchRenorm layer in {type(model).__name__}; nothing to schedule"
            )

        def hook(layer: nn.Module, _inputs: object) -> None:
            if layer.training:
                layer.r_max, layer.d_max = self(int(layer.num_batches_tracked))

        return [layer.register_forward_pre_hook(hook) for layer in layers]
