"""bnlib.layers.BatchNorm against torch.nn.BatchNorm1d/2d/3d; make_norm. Keras: test_keras_agreement.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from bnlib.layers import BatchNorm, TorchBatchNorm, known_norms, make_norm, register_norm

SETTINGS = settings(max_examples=20, deadline=None)
TORCH_BN = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}


def tolerance(dtype: torch.dtype) -> dict[str, float]:
    return {"atol": 2e-5, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 1e-10, "rtol": 1e-9}


def pair(num_features: int, dtype: torch.dtype, **kwargs) -> BatchNorm:
    """Our layer with a random gamma and beta (torch's layer then loads its state_dict)."""
    ours = BatchNorm(num_features, dtype=dtype, **kwargs)
    if ours.affine:
        with torch.no_grad():
            ours.weight.normal_()
            ours.bias.normal_()
    return ours


@st.composite
def cases(draw):
    ndim = draw(st.sampled_from([2, 3, 4, 5]))
    n = draw(st.integers(2, 6))
    c = draw(st.integers(1, 5))
    spatial = tuple(draw(st.integers(1, 4)) for _ in range(ndim - 2))
    return {
        "shape": (n, c, *spatial),
        "dtype": draw(st.sampled_from([torch.float32, torch.float64])),
        "momentum": draw(st.sampled_from([0.1, 0.5, 1.0, 0.0, None])),
        "affine": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**16)),
    }


@SETTINGS
@given(case=cases())
def test_equals_torch_batchnorm_over_training_steps_and_eval(case):
    shape, dtype, momentum = case["shape"], case["dtype"], case["momentum"]
    torch.manual_seed(case["seed"])
    ours = pair(shape[1], dtype, momentum=momentum, affine=case["affine"])
    theirs = TORCH_BN[len(shape)](shape[1], momentum=momentum, affine=case["affine"], dtype=dtype)
    theirs.load_state_dict(ours.state_dict())
    tol = tolerance(dtype)
    for step in range(3):
        x = (torch.randn(*shape, dtype=dtype) * (step + 1) + step).requires_grad_()
        x_ref = x.detach().clone().requires_grad_()
        y, y_ref = ours(x), theirs(x_ref)
        torch.testing.assert_close(y, y_ref, **tol)
        upstream = torch.randn_like(y)
        y.backward(upstream)
        y_ref.backward(upstream)
        torch.testing.assert_close(x.grad, x_ref.grad, **tol)
        if case["affine"]:
            torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, **tol)
            torch.testing.assert_close(ours.bias.grad, theirs.bias.grad, **tol)
        torch.testing.assert_close(ours.running_mean, theirs.running_mean, **tol)
        torch.testing.assert_close(ours.running_var, theirs.running_var, **tol)
        assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked) == step + 1
    ours.eval()
    theirs.eval()
    x = torch.randn(*shape, dtype=dtype)
    torch.testing.assert_close(ours(x), theirs(x), **tol)
    single = torch.randn(1, *shape[1:], dtype=dtype)  # a batch of one is fine in eval
    torch.testing.assert_close(ours(single), theirs(single), **tol)


@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5), (3, 3, 4, 4)])
def test_track_running_stats_false_uses_batch_statistics_in_eval(shape):
    ours = BatchNorm(3, track_running_stats=False)
    theirs = TORCH_BN[len(shape)](3, track_running_stats=False)
    assert ours.running_mean is None and ours.num_batches_tracked is None
    assert sorted(ours.state_dict()) == sorted(theirs.state_dict()) == ["bias", "weight"]
    x = torch.randn(*shape) * 4 + 2
    for mode in (True, False):
        ours.train(mode)
        theirs.train(mode)
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("shape", [(5, 3), (3, 2, 3, 2)])
@pytest.mark.parametrize("training", [True, False])
def test_gradcheck_float64(shape, training):
    torch.manual_seed(0)
    layer = pair(shape[1], torch.float64).train(training)
    if not training:
        layer.running_mean.normal_()
        layer.running_var.uniform_(0.5, 2.0)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    weight = layer.weight.detach().clone().requires_grad_()
    bias = layer.bias.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x, w, b: torch.func.functional_call(layer, {"weight": w, "bias": b}, (x,)), (x, weight, bias)
    )


def test_state_dict_moves_both_ways():
    torch.manual_seed(1)
    ours, theirs = BatchNorm(4), nn.BatchNorm2d(4)
    for _ in range(2):
        theirs(torch.randn(8, 4, 3, 3) * 3 + 1)
    ours.load_state_dict(theirs.state_dict())  # torch -> ours
    assert list(ours.state_dict()) == list(theirs.state_dict())
    fresh = nn.BatchNorm2d(4)
    ours(torch.randn(8, 4, 3, 3))
    fresh.load_state_dict(ours.state_dict())  # ours -> torch
    for key, value in ours.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[key], value)
    assert int(fresh.num_batches_tracked) == 3
    no_affine = BatchNorm(4, affine=False)
    assert sorted(no_affine.state_dict()) == sorted(nn.BatchNorm2d(4, affine=False).state_dict())


def test_mode_comes_from_self_training_not_grad_mode():
    layer = BatchNorm(2)
    x = torch.randn(16, 2) * 3 + 5
    with torch.no_grad():
        y = layer(x)  # train mode under no_grad: batch statistics, updated running stats
    torch.testing.assert_close(y.mean(0), torch.zeros(2), atol=1e-5, rtol=0)
    assert int(layer.num_batches_tracked) == 1 and layer.running_mean.abs().sum() > 0
    layer.eval()
    before = layer.running_mean.clone()
    y = layer(x.requires_grad_())  # eval with grad enabled: running stats, no update
    torch.testing.assert_close(layer.running_mean, before)
    expected = (x - layer.running_mean) / torch.sqrt(layer.running_var + layer.eps)
    torch.testing.assert_close(y, expected)


def test_cumulative_average_with_momentum_none():
    layer = BatchNorm(3, momentum=None)
    batches = [torch.randn(10, 3) * (i + 1) + i for i in range(4)]
    for b in batches:
        layer(b)
    torch.testing.assert_close(layer.running_mean, torch.stack([b.mean(0) for b in batches]).mean(0))
    torch.testing.assert_close(layer.running_var, torch.stack([b.var(0) for b in batches]).mean(0))


def test_running_var_is_unbiased_while_normalization_is_biased():
    layer = BatchNorm(1, momentum=1.0, eps=1e-12)
    x = torch.tensor([[0.0], [2.0]])
    y = layer(x)
    assert layer.running_var.item() == pytest.approx(2.0)  # unbiased: ((-1)^2 + 1^2) / (2 - 1)
    torch.testing.assert_close(y, torch.tensor([[-1.0], [1.0]]))  # biased: variance 1


def test_one_value_per_channel_in_training_raises_like_torch():
    layer = BatchNorm(3)
    with pytest.raises(ValueError, match=r"more than 1 value per channel, got input shape \(1, 3\).*\.eval\(\)"):
        layer(torch.randn(1, 3))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        nn.BatchNorm1d(3)(torch.randn(1, 3))  # PyTorch refuses too
    with pytest.raises(ValueError, match=r"shape \(1, 3, 1, 1\)"):
        layer(torch.randn(1, 3, 1, 1))
    assert int(layer.num_batches_tracked) == 0  # rejected batches do not count
    with pytest.raises(ValueError, match=r"no running statistics to fall back on \(track_running_stats=False\)"):
        BatchNorm(3, track_running_stats=False).eval()(torch.randn(1, 3))
    layer(torch.randn(1, 3, 2, 1))  # two values per channel: fine
    layer.eval()
    assert layer(torch.randn(1, 3)).shape == (1, 3)


def test_nan_in_training_raises_and_leaves_running_statistics_untouched():
    layer = BatchNorm(3)
    layer(torch.randn(8, 3))
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    x = torch.randn(8, 3, 2, 2)
    x[2, 1, 0, 1] = float("nan")
    with pytest.raises(ValueError, match=r"BatchNorm\(3\): the batch statistics of channel\(s\) \[1\] are NaN"):
        layer(x)
    for key, value in layer.state_dict().items():
        torch.testing.assert_close(value, state[key])
    layer.eval()  # eval is elementwise: NaN in, NaN out, only there
    y = layer(x)
    assert torch.isnan(y).sum() == 1 and torch.isnan(y[2, 1, 0, 1])


def test_overflow_to_infinity_is_reported():
    layer = BatchNorm(2, dtype=torch.float16)
    x = torch.full((4, 2), 60000.0, dtype=torch.float16)
    x[0] = -60000.0  # the squared deviations overflow float16
    with pytest.raises(ValueError, match="NaN or infinite"):
        layer(x)


@pytest.mark.parametrize(
    ("x", "error", "message"),
    [
        (torch.randn(5), ValueError, r"got shape \(5,\); add a batch axis"),
        (torch.randn(4, 5), ValueError, r"expected 3 channels at dim 1 .* got shape \(4, 5\)"),
        (torch.randn(2, 8, 8, 3), ValueError, r"channels-last \(N, H, W, C\) images use x.permute\(0, 3, 1, 2\)"),
        (torch.ones(4, 3, dtype=torch.long), TypeError, r"floating-point tensor, got dtype torch.int64"),
        (torch.randn(4, 3, dtype=torch.float64), TypeError, r"torch.float32 parameters but got a torch.float64"),
        (np.ones((4, 3), dtype=np.float32), TypeError, r"expected a torch.Tensor, got ndarray"),
    ],
)
def test_bad_input_is_explained(x, error, message):
    layer = BatchNorm(3)
    with pytest.raises(error, match=message):
        layer(x)
    assert int(layer.num_batches_tracked) == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_features": 0}, "num_features must be a positive integer"),
        ({"num_features": 2.0}, "num_features must be a positive integer"),
        ({"num_features": 2, "eps": 0}, "eps must be a positive number"),
        ({"num_features": 2, "momentum": 0.99 + 1}, r"Keras momentum of 0.99 is a PyTorch momentum of 0.01"),
    ],
)
def test_bad_constructor_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BatchNorm(**kwargs)


def test_buffers_follow_to_and_repr():
    layer = BatchNorm(3).to(torch.float64)
    assert layer.running_var.dtype == torch.float64 and layer.num_batches_tracked.dtype == torch.long
    layer(torch.randn(4, 3, dtype=torch.float64))
    assert repr(layer) == "BatchNorm(3, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)"
    layer.reset_parameters()
    assert int(layer.num_batches_tracked) == 0 and layer.running_var.eq(1).all()


# ---------------------------------------------------------------- make_norm


@pytest.mark.parametrize("kind", ["batch", "torch_batch", "layer", "group", "none"])
@pytest.mark.parametrize("shape", [(4, 6), (4, 6, 5, 5)])
def test_make_norm_serves_dense_and_conv_layers(kind, shape):
    layer = make_norm(kind, 6)
    assert isinstance(layer, nn.Module)
    assert layer(torch.randn(*shape)).shape == shape


def test_make_norm_kinds_and_errors():
    assert {"batch", "torch_batch", "layer", "instance", "group", "none"} <= set(known_norms())
    assert isinstance(make_norm("torch_batch", 3), nn.BatchNorm2d)
    assert make_norm("instance", 3)(torch.randn(2, 3, 4, 4)).shape == (2, 3, 4, 4)
    assert make_norm("batch", 3, momentum=None).momentum is None
    assert make_norm("group", 16).num_groups == 4 and make_norm("group", 6).num_groups == 3
    assert make_norm("group", 6, num_groups=6).num_groups == 6
    with pytest.raises(ValueError, match=r"unknown normalization kind 'bn'; known kinds: .*batch.*group"):
        make_norm("bn", 3)
    with pytest.raises(TypeError, match="kind must be a string"):
        make_norm(nn.BatchNorm2d, 3)
    with pytest.raises(ValueError, match="already registered"):
        register_norm("batch", BatchNorm)
    with pytest.raises(TypeError, match="builder must be callable"):
        register_norm("new_kind", "not callable")


def test_torch_batch_is_pytorch_and_equals_ours():
    torch.manual_seed(2)
    ours, theirs = BatchNorm(3), TorchBatchNorm(3)
    for shape in [(8, 3), (4, 3, 5, 5)]:
        x = torch.randn(*shape)
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours.running_var, theirs.running_var)
    with pytest.raises(ValueError, match="at least 2 dims"):
        theirs(torch.randn(3))
