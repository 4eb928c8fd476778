"""Ghost batch normalization (Hoffer et al. 2017): batch norm over small virtual batches of a large batch.

Large-batch training loses some of the regularizing noise that batch norm's
per-batch statistics inject. Ghost batch norm splits each training batch into
contiguous virtual ("ghost") batches and normalizes each with its own
statistics, so the noise is that of the small virtual batch while the
optimizer still takes one step per large batch.
"""

from __future__ import annotations

import torch
from torch import nn

from bnlib.functional import affine, check_finite_statistics, check_input, moments, normalize
from bnlib.layers._state import (
    accepts_reduced_precision,
    check_eps,
    check_momentum,
    check_num_features,
    register_affine,
    register_running_stats,
)

__all__ = ["GhostBatchNorm"]


class GhostBatchNorm(nn.Module):
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
        super().__init__()
        self.num_features = check_num_features(num_features)
        if isinstance(virtual_batch_size, bool) or not isinstance(virtual_batch_size, int) or virtual_batch_size < 1:
            raise ValueError(f"virtual_batch_size must be a positive integer, got {virtual_batch_size!r}")
        self.virtual_batch_size = virtual_batch_size
        self.eps = check_eps(eps)
        self.momentum = check_momentum(momentum)
        self.affine = affine
        register_affine(self, num_features, affine, device, dtype)
        register_running_stats(self, num_features, True, device, dtype)

    def reset_running_stats(self) -> None:
        """Running mean 0, running variance 1, counter 0."""
        self.running_mean.zero_()
        self.running_var.fill_(1.0)
        self.num_batches_tracked.zero_()

    @accepts_reduced_precision
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, repr(self), num_features=self.num_features, dtype=self.running_mean.dtype)
        if not self.training:
            shape = (1, self.num_features) + (1,) * (x.ndim - 2)  # (1, C, 1, 1)
            out = normalize(x, self.running_mean.reshape(shape), self.running_var.reshape(shape), self.eps)
            return affine(out, self.weight, self.bias)
        n, v = x.shape[0], self.virtual_batch_size
        full = (n // v) * v
        parts = [x[:full].reshape(n // v, v, *x.shape[1:])] if full else []  # (k, v, C, *): k chunks at once
        if full < n:
            parts.append(x[full:].unsqueeze(0))  # (1, n - full, C, *): the shorter last chunk
        outputs, means, variances = [], [], []
        for part in parts:
            per_value = part[0].numel() // self.num_features
            if per_value < 2:
                raise ValueError(
                    f"{self!r} in training mode needs more than 1 value per channel in every virtual batch, but a "
                    f"batch of {n} leaves a virtual batch of shape {tuple(part.shape[1:])}; use a batch size that is "
                    f"a multiple of {v}, or call .eval() to use the running statistics"
                )
            dims = (1, *range(3, part.ndim))  # samples and spatial dims of each chunk
            mean, var = moments(part, dims)  # (k, 1, C, 1, 1)
            check_finite_statistics(mean, var, repr(self))
            outputs.append(normalize(part, mean, var, self.eps).reshape(-1, *x.shape[1:]))
            means.append(mean.reshape(-1, self.num_features))
            variances.append(var.reshape(-1, self.num_features) * (per_value / (per_value - 1)))
        self._update_running(torch.cat(means), torch.cat(variances))
        return affine(torch.cat(outputs) if len(outputs) > 1 else outputs[0], self.weight, self.bias)

    @torch.no_grad()
    def _update_running(self, means: torch.Tensor, variances: torch.Tensor) -> None:
        # The k chunk statistics (k, C) folded in one at a time, as k calls of nn.BatchNorm would.
        for mean, var in zip(means, variances):
            self.num_batches_tracked.add_(1)
            m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            self.running_mean.mul_(1 - m).add_(mean.to(self.running_mean.dtype), alpha=m)
            self.running_var.mul_(1 - m).add_(var.to(self.running_var.dtype), alpha=m)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, virtual_batch_size={self.virtual_batch_size}, eps={self.eps:g}, "
            f"momentum={self.momentum}, affine={self.affine}"
        )
