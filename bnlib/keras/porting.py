"""Moving a trained LeNet-5 with batch norm between PyTorch and Keras, both ways.

The two frameworks compute the same network with different conventions, and
every one of them has to be translated or the predictions change:

=====================  ==========================================  ==========================================
what                   PyTorch                                     Keras
=====================  ==========================================  ==========================================
image layout           NCHW ``(N, C, H, W)``                       NHWC ``(N, H, W, C)``
conv kernel            ``(out, in, kh, kw)``                       ``(kh, kw, in, out)``
dense kernel           ``Linear.weight`` ``(out, in)``             ``Dense`` kernel ``(in, out)``
flatten order          channel, row, column                        row, column, channel
BN momentum            weight of the new batch, default 0.1        weight of the old average, default 0.99
BN epsilon             default 1e-5                                default 1e-3
BN stored variance     unbiased batch variance (divide by n - 1)   biased batch variance (divide by n)
BN weights             ``weight, bias, running_mean, running_var``  ``gamma, beta, moving_mean, moving_variance``
=====================  ==========================================  ==========================================

**The stored variance is copied unchanged**, in both directions. At inference
both frameworks compute ``gamma * (x - mean) / sqrt(var + eps) + beta`` with
the number they stored; the biased/unbiased difference is only in how each
*estimates* that number while training. Rescaling by ``(n - 1) / n`` would
turn a faithful copy into a (slightly) different network. The momentum is
translated (``m_keras = 1 - m_torch``) so that training the copy further
updates its statistics at the same rate; it does not affect predictions.
The epsilon is copied, because the defaults differ and it does affect them.

The first dense layer is where the flatten order bites: PyTorch flattens the
``(16, 5, 5)`` feature maps channel-first, Keras flattens ``(5, 5, 16)``
channel-last, so the 400 input columns of that layer are permuted
(:func:`dense_kernel_to_keras`).

Keras is imported only inside the functions that need it, on any backend
(:func:`bnlib.keras.import_keras`); without Keras they raise an ImportError
that says ``pip install "bnlib[keras]"``. The Keras twin itself,
:func:`keras_lenet5`, lives with the other builders in ``bnlib.keras`` and is
re-exported here.

PyTorch's ``momentum=None`` (a cumulative average) has no Keras equivalent:
porting such a model raises a ValueError, as every bnlib.keras converter does
(:func:`bnlib.keras.keras_momentum_from_torch`); set the layers' momentum to
a number first (it changes further training, never the predictions).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from bnlib.keras._backend import import_keras
from bnlib.keras._hyperparameters import keras_momentum_from_torch
from bnlib.keras._models import _LENET_ACTIVATIONS, keras_lenet5

__all__ = [
    "keras_lenet5",
    "torch_to_keras_lenet5",
    "keras_to_torch_lenet5",
    "conv_kernel_to_keras",
    "conv_kernel_to_torch",
    "dense_kernel_to_keras",
    "dense_kernel_to_torch",
]

_TORCH_ACTIVATIONS = {nn.Tanh: "tanh", nn.ReLU: "relu", nn.Sigmoid: "sigmoid"}


# --- layouts: pure NumPy, no framework needed ----------------------------------------------------


def conv_kernel_to_keras(weight: np.ndarray) -> np.ndarray:
    """A PyTorch conv weight ``(out, in, kh, kw)`` as a Keras Conv2D kernel ``(kh, kw, in, out)``.

    Example:
        >>> conv_kernel_to_keras(np.zeros((6, 1, 5, 3))).shape
        (5, 3, 1, 6)
    """
    weight = _array(weight, 4, "conv weight (out, in, kh, kw)")
    return np.ascontiguousarray(weight.transpose(2, 3, 1, 0))


def conv_kernel_to_torch(kernel: np.ndarray) -> np.ndarray:
    """A Keras Conv2D kernel ``(kh, kw, in, out)`` as a PyTorch conv weight ``(out, in, kh, kw)``.

    Example:
        >>> w = np.random.default_rng(0).normal(size=(6, 1, 5, 3))
        >>> bool((conv_kernel_to_torch(conv_kernel_to_keras(w)) == w).all())
        True
    """
    kernel = _array(kernel, 4, "Conv2D kernel (kh, kw, in, out)")
    return np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))


def dense_kernel_to_keras(weight: np.ndarray, *, chw: tuple[int, int, int] | None = None) -> np.ndarray:
    """A PyTorch ``Linear.weight`` ``(out, in)`` as a Keras Dense kernel ``(in, out)``.

    With ``chw=(C, H, W)`` the layer reads flattened feature maps, and its
    input columns are also reordered from PyTorch's channel-first flatten
    (index ``c*H*W + h*W + w``) to Keras's channel-last one (``h*W*C + w*C + c``).

    Example:
        >>> w = np.arange(2 * 12).reshape(2, 12)           # 2 outputs, 12 = 3 channels x 2 x 2 inputs
        >>> dense_kernel_to_keras(w, chw=(3, 2, 2))[:3, 0]  # Keras input 0, 1, 2 = channels 0, 1, 2 at (0, 0)
        array([0, 4, 8])
    """
    weight = _array(weight, 2, "Linear weight (out, in)")
    if chw is not None:
        c, h, w = _check_chw(chw, weight.shape[1])
        weight = weight.reshape(-1, c, h, w).transpose(0, 2, 3, 1).reshape(weight.shape[0], -1)
    return np.ascontiguousarray(weight.T)


def dense_kernel_to_torch(kernel: np.ndarray, *, chw: tuple[int, int, int] | None = None) -> np.ndarray:
    """A Keras Dense kernel ``(in, out)`` as a PyTorch ``Linear.weight`` ``(out, in)``.

    The inverse of :func:`dense_kernel_to_keras`, with the same ``chw`` (the
    PyTorch feature-map shape ``(C, H, W)``).

    Example:
        >>> w = np.random.default_rng(0).normal(size=(5, 12))
        >>> bool((dense_kernel_to_torch(dense_kernel_to_keras(w, chw=(3, 2, 2)), chw=(3, 2, 2)) == w).all())
        True
    """
    kernel = _array(kernel, 2, "Dense kernel (in, out)")
    weight = kernel.T
    if chw is not None:
        c, h, w = _check_chw(chw, weight.shape[1])
        weight = weight.reshape(-1, h, w, c).transpose(0, 3, 1, 2).reshape(weight.shape[0], -1)
    return np.ascontiguousarray(weight)


def _array(value: Any, ndim: int, what: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.ndim != ndim:
        raise ValueError(f"expected a {ndim}-D {what}, got shape {array.shape}")
    return array


def _check_chw(chw: Any, inputs: int) -> tuple[int, int, int]:
    if not (isinstance(chw, (tuple, list)) and len(chw) == 3 and all(isinstance(v, int) and v > 0 for v in chw)):
        raise ValueError(f"chw must be three positive integers (C, H, W), got {chw!r}")
    c, h, w = chw
    if c * h * w != inputs:
        raise ValueError(f"chw={tuple(chw)} has {c * h * w} values but the layer has {inputs} inputs")
    return c, h, w


# --- reading a model's layout --------------------------------------------------------------------


def _is_torch_batch_norm(module: nn.Module) -> bool:
    from bnlib.inference import is_batchnorm

    return is_batchnorm(module)


def _torch_layout(model: nn.Module) -> tuple[list[str], list[nn.Module]]:
    """The layer kinds of a LeNet5 (``conv``, ``bn``, ``act:tanh``, ``pool:avg``, ...) and the modules with weights."""
    from bnlib.models import LeNet5

    if not isinstance(model, LeNet5):
        raise TypeError(f"expected a bnlib.models.LeNet5, got {type(model).__name__}")
    kinds: list[str] = []
    weighted: list[nn.Module] = []
    for name, module in [*model.features.named_children(), *model.classifier.named_children()]:
        if isinstance(module, nn.Conv2d):
            kinds.append("conv")
        elif isinstance(module, nn.Linear):
            kinds.append("dense")
        elif _is_torch_batch_norm(module):
            if module.running_mean is None or module.weight is None:
                raise ValueError(
                    f"cannot port {type(module).__name__} {name!r}: it needs running statistics and gamma/beta "
                    "(track_running_stats=True, affine=True), as Keras's BatchNormalization has"
                )
            kinds.append("bn")
        elif type(module) in _TORCH_ACTIVATIONS:
            kinds.append("act:" + _TORCH_ACTIVATIONS[type(module)])
        elif isinstance(module, (nn.AvgPool2d, nn.MaxPool2d)):
            kind = "avg" if isinstance(module, nn.AvgPool2d) else "max"
            if (
                module.kernel_size not in (2, (2, 2))
                or module.stride not in (2, (2, 2))
                or module.padding not in (0, (0, 0))
            ):
                raise ValueError(
                    f"cannot port pooling layer {name!r}: only 2x2 pooling with stride 2 and no padding is supported"
                )
            kinds.append("pool:" + kind)
        elif isinstance(module, nn.Flatten):
            kinds.append("flatten")
        else:
            raise ValueError(
                f"cannot port layer {name!r} ({type(module).__name__}) to Keras: supported are Conv2d, Linear, "
                "batch norm (nn.BatchNorm2d, bnlib.layers.BatchNorm), tanh/relu/sigmoid, 2x2 pooling and Flatten"
            )
        if kinds[-1] in ("conv", "dense", "bn"):
            weighted.append(module)
    if isinstance(model.output, nn.Softmax):
        kinds.append("softmax")
    return kinds, weighted


def _keras_layout(model: Any) -> tuple[list[str], list[Any]]:
    """The same kinds for a Keras model (fused activations count as a separate ``act:`` entry)."""
    keras = import_keras()
    if not isinstance(model, keras.Model):
        raise TypeError(f"expected a keras.Model, got {type(model).__name__}")
    L = keras.layers
    kinds: list[str] = []
    weighted: list[Any] = []
    for layer in model.layers:
        if isinstance(layer, (L.Conv2D, L.Dense)):
            kinds.append("conv" if isinstance(layer, L.Conv2D) else "dense")
            weighted.append(layer)
            if not layer.use_bias:
                raise ValueError(
                    f"cannot port layer {layer.name!r}: it has no bias (use_bias=False); LeNet5's layers have one"
                )
            fused = layer.get_config().get("activation", "linear")
            if fused == "softmax":
                kinds.append("softmax")
            elif fused != "linear":
                kinds.append("act:" + str(fused))
        elif isinstance(layer, L.BatchNormalization):
            if not (layer.center and layer.scale) or layer.axis not in (-1, 3, [3], [-1]):
                raise ValueError(
                    f"cannot port {layer.name!r}: it needs center=True, scale=True and the channel axis last"
                )
            kinds.append("bn")
            weighted.append(layer)
        elif isinstance(layer, L.Activation):
            name = layer.get_config()["activation"]
            kinds.append("softmax" if name == "softmax" else "act:" + str(name))
        elif isinstance(layer, L.Softmax):
            kinds.append("softmax")
        elif isinstance(layer, (L.AveragePooling2D, L.MaxPooling2D)):
            if tuple(layer.pool_size) != (2, 2) or tuple(layer.strides) != (2, 2) or layer.padding != "valid":
                raise ValueError(
                    f"cannot port pooling layer {layer.name!r}: only 2x2 pooling, stride 2, padding 'valid'"
                )
            kinds.append("pool:avg" if isinstance(layer, L.AveragePooling2D) else "pool:max")
        elif isinstance(layer, L.Flatten):
            kinds.append("flatten")
        else:
            raise ValueError(f"cannot port layer {layer.name!r} ({type(layer).__name__}) of a Keras LeNet-5")
    return kinds, weighted


def _settings_from_kinds(kinds: list[str], where: str) -> dict[str, Any]:
    """activation, pool, norm position and softmax of a LeNet-5 layout, or a ValueError."""
    batch_norm = "bn" in kinds
    activation = next((k[4:] for k in kinds if k.startswith("act:")), "tanh")
    pool = next((k[5:] for k in kinds if k.startswith("pool:")), "avg")
    position = "before" if batch_norm and kinds[kinds.index("bn") - 1] == "conv" else "after"
    settings = {
        "batch_norm": batch_norm,
        "activation": activation,
        "pool": pool,
        "norm_position": position,
        "softmax_output": kinds[-1] == "softmax",
    }
    expected = _expected_kinds(**settings)
    if kinds != expected or activation not in _LENET_ACTIVATIONS:
        raise ValueError(
            f"{where} is not a LeNet-5 this function can port: its layers are {kinds}, expected {expected}"
        )
    return settings


def _expected_kinds(
    *, batch_norm: bool, activation: str, pool: str, norm_position: str, softmax_output: bool
) -> list[str]:
    act = "act:" + activation
    if not batch_norm:
        block = ["conv", act]
    elif norm_position == "after":
        block = ["conv", act, "bn"]
    else:
        block = ["conv", "bn", act]
    features = [*block, "pool:" + pool] * 2
    return [*features, "flatten", "dense", act, "dense", act, "dense", *(["softmax"] if softmax_output else [])]


# --- the copies ----------------------------------------------------------------------------------

_FEATURE_MAPS = (16, 5, 5)  # (C, H, W) that LeNet-5 flattens into its first dense layer


def torch_to_keras_lenet5(model: nn.Module) -> Any:
    """A Keras model computing what a (trained) PyTorch :class:`~bnlib.models.LeNet5` computes in eval mode.

    Builds :func:`keras_lenet5` with the same activation, pooling, BN position,
    epsilon and (translated) momentum, then copies every weight with the
    conversions of the module docstring: kernels transposed, the first dense
    layer's inputs permuted for the NHWC flatten order, BN's
    ``running_var`` copied unchanged into ``moving_variance`` (see the module
    docstring for why not rescaled), ``momentum_keras = 1 - momentum_torch``.

    Feed the Keras model NHWC images: ``x_torch.permute(0, 2, 3, 1)``.

    Args:
        model: a LeNet5 with batch norm layers ``nn.BatchNorm2d`` or
            ``bnlib.layers.BatchNorm`` (affine, tracking running statistics),
            or with no normalization, built with ``in_channels`` and ``num_classes`` of your choice.

    Returns:
        a ``keras.Sequential`` on ``(N, 32, 32, C)`` inputs.

    Raises:
        TypeError: ``model`` is not a ``bnlib.models.LeNet5``.
        ValueError: it contains a layer Keras's twin does not have (another norm, another pooling, ...),
            or its batch norms use ``momentum=None`` (no Keras equivalent: set a number first).
        ImportError: Keras is missing: ``pip install "bnlib[keras]"``.

    Example:
        >>> from bnlib.models import LeNet5
        >>> keras_model = torch_to_keras_lenet5(LeNet5(norm=nn.BatchNorm2d).eval())
        >>> keras_model.get_layer("bn1").epsilon, keras_model.get_layer("bn1").momentum
        (1e-05, 0.9)
    """
    kinds, torch_layers = _torch_layout(model)
    settings = _settings_from_kinds(kinds, "the PyTorch model")
    bns = [m for m in torch_layers if _is_torch_batch_norm(m)]
    eps = {float(bn.eps) for bn in bns} or {1e-5}
    momenta = {bn.momentum for bn in bns} or {0.1}
    if len(eps) > 1 or len(momenta) > 1:
        raise ValueError(
            f"the batch norms differ in eps {sorted(eps)} or momentum {sorted(map(str, momenta))}; "
            "keras_lenet5 uses one of each"
        )
    keras_momentum = keras_momentum_from_torch(momenta.pop())  # momentum=None: ValueError, see its docstring
    first_conv = torch_layers[0]
    keras_model = keras_lenet5(
        **settings,
        momentum=keras_momentum,
        epsilon=eps.pop(),
        in_channels=first_conv.in_channels,
        num_classes=torch_layers[-1].out_features,
    )
    _, keras_layers = _keras_layout(keras_model)
    dense_seen = 0
    for module, layer in zip(torch_layers, keras_layers, strict=True):
        if isinstance(module, nn.Conv2d):
            layer.set_weights([conv_kernel_to_keras(module.weight), _numpy(module.bias)])
        elif isinstance(module, nn.Linear):
            chw = _FEATURE_MAPS if dense_seen == 0 else None
            layer.set_weights([dense_kernel_to_keras(_numpy(module.weight), chw=chw), _numpy(module.bias)])
            dense_seen += 1
        else:  # batch norm: gamma, beta, moving mean, moving variance (copied as stored, see above)
            layer.set_weights(
                [_numpy(module.weight), _numpy(module.bias), _numpy(module.running_mean), _numpy(module.running_var)]
            )
    return keras_model


def keras_to_torch_lenet5(
    keras_model: Any,
    *,
    norm_layer: Callable[..., nn.Module] = nn.BatchNorm2d,
) -> nn.Module:
    """A PyTorch :class:`~bnlib.models.LeNet5` (in eval mode) computing what a Keras LeNet-5 computes in inference.

    The inverse of :func:`torch_to_keras_lenet5`; the Keras model must have
    the layout of :func:`keras_lenet5` (activations may be fused into the
    Conv2D/Dense layers). ``moving_variance`` is copied unchanged into
    ``running_var``; ``momentum_torch = 1 - momentum_keras``; ``eps = epsilon``.

    Args:
        keras_model: the Keras LeNet-5 on ``(N, 32, 32, C)`` inputs.
        norm_layer: the PyTorch batch norm to build, called as
            ``norm_layer(num_features, eps=..., momentum=...)``: ``nn.BatchNorm2d``
            (default) or ``bnlib.layers.BatchNorm``.

    Returns:
        the LeNet5, in eval mode, on the CPU.

    Raises:
        TypeError: not a Keras model.
        ValueError: its layers are not those of a LeNet-5.
        ImportError: Keras is missing: ``pip install "bnlib[keras]"``.

    Example:
        >>> model = keras_to_torch_lenet5(keras_lenet5(norm_position="before", epsilon=1e-3, momentum=0.99))
        >>> type(model.features[1]).__name__, model.features[1].eps, model.features[1].momentum
        ('BatchNorm2d', 0.001, 0.01)
    """
    from bnlib.models import LeNet5

    kinds, keras_layers = _keras_layout(keras_model)
    settings = _settings_from_kinds(kinds, "the Keras model")
    keras_bns = iter([layer for layer in keras_layers if type(layer).__name__ == "BatchNormalization"])

    def factory(num_features: int) -> nn.Module:
        layer = next(keras_bns)
        return norm_layer(num_features, eps=float(layer.epsilon), momentum=round(1.0 - float(layer.momentum), 12))

    convs = [layer for layer in keras_layers if type(layer).__name__ == "Conv2D"]
    model = LeNet5(
        norm=factory if settings["batch_norm"] else None,
        activation=settings["activation"],
        pool=settings["pool"],
        norm_position=settings["norm_position"],
        softmax_output=settings["softmax_output"],
        in_channels=int(convs[0].get_weights()[0].shape[2]),
        num_classes=int(keras_layers[-1].get_weights()[0].shape[1]),
    )
    _, torch_layers = _torch_layout(model)
    if len(torch_layers) != len(keras_layers):  # pragma: no cover - guaranteed by the layout check
        raise ValueError(f"layer counts differ: {len(torch_layers)} vs {len(keras_layers)}")
    dense_seen = 0
    with torch.no_grad():
        for module, layer in zip(torch_layers, keras_layers, strict=True):
            weights = layer.get_weights()
            if isinstance(module, nn.Conv2d):
                _copy(module.weight, conv_kernel_to_torch(weights[0]), layer.name)
                _copy(module.bias, weights[1], layer.name)
            elif isinstance(module, nn.Linear):
                chw = _FEATURE_MAPS if dense_seen == 0 else None
                _copy(module.weight, dense_kernel_to_torch(weights[0], chw=chw), layer.name)
                _copy(module.bias, weights[1], layer.name)
                dense_seen += 1
            else:
                for target, value in zip(
                    (module.weight, module.bias, module.running_mean, module.running_var), weights, strict=True
                ):
                    _copy(target, value, layer.name)
    return model.eval()


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().to(torch.float32).numpy()


def _copy(target: torch.Tensor, value: np.ndarray, name: str) -> None:
    value = np.asarray(value)
    if tuple(target.shape) != value.shape:
        raise ValueError(
            f"cannot copy Keras layer {name!r}: weight of shape {value.shape}, PyTorch expects {tuple(target.shape)}"
        )
    target.copy_(torch.from_numpy(value).to(target.dtype))
