"""The record of one training run, shared by the PyTorch and Keras trainers.

Both :func:`bnlib.training.fit` and :func:`bnlib.keras.fit` return a
:class:`History`, so the same experiment and plotting code serves both
frameworks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["History", "EPOCH_COLUMNS"]


def _number(value: Any, name: str) -> float:
    """``value`` as a float; bools, strings and non-numbers are refused with a TypeError naming ``name``."""
    if isinstance(value, (bool, str, bytes)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}") from error

#: The per-epoch columns every History fills (validation ones NaN without validation data).
EPOCH_COLUMNS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds")


@dataclass
class History:
    """Losses, accuracies and timings of one run.

    Attributes:
        batch_loss: training loss of every optimizer step, in order.
        train_loss, train_accuracy: per epoch, averaged over the epoch's
            batches as they were trained (no second pass over the data).
        val_loss, val_accuracy: per epoch, in evaluation mode; NaN where no
            validation data was given.
        seconds: wall-clock seconds per epoch (training plus validation).
        meta: free-form labels (model name, seed, framework, ...).

    Example:
        >>> h = History()
        >>> h.add_epoch(train_loss=0.5, train_accuracy=0.9, val_loss=0.4, val_accuracy=0.92, seconds=1.0)
        >>> h.to_frame()[["epoch", "val_accuracy"]].to_dict("records")
        [{'epoch': 1, 'val_accuracy': 0.92}]
    """

    batch_loss: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def epochs(self) -> int:
        """The number of epochs recorded."""
        return len(self.train_loss)

    def add_epoch(
        self,
        *,
        train_loss: float,
        train_accuracy: float,
        val_loss: float = float("nan"),
        val_accuracy: float = float("nan"),
        seconds: float,
    ) -> None:
        """Append one epoch's summary.

        Accuracies are fractions in [0, 1], or NaN where undefined (no validation
        data, outputs that are not class scores); ``seconds`` is finite and >= 0.
        Anything else raises: an accuracy of 97 is a percentage passed by mistake.
        Losses may be NaN (a run without validation data has no ``val_loss``).
        """
        values = {
            name: _number(value, name)
            for name, value in (
                ("train_loss", train_loss),
                ("train_accuracy", train_accuracy),
                ("val_loss", val_loss),
                ("val_accuracy", val_accuracy),
                ("seconds", seconds),
            )
        }
        for name in ("train_accuracy", "val_accuracy"):
            if not (math.isnan(values[name]) or 0.0 <= values[name] <= 1.0):
                raise ValueError(
                    f"{name} must be a fraction in [0, 1] (or NaN where undefined), got {values[name]!r}; "
                    "pass a percentage divided by 100"
                )
        if not (math.isfinite(values["seconds"]) and values["seconds"] >= 0):
            raise ValueError(f"seconds must be a finite duration >= 0, got {values['seconds']!r}")
        self.train_loss.append(values["train_loss"])
        self.train_accuracy.append(values["train_accuracy"])
        self.val_loss.append(values["val_loss"])
        self.val_accuracy.append(values["val_accuracy"])
        self.seconds.append(values["seconds"])

    def to_frame(self):
        """Per-epoch table: ``epoch`` (from 1), the :data:`EPOCH_COLUMNS`, and ``meta`` as constant columns."""
        import pandas as pd

        frame = pd.DataFrame({"epoch": range(1, self.epochs + 1), **{c: getattr(self, c) for c in EPOCH_COLUMNS}})
        for key, value in self.meta.items():
            frame[key] = value
        return frame

    def batch_frame(self):
        """Per-step table: ``step`` (from 1), ``loss``, and ``meta`` as constant columns."""
        import pandas as pd

        frame = pd.DataFrame({"step": range(1, len(self.batch_loss) + 1), "loss": self.batch_loss})
        for key, value in self.meta.items():
            frame[key] = value
        return frame
