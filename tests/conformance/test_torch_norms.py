"""bnlib's norm layers run through the test cases the PyTorch team wrote for torch.nn's.

Every test names the upstream case it ports (``upstream:`` in its docstring or
its parameter id):

* the constructor arguments and input shapes of ``module_inputs_torch_nn_BatchNorm1d/2d/3d``,
  ``_GroupNorm``, ``_LayerNorm`` and ``_InstanceNormNd`` in
  ``torch/testing/_internal/common_modules.py`` (run there by ``test/test_modules.py``:
  ``TestModule.test_forward``, ``test_grad``, ``test_train_and_eval_differ``, ``test_errors``);
* the batch, group, layer and instance norm tests of ``test/test_nn.py`` (``TestNN`` and
  ``TestNNDeviceType``).

Each runs the same input through torch.nn's module and bnlib's counterpart, with the
same weights (loaded through ``state_dict``), and compares outputs, running statistics,
``num_batches_tracked``, the gradients of the input, weight and bias, and errors (where
torch raises, bnlib raises a ValueError or TypeError). Where bnlib departs on purpose the
test asserts bnlib's documented behaviour and is listed in ``docs/conformance.md``.
A behaviour bnlib lacks is marked ``xfail(strict=True)`` (it fails loudly once fixed); none is left.
"""

from __future__ import annotations

import copy
import io
import math
import pickle
import warnings
from collections import OrderedDict
from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from bnlib.layers import BatchNorm, GroupNorm, InstanceNorm, LayerNorm

DTYPES = [pytest.param(torch.float32, id="float32"), pytest.param(torch.float64, id="float64")]


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Every test draws the same numbers on every run (upstream seeds its TestCase too)."""
    torch.manual_seed(0)


def tolerance(dtype: torch.dtype) -> dict[str, float]:
    """float32: two-pass variance (ours) vs Welford (torch) differ in the last bits; float64 must agree closely."""
    return {"atol": 1e-4, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 1e-10, "rtol": 1e-9}


def make_input(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """What ``torch.testing.make_tensor`` draws for a float input: uniform in [-9, 9)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=generator, dtype=dtype) * 18 - 9


def randomize_affine(module: nn.Module, seed: int) -> None:
    """A gamma around 1 and a beta around 0, so that a swapped or ignored parameter shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if getattr(module, "weight", None) is not None:
            module.weight.copy_(0.5 + torch.rand(module.weight.shape, generator=generator))
        if getattr(module, "bias", None) is not None:
            module.bias.copy_(torch.rand(module.bias.shape, generator=generator) - 0.5)


def forward_backward(module: nn.Module, x: torch.Tensor, grad_out: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """The output and the gradients of the input and of every parameter, for one upstream gradient."""
    x = x.detach().clone().requires_grad_(True)
    for parameter in module.parameters():
        parameter.grad = None
    y = module(x)
    y.backward(grad_out)
    grads = {"input": x.grad, **{name: p.grad for name, p in module.named_parameters()}}
    return y.detach(), grads


def assert_same_step(
    ours: nn.Module, theirs: nn.Module, x: torch.Tensor, seed: int = 0, tol: dict[str, float] | None = None
) -> None:
    """One forward and backward pass through both: same output, same gradients, same state afterwards."""
    generator = torch.Generator().manual_seed(seed)
    grad_out = torch.randn(x.shape, generator=generator, dtype=x.dtype)
    y_theirs, grads_theirs = forward_backward(theirs, x, grad_out)
    y_ours, grads_ours = forward_backward(ours, x, grad_out)
    tol = tol or tolerance(x.dtype)
    assert y_ours.shape == y_theirs.shape
    assert_close(y_ours, y_theirs, **tol)
    assert grads_ours.keys() == grads_theirs.keys(), "the two modules have different parameters"
    for name, grad in grads_theirs.items():
        assert_close(grads_ours[name], grad, **tol, msg=lambda m, name=name: f"gradient of {name}: {m}")
    assert_same_state(ours, theirs)


def assert_same_state(ours: nn.Module, theirs: nn.Module) -> None:
    """Running statistics equal (or both None) and the same ``num_batches_tracked``."""
    for name in ("running_mean", "running_var"):
        mine, reference = getattr(ours, name, None), getattr(theirs, name, None)
        if reference is None:
            assert mine is None, f"{name}: torch has none, bnlib has {mine}"
        else:
            assert_close(mine, reference, **tolerance(reference.dtype), msg=lambda m, name=name: f"{name}: {m}")
    mine, reference = getattr(ours, "num_batches_tracked", None), getattr(theirs, "num_batches_tracked", None)
    if reference is None:
        assert mine is None
    else:
        assert int(mine) == int(reference), f"num_batches_tracked: bnlib {int(mine)}, torch {int(reference)}"


def assert_same_outcome(ours: Callable[[], torch.Tensor], theirs: Callable[[], torch.Tensor]) -> None:
    """Both return the same tensor, or both raise (bnlib a ValueError or TypeError, by the house rules)."""
    try:
        expected = theirs()
    except (RuntimeError, ValueError, TypeError, NotImplementedError) as error:
        with pytest.raises((ValueError, TypeError)):
            ours()
        del error
        return
    actual = ours()
    assert_close(actual, expected, **tolerance(expected.dtype))


# ---------------------------------------------------------------------------------------------
# Batch norm: torch/testing/_internal/common_modules.py, module_inputs_torch_nn_BatchNorm1d/2d/3d
# ---------------------------------------------------------------------------------------------

BN_ARGS = ("num_features", "eps", "momentum", "affine", "track_running_stats")

#: (torch class, desc, constructor args, input shape): every case of module_inputs_torch_nn_BatchNorm1d/2d/3d
#: except zero_batch and affine_not_bias, which have their own tests below.
BATCH_NORM_INPUTS = [
    (nn.BatchNorm1d, "affine", (10,), (4, 10)),
    (nn.BatchNorm1d, "3d_input", (5,), (4, 5, 3)),
    (nn.BatchNorm1d, "affine_simple_average", (10, 1e-3, None), (4, 10)),
    (nn.BatchNorm1d, "not_affine", (10, 1e-3, 0.3, False), (4, 10)),
    (nn.BatchNorm1d, "not_tracking_stats", (10, 1e-3, 0.3, True, False), (4, 10)),
    (nn.BatchNorm1d, "3d_input_not_affine", (5, 1e-3, 0.3, False), (4, 5, 3)),
    (nn.BatchNorm2d, "default", (3,), (2, 3, 6, 6)),
    (nn.BatchNorm2d, "2d_simple_average", (3, 1e-3, None), (2, 3, 6, 6)),
    (nn.BatchNorm2d, "momentum", (3, 1e-3, 0.8), (2, 3, 6, 6)),
    (nn.BatchNorm2d, "not_affine", (3, 1e-3, 0.8, False), (2, 3, 6, 6)),
    (nn.BatchNorm2d, "not_tracking_stats", (3, 1e-3, 0.8, True, False), (2, 3, 6, 6)),
    (nn.BatchNorm3d, "default", (3,), (2, 3, 4, 4, 4)),
    (nn.BatchNorm3d, "3d_simple_average", (3, 1e-3, None), (2, 3, 4, 4, 4)),
    (nn.BatchNorm3d, "momentum", (3, 1e-3, 0.7), (2, 3, 4, 4, 4)),
    (nn.BatchNorm3d, "not_affine", (3, 1e-3, 0.7, False), (2, 3, 4, 4, 4)),
    (nn.BatchNorm3d, "not_tracking_stats", (3, 1e-3, 0.7, True, False), (2, 3, 4, 4, 4)),
]


def batch_norm_pair(torch_cls: type, args: tuple, dtype: torch.dtype, seed: int = 0) -> tuple[BatchNorm, nn.Module]:
    """The torch module built from upstream's positional args, and ours loading its state_dict."""
    theirs = torch_cls(*args).to(dtype)
    randomize_affine(theirs, seed)
    settings = dict(zip(BN_ARGS, args, strict=False))
    ours = BatchNorm(settings.pop("num_features"), **settings, dtype=dtype)
    ours.load_state_dict(theirs.state_dict())  # the keys match torch's, as BatchNorm's docstring promises
    return ours, theirs


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "torch_cls, args, shape",
    [pytest.param(cls, args, shape, id=f"{cls.__name__}-{desc}") for cls, desc, args, shape in BATCH_NORM_INPUTS],
)
def test_module_inputs_batch_norm(torch_cls, args, shape, dtype):
    """upstream: pytorch torch/testing/_internal/common_modules.py::module_inputs_torch_nn_BatchNorm1d/2d/3d.

    Run as test/test_modules.py runs them (test_forward, test_grad, test_train_and_eval_differ):
    three training steps on fresh inputs, then evaluation, then a batch of one in evaluation.
    """
    ours, theirs = batch_norm_pair(torch_cls, args, dtype)
    for step in range(3):
        assert_same_step(ours, theirs, make_input(shape, dtype, seed=step), seed=step)
    ours.eval()
    theirs.eval()
    x = make_input(shape, dtype, seed=10)
    assert_same_step(ours, theirs, x, seed=10)
    one = x[:1]  # batch size 1 in eval: fine with running statistics; both refuse without them when (1, C)
    assert_same_outcome(lambda: ours(one), lambda: theirs(one))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "momentum, eps", [(0.0, 1e-5), (0.1, 1e-5), (0.5, 1e-5), (1.0, 1e-5), (None, 1e-5), (0.1, 1e-3), (0.1, 0.5)]
)
def test_batch_norm_momentum_and_eps(momentum, eps, dtype):
    """upstream: pytorch common_modules.py::module_inputs_torch_nn_BatchNorm2d ('momentum', '2d_simple_average').

    The same (2, 3, 6, 6) case over more momentum values (None: the cumulative average) and eps values.
    """
    ours, theirs = batch_norm_pair(nn.BatchNorm2d, (3, eps, momentum), dtype)
    for step in range(4):
        assert_same_step(ours, theirs, make_input((2, 3, 6, 6), dtype, seed=step) * (step + 1), seed=step)
    ours.eval()
    theirs.eval()
    assert_same_step(ours, theirs, make_input((2, 3, 6, 6), dtype, seed=9), seed=9)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "torch_cls, shape",
    [
        pytest.param(nn.BatchNorm1d, (0, 5, 9), id="BatchNorm1d-zero_batch"),
        pytest.param(nn.BatchNorm2d, (0, 5, 2, 2), id="BatchNorm2d-zero_batch"),
        pytest.param(nn.BatchNorm3d, (0, 5, 2, 2, 2), id="BatchNorm3d-zero_batch"),
    ],
)
def test_module_inputs_batch_norm_zero_batch(torch_cls, shape, dtype):
    """upstream: pytorch common_modules.py::module_inputs_torch_nn_BatchNorm1d/2d/3d desc='zero_batch'.

    Both return an empty output with zero gradients and leave the running statistics alone.
    Departure: torch still counts the empty batch in num_batches_tracked; bnlib does not (its
    counter and statistics move together, so a momentum=None average is not shifted).
    """
    ours, theirs = batch_norm_pair(torch_cls, (5, 1e-3, 0.3, False), dtype)
    assert_same_empty_step(ours, theirs, make_input(shape, dtype, seed=0))


def assert_same_empty_step(ours: BatchNorm, theirs: nn.Module, x: torch.Tensor) -> None:
    """An empty batch: torch's output, gradients and running statistics; torch counts it, bnlib does not."""
    counted_before = int(ours.num_batches_tracked)
    grad_out = torch.randn(x.shape, dtype=x.dtype)
    y_theirs, grads_theirs = forward_backward(theirs, x, grad_out)
    y_ours, grads_ours = forward_backward(ours, x, grad_out)
    assert y_ours.shape == y_theirs.shape == x.shape
    assert grads_ours.keys() == grads_theirs.keys()
    for name, grad in grads_theirs.items():
        assert_close(grads_ours[name], grad, msg=lambda m, name=name: f"gradient of {name}: {m}")
    assert_close(ours.running_mean, theirs.running_mean)
    assert_close(ours.running_var, theirs.running_var)
    assert int(theirs.num_batches_tracked) == counted_before + 1
    assert int(ours.num_batches_tracked) == counted_before


@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_norm_empty(dtype):
    """upstream: pytorch test/test_nn.py::TestNNDeviceType.test_BatchNorm_empty (with _test_module_empty_input).

    An empty (0, 3, 2, 2) batch: an empty output, zero gradients, running statistics untouched.
    Upstream feeds a float64 input to a float32 module; bnlib refuses mixed dtypes, so both are ``dtype`` here.
    Departure: torch counts the empty batch in num_batches_tracked, bnlib does not.
    """
    ours, theirs = batch_norm_pair(nn.BatchNorm2d, (3,), dtype)
    x = torch.randn(0, 3, 2, 2, dtype=dtype)
    assert_same_empty_step(ours, theirs, x)
    for module in (ours, theirs):
        assert_close(module.running_mean, torch.zeros(3, dtype=dtype))
        assert_close(module.running_var, torch.ones(3, dtype=dtype))
        assert_close(module.weight.grad, torch.zeros(3, dtype=dtype))


@pytest.mark.parametrize(
    "torch_cls, shape",
    [
        pytest.param(nn.BatchNorm1d, (4, 10), id="BatchNorm1d"),
        pytest.param(nn.BatchNorm2d, (2, 3, 6, 6), id="BatchNorm2d"),
        pytest.param(nn.BatchNorm3d, (2, 3, 4, 4, 4), id="BatchNorm3d"),
    ],
)
def test_batch_norm_affine_not_bias_departure(torch_cls, shape):
    """upstream: pytorch common_modules.py::module_inputs_torch_nn_BatchNorm1d/2d/3d desc='affine_not_bias'.

    Departure: bnlib has no ``bias=False``; a zero bias that is not trained gives torch's outputs and
    input and weight gradients.
    """
    channels = shape[1]
    theirs = torch_cls(channels, bias=False).double()
    randomize_affine(theirs, 0)
    ours = BatchNorm(channels, dtype=torch.float64)
    with torch.no_grad():
        ours.weight.copy_(theirs.weight)
    ours.bias.requires_grad_(False)
    grad_out = torch.randn(shape, dtype=torch.float64)
    for step in range(2):
        x = make_input(shape, torch.float64, seed=step)
        y_theirs, grads_theirs = forward_backward(theirs, x, grad_out)
        y_ours, grads_ours = forward_backward(ours, x, grad_out)
        assert_close(y_ours, y_theirs)
        assert_close(grads_ours["input"], grads_theirs["input"])
        assert_close(grads_ours["weight"], grads_theirs["weight"])
        assert grads_ours["bias"] is None
        assert_same_state(ours, theirs)
    with pytest.raises(TypeError):
        BatchNorm(channels, bias=False)


@pytest.mark.parametrize("eps", [0.0, -1.0])
def test_batch_norm_error_inputs_eps(eps):
    """upstream: pytorch common_modules.py::module_error_inputs_torch_nn_BatchNorm1d_2d_3d (eps=-1.0, eps=0.0).

    torch raises "eps must be positive" at the first training forward (and accepts eps=0 in evaluation);
    bnlib refuses both at construction (a documented departure: when, not whether).
    """
    theirs = nn.BatchNorm1d(10, eps=eps)
    with pytest.raises(ValueError, match="eps must be positive"):
        theirs(torch.randn(2, 10))
    with pytest.raises(ValueError, match="eps must be a positive number"):
        BatchNorm(10, eps=eps)


# ---------------------------------------------------------------------------------------------
# Batch norm: test/test_nn.py
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_batchnorm_update_stats(dtype):
    """upstream: pytorch test/test_nn.py::TestNNDeviceType.test_batchnorm_update_stats.

    A training pass moves both running statistics and counts one batch; an evaluation pass changes nothing.
    """
    ours, theirs = batch_norm_pair(nn.BatchNorm1d, (3,), dtype)
    data = torch.rand(4, 3, dtype=dtype)
    for module in (ours, theirs):
        old = (module.running_mean.clone(), module.running_var.clone(), int(module.num_batches_tracked))
        module(data)
        assert not torch.equal(old[0], module.running_mean)
        assert not torch.equal(old[1], module.running_var)
        assert int(module.num_batches_tracked) == old[2] + 1
        module.eval()
        old = (module.running_mean.clone(), module.running_var.clone(), int(module.num_batches_tracked))
        module(data)
        assert torch.equal(old[0], module.running_mean)
        assert torch.equal(old[1], module.running_var)
        assert int(module.num_batches_tracked) == old[2]
    assert_same_state(ours, theirs)


@pytest.mark.parametrize("dtype", DTYPES)
def test_batchnorm_simple_average(dtype):
    """upstream: pytorch test/test_nn.py::TestNNDeviceType.test_batchnorm_simple_average.

    momentum=None: after two batches the running statistics are the plain average of each batch's.
    """
    data1, data2 = torch.rand(4, 3, dtype=dtype), torch.rand(4, 3, dtype=dtype)
    for module in (BatchNorm(3, momentum=None, dtype=dtype), nn.BatchNorm1d(3, momentum=None).to(dtype)):
        res1 = module(data1)
        mean1, var1 = module.running_mean.clone(), module.running_var.clone()
        module.reset_running_stats()
        res2 = module(data2)
        mean2, var2 = module.running_mean.clone(), module.running_var.clone()
        module.reset_running_stats()
        assert_close(module.running_mean, torch.zeros(3, dtype=dtype))
        assert_close(module.running_var, torch.ones(3, dtype=dtype))
        assert_close(module(data1), res1)
        assert_close(module(data2), res2)
        assert_close(module.running_mean, (mean1 + mean2) / 2)
        assert_close(module.running_var, (var1 + var2) / 2)
    ours, theirs = batch_norm_pair(nn.BatchNorm1d, (3, 1e-5, None), dtype)
    for data in (data1, data2, data1):
        assert_same_step(ours, theirs, data)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("dtype", DTYPES)
def test_batchnorm_eval(ndim, dtype):
    """upstream: pytorch test/test_nn.py::TestNNDeviceType.test_batchnorm_eval (ndim 2 and 3).

    In evaluation two passes give the same output and gradient; with track_running_stats=False
    evaluation computes what training does.
    """
    ours, theirs = batch_norm_pair(nn.BatchNorm1d, (3,), dtype)
    ours.eval()
    theirs.eval()
    data = torch.rand([3] * ndim, dtype=dtype)
    assert_same_step(ours, theirs, data)
    assert_same_step(ours, theirs, data)
    ours, theirs = batch_norm_pair(nn.BatchNorm1d, (3, 1e-5, 0.1, True, False), dtype)
    data = torch.rand(4, 3, dtype=dtype)
    grad_out = torch.rand(4, 3, dtype=dtype)
    train_out, train_grads = forward_backward(ours, data, grad_out)
    assert_same_step(ours, theirs, data)
    ours.eval()
    theirs.eval()
    eval_out, eval_grads = forward_backward(ours, data, grad_out)
    assert_close(eval_out, train_out)
    assert_close(eval_grads["input"], train_grads["input"])
    assert_same_step(ours, theirs, data)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("dtype", DTYPES)
def test_batchnorm_affine(ndim, dtype):
    """upstream: pytorch test/test_nn.py::TestNNDeviceType.test_batchnorm_affine.

    affine=False equals affine=True with weight 1 and bias 0, in output and input gradient.
    """
    data = torch.rand([3] * ndim, dtype=dtype)
    grad_out = torch.ones_like(data)
    plain = BatchNorm(3, affine=False, dtype=dtype)
    identity = BatchNorm(3, affine=True, dtype=dtype)
    out_plain, grads_plain = forward_backward(plain, data, grad_out)
    out_identity, grads_identity = forward_backward(identity, data, grad_out)
    assert_close(out_plain, out_identity)
    assert_close(grads_plain["input"], grads_identity["input"])
    ours, theirs = batch_norm_pair(nn.BatchNorm1d, (3, 1e-5, 0.1, False), dtype)
    assert_same_step(ours, theirs, data)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_batchnorm_grad(training):
    """upstream: pytorch test/test_nn.py::TestNNDeviceType.test_batchnorm_grad (float64).

    The input, weight and bias gradients pass gradcheck and gradgradcheck with upstream's inputs
    (arange input, weight and bias, running mean 1 - arange, running variance 2 * arange, eps 1e-4), and equal
    torch's for the same upstream gradient.
    """
    bs, n_feat, size_feat = 4, 5, 6
    x = torch.arange(bs * n_feat * size_feat, dtype=torch.float64).view(bs, n_feat, size_feat)
    weight = torch.arange(1, n_feat + 1, dtype=torch.float64)
    bias = torch.arange(n_feat, dtype=torch.float64)
    ours, theirs = BatchNorm(n_feat, eps=1e-4, dtype=torch.float64), nn.BatchNorm1d(n_feat, eps=1e-4).double()
    for module in (ours, theirs):
        with torch.no_grad():
            module.weight.copy_(weight)
            module.bias.copy_(bias)
            module.running_mean.copy_(1 - torch.arange(n_feat, dtype=torch.float64))
            module.running_var.copy_(2 * torch.arange(n_feat, dtype=torch.float64))
        module.train(training)
    assert_same_step(ours, theirs, x)

    def function(x, w, b):
        return torch.func.functional_call(ours, {"weight": w, "bias": b}, (x,))

    inputs = (x.clone().requires_grad_(), weight.clone().requires_grad_(), bias.clone().requires_grad_())
    assert torch.autograd.gradcheck(function, inputs)
    assert torch.autograd.gradgradcheck(function, inputs)


def test_batchnorm_raises_error_if_less_than_one_value_per_channel():
    """upstream: pytorch test/test_nn.py::TestNN.test_batchnorm_raises_error_if_less_than_one_value_per_channel."""
    x = torch.rand(10)[None, :, None]
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        nn.BatchNorm1d(10)(x)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        BatchNorm(10)(x)


def test_batchnorm_buffer_update_when_stats_are_not_tracked():
    """upstream: pytorch test/test_nn.py::TestNN.test_batchnorm_buffer_update_when_stats_are_not_tracked.

    Buffers built with track_running_stats=True, then the flag switched off: a training pass uses
    the batch statistics and updates nothing (running mean, variance, num_batches_tracked).
    """
    ours, theirs = batch_norm_pair(nn.BatchNorm1d, (4,), torch.float32)
    for module in (ours, theirs):
        module.track_running_stats = False
    x = torch.rand(32, 4)
    before = (ours.num_batches_tracked.clone(), ours.running_mean.clone(), ours.running_var.clone())
    assert_same_step(ours, theirs, x)
    assert torch.equal(before[0], ours.num_batches_tracked)
    assert torch.equal(before[1], ours.running_mean)
    assert torch.equal(before[2], ours.running_var)


def test_batchnorm_stats_not_tracked_after_construction_eval():
    """upstream: pytorch test/test_nn.py::TestNN.test_batchnorm_buffer_update_when_stats_are_not_tracked, in eval.

    With the buffers still there, evaluation normalizes with them (torch's _BatchNorm.forward).
    """
    ours, theirs = batch_norm_pair(nn.BatchNorm1d, (4,), torch.float64)
    for step in range(2):
        assert_same_step(ours, theirs, make_input((8, 4), torch.float64, seed=step))
    for module in (ours, theirs):
        module.track_running_stats = False
        module.eval()
    assert_same_step(ours, theirs, make_input((8, 4), torch.float64, seed=5))


def test_batchnorm_load_state_dict():
    """upstream: pytorch test/test_nn.py::TestNN.test_batchnorm_load_state_dict (CPU part).

    An empty state dict loaded with strict=False leaves num_batches_tracked as it was.
    """
    for module in (BatchNorm(3), nn.BatchNorm2d(3)):
        assert module.state_dict()["num_batches_tracked"] == torch.tensor(0)
        module.num_batches_tracked = torch.tensor(10)
        assert module.state_dict()["num_batches_tracked"] == torch.tensor(10)
        module.load_state_dict(OrderedDict(), strict=False)
        assert module.state_dict()["num_batches_tracked"] == torch.tensor(10)


def test_batchnorm_load_state_dict_meta():
    """upstream: pytorch test/test_nn.py::TestNN.test_batchnorm_load_state_dict (meta part).

    Built on the meta device and loaded (assign=True) from a state dict without num_batches_tracked,
    the counter becomes a real 0 on the CPU, as torch's _NormBase._load_from_state_dict does.
    """
    with torch.device("meta"):
        theirs, ours = nn.BatchNorm2d(3), BatchNorm(3)
    for module in (theirs, ours):
        assert module.num_batches_tracked.device == torch.device("meta")
        module.load_state_dict(OrderedDict(), assign=True, strict=False)
        assert module.state_dict()["num_batches_tracked"].device == torch.device("cpu")
        assert module.state_dict()["num_batches_tracked"] == torch.tensor(0)


def test_batchnorm_load_old_state_dict_without_num_batches_tracked():
    """upstream: pytorch torch/nn/modules/batchnorm.py::_NormBase._load_from_state_dict (version < 2).

    The rule test/test_nn.py::TestNN.test_batchnorm_load_state_dict exercises.
    A state dict saved before num_batches_tracked existed (metadata version 1) loads with strict=True;
    the counter keeps its value.
    """
    source = nn.BatchNorm2d(3)
    source(torch.randn(4, 3, 2, 2))
    old = source.state_dict()
    del old["num_batches_tracked"]
    old._metadata[""]["version"] = 1
    theirs, ours = nn.BatchNorm2d(3), BatchNorm(3)
    theirs.load_state_dict(old)
    ours.load_state_dict(old)
    assert_same_state(ours, theirs)
    assert_close(ours.running_mean, source.running_mean)


CHANNELS_LAST_SHAPES = [
    pytest.param(nn.BatchNorm2d, (4, 8, 10, 10), torch.channels_last, id="2d-NCHW"),
    pytest.param(nn.BatchNorm2d, (4, 1, 9, 9), torch.channels_last, id="2d-N1HW"),
    pytest.param(nn.BatchNorm2d, (4, 9, 1, 1), torch.channels_last, id="2d-NC11"),
    pytest.param(nn.BatchNorm3d, (4, 8, 2, 10, 10), torch.channels_last_3d, id="3d-NCDHW"),
    pytest.param(nn.BatchNorm3d, (4, 1, 2, 9, 9), torch.channels_last_3d, id="3d-N1DHW"),
    pytest.param(nn.BatchNorm3d, (4, 9, 1, 1, 1), torch.channels_last_3d, id="3d-NC111"),
]


#: (module dtype, input dtype, tolerance against torch): upstream's float, bfloat16 and float16, each reduced
#: precision also "mixed" (float32 module, reduced-precision input, as under torch.autocast); plus float64.
NHWC_DTYPES = [
    pytest.param(torch.float32, torch.float32, tolerance(torch.float32), id="float"),
    pytest.param(torch.float64, torch.float64, tolerance(torch.float64), id="double"),
    pytest.param(torch.bfloat16, torch.bfloat16, {"atol": 0.1, "rtol": 0.05}, id="bfloat16"),
    pytest.param(torch.float32, torch.bfloat16, {"atol": 0.1, "rtol": 0.05}, id="bfloat16-mixed"),
    pytest.param(torch.float16, torch.float16, {"atol": 2e-2, "rtol": 1e-2}, id="float16"),
    pytest.param(torch.float32, torch.float16, {"atol": 2e-2, "rtol": 1e-2}, id="float16-mixed"),
]


@pytest.mark.parametrize("module_dtype, input_dtype, tol", NHWC_DTYPES)
@pytest.mark.parametrize("torch_cls, shape, memory_format", CHANNELS_LAST_SHAPES)
def test_batchnorm_nhwc_cpu(torch_cls, shape, memory_format, module_dtype, input_dtype, tol):
    """upstream: pytorch test/test_nn.py::TestNN.test_batchnorm_nhwc_cpu (its shapes, dtypes and mixed_dtype).

    Upstream checks that a channels_last input gives a channels_last output equal to the contiguous
    input's, with the same weight, bias and input gradients. bnlib is held to that among its own
    outputs (tightly), and to torch's (within the dtype's precision).
    """
    ours, theirs = batch_norm_pair(torch_cls, (shape[1],), module_dtype)
    reference = copy.deepcopy(ours)
    x = make_input(shape, torch.float32, seed=0).to(input_dtype)
    grad_out = torch.randn(shape).to(input_dtype)
    channels_last = (x.contiguous(memory_format=memory_format), grad_out.contiguous(memory_format=memory_format))
    y_ours, grads_ours = forward_backward(ours, *channels_last)
    y_ref, grads_ref = forward_backward(reference, x, grad_out)
    y_theirs, grads_theirs = forward_backward(theirs, *channels_last)
    assert y_theirs.is_contiguous(memory_format=memory_format)
    assert y_ours.is_contiguous(memory_format=memory_format), "bnlib's output lost the channels_last format"
    assert y_ours.dtype == y_theirs.dtype == input_dtype
    assert_close(y_ours, y_ref)
    for name, grad in grads_ref.items():
        assert_close(grads_ours[name], grad, msg=lambda m, name=name: f"gradient of {name}: {m}")
    assert_close(y_ours.float(), y_theirs.float(), **tol)
    for name, grad in grads_theirs.items():
        assert_close(grads_ours[name].float(), grad.float(), **tol, msg=lambda m, name=name: f"{name}: {m}")
    for name in ("running_mean", "running_var"):
        assert_close(getattr(ours, name).float(), getattr(theirs, name).float(), **tol)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_batchnorm_non_contig_cpu(dtype):
    """upstream: pytorch test/test_nn.py::TestNN.test_batchnorm_non_contig_cpu (BatchNorm2d).

    A permuted input (1, 2, 3, 1) in evaluation: the output is channels_last, as torch's, and equals
    the contiguous copy's. Then a float32 module given a reduced-precision permuted input: within
    0.05 of the float32 result.
    """
    x = torch.arange(6, dtype=torch.float32).reshape(1, 3, 2, 1).permute(0, 2, 1, 3)
    ours, theirs = batch_norm_pair(nn.BatchNorm2d, (2,), torch.float32)
    ours.eval()
    theirs.eval()
    assert not x.is_contiguous()
    assert theirs(x).is_contiguous(memory_format=torch.channels_last)
    assert ours(x).is_contiguous(memory_format=torch.channels_last)
    assert_close(ours(x), ours(x.contiguous()))
    assert_close(ours(x), theirs(x))
    low = torch.arange(24, dtype=dtype).reshape(1, 3, 2, 4).permute(0, 2, 1, 3)
    mixed = BatchNorm(2).eval()
    assert_close(mixed(low).float(), copy.deepcopy(mixed)(low.float()), atol=0.05, rtol=0.05)


@pytest.mark.parametrize(
    "module_dtype, shape, memory_format",
    [
        pytest.param(torch.float16, (4, 80, 20, 20), torch.contiguous_format, id="half-2d"),
        pytest.param(torch.float16, (4, 80, 20, 20), torch.channels_last, id="half-2d-channels_last"),
        pytest.param(torch.float16, (4, 80, 4, 10, 10), torch.channels_last_3d, id="half-3d-channels_last"),
        pytest.param(torch.float32, (16, 3, 32, 32), torch.channels_last, id="float-module-half-input"),
    ],
)
def test_batchnorm_half_overflow(module_dtype, shape, memory_format):
    """upstream: pytorch test/test_nn.py::TestNN.test_batchnorm_half_overflow (smaller shapes).

    A float16 input (and a float16 or float32 module): no inf or NaN in the output or the input
    gradient, and the output of a float32 module on the same values.
    """
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).half().contiguous(memory_format=memory_format)
    torch_cls = nn.BatchNorm2d if len(shape) == 4 else nn.BatchNorm3d
    ours = BatchNorm(shape[1], dtype=module_dtype)
    reference = torch_cls(shape[1]).float()
    y_ref = reference(x.float())
    grad_out = torch.rand(shape).half().contiguous(memory_format=memory_format)
    y, grads = forward_backward(ours, x, grad_out)
    assert torch.isfinite(y).all()
    assert_close(y.float(), y_ref, atol=2e-2, rtol=1e-2)
    if module_dtype != torch.float16:  # upstream checks the input gradient only for a float32 module
        assert torch.isfinite(grads["input"]).all()
        reference_grads = forward_backward(reference, x.float(), grad_out.float())[1]
        assert_close(grads["input"].float(), reference_grads["input"], atol=2e-2, rtol=1e-2)


def test_batchnorm_nan_input_departure():
    """upstream: none (torch propagates NaN: test/test_nn.py has no BatchNorm NaN test); bnlib's NaN policy.

    Departure, training: torch returns NaN for the channel and writes NaN into running_mean and
    running_var; bnlib raises a ValueError naming the channel and leaves every buffer (and
    num_batches_tracked) as it was. Evaluation: both are elementwise, NaN at that position only.
    """
    ours, theirs = batch_norm_pair(nn.BatchNorm1d, (3,), torch.float64)
    x = make_input((4, 3), torch.float64, seed=0)
    x[0, 1] = math.nan
    y_theirs = theirs(x)
    assert torch.isnan(y_theirs[:, 1]).all()
    assert torch.isnan(theirs.running_mean[1])
    before = {name: buffer.clone() for name, buffer in ours.named_buffers()}
    with pytest.raises(ValueError, match=r"channel\(s\) \[1\]"):
        ours(x)
    for name, buffer in ours.named_buffers():
        assert torch.equal(buffer, before[name]), f"{name} changed on a refused batch"
    ours.eval()
    theirs = nn.BatchNorm1d(3).double().eval()
    theirs.load_state_dict(ours.state_dict())
    assert_close(ours(x), theirs(x), equal_nan=True)
    assert torch.isnan(ours(x)).sum() == 1


def test_batch_norm_error_types_departure():
    """upstream: pytorch common_modules.py::module_error_inputs_torch_nn_BatchNorm1d_2d_3d (extended).

    Both refuse a wrong channel count, an integer input and a float64 input to a float32 module;
    torch raises RuntimeError/NotImplementedError, bnlib ValueError/TypeError with a fix (departure).
    A 3-D input to BatchNorm2d: torch refuses, bnlib's one class takes any (N, C, *) (departure).
    """
    cases = [
        (torch.randn(4, 5), ValueError, RuntimeError),
        (torch.randint(0, 3, (4, 3)), TypeError, (RuntimeError, NotImplementedError)),
        (torch.randn(4, 3, dtype=torch.float64), TypeError, RuntimeError),
        (torch.randn(3), ValueError, ValueError),
    ]
    for x, ours_error, torch_error in cases:
        with pytest.raises(torch_error):
            nn.BatchNorm1d(3)(x)
        with pytest.raises(ours_error):
            BatchNorm(3)(x)
    with pytest.raises(ValueError, match="expected 4D input"):
        nn.BatchNorm2d(3)(torch.randn(4, 3, 5))
    assert BatchNorm(3)(torch.randn(4, 3, 5)).shape == (4, 3, 5)


# ---------------------------------------------------------------------------------------------
# Group norm: common_modules.py::module_inputs_torch_nn_GroupNorm and test/test_nn.py
# ---------------------------------------------------------------------------------------------

#: (desc, num_groups, num_channels, eps, affine, input shape); the two bias=False cases are tested apart.
GROUP_NORM_INPUTS = [
    ("1d_affine", 3, 6, 1e-3, True, (4, 6, 5)),
    ("1d_affine_GN", 3, 12, 1e-3, True, (4, 12)),
    ("1d_affine_large_batch", 1, 6, 1e-3, True, (150, 6)),
    ("1d_no_affine_IN", 5, 5, 1e-3, False, (4, 5, 5)),
    ("1d_no_affine_LN", 1, 10, 1e-3, False, (4, 10)),
    ("2d_affine", 3, 6, 1e-3, True, (4, 6, 2, 3)),
    ("2d_no_affine_IN", 3, 3, 1e-3, False, (4, 3, 2, 3)),
    ("2d_no_affine_LN", 1, 3, 1e-3, False, (4, 3, 2, 3)),
]


def group_norm_pair(groups: int, channels: int, eps: float, affine: bool, dtype: torch.dtype):
    theirs = nn.GroupNorm(groups, channels, eps, affine).to(dtype)
    randomize_affine(theirs, 0)
    ours = GroupNorm(groups, channels, eps=eps, affine=affine, dtype=dtype)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "groups, channels, eps, affine, shape", [pytest.param(*case[1:], id=case[0]) for case in GROUP_NORM_INPUTS]
)
def test_module_inputs_group_norm(groups, channels, eps, affine, shape, dtype):
    """upstream: pytorch torch/testing/_internal/common_modules.py::module_inputs_torch_nn_GroupNorm.

    Training and evaluation compute the same thing: both modes are compared.
    """
    ours, theirs = group_norm_pair(groups, channels, eps, affine, dtype)
    assert_same_step(ours, theirs, make_input(shape, dtype, seed=0))
    ours.eval()
    theirs.eval()
    assert_same_step(ours, theirs, make_input(shape, dtype, seed=1), seed=1)
    assert_same_step(ours, theirs, make_input((1, *shape[1:]), dtype, seed=2), seed=2)  # batch of one


@pytest.mark.parametrize(
    "groups, channels, shape",
    [pytest.param(3, 6, (4, 6, 5), id="1d_affine_not_bias"), pytest.param(3, 9, (4, 9, 2, 3), id="2d_affine_not_bias")],
)
def test_module_inputs_group_norm_not_bias_departure(groups, channels, shape):
    """upstream: pytorch common_modules.py::module_inputs_torch_nn_GroupNorm desc='1d_affine_not_bias', '2d_affine_not_bias'.

    Departure: no ``bias=False`` in bnlib; a frozen zero bias gives torch's output and gradients.
    """
    theirs = nn.GroupNorm(groups, channels, 1e-3, bias=False).double()
    randomize_affine(theirs, 0)
    ours = GroupNorm(groups, channels, eps=1e-3, dtype=torch.float64)
    with torch.no_grad():
        ours.weight.copy_(theirs.weight)
    ours.bias.requires_grad_(False)
    x, grad_out = make_input(shape, torch.float64, seed=0), torch.randn(shape, dtype=torch.float64)
    y_theirs, grads_theirs = forward_backward(theirs, x, grad_out)
    y_ours, grads_ours = forward_backward(ours, x, grad_out)
    assert_close(y_ours, y_theirs)
    assert_close(grads_ours["input"], grads_theirs["input"])
    assert_close(grads_ours["weight"], grads_theirs["weight"])


def test_group_norm_error_inputs():
    """upstream: pytorch common_modules.py::module_error_inputs_torch_nn_GroupNorm ((3, 10) and (5, 13))."""
    for groups, channels in ((3, 10), (5, 13)):
        with pytest.raises(ValueError, match=rf"num_channels \({channels}\) must be divisible"):
            nn.GroupNorm(groups, channels)
        with pytest.raises(ValueError, match=f"num_channels={channels} is not divisible by num_groups={groups}"):
            GroupNorm(groups, channels)


GOOD_SHAPE_G = {(1, 2, 3, 4): 2, (2, 3, 10): 3, (3, 1, 1, 1, 2): 1, (2, 6, 4, 2, 2): 3, (1, 256, 1, 1): 32}
BAD_SHAPE_G = {(1, 2, 3, 4): 3, (2, 3, 10): 2, (3, 1, 1, 1, 2): 10, (2, 6, 4, 2, 2): 4}


@pytest.mark.parametrize("shape, groups", list(GOOD_SHAPE_G.items()), ids=str)
def test_group_norm_general(shape, groups):
    """upstream: pytorch test/test_nn.py::TestNNDeviceType.test_GroupNorm_general (_test_GroupNorm_general).

    Normalizes each (sample, group) to mean 0 and variance 1, then applies per-channel weight and bias.
    Upstream uses eps=0, which bnlib refuses (departure): bnlib runs with eps=1e-12 and is compared
    with torch at eps=0.
    """
    b, c = shape[0], shape[1]
    x = torch.empty(*shape).uniform_(0, 10)
    ours, theirs = GroupNorm(groups, c, eps=1e-12), nn.GroupNorm(groups, c, eps=0)
    output = ours(x)
    normalized = output.view(b, groups, -1)
    assert_close(normalized.mean(-1).abs().mean(), torch.tensor(0.0), atol=1e-5, rtol=0)
    assert_close(normalized.var(-1, unbiased=False).mean(), torch.tensor(1.0), atol=1e-5, rtol=0)
    scale, bias = torch.empty(c).uniform_(0.2, 2), torch.empty(c).uniform_(0.2, 2)
    for module in (ours, theirs):
        with torch.no_grad():
            module.weight.copy_(scale)
            module.bias.copy_(bias)
    # Compared in float64, absolutely: the input gradient of a group of two values is exactly 0, and
    # what the two libraries compute instead is rounding error divided by the group's spread.
    assert_same_step(ours.double(), theirs.double(), x.double(), tol={"atol": 1e-7, "rtol": 1e-7})
    with pytest.raises(ValueError, match="eps must be a positive number"):
        GroupNorm(groups, c, eps=0)


@pytest.mark.parametrize("shape, groups", list(BAD_SHAPE_G.items()), ids=str)
def test_group_norm_general_bad_shapes(shape, groups):
    """upstream: pytorch test/test_nn.py::TestNNDeviceType.test_GroupNorm_general (bad_shape_g)."""
    with pytest.raises(ValueError, match="must be divisible by num_groups"):
        nn.GroupNorm(groups, shape[1])
    with pytest.raises(ValueError, match="is not divisible by num_groups"):
        GroupNorm(groups, shape[1])


def test_group_norm_raises_error_if_one_value_per_group():
    """upstream: pytorch test/test_nn.py::TestNNDeviceType.test_GroupNorm_raises_error_if_one_value_per_group."""
    x = torch.rand(10)[None, :, None]
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        nn.GroupNorm(10, 10)(x)
    with pytest.raises(ValueError, match="more than 1 value per group"):
        GroupNorm(10, 10)(x)


def test_group_norm_empty():
    """upstream: pytorch test/test_nn.py::TestNNDeviceType.test_GroupNorm_empty (_test_module_empty_input)."""
    ours, theirs = group_norm_pair(2, 4, 1e-5, True, torch.float32)
    assert_same_step(ours, theirs, torch.randn(0, 4, 2, 2))


@pytest.mark.parametrize("input_format", [torch.contiguous_format, torch.channels_last], ids=["in_contig", "in_cl"])
@pytest.mark.parametrize("grad_format", [torch.contiguous_format, torch.channels_last], ids=["grad_contig", "grad_cl"])
def test_group_norm_memory_format(input_format, grad_format):
    """upstream: pytorch test/test_nn.py::TestNNDeviceType.test_GroupNorm_memory_format.

    Input and upstream gradient in either memory format: the same output and input gradient as contiguous.
    """
    ours, theirs = group_norm_pair(2, 4, 1e-5, True, torch.float32)
    x, grad_out = torch.rand(2, 4, 4, 4), torch.rand(2, 4, 4, 4)
    y_ref, grads_ref = forward_backward(theirs, x, grad_out)
    y, grads = forward_backward(
        ours, x.contiguous(memory_format=input_format), grad_out.contiguous(memory_format=grad_format)
    )
    assert_close(y, y_ref, **tolerance(torch.float32))
    assert_close(grads["input"], grads_ref["input"], **tolerance(torch.float32))


GROUP_NORM_NHWC = [
    pytest.param((4, 8, 10, 10), 4, torch.channels_last, id="4-8-10-10"),
    pytest.param((2, 30, 9, 9), 3, torch.channels_last, id="2-30-9-9"),
    pytest.param((2, 9, 7, 11, 15), 3, torch.channels_last_3d, id="2-9-7-11-15"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, groups, memory_format", GROUP_NORM_NHWC)
def test_groupnorm_nhwc(shape, groups, memory_format, dtype):
    """upstream: pytorch test/test_nn.py::TestNNDeviceType.test_groupnorm_nhwc (float, double; the smaller sizes).

    A channels_last input: torch's output, weight, bias and input gradients.
    """
    ours, theirs = group_norm_pair(groups, shape[1], 1e-5, True, dtype)
    x = torch.randn(shape, dtype=dtype).contiguous(memory_format=memory_format)
    grad_out = torch.randn(shape, dtype=dtype).contiguous(memory_format=memory_format)
    y_ref, grads_ref = forward_backward(theirs, x, grad_out)
    y, grads = forward_backward(ours, x, grad_out)
    assert_close(y, y_ref, **tolerance(dtype))
    for name, grad in grads_ref.items():
        assert_close(grads[name], grad, **tolerance(dtype))


@pytest.mark.parametrize("shape, groups, memory_format", GROUP_NORM_NHWC)
def test_groupnorm_nhwc_keeps_memory_format(shape, groups, memory_format):
    """upstream: pytorch test/test_nn.py::TestNNDeviceType.test_groupnorm_nhwc (out.is_contiguous(memory_format))."""
    ours, theirs = group_norm_pair(groups, shape[1], 1e-5, True, torch.float32)
    x = torch.randn(shape).contiguous(memory_format=memory_format)
    assert theirs(x).is_contiguous(memory_format=memory_format)
    assert ours(x).is_contiguous(memory_format=memory_format)


def test_group_norm_numeric():
    """upstream: pytorch test/test_nn.py::TestNNDeviceType.test_GroupNorm_numeric (its reference formula).

    Upstream's (1, 8, 256, 256, 72) input is cut to (1, 8, 32, 32, 9) to keep the suite fast.
    """
    groups, channels = 2, 8
    ours = GroupNorm(groups, channels)
    randomize_affine(ours, 0)
    x = torch.rand(1, channels, 32, 32, 9)
    view = x.view(1, groups, -1)
    mean, var = view.mean(dim=-1, keepdim=True), view.var(dim=-1, unbiased=False, keepdim=True)
    reference = ((view - mean) / torch.sqrt(var + ours.eps)).view(1, channels, -1)
    reference = (reference * ours.weight.view(channels, 1) + ours.bias.view(channels, 1)).view(x.shape)
    assert_close(ours(x), reference, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Layer norm: common_modules.py::module_inputs_torch_nn_LayerNorm and test/test_nn.py
# ---------------------------------------------------------------------------------------------
# bnlib's LayerNorm(C) normalizes each sample over (C, *) with a per-channel weight. torch's
# LayerNorm(normalized_shape) normalizes the trailing dims with an elementwise weight. They are the
# same computation on the input flattened to (rows, prod(normalized_shape)) (documented departure).


def layer_norm_pair(normalized_shape: list[int], eps: float, elementwise_affine: bool, dtype: torch.dtype):
    theirs = nn.LayerNorm(normalized_shape, eps, elementwise_affine).to(dtype)
    randomize_affine(theirs, 0)
    ours = LayerNorm(math.prod(normalized_shape), eps=eps, affine=elementwise_affine, dtype=dtype)
    if elementwise_affine:
        with torch.no_grad():
            ours.weight.copy_(theirs.weight.flatten())
            ours.bias.copy_(theirs.bias.flatten())
    return ours, theirs


def assert_same_layer_norm(ours: LayerNorm, theirs: nn.LayerNorm, x: torch.Tensor) -> None:
    """The torch layer on x, bnlib on x flattened to (rows, features); outputs and gradients compared."""
    features = math.prod(theirs.normalized_shape)
    grad_out = torch.randn(x.shape, dtype=x.dtype)
    y_ref, grads_ref = forward_backward(theirs, x, grad_out)
    y, grads = forward_backward(ours, x.reshape(-1, features), grad_out.reshape(-1, features))
    tol = tolerance(x.dtype)
    assert_close(y.reshape(x.shape), y_ref, **tol)
    assert_close(grads["input"].reshape(x.shape), grads_ref["input"], **tol)
    for name in ("weight", "bias"):
        if grads_ref.get(name) is not None:
            assert_close(grads[name], grads_ref[name].flatten(), **tol)


LAYER_NORM_INPUTS = [
    ("1d_elementwise_affine", [5], 1e-3, True, (4, 5, 5)),
    ("1d_elementwise_affine_large_batch", [5], 1e-3, True, (128, 5, 5)),
    ("1d_no_elementwise_affine", [5], 1e-3, False, (4, 5, 5)),
    ("3d_elementwise_affine", [2, 2, 5], 1e-3, True, (4, 2, 2, 5)),
    ("3d_no_elementwise_affine", [2, 2, 5], 1e-3, False, (4, 2, 2, 5)),
    ("1d_empty_elementwise_affine", [5], 1e-3, True, (0, 5)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "normalized_shape, eps, elementwise_affine, shape",
    [pytest.param(*case[1:], id=case[0]) for case in LAYER_NORM_INPUTS],
)
def test_module_inputs_layer_norm(normalized_shape, eps, elementwise_affine, shape, dtype):
    """upstream: pytorch torch/testing/_internal/common_modules.py::module_inputs_torch_nn_LayerNorm.

    bnlib's LayerNorm on the input flattened to (rows, features); training and evaluation alike.
    """
    ours, theirs = layer_norm_pair(normalized_shape, eps, elementwise_affine, dtype)
    assert_same_layer_norm(ours, theirs, make_input(shape, dtype, seed=0))
    ours.eval()
    theirs.eval()
    assert_same_layer_norm(ours, theirs, make_input(shape, dtype, seed=1))


def test_module_inputs_layer_norm_no_bias_departure():
    """upstream: pytorch common_modules.py::module_inputs_torch_nn_LayerNorm desc='3d_elementwise_affine_no_bias'.

    Departure: no ``bias=False`` in bnlib; a frozen zero bias gives torch's output and gradients.
    """
    theirs = nn.LayerNorm([2, 2, 5], 1e-3, elementwise_affine=True, bias=False).double()
    randomize_affine(theirs, 0)
    ours = LayerNorm(20, eps=1e-3, dtype=torch.float64)
    with torch.no_grad():
        ours.weight.copy_(theirs.weight.flatten())
    ours.bias.requires_grad_(False)
    x, grad_out = make_input((4, 2, 2, 5), torch.float64, seed=0), torch.randn(4, 2, 2, 5, dtype=torch.float64)
    y_ref, grads_ref = forward_backward(theirs, x, grad_out)
    y, grads = forward_backward(ours, x.reshape(4, 20), grad_out.reshape(4, 20))
    assert_close(y.reshape(x.shape), y_ref)
    assert_close(grads["input"].reshape(x.shape), grads_ref["input"])
    assert_close(grads["weight"], grads_ref["weight"].flatten())


@pytest.mark.parametrize("ndim", [2, 3, 4, 5])
def test_layer_norm_general(ndim):
    """upstream: pytorch test/test_nn.py::TestNNDeviceType.test_LayerNorm_general (_test_LayerNorm_general).

    Random shapes with 3 to 5 per dim and 1 to ndim - 1 normalized trailing dims: mean 0 and
    variance 1, then weight and bias applied. Upstream's eps=0 is refused by bnlib (departure):
    bnlib runs with eps=1e-12 against torch at eps=0.
    """
    generator = torch.Generator().manual_seed(ndim)
    shape = torch.randint(3, 6, (ndim,), generator=generator).tolist()
    normalized_ndim = int(torch.randint(1, ndim, (1,), generator=generator))
    normalized_shape = shape[-normalized_ndim:]
    features = math.prod(normalized_shape)
    x = torch.empty(*shape).uniform_(0, 10, generator=generator)
    ours, theirs = LayerNorm(features, eps=1e-12), nn.LayerNorm(normalized_shape, eps=0)
    output = ours(x.reshape(-1, features))
    assert_close(output.mean(-1).abs().mean(), torch.tensor(0.0), atol=1e-5, rtol=0)
    assert_close(output.var(-1, unbiased=False).mean(), torch.tensor(1.0), atol=1e-5, rtol=0)
    scale, bias = torch.empty(2).uniform_(0.2, 2, generator=generator).tolist()
    for module in (ours, theirs):
        with torch.no_grad():
            module.weight.fill_(scale)
            module.bias.fill_(bias)
    output = ours(x.reshape(-1, features))
    assert_close(output.mean(-1).mean(), torch.tensor(bias), atol=1e-5, rtol=0)
    assert_close(output.var(-1, unbiased=False).mean(), torch.tensor(scale**2), atol=1e-4, rtol=1e-5)
    assert_same_layer_norm(ours.double(), theirs.double(), x.double())
    with pytest.raises(ValueError, match="eps must be a positive number"):
        LayerNorm(features, eps=0)


def test_layer_norm_general_bad_shapes():
    """upstream: pytorch test/test_nn.py::TestNNDeviceType.test_LayerNorm_general (bad_norm_shape_input_shape).

    torch raises RuntimeError for an input whose trailing dims do not match; bnlib's analogue, an input
    whose dim 1 is not num_features, raises ValueError (departure: error type).
    """
    with pytest.raises(RuntimeError):
        nn.LayerNorm((10,))(torch.empty(2, 3))
    with pytest.raises(ValueError, match="expected 10 channels"):
        LayerNorm(10)(torch.empty(2, 3))
    with pytest.raises(ValueError, match="at least 2 dims"):
        LayerNorm(3)(torch.empty(3))


def test_layer_norm_single_value_departure():
    """upstream: pytorch test/test_nn.py::TestNNDeviceType.test_GroupNorm_raises_error_if_one_value_per_group, for LayerNorm.

    torch refuses a group of one value in GroupNorm but returns beta from nn.LayerNorm(1), whatever the
    input; bnlib's LayerNorm refuses one value per sample as its GroupNorm does (departure).
    """
    x = torch.randn(4, 1)
    assert_close(nn.LayerNorm(1)(x), torch.zeros(4, 1), check_dtype=False)
    with pytest.raises(ValueError, match="more than 1 value per sample"):
        LayerNorm(1)(x)


def test_layer_norm_grads_with_create_graph_flag():
    """upstream: pytorch test/test_nn.py::TestNN.test_layer_norm_grads_with_create_graph_flag.

    The input gradient is the same with and without create_graph, and equals torch's.
    """
    x = torch.randn(4, 4, 16, requires_grad=True)
    theirs = nn.LayerNorm((16,), 1e-5, True)
    ours = LayerNorm(16)
    for module in (theirs, ours):
        with torch.no_grad():
            module.weight.copy_(0.1 * torch.ones_like(module.weight))
    grads1 = torch.autograd.grad(ours(x.reshape(16, 16)).sum(), x, create_graph=False)[0]
    grads2 = torch.autograd.grad(ours(x.reshape(16, 16)).sum(), x, create_graph=True)[0]
    assert_close(grads1, grads2, rtol=0, atol=1e-5)
    reference = torch.autograd.grad(theirs(x).sum(), x)[0]
    assert_close(grads1, reference, rtol=1e-4, atol=1e-5)


def test_layer_norm_numeric():
    """upstream: pytorch test/test_nn.py::TestNNDeviceType.test_LayerNorm_numeric (its reference formula).

    Upstream's (2, 256, 256, 144) input is cut to (2, 16, 16, 9) to keep the suite fast.
    """
    normalized_shape = [16, 16, 9]
    features = math.prod(normalized_shape)
    ours = LayerNorm(features)
    randomize_affine(ours, 0)
    x = torch.rand(2, *normalized_shape)
    view = x.view(-1, features)
    mean, var = view.mean(dim=-1, keepdim=True), view.var(dim=-1, unbiased=False, keepdim=True)
    reference = (view - mean) / torch.sqrt(var + ours.eps) * ours.weight + ours.bias
    assert_close(ours(view), reference, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Instance norm: common_modules.py::module_inputs_torch_nn_InstanceNormNd and test/test_nn.py
# ---------------------------------------------------------------------------------------------

INSTANCE_NORM = {
    1: (nn.InstanceNorm1d, (3, 15)),
    2: (nn.InstanceNorm2d, (3, 6, 6)),
    3: (nn.InstanceNorm3d, (3, 4, 4, 4)),
}


def instance_norm_pair(n: int, dtype: torch.dtype, **kwargs):
    """The torch InstanceNorm{n}d(3, 1e-3, 0.3, **kwargs) and bnlib's InstanceNorm with its weights."""
    torch_cls, _ = INSTANCE_NORM[n]
    theirs = torch_cls(3, 1e-3, 0.3, **kwargs).to(dtype)
    randomize_affine(theirs, 0)
    ours = InstanceNorm(3, eps=1e-3, affine=theirs.affine, dtype=dtype)
    if theirs.affine:
        ours.load_state_dict({"weight": theirs.weight, "bias": theirs.bias})
    return ours, theirs


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", [False, True], ids=["default", "affine"])
@pytest.mark.parametrize("n", [1, 2, 3], ids=["InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d"])
def test_module_inputs_instance_norm(n, affine, dtype):
    """upstream: pytorch torch/testing/_internal/common_modules.py::module_inputs_torch_nn_InstanceNormNd ('', 'affine').

    torch's default track_running_stats=False: instance statistics in training and evaluation alike.
    """
    ours, theirs = instance_norm_pair(n, dtype, affine=affine)
    shape = (4, *INSTANCE_NORM[n][1])
    assert_same_step(ours, theirs, make_input(shape, dtype, seed=0))
    ours.eval()
    theirs.eval()
    assert_same_step(ours, theirs, make_input(shape, dtype, seed=1), seed=1)
    assert_same_step(ours, theirs, make_input((1, *shape[1:]), dtype, seed=2), seed=2)  # batch of one


@pytest.mark.parametrize("n", [1, 2, 3], ids=["InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d"])
def test_module_inputs_instance_norm_tracking_stats_departure(n):
    """upstream: pytorch common_modules.py::module_inputs_torch_nn_InstanceNormNd desc='tracking_stats'.

    Departure: bnlib's InstanceNorm keeps no running statistics. In training both normalize with the
    instance statistics; in evaluation torch (track_running_stats=True) uses its running averages
    while bnlib still uses the instance statistics.
    """
    ours, theirs = instance_norm_pair(n, torch.float64, affine=False, track_running_stats=True)
    shape = (4, *INSTANCE_NORM[n][1])
    x = make_input(shape, torch.float64, seed=0)
    assert_close(ours(x), theirs(x))
    assert not hasattr(ours, "running_mean") or ours.running_mean is None
    ours.eval()
    theirs.eval()
    assert_close(ours(x), ours.train()(x))
    assert not torch.allclose(ours(x), theirs(x), atol=1e-3)
    with pytest.raises(TypeError):
        InstanceNorm(3, track_running_stats=True)


@pytest.mark.parametrize("n", [1, 2, 3], ids=["InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d"])
def test_module_inputs_instance_norm_no_batch_dim_departure(n):
    """upstream: pytorch common_modules.py::module_inputs_torch_nn_InstanceNormNd desc='no_batch_dim', 'tracking_stats_no_batch_dim'.

    Departure: torch takes an unbatched (C, *) input; bnlib asks for the batch axis (x.unsqueeze(0)),
    and then gives torch's output.
    """
    ours, theirs = instance_norm_pair(n, torch.float64, affine=False)
    x = make_input(INSTANCE_NORM[n][1], torch.float64, seed=0)
    with pytest.raises(ValueError, match="InstanceNorm"):
        ours(x)
    assert_close(ours(x.unsqueeze(0)).squeeze(0), theirs(x))


@pytest.mark.parametrize("n", [1, 2, 3], ids=["InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d"])
def test_module_inputs_instance_norm_not_bias_departure(n):
    """upstream: pytorch common_modules.py::module_inputs_torch_nn_InstanceNormNd desc='affine_not_bias'.

    Departure: no ``bias=False`` in bnlib; a frozen zero bias gives torch's output and gradients.
    """
    torch_cls, sample = INSTANCE_NORM[n]
    theirs = torch_cls(3, 1e-3, 0.3, affine=True, bias=False).double()
    randomize_affine(theirs, 0)
    ours = InstanceNorm(3, eps=1e-3, dtype=torch.float64)
    with torch.no_grad():
        ours.weight.copy_(theirs.weight)
    ours.bias.requires_grad_(False)
    x, grad_out = make_input((4, *sample), torch.float64, seed=0), torch.randn(4, *sample, dtype=torch.float64)
    y_ref, grads_ref = forward_backward(theirs, x, grad_out)
    y, grads = forward_backward(ours, x, grad_out)
    assert_close(y, y_ref)
    assert_close(grads["input"], grads_ref["input"])
    assert_close(grads["weight"], grads_ref["weight"])


@pytest.mark.parametrize(
    "n, shape",
    [
        pytest.param(1, (4, 3, 9), id="InstanceNorm1d"),
        pytest.param(2, (4, 5, 7, 4), id="InstanceNorm2d"),
        pytest.param(3, (3, 4, 3, 4, 2), id="InstanceNorm3d"),
    ],
)
def test_instance_norm_general(n, shape):
    """upstream: pytorch test/test_nn.py::TestNNDeviceType.test_InstanceNorm1d/2d/3d_general (_test_InstanceNorm_general).

    Each (sample, channel) normalized to mean 0 and variance 1; evaluation changes neither the output nor
    the gradient. Upstream's eps=0 is refused by bnlib (departure): eps=1e-12 against torch at eps=0.
    The second half of the upstream test (track_running_stats=True, momentum=1) has no bnlib
    counterpart: see test_module_inputs_instance_norm_tracking_stats_departure.
    """
    b, c = shape[0], shape[1]
    x = torch.rand(shape)
    ours, theirs = InstanceNorm(c, eps=1e-12, affine=False), INSTANCE_NORM[n][0](c, eps=0)
    output = ours(x).view(b * c, -1)
    assert_close(output.mean(1).abs().mean(), torch.tensor(0.0), atol=1e-5, rtol=0)
    assert_close(output.var(1, unbiased=False).abs().mean(), torch.tensor(1.0), atol=1e-5, rtol=0)
    grad_out = torch.randn_like(x)
    y_train, grads_train = forward_backward(ours, x, grad_out)
    ours.eval()
    y_eval, grads_eval = forward_backward(ours, x, grad_out)
    assert_close(y_train, y_eval)
    assert_close(grads_train["input"], grads_eval["input"])
    assert_same_step(ours, theirs, x)
    with pytest.raises(ValueError, match="eps must be a positive number"):
        InstanceNorm(c, eps=0)


def test_instancenorm_raises_error_if_less_than_one_value_per_channel():
    """upstream: pytorch test/test_nn.py::TestNNDeviceType.test_instancenorm_raises_error_if_less_than_one_value_per_channel."""
    x = torch.rand(10)[None, :, None]
    with pytest.raises(ValueError, match="Expected more than 1 spatial element"):
        nn.InstanceNorm1d(10)(x)
    with pytest.raises(ValueError, match="more than 1 spatial position"):
        InstanceNorm(10)(x)


@pytest.mark.parametrize("n", [1, 2, 3], ids=["InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d"])
def test_instancenorm_raises_error_for_single_spatial_element(n):
    """upstream: pytorch test/test_nn.py::TestNNDeviceType.test_instancenorm_raises_error_for_single_spatial_element_during_training.

    A single spatial element: torch (default track_running_stats=False) and bnlib both refuse, in training
    and evaluation. Upstream's track_running_stats=True module accepts it in evaluation; bnlib has no
    running statistics to fall back on (departure, see the tracking_stats test).
    """
    x = torch.randn(10, 3, *[1] * n)
    theirs, ours = INSTANCE_NORM[n][0](3), InstanceNorm(3, affine=False)
    for training in (True, False):
        theirs.train(training)
        ours.train(training)
        with pytest.raises(ValueError, match="Expected more than 1 spatial element"):
            theirs(x)
        with pytest.raises(ValueError, match="more than 1 spatial position"):
            ours(x)
    tracking = INSTANCE_NORM[n][0](3, track_running_stats=True).eval()
    assert tracking(x).shape == x.shape


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("no_batch_dim", [True, False])
@pytest.mark.parametrize("n", [1, 2, 3], ids=["InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d"])
def test_instancenorm_raises_error_if_input_channels_is_not_num_features(n, no_batch_dim, affine):
    """upstream: pytorch test/test_nn.py::TestNNDeviceType.test_instancenorm_raises_error_if_input_channels_is_not_num_features.

    With affine=True both raise a ValueError. With affine=False torch only warns and normalizes anyway;
    bnlib raises a ValueError (departure: a wrong channel count is always an error).
    """
    size = [2] * (n + 1)
    if not no_batch_dim:
        size = [3, *size]
    x = torch.randn(size)
    theirs = INSTANCE_NORM[n][0](4, affine=affine)
    if affine:
        with pytest.raises(ValueError, match="expected input's size at dim="):
            theirs(x)
    else:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            theirs(x)
        assert "which is not used because affine=False" in str(caught[0].message)
    with pytest.raises(ValueError, match="InstanceNorm"):
        InstanceNorm(4, affine=affine)(x)


# ---------------------------------------------------------------------------------------------
# Settings every norm layer checks alike (issue 14: one set of argument checks)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda eps: LayerNorm(3, eps=eps), id="LayerNorm"),
        pytest.param(lambda eps: GroupNorm(1, 3, eps=eps), id="GroupNorm"),
        pytest.param(lambda eps: InstanceNorm(3, eps=eps), id="InstanceNorm"),
    ],
)
def test_eps_inf_refused_like_batch_norm(build):
    """upstream: none (torch accepts eps=inf and returns beta); bnlib refuses it.

    Departure from torch, the same for every bnlib norm: eps must be finite, or every output is beta.
    """
    with pytest.raises(ValueError, match="eps"):
        BatchNorm(3, eps=math.inf)
    with pytest.raises(ValueError, match="eps"):
        build(math.inf)


# ---------------------------------------------------------------------------------------------
# Reduced precision: test/test_nn.py's _test_LayerNorm_cpu_mixed_dtype and _test_GroupNorm_cpu_mixed_dtype
# ---------------------------------------------------------------------------------------------

LOW_PRECISION = [pytest.param(torch.bfloat16, id="bfloat16"), pytest.param(torch.float16, id="float16")]


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no_affine"])
def test_layer_norm_cpu_mixed_dtype(dtype, affine):
    """upstream: pytorch test/test_nn.py::TestNNDeviceType.test_LayerNorm_general (_test_LayerNorm_cpu_mixed_dtype).

    Input (2, 3, 11, 3) of integers 1 to 9 in ``dtype``, normalized over (11, 3): a ``dtype`` module and
    a float32 module given the ``dtype`` input both give the float32 result rounded to ``dtype`` (and
    torch's), with input gradients within 0.1.
    """
    x = torch.randint(1, 10, (2, 3, 11, 3), generator=torch.Generator().manual_seed(0)).to(dtype).reshape(6, 33)
    full = LayerNorm(33, affine=affine)
    low, mixed = copy.deepcopy(full).to(dtype), copy.deepcopy(full)
    grad_out = torch.ones(6, 33)
    out_full, grads_full = forward_backward(full, x.float(), grad_out)
    for module in (low, mixed):
        out, grads = forward_backward(module, x, grad_out.to(dtype))
        assert out.dtype == dtype
        assert_close(out, out_full.to(dtype))
        assert_close(grads["input"], grads_full["input"].to(dtype), atol=0.1, rtol=0.1)
    theirs = nn.LayerNorm([11, 3], elementwise_affine=affine)
    assert_close(mixed(x), theirs(x.reshape(2, 3, 11, 3)).reshape(6, 33))


GROUP_NORM_MIXED = [
    pytest.param((1, 8, 4, 3), 2, id="1-8-4-3-g2"),
    pytest.param((1, 8, 3, 4), 4, id="1-8-3-4-g4"),
    pytest.param((1, 9, 3, 4, 5), 3, id="1-9-3-4-5-g3"),
    pytest.param((1, 3, 20, 20), 1, id="1-3-20-20-g1"),
]


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("shape, groups", GROUP_NORM_MIXED)
def test_group_norm_cpu_mixed_dtype(shape, groups, dtype, channels_last):
    """upstream: pytorch test/test_nn.py::TestNNDeviceType.test_GroupNorm_general (_test_GroupNorm_cpu_mixed_dtype, smaller shapes).

    A ``dtype`` module, a float32 module given ``dtype`` input, and a float32 module given float32 input
    agree within upstream's tolerances (outputs 5e-3; float32 weight and bias gradients 1e-4 and 1e-5).
    """
    memory_format = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=memory_format)
    grad_out = torch.randn(shape, generator=generator).to(dtype)
    module_low = GroupNorm(groups, shape[1], dtype=dtype)
    module_mixed = GroupNorm(groups, shape[1])
    module_full = copy.deepcopy(module_mixed)
    out_low, grads_low = forward_backward(module_low, x, grad_out)
    out_mixed, grads_mixed = forward_backward(module_mixed, x, grad_out)
    out_full, grads_full = forward_backward(module_full, x.float(), grad_out.float())
    assert_close(out_low, out_mixed, atol=5e-3, rtol=5e-3)
    assert_close(out_mixed.float(), out_full, atol=5e-3, rtol=5e-3)
    assert_close(grads_mixed["weight"], grads_full["weight"], atol=1e-4, rtol=1e-4)
    assert_close(grads_mixed["bias"], grads_full["bias"], atol=1e-5, rtol=1e-5)
    assert_close(grads_mixed["input"].float(), grads_full["input"], atol=5e-5, rtol=5e-3)
    low_tol = {"atol": 1e-2, "rtol": 1.2e-1} if dtype == torch.bfloat16 else {"atol": 5e-3, "rtol": 1.5e-2}
    assert_close(grads_low["weight"], grads_mixed["weight"].to(dtype), **low_tol)
    assert_close(grads_low["input"], grads_mixed["input"], **low_tol)
    theirs = nn.GroupNorm(groups, shape[1])
    assert_close(out_mixed.float(), theirs(x).float(), atol=5e-3, rtol=5e-3)


# ---------------------------------------------------------------------------------------------
# float16 modules (issue 14, item 2: statistics accumulate in float32, as torch.nn's do)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ours, theirs, shape",
    [
        pytest.param(
            lambda: GroupNorm(1, 2, dtype=torch.float16),
            lambda: nn.GroupNorm(1, 2).half(),
            (1, 2, 40_000),
            id="GroupNorm-80000-values-per-group",
        ),
        pytest.param(
            lambda: LayerNorm(2, dtype=torch.float16),
            lambda: nn.GroupNorm(1, 2).half(),
            (1, 2, 40_000),
            id="LayerNorm-80000-values-per-sample",
        ),
        pytest.param(
            lambda: BatchNorm(3, dtype=torch.float16),
            lambda: nn.BatchNorm1d(3).half(),
            (64, 3),
            id="BatchNorm-values-around-1000",
        ),
    ],
)
def test_float16_module_accumulates_in_float32(ours, theirs, shape):
    """upstream: pytorch test/test_nn.py::TestNNDeviceType.test_GroupNorm_general, _test_LayerNorm_cpu_mixed_dtype.

    The float16/bfloat16 norms of torch compute their statistics in float32.
    A float16 module given finite float16 input: the float64 result within float16 accuracy (at
    least as close as torch's own float16 module, whose CPU BatchNorm is 0.24 off for values
    around 1000), torch's running statistics, not beta (a float16 sum of squares overflowing) and
    not a refusal as "NaN or infinite".
    """
    generator = torch.Generator().manual_seed(0)
    offset = 1000.0 if len(shape) == 2 else 0.0  # values around 1000: their squares overflow float16
    x = (torch.randn(shape, generator=generator) + offset).half()
    ours, theirs = ours(), theirs()
    exact = copy.deepcopy(theirs).double()  # the same torch module in float64: the reference
    expected = exact(x.double())
    error_ours = (ours(x).double() - expected).abs().max()
    error_torch = (theirs(x).double() - expected).abs().max()
    assert error_ours <= max(2e-2, error_torch), f"bnlib float16 error {error_ours:.3g}, torch's {error_torch:.3g}"
    for name in ("running_mean", "running_var"):
        if getattr(theirs, name, None) is not None:
            assert_close(getattr(ours, name).double(), getattr(exact, name), atol=2e-2, rtol=2e-2)
            assert_close(getattr(ours, name), getattr(theirs, name))


def test_float16_running_variance_overflow_departure():
    """upstream: none (torch writes inf into a float16 running_var without a word).

    Departure: values spread over thousands have a variance above float16's 65504. torch normalizes
    the batch and stores running_var = inf; bnlib refuses the batch with a ValueError that says
    so and leaves the buffers as they were (never a silent inf in the state).
    """
    x = (torch.randn(64, 3, generator=torch.Generator().manual_seed(0)) * 1000).half()
    theirs, ours = nn.BatchNorm1d(3).half(), BatchNorm(3, dtype=torch.float16)
    theirs(x)
    assert torch.isinf(theirs.running_var).all()
    with pytest.raises(ValueError, match="NaN or infinite"):
        ours(x)
    assert int(ours.num_batches_tracked) == 0
    assert_close(ours.running_var, torch.ones(3, dtype=torch.float16))


# ---------------------------------------------------------------------------------------------
# test/test_modules.py's generic checks, run on one module_inputs case of each family
# ---------------------------------------------------------------------------------------------


def family_case(family: str, dtype: torch.dtype) -> tuple[nn.Module, nn.Module, tuple[int, ...]]:
    """(bnlib module, torch module, input shape) for one common_modules.py case of each family."""
    if family == "BatchNorm1d-3d_input":
        ours, theirs = batch_norm_pair(nn.BatchNorm1d, (5,), dtype)
        return ours, theirs, (4, 5, 3)
    if family == "GroupNorm-1d_affine":
        ours, theirs = group_norm_pair(3, 6, 1e-3, True, dtype)
        return ours, theirs, (4, 6, 5)
    if family == "InstanceNorm1d-affine":
        ours, theirs = instance_norm_pair(1, dtype, affine=True)
        return ours, theirs, (4, 3, 15)
    ours, theirs = layer_norm_pair([5], 1e-3, True, dtype)  # LayerNorm-1d_elementwise_affine, flattened
    return ours, theirs, (20, 5)


FAMILIES = ["BatchNorm1d-3d_input", "GroupNorm-1d_affine", "InstanceNorm1d-affine", "LayerNorm-1d_elementwise_affine"]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("family", FAMILIES)
def test_modules_grad_and_gradgrad(family, training):
    """upstream: pytorch test/test_modules.py::TestModule.test_grad and test_gradgrad (float64).

    gradcheck and gradgradcheck of bnlib's module with respect to the input and every parameter.
    """
    ours, _, shape = family_case(family, torch.float64)
    ours.train(training)
    names = [name for name, _ in ours.named_parameters()]

    def function(x, *params):
        return torch.func.functional_call(ours, dict(zip(names, params, strict=True)), (x,))

    inputs = (
        make_input(shape, torch.float64, seed=0).requires_grad_(),
        *(p.detach().clone().requires_grad_() for p in ours.parameters()),
    )
    assert torch.autograd.gradcheck(function, inputs)
    assert torch.autograd.gradgradcheck(function, inputs)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("family", FAMILIES)
def test_modules_non_contiguous_tensors(family, training):
    """upstream: pytorch test/test_modules.py::TestModule.test_non_contiguous_tensors.

    Input and upstream gradient made non-contiguous as upstream does (repeat_interleave(2, dim=-1)[..., ::2]):
    the output and gradients of their contiguous copies, and torch's.
    """
    ours, theirs, shape = family_case(family, torch.float64)
    ours.train(training)
    theirs.train(training)

    def non_contiguous(t: torch.Tensor) -> torch.Tensor:
        return torch.repeat_interleave(t, 2, dim=-1)[..., ::2]

    x, grad_out = make_input(shape, torch.float64, seed=0), torch.randn(shape, dtype=torch.float64)
    assert not non_contiguous(x).is_contiguous()
    state = copy.deepcopy(ours.state_dict())
    y, grads = forward_backward(ours, non_contiguous(x), non_contiguous(grad_out))
    ours.load_state_dict(state)
    y_ref, grads_ref = forward_backward(ours, x, grad_out)
    assert_close(y, y_ref)
    for name, grad in grads_ref.items():
        assert_close(grads[name], grad)
    ours.load_state_dict(state)
    if family.startswith("LayerNorm"):
        return  # torch's LayerNorm([5]) is compared on the unflattened input in test_module_inputs_layer_norm
    assert_same_step(ours, theirs, non_contiguous(x))


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda **kw: BatchNorm(3, **kw), id="BatchNorm"),
        pytest.param(lambda **kw: GroupNorm(1, 3, **kw), id="GroupNorm"),
        pytest.param(lambda **kw: LayerNorm(3, **kw), id="LayerNorm"),
        pytest.param(lambda **kw: InstanceNorm(3, **kw), id="InstanceNorm"),
    ],
)
def test_modules_factory_kwargs(build):
    """upstream: pytorch test/test_modules.py::TestModule.test_factory_kwargs.

    ``device=`` and ``dtype=`` place every parameter and floating buffer; num_batches_tracked stays
    a long integer, as in torch.nn.
    """
    for device, dtype in (("meta", torch.float64), ("cpu", torch.float64), ("cpu", torch.float32)):
        module = build(device=device, dtype=dtype)
        for name, tensor in (*module.named_parameters(), *module.named_buffers()):
            assert tensor.device.type == device, name
            expected = torch.long if name == "num_batches_tracked" else dtype
            assert tensor.dtype == expected, f"{name}: {tensor.dtype}"


@pytest.mark.parametrize("family", FAMILIES)
def test_modules_pickle(family):
    """upstream: pytorch test/test_modules.py::TestModule.test_pickle.

    A pickled and unpickled (and a deep-copied) module computes what the original does.
    """
    ours, _, shape = family_case(family, torch.float64)
    ours.eval()
    x = make_input(shape, torch.float64, seed=0)
    assert_close(pickle.loads(pickle.dumps(ours))(x), ours(x))  # noqa: S301 (our own bytes)
    assert_close(copy.deepcopy(ours)(x), ours(x))


@pytest.mark.parametrize(
    "torch_cls, args, shape", [(nn.BatchNorm2d, (3, 1e-3, 0.8), (2, 3, 6, 6))], ids=["BatchNorm2d-momentum"]
)
def test_batch_norm_state_dict_both_ways(torch_cls, args, shape):
    """upstream: pytorch test/test_modules.py::TestModule.test_save_load (through state_dict, both ways).

    bnlib's trained state (torch.save and torch.load in memory) loads into torch's module, and back,
    with the same evaluation output.
    """
    ours, theirs = batch_norm_pair(torch_cls, args, torch.float32)
    for step in range(2):
        ours(make_input(shape, torch.float32, seed=step))
    buffer = io.BytesIO()
    torch.save(ours.state_dict(), buffer)
    buffer.seek(0)
    theirs.load_state_dict(torch.load(buffer, weights_only=True))
    ours.eval()
    theirs.eval()
    x = make_input(shape, torch.float32, seed=5)
    assert_close(ours(x), theirs(x), **tolerance(torch.float32))
    fresh = BatchNorm(args[0], eps=args[1], momentum=args[2])
    fresh.load_state_dict(theirs.state_dict())
    assert_same_state(fresh, theirs)
