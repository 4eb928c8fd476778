"""The probing run: train with plain SGD and take the probes' measurements between updates.

The batches and the optimizer step come from :mod:`bnlib.training`'s helpers,
the ones :func:`bnlib.training.fit` uses; only the schedule differs (a fixed
number of steps, measurements between them).

:func:`train_with_probes` is the loop Santurkar et al. (2018) and Ioffe and
Szegedy (2015, figure 1) need; its record is a :class:`ProbeRun`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from bnlib._checks import positive_float, positive_int
from bnlib.probes._core import LossFn, _check_model, _fixed_rng, _loss_fn
from bnlib.probes.hooks import DEFAULT_QUANTILES, record_activations
from bnlib.probes.measures import gradient_shift, loss_along_gradient

__all__ = ["ProbeRun", "train_with_probes"]


@dataclass
class ProbeRun:
    """The record of :func:`train_with_probes`.

    Attributes:
        steps: one row per optimizer step: ``step`` (from 1), ``loss``, ``accuracy`` (of the training
            batch; NaN when the outputs are not class scores).
        probes: long table: ``step``, ``measure``, ``layer``, ``value``: the
            measurements taken before that step's update.
        evals: ``step``, ``val_loss``, ``val_accuracy`` every ``eval_every`` steps and at the end.
        seconds: wall-clock time of the run.
        meta: labels.
    """

    steps: Any
    probes: Any
    evals: Any
    seconds: float
    meta: dict[str, Any] = field(default_factory=dict)

    def steps_to_accuracy(self, target: float) -> float:
        """First evaluated step with ``val_accuracy >= target``; ``inf`` if never reached."""
        hit = self.evals[self.evals["val_accuracy"] >= target]
        return float(hit["step"].iloc[0]) if len(hit) else math.inf

    @property
    def final_val_accuracy(self) -> float:
        """Validation accuracy at the last evaluation (NaN when none was made)."""
        return float(self.evals["val_accuracy"].iloc[-1]) if len(self.evals) else math.nan


_MEASURES = ("activations", "gradient_shift", "landscape")


@contextmanager
def _buffers_restored(model: nn.Module) -> Iterator[None]:
    saved = {n: b.clone() for n, b in model.named_buffers()}
    try:
        yield
    finally:
        with torch.no_grad():
            for n, b in model.named_buffers():
                b.copy_(saved[n])


def train_with_probes(
    model: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    *,
    steps: int,
    lr: float,
    batch_size: int = 60,
    measure: Sequence[str] = _MEASURES,
    every: int = 10,
    probe: tuple[torch.Tensor, torch.Tensor] | None = None,
    activation_layers: Sequence[str] | None = None,
    capture: str = "input",
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
    step_sizes: Sequence[float] | None = None,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    eval_every: int | None = None,
    loss_fn: LossFn | None = None,
    seed: int = 0,
    device: Any = None,
    progress: bool = False,
    meta: dict[str, Any] | None = None,
) -> ProbeRun:
    """Train with plain SGD and measure the network every ``every`` steps, before the update.

    The loop Santurkar et al. (2018) and Ioffe and Szegedy (2015, figure 1)
    need: step ``t`` draws a batch (a fresh shuffle each epoch of ``n // batch_size``
    full batches), optionally measures, then takes one SGD step
    ``theta <- theta - lr * grad``. The batching and the step are those of
    :func:`bnlib.training.fit` (its private helpers), so the two loops cannot
    drift apart. Measures:

    - ``"activations"``: summaries (mean, std, quantiles) of ``capture``
      (the input, by default) of ``activation_layers`` on the fixed ``probe``
      batch, in training mode (batch statistics) with the running statistics
      restored afterwards, so probing does not change training;
    - ``"gradient_shift"``: :func:`gradient_shift` on the step's batch with the step's ``lr``;
    - ``"landscape"``: :func:`loss_along_gradient` on the step's batch
      (``step_sizes`` default ``lr * [0.25, 0.5, 1, 2, 4]``).

    Args:
        model: the network (moved to ``device``).
        train: ``(x, y)`` training tensors.
        steps: optimizer steps.
        lr: SGD learning rate.
        batch_size: examples per step (60 in Ioffe and Szegedy's MNIST experiment).
        measure: any of ``"activations"``, ``"gradient_shift"``, ``"landscape"``; empty to only train.
        every: measure at steps 1, 1 + every, ...
        probe: the fixed batch for ``"activations"`` (default the first 1,000 training examples).
        activation_layers: module names (default every ``nn.Sigmoid``, ``nn.Tanh`` and ``nn.ReLU``).
        capture: ``"input"`` or ``"output"`` of those modules.
        quantiles: quantiles recorded by ``"activations"``.
        step_sizes: for ``"landscape"``.
        val: ``(x, y)`` evaluated in ``eval()`` mode every ``eval_every`` steps and at the end.
        eval_every: default ``every``.
        loss_fn: mean-reduced loss (default cross-entropy).
        seed: seeds the shuffling and torch's generator (dropout, noise layers).
        device: where to train: this argument, else where the model's parameters are, else
            :func:`bnlib.get_device` (:func:`bnlib.device.resolve_device`, the rule of every entry point).
        progress: a tqdm bar.
        meta: labels copied into ``ProbeRun.meta``.

    Example:
        >>> from bnlib.models import MLP
        >>> _ = torch.manual_seed(0); x = torch.randn(120, 4); y = (x[:, 0] > 0).long()
        >>> run = train_with_probes(MLP((4, 8, 2), activation="sigmoid"), (x, y), steps=20, lr=0.5, batch_size=30,
        ...                         every=10, val=(x, y))
        >>> sorted(run.probes["measure"].unique()), len(run.steps), list(run.evals["step"])
        (['activation', 'beta_smoothness', 'cosine', 'gradient_predictiveness', 'l2', 'loss_variation'], 20, [10, 20])
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from bnlib.config import seed_everything
    from bnlib.device import resolve_device
    from bnlib.training import (
        _batch_bounds,
        _batch_count,
        _correct,
        _epoch_order,
        _optimizer_step,
        _seeded_generator,
        _take_batch,
        as_tensors,
        evaluate,
    )

    _check_model(model)
    steps = positive_int(steps, "steps")
    batch_size = positive_int(batch_size, "batch_size")
    every = positive_int(every, "every")
    eval_every = every if eval_every is None else positive_int(eval_every, "eval_every")
    lr = positive_float(lr, "lr", hint="e.g. lr=0.1")
    loss_fn = _loss_fn(loss_fn)
    if isinstance(measure, str):
        raise TypeError(f"measure must be a sequence of names, got the string {measure!r}; e.g. measure=[{measure!r}]")
    unknown = [m for m in measure if m not in _MEASURES]
    if unknown:
        raise ValueError(f"unknown measure {unknown}; expected any of {list(_MEASURES)}")
    device = resolve_device(model, device)
    model.to(device)
    x, y = as_tensors(train, name="train", device=device, dtype=next(model.parameters()).dtype)
    n = len(x)
    if batch_size > n:
        raise ValueError(f"batch_size={batch_size} is larger than the {n} training examples; lower it")
    if "activations" in measure:
        px, py = (
            as_tensors(probe, name="probe", device=device, dtype=x.dtype) if probe is not None else (x[:1000], y[:1000])
        )
        if activation_layers is None:
            activation_layers = [
                name for name, m in model.named_modules() if isinstance(m, (nn.Sigmoid, nn.Tanh, nn.ReLU))
            ]
    val_data = as_tensors(val, name="val", device=device) if val is not None else None
    etas = [lr * f for f in (0.25, 0.5, 1.0, 2.0, 4.0)] if step_sizes is None else list(step_sizes)

    seed_everything(seed)
    generator = _seeded_generator(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    losses = torch.zeros(steps, dtype=torch.float64, device=device)
    correct = torch.zeros(steps, dtype=torch.int64, device=device)
    has_accuracy = True
    probes: list[dict[str, Any]] = []
    evals: list[dict[str, Any]] = []
    # The batching and the step of bnlib.training.fit; an epoch is n // batch_size full batches.
    bounds = _batch_bounds(n, batch_size, _batch_count(n, batch_size, drop_last=True))
    order = _epoch_order(n, shuffle=True, generator=generator, device=device)
    start = time.perf_counter()
    was_training = model.training
    model.train()
    try:
        for t in tqdm(range(steps), disable=not progress, desc="steps", leave=False):
            b = t % len(bounds)
            if b == 0 and t > 0:
                order = _epoch_order(n, shuffle=True, generator=generator, device=device)
            xb, yb = _take_batch(x, y, order, *bounds[b])
            step = t + 1
            if t % every == 0:
                probes += _measure(
                    model,
                    measure,
                    xb,
                    yb,
                    step,
                    lr=lr,
                    etas=etas,
                    loss_fn=loss_fn,
                    probe=(px, py) if "activations" in measure else None,
                    layers=activation_layers,
                    capture=capture,
                    quantiles=quantiles,
                    seed=seed + step,
                )
            losses[t], output = _optimizer_step(model, optimizer, loss_fn, xb, yb)
            hits = _correct(output, yb)
            has_accuracy = has_accuracy and hits is not None
            if hits is not None:
                correct[t] = hits
            if val_data is not None and (step % eval_every == 0 or step == steps):
                val_loss, val_accuracy = evaluate(model, val_data, device=device, loss_fn=loss_fn)
                evals.append({"step": step, "val_loss": val_loss, "val_accuracy": val_accuracy})
    finally:
        model.train(was_training)
    accuracy = correct.cpu().numpy() / batch_size if has_accuracy else np.full(steps, math.nan)
    step_frame = pd.DataFrame({"step": np.arange(1, steps + 1), "loss": losses.cpu().numpy(), "accuracy": accuracy})
    return ProbeRun(
        steps=step_frame,
        probes=pd.DataFrame(probes, columns=["step", "measure", "layer", "value"]),
        evals=pd.DataFrame(evals, columns=["step", "val_loss", "val_accuracy"]),
        seconds=time.perf_counter() - start,
        meta={"lr": lr, "batch_size": batch_size, "seed": seed, **(meta or {})},
    )


def _measure(
    model, measure, xb, yb, step, *, lr, etas, loss_fn, probe, layers, capture, quantiles, seed
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    if "activations" in measure:
        # Restored buffers and a forked generator: probing leaves training exactly as it was.
        with (
            _buffers_restored(model),
            _fixed_rng(seed, probe[0].device),
            torch.no_grad(),
            record_activations(model, layers, capture=capture, quantiles=quantiles) as rec,
        ):
            model(probe[0])
        for record in rec.records:
            for key in record:
                if key.startswith("q") or key in ("mean", "std"):
                    rows.append(
                        {
                            "step": step,
                            "measure": "activation",
                            "layer": f"{record['layer']}:{key}",
                            "value": record[key],
                        }
                    )
    if "gradient_shift" in measure:
        for r in gradient_shift(model, xb, yb, lr=lr, loss_fn=loss_fn, seed=seed):
            rows.append({"step": step, "measure": "l2", "layer": r["layer"], "value": r["l2"]})
            rows.append({"step": step, "measure": "cosine", "layer": r["layer"], "value": r["cosine"]})
    if "landscape" in measure:
        out = loss_along_gradient(model, xb, yb, step_sizes=etas, loss_fn=loss_fn, seed=seed)
        for key in ("loss_variation", "gradient_predictiveness", "beta_smoothness"):
            rows.append({"step": step, "measure": key, "layer": "all", "value": out[key]})
    return rows
