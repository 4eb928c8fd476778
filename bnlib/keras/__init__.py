"""Batch norm in Keras: the book's Keras models, a trainer, and the PyTorch <-> Keras conventions.

This is the only part of bnlib that imports Keras (and TensorFlow), and only
when a function that needs it runs: ``import bnlib.keras`` works without them
(the hyperparameter converters need no framework), and the first builder or
``fit`` call raises an ``ImportError`` saying ``pip install "bnlib[keras]"``
when Keras is missing.

**Any backend.** Everything here is written against Keras 3's backend-neutral
API, so it runs on TensorFlow (the default where it is installed), on torch or
on JAX: set ``KERAS_BACKEND`` before Python starts, or let
:func:`import_keras` pick the first installed. Only :func:`require_keras`
(which returns ``tf`` too) and :func:`tensorflow_device` need TensorFlow.

* Every builder, in one module: sources A, B and C (C fixed), with batch norm
  on or off and placed after or before the ReLU (:func:`model_a`,
  :func:`model_b`, :func:`model_c_dense`, :func:`model_c_conv`), and
  LeNet-5's Keras twin :func:`keras_lenet5`.
* :func:`fit` trains one and returns bnlib's shared
  :class:`~bnlib.history.History`, the type the PyTorch trainer returns; it
  stops at the first non-finite loss with :class:`TrainingDivergedError`;
  :func:`evaluate` scores a model.
* Converters between the frameworks' BN hyperparameters:
  :func:`keras_momentum_from_torch` (with the one rule for PyTorch's
  ``momentum=None``: refused), :func:`biased_variance`, ...
* :mod:`bnlib.keras.porting` (imports torch) copies a LeNet-5 between the frameworks.

Example:
    >>> import bnlib.keras
    >>> bnlib.keras.keras_batchnorm_kwargs(momentum=0.1, eps=1e-5)
    {'momentum': 0.9, 'epsilon': 1e-05, 'center': True, 'scale': True}
"""

from __future__ import annotations

from bnlib.keras._backend import (
    BACKENDS,
    INSTALL_HINT,
    backend_name,
    import_keras,
    keras_device,
    require_keras,
    seed_keras,
    tensorflow_device,
)
from bnlib.keras._hyperparameters import (
    KERAS_EPSILON,
    KERAS_MOMENTUM,
    TORCH_EPSILON,
    TORCH_MOMENTUM,
    biased_variance,
    keras_batchnorm_kwargs,
    keras_momentum_from_torch,
    torch_batchnorm_kwargs,
    torch_momentum_from_keras,
    unbiased_variance,
)
from bnlib.keras._layers import moving_mean_trajectory
from bnlib.keras._models import (
    MODEL_BUILDERS,
    MODEL_C_CONV_AS_WRITTEN,
    PLACEMENTS,
    keras_lenet5,
    layer_table,
    model_a,
    model_b,
    model_c_conv,
    model_c_dense,
    parameter_counts,
)
from bnlib.keras._training import (
    EAGER_BELOW_STEPS,
    TrainingDivergedError,
    TrainingInterrupted,
    batch_losses_from_running_means,
    evaluate,
    fit,
    validation_split_sizes,
)

__all__ = [
    "BACKENDS",
    "INSTALL_HINT",
    "import_keras",
    "backend_name",
    "keras_device",
    "seed_keras",
    "require_keras",
    "tensorflow_device",
    "KERAS_EPSILON",
    "KERAS_MOMENTUM",
    "TORCH_EPSILON",
    "TORCH_MOMENTUM",
    "biased_variance",
    "unbiased_variance",
    "keras_momentum_from_torch",
    "torch_momentum_from_keras",
    "keras_batchnorm_kwargs",
    "torch_batchnorm_kwargs",
    "MODEL_BUILDERS",
    "MODEL_C_CONV_AS_WRITTEN",
    "PLACEMENTS",
    "model_a",
    "model_b",
    "model_c_dense",
    "model_c_conv",
    "keras_lenet5",
    "parameter_counts",
    "layer_table",
    "moving_mean_trajectory",
    "fit",
    "evaluate",
    "validation_split_sizes",
    "batch_losses_from_running_means",
    "EAGER_BELOW_STEPS",
    "TrainingDivergedError",
    "TrainingInterrupted",
    # bnlib.keras.porting, loaded on first use (it imports torch)
    "torch_to_keras_lenet5",
    "keras_to_torch_lenet5",
]

_PORTING = {"torch_to_keras_lenet5", "keras_to_torch_lenet5"}


def __getattr__(name: str):
    if name in _PORTING:
        from bnlib.keras import porting

        return getattr(porting, name)
    raise AttributeError(f"module 'bnlib.keras' has no attribute {name!r}")
