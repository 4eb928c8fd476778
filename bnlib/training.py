"""One training loop for every PyTorch chapter: data on the device, index-sliced batches, a History.

Why it is fast on small models: the whole dataset is one tensor on the device,
so a batch is an index slice (no per-image transforms, no DataLoader workers);
losses and correct counts are accumulated on the device and read once per
epoch (no host-device synchronization per step); training accuracy comes from
the training pass itself instead of a second pass over the data.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from bnlib.history import History

__all__ = ["fit", "evaluate", "as_tensors"]

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
        device: where to compute (default: where the model's parameters are, else :func:`bnlib.get_device`);
            the model is moved there, as :func:`fit` does.
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
    device = _resolve_device(model, device)
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


def _resolve_device(model: nn.Module, device: Any) -> torch.device:
    from bnlib.device import get_device

    if device is not None:
        return get_device(device)
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else get_device()


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
    device: Any = None,
    seed: int | None = None,
    progress: bool = True,
    drop_last: bool = False,
    eval_batch_size: int = 1024,
    meta: dict[str, Any] | None = None,
) -> History:
    """Train ``model`` on ``train`` = ``(x, y)`` and return its :class:`~bnlib.history.History`.

    Each epoch: ``model.train()``; the examples are visited in batches of
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
        device: where to train (default :func:`bnlib.get_device`); model and data are moved there.
        seed: see Conventions; ``None`` leaves the global generator alone.
        progress: show a tqdm progress bar per epoch.
        drop_last: skip the last batch when it is smaller than ``batch_size``.
        eval_batch_size: batch size of the validation pass (does not change its result).
        meta: labels copied into ``History.meta`` (e.g. ``{"config": "BN"}``).

    Returns:
        History with ``epochs`` entries per epoch column and one ``batch_loss`` per step.

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
    from bnlib.device import get_device

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    epochs = _check_positive_int("epochs", epochs)
    batch_size = _check_positive_int("batch_size", batch_size)
    eval_batch_size = _check_positive_int("eval_batch_size", eval_batch_size)
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer over the model's parameters, got {type(optimizer).__name__}"
        )
    loss_fn = nn.CrossEntropyLoss() if loss_fn is None else loss_fn
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable (output, target) -> loss, got {type(loss_fn).__name__}")
    if meta is not None and not isinstance(meta, dict):
        raise TypeError(f"meta must be a dict of labels, got {type(meta).__name__}")
    device = get_device(device)
    model.to(device)
    dtype = _parameter_dtype(model)
    x, y = as_tensors(train, name="train", device=device, dtype=dtype)
    val_data = as_tensors(val, name="val", device=device, dtype=dtype) if val is not None else None
    n = len(x)
    n_batches = n // batch_size if drop_last else math.ceil(n / batch_size)
    if n_batches == 0:
        raise ValueError(
            f"drop_last=True with batch_size={batch_size} > {n} training examples leaves no batch; lower batch_size or set drop_last=False"
        )

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
        generator = torch.Generator().manual_seed(int(seed))  # on the CPU: the same order on every device

    history = History(
        meta={"framework": "pytorch", **({"seed": int(seed)} if seed is not None else {}), **(meta or {})}
    )
    was_training = model.training
    try:
        for epoch in range(1, epochs + 1):
            start_time = time.perf_counter()
            model.train()
            order = torch.randperm(n, generator=generator).to(device, non_blocking=True) if shuffle else None
            step_losses: list[torch.Tensor] = []
            loss_sum = torch.zeros((), device=device, dtype=_accumulator_dtype(device))
            correct = torch.zeros((), device=device, dtype=torch.int64)
            has_accuracy = True
            seen = 0
            bar = tqdm(total=n_batches, desc=f"epoch {epoch}/{epochs}", disable=not progress, leave=False)
            for b in range(n_batches):
                lo, hi = b * batch_size, min((b + 1) * batch_size, n)
                if order is None:
                    xb, yb = x[lo:hi], y[lo:hi]  # views, no copy
                else:
                    index = order[lo:hi]
                    xb, yb = x[index], y[index]
                output = model(xb)
                loss = loss_fn(output, yb)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step_loss = loss.detach()
                step_losses.append(step_loss)
                loss_sum += step_loss.to(loss_sum.dtype) * (hi - lo)
                hits = _correct(output.detach(), yb)
                has_accuracy = has_accuracy and hits is not None
                if hits is not None:
                    correct += hits
                seen += hi - lo
                bar.update()
            history.batch_loss.extend(torch.stack(step_losses).float().cpu().tolist())  # one sync per epoch
            train_loss = float(loss_sum) / seen
            train_accuracy = int(correct) / seen if has_accuracy else math.nan
            val_loss = val_accuracy = math.nan
            if val_data is not None:
                val_loss, val_accuracy = evaluate(
                    model, val_data, batch_size=eval_batch_size, device=device, loss_fn=loss_fn
                )
            history.add_epoch(
                train_loss=train_loss,
                train_accuracy=train_accuracy,
                val_loss=val_loss,
                val_accuracy=val_accuracy,
                seconds=time.perf_counter() - start_time,
            )
            bar.set_postfix(loss=f"{train_loss:.4f}", val_accuracy=f"{val_accuracy:.4f}")
            bar.close()
    finally:
        model.train(was_training)
    return history
