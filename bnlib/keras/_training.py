"""Training a Keras model, on any Keras 3 backend, and recording it in bnlib's shared :class:`~bnlib.history.History`.

Never a silent NaN: :func:`fit` stops at the first step whose loss is not
finite and raises :class:`TrainingDivergedError`, which names the epoch, the
step, the loss and the learning rate and carries the History of the finished
epochs.
"""

from __future__ import annotations

import math
import numbers
import time
from typing import Any

import numpy as np

from bnlib.history import History
from bnlib.keras._backend import import_keras, keras_device, seed_keras
from bnlib.training import (  # the PyTorch trainer's errors and Ctrl-C guard, shared (no TensorFlow involved)
    TrainingDivergedError,
    TrainingInterrupted,
    _DeferredInterrupt,
)

__all__ = [
    "fit",
    "evaluate",
    "validation_split_sizes",
    "batch_losses_from_running_means",
    "TrainingDivergedError",
    "TrainingInterrupted",
    "EAGER_BELOW_STEPS",
]

#: Trainings with fewer optimizer steps than this run eagerly by default (see :func:`fit`).
EAGER_BELOW_STEPS = 32


def validation_split_sizes(n: int, validation_split: float) -> tuple[int, int]:
    """How many of ``n`` images Keras trains on and holds out for ``validation_split``.

    Keras 3 (``keras.src.trainers.data_adapters.array_slicing``) keeps the first
    ``floor(n * (1 - validation_split))`` images for training and the rest for
    validation, before any shuffling; :func:`fit` splits the same way.

    Raises:
        ValueError: ``validation_split`` is not strictly between 0 and 1, or
            the split leaves no training or no validation image.

    Example:
        >>> validation_split_sizes(1024, 0.2), validation_split_sizes(60_000, 0.2)
        ((819, 205), (48000, 12000))
    """
    if (
        isinstance(validation_split, bool)
        or not isinstance(validation_split, numbers.Real)
        or not 0 < validation_split < 1
    ):
        raise ValueError(f"validation_split must be a fraction strictly between 0 and 1, got {validation_split!r}")
    split_at = math.floor(n * (1.0 - float(validation_split)))
    if split_at in (0, n):
        raise ValueError(
            f"validation_split={validation_split} of {n} images leaves no {'training' if split_at == 0 else 'validation'} image"
        )
    return split_at, n - split_at


def batch_losses_from_running_means(running_means: Any, batch_sizes: Any) -> np.ndarray:
    """Per-batch losses from the running means Keras 3 reports after each batch.

    In Keras 3, ``logs["loss"]`` in ``on_train_batch_end`` is the mean loss of
    the epoch so far, weighted by batch size: ``M_k = sum_{i<=k} n_i l_i / sum_{i<=k} n_i``.
    So ``l_k = (M_k S_k - M_{k-1} S_{k-1}) / n_k`` with ``S_k = sum_{i<=k} n_i``.

    Args:
        running_means: ``M_1, ..., M_K`` of one epoch.
        batch_sizes: ``n_1, ..., n_K`` (the last batch may be smaller).

    Example:
        >>> batch_losses_from_running_means([2.0, 1.5, 1.2], [4, 4, 2])
        array([2., 1., 0.])
    """
    means = np.asarray(running_means, dtype=np.float64)
    sizes = np.asarray(batch_sizes, dtype=np.float64)
    if means.ndim != 1 or means.shape != sizes.shape:
        raise ValueError(
            f"running_means and batch_sizes must be 1-D and of equal length, got shapes {means.shape} and {sizes.shape}"
        )
    if np.any(sizes <= 0):
        raise ValueError(f"batch sizes must be positive, got {sizes.tolist()}")
    totals = means * np.cumsum(sizes)
    return np.diff(totals, prepend=0.0) / sizes


def _check_data(name: str, data: Any) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise TypeError(f"{name} must be a pair (images, labels), got {type(data).__name__}; e.g. mnist.keras('train')")
    x, y = np.asarray(data[0]), np.asarray(data[1])
    if y.ndim == 2 and len(x) == len(y):
        raise TypeError(
            f"{name} labels must be integer class indices (N,), got one-hot-like labels of shape {y.shape}; "
            "use labels.argmax(axis=1)"
        )
    if x.ndim < 2 or y.ndim != 1 or len(x) != len(y) or len(x) == 0:
        raise ValueError(
            f"{name} must hold images (N, ...) and integer labels (N,), got shapes {x.shape} and {y.shape}"
        )
    if not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"{name} labels must be integers (sparse labels, not one-hot), got dtype {y.dtype}")
    x = x.astype(np.float32, copy=False)
    finite = np.isfinite(x).reshape(len(x), -1).all(axis=1)
    if not finite.all():
        # Refused here, not left to the loss check: on TensorFlow's compiled graphs a fused Conv2D+ReLU maps NaN
        # to 0, so NaN images can train silently as blank ones (eagerly they give a NaN loss).
        bad = np.flatnonzero(~finite)
        raise ValueError(
            f"{name} images hold NaN or infinite values in {len(bad)} image(s), the first at index {bad[0]}; "
            "drop or repair them (np.isfinite(images).reshape(len(images), -1).all(axis=1) marks the good ones)"
        )
    return x, y


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def fit(
    model: Any,
    train: tuple[Any, Any],
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    val: tuple[Any, Any] | None = None,
    validation_split: float | None = None,
    learning_rate: float = 1e-3,
    shuffle: bool = True,
    progress: bool = True,
    run_eagerly: bool | None = None,
    jit_compile: bool | str = "auto",
    meta: dict[str, Any] | None = None,
) -> History:
    """Train a Keras classifier as sources A and B do and return a :class:`~bnlib.history.History`.

    The model is compiled here, every call afresh: Adam with ``learning_rate``
    (Keras's default 1e-3, as in the sources), sparse categorical
    cross-entropy on integer labels, accuracy. Seeds go through
    :func:`bnlib.keras.seed_keras` after Keras (and its backend) is imported,
    so the weights (when ``model`` is a builder), the shuffling and Keras's own
    random state are reproducible. Runs on whichever backend Keras uses
    (:func:`bnlib.keras.import_keras`).

    ``History`` conventions (shared with the PyTorch trainer): ``batch_loss``
    holds every step's loss on its batch, in training mode, before that step's
    update (recovered exactly from Keras's running epoch means, see
    :func:`batch_losses_from_running_means`); ``train_loss`` and
    ``train_accuracy`` are the epoch's batch-size-weighted means as trained;
    ``val_*`` are computed in inference mode at the end of each epoch.

    Never a silent NaN: images with NaN or infinite values are refused before
    training (a ValueError naming the first); after every step the loss is
    checked, and the first that is NaN or infinite (a learning rate too large,
    a model that overflows) stops training with
    :class:`bnlib.training.TrainingDivergedError`, the PyTorch trainer's error
    (a ``FloatingPointError`` and a ``ValueError``). Its message names the
    epoch, the step, the loss and the learning rate; its ``history`` attribute
    holds the History of the epochs that finished (``epoch``, ``step``,
    ``loss``, ``learning_rates`` and the diverged epoch's ``epoch_batch_loss``
    are on it too), e.g. ``except TrainingDivergedError as error: partial = error.history``.
    Ctrl-C, likewise, lets the current step finish and raises
    :class:`bnlib.training.TrainingInterrupted` (a ``KeyboardInterrupt``) with
    the History of the finished epochs on ``.history``; a second Ctrl-C stops at once.

    Args:
        model: a Keras model, or a function with no arguments that builds one
            (called after seeding, e.g. ``functools.partial(model_a, batch_norm=False)``).
        train: ``(images, labels)``, e.g. ``mnist.keras("train")``; images NHWC floats, labels integers.
        epochs, batch_size: as the caller's source (or run profile) says.
        seed: random seed.
        val: ``(images, labels)`` evaluated after every epoch.
        validation_split: alternatively, the fraction of ``train`` held out for
            validation, taken from its end before shuffling, as Keras does.
        learning_rate: Adam's step size, finite and >= 0.
        shuffle: reshuffle the training data every epoch.
        progress: show a tqdm progress bar over the epochs.
        run_eagerly: run the training step eagerly instead of as a compiled
            graph. ``None`` chooses: eagerly for runs of fewer than
            :data:`EAGER_BELOW_STEPS` optimizer steps (unless ``jit_compile=True``),
            where tracing the graph (about 2 s of CPU per model on TensorFlow)
            costs more than it saves. The numbers are the same either way; only
            the time differs.
        jit_compile: Keras's ``compile(jit_compile=...)``: ``"auto"`` (XLA on
            TensorFlow with a GPU, never on a CPU or on torch), ``True`` (XLA on
            TensorFlow and JAX, ``torch.compile`` on torch) or ``False``.
        meta: extra labels stored in ``History.meta``.

    Returns:
        The run's History; ``meta`` has ``framework``, ``backend``, ``model``,
        ``seed``, ``batch_size``, ``learning_rate``, the ``device``
        (:func:`bnlib.keras.keras_device`), ``run_eagerly`` and ``jit_compile``.

    Raises:
        TrainingDivergedError: a step's loss was NaN or infinite (see above).
        TrainingInterrupted: Ctrl-C (see above).
        ValueError, TypeError: malformed data (NaN or infinite images included) or settings, said how.

    Example:
        >>> import bnlib, bnlib.keras
        >>> data = bnlib.load_mnist().subset(32, 8).keras("train")
        >>> h = bnlib.keras.fit(bnlib.keras.model_c_conv, data, epochs=1, batch_size=16, seed=0, progress=False)
        >>> h.epochs, len(h.batch_loss), h.meta["framework"]
        (1, 2, 'keras')
    """
    keras = import_keras()
    x, y = _check_data("train", train)
    if (
        isinstance(learning_rate, bool)
        or not isinstance(learning_rate, numbers.Real)
        or not 0 <= learning_rate < math.inf
    ):
        raise ValueError(
            f"learning_rate must be a finite number >= 0, got {learning_rate!r}; the sources use Adam's default 1e-3"
        )
    epochs = _positive_int("epochs", epochs)
    batch_size = _positive_int("batch_size", batch_size)
    if not (isinstance(jit_compile, bool) or jit_compile == "auto"):
        raise ValueError(f"jit_compile must be True, False or 'auto' (Keras's default), got {jit_compile!r}")
    if jit_compile is True and run_eagerly:
        raise ValueError("jit_compile=True compiles the training step, run_eagerly=True forbids it: choose one")
    if val is not None and validation_split is not None:
        raise ValueError("pass either val=(images, labels) or validation_split=fraction, not both")
    if validation_split is not None:
        split_at, _ = validation_split_sizes(len(x), validation_split)  # Keras's own rule: floor
        val = (x[split_at:], y[split_at:])
        x, y = x[:split_at], y[:split_at]
    if val is not None:
        val = _check_data("val", val)
    seed_keras(seed)
    if not isinstance(model, keras.Model):
        if not callable(model):
            raise TypeError(f"model must be a keras.Model or a function that builds one, got {type(model).__name__}")
        built = model()
        if not isinstance(built, keras.Model):
            raise TypeError(f"the model builder returned {type(built).__name__}, expected a keras.Model")
        model = built
    steps = epochs * math.ceil(len(x) / batch_size)
    if run_eagerly is None:
        run_eagerly = steps < EAGER_BELOW_STEPS and jit_compile is not True
    model.compile(
        run_eagerly=bool(run_eagerly),
        jit_compile=jit_compile,
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    history = History()
    history.meta.update(
        {
            "framework": "keras",
            "backend": str(keras.backend.backend()),
            "model": model.name,
            "seed": int(seed),
            "batch_size": batch_size,
            "learning_rate": float(learning_rate),
            "device": keras_device(),
            "run_eagerly": bool(run_eagerly),
            "jit_compile": bool(model.jit_compile),
        }
    )
    history.meta.update(meta or {})
    recorder = _recorder(
        keras,
        history,
        n_train=len(x),
        batch_size=batch_size,
        epochs=epochs,
        learning_rate=float(learning_rate),
        progress=progress,
    )
    try:
        with _DeferredInterrupt() as interrupt:
            recorder.interrupt = interrupt
            model.fit(
                x,
                y,
                batch_size=batch_size,
                epochs=epochs,
                validation_data=val,
                shuffle=shuffle,
                verbose=0,
                callbacks=[recorder],
            )
    except KeyboardInterrupt as stop:  # a second Ctrl-C, or one outside the main thread: wherever it landed
        if isinstance(stop, TrainingInterrupted):
            raise
        raise recorder.interrupted() from stop
    finally:
        recorder.close()
    return history


def _recorder(keras: Any, *args: Any, **kwargs: Any) -> Any:
    """A Keras callback that fills a History and stops at a non-finite loss (defined here: keras is imported late)."""

    class Recorder(keras.callbacks.Callback):
        def __init__(
            self,
            history: History,
            *,
            n_train: int,
            batch_size: int,
            epochs: int,
            learning_rate: float,
            progress: bool,
        ) -> None:
            super().__init__()
            self.history_ = history
            self.epochs = epochs
            self.learning_rate = learning_rate
            steps = math.ceil(n_train / batch_size)
            self.sizes = [min(batch_size, n_train - k * batch_size) for k in range(steps)]
            self.running: list[float] = []
            self.epoch = 0
            self.in_epoch = False
            self.interrupt: Any = None
            self.bar = None
            if progress:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=epochs, desc="epochs", leave=False)

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.running = []
            self.epoch = epoch
            self.in_epoch = True
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            mean = float(logs["loss"])  # the epoch's running mean: non-finite from the first non-finite batch on
            self.running.append(mean)
            if not math.isfinite(mean):
                self.diverged()
            if self.interrupt is not None and self.interrupt.requested:
                raise self.interrupted()

        def interrupted(self) -> TrainingInterrupted:
            """Ctrl-C: the History of the finished epochs, and the steps of this one (kept in the model)."""
            history = self.history_
            finished = self.in_epoch is False
            losses = (
                []
                if finished
                else batch_losses_from_running_means(self.running, self.sizes[: len(self.running)]).tolist()
            )
            where = (
                (f"after epoch {history.epochs}" if history.epochs else "before the first epoch")
                if finished
                else f"in epoch {self.epoch + 1} after {len(losses)} step(s) (kept in the model; "
                "their losses are .epoch_batch_loss)"
            )
            error = TrainingInterrupted(
                f"training interrupted {where}; the History of the {history.epochs} finished epoch(s) "
                "is this exception's .history"
            )
            error.history, error.epoch = history, None if finished else self.epoch + 1
            error.steps, error.epoch_batch_loss = len(losses), losses
            return error

        def diverged(self) -> None:
            sizes = self.sizes[: len(self.running)]
            with np.errstate(invalid="ignore", over="ignore"):
                losses = batch_losses_from_running_means(self.running, sizes).tolist()
            loss = losses[-1] if not math.isfinite(losses[-1]) else self.running[-1]
            step, steps, history = len(self.running), len(self.sizes), self.history_
            error = TrainingDivergedError(
                f"training diverged: the loss is {loss} at epoch {self.epoch + 1} of {self.epochs}, "
                f"step {step} of {steps} (step {len(history.batch_loss) + step} of the run), "
                f"learning rate {self.learning_rate:g}. Training stopped; the History of the {history.epochs} "
                "finished epoch(s) is this error's .history. Lower the learning rate, or check the model's "
                "output for NaN or inf."
            )
            error.history, error.epoch, error.step, error.loss = history, self.epoch + 1, step, loss
            error.learning_rates, error.epoch_batch_loss = [self.learning_rate], losses
            raise error

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            logs = logs or {}
            sizes = self.sizes[: len(self.running)]
            self.history_.batch_loss.extend(batch_losses_from_running_means(self.running, sizes).tolist())
            self.history_.add_epoch(
                train_loss=float(logs["loss"]),
                train_accuracy=float(logs["accuracy"]),
                val_loss=float(logs.get("val_loss", float("nan"))),
                val_accuracy=float(logs.get("val_accuracy", float("nan"))),
                seconds=time.perf_counter() - self.start,
            )
            self.in_epoch = False
            if self.bar is not None:
                self.bar.update(1)
                shown = {"loss": logs["loss"], "val_accuracy": logs.get("val_accuracy")}
                self.bar.set_postfix({k: f"{float(v):.3f}" for k, v in shown.items() if v is not None})

        def close(self) -> None:
            if self.bar is not None:
                self.bar.close()

    return Recorder(*args, **kwargs)


def evaluate(model: Any, data: tuple[Any, Any], *, batch_size: int = 250) -> dict[str, float]:
    """Loss and accuracy of a trained classifier on ``data = (images, labels)``, in inference mode.

    ``batch_size`` bounds memory, not the result: model B's activations for
    1,000 images take about 400 MB at once, which pushed a Binder session
    (2 GB) over its limit; 250 costs no measurable time on a CPU.

    The loss is the mean sparse categorical cross-entropy with the
    probabilities clipped to [1e-7, 1], as Keras computes it.
    """
    import_keras()
    x, y = _check_data("data", data)
    batch_size = _positive_int("batch_size", batch_size)
    probabilities = np.asarray(model.predict(x, batch_size=batch_size, verbose=0), dtype=np.float64)
    if probabilities.shape != (len(y), probabilities.shape[-1]) or probabilities.ndim != 2:
        raise ValueError(f"expected the model to output (N, classes) probabilities, got shape {probabilities.shape}")
    picked = np.clip(probabilities[np.arange(len(y)), y], 1e-7, 1.0)
    return {"loss": float(-np.log(picked).mean()), "accuracy": float((probabilities.argmax(axis=1) == y).mean())}
