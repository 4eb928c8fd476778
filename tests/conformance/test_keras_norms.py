"""bnlib's norm layers run through the test cases the Keras team wrote for its normalization layers.

Every test names the upstream case it ports (``upstream:`` in its docstring): the tests of
``keras/src/layers/normalization/batch_normalization_test.py``, ``group_normalization_test.py``
and ``layer_normalization_test.py`` (Keras 3). Each feeds the same input to the Keras layer
and to bnlib's counterpart, translating the conventions with bnlib's converters
(:func:`bnlib.keras.torch_batchnorm_kwargs`: PyTorch momentum = 1 - Keras momentum; eps kept;
:func:`bnlib.keras.biased_variance`: Keras stores the biased moving variance). Keras works
channels last, bnlib channels first: inputs and outputs are moved between the two.

Departures (documented in ``docs/conformance.md``) are asserted as bnlib's behaviour: masks,
regularizers, constraints and ``rms_scaling`` have no bnlib counterpart and are not ported.
TensorFlow is imported only here, and the module is skipped without it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bnlib.keras import biased_variance, torch_batchnorm_kwargs
from bnlib.layers import BatchNorm, BatchRenorm, GroupNorm, InstanceNorm, LayerNorm

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

ATOL = 1e-4  # Keras computes in float32; so does bnlib here


@pytest.fixture(scope="module")
def keras():
    pytest.importorskip("tensorflow")
    return pytest.importorskip("keras")


def numpy(value) -> np.ndarray:
    """A Keras tensor or variable, or a torch tensor, as a NumPy array."""
    if isinstance(value, torch.Tensor):
        return value.detach().numpy()
    import keras

    return keras.ops.convert_to_numpy(value)


def channels_first(x: np.ndarray, axis: int) -> torch.Tensor:
    """The Keras input with its channel ``axis`` moved to dim 1, as a float32 tensor for bnlib."""
    return torch.from_numpy(np.moveaxis(np.asarray(x, dtype=np.float32), axis, 1).copy())


def channels_back(y: torch.Tensor, axis: int) -> np.ndarray:
    """The channels-first output of bnlib laid out as the Keras one (channel back at ``axis``)."""
    return np.moveaxis(y.detach().numpy(), 1, axis)


def bnlib_batch_norm(keras_layer, channels: int) -> BatchNorm:
    """A bnlib BatchNorm with a Keras layer's settings (bnlib.keras.torch_batchnorm_kwargs) and state."""
    kwargs = torch_batchnorm_kwargs(
        momentum=keras_layer.momentum, epsilon=keras_layer.epsilon, center=keras_layer.center, scale=keras_layer.scale
    )
    ours = BatchNorm(channels, **kwargs)
    if keras_layer.built:
        with torch.no_grad():
            ours.running_mean.copy_(torch.from_numpy(numpy(keras_layer.moving_mean)))
            ours.running_var.copy_(torch.from_numpy(numpy(keras_layer.moving_variance)))
            if ours.affine:
                ours.weight.copy_(torch.from_numpy(numpy(keras_layer.gamma)))
                ours.bias.copy_(torch.from_numpy(numpy(keras_layer.beta)))
    return ours


# ---------------------------------------------------------------------------------------------
# keras/src/layers/normalization/batch_normalization_test.py
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "center_scale, shape",
    [
        pytest.param(True, (2, 3), id="vector"),
        pytest.param(False, (2, 3), id="vector-no-affine"),
        pytest.param(True, (2, 4, 4, 3), id="image"),
    ],
)
def test_bn_basics(keras, center_scale, shape):
    """upstream: keras batch_normalization_test.py::BatchNormalizationTest::test_bn_basics.

    Same trainable weights (gamma, beta or none) and the same training output. Keras's two
    non-trainable weights are bnlib's running_mean and running_var; bnlib also counts
    num_batches_tracked (PyTorch's buffer, needed for momentum=None). The image case's
    regularizers have no bnlib counterpart (weight decay belongs to the optimizer).
    """
    layer = keras.layers.BatchNormalization(center=center_scale, scale=center_scale)
    layer.build(shape)
    ours = bnlib_batch_norm(layer, shape[-1])
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    y_keras = numpy(layer(x, training=True))
    y = channels_back(ours(channels_first(x, -1)), -1)
    np.testing.assert_allclose(y, y_keras, atol=ATOL)
    assert len(list(ours.parameters())) == len(layer.trainable_weights) == (2 if center_scale else 0)
    assert len(layer.non_trainable_weights) == 2
    assert sorted(name for name, _ in ours.named_buffers()) == ["num_batches_tracked", "running_mean", "running_var"]
    np.testing.assert_allclose(numpy(ours.running_mean), numpy(layer.moving_mean), atol=1e-6)


@pytest.mark.parametrize("moving_variance_initializer", ["zeros", "ones"])
@pytest.mark.parametrize("moving_mean_initializer", ["zeros", "ones"])
@pytest.mark.parametrize("input_shape", [(5, 2, 3), (5, 3, 3, 2)], ids=["3d", "4d"])
@pytest.mark.parametrize("axis", [-1, 1])
def test_correctness(keras, axis, input_shape, moving_mean_initializer, moving_variance_initializer):
    """upstream: keras batch_normalization_test.py::BatchNormalizationTest::test_correctness (every parameter).

    Keras momentum=0 is PyTorch momentum=1. Three chained training calls give the same outputs,
    the same moving mean, and Keras's moving variance = bnlib's running_var * (m - 1) / m
    (biased vs unbiased, a documented departure). Upstream then checks that inference right after
    training matches training; that holds in Keras because it stores the biased variance, and not in
    bnlib (nor in PyTorch): bnlib's inference equals Keras's once Keras holds bnlib's unbiased variance.
    The masked halves of the upstream test have no bnlib counterpart (no masks).
    """
    layer = keras.layers.BatchNormalization(
        axis=axis,
        momentum=0,
        moving_mean_initializer=moving_mean_initializer,
        moving_variance_initializer=moving_variance_initializer,
    )
    layer.build(input_shape)
    ours = bnlib_batch_norm(layer, input_shape[axis])
    assert ours.momentum == 1.0
    x = np.random.default_rng(1).normal(loc=5.0, scale=10.0, size=input_shape).astype(np.float32)
    out_keras, out = x, channels_first(x, axis)
    for _ in range(3):
        out_keras = layer(out_keras, training=True)
        out = ours(out)
        np.testing.assert_allclose(channels_back(out, axis), numpy(out_keras), atol=ATOL)
    m = math.prod(input_shape) // input_shape[axis]  # values per channel
    np.testing.assert_allclose(numpy(ours.running_mean), numpy(layer.moving_mean), atol=1e-4)
    np.testing.assert_allclose(numpy(biased_variance(ours.running_var, m)), numpy(layer.moving_variance), atol=1e-4)
    np.testing.assert_allclose(numpy(layer.moving_mean), 0.0, atol=1e-3)  # upstream's own claims
    np.testing.assert_allclose(numpy(layer.moving_variance), 1.0, atol=1e-3)

    ours.eval()
    training_out = numpy(layer(x, training=True))
    ours.train()
    ours(channels_first(x, axis))
    ours.eval()
    inference = channels_back(ours(channels_first(x, axis)), axis)
    np.testing.assert_allclose(numpy(layer(x, training=False)), training_out, atol=1e-3)  # Keras: equal
    assert not np.allclose(inference, training_out, atol=1e-6, rtol=1e-6)  # bnlib: the factor shows
    layer.moving_variance.assign(numpy(ours.running_var))
    np.testing.assert_allclose(inference, numpy(layer(x, training=False)), atol=ATOL)


def test_trainable_behavior(keras):
    """upstream: keras batch_normalization_test.py::BatchNormalizationTest::test_trainable_behavior.

    Departure: a Keras layer with trainable=False runs in inference mode even when called with
    training=True; bnlib takes its mode from .train()/.eval() only, so freezing is ``.eval()``
    (plus requires_grad_(False)). Then ten training calls with momentum 0.8 (PyTorch 0.2) and eps 1e-7.
    """
    layer = keras.layers.BatchNormalization(axis=-1, momentum=0.8, epsilon=1e-7)
    layer.build((1, 4, 4, 3))
    layer.trainable = False
    ours = bnlib_batch_norm(layer, 3)
    ours.eval().requires_grad_(False)
    assert len(list(ours.parameters())) == 2
    assert not any(p.requires_grad for p in ours.parameters())
    x = np.random.default_rng(2).normal(loc=5.0, scale=10.0, size=(200, 4, 4, 3)).astype(np.float32)
    out_keras = numpy(layer(x, training=True))
    out = channels_back(ours(channels_first(x, -1)), -1)
    np.testing.assert_allclose(out_keras, x, atol=1e-4)
    np.testing.assert_allclose(out, out_keras, atol=ATOL)

    layer.trainable = True
    ours.train().requires_grad_(True)
    for _ in range(10):
        out_keras = numpy(layer(x, training=True))
        out = channels_back(ours(channels_first(x, -1)), -1)
    np.testing.assert_allclose(out, out_keras, atol=ATOL)
    np.testing.assert_allclose(numpy(ours.running_mean), numpy(layer.moving_mean), atol=1e-3)
    normalized = (out - numpy(ours.bias)) / numpy(ours.weight)
    np.testing.assert_allclose(normalized.mean(axis=(0, 1, 2)), 0.0, atol=1e-3)
    np.testing.assert_allclose(normalized.std(axis=(0, 1, 2)), 1.0, atol=1e-3)


def test_masked_broadcast_normalization_unmasked(keras):
    """upstream: keras batch_normalization_test.py::BatchNormalizationTest::test_masked_broadcast_normalization.

    The mask there keeps every value, so bnlib (which has no masks) runs the same batch: a constant
    input gives zeros, moving mean 1 and moving variance 0 (unbiased or biased: both 0) with momentum 0.
    """
    x = np.ones((1, 2, 3, 4), dtype=np.float32)
    layer = keras.layers.BatchNormalization(axis=-1, momentum=0.0, epsilon=1e-3)
    y_keras = numpy(layer(x, training=True, mask=np.ones((1, 2, 1), dtype=np.float32)))
    ours = bnlib_batch_norm(layer, 4)
    y = channels_back(ours(channels_first(x, -1)), -1)
    np.testing.assert_allclose(y_keras, 0.0, atol=1e-6)
    np.testing.assert_allclose(y, y_keras, atol=1e-6)
    np.testing.assert_allclose(numpy(ours.running_mean), numpy(layer.moving_mean), atol=1e-6)
    np.testing.assert_allclose(numpy(ours.running_var), numpy(layer.moving_variance), atol=1e-6)


def test_renorm_invalid_clipping(keras):
    """upstream: keras batch_normalization_test.py::BatchNormalizationTest::test_renorm_invalid_clipping_keys.

    rmax below rmin and a negative dmax are refused by both (bnlib's r_max must be >= 1, its rmin is 1/r_max).
    """
    with pytest.raises(ValueError, match="rmax should be"):
        keras.layers.BatchNormalization(renorm=True, renorm_clipping={"rmax": 0.0, "rmin": 1.0})
    with pytest.raises(ValueError, match="dmax should be non-negative"):
        keras.layers.BatchNormalization(renorm=True, renorm_clipping={"rmax": 1.0, "dmax": -1.0})
    with pytest.raises(ValueError, match="r_max"):
        BatchRenorm(3, r_max=0.5)
    with pytest.raises(ValueError, match="d_max"):
        BatchRenorm(3, d_max=-1.0)


def test_renorm_inference(keras):
    """upstream: keras batch_normalization_test.py::BatchNormalizationTest::test_renorm_inference.

    At inference batch renormalization is batch norm: bnlib's BatchRenorm (running_std = sqrt(var + eps))
    and BatchNorm give Keras's output for the same statistics. Upstream draws the moving variance from a
    normal distribution (negative values give NaN in both frameworks); here its absolute value.
    """
    rng = np.random.default_rng(3)
    gamma, beta, mean = (rng.normal(size=10).astype(np.float32) for _ in range(3))
    var = np.abs(rng.normal(size=10)).astype(np.float32)
    bn, bn_renorm = keras.layers.BatchNormalization(renorm=False), keras.layers.BatchNormalization(renorm=True)
    for layer in (bn, bn_renorm):
        layer.build((None, 10))
        for name, value in (("gamma", gamma), ("beta", beta), ("moving_mean", mean), ("moving_variance", var)):
            getattr(layer, name).assign(value)
    x = rng.normal(size=(4, 10)).astype(np.float32)
    out, out_renorm = numpy(bn(x, training=False)), numpy(bn_renorm(x, training=False))
    np.testing.assert_allclose(out, out_renorm, atol=1e-5, rtol=1e-5)
    ours = bnlib_batch_norm(bn, 10).eval()
    renorm = BatchRenorm(10, eps=bn.epsilon, r_max=3.0, d_max=5.0).eval()
    with torch.no_grad():
        renorm.weight.copy_(torch.from_numpy(gamma))
        renorm.bias.copy_(torch.from_numpy(beta))
        renorm.running_mean.copy_(torch.from_numpy(mean))
        renorm.running_std.copy_(torch.from_numpy(np.sqrt(var + bn.epsilon)))
    xt = torch.from_numpy(x)
    np.testing.assert_allclose(numpy(ours(xt)), out, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(numpy(renorm(xt)), out_renorm, atol=1e-5, rtol=1e-5)


def test_renorm_correctness(keras):
    """upstream: keras batch_normalization_test.py::BatchNormalizationTest::test_renorm_correctness.

    Keras keeps two running pairs: renorm_mean/renorm_stddev (momentum 0.8) for r and d, and
    moving_mean/moving_stddev (momentum 0.9) for inference; bnlib's BatchRenorm keeps one, as the
    paper does (departure, in BatchRenorm's docstring). bnlib loaded with Keras's renorm pair gives
    Keras's output and upstream's expected output, and its running pair updated with PyTorch momentum
    0.2 equals Keras's renorm pair. Keras does not clip here; bnlib's limits are set out of reach.
    """
    epsilon, momentum, renorm_momentum = 1e-3, 0.9, 0.8
    rng = np.random.default_rng(1337)
    size = (3,)
    init_moving_mean = rng.normal(0.0, 1.0, size=size)
    init_moving_var = np.abs(rng.normal(1.0, 0.5, size=size))
    init_renorm_mean = rng.normal(0.0, 1.0, size=size)
    init_renorm_stddev = np.abs(rng.normal(1.0, 0.5, size=size))
    init_gamma, init_beta = rng.normal(1.0, 0.1, size=size), rng.normal(0.0, 0.1, size=size)
    layer = keras.layers.BatchNormalization(
        axis=-1, epsilon=epsilon, momentum=momentum, renorm=True, renorm_momentum=renorm_momentum
    )
    layer.build((None, 3))
    for name, value in (
        ("moving_mean", init_moving_mean),
        ("moving_variance", init_moving_var),
        ("moving_stddev", np.sqrt(init_moving_var)),
        ("renorm_mean", init_renorm_mean),
        ("renorm_stddev", init_renorm_stddev),
        ("gamma", init_gamma),
        ("beta", init_beta),
    ):
        getattr(layer, name).assign(value)
    x = np.array([[4.0, 6.0, 2.0], [8.0, -2.0, 5.0], [6.0, 4.0, 3.0]], dtype=np.float32)
    batch_mean, batch_stddev = x.mean(axis=0), np.sqrt(x.var(axis=0) + epsilon)
    r = batch_stddev / init_renorm_stddev
    d = (batch_mean - init_renorm_mean) / init_renorm_stddev
    expected = ((x - batch_mean) / batch_stddev * r + d) * init_gamma + init_beta

    ours = BatchRenorm(3, eps=epsilon, momentum=round(1 - renorm_momentum, 12), r_max=1e6, d_max=1e6)
    with torch.no_grad():
        for name, value in (
            ("running_mean", init_renorm_mean),
            ("running_std", init_renorm_stddev),
            ("weight", init_gamma),
            ("bias", init_beta),
        ):
            getattr(ours, name).copy_(torch.from_numpy(value))
    y_keras = numpy(layer(x, training=True))
    y = numpy(ours(torch.from_numpy(x)))
    np.testing.assert_allclose(y_keras, expected, atol=1e-5)
    np.testing.assert_allclose(y, expected, atol=1e-5)
    np.testing.assert_allclose(numpy(ours.running_mean), numpy(layer.renorm_mean), atol=1e-5)
    np.testing.assert_allclose(numpy(ours.running_std), numpy(layer.renorm_stddev), atol=1e-5)


# ---------------------------------------------------------------------------------------------
# keras/src/layers/normalization/group_normalization_test.py
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "groups, shape",
    [pytest.param(None, (3, 4, 32), id="default-groups"), pytest.param(4, (3, 4, 4), id="groups-4")],
)
def test_groupnorm(keras, groups, shape):
    """upstream: keras group_normalization_test.py::GroupNormalizationTest::test_groupnorm.

    Keras's default groups=32 on 32 channels, and groups=4 on 4: the same output (epsilon 1e-3) and two
    trainable weights. The regularizers and constraints there have no bnlib counterpart.
    """
    layer = keras.layers.GroupNormalization() if groups is None else keras.layers.GroupNormalization(groups=groups)
    x = np.random.default_rng(4).normal(size=shape).astype(np.float32)
    y_keras = numpy(layer(x))
    ours = GroupNorm(layer.groups, shape[-1], eps=layer.epsilon)
    with torch.no_grad():
        ours.weight.copy_(torch.from_numpy(numpy(layer.gamma)))
        ours.bias.copy_(torch.from_numpy(numpy(layer.beta)))
    np.testing.assert_allclose(channels_back(ours(channels_first(x, -1)), -1), y_keras, atol=ATOL)
    assert len(list(ours.parameters())) == len(layer.trainable_weights) == 2


def test_groups_bigger_than_dim_error(keras):
    """upstream: keras group_normalization_test.py::GroupNormalizationTest::test_groups_bigger_than_dim_error."""
    with pytest.raises(ValueError, match="cannot be more than the number of channels"):
        keras.layers.GroupNormalization(groups=5)(np.ones((2, 2, 2, 4)))
    with pytest.raises(ValueError, match="not divisible"):
        GroupNorm(5, 4)


def test_groups_not_a_multiple_of_dim_error(keras):
    """upstream: keras group_normalization_test.py::GroupNormalizationTest::test_groups_not_a_multiple_of_dim_error."""
    with pytest.raises(ValueError, match="must be a multiple of the number of channels"):
        keras.layers.GroupNormalization(groups=3)(np.ones((2, 2, 2, 4)))
    with pytest.raises(ValueError, match="not divisible"):
        GroupNorm(3, 4)


@pytest.mark.parametrize("bad", [0, -2, 1.5, "32"])
def test_groups_rejects_invalid_values(keras, bad):
    """upstream: keras group_normalization_test.py::GroupNormalizationTest::test_groups_rejects_invalid_values.

    Both refuse 0, -2, 1.5 and "32" (bnlib: ValueError or TypeError). Keras's groups=-1 means instance
    norm; bnlib refuses it and has InstanceNorm for that (departure).
    """
    with pytest.raises(ValueError, match="argument `groups`"):
        keras.layers.GroupNormalization(groups=bad)
    with pytest.raises((ValueError, TypeError)):
        GroupNorm(bad, 4)
    keras.layers.GroupNormalization(groups=-1)
    with pytest.raises(ValueError, match="num_groups"):
        GroupNorm(-1, 4)


INSTANCE_INPUT = np.array([[[-1.0, 1.0, 0, 2.0], [1.0, 3.0, -4, -2.0]]], dtype=np.float32)  # (1, L=2, C=4)


def test_groups_instance_norm(keras):
    """upstream: keras group_normalization_test.py::GroupNormalizationTest::test_groups_instance_norm.

    groups=-1 (Keras) = groups=C = bnlib's InstanceNorm = bnlib's GroupNorm(C, C).
    """
    out_1 = numpy(keras.layers.GroupNormalization(groups=-1, axis=-1, scale=False, center=False)(INSTANCE_INPUT))
    out_2 = numpy(keras.layers.GroupNormalization(groups=4, axis=-1, scale=False, center=False)(INSTANCE_INPUT))
    np.testing.assert_allclose(out_1, out_2, atol=1e-6)
    x = channels_first(INSTANCE_INPUT, -1)
    np.testing.assert_allclose(channels_back(InstanceNorm(4, eps=1e-3, affine=False)(x), -1), out_1, atol=ATOL)
    np.testing.assert_allclose(channels_back(GroupNorm(4, 4, eps=1e-3, affine=False)(x), -1), out_2, atol=ATOL)


def test_correctness_instance_norm():
    """upstream: keras group_normalization_test.py::GroupNormalizationTest::test_correctness_instance_norm."""
    expected = np.array([[[-1.0, -1.0, 1.0, 1.0], [1.0, 1.0, -1.0, -1.0]]])
    out = channels_back(GroupNorm(4, 4, eps=1e-3, affine=False)(channels_first(INSTANCE_INPUT, -1)), -1)
    np.testing.assert_allclose(out, expected, atol=1e-3)


def test_correctness_1d(keras):
    """upstream: keras group_normalization_test.py::GroupNormalizationTest::test_correctness_1d (its expected values)."""
    x = np.array([[-1.0, -1.0, 1.0, 1.0, 2.0, 2.0, 0, -2.0]], dtype=np.float32)
    expected_1 = np.array([[-0.898, -0.898, 0.539, 0.539, 1.257, 1.257, -0.180, -1.616]])
    expected_2 = np.array([[-1.0, -1.0, 1.0, 1.0, 0.904, 0.904, -0.301, -1.507]])
    for groups, expected in ((1, expected_1), (2, expected_2)):
        out = numpy(GroupNorm(groups, 8, eps=1e-3, affine=False)(torch.from_numpy(x)))
        np.testing.assert_allclose(out, expected, atol=1e-3)
        keras_out = numpy(keras.layers.GroupNormalization(groups=groups, axis=1, scale=False, center=False)(x))
        np.testing.assert_allclose(out, keras_out, atol=ATOL)


def test_correctness_2d(keras):
    """upstream: keras group_normalization_test.py::GroupNormalizationTest::test_correctness_2d (its expected values)."""
    x = np.array([[[-1.0, -1.0, 2.0, 2.0], [1.0, 1.0, 0, -2.0]]], dtype=np.float32)  # (1, L=2, C=4)
    expected_1 = np.array([[[-0.898, -0.898, 1.257, 1.257], [0.539, 0.539, -0.180, -1.616]]])
    expected_2 = np.array([[[-1.0, -1.0, 0.904, 0.904], [1.0, 1.0, -0.301, -1.507]]])
    for groups, expected in ((1, expected_1), (2, expected_2)):
        out = channels_back(GroupNorm(groups, 4, eps=1e-3, affine=False)(channels_first(x, -1)), -1)
        np.testing.assert_allclose(out, expected, atol=1e-3)
        keras_out = numpy(keras.layers.GroupNormalization(groups=groups, axis=-1, scale=False, center=False)(x))
        np.testing.assert_allclose(out, keras_out, atol=ATOL)


def test_broadcasting_2d_channels_first():
    """upstream: keras group_normalization_test.py::GroupNormalizationTest::test_broadcasting_2d_channels_first.

    Keras's axis=1 on (1, 4, 2, 2) is bnlib's native layout: no transposition.
    """
    x = torch.arange(16, dtype=torch.float32).reshape(1, 4, 2, 2)
    block = [[-1.5274, -1.0910], [-0.6546, -0.2182]], [[0.2182, 0.6546], [1.0910, 1.5274]]
    expected = np.array([[*block, *block]])
    np.testing.assert_allclose(numpy(GroupNorm(2, 4, eps=1e-3)(x)), expected, atol=1e-3)


def test_large_input_no_nan(keras):
    """upstream: keras group_normalization_test.py::GroupNormalizationTest::test_mixed_precision_large_input_no_nan.

    70000 overflows float16. Keras's mixed_float16 layer normalizes the float32 input in float32; a
    bnlib layer with float32 state does too: no NaN, and Keras's output.
    """
    x = np.full((2, 4, 8), 70000.0, dtype=np.float32)
    keras_out = numpy(keras.layers.GroupNormalization(groups=2, dtype="mixed_float16")(x))
    out = channels_back(GroupNorm(2, 8, eps=1e-3)(channels_first(x, -1)), -1)
    assert not np.isnan(keras_out).any()
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, keras_out.astype(np.float32), atol=1e-3)


# ---------------------------------------------------------------------------------------------
# keras/src/layers/normalization/layer_normalization_test.py
# ---------------------------------------------------------------------------------------------
# Keras's default LayerNormalization(axis=-1) normalizes the last axis with a weight per feature;
# bnlib's LayerNorm(D) is that on the input flattened to (rows, D).


def keras_layer_norm_pair(keras, features: int, **kwargs):
    layer = keras.layers.LayerNormalization(**kwargs)
    ours = LayerNorm(features, eps=layer.epsilon, affine=layer.scale and layer.center)
    return layer, ours


def assert_same_last_axis_layer_norm(layer, ours: LayerNorm, x: np.ndarray) -> None:
    y_keras = numpy(layer(x))
    if ours.affine:
        with torch.no_grad():
            ours.weight.copy_(torch.from_numpy(numpy(layer.gamma)))
            ours.bias.copy_(torch.from_numpy(numpy(layer.beta)))
    y = numpy(ours(torch.from_numpy(x.reshape(-1, x.shape[-1])))).reshape(x.shape)
    np.testing.assert_allclose(y, y_keras, atol=ATOL)


@pytest.mark.parametrize(
    "kwargs, shape",
    [
        pytest.param({}, (3, 4, 2), id="default"),
        pytest.param({"gamma_initializer": "ones", "beta_initializer": "ones"}, (3, 4, 2), id="beta-ones"),
        pytest.param({"scale": False, "center": False}, (3, 3), id="no-affine"),
        pytest.param({}, (1, 0, 10), id="empty"),
    ],
)
def test_ln_basics(keras, kwargs, shape):
    """upstream: keras layer_normalization_test.py::LayerNormalizationTest::test_ln_basics.

    The same output and the same number of trainable weights. Not ported: the regularizers (no bnlib
    counterpart) and rms_scaling (bnlib has no RMS norm), both listed as departures.
    """
    layer, ours = keras_layer_norm_pair(keras, shape[-1], **kwargs)
    x = np.random.default_rng(5).normal(size=shape).astype(np.float32)
    assert_same_last_axis_layer_norm(layer, ours, x)
    assert len(list(ours.parameters())) == len(layer.trainable_weights)


def test_ln_basics_all_axes(keras):
    """upstream: keras layer_normalization_test.py::LayerNormalizationTest::test_ln_basics (axis=(-3, -2, -1)).

    Normalizing each NHWC sample over (H, W, C) is bnlib's LayerNorm(C) on NCHW. Departure: Keras's
    gamma and beta are elementwise, shape (H, W, C); bnlib's are per channel, shape (C,). With
    Keras's initial weights (ones, zeros) the outputs agree.
    """
    x = np.random.default_rng(6).normal(size=(2, 8, 8, 3)).astype(np.float32)
    layer = keras.layers.LayerNormalization(axis=(-3, -2, -1))
    y_keras = numpy(layer(x))
    assert numpy(layer.gamma).shape == (8, 8, 3)
    ours = LayerNorm(3, eps=layer.epsilon)
    assert tuple(ours.weight.shape) == (3,)
    np.testing.assert_allclose(channels_back(ours(channels_first(x, -1)), -1), y_keras, atol=ATOL)


def test_ln_correctness(keras):
    """upstream: keras layer_normalization_test.py::LayerNormalizationTest::test_correctness.

    (1000, 2, 2, 2) values around 5 with spread 10, normalized over the last axis: Keras's output,
    and mean 0, standard deviation 1 after removing beta and gamma.
    """
    x = np.random.default_rng(7).normal(loc=5.0, scale=10.0, size=(1000, 2, 2, 2)).astype(np.float32)
    layer, ours = keras_layer_norm_pair(keras, 2, dtype="float32")
    assert_same_last_axis_layer_norm(layer, ours, x)
    out = numpy(ours(torch.from_numpy(x.reshape(-1, 2))))
    out = (out - numpy(ours.bias)) / numpy(ours.weight)
    np.testing.assert_allclose(out.mean(), 0.0, atol=1e-1)
    np.testing.assert_allclose(out.std(), 1.0, atol=1e-1)


def test_ln_output(keras):
    """upstream: keras layer_normalization_test.py::LayerNormalizationTest::test_output (its expected values)."""
    x = np.arange(5, dtype=np.float32)[None, :]
    layer = keras.layers.LayerNormalization(dtype="float32", beta_initializer="ones", gamma_initializer="ones")
    ours = LayerNorm(5, eps=layer.epsilon)
    with torch.no_grad():
        ours.bias.fill_(1.0)
    expected = [[-0.41386, 0.29307, 1.0, 1.70693, 2.41386]]
    np.testing.assert_allclose(numpy(ours(torch.from_numpy(x))), expected, atol=1e-5)
    np.testing.assert_allclose(numpy(layer(x)), expected, atol=1e-5)
