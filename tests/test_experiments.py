"""Repeating runs over seeds, summaries against scipy/numpy, paired differences, verdict words."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from bnlib.experiments import (
    WORDS,
    Interval,
    claim_verdict,
    mean_interval,
    paired_difference,
    repeat,
    repeat_fit,
    summarize_epochs,
    summarize_final,
    to_frame,
    verdict,
)
from bnlib.history import History
from bnlib.models import MLP


def fake_run(offset=0.0):
    def run(seed):
        h = History()
        for epoch in range(3):
            h.add_epoch(
                train_loss=1.0 / (epoch + 1),
                train_accuracy=0.8,
                val_loss=0.5,
                val_accuracy=0.9 + offset + 0.01 * epoch + 0.001 * seed,
                seconds=0.1,
            )
        return h

    return run


def results():
    return to_frame(
        repeat(fake_run(), seeds=(0, 1, 2), config="a") + repeat(fake_run(0.02), seeds=(0, 1, 2), config="b")
    )


def test_mean_interval_matches_scipy():
    values = [0.91, 0.935, 0.92, 0.928]
    iv = mean_interval(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert iv.mean == pytest.approx(np.mean(values)) and iv.std == pytest.approx(np.std(values, ddof=1))
    assert (iv.low, iv.high) == (pytest.approx(low), pytest.approx(high))
    one = mean_interval([0.5])
    assert one.mean == 0.5 and math.isnan(one.std) and math.isnan(one.low) and not one.contains(0.5)


def test_repeat_labels_and_frame():
    frame = results()
    assert len(frame) == 2 * 3 * 3
    assert set(frame["config"]) == {"a", "b"} and sorted(frame["seed"].unique()) == [0, 1, 2]


def test_summaries_match_pandas():
    frame = results()
    per_epoch = summarize_epochs(frame)
    expected = frame.groupby(["config", "epoch"])["val_accuracy"].agg(["mean", "std"]).reset_index()
    merged = per_epoch.merge(expected, on=["config", "epoch"], suffixes=("", "_pandas"))
    np.testing.assert_allclose(merged["mean"], merged["mean_pandas"])
    np.testing.assert_allclose(merged["std"], merged["std_pandas"])
    final = summarize_final(frame).set_index("config")
    assert final.loc["a", "mean"] == pytest.approx(0.92 + 0.001) and final.loc["b", "n"] == 3
    first = summarize_final(frame, epoch=1).set_index("config")
    assert first.loc["a", "mean"] == pytest.approx(0.901)


def test_paired_difference_removes_the_shared_seed_noise():
    diff = paired_difference(results(), "a", "b")
    assert diff.mean == pytest.approx(0.02) and diff.std == pytest.approx(0.0, abs=1e-12)
    assert verdict(diff).word == "holds"
    assert verdict(diff, expect="lower").word == "does not hold"


def test_verdict_words():
    assert verdict(mean_interval([0.01, -0.01, 0.002])).word == "inside the noise"
    assert verdict(mean_interval([0.01])).word == "inside the noise"
    assert verdict(mean_interval([0.001, 0.0012, 0.0011]), min_effect=0.01).word == "does not hold"
    for v in (verdict(mean_interval([1.0, 2.0])), claim_verdict(mean_interval([1.0, 2.0]), about=1.5)):
        assert v.word in WORDS and str(v) == v.word and v.reason


def test_claim_verdict_bands():
    tight = mean_interval([0.9300, 0.9302, 0.9298])
    assert claim_verdict(tight, about=0.93).word == "holds"
    assert claim_verdict(tight, about=0.95).word == "does not hold"
    assert "below" in claim_verdict(tight, about=0.95).reason
    assert claim_verdict(tight, at_most=0.92).word == "does not hold"
    assert claim_verdict(mean_interval([0.92, 0.94]), about=0.93).word == "inside the noise"


def test_repeat_fit_is_paired_and_reproducible():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 3, generator=g)
    y = (x[:, 0] > 0).long()
    kwargs = dict(seeds=(0, 1), epochs=1, batch_size=16, device="cpu", progress=False)
    a = repeat_fit(
        lambda: MLP((3, 8, 2)),
        (x, y),
        config="sgd",
        make_optimizer=lambda m: torch.optim.SGD(m.parameters(), lr=0.1),
        **kwargs,
    )
    b = repeat_fit(
        lambda: MLP((3, 8, 2)),
        (x, y),
        config="sgd",
        make_optimizer=lambda m: torch.optim.SGD(m.parameters(), lr=0.1),
        **kwargs,
    )
    assert [h.batch_loss for h in a] == [h.batch_loss for h in b]
    assert a[0].batch_loss != a[1].batch_loss


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        (lambda: repeat(fake_run(), seeds=3), TypeError, "single integer"),
        (lambda: repeat(fake_run(), seeds=()), ValueError, "seeds is empty"),
        (lambda: repeat(fake_run(), seeds=(1, 1)), ValueError, "distinct"),
        (lambda: repeat(lambda s: 0.9, seeds=(0,)), TypeError, "must return a bnlib.history.History"),
        (lambda: repeat("fit", seeds=(0,)), TypeError, "callable"),
        (lambda: to_frame([]), ValueError, "no histories"),
        (lambda: summarize_final(results(), "accuracy"), ValueError, "no column"),
        (lambda: summarize_final(results(), epoch=9), ValueError, "no results at epoch 9"),
        (lambda: paired_difference(results(), "a", "c"), ValueError, "no runs with config='c'"),
        (
            lambda: paired_difference(
                pd.concat([results(), to_frame(repeat(fake_run(), seeds=(5,), config="c"))]), "a", "c"
            ),
            ValueError,
            "same seeds",
        ),
        (lambda: mean_interval([]), ValueError, "non-empty"),
        (lambda: verdict(0.5), TypeError, "Interval"),
        (lambda: claim_verdict(mean_interval([1.0, 2.0])), ValueError, "exactly one"),
        (lambda: claim_verdict(mean_interval([1.0, 2.0]), about=1, at_least=1), ValueError, "exactly one"),
    ],
)
def test_bad_input(call, error, words):
    with pytest.raises(error, match=words):
        call()


def test_interval_format():
    assert "one seed" in Interval(0.9, math.nan, math.nan, math.nan, 1).format()
