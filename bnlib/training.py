"""One training loop for every PyTorch chapter: data on the device, index-sliced batches, a History.

Why it is fast on small models: the whole dataset is one tensor on the device,
so a batch is an index slice (no per-image transforms, no DataLoader workers);
losses and correct counts are accumulated on the device and read once per
epoch (no host-device synchronization per step); training accuracy comes from
the training pass itself instead of a second pass over the data.

The pieces of the loop are small private helpers that other loops reuse (the
stacked multi-seed trainer, the probing run of :mod:`bnlib.probes`):
:func:`_seeded_generator`, :func:`_batch_count`, :func:`_epoch_order`,
:func:`_batch_bounds` and :func:`_take_batch` (the batching),
:func:`_optimizer_step` (one step), :func:`_raise_if_diverged` (the
non-finite-loss check) and :class:`_DeferredInterrupt` (Ctrl-C between steps).
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from bnlib import _checks
from bnlib.device import resolve_device
from bnlib.history import History

__all__ = ["fit", "evaluate", "as_tensors", "TrainingDivergedError", "TrainingInterrupted"]

logger = logging.getLogger(__name__)

Data = Sequence[Any]  # an (x, y) pair of tensors or arrays


def as_tensors(
    data: Any, *, name: str = "data", device: Any = None, dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check an ``(x, y)`` pair and return it as tensors on ``device``.

    NumPy arrays become tensors; floating inputs are cast to ``dtype`` when given.

    Raises:
        TypeError: ``data`` is not a pair of tensors or arrays.
        ValueError: the pair is empty or ``x`` and ``y`` differ in length.

    Example:
        >>> x, y = as_tensors((np.zeros((3, 2)), np.arange(3)), device="cpu", dtype=torch.float32)
        >>> x.dtype, y.dtype, tuple(x.shape)
        (torch.float32, torch.int64, (3, 2))
    """
    if isinstance(data, (str, bytes)) or not isinstance(data, (tuple, list)) or len(data) != 2:
        raise TypeError(
            f"{name} must be a pair (x, y) of tensors or arrays, got {type(data).__name__}"
            f"{f' of length {len(data)}' if isinstance(data, (tuple, list)) else ''}; e.g. {name}=mnist.torch('train')"
        )
    tensors = []
    for part, value in zip("xy", data):
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value))
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name}: {part} must be a torch.Tensor or a numpy array, got {type(value).__name__}")
        if value.dim() == 0:
            raise ValueError(f"{name}: {part} must have a leading example axis, got a scalar")
        tensors.append(value)
    x, y = tensors
    if len(x) != len(y):
        raise ValueError(f"{name}: x has {len(x)} examples but y has {len(y)}; they must match one to one")
    if len(x) == 0:
        raise ValueError(f"{name} is empty (0 examples); pass at least one example")
    if dtype is not None and x.is_floating_point() and x.dtype != dtype:
        x = x.to(dtype)
    if device is not None:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    return x, y


class TrainingDivergedError(FloatingPointError, ValueError):
    """The training loss became NaN or infinite: :func:`fit` stopped at the first such step.

    Attributes:
        history: the :class:`~bnlib.history.History` of the epochs that finished
            before the one that diverged (their ``batch_loss`` included); the
            diverged epoch is not in it.
        epoch: the epoch (from 1) in which the loss became non-finite.
        step: the step (from 1) of that epoch whose loss was the first non-finite one.
        loss: that step's loss (``nan``, ``inf`` or ``-inf``; a list for a stacked run).
        learning_rates: the learning rate of every parameter group at that point.
        epoch_batch_loss: the losses of the diverged epoch's steps up to and including ``step``.

    It is a ``FloatingPointError`` (what went wrong) and a ``ValueError`` (the
    house's type for a bad setting or bad data), so either ``except`` catches it.
    """

    history: History
    epoch: int
    step: int
    loss: Any
    learning_rates: list[float]
    epoch_batch_loss: list[Any]


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (or another ``KeyboardInterrupt``) stopped :func:`fit`; the History so far is on it.

    A ``KeyboardInterrupt``, so a loop around ``fit`` (several seeds, several
    configurations) stops too; catch it to keep what was trained.

    Attributes:
        history: the :class:`~bnlib.history.History` of the finished epochs.
        epoch: the epoch that was cut short (from 1), or None when every epoch of it had finished.
        steps: how many optimizer steps of that epoch were completed (the model keeps them).
        epoch_batch_loss: those steps' losses (not in ``history``).
    """

    history: History
    epoch: int | None
    steps: int
    epoch_batch_loss: list[float]


def _seeded_generator(seed: int | None) -> torch.Generator | None:
    """The generator of the batch order: on the CPU, so that a seed gives the same order on every device."""
    return None if seed is None else torch.Generator().manual_seed(int(seed))


def _batch_count(n: int, batch_size: int, *, drop_last: bool) -> int:
    """Batches per epoch over ``n`` examples; a ValueError when ``drop_last`` leaves none."""
    count = n // batch_size if drop_last else math.ceil(n / batch_size)
    if count == 0:
        raise ValueError(
            f"drop_last=True with batch_size={batch_size} > {n} training examples leaves no batch; "
            "lower batch_size or set drop_last=False"
        )
    return count


def _epoch_order(
    n: int, *, shuffle: bool, generator: torch.Generator | None, device: torch.device | str
) -> torch.Tensor | None:
    """One epoch's order of the ``n`` examples on ``device``: a fresh permutation drawn from ``generator``, or None (the stored order) without ``shuffle``."""
    return torch.randperm(n, generator=generator).to(device, non_blocking=True) if shuffle else None


def _batch_bounds(n: int, batch_size: int, n_batches: int) -> list[tuple[int, int]]:
    """``(lo, hi)`` of each batch, positions in the epoch's order; the last may be shorter."""
    return [(b * batch_size, min((b + 1) * batch_size, n)) for b in range(n_batches)]


def _take_batch(
    x: torch.Tensor, y: torch.Tensor, order: torch.Tensor | None, lo: int, hi: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch at positions ``lo:hi`` of the epoch's ``order`` (views without an order, no copy)."""
    if order is None:
        return x[lo:hi], y[lo:hi]
    index = order[lo:hi]
    return x[index], y[index]


def _optimizer_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    xb: torch.Tensor,
    yb: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step: forward, loss, zero the gradients, backward, update. Returns the detached loss and output (on the device, no sync)."""
    output = model(xb)
    loss = loss_fn(output, yb)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), output.detach()


def _divergence_check_interval(device: torch.device) -> int:
    """Steps between two finiteness checks of the loss.

    Every step on the CPU (reading a value costs nothing there); every 32
    steps on an accelerator (one host-device sync per 32 steps, not per step).
    """
    return 1 if device.type == "cpu" else 32


def _learning_rates(optimizer: torch.optim.Optimizer | None) -> list[float]:
    if optimizer is None:
        return []
    return [float(group["lr"]) for group in optimizer.param_groups if "lr" in group]


def _raise_if_diverged(
    step_losses: Sequence[torch.Tensor],
    *,
    epoch: int,
    first_step: int,
    optimizer: torch.optim.Optimizer | None,
    history: History,
    inputs: torch.Tensor | None = None,
) -> None:
    """Raise :class:`TrainingDivergedError` if a loss in ``step_losses[first_step:]`` is NaN or infinite.

    ``step_losses`` are the epoch's step losses so far, on the device (0-d
    tensors, or 1-d with one loss per model for a stacked run); those before
    ``first_step`` were checked already. Costs one host-device sync; only on
    failure are the losses copied to the host, to name the first bad step.
    ``history`` holds the finished epochs and is put on the error as it is.
    ``inputs`` (the training inputs), if given, are checked for NaN/inf only on
    failure, to say whether the data is the cause.
    """
    pending = step_losses[first_step:]
    if len(pending) == 0 or bool(torch.isfinite(torch.stack(list(pending))).all()):
        return
    values = torch.stack(list(step_losses)).detach().cpu().double()
    bad = ~torch.isfinite(values.reshape(len(values), -1)).all(dim=1)
    index = int(bad.nonzero()[0, 0])
    loss = values[index].tolist()
    rates = _learning_rates(optimizer)
    shown = ", ".join(f"{rate:g}" for rate in rates) or "unknown"
    cause = ""
    if inputs is not None and inputs.is_floating_point():
        nonfinite = int((~torch.isfinite(inputs)).sum())
        if nonfinite:
            cause = (
                f" The training inputs hold {nonfinite} NaN or infinite value(s): clean the data "
                "(e.g. keep the rows where torch.isfinite(x).flatten(1).all(1))."
            )
    error = TrainingDivergedError(
        f"training diverged: the loss is {loss} at epoch {epoch}, step {index + 1} "
        f"(step {len(history.batch_loss) + index + 1} of the run), learning rate(s) {shown}.{cause} "
        f"Training stopped; the History of the {history.epochs} finished epoch(s) is this error's .history. "
        "Lower the learning rate, check the data and the model's output for NaN or inf, or clip the gradients "
        "(torch.nn.utils.clip_grad_norm_)."
    )
    error.history, error.epoch, error.step, error.loss = history, epoch, index + 1, loss
    error.learning_rates, error.epoch_batch_loss = rates, values[: index + 1].tolist()
    raise error


class _DeferredInterrupt:
    """While active, Ctrl-C (SIGINT) only sets :attr:`requested`, so a loop can stop between two steps.

    A second Ctrl-C interrupts at once (a step that hangs can still be
    stopped). Active only in the main thread and while SIGINT has Python's
    default handler (the one that raises ``KeyboardInterrupt``, also what
    Jupyter uses while a cell runs); elsewhere a ``KeyboardInterrupt`` arrives
    as usual, wherever the code is, and the loop catches it.
    """

    def __init__(self) -> None:
        self.requested = False
        self._installed = False

    def __enter__(self) -> _DeferredInterrupt:
        main = threading.current_thread() is threading.main_thread()
        if main and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            signal.default_int_handler(signum, frame)  # the second Ctrl-C: raise KeyboardInterrupt now
        self.requested = True
        logger.warning("Ctrl-C: training stops after the current step; press Ctrl-C again to stop at once")

    def __exit__(self, *exc_info: Any) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            self._installed = False


def _interrupted(history: History, epoch: int, epoch_losses: Sequence[torch.Tensor]) -> TrainingInterrupted:
    """The TrainingInterrupted to raise when epoch ``epoch`` stopped after ``len(epoch_losses)`` steps."""
    finished = history.epochs >= epoch
    losses = [] if finished or not epoch_losses else torch.stack(list(epoch_losses)).float().cpu().tolist()
    where = (
        ("before the first epoch" if epoch == 0 else f"after epoch {epoch}")
        if finished
        else f"in epoch {epoch} after {len(losses)} step(s) (kept in the model; their losses are .epoch_batch_loss)"
    )
    error = TrainingInterrupted(
        f"training interrupted {where}; the History of the {history.epochs} finished epoch(s) is this exception's .history"
    )
    error.history, error.epoch = history, None if finished else epoch
    error.steps, error.epoch_batch_loss = (0 if finished else len(losses)), losses
    return error


TRAIN_MODES = ("every_epoch", "first_epoch_only")


def _check_train_mode(train_mode: Any) -> str:
    """``train_mode`` as one of :data:`TRAIN_MODES`, or a ValueError/TypeError that names them."""
    if not isinstance(train_mode, str):
        raise TypeError(
            f"train_mode must be one of {TRAIN_MODES}, got {train_mode!r} ({type(train_mode).__name__}); "
            "'first_epoch_only' reproduces a loop that calls model.train() once, before its epochs"
        )
    if train_mode not in TRAIN_MODES:
        raise ValueError(
            f"train_mode must be one of {TRAIN_MODES}, got {train_mode!r}; "
            "'every_epoch' (the default) is the usual loop"
        )
    return train_mode


def _epoch_mode(model: nn.Module, epoch: int, train_mode: str) -> None:
    """Put ``model`` in the mode it trains in at ``epoch`` (1-based): see ``fit``'s ``train_mode``."""
    model.train(train_mode == "every_epoch" or epoch == 1)


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be a positive integer, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _parameter_dtype(model: nn.Module) -> torch.dtype | None:
    for parameter in model.parameters():
        if parameter.is_floating_point():
            return parameter.dtype
    return None


def _accumulator_dtype(device: torch.device) -> torch.dtype:
    # float64 sums keep an epoch's mean loss exact to float32 precision; MPS has no float64.
    return torch.float32 if device.type == "mps" else torch.float64


def _correct(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
    """Number of correct class predictions, on the device; None where accuracy is undefined."""
    if output.dim() == 2 and output.shape[1] > 1 and target.dim() == 1 and not target.is_floating_point():
        return (output.argmax(dim=1) == target).sum()
    return None


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Data,
    *,
    batch_size: int = 1024,
    device: Any = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` on ``data`` = ``(x, y)``, in evaluation mode.

    The model is switched to ``eval()`` (batch norm uses its running statistics)
    and back to the mode it was in. Accuracy is ``argmax(output) == y``; it is
    NaN when outputs are not class scores.

    Args:
        model: the network.
        data: ``(x, y)`` tensors or arrays.
        batch_size: examples per forward pass (results do not depend on it in eval mode).
        device: where to compute (:func:`bnlib.device.resolve_device`: this argument, else where the
            model is, else :func:`bnlib.get_device`); the model is moved there, as :func:`fit` does.
        loss_fn: a mean-reduced loss ``(output, target) -> scalar`` (default cross-entropy).

    Example:
        >>> from bnlib.models import MLP
        >>> model = MLP((4, 3))
        >>> loss, acc = evaluate(model, (torch.zeros(5, 4), torch.zeros(5, dtype=torch.long)), device="cpu")
        >>> 0.0 <= acc <= 1.0
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    batch_size = _check_positive_int("batch_size", batch_size)
    device = resolve_device(model, device)
    model.to(device)
    loss_fn = nn.CrossEntropyLoss() if loss_fn is None else loss_fn
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable (output, target) -> loss, got {type(loss_fn).__name__}")
    x, y = as_tensors(data, name="data", device=device, dtype=_parameter_dtype(model))
    was_training = model.training
    model.eval()
    try:
        loss_sum = torch.zeros((), device=device, dtype=_accumulator_dtype(device))
        correct = torch.zeros((), device=device, dtype=torch.int64)
        has_accuracy = True
        for start in range(0, len(x), batch_size):
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
            output = model(xb)
            loss_sum += loss_fn(output, yb).to(loss_sum.dtype) * len(yb)
            hits = _correct(output, yb)
            has_accuracy = has_accuracy and hits is not None
            if hits is not None:
                correct += hits
    finally:
        model.train(was_training)
    return float(loss_sum) / len(x), (int(correct) / len(x) if has_accuracy else math.nan)


def fit(
    model: nn.Module,
    train: Data,
    *,
    val: Data | None = None,
    epochs: int,
    batch_size: int,
    optimizer: torch.optim.Optimizer | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    shuffle: bool = True,
    train_mode: str = "every_epoch",
    device: Any = None,
    seed: int | None = None,
    progress: bool = True,
    drop_last: bool = False,
    eval_batch_size: int = 1024,
    meta: dict[str, Any] | None = None,
) -> History:
    """Train ``model`` on ``train`` = ``(x, y)`` and return its :class:`~bnlib.history.History`.

    Each epoch: ``model.train()`` (unless ``train_mode`` says otherwise); the examples are visited in batches of
    ``batch_size`` (a fresh random order when ``shuffle``, else the stored
    order); one optimizer step per batch; then, with ``val``, the mean loss and
    accuracy on ``val`` in ``eval()`` mode under ``no_grad``. The model ends in
    the mode it started in.

    Conventions:
        - ``train_loss`` and ``train_accuracy`` of an epoch are averages over the
          examples as they were trained (each batch's loss weighted by its size):
          the model changes during the epoch, so they lag a second pass slightly.
        - ``batch_loss`` holds every step's loss, read from the device once per epoch.
        - ``seed`` seeds torch's global generator (dropout, noise layers) and the
          shuffling order; initialize the model under its own seed before calling
          ``fit`` (see :func:`bnlib.experiments.repeat`). With a seed, runs on the
          CPU are bit-for-bit repeatable.
        - Device: :func:`bnlib.device.resolve_device`: ``device`` if given,
          else where the model is, else :func:`bnlib.get_device` (which honours
          ``BNLIB_DEVICE``). A model built on the CPU trains on the CPU unless
          you pass ``device`` or move it first.
        - ``train_mode="first_epoch_only"`` reproduces a common bug (source
          000's loop): ``model.train()`` called once, before the epoch loop,
          and an accuracy function that calls ``model.eval()`` and never
          switches back. Epoch 1 trains in training mode; epochs 2 and later
          train in evaluation mode, so batch norm normalizes with its running
          statistics, which stop moving (and ``num_batches_tracked`` stops
          counting), while gradients still train every weight, batch norm's
          ``gamma`` and ``beta`` included; dropout is off. With one epoch the
          two modes are the same run. The default, ``"every_epoch"``, calls
          ``model.train()`` at the start of every epoch.

    Never a silent NaN:
        Every step's loss is checked for NaN and inf: after every step on the
        CPU, every 32 steps and at the end of each epoch on an accelerator (one
        host-device sync per 32 steps, so at most 31 more steps run after the
        first bad one). The first non-finite loss stops training with a
        :class:`TrainingDivergedError` that names the epoch, the step, the loss
        and the learning rate(s); its ``.history`` is the History of the epochs
        that finished before (the diverged epoch is not recorded as if it were
        fine; its losses up to the bad step are ``.epoch_batch_loss``). The
        model keeps the non-finite weights it reached: train a fresh one.

    Ctrl-C:
        An interrupt (Ctrl-C, SIGINT) during ``fit`` lets the current optimizer
        step finish, then stops (a second Ctrl-C stops at once). ``fit`` raises
        :class:`TrainingInterrupted`, a ``KeyboardInterrupt`` (so a loop over
        seeds stops too), whose ``.history`` holds the finished epochs. The
        partial epoch's steps stay in the model's weights but not in the
        History: its step count and losses are ``.steps`` and
        ``.epoch_batch_loss``. Ctrl-C in the last step still raises, with
        every epoch in ``.history``. A ``KeyboardInterrupt`` raised by the model
        itself, or arriving while SIGINT has a handler other than Python's
        default (which ``fit`` then leaves alone; off the main thread it
        installs none), stops in the middle of its step and is reported the
        same way. Either way the model ends in the mode it started in.

    Args:
        model: any ``nn.Module`` mapping a batch of ``x`` to outputs ``loss_fn`` accepts.
        train: ``(x, y)`` tensors or arrays with the same number of examples.
        val: optional ``(x, y)`` evaluated after every epoch.
        epochs: passes over ``train``.
        batch_size: examples per optimizer step.
        optimizer: an optimizer over ``model``'s parameters (default ``Adam(lr=1e-3)``,
            created after the model is moved to ``device``).
        loss_fn: mean-reduced ``(output, target) -> loss`` (default ``nn.CrossEntropyLoss()``).
        shuffle: reshuffle the examples every epoch (the source tutorial does not).
        train_mode: ``"every_epoch"`` (default: ``model.train()`` at the start of every epoch) or
            ``"first_epoch_only"`` (epochs 2 and later train in ``eval()`` mode, as source 000 does;
            see Conventions).
        device: where to train (default: where the model is, see Conventions); model and data are moved there.
        seed: see Conventions; ``None`` leaves the global generator alone.
        progress: show a tqdm progress bar per epoch.
        drop_last: skip the last batch when it is smaller than ``batch_size``.
        eval_batch_size: batch size of the validation pass (does not change its result).
        meta: labels copied into ``History.meta`` (e.g. ``{"config": "BN"}``).

    Returns:
        History with ``epochs`` entries per epoch column and one ``batch_loss`` per step.

    Raises:
        TypeError, ValueError: a bad argument (the message says which and how to fix it).
        TrainingDivergedError: a NaN or infinite training loss (see above); ``.history`` has the finished epochs.
        TrainingInterrupted: Ctrl-C (see above); ``.history`` has the finished epochs.

    Example:
        >>> from bnlib.models import MLP
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(64, 2, generator=g); y = (x[:, 0] > 0).long()
        >>> _ = torch.manual_seed(0); model = MLP((2, 8, 2))
        >>> history = fit(model, (x, y), val=(x, y), epochs=3, batch_size=16, seed=0, progress=False, device="cpu")
        >>> history.epochs, len(history.batch_loss), history.train_loss[-1] < history.train_loss[0]
        (3, 12, True)
    """
    from tqdm.auto import tqdm

    from bnlib.config import seed_everything

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    epochs = _check_positive_int("epochs", epochs)
    batch_size = _check_positive_int("batch_size", batch_size)
    eval_batch_size = _check_positive_int("eval_batch_size", eval_batch_size)
    train_mode = _check_train_mode(train_mode)
    shuffle = _checks.boolean(shuffle, "shuffle", hint="the source tutorial's loader does not shuffle: shuffle=False")
    progress = _checks.boolean(progress, "progress")
    drop_last = _checks.boolean(drop_last, "drop_last")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer over the model's parameters, got {type(optimizer).__name__}"
        )
    loss_fn = nn.CrossEntropyLoss() if loss_fn is None else loss_fn
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable (output, target) -> loss, got {type(loss_fn).__name__}")
    if meta is not None and not isinstance(meta, dict):
        raise TypeError(f"meta must be a dict of labels, got {type(meta).__name__}")
    device = resolve_device(model, device)
    model.to(device)
    dtype = _parameter_dtype(model)
    x, y = as_tensors(train, name="train", device=device, dtype=dtype)
    val_data = as_tensors(val, name="val", device=device, dtype=dtype) if val is not None else None
    n = len(x)
    n_batches = _batch_count(n, batch_size, drop_last=drop_last)

    if optimizer is None:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    else:
        owned = {id(p) for p in model.parameters()}
        if not any(id(p) in owned for group in optimizer.param_groups for p in group["params"]):
            raise ValueError(
                "optimizer holds none of the model's parameters; build it from this model: torch.optim.Adam(model.parameters())"
            )

    generator = None
    if seed is not None:
        seed_everything(seed)
        generator = _seeded_generator(seed)
    check_every = _divergence_check_interval(device)

    history = History(
        meta={"framework": "pytorch", **({"seed": int(seed)} if seed is not None else {}), **(meta or {})}
    )
    was_training = model.training
    epoch, step_losses = 0, []
    try:
        with _DeferredInterrupt() as interrupt:
            for epoch in range(1, epochs + 1):
                start_time = time.perf_counter()
                _epoch_mode(model, epoch, train_mode)
                order = _epoch_order(n, shuffle=shuffle, generator=generator, device=device)
                step_losses = []
                checked = 0  # step_losses[:checked] are known to be finite
                loss_sum = torch.zeros((), device=device, dtype=_accumulator_dtype(device))
                correct = torch.zeros((), device=device, dtype=torch.int64)
                has_accuracy = True
                seen = 0
                with tqdm(total=n_batches, desc=f"epoch {epoch}/{epochs}", disable=not progress, leave=False) as bar:
                    for lo, hi in _batch_bounds(n, batch_size, n_batches):
                        xb, yb = _take_batch(x, y, order, lo, hi)
                        step_loss, output = _optimizer_step(model, optimizer, loss_fn, xb, yb)
                        step_losses.append(step_loss)
                        loss_sum += step_loss.to(loss_sum.dtype) * (hi - lo)
                        hits = _correct(output, yb)
                        has_accuracy = has_accuracy and hits is not None
                        if hits is not None:
                            correct += hits
                        seen += hi - lo
                        bar.update()
                        if len(step_losses) - checked >= check_every:
                            _raise_if_diverged(
                                step_losses,
                                epoch=epoch,
                                first_step=checked,
                                optimizer=optimizer,
                                history=history,
                                inputs=x,
                            )
                            checked = len(step_losses)
                        if interrupt.requested:
                            break
                    _raise_if_diverged(
                        step_losses, epoch=epoch, first_step=checked, optimizer=optimizer, history=history, inputs=x
                    )
                    if interrupt.requested and len(step_losses) < n_batches:
                        raise _interrupted(history, epoch, step_losses)
                    batch_loss = torch.stack(step_losses).float().cpu().tolist()  # one sync per epoch
                    train_loss = float(loss_sum) / seen
                    train_accuracy = int(correct) / seen if has_accuracy else math.nan
                    val_loss = val_accuracy = math.nan
                    if val_data is not None:
                        val_loss, val_accuracy = evaluate(
                            model, val_data, batch_size=eval_batch_size, device=device, loss_fn=loss_fn
                        )
                    history.batch_loss.extend(batch_loss)  # the epoch's steps and summary enter together
                    history.add_epoch(
                        train_loss=train_loss,
                        train_accuracy=train_accuracy,
                        val_loss=val_loss,
                        val_accuracy=val_accuracy,
                        seconds=time.perf_counter() - start_time,
                    )
                    bar.set_postfix(loss=f"{train_loss:.4f}", val_accuracy=f"{val_accuracy:.4f}")
                if interrupt.requested:
                    raise _interrupted(history, epoch, step_losses)
    except TrainingInterrupted:
        raise
    except KeyboardInterrupt as error:  # one that did not wait for the step to end
        raise _interrupted(history, epoch, step_losses) from error
    finally:
        model.train(was_training)
    return history
