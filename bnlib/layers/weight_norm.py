"""Weight normalization (Salimans and Kingma 2016): normalize the weights instead of the activations.

Each output unit's weight vector is written as a length ``g`` times a
direction ``v / ||v||``, and gradient descent runs on ``g`` and ``v``. The
forward pass costs one norm per unit, nothing depends on the batch, and
training and inference compute the same function: no running statistics.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["WeightNorm", "add_weight_norm", "apply_weight_norm"]


def _other_dims(ndim: int, dim: int | None) -> tuple[int, ...]:
    return tuple(range(ndim)) if dim is None else tuple(d for d in range(ndim) if d != dim % ndim)


class WeightNorm(nn.Module):
    r"""The parametrization :math:`w = g\, v / \lVert v \rVert`, norms taken over every dim but ``dim``.

    Paper: T. Salimans and D. P. Kingma, "Weight Normalization: A Simple
    Reparameterization to Accelerate Training of Deep Neural Networks",
    NeurIPS 2016, arXiv:1602.07868, equation (2).

    For a Linear weight (out, in) or a Conv2d weight (out, in, kH, kW) and
    ``dim=0`` there is one length :math:`g_o` per output unit and
    :math:`\lVert v_o \rVert` is the Euclidean norm of that unit's weights.
    ``dim=None`` uses one norm of the whole tensor; a negative ``dim``
    counts from the end, as in Python (PyTorch's ``weight_norm`` instead reads
    ``dim=-1`` as ``None``). Used through
    :func:`add_weight_norm`, which registers it with
    ``torch.nn.utils.parametrize`` under the same names PyTorch uses
    (``original0`` = g, shape (out, 1, ...); ``original1`` = v).

    Args:
        dim: the dim that keeps one length per entry (0: per output unit), or ``None``.

    Example:
        >>> import torch
        >>> g, v = WeightNorm(dim=0).right_inverse(torch.tensor([[3.0, 4.0], [0.0, 2.0]]))
        >>> g.reshape(-1), WeightNorm(dim=0)(g, v)
        (tensor([5., 2.]), tensor([[3., 4.],
                [0., 2.]]))
    """

    def __init__(self, dim: int | None = 0) -> None:
        super().__init__()
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int)):
            raise TypeError(f"dim must be an integer or None, got {type(dim).__name__} {dim!r}")
        self.dim = dim

    def forward(self, g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return g * v / torch.linalg.vector_norm(v, dim=_other_dims(v.ndim, self.dim), keepdim=True)

    def right_inverse(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Split a weight into ``(g, v)`` with ``g = ||weight||`` and ``v = weight``: the forward gives it back."""
        # dim=None keeps g a scalar, as PyTorch does.
        norm = torch.linalg.vector_norm(weight, dim=_other_dims(weight.ndim, self.dim), keepdim=self.dim is not None)
        if bool((norm == 0).any()):
            raise ValueError(
                f"weight norm needs a nonzero weight vector per unit, but {int((norm == 0).sum())} of {norm.numel()} "
                "have norm 0 (their direction is undefined); initialize the layer's weights randomly first"
            )
        return norm, weight

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


def add_weight_norm(module: nn.Module, name: str = "weight", *, dim: int | None = 0) -> nn.Module:
    r"""Reparametrize ``module.<name>`` as :math:`g\, v / \lVert v \rVert` (our :class:`WeightNorm`); returns ``module``.

    A drop-in for ``torch.nn.utils.parametrizations.weight_norm``: the same
    formula, the same parameter names (``module.parametrizations.weight.original0``
    is g, ``original1`` is v) and the same initialization (``g = ||w||``,
    ``v = w``, so the module computes exactly what it did before). Undo it
    with ``torch.nn.utils.parametrize.remove_parametrizations(module, name)``.

    Args:
        module: a module with a parameter ``name``, e.g. ``nn.Linear`` or ``nn.Conv2d``.
        name: the parameter to reparametrize.
        dim: the dim with one length per entry (0: per output unit), or ``None`` for one length.

    Raises:
        TypeError: ``module`` is not an ``nn.Module``.
        ValueError: no parameter ``name``; ``dim`` out of range; a zero weight vector.

    Example:
        >>> import torch
        >>> layer = add_weight_norm(torch.nn.Linear(3, 2))
        >>> sorted(n for n, _ in layer.named_parameters())
        ['bias', 'parametrizations.weight.original0', 'parametrizations.weight.original1']
        >>> layer.parametrizations.weight.original0.shape
        torch.Size([2, 1])
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"add_weight_norm expects an nn.Module, got {type(module).__name__} {module!r:.60}")
    param = getattr(module, name, None)
    if not isinstance(param, nn.Parameter):
        names = [n for n, _ in module.named_parameters(recurse=False)]
        raise ValueError(
            f"{type(module).__name__} has no parameter {name!r} to reparametrize (its parameters: {names}); "
            "pass name= one of them"
        )
    if dim is not None and not -param.ndim <= dim < param.ndim:
        raise ValueError(
            f"dim={dim} is out of range for {name} of shape {tuple(param.shape)}; use 0 <= dim < {param.ndim} or None"
        )
    # unsafe=True: right_inverse returns two tensors (g, v) for one weight, as PyTorch's own weight_norm does.
    parametrize.register_parametrization(module, name, WeightNorm(dim), unsafe=True)
    return module


def apply_weight_norm(
    model: nn.Module, *, types: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
) -> nn.Module:
    """Weight-normalize the ``weight`` of every Linear and convolution layer of ``model`` (``dim=0``); returns it.

    Raises:
        ValueError: ``model`` has no layer of the given types.

    Example:
        >>> import torch
        >>> model = apply_weight_norm(torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4, 2)))
        >>> sum(parametrize.is_parametrized(m, "weight") for m in model)
        2
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"apply_weight_norm expects an nn.Module, got {type(model).__name__} {model!r:.60}")
    layers = [m for m in model.modules() if isinstance(m, types) and not parametrize.is_parametrized(m, "weight")]
    if not layers:
        raise ValueError(
            f"apply_weight_norm found no {', '.join(t.__name__ for t in types)} layer to normalize in {type(model).__name__}"
        )
    for layer in layers:
        add_weight_norm(layer, "weight", dim=0)
    return model
