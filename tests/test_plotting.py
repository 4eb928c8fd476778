"""The book's figures: they draw what the summaries say, from Histories or a DataFrame."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest

from bnlib.experiments import repeat, summarize_epochs, to_frame
from bnlib.history import History
from bnlib.plotting import PALETTE, final_points, learning_curves, use_book_style


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


def test_palette_is_colour_blind_safe():
    assert PALETTE == "colorblind"
