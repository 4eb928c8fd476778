"""The measurements Santurkar et al. (2018) use to test the claims about batch norm.

Santurkar et al., "How does batch normalization help optimization?" (arXiv 1805.11604):

- :func:`gradient_shift`: internal covariate shift as they define it, the
  change of a layer's gradient when the layers before it are updated;
- :func:`loss_along_gradient`: loss variation, gradient predictiveness and
  effective beta-smoothness along the gradient direction.

Both evaluate the model functionally (see :mod:`bnlib.probes._core`): the
model, its running statistics and its gradients are left unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from bnlib._checks import positive_float
from bnlib.probes._core import (
    LossFn,
    _batched_loss_and_grad,
    _check_batch,
    _check_model,
    _flat,
    _loss_fn,
    _state,
)

__all__ = ["weight_names", "gradient_shift", "loss_along_gradient"]


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
    lr = positive_float(lr, "lr")
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
    etas = [positive_float(s, "each step size") for s in step_sizes]
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
