"""The shared trainer: agreement with a plain PyTorch loop, determinism, modes, history, bad input."""

from __future__ import annotations

import math
import signal

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnlib.models import MLP
from bnlib.training import TrainingDivergedError, TrainingInterrupted, evaluate, fit


def blobs(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    return x, y


def fresh(seed=0, norm=None):
    torch.manual_seed(seed)
    return MLP((4, 16, 3), norm)


def run(model, data, **kwargs):
    options = dict(epochs=2, batch_size=16, device="cpu", progress=False)
    options.update(kwargs)
    return fit(model, data, **options)


def plain_loop(model, data, optimizer, *, epochs=2, batch_size=16):
    """The reference: a textbook PyTorch loop over unshuffled batches; returns the batch losses."""
    x, y = data
    losses = []
    for _ in range(epochs):
        for start in range(0, len(x), batch_size):
            loss = F.cross_entropy(model(x[start : start + batch_size]), y[start : start + batch_size])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return losses


def test_unshuffled_fit_equals_a_plain_pytorch_loop():
    x, y = blobs(100)  # 100 = 6 batches of 16 + one of 4
    model, reference = fresh(), fresh()
    history = run(model, (x, y), shuffle=False, optimizer=torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    losses = plain_loop(reference, (x, y), torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9))
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q)
    np.testing.assert_allclose(history.batch_loss, losses, rtol=1e-6)
    sizes = np.array([16] * 6 + [4])
    np.testing.assert_allclose(history.train_loss[1], np.dot(losses[7:], sizes) / 100, rtol=1e-6)


def test_default_optimizer_is_adam_with_lr_1e_3():
    x, y = blobs(100)
    model, reference = fresh(), fresh()
    run(model, (x, y), shuffle=False)  # no optimizer given
    plain_loop(reference, (x, y), torch.optim.Adam(reference.parameters(), lr=1e-3))
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q)


def test_evaluate_moves_the_model_to_the_device_it_is_given():
    model = fresh().to(torch.float64)  # the model's dtype decides the data's
    loss, accuracy = evaluate(model, blobs(8), device="cpu")
    assert next(model.parameters()).device.type == "cpu" and math.isfinite(loss) and 0 <= accuracy <= 1


def test_same_seed_same_run_other_seed_other_order():
    data = blobs()
    a = run(fresh(), data, seed=5)
    b = run(fresh(), data, seed=5)
    c = run(fresh(), data, seed=6)
    assert a.batch_loss == b.batch_loss and a.train_accuracy == b.train_accuracy
    assert a.batch_loss != c.batch_loss


def test_train_metrics_come_from_the_training_pass():
    # With a learning rate of 0 the model never changes, so the training pass's
    # averages must equal an evaluation of the same data.
    data = blobs(50)
    model = fresh()
    history = run(model, data, epochs=1, batch_size=7, optimizer=torch.optim.SGD(model.parameters(), lr=0.0))
    loss, accuracy = evaluate(model, data, device="cpu")
    assert history.train_loss[0] == pytest.approx(loss, rel=1e-6)
    assert history.train_accuracy[0] == pytest.approx(accuracy)


class ModeRecorder(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.calls = []

    def forward(self, x):
        self.calls.append((self.training, torch.is_grad_enabled(), len(x)))
        return self.linear(x)


def test_training_in_train_mode_validation_in_eval_mode_without_grad():
    model = ModeRecorder()
    model.eval()
    x, y = blobs(40)
    history = run(model, (x, y), val=(x[:10], y[:10]), epochs=1, batch_size=20)
    assert model.calls == [(True, True, 20), (True, True, 20), (False, False, 10)]
    assert not model.training  # restored
    assert not math.isnan(history.val_loss[0])


def test_batch_norm_statistics_move_in_training_only():
    model = fresh(norm=nn.BatchNorm1d)
    bn = model.layers[1]
    data = blobs()
    run(model, data, epochs=1)
    after_fit = bn.running_mean.clone()
    assert not torch.all(after_fit == 0) and int(bn.num_batches_tracked) == 6
    evaluate(model, data, device="cpu", batch_size=5)
    torch.testing.assert_close(bn.running_mean, after_fit)


def test_evaluate_matches_cross_entropy_and_ignores_batch_size():
    model = fresh(norm=nn.BatchNorm1d)
    run(model, blobs(), epochs=1)
    x, y = blobs(37, seed=1)
    model.eval()
    with torch.no_grad():
        logits = model(x)
    expected = (F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item())
    for batch_size in (5, 37, 1000):
        loss, accuracy = evaluate(model, (x, y), batch_size=batch_size, device="cpu")
        assert loss == pytest.approx(expected[0], rel=1e-5) and accuracy == pytest.approx(expected[1])


def test_history_contents_and_frame():
    history = run(fresh(), blobs(100), val=blobs(30, seed=2), epochs=3, batch_size=32, meta={"config": "plain"})
    assert history.epochs == 3 and len(history.batch_loss) == 3 * 4
    assert all(s > 0 for s in history.seconds)
    assert all(0 <= a <= 1 for a in history.train_accuracy + history.val_accuracy)
    frame = history.to_frame()
    assert list(frame["epoch"]) == [1, 2, 3] and set(frame["config"]) == {"plain"}
    assert history.meta["framework"] == "pytorch"
    dropped = run(fresh(), blobs(100), epochs=1, batch_size=32, drop_last=True)
    assert len(dropped.batch_loss) == 3
    no_val = run(fresh(), blobs(), epochs=1)
    assert math.isnan(no_val.val_loss[0]) and math.isnan(no_val.val_accuracy[0])


def test_numpy_inputs_and_a_custom_loss():
    x, y = blobs()
    history = run(fresh(), (x.double().numpy(), y.numpy()), epochs=1)  # float64 arrays are cast to the model's dtype
    assert history.epochs == 1
    target = torch.randn(len(x), 3)
    regression = run(fresh(), (x, target), loss_fn=nn.MSELoss(), epochs=1)
    assert math.isnan(regression.train_accuracy[0]) and regression.train_loss[0] > 0


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        (dict(batch_size=0), ValueError, "batch_size must be a positive integer, got 0"),
        (dict(batch_size=2.5), TypeError, "batch_size must be a positive integer"),
        (dict(batch_size=True), TypeError, "batch_size"),
        (dict(epochs=0), ValueError, "epochs must be a positive integer"),
        (dict(train=(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))), ValueError, "empty"),
        (dict(train=(torch.zeros(5, 4), torch.zeros(4, dtype=torch.long))), ValueError, "x has 5 examples but y has 4"),
        (dict(train=torch.zeros(5, 4)), TypeError, r"pair \(x, y\)"),
        (dict(train=([0.0] * 5, [0] * 5)), TypeError, "x must be a torch.Tensor"),
        (dict(val=(torch.zeros(3, 4),)), TypeError, "val must be a pair"),
        (dict(model="mlp"), TypeError, "model must be a torch.nn.Module"),
        (dict(optimizer="adam"), TypeError, "optimizer must be"),
        (
            dict(optimizer=torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1)),
            ValueError,
            "none of the model's parameters",
        ),
        (dict(loss_fn="ce"), TypeError, "loss_fn must be callable"),
        (dict(batch_size=200, drop_last=True), ValueError, "leaves no batch"),
        (dict(device="nonsense"), ValueError, "not a device name"),
        (dict(train_mode="first"), ValueError, "first_epoch_only"),
        (dict(train_mode=True), TypeError, "train_mode must be one of"),
    ],
)
def test_bad_arguments(kwargs, error, words):
    options = dict(model=fresh(), train=blobs(), epochs=1, batch_size=16, device="cpu", progress=False)
    options.update(kwargs)
    model, train = options.pop("model"), options.pop("train")
    with pytest.raises(error, match=words):
        fit(model, train, **options)


def test_evaluate_bad_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(fresh(), blobs(), batch_size=0, device="cpu")
    with pytest.raises(ValueError, match="empty"):
        evaluate(fresh(), (torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)), device="cpu")


# Device rule -----------------------------------------------------------------------------------


def test_fit_and_evaluate_compute_where_the_model_is_unless_told(monkeypatch):
    # With an accelerator "available", get_device() says cuda; a model on the CPU must still train there.
    monkeypatch.delenv("BNLIB_DEVICE", raising=False)
    monkeypatch.setattr("bnlib.device.available_devices", lambda: ["cuda", "cpu"])
    model = fresh()
    history = fit(model, blobs(), epochs=1, batch_size=16, progress=False)
    loss, _ = evaluate(model, blobs(20))
    assert history.epochs == 1 and math.isfinite(loss) and next(model.parameters()).device.type == "cpu"
    with pytest.raises(ValueError, match="not a device name"):  # the explicit argument is still checked first
        fit(model, blobs(), epochs=1, batch_size=16, progress=False, device="gpu-please")


# The loop's pieces, reused by other loops --------------------------------------------------------


def test_the_private_helpers_rebuild_fit_bit_for_bit():
    from bnlib.training import (
        _batch_bounds,
        _batch_count,
        _epoch_order,
        _optimizer_step,
        _seeded_generator,
        _take_batch,
    )

    x, y = blobs(100)
    model, reference = fresh(), fresh()
    history = run(model, (x, y), seed=7, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    generator, losses = _seeded_generator(7), []
    n_batches = _batch_count(100, 16, drop_last=False)
    torch.manual_seed(7)  # what fit's seed_everything does to the global generator
    for _ in range(2):
        order = _epoch_order(100, shuffle=True, generator=generator, device="cpu")
        for lo, hi in _batch_bounds(100, 16, n_batches):
            loss, _ = _optimizer_step(reference, optimizer, F.cross_entropy, *_take_batch(x, y, order, lo, hi))
            losses.append(loss.item())
    assert history.batch_loss == losses
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), reference.parameters()))
    assert _batch_bounds(10, 4, _batch_count(10, 4, drop_last=False)) == [(0, 4), (4, 8), (8, 10)]
    assert (
        _batch_count(10, 4, drop_last=True) == 2
        and _epoch_order(5, shuffle=False, generator=None, device="cpu") is None
    )


# Never a silent NaN ------------------------------------------------------------------------------


class NaNAt(nn.Module):
    """An MLP whose training forward number ``at`` (from 1) returns NaN; counts its training forwards."""

    def __init__(self, at):
        super().__init__()
        torch.manual_seed(0)
        self.net, self.at, self.calls = MLP((4, 16, 3)), at, 0

    def forward(self, x):
        out = self.net(x)
        if self.training:
            self.calls += 1
            if self.calls == self.at:
                out = out * float("nan")
        return out


def test_a_model_emitting_nan_stops_fit_at_that_step_with_the_finished_epochs():
    model = NaNAt(8).eval()  # 96 examples / 16 = 6 steps an epoch: step 8 of the run is epoch 2, step 2
    with pytest.raises(TrainingDivergedError, match=r"loss is nan at epoch 2, step 2 \(step 8 of the run\)") as caught:
        run(model, blobs(), epochs=3, optimizer=torch.optim.SGD(model.parameters(), lr=0.05))
    error = caught.value
    assert isinstance(error, ValueError) and isinstance(error, FloatingPointError)
    assert (error.epoch, error.step, error.learning_rates) == (2, 2, [0.05]) and math.isnan(error.loss)
    assert model.calls == 8, "training went on after the NaN"
    assert error.history.epochs == 1 and len(error.history.batch_loss) == 6
    assert all(math.isfinite(v) for v in error.history.batch_loss + error.history.train_loss)
    assert math.isfinite(error.epoch_batch_loss[0]) and math.isnan(error.epoch_batch_loss[1])
    assert not model.training  # the mode it started in


@pytest.mark.parametrize(("interval", "calls"), [(4, 6 + 4), (100, 6 + 6)])
def test_checking_every_few_steps_as_on_an_accelerator_still_names_the_first_bad_step(monkeypatch, interval, calls):
    # On an accelerator the losses are checked every 32 steps (one sync) and at the end of each epoch.
    monkeypatch.setattr("bnlib.training._divergence_check_interval", lambda device: interval)
    model = NaNAt(8)
    with pytest.raises(TrainingDivergedError, match=r"epoch 2, step 2 \(step 8 of the run\)") as caught:
        run(model, blobs(), epochs=3)
    assert model.calls == calls  # stops at the next check, not at the end of the run
    assert caught.value.history.epochs == 1 and len(caught.value.history.batch_loss) == 6  # epoch 2 not recorded


def test_a_huge_learning_rate_is_named_in_the_error():
    model = fresh()
    with pytest.raises(TrainingDivergedError, match=r"learning rate\(s\) 1e\+30") as caught:
        run(model, blobs(), epochs=3, optimizer=torch.optim.SGD(model.parameters(), lr=1e30))
    error = caught.value
    assert error.learning_rates == [1e30] and error.step == len(error.epoch_batch_loss)
    assert not math.isfinite(error.epoch_batch_loss[-1]) and all(math.isfinite(v) for v in error.epoch_batch_loss[:-1])
    assert all(math.isfinite(v) for v in error.history.batch_loss)


def test_nan_inputs_stop_fit_and_the_error_blames_the_data():
    x, y = blobs()
    x[10, 2] = float("nan")
    x[50, 0] = float("inf")
    with pytest.raises(TrainingDivergedError, match=r"training inputs hold 2 NaN or infinite") as caught:
        run(fresh(), (x, y), epochs=2, shuffle=False)
    assert (caught.value.epoch, caught.value.step, caught.value.history.epochs) == (1, 1, 0)


# Ctrl-C ------------------------------------------------------------------------------------------


class InterruptAt(nn.Module):
    """An MLP that is interrupted during its training forward number ``at``: by raising, or by SIGINT."""

    def __init__(self, at, *, how="raise", times=1):
        super().__init__()
        torch.manual_seed(0)
        self.net, self.at, self.how, self.times, self.calls = MLP((4, 16, 3)), at, how, times, 0
        self.net.register_forward_pre_hook(self.hook)

    def hook(self, module, args):
        if self.training:
            self.calls += 1
            if self.calls == self.at:
                if self.how == "raise":
                    raise KeyboardInterrupt
                for _ in range(self.times):
                    signal.raise_signal(signal.SIGINT)

    def forward(self, x):
        return self.net(x)


def test_a_keyboard_interrupt_in_a_step_keeps_the_finished_epochs():
    model = InterruptAt(8).eval()
    with pytest.raises(TrainingInterrupted, match="in epoch 2 after 1 step") as caught:
        run(model, blobs(), val=blobs(20, seed=3), epochs=3)
    error = caught.value
    assert isinstance(error, KeyboardInterrupt)
    assert error.history.epochs == 1 and len(error.history.batch_loss) == 6 and len(error.history.val_loss) == 1
    assert (error.epoch, error.steps, len(error.epoch_batch_loss)) == (2, 1, 1)
    assert not model.training


def sigint_is_default():
    return signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.skipif(not sigint_is_default(), reason="SIGINT has a non-default handler in this test process")
def test_ctrl_c_lets_the_step_finish_then_stops():
    model = InterruptAt(8, how="signal")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TrainingInterrupted, match="in epoch 2 after 2 step") as caught:
        run(model, blobs(), epochs=3, shuffle=False, optimizer=optimizer)
    error = caught.value
    assert error.history.epochs == 1 and (error.epoch, error.steps) == (2, 2) and model.calls == 8
    assert sigint_is_default(), "fit must restore the SIGINT handler"
    # Step 8 was completed: the weights are those of 8 plain SGD steps.
    reference = InterruptAt(0)
    reference_optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    x, y = blobs()
    for step in range(8):
        lo = (step % 6) * 16
        loss = F.cross_entropy(reference(x[lo : lo + 16]), y[lo : lo + 16])
        reference_optimizer.zero_grad()
        loss.backward()
        reference_optimizer.step()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), reference.parameters()))


@pytest.mark.skipif(not sigint_is_default(), reason="SIGINT has a non-default handler in this test process")
def test_ctrl_c_twice_stops_at_once_and_ctrl_c_in_the_last_step_keeps_every_epoch():
    model = InterruptAt(8, how="signal", times=2)
    with pytest.raises(TrainingInterrupted, match="in epoch 2 after 1 step") as caught:
        run(model, blobs(), epochs=3)
    assert caught.value.history.epochs == 1 and caught.value.steps == 1 and sigint_is_default()
    last = InterruptAt(12, how="signal")
    with pytest.raises(TrainingInterrupted, match="after epoch 2") as caught:
        run(last, blobs(), epochs=2)
    assert caught.value.history.epochs == 2 and caught.value.epoch is None and caught.value.steps == 0


def test_the_divergence_check_serves_a_stacked_run_too():
    # One loss per model and step, as the stacked multi-seed trainer records them.
    from bnlib.history import History
    from bnlib.training import _raise_if_diverged

    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    losses = [torch.tensor([0.5, 0.6]), torch.tensor([0.4, float("inf")]), torch.tensor([0.3, float("nan")])]
    _raise_if_diverged(losses[:1], epoch=3, first_step=0, optimizer=optimizer, history=History())  # finite: no error
    with pytest.raises(TrainingDivergedError, match=r"loss is \[0\.4.*, inf\] at epoch 3, step 2") as caught:
        _raise_if_diverged(losses, epoch=3, first_step=1, optimizer=optimizer, history=History())
    assert caught.value.step == 2 and len(caught.value.epoch_batch_loss) == 2


# ---------------------------------------------------------------- source 000's three bugs, each pinned


def test_source_bug_double_softmax_the_loss_never_falls_below_log_1_plus_9_over_e():
    """LeNet5(softmax_output=True) into CrossEntropyLoss: the loss sees probabilities, bounded below by log(1 + 9/e)."""
    from bnlib.models import LeNet5

    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 32, 32, generator=g)
    y = (x.flatten(1) @ torch.randn(32 * 32, 10, generator=g)).argmax(1)  # learnable labels
    torch.manual_seed(0)
    model = LeNet5(softmax_output=True)
    with torch.no_grad():
        out = model(x)
    torch.testing.assert_close(out.sum(1), torch.ones(64))  # probabilities, not logits
    # Even a perfect prediction (all mass on the label) leaves the loss at the bound:
    perfect = F.one_hot(y, 10).float()
    bound = math.log(1 + 9 / math.e)
    assert F.cross_entropy(perfect, y).item() == pytest.approx(bound, rel=1e-6)
    history = run(model, (x, y), epochs=10, batch_size=16, optimizer=torch.optim.Adam(model.parameters(), lr=3e-3))
    assert min(history.batch_loss) >= bound - 1e-6
    torch.manual_seed(0)
    fixed = LeNet5()  # the same network with logits goes below the bound on the same data
    fixed_history = run(
        fixed, (x, y), epochs=10, batch_size=16, optimizer=torch.optim.Adam(fixed.parameters(), lr=3e-3)
    )
    assert min(fixed_history.batch_loss) < bound


class BatchRecorder(nn.Module):
    """Records the examples of every training batch (the first input feature identifies the example)."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.batches = []

    def forward(self, x):
        if self.training:
            self.batches.append(x[:, 0].detach().clone())
        return self.linear(x)


def test_source_bug_unshuffled_loader_same_batches_in_the_same_order_every_epoch():
    x, y = blobs(50)
    model = BatchRecorder()
    run(model, (x, y), epochs=3, batch_size=16, shuffle=False, seed=0)
    per_epoch = [torch.cat(model.batches[i * 4 : (i + 1) * 4]) for i in range(3)]  # 50 = 3 batches of 16 + one of 2
    for order in per_epoch:
        assert torch.equal(order, x[:, 0])  # the stored order, every epoch
    shuffled = BatchRecorder()
    run(shuffled, (x, y), epochs=2, batch_size=16, shuffle=True, seed=0)
    first, second = torch.cat(shuffled.batches[:4]), torch.cat(shuffled.batches[4:])
    assert not torch.equal(first, second) and torch.equal(first.sort().values, second.sort().values)


def test_train_mode_first_epoch_only_trains_epochs_2_on_in_eval_mode():
    model = ModeRecorder()
    x, y = blobs(40)
    run(model, (x, y), val=(x[:10], y[:10]), epochs=3, batch_size=20, train_mode="first_epoch_only")
    training_calls = [call for call in model.calls if call[1]]  # those with gradients
    assert [call[0] for call in training_calls] == [True, True, False, False, False, False]
    assert all(not call[0] and not call[1] for call in model.calls if not call[1])  # validation: eval, no_grad
    assert model.training  # the mode it started in
    every = ModeRecorder()
    run(every, (x, y), epochs=3, batch_size=20)
    assert all(call[0] for call in every.calls)


def test_source_bug_eval_mode_from_epoch_2_freezes_the_running_statistics_but_trains_gamma_and_beta():
    """Source 000: model.train() once before the loop, model.eval() in its accuracy(): epochs 2+ in eval mode."""
    import copy

    data = blobs()  # 96 examples: 6 batches of 16 per epoch
    start = fresh(norm=nn.BatchNorm1d)
    one, three, usual = copy.deepcopy(start), copy.deepcopy(start), copy.deepcopy(start)
    run(one, data, epochs=1, seed=0, shuffle=False, train_mode="first_epoch_only")
    run(three, data, epochs=3, seed=0, shuffle=False, train_mode="first_epoch_only")
    run(usual, data, epochs=3, seed=0, shuffle=False)
    bn_start, bn_one, bn_three, bn_usual = (m.layers[1] for m in (start, one, three, usual))
    assert not torch.equal(bn_one.running_mean, bn_start.running_mean)  # epoch 1 moved them
    torch.testing.assert_close(bn_three.running_mean, bn_one.running_mean, rtol=0, atol=0)  # epochs 2-3 did not
    torch.testing.assert_close(bn_three.running_var, bn_one.running_var, rtol=0, atol=0)
    assert int(bn_three.num_batches_tracked) == int(bn_one.num_batches_tracked) == 6
    assert int(bn_usual.num_batches_tracked) == 18
    assert not torch.equal(bn_three.weight, bn_one.weight) and not torch.equal(bn_three.bias, bn_one.bias)
    # With one epoch both modes are the same run, bit for bit.
    default_one = copy.deepcopy(start)
    h_default = run(default_one, data, epochs=1, seed=0, shuffle=False)
    h_first = run(copy.deepcopy(start), data, epochs=1, seed=0, shuffle=False, train_mode="first_epoch_only")
    assert h_default.batch_loss == h_first.batch_loss
