"""The run profile and random seeds.

Every experiment in the book reads its sizes from one :class:`RunProfile`, so
the same code runs in seconds in CI (``smoke``), in about twenty minutes
for a reader on a laptop (``quick``) and at the source tutorials' real settings
for the published site (``full``). A profile changes only how much is computed
(images, epochs, seeds, grid points), never *what* is computed.

The profile comes from the environment variable ``BNLIB_PROFILE``; unset, it is
``full`` where a GPU is available and ``quick`` otherwise.
"""

from __future__ import annotations

import os
import random
import sys
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

__all__ = ["RunProfile", "PROFILES", "run_profile", "seed_everything"]

T = TypeVar("T")


@dataclass(frozen=True)
class RunProfile:
    """The sizes every experiment uses.

    Args:
        name: ``"smoke"``, ``"quick"`` or ``"full"``.
        train_size: MNIST training images used (60,000 is all of them).
        test_size: MNIST test images used (10,000 is all of them).
        seeds: random seeds every comparison is repeated over.
        max_epochs: cap on a source tutorial's epoch count; ``None`` keeps the
            source's own number.
        reason: how the profile was chosen (shown by ``str(profile)``).

    Example:
        >>> profile = PROFILES["smoke"]
        >>> profile.epochs(10), profile.choose(smoke=2, quick=4, full=8)
        (1, 2)
    """

    name: str
    train_size: int
    test_size: int
    seeds: tuple[int, ...]
    max_epochs: int | None
    reason: str = field(default="", compare=False)

    def epochs(self, source_epochs: int) -> int:
        """The number of epochs to run where a source tutorial ran ``source_epochs``."""
        if not isinstance(source_epochs, int) or source_epochs < 1:
            raise ValueError(f"source_epochs must be a positive integer, got {source_epochs!r}")
        return source_epochs if self.max_epochs is None else min(source_epochs, self.max_epochs)

    def choose(self, *, smoke: T, quick: T, full: T) -> T:
        """Pick the value for this profile, e.g. the length of a sweep's grid."""
        return {"smoke": smoke, "quick": quick, "full": full}[self.name]

    @property
    def n_seeds(self) -> int:
        """How many seeds every comparison is repeated over."""
        return len(self.seeds)

    def __str__(self) -> str:
        text = (
            f"{self.name} (train {self.train_size:,} images, test {self.test_size:,}, "
            f"seeds {list(self.seeds)}, epochs {'as the source' if self.max_epochs is None else f'<= {self.max_epochs}'})"
        )
        return f"{text}; {self.reason}" if self.reason else text


PROFILES: dict[str, RunProfile] = {
    "smoke": RunProfile("smoke", train_size=1_024, test_size=512, seeds=(0, 1), max_epochs=1),
    "quick": RunProfile("quick", train_size=6_000, test_size=10_000, seeds=(0, 1, 2, 3, 4), max_epochs=3),
    "full": RunProfile("full", train_size=60_000, test_size=10_000, seeds=(0, 1, 2, 3, 4), max_epochs=None),
}


def run_profile(name: str | None = None) -> RunProfile:
    """Return the run profile: ``name``, else ``BNLIB_PROFILE``, else a default.

    Unset, the profile is ``full`` where a CUDA or MPS device is available and
    ``quick`` otherwise; the returned profile's ``reason`` says which rule chose it.

    Raises:
        ValueError: for a name other than ``smoke``, ``quick`` or ``full``.

    Example:
        >>> run_profile("smoke").train_size
        1024
    """
    if name is not None:
        source = "argument"
    elif os.environ.get("BNLIB_PROFILE", "").strip():
        name, source = os.environ["BNLIB_PROFILE"].strip(), "BNLIB_PROFILE"
    else:
        from bnlib.device import accelerator_available

        if accelerator_available():
            return _with_reason("full", "BNLIB_PROFILE unset and a GPU is available, so full")
        return _with_reason("quick", "BNLIB_PROFILE unset and no GPU found, so quick")
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in PROFILES:
        raise ValueError(
            f"unknown run profile {name!r} (from {source}); expected one of "
            f"{', '.join(PROFILES)}: e.g. export BNLIB_PROFILE=quick"
        )
    return _with_reason(key, f"chosen by {source}")


def _with_reason(name: str, reason: str) -> RunProfile:
    from dataclasses import replace

    return replace(PROFILES[name], reason=reason)


def seed_everything(seed: int) -> int:
    """Seed Python, NumPy and torch (and TensorFlow if it is already imported).

    TensorFlow is seeded only when the caller has imported it, so that this
    function never pays TensorFlow's import time. Returns the seed.

    Example:
        >>> import torch
        >>> _ = seed_everything(3); a = torch.rand(2)
        >>> _ = seed_everything(3); bool((a == torch.rand(2)).all())
        True
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an integer, got {type(seed).__name__} {seed!r}")
    if not 0 <= int(seed) < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002  (readers' code uses the legacy global RNG: seed it too)
    import torch

    torch.manual_seed(seed)  # seeds every CUDA device too
    if sys.modules.get("tensorflow") is not None:  # None: imports of it blocked on purpose
        tf: Any = sys.modules["tensorflow"]
        tf.keras.utils.set_random_seed(seed)
    return seed
