"""Importing TensorFlow and Keras on first use, with a message that says how to install them.

``bnlib.keras`` is the only part of bnlib that imports TensorFlow, and only
when a function that needs it is called: ``import bnlib`` and
``import bnlib.keras`` stay fast and work without TensorFlow installed.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["require_keras", "tensorflow_device", "INSTALL_HINT"]

#: What to run when TensorFlow is missing.
INSTALL_HINT = 'pip install "bnlib[keras]"'


def require_keras() -> tuple[Any, Any]:
    """Import and return ``(tensorflow, keras)``, Keras running on the TensorFlow backend.

    TensorFlow is imported first so that :func:`bnlib.seed_everything`, called
    afterwards, seeds it too.

    Raises:
        ImportError: TensorFlow (or Keras) is not installed; the message says
            ``pip install "bnlib[keras]"``.
        RuntimeError: Keras was already set up with another backend (e.g.
            ``KERAS_BACKEND=torch``); the chapters on Keras use TensorFlow.
    """
    _load_triton_before_tensorflow()
    try:
        import tensorflow as tf
    except ImportError as error:
        raise ImportError(
            f"bnlib.keras needs TensorFlow, which could not be imported ({error}). Install it with: {INSTALL_HINT}"
        ) from error
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    try:
        import keras
    except ImportError as error:
        raise ImportError(
            f"bnlib.keras needs Keras 3, which could not be imported ({error}). Install it with: {INSTALL_HINT}"
        ) from error
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise RuntimeError(
            f"Keras runs on the {backend!r} backend here, but bnlib.keras expects 'tensorflow'. "
            "Set the environment variable KERAS_BACKEND=tensorflow before Python starts."
        )
    return tf, keras


def _load_triton_before_tensorflow() -> None:
    """Import Triton before TensorFlow, where both are installed.

    With torch 2.14 (CUDA build) and TensorFlow 2.21 in one process, Triton
    segfaults when it is loaded *after* TensorFlow, and torch loads it lazily
    on the first optimizer step (through ``torch._dynamo``). Loaded first, both
    work side by side. Without Triton, or once TensorFlow is loaded, this does nothing.
    """
    import importlib.util
    import sys

    if "tensorflow" in sys.modules:
        return
    if importlib.util.find_spec("triton") is None:  # CPU-only torch builds ship no Triton
        return
    try:
        import triton  # noqa: F401
    except Exception:  # an unusable Triton: torch will not load it either
        return


def tensorflow_device() -> str:
    """The device TensorFlow places new tensors on by default, e.g. ``"/device:CPU:0"`` or ``"/device:GPU:0"``.

    Computed by placing a tensor and reading where it landed, not by listing
    devices, so it reports what TensorFlow actually uses.
    """
    tf, _ = require_keras()
    device = tf.constant(0.0).device  # '/job:localhost/replica:0/task:0/device:CPU:0'
    return device[device.find("/device:") :] if "/device:" in device else device
