"""PyTorch normalization layers written from scratch with tensor operations.

Batch, layer, instance and group normalization share one pair of helpers in
:mod:`bnlib.functional` and differ only in the axes they reduce over. Each
submodule has one family; this package re-exports their public names.

AdaBN (``adapt_batchnorm``, ``batchnorm_layers``) lives in
:mod:`bnlib.inference.recalibration`, beside the exact re-estimation of the
statistics; both names stay importable from here, looked up on first use.
"""

import importlib
from typing import Any

from bnlib.layers import batch_norm, factory, ghost, moment_norms, noisy, renorm, virtual, weight_norm
from bnlib.layers.batch_norm import *  # noqa: F403
from bnlib.layers.factory import *  # noqa: F403
from bnlib.layers.ghost import *  # noqa: F403
from bnlib.layers.moment_norms import *  # noqa: F403
from bnlib.layers.noisy import *  # noqa: F403
from bnlib.layers.renorm import *  # noqa: F403
from bnlib.layers.virtual import *  # noqa: F403
from bnlib.layers.weight_norm import *  # noqa: F403

__all__ = sorted(  # noqa: PLE0605  (sorted() returns the list of every submodule's public names)
    {
        name
        for module in (batch_norm, factory, ghost, moment_norms, noisy, renorm, virtual, weight_norm)
        for name in module.__all__
    }
)

_MOVED = {"adapt_batchnorm": "bnlib.inference.recalibration", "batchnorm_layers": "bnlib.inference.recalibration"}


def __getattr__(name: str) -> Any:
    # Looked up lazily: bnlib.inference sits above bnlib.layers and imports it.
    if name in _MOVED:
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module 'bnlib.layers' has no attribute {name!r}")
