"""Train k copies of one network at once: every seed of a configuration in one pass.

Several seeds of a small network cost almost k times one seed when they run one
after the other, because each step of LeNet-5 at batch 64 is too small to keep
the machine busy. :func:`fit_stacked` trains ``k`` models of the same
architecture as ONE wider network whose parts never mix:

* ``k`` convolutions ``C_in -> C_out`` become one grouped convolution
  ``k C_in -> k C_out`` with ``groups=k`` (model ``i`` owns channel block ``i``);
* ``k`` linear layers become one batched matrix product (``torch.baddbmm``
  over a leading model axis);
* ``k`` batch norms over ``C`` channels become one batch norm over ``k C``
  channels: batch norm is per channel, so each model still normalizes with its
  own batch's statistics and keeps its own running averages;
* activations and pooling act per channel or per element, so they are shared.

Each model keeps its own seed: its initial weights (built under that seed before
stacking), its own batch order (the same seeded generator :func:`bnlib.training.fit`
uses) and its own optimizer state (Adam and SGD act element by element, so one
optimizer over the stacked parameters is ``k`` independent optimizers). The
loss is the sum of the ``k`` models' mean losses; its gradient with respect to
model ``i``'s parameters is exactly the gradient of model ``i``'s own loss. The
result equals ``k`` separate :func:`~bnlib.training.fit` runs up to float
rounding (a grouped convolution sums in another order); ``tests/test_stacked.py``
checks weights, running statistics and every step's loss after hundreds of steps.

What it stacks: :class:`bnlib.models.LeNet5` and :class:`bnlib.models.MLP` built
with no normalization, bnlib's :class:`~bnlib.layers.BatchNorm` or
``torch.nn.BatchNorm1d/2d``; optimizers ``torch.optim.SGD`` (with or without
momentum), ``Adam`` and ``AdamW`` with one parameter group. Anything else
(another layer, a hook, a parametrization such as weight norm, randomness in
the forward pass) raises :class:`NotStackableError` naming what and why, and
:func:`bnlib.experiments.repeat_fit` then falls back to one :func:`fit` per seed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bnlib import _checks
from bnlib.history import History

__all__ = ["NotStackableError", "fit_stacked", "check_stackable", "stacking_pays"]

_ELEMENTWISE = (nn.Tanh, nn.ReLU, nn.Sigmoid, nn.Identity)
_POOLS = (nn.AvgPool2d, nn.MaxPool2d)
_OPTIMIZERS = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)


class NotStackableError(ValueError):
    """The models cannot be trained as one stacked network (the message says which part and why)."""


# --------------------------------------------------------------------------- the stacked network


def _batch_norm_classes() -> tuple[type, ...]:
    from bnlib.layers import BatchNorm

    return (BatchNorm, nn.BatchNorm1d, nn.BatchNorm2d)


def _leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's layers in forward order, for the two architectures the stacker knows."""
    from bnlib.models import MLP, LeNet5

    if type(model) is LeNet5:
        return [
            *((f"features.{n}", m) for n, m in model.features.named_children()),
            *((f"classifier.{n}", m) for n, m in model.classifier.named_children()),
            ("output", model.output),
        ]
    if type(model) is MLP:
        return [("flatten", model.flatten), *((f"layers.{n}", m) for n, m in model.layers.named_children())]
    raise NotStackableError(
        f"fit_stacked stacks bnlib.models.LeNet5 and bnlib.models.MLP, got {type(model).__name__}; "
        "train other models with bnlib.training.fit, one per seed"
    )


def _has_hooks(module: nn.Module) -> bool:
    return bool(
        module._forward_hooks
        or module._forward_pre_hooks
        or module._backward_hooks
        or getattr(module, "_backward_pre_hooks", None)
    )


def check_stackable(model: nn.Module) -> None:
    """Raise :class:`NotStackableError` unless :func:`fit_stacked` can stack copies of ``model``.

    Example:
        >>> from bnlib.models import LeNet5, MLP
        >>> check_stackable(LeNet5(norm="batch"))             # fine: returns None
        >>> check_stackable(MLP((4, 8, 2), norm="layer"))
        Traceback (most recent call last):
        ...
        bnlib.stacked.NotStackableError: cannot stack layers.1 (LayerNorm): ...
    """
    from torch.nn.utils import parametrize

    if not isinstance(model, nn.Module):
        raise TypeError(f"expected an nn.Module, got {type(model).__name__}")
    if _has_hooks(model):
        raise NotStackableError(f"cannot stack {type(model).__name__}: it has hooks, which stacking would bypass")
    for name, module in _leaves(model):
        what = f"{name} ({type(module).__name__})"
        if _has_hooks(module):
            raise NotStackableError(f"cannot stack {what}: it has hooks, which stacking would bypass")
        if parametrize.is_parametrized(module) or list(module.children()):
            raise NotStackableError(
                f"cannot stack {what}: it is parametrized or has submodules (e.g. weight norm); only plain layers stack"
            )
        if isinstance(module, nn.Conv2d):
            if type(module) is not nn.Conv2d or module.groups != 1 or module.padding_mode != "zeros":
                raise NotStackableError(f"cannot stack {what}: only plain Conv2d with groups=1 and zero padding")
        elif isinstance(module, nn.Linear):
            if type(module) is not nn.Linear:
                raise NotStackableError(f"cannot stack {what}: only plain nn.Linear")
        elif isinstance(module, _batch_norm_classes()):
            if type(module) not in _batch_norm_classes():
                raise NotStackableError(f"cannot stack {what}: a subclass of a batch norm may change its forward")
        elif isinstance(module, nn.Softmax):
            if module.dim != 1:
                raise NotStackableError(f"cannot stack {what}: only a softmax over the class axis (dim=1)")
        elif not (type(module) in _ELEMENTWISE or type(module) in _POOLS or type(module) is nn.Flatten):
            raise NotStackableError(
                f"cannot stack {what}: the stacker knows convolutions, linear layers, batch norm (bnlib's and "
                "torch.nn's), tanh/relu/sigmoid, pooling, flatten and softmax; other layers (other norms, noise, "
                "dropout) have their own state or randomness"
            )


def stacking_pays(model: nn.Module, device: Any = None) -> bool:
    """Whether training k copies of ``model`` stacked is faster per model than k :func:`~bnlib.training.fit` runs.

    Measured with ``benchmarks/bench_seeds.py`` (k = 5, one epoch of 6,000 MNIST
    images, batch 64, 2-core AVX2 CPU, interleaved rounds): LeNet-5 1.70x faster
    per model without batch norm and 1.96x with it; the 784-512-256-10 MLP 0.89x
    without and 1.11x with batch norm, since its large matrix products already
    keep a CPU busy and a batched product is no faster than k separate ones. So:
    LeNet-5 on any device; the MLP only off the CPU, where one small step per
    model is launch-bound (not measured here: no GPU was lent).

    Example:
        >>> from bnlib.models import MLP, LeNet5
        >>> stacking_pays(LeNet5(), "cpu"), stacking_pays(MLP(), "cpu")
        (True, False)
    """
    from bnlib.device import resolve_device
    from bnlib.models import MLP

    return not (type(model) is MLP and resolve_device(model, device).type == "cpu")


class _StackedNet(nn.Module):
    """``k`` models of one architecture as one network; :meth:`unstack` writes the state back into them.

    Layouts: convolution stages carry ``(B, k*C, H, W)`` (model ``i`` in channels
    ``i*C:(i+1)*C``); linear stages carry ``(k, B, F)``.
    """

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        self.groups: dict[str, list[nn.Module]] = {}
        self.k = len(models)
        first = models[0]
        self.kind = type(first).__name__
        self.stages: list[tuple[str, nn.Module, str]] = []  # (name, template module, op)
        self.params = nn.ParameterDict()
        self.running: dict[str, dict[str, torch.Tensor]] = {}
        layout = "channels" if self.kind == "LeNet5" else "batched"
        for name, module in _leaves(first):
            key = name.replace(".", "_")
            group = [dict(m.named_modules())[name] if "." in name else getattr(m, name) for m in models]
            if isinstance(module, nn.Conv2d):
                self._stack_param(key, "weight", [m.weight for m in group], cat=True)
                if module.bias is not None:
                    self._stack_param(key, "bias", [m.bias for m in group], cat=True)
                op = "conv"
            elif isinstance(module, nn.Linear):
                self._stack_param(key, "weight", [m.weight for m in group], cat=False)  # (k, out, in)
                if module.bias is not None:
                    self._stack_param(key, "bias", [m.bias for m in group], cat=False)  # (k, out)
                op = "linear"
            elif isinstance(module, _batch_norm_classes()):
                if module.affine:
                    self._stack_param(key, "weight", [m.weight for m in group], cat=True)
                    self._stack_param(key, "bias", [m.bias for m in group], cat=True)
                if module.track_running_stats:
                    self.running[key] = {
                        "mean": torch.cat([m.running_mean for m in group]).clone(),
                        "var": torch.cat([m.running_var for m in group]).clone(),
                        "count": group[0].num_batches_tracked.clone(),
                    }
                    if any(int(m.num_batches_tracked) != int(self.running[key]["count"]) for m in group):
                        raise NotStackableError(f"cannot stack {name}: the models' num_batches_tracked differ")
                op = "bn_" + layout
            elif isinstance(module, nn.Flatten):
                op = "flatten" if layout == "channels" else "noop"
                layout = "batched"
            elif isinstance(module, nn.Softmax):
                op = "softmax"
            else:
                op = "shared"
            self.stages.append((key, module, op))
            self.groups[key] = group  # the k models' own layers at this stage, for unstack

    def _stack_param(self, key: str, what: str, tensors: list[torch.Tensor], *, cat: bool) -> None:
        shapes = {tuple(t.shape) for t in tensors}
        if len(shapes) != 1:
            raise NotStackableError(f"cannot stack {key}.{what}: the models' shapes differ ({sorted(shapes)})")
        value = torch.cat([t.detach() for t in tensors]) if cat else torch.stack([t.detach() for t in tensors])
        self.params[f"{key}__{what}"] = nn.Parameter(value.clone())

    def _p(self, key: str, what: str) -> torch.Tensor | None:
        name = f"{key}__{what}"
        return self.params.get(name)

    def stack_input(self, x: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        """The models' batches as one input: ``index`` is (k, B) (own orders) or None (x shared as it is)."""
        k = self.k
        if self.kind == "LeNet5":
            if index is None:  # (B, C, H, W) -> (B, k*C, H, W)
                return x.repeat(1, k, 1, 1)
            batch = x[index.reshape(-1)]  # (k*B, C, H, W)
            b = index.shape[1]
            return batch.view(k, b, *x.shape[1:]).transpose(0, 1).reshape(b, k * x.shape[1], *x.shape[2:])
        x = x.reshape(len(x), -1) if index is None else x[index.reshape(-1)].reshape(*index.shape, -1)
        return x.unsqueeze(0).expand(k, *x.shape) if index is None else x  # (k, B, F)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "LeNet5" and (x.dim() != 4 or x.shape[-2:] != (32, 32)):
            raise ValueError(f"LeNet5 expects images (N, C, 32, 32), got a stacked input of shape {tuple(x.shape)}")
        k = self.k
        for key, module, op in self.stages:
            if op == "conv":
                x = F.conv2d(
                    x,
                    self._p(key, "weight"),
                    self._p(key, "bias"),
                    module.stride,
                    module.padding,
                    module.dilation,
                    groups=k,
                )
            elif op == "linear":
                weight, bias = self._p(key, "weight"), self._p(key, "bias")
                x = (
                    torch.bmm(x, weight.transpose(1, 2))
                    if bias is None
                    else torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))
                )
            elif op.startswith("bn_"):
                x = self._batch_norm(key, module, x, channels=op == "bn_channels")
            elif op == "flatten":  # (B, k*C, H, W) -> (k, B, C*H*W)
                x = x.reshape(x.shape[0], k, -1).transpose(0, 1)
            elif op == "softmax":
                x = torch.softmax(x, dim=-1)
            elif op == "shared":
                x = module(x)
        return x  # (k, B, classes)

    def _batch_norm(self, key: str, module: nn.Module, x: torch.Tensor, *, channels: bool) -> torch.Tensor:
        state = self.running.get(key)
        momentum = module.momentum
        if self.training and state is not None:
            state["count"].add_(1)
            if momentum is None:
                momentum = 1.0 / float(state["count"])
        if not channels:  # (k, B, C) -> (B, k*C)
            k, b, c = x.shape
            x = x.transpose(0, 1).reshape(b, k * c)
        out = F.batch_norm(
            x,
            None if state is None else state["mean"],
            None if state is None else state["var"],
            self._p(key, "weight"),
            self._p(key, "bias"),
            training=self.training or state is None,
            momentum=0.0 if momentum is None else momentum,
            eps=module.eps,
        )
        if not channels:
            out = out.view(b, k, c).transpose(0, 1)
        return out

    @torch.no_grad()
    def unstack(self) -> None:
        """Copy the stacked parameters and running statistics back into the k models."""
        for key, _, op in self.stages:
            for i, target in enumerate(self.groups[key]):
                for what in ("weight", "bias"):
                    stacked = self._p(key, what)
                    if stacked is None:
                        continue
                    if op == "linear":
                        getattr(target, what).copy_(stacked[i])
                    else:
                        size = getattr(target, what).shape[0]
                        getattr(target, what).copy_(stacked[i * size : (i + 1) * size])
                if key in self.running:
                    c = target.running_mean.shape[0]
                    target.running_mean.copy_(self.running[key]["mean"][i * c : (i + 1) * c])
                    target.running_var.copy_(self.running[key]["var"][i * c : (i + 1) * c])
                    target.num_batches_tracked.copy_(self.running[key]["count"])

    def to_(self, device: torch.device, channels_last: bool) -> _StackedNet:
        self.to(device)
        for state in self.running.values():
            for name in state:
                state[name] = state[name].to(device)
        if channels_last:
            for key, _, op in self.stages:
                if op == "conv":
                    weight = self.params[f"{key}__weight"]
                    weight.data = weight.data.contiguous(memory_format=torch.channels_last)
        return self


# --------------------------------------------------------------------------- optimizers


def _optimizer_settings(optimizer: torch.optim.Optimizer, model: nn.Module) -> tuple[type, dict[str, Any]]:
    if type(optimizer) not in _OPTIMIZERS:
        raise NotStackableError(
            f"fit_stacked stacks SGD, Adam and AdamW (they act element by element), got {type(optimizer).__name__}"
        )
    if len(optimizer.param_groups) != 1:
        raise NotStackableError(
            f"fit_stacked needs one parameter group, got {len(optimizer.param_groups)}; per-layer settings do not stack"
        )
    if optimizer.state:
        raise NotStackableError("fit_stacked needs fresh optimizers (this one has state from earlier steps)")
    group = optimizer.param_groups[0]
    if {id(p) for p in group["params"]} != {id(p) for p in model.parameters()}:
        raise NotStackableError("each optimizer must hold exactly its model's parameters (all of them)")
    settings = {key: value for key, value in group.items() if key != "params"}
    return type(optimizer), settings


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return torch.equal(torch.as_tensor(a), torch.as_tensor(b))
    return a == b


# --------------------------------------------------------------------------- training


def fit_stacked(
    models: Sequence[nn.Module],
    train: Any,
    *,
    seeds: Sequence[int],
    val: Any = None,
    epochs: int,
    batch_size: int,
    optimizers: Sequence[torch.optim.Optimizer] | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    shuffle: bool = True,
    train_mode: str = "every_epoch",
    device: Any = None,
    progress: bool = True,
    drop_last: bool = False,
    eval_batch_size: int = 1024,
    meta: dict[str, Any] | None = None,
    channels_last: bool | None = None,
) -> list[History]:
    """Train ``models[i]`` as ``fit(models[i], train, seed=seeds[i], ...)`` would, all in one pass.

    Same arguments and conventions as :func:`bnlib.training.fit`, with one model,
    seed and optimizer per copy. The models are trained in place: their
    parameters, running statistics and ``num_batches_tracked`` hold the trained
    values when it returns (the optimizers passed in are only read for their
    type and settings; their state is not updated). ``History.seconds`` is each
    epoch's wall time divided by ``k``: the cost per model.

    Args:
        models: ``k >= 1`` models of one stackable architecture (see :func:`check_stackable`),
            each already initialized under its own seed.
        train, val, epochs, batch_size, loss_fn, shuffle, train_mode, progress, drop_last,
            eval_batch_size, meta: as in :func:`~bnlib.training.fit` (``train_mode="first_epoch_only"``
            trains epochs 2 and later in evaluation mode, as ``fit`` does).
        seeds: one seed per model: its batch order (the same generator ``fit`` uses).
        optimizers: one fresh optimizer per model (default ``Adam(lr=1e-3)`` each).
        device: where to train (the explicit argument, else the models' device, else
            :func:`bnlib.get_device`).
        channels_last: lay the convolutions' data out channels-last (default: on a CPU).

    Returns:
        One :class:`~bnlib.history.History` per model, as ``fit`` returns.

    Raises:
        NotStackableError: a layer, hook or optimizer that does not stack (the message says which).

    Example:
        >>> from bnlib.models import MLP
        >>> x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0)); y = (x[:, 0] > 0).long()
        >>> models = []
        >>> for s in (0, 1):
        ...     _ = torch.manual_seed(s); models.append(MLP((4, 8, 2), norm="batch"))
        >>> hs = fit_stacked(models, (x, y), seeds=(0, 1), epochs=2, batch_size=16, progress=False, device="cpu")
        >>> [h.epochs for h in hs], len(hs[0].batch_loss)
        ([2, 2], 8)
    """
    from tqdm.auto import tqdm

    from bnlib.config import seed_everything
    from bnlib.device import resolve_device
    from bnlib.training import (
        TrainingInterrupted,
        _accumulator_dtype,
        _batch_bounds,
        _batch_count,
        _check_positive_int,
        _check_train_mode,
        _DeferredInterrupt,
        _divergence_check_interval,
        _seeded_generator,
        as_tensors,
    )

    models = list(models) if not isinstance(models, nn.Module) else [models]
    if not models:
        raise ValueError("models is empty; pass at least one model")
    for model in models:
        if not isinstance(model, nn.Module):
            raise TypeError(f"models must be torch.nn.Modules, got {type(model).__name__}")
    if len({id(m) for m in models}) != len(models):
        raise ValueError("models must be distinct objects (the same model twice would be trained twice)")
    seeds = list(seeds)
    if len(seeds) != len(models) or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
        raise ValueError(f"seeds must be {len(models)} integers, one per model, got {seeds!r}")
    epochs = _check_positive_int("epochs", epochs)
    batch_size = _check_positive_int("batch_size", batch_size)
    eval_batch_size = _check_positive_int("eval_batch_size", eval_batch_size)
    shuffle = _checks.boolean(shuffle, "shuffle", hint="the source tutorial's loader does not shuffle: shuffle=False")
    progress = _checks.boolean(progress, "progress")
    drop_last = _checks.boolean(drop_last, "drop_last")
    train_mode = _check_train_mode(train_mode)
    if meta is not None and not isinstance(meta, dict):
        raise TypeError(f"meta must be a dict of labels, got {type(meta).__name__}")
    custom_loss = loss_fn is not None
    if custom_loss and not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable (output, target) -> loss, got {type(loss_fn).__name__}")
    for model in models:
        check_stackable(model)
    if len({type(m) for m in models}) != 1:
        raise NotStackableError(f"the models differ in type: {sorted({type(m).__name__ for m in models})}")

    device = resolve_device(models[0], device)
    for model in models:
        model.to(device)
    if optimizers is None:
        optimizers = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in models]
    optimizers = list(optimizers)
    if len(optimizers) != len(models):
        raise ValueError(f"pass one optimizer per model: {len(models)} models, {len(optimizers)} optimizers")
    settings = [_optimizer_settings(o, m) for o, m in zip(optimizers, models)]
    if any(
        s[0] is not settings[0][0]
        or s[1].keys() != settings[0][1].keys()
        or not all(_same(s[1][key], settings[0][1][key]) for key in s[1])
        for s in settings
    ):
        raise NotStackableError("the optimizers differ in type or settings; stacked models share one optimizer setting")

    dtype = next((p.dtype for p in models[0].parameters() if p.is_floating_point()), None)
    x, y = as_tensors(train, name="train", device=device, dtype=dtype)
    val_data = as_tensors(val, name="val", device=device, dtype=dtype) if val is not None else None
    _dry_run(models[0], x, val_data)
    n, k = len(x), len(models)
    n_batches = _batch_count(n, batch_size, drop_last=drop_last)
    if channels_last is None:
        channels_last = device.type == "cpu"
    net = _StackedNet(models).to_(device, channels_last and type(models[0]).__name__ == "LeNet5")
    optimizer_class, optimizer_settings = settings[0]
    if (
        optimizer_settings.get("fused") is None
        and optimizer_settings.get("foreach") is None
        and device.type in ("cpu", "cuda")
    ):
        # One fused kernel per step instead of ~10 small ones per parameter: the same update, element by element.
        optimizer_settings = {**optimizer_settings, "fused": True, "foreach": None}
    optimizer = optimizer_class(net.params.values(), **optimizer_settings)
    generators = [_seeded_generator(s) for s in seeds]  # fit's batch order, one per model
    histories = [History(meta={"framework": "pytorch", "seed": int(s), **(meta or {})}) for s in seeds]
    seed_everything(seeds[-1])  # the global generators as a loop of fit() calls leaves them
    check_every = _divergence_check_interval(device)
    acc = _accumulator_dtype(device)
    epoch, step_losses = 0, []
    try:
        with _DeferredInterrupt() as interrupt:
            for epoch in range(1, epochs + 1):
                start_time = time.perf_counter()
                net.train(train_mode == "every_epoch" or epoch == 1)  # fit's _epoch_mode
                order = (
                    torch.stack([torch.randperm(n, generator=g) for g in generators]).to(device, non_blocking=True)
                    if shuffle
                    else None
                )
                step_losses, checked = [], 0
                loss_sum = torch.zeros(k, device=device, dtype=acc)
                correct = torch.zeros(k, device=device, dtype=torch.int64)
                has_accuracy, seen = True, 0
                desc = f"epoch {epoch}/{epochs} ({k} models stacked)"
                with tqdm(total=n_batches, desc=desc, disable=not progress, leave=False) as bar:
                    for lo, hi in _batch_bounds(n, batch_size, n_batches):
                        if order is None:
                            xb, yb = net.stack_input(x[lo:hi], None), y[lo:hi].unsqueeze(0).expand(k, hi - lo)
                        else:
                            index = order[:, lo:hi]  # (k, B): each model its own batch
                            xb, yb = net.stack_input(x, index), y[index]
                        if channels_last and xb.dim() == 4:
                            xb = xb.contiguous(memory_format=torch.channels_last)
                        output = net(xb)  # (k, B, classes)
                        losses = _losses(output, yb, loss_fn if custom_loss else None)
                        optimizer.zero_grad(set_to_none=True)
                        losses.sum().backward()  # model i's gradient is exactly that of its own loss
                        optimizer.step()
                        step = losses.detach()
                        step_losses.append(step)
                        loss_sum += step.to(acc) * (hi - lo)
                        hits = _correct(output.detach(), yb)
                        has_accuracy = has_accuracy and hits is not None
                        if hits is not None:
                            correct += hits
                        seen += hi - lo
                        bar.update()
                        if len(step_losses) - checked >= check_every:
                            _check_diverged(step_losses, checked, epoch, optimizer, histories, seeds, x)
                            checked = len(step_losses)
                        if interrupt.requested:
                            break
                    _check_diverged(step_losses, checked, epoch, optimizer, histories, seeds, x)
                    if interrupt.requested and len(step_losses) < n_batches:
                        raise _stacked_interrupted(histories, epoch, step_losses)
                    per_step = torch.stack(step_losses).float().cpu()  # (steps, k): one sync per epoch
                    train_loss = (loss_sum / seen).cpu().tolist()
                    train_accuracy = (correct.double() / seen).cpu().tolist() if has_accuracy else [math.nan] * k
                    val_loss = val_accuracy = [math.nan] * k
                    if val_data is not None:
                        val_loss, val_accuracy = _evaluate(
                            net, val_data, eval_batch_size, loss_fn if custom_loss else None
                        )
                    seconds = (time.perf_counter() - start_time) / k
                    for i, history in enumerate(histories):
                        history.batch_loss.extend(per_step[:, i].tolist())
                        history.add_epoch(
                            train_loss=train_loss[i],
                            train_accuracy=train_accuracy[i],
                            val_loss=val_loss[i],
                            val_accuracy=val_accuracy[i],
                            seconds=seconds,
                        )
                if interrupt.requested:
                    raise _stacked_interrupted(histories, epoch, step_losses)
    except TrainingInterrupted:
        raise
    except KeyboardInterrupt as error:  # one that did not wait for the step to end
        raise _stacked_interrupted(histories, epoch, step_losses) from error
    finally:
        net.unstack()  # the models hold what was trained, also after an error or an interrupt
    return histories


@torch.no_grad()
def _dry_run(model: nn.Module, x: torch.Tensor, val: tuple[torch.Tensor, torch.Tensor] | None) -> None:
    """One example through the first model in evaluation mode: a wrong input shape fails with the model's own message."""
    was_training = model.training
    model.eval()
    try:
        model(x[:1])
        if val is not None:
            model(val[0][:1])
    finally:
        model.train(was_training)


def _check_diverged(step_losses, checked, epoch, optimizer, histories, seeds, x) -> None:
    """:func:`bnlib.training._raise_if_diverged` for k models: the error names the seeds that diverged."""
    from bnlib.training import TrainingDivergedError, _raise_if_diverged

    try:
        _raise_if_diverged(
            step_losses, epoch=epoch, first_step=checked, optimizer=optimizer, history=histories[0], inputs=x
        )
    except TrainingDivergedError as error:
        bad = [seed for seed, value in zip(seeds, error.loss) if not math.isfinite(value)]
        stacked = TrainingDivergedError(
            f"{error} Stacked run of {len(seeds)} models: the model(s) with seed {bad} diverged, all stopped; "
            ".history is the list of every model's History (finished epochs only)."
        )
        for name in ("epoch", "step", "loss", "learning_rates", "epoch_batch_loss"):
            setattr(stacked, name, getattr(error, name))
        stacked.history, stacked.seeds = histories, bad
        raise stacked from None


def _stacked_interrupted(histories, epoch, step_losses):
    """The TrainingInterrupted of a stacked run: ``.history`` is the list of every model's History."""
    from bnlib.training import _interrupted

    error = _interrupted(histories[0], epoch, [])
    message = (
        f"{error.args[0].split(';')[0]} ({len(histories)} models stacked, {len(step_losses)} step(s) of epoch {epoch} "
        "kept in the models); .history is the list of every model's History (finished epochs only)"
    )
    error.args = (message,)
    error.history = histories
    error.steps = 0 if histories[0].epochs >= epoch else len(step_losses)
    error.epoch_batch_loss = [] if not error.steps else torch.stack(step_losses).float().cpu().tolist()
    return error


def _losses(output: torch.Tensor, target: torch.Tensor, loss_fn: Callable | None) -> torch.Tensor:
    """Each model's mean loss, shape (k,)."""
    k, b = target.shape
    if loss_fn is None:
        return F.cross_entropy(output.reshape(k * b, -1), target.reshape(k * b), reduction="none").view(k, b).mean(1)
    return torch.stack([loss_fn(output[i], target[i]) for i in range(k)])


def _correct(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
    if output.dim() == 3 and output.shape[2] > 1 and not target.is_floating_point():
        return (output.argmax(dim=2) == target).sum(dim=1)
    return None


@torch.no_grad()
def _evaluate(
    net: _StackedNet, data: tuple[torch.Tensor, torch.Tensor], batch_size: int, loss_fn
) -> tuple[list[float], list[float]]:
    """Each model's mean loss and accuracy on ``data`` in evaluation mode, as :func:`bnlib.training.evaluate`."""
    from bnlib.training import _accumulator_dtype

    x, y = data
    k = net.k
    device = x.device
    net.eval()
    loss_sum = torch.zeros(k, device=device, dtype=_accumulator_dtype(device))
    correct = torch.zeros(k, device=device, dtype=torch.int64)
    has_accuracy = True
    for start in range(0, len(x), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        stacked = net.stack_input(xb, None)
        if stacked.dim() == 4 and stacked.device.type == "cpu":
            stacked = stacked.contiguous(memory_format=torch.channels_last)
        output = net(stacked)
        targets = yb.unsqueeze(0).expand(k, len(yb))
        loss_sum += _losses(output, targets, loss_fn).to(loss_sum.dtype) * len(yb)
        hits = _correct(output, targets)
        has_accuracy = has_accuracy and hits is not None
        if hits is not None:
            correct += hits
    net.train()
    loss = (loss_sum / len(x)).cpu().tolist()
    accuracy = (correct.double() / len(x)).cpu().tolist() if has_accuracy else [math.nan] * k
    return loss, accuracy
