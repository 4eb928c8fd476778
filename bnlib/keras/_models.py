"""Every Keras model of the book: the three source tutorials' models and LeNet-5's Keras twin.

All of them are written with Keras 3's backend-neutral layers only, so they
build on TensorFlow, torch or JAX (see :func:`bnlib.keras.import_keras`).

Each builder returns an uncompiled ``keras.Sequential`` (``bnlib.keras.fit``
compiles it). ``batch_norm=False`` drops every ``BatchNormalization`` layer;
``placement`` says where the BN that sits next to an activation goes:

* ``"after"``: ``Conv2D(activation="relu") -> BatchNormalization``, as the
  code of sources A and B does;
* ``"before"``: ``Conv2D(activation=None) -> BatchNormalization -> ReLU``, as
  Ioffe and Szegedy (2015) do (BN of ``Wx + b``, then the nonlinearity) and as
  the text of source B recommends.

Only the order changes: the layer keeps its bias in both placements (BN's beta
makes that bias redundant before BN, and its gradient is zero there), so both
placements have exactly the same parameter count. Source A's BN layers right
after each pooling layer are not next to an activation and stay where they are.

:func:`keras_lenet5` is the Keras twin of :class:`bnlib.models.LeNet5`
(layer names and defaults chosen so that :mod:`bnlib.keras.porting` can copy
weights between them); its BN defaults are PyTorch's.

Paper: Ioffe and Szegedy (2015), Batch Normalization, ICML, section 3.2.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bnlib.keras._backend import import_keras, seed_keras

__all__ = [
    "model_a",
    "model_b",
    "model_c_dense",
    "model_c_conv",
    "keras_lenet5",
    "MODEL_C_CONV_AS_WRITTEN",
    "MODEL_BUILDERS",
    "PLACEMENTS",
    "parameter_counts",
    "layer_table",
]

PLACEMENTS = ("after", "before")

#: The shape of source C's convolutional snippet, with its two faults
#: (our reconstruction from its description, not its text): no comma after
#: ``MaxPooling2D(...)`` and no ``Flatten`` between the pooling and the
#: ``Dense`` layer. :func:`model_c_conv` is the fixed model.
MODEL_C_CONV_AS_WRITTEN = """\
model = keras.Sequential([
    keras.Input(shape=(28, 28, 1)),
    keras.layers.Conv2D(32, (3, 3), activation="relu"),
    keras.layers.BatchNormalization(),
    keras.layers.MaxPooling2D((2, 2))
    keras.layers.Dense(10, activation="softmax"),
])
"""


def _check(batch_norm: Any, placement: Any) -> None:
    if not isinstance(batch_norm, bool):
        raise TypeError(f"batch_norm must be True or False, got {type(batch_norm).__name__} {batch_norm!r}")
    if placement not in PLACEMENTS:
        raise ValueError(
            f"placement must be 'after' (BN after the ReLU, as the sources' code) or 'before' "
            f"(BN between the linear layer and the ReLU, as the paper), got {placement!r}"
        )


def _linear_bn_relu(keras: Any, linear: Callable[..., Any], batch_norm: bool, placement: str) -> list[Any]:
    """A linear layer with its ReLU, and a BN after the ReLU or before it."""
    if not batch_norm:
        return [linear(activation="relu")]
    if placement == "after":
        return [linear(activation="relu"), keras.layers.BatchNormalization()]
    return [linear(activation=None), keras.layers.BatchNormalization(), keras.layers.ReLU()]


def _start(seed: int | None) -> Any:
    """``keras`` on its backend, seeded first when ``seed`` is given (weights reproducible on every backend)."""
    return import_keras() if seed is None else seed_keras(seed)


def model_a(*, batch_norm: bool = True, placement: str = "after", seed: int | None = None) -> Any:
    """Source A's CNN for 28x28 MNIST digits, with or without batch norm.

    ``Conv2D(32, 3x3, relu) -> [BN] -> MaxPool 2 -> [BN] -> Conv2D(64, 3x3, relu) -> [BN]
    -> MaxPool 2 -> [BN] -> Flatten -> Dense(256, relu) -> [BN] -> Dense(10, softmax)``.
    The source trains it with Adam, batch 250, 25 epochs, validation split 0.2.

    Args:
        batch_norm: include the five ``BatchNormalization`` layers.
        placement: ``"after"`` (as the source) or ``"before"`` the ReLU, see the module docstring.
        seed: when given, :func:`bnlib.seed_everything` runs first, so the weights are reproducible.

    Shape:
        input ``(N, 28, 28, 1)`` floats in [0, 1]; output ``(N, 10)`` class probabilities.

    Example:
        >>> parameter_counts(model_a(batch_norm=False))
        {'total': 431242, 'trainable': 431242, 'non_trainable': 0}
    """
    _check(batch_norm, placement)
    keras = _start(seed)
    layers = keras.layers
    bn = [layers.BatchNormalization()] if batch_norm else []
    stack = [
        keras.Input(shape=(28, 28, 1)),
        *_linear_bn_relu(
            keras, lambda activation: layers.Conv2D(32, (3, 3), activation=activation), batch_norm, placement
        ),
        layers.MaxPooling2D((2, 2)),
        *bn,
        *_linear_bn_relu(
            keras, lambda activation: layers.Conv2D(64, (3, 3), activation=activation), batch_norm, placement
        ),
        layers.MaxPooling2D((2, 2)),
        *([layers.BatchNormalization()] if batch_norm else []),
        layers.Flatten(),
        *_linear_bn_relu(keras, lambda activation: layers.Dense(256, activation=activation), batch_norm, placement),
        layers.Dense(10, activation="softmax"),
    ]
    return keras.Sequential(stack, name=_name("model_a", batch_norm, placement))


def model_b(*, batch_norm: bool = True, placement: str = "after", seed: int | None = None) -> Any:
    """Source B's CNN for 28x28 MNIST digits.

    ``Conv2D(32, 3x3, relu) -> BN -> Conv2D(64, 3x3, relu) -> BN -> MaxPool 2 -> Flatten
    -> Dense(128, relu) -> BN -> Dense(10, softmax)``. The source trains it
    with Adam, batch 128, 5 epochs, categorical cross-entropy on one-hot labels
    (the same number as sparse categorical cross-entropy on integer labels).
    Its text puts BN before the activation, its code after: ``placement``
    chooses.

    Args:
        batch_norm, placement, seed: as in :func:`model_a`.

    Shape:
        input ``(N, 28, 28, 1)``; output ``(N, 10)``.
    """
    _check(batch_norm, placement)
    keras = _start(seed)
    layers = keras.layers
    stack = [
        keras.Input(shape=(28, 28, 1)),
        *_linear_bn_relu(
            keras, lambda activation: layers.Conv2D(32, (3, 3), activation=activation), batch_norm, placement
        ),
        *_linear_bn_relu(
            keras, lambda activation: layers.Conv2D(64, (3, 3), activation=activation), batch_norm, placement
        ),
        layers.MaxPooling2D((2, 2)),
        layers.Flatten(),
        *_linear_bn_relu(keras, lambda activation: layers.Dense(128, activation=activation), batch_norm, placement),
        layers.Dense(10, activation="softmax"),
    ]
    return keras.Sequential(stack, name=_name("model_b", batch_norm, placement))


def model_c_dense(*, batch_norm: bool = True, placement: str = "after", seed: int | None = None) -> Any:
    """Source C's dense network: ``Dense(16, relu) -> BN -> Dense(32, relu) -> BN -> Dense(2, softmax)``.

    The source declares ``input_shape=(1, 5)`` on the first layer; we write
    ``keras.Input(shape=(1, 5))``, the Keras 3 spelling of the same thing.
    Dense layers act on the last axis, so the output keeps the middle axis of length 1.

    Shape:
        input ``(N, 1, 5)``; output ``(N, 1, 2)``.
    """
    _check(batch_norm, placement)
    keras = _start(seed)
    layers = keras.layers
    stack = [
        keras.Input(shape=(1, 5)),
        *_linear_bn_relu(keras, lambda activation: layers.Dense(16, activation=activation), batch_norm, placement),
        *_linear_bn_relu(keras, lambda activation: layers.Dense(32, activation=activation), batch_norm, placement),
        layers.Dense(2, activation="softmax"),
    ]
    return keras.Sequential(stack, name=_name("model_c_dense", batch_norm, placement))


def model_c_conv(*, batch_norm: bool = True, placement: str = "after", seed: int | None = None) -> Any:
    """Source C's convolutional snippet, fixed so that it runs and classifies.

    ``Conv2D(32, 3x3, relu) -> BN -> MaxPool 2 -> Flatten -> Dense(10, softmax)``.

    What was wrong (see :data:`MODEL_C_CONV_AS_WRITTEN`): a missing comma
    after ``MaxPooling2D(...)`` makes the list a ``SyntaxError``; with the
    comma added, the model builds, but ``Dense`` on the 4-D pooling output acts
    on the channel axis only, so the model outputs ``(N, 13, 13, 10)`` (one
    prediction per pooled pixel) and training with one label per image fails
    with a shape error. ``Flatten`` turns ``(N, 13, 13, 32)`` into
    ``(N, 5408)``, so ``Dense(10)`` sees the whole image.

    Shape:
        input ``(N, 28, 28, 1)``; output ``(N, 10)``.
    """
    _check(batch_norm, placement)
    keras = _start(seed)
    layers = keras.layers
    stack = [
        keras.Input(shape=(28, 28, 1)),
        *_linear_bn_relu(
            keras, lambda activation: layers.Conv2D(32, (3, 3), activation=activation), batch_norm, placement
        ),
        layers.MaxPooling2D((2, 2)),
        layers.Flatten(),
        layers.Dense(10, activation="softmax"),
    ]
    return keras.Sequential(stack, name=_name("model_c_conv", batch_norm, placement))


def _name(base: str, batch_norm: bool, placement: str) -> str:
    return f"{base}_bn_{placement}" if batch_norm else f"{base}_plain"


_LENET_ACTIVATIONS = ("tanh", "relu", "sigmoid")
_LENET_POOLS = {"avg": "AveragePooling2D", "max": "MaxPooling2D"}


def keras_lenet5(
    batch_norm: bool = True,
    *,
    activation: str = "tanh",
    pool: str = "avg",
    norm_position: str = "after",
    softmax_output: bool = False,
    momentum: float = 0.9,
    epsilon: float = 1e-5,
    in_channels: int = 1,
    num_classes: int = 10,
    seed: int | None = None,
) -> Any:
    """The Keras twin of :class:`bnlib.models.LeNet5`, layer for layer, on NHWC images.

    ``Conv2D(6, 5) -> act -> [BN] -> pool 2 -> Conv2D(16, 5) -> act -> [BN] -> pool 2
    -> Flatten -> Dense(120) -> act -> Dense(84) -> act -> Dense(num_classes) [-> softmax]``;
    with ``norm_position="before"`` each BN sits between its convolution and the
    activation, as in Ioffe and Szegedy (2015). The BN defaults are PyTorch's
    (``momentum=0.9`` is PyTorch's 0.1, ``epsilon=1e-5``) so that a model built
    here and one built in PyTorch behave alike; layers are named ``conv1``,
    ``bn1``, ``act1``, ``pool1``, ..., ``fc3``.

    Args:
        batch_norm: include the two ``BatchNormalization`` layers.
        activation: ``"tanh"`` (as the source), ``"relu"`` or ``"sigmoid"``.
        pool: ``"avg"`` or ``"max"``.
        norm_position: ``"after"`` the activation (as the source) or ``"before"`` it.
        softmax_output: end with a softmax (outputs probabilities instead of logits).
        momentum: Keras's ``BatchNormalization`` momentum (the weight of the old average).
        epsilon: added to the variance before the square root.
        in_channels: image channels.
        num_classes: outputs of the last layer.
        seed: seeds the initial weights through :func:`bnlib.seed_everything`.

    Shape:
        input ``(N, 32, 32, in_channels)``; output ``(N, num_classes)``.

    Example:
        >>> model = keras_lenet5(norm_position="before")
        >>> [layer.name for layer in model.layers][:4]
        ['conv1', 'bn1', 'act1', 'pool1']
        >>> model.count_params()  # PyTorch's 61,706 + 4 numbers per BN channel (gamma, beta, mean, variance)
        61794
    """
    if not isinstance(batch_norm, bool):
        raise TypeError(f"batch_norm must be True or False, got {type(batch_norm).__name__} {batch_norm!r}")
    if activation not in _LENET_ACTIVATIONS:
        raise ValueError(f"activation must be one of {_LENET_ACTIVATIONS}, got {activation!r}")
    if pool not in _LENET_POOLS:
        raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
    if norm_position not in ("after", "before"):
        raise ValueError(f"norm_position must be 'after' or 'before' the activation, got {norm_position!r}")
    keras = _start(seed)
    layers = keras.layers
    Pool = getattr(layers, _LENET_POOLS[pool])

    def block(index: int, filters: int) -> list[Any]:
        conv = layers.Conv2D(filters, 5, name=f"conv{index}")
        act = layers.Activation(activation, name=f"act{index}")
        if not batch_norm:
            return [conv, act]
        bn = layers.BatchNormalization(momentum=momentum, epsilon=epsilon, name=f"bn{index}")
        return [conv, act, bn] if norm_position == "after" else [conv, bn, act]

    stack = [
        keras.Input(shape=(32, 32, in_channels)),
        *block(1, 6),
        Pool(2, name="pool1"),
        *block(2, 16),
        Pool(2, name="pool2"),
        layers.Flatten(name="flatten"),
        layers.Dense(120, name="fc1"),
        layers.Activation(activation, name="act3"),
        layers.Dense(84, name="fc2"),
        layers.Activation(activation, name="act4"),
        layers.Dense(num_classes, name="fc3"),
        *([layers.Softmax(name="softmax")] if softmax_output else []),
    ]
    return keras.Sequential(stack, name="lenet5" + ("_bn_" + norm_position if batch_norm else ""))


#: The builders by the sources' letters.
MODEL_BUILDERS: dict[str, Callable[..., Any]] = {
    "A": model_a,
    "B": model_b,
    "C (dense)": model_c_dense,
    "C (conv, fixed)": model_c_conv,
}


def parameter_counts(model: Any) -> dict[str, int]:
    """Total, trainable and non-trainable parameter counts of a built Keras model.

    In a ``BatchNormalization`` over ``C`` channels, gamma and beta (``2C``)
    are trainable; the moving mean and moving variance (``2C``) are not.
    """
    if not hasattr(model, "trainable_weights") or not hasattr(model, "non_trainable_weights"):
        raise TypeError(f"parameter_counts expects a built Keras model, got {type(model).__name__}")
    trainable = sum(int(_size(w)) for w in model.trainable_weights)
    frozen = sum(int(_size(w)) for w in model.non_trainable_weights)
    return {"total": trainable + frozen, "trainable": trainable, "non_trainable": frozen}


def _size(weight: Any) -> int:
    size = 1
    for dim in weight.shape:
        size *= int(dim)
    return size


def layer_table(model: Any):
    """One row per layer: name, class, output shape, trainable and non-trainable parameters (a pandas DataFrame)."""
    import pandas as pd

    if not hasattr(model, "layers"):
        raise TypeError(f"layer_table expects a Keras model, got {type(model).__name__}")
    rows = []
    for layer in model.layers:
        rows.append(
            {
                "layer": layer.name,
                "class": type(layer).__name__,
                "output shape": tuple(layer.output.shape),
                "trainable": sum(_size(w) for w in layer.trainable_weights),
                "non-trainable": sum(_size(w) for w in layer.non_trainable_weights),
            }
        )
    return pd.DataFrame(rows)
