"""bnlib: the tested companion package of bn-book, a tutorial on batch normalization.

The top level holds what every chapter needs; the rest lives in submodules,
imported on first use (``bnlib.layers``, ``bnlib.training``, ...), so that
``import bnlib`` stays fast and never imports TensorFlow.

Example:
    >>> import bnlib
    >>> bnlib.min_max_normalize([0.0, 5.0, 10.0])
    array([0. , 0.5, 1. ])
"""

from __future__ import annotations

import importlib
from typing import Any

from bnlib.config import PROFILES, RunProfile, run_profile, seed_everything
from bnlib.data import MNIST, load_mnist
from bnlib.device import get_device
from bnlib.notebook import Stopwatch, check_close, check_that, describe_environment, show_source
from bnlib.preprocessing import min_max_normalize, z_score_normalize


def _version() -> str:
    """The installed distribution's version; in a checkout that was never installed, pyproject.toml's."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bnlib")
    except PackageNotFoundError:
        import re
        from pathlib import Path

        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        found = re.search(r'(?m)^version\s*=\s*"([^"]+)"', pyproject.read_text()) if pyproject.is_file() else None
        return found.group(1) if found else "0+unknown"


#: From the package metadata (``importlib.metadata.version("bnlib")``): pyproject.toml's version, written once at install.
__version__: str = _version()

__all__ = [
    "__version__",
    "PROFILES",
    "RunProfile",
    "run_profile",
    "seed_everything",
    "get_device",
    "MNIST",
    "load_mnist",
    "min_max_normalize",
    "z_score_normalize",
    "show_source",
    "check_close",
    "check_that",
    "Stopwatch",
    "describe_environment",
]

_SUBMODULES = {
    "config",
    "device",
    "data",
    "preprocessing",
    "notebook",
    "functional",
    "layers",
    "models",
    "history",
    "training",
    "experiments",
    "plotting",
    "keras",
    "probes",
    "inference",
    "regression",
    "claims",
}


def __getattr__(name: str) -> Any:
    # Lazy submodules: bnlib.layers works after a plain `import bnlib`.
    if name in _SUBMODULES:
        return importlib.import_module(f"bnlib.{name}")
    raise AttributeError(f"module 'bnlib' has no attribute {name!r}")
