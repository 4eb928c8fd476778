"""Measure what happens inside a network while it trains: activations, gradients, the loss landscape.

Two kinds of tool live here.

Hooks. :func:`record_activations` is a context manager that registers forward
hooks on chosen modules (and gradient hooks on their outputs), stores detached
summaries (mean, standard deviation, quantiles) or, on request, detached
copies of the tensors, and removes every hook when the ``with`` block ends,
even on an error, so nothing keeps the graph or the module alive.

Measurements. The quantities Santurkar et al. (2018, "How does batch
normalization help optimization?", arXiv 1805.11604) use to test the claims
about batch norm, and the 2-D loss slice of Li et al. (2018, "Visualizing the
loss landscape of neural nets", arXiv 1712.09913):

- :func:`gradient_shift`: internal covariate shift as Santurkar et al. define
  it, the change of a layer's gradient when the layers before it are updated;
- :func:`loss_along_gradient`: loss variation, gradient predictiveness and
  effective beta-smoothness along the gradient direction;
- :func:`filter_normalized_direction` and :func:`loss_slice`: the loss over a
  plane spanned by two random filter-normalized directions;
- :func:`train_with_probes`: a plain SGD loop that takes these measurements
  between updates.

They are computed with ``torch.func.functional_call``: the model's parameters
are passed in as a dictionary, so a measurement never changes the model, its
running statistics or its gradients, and ``torch.func.vmap`` evaluates many
parameter points (step sizes, layers, grid points) in one batched call. A
model that vmap cannot trace (a layer with a data-dependent Python ``if``, such
as a check for non-finite statistics) is evaluated point by point instead,
with the same result.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

__all__ = [
    "DEFAULT_QUANTILES",
    "ActivationRecorder",
    "record_activations",
    "summarize",
    "weight_names",
    "gradient_shift",
    "loss_along_gradient",
    "filter_normalized_direction",
    "loss_slice",
    "LossSlice",
    "ProbeRun",
    "train_with_probes",
]

logger = logging.getLogger(__name__)

#: The percentiles Ioffe and Szegedy (2015, figure 1) draw for a sigmoid's input.
DEFAULT_QUANTILES: tuple[float, ...] = (0.15, 0.5, 0.85)

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Params = dict[str, torch.Tensor]

_MAX_QUANTILE_ELEMENTS = 1 << 24  # torch.quantile's input limit


# --------------------------------------------------------------------------- checks


def _check_model(model: Any) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not any(True for _ in model.parameters()):
        raise ValueError("model has no parameters; these measurements need at least one trainable weight")
    return model


def _check_batch(x: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor]:
    for name, value in (("x", x), ("y", y)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}; convert with torch.as_tensor")
    if x.dim() == 0 or y.dim() == 0 or len(x) != len(y) or len(x) == 0:
        raise ValueError(
            f"x and y must be non-empty batches of the same length, got shapes {tuple(x.shape)} and {tuple(y.shape)}"
        )
    return x, y


def _check_positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a positive number, got {type(value).__name__} {value!r}")
    if not (math.isfinite(float(value)) and float(value) > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def _check_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value!r}")
    return int(value)


def _loss_fn(loss_fn: LossFn | None) -> LossFn:
    if loss_fn is None:
        return nn.functional.cross_entropy
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable (output, target) -> scalar loss, got {type(loss_fn).__name__}")
    return loss_fn


# --------------------------------------------------------------------------- hooks


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
    flat = tensor.detach().reshape(-1).float()
    if flat.numel() == 0:
        raise ValueError("cannot summarize an empty tensor")
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


# --------------------------------------------------------------------------- functional core


def _state(model: nn.Module) -> tuple[Params, Params]:
    params = {name: p.detach() for name, p in model.named_parameters()}
    buffers = {name: b.detach() for name, b in model.named_buffers()}
    return params, buffers


def _batched_loss_and_grad(
    model: nn.Module,
    params: Params,
    buffers: Params,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: LossFn,
    *,
    chunk_size: int | None = None,
    need_grad: bool = True,
    vectorize: bool = True,
    seed: int = 0,
) -> tuple[Params | None, torch.Tensor]:
    """Loss (and gradient) at K parameter points: ``params`` values have a leading axis K.

    Buffers (running statistics) are copied per point, so batch norm in
    training mode may update them without touching the model. Every point sees
    the same random numbers (dropout masks, noise): vmap's ``randomness="same"``
    in the batched path, a re-seeded generator per point in the loop path.
    """

    def loss_at(p: Params, b: Params) -> torch.Tensor:
        return loss_fn(functional_call(model, (p, b), (x,)), y)

    k = next(iter(params.values())).shape[0]
    if vectorize:
        batched_buffers = {n: b.unsqueeze(0).expand(k, *b.shape).clone() for n, b in buffers.items()}
        fn = grad_and_value(loss_at) if need_grad else loss_at
        try:
            with _fixed_rng(seed, x.device):
                out = vmap(fn, randomness="same", chunk_size=chunk_size)(params, batched_buffers)
            return (out[0], out[1].detach()) if need_grad else (None, out.detach())
        except RuntimeError as error:
            # vmap cannot run data-dependent Python control flow (e.g. a layer that checks
            # `if bool(bad.any()): raise ...`); such models are evaluated point by point.
            if "vmap" not in str(error):
                raise
            logger.debug("vmap failed (%s); evaluating %d points in a loop", str(error).splitlines()[0], k)
    grads: list[Params] = []
    losses = []
    for i in range(k):
        point = {n: p[i] for n, p in params.items()}
        copies = {n: b.clone() for n, b in buffers.items()}
        with _fixed_rng(seed, x.device):
            if need_grad:
                g, value = grad_and_value(loss_at)(point, copies)
                grads.append(g)
            else:
                with torch.no_grad():
                    value = loss_at(point, copies)
        losses.append(value.detach())
    stacked = {n: torch.stack([g[n] for g in grads]) for n in params} if need_grad else None
    return stacked, torch.stack(losses)


@contextmanager
def _fixed_rng(seed: int, device: torch.device) -> Iterator[None]:
    # Fork so that measuring never shifts the random stream training draws from.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def _flat(tree: Params, names: Sequence[str]) -> torch.Tensor:
    """Concatenate the named entries (each with a leading axis K) into (K, D)."""
    return torch.cat([tree[n].reshape(tree[n].shape[0], -1) for n in names], dim=1)


def weight_names(model: nn.Module) -> list[str]:
    """Names of the weight matrices and kernels (parameters with two or more axes), in registration order.

    For ``nn.Sequential`` models and the book's models, registration order is
    the order of the forward pass; :func:`gradient_shift` relies on it.

    Example:
        >>> weight_names(nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3), nn.Linear(3, 1)))
        ['0.weight', '2.weight']
    """
    _check_model(model)
    return [name for name, p in model.named_parameters() if p.dim() >= 2]


# --------------------------------------------------------------------------- internal covariate shift


def gradient_shift(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    lr: float,
    layers: Sequence[str] | None = None,
    loss_fn: LossFn | None = None,
    vectorize: bool = True,
    seed: int = 0,
) -> list[dict[str, Any]]:
    r"""Internal covariate shift as Santurkar et al. (2018, definition 2.1) measure it.

    For the weight ``W_i`` of layer ``i`` and the batch ``(x, y)``:

    .. math::

        G_i = \nabla_{W_i} L(W_1, \dots, W_k), \qquad
        G'_i = \nabla_{W_i} L(W_1', \dots, W_{i-1}', W_i, \dots, W_k),

    where ``W_j' = W_j - lr * grad_j`` is the SGD update of every parameter
    registered before ``W_i`` (biases and batch-norm scales included). The
    shift is ``||G_i - G'_i||_2`` and the cosine between ``G_i`` and ``G'_i``:
    0 and 1 when the layers below do not change what layer ``i`` sees.

    Conventions: the model's mode is used as it is (``train()``: batch
    statistics); buffers are copied, so the model is not changed; both
    gradients see the same random numbers. "Before" means registration order
    (see :func:`weight_names`). All layers are evaluated in one vmapped call.

    Args:
        model: the network.
        x, y: one batch.
        lr: the SGD learning rate of the update.
        layers: parameter names to measure (default :func:`weight_names`).
        loss_fn: mean-reduced ``(output, target) -> loss`` (default cross-entropy).
        vectorize: evaluate all layers in one ``torch.func.vmap`` call (models with
            data-dependent Python checks fall back to a loop); ``False``: always a loop, same result.
        seed: seed of the shared random numbers.

    Returns:
        One dict per layer: ``layer``, ``l2`` (``||G - G'||``), ``cosine``,
        ``grad_norm`` (``||G||``) and ``relative_l2`` (``||G - G'|| / ||G||``).

    Example:
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
        >>> rows = gradient_shift(model, torch.randn(8, 3), torch.randint(0, 2, (8,)), lr=0.1)
        >>> [(r["layer"], r["l2"], r["cosine"]) for r in rows][0]
        ('0.weight', 0.0, 1.0)
    """
    _check_model(model)
    x, y = _check_batch(x, y)
    lr = _check_positive("lr", lr)
    loss_fn = _loss_fn(loss_fn)
    params, buffers = _state(model)
    names = list(params)
    targets = weight_names(model) if layers is None else list(layers)
    if isinstance(layers, str) or not targets or any(t not in params for t in targets):
        raise ValueError(f"layers must be a non-empty list of parameter names from {names}, got {layers!r}")

    one = {n: p.unsqueeze(0) for n, p in params.items()}
    grads, _ = _batched_loss_and_grad(model, one, buffers, x, y, loss_fn, vectorize=vectorize, seed=seed)
    # Point k: the parameters registered before targets[k] take one SGD step.
    shifted = {}
    for n, p in params.items():
        moved = torch.stack([p - lr * grads[n][0] if names.index(n) < names.index(t) else p for t in targets])
        shifted[n] = moved
    grads_after, _ = _batched_loss_and_grad(model, shifted, buffers, x, y, loss_fn, vectorize=vectorize, seed=seed)

    rows = []
    for k, target in enumerate(targets):
        g = grads[target][0].reshape(-1).double()
        # With nothing before it (the first layer), G' is G by definition: no rounding noise.
        g_after = grads_after[target][k].reshape(-1).double() if names.index(target) > 0 else g
        l2 = float((g - g_after).norm())
        norm, norm_after = float(g.norm()), float(g_after.norm())
        cosine = float(g @ g_after) / (norm * norm_after) if norm > 0 and norm_after > 0 else math.nan
        rows.append(
            {
                "layer": target,
                "l2": l2,
                "cosine": cosine,
                "grad_norm": norm,
                "relative_l2": l2 / norm if norm > 0 else math.nan,
            }
        )
    return rows


# --------------------------------------------------------------------------- smoothness along the gradient


def loss_along_gradient(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    step_sizes: Sequence[float],
    loss_fn: LossFn | None = None,
    vectorize: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """How predictable the loss and its gradient are along the gradient direction (Santurkar et al. 2018, section 3.1).

    With ``g = grad L(theta)`` on the batch and ``theta_eta = theta - eta * g`` for each step size ``eta``:

    - loss variation: ``max_eta L(theta_eta) - min_eta L(theta_eta)``
      (the spread of the loss over the step sizes);
    - gradient predictiveness: ``||g - grad L(theta_eta)||_2`` per step size,
      summarized by its maximum (small = the gradient stays predictive);
    - effective beta-smoothness: ``max_eta ||g - grad L(theta_eta)|| / ||eta * g||``,
      the largest gradient change per unit of distance moved.

    Conventions: the model's mode as it is; buffers copied (the model is not
    changed); every step size sees the same random numbers; all step sizes in
    one vmapped call.

    Args:
        model: the network.
        x, y: one batch.
        step_sizes: positive step sizes ``eta``.
        loss_fn: mean-reduced ``(output, target) -> loss`` (default cross-entropy).
        vectorize: evaluate all step sizes in one ``torch.func.vmap`` call (with a
            loop as fallback, see :func:`gradient_shift`); ``False``: a loop.
        seed: seed of the shared random numbers.

    Returns:
        dict with ``loss`` (at ``theta``), ``grad_norm``, ``step_sizes``,
        ``losses``, ``grad_change`` and ``beta`` (arrays, one entry per step
        size), and the summaries ``loss_variation``, ``gradient_predictiveness``
        (max of ``grad_change``) and ``beta_smoothness`` (max of ``beta``).

    Example:
        >>> model = nn.Linear(1, 1, bias=False); _ = nn.init.ones_(model.weight)
        >>> mse = nn.functional.mse_loss  # L(w) = (w - 3)^2 on x = 1, y = 3: gradient 2(w - 3), Hessian 2
        >>> out = loss_along_gradient(model, torch.ones(1, 1), torch.full((1, 1), 3.0), step_sizes=[0.1, 0.2], loss_fn=mse)
        >>> out["losses"].round(4).tolist(), round(out["beta_smoothness"], 4)
        ([2.56, 1.44], 2.0)
    """
    _check_model(model)
    x, y = _check_batch(x, y)
    loss_fn = _loss_fn(loss_fn)
    if isinstance(step_sizes, (int, float)) or not len(step_sizes):
        raise TypeError(f"step_sizes must be a non-empty sequence of positive numbers, got {step_sizes!r}")
    etas = [_check_positive("each step size", s) for s in step_sizes]
    params, buffers = _state(model)
    names = list(params)
    one = {n: p.unsqueeze(0) for n, p in params.items()}
    grads, loss = _batched_loss_and_grad(model, one, buffers, x, y, loss_fn, vectorize=vectorize, seed=seed)
    eta = torch.tensor(etas, dtype=next(iter(params.values())).dtype, device=x.device)
    moved = {n: params[n].unsqueeze(0) - eta.reshape(-1, *([1] * params[n].dim())) * grads[n] for n in names}
    grads_after, losses = _batched_loss_and_grad(model, moved, buffers, x, y, loss_fn, vectorize=vectorize, seed=seed)

    g = _flat(grads, names).double()  # (1, D)
    change = (_flat(grads_after, names).double() - g).norm(dim=1)  # (K,)
    g_norm = g.norm()
    beta = change / (eta.double() * g_norm) if float(g_norm) > 0 else torch.full_like(change, math.nan)
    losses_np = losses.double().cpu().numpy()
    return {
        "loss": float(loss[0]),
        "grad_norm": float(g_norm),
        "step_sizes": np.asarray(etas),
        "losses": losses_np,
        "grad_change": change.cpu().numpy(),
        "beta": beta.cpu().numpy(),
        "loss_variation": float(losses_np.max() - losses_np.min()),
        "gradient_predictiveness": float(change.max()),
        "beta_smoothness": float(beta.max()),
    }


# --------------------------------------------------------------------------- 2-D loss slice


def filter_normalized_direction(model: nn.Module, *, generator: torch.Generator | None = None) -> Params:
    """A random direction in parameter space, normalized filter by filter (Li et al. 2018, section 4).

    For every weight with two or more axes, draw ``d ~ N(0, I)`` of the same
    shape and rescale each filter (each slice along axis 0: an output unit of a
    linear layer, an output channel of a convolution) to the norm of the
    matching filter of the weight: ``d_j <- d_j / ||d_j|| * ||theta_j||``.
    Biases and normalization parameters (one axis) get a zero direction, as in
    Li et al., so the slice moves only the weights.

    Args:
        model: the network whose parameters set the shapes and norms.
        generator: a CPU ``torch.Generator`` for a repeatable direction.

    Returns:
        ``{parameter name: direction tensor}`` on the parameters' device.

    Example:
        >>> model = nn.Linear(3, 2)
        >>> d = filter_normalized_direction(model, generator=torch.Generator().manual_seed(0))
        >>> torch.allclose(d["weight"].norm(dim=1), model.weight.detach().norm(dim=1)), float(d["bias"].abs().sum())
        (True, 0.0)
    """
    _check_model(model)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    directions = {}
    for name, p in model.named_parameters():
        p = p.detach()
        if p.dim() < 2:
            directions[name] = torch.zeros_like(p)
            continue
        d = torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device)
        d_norm = d.reshape(len(d), -1).norm(dim=1).clamp_min(1e-12)
        p_norm = p.reshape(len(p), -1).norm(dim=1)
        directions[name] = d * (p_norm / d_norm).reshape(-1, *([1] * (p.dim() - 1)))
    return directions


@dataclass
class LossSlice:
    """The loss over a plane through the trained parameters: ``loss[i, j] = L(theta + alphas[i] d1 + betas[j] d2)``."""

    alphas: np.ndarray
    betas: np.ndarray
    loss: np.ndarray  # (len(alphas), len(betas))
    directions: tuple[Params, Params]

    def frame(self):
        """Long table: ``alpha``, ``beta``, ``loss``."""
        import pandas as pd

        a, b = np.meshgrid(self.alphas, self.betas, indexing="ij")
        return pd.DataFrame({"alpha": a.ravel(), "beta": b.ravel(), "loss": self.loss.ravel()})


def loss_slice(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    points: int = 21,
    span: float = 1.0,
    directions: tuple[Params, Params] | None = None,
    seed: int = 0,
    loss_fn: LossFn | None = None,
    train_mode: bool = True,
    chunk_size: int | None = 64,
    vectorize: bool = True,
) -> LossSlice:
    r"""The loss on a ``points x points`` grid over a plane through the model's parameters (Li et al. 2018).

    .. math::  f(\\alpha, \\beta) = L(\\theta + \\alpha d_1 + \\beta d_2),
               \\quad \\alpha, \\beta \\in [-\\text{span}, \\text{span}]

    with two random filter-normalized directions (:func:`filter_normalized_direction`),
    so distances are relative to each filter's own scale and networks with and
    without batch norm can be compared on the same axes.

    Conventions: ``train_mode=True`` (default) evaluates with batch statistics
    (each grid point normalizes with the statistics its own weights produce, which
    is what training sees); ``False`` uses the running statistics. Dropout and
    noise layers are active in train mode, with the same random numbers at
    every point. The model's mode and buffers are restored. Grid points are
    evaluated with ``torch.func.vmap`` in chunks of ``chunk_size`` points.

    Args:
        model: the trained network.
        x, y: the batch the loss is averaged over.
        points: grid points per axis (odd numbers put the model itself on the grid).
        span: half-width of the grid in units of the directions.
        directions: ``(d1, d2)`` to reuse; default two drawn with ``seed``.
        seed: seed of the directions.
        loss_fn: mean-reduced ``(output, target) -> loss`` (default cross-entropy).
        train_mode: batch statistics (``True``) or running statistics (``False``).
        chunk_size: grid points per vmapped call (memory: ``chunk_size`` copies of the activations).
        vectorize: vmap over grid points (with a loop as fallback, see
            :func:`gradient_shift`); ``False`` evaluates point by point (same result).

    Example:
        >>> model = nn.Linear(2, 1)
        >>> s = loss_slice(model, torch.randn(5, 2), torch.randn(5, 1), points=3, loss_fn=nn.functional.mse_loss)
        >>> s.loss.shape, s.alphas.tolist()
        ((3, 3), [-1.0, 0.0, 1.0])
    """
    _check_model(model)
    x, y = _check_batch(x, y)
    points = _check_int("points", points, minimum=2)
    span = _check_positive("span", span)
    loss_fn = _loss_fn(loss_fn)
    if chunk_size is not None:
        chunk_size = _check_int("chunk_size", chunk_size)
    params, buffers = _state(model)
    if directions is None:
        generator = torch.Generator().manual_seed(int(seed))
        directions = (
            filter_normalized_direction(model, generator=generator),
            filter_normalized_direction(model, generator=generator),
        )
    elif not (
        isinstance(directions, (tuple, list)) and len(directions) == 2 and all(isinstance(d, dict) for d in directions)
    ):
        raise TypeError(
            "directions must be a pair (d1, d2) of {parameter name: tensor} dicts, e.g. from filter_normalized_direction"
        )
    d1, d2 = directions
    for d in (d1, d2):
        bad = [n for n in params if n not in d or d[n].shape != params[n].shape]
        if bad:
            raise ValueError(
                f"directions must have one tensor per parameter with the parameter's shape; wrong or missing: {bad}"
            )

    alphas = np.linspace(-span, span, points)
    dtype = next(iter(params.values())).dtype
    a, b = torch.meshgrid(torch.tensor(alphas, dtype=dtype), torch.tensor(alphas, dtype=dtype), indexing="ij")
    a, b = a.reshape(-1).to(x.device), b.reshape(-1).to(x.device)  # (P*P,)

    def shape(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return t.reshape(-1, *([1] * like.dim()))

    grid = {
        n: p.unsqueeze(0) + shape(a, p) * d1[n].unsqueeze(0) + shape(b, p) * d2[n].unsqueeze(0)
        for n, p in params.items()
    }
    was_training = model.training
    model.train(train_mode)
    try:
        with torch.no_grad():
            _, losses = _batched_loss_and_grad(
                model,
                grid,
                buffers,
                x,
                y,
                loss_fn,
                chunk_size=chunk_size,
                need_grad=False,
                vectorize=vectorize,
                seed=seed,
            )
    finally:
        model.train(was_training)
    return LossSlice(
        alphas=alphas,
        betas=alphas.copy(),
        loss=losses.double().cpu().numpy().reshape(points, points),
        directions=(d1, d2),
    )


# --------------------------------------------------------------------------- training with probes


@dataclass
class ProbeRun:
    """The record of :func:`train_with_probes`.

    Attributes:
        steps: one row per optimizer step: ``step`` (from 1), ``loss``, ``accuracy`` (of the training batch).
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
    need: step ``t`` draws a batch (a fresh shuffle each epoch), optionally
    measures, then takes one SGD step ``theta <- theta - lr * grad``. Measures:

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
        device: default where the model's parameters are.
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
    from bnlib.training import as_tensors, evaluate

    _check_model(model)
    steps = _check_int("steps", steps)
    batch_size = _check_int("batch_size", batch_size)
    every = _check_int("every", every)
    eval_every = every if eval_every is None else _check_int("eval_every", eval_every)
    lr = _check_positive("lr", lr)
    loss_fn = _loss_fn(loss_fn)
    if isinstance(measure, str):
        raise TypeError(f"measure must be a sequence of names, got the string {measure!r}; e.g. measure=[{measure!r}]")
    unknown = [m for m in measure if m not in _MEASURES]
    if unknown:
        raise ValueError(f"unknown measure {unknown}; expected any of {list(_MEASURES)}")
    if device is None:
        device = next(model.parameters()).device
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
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    losses = torch.zeros(steps, dtype=torch.float64, device=device)
    correct = torch.zeros(steps, dtype=torch.int64, device=device)
    probes: list[dict[str, Any]] = []
    evals: list[dict[str, Any]] = []
    per_epoch = n // batch_size
    order = torch.randperm(n, generator=generator).to(device)
    start = time.perf_counter()
    was_training = model.training
    model.train()
    try:
        for t in tqdm(range(steps), disable=not progress, desc="steps", leave=False):
            b = t % per_epoch
            if b == 0 and t > 0:
                order = torch.randperm(n, generator=generator).to(device)
            index = order[b * batch_size : (b + 1) * batch_size]
            xb, yb = x[index], y[index]
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
            output = model(xb)
            loss = loss_fn(output, yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses[t] = loss.detach()
            correct[t] = (output.detach().argmax(dim=1) == yb).sum()
            if val_data is not None and (step % eval_every == 0 or step == steps):
                val_loss, val_accuracy = evaluate(model, val_data, device=device, loss_fn=loss_fn)
                evals.append({"step": step, "val_loss": val_loss, "val_accuracy": val_accuracy})
    finally:
        model.train(was_training)
    step_frame = pd.DataFrame(
        {"step": np.arange(1, steps + 1), "loss": losses.cpu().numpy(), "accuracy": correct.cpu().numpy() / batch_size}
    )
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
