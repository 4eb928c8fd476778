"""The record of one training run, shared by the PyTorch and Keras trainers.

Both :func:`bnlib.training.fit` and :func:`bnlib.keras.fit` return a
:class:`History`, so the same experiment and plotting code serves both
frameworks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["History", "EPOCH_COLUMNS"]

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
        """Append one epoch's summary."""
        self.train_loss.append(float(train_loss))
        self.train_accuracy.append(float(train_accuracy))
        self.val_loss.append(float(val_loss))
        self.val_accuracy.append(float(val_accuracy))
        self.seconds.append(float(seconds))

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
