"""Batch normalization as a ``torch.nn.Module``, written with tensor operations.

The mathematics lives in :mod:`bnlib.functional` (:func:`~bnlib.functional.moments`,
:func:`~bnlib.functional.normalize`, :func:`~bnlib.functional.affine`,
:func:`~bnlib.functional.update_running_`); this module only chooses the axes
(all but the channel dim 1) and keeps the state.
"""

from __future__ import annotations

import torch
from torch import nn

from bnlib.functional import batch_norm, check_input
from bnlib.layers._state import (
    accepts_reduced_precision,
    check_eps,
    check_momentum,
    check_num_features,
    register_affine,
    register_running_stats,
)

__all__ = ["BatchNorm"]


class BatchNorm(nn.Module):
    r"""Batch normalization for (N, C) and (N, C, \*) inputs, written from scratch.

    Ioffe and Szegedy (2015), "Batch Normalization: Accelerating Deep Network
    Training by Reducing Internal Covariate Shift", Algorithm 1 and section 3.1.
    Each channel ``c`` is normalized with the mean and variance of its values
    over the batch and every spatial position (N, \*), then scaled and shifted:

    .. math::

        y = \frac{x - \mu_c}{\sqrt{\sigma_c^2 + \epsilon}}\,\gamma_c + \beta_c .

    One module replaces ``nn.BatchNorm1d`` (for (N, C) and (N, C, L)) and
    ``nn.BatchNorm2d``/``3d``; it never calls ``torch.batch_norm``.

    Conventions (PyTorch's, so that ``state_dict`` moves both ways between this
    layer and ``nn.BatchNorm1d/2d``):

    * **Mode** comes from ``self.training`` (``model.train()`` / ``model.eval()``),
      never from grad mode: ``torch.no_grad()`` in train mode still uses and
      updates batch statistics.
    * **Running statistics** are buffers (``running_mean``, ``running_var``,
      ``num_batches_tracked``): they follow ``.to(device)`` and live in
      ``state_dict``. After each training step
      ``running = (1 - momentum) * running + momentum * batch_statistic``.
      ``momentum`` is the weight of the *new* batch (Keras's ``momentum`` is
      the weight of the old estimate: Keras 0.99 = PyTorch 0.01).
      ``momentum=None`` gives the cumulative average ``1/t`` at step ``t``.
    * **Biased vs unbiased:** the normalization uses the biased batch variance
      (divide by m, the values per channel); ``running_var`` stores the unbiased
      one (divide by m - 1). Keras stores the biased one.
    * ``track_running_stats=False``: no buffers; batch statistics in evaluation too.
    * **Batch of one value per channel** in training (e.g. shape (1, C)): a
      ValueError, as in PyTorch, because its variance is undefined.
    * **NaN policy:** in training, NaN or infinite values in the input make the
      batch statistics non-finite; the layer raises a ValueError naming the
      channels *before* touching the running statistics, so one bad batch
      cannot silently poison every later evaluation. In evaluation the layer
      is elementwise: NaN in, NaN out, at that position only (as PyTorch).
      Checking costs one small (C,) reduction and, on a GPU, one synchronization.
    * **Mixed precision:** a float16 or bfloat16 input to float32 state (what
      ``torch.autocast`` produces) is normalized in float32 and returned in the
      input's dtype, as ``nn.BatchNorm2d`` does; any other dtype mismatch is a
      TypeError. Every norm layer in :mod:`bnlib.layers` does the same.

    Args:
        num_features: C, the channel (feature) count at dim 1.
        eps: added to the variance before the square root. Default 1e-5 (Keras: 1e-3).
        momentum: weight of the new batch in the running averages; ``None``
            for a cumulative average. Default 0.1.
        affine: learn a per-channel scale ``weight`` (gamma, init 1) and shift
            ``bias`` (beta, init 0). Default True.
        track_running_stats: keep running statistics for evaluation. Default True.

    Shape:
        Input (N, C) or (N, C, \*); output the same shape.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> layer = BatchNorm(3)
        >>> x = torch.randn(8, 3, 4, 4) * 5 + 2                     # (N, C, H, W)
        >>> y = layer(x)
        >>> y.mean(dim=(0, 2, 3)).abs().max() < 1e-6, int(layer.num_batches_tracked)
        (tensor(True), 1)
        >>> sorted(layer.state_dict())
        ['bias', 'num_batches_tracked', 'running_mean', 'running_var', 'weight']
    """

    num_batches_tracked: torch.Tensor | None
    running_mean: torch.Tensor | None
    running_var: torch.Tensor | None

    def __init__(
        self,
        num_features: int,
        *,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.num_features = check_num_features(num_features)
        self.eps = check_eps(eps)
        self.momentum = check_momentum(momentum)
        self.affine = affine
        self.track_running_stats = track_running_stats
        register_affine(self, num_features, affine, device, dtype)
        register_running_stats(self, num_features, track_running_stats, device, dtype)

    def reset_running_stats(self) -> None:
        """Running mean 0, running variance 1, step count 0 (as after construction)."""
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1.0)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        """Reset the running statistics and set gamma to 1 and beta to 0."""
        self.reset_running_stats()
        if self.affine:
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    @accepts_reduced_precision
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize ``x`` (N, C, *) with batch statistics (training) or running statistics (evaluation)."""
        reference = self.weight if self.weight is not None else self.running_mean
        check_input(
            x,
            f"BatchNorm({self.num_features})",
            num_features=self.num_features,
            dtype=None if reference is None else reference.dtype,
        )
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                momentum = 1.0 / float(self.num_batches_tracked)
        name = f"BatchNorm({self.num_features})"
        try:
            return batch_norm(
                x,
                self.weight,
                self.bias,
                running_mean=self.running_mean,
                running_var=self.running_var,
                training=self.training,
                momentum=momentum,
                eps=self.eps,
                name=name,
            )
        except ValueError:
            if self.training and self.track_running_stats:
                self.num_batches_tracked.sub_(1)  # the batch was rejected: it does not count
            raise

    def extra_repr(self) -> str:
        """The settings shown by ``repr``."""
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
            f"track_running_stats={self.track_running_stats}"
        )
