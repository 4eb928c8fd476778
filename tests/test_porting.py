"""bnlib.keras.porting: a trained LeNet-5 with batch norm gives the same predictions in PyTorch and Keras."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from torch import nn

import bnlib
from bnlib.keras import require_keras
from bnlib.keras.porting import (
    conv_kernel_to_keras,
    dense_kernel_to_keras,
    dense_kernel_to_torch,
    keras_lenet5,
    keras_to_torch_lenet5,
    torch_to_keras_lenet5,
)
from bnlib.models import MLP, LeNet5
from bnlib.training import fit

try:
    tf, keras = require_keras()  # imports Triton before TensorFlow: the reverse order crashes torch later
except ImportError:
    pytest.skip("TensorFlow is not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def mnist():
    data = bnlib.load_mnist().subset(256, 256)
    x_train, y_train = data.torch("train", device="cpu", size=32)
    x_test, y_test = data.torch("test", device="cpu", size=32)
    return x_train, y_train, x_test, y_test


def nhwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(0, 2, 3, 1).contiguous().numpy()


def trained_lenet(mnist, **kwargs) -> nn.Module:
    """A LeNet5 after 4 steps of Adam on MNIST: real running statistics, gammas and betas."""
    x_train, y_train, *_ = mnist
    torch.manual_seed(0)
    model = LeNet5(**kwargs)
    fit(model, (x_train, y_train), epochs=1, batch_size=64, seed=0, progress=False, device="cpu")
    return model.eval()


@pytest.fixture(scope="module")
def lenet_bn_before(mnist):
    return trained_lenet(mnist, norm=nn.BatchNorm2d, norm_position="before")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"norm": nn.BatchNorm2d, "norm_position": "before"},
        {"norm": "batch", "activation": "relu", "pool": "max"},  # bnlib's BatchNorm, after the activation
        {"norm": lambda c: nn.BatchNorm2d(c, eps=1e-3, momentum=0.01), "softmax_output": True},
        {"norm": None},
    ],
    ids=["torch-bn-before", "bnlib-bn-after-relu-max", "keras-eps-softmax", "no-bn"],
)
def test_torch_to_keras_same_predictions_on_mnist(mnist, kwargs):
    *_, x_test, _ = mnist
    model = trained_lenet(mnist, **kwargs)
    keras_model = torch_to_keras_lenet5(model)
    with torch.no_grad():
        expected = model(x_test).numpy()
    actual = keras_model(nhwc(x_test), training=False).numpy()
    np.testing.assert_allclose(actual, expected, atol=2e-4, rtol=1e-4)
    assert (actual.argmax(1) == expected.argmax(1)).all()
    for index in (1, 2):
        name = f"bn{index}"
        if kwargs["norm"] is not None:
            torch_bn = [m for m in model.features if bnlib.inference.is_batchnorm(m)][index - 1]
            layer = keras_model.get_layer(name)
            assert layer.epsilon == pytest.approx(torch_bn.eps) and layer.momentum == pytest.approx(
                1 - torch_bn.momentum
            )
            # the stored variance is copied as it is, not rescaled by (n - 1) / n
            np.testing.assert_array_equal(layer.moving_variance.numpy(), torch_bn.running_var.numpy())


def test_round_trip_restores_every_tensor(lenet_bn_before):
    model = lenet_bn_before
    back = keras_to_torch_lenet5(torch_to_keras_lenet5(model))
    original, restored = model.state_dict(), back.state_dict()
    assert set(original) == set(restored)
    for key in original:
        if not key.endswith("num_batches_tracked"):
            torch.testing.assert_close(restored[key], original[key], atol=0, rtol=0, msg=key)


def test_keras_trained_model_to_torch_same_probabilities(mnist):
    x_train, y_train, x_test, _ = mnist
    keras.utils.set_random_seed(0)
    keras_model = keras_lenet5(norm_position="before", softmax_output=True, momentum=0.9, epsilon=1e-3)
    keras_model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    keras_model.fit(nhwc(x_train), y_train.numpy(), batch_size=64, epochs=1, verbose=0)
    assert not np.allclose(keras_model.get_layer("bn1").moving_mean.numpy(), 0), "training should move the statistics"
    for norm_layer in (nn.BatchNorm2d, bnlib.layers.BatchNorm):
        model = keras_to_torch_lenet5(keras_model, norm_layer=norm_layer)
        assert not model.training and isinstance(model.features[1], norm_layer)
        assert model.features[1].momentum == pytest.approx(0.1) and model.features[1].eps == pytest.approx(1e-3)
        with torch.no_grad():
            probabilities = model(x_test).numpy()
        np.testing.assert_allclose(probabilities, keras_model.predict(nhwc(x_test), verbose=0), atol=1e-5, rtol=1e-4)


def test_fused_keras_activations_are_read():
    layers = keras.layers
    keras.utils.set_random_seed(1)
    keras_model = keras.Sequential(
        [
            keras.Input((32, 32, 1)),
            layers.Conv2D(6, 5, activation="tanh"),
            layers.AveragePooling2D(2),
            layers.Conv2D(16, 5, activation="tanh"),
            layers.AveragePooling2D(2),
            layers.Flatten(),
            layers.Dense(120, activation="tanh"),
            layers.Dense(84, activation="tanh"),
            layers.Dense(10),
        ]
    )
    model = keras_to_torch_lenet5(keras_model)
    x = np.random.default_rng(0).random((4, 32, 32, 1), dtype=np.float32)
    with torch.no_grad():
        ours = model(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(ours, keras_model(x).numpy(), atol=1e-5)


def test_layouts_match_keras_layers():
    rng = np.random.default_rng(0)
    conv = nn.Conv2d(3, 4, 3)
    x = torch.from_numpy(rng.normal(size=(2, 3, 7, 7)).astype(np.float32))
    keras_conv = keras.layers.Conv2D(4, 3)
    keras_conv.build((None, 7, 7, 3))
    keras_conv.set_weights([conv_kernel_to_keras(conv.weight), conv.bias.detach().numpy()])
    with torch.no_grad():
        np.testing.assert_allclose(keras_conv(nhwc(x)).numpy(), nhwc(conv(x)), atol=1e-5)
    # Flatten then Dense: the permutation is needed, and without it the outputs differ.
    linear = nn.Linear(3 * 7 * 7, 5)
    with torch.no_grad():
        expected = linear(x.flatten(1)).numpy()
    flat = nhwc(x).reshape(2, -1)  # Keras's flatten order
    right = flat @ dense_kernel_to_keras(linear.weight.detach().numpy(), chw=(3, 7, 7)) + linear.bias.detach().numpy()
    wrong = flat @ dense_kernel_to_keras(linear.weight.detach().numpy()) + linear.bias.detach().numpy()
    np.testing.assert_allclose(right, expected, atol=1e-5)
    assert np.abs(wrong - expected).max() > 0.1
    kernel = dense_kernel_to_keras(linear.weight.detach().numpy(), chw=(3, 7, 7))
    np.testing.assert_array_equal(dense_kernel_to_torch(kernel, chw=(3, 7, 7)), linear.weight.detach().numpy())


def test_refusals():
    with pytest.raises(TypeError, match=r"expected a bnlib\.models\.LeNet5, got MLP"):
        torch_to_keras_lenet5(MLP())
    with pytest.raises(ValueError, match=r"cannot port layer '2' \(GroupNorm\)"):
        torch_to_keras_lenet5(LeNet5(norm=lambda c: nn.GroupNorm(1, c)))
    with pytest.raises(ValueError, match="track_running_stats=True"):
        torch_to_keras_lenet5(LeNet5(norm=lambda c: nn.BatchNorm2d(c, track_running_stats=False)))
    with pytest.raises(TypeError, match=r"expected a keras\.Model, got str"):
        keras_to_torch_lenet5("model")
    not_lenet = keras.Sequential([keras.Input((32, 32, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    with pytest.raises(ValueError, match="not a LeNet-5"):
        keras_to_torch_lenet5(not_lenet)
    with pytest.raises(ValueError, match="activation must be one of"):
        keras_lenet5(activation="gelu")
    with pytest.raises(ValueError, match="norm_position"):
        keras_lenet5(norm_position="middle")
    with pytest.raises(ValueError, match="chw=\\(3, 2, 2\\) has 12 values but the layer has 10 inputs"):
        dense_kernel_to_keras(np.zeros((4, 10)), chw=(3, 2, 2))
    with pytest.raises(ValueError, match="expected a 4-D conv weight"):
        conv_kernel_to_keras(np.zeros((3, 3)))


def test_missing_keras_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "keras", None)  # makes `import keras` raise ImportError
    with pytest.raises(ImportError, match=r'pip install "bnlib\[keras\]"'):
        keras_lenet5()
    with pytest.raises(ImportError, match=r'pip install "bnlib\[keras\]"'):
        keras_to_torch_lenet5(object())


@pytest.mark.parametrize(
    "norm", [lambda c: nn.BatchNorm2d(c, momentum=None), lambda c: bnlib.layers.BatchNorm(c, momentum=None)]
)
def test_momentum_none_is_refused_with_the_fix_as_every_converter_does(norm):
    """The one momentum=None rule of bnlib.keras: no fixed Keras momentum equals a cumulative average."""
    model = LeNet5(norm=norm).eval()
    with pytest.raises(ValueError, match=r"cumulative.*set each batch norm's \.momentum to a number"):
        torch_to_keras_lenet5(model)
    for module in model.modules():  # the fix the message gives: a number; the predictions do not depend on it
        if bnlib.inference.is_batchnorm(module):
            module.momentum = 0.1
    assert torch_to_keras_lenet5(model).get_layer("bn1").momentum == pytest.approx(0.9)
