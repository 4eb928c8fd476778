"""LeNet-5 and the MLP: architecture, normalization placement, the source's init, bad arguments."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnlib.models import MLP, LeNet5, init_like_source, make_activation


def reference_lenet5(model: LeNet5, x: torch.Tensor) -> torch.Tensor:
    """LeNet-5 written out with torch.nn.functional, reading the weights of ``model`` (no norm)."""
    conv1, conv2 = model.features[0], model.features[3]
    fc1, fc2, fc3 = model.classifier[1], model.classifier[3], model.classifier[5]
    h = F.avg_pool2d(torch.tanh(F.conv2d(x, conv1.weight, conv1.bias)), 2)
    h = F.avg_pool2d(torch.tanh(F.conv2d(h, conv2.weight, conv2.bias)), 2)
    h = h.reshape(len(x), -1)
    h = torch.tanh(F.linear(h, fc1.weight, fc1.bias))
    h = torch.tanh(F.linear(h, fc2.weight, fc2.bias))
    return F.linear(h, fc3.weight, fc3.bias)


def test_lenet5_matches_a_functional_reference():
    torch.manual_seed(0)
    model = LeNet5()
    x = torch.rand(5, 1, 32, 32)
    torch.testing.assert_close(model(x), reference_lenet5(model, x))


def test_lenet5_parameter_count_is_that_of_the_architecture():
    expected = (6 * 25 + 6) + (16 * 6 * 25 + 16) + (400 * 120 + 120) + (120 * 84 + 84) + (84 * 10 + 10)
    assert sum(p.numel() for p in LeNet5().parameters()) == expected
    with_bn = LeNet5(nn.BatchNorm2d)
    assert sum(p.numel() for p in with_bn.parameters()) == expected + 2 * (6 + 16)


@pytest.mark.parametrize(
    ("position", "order"), [("after", ["Conv2d", "Tanh", "BatchNorm2d"]), ("before", ["Conv2d", "BatchNorm2d", "Tanh"])]
)
def test_norm_position(position, order):
    names = [type(m).__name__ for m in LeNet5(nn.BatchNorm2d, norm_position=position).features]
    assert names == [*order, "AvgPool2d", *order, "AvgPool2d"]


def test_norm_factory_receives_the_channel_counts():
    seen = []

    def factory(num_features):
        seen.append(num_features)
        return nn.Identity()

    LeNet5(factory)
    MLP((784, 100, 50, 10), factory)
    assert seen == [6, 16, 100, 50]


def test_softmax_output_is_softmax_of_the_logits():
    torch.manual_seed(1)
    plain = LeNet5()
    buggy = LeNet5(softmax_output=True)
    buggy.load_state_dict(plain.state_dict())
    x = torch.rand(4, 1, 32, 32)
    torch.testing.assert_close(buggy(x), torch.softmax(plain(x), dim=1))
    torch.testing.assert_close(buggy(x).sum(dim=1), torch.ones(4))


def test_activation_and_pool_options():
    model = LeNet5(activation="relu", pool="max")
    kinds = {type(m).__name__ for m in model.modules()}
    assert {"ReLU", "MaxPool2d"} <= kinds and "Tanh" not in kinds and "AvgPool2d" not in kinds
    assert isinstance(make_activation(nn.GELU), nn.GELU)


def test_init_like_source_is_xavier_uniform_with_biases_001():
    torch.manual_seed(3)
    model = init_like_source(LeNet5(nn.BatchNorm2d))
    torch.manual_seed(3)
    reference = LeNet5(nn.BatchNorm2d)
    for module in reference.modules():  # the same draws, in the same order, with torch's own initializer
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(module.weight)
            nn.init.constant_(module.bias, 0.01)
    for (name, p), q in zip(model.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(p, q, msg=name)
    conv = model.features[0]
    bound = math.sqrt(6 / (25 * 1 + 25 * 6))
    assert conv.weight.abs().max() <= bound and torch.all(conv.bias == 0.01)
    assert torch.all(model.features[2].weight == 1) and torch.all(model.features[2].bias == 0)  # BN untouched


def test_mlp_matches_the_sources_and_the_bn_paper():
    source = MLP(norm=nn.BatchNorm1d)
    assert [type(m).__name__ for m in source.layers] == [
        "Linear",
        "BatchNorm1d",
        "ReLU",
        "Linear",
        "BatchNorm1d",
        "ReLU",
        "Linear",
    ]
    assert [m.out_features for m in source.layers if isinstance(m, nn.Linear)] == [512, 256, 10]
    paper = MLP((784, 100, 100, 100, 10), nn.BatchNorm1d, activation="sigmoid", norm_position="before")
    assert [type(m).__name__ for m in paper.layers][:3] == ["Linear", "BatchNorm1d", "Sigmoid"]
    assert paper(torch.rand(3, 784)).shape == (3, 10)
    after = MLP((4, 3, 2), nn.BatchNorm1d, norm_position="after")
    assert [type(m).__name__ for m in after.layers] == ["Linear", "ReLU", "BatchNorm1d", "Linear"]


def test_string_norm_uses_the_layer_factory():
    model = LeNet5("batch")
    norms = [m for m in model.features if not isinstance(m, (nn.Conv2d, nn.Tanh, nn.AvgPool2d))]
    assert [getattr(m, "num_features", None) for m in norms] == [6, 16]
    assert model(torch.rand(2, 1, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(
    ("make", "error", "words"),
    [
        (lambda: LeNet5(norm=5), TypeError, "norm must be"),
        (lambda: LeNet5(norm=lambda n: "not a module"), TypeError, "must return an nn.Module"),
        (lambda: LeNet5(norm_position="middle"), ValueError, "'after' or 'before'"),
        (lambda: LeNet5(activation="swish"), ValueError, "unknown activation"),
        (lambda: LeNet5(activation=3), TypeError, "activation must be"),
        (lambda: LeNet5(pool="min"), ValueError, "pool must be"),
        (lambda: MLP((784,)), ValueError, "at least two"),
        (lambda: MLP((784, 0, 10)), ValueError, "positive integers"),
    ],
)
def test_bad_arguments(make, error, words):
    with pytest.raises(error, match=words):
        make()


def test_wrong_input_shapes_say_how_to_fix():
    with pytest.raises(ValueError, match="size=32"):
        LeNet5()(torch.zeros(2, 1, 28, 28))
    with pytest.raises(ValueError, match="784 features"):
        MLP()(torch.zeros(2, 100))
