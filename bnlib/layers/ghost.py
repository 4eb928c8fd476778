"""Ghost batch normalization (Hoffer et al. 2017): batch norm over small virtual batches of a large batch.

Large-batch training loses some of the regularizing noise that batch norm's
per-batch statistics inject. Ghost batch norm splits each training batch into
contiguous virtual ("ghost") batches and normalizes each with its own
statistics, so the noise is that of the small virtual batch while the
optimizer still takes one step per large batch.
"""

from __future__ import annotations

import torch

from bnlib import _checks, functional
from bnlib.layers._base import RunningStatsNorm

__all__ = ["GhostBatchNorm"]


class GhostBatchNorm(RunningStatsNorm):
    r"""Batch norm applied separately to contiguous virtual batches of ``virtual_batch_size`` samples.

    Paper: E. Hoffer, I. Hubara, D. Soudry, "Train longer, generalize better:
    closing the generalization gap in large batch training of neural
    networks", NeurIPS 2017, arXiv:1705.08741 (section 4, Algorithm 1).

    In training, the batch x of N samples is split into chunks
    :math:`x^{(1)}, \dots, x^{(k)}` of ``virtual_batch_size`` samples (the last
    one smaller when N is not a multiple); each chunk is normalized with its own
    per-channel mean and biased variance over (samples, \*):

    .. math::

        y^{(j)} = \gamma\,\frac{x^{(j)} - \mu_j}{\sqrt{\sigma_j^2 + \epsilon}} + \beta .

    The parameters are shared, and the running statistics are updated once
    per chunk, in order, exactly as ``k`` successive calls of
    ``torch.nn.BatchNorm2d`` on the chunks would (PyTorch's conventions:
    ``momentum`` is the weight of the new chunk, ``None`` a cumulative
    average, and the running variance uses the unbiased chunk variance).
    At inference the running statistics are used for every sample, as in
    batch norm. With ``virtual_batch_size >= N`` the layer is batch norm.

    Args:
        num_features: channels C (dim 1 of the input).
        virtual_batch_size: samples per virtual batch, ``>= 1``.
        eps: added to the variance; finite and ``> 0``.
        momentum: weight of each new chunk in the running averages, in
            [0, 1], or ``None`` for a cumulative average over chunks.
        affine: learn the per-channel ``weight`` (gamma) and ``bias`` (beta).
        device, dtype: where and in what precision to create parameters and buffers.

    Shape:
        input (N, C) or (N, C, \*); output the same shape.

    Example:
        >>> import torch
        >>> layer = GhostBatchNorm(2, virtual_batch_size=2)
        >>> x = torch.tensor([[0.0, 0.0], [2.0, 4.0], [10.0, 10.0], [30.0, 50.0]])
        >>> layer(x).detach().round(decimals=3)         # each pair of rows normalized on its own
        tensor([[-1., -1.],
                [ 1.,  1.],
                [-1., -1.],
                [ 1.,  1.]])
        >>> int(layer.num_batches_tracked)              # one update per virtual batch
        2
    """

    def __init__(
        self,
        num_features: int,
        virtual_batch_size: int,
        *,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
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
        )
        self.virtual_batch_size = _checks.positive_int(
            virtual_batch_size, "virtual_batch_size", hint="the samples per virtual batch, e.g. 32"
        )

    def _positional(self) -> tuple[object, ...]:
        return (self.num_features,)

    def _settings(self) -> dict[str, object]:
        return {"virtual_batch_size": self.virtual_batch_size, **super()._settings()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize each virtual batch of ``x`` (N, C, *) with its own statistics (training) or the running ones."""
        self._check_input(x)
        compute = self._compute_dtype(x)
        xc = x.to(compute)
        weight, bias = self._affine_in(compute)
        if x.numel() == 0:  # an empty batch: an empty output, nothing to learn from
            return functional.affine(xc, weight, bias).to(x.dtype)
        if not self.training:
            shape = (1, self.num_features) + (1,) * (x.ndim - 2)  # (1, C, 1, 1)
            mean = self.running_mean.to(compute).reshape(shape)
            var = self.running_var.to(compute).reshape(shape)
            return functional.affine(functional.normalize(xc, mean, var, self.eps), weight, bias).to(x.dtype)
        n, v = x.shape[0], self.virtual_batch_size
        full = (n // v) * v
        parts = [xc[:full].reshape(n // v, v, *x.shape[1:])] if full else []  # (k, v, C, *): k chunks at once
        if full < n:
            parts.append(xc[full:].unsqueeze(0))  # (1, n - full, C, *): the shorter last chunk
        outputs, means, variances = [], [], []
        for part in parts:
            per_value = part[0].numel() // self.num_features
            if per_value < 2:
                raise ValueError(
                    f"{self._name()} in training mode needs more than 1 value per channel in every virtual batch, "
                    f"but a batch of {n} leaves a virtual batch of shape {tuple(part.shape[1:])}; use a batch size "
                    f"that is a multiple of {v}, or call .eval() to use the running statistics"
                )
            dims = (1, *range(3, part.ndim))  # samples and spatial dims of each chunk
            mean, var = functional.moments(part, dims)  # (k, 1, C, 1, 1)
            outputs.append(functional.normalize(part, mean, var, self.eps).reshape(-1, *x.shape[1:]))
            means.append(mean.reshape(-1, self.num_features))
            variances.append(var.reshape(-1, self.num_features) * (per_value / (per_value - 1)))
        means, variances = torch.cat(means), torch.cat(variances)  # (k, C): folded in order, one per chunk
        if self._updates_running_stats():
            self._update_running_stats(means, variances)  # as k calls of nn.BatchNorm, counter included
        else:
            functional.check_finite_statistics(means, variances, self._name())
        out = torch.cat(outputs) if len(outputs) > 1 else outputs[0]
        return functional._memory_format_of(x, functional.affine(out, weight, bias).to(x.dtype))
