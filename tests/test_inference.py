"""bnlib.inference: folding batch norm away, and recomputing its statistics, against PyTorch."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from bnlib.inference import fold_batchnorm, is_batchnorm, recompute_batchnorm_statistics
from bnlib.models import LeNet5


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every batch norm non-trivial gamma, beta and running statistics (as after training)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in filter(is_batchnorm, model.modules()):
            c = bn.running_mean.numel()
            bn.running_mean.copy_(torch.randn(c, generator=g))
            bn.running_var.copy_(torch.rand(c, generator=g) * 2 + 0.1)
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


def test_folds_bnlib_ghost_batchnorm_and_refuses_batch_renorm():
    from bnlib import layers

    model = randomize(nn.Sequential(nn.Conv2d(1, 3, 3), layers.GhostBatchNorm(3, virtual_batch_size=2)))
    folded = fold_batchnorm(model)
    x = torch.randn(4, 1, 6, 6)
    torch.testing.assert_close(folded(x), model.eval()(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"1 \(BatchRenorm\).*not a batch norm"):
        fold_batchnorm(nn.Sequential(nn.Conv2d(1, 3, 3), layers.BatchRenorm(3)))
