"""Activation hooks: record per-layer summaries of activations and their gradients while a model runs.

:func:`record_activations` is a context manager that registers forward hooks
on chosen modules (and gradient hooks on their outputs), stores detached
summaries (mean, standard deviation, quantiles) or, on request, detached
copies of the tensors, and removes every hook when the ``with`` block ends,
even on an error, so nothing keeps the graph or the module alive.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["DEFAULT_QUANTILES", "ActivationRecorder", "record_activations", "summarize"]

#: The percentiles Ioffe and Szegedy (2015, figure 1) draw for a sigmoid's input.
DEFAULT_QUANTILES: tuple[float, ...] = (0.15, 0.5, 0.85)

_MAX_QUANTILE_ELEMENTS = 1 << 24  # torch.quantile's input limit


def summarize(tensor: torch.Tensor, quantiles: Sequence[float] = DEFAULT_QUANTILES) -> dict[str, float]:
    """Mean, standard deviation and quantiles of all elements of ``tensor``, as floats.

    Tensors with more than 2**24 elements (``torch.quantile``'s limit) are
    subsampled with a fixed stride for the quantiles; mean and std use every element.

    Example:
        >>> summarize(torch.arange(101.0), quantiles=(0.5,))
        {'mean': 50.0, 'std': 29.15..., 'q50': 50.0}
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"summarize expects a torch.Tensor, got {type(tensor).__name__}")
    quantiles = _check_quantiles(quantiles)
    flat = tensor.detach().reshape(-1).float()
    if flat.numel() == 0:
        raise ValueError("cannot summarize an empty tensor")
    if not bool(torch.isfinite(flat).all()):
        bad = int((~torch.isfinite(flat)).sum())
        raise ValueError(
            f"cannot summarize a tensor holding {bad} NaN or infinite value(s) of {flat.numel()}: its mean, std and "
            "quantiles would be NaN; find where the non-finite values come from (a diverged run, a bad input)"
        )
    sample = flat[:: math.ceil(flat.numel() / _MAX_QUANTILE_ELEMENTS)]
    qs = torch.quantile(sample, torch.tensor(list(quantiles), dtype=flat.dtype, device=flat.device))
    values = torch.cat([flat.mean().reshape(1), flat.std(unbiased=False).reshape(1), qs]).cpu().tolist()
    names = ["mean", "std", *(_quantile_name(q) for q in quantiles)]
    return dict(zip(names, values))


def _quantile_name(q: float) -> str:
    return f"q{100 * q:g}"


def _check_quantiles(quantiles: Sequence[float]) -> tuple[float, ...]:
    try:
        qs = tuple(float(q) for q in quantiles)
    except TypeError as error:
        raise TypeError(f"quantiles must be a sequence of numbers in [0, 1], got {quantiles!r}") from error
    if not qs or not all(0.0 <= q <= 1.0 for q in qs):
        raise ValueError(f"quantiles must be a non-empty sequence of numbers in [0, 1], got {quantiles!r}")
    return qs


@dataclass
class ActivationRecorder:
    """What :func:`record_activations` collected.

    Attributes:
        records: one dict per hook call: ``layer``, ``kind`` (``"activation"``
            or ``"gradient"``), ``call`` (0, 1, ... per layer and kind), ``mean``,
            ``std`` and one ``qNN`` entry per quantile; plain floats only.
        tensors: with ``keep_tensors=True``, ``{(layer, kind): [tensor, ...]}``,
            detached copies on the CPU.
    """

    records: list[dict[str, Any]] = field(default_factory=list)
    tensors: dict[tuple[str, str], list[torch.Tensor]] = field(default_factory=dict)

    def frame(self):
        """The records as a pandas DataFrame (one row per hook call)."""
        import pandas as pd

        return pd.DataFrame(self.records)


@contextmanager
def record_activations(
    model: nn.Module,
    layers: Sequence[str] | None = None,
    *,
    capture: str = "output",
    gradients: bool = False,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
    keep_tensors: bool = False,
) -> Iterator[ActivationRecorder]:
    """Record per-layer activation (and gradient) summaries while the block runs; remove the hooks on exit.

    A forward hook on each named module summarizes its output (or its first
    input, ``capture="input"``: the input to a sigmoid is the paper's figure).
    With ``gradients=True`` a hook on that tensor also summarizes the gradient
    of the loss with respect to it when ``backward()`` runs. Only detached
    floats are stored (and detached CPU copies with ``keep_tensors=True``), so
    recording holds no graph; the hooks are removed in a ``finally``, so
    ``module._forward_hooks`` is empty again after the block, even on an error,
    and a ``backward()`` run after the block (on a graph built inside it)
    records nothing.

    Args:
        model: the network.
        layers: names from ``model.named_modules()``; default every module that
            has no children (the leaves).
        capture: ``"output"`` (default) or ``"input"`` of each module.
        gradients: also record the gradient with respect to the captured tensor.
        quantiles: quantiles to store, each in [0, 1] (default 15 %, 50 %, 85 %).
        keep_tensors: also keep detached CPU copies of the tensors (memory grows
            with every call: use for a few batches).

    Example:
        >>> model = nn.Sequential(nn.Linear(3, 4), nn.Sigmoid())
        >>> with record_activations(model, ["1"], capture="input", gradients=True) as rec:
        ...     model(torch.randn(8, 3)).sum().backward()
        >>> [(r["layer"], r["kind"]) for r in rec.records], len(model[1]._forward_hooks)
        ([('1', 'activation'), ('1', 'gradient')], 0)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if capture not in ("output", "input"):
        raise ValueError(f"capture must be 'output' or 'input', got {capture!r}")
    qs = _check_quantiles(quantiles)
    modules = dict(model.named_modules())
    if layers is None:
        names = [name for name, module in modules.items() if name and not any(True for _ in module.children())]
    else:
        if isinstance(layers, str):
            raise TypeError(f"layers must be a sequence of module names, got the string {layers!r}; wrap it in a list")
        names = list(layers)
        unknown = [name for name in names if name not in modules]
        if unknown:
            raise ValueError(f"no module named {unknown} in the model; choose from {[n for n in modules if n]}")

    recorder = ActivationRecorder()
    calls: dict[tuple[str, str], int] = {}
    recording = [True]  # cleared on exit: a gradient hook of a graph built inside the block then records nothing

    def store(name: str, kind: str, tensor: torch.Tensor) -> None:
        if not recording[0]:
            return
        call = calls.get((name, kind), 0)
        calls[(name, kind)] = call + 1
        recorder.records.append({"layer": name, "kind": kind, "call": call, **summarize(tensor, qs)})
        if keep_tensors:
            recorder.tensors.setdefault((name, kind), []).append(tensor.detach().to("cpu", copy=True))

    def make_hook(name: str):
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            tensor = inputs[0] if capture == "input" else output
            if not isinstance(tensor, torch.Tensor):
                return
            store(name, "activation", tensor)
            if gradients and tensor.requires_grad:
                # A hook on the tensor, not the module: it is freed with the graph.
                tensor.register_hook(lambda g: store(name, "gradient", g))

        return hook

    handles = [modules[name].register_forward_hook(make_hook(name)) for name in names]
    try:
        yield recorder
    finally:
        recording[0] = False
        for handle in handles:
            handle.remove()
