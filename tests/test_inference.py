"""bnlib.inference: folding batch norm away, and re-estimating its statistics (exact and AdaBN), against PyTorch."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from bnlib import layers
from bnlib.inference import (
    adapt_batchnorm,
    batchnorm_layers,
    fold_batchnorm,
    is_batchnorm,
    recompute_batchnorm_statistics,
)
from bnlib.models import LeNet5


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every batch norm non-trivial gamma, beta and running statistics (as after training)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in filter(is_batchnorm, model.modules()):
            c = bn.running_mean.numel()
            bn.running_mean.copy_(torch.randn(c, generator=g))
            spread = bn.running_std if isinstance(bn, layers.BatchRenorm) else bn.running_var
            spread.copy_(torch.rand(c, generator=g) * 2 + 0.1)
            if bn.weight is not None:
                bn.weight.copy_(torch.randn(c, generator=g))
                bn.bias.copy_(torch.randn(c, generator=g))
    return model


def has_batchnorm(model: nn.Module) -> bool:
    return any(is_batchnorm(m) for m in model.modules())


@pytest.mark.parametrize(
    ("make", "shape"),
    [
        (lambda: nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU()), (4, 3, 8, 8)),
        (lambda: nn.Sequential(nn.Conv2d(3, 5, 3, bias=False), nn.BatchNorm2d(5, affine=False)), (4, 3, 8, 8)),
        (lambda: nn.Sequential(nn.Conv2d(4, 6, 3, groups=2, stride=2), nn.BatchNorm2d(6, eps=1e-3)), (4, 4, 9, 9)),
        (lambda: nn.Sequential(nn.Conv1d(2, 3, 3), nn.BatchNorm1d(3), nn.Tanh()), (4, 2, 10)),
        (
            lambda: nn.Sequential(nn.Flatten(), nn.Linear(12, 7), nn.BatchNorm1d(7), nn.ReLU(), nn.Linear(7, 2)),
            (4, 3, 4),
        ),
        (
            lambda: nn.Sequential(
                nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4)), nn.ReLU(), nn.Linear(4, 3), nn.BatchNorm1d(3)
            ),
            (4, 5),
        ),
    ],
)
def test_folded_equals_original_in_eval(make, shape):
    torch.manual_seed(0)
    model = randomize(make()).train()
    before = copy.deepcopy(model.state_dict())
    folded = fold_batchnorm(model)
    assert not has_batchnorm(folded) and not folded.training
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "original changed"
    x = torch.randn(shape)
    torch.testing.assert_close(folded(x), model.eval()(x), atol=1e-5, rtol=1e-5)


def test_matches_torch_fusion_utilities():
    torch.manual_seed(1)
    model = randomize(
        nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 36, 5), nn.BatchNorm1d(5))
    ).eval()
    folded = fold_batchnorm(model)
    conv = fuse_conv_bn_eval(model[0], model[1])
    linear = fuse_linear_bn_eval(model[3], model[4])
    for ours, theirs in ((folded[0], conv), (folded[3], linear)):
        torch.testing.assert_close(ours.weight, theirs.weight, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(ours.bias, theirs.bias, atol=1e-6, rtol=1e-6)
    assert isinstance(folded[1], nn.Identity) and isinstance(folded[4], nn.Identity)


def test_lenet5_with_norm_before_activation_trained_a_little():
    torch.manual_seed(0)
    model = LeNet5(norm=nn.BatchNorm2d, norm_position="before")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.rand(64, 1, 32, 32), torch.randint(0, 10, (64,))
    for _ in range(3):  # real running statistics and gammas, not the initial ones
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    folded = fold_batchnorm(model)
    assert not has_batchnorm(folded)
    assert sum(p.numel() for p in folded.parameters()) == sum(p.numel() for p in LeNet5().parameters())
    torch.testing.assert_close(folded(x), model.eval()(x), atol=1e-5, rtol=1e-4)


def test_lenet5_with_bnlib_batchnorm():
    from bnlib import layers

    torch.manual_seed(0)
    model = randomize(LeNet5(norm=layers.BatchNorm, norm_position="before"))
    folded = fold_batchnorm(model)
    assert not has_batchnorm(folded)
    x = torch.rand(8, 1, 32, 32)
    torch.testing.assert_close(folded(x), model.eval()(x), atol=1e-5, rtol=1e-4)


def test_refuses_batchnorm_after_the_activation_as_in_the_lenet5_source():
    model = LeNet5(norm=nn.BatchNorm2d)  # conv, tanh, BN: the source's layout
    with pytest.raises(ValueError, match=r"features\.2 \(BatchNorm2d\).*follows features\.1 \(Tanh\)"):
        fold_batchnorm(model)


def test_refuses_batchnorm_without_running_statistics():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, track_running_stats=False))
    with pytest.raises(ValueError, match=r"1 \(BatchNorm2d\).*track_running_stats=False"):
        fold_batchnorm(model)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(3)
        self.linear = nn.Linear(3, 3)

    def forward(self, x):
        return self.linear(self.bn(x))


class NotAffineInEval(nn.BatchNorm1d):
    def forward(self, x):  # uses batch statistics even in eval mode
        return nn.functional.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (nn.Sequential(nn.BatchNorm1d(3), nn.Linear(3, 2)), r"0 \(BatchNorm1d\).*first layer"),
        (nn.Sequential(Block()), r"0\.bn \(BatchNorm1d\).*own forward"),
        (nn.BatchNorm1d(3), r"model itself"),
        (nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(5)), r"5 channels but 0 \(Linear\) produces 4"),
        (nn.Sequential(nn.Linear(3, 3), nn.MaxPool1d(1), nn.BatchNorm1d(3)), r"follows 1 \(MaxPool1d\)"),
        (nn.Sequential(nn.ConvTranspose2d(3, 3, 2), nn.BatchNorm2d(3)), r"follows 0 \(ConvTranspose2d\)"),
        (nn.Sequential(nn.Linear(3, 4), NotAffineInEval(4)), r"not the affine map"),
        (
            nn.Sequential(nn.Conv2d(1, 3, 3), nn.InstanceNorm2d(3, track_running_stats=True)),
            r"1 \(InstanceNorm2d\).*not a batch norm",
        ),
    ],
)
def test_refuses_layouts_it_cannot_fold(model, message):
    with pytest.raises(ValueError, match=message):
        fold_batchnorm(model)


def test_refuses_shared_and_parametrized_layers():
    shared = nn.Linear(3, 3)
    with pytest.raises(ValueError, match="used 2 times"):
        fold_batchnorm(nn.Sequential(shared, nn.BatchNorm1d(3), shared))
    weight_normed = nn.utils.parametrizations.weight_norm(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="parametrized"):
        fold_batchnorm(nn.Sequential(weight_normed, nn.BatchNorm1d(3)))
    with pytest.raises(TypeError, match="got str"):
        fold_batchnorm("model")


def test_model_without_batchnorm_comes_back_unchanged():
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU())
    folded = fold_batchnorm(model)
    assert folded is not model and not folded.training
    torch.testing.assert_close(folded[0].weight, model[0].weight)


# recompute_batchnorm_statistics ----------------------------------------------------------------


def two_bn_net() -> nn.Module:
    torch.manual_seed(0)
    return randomize(
        nn.Sequential(
            nn.Conv2d(1, 3, 3),
            nn.BatchNorm2d(3),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Flatten(),
            nn.Linear(3 * 36, 4),
            nn.BatchNorm1d(4),
        )
    )


def test_population_statistics_equal_those_computed_directly():
    model = two_bn_net().train()
    x = torch.randn(203, 1, 8, 8) * 2 + 1
    recompute_batchnorm_statistics(model, (x, torch.zeros(203)), batch_size=50)
    assert model.training and model[3].training, "training flags must be restored"
    with torch.no_grad():
        h1 = model[0](x).double()  # (N, 3, 6, 6): the first BN's input
        mean1 = h1.mean(dim=(0, 2, 3))
        var1 = h1.transpose(0, 1).reshape(3, -1).var(dim=1)  # unbiased, PyTorch's convention
        torch.testing.assert_close(model[1].running_mean.double(), mean1, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model[1].running_var.double(), var1, atol=1e-5, rtol=1e-5)
        model.eval()  # the second BN sees the first one with its new statistics, and dropout off
        h2 = model[5](model[4](model[3](model[2](model[1](model[0](x)))))).double()
        torch.testing.assert_close(model[6].running_mean.double(), h2.mean(0), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model[6].running_var.double(), h2.var(0), atol=1e-5, rtol=1e-5)
        out = model(x)  # so eval-mode BN standardizes this data exactly (before its affine map)
        z = (out - model[6].bias) / model[6].weight
        torch.testing.assert_close(z.mean(0), torch.zeros(4), atol=1e-4, rtol=0)


def test_result_does_not_depend_on_batch_size_and_accepts_numpy():
    x = torch.randn(64, 1, 8, 8)
    a = recompute_batchnorm_statistics(two_bn_net(), x, batch_size=64)
    b = recompute_batchnorm_statistics(two_bn_net(), x.numpy(), batch_size=7, device="cpu")
    for key in ("1.running_mean", "1.running_var", "6.running_mean", "6.running_var"):
        torch.testing.assert_close(a.state_dict()[key], b.state_dict()[key], atol=1e-5, rtol=1e-5)


def test_matches_torch_cumulative_average_with_one_batch_and_one_bn():
    # With one BN and the whole data set in one batch, PyTorch's momentum=None pass gives the same numbers.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 3), nn.BatchNorm1d(3))
    x = torch.randn(100, 5)
    reference = copy.deepcopy(model)
    reference[1].reset_running_stats()
    reference[1].momentum = None
    with torch.no_grad():
        reference.train()(x)
    recompute_batchnorm_statistics(model, x, batch_size=32)
    torch.testing.assert_close(model[1].running_mean, reference[1].running_mean)
    torch.testing.assert_close(model[1].running_var, reference[1].running_var)


@pytest.mark.parametrize(
    ("model", "data", "batch_size", "error", "message"),
    [
        (nn.Sequential(nn.Linear(2, 2)), torch.zeros(4, 2), 2, ValueError, "no batch-norm layer"),
        (
            nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2, track_running_stats=False)),
            torch.zeros(4, 2),
            2,
            ValueError,
            "track_running_stats=False",
        ),
        (
            nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)),
            torch.zeros(4, 2),
            0,
            ValueError,
            "batch_size must be a positive integer, got 0",
        ),
        (nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)), [[0.0, 1.0]], 2, TypeError, "data must be a tensor"),
        (nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)), torch.zeros(0, 2), 2, ValueError, "at least one example"),
        ("model", torch.zeros(4, 2), 2, TypeError, "got str"),
    ],
)
def test_recompute_refuses_bad_input(model, data, batch_size, error, message):
    with pytest.raises(error, match=message):
        recompute_batchnorm_statistics(model, data, batch_size=batch_size)


def test_numpy_statistics_agree():
    # An independent reference: NumPy on the flattened activations.
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3))
    x = torch.randn(30, 2, 6, 6)
    recompute_batchnorm_statistics(model, x, batch_size=8)
    h = model[0](x).detach().numpy().transpose(1, 0, 2, 3).reshape(3, -1).astype(np.float64)
    np.testing.assert_allclose(model[1].running_mean.numpy(), h.mean(1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model[1].running_var.numpy(), h.var(1, ddof=1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "make",
    [lambda: layers.GhostBatchNorm(3, virtual_batch_size=2), lambda: layers.BatchRenorm(3, r_max=3.0, d_max=5.0)],
)
def test_folds_bnlib_ghost_batchnorm_and_batch_renorm(make):
    model = randomize(nn.Sequential(nn.Conv2d(1, 3, 3), make()))
    folded = fold_batchnorm(model)
    assert isinstance(folded[1], nn.Identity)
    x = torch.randn(4, 1, 6, 6)
    torch.testing.assert_close(folded(x), model.eval()(x), atol=1e-5, rtol=1e-5)


# One definition of a batch-norm layer -----------------------------------------------------------


def every_kind() -> nn.Sequential:
    """One of each normalization layer bnlib or torch offers, each after a 1x1 convolution of 4 channels."""
    kinds = [
        nn.BatchNorm1d(4),
        layers.BatchNorm(4),
        layers.GhostBatchNorm(4, virtual_batch_size=4),
        layers.BatchRenorm(4),
        layers.NoisyBatchNorm(4, norm=nn.BatchNorm1d),  # not a batch norm itself; the one inside it is
        nn.BatchNorm1d(4, track_running_stats=False),  # a batch norm without running statistics
        nn.LayerNorm([4, 3]),
        nn.GroupNorm(2, 4),
        nn.InstanceNorm1d(4, track_running_stats=True),  # running statistics, but not a batch norm
    ]
    torch.manual_seed(0)
    return nn.Sequential(*(module for kind in kinds for module in (nn.Conv1d(4, 4, 1), kind)))


def test_one_definition_of_a_batchnorm_layer_everywhere():
    model = every_kind()
    names = {name for name, m in model.named_modules() if is_batchnorm(m)}
    assert names == {"1", "3", "5", "7", "9.norm", "11"}
    tracked = [m for m in model.modules() if is_batchnorm(m) and m is not model[11]]
    assert batchnorm_layers(model) == tracked
    x = torch.randn(64, 4, 3)  # (N, C, L): every layer here takes it
    for update in (recompute_batchnorm_statistics, adapt_batchnorm):
        model = every_kind()
        before = {name: b.clone() for name, b in model.named_buffers()}
        update(model, x, batch_size=32)
        changed = {name.rsplit(".", 1)[0] for name, b in model.named_buffers() if not torch.equal(b, before[name])}
        assert changed == {"1", "3", "5", "7", "9.norm"}, update.__name__  # the instance norm's statistics untouched
    folded = fold_batchnorm(nn.Sequential(*list(every_kind())[:8]))  # the batch norms directly after a convolution
    assert all(isinstance(folded[i], nn.Identity) for i in (1, 3, 5, 7)) and not has_batchnorm(folded)


def test_batch_renorm_statistics_are_recomputed_in_its_own_convention():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), layers.BatchRenorm(4, r_max=3.0, d_max=5.0))
    x = torch.randn(90, 3) * 3 + 2
    recompute_batchnorm_statistics(model, x, batch_size=40)
    with torch.no_grad():
        h = model[0](x).double()
    torch.testing.assert_close(model[1].running_mean.double(), h.mean(0), atol=1e-5, rtol=1e-5)
    expected = (h.var(0, unbiased=False) + model[1].eps).sqrt()  # the paper's sigma: biased variance, eps inside
    torch.testing.assert_close(model[1].running_std.double(), expected, atol=1e-5, rtol=1e-5)
    assert (model[1].r_max, model[1].d_max) == (3.0, 5.0)


# Never a silent NaN ----------------------------------------------------------------------------


def buffers_of(model):
    return {name: b.clone() for name, b in model.named_buffers()}


def assert_unchanged(model, before):
    for name, value in model.named_buffers():
        assert torch.equal(value, before[name]), f"{name} changed"


@pytest.mark.parametrize("update", [recompute_batchnorm_statistics, adapt_batchnorm])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_or_inf_data_is_refused_before_anything_changes(update, bad):
    model = two_bn_net()
    before = buffers_of(model)
    x = torch.randn(40, 1, 8, 8)
    x[7, 0, 3, 3] = bad
    x[30, 0, 0, 0] = bad
    with pytest.raises(
        ValueError, match=r"data holds 2 NaN or infinite value\(s\) in 2 of its 40 examples \(the first at index 7\)"
    ):
        update(model, (x, torch.zeros(40)), batch_size=16)
    assert_unchanged(model, before)


@pytest.mark.parametrize("update", [recompute_batchnorm_statistics, adapt_batchnorm])
def test_data_whose_statistics_overflow_is_refused_and_nothing_changes(update):
    # 1e20 is finite in float32, but its square is not: the variance would be inf in the float32 buffers.
    model = two_bn_net()
    before = buffers_of(model)
    with pytest.raises(
        ValueError,
        match=r"running_var of 1 \(BatchNorm2d\) would be NaN or infinite.*largest \|x\| in data is [0-9.]+e\+20",
    ):
        update(model, torch.randn(32, 1, 8, 8) * 1e20, batch_size=16)
    assert_unchanged(model, before)


def test_recompute_puts_every_statistic_back_when_interrupted_half_way():
    model = two_bn_net()
    before = buffers_of(model)

    def interrupt(module, args):
        raise KeyboardInterrupt

    model[6].register_forward_pre_hook(interrupt)  # the second batch norm: the first one is already written
    with pytest.raises(KeyboardInterrupt):
        recompute_batchnorm_statistics(model, torch.randn(20, 1, 8, 8), batch_size=10)
    assert_unchanged(model, before)


def bn_with(values, *, spread="running_var", eps=1e-5, **parameters):
    layer = layers.BatchRenorm(3) if spread == "running_std" else nn.BatchNorm1d(3, eps=eps)
    model = nn.Sequential(nn.Linear(2, 3), layer)
    with torch.no_grad():
        getattr(layer, spread).copy_(torch.tensor(values))
        for name, value in parameters.items():
            getattr(layer, name).copy_(torch.tensor(value))
    return model


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (
            bn_with([1.0, -0.5, 2.0]),
            r"running_var holds 0 NaN or infinite and 1 out-of-range.*channels \[1\]; first -0\.5",
        ),
        (bn_with([1.0, float("nan"), 2.0]), r"running_var holds 1 NaN or infinite and 0 out-of-range.*channels \[1\]"),
        (bn_with([float("inf"), 1.0, 1.0]), r"running_var holds 1 NaN or infinite.*channels \[0\]"),
        (
            bn_with([1.0, 0.0, 1.0], spread="running_std"),
            r"running_std holds .* 1 out-of-range.*must be finite and > 0",
        ),
        (bn_with([1.0, 1.0, 1.0], running_mean=[0.0, float("nan"), 0.0]), r"running_mean holds 1 NaN"),
        (bn_with([1.0, 1.0, 1.0], weight=[float("inf"), 1.0, 1.0]), r"weight \(gamma\) holds 1 NaN"),
        (bn_with([1.0, 0.0, 1.0], eps=0.0), r"sqrt\(running_var \+ eps\) is 0"),
    ],
)
def test_fold_refuses_statistics_that_would_give_nan_weights(model, message):
    with pytest.raises(ValueError, match=r"cannot fold 1 \((BatchNorm1d|BatchRenorm)\): .*" + message):
        fold_batchnorm(model)


class NaNInEval(nn.BatchNorm1d):
    def forward(self, x):  # valid statistics, but a NaN output in eval mode
        return super().forward(x) * (float("nan") if not self.training else 1.0)


def test_folds_self_check_does_not_pass_on_nan():
    with pytest.raises(ValueError, match=r"1 \(NaNInEval\): in eval mode it is not the affine map"):
        fold_batchnorm(nn.Sequential(nn.Linear(2, 3), NaNInEval(3)))


def test_the_moved_names_are_still_importable_from_bnlib_layers():
    from bnlib.layers import adapt_batchnorm as moved
    from bnlib.layers import batchnorm_layers as moved_list

    assert moved is adapt_batchnorm and moved_list is batchnorm_layers
