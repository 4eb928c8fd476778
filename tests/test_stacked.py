"""The stacked trainer equals separate fit() runs, refuses what it cannot stack, and repeat_fit uses it."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from bnlib import experiments
from bnlib.models import MLP, LeNet5, init_like_source
from bnlib.stacked import NotStackableError, check_stackable, fit_stacked
from bnlib.training import TrainingDivergedError, TrainingInterrupted, fit

SEEDS = (0, 1)


def _images(n: int = 1600, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A learnable task: the label is the argmax of ten fixed random projections of the image."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 32, 32, generator=g)
    projections = torch.randn(32 * 32, 10, generator=g)
    return x, (x.flatten(1) @ projections).argmax(1)


def _vectors(n: int = 1200, features: int = 20, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    return x, (x @ torch.randn(features, 4, generator=g)).argmax(1)


def _build(make, seeds=SEEDS):
    models = []
    for seed in seeds:
        torch.manual_seed(seed)
        models.append(make())
    return models, [copy.deepcopy(m) for m in models]


def _assert_equal_runs(stacked, separate, h_stacked, h_separate, *, loss_atol=1e-4, state_rtol=1e-4, state_atol=5e-5):
    for hs, hr in zip(h_stacked, h_separate):
        assert len(hs.batch_loss) == len(hr.batch_loss) >= 100
        torch.testing.assert_close(torch.tensor(hs.batch_loss), torch.tensor(hr.batch_loss), atol=loss_atol, rtol=0)
        for column in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
            torch.testing.assert_close(
                torch.tensor(getattr(hs, column)), torch.tensor(getattr(hr, column)), atol=2e-3, rtol=0, equal_nan=True
            )
        assert hs.meta == hr.meta
    for a, b in zip(stacked, separate):
        state_a, state_b = a.state_dict(), b.state_dict()
        assert state_a.keys() == state_b.keys()
        for key in state_a:
            if state_a[key].is_floating_point():
                torch.testing.assert_close(
                    state_a[key],
                    state_b[key],
                    rtol=state_rtol,
                    atol=state_atol,
                    msg=lambda m, key=key: f"{key}: {m}",
                )
            else:
                assert torch.equal(state_a[key], state_b[key]), key  # num_batches_tracked


def _momentum_none(num_features: int) -> nn.Module:
    return nn.BatchNorm2d(num_features, momentum=None)


@pytest.mark.parametrize("norm", [None, "batch", _momentum_none], ids=["none", "bnlib", "torch-cumulative"])
def test_lenet5_stacked_equals_separate_fit_runs(norm):
    """Adam, shuffled, 1,600 images in batches of 16 = 100 steps, each seed its own order; weights, stats, losses."""
    x, y = _images()
    stacked, separate = _build(lambda: init_like_source(LeNet5(norm)))
    kwargs = {"val": (x[:300], y[:300]), "epochs": 1, "batch_size": 16, "progress": False, "device": "cpu"}
    h_stacked = fit_stacked(stacked, (x, y), seeds=SEEDS, **kwargs)
    h_separate = [fit(m, (x, y), seed=s, **kwargs) for m, s in zip(separate, SEEDS)]
    _assert_equal_runs(stacked, separate, h_stacked, h_separate)
    assert h_stacked[0].batch_loss != h_stacked[1].batch_loss  # the seeds really differ


@pytest.mark.parametrize("norm", [None, "batch", nn.BatchNorm1d], ids=["none", "bnlib", "torch"])
def test_mlp_with_sgd_momentum_stacked_equals_separate_fit_runs(norm):
    """SGD with momentum, two epochs, drop_last: the MLP path (batched matrix products, batch norm over k*C)."""
    x, y = _vectors()
    stacked, separate = _build(lambda: MLP((20, 32, 16, 4), norm=norm))
    kwargs = {"val": (x[:200], y[:200]), "epochs": 2, "batch_size": 20, "drop_last": True, "progress": False}
    h_stacked = fit_stacked(
        stacked,
        (x, y),
        seeds=SEEDS,
        optimizers=[torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9) for m in stacked],
        **kwargs,
    )
    h_separate = [
        fit(m, (x, y), seed=s, optimizer=torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9), **kwargs)
        for m, s in zip(separate, SEEDS)
    ]
    _assert_equal_runs(stacked, separate, h_stacked, h_separate)


def test_source_as_written_unshuffled_double_softmax_and_a_custom_loss():
    """shuffle=False (every model sees the stored order), a softmax output, and a loss_fn called per model."""
    x, y = _images(n=1000)
    stacked, separate = _build(lambda: LeNet5("batch", softmax_output=True), seeds=(5, 6))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    kwargs = {"epochs": 1, "batch_size": 10, "shuffle": False, "loss_fn": loss_fn, "progress": False}
    h_stacked = fit_stacked(stacked, (x, y), seeds=(5, 6), **kwargs)
    h_separate = [fit(m, (x, y), seed=s, **kwargs) for m, s in zip(separate, (5, 6))]
    # Adam divides the double softmax's vanishing gradients by their own tiny scale, which magnifies rounding:
    # the losses agree to 1e-4, the weights to 2e-3.
    _assert_equal_runs(stacked, separate, h_stacked, h_separate, state_atol=2e-3)


def test_seconds_are_the_cost_per_model():
    x, y = _vectors(n=200)
    models, _ = _build(lambda: MLP((20, 8, 4)))
    histories = fit_stacked(models, (x, y), seeds=SEEDS, epochs=1, batch_size=50, progress=False)
    assert histories[0].seconds == histories[1].seconds
    assert histories[0].seconds[0] > 0


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: MLP((4, 8, 2), norm="layer"), r"layers\.1 \(LayerNorm\)"),
        (lambda: LeNet5("ghost"), r"GhostBatchNorm"),
        (lambda: nn.Sequential(nn.Linear(4, 2)), "LeNet5 and bnlib.models.MLP, got Sequential"),
        (lambda: MLP((4, 8, 2), activation=nn.GELU), r"GELU"),
    ],
)
def test_models_it_cannot_stack_are_named(make, match):
    with pytest.raises(NotStackableError, match=match):
        check_stackable(make())


def test_hooks_and_parametrizations_do_not_stack():
    model = MLP((4, 8, 2))
    model.layers[0].register_forward_hook(lambda *args: None)
    with pytest.raises(NotStackableError, match="hooks"):
        check_stackable(model)
    model = MLP((4, 8, 2))
    nn.utils.parametrizations.weight_norm(model.layers[0])
    with pytest.raises(NotStackableError, match="parametrized"):
        check_stackable(model)


def test_optimizers_that_do_not_stack_are_refused():
    x, y = _vectors(n=40)
    models, _ = _build(lambda: MLP((20, 8, 4)), seeds=(0, 1))
    cases = [
        ([torch.optim.RMSprop(m.parameters()) for m in models], "SGD, Adam and AdamW"),
        ([torch.optim.SGD(models[0].parameters(), lr=0.1), torch.optim.SGD(models[1].parameters(), lr=0.2)], "differ"),
        ([torch.optim.Adam(models[0].parameters()), torch.optim.SGD(models[1].parameters(), lr=0.1)], "differ"),
        (
            [
                torch.optim.SGD([{"params": m.layers[0].parameters()}, {"params": m.layers[2].parameters()}], lr=0.1)
                for m in models
            ],
            "one parameter group",
        ),
        ([torch.optim.Adam(list(m.parameters())[:2]) for m in models], "exactly its model's parameters"),
    ]
    for optimizers, match in cases:
        with pytest.raises(NotStackableError, match=match):
            fit_stacked(models, (x, y), seeds=(0, 1), optimizers=optimizers, epochs=1, batch_size=8, progress=False)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"seeds": (0,)}, ValueError, "one per model"),
        ({"seeds": (0, True)}, ValueError, "one per model"),
        ({"epochs": 0}, ValueError, "epochs"),
        ({"batch_size": 1.5}, TypeError, "batch_size"),
        ({"meta": "x"}, TypeError, "meta"),
        ({"shuffle": "no"}, TypeError, "shuffle must be True or False"),
        ({"drop_last": 1}, TypeError, "drop_last must be True or False"),
    ],
)
def test_bad_arguments_are_refused_clearly(kwargs, error, match):
    x, y = _vectors(n=40)
    models, _ = _build(lambda: MLP((20, 8, 4)), seeds=(0, 1))
    arguments = {"seeds": (0, 1), "epochs": 1, "batch_size": 8, "progress": False, **kwargs}
    with pytest.raises(error, match=match):
        fit_stacked(models, (x, y), **arguments)


def test_the_same_model_twice_and_a_wrong_input_shape_are_refused():
    x, y = _vectors(n=40)
    model = MLP((20, 8, 4))
    with pytest.raises(ValueError, match="distinct"):
        fit_stacked([model, model], (x, y), seeds=(0, 1), epochs=1, batch_size=8)
    models, _ = _build(lambda: MLP((21, 8, 4)), seeds=(0, 1))
    with pytest.raises(ValueError, match="21 features"):
        fit_stacked(models, (x, y), seeds=(0, 1), epochs=1, batch_size=8, progress=False)


def test_divergence_stops_every_model_and_names_the_seed():
    x, y = _vectors(n=200)
    models, _ = _build(lambda: MLP((20, 8, 4)), seeds=(0, 1))
    optimizers = [torch.optim.SGD(m.parameters(), lr=1e30) for m in models]
    with pytest.raises(TrainingDivergedError, match="Stacked run of 2 models") as caught:
        fit_stacked(models, (x, y), seeds=(0, 1), optimizers=optimizers, epochs=3, batch_size=20, progress=False)
    assert isinstance(caught.value.history, list)
    assert len(caught.value.history) == 2
    assert caught.value.seeds
    assert caught.value.epoch == 1


def test_an_interrupt_keeps_the_histories_and_the_trained_steps(monkeypatch):
    import bnlib.stacked as stacked_module

    x, y = _vectors(n=400)
    models, untouched = _build(lambda: MLP((20, 8, 4)), seeds=(0, 1))
    losses, calls = stacked_module._losses, []

    def interrupt_at_step_15(*args):
        calls.append(1)
        if len(calls) == 15:
            raise KeyboardInterrupt
        return losses(*args)

    monkeypatch.setattr(stacked_module, "_losses", interrupt_at_step_15)
    with pytest.raises(TrainingInterrupted) as caught:
        fit_stacked(models, (x, y), seeds=(0, 1), epochs=3, batch_size=40, progress=False)
    histories = caught.value.history
    assert [h.epochs for h in histories] == [1, 1]  # epoch 1 had 10 steps; epoch 2 was cut after 4
    assert caught.value.epoch == 2
    assert caught.value.steps == 4
    # the 14 completed steps are in the models (written back), not the initial weights
    assert not torch.equal(models[0].layers[0].weight, untouched[0].layers[0].weight)


def test_repeat_fit_stacks_lenet5_by_default_and_trains_the_models_in_place(monkeypatch):
    import bnlib.training

    x, y = _images(n=64)
    built = []

    def make():
        built.append(LeNet5("batch"))
        return built[-1]

    def no_fit(*args, **kwargs):
        raise AssertionError("repeat_fit should have stacked these models")

    monkeypatch.setattr(bnlib.training, "fit", no_fit)
    histories = experiments.repeat_fit(make, (x, y), seeds=(3, 4), config="c", epochs=1, batch_size=16, progress=False)
    assert [h.meta["seed"] for h in histories] == [3, 4]
    assert {h.meta["config"] for h in histories} == {"c"}
    assert int(built[0].features[2].num_batches_tracked) == 4


def test_repeat_fit_loops_over_the_mlp_on_a_cpu_where_stacking_does_not_pay(monkeypatch):
    import bnlib.training
    from bnlib.stacked import stacking_pays

    assert stacking_pays(LeNet5(), "cpu")
    assert not stacking_pays(MLP((20, 8, 4)), "cpu")
    assert stacking_pays(MLP((20, 8, 4)).to("meta"))  # off the CPU (here: the meta device) it stacks
    calls, fit = [], bnlib.training.fit

    def counting_fit(*args, **kwargs):
        calls.append(kwargs["seed"])
        return fit(*args, **kwargs)

    monkeypatch.setattr(bnlib.training, "fit", counting_fit)
    x, y = _vectors(n=40)
    experiments.repeat_fit(lambda: MLP((20, 8, 4)), (x, y), seeds=(0, 1), epochs=1, batch_size=8, progress=False)
    assert calls == [0, 1]


def test_repeat_fit_equals_its_loop_and_falls_back_where_it_cannot_stack():
    x, y = _vectors(n=400)
    arguments = {"seeds": (0, 1), "epochs": 1, "batch_size": 4, "progress": False}
    stacked = experiments.repeat_fit(lambda: MLP((20, 8, 4), norm="batch"), (x, y), stack=True, **arguments)
    looped = experiments.repeat_fit(lambda: MLP((20, 8, 4), norm="batch"), (x, y), stack=False, **arguments)
    for a, b in zip(stacked, looped):
        torch.testing.assert_close(torch.tensor(a.batch_loss), torch.tensor(b.batch_loss), atol=1e-4, rtol=0)
    fallback = experiments.repeat_fit(lambda: MLP((20, 8, 4), norm="layer"), (x, y), **arguments)
    assert [h.meta["seed"] for h in fallback] == [0, 1]
    with pytest.raises(NotStackableError, match="LayerNorm"):
        experiments.repeat_fit(lambda: MLP((20, 8, 4), norm="layer"), (x, y), stack=True, **arguments)
    with pytest.raises(TypeError, match="sets seed"):
        experiments.repeat_fit(lambda: MLP((20, 8, 4)), (x, y), seed=3, **arguments)
    with pytest.raises(TypeError, match="stack must be"):
        experiments.repeat_fit(lambda: MLP((20, 8, 4)), (x, y), stack="yes", **arguments)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on the lent GPU machine)")
@pytest.mark.parametrize("norm", [None, "batch"], ids=["none", "bnlib"])
def test_lenet5_stacked_equals_separate_fit_runs_on_cuda(norm):
    torch.backends.cudnn.deterministic = True
    x, y = _images()
    stacked, separate = _build(lambda: init_like_source(LeNet5(norm)))
    kwargs = {"val": (x[:300], y[:300]), "epochs": 1, "batch_size": 16, "progress": False, "device": "cuda"}
    h_stacked = fit_stacked(stacked, (x, y), seeds=SEEDS, **kwargs)
    h_separate = [fit(m, (x, y), seed=s, **kwargs) for m, s in zip(separate, SEEDS)]
    _assert_equal_runs(stacked, separate, h_stacked, h_separate, loss_atol=1e-3, state_rtol=1e-3)


def test_source_000_eval_mode_from_epoch_2_stacked_equals_separate_fit_runs():
    """train_mode='first_epoch_only' (source 000's bug): the stacked run equals fit's, running statistics included."""
    x, y = _images(n=800)
    stacked, separate = _build(lambda: init_like_source(LeNet5("batch", softmax_output=True)))
    kwargs = {
        "val": (x[:200], y[:200]),
        "epochs": 3,
        "batch_size": 20,
        "shuffle": False,
        "train_mode": "first_epoch_only",
        "progress": False,
        "device": "cpu",
    }
    h_stacked = fit_stacked(stacked, (x, y), seeds=SEEDS, **kwargs)
    h_separate = [fit(m, (x, y), seed=s, **kwargs) for m, s in zip(separate, SEEDS)]
    _assert_equal_runs(stacked, separate, h_stacked, h_separate, state_atol=2e-3)
    assert int(stacked[0].features[2].num_batches_tracked) == 40  # epoch 1's steps only
    with pytest.raises(ValueError, match="first_epoch_only"):
        fit_stacked(stacked, (x, y), seeds=SEEDS, epochs=1, batch_size=20, train_mode="once", progress=False)
