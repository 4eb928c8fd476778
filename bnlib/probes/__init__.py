"""Measure what happens inside a network while it trains: activations, gradients, the loss landscape.

Four modules, one job each; every public name is re-exported here, so
``from bnlib.probes import loss_slice`` and ``bnlib.probes.loss_slice`` work:

- :mod:`bnlib.probes.hooks`: :func:`record_activations`, a context manager
  that records detached per-layer summaries of activations (and their
  gradients) and removes its hooks when the block ends, even on an error;
- :mod:`bnlib.probes.measures`: the quantities Santurkar et al. (2018, "How
  does batch normalization help optimization?", arXiv 1805.11604) use to test
  the claims about batch norm, :func:`gradient_shift` (internal covariate
  shift) and :func:`loss_along_gradient` (loss variation, gradient
  predictiveness, effective beta-smoothness);
- :mod:`bnlib.probes.landscape`: the 2-D loss slice of Li et al. (2018,
  "Visualizing the loss landscape of neural nets", arXiv 1712.09913),
  :func:`filter_normalized_direction` and :func:`loss_slice`;
- :mod:`bnlib.probes.run`: :func:`train_with_probes`, plain SGD training
  (with the batching and the optimizer step of :mod:`bnlib.training`) that
  takes these measurements between updates.

The measurements evaluate the model with ``torch.func.functional_call`` on a
dictionary of its parameters, so they never change the model, its running
statistics or its gradients, and ``torch.func.vmap`` evaluates many parameter
points (step sizes, layers, grid points) in one batched call; a model vmap
cannot trace is evaluated point by point, with the same result.

Example:
    >>> from torch import nn
    >>> import bnlib.probes as probes
    >>> probes.weight_names(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)))
    ['0.weight', '2.weight']
"""

from __future__ import annotations

from bnlib.probes.hooks import DEFAULT_QUANTILES, ActivationRecorder, record_activations, summarize
from bnlib.probes.landscape import LossSlice, filter_normalized_direction, loss_slice
from bnlib.probes.measures import gradient_shift, loss_along_gradient, weight_names
from bnlib.probes.run import ProbeRun, train_with_probes

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
