"""AdaBN (Li et al. 2016): adapt a trained network to a new domain by re-estimating its batch-norm statistics.

A batch-norm network stores, in each layer's running mean and variance, what
its activations looked like on the training data. When the test data comes
from a shifted domain (other lighting, another scanner, inverted colours),
those statistics are wrong. AdaBN keeps every learned weight and recomputes
only the statistics, from unlabelled data of the new domain.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bnlib.layers.batch_norm import BatchNorm
from bnlib.layers.ghost import GhostBatchNorm
from bnlib.layers.renorm import BatchRenorm

__all__ = ["adapt_batchnorm", "batchnorm_layers"]


# nn.BatchNorm1d/2d/3d and SyncBatchNorm share the base class _BatchNorm (instance norm does not).
_BN_TYPES = (nn.modules.batchnorm._BatchNorm, BatchNorm, BatchRenorm, GhostBatchNorm)


def batchnorm_layers(model: nn.Module) -> list[nn.Module]:
    """The batch-norm layers of ``model`` whose running statistics AdaBN re-estimates, in module order.

    Recognized: ``torch.nn.BatchNorm1d/2d/3d`` (and ``SyncBatchNorm``), bnlib's
    ``BatchNorm``, :class:`~bnlib.layers.BatchRenorm` and
    :class:`~bnlib.layers.GhostBatchNorm`, each only when it tracks running
    statistics. Layer, instance and group norm keep none and are skipped.

    Example:
        >>> model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.GroupNorm(1, 2))
        >>> [type(m).__name__ for m in batchnorm_layers(model)]
        ['BatchNorm2d']
    """
    return [m for m in model.modules() if isinstance(m, _BN_TYPES) and getattr(m, "running_mean", None) is not None]


def _inputs_of(data: Any) -> torch.Tensor:
    if isinstance(data, torch.Tensor):
        return data
    if isinstance(data, (tuple, list)) and data and isinstance(data[0], torch.Tensor):
        return data[0]  # (x, y): the labels are not needed
    raise TypeError(
        f"adapt_batchnorm expects the new domain's inputs as a tensor x or a tuple (x, y), got {type(data).__name__}; "
        "for a DataLoader, concatenate its inputs with torch.cat([x for x, _ in loader])"
    )


def adapt_batchnorm(
    model: nn.Module,
    data: torch.Tensor | tuple[torch.Tensor, ...],
    *,
    batch_size: int,
    device: torch.device | str | None = None,
) -> nn.Module:
    r"""Re-estimate every batch-norm layer's running statistics on ``data`` (AdaBN); returns ``model``.

    Paper: Y. Li, N. Wang, J. Shi, J. Liu, X. Hou, "Revisiting Batch
    Normalization For Practical Domain Adaptation", arXiv:1603.04779 (2016).

    For each batch-norm layer (see :func:`batchnorm_layers`): reset its
    running statistics, set ``momentum=None`` (PyTorch's cumulative average:
    after :math:`t` batches the running mean is the plain average
    :math:`\frac1t\sum_{s\le t}\mu_s` of the batch means, and likewise the
    variance); then pass ``data`` through the model once, in order, under
    ``torch.no_grad()``, with **only the batch-norm layers** in training mode
    (dropout and everything else in evaluation mode). Finally each layer's
    ``momentum`` and every module's ``training`` flag are restored. Weights
    are not touched, and nothing needs labels. When the pass fails (say, a
    last batch of one sample for a dense layer), the running statistics are
    restored too and the error is raised: the model is left as it was.

    Conventions and limits:
        * With equal batches the running mean is exactly the mean of the
          layer's inputs over ``data``; the running variance is the average
          of the per-batch unbiased variances, which equals the population
          variance (unbiased) only when one batch holds all of ``data``. A
          shorter last batch counts as much as a full one.
        * During the pass each layer normalizes with its batch's statistics
          (training mode), so deeper layers see what they would see in
          training. The paper instead fixes each layer's statistics before
          computing the next; the two agree up to batch noise, which is
          small for large ``batch_size``.
        * :class:`~bnlib.layers.BatchRenorm` layers run as plain batch norm
          during the pass (``r_max=1, d_max=0``), since their corrections
          towards the statistics being reset would be meaningless;
          :class:`~bnlib.layers.GhostBatchNorm` averages over its virtual batches.

    Args:
        model: a trained model with batch-norm layers.
        data: unlabelled inputs of the new domain, a tensor (N, ...) or a tuple whose first entry is one.
        batch_size: samples per forward pass (large is better: the batch statistics are less noisy).
        device: where to run; default: the device of the model's first parameter or buffer.

    Raises:
        TypeError: ``model`` is not an ``nn.Module`` or ``data`` is not a tensor / tuple.
        ValueError: no batch-norm layer with running statistics; empty ``data``; ``batch_size < 1``.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.5)).eval()
        >>> shifted = 5 + torch.randn(64, 3)
        >>> _ = adapt_batchnorm(model, shifted, batch_size=64)
        >>> with torch.no_grad():
        ...     torch.allclose(model[1].running_mean, model[0](shifted).mean(0), atol=1e-6)
        True
        >>> model.training, model[1].momentum         # mode and momentum restored
        (False, 0.1)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"adapt_batchnorm expects an nn.Module, got {type(model).__name__}")
    x = _inputs_of(data)
    if x.ndim == 0 or len(x) == 0:
        raise ValueError(f"adapt_batchnorm needs at least one input sample, got data of shape {tuple(x.shape)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    layers = batchnorm_layers(model)
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no batch-norm layer with running statistics, so AdaBN has nothing to adapt "
            "(layer, instance and group norm keep no statistics)"
        )
    if device is None:
        tensors = [*model.parameters(), *model.buffers()]
        device = tensors[0].device if tensors else x.device
    modes = {module: module.training for module in model.modules()}
    saved = {layer: (layer.momentum, getattr(layer, "r_max", None), getattr(layer, "d_max", None)) for layer in layers}
    # The statistics are reset below: keep copies, so that a pass that fails leaves the model as it was.
    statistics = {layer: {name: b.detach().clone() for name, b in layer.named_buffers()} for layer in layers}
    adapted = False
    try:
        model.eval()
        for layer in layers:
            layer.reset_running_stats()
            layer.momentum = None
            if isinstance(layer, BatchRenorm):
                layer.r_max, layer.d_max = 1.0, 0.0
            layer.train()
        with torch.no_grad():
            for start in range(0, len(x), batch_size):
                model(x[start : start + batch_size].to(device))
        adapted = True
    finally:
        if not adapted:
            with torch.no_grad():
                for layer, buffers in statistics.items():
                    for name, value in buffers.items():
                        layer.get_buffer(name).copy_(value)
        for layer, (momentum, r_max, d_max) in saved.items():
            layer.momentum = momentum
            if isinstance(layer, BatchRenorm):
                layer.r_max, layer.d_max = r_max, d_max
        for module, training in modes.items():
            module.training = training
    return model
