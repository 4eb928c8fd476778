"""Schematic figures of the book, drawn from the normalizations' own reduction axes.

:func:`normalization_axes_figure` draws the "cube" picture of Wu and He
(2018, figure 2): a batch of activations as a block of cells along the batch
axis N, the channel axis C and the flattened spatial axis H, W, with the set
of cells that share one mean and one variance shaded. The shading is not
hand-drawn: each panel marks the cells that :func:`normalization_groups`
assigns to the same statistics, from the same reduction dims the layers use.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["normalization_groups", "normalization_axes_figure", "METHODS"]

#: The methods drawn, in order, with the dims of an (N, C, HW) block each one reduces over.
METHODS: dict[str, str] = {
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
        method: a key of :data:`METHODS`.
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
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {list(METHODS)}")
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
        methods: keys of :data:`METHODS` to draw (default: all).
        highlight: the palette colour index of the shaded cells.

    Returns:
        the matplotlib Figure.

    Example:
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> fig = normalization_axes_figure(methods=("Batch norm", "Layer norm"))
        >>> len(fig.axes)
        2
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    methods = tuple(METHODS) if methods is None else tuple(methods)
    colour = sns.color_palette("colorblind")[highlight]
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
        dims, per = METHODS[method].split(") ", 1)
        ax.set_title(f"{method}\nover {dims})\n{per}", fontsize=10)
    fig.suptitle("Which activations share one mean and variance (shaded)", fontweight="bold")
    return fig
