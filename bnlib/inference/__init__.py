"""Batch norm at inference time: fold it away, or re-estimate its statistics.

Two modules, one job each:

- :mod:`bnlib.inference.folding`: :func:`fold_batchnorm` merges each batch norm
  into the convolution or linear layer before it (in eval mode it is a fixed
  per-channel affine map).
- :mod:`bnlib.inference.recalibration`: :func:`recompute_batchnorm_statistics`
  (the exact statistics of a data set) and :func:`adapt_batchnorm` (AdaBN, on
  a new domain) replace the running statistics; :func:`is_batchnorm` is the
  one definition of a batch-norm layer that all three functions use, and
  :func:`batchnorm_layers` lists those of a model that keep running statistics.

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    >>> _ = recompute_batchnorm_statistics(model, torch.randn(50, 3), batch_size=25)
    >>> type(fold_batchnorm(model)[1]).__name__
    'Identity'
"""

from bnlib.inference.folding import fold_batchnorm
from bnlib.inference.recalibration import (
    adapt_batchnorm,
    batchnorm_layers,
    is_batchnorm,
    recompute_batchnorm_statistics,
)

__all__ = ["fold_batchnorm", "recompute_batchnorm_statistics", "adapt_batchnorm", "is_batchnorm", "batchnorm_layers"]
