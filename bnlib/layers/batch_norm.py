"""Batch normalization as a ``torch.nn.Module``, written with tensor operations.

The mathematics lives in :mod:`bnlib.functional` (:func:`~bnlib.functional.batch_statistics`,
:func:`~bnlib.functional.normalize`, :func:`~bnlib.functional.affine`) and the
state (buffers, the momentum rule, the running update) in
:class:`bnlib.layers._base.RunningStatsNorm`; this module only puts them together.
"""

from __future__ import annotations

import torch

from bnlib import functional
from bnlib.layers._base import RunningStatsNorm

__all__ = ["BatchNorm"]


class BatchNorm(RunningStatsNorm):
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
      Switched after construction, as ``nn.BatchNorm2d``: set to False on a
      layer that has buffers, they are no longer updated in training and are
      still used in evaluation; set to True on a layer built without them,
      batch statistics are used in both modes.
    * **One step, all or nothing:** a training step writes
      ``num_batches_tracked`` and both running statistics together, after the
      new values are computed and checked; a rejected batch or an interrupt
      (Ctrl-C) leaves all three as they were.
    * **Empty batch** (N = 0): an empty output, as ``nn.BatchNorm2d``; nothing
      is updated (torch counts the empty batch in ``num_batches_tracked``,
      which shifts a ``momentum=None`` average; here the counter and the
      statistics move together).
    * **Memory format:** a channels_last input gives a channels_last output.
    * **Batch of one value per channel** in training (e.g. shape (1, C)): a
      ValueError, as in PyTorch, because its variance is undefined.
    * **NaN policy:** in training, NaN or infinite values in the input make the
      batch statistics non-finite; the layer raises a ValueError naming the
      channels *before* touching the running statistics, so one bad batch
      cannot silently poison every later evaluation (a float16 layer also
      refuses a batch whose new running statistics overflow float16). In
      evaluation the layer is elementwise: NaN in, NaN out, at that position
      only (as PyTorch). Checking costs one small (C,) reduction and, on a
      GPU, one synchronization. Under ``torch.func`` transforms (``vmap``,
      ``grad``) and ``torch.compile`` values cannot be read without breaking
      the transform or splitting the graph, so there is no check: NaN
      propagates to the output and the running statistics, exactly as in
      ``nn.BatchNorm2d``. Check the loss (``fit`` does) when you use them.
    * **Mixed precision:** a float16 or bfloat16 input is normalized in
      float32 and returned in the input's dtype, as ``nn.BatchNorm2d`` does,
      whether the layer is float32 (what ``torch.autocast`` produces) or
      float16 itself (its buffers then store the float32 statistics rounded);
      any other dtype mismatch is a TypeError. Every norm layer in
      :mod:`bnlib.layers` does the same.

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
        super().__init__(
            num_features,
            eps=eps,
            momentum=momentum,
            affine=affine,
            track_running_stats=track_running_stats,
            device=device,
            dtype=dtype,
        )

    def _settings(self) -> dict[str, object]:
        return {**super()._settings(), "track_running_stats": self.track_running_stats}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize ``x`` (N, C, *) with batch statistics (training) or running statistics (evaluation)."""
        self._check_input(x)
        compute = self._compute_dtype(x)
        xc = x.to(compute)
        weight, bias = self._affine_in(compute)
        if x.numel() == 0:  # an empty batch: an empty output, nothing to learn from
            return functional.affine(xc, weight, bias).to(x.dtype)
        if self._uses_batch_statistics():
            mean, var, count = functional.batch_statistics(xc, name=self._name(), has_running=self._has_running_stats())
            if self._updates_running_stats():
                self._update_running_stats(mean, var * (count / (count - 1)))  # running_var is unbiased
            elif self.training:
                functional.check_finite_statistics(mean, var, self._name())
        else:
            shape = (1, self.num_features) + (1,) * (x.ndim - 2)  # (1, C, 1, 1)
            mean = self.running_mean.to(compute).reshape(shape)
            var = self.running_var.to(compute).reshape(shape)
        return functional.affine(functional.normalize(xc, mean, var, self.eps), weight, bias).to(x.dtype)
