"""Running a Keras batch-norm layer over a stream of batches, on any backend."""

from __future__ import annotations

from typing import Any

import numpy as np

from bnlib.keras._backend import import_keras

__all__ = ["moving_mean_trajectory"]


def moving_mean_trajectory(layer: Any, batches: Any, *, feature: int = 0) -> np.ndarray:
    """Feed ``batches`` to a ``BatchNormalization`` layer in training mode; its ``moving_mean[feature]`` after each.

    After batch ``t`` Keras stores ``moving = m * moving + (1 - m) * mean_t``
    (``m`` the layer's momentum), so the result shows how fast the stored
    statistic follows the data. On TensorFlow the calls run as one compiled
    graph (``tf.function``; 400 eager calls take seconds there), the only
    TensorFlow-specific code path in bnlib.keras's layers and models; on torch
    and JAX they run one by one.

    Args:
        layer: a ``keras.layers.BatchNormalization`` (built here if it is not yet).
        batches: array ``(T, N, features)``: ``T`` batches of ``N`` examples.
        feature: which feature's moving mean to record.

    Returns:
        float32 array of length ``T``.

    Example:
        >>> keras = import_keras()
        >>> stream = np.full((3, 4, 2), 10.0, dtype=np.float32)
        >>> moving_mean_trajectory(keras.layers.BatchNormalization(momentum=0.5), stream).round(3).tolist()
        [5.0, 7.5, 8.75]
    """
    keras = import_keras()
    data = np.asarray(batches, dtype=np.float32)
    if data.ndim != 3 or 0 in data.shape:
        raise ValueError(f"batches must be a non-empty array (T batches, N examples, features), got shape {data.shape}")
    if not isinstance(layer, keras.layers.BatchNormalization):
        raise TypeError(f"layer must be a keras.layers.BatchNormalization, got {type(layer).__name__}")
    if isinstance(feature, bool) or not isinstance(feature, (int, np.integer)) or not 0 <= feature < data.shape[-1]:
        raise ValueError(f"feature must be an integer in [0, {data.shape[-1]}), got {feature!r}")
    if not layer.built:
        layer.build((None, data.shape[-1]))
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        @tf.function
        def run(stream: Any) -> Any:
            values = tf.TensorArray(tf.float32, size=stream.shape[0])
            for step in tf.range(stream.shape[0]):
                layer(stream[step], training=True)
                values = values.write(step, tf.identity(layer.moving_mean)[feature])
            return values.stack()

        return run(tf.constant(data)).numpy()
    values = []
    for batch in data:
        layer(batch, training=True)
        values.append(float(keras.ops.convert_to_numpy(layer.moving_mean)[feature]))
    return np.asarray(values, dtype=np.float32)
