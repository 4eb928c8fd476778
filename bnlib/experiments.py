"""Repeat a run over seeds, summarize it, compare two configurations, and put the result into words.

Every comparison in the book goes through here, so that "B is better than A"
is never typed by hand: it is a paired difference over the same seeds with a
95% Student-t interval, and :func:`verdict` / :func:`claim_verdict` turn the
numbers into one of three words.

The functions are framework-agnostic: :func:`repeat` takes any callable
``seed -> History`` (PyTorch's :func:`bnlib.training.fit`, or the Keras
wrapper); :func:`repeat_fit` is the PyTorch convenience.

Conventions: the spread over seeds is the sample standard deviation
(``ddof=1``); a 95% interval of a mean over ``n`` seeds is
``mean +- t_{0.975, n-1} * std / sqrt(n)``; with one seed there is no estimate
of the noise and intervals are NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bnlib.history import History

__all__ = [
    "Interval",
    "Verdict",
    "WORDS",
    "repeat",
    "repeat_fit",
    "to_frame",
    "mean_interval",
    "summarize_epochs",
    "summarize_final",
    "paired_difference",
    "verdict",
    "claim_verdict",
]

#: The three verdict words a chapter may print.
WORDS = ("holds", "does not hold", "inside the noise")


@dataclass(frozen=True)
class Interval:
    """A mean over seeds with its spread and a confidence interval.

    Attributes:
        mean, std: sample mean and standard deviation (``ddof=1``; NaN for one value).
        low, high: the two-sided Student-t interval of the mean (NaN for one value).
        n: number of values (seeds).
        confidence: the interval's level.
    """

    mean: float
    std: float
    low: float
    high: float
    n: int
    confidence: float = 0.95

    def contains(self, value: float) -> bool:
        """True when ``value`` lies inside the interval (False when the interval is undefined)."""
        return bool(self.low <= value <= self.high)

    def format(self, scale: float = 1.0, digits: int = 2, unit: str = "") -> str:
        """``"98.12 +- 0.10 (95% CI 97.9 to 98.3, n=3)"``, values multiplied by ``scale``.

        Example:
            >>> mean_interval([0.9, 0.92, 0.94]).format(scale=100, unit="%")
            '92.00% +- 2.00 (95% CI 87.03% to 96.97%, n=3)'
        """
        f = lambda v: f"{v * scale:.{digits}f}{unit}"  # noqa: E731
        if self.n < 2:
            return f"{f(self.mean)} (one seed: no interval)"
        return f"{f(self.mean)} +- {self.std * scale:.{digits}f} ({self.confidence:.0%} CI {f(self.low)} to {f(self.high)}, n={self.n})"


@dataclass(frozen=True)
class Verdict:
    """A verdict word (one of :data:`WORDS`) and the reason, computed from numbers."""

    word: str
    reason: str

    def __str__(self) -> str:
        return self.word


def _check_seeds(seeds: Any) -> list[int]:
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        raise TypeError(
            f"seeds must be a sequence of integers such as profile.seeds, got the single integer {seeds}; write seeds=({seeds},)"
        )
    try:
        seeds = list(seeds)
    except TypeError as error:
        raise TypeError(
            f"seeds must be a sequence of integers such as profile.seeds, got {type(seeds).__name__}"
        ) from error
    if not seeds:
        raise ValueError("seeds is empty; pass at least one seed, e.g. seeds=profile.seeds")
    if any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) for s in seeds):
        raise TypeError(f"seeds must be integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds!r}")
    return [int(s) for s in seeds]


def repeat(run: Callable[[int], History], *, seeds: Iterable[int], config: str | None = None) -> list[History]:
    """Call ``run(seed)`` for every seed and label each History with ``seed`` (and ``config``).

    Args:
        run: any callable ``seed -> History`` (PyTorch, Keras, or anything else).
        seeds: the seeds, e.g. ``profile.seeds``.
        config: a name for this configuration, stored as ``meta["config"]``.

    Example:
        >>> def run(seed):
        ...     h = History(); h.add_epoch(train_loss=1.0, train_accuracy=0.5 + seed / 10, seconds=0.1); return h
        >>> [h.meta for h in repeat(run, seeds=(0, 1), config="toy")]
        [{'seed': 0, 'config': 'toy'}, {'seed': 1, 'config': 'toy'}]
    """
    if not callable(run):
        raise TypeError(f"run must be a callable seed -> History, got {type(run).__name__}")
    histories = []
    for seed in _check_seeds(seeds):
        history = run(seed)
        if not isinstance(history, History):
            raise TypeError(f"run({seed}) must return a bnlib.history.History, got {type(history).__name__}")
        history.meta["seed"] = seed
        if config is not None:
            history.meta["config"] = config
        histories.append(history)
    return histories


def repeat_fit(
    make_model: Callable[[], Any],
    train: Any,
    *,
    seeds: Iterable[int],
    config: str | None = None,
    make_optimizer: Callable[[Any], Any] | None = None,
    **fit_kwargs: Any,
) -> list[History]:
    """Train a fresh PyTorch model per seed with :func:`bnlib.training.fit`.

    For each seed: seed every generator, build ``make_model()`` (so the seed
    fixes the initial weights), build ``make_optimizer(model)`` if given, then
    ``fit(model, train, seed=seed, **fit_kwargs)`` (so the seed also fixes the
    batch order). Two configurations run with the same seeds see the same
    batch orders: the comparison is paired.

    Example:
        >>> import torch
        >>> from bnlib.models import MLP
        >>> x = torch.randn(32, 2); y = (x[:, 0] > 0).long()
        >>> hs = repeat_fit(lambda: MLP((2, 4, 2)), (x, y), seeds=(0, 1), config="tiny", epochs=1, batch_size=8, device="cpu", progress=False)
        >>> [h.meta["seed"] for h in hs], hs[0].epochs
        ([0, 1], 1)
    """
    from bnlib.config import seed_everything
    from bnlib.training import fit

    if not callable(make_model):
        raise TypeError(f"make_model must be a callable returning a fresh nn.Module, got {type(make_model).__name__}")

    def run(seed: int) -> History:
        seed_everything(seed)
        model = make_model()
        optimizer = make_optimizer(model) if make_optimizer is not None else None
        return fit(model, train, seed=seed, optimizer=optimizer, **fit_kwargs)

    return repeat(run, seeds=seeds, config=config)


def to_frame(histories: Iterable[History] | Any) -> Any:
    """One tidy DataFrame (a row per run and epoch) from Histories; a DataFrame passes through.

    Example:
        >>> h = History(meta={"config": "a", "seed": 0}); h.add_epoch(train_loss=1, train_accuracy=0.5, seconds=1)
        >>> to_frame([h])[["config", "seed", "epoch", "train_accuracy"]].to_dict("records")
        [{'config': 'a', 'seed': 0, 'epoch': 1, 'train_accuracy': 0.5}]
    """
    import pandas as pd

    if isinstance(histories, pd.DataFrame):
        return histories
    if isinstance(histories, History):
        histories = [histories]
    histories = list(histories)
    if not histories:
        raise ValueError("no histories to tabulate; run at least one seed")
    for h in histories:
        if not isinstance(h, History):
            raise TypeError(f"expected bnlib.history.History objects, got {type(h).__name__}")
    return pd.concat([h.to_frame() for h in histories], ignore_index=True)


def mean_interval(values: Iterable[float], *, confidence: float = 0.95) -> Interval:
    """Mean, sample std and Student-t interval of ``values`` (one per seed).

    Formula: ``mean +- t_{(1+confidence)/2, n-1} * std / sqrt(n)``, ``std`` with ``ddof=1``.

    Example:
        >>> iv = mean_interval([1.0, 2.0, 3.0])
        >>> round(iv.mean, 3), round(iv.std, 3), round(iv.low, 3), round(iv.high, 3)
        (2.0, 1.0, -0.484, 4.484)
    """
    from scipy import stats

    array = np.asarray(list(values), dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"mean_interval needs a non-empty list of numbers, got shape {array.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    n = int(array.size)
    mean = float(array.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, math.nan, n, confidence)
    std = float(array.std(ddof=1))
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * std / math.sqrt(n)
    return Interval(mean, std, mean - half, mean + half, n, confidence)


def _frame_with(frame: Any, columns: Sequence[str]) -> Any:
    frame = to_frame(frame)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"the results have no column(s) {missing}; available: {list(frame.columns)}")
    return frame


def summarize_epochs(
    results: Any, metric: str = "val_accuracy", *, by: str = "config", confidence: float = 0.95
) -> Any:
    """Per configuration and epoch: ``n``, ``mean``, ``std``, ``low``, ``high``, ``min``, ``max`` of ``metric`` over seeds.

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"config": ["a"] * 2, "seed": [0, 1], "epoch": [1, 1], "val_accuracy": [0.9, 0.94]})
        >>> summarize_epochs(df)[["config", "epoch", "n", "mean"]].to_dict("records")
        [{'config': 'a', 'epoch': 1, 'n': 2, 'mean': 0.92}]
    """
    import pandas as pd

    frame = _frame_with(results, [by, "epoch", metric])
    rows = []
    for (key, epoch), group in frame.groupby([by, "epoch"], sort=False):
        iv = mean_interval(group[metric], confidence=confidence)
        values = group[metric].to_numpy(dtype=float)
        rows.append(
            {
                by: key,
                "epoch": int(epoch),
                "n": iv.n,
                "mean": iv.mean,
                "std": iv.std,
                "low": iv.low,
                "high": iv.high,
                "min": values.min(),
                "max": values.max(),
            }
        )
    return pd.DataFrame(rows)


def _final_rows(frame: Any, epoch: int | None, by: str) -> Any:
    if epoch is None:  # each run's last epoch
        return frame[frame["epoch"] == frame.groupby([by, "seed"])["epoch"].transform("max")]
    chosen = frame[frame["epoch"] == epoch]
    if chosen.empty:
        raise ValueError(f"no results at epoch {epoch}; epochs present: {sorted(frame['epoch'].unique().tolist())}")
    return chosen


def summarize_final(
    results: Any,
    metric: str = "val_accuracy",
    *,
    by: str = "config",
    epoch: int | None = None,
    confidence: float = 0.95,
) -> Any:
    """Per configuration: the metric at ``epoch`` (default: each run's last), as ``n``, ``mean``, ``std``, ``low``, ``high``.

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"config": ["a", "a"], "seed": [0, 1], "epoch": [1, 1], "val_accuracy": [0.9, 0.94]})
        >>> summarize_final(df)[["config", "n", "mean"]].to_dict("records")
        [{'config': 'a', 'n': 2, 'mean': 0.92}]
    """
    import pandas as pd

    frame = _final_rows(_frame_with(results, [by, "seed", "epoch", metric]), epoch, by)
    rows = []
    for key, group in frame.groupby(by, sort=False):
        iv = mean_interval(group[metric], confidence=confidence)
        rows.append({by: key, "n": iv.n, "mean": iv.mean, "std": iv.std, "low": iv.low, "high": iv.high})
    return pd.DataFrame(rows)


def paired_difference(
    results: Any,
    baseline: str,
    treatment: str,
    *,
    metric: str = "val_accuracy",
    epoch: int | None = None,
    by: str = "config",
    confidence: float = 0.95,
) -> Interval:
    """``treatment - baseline`` of ``metric``, seed by seed, as an :class:`Interval` over seeds.

    Pairing by seed removes the part of the noise the two runs share (the same
    initial weights where the architectures allow it, the same batch order).

    Raises:
        ValueError: a configuration is missing or the two were not run on the same seeds.

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"config": ["a", "a", "b", "b"], "seed": [0, 1, 0, 1], "epoch": 1,
        ...                    "val_accuracy": [0.90, 0.92, 0.93, 0.94]})
        >>> round(paired_difference(df, "a", "b").mean, 3)
        0.025
    """
    frame = _final_rows(_frame_with(results, [by, "seed", "epoch", metric]), epoch, by)
    series = {}
    for name in (baseline, treatment):
        chosen = frame[frame[by] == name]
        if chosen.empty:
            raise ValueError(f"no runs with {by}={name!r}; present: {sorted(map(str, frame[by].unique()))}")
        series[name] = chosen.set_index("seed")[metric]
    a, b = series[baseline], series[treatment]
    if set(a.index) != set(b.index):
        raise ValueError(
            f"{baseline!r} ran on seeds {sorted(a.index)} but {treatment!r} on {sorted(b.index)}; a paired comparison needs the same seeds"
        )
    return mean_interval((b - a.loc[b.index]).to_numpy(dtype=float), confidence=confidence)


def verdict(difference: Interval, *, expect: str = "higher", min_effect: float = 0.0) -> Verdict:
    """Turn a paired difference (treatment - baseline) into a verdict on the claim "treatment is ``expect``".

    - ``"holds"``: the whole interval is on the claimed side of ``min_effect``
      (``> min_effect`` for ``expect="higher"``, ``< -min_effect`` for ``"lower"``);
    - ``"does not hold"``: the whole interval is on the other side of zero, or
      (with ``min_effect > 0``) inside ``[-min_effect, min_effect]``;
    - ``"inside the noise"``: otherwise, including one seed (no interval).

    Example:
        >>> verdict(mean_interval([0.02, 0.03, 0.025])).word
        'holds'
        >>> verdict(mean_interval([0.02, -0.01, 0.005])).word
        'inside the noise'
    """
    if not isinstance(difference, Interval):
        raise TypeError(f"verdict expects an Interval from paired_difference, got {type(difference).__name__}")
    if expect not in ("higher", "lower"):
        raise ValueError(f"expect must be 'higher' or 'lower', got {expect!r}")
    if min_effect < 0:
        raise ValueError(f"min_effect must be >= 0, got {min_effect!r}")
    sign = 1.0 if expect == "higher" else -1.0
    low, high = sorted((sign * difference.low, sign * difference.high))
    if difference.n < 2 or math.isnan(low):
        return Verdict("inside the noise", f"{difference.n} seed(s): no estimate of the noise, so no verdict")
    span = f"the {difference.confidence:.0%} interval of the difference is [{difference.low:+.4g}, {difference.high:+.4g}] over {difference.n} seeds"
    if low > min_effect:
        return Verdict(
            "holds",
            f"{span}, entirely {expect} than {'zero' if min_effect == 0 else f'the minimum effect {min_effect:g}'}",
        )
    if high < 0:
        return Verdict("does not hold", f"{span}, entirely on the opposite side of zero")
    if min_effect > 0 and -min_effect <= low and high <= min_effect:
        return Verdict("does not hold", f"{span}, inside +-{min_effect:g}: any effect is smaller than claimed")
    return Verdict(
        "inside the noise", f"{span}, which includes {'zero' if min_effect == 0 else 'values below the minimum effect'}"
    )


def claim_verdict(
    measured: Interval,
    *,
    about: float | None = None,
    tolerance: float = 0.005,
    at_least: float | None = None,
    at_most: float | None = None,
) -> Verdict:
    """Check a claimed value ("about 93%", "just over 98%") against a measured :class:`Interval`.

    The claim is a band: ``[about - tolerance, about + tolerance]``,
    ``[at_least, inf)`` or ``(-inf, at_most]`` (give exactly one form).
    ``"holds"`` when the interval of the mean lies inside the band,
    ``"does not hold"`` when it lies entirely outside, ``"inside the noise"``
    when it straddles an edge (more seeds would decide) or there is one seed.

    Example:
        >>> claim_verdict(mean_interval([0.931, 0.929, 0.930]), about=0.93).word
        'holds'
        >>> claim_verdict(mean_interval([0.95, 0.951, 0.949]), about=0.93).word
        'does not hold'
        >>> claim_verdict(mean_interval([0.985, 0.986, 0.987]), at_least=0.98).word
        'holds'
    """
    if not isinstance(measured, Interval):
        raise TypeError(
            f"claim_verdict expects an Interval from mean_interval or summarize_final, got {type(measured).__name__}"
        )
    forms = [about is not None, at_least is not None, at_most is not None]
    if sum(forms) != 1:
        raise ValueError("give exactly one of about=, at_least=, at_most= (e.g. about=0.93 for 'about 93%')")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance!r}")
    if about is not None:
        band, claim = (about - tolerance, about + tolerance), f"about {about:g} (+-{tolerance:g})"
    elif at_least is not None:
        band, claim = (at_least, math.inf), f"at least {at_least:g}"
    else:
        band, claim = (-math.inf, at_most), f"at most {at_most:g}"
    if measured.n < 2 or math.isnan(measured.low):
        inside = band[0] <= measured.mean <= band[1]
        return Verdict(
            "inside the noise",
            f"one seed (mean {measured.mean:.4g}, {'inside' if inside else 'outside'} the claim {claim}): no estimate of the noise",
        )
    span = f"measured {measured.mean:.4g}, {measured.confidence:.0%} interval [{measured.low:.4g}, {measured.high:.4g}] over {measured.n} seeds"
    if band[0] <= measured.low and measured.high <= band[1]:
        return Verdict("holds", f"{span}: inside the claim {claim}")
    if measured.high < band[0] or measured.low > band[1]:
        side = "above" if measured.low > band[1] else "below"
        return Verdict("does not hold", f"{span}: entirely {side} the claim {claim}")
    return Verdict("inside the noise", f"{span}: straddles the edge of the claim {claim}; more seeds would decide")
