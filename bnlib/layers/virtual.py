r"""Virtual batch normalization (Salimans et al. 2016): each example normalized with a fixed reference batch.

Batch norm makes one example's output depend on the other examples of its
batch. Virtual batch norm removes that dependence: a *reference batch*,
chosen once and fixed at the start of training, is passed through the
network first (normalized with its own statistics, as batch norm would), and
every other example is then normalized with the statistics of the reference
batch **together with the example itself**. :class:`ReferenceBatch` wraps a
model so that every forward pass does both, as the paper's method requires
(two forward passes per step; gradients flow through the reference
statistics).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from bnlib.layers._base import NormBase

__all__ = ["VirtualBatchNorm", "ReferenceBatch", "virtual_batchnorm_layers", "recording_reference"]


def _moments(x: torch.Tensor, dims: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    return x.mean(dim=dims), (x * x).mean(dim=dims)


class VirtualBatchNorm(NormBase):
    r"""Virtual batch norm: normalize each example with the reference batch's statistics and its own.

    Paper: T. Salimans, I. Goodfellow, W. Zaremba, V. Cheung, A. Radford,
    X. Chen, "Improved Techniques for Training GANs", NeurIPS 2016,
    arXiv:1606.03498, section 3.4 ("each example x is normalized based on the
    statistics collected on a reference batch of examples that are chosen once
    and fixed at the start of training, and on x itself. The reference batch
    is normalized using only its own statistics.").

    Formula. The reference batch :math:`R` of :math:`M` examples gives per
    channel the mean and mean square over (examples, \*):
    :math:`m_R = \operatorname{mean}_{n\in R,\,*} x`,
    :math:`q_R = \operatorname{mean}_{n\in R,\,*} x^2`, and is normalized with
    them. Every other example :math:`x` (per channel, mean :math:`m_x` and
    mean square :math:`q_x` over its positions \*) is normalized with the
    statistics of the :math:`M+1` examples :math:`R \cup \{x\}`:

    .. math::

        \mu = \tfrac{1}{M+1}\,m_x + \tfrac{M}{M+1}\,m_R,\quad
        \sigma^2 = \tfrac{1}{M+1}\,q_x + \tfrac{M}{M+1}\,q_R - \mu^2,\quad
        y = \gamma\,\frac{x-\mu}{\sqrt{\sigma^2+\epsilon}} + \beta

    (the weights of the reference implementation, ``new_coeff = 1/(M+1)``).

    Conventions:
        - The reference statistics are recorded by a forward pass inside
          :func:`recording_reference` (or :meth:`set_reference` for a lone
          layer); they keep their autograd graph, so a loss on the other
          examples also trains through the reference pass, as in the paper.
          :class:`ReferenceBatch` re-records them on every forward pass.
        - No running statistics: training and evaluation compute the same
          thing, and an example's output never depends on the rest of its batch.
        - Calling the layer before any reference was recorded raises a
          RuntimeError that says how to record one.

    Args:
        num_features: channels C (dim 1 of the input).
        eps: added to the variance; finite and ``> 0``.
        affine: learn the per-channel ``weight`` (gamma) and ``bias`` (beta).
        device, dtype: where and in what precision to create the parameters.

    Shape:
        input (N, C) or (N, C, \*); output the same shape.

    Example:
        >>> layer = VirtualBatchNorm(1, affine=False, eps=1e-12)
        >>> layer.set_reference(torch.tensor([[0.0], [2.0]]))       # M = 2: mean 1, mean square 2
        >>> layer(torch.tensor([[4.0]])).item()                      # stats of {0, 2, 4}: mean 2, var 8/3
        1.2247...
        >>> layer.reference_size
        2
    """

    def __init__(
        self,
        num_features: int,
        *,
        eps: float = 1e-5,
        affine: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_features, eps=eps, affine=affine, device=device, dtype=dtype)
        self.recording = False
        self.reference_size = 0
        self._reference: tuple[torch.Tensor, torch.Tensor] | None = None

    def _normalize(self, x: torch.Tensor, mean: torch.Tensor, mean_sq: torch.Tensor) -> torch.Tensor:
        shape = (-1, self.num_features) + (1,) * (x.ndim - 2) if mean.ndim == 2 else (1, -1) + (1,) * (x.ndim - 2)
        mean, var = mean.reshape(shape), (mean_sq - mean * mean).clamp_min(0).reshape(shape)
        y = (x - mean) / torch.sqrt(var + self.eps)
        weight, bias = self._affine_in(y.dtype)
        if weight is not None:
            channel = (1, -1) + (1,) * (x.ndim - 2)
            y = y * weight.reshape(channel) + bias.reshape(channel)
        return y

    def set_reference(self, reference: torch.Tensor) -> None:
        r"""Record ``reference`` (M, C, \*) as this layer's reference batch (M >= 1), keeping its graph."""
        self._check_input(reference)
        with self.recording_mode():
            self(reference)

    @contextlib.contextmanager
    def recording_mode(self) -> Iterator[None]:
        """Inside, a forward pass normalizes its input with its own statistics and records them as the reference."""
        previous, self.recording = self.recording, True
        try:
            yield
        finally:
            self.recording = previous

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Record the reference (in recording mode) or normalize each example with it."""
        self._check_input(x)
        dtype = self._compute_dtype(x)
        xc = x.to(dtype)
        if self.recording:
            if x.shape[0] < 1:
                raise ValueError(
                    f"{self._name()}: the reference batch is empty (shape {tuple(x.shape)}); pass M >= 1 examples"
                )
            mean, mean_sq = _moments(xc, (0, *range(2, x.ndim)))
            self._reference, self.reference_size = (mean, mean_sq), int(x.shape[0])
            return self._normalize(xc, mean, mean_sq).to(x.dtype)
        if self._reference is None:
            raise RuntimeError(
                f"{self._name()} has no reference batch yet: record one with layer.set_reference(x_ref), "
                "recording_reference(model, x_ref), or wrap the model in ReferenceBatch(model, x_ref)"
            )
        ref_mean, ref_sq = self._reference
        m = self.reference_size
        own_mean, own_sq = _moments(xc, tuple(range(2, x.ndim))) if x.ndim > 2 else (xc, xc * xc)
        mean = own_mean / (m + 1) + ref_mean.to(dtype) * (m / (m + 1))
        mean_sq = own_sq / (m + 1) + ref_sq.to(dtype) * (m / (m + 1))
        return self._normalize(xc, mean, mean_sq).to(x.dtype)


def virtual_batchnorm_layers(model: nn.Module) -> list[VirtualBatchNorm]:
    """Every :class:`VirtualBatchNorm` in ``model``, in module order.

    Example:
        >>> len(virtual_batchnorm_layers(nn.Sequential(VirtualBatchNorm(2), nn.ReLU(), VirtualBatchNorm(2))))
        2
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return [m for m in model.modules() if isinstance(m, VirtualBatchNorm)]


def recording_reference(model: nn.Module, reference: torch.Tensor) -> torch.Tensor:
    r"""Pass ``reference`` through ``model`` with every virtual batch-norm layer recording; returns the output.

    Each :class:`VirtualBatchNorm` normalizes the reference batch's activations
    at that layer with their own statistics and keeps them (with their graph)
    for the examples that follow.

    Example:
        >>> model = nn.Sequential(nn.Linear(3, 2), VirtualBatchNorm(2))
        >>> _ = recording_reference(model, torch.randn(8, 3))
        >>> model(torch.randn(1, 3)).shape          # one example, normalized with the reference's statistics
        torch.Size([1, 2])
    """
    layers = virtual_batchnorm_layers(model)
    if not layers:
        raise ValueError("recording_reference: the model has no VirtualBatchNorm layer; build it with norm='virtual'")
    with contextlib.ExitStack() as stack:
        for layer in layers:
            stack.enter_context(layer.recording_mode())
        return model(reference)


class ReferenceBatch(nn.Module):
    r"""A model with virtual batch norm that re-records its fixed reference batch on every forward pass.

    ``forward(x)`` = ``recording_reference(model, reference)`` then ``model(x)``:
    the two forward passes per step of Salimans et al. (2016), so the reference
    statistics follow the current weights and gradients flow through them.
    The reference is a buffer (it moves with ``.to(device)``, and is not trained).

    Example:
        >>> from bnlib.models import LeNet5
        >>> model = ReferenceBatch(LeNet5(norm="virtual"), torch.randn(16, 1, 32, 32))
        >>> model(torch.randn(1, 1, 32, 32)).shape
        torch.Size([1, 10])
    """

    def __init__(self, model: nn.Module, reference: torch.Tensor) -> None:
        super().__init__()
        if not isinstance(reference, torch.Tensor) or reference.ndim < 2 or reference.shape[0] < 1:
            got = tuple(reference.shape) if isinstance(reference, torch.Tensor) else type(reference).__name__
            raise ValueError(f"reference must be a tensor of M >= 1 examples (M, ...), got {got}")
        if not virtual_batchnorm_layers(model):
            raise ValueError("ReferenceBatch: the model has no VirtualBatchNorm layer; build it with norm='virtual'")
        self.model = model
        self.register_buffer("reference", reference.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Record the reference batch's statistics with the current weights, then run ``x``."""
        recording_reference(self.model, self.reference)
        return self.model(x)
