"""The networks of the book: LeNet-5 and a multilayer perceptron, with the normalization layer as a parameter.

Both models take ``norm``: ``None`` (no normalization), a kind understood by
:func:`bnlib.layers.make_norm` (``"batch"`` is the book's from-scratch batch
norm, ``"torch_batch"`` PyTorch's own, ``"layer"``, ``"instance"``,
``"group"``, ...), or any callable ``num_features -> nn.Module`` such as
``torch.nn.BatchNorm2d``. ``norm_position`` puts the normalization after the
activation (as the source tutorial does) or before it (as Ioffe and Szegedy
2015 do: ``y = phi(BN(W x))``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Union

import torch
from torch import nn

from bnlib import _checks

__all__ = ["LeNet5", "MLP", "init_like_source", "make_activation", "NormSpec"]

#: What ``norm=`` accepts: nothing, a kind for :func:`bnlib.layers.make_norm`, or a factory.
NormSpec = Union[None, str, Callable[[int], nn.Module]]  # noqa: UP007  (a runtime alias: `|` fails on Python 3.10 here)

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "identity": nn.Identity,
}
_POOLS: dict[str, type[nn.Module]] = {"avg": nn.AvgPool2d, "max": nn.MaxPool2d}
_POSITIONS = ("after", "before")


def make_activation(activation: str | Callable[[], nn.Module]) -> nn.Module:
    """A fresh activation module from a name (``"tanh"``, ``"relu"``, ``"sigmoid"``, ``"identity"``) or a factory.

    Example:
        >>> make_activation("relu")
        ReLU()
    """
    if isinstance(activation, str):
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"unknown activation {activation!r}; expected one of {sorted(_ACTIVATIONS)} or a callable returning an nn.Module"
            )
        return _ACTIVATIONS[activation]()
    if callable(activation):
        module = activation()
        if not isinstance(module, nn.Module):
            raise TypeError(f"activation() must return an nn.Module, got {type(module).__name__}; pass e.g. nn.GELU")
        return module
    raise TypeError(
        f"activation must be a name or a callable returning an nn.Module, got {type(activation).__name__} {activation!r}"
    )


def _norm_factory(norm: NormSpec) -> Callable[[int], nn.Module] | None:
    """Turn ``norm=`` into ``None`` or a callable ``num_features -> nn.Module``."""
    if norm is None:
        return None
    if isinstance(norm, str):
        from bnlib import layers  # imported here: models must not pay for layers unless asked

        make_norm = getattr(layers, "make_norm", None)
        if make_norm is None:
            raise ValueError(
                f"norm={norm!r} needs bnlib.layers.make_norm, which this bnlib does not provide yet; pass a callable such as torch.nn.BatchNorm2d"
            )
        return lambda num_features: make_norm(norm, num_features)
    if callable(norm):
        return norm
    raise TypeError(
        f"norm must be None, a kind such as 'batch', or a callable num_features -> nn.Module, got {type(norm).__name__} {norm!r}"
    )


def _build_norm(factory: Callable[[int], nn.Module], num_features: int) -> nn.Module:
    module = factory(num_features)
    if not isinstance(module, nn.Module):
        raise TypeError(f"norm({num_features}) must return an nn.Module, got {type(module).__name__}")
    return module


def _normalized_block(layer: nn.Module, num_features: int, factory, activation, position: str) -> list[nn.Module]:
    """``layer, act, norm`` (after) or ``layer, norm, act`` (before); just ``layer, act`` without a norm."""
    act = make_activation(activation)
    if factory is None:
        return [layer, act]
    norm = _build_norm(factory, num_features)
    return [layer, act, norm] if position == "after" else [layer, norm, act]


def _check_position(norm_position: str) -> None:
    if norm_position not in _POSITIONS:
        raise ValueError(f"norm_position must be 'after' or 'before' the activation, got {norm_position!r}")


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al. 1998) as the source tutorial builds it, with an optional normalization.

    Paper: Y. LeCun, L. Bottou, Y. Bengio, P. Haffner, "Gradient-based learning
    applied to document recognition", Proc. IEEE 86(11), 1998.

    Layers: conv 1->6 (5x5), activation, [norm], pool 2; conv 6->16 (5x5),
    activation, [norm], pool 2; flatten to 16*5*5 = 400; linear 400->120,
    activation; linear 120->84, activation; linear 84->10. Normalization is
    applied to the two convolutions only (``norm(6)`` and ``norm(16)``), as in
    the source tutorial.

    Conventions: the model returns logits (feed them to ``nn.CrossEntropyLoss``).
    ``softmax_output=True`` appends a softmax, reproducing the source's bug:
    ``CrossEntropyLoss`` applies log-softmax again, so the loss sees
    ``softmax(softmax(z))`` and its gradients shrink.

    Args:
        norm: ``None``, a kind for :func:`bnlib.layers.make_norm` (e.g. ``"batch"``),
            or a callable ``num_features -> nn.Module`` (e.g. ``nn.BatchNorm2d``).
        activation: ``"tanh"`` (default, as the source), ``"relu"``, ``"sigmoid"``,
            or a callable returning a module.
        pool: ``"avg"`` (default) or ``"max"``.
        softmax_output: append a softmax (the source's double-softmax bug).
        norm_position: ``"after"`` the activation (default, as the source) or ``"before"`` it.
        in_channels: image channels (1 for MNIST).
        num_classes: outputs of the last layer.

    Shape:
        input ``(N, in_channels, 32, 32)`` (MNIST resized or padded to 32: ``mnist.torch(size=32)``);
        output ``(N, num_classes)``.

    Example:
        >>> model = LeNet5(norm=nn.BatchNorm2d)
        >>> model(torch.zeros(2, 1, 32, 32)).shape
        torch.Size([2, 10])
        >>> sum(p.numel() for p in LeNet5().parameters())
        61706
    """

    def __init__(
        self,
        norm: NormSpec = None,
        *,
        activation: str | Callable[[], nn.Module] = "tanh",
        pool: str = "avg",
        softmax_output: bool = False,
        norm_position: str = "after",
        in_channels: int = 1,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        _check_position(norm_position)
        softmax_output = _checks.boolean(
            softmax_output, "softmax_output", hint="softmax_output=True reproduces the source's double-softmax bug"
        )
        in_channels = _checks.positive_int(in_channels, "in_channels", hint="1 for MNIST's grey images, 3 for RGB")
        num_classes = _checks.positive_int(num_classes, "num_classes", hint="10 for MNIST's digits")
        if pool not in _POOLS:
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        factory = _norm_factory(norm)
        Pool = _POOLS[pool]
        self.features = nn.Sequential(  # (N, 1, 32, 32) -> (N, 16, 5, 5)
            *_normalized_block(nn.Conv2d(in_channels, 6, kernel_size=5), 6, factory, activation, norm_position),
            Pool(kernel_size=2),  # (N, 6, 14, 14)
            *_normalized_block(nn.Conv2d(6, 16, kernel_size=5), 16, factory, activation, norm_position),
            Pool(kernel_size=2),  # (N, 16, 5, 5)
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),  # (N, 400)
            nn.Linear(16 * 5 * 5, 120),
            make_activation(activation),
            nn.Linear(120, 84),
            make_activation(activation),
            nn.Linear(84, num_classes),
        )
        self.output = nn.Softmax(dim=1) if softmax_output else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(
                f"LeNet5 expects a tensor of images (N, C, 32, 32), got {type(x).__name__} {x!r:.60}; "
                "convert with torch.as_tensor(x, dtype=torch.float32)"
            )
        if x.dim() != 4 or x.shape[-2:] != (32, 32):
            raise ValueError(
                f"LeNet5 expects images (N, C, 32, 32), got shape {tuple(x.shape)}; "
                "use mnist.torch(size=32) to resize or pad MNIST's 28x28 images"
            )
        return self.output(self.classifier(self.features(x)))


class MLP(nn.Module):
    """A multilayer perceptron with an optional normalization after every hidden linear layer.

    ``MLP()`` is the second source tutorial's 784-512-256-10 ReLU network;
    ``MLP((784, 100, 100, 100, 10), activation="sigmoid", norm="batch", norm_position="before")``
    is the network of Ioffe and Szegedy (2015), section 4.1.

    Hidden block: ``linear, activation, [norm]`` (``norm_position="after"``) or
    ``linear, [norm], activation`` (``"before"``, the paper's ``phi(BN(W u))``).
    The last linear layer returns logits. Inputs with more than two axes are flattened.

    Args:
        sizes: layer widths, input first, outputs last (at least two entries).
        norm: ``None``, a kind for :func:`bnlib.layers.make_norm`, or a callable
            ``num_features -> nn.Module`` (e.g. ``nn.BatchNorm1d``).
        activation: ``"relu"`` (default), ``"tanh"``, ``"sigmoid"`` or a callable returning a module.
        norm_position: ``"before"`` the activation (default, as ``nn.Linear -> BatchNorm1d -> ReLU``
            in the second source) or ``"after"`` it.

    Shape:
        input ``(N, sizes[0])`` or ``(N, *)`` with ``sizes[0]`` elements per example; output ``(N, sizes[-1])``.

    Example:
        >>> model = MLP(norm=nn.BatchNorm1d)
        >>> model(torch.zeros(4, 1, 28, 28)).shape
        torch.Size([4, 10])
        >>> [type(m).__name__ for m in MLP((3, 5, 2), norm=nn.BatchNorm1d).layers]
        ['Linear', 'BatchNorm1d', 'ReLU', 'Linear']
    """

    def __init__(
        self,
        sizes: tuple[int, ...] | list[int] = (784, 512, 256, 10),
        norm: NormSpec = None,
        *,
        activation: str | Callable[[], nn.Module] = "relu",
        norm_position: str = "before",
    ) -> None:
        super().__init__()
        if isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__iter__"):
            raise _checks.ArgumentTypeError(
                f"sizes must be a sequence of layer widths such as (784, 512, 10), got {type(sizes).__name__} {sizes!r}"
            )
        sizes = tuple(sizes)
        if len(sizes) < 2:
            raise ValueError(f"sizes must be at least two positive integers (input, ..., outputs), got {sizes!r}")
        sizes = tuple(
            _checks.positive_int(s, f"sizes[{i}]", hint="sizes must be positive integers (input, ..., outputs)")
            for i, s in enumerate(sizes)
        )
        _check_position(norm_position)
        factory = _norm_factory(norm)
        blocks: list[nn.Module] = []
        for fan_in, fan_out in itertools.pairwise(sizes[:-1]):
            blocks += _normalized_block(nn.Linear(fan_in, fan_out), fan_out, factory, activation, norm_position)
        blocks.append(nn.Linear(sizes[-2], sizes[-1]))
        self.sizes = sizes
        self.flatten = nn.Flatten()
        self.layers = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(
                f"MLP expects a tensor (N, {self.sizes[0]}), got {type(x).__name__} {x!r:.60}; "
                "convert with torch.as_tensor(x, dtype=torch.float32)"
            )
        x = self.flatten(x) if x.dim() > 2 else x
        if x.dim() != 2 or x.shape[1] != self.sizes[0]:
            raise ValueError(
                f"MLP expects inputs with {self.sizes[0]} features per example, got shape {tuple(x.shape)}"
            )
        return self.layers(x)


@torch.no_grad()
def init_like_source(model: nn.Module, *, bias: float = 0.01) -> nn.Module:
    """Initialize as the source tutorial does: Xavier-uniform weights, every bias filled with ``bias``.

    Only convolutions and linear layers are touched (normalization layers keep
    gamma = 1, beta = 0). Xavier/Glorot uniform draws from ``U(-a, a)`` with
    ``a = sqrt(6 / (fan_in + fan_out))`` (Glorot and Bengio 2010). Returns the model.

    Example:
        >>> model = init_like_source(LeNet5())
        >>> bool((model.features[0].bias == 0.01).all())
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"init_like_source expects an nn.Module, got {type(model).__name__}")
    bias = _checks.finite_float(bias, "bias", hint="every bias is filled with it; the source uses 0.01")
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                module.bias.fill_(bias)
    return model
