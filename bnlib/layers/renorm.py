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

from dataclasses import dataclass

import torch
from torch import nn

from bnlib import _checks, functional
from bnlib.layers._base import RunningStatsNorm

__all__ = ["BatchRenorm", "RenormWarmup"]


def _check_r_max(value: object) -> float:
    value = _checks.positive_float(value, "r_max", hint="r is clipped to [1/r_max, r_max]; r_max=1 is plain batch norm")
    if value < 1:
        raise ValueError(
            f"r_max must be >= 1 (r is clipped to [1/r_max, r_max]), got {value}; r_max=1 is plain batch norm"
        )
    return value


def _check_d_max(value: object) -> float:
    return _checks.nonnegative_float(
        value, "d_max", hint="d is clipped to [-d_max, d_max]; d_max=0 is plain batch norm"
    )


class BatchRenorm(RunningStatsNorm):
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
        super().__init__(
            num_features,
            eps=eps,
            momentum=momentum,
            affine=affine,
            track_running_stats=True,
            device=device,
            dtype=dtype,
            spread="running_std",
        )
        self.r_max = r_max
        self.d_max = d_max
        self.last_r = None
        self.last_d = None

    # r_max and d_max are properties so that a schedule can change them and still get validation.
    @property
    def r_max(self) -> float:
        return self._r_max

    @r_max.setter
    def r_max(self, value: float) -> None:
        self._r_max = _check_r_max(value)

    @property
    def d_max(self) -> float:
        return self._d_max

    @d_max.setter
    def d_max(self, value: float) -> None:
        self._d_max = _check_d_max(value)

    def _settings(self) -> dict[str, object]:
        return {
            "eps": self.eps,
            "momentum": self.momentum,
            "r_max": self.r_max,
            "d_max": self.d_max,
            "affine": self.affine,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Renormalize ``x`` (N, C, *): batch statistics corrected by r and d in training, running ones in evaluation."""
        self._check_input(x)
        compute = self._compute_dtype(x)
        xc = x.to(compute)
        weight, bias = self._affine_in(compute)
        if x.numel() == 0:  # an empty batch: an empty output, nothing to learn from
            return functional.affine(xc, weight, bias).to(x.dtype)
        shape = (1, self.num_features) + (1,) * (x.ndim - 2)  # (1, C, 1, 1)
        running_mean = self.running_mean.to(compute).reshape(shape)
        running_std = self.running_std.to(compute).reshape(shape)
        if not self.training:
            return functional.affine((xc - running_mean) / running_std, weight, bias).to(x.dtype)
        mean, var, _ = functional.batch_statistics(xc, name=self._name(), has_running=True)  # (1, C, 1, 1), biased
        std = (var + self.eps).sqrt()
        # r and d are constants for backpropagation (the paper's stop_gradient): computed from detached values
        r = (std.detach() / running_std).clamp(1.0 / self.r_max, self.r_max)
        d = ((mean.detach() - running_mean) / running_std).clamp(-self.d_max, self.d_max)
        xhat = (xc - mean) / std * r + d
        if self._updates_running_stats():
            self._update_running_stats(mean, std)  # checks, then counter and statistics together
        else:
            functional.check_finite_statistics(mean, var, self._name())
        self.last_r, self.last_d = r.reshape(-1), d.reshape(-1)
        return functional.affine(xhat, weight, bias).to(x.dtype)


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
            object.__setattr__(self, name, _checks.nonnegative_int(getattr(self, name), name))
        object.__setattr__(self, "r_max", _check_r_max(self.r_max))
        object.__setattr__(self, "d_max", _check_d_max(self.d_max))
        if self.r_max_steps < self.warmup_steps or self.d_max_steps < self.warmup_steps:
            raise ValueError(
                f"r_max_steps ({self.r_max_steps}) and d_max_steps ({self.d_max_steps}) must be >= warmup_steps "
                f"({self.warmup_steps}): the limits are relaxed only after the warm-up"
            )

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
