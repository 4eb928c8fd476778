"""The book's figures, drawn with seaborn in a colour-blind-safe palette.

Results. The plotting functions take the results of several runs either as a
list of :class:`~bnlib.history.History` objects (PyTorch or Keras) or as the
tidy DataFrame of :func:`bnlib.experiments.to_frame` (a row per configuration,
seed and epoch), and draw the mean over seeds with a band showing the spread
(:func:`learning_curves`, :func:`final_points`).

Schematics. :func:`normalization_axes_figure` draws the "cube" picture of Wu
and He (2018, figure 2): a batch of activations as a block of cells along the
batch axis N, the channel axis C and the flattened spatial axis H, W, with the
set of cells that share one mean and one variance shaded. The shading is not
hand-drawn: each panel marks the cells that :func:`normalization_groups`
assigns to the same statistics, from the same reduction dims the layers use.

Every figure takes its colours from :data:`PALETTE`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "use_book_style",
    "PALETTE",
    "LABELS",
    "learning_curves",
    "final_points",
    "NORMALIZATION_METHODS",
    "normalization_groups",
    "normalization_axes_figure",
]

#: seaborn's "colorblind" palette (after Okabe and Ito), used by every figure.
PALETTE = "colorblind"

#: Axis labels (with units) of the History columns; accuracies are drawn in percent.
LABELS = {
    "train_loss": "training loss (cross-entropy, nats)",
    "val_loss": "validation loss (cross-entropy, nats)",
    "train_accuracy": "training accuracy (%)",
    "val_accuracy": "validation accuracy (%)",
    "seconds": "time per epoch (s)",
}

_BANDS = ("sd", "ci", "range", None)


def use_book_style() -> None:
    """Set the seaborn theme every figure of the book uses (white grid, colour-blind palette)."""
    import matplotlib as mpl
    import seaborn as sns

    sns.set_theme(context="notebook", style="whitegrid", palette=PALETTE)
    mpl.rcParams.update({"figure.dpi": 100, "savefig.dpi": 150, "axes.titleweight": "bold", "figure.autolayout": False})


def _scale(metric: str) -> float:
    return 100.0 if metric.endswith("accuracy") else 1.0


def _band_edges(row: Any, band: str | None) -> tuple[float, float]:
    if band == "sd":
        return row["mean"] - row["std"], row["mean"] + row["std"]
    if band == "ci":
        return row["low"], row["high"]
    return row["min"], row["max"]


def learning_curves(
    results: Any,
    metrics: str | Sequence[str] = ("val_accuracy", "train_loss"),
    *,
    by: str = "config",
    band: str | None = "sd",
    order: Sequence[str] | None = None,
    title: str | None = None,
    axes: Any = None,
    width: float = 5.5,
    height: float = 3.8,
) -> Any:
    """Mean over seeds per epoch, with a band, for each configuration: one panel per metric.

    Args:
        results: Histories (each with ``meta["config"]`` and ``meta["seed"]``) or their tidy DataFrame.
        metrics: History columns to draw, e.g. ``"val_accuracy"`` or ``("val_accuracy", "train_loss")``.
        by: the column that names a configuration (one line each).
        band: ``"sd"`` (mean +- one standard deviation over seeds), ``"ci"`` (95%
            Student-t interval of the mean), ``"range"`` (min to max over seeds) or ``None``.
        order: configurations in legend order (default: as they first appear).
        title: the figure's title (default: one naming the band and the seeds).
        axes: matplotlib axes to draw on, one per metric (default: a new figure).

    Returns:
        The matplotlib Figure.

    Example:
        >>> import matplotlib; matplotlib.use("Agg")
        >>> from bnlib.history import History
        >>> runs = []
        >>> for config, seed in [("a", 0), ("a", 1), ("b", 0), ("b", 1)]:
        ...     h = History(meta={"config": config, "seed": seed})
        ...     for e in range(3): h.add_epoch(train_loss=1 / (e + 1 + seed), train_accuracy=0.9, val_accuracy=0.9 + e / 100, seconds=1)
        ...     runs.append(h)
        >>> fig = learning_curves(runs)
        >>> [ax.get_ylabel() for ax in fig.axes]
        ['validation accuracy (%)', 'training loss (cross-entropy, nats)']
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    from bnlib.experiments import summarize_epochs, to_frame

    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    if not metrics:
        raise ValueError("metrics is empty; name at least one History column, e.g. 'val_accuracy'")
    if band not in _BANDS:
        raise ValueError(f"band must be one of {_BANDS}, got {band!r}")
    frame = to_frame(results)
    missing = [m for m in [by, *metrics] if m not in frame.columns]
    if missing:
        raise ValueError(f"the results have no column(s) {missing}; available: {list(frame.columns)}")
    configs = list(order) if order is not None else list(dict.fromkeys(frame[by]))
    unknown = [c for c in configs if c not in set(frame[by])]
    if unknown:
        raise ValueError(
            f"order names configurations {unknown} that are not in the results: {sorted(set(map(str, frame[by])))}"
        )
    if axes is None:
        fig, axes = plt.subplots(1, len(metrics), figsize=(width * len(metrics), height), squeeze=False)
        axes = list(axes[0])
    else:
        axes = list(axes) if isinstance(axes, (list, tuple)) or hasattr(axes, "__len__") else [axes]
        if len(axes) != len(metrics):
            raise ValueError(f"got {len(axes)} axes for {len(metrics)} metrics; pass one axis per metric")
        fig = axes[0].figure
    colours = dict(zip(configs, sns.color_palette(PALETTE, len(configs))))
    n_seeds = int(frame.groupby(by)["seed"].nunique().min()) if "seed" in frame.columns else 1
    for ax, metric in zip(axes, metrics):
        summary = (
            summarize_epochs(frame.dropna(subset=[metric]), metric, by=by) if frame[metric].notna().any() else None
        )
        if summary is None or summary.empty:
            raise ValueError(f"{metric} has no values (was validation data given?)")
        scale = _scale(metric)
        for config in configs:
            rows = summary[summary[by] == config].sort_values("epoch")
            ax.plot(
                rows["epoch"], rows["mean"] * scale, marker="o", markersize=4, color=colours[config], label=str(config)
            )
            if band is not None and len(rows) and rows["n"].min() > 1:
                low, high = zip(*(_band_edges(r, band) for _, r in rows.iterrows()))
                ax.fill_between(
                    rows["epoch"],
                    [v * scale for v in low],
                    [v * scale for v in high],
                    color=colours[config],
                    alpha=0.2,
                    linewidth=0,
                )
        ax.set_xlabel("epoch")
        ax.set_ylabel(LABELS.get(metric, metric))
        ax.set_title(LABELS.get(metric, metric).split(" (")[0].capitalize())
        ax.xaxis.get_major_locator().set_params(integer=True)
        if len(configs) > 1:
            ax.legend(title=by)
    band_words = {"sd": "mean +- 1 std", "ci": "mean and 95% interval", "range": "mean and min-max", None: "mean"}[band]
    fig.suptitle(title or f"{band_words} over {n_seeds} seed{'s' if n_seeds != 1 else ''}")
    fig.tight_layout()
    return fig


def final_points(
    results: Any,
    metric: str = "val_accuracy",
    *,
    by: str = "config",
    epoch: int | None = None,
    order: Sequence[str] | None = None,
    title: str | None = None,
    ax: Any = None,
) -> Any:
    """The final value of ``metric`` per configuration: one dot per seed and the mean with its 95% interval.

    Args:
        results: Histories or their tidy DataFrame.
        metric: the History column.
        by: the column naming a configuration.
        epoch: which epoch (default: each run's last).
        order: configurations from top to bottom.
        title: the axis title.
        ax: a matplotlib axis (default: a new figure).

    Returns:
        The matplotlib Figure.

    Example:
        >>> import matplotlib; matplotlib.use("Agg")
        >>> import pandas as pd
        >>> df = pd.DataFrame({"config": ["a", "a", "b", "b"], "seed": [0, 1, 0, 1], "epoch": 1, "val_accuracy": [0.9, 0.91, 0.95, 0.96]})
        >>> final_points(df).axes[0].get_xlabel()
        'validation accuracy (%)'
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    from bnlib.experiments import _final_rows, summarize_final, to_frame

    frame = to_frame(results)
    for column in (by, "seed", "epoch", metric):
        if column not in frame.columns:
            raise ValueError(f"the results have no column {column!r}; available: {list(frame.columns)}")
    rows = _final_rows(frame, epoch, by).copy()
    scale = _scale(metric)
    rows["value"] = rows[metric] * scale
    configs = list(order) if order is not None else list(dict.fromkeys(rows[by]))
    summary = summarize_final(rows, metric, by=by).set_index(by)
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 0.6 * len(configs) + 1.6))
    fig = ax.figure
    colours = sns.color_palette(PALETTE, len(configs))
    for i, config in enumerate(configs):
        values = rows.loc[rows[by] == config, "value"]
        ax.scatter(values, [i] * len(values), color=colours[i], alpha=0.6, s=25, label="one seed" if i == 0 else None)
        s = summary.loc[config]
        if s["n"] > 1:
            ax.errorbar(
                s["mean"] * scale,
                i,
                xerr=[[(s["mean"] - s["low"]) * scale], [(s["high"] - s["mean"]) * scale]],
                fmt="D",
                color="black",
                capsize=4,
                label="mean, 95% interval" if i == 0 else None,
            )
        else:
            ax.plot(s["mean"] * scale, i, "D", color="black", label="mean" if i == 0 else None)
    ax.set_yticks(range(len(configs)), [str(c) for c in configs])
    ax.invert_yaxis()
    ax.set_xlabel(LABELS.get(metric, metric))
    ax.set_ylabel(by)
    ax.set_title(title or f"Final {LABELS.get(metric, metric).split(' (')[0]} per configuration")
    ax.legend(loc="best")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- schematics


#: The methods drawn, in order, with the dims of an (N, C, HW) block each one reduces over.
NORMALIZATION_METHODS: dict[str, str] = {
    "Batch norm": "(N, H, W) per channel",
    "Layer norm": "(C, H, W) per sample",
    "Instance norm": "(H, W) per sample and channel",
    "Group norm": "(C/G, H, W) per sample and group",
    "Ghost batch norm": "(N/k, H, W) per virtual batch and channel",
}


def normalization_groups(
    method: str, *, batch: int = 6, channels: int = 6, spatial: int = 4, groups: int = 2, virtual_batches: int = 2
) -> np.ndarray:
    """Label every cell of an (N, C, HW) block with the index of the statistics it is normalized with.

    Cells with the same label share one mean and one variance. Batch renorm
    has the batch-norm labels (its corrections use the same statistics).

    Args:
        method: a key of :data:`NORMALIZATION_METHODS`.
        batch, channels, spatial: the block's size along N, C and the flattened (H, W).
        groups: G for group norm (must divide ``channels``).
        virtual_batches: k for ghost batch norm (must divide ``batch``).

    Returns:
        int array of shape (batch, channels, spatial).

    Example:
        >>> labels = normalization_groups("Group norm", batch=2, channels=4, spatial=1, groups=2)
        >>> labels[:, :, 0].tolist()
        [[0, 0, 1, 1], [2, 2, 3, 3]]
    """
    if method not in NORMALIZATION_METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {list(NORMALIZATION_METHODS)}")
    sizes = {
        "batch": batch,
        "channels": channels,
        "spatial": spatial,
        "groups": groups,
        "virtual_batches": virtual_batches,
    }
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be a positive integer, got {type(value).__name__} {value!r}")
        if value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if channels % groups or batch % virtual_batches:
        raise ValueError(
            f"groups={groups} must divide channels={channels} and virtual_batches={virtual_batches} must divide batch={batch}"
        )
    n, c, _ = np.meshgrid(np.arange(batch), np.arange(channels), np.arange(spatial), indexing="ij")
    if method == "Batch norm":
        return c
    if method == "Layer norm":
        return n
    if method == "Instance norm":
        return n * channels + c
    if method == "Group norm":
        return n * groups + c // (channels // groups)
    return (n // (batch // virtual_batches)) * channels + c  # ghost: virtual batch and channel


def normalization_axes_figure(*, methods: tuple[str, ...] | None = None, highlight: int = 0) -> Any:
    """The cube picture: one 3-D panel per method, the cells of one set of statistics shaded.

    Each panel is an (N, C, H·W) block of cells. The cells that share the
    statistics of the first cell (sample 0, channel 0) are filled in colour;
    the others are drawn as faint outlines. Read it with the table in
    :mod:`bnlib.functional`: batch norm shades a whole channel across the
    batch, layer norm a whole sample, instance norm one channel of one
    sample, group norm a group of channels of one sample, ghost batch norm a
    channel within one virtual batch.

    Args:
        methods: keys of :data:`NORMALIZATION_METHODS` to draw (default: all).
        highlight: the index in :data:`PALETTE` of the colour of the shaded cells.

    Returns:
        the matplotlib Figure.

    Raises:
        TypeError: ``methods`` is a string, or ``highlight`` is not an integer.
        ValueError: an unknown or empty ``methods``, or ``highlight`` outside the palette.

    Example:
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> fig = normalization_axes_figure(methods=("Batch norm", "Layer norm"))
        >>> len(fig.axes)
        2
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    if isinstance(methods, str):
        raise TypeError(
            f"methods must be a sequence of method names, got the string {methods!r}; wrap it: ({methods!r},)"
        )
    methods = tuple(NORMALIZATION_METHODS) if methods is None else tuple(methods)
    unknown = [m for m in methods if m not in NORMALIZATION_METHODS]
    if not methods or unknown:
        raise ValueError(f"methods must be a non-empty selection of {list(NORMALIZATION_METHODS)}, got {list(methods)}")
    palette = sns.color_palette(PALETTE)
    if isinstance(highlight, bool) or not isinstance(highlight, (int, np.integer)):
        raise TypeError(f"highlight must be an integer index into the palette, got {type(highlight).__name__}")
    if not 0 <= highlight < len(palette):
        raise ValueError(f"highlight must be between 0 and {len(palette) - 1} (the palette's colours), got {highlight}")
    colour = palette[int(highlight)]
    fig = plt.figure(figsize=(3.0 * len(methods), 3.8))
    for i, method in enumerate(methods):
        labels = normalization_groups(method)
        shaded = labels == labels[0, 0, 0]
        ax = fig.add_subplot(1, len(methods), i + 1, projection="3d")
        # voxels take (x, y, z): x = H·W, y = N, z = C, so C stands up as in Wu and He's figure.
        filled = np.ones(labels.shape, dtype=bool).transpose(2, 0, 1)
        faces = np.zeros((*filled.shape, 4))  # RGBA per cell: faint grey, the shaded set in colour
        faces[...] = (0.85, 0.85, 0.85, 0.12)
        faces[shaded.transpose(2, 0, 1)] = (*colour, 0.9)
        ax.voxels(filled, facecolors=faces, edgecolor=(0.3, 0.3, 0.3, 0.35), linewidth=0.4)
        ax.set_xlabel("H, W", labelpad=-12, fontsize=9)
        ax.set_ylabel("N (batch)", labelpad=-12, fontsize=9)
        ax.set_zlabel("C (channels)", labelpad=-12, fontsize=9)
        ax.set_xticks([]), ax.set_yticks([]), ax.set_zticks([])
        ax.set_box_aspect(labels.transpose(2, 0, 1).shape)
        ax.view_init(elev=22, azim=-55)
        dims, per = NORMALIZATION_METHODS[method].split(") ", 1)
        ax.set_title(f"{method}\nover {dims})\n{per}", fontsize=10)
    fig.suptitle("Which activations share one mean and variance (shaded)", fontweight="bold")
    return fig
