"""Importing Keras 3 on first use, on whichever backend is installed, with a message that says how to install it.

``bnlib.keras`` is the only part of bnlib that imports Keras (and, through it,
TensorFlow, PyTorch or JAX as its backend), and only when a function that
needs it is called: ``import bnlib`` and ``import bnlib.keras`` stay fast and
work without any of them.

The backend rule (:func:`import_keras`), decided once per process because
Keras reads ``KERAS_BACKEND`` when it is first imported:

1. Keras already imported: its backend, whatever it is.
2. ``KERAS_BACKEND`` set: that backend.
3. otherwise TensorFlow when it is installed (the sources' backend and the
   fastest one measured on a CPU), else PyTorch, else JAX.

Everything in bnlib.keras that builds, trains, evaluates or ports a model
goes through :func:`import_keras` and uses only Keras's backend-neutral API
(``keras.layers``, ``keras.ops``, ``get_weights``/``set_weights``). Two pieces
are TensorFlow's alone and say so in their names: :func:`require_keras`
(for code that calls ``tf.*`` itself, such as ``tf.function``) and
:func:`tensorflow_device`.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any

__all__ = [
    "import_keras",
    "backend_name",
    "keras_device",
    "seed_keras",
    "require_keras",
    "tensorflow_device",
    "BACKENDS",
    "INSTALL_HINT",
]

#: What to run when Keras or TensorFlow is missing.
INSTALL_HINT = 'pip install "bnlib[keras]"'

#: Keras 3 backends bnlib.keras runs on, in the order tried when ``KERAS_BACKEND`` is unset.
BACKENDS = ("tensorflow", "torch", "jax")

_BACKEND_MODULES = {"tensorflow": "tensorflow", "torch": "torch", "jax": "jax"}


def _installed(module: str) -> bool:
    if module in sys.modules:
        return sys.modules[module] is not None  # None: blocked, as Python marks a failed import
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def import_keras() -> Any:
    """Import and return ``keras`` (Keras 3) on the backend chosen by the rule of the module docstring.

    TensorFlow, when it is the backend, is imported first so that
    :func:`bnlib.seed_everything`, called afterwards, seeds it too.

    Raises:
        ImportError: Keras 3 or the chosen backend is not installed; the
            message says ``pip install "bnlib[keras]"`` (TensorFlow and Keras),
            or ``pip install keras`` for the torch or JAX backend.
        ValueError: ``KERAS_BACKEND`` names a backend bnlib.keras does not run on.

    Example:
        >>> keras = import_keras()
        >>> keras.backend.backend() in BACKENDS
        True
    """
    if sys.modules.get("keras") is not None:
        return sys.modules["keras"]
    backend = os.environ.get("KERAS_BACKEND")
    if backend is None:
        backend = next((name for name in BACKENDS if _installed(_BACKEND_MODULES[name])), None)
        if backend is None:
            raise ImportError(
                "bnlib.keras needs Keras 3 and one of its backends (TensorFlow, PyTorch or JAX), and none is "
                f"installed. Install TensorFlow and Keras with: {INSTALL_HINT}"
            )
    if backend not in BACKENDS:
        raise ValueError(
            f"KERAS_BACKEND={backend!r}, but bnlib.keras runs on {', '.join(BACKENDS)}; "
            "set KERAS_BACKEND to one of them (or unset it) before Python starts"
        )
    _load_triton_before_tensorflow()
    if backend == "tensorflow":
        try:
            import tensorflow as tf  # noqa: F401  (first, so that seed_everything sees it)
        except ImportError as error:
            raise ImportError(
                f"bnlib.keras needs TensorFlow for KERAS_BACKEND=tensorflow, which could not be imported ({error}). "
                f"Install it with: {INSTALL_HINT}, or set KERAS_BACKEND=torch to run on PyTorch"
            ) from error
    os.environ["KERAS_BACKEND"] = backend
    try:
        import keras
    except ImportError as error:
        raise ImportError(
            f"bnlib.keras needs Keras 3, which could not be imported ({error}). Install it with: {INSTALL_HINT} "
            "(or pip install keras, to run on PyTorch or JAX)"
        ) from error
    return keras


def backend_name() -> str:
    """The backend Keras runs on here: ``"tensorflow"``, ``"torch"`` or ``"jax"`` (imports Keras if needed).

    Example:
        >>> backend_name() in BACKENDS
        True
    """
    return str(import_keras().backend.backend())


def keras_device() -> str:
    """Where Keras computes by default, as the backend names it.

    ``"/device:CPU:0"`` or ``"/device:GPU:0"`` on TensorFlow (see
    :func:`tensorflow_device`), ``"cpu"`` or ``"cuda:0"`` on torch, ``"cpu:0"``
    or ``"cuda:0"`` on JAX. Computed by placing a tensor and reading where it
    landed, not by listing devices.

    Example:
        >>> any(word in keras_device().lower() for word in ("cpu", "gpu", "cuda", "mps", "tpu"))
        True
    """
    keras = import_keras()
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return tensorflow_device()
    tensor = keras.ops.zeros((1,))
    if backend == "torch":
        return str(tensor.device)
    devices = getattr(tensor, "devices", None)  # jax.Array
    return str(next(iter(devices()))) if callable(devices) else "unknown"


def require_keras() -> tuple[Any, Any]:
    """Import and return ``(tensorflow, keras)``, Keras running on the TensorFlow backend: TensorFlow's alone.

    For code that calls TensorFlow itself (``tf.function``, ``tf.config``);
    bnlib.keras's builders, ``fit`` and ``evaluate`` need only
    :func:`import_keras` and run on any backend.

    Raises:
        ImportError: TensorFlow (or Keras) is not installed; the message says
            ``pip install "bnlib[keras]"``.
        RuntimeError: Keras was already set up with another backend (e.g.
            ``KERAS_BACKEND=torch``).
    """
    if sys.modules.get("keras") is None:
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    _load_triton_before_tensorflow()
    try:
        import tensorflow as tf
    except ImportError as error:
        raise ImportError(
            f"this needs TensorFlow, which could not be imported ({error}). Install it with: {INSTALL_HINT}"
        ) from error
    try:
        import keras
    except ImportError as error:
        raise ImportError(
            f"bnlib.keras needs Keras 3, which could not be imported ({error}). Install it with: {INSTALL_HINT}"
        ) from error
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise RuntimeError(
            f"Keras runs on the {backend!r} backend here, but this needs 'tensorflow'. "
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

    TensorFlow's alone (:func:`keras_device` answers on any backend). Computed
    by placing a tensor and reading where it landed, not by listing devices,
    so it reports what TensorFlow actually uses.
    """
    tf, _ = require_keras()
    device = tf.constant(0.0).device  # '/job:localhost/replica:0/task:0/device:CPU:0'
    return device[device.find("/device:") :] if "/device:" in device else device


def seed_keras(seed: int) -> Any:
    """Seed Python, NumPy and torch (:func:`bnlib.seed_everything`) and Keras's own random state; return ``keras``.

    ``keras.utils.set_random_seed`` seeds Keras's global seed generator and
    the backend's (TensorFlow's, torch's), so initial weights, shuffling and
    dropout are reproducible on every backend.

    Example:
        >>> keras = seed_keras(3); a = keras.ops.convert_to_numpy(keras.random.uniform((2,)))
        >>> keras = seed_keras(3); bool((a == keras.ops.convert_to_numpy(keras.random.uniform((2,)))).all())
        True
    """
    keras = import_keras()  # TensorFlow first, so that seed_everything reaches it
    from bnlib.config import seed_everything

    seed = seed_everything(seed)
    keras.utils.set_random_seed(seed)
    return keras
