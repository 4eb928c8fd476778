"""bnlib.layers.BatchNorm against torch.nn.BatchNorm1d/2d/3d; make_norm. Keras: test_keras_agreement.py."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from bnlib.layers import (
    BatchNorm,
    BatchRenorm,
    GhostBatchNorm,
    GroupNorm,
    LayerNorm,
    TorchBatchNorm,
    known_norms,
    make_norm,
    register_norm,
)

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


# ---------------------------------------------------------------- one step, all or nothing

LAYERS_WITH_RUNNING_STATS = {
    "batch": lambda momentum: BatchNorm(3, momentum=momentum),
    "renorm": lambda momentum: BatchRenorm(3, momentum=momentum, r_max=2.0, d_max=1.0),
    "ghost": lambda momentum: GhostBatchNorm(3, 4, momentum=momentum),
}


def snapshot(layer: nn.Module) -> dict[str, torch.Tensor]:
    return {name: buffer.clone() for name, buffer in layer.named_buffers()}


@pytest.mark.parametrize("kind", sorted(LAYERS_WITH_RUNNING_STATS))
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("where", ["moments", "running_average", "check_finite_statistics", "copy_together_"])
def test_an_interrupt_inside_a_step_changes_neither_counter_nor_statistics(kind, momentum, where, monkeypatch):
    # Ctrl-C raised from inside the computation (each helper in turn): nothing is written, counter included.
    import bnlib.functional

    torch.manual_seed(0)
    layer = LAYERS_WITH_RUNNING_STATS[kind](momentum)
    layer(torch.randn(8, 3, 2, 2) + 1)  # one step done, so that momentum=None has a counter to get wrong
    before = snapshot(layer)
    original = getattr(bnlib.functional, where)
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(where)
        if len(calls) == 2 or where != "running_average":  # running_average: after the new mean, before the spread
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(bnlib.functional, where, interrupted)
    with pytest.raises(KeyboardInterrupt):
        layer(torch.randn(8, 3, 2, 2) * 3)
    assert calls, f"{where} was not called: the test would prove nothing"
    for name, value in snapshot(layer).items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("kind", sorted(LAYERS_WITH_RUNNING_STATS))
@pytest.mark.parametrize("momentum", [0.1, None])
def test_an_interrupt_at_any_line_leaves_the_step_all_or_nothing(kind, momentum):
    """Ctrl-C delivered at every Python line of a training step in turn: the buffers are the old ones or the new ones."""
    import sys

    torch.manual_seed(1)
    layer = LAYERS_WITH_RUNNING_STATS[kind](momentum)
    layer(torch.randn(8, 3, 2, 2) + 1)
    x = torch.randn(8, 3, 2, 2) * 3 - 1
    before = snapshot(layer)
    reference = copy.deepcopy(layer)
    reference(x)
    after = snapshot(reference)
    outcomes = set()
    for stop_at in range(1, 10_000):
        seen = 0

        def tracer(frame, event, arg, stop_at=stop_at):
            nonlocal seen
            if event == "line" and "bnlib" in frame.f_code.co_filename:
                seen += 1
                if seen == stop_at:
                    raise KeyboardInterrupt
            return tracer

        sys.settrace(tracer)
        try:
            layer(x)
            finished = True
        except KeyboardInterrupt:
            finished = False
        finally:
            sys.settrace(None)
        assert torch.is_grad_enabled(), f"interrupted at line event {stop_at}: gradients were left off"
        state = snapshot(layer)
        same_as = [
            label
            for label, expected in (("old", before), ("new", after))
            if all(torch.equal(state[name], expected[name]) for name in state)
        ]
        assert same_as, f"interrupted at line event {stop_at}: the buffers are neither the old nor the new ones"
        outcomes.add(same_as[0])
        if finished:
            break
        for name, buffer in layer.named_buffers():  # back to the old state for the next interruption point
            buffer.copy_(before[name])
    assert finished and stop_at > 10 and outcomes == {"old", "new"}


# ---------------------------------------------------------------- settings: numbers and flags


def test_numpy_scalars_are_numbers_and_flags_take_only_bools():
    layer = BatchNorm(np.int64(3), momentum=np.float32(0.5), eps=np.float64(1e-3))
    assert layer.num_features == 3 and type(layer.num_features) is int and layer.momentum == 0.5
    assert layer(torch.randn(4, 3)).shape == (4, 3)
    for flag in ("affine", "track_running_stats"):
        with pytest.raises(TypeError, match=rf"{flag} must be True or False, got 'no' \(str\); pass a bool"):
            BatchNorm(3, **{flag: "no"})
    assert BatchNorm(3, affine=np.False_).weight is None
    with pytest.raises(TypeError, match="affine must be True or False"):
        BatchNorm(3, affine=1)


# ---------------------------------------------------------------- float16 layers accumulate in float32


def test_a_float16_layer_normalizes_finite_input_in_float32_as_torch():
    # Judged against a float32 reference: ours within float16 rounding of it, as torch's float16 layer is.
    torch.manual_seed(3)
    ours, theirs = BatchNorm(3, dtype=torch.float16), nn.BatchNorm2d(3, dtype=torch.float16)
    exact = nn.BatchNorm2d(3)
    x = (1000 + 10 * torch.randn(8, 3, 6, 6)).half()  # squares near 1e6: beyond float16's 65,504
    for step in range(2):
        y_ours, y_theirs, y_exact = ours(x + step), theirs(x + step), exact((x + step).float())
        assert y_ours.dtype == torch.float16 and torch.isfinite(y_ours).all()
        for y in (y_ours, y_theirs):
            torch.testing.assert_close(y.float(), y_exact, atol=3e-2, rtol=1e-2)
    assert ours.running_var.dtype == torch.float16
    torch.testing.assert_close(ours.running_mean.float(), theirs.running_mean.float(), atol=0.5, rtol=1e-3)
    torch.testing.assert_close(ours.running_var.float(), theirs.running_var.float(), atol=0.05, rtol=1e-2)
    ours.eval(), theirs.eval()
    torch.testing.assert_close(ours(x).float(), theirs(x).float(), atol=2e-2, rtol=1e-2)


# ---------------------------------------------------------------- behave as torch.nn.BatchNorm2d


def test_track_running_stats_switched_off_after_construction_as_torch():
    # torch: no update in training while the flag is False, and the existing buffers are still used in eval.
    torch.manual_seed(4)
    ours, theirs = BatchNorm(3), nn.BatchNorm2d(3)
    first = torch.randn(8, 3, 4, 4) * 2 + 1
    ours(first), theirs(first)
    ours.track_running_stats = theirs.track_running_stats = False
    x = torch.randn(8, 3, 4, 4) * 3 - 2
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-4)
    assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked) == 1
    torch.testing.assert_close(ours.running_mean, theirs.running_mean)
    torch.testing.assert_close(ours.running_mean, 0.1 * first.mean((0, 2, 3)))  # not updated by x
    ours.eval(), theirs.eval()
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-4)  # the running statistics, not x's
    assert not torch.allclose(ours(x).mean((0, 2, 3)), torch.zeros(3), atol=1e-3)
    # built without buffers and switched on: batch statistics in both modes, no crash
    ours, theirs = BatchNorm(3, track_running_stats=False), nn.BatchNorm2d(3, track_running_stats=False)
    ours.track_running_stats = theirs.track_running_stats = True
    for mode in (True, False):
        ours.train(mode), theirs.train(mode)
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-4)
    ours.reset_running_stats()  # nothing to reset: no error


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_an_old_state_dict_without_the_counter_loads_as_in_torch(device):
    # Version 1 state dicts (before num_batches_tracked) load; the counter keeps its value (a new 0 on meta).
    old = nn.BatchNorm2d(3).state_dict()
    del old["num_batches_tracked"]
    old._metadata[""]["version"] = 1
    ours, theirs = BatchNorm(3, device=device), nn.BatchNorm2d(3, device=device)
    if device == "cpu":
        ours(torch.randn(4, 3, 2, 2)), theirs(torch.randn(4, 3, 2, 2))
    ours.load_state_dict(old, assign=device == "meta")
    theirs.load_state_dict(old, assign=device == "meta")
    assert ours.num_batches_tracked.device == theirs.num_batches_tracked.device
    assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked) == (1 if device == "cpu" else 0)
    assert ours.state_dict()._metadata[""]["version"] == theirs.state_dict()._metadata[""]["version"] == 2
    current = nn.BatchNorm2d(3).state_dict()  # version 2 without the counter: a missing key, as in torch
    del current["num_batches_tracked"]
    for layer in (BatchNorm(3), nn.BatchNorm2d(3)):
        with pytest.raises(RuntimeError, match='Missing key.*"num_batches_tracked"'):
            layer.load_state_dict(current)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_an_empty_batch_gives_an_empty_output_as_torch(momentum):
    ours, theirs = BatchNorm(3, momentum=momentum), nn.BatchNorm2d(3, momentum=momentum)
    x = torch.randn(0, 3, 4, 4, requires_grad=True)
    y_ours, y_theirs = ours(x), theirs(x)
    assert y_ours.shape == y_theirs.shape == (0, 3, 4, 4)
    y_ours.sum().backward()  # differentiable
    torch.testing.assert_close(ours.running_mean, theirs.running_mean)
    torch.testing.assert_close(ours.running_var, theirs.running_var)
    # Departure: torch counts the empty batch (num_batches_tracked 1); ours keeps counter and statistics together.
    assert int(ours.num_batches_tracked) == 0 and int(theirs.num_batches_tracked) == 1
    ours.eval(), theirs.eval()
    assert ours(x).shape == theirs(x).shape == (0, 3, 4, 4)


@pytest.mark.parametrize("training", [True, False])
def test_channels_last_input_gives_channels_last_output_as_torch(training):
    torch.manual_seed(5)
    ours, theirs = pair(3, torch.float32), nn.BatchNorm2d(3)
    theirs.load_state_dict(ours.state_dict())
    ours.train(training), theirs.train(training)
    x = (torch.randn(6, 3, 5, 4) * 2 + 1).to(memory_format=torch.channels_last)
    y_ours, y_theirs = ours(x), theirs(x)
    assert y_ours.is_contiguous(memory_format=torch.channels_last)
    assert y_theirs.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y_ours, y_theirs, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours.running_var, theirs.running_var)


# ---------------------------------------------------------------- torch.func and torch.compile


@pytest.mark.parametrize("kind", ["batch", "renorm", "ghost", "layer", "group"])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_vmap_over_three_copies_equals_the_loop(kind, momentum):
    """functional_call + vmap over stacked parameters and buffers: outputs, statistics and counters as a loop."""
    from torch.func import functional_call, stack_module_state

    make = {
        "batch": lambda: BatchNorm(4, momentum=momentum),
        "renorm": lambda: BatchRenorm(4, momentum=momentum, r_max=2.0, d_max=1.0),
        "ghost": lambda: GhostBatchNorm(4, 4, momentum=momentum),
        "layer": lambda: LayerNorm(4),
        "group": lambda: GroupNorm(2, 4),
    }[kind]
    torch.manual_seed(6)
    models = [make() for _ in range(3)]
    for model in models:
        with torch.no_grad():
            model.weight.normal_()
            model.bias.normal_()
    loop = copy.deepcopy(models)
    params, buffers = stack_module_state(models)
    skeleton = copy.deepcopy(models[0]).to("meta")

    def call(p, b, x):
        return functional_call(skeleton, (p, b), (x,))

    for step in range(3):
        x = torch.randn(3, 8, 4, 5) * (step + 1) + step
        y = torch.func.vmap(call)(params, buffers, x)
        expected = torch.stack([model(xi) for model, xi in zip(loop, x, strict=True)])
        torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)
    for name, value in buffers.items():
        torch.testing.assert_close(value, torch.stack([dict(m.named_buffers())[name] for m in loop]), msg=name)
    if buffers:
        assert buffers["num_batches_tracked"].tolist() == [int(loop[0].num_batches_tracked)] * 3


def test_nan_under_vmap_propagates_as_in_torch():
    # No value can be read under vmap: the check is skipped and NaN reaches the running mean, as nn.BatchNorm2d's.
    from torch.func import functional_call, stack_module_state, vmap

    params, buffers = stack_module_state([BatchNorm(2) for _ in range(2)])
    skeleton = BatchNorm(2, device="meta")
    x = torch.randn(2, 4, 2)
    x[1, 0, 0] = float("nan")
    y = vmap(lambda p, b, x: functional_call(skeleton, (p, b), (x,)))(params, buffers, x)
    assert torch.isnan(y[1, :, 0]).all() and torch.isfinite(y[0]).all()
    assert torch.isnan(buffers["running_mean"][1, 0]) and torch.isfinite(buffers["running_mean"][0]).all()
    with pytest.raises(ValueError, match="NaN or infinite"):  # eagerly, the same batch is refused
        BatchNorm(2)(x[1])


def test_compile_fullgraph_of_a_conv_batchnorm_model_matches_eager():
    """torch.compile(fullgraph=True) fails on any graph break: the finiteness check must not split the graph."""
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        pytest.skip("torch.compile (dynamo) is not supported on this Python/platform")
    torch.manual_seed(7)
    model = nn.Sequential(  # each layer family once: batch norm (momentum=None), renorm, ghost, group norm
        nn.Conv2d(1, 4, 3),
        BatchNorm(4, momentum=None),
        BatchRenorm(4, r_max=2.0, d_max=1.0),
        GhostBatchNorm(4, 4),
        GroupNorm(2, 4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 2),
    )
    eager = copy.deepcopy(model)
    torch._dynamo.reset()
    # aot_eager traces through AOTAutograd (forward, backward, buffer mutation) without needing a C compiler.
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    for step in range(2):
        x = torch.randn(8, 1, 8, 8) + step
        y, y_eager = compiled(x), eager(x)
        torch.testing.assert_close(y, y_eager, atol=1e-5, rtol=1e-5)
        y.square().sum().backward()
        y_eager.square().sum().backward()
    torch.testing.assert_close(model[0].weight.grad, eager[0].weight.grad, atol=1e-5, rtol=1e-5)
    buffers = dict(eager.named_buffers())
    assert len(buffers) == 9
    for name, value in model.named_buffers():
        torch.testing.assert_close(value, buffers[name], msg=name)
    model.eval(), eager.eval()
    torch.testing.assert_close(compiled(x), eager(x), atol=1e-5, rtol=1e-5)
