"""LayerNorm, InstanceNorm and GroupNorm against torch.nn; their relations to each other; bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from bnlib.layers import BatchNorm, GroupNorm, InstanceNorm, LayerNorm

SETTINGS = settings(max_examples=20, deadline=None)


def tolerance(dtype: torch.dtype) -> dict[str, float]:
    return {"atol": 2e-5, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 1e-10, "rtol": 1e-9}


def randomize(*layers: nn.Module) -> None:
    for layer in layers:
        if getattr(layer, "weight", None) is not None:
            with torch.no_grad():
                layer.weight.normal_()
                layer.bias.normal_()


def close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, *, reference=None) -> None:
    """Compare with rounding errors judged relative to the largest entry, not entry by entry.

    Gradients scale like 1/sigma and cancel within a group (few values, small spread: ill-conditioned):
    with two values per group the true input gradient is almost 0 and both results are rounding noise.
    So in float32, given the float64 ``reference``, ours passes when it is as accurate as PyTorch's
    float32 result, within 4x its error (the fixed tolerance alone made this test fail now and then).
    """
    tol = tolerance(dtype)
    allowed = tol["atol"] + tol["rtol"] * expected.abs().max().item()
    if reference is not None and dtype == torch.float32:
        reference = reference.to(dtype=torch.float64)
        torch_error = (expected.double() - reference).abs().max().item()
        ours_error = (actual.double() - reference).abs().max().item()
        assert ours_error <= 4 * torch_error + allowed, (
            f"ours is off the float64 result by {ours_error:.3g}, PyTorch's float32 by {torch_error:.3g}"
        )
        return
    torch.testing.assert_close(actual, expected, atol=allowed, rtol=tol["rtol"])


def gradients(module: nn.Module, x: torch.Tensor, upstream: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Output, and gradients of <output, upstream> with respect to x, weight and bias (those that exist)."""
    x = x.clone().requires_grad_()
    y = module(x)
    y.backward(upstream)
    parameters = [p.grad for p in (getattr(module, "weight", None), getattr(module, "bias", None)) if p is not None]
    return (y.detach(), x.grad, *parameters)


def assert_same_function(ours: nn.Module, theirs: nn.Module, x: torch.Tensor) -> None:
    """Outputs and gradients (input, weight, bias) agree."""
    import copy

    tol = tolerance(x.dtype)
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype)  # the norms keep shapes
    mine = gradients(ours, x, upstream)
    framework = gradients(theirs, x, upstream)
    exact = gradients(copy.deepcopy(theirs).double(), x.double(), upstream.double())
    torch.testing.assert_close(mine[0], framework[0], **tol)
    close(mine[1], framework[1], x.dtype, reference=exact[1])
    if getattr(ours, "weight", None) is not None:
        # torch.nn.LayerNorm([C, H, W]) has an elementwise weight: sum its gradient over (H, W).
        reduce = tuple(range(1, theirs.weight.ndim))
        per_channel = (lambda g: g.sum(reduce)) if reduce else (lambda g: g)
        for index in (2, 3):
            close(mine[index], per_channel(framework[index]), x.dtype, reference=per_channel(exact[index]))


@st.composite
def images(draw, min_ndim=2):
    ndim = draw(st.sampled_from([d for d in (2, 3, 4) if d >= min_ndim]))
    n, c = draw(st.integers(1, 4)), draw(st.integers(1, 6))
    spatial = tuple(draw(st.integers(2 if min_ndim > 2 else 1, 4)) for _ in range(ndim - 2))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))  # reproducible from hypothesis's report
    return torch.randn(n, c, *spatial, dtype=dtype, generator=generator) * draw(st.sampled_from([0.1, 3.0])) + 1


@SETTINGS
@given(x=images())
def test_layer_norm_equals_torch(x):
    c = x.shape[1]
    if x[0].numel() < 2:
        return
    ours = LayerNorm(c, dtype=x.dtype)
    randomize(ours)
    # torch's LayerNorm over (C, *) with an elementwise weight that is constant over (*): ours exactly.
    theirs = nn.LayerNorm(tuple(x.shape[1:]), dtype=x.dtype)
    with torch.no_grad():
        view = (c,) + (1,) * (x.ndim - 2)
        theirs.weight.copy_(ours.weight.reshape(view).expand(theirs.weight.shape))
        theirs.bias.copy_(ours.bias.reshape(view).expand(theirs.bias.shape))
    assert_same_function(ours, theirs, x)
    fresh, group_of_one = LayerNorm(c, dtype=x.dtype), nn.GroupNorm(1, c, dtype=x.dtype)
    fresh.load_state_dict(ours.state_dict())  # fresh gradients for a second comparison
    group_of_one.load_state_dict(ours.state_dict())
    assert_same_function(fresh, group_of_one, x)


@SETTINGS
@given(x=images(min_ndim=3))
def test_instance_norm_equals_torch(x):
    c = x.shape[1]
    ours = InstanceNorm(c, dtype=x.dtype)
    randomize(ours)
    theirs = (nn.InstanceNorm1d if x.ndim == 3 else nn.InstanceNorm2d)(c, affine=True, dtype=x.dtype)
    theirs.load_state_dict(ours.state_dict())
    assert_same_function(ours, theirs, x)
    plain = InstanceNorm(c, affine=False, dtype=x.dtype)
    torch.testing.assert_close(
        plain(x), nn.InstanceNorm2d(c)(x) if x.ndim == 4 else nn.InstanceNorm1d(c)(x), **tolerance(x.dtype)
    )


@SETTINGS
@given(x=images(), data=st.data())
def test_group_norm_equals_torch(x, data):
    c = x.shape[1]
    groups = data.draw(st.sampled_from([g for g in range(1, c + 1) if c % g == 0]))
    if x[0].numel() // groups < 2:
        return
    ours = GroupNorm(groups, c, dtype=x.dtype)
    randomize(ours)
    theirs = nn.GroupNorm(groups, c, dtype=x.dtype)
    theirs.load_state_dict(ours.state_dict())
    assert_same_function(ours, theirs, x)


@pytest.mark.parametrize("shape", [(3, 6, 4, 4), (2, 6, 5)])
def test_group_norm_extremes_are_layer_and_instance_norm(shape):
    torch.manual_seed(0)
    x = torch.randn(*shape) * 2 + 3
    g1, layer = GroupNorm(1, 6), LayerNorm(6)
    gc, instance = GroupNorm(6, 6), InstanceNorm(6)
    randomize(g1, gc)
    layer.load_state_dict(g1.state_dict())
    instance.load_state_dict(gc.state_dict())
    torch.testing.assert_close(g1(x), layer(x))
    torch.testing.assert_close(gc(x), instance(x))
    # ...and layer norm over (C, H, W) is torch's LayerNorm over (C, H, W) when gamma, beta are default.
    torch.testing.assert_close(LayerNorm(6)(x), nn.LayerNorm(shape[1:])(x), atol=1e-5, rtol=1e-4)


def test_batch_independence_and_no_mode_difference():
    torch.manual_seed(1)
    x = torch.randn(5, 4, 3, 3)
    for layer in (LayerNorm(4), InstanceNorm(4), GroupNorm(2, 4)):
        full = layer(x)
        torch.testing.assert_close(layer(x[:1]), full[:1])  # a batch of one: the same answer per sample
        torch.testing.assert_close(layer.eval()(x), full)  # evaluation computes the same function
        assert not list(layer.buffers())


def test_all_norms_share_the_helpers_and_differ_only_in_axes():
    # The axes claim of the docstrings, checked: each layer equals normalizing over its dims.
    from bnlib.functional import moments, normalize

    x = torch.randn(4, 6, 3, 3)
    grouped = x.reshape(4, 3, 2, 3, 3)
    expected = {
        "batch": normalize(x, *moments(x, (0, 2, 3)), 1e-5),
        "layer": normalize(x, *moments(x, (1, 2, 3)), 1e-5),
        "instance": normalize(x, *moments(x, (2, 3)), 1e-5),
        "group": normalize(grouped, *moments(grouped, (2, 3, 4)), 1e-5).reshape(x.shape),
    }
    layers = {"batch": BatchNorm(6), "layer": LayerNorm(6), "instance": InstanceNorm(6), "group": GroupNorm(3, 6)}
    for name, layer in layers.items():
        torch.testing.assert_close(layer(x), expected[name], msg=name)


@pytest.mark.parametrize("layer", [LayerNorm(3), InstanceNorm(3), GroupNorm(3, 3)], ids=["layer", "instance", "group"])
def test_gradcheck_float64(layer):
    torch.manual_seed(2)
    layer = layer.double()
    randomize(layer)
    x = torch.randn(2, 3, 3, 2, dtype=torch.float64, requires_grad=True)
    weight = layer.weight.detach().clone().requires_grad_()
    bias = layer.bias.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x, w, b: torch.func.functional_call(layer, {"weight": w, "bias": b}, (x,)), (x, weight, bias)
    )


def test_group_norm_divisibility_error_names_both_numbers():
    with pytest.raises(ValueError, match=r"num_channels=6 is not divisible by num_groups=4.*\[1, 2, 3, 6\]"):
        GroupNorm(4, 6)
    with pytest.raises(ValueError, match="num_groups must be a positive integer"):
        GroupNorm(0, 6)


@pytest.mark.parametrize(
    ("layer", "x", "error", "message"),
    [
        (LayerNorm(3), torch.randn(3), ValueError, r"got shape \(3,\); add a batch axis"),
        (LayerNorm(3), torch.randn(2, 4), ValueError, r"LayerNorm\(3\) expected 3 channels at dim 1"),
        (LayerNorm(1), torch.randn(2, 1), ValueError, "more than 1 value per sample"),
        (
            InstanceNorm(3),
            torch.randn(4, 3),
            ValueError,
            (
                r"\(N, C, L\) or \(N, C, H, W\) input with at least 3 dims, got shape \(4, 3\); "
                "instance norm needs spatial axes"
            ),
        ),
        (InstanceNorm(3), torch.randn(4, 3, 1, 1), ValueError, "more than 1 spatial position per channel"),
        (GroupNorm(3, 3), torch.randn(4, 3), ValueError, "more than 1 value per group.*use fewer groups"),
        (
            GroupNorm(1, 3),
            torch.ones(2, 3, dtype=torch.int32),
            TypeError,
            "floating-point tensor, got dtype torch.int32",
        ),
        (
            GroupNorm(1, 3),
            torch.ones(2, 3, dtype=torch.float64),
            TypeError,
            "float32 parameters but got a torch.float64",
        ),
        (InstanceNorm(3), [[1.0]], TypeError, "expected a torch.Tensor, got list"),
    ],
)
def test_bad_input_is_explained(layer, x, error, message):
    with pytest.raises(error, match=message):
        layer(x)


def test_constructor_arguments_and_repr():
    with pytest.raises(ValueError, match="num_features must be a positive integer"):
        LayerNorm(0)
    with pytest.raises(ValueError, match="eps must be a positive number"):
        InstanceNorm(3, eps=-1.0)
    assert repr(GroupNorm(2, 4)) == "GroupNorm(2, 4, eps=1e-05, affine=True)"
    assert GroupNorm(2, 4).num_features == 4
    assert LayerNorm(3, affine=False).weight is None and not list(LayerNorm(3, affine=False).parameters())


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (lambda: LayerNorm(3, dtype=torch.float16), lambda: nn.GroupNorm(1, 3, dtype=torch.float16)),
        (lambda: GroupNorm(3, 3, dtype=torch.float16), lambda: nn.GroupNorm(3, 3, dtype=torch.float16)),
        (
            lambda: InstanceNorm(3, dtype=torch.float16),
            lambda: nn.InstanceNorm2d(3, affine=True, dtype=torch.float16),
        ),
    ],
    ids=["layer", "group", "instance"],
)
def test_float16_layers_accumulate_in_float32_past_65504_values(ours, theirs):
    # A group of 3 * 200 * 200 = 120,000 values: a float16 count or sum of squares overflows; torch's layers
    # accumulate in float32, and so do ours (they used to return beta, silently).
    ours, theirs = ours(), theirs()
    exact = copy.deepcopy(theirs).float()
    x = (5 + 2 * torch.randn(2, 3, 200, 200, generator=torch.Generator().manual_seed(0))).half()
    y_ours, y_theirs, y_exact = ours(x), theirs(x), exact(x.float())
    assert y_ours.dtype == torch.float16
    assert y_ours.float().std() > 0.9  # not beta (zeros)
    for y in (y_ours, y_theirs):
        torch.testing.assert_close(y.float(), y_exact, atol=1e-2, rtol=1e-2)
    x32 = (5 + 2 * torch.randn(2, 3, 4, 4)).float()
    with pytest.raises(TypeError, match="float16 parameters but got a torch.float32"):
        ours(x32)


@pytest.mark.parametrize("make", [LayerNorm, InstanceNorm, lambda c, **kw: GroupNorm(1, c, **kw)])
def test_one_eps_rule_for_every_layer(make):
    # As BatchNorm: eps finite and > 0 (eps=inf returned beta whatever the input; 0 divides by zero).
    import numpy as np

    for eps in (0, -1e-5, float("nan"), float("inf"), "1e-5", True):
        with pytest.raises(ValueError, match="eps must be a positive number"):
            make(3, eps=eps)
    assert make(3, eps=np.float32(1e-3)).eps == pytest.approx(1e-3)
    with pytest.raises(TypeError, match="affine must be True or False"):
        make(3, affine="no")


def test_nan_stays_in_its_own_group_as_in_torch():
    # Documented: these layers do not refuse NaN; it spoils its own sample (layer), sample and channel
    # (instance) or sample and group (group), as torch.nn's layers do.
    x = torch.randn(2, 4, 3, 3)
    x[1, 0, 0, 0] = float("nan")
    for ours, theirs, spoiled in [
        (LayerNorm(4), nn.GroupNorm(1, 4), (slice(1, 2), slice(None))),
        (InstanceNorm(4), nn.InstanceNorm2d(4, affine=True), (slice(1, 2), slice(0, 1))),
        (GroupNorm(2, 4), nn.GroupNorm(2, 4), (slice(1, 2), slice(0, 2))),
    ]:
        y, y_torch = ours(x), theirs(x)
        expected = torch.zeros_like(x, dtype=torch.bool)
        expected[spoiled] = True
        assert torch.equal(torch.isnan(y), expected) and torch.equal(torch.isnan(y_torch), expected)


@pytest.mark.parametrize("shape", [(2, 6, 5, 4), (2, 6, 3, 4, 2)])
def test_channels_last_input_gives_channels_last_output_as_torch(shape):
    memory_format = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
    x = torch.randn(*shape).to(memory_format=memory_format)
    for ours, theirs in [
        (GroupNorm(3, 6), nn.GroupNorm(3, 6)),
        (LayerNorm(6), nn.GroupNorm(1, 6)),
        (InstanceNorm(6), (nn.InstanceNorm2d if len(shape) == 4 else nn.InstanceNorm3d)(6, affine=True)),
    ]:
        y, y_torch = ours(x), theirs(x)
        assert y.is_contiguous(memory_format=memory_format), type(ours).__name__
        torch.testing.assert_close(y, y_torch, atol=1e-5, rtol=1e-4)
    assert GroupNorm(3, 6)(x.contiguous()).is_contiguous()  # a contiguous input stays contiguous
