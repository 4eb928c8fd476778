"""Batch renorm, ghost batch norm, weight norm and AdaBN against PyTorch and Keras."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm as torch_weight_norm

from bnlib.layers import (
    BatchNorm,
    BatchRenorm,
    GhostBatchNorm,
    GroupNorm,
    InstanceNorm,
    LayerNorm,
    RenormWarmup,
    adapt_batchnorm,
    add_weight_norm,
    apply_weight_norm,
    batchnorm_layers,
)


def close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-10) -> None:
    torch.testing.assert_close(a, b, atol=atol, rtol=1e-7 if atol < 1e-8 else 1e-5)


def shifted_batches(steps: int, shape: tuple[int, ...], seed: int = 0) -> list[torch.Tensor]:
    # Means and scales that drift from step to step, so r and d are clipped on some steps and not on others.
    gen = torch.Generator().manual_seed(seed)
    return [
        (0.5 * step - 1.0) + (0.3 + 0.6 * step) * torch.randn(shape, generator=gen, dtype=torch.float64)
        for step in range(steps)
    ]


# ----------------------------------------------------------------------------- BatchRenorm


@pytest.mark.parametrize("shape", [(16, 3), (6, 3, 4, 5)])
def test_renorm_with_rmax_1_dmax_0_is_batch_norm(shape):
    torch.manual_seed(0)
    ours = BatchRenorm(3, momentum=0.1, r_max=1.0, d_max=0.0, dtype=torch.float64)
    ref = (nn.BatchNorm1d if len(shape) == 2 else nn.BatchNorm2d)(3, momentum=0.1, dtype=torch.float64)
    with torch.no_grad():
        for layer in (ours, ref):
            layer.weight.copy_(torch.tensor([0.5, 2.0, -1.0]))
            layer.bias.copy_(torch.tensor([0.1, 0.0, 3.0]))
    expected_std = torch.ones(3, dtype=torch.float64)
    for x in shifted_batches(3, shape):
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = ours(xa), ref(xb)
        close(ya, yb)
        upstream = torch.randn_like(ya)
        (ya * upstream).sum().backward()
        (yb * upstream).sum().backward()
        close(xa.grad, xb.grad)
        dims = (0, *range(2, x.ndim))
        expected_std = 0.9 * expected_std + 0.1 * (x.var(dim=dims, unbiased=False) + ours.eps).sqrt()
    close(ours.weight.grad, ref.weight.grad)
    close(ours.bias.grad, ref.bias.grad)
    close(ours.running_mean, ref.running_mean)
    close(ours.running_std, expected_std)  # the paper tracks sigma = sqrt(biased var + eps)


def test_renorm_with_rmax_1_dmax_0_is_bnlib_batch_norm():
    from bnlib.layers import batch_norm

    torch.manual_seed(1)
    ours, ref = BatchRenorm(4, dtype=torch.float64), batch_norm.BatchNorm(4, dtype=torch.float64)
    for x in shifted_batches(3, (5, 4, 3, 3)):
        close(ours(x), ref(x))
    close(ours.running_mean, ref.running_mean)


def _keras_renorm_run(xs, *, momentum, r_max, d_max, eps, gamma, beta):
    keras = pytest.importorskip("keras")
    layer = keras.layers.BatchNormalization(
        axis=-1,
        momentum=1 - momentum,
        epsilon=eps,
        renorm=True,
        renorm_clipping={"rmax": r_max, "rmin": 1 / r_max, "dmax": d_max},
        renorm_momentum=1 - momentum,
        dtype="float64",
    )
    layer.build(xs[0].shape)
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)
    import tensorflow as tf

    outputs, grads = [], []
    for x in xs:
        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y = layer(xt, training=True)
            loss = tf.reduce_sum(y * y)
        outputs.append(y.numpy())
        grads.append(tape.gradient(loss, xt).numpy())
    stats = {
        name: np.asarray(getattr(layer, name).numpy()) for name in ("moving_mean", "moving_stddev", "moving_variance")
    }
    return outputs, grads, stats, layer(tf.constant(xs[-1]), training=False).numpy()


@pytest.mark.parametrize("channels_last_shape", [(12, 3), (4, 5, 5, 3)])
def test_renorm_matches_keras_over_clipped_steps(channels_last_shape):
    """Outputs, input gradients, moving statistics and the inference output after 5 steps, r and d clipped."""
    momentum, r_max, d_max, eps = 0.2, 1.5, 0.5, 1e-3
    gamma, beta = np.array([0.5, 2.0, -1.0]), np.array([0.1, 0.0, 3.0])
    xs_torch = shifted_batches(5, channels_last_shape, seed=3)
    to_nchw = (lambda t: t) if len(channels_last_shape) == 2 else (lambda t: t.permute(0, 3, 1, 2))
    from_nchw = (lambda t: t) if len(channels_last_shape) == 2 else (lambda t: t.permute(0, 2, 3, 1))
    k_out, k_grad, k_stats, k_eval = _keras_renorm_run(
        [x.numpy() for x in xs_torch], momentum=momentum, r_max=r_max, d_max=d_max, eps=eps, gamma=gamma, beta=beta
    )
    layer = BatchRenorm(3, eps=eps, momentum=momentum, r_max=r_max, d_max=d_max, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(gamma))
        layer.bias.copy_(torch.from_numpy(beta))
    clipped_r = clipped_d = 0
    for x, y_keras, g_keras in zip(xs_torch, k_out, k_grad):
        x = to_nchw(x).clone().requires_grad_()
        y = layer(x)
        y.square().sum().backward()
        clipped_r += int(
            ((layer.last_r - r_max).abs() < 1e-12).sum() + ((layer.last_r - 1 / r_max).abs() < 1e-12).sum()
        )
        clipped_d += int((layer.last_d.abs() - d_max).abs().lt(1e-12).sum())
        close(from_nchw(y.detach()), torch.from_numpy(y_keras), atol=1e-9)
        close(from_nchw(x.grad), torch.from_numpy(g_keras), atol=1e-9)
    assert clipped_r > 0 and clipped_d > 0, "the test must exercise the clipping of both r and d"
    assert not (clipped_r == 15 and clipped_d == 15), "and some unclipped corrections"
    close(layer.running_mean, torch.from_numpy(k_stats["moving_mean"]), atol=1e-9)
    close(layer.running_std, torch.from_numpy(k_stats["moving_stddev"]), atol=1e-9)
    close(layer.running_std.square() - eps, torch.from_numpy(k_stats["moving_variance"]), atol=1e-9)
    layer.eval()
    close(from_nchw(layer(to_nchw(xs_torch[-1])).detach()), torch.from_numpy(k_eval), atol=1e-9)


def test_renorm_unclipped_training_output_equals_inference_output():
    # The point of renorm: with loose limits, training computes the inference function, gradients aside.
    layer = BatchRenorm(3, r_max=1e6, d_max=1e6, momentum=0.5, dtype=torch.float64)
    for x in shifted_batches(3, (8, 3, 2, 2)):
        layer(x)
    x = shifted_batches(1, (8, 3, 2, 2), seed=9)[0]
    before_mean, before_std = layer.running_mean.clone(), layer.running_std.clone()
    y_train = layer(x)
    expected = (x - before_mean.reshape(1, 3, 1, 1)) / before_std.reshape(1, 3, 1, 1)
    close(y_train.detach(), expected, atol=1e-9)


def test_renorm_gradient_treats_r_and_d_as_constants():
    layer = BatchRenorm(2, r_max=3.0, d_max=5.0, dtype=torch.float64)
    x = shifted_batches(1, (10, 2), seed=4)[0].requires_grad_()
    layer(x).sum().backward()  # sum of outputs: through the batch mean, the gradient is exactly zero
    close(x.grad, torch.zeros_like(x), atol=1e-12)


def test_renorm_momentum_none_is_a_cumulative_average():
    layer = BatchRenorm(2, momentum=None, dtype=torch.float64)
    xs = shifted_batches(4, (6, 2))
    for x in xs:
        layer(x)
    close(layer.running_mean, torch.stack([x.mean(0) for x in xs]).mean(0))


def test_renorm_warmup_schedule_and_attach():
    schedule = RenormWarmup(warmup_steps=2, r_max=3.0, d_max=5.0, r_max_steps=6, d_max_steps=4)
    assert [schedule(s) for s in (0, 2, 3, 4, 6, 99)] == [
        (1.0, 0.0),
        (1.0, 0.0),
        (1.5, 2.5),
        (2.0, 5.0),
        (3.0, 5.0),
        (3.0, 5.0),
    ]
    model = nn.Sequential(BatchRenorm(2), nn.Identity(), BatchRenorm(2))
    handles = schedule.attach(model)
    for _ in range(5):
        model(torch.randn(4, 2))
    assert (model[2].r_max, model[2].d_max) == (2.0, 5.0)  # set from step 4, before the fifth forward
    for handle in handles:
        handle.remove()
    with pytest.raises(ValueError, match="no BatchRenorm"):
        schedule.attach(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="warmup_steps"):
        RenormWarmup(warmup_steps=10, r_max_steps=5)


def test_renorm_rejects_bad_input():
    with pytest.raises(ValueError, match="r_max must be >= 1"):
        BatchRenorm(3, r_max=0.5)
    with pytest.raises(ValueError, match="d_max"):
        BatchRenorm(3, d_max=-1.0)
    with pytest.raises(ValueError, match="Keras momentum"):
        BatchRenorm(3, momentum=0.99 * 2)
    with pytest.raises(ValueError, match="num_features"):
        BatchRenorm(0)
    layer = BatchRenorm(3)
    with pytest.raises(ValueError, match="expected 3 channels"):
        layer(torch.randn(4, 5))
    with pytest.raises(TypeError, match="floating-point"):
        layer(torch.ones(4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        layer(torch.randn(1, 3))
    with pytest.raises(ValueError, match="NaN"):
        layer(torch.full((4, 3), float("nan")))
    with pytest.raises(ValueError, match="r_max"):
        layer.r_max = 0.0


# ----------------------------------------------------------------------------- GhostBatchNorm


@pytest.mark.parametrize("n, virtual, momentum", [(12, 4, 0.1), (10, 4, 0.3), (10, 4, None), (6, 8, 0.1)])
def test_ghost_equals_a_loop_of_batchnorm_calls(n, virtual, momentum):
    torch.manual_seed(0)
    ghost = GhostBatchNorm(3, virtual, momentum=momentum, dtype=torch.float64)
    ref = nn.BatchNorm2d(3, momentum=momentum, dtype=torch.float64)
    with torch.no_grad():
        for layer in (ghost, ref):
            layer.weight.copy_(torch.tensor([0.5, 2.0, -1.0]))
            layer.bias.copy_(torch.tensor([0.1, 0.0, 3.0]))
    for x in shifted_batches(2, (n, 3, 2, 3)):
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya = ghost(xa)
        yb = torch.cat([ref(chunk) for chunk in xb.split(virtual)])
        close(ya, yb)
        (ya.square()).sum().backward()
        (yb.square()).sum().backward()
        close(xa.grad, xb.grad)
    close(ghost.weight.grad, ref.weight.grad)
    close(ghost.running_mean, ref.running_mean)
    close(ghost.running_var, ref.running_var)
    assert int(ghost.num_batches_tracked) == int(ref.num_batches_tracked)
    ghost.eval(), ref.eval()
    x = torch.randn(5, 3, 2, 3, dtype=torch.float64)
    close(ghost(x), ref(x))


@pytest.mark.parametrize(
    "make", [BatchNorm, BatchRenorm, lambda c, **kw: GhostBatchNorm(c, 2, **kw)], ids=["bn", "renorm", "ghost"]
)
def test_batch_norms_validate_their_settings_alike(make):
    # One rule for every layer with running statistics: eps finite and > 0 (0 divides by zero on a constant
    # channel), momentum in [0, 1] or None (PyTorch's convention; a Keras 0.99 is a PyTorch 0.01).
    for eps in (0, -1e-5, float("nan"), float("inf"), "1e-5", True):
        with pytest.raises(ValueError, match="eps must be a positive number"):
            make(3, eps=eps)
    for momentum in (-0.1, 1.5, 0.99 * 2, "0.1", True):
        with pytest.raises(ValueError, match="Keras momentum of 0.99 is a PyTorch momentum of 0.01"):
            make(3, momentum=momentum)
    for momentum in (0, 0.0, 0.1, 1.0, None):
        assert make(3, momentum=momentum).momentum == momentum
    for num_features in (0, -2, 2.0, True):
        with pytest.raises(ValueError, match="num_features must be a positive integer"):
            make(num_features)


def test_ghost_rejects_bad_input():
    with pytest.raises(ValueError, match="virtual_batch_size"):
        GhostBatchNorm(3, 0)
    with pytest.raises(ValueError, match="momentum"):
        GhostBatchNorm(3, 4, momentum=1.5)
    layer = GhostBatchNorm(3, 4)
    with pytest.raises(ValueError, match="multiple of 4"):
        layer(torch.randn(9, 3))  # the last virtual batch would hold one sample
    with pytest.raises(ValueError, match="expected 3 channels"):
        layer(torch.randn(8, 2, 4, 4))


# ----------------------------------------------------------------------------- weight norm


@pytest.mark.parametrize(
    "make, dim, x_shape",
    [
        (lambda: nn.Linear(5, 4), 0, (3, 5)),
        (lambda: nn.Linear(5, 4), 1, (3, 5)),
        (lambda: nn.Linear(5, 4), None, (3, 5)),
        (lambda: nn.Conv2d(2, 3, 3), 0, (2, 2, 6, 6)),
        (lambda: nn.Conv2d(2, 3, 3), 1, (2, 2, 6, 6)),
    ],
)
def test_weight_norm_equals_torch_forward_and_gradients(make, dim, x_shape):
    torch.manual_seed(0)
    base = make().double()
    ours, ref = add_weight_norm(copy.deepcopy(base), dim=dim), torch_weight_norm(copy.deepcopy(base), dim=dim)
    close(ours.weight, base.weight)  # initialization keeps the function
    with torch.no_grad():  # move g and v away from the initialization so ||v|| != g
        g = torch.rand_like(ref.parametrizations.weight.original0) + 0.5
        v = torch.randn_like(ref.parametrizations.weight.original1)
        for layer in (ours, ref):
            layer.parametrizations.weight.original0.copy_(g)
            layer.parametrizations.weight.original1.copy_(v)
    x = torch.randn(x_shape, dtype=torch.float64)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), ref(xb)
    close(ya, yb)
    ya.square().sum().backward()
    yb.square().sum().backward()
    close(xa.grad, xb.grad)
    for name in ("original0", "original1"):
        close(getattr(ours.parametrizations.weight, name).grad, getattr(ref.parametrizations.weight, name).grad)


def test_weight_norm_negative_dim_counts_from_the_end():
    # Unlike torch's weight_norm, where dim=-1 means "one norm for the whole tensor" (dim=None).
    torch.manual_seed(0)
    base = nn.Conv2d(2, 3, 3).double()
    ours, ref = add_weight_norm(copy.deepcopy(base), dim=-1), torch_weight_norm(copy.deepcopy(base), dim=3)
    assert ours.parametrizations.weight.original0.shape == ref.parametrizations.weight.original0.shape == (1, 1, 1, 3)


def test_apply_weight_norm_and_bad_input():
    model = apply_weight_norm(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2)))
    assert {n for n, _ in model.named_parameters() if "original" in n} == {
        "0.parametrizations.weight.original0",
        "0.parametrizations.weight.original1",
        "3.parametrizations.weight.original0",
        "3.parametrizations.weight.original1",
    }
    with pytest.raises(ValueError, match="no parameter 'kernel'"):
        add_weight_norm(nn.Linear(2, 2), "kernel")
    with pytest.raises(ValueError, match="out of range"):
        add_weight_norm(nn.Linear(2, 2), dim=2)
    with pytest.raises(TypeError, match="nn.Module"):
        add_weight_norm(torch.zeros(2, 2))
    zero = nn.Linear(2, 2)
    with torch.no_grad():
        zero.weight[0] = 0
    with pytest.raises(ValueError, match="norm 0"):
        add_weight_norm(zero)
    with pytest.raises(ValueError, match="found no"):
        apply_weight_norm(nn.ReLU())


# ----------------------------------------------------------------------------- AdaBN


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Flatten(),
        nn.Linear(3 * 4 * 4, 4),
        nn.BatchNorm1d(4),
    ).double()
    with torch.no_grad():  # pretend training left statistics behind
        model[1].running_mean.fill_(3.0)
        model[6].running_var.fill_(7.0)
    return model


def test_adabn_one_batch_gives_the_exact_population_statistics():
    model = _model()
    model.train()
    model[3].eval()  # a mixed state that must come back as it was
    x = 2.0 + 3.0 * torch.randn(40, 1, 6, 6, dtype=torch.float64)
    returned = adapt_batchnorm(model, (x, torch.zeros(40)), batch_size=40)
    assert returned is model
    with torch.no_grad():
        h = model[0](x)
        close(model[1].running_mean, h.mean((0, 2, 3)))
        close(model[1].running_var, h.var((0, 2, 3), unbiased=True))
        # The second layer sees the first one normalized with the batch statistics, dropout off.
        h2 = model[5](
            model[2](nn.functional.batch_norm(h, None, None, model[1].weight, model[1].bias, training=True)).flatten(1)
        )
        close(model[6].running_mean, h2.mean(0))
        close(model[6].running_var, h2.var(0, unbiased=True))
    assert [m.training for m in model] == [True, True, True, False, True, True, True]
    assert model[1].momentum == 0.1 and model[6].momentum == 0.1


def test_adabn_equal_batches_average_the_batch_statistics():
    model = _model().eval()
    x = torch.randn(30, 1, 6, 6, dtype=torch.float64)
    adapt_batchnorm(model, x, batch_size=10)
    with torch.no_grad():
        h = model[0](x)
    close(model[1].running_mean, h.mean((0, 2, 3)))  # equal batches: the mean is exact
    close(model[1].running_var, torch.stack([c.var((0, 2, 3)) for c in h.split(10)]).mean(0))
    assert not any(m.training for m in model.modules())


@pytest.mark.parametrize("kind", ["renorm", "ghost", "bnlib"])
def test_adabn_handles_our_layers(kind):
    if kind == "renorm":
        layer = BatchRenorm(2, r_max=3.0, d_max=5.0, dtype=torch.float64)
    elif kind == "ghost":
        layer = GhostBatchNorm(2, 5, dtype=torch.float64)
    else:
        from bnlib.layers import batch_norm

        layer = batch_norm.BatchNorm(2, dtype=torch.float64)
    model = nn.Sequential(layer).eval()
    assert batchnorm_layers(model) == [layer]
    x = 4.0 + torch.randn(20, 2, dtype=torch.float64)
    adapt_batchnorm(model, x, batch_size=20 if kind != "ghost" else 10)
    close(layer.running_mean, x.mean(0))
    if kind == "renorm":
        close(layer.running_std, (x.var(0, unbiased=False) + layer.eps).sqrt())
        assert (layer.r_max, layer.d_max) == (3.0, 5.0)
    else:
        chunks = x.split(5) if kind == "ghost" else [x]
        close(layer.running_var, torch.stack([c.var(0) for c in chunks]).mean(0))
    assert layer.momentum == 0.1 and not layer.training


def test_adabn_rejects_bad_input():
    with pytest.raises(ValueError, match="no batch-norm layer"):
        adapt_batchnorm(nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2)), torch.randn(4, 2), batch_size=2)
    model = nn.Sequential(nn.BatchNorm1d(2))
    with pytest.raises(TypeError, match="tensor x or a tuple"):
        adapt_batchnorm(model, [[1.0, 2.0]], batch_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        adapt_batchnorm(model, torch.randn(4, 2), batch_size=0)
    with pytest.raises(ValueError, match="at least one"):
        adapt_batchnorm(model, torch.randn(0, 2), batch_size=2)
    with pytest.raises(TypeError, match="nn.Module"):
        adapt_batchnorm("model", torch.randn(4, 2), batch_size=2)
    with torch.no_grad():
        model[0].running_mean.fill_(5.0)
    before = {name: b.clone() for name, b in model[0].named_buffers()}
    with pytest.raises(ValueError, match="more than 1 value"):  # a failing pass still restores the state
        adapt_batchnorm(model, torch.randn(3, 2), batch_size=2)  # the last batch holds one sample
    assert model.training and model[0].momentum == 0.1
    for name, value in model[0].named_buffers():
        assert torch.equal(value, before[name]), f"{name} was not restored after the failed pass"


# ----------------------------------------------------------------------------- factory


def test_make_norm_builds_our_kinds_and_lenet_uses_them():
    from bnlib.layers import known_norms, make_norm
    from bnlib.models import LeNet5

    assert {"batch_renorm", "ghost"} <= set(known_norms())
    assert isinstance(make_norm("batch_renorm", 4, r_max=2.0), BatchRenorm)
    ghost = make_norm("ghost", 4, virtual_batch_size=8)
    assert isinstance(ghost, GhostBatchNorm) and ghost.virtual_batch_size == 8
    for kind in ("batch_renorm", "ghost"):
        assert LeNet5(norm=kind)(torch.zeros(4, 1, 32, 32)).shape == (4, 10)


# ----------------------------------------------------------------------------- the axes figure


@pytest.mark.parametrize("method", ["Batch norm", "Layer norm", "Instance norm", "Group norm", "Ghost batch norm"])
def test_figure_groups_are_the_layers_statistics(method):
    """Normalizing each labelled group of cells on its own reproduces the layer: the picture is the layer's maths."""
    from bnlib import functional as F
    from bnlib.plotting import normalization_groups

    labels = torch.from_numpy(normalization_groups(method, batch=6, channels=6, spatial=4, groups=2, virtual_batches=2))
    x = torch.randn(6, 6, 4, dtype=torch.float64)
    expected = torch.empty_like(x)
    for label in labels.unique():
        cells = labels == label
        values = x[cells]
        expected[cells] = (values - values.mean()) / (values.var(unbiased=False) + 1e-5).sqrt()
    layer = {
        "Batch norm": F.batch_norm,
        "Layer norm": F.layer_norm,
        "Instance norm": F.instance_norm,
        "Group norm": lambda t: F.group_norm(t, 2),
        "Ghost batch norm": GhostBatchNorm(6, 3, affine=False, dtype=torch.float64),
    }[method]
    close(layer(x), expected, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "ours, theirs",
    [
        (lambda: BatchNorm(3), lambda: nn.BatchNorm2d(3)),
        (lambda: BatchRenorm(3, r_max=1.0, d_max=0.0), lambda: nn.BatchNorm2d(3)),
        (lambda: GhostBatchNorm(3, 8), lambda: nn.BatchNorm2d(3)),
        (lambda: LayerNorm(3), lambda: nn.GroupNorm(1, 3)),
        (lambda: InstanceNorm(3), lambda: nn.InstanceNorm2d(3, affine=True)),
        (lambda: GroupNorm(3, 3), lambda: nn.GroupNorm(3, 3)),
    ],
    ids=["batch", "renorm", "ghost", "layer", "instance", "group"],
)
def test_reduced_precision_input_with_float32_state_works_as_in_torch(ours, theirs, dtype):
    # Under autocast a conv hands a float16/bfloat16 tensor to a norm whose state stays float32.
    ours, theirs = ours(), theirs()
    x = (2 + 3 * torch.randn(8, 3, 5, 5, generator=torch.Generator().manual_seed(0))).to(dtype)
    x_ours, x_theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ours, y_theirs = ours(x_ours), theirs(x_theirs)
    assert y_ours.dtype == y_theirs.dtype == dtype
    tolerance = dict(atol=2e-2, rtol=2e-2) if dtype == torch.bfloat16 else dict(atol=3e-3, rtol=3e-3)
    torch.testing.assert_close(y_ours.float(), y_theirs.float(), **tolerance)
    (y_ours.float() ** 2).sum().backward()
    (y_theirs.float() ** 2).sum().backward()
    assert x_ours.grad.dtype == dtype
    torch.testing.assert_close(x_ours.grad.float(), x_theirs.grad.float(), atol=0.1, rtol=5e-2)
    for name in ("running_mean", "running_var"):
        if hasattr(ours, name) and getattr(ours, name) is not None:
            assert getattr(ours, name).dtype == torch.float32
            torch.testing.assert_close(getattr(ours, name), getattr(theirs, name), atol=1e-3, rtol=1e-3)
    with pytest.raises(TypeError, match="parameters but got a torch.float64 input"):
        ours(x.double())  # other mismatches are still refused, with a message


# ----------------------------------------------------------------------------- shared base and checks


@pytest.mark.parametrize(
    "make",
    [
        lambda: BatchRenorm(3, r_max=1.0, d_max=0.0, dtype=torch.float16),
        lambda: GhostBatchNorm(3, 4, dtype=torch.float16),
    ],
    ids=["renorm", "ghost"],
)
def test_float16_layers_compute_in_float32(make):
    # Input near 1000: float16 squares overflow; the layer computes in float32 and stores rounded statistics.
    layer = make()
    reference = make().float()
    x = (1000 + 10 * torch.randn(8, 3, 4, 4, generator=torch.Generator().manual_seed(0))).half()
    y, y_ref = layer(x), reference(x.float())
    assert y.dtype == torch.float16 and torch.isfinite(y).all()
    torch.testing.assert_close(y.float(), y_ref, atol=3e-2, rtol=1e-2)
    for name, buffer in layer.named_buffers():
        if buffer.is_floating_point():
            assert buffer.dtype == torch.float16
            torch.testing.assert_close(buffer.float(), getattr(reference, name), atol=0.1, rtol=1e-3, msg=name)
    assert int(layer.num_batches_tracked) == int(reference.num_batches_tracked)


def test_every_norm_layer_shares_the_base_and_its_reprs_are_unchanged():
    from bnlib.layers import NoisyBatchNorm
    from bnlib.layers._base import NormBase, RunningStatsNorm

    running = [BatchNorm(3), BatchRenorm(3), GhostBatchNorm(3, 2)]
    plain = [LayerNorm(3), InstanceNorm(3), GroupNorm(1, 3), NoisyBatchNorm(3)]
    assert all(isinstance(m, RunningStatsNorm) for m in running)
    assert all(isinstance(m, NormBase) and not isinstance(m, RunningStatsNorm) for m in plain)
    assert [m.extra_repr() for m in running + plain] == [
        "3, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True",
        "3, eps=1e-05, momentum=0.1, r_max=1, d_max=0, affine=True",
        "3, virtual_batch_size=2, eps=1e-05, momentum=0.1, affine=True",
        "3, eps=1e-05, affine=True",
        "3, eps=1e-05, affine=True",
        "1, 3, eps=1e-05, affine=True",
        "3, mean_range=1, scale_range=(1.0, 3.0), jitter=0.1",
    ]
    for layer in running:  # one reset for all: running mean 0, spread 1, counter 0
        layer(torch.randn(4, 3) * 3 + 2)
        layer.reset_parameters()
        assert int(layer.num_batches_tracked) == 0 and layer.running_mean.eq(0).all()
        assert next(b for n, b in layer.named_buffers() if n in ("running_var", "running_std")).eq(1).all()


def test_numpy_scalars_are_accepted_and_strings_refused_everywhere():
    from bnlib.layers import NoisyBatchNorm

    assert GhostBatchNorm(np.int64(3), np.int32(4), momentum=np.float32(0.5)).virtual_batch_size == 4
    assert BatchRenorm(3, r_max=np.float64(2.0), d_max=np.int64(1)).d_max == 1.0
    assert RenormWarmup(warmup_steps=np.int64(2), r_max_steps=np.int64(4), d_max_steps=3)(3) == (2.0, 5.0)
    assert GroupNorm(np.int64(2), np.int64(4)).num_groups == 2
    noisy = NoisyBatchNorm(np.int64(3), mean_range=np.float32(0.5), scale_range=(1, np.float64(2.0)))
    assert noisy.mean_range == 0.5 and noisy.scale_range == (1.0, 2.0)
    for bad, message in [
        (lambda: GhostBatchNorm(3, "4"), "virtual_batch_size must be a positive integer"),
        (lambda: BatchRenorm(3, r_max="2"), "r_max must be a positive number"),
        (lambda: NoisyBatchNorm(3, jitter=float("nan")), "jitter must be a number >= 0"),
        (lambda: NoisyBatchNorm(3, scale_range=(2.0, 1.0)), r"0 < low <= high"),
        (lambda: GroupNorm("2", 4), "num_groups must be a positive integer"),
        (lambda: RenormWarmup(warmup_steps=1.5), "warmup_steps must be a non-negative integer"),
    ]:
        with pytest.raises(ValueError, match=message):
            bad()
    with pytest.raises(ValueError, match=r"NoisyBatchNorm\(3\) expected 3 channels at dim 1"):
        NoisyBatchNorm(3)(torch.randn(4, 2))


@pytest.mark.parametrize("training", [True, False])
def test_renorm_and_ghost_keep_channels_last(training):
    x = torch.randn(8, 3, 4, 5).to(memory_format=torch.channels_last)
    for layer in (BatchRenorm(3, r_max=2.0, d_max=1.0), GhostBatchNorm(3, 3)):
        twin = copy.deepcopy(layer).train(training)
        y = layer.train(training)(x)
        assert y.is_contiguous(memory_format=torch.channels_last), type(layer).__name__
        torch.testing.assert_close(y, twin(x.contiguous()))
