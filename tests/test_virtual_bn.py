"""Virtual batch norm (Salimans et al. 2016): the reference-batch formula, its independence of the batch, its gradients."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnlib.layers import ReferenceBatch, VirtualBatchNorm, make_norm, recording_reference, virtual_batchnorm_layers
from bnlib.models import MLP, LeNet5
from bnlib.training import fit


def _layer(c: int = 3, seed: int = 0) -> VirtualBatchNorm:
    layer = VirtualBatchNorm(c, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.weight.copy_(1 + 0.5 * torch.randn(c, generator=g, dtype=torch.float64))
        layer.bias.copy_(0.5 * torch.randn(c, generator=g, dtype=torch.float64))
    return layer


@pytest.mark.parametrize("shape", [(6, 3), (6, 3, 4, 5)])
def test_each_example_is_batch_norm_of_the_reference_plus_itself(shape):
    """y_i = batch norm (training statistics) of the M+1 examples [reference; x_i], row M+1."""
    torch.manual_seed(0)
    ref = 2 + 3 * torch.randn(*shape, dtype=torch.float64)
    x = -1 + 0.5 * torch.randn(4, *shape[1:], dtype=torch.float64)
    layer = _layer()
    layer.set_reference(ref)
    y = layer(x)
    for i in range(len(x)):
        joint = torch.cat([ref, x[i : i + 1]])
        expected = F.batch_norm(joint, None, None, layer.weight, layer.bias, training=True, eps=layer.eps)[-1]
        torch.testing.assert_close(y[i], expected, atol=1e-10, rtol=1e-10)


def test_reference_is_normalized_with_its_own_statistics_as_batch_norm():
    torch.manual_seed(1)
    ref = 1 + 2 * torch.randn(8, 3, 5, 5, dtype=torch.float64)
    layer, bn = _layer(), nn.BatchNorm2d(3, dtype=torch.float64)
    with torch.no_grad():
        bn.weight.copy_(layer.weight)
        bn.bias.copy_(layer.bias)
    with layer.recording_mode():
        y = layer(ref)
    torch.testing.assert_close(y, bn(ref), atol=1e-10, rtol=1e-10)
    assert layer.reference_size == 8


def test_an_example_does_not_depend_on_its_batch_and_train_equals_eval():
    torch.manual_seed(2)
    layer = _layer()
    layer.set_reference(torch.randn(16, 3, 4, 4, dtype=torch.float64))
    x = 5 * torch.randn(5, 3, 4, 4, dtype=torch.float64)
    together = layer(x)
    alone = torch.cat([layer(x[i : i + 1]) for i in range(5)])
    torch.testing.assert_close(together, alone, atol=1e-12, rtol=0)
    torch.testing.assert_close(layer.eval()(x), together, atol=1e-12, rtol=0)
    # batch norm, by contrast, changes example 0's output when the others change
    bn = nn.BatchNorm2d(3, dtype=torch.float64)
    assert not torch.allclose(bn(x)[0], bn(torch.cat([x[:1], 10 + x[1:]]))[0])


def test_gradients_flow_through_the_reference_statistics():
    """Gradcheck of x, reference -> y in float64: the reference's gradient is the one the formula implies."""
    layer = _layer(2)

    def run(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        layer.set_reference(ref)
        return layer(x)

    x = torch.randn(3, 2, 3, dtype=torch.float64, requires_grad=True)
    ref = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(run, (x, ref))
    layer.set_reference(ref)
    layer(x).pow(2).sum().backward()
    assert ref.grad is not None and ref.grad.abs().sum() > 0


def test_reference_batch_model_records_every_layer_and_trains():
    torch.manual_seed(3)
    model = LeNet5(norm="virtual")
    assert len(virtual_batchnorm_layers(model)) == 2
    ref = torch.rand(8, 1, 32, 32)
    wrapped = ReferenceBatch(model, ref)
    assert all(layer.reference_size == 0 for layer in virtual_batchnorm_layers(model))
    out = wrapped(torch.rand(2, 1, 32, 32))
    assert out.shape == (2, 10)
    assert all(layer.reference_size == 8 for layer in virtual_batchnorm_layers(model))
    x = torch.randn(64, 4)
    y = (x[:, 0] > 0).long()
    mlp = nn.Sequential(nn.Linear(4, 8), VirtualBatchNorm(8), nn.Tanh(), nn.Linear(8, 2))
    history = fit(ReferenceBatch(mlp, x[:16]), (x, y), epochs=3, batch_size=4, device="cpu", progress=False, seed=0)
    assert all(torch.isfinite(torch.tensor(history.train_loss)))
    assert history.train_loss[-1] < history.train_loss[0]


def test_refusals_say_what_to_do():
    layer = VirtualBatchNorm(3)
    with pytest.raises(RuntimeError, match="set_reference"):
        layer(torch.randn(2, 3))
    with pytest.raises((ValueError, TypeError)):
        layer.set_reference(torch.randn(2, 4))  # wrong channel count
    with pytest.raises(ValueError, match="no VirtualBatchNorm"):
        ReferenceBatch(MLP((2, 4, 2)), torch.randn(4, 2))
    with pytest.raises(ValueError, match="no VirtualBatchNorm"):
        recording_reference(MLP((2, 4, 2)), torch.randn(4, 2))
    with pytest.raises(ValueError, match="M >= 1"):
        ReferenceBatch(LeNet5(norm="virtual"), torch.randn(0, 1, 32, 32))
    assert isinstance(make_norm("virtual", 6), VirtualBatchNorm)
