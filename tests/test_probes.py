"""Hooks, Santurkar et al.'s measurements, the 2-D loss slice, and the noisy batch norm layer."""

from __future__ import annotations

import gc
import math
import weakref

import numpy as np
import pytest
import torch
from torch import nn

from bnlib.layers.noisy import NoisyBatchNorm
from bnlib.models import MLP
from bnlib.probes import (
    filter_normalized_direction,
    gradient_shift,
    loss_along_gradient,
    loss_slice,
    record_activations,
    summarize,
    train_with_probes,
    weight_names,
)

mse = nn.functional.mse_loss


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # These models are tiny: a second intra-op thread only adds synchronization.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def bn_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return MLP((6, 5, 5, 3), norm=nn.BatchNorm1d, activation="sigmoid")


def batch(n: int = 32, features: int = 6, classes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, features, generator=g), torch.randint(0, classes, (n,), generator=g)


# ----------------------------------------------------------------------------- hooks


def all_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_hooks_are_removed_after_the_block_and_after_an_error():
    model = bn_mlp()
    x, y = batch()
    with record_activations(model, gradients=True) as rec:
        nn.functional.cross_entropy(model(x), y).backward()
        assert all_hooks(model) > 0
    assert all_hooks(model) == 0
    assert {r["kind"] for r in rec.records} == {"activation", "gradient"}
    with pytest.raises(RuntimeError, match="boom"), record_activations(model):
        raise RuntimeError("boom")
    assert all_hooks(model) == 0


def test_a_backward_after_the_block_records_nothing():
    model = bn_mlp()
    x, y = batch()
    with record_activations(model, gradients=True) as rec:
        loss = nn.functional.cross_entropy(model(x), y)  # the graph, with its tensor hooks, is built inside
    recorded = len(rec.records)
    loss.backward()
    assert len(rec.records) == recorded and all(r["kind"] == "activation" for r in rec.records)


def test_recording_keeps_no_graph_and_stores_plain_floats():
    model = bn_mlp()
    x, y = batch()
    with record_activations(model, gradients=True) as rec:
        out = model(x)
        ref = weakref.ref(out)
        nn.functional.cross_entropy(out, y).backward()
        del out
        gc.collect()
        assert ref() is None, "the recorder must not keep the output (and its graph) alive"
        for _ in range(50):  # many calls: records grow by a fixed number of floats each
            nn.functional.cross_entropy(model(x), y).backward()
    assert all(isinstance(v, (str, int, float)) for r in rec.records for v in r.values())
    per_pass = sum(r["call"] == 0 for r in rec.records)
    assert per_pass == 2 * 7  # 7 leaf modules run (flatten is skipped for 2-D input), activation + gradient
    assert len(rec.records) == 51 * per_pass
    assert rec.tensors == {}


def test_summaries_match_numpy_and_gradients_match_autograd():
    model = bn_mlp()
    x, y = batch()
    with record_activations(model, ["layers.2"], capture="input", gradients=True, keep_tensors=True) as rec:
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
    sigmoid_input = model.layers[1](model.layers[0](x))  # the BN output feeds the first sigmoid
    act, grad = rec.records  # forward first, then backward
    expected = np.quantile(sigmoid_input.detach().numpy(), [0.15, 0.5, 0.85])
    np.testing.assert_allclose([act["q15"], act["q50"], act["q85"]], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(act["mean"], sigmoid_input.detach().numpy().mean(), atol=1e-6)
    # Gradient of the loss with respect to the sigmoid's input, by autograd on a fresh graph.
    h = model.layers[1](model.layers[0](x))
    rest = nn.Sequential(*list(model.layers)[2:])
    (g,) = torch.autograd.grad(nn.functional.cross_entropy(rest(h), y), h)
    np.testing.assert_allclose(grad["mean"], g.mean().item(), rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(grad["std"], g.std(unbiased=False).item(), rtol=1e-4)
    torch.testing.assert_close(rec.tensors[("layers.2", "activation")][0], sigmoid_input.detach())
    assert not rec.tensors[("layers.2", "gradient")][0].requires_grad


def test_hook_bad_input():
    model = bn_mlp()
    with pytest.raises(ValueError, match="no module named"), record_activations(model, ["nope"]):
        pass
    with pytest.raises(TypeError, match="wrap it in a list"), record_activations(model, "layers.0"):
        pass
    with pytest.raises(ValueError, match="capture"), record_activations(model, capture="middle"):
        pass
    with pytest.raises(ValueError, match="quantiles"), record_activations(model, quantiles=(1.5,)):
        pass
    with pytest.raises(TypeError, match="torch.nn.Module"), record_activations("model"):
        pass
    with pytest.raises(ValueError, match="empty"):
        summarize(torch.zeros(0))


# ----------------------------------------------------------------------------- internal covariate shift


def test_gradient_shift_two_scalar_layers_by_hand():
    # f(x) = w2 * (w1 * x), L = (f - y)^2 (mse on one example).
    w1, w2, x0, y0, lr = 0.7, -1.3, 2.0, 0.5, 0.1
    model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False))
    with torch.no_grad():
        model[0].weight.fill_(w1)
        model[1].weight.fill_(w2)
    rows = gradient_shift(model, torch.tensor([[x0]]), torch.tensor([[y0]]), lr=lr, loss_fn=mse)
    r = w2 * w1 * x0 - y0
    g2 = 2 * r * w1 * x0
    w1_new = w1 - lr * 2 * r * w2 * x0
    g2_after = 2 * (w2 * w1_new * x0 - y0) * w1_new * x0
    assert rows[0]["layer"] == "0.weight" and rows[0]["l2"] == 0.0 and rows[0]["cosine"] == 1.0
    assert rows[1]["l2"] == pytest.approx(abs(g2 - g2_after), rel=1e-5)
    assert rows[1]["cosine"] == pytest.approx(math.copysign(1.0, g2 * g2_after))
    assert rows[1]["grad_norm"] == pytest.approx(abs(g2), rel=1e-5)


def test_gradient_shift_vectorized_equals_loop_and_leaves_the_model_alone():
    model = bn_mlp()
    model.train()
    x, y = batch()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = gradient_shift(model, x, y, lr=0.5)
    slow = gradient_shift(model, x, y, lr=0.5, vectorize=False)
    assert (
        [r["layer"] for r in fast] == weight_names(model) == ["layers.0.weight", "layers.3.weight", "layers.6.weight"]
    )
    for a, b in zip(fast, slow):
        assert a["l2"] == pytest.approx(b["l2"], rel=1e-4, abs=1e-6)
        assert a["cosine"] == pytest.approx(b["cosine"], rel=1e-5)
    assert fast[0]["l2"] == 0.0 and fast[0]["cosine"] == 1.0 and fast[1]["l2"] > 0
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], msg=f"{k} changed")
    assert all(p.grad is None for p in model.parameters())


def test_gradient_shift_bad_input():
    model, (x, y) = bn_mlp(), batch()
    with pytest.raises(ValueError, match="positive"):
        gradient_shift(model, x, y, lr=0)
    with pytest.raises(ValueError, match="parameter names"):
        gradient_shift(model, x, y, lr=0.1, layers=["conv.weight"])
    with pytest.raises(ValueError, match="same length"):
        gradient_shift(model, x, y[:3], lr=0.1)
    with pytest.raises(TypeError, match="torch.Tensor"):
        gradient_shift(model, x.numpy(), y, lr=0.1)


# ----------------------------------------------------------------------------- smoothness along the gradient


def test_loss_along_gradient_on_least_squares_matches_the_closed_form():
    # L(w) = mean((X w - y)^2): gradient g = H w - b with H = 2 X^T X / N, so along -g
    # the loss is L - eta |g|^2 + eta^2/2 g^T H g, the gradient changes by eta H g,
    # and the effective beta-smoothness is |H g| / |g| at every step size.
    g0 = torch.Generator().manual_seed(1)
    X, y = torch.randn(40, 3, generator=g0, dtype=torch.float64), torch.randn(40, 1, generator=g0, dtype=torch.float64)
    model = nn.Linear(3, 1, bias=False).double()
    w = model.weight.detach().reshape(3, 1)
    H = 2 * X.T @ X / len(X)
    g = H @ w - 2 * X.T @ y / len(X)
    etas = [0.01, 0.1, 0.5]
    out = loss_along_gradient(model, X, y, step_sizes=etas, loss_fn=mse)
    loss0 = float(((X @ w - y) ** 2).mean())
    expected = [loss0 - e * float(g.T @ g) + e**2 / 2 * float(g.T @ H @ g) for e in etas]
    np.testing.assert_allclose(out["losses"], expected, rtol=1e-10)
    np.testing.assert_allclose(out["grad_change"], [e * float((H @ g).norm()) for e in etas], rtol=1e-10)
    np.testing.assert_allclose(out["beta"], float((H @ g).norm() / g.norm()), rtol=1e-10)
    assert out["loss"] == pytest.approx(loss0)
    assert out["loss_variation"] == pytest.approx(max(expected) - min(expected))
    assert out["gradient_predictiveness"] == pytest.approx(out["grad_change"].max())
    # beta-smoothness never exceeds the largest eigenvalue of the Hessian
    assert out["beta_smoothness"] <= float(torch.linalg.eigvalsh(H).max()) * (1 + 1e-12)


def test_loss_along_gradient_vectorized_equals_loop_on_a_bn_network():
    model, (x, y) = bn_mlp(), batch()
    fast = loss_along_gradient(model, x, y, step_sizes=[0.1, 1.0])
    slow = loss_along_gradient(model, x, y, step_sizes=[0.1, 1.0], vectorize=False)
    np.testing.assert_allclose(fast["losses"], slow["losses"], rtol=1e-5)
    np.testing.assert_allclose(fast["beta"], slow["beta"], rtol=1e-4)
    with pytest.raises(ValueError, match="positive"):
        loss_along_gradient(model, x, y, step_sizes=[0.1, -1])
    with pytest.raises(TypeError, match="sequence"):
        loss_along_gradient(model, x, y, step_sizes=0.1)


# ----------------------------------------------------------------------------- loss slice


@pytest.mark.parametrize("train_mode", [True, False])
def test_loss_slice_at_the_origin_is_the_models_loss(train_mode):
    model, (x, y) = bn_mlp(), batch()
    model.train()
    nn.functional.cross_entropy(model(x), y)  # running statistics away from their initial values
    before = {k: v.clone() for k, v in model.state_dict().items()}
    s = loss_slice(model, x, y, points=5, span=0.5, train_mode=train_mode, chunk_size=7)
    model.train(train_mode)
    with torch.no_grad():
        expected = nn.functional.cross_entropy(model(x), y).item()
    model.load_state_dict(before)
    assert s.loss[2, 2] == pytest.approx(expected, rel=1e-5)
    assert s.loss.shape == (5, 5) and np.isfinite(s.loss).all()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k])
    slow = loss_slice(model, x, y, points=5, span=0.5, train_mode=train_mode, directions=s.directions, vectorize=False)
    np.testing.assert_allclose(s.loss, slow.loss, rtol=1e-5)


def test_loss_slice_of_a_linear_model_is_the_quadratic_it_should_be():
    g0 = torch.Generator().manual_seed(2)
    X, y = torch.randn(30, 2, generator=g0, dtype=torch.float64), torch.randn(30, 1, generator=g0, dtype=torch.float64)
    model = nn.Linear(2, 1).double()
    d1, d2 = filter_normalized_direction(model, generator=g0), filter_normalized_direction(model, generator=g0)
    s = loss_slice(model, X, y, points=3, span=2.0, directions=(d1, d2), loss_fn=mse)
    w, b = model.weight.detach(), model.bias.detach()
    for i, a in enumerate([-2.0, 0.0, 2.0]):
        for j, c in enumerate([-2.0, 0.0, 2.0]):
            wij = w + a * d1["weight"] + c * d2["weight"]  # biases have zero direction
            assert s.loss[i, j] == pytest.approx(float(((X @ wij.T + b - y) ** 2).mean()), rel=1e-12)
    assert set(s.frame().columns) == {"alpha", "beta", "loss"}


def test_filter_normalization_matches_each_filter_norm():
    conv = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4))
    d = filter_normalized_direction(conv, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(d["0.weight"].flatten(1).norm(dim=1), conv[0].weight.detach().flatten(1).norm(dim=1))
    assert all(float(d[k].abs().sum()) == 0 for k in ("0.bias", "1.weight", "1.bias"))


def test_loss_slice_bad_input():
    model, (x, y) = bn_mlp(), batch()
    with pytest.raises(ValueError, match="at least 2"):
        loss_slice(model, x, y, points=1)
    with pytest.raises(ValueError, match="span"):
        loss_slice(model, x, y, span=-1)
    with pytest.raises(TypeError, match="pair"):
        loss_slice(model, x, y, directions={"a": 1})
    with pytest.raises(ValueError, match="wrong or missing"):
        loss_slice(model, x, y, directions=({}, {}))
    with pytest.raises(ValueError, match="no parameters"):
        loss_slice(nn.ReLU(), x, y)


# ----------------------------------------------------------------------------- training with probes


def noisy_mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return MLP((6, 5, 5, 3), norm=lambda n: NoisyBatchNorm(n, norm=nn.BatchNorm1d), activation="sigmoid")


@pytest.mark.parametrize("make", [bn_mlp, noisy_mlp], ids=["bn", "noisy-bn"])
def test_probing_does_not_change_training(make):
    x, y = batch(240, seed=3)
    plain = train_with_probes(make(1), (x, y), steps=12, lr=0.3, batch_size=24, measure=(), seed=5)
    probed = train_with_probes(
        make(1), (x, y), steps=12, lr=0.3, batch_size=24, every=3, seed=5, val=(x, y), eval_every=6
    )
    np.testing.assert_array_equal(plain.steps["loss"].to_numpy(), probed.steps["loss"].to_numpy())
    assert plain.probes.empty and plain.evals.empty
    assert sorted(probed.probes["step"].unique()) == [1, 4, 7, 10]
    assert list(probed.evals["step"]) == [6, 12]
    cos = probed.probes.query("measure == 'cosine'")["value"]
    assert ((cos >= -1 - 1e-9) & (cos <= 1 + 1e-9)).all()
    assert probed.steps_to_accuracy(-1.0) == 6 and probed.steps_to_accuracy(2.0) == math.inf


def test_the_probing_run_takes_the_same_steps_as_fit():
    """Without measurements, train_with_probes is fit with SGD over full batches: same batches, same updates, bit for bit."""
    from bnlib.training import fit

    x, y = batch(100, seed=4)  # 100 // 24 = 4 full batches per epoch; the last 4 examples are dropped each epoch
    run_model, fit_model = bn_mlp(2), bn_mlp(2)
    run = train_with_probes(run_model, (x, y), steps=12, lr=0.2, batch_size=24, measure=(), seed=7, device="cpu")
    history = fit(
        fit_model,
        (x, y),
        epochs=3,
        batch_size=24,
        drop_last=True,
        optimizer=torch.optim.SGD(fit_model.parameters(), lr=0.2),
        seed=7,
        progress=False,
        device="cpu",
    )
    np.testing.assert_array_equal(run.steps["loss"].to_numpy(np.float32), np.float32(history.batch_loss))
    for (name, a), b in zip(run_model.state_dict().items(), fit_model.state_dict().values()):
        assert torch.equal(a, b), name


def test_train_with_probes_device_rule_and_non_class_outputs(monkeypatch):
    x = torch.randn(40, 3)
    model = nn.Linear(3, 1)
    monkeypatch.setenv("BNLIB_DEVICE", "cpu")
    run = train_with_probes(model, (x, x.sum(1, keepdim=True)), steps=3, lr=0.1, batch_size=10, measure=(),
                            loss_fn=mse)  # fmt: skip
    assert run.steps["accuracy"].isna().all() and np.isfinite(run.steps["loss"]).all()  # accuracy undefined: NaN
    with pytest.raises(ValueError, match="not a device name"):
        train_with_probes(model, (x, x), steps=1, lr=0.1, batch_size=10, measure=(), loss_fn=mse, device="gpu-please")


def test_train_with_probes_bad_input():
    x, y = batch(60)
    with pytest.raises(ValueError, match="unknown measure"):
        train_with_probes(bn_mlp(), (x, y), steps=2, lr=0.1, measure=["smoothness"])
    with pytest.raises(TypeError, match="string"):
        train_with_probes(bn_mlp(), (x, y), steps=2, lr=0.1, measure="landscape")
    with pytest.raises(ValueError, match="larger than"):
        train_with_probes(bn_mlp(), (x, y), steps=2, lr=0.1, batch_size=100)
    with pytest.raises(ValueError, match="steps"):
        train_with_probes(bn_mlp(), (x, y), steps=0, lr=0.1)
    with pytest.raises(TypeError, match="lr must be a positive number, got True"):
        train_with_probes(bn_mlp(), (x, y), steps=1, lr=True)
    with pytest.raises(ValueError, match="finite"):
        train_with_probes(bn_mlp(), (x, y), steps=1, lr=float("nan"))
    run = train_with_probes(
        bn_mlp(), (x, y), steps=np.int64(2), lr=np.float32(0.1), batch_size=np.int32(30), measure=()
    )
    assert len(run.steps) == 2 and run.meta["lr"] == pytest.approx(0.1) and type(run.meta["batch_size"]) is int


# ----------------------------------------------------------------------------- noisy batch norm


def test_noisy_bn_shifts_each_channel_differently_at_every_step():
    torch.manual_seed(0)
    layer = NoisyBatchNorm(4, norm=nn.BatchNorm2d, mean_range=2.0, scale_range=(1.5, 3.0), jitter=0.0)
    x = torch.randn(64, 4, 5, 5) * 7 + 3
    first, second = layer(x), layer(x)
    for y in (first, second):  # BN output has mean 0, std 1 per channel: the noise sets them
        mean, std = y.mean(dim=(0, 2, 3)), y.std(dim=(0, 2, 3), unbiased=False)
        assert ((mean.abs() <= 2.0) & (std >= 1.5 - 1e-3) & (std <= 3.0 + 1e-3)).all()
    assert not torch.allclose(first, second)
    means = torch.stack([layer(x).mean(dim=(0, 2, 3)) for _ in range(400)])
    assert means.mean().abs() < 0.15 and means.std() > 0.9  # U(-2, 2): mean 0, std 2/sqrt(3)


def test_noisy_bn_jitter_is_per_activation_and_eval_is_the_plain_norm():
    torch.manual_seed(1)
    layer = NoisyBatchNorm(3, norm=nn.BatchNorm1d, mean_range=0.0, scale_range=(1.0, 1.0), jitter=0.5)
    x = torch.randn(4000, 3)
    residual = layer(x) - layer.norm(x)  # (scale jitter) * BN(x) + shift jitter: zero mean, std about 0.5 * sqrt(2)
    assert residual.mean().abs() < 0.05 and abs(residual.std().item() - 0.5 * math.sqrt(2)) < 0.05
    layer.eval()
    torch.testing.assert_close(layer(x), layer.norm(x), rtol=0, atol=0)


def test_noisy_bn_trains_inside_the_book_mlp():
    model = MLP((6, 5, 3), norm=lambda n: NoisyBatchNorm(n, norm=nn.BatchNorm1d), activation="sigmoid")
    x, y = batch(120)
    run = train_with_probes(model, (x, y), steps=5, lr=0.1, batch_size=24, measure=())
    assert np.isfinite(run.steps["loss"]).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_features": 0}, "num_features"),
        ({"num_features": 3, "mean_range": -1}, "mean_range"),
        ({"num_features": 3, "scale_range": (2.0, 1.0)}, "scale_range"),
        ({"num_features": 3, "scale_range": 2.0}, "scale_range"),
        ({"num_features": 3, "jitter": -0.1}, "jitter"),
    ],
)
def test_noisy_bn_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NoisyBatchNorm(**kwargs, norm=nn.BatchNorm1d)


def test_noisy_bn_bad_input():
    with pytest.raises(TypeError, match="callable"):
        NoisyBatchNorm(3, norm="batch")
    with pytest.raises(ValueError, match=r"expected 3 channels at dim 1 .* got shape \(2, 4\)"):
        NoisyBatchNorm(3, norm=nn.BatchNorm1d)(torch.zeros(2, 4))


class CheckedIdentity(nn.Module):
    """An identity with a data-dependent Python check, which torch.func.vmap cannot trace."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((~torch.isfinite(x)).any()):
            raise ValueError("non-finite input")
        return x


def test_models_vmap_cannot_trace_fall_back_to_a_loop_with_the_same_result():
    torch.manual_seed(0)
    traceable = MLP((6, 5, 5, 3), norm=nn.BatchNorm1d, activation="sigmoid")
    checked = nn.Sequential(CheckedIdentity(), traceable)
    x, y = batch()
    for fn in (
        lambda m: [r["l2"] for r in gradient_shift(m, x, y, lr=0.5)],
        lambda m: loss_along_gradient(m, x, y, step_sizes=[0.1, 1.0])["losses"],
        lambda m: loss_slice(m, x, y, points=3, seed=1).loss,
    ):
        np.testing.assert_allclose(fn(checked), fn(traceable), rtol=1e-4, atol=1e-6)
