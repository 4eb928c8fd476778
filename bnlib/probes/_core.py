"""The shared core of the probes: argument checks and the functional evaluation of a model.

The measurements are computed with ``torch.func.functional_call``: the model's
parameters are passed in as a dictionary, so a measurement never changes the
model, its running statistics or its gradients, and ``torch.func.vmap``
evaluates many parameter points (step sizes, layers, grid points) in one
batched call. A model that vmap cannot trace (a layer with a data-dependent
Python ``if``, such as a check for non-finite statistics) is evaluated point
by point instead, with the same result.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

__all__: list[str] = []  # private helpers of bnlib.probes

logger = logging.getLogger("bnlib.probes")

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Params = dict[str, torch.Tensor]


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


def _loss_fn(loss_fn: LossFn | None) -> LossFn:
    if loss_fn is None:
        return nn.functional.cross_entropy
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable (output, target) -> scalar loss, got {type(loss_fn).__name__}")
    return loss_fn


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
