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
    Verdict,
    chance_accuracy,
    claim_verdict,
    detectable_difference,
    judge,
    judge_claim,
    mean_interval,
    paired_difference,
    repeat,
    repeat_fit,
    summarize_epochs,
    summarize_final,
    to_frame,
    verdict,
    why_not_judged,
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


# --- malformed input is refused, never averaged (issue 14) -------------------------------------------------------


def frame_of(rows):
    return pd.DataFrame(rows, columns=["config", "seed", "epoch", "val_accuracy"])


def two_by_two(b_values=(0.93, 0.94), a_values=(0.90, 0.92)):
    return frame_of(
        [("a", 0, 1, a_values[0]), ("a", 1, 1, a_values[1]), ("b", 0, 1, b_values[0]), ("b", 1, 1, b_values[1])]
    )


def test_paired_difference_refuses_duplicated_runs():
    # A repeated (config, seed) row used to pair every copy with every other: n=8 from 2 seeds.
    doubled = pd.concat([two_by_two(), two_by_two()], ignore_index=True)
    with pytest.raises(ValueError, match=r"duplicated runs: config='a' seed 0 epoch 1: 2 rows.*falsely narrow"):
        paired_difference(doubled, "a", "b")
    with pytest.raises(ValueError, match="duplicated runs"):
        summarize_final(doubled)
    with pytest.raises(ValueError, match="duplicated runs"):
        summarize_epochs(doubled)
    # The same run appended with fewer epochs is a duplicate too, though its last epoch differs.
    longer = to_frame(repeat(fake_run(), seeds=(0, 1), config="a") + repeat(fake_run(0.02), seeds=(0, 1), config="b"))
    shorter = longer[(longer["config"] == "a") & (longer["seed"] == 0) & (longer["epoch"] == 1)]
    with pytest.raises(ValueError, match=r"config='a' seed 0 epoch 1: 2 rows"):
        paired_difference(pd.concat([longer, shorter]), "a", "b")
    # A duplicate in a configuration that is not compared does not matter.
    other = frame_of([("c", 0, 1, 0.5), ("c", 0, 1, 0.5)])
    assert paired_difference(pd.concat([two_by_two(), other]), "a", "b").n == 2


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_metric_values_raise_and_name_the_run(bad):
    frame = two_by_two(b_values=(0.93, bad))
    with pytest.raises(
        ValueError, match=rf"val_accuracy is not finite in 1 run\(s\) \(config='b' seed 1 epoch 1: {bad}\).*judge"
    ):
        paired_difference(frame, "a", "b")
    with pytest.raises(ValueError, match="config='b' seed 1"):
        summarize_final(frame)
    with pytest.raises(ValueError, match="config='b' seed 1"):
        summarize_epochs(frame)
    assert paired_difference(frame, "a", "a").n == 2  # only the compared runs are checked


def test_a_nan_seed_raises_instead_of_dropping_the_run():
    # A NaN seed used to drop that run from the pairing: one pair left, "inside the noise".
    frame = two_by_two().astype({"seed": float})
    frame.loc[1, "seed"] = math.nan
    frame.loc[3, "seed"] = math.nan
    with pytest.raises(ValueError, match=r"seed is missing \(NaN/None\) in row\(s\) \[1, 3\]"):
        paired_difference(frame, "a", "b")
    with pytest.raises(ValueError, match="seed is missing"):
        summarize_final(frame)


def test_a_non_numeric_metric_column_is_refused():
    frame = two_by_two().astype({"val_accuracy": str})
    with pytest.raises(TypeError, match="must hold numbers, got dtype"):
        paired_difference(frame, "a", "b")


@pytest.mark.parametrize(
    ("values", "error", "words"),
    [
        ([0.9, math.nan, 0.91], ValueError, r"1 non-finite value\(s\) \(nan at position 1\)"),
        ([math.inf], ValueError, r"inf at position 0.*not a measurement"),
        (np.array([0.9, -np.inf]), ValueError, "-inf at position 1"),
        (pd.Series([0.9, None]), ValueError, "nan at position 1"),
        ([], ValueError, "non-empty"),
        ([[0.9, 0.91]], ValueError, r"got shape \(1, 2\)"),
        (0.9, TypeError, r"got 0.9 \(float\); wrap a single value as \[value\]"),
        ("0.9", TypeError, "got '0.9' \\(str\\)"),
        (None, TypeError, "got None"),
        (["0.9", "0.91"], TypeError, "needs numbers, got <U4 values such as '0.9'"),
        ([0.9, None], TypeError, "needs numbers, got object values such as None"),
        ([True, False], TypeError, "got booleans"),
    ],
)
def test_mean_interval_refuses_what_is_not_one_finite_number_per_seed(values, error, words):
    with pytest.raises(error, match=words):
        mean_interval(values)


def test_mean_interval_takes_numpy_scalars_tensors_and_generators():
    expected = mean_interval([0.9, 0.92, 0.94])
    for values in (
        [np.float32(0.9), np.float64(0.92), 0.94],
        torch.tensor([0.9, 0.92, 0.94], dtype=torch.float64),
        (v for v in (0.9, 0.92, 0.94)),
    ):
        iv = mean_interval(values)
        assert iv.mean == pytest.approx(expected.mean) and iv.low == pytest.approx(expected.low)
    assert mean_interval([1, 2, 3], confidence=np.float32(0.9)).confidence == pytest.approx(0.9)


NUMBER_ARGUMENTS = [
    (lambda x: mean_interval([1.0, 2.0], confidence=x), "confidence"),
    (lambda x: summarize_final(two_by_two(), confidence=x), "confidence"),
    (lambda x: summarize_epochs(two_by_two(), confidence=x), "confidence"),
    (lambda x: paired_difference(two_by_two(), "a", "b", confidence=x), "confidence"),
    (lambda x: verdict(mean_interval([0.1, 0.2]), min_effect=x), "min_effect"),
    (lambda x: claim_verdict(mean_interval([0.1, 0.2]), about=x), "about"),
    (lambda x: claim_verdict(mean_interval([0.1, 0.2]), at_least=x), "at_least"),
    (lambda x: claim_verdict(mean_interval([0.1, 0.2]), at_most=x), "at_most"),
    (lambda x: claim_verdict(mean_interval([0.1, 0.2]), about=0.1, tolerance=x), "tolerance"),
    (lambda x: judge(two_by_two(), "a", "b", min_effect=x), "min_effect"),
    (lambda x: judge(two_by_two(), "a", "b", chance=0.1, margin=x), "margin"),
    (lambda x: judge(two_by_two(), "a", "b", chance=x), "chance"),
    (lambda x: judge_claim(two_by_two(), "a", about=0.9, tolerance=x), "tolerance"),
    (lambda x: detectable_difference(5, x), "std"),
    (lambda x: detectable_difference(5, 0.01, confidence=x), "confidence"),
    (lambda x: detectable_difference(5, 0.01, power=x), "power"),
]


BAD_NUMBERS = [
    (math.nan, ValueError, "must be a finite number, got nan"),
    (math.inf, ValueError, "must be a finite number, got inf"),
    (-math.inf, ValueError, "must be a finite number, got -inf"),
    ("0.1", TypeError, r"must be a number, got '0.1' \(str\)"),
    (None, TypeError, "must be a number, got None"),
    (True, TypeError, r"must be a number, got True \(bool\)"),
    ([0.1], TypeError, r"must be a number, got \[0.1\] \(list\)"),
]
OPTIONAL = {"about", "at_least", "at_most", "chance", "power"}  # None means "not this form" or "no such check"


@pytest.mark.parametrize(
    ("call", "name", "bad", "error", "words"),
    [
        pytest.param(call, name, *bad, id=f"{name}={bad[0]!r}-{i}")
        for i, (call, name) in enumerate(NUMBER_ARGUMENTS)
        for bad in BAD_NUMBERS
        if not (name in OPTIONAL and bad[0] is None)
    ],
)
def test_every_threshold_refuses_nan_inf_and_non_numbers(call, name, bad, error, words):
    with pytest.raises(error, match=f"{name} {words}"):
        call(bad)


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda: mean_interval([1.0, 2.0], confidence=1.0), r"confidence must be in \(0, 1\)"),
        (lambda: verdict(mean_interval([0.1, 0.2]), min_effect=-0.01), "min_effect must be >= 0"),
        (lambda: claim_verdict(mean_interval([0.1, 0.2]), about=0.1, tolerance=-1), "tolerance must be >= 0"),
        (lambda: verdict(mean_interval([0.1, 0.2]), expect="more"), "expect must be one of"),
        (lambda: judge(two_by_two(), "a", "b", chance=1.5), r"chance must be an accuracy in \[0, 1\]"),
        (lambda: detectable_difference(5, 0.01, power=0.3), r"power must be in \[0.5, 1\)"),
        (lambda: detectable_difference(1, 0.01), "n must be >= 2"),
        (lambda: summarize_final(two_by_two(), epoch=1.0), "epoch must be an integer"),
        (lambda: summarize_final(two_by_two(), epoch=True), "epoch must be an integer"),
        (lambda: summarize_final(two_by_two(), metric=["val_accuracy"]), "must be a string"),
    ],
)
def test_out_of_range_arguments(call, words):
    with pytest.raises((ValueError, TypeError), match=words):
        call()


def test_numpy_scalars_count_as_numbers():
    iv = mean_interval([0.02, 0.03, 0.025])
    assert verdict(iv, min_effect=np.float32(0.001)).word == "holds"
    assert claim_verdict(iv, about=np.float64(0.025), tolerance=np.float32(0.02)).word == "holds"
    assert detectable_difference(np.int64(5), np.float32(0.01)) == pytest.approx(detectable_difference(5, 0.01))
    with pytest.raises(TypeError, match="n must be the number of seeds"):
        detectable_difference(True, 0.01)


def test_verdicts_refuse_hand_made_intervals_with_nan():
    with pytest.raises(ValueError, match="nothing to judge"):
        verdict(Interval(math.nan, math.nan, math.nan, math.nan, 3))
    with pytest.raises(ValueError, match="build it with mean_interval"):
        claim_verdict(Interval(0.5, 0.1, math.nan, 0.6, 3), about=0.5)


# --- one verdict path that refuses to judge a broken comparison (issue 15) ----------------------------------------


def synthetic(config, accuracies, *, seeds=(0, 1, 2, 3, 4), losses=None, val_loss=True):
    """Histories of ``config``: per seed, one final accuracy (and optionally per-epoch train losses)."""
    histories = []
    for i, seed in enumerate(seeds):
        h = History(meta={"config": config, "seed": seed})
        seed_losses = losses[i] if losses is not None else (1.0, 0.5)
        for epoch, loss in enumerate(seed_losses):
            last = epoch == len(seed_losses) - 1
            h.add_epoch(
                train_loss=loss,
                train_accuracy=0.5,
                val_loss=loss if val_loss else math.nan,
                val_accuracy=accuracies[i] if last else 0.5,
                seconds=0.1,
            )
        histories.append(h)
    return histories


HEALTHY_A = (0.950, 0.952, 0.949, 0.951, 0.953)
HEALTHY_B = (0.970, 0.971, 0.969, 0.972, 0.970)
MNIST_TEST_CHANCE = 0.1135  # the share of the digit 1 among MNIST's test labels


def test_words_include_not_judged_and_verdicts_check_their_word():
    assert WORDS == ("holds", "does not hold", "inside the noise", "not judged")
    assert not Verdict("not judged", "why").judged and Verdict("holds", "why").judged
    with pytest.raises(ValueError, match="must be one of"):
        Verdict("maybe", "why")
    with pytest.raises(TypeError, match="reason"):
        Verdict("holds", "")
    with pytest.raises(ValueError, match="carries no interval"):
        Verdict("not judged", "why", mean_interval([1.0, 2.0]))


def test_healthy_comparison_is_judged_with_its_interval_and_detectable_difference():
    histories = synthetic("plain", HEALTHY_A) + synthetic("BN", HEALTHY_B)
    result = judge(histories, "plain", "BN", chance=MNIST_TEST_CHANCE)
    difference = paired_difference(histories, "plain", "BN")
    assert result.word == "holds" and result.judged
    assert result.interval == difference
    assert result.detectable == pytest.approx((difference.high - difference.low) / 2)
    assert judge(histories, "plain", "BN", expect="lower").word == "does not hold"
    assert judge_claim(histories, "BN", about=0.97, tolerance=0.005, chance=MNIST_TEST_CHANCE).word == "holds"
    assert why_not_judged(histories, ["plain", "BN"], chance=MNIST_TEST_CHANCE) is None


def test_a_configuration_at_chance_is_not_judged():
    # Chapter 4's collapse: every model with batch norm scores the share of the digit 1 in inference mode.
    collapsed = (0.1135, 0.1135, 0.1135, 0.1135, 0.1135)
    histories = synthetic("no BN", HEALTHY_A) + synthetic("BN", collapsed)
    result = judge(histories, "no BN", "BN", chance=MNIST_TEST_CHANCE)
    assert result.word == "not judged" and result.interval is None and math.isnan(result.detectable)
    assert "'BN' is at chance level on seed(s) 0, 1, 2, 3, 4" in result.reason and "0.1135" in result.reason
    # Without the check this is the misleading verdict the page used to print.
    assert verdict(paired_difference(histories, "no BN", "BN")).word == "does not hold"
    # One seed at chance is enough: the comparison would average a broken run.
    one_bad = synthetic("no BN", HEALTHY_A) + synthetic("BN", (*HEALTHY_B[:4], 0.15))
    assert "seed(s) 4: val_accuracy 0.15 within 0.05 of chance" in judge(one_bad, "no BN", "BN", chance=0.1135).reason
    assert judge(one_bad, "no BN", "BN", chance=0.1135, margin=0.01).judged
    assert judge_claim(histories, "BN", about=0.992, tolerance=0.003, chance=MNIST_TEST_CHANCE).word == "not judged"


def test_chance_accuracy_is_the_majority_share():
    assert chance_accuracy([1, 1, 0, 2]) == 0.5
    assert chance_accuracy(torch.arange(10)) == pytest.approx(0.1)
    labels = np.array(
        [0] * 980
        + [1] * 1135
        + [2] * 1032
        + [3] * 1010
        + [4] * 982
        + [5] * 892
        + [6] * 958
        + [7] * 1028
        + [8] * 974
        + [9] * 1009
    )
    assert chance_accuracy(labels) == pytest.approx(MNIST_TEST_CHANCE)
    for bad, error in (([0.5, 0.2], TypeError), ([], ValueError), (3, TypeError), ("123", TypeError)):
        with pytest.raises(error, match="labels"):
            chance_accuracy(bad)


def test_a_diverged_configuration_is_not_judged():
    losses = [(1.0, 0.5)] * 4 + [(1.0, math.nan)]
    accuracy_after_nan = (*HEALTHY_B[:4], 0.098)  # NaN logits: argmax is class 0
    histories = synthetic("plain", HEALTHY_A) + synthetic("big lr", accuracy_after_nan, losses=losses)
    result = judge(histories, "plain", "big lr")
    assert result.word == "not judged"
    assert result.reason.startswith("'big lr' diverged (train_loss = nan at epoch 2 on seed 4")
    # Diverged at epoch 2: judging epoch 1 is fine.
    assert judge(histories, "plain", "big lr", epoch=1).judged
    # An infinite loss is divergence too, and so is an infinite metric that is a loss.
    inf_loss = synthetic("plain", HEALTHY_A) + synthetic("big lr", HEALTHY_B, losses=[(1.0, math.inf)] * 5)
    assert "train_loss = inf at epoch 2" in judge(inf_loss, "plain", "big lr").reason
    assert "diverged" in judge(inf_loss, "plain", "big lr", metric="val_loss", expect="lower").reason


def test_val_loss_that_was_never_measured_is_not_divergence():
    histories = synthetic("plain", HEALTHY_A, val_loss=False) + synthetic("BN", HEALTHY_B, val_loss=False)
    assert judge(histories, "plain", "BN").word == "holds"
    # But a val_loss measured for some runs and NaN for others is.
    mixed = synthetic("plain", HEALTHY_A) + synthetic("BN", HEALTHY_B, val_loss=False)
    assert "'BN' diverged (val_loss = nan" in judge(mixed, "plain", "BN").reason


@pytest.mark.parametrize("placeholder", [math.inf, math.nan])
def test_never_reaching_the_target_is_not_judged_and_never_averaged(placeholder):
    # Steps to 90% accuracy per seed; one configuration never got there on two seeds.
    steps = {"BN": [120, 130, 125, 128, 122], "no BN": [800, placeholder, 900, placeholder, 850]}
    frame = pd.DataFrame(
        [
            {"config": c, "seed": s, "epoch": 1, "train_loss": 0.1, "steps_to_target": v}
            for c, vs in steps.items()
            for s, v in enumerate(vs)
        ]
    )
    result = judge(frame, "no BN", "BN", metric="steps_to_target", expect="lower")
    assert result.word == "not judged" and result.interval is None
    assert (
        f"'no BN' has no steps_to_target on seed(s) 1, 3 ({placeholder}, {placeholder}): it never reached the target"
        in result.reason
    )
    with pytest.raises(ValueError, match="not finite"):  # the placeholder never enters an interval
        paired_difference(frame, "no BN", "BN", metric="steps_to_target")
    reached = frame.assign(steps_to_target=frame["steps_to_target"].fillna(1000).replace(math.inf, 1000))
    assert judge(reached, "no BN", "BN", metric="steps_to_target", expect="lower").word == "holds"


def test_why_not_judged_lists_every_broken_configuration_and_checks_its_arguments():
    histories = synthetic("a", (0.1,) * 5) + synthetic("b", HEALTHY_B, losses=[(1.0, math.nan)] * 5)
    reason = why_not_judged(histories, ["a", "b"], chance=0.1)
    assert reason.startswith("'a' is at chance level") and "; 'b' diverged" in reason
    with pytest.raises(ValueError, match="no runs with config='c'"):
        why_not_judged(histories, ["a", "c"])
    with pytest.raises(ValueError, match="pass accuracy='val_accuracy'"):
        why_not_judged(histories, "a", metric="train_loss", chance=0.1)
    assert "at chance" in why_not_judged(histories, "a", metric="train_loss", accuracy="val_accuracy", chance=0.1)
    with pytest.raises(TypeError, match="configs must be"):
        why_not_judged(histories, [])
    with pytest.raises(TypeError, match="configs must be"):
        why_not_judged(histories, 3)


def test_verdict_and_claim_verdict_take_a_reason_not_to_judge():
    iv = mean_interval([0.02, 0.03, 0.025])
    assert verdict(iv, not_judged="the baseline is at chance") == Verdict("not judged", "the baseline is at chance")
    assert claim_verdict(iv, about=0.025, not_judged="diverged").word == "not judged"
    assert verdict(iv, not_judged=None).word == "holds" and verdict(iv).interval == iv
    with pytest.raises(TypeError, match="not_judged must be None or the reason"):
        verdict(iv, not_judged=True)
    with pytest.raises(ValueError, match="exactly one"):  # a malformed claim is refused, judged or not
        judge_claim(synthetic("a", (0.1,) * 5), "a", chance=0.1)


def test_detectable_difference_is_the_interval_half_width():
    values = np.array([0.010, 0.013, 0.008, 0.012, 0.011])
    iv = mean_interval(values)
    half = detectable_difference(len(values), float(values.std(ddof=1)))
    assert half == pytest.approx((iv.high - iv.low) / 2)
    assert half == pytest.approx(stats.t.ppf(0.975, 4) * values.std(ddof=1) / math.sqrt(5))
    # A mean difference just above it is called; just below it is noise (same spread).
    spread = values - values.mean()
    assert verdict(mean_interval(spread + 1.01 * half)).word == "holds"
    assert verdict(mean_interval(spread + 0.99 * half)).word == "inside the noise"
    # Two seeds: the t factor is 12.7, so only huge differences can be decided.
    assert detectable_difference(2, 1.0) == pytest.approx(stats.t.ppf(0.975, 1) / math.sqrt(2))
    assert detectable_difference(5, 0.0) == 0.0


@pytest.mark.parametrize("n", [5, 10, 30])
@pytest.mark.parametrize("power", [0.8, 0.9])
def test_detectable_difference_with_power_matches_the_noncentral_t(n, power):
    delta = detectable_difference(n, 1.0, power=power)
    critical = stats.t.ppf(0.975, n - 1)
    exact = stats.nct.sf(critical, n - 1, delta * math.sqrt(n)) + stats.nct.cdf(-critical, n - 1, delta * math.sqrt(n))
    assert exact == pytest.approx(power, abs=0.02)
