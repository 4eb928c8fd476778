"""PyTorch normalization layers written from scratch with tensor operations.

Batch, layer, instance and group normalization share one pair of helpers in
:mod:`bnlib.functional` and differ only in the axes they reduce over. Each
submodule has one family; this package re-exports their public names.
"""

from bnlib.layers import adapt, batch_norm, factory, ghost, moment_norms, noisy, renorm, weight_norm
from bnlib.layers.adapt import *  # noqa: F403
from bnlib.layers.batch_norm import *  # noqa: F403
from bnlib.layers.factory import *  # noqa: F403
from bnlib.layers.ghost import *  # noqa: F403
from bnlib.layers.moment_norms import *  # noqa: F403
from bnlib.layers.noisy import *  # noqa: F403
from bnlib.layers.renorm import *  # noqa: F403
from bnlib.layers.weight_norm import *  # noqa: F403

__all__ = sorted(  # noqa: PLE0605  (sorted() returns the list of every submodule's public names)
    {
        name
        for module in (adapt, batch_norm, factory, ghost, moment_norms, noisy, renorm, weight_norm)
        for name in module.__all__
    }
)
