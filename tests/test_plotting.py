"""The book's figures: what the summaries say, in a palette readable with colour blindness.

Plots are drawn from Histories or a DataFrame; the schematic figures shade what the layers normalize.
"""

from __future__ import annotations

import itertools

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import seaborn as sns
from matplotlib.colors import to_rgb

from bnlib.experiments import repeat, summarize_epochs, to_frame
from bnlib.history import History
from bnlib.plotting import (
    NORMALIZATION_METHODS,
    PALETTE,
    final_points,
    learning_curves,
    normalization_axes_figure,
    normalization_groups,
    use_book_style,
)


def runs():
    def make(offset):
        def run(seed):
            h = History()
            for e in range(4):
                h.add_epoch(
                    train_loss=1 / (e + 1) + seed / 10,
                    train_accuracy=0.8,
                    val_loss=0.4,
                    val_accuracy=0.9 + offset + seed / 100,
                    seconds=1.0,
                )
            return h

        return run

    return repeat(make(0.0), seeds=(0, 1, 2), config="plain") + repeat(make(0.03), seeds=(0, 1, 2), config="BN")


def teardown_function():
    plt.close("all")


def test_learning_curves_draw_the_mean_and_a_band():
    use_book_style()
    histories = runs()
    fig = learning_curves(histories, ("val_accuracy", "train_loss"), band="range")
    acc, loss = fig.axes
    assert acc.get_xlabel() == "epoch" and "%" in acc.get_ylabel() and "nats" in loss.get_ylabel()
    assert [t.get_text() for t in acc.get_legend().get_texts()] == ["plain", "BN"]
    expected = summarize_epochs(to_frame(histories)).query("config == 'BN'")["mean"].to_numpy() * 100
    np.testing.assert_allclose(acc.lines[1].get_ydata(), expected)
    assert len(acc.collections) == 2  # one band per configuration
    assert fig._suptitle.get_text() == "mean and min-max over 3 seeds"


def test_learning_curves_accept_a_frame_an_order_and_given_axes():
    fig, ax = plt.subplots()
    out = learning_curves(to_frame(runs()), "train_loss", order=["BN", "plain"], axes=[ax], band=None, title="t")
    assert out is fig and [t.get_text() for t in ax.get_legend().get_texts()] == ["BN", "plain"]
    assert len(ax.collections) == 0


def test_final_points():
    fig = final_points(runs())
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["plain", "BN"] and "%" in ax.get_xlabel()


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        (dict(metrics="accuracy"), "no column"),
        (dict(metrics=()), "metrics is empty"),
        (dict(band="iqr"), "band must be"),
        (dict(order=["BN", "LN"]), "not in the results"),
    ],
)
def test_learning_curves_bad_arguments(kwargs, words):
    with pytest.raises(ValueError, match=words):
        learning_curves(runs(), **kwargs)


# ----------------------------------------------------------------------------- the palette

# Machado, Oliveira and Fernandes (2009), "A physiologically-based model for simulation of color
# vision deficiency", the severity-1.0 matrices, applied to linear sRGB.
CVD = {
    "normal": np.eye(3),
    "protanopia": np.array(
        [[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216], [-0.003882, -0.048116, 1.051998]]
    ),
    "deuteranopia": np.array(
        [[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413], [-0.011820, 0.042940, 0.968881]]
    ),
    "tritanopia": np.array(
        [[1.255528, -0.076749, -0.178779], [-0.078411, 0.930809, 0.147602], [0.004733, 0.691367, 0.303900]]
    ),
}
SRGB_TO_XYZ = np.array(
    [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]]
)
MIN_DELTA_E = 10.0  # CIE76 distance in CIELAB; ~2.3 is barely noticeable side by side, 10 tells lines apart at a glance


def lab_as_seen(colours, vision):
    """CIELAB (D65) coordinates of sRGB colours as a viewer with ``vision`` sees them."""
    rgb = np.asarray(colours, dtype=float)
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = np.clip(linear @ CVD[vision].T, 0.0, 1.0) @ SRGB_TO_XYZ.T / SRGB_TO_XYZ.sum(axis=1)
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], axis=1)


def closest_pair(palette, vision):
    lab = lab_as_seen(sns.color_palette(palette), vision)
    return min(float(np.linalg.norm(lab[i] - lab[j])) for i, j in itertools.combinations(range(len(lab)), 2))


def test_colour_model_is_sane():
    white, grey = lab_as_seen([(1, 1, 1), (0.5, 0.5, 0.5)], "deuteranopia")
    np.testing.assert_allclose(white, [100, 0, 0], atol=0.05)  # grey axis unchanged, D65 white is L*=100
    assert abs(grey[1]) < 0.05 and abs(grey[2]) < 0.05
    red, green = lab_as_seen([(0.8, 0.2, 0.1), (0.45, 0.5, 0.1)], "normal")
    red_d, green_d = lab_as_seen([(0.8, 0.2, 0.1), (0.45, 0.5, 0.1)], "deuteranopia")
    assert np.linalg.norm(red - green) > 3 * np.linalg.norm(red_d - green_d)  # the classic confusion pair merges


@pytest.mark.parametrize("vision", list(CVD))
def test_palette_colours_stay_distinguishable_with_colour_blindness(vision):
    """Every pair of the palette's colours differs by at least MIN_DELTA_E as a protanope, deuteranope or tritanope sees it."""
    assert len(sns.color_palette(PALETTE)) >= 8  # enough lines for the book's largest comparison
    distance = closest_pair(PALETTE, vision)
    assert distance >= MIN_DELTA_E, f"two colours of {PALETTE!r} are {distance:.1f} apart for {vision}"


@pytest.mark.parametrize(
    ("palette", "vision"), [("tab10", "protanopia"), ("deep", "protanopia"), ("tab10", "deuteranopia")]
)
def test_the_palette_check_rejects_palettes_that_are_not_colour_blind_safe(palette, vision):
    """The same check fails for matplotlib's and seaborn's default palettes: it can tell a safe palette from an unsafe one."""
    assert closest_pair(palette, vision) < MIN_DELTA_E


def test_figures_draw_in_the_palette():
    use_book_style()
    expected = [tuple(c) for c in sns.color_palette(PALETTE, 2)]
    acc, _ = learning_curves(runs(), band="sd").axes
    assert [to_rgb(line.get_color()) for line in acc.lines] == expected
    ax = final_points(runs()).axes[0]
    assert [tuple(c.get_facecolor()[0][:3]) for c in ax.collections[::2]] == expected
    assert to_rgb(plt.rcParams["axes.prop_cycle"].by_key()["color"][1]) == tuple(sns.color_palette(PALETTE)[1])
    cube = normalization_axes_figure(methods=("Layer norm",), highlight=3)
    shaded = [rgba[:3] for rgba in faces(cube.axes[0]) if rgba[3] > 0.5]
    colour = np.array(sns.color_palette(PALETTE)[3])
    assert shaded and all(np.allclose(rgb / rgb.max(), colour / colour.max(), atol=1e-3) for rgb in shaded)  # lit


def faces(ax):
    """RGBA of every face the 3-D axis draws (one collection per cell)."""
    return np.concatenate([c.get_facecolor() for c in ax.collections])


# ----------------------------------------------------------------------------- the schematic figures


def test_normalization_groups_count_the_statistics_of_each_method():
    batch, channels, spatial, groups, k = 6, 4, 3, 2, 3
    counts = {
        method: len(
            np.unique(
                normalization_groups(
                    method, batch=batch, channels=channels, spatial=spatial, groups=groups, virtual_batches=k
                )
            )
        )
        for method in NORMALIZATION_METHODS
    }
    assert counts == {
        "Batch norm": channels,
        "Layer norm": batch,
        "Instance norm": batch * channels,
        "Group norm": batch * groups,
        "Ghost batch norm": k * channels,
    }


def test_the_cube_shades_the_cells_of_one_statistic():
    fig = normalization_axes_figure()
    assert [ax.get_title().split("\n")[0] for ax in fig.axes] == list(NORMALIZATION_METHODS)
    for ax, method in zip(fig.axes, NORMALIZATION_METHODS):
        alphas = faces(ax)[:, 3]  # only the visible cells are drawn, so count shaded and faint faces
        assert (alphas > 0.5).any() and (alphas < 0.5).any(), method


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        (lambda: normalization_groups("Batch renorm"), ValueError, "unknown method"),
        (lambda: normalization_groups("Group norm", channels=6, groups=4), ValueError, "must divide"),
        (lambda: normalization_groups("Group norm", groups=0), ValueError, "groups must be a positive integer"),
        (lambda: normalization_groups("Batch norm", batch=2.5), TypeError, "batch must be a positive integer"),
        (lambda: normalization_axes_figure(methods="Batch norm"), TypeError, "wrap it"),
        (lambda: normalization_axes_figure(methods=()), ValueError, "non-empty"),
        (lambda: normalization_axes_figure(methods=("Batch norm", "nope")), ValueError, "nope"),
        (lambda: normalization_axes_figure(highlight=10), ValueError, "between 0 and 9"),
        (lambda: normalization_axes_figure(highlight=True), TypeError, "integer index"),
    ],
)
def test_schematic_bad_arguments(call, error, words):
    with pytest.raises(error, match=words):
        call()
