"""The 2-D loss landscape of Li et al. (2018, "Visualizing the loss landscape of neural nets", arXiv 1712.09913).

:func:`filter_normalized_direction` draws a random direction normalized filter
by filter; :func:`loss_slice` evaluates the loss over the plane spanned by two
such directions through the trained parameters, all grid points in batched
``torch.func.vmap`` calls, without changing the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from bnlib._checks import positive_float, positive_int
from bnlib.probes._core import (
    LossFn,
    Params,
    _batched_loss_and_grad,
    _check_batch,
    _check_model,
    _loss_fn,
    _state,
)

__all__ = ["filter_normalized_direction", "loss_slice", "LossSlice"]


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
    points = positive_int(points, "points", hint="a grid needs at least 2 points per axis, e.g. points=21")
    if points < 2:
        raise ValueError(f"points must be at least 2 (a grid needs two points per axis), got {points}; e.g. points=21")
    span = positive_float(span, "span", hint="e.g. span=1.0")
    loss_fn = _loss_fn(loss_fn)
    if chunk_size is not None:
        chunk_size = positive_int(chunk_size, "chunk_size", hint="or None for a single call")
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
