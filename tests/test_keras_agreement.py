"""bnlib.layers against Keras 3: BatchNormalization, LayerNormalization, GroupNormalization.

Keras works channels-last (NHWC); our layers channels-first (NCHW), so inputs
and outputs are permuted. TensorFlow is imported only here, and only if installed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bnlib.layers import BatchNorm, GroupNorm, InstanceNorm, LayerNorm

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def keras():
    pytest.importorskip("tensorflow")
    import keras

    return keras


def nhwc(x: torch.Tensor) -> np.ndarray:
    return x.detach().permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("momentum", [0.1, 0.3])
def test_keras_training_outputs_equal_and_moving_variance_is_biased(keras, momentum):
    torch.manual_seed(3)
    n, c, h, w, eps = 6, 4, 3, 3, 1e-3
    ours = BatchNorm(c, eps=eps, momentum=momentum)
    theirs = keras.layers.BatchNormalization(momentum=1 - momentum, epsilon=eps)
    m = n * h * w  # values per channel
    for step in range(3):
        x = torch.randn(n, c, h, w) * 2 + step  # NCHW for us, NHWC for Keras
        keras_before = (
            keras.ops.convert_to_numpy(theirs.moving_variance) if theirs.built else np.ones(c, dtype=np.float32)
        )
        torch_before = ours.running_var.clone()
        y_keras = theirs(nhwc(x), training=True)
        y = ours(x)
        np.testing.assert_allclose(nhwc(y), keras.ops.convert_to_numpy(y_keras), atol=1e-5)
        np.testing.assert_allclose(ours.running_mean.numpy(), keras.ops.convert_to_numpy(theirs.moving_mean), atol=1e-6)
        # Each step adds momentum * batch variance: unbiased in PyTorch, biased in Keras, ratio m / (m - 1).
        torch_added = (ours.running_var - (1 - momentum) * torch_before).numpy()
        keras_added = keras.ops.convert_to_numpy(theirs.moving_variance) - (1 - momentum) * keras_before
        np.testing.assert_allclose(torch_added / keras_added, m / (m - 1), rtol=1e-5)
    ours.eval()
    ours.requires_grad_(False)
    x = torch.randn(n, c, h, w)
    y_keras = theirs(nhwc(x), training=False)
    assert not np.allclose(nhwc(ours(x)), keras.ops.convert_to_numpy(y_keras), atol=1e-5)  # the factor shows
    theirs.moving_variance.assign(ours.running_var.numpy())  # same statistics, same inference output
    y_keras = theirs(nhwc(x), training=False)
    np.testing.assert_allclose(nhwc(ours(x)), keras.ops.convert_to_numpy(y_keras), atol=1e-5)


def test_keras_momentum_one_gives_the_exact_factor(keras):
    # With PyTorch momentum 1 (Keras 0) the running variance is the last batch's: unbiased vs biased.
    x = torch.randn(5, 3, 2, 2) * 3
    ours, theirs = BatchNorm(3, momentum=1.0), keras.layers.BatchNormalization(momentum=0.0)
    ours(x)
    theirs(nhwc(x), training=True)
    m = 5 * 2 * 2
    ratio = ours.running_var.numpy() / keras.ops.convert_to_numpy(theirs.moving_variance)
    np.testing.assert_allclose(ratio, m / (m - 1), rtol=1e-5)


def randomize(layer) -> None:
    with torch.no_grad():
        layer.weight.normal_()
        layer.bias.normal_()


def test_layer_norm_equals_keras_dense_and_conv(keras):
    torch.manual_seed(4)
    eps = 1e-3
    dense = torch.randn(6, 5) * 2 + 1
    ours = LayerNorm(5, eps=eps)
    randomize(ours)
    theirs = keras.layers.LayerNormalization(epsilon=eps)
    theirs.build((None, 5))
    theirs.set_weights([ours.weight.detach().numpy(), ours.bias.detach().numpy()])
    np.testing.assert_allclose(
        ours(dense).detach().numpy(), keras.ops.convert_to_numpy(theirs(dense.numpy())), atol=2e-5
    )
    # After a convolution: statistics over (H, W, C) in Keras = over (C, H, W) here; Keras's gamma is (H, W, C).
    image = torch.randn(3, 4, 5, 5) * 2 + 1
    ours = LayerNorm(4, eps=eps)
    randomize(ours)
    theirs = keras.layers.LayerNormalization(axis=[1, 2, 3], epsilon=eps)
    theirs.build((None, 5, 5, 4))
    theirs.set_weights([np.broadcast_to(p.detach().numpy(), (5, 5, 4)) for p in (ours.weight, ours.bias)])
    np.testing.assert_allclose(nhwc(ours(image)), keras.ops.convert_to_numpy(theirs(nhwc(image))), atol=2e-5)


@pytest.mark.parametrize("groups", [1, 2, 6, -1])
def test_group_norm_equals_keras(keras, groups):
    torch.manual_seed(5)
    eps = 1e-3
    x = torch.randn(3, 6, 4, 4) * 2 + 1
    ours = InstanceNorm(6, eps=eps) if groups == -1 else GroupNorm(groups, 6, eps=eps)
    randomize(ours)
    theirs = keras.layers.GroupNormalization(groups=groups, epsilon=eps)
    theirs.build((None, 4, 4, 6))
    theirs.set_weights([ours.weight.detach().numpy(), ours.bias.detach().numpy()])
    np.testing.assert_allclose(nhwc(ours(x)), keras.ops.convert_to_numpy(theirs(nhwc(x))), atol=2e-5)
