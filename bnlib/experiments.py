"""Repeat a run over seeds, summarize it, compare two configurations, and put the result into words.

Every comparison in the book goes through here, so that "B is better than A"
is never typed by hand: it is a paired difference over the same seeds with a
95% Student-t interval, and :func:`verdict` / :func:`claim_verdict` turn the
numbers into one of the :data:`WORDS`. :func:`judge` and :func:`judge_claim`
do the whole path from a chapter's histories or frame, and refuse to judge a
broken comparison: when a compared configuration sits at chance level,
diverged, or never reached a target, the verdict is ``"not judged"`` with the
reason (:func:`why_not_judged`), and no placeholder ever enters a mean or an
interval. :func:`detectable_difference` says how large a difference the design
(its seeds and noise) can tell from zero.

The functions are framework-agnostic: :func:`repeat` takes any callable
``seed -> History`` (PyTorch's :func:`bnlib.training.fit`, or the Keras
wrapper); :func:`repeat_fit` is the PyTorch convenience.

Conventions: the spread over seeds is the sample standard deviation
(``ddof=1``); a 95% interval of a mean over ``n`` seeds is
``mean +- t_{0.975, n-1} * std / sqrt(n)``; with one seed there is no estimate
of the noise and intervals are NaN. Values must be finite: a NaN or infinite
value (a diverged run, a placeholder for "never reached") raises a
``ValueError`` naming it, instead of turning into a silent NaN or a verdict.
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
    "chance_accuracy",
    "why_not_judged",
    "judge",
    "judge_claim",
    "detectable_difference",
]

#: The verdict words a chapter may print: three for a comparison that was judged, and
#: ``"not judged"`` for one that was broken (a configuration at chance, diverged, or
#: that never reached its target), whose reason says which.
WORDS = ("holds", "does not hold", "inside the noise", "not judged")
NOT_JUDGED = "not judged"


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
    """A verdict word (one of :data:`WORDS`) and the reason, computed from numbers.

    ``Verdict("not judged", reason)`` is the verdict on a broken comparison
    (see :func:`why_not_judged`); ``judged`` is False for it.

    Attributes:
        word: one of :data:`WORDS`.
        reason: why, in words, with the numbers.
        interval: the judged :class:`Interval` (the paired difference, or the
            measured value for a claimed one); None when not judged.

    Example:
        >>> Verdict("not judged", "'no BN' is at chance level").judged
        False
    """

    word: str
    reason: str
    interval: Interval | None = None

    def __post_init__(self) -> None:
        if self.word not in WORDS:
            raise ValueError(f"a verdict word must be one of {WORDS}, got {self.word!r}")
        if not isinstance(self.reason, str) or not self.reason:
            raise TypeError(f"a verdict needs its reason as a non-empty string, got {self.reason!r}")
        if self.interval is not None and not isinstance(self.interval, Interval):
            raise TypeError(f"a verdict's interval must be an Interval or None, got {type(self.interval).__name__}")
        if self.word == NOT_JUDGED and self.interval is not None:
            raise ValueError("a 'not judged' verdict carries no interval: a broken comparison's numbers are not shown")

    @property
    def judged(self) -> bool:
        """False for ``"not judged"``: the comparison was broken and says why in ``reason``."""
        return self.word != NOT_JUDGED

    @property
    def detectable(self) -> float:
        """The smallest difference this design could tell from zero (:func:`detectable_difference`); NaN when unknown."""
        iv = self.interval
        if iv is None or iv.n < 2:
            return math.nan
        return detectable_difference(iv.n, iv.std, confidence=iv.confidence)

    def __str__(self) -> str:
        return self.word


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _is_real(value: Any) -> bool:
    """Python and NumPy ints and floats are numbers; bool is not (nor str, tensors, arrays)."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _finite(value: Any, name: str, *, minimum: float | None = None, hint: str = "") -> float:
    """``value`` as a float, refusing non-numbers, NaN, infinities and values below ``minimum``."""
    fix = f"; {hint}" if hint else ""
    if not _is_real(value):
        raise TypeError(f"{name} must be a number, got {_describe(value)}{fix}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {number!r}{fix}")
    if minimum is not None and number < minimum:
        raise ValueError(f"{name} must be >= {minimum:g}, got {number!r}{fix}")
    return number


def _confidence(value: Any) -> float:
    confidence = _finite(value, "confidence", hint="pass a level such as confidence=0.95")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {value!r}; pass a level such as confidence=0.95")
    return confidence


def _name(value: Any, name: str, *, allowed: Sequence[str] | None = None) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, got {_describe(value)}")
    if allowed is not None and value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")
    return value


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
    stack: bool | None = None,
    **fit_kwargs: Any,
) -> list[History]:
    """Train a fresh PyTorch model per seed, as :func:`bnlib.training.fit` would, all seeds in one pass when they stack.

    For each seed: seed every generator, build ``make_model()`` (so the seed
    fixes the initial weights), build ``make_optimizer(model)`` if given, then
    train as ``fit(model, train, seed=seed, **fit_kwargs)`` (so the seed also
    fixes the batch order). Two configurations run with the same seeds see the
    same batch orders: the comparison is paired.

    When the models stack (LeNet-5 or the MLP, without normalization or with
    batch norm, trained with SGD, Adam or AdamW: see :mod:`bnlib.stacked`) and
    stacking pays (:func:`bnlib.stacked.stacking_pays`: LeNet-5 anywhere, the MLP
    off the CPU), every seed is trained in one pass by
    :func:`bnlib.stacked.fit_stacked`, which equals the separate runs up to float
    rounding (tested) and costs less per seed.
    Otherwise each seed runs its own :func:`~bnlib.training.fit` (the reason is
    logged at INFO level). Either way the models that ``make_model`` returned are
    trained in place.

    Args:
        make_model: a callable returning a fresh ``nn.Module``.
        train: ``(x, y)``, as for ``fit``.
        seeds: the seeds, e.g. ``profile.seeds``.
        config: a name for this configuration, stored as ``meta["config"]``.
        make_optimizer: ``model -> optimizer`` (default ``Adam(lr=1e-3)``).
        stack: ``None`` (default) stacks when possible and it pays; ``False`` always loops
            over ``fit``; ``True`` requires stacking (a ``NotStackableError`` says why not).
        **fit_kwargs: the remaining arguments of ``fit`` (``epochs``, ``batch_size``, ``val``, ...).

    Example:
        >>> import torch
        >>> from bnlib.models import MLP
        >>> x = torch.randn(32, 2); y = (x[:, 0] > 0).long()
        >>> hs = repeat_fit(lambda: MLP((2, 4, 2)), (x, y), seeds=(0, 1), config="tiny", epochs=1, batch_size=8, device="cpu", progress=False)
        >>> [h.meta["seed"] for h in hs], hs[0].epochs
        ([0, 1], 1)
    """
    import logging

    from bnlib.config import seed_everything
    from bnlib.stacked import NotStackableError, fit_stacked, stacking_pays
    from bnlib.training import fit

    if not callable(make_model):
        raise TypeError(f"make_model must be a callable returning a fresh nn.Module, got {type(make_model).__name__}")
    if stack is not None and not isinstance(stack, bool):
        raise TypeError(
            f"stack must be None (stack when possible), True or False, got {type(stack).__name__} {stack!r}"
        )
    for name in ("seed", "optimizer"):
        if name in fit_kwargs:
            raise TypeError(
                f"repeat_fit sets {name}= itself for every seed; pass seeds=... and make_optimizer=... instead"
            )
    seeds = _check_seeds(seeds)
    models, optimizers = [], []
    for seed in seeds:
        seed_everything(seed)
        model = make_model()
        models.append(model)
        optimizers.append(make_optimizer(model) if make_optimizer is not None else None)

    if stack is None and not stacking_pays(models[0], fit_kwargs.get("device")):
        stack = False
        logging.getLogger(__name__).info("repeat_fit: one seed at a time (stacking does not pay for this model here)")
    if stack is not False:
        try:
            histories = fit_stacked(
                models, train, seeds=seeds, optimizers=None if make_optimizer is None else optimizers, **fit_kwargs
            )
        except NotStackableError as error:
            if stack:
                raise
            logging.getLogger(__name__).info("repeat_fit: training one seed at a time (%s)", error)
        else:
            for history in histories:
                if config is not None:
                    history.meta["config"] = config
            return histories

    built = dict(zip(seeds, zip(models, optimizers)))

    def run(seed: int) -> History:
        model, optimizer = built[seed]
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


def _per_seed_values(values: Any, what: str) -> np.ndarray:
    """One finite number per seed as a float64 vector, or a TypeError/ValueError saying what is wrong."""
    if hasattr(values, "detach"):  # a torch tensor
        values = values.detach().cpu().numpy()
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise TypeError(
            f"{what} needs one number per seed (a list, array or Series), got {_describe(values)}; "
            "wrap a single value as [value]"
        )
    array = np.asarray(values if isinstance(values, np.ndarray) else list(values))
    if array.dtype.kind == "b":
        raise TypeError(f"{what} needs numbers, got booleans; for proportions pass them as floats (.astype(float))")
    if array.dtype.kind not in "iuf":
        flat = array.ravel().tolist()
        odd = next((v for v in flat if not _is_real(v)), flat[0] if flat else None)
        raise TypeError(f"{what} needs numbers, got {array.dtype} values such as {_describe(odd)}")
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{what} needs a non-empty list of numbers (one per seed), got shape {array.shape}")
    array = array.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        shown = ", ".join(f"{array[i]} at position {i}" for i in bad[:5])
        raise ValueError(
            f"{what} got {bad.size} non-finite value(s) ({shown}); a diverged run or a placeholder for "
            "'never reached' is not a measurement: use bnlib.experiments.judge, which reports 'not judged' "
            "with the reason, or leave the run out and say so"
        )
    return array


def mean_interval(values: Iterable[float], *, confidence: float = 0.95) -> Interval:
    """Mean, sample std and Student-t interval of ``values`` (one per seed).

    Formula: ``mean +- t_{(1+confidence)/2, n-1} * std / sqrt(n)``, ``std`` with ``ddof=1``.

    Args:
        values: one finite number per seed (list, array, Series or tensor).
        confidence: the interval's level, in (0, 1).

    Raises:
        ValueError: no values, a value is NaN or infinite, or ``confidence`` is outside (0, 1).
        TypeError: the values are not numbers (strings, booleans, None).

    Example:
        >>> iv = mean_interval([1.0, 2.0, 3.0])
        >>> round(iv.mean, 3), round(iv.std, 3), round(iv.low, 3), round(iv.high, 3)
        (2.0, 1.0, -0.484, 4.484)
    """
    from scipy import stats

    confidence = _confidence(confidence)
    array = _per_seed_values(values, "mean_interval")
    n = int(array.size)
    mean = float(array.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, math.nan, n, confidence)
    std = float(array.std(ddof=1))
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * std / math.sqrt(n)
    return Interval(mean, std, mean - half, mean + half, n, confidence)


def _frame_with(frame: Any, columns: Sequence[str]) -> Any:
    frame = to_frame(frame)
    for column in columns:
        _name(column, "a column name (by=, metric=)")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"the results have no column(s) {missing}; available: {list(frame.columns)}")
    for key in ("seed", "epoch"):
        if key in columns and frame[key].isna().any():
            rows = frame.index[frame[key].isna()].tolist()
            raise ValueError(
                f"{key} is missing (NaN/None) in row(s) {rows[:5]} of the results; every run needs its {key} "
                "(label runs with repeat(..., seeds=...) or fill the column)"
            )
    return frame


def _check_unique(frame: Any, by: str) -> None:
    """Each (configuration, seed, epoch) once: a repeated run would count its seed twice."""
    if "seed" not in frame.columns:
        return
    counts = frame.groupby([by, "seed", "epoch"], sort=False).size()
    repeated = counts[counts > 1]
    if len(repeated):
        shown = "; ".join(f"{by}={c!r} seed {s} epoch {e}: {k} rows" for (c, s, e), k in repeated.head(5).items())
        raise ValueError(
            f"duplicated runs: {shown}; each ({by}, seed) must appear once per epoch, or its seed counts twice "
            "and the interval is falsely narrow (drop the repeats, or give repeated runs their own seeds)"
        )


def _check_values(frame: Any, metric: str, by: str) -> None:
    """The rows about to be summarized hold finite numbers in ``metric``."""
    import pandas as pd

    values = frame[metric]
    if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
        raise TypeError(f"the column {metric!r} must hold numbers, got dtype {values.dtype}")
    finite = np.isfinite(values.to_numpy(dtype=np.float64))
    if not finite.all():
        bad = frame.loc[~finite]
        seed = lambda row: f" seed {row['seed']}" if "seed" in bad.columns else ""  # noqa: E731
        shown = "; ".join(
            f"{by}={row[by]!r}{seed(row)} epoch {row['epoch']}: {row[metric]}" for _, row in bad.head(5).iterrows()
        )
        raise ValueError(
            f"{metric} is not finite in {len(bad)} run(s) ({shown}); a diverged run or a placeholder for "
            "'never reached' is not a measurement: use bnlib.experiments.judge, which reports 'not judged' "
            "with the reason, or leave those runs out and say so"
        )


def summarize_epochs(
    results: Any, metric: str = "val_accuracy", *, by: str = "config", confidence: float = 0.95
) -> Any:
    """Per configuration and epoch: ``n``, ``mean``, ``std``, ``low``, ``high``, ``min``, ``max`` of ``metric`` over seeds.

    Raises:
        ValueError: a missing column, a run listed twice, or a NaN/infinite value (named).

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"config": ["a"] * 2, "seed": [0, 1], "epoch": [1, 1], "val_accuracy": [0.9, 0.94]})
        >>> summarize_epochs(df)[["config", "epoch", "n", "mean"]].to_dict("records")
        [{'config': 'a', 'epoch': 1, 'n': 2, 'mean': 0.92}]
    """
    import pandas as pd

    confidence = _confidence(confidence)
    frame = _frame_with(results, [by, "epoch", metric])
    _check_unique(frame, by)
    _check_values(frame, metric, by)
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
    if isinstance(epoch, (bool, np.bool_)) or not isinstance(epoch, (int, np.integer)):
        raise TypeError(f"epoch must be an integer (or None for each run's last), got {_describe(epoch)}")
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

    Raises:
        ValueError: a missing column or seed, a run listed twice, or a NaN/infinite value (named).

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"config": ["a", "a"], "seed": [0, 1], "epoch": [1, 1], "val_accuracy": [0.9, 0.94]})
        >>> summarize_final(df)[["config", "n", "mean"]].to_dict("records")
        [{'config': 'a', 'n': 2, 'mean': 0.92}]
    """
    import pandas as pd

    confidence = _confidence(confidence)
    frame = _frame_with(results, [by, "seed", "epoch", metric])
    _check_unique(frame, by)
    frame = _final_rows(frame, epoch, by)
    _check_values(frame, metric, by)
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
        ValueError: a configuration is missing; the two were not run on the same
            seeds; a (configuration, seed) appears twice (it would pair every
            copy with every other, a falsely narrow interval); a seed is missing;
            or a value is NaN or infinite (use :func:`judge` for runs that may
            have diverged or never reached a target).

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"config": ["a", "a", "b", "b"], "seed": [0, 1, 0, 1], "epoch": 1,
        ...                    "val_accuracy": [0.90, 0.92, 0.93, 0.94]})
        >>> round(paired_difference(df, "a", "b").mean, 3)
        0.025
    """
    confidence = _confidence(confidence)
    frame = _frame_with(results, [by, "seed", "epoch", metric])
    _check_unique(frame[frame[by].isin([baseline, treatment])], by)
    frame = _final_rows(frame, epoch, by)
    series = {}
    for name in (baseline, treatment):
        chosen = frame[frame[by] == name]
        if chosen.empty:
            raise ValueError(f"no runs with {by}={name!r}; present: {sorted(map(str, frame[by].unique()))}")
        _check_values(chosen, metric, by)
        series[name] = chosen.set_index("seed")[metric]
    a, b = series[baseline], series[treatment]
    if set(a.index) != set(b.index):
        raise ValueError(
            f"{baseline!r} ran on seeds {sorted(a.index)} but {treatment!r} on {sorted(b.index)}; a paired comparison needs the same seeds"
        )
    return mean_interval((b - a.loc[b.index]).to_numpy(dtype=float), confidence=confidence)


def _interval(value: Any, what: str) -> Interval:
    if not isinstance(value, Interval):
        raise TypeError(
            f"{what} expects an Interval from mean_interval or paired_difference, got {type(value).__name__}"
        )
    if value.n < 1 or not math.isfinite(value.mean):
        raise ValueError(f"{what} got an Interval with mean {value.mean} over n={value.n}: nothing to judge")
    if value.n >= 2 and not (math.isfinite(value.low) and math.isfinite(value.high)):
        raise ValueError(
            f"{what} got an Interval over n={value.n} with bounds [{value.low}, {value.high}]: build it with mean_interval"
        )
    return value


def _verdict(interval: Interval, word: str, reason: str) -> Verdict:
    return Verdict(word, reason, interval)


def _not_judged(reason: Any) -> Verdict | None:
    if reason is None:
        return None
    if not isinstance(reason, str) or not reason:
        raise TypeError(f"not_judged must be None or the reason as a non-empty string, got {_describe(reason)}")
    return Verdict(NOT_JUDGED, reason)


def verdict(
    difference: Interval, *, expect: str = "higher", min_effect: float = 0.0, not_judged: str | None = None
) -> Verdict:
    """Turn a paired difference (treatment - baseline) into a verdict on the claim "treatment is ``expect``".

    - ``"holds"``: the whole interval is on the claimed side of ``min_effect``
      (``> min_effect`` for ``expect="higher"``, ``< -min_effect`` for ``"lower"``);
    - ``"does not hold"``: the whole interval is on the other side of zero, or
      (with ``min_effect > 0``) inside ``[-min_effect, min_effect]``;
    - ``"inside the noise"``: otherwise, including one seed (no interval);
    - ``"not judged"``: when ``not_judged`` gives a reason (the comparison is
      broken: see :func:`why_not_judged`, or use :func:`judge`, which checks).

    Args:
        difference: the paired difference, from :func:`paired_difference`.
        expect: ``"higher"`` or ``"lower"``: the claimed direction.
        min_effect: finite, >= 0: the smallest difference the claim means.
        not_judged: None, or why the comparison must not be judged.

    Example:
        >>> verdict(mean_interval([0.02, 0.03, 0.025])).word
        'holds'
        >>> verdict(mean_interval([0.02, -0.01, 0.005])).word
        'inside the noise'
        >>> verdict(mean_interval([0.02, 0.03]), not_judged="'no BN' is at chance level").word
        'not judged'
    """
    _interval(difference, "verdict")
    _name(expect, "expect", allowed=("higher", "lower"))
    min_effect = _finite(min_effect, "min_effect", minimum=0.0, hint="pass e.g. min_effect=0.01 (0 for any effect)")
    refused = _not_judged(not_judged)
    if refused is not None:
        return refused
    sign = 1.0 if expect == "higher" else -1.0
    low, high = sorted((sign * difference.low, sign * difference.high))
    if difference.n < 2 or math.isnan(low):
        return _verdict(
            difference, "inside the noise", f"{difference.n} seed(s): no estimate of the noise, so no verdict"
        )
    span = f"the {difference.confidence:.0%} interval of the difference is [{difference.low:+.4g}, {difference.high:+.4g}] over {difference.n} seeds"
    if low > min_effect:
        return _verdict(
            difference,
            "holds",
            f"{span}, entirely {expect} than {'zero' if min_effect == 0 else f'the minimum effect {min_effect:g}'}",
        )
    if high < 0:
        return _verdict(difference, "does not hold", f"{span}, entirely on the opposite side of zero")
    if min_effect > 0 and -min_effect <= low and high <= min_effect:
        return _verdict(
            difference, "does not hold", f"{span}, inside +-{min_effect:g}: any effect is smaller than claimed"
        )
    return _verdict(
        difference,
        "inside the noise",
        f"{span}, which includes {'zero' if min_effect == 0 else 'values below the minimum effect'}",
    )


def _claim_band(about: Any, tolerance: Any, at_least: Any, at_most: Any) -> tuple[tuple[float, float], str]:
    """The claimed band and its words, from exactly one of the three forms, each a finite number."""
    forms = [about is not None, at_least is not None, at_most is not None]
    if sum(forms) != 1:
        raise ValueError("give exactly one of about=, at_least=, at_most= (e.g. about=0.93 for 'about 93%')")
    tolerance = _finite(tolerance, "tolerance", minimum=0.0, hint="pass e.g. tolerance=0.005")
    hint = "pass the claimed value, e.g. about=0.93"
    if about is not None:
        about = _finite(about, "about", hint=hint)
        return (about - tolerance, about + tolerance), f"about {about:g} (+-{tolerance:g})"
    if at_least is not None:
        at_least = _finite(at_least, "at_least", hint=hint)
        return (at_least, math.inf), f"at least {at_least:g}"
    at_most = _finite(at_most, "at_most", hint=hint)
    return (-math.inf, at_most), f"at most {at_most:g}"


def claim_verdict(
    measured: Interval,
    *,
    about: float | None = None,
    tolerance: float = 0.005,
    at_least: float | None = None,
    at_most: float | None = None,
    not_judged: str | None = None,
) -> Verdict:
    """Check a claimed value ("about 93%", "just over 98%") against a measured :class:`Interval`.

    The claim is a band: ``[about - tolerance, about + tolerance]``,
    ``[at_least, inf)`` or ``(-inf, at_most]`` (give exactly one form).
    ``"holds"`` when the interval of the mean lies inside the band,
    ``"does not hold"`` when it lies entirely outside, ``"inside the noise"``
    when it straddles an edge (more seeds would decide) or there is one seed;
    ``"not judged"`` when ``not_judged`` gives a reason (see :func:`judge_claim`).
    The bounds and ``tolerance`` must be finite numbers (``tolerance >= 0``).

    Example:
        >>> claim_verdict(mean_interval([0.931, 0.929, 0.930]), about=0.93).word
        'holds'
        >>> claim_verdict(mean_interval([0.95, 0.951, 0.949]), about=0.93).word
        'does not hold'
        >>> claim_verdict(mean_interval([0.985, 0.986, 0.987]), at_least=0.98).word
        'holds'
    """
    _interval(measured, "claim_verdict")
    band, claim = _claim_band(about, tolerance, at_least, at_most)
    refused = _not_judged(not_judged)
    if refused is not None:
        return refused
    if measured.n < 2 or math.isnan(measured.low):
        inside = band[0] <= measured.mean <= band[1]
        return _verdict(
            measured,
            "inside the noise",
            f"one seed (mean {measured.mean:.4g}, {'inside' if inside else 'outside'} the claim {claim}): no estimate of the noise",
        )
    span = f"measured {measured.mean:.4g}, {measured.confidence:.0%} interval [{measured.low:.4g}, {measured.high:.4g}] over {measured.n} seeds"
    if band[0] <= measured.low and measured.high <= band[1]:
        return _verdict(measured, "holds", f"{span}: inside the claim {claim}")
    if measured.high < band[0] or measured.low > band[1]:
        side = "above" if measured.low > band[1] else "below"
        return _verdict(measured, "does not hold", f"{span}: entirely {side} the claim {claim}")
    return _verdict(
        measured, "inside the noise", f"{span}: straddles the edge of the claim {claim}; more seeds would decide"
    )


def chance_accuracy(labels: Any) -> float:
    """The accuracy of always answering the most frequent class of ``labels``: the chance level.

    Formula: ``max_k (number of labels equal to k) / N``, which is at least
    ``1 / num_classes`` (equal to it for balanced classes). For the MNIST test
    set it is 0.1135, the share of the digit 1: the accuracy of a collapsed
    model that answers "1" for everything.

    Args:
        labels: the integer class labels the accuracy is measured on (list, array or tensor).

    Example:
        >>> chance_accuracy([1, 1, 0, 2])
        0.5
        >>> chance_accuracy(list(range(10)))
        0.1
    """
    if hasattr(labels, "detach"):
        labels = labels.detach().cpu().numpy()
    if isinstance(labels, (str, bytes)) or not isinstance(labels, Iterable):
        raise TypeError(f"labels must be a sequence of class labels, got {_describe(labels)}")
    array = np.asarray(labels if isinstance(labels, np.ndarray) else list(labels))
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D sequence, got shape {array.shape}")
    if array.dtype.kind not in "iu":
        raise TypeError(f"labels must be integers (class indices), got dtype {array.dtype}; pass y_test, not scores")
    _, counts = np.unique(array, return_counts=True)
    return float(counts.max() / array.size)


def _loss_columns(frame: Any) -> list[str]:
    import pandas as pd

    return [
        c
        for c in frame.columns
        if isinstance(c, str)
        and c.endswith("loss")
        and pd.api.types.is_numeric_dtype(frame[c])
        and not pd.api.types.is_bool_dtype(frame[c])
    ]


def _seeds_text(rows: Any) -> str:
    return ", ".join(str(s) for s in rows["seed"].tolist()) if "seed" in rows.columns else "?"


def why_not_judged(
    results: Any,
    configs: str | Sequence[str],
    *,
    metric: str = "val_accuracy",
    epoch: int | None = None,
    by: str = "config",
    accuracy: str | None = None,
    chance: float | None = None,
    margin: float = 0.05,
) -> str | None:
    """Why a comparison of ``configs`` must not be judged, or None when every one of them learned.

    A comparison is broken, and its verdict is ``"not judged"``, when one of
    its configurations, on any seed:

    - **diverged**: a loss column (any numeric column whose name ends in
      ``loss``: ``train_loss``, ``val_loss``, ...) is NaN or infinite at some
      epoch up to the judged one. A loss column that is NaN for every run
      compared (``val_loss`` without validation data) was not measured and is
      skipped; ``train_loss`` is always measured;
    - **has no value**: ``metric`` is NaN or infinite at the judged epoch, the
      placeholder for "never reached the target" (write ``math.inf`` or NaN,
      never a made-up number such as "one step past the end"): a placeholder
      never enters a mean, an interval or a verdict;
    - **is at chance level**: with ``chance`` given, its accuracy (the column
      ``accuracy``, by default ``metric`` when that is an accuracy) is at most
      ``chance + margin``. Use :func:`chance_accuracy` of the labels measured
      on (the majority-class share; ``1 / num_classes`` for balanced classes).

    Args:
        results: Histories or their frame (:func:`to_frame`).
        configs: the configuration name(s) compared.
        metric: the column judged.
        epoch: the judged epoch (default: each run's last).
        by: the column naming configurations.
        accuracy: the accuracy column compared with ``chance``.
        chance: the chance-level accuracy, in [0, 1]; None skips that check.
        margin: finite, >= 0: how far above chance still counts as chance (default 5 points).

    Returns:
        None, or every reason found, joined by "; ".

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"config": ["a", "a", "b", "b"], "seed": [0, 1, 0, 1], "epoch": 1,
        ...                    "train_loss": [0.3, 0.3, 2.3, 2.3], "val_accuracy": [0.95, 0.96, 0.11, 0.12]})
        >>> why_not_judged(df, ["a", "b"], chance=0.1135)
        "'b' is at chance level on seed(s) 0, 1: val_accuracy 0.11, 0.12 within 0.05 of chance 0.1135"
        >>> why_not_judged(df, "a", chance=0.1135) is None
        True
    """
    import pandas as pd

    names = [configs] if isinstance(configs, str) else list(configs) if isinstance(configs, Sequence) else None
    if not names:
        raise TypeError(f"configs must be a configuration name or a non-empty list of them, got {_describe(configs)}")
    _name(metric, "metric")
    margin = _finite(margin, "margin", minimum=0.0, hint="pass e.g. margin=0.05 (5 points above chance)")
    if chance is not None:
        chance = _finite(chance, "chance", minimum=0.0, hint="pass chance_accuracy(y_test), e.g. chance=0.1135")
        if chance > 1:
            raise ValueError(
                f"chance must be an accuracy in [0, 1], got {chance!r}; e.g. chance=chance_accuracy(y_test)"
            )
        if accuracy is None:
            if "accuracy" not in metric:
                raise ValueError(
                    f"chance= needs the accuracy column to compare with it: {metric!r} is not an accuracy; "
                    "pass accuracy='val_accuracy' (or the column you have)"
                )
            accuracy = metric
        _name(accuracy, "accuracy")
    needed = [by, "seed", "epoch", metric] + ([accuracy] if accuracy is not None else [])
    frame = _frame_with(results, list(dict.fromkeys(needed)))
    frame = frame[frame[by].isin(names)]
    missing = [name for name in names if not (frame[by] == name).any()]
    if missing:
        present = sorted(map(str, to_frame(results)[by].unique()))
        raise ValueError(f"no runs with {by}={missing[0]!r}; present: {present}")
    _check_unique(frame, by)
    if epoch is not None:
        _final_rows(frame, epoch, by)  # checks epoch and that it exists
        frame = frame[frame["epoch"] <= epoch]
    final = _final_rows(frame, epoch, by)
    losses = [c for c in _loss_columns(frame) if c == "train_loss" or frame[c].notna().any()]
    for column in (metric, accuracy):
        if column is not None and not pd.api.types.is_numeric_dtype(frame[column]):
            raise TypeError(f"the column {column!r} must hold numbers, got dtype {frame[column].dtype}")
    reasons = []
    for name in names:
        runs, last = frame[frame[by] == name], final[final[by] == name]
        diverged = []
        for column in losses:
            bad = runs[~np.isfinite(runs[column].to_numpy(dtype=np.float64))]
            if len(bad):
                first = bad.sort_values("epoch").groupby("seed", sort=True).head(1)
                diverged.append(
                    ", ".join(
                        f"{column} = {row[column]} at epoch {row['epoch']} on seed {row['seed']}"
                        for _, row in first.iterrows()
                    )
                )
        if diverged:
            reasons.append(f"{name!r} diverged ({'; '.join(diverged)})")
            continue
        no_value = last[~np.isfinite(last[metric].to_numpy(dtype=np.float64))]
        if len(no_value):
            reasons.append(
                f"{name!r} has no {metric} on seed(s) {_seeds_text(no_value)} "
                f"({', '.join(str(v) for v in no_value[metric])}): it never reached the target or the value is "
                "undefined, and a placeholder is not a measurement"
            )
            continue
        if chance is not None:
            values = last[accuracy].to_numpy(dtype=np.float64)
            at_chance = last[~(values > chance + margin)]
            if len(at_chance):
                reasons.append(
                    f"{name!r} is at chance level on seed(s) {_seeds_text(at_chance)}: {accuracy} "
                    f"{', '.join(f'{v:.4g}' for v in at_chance[accuracy])} within {margin:g} of chance {chance:.4g}"
                )
    return "; ".join(reasons) or None


def judge(
    results: Any,
    baseline: str,
    treatment: str,
    *,
    metric: str = "val_accuracy",
    expect: str = "higher",
    min_effect: float = 0.0,
    epoch: int | None = None,
    by: str = "config",
    confidence: float = 0.95,
    accuracy: str | None = None,
    chance: float | None = None,
    margin: float = 0.05,
) -> Verdict:
    """The whole verdict path for "``treatment`` is ``expect`` than ``baseline``", from a chapter's results.

    First :func:`why_not_judged` on both configurations: a broken comparison
    (at chance, diverged, no value) gets ``Verdict("not judged", reason)``
    and no interval. Otherwise :func:`paired_difference` and :func:`verdict`:
    the verdict carries the difference as ``.interval`` and the smallest
    difference the design could detect as ``.detectable``.

    Args:
        results: Histories or their frame; arguments as in :func:`paired_difference`,
            :func:`verdict` and :func:`why_not_judged`.

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"config": ["a"] * 3 + ["b"] * 3, "seed": [0, 1, 2] * 2, "epoch": 1,
        ...                    "val_accuracy": [0.90, 0.91, 0.92, 0.95, 0.96, 0.96]})
        >>> judge(df, "a", "b", chance=0.1).word
        'holds'
        >>> broken = df.assign(val_accuracy=[0.11, 0.10, 0.12, 0.95, 0.96, 0.96])
        >>> print(judge(broken, "a", "b", chance=0.1).reason)
        'a' is at chance level on seed(s) 0, 1, 2: val_accuracy 0.11, 0.1, 0.12 within 0.05 of chance 0.1
    """
    _name(expect, "expect", allowed=("higher", "lower"))
    min_effect = _finite(min_effect, "min_effect", minimum=0.0, hint="pass e.g. min_effect=0.01 (0 for any effect)")
    confidence = _confidence(confidence)
    reason = why_not_judged(
        results,
        [baseline, treatment],
        metric=metric,
        epoch=epoch,
        by=by,
        accuracy=accuracy,
        chance=chance,
        margin=margin,
    )
    if reason is not None:
        return Verdict(NOT_JUDGED, reason)
    difference = paired_difference(
        results, baseline, treatment, metric=metric, epoch=epoch, by=by, confidence=confidence
    )
    return verdict(difference, expect=expect, min_effect=min_effect)


def judge_claim(
    results: Any,
    config: str,
    *,
    metric: str = "val_accuracy",
    about: float | None = None,
    tolerance: float = 0.005,
    at_least: float | None = None,
    at_most: float | None = None,
    epoch: int | None = None,
    by: str = "config",
    confidence: float = 0.95,
    accuracy: str | None = None,
    chance: float | None = None,
    margin: float = 0.05,
) -> Verdict:
    """The whole verdict path for a claimed value of one configuration ("about 99%"), from a chapter's results.

    :func:`why_not_judged` first (``"not judged"`` with the reason for a
    configuration at chance, diverged or without a value), then the mean over
    seeds at ``epoch`` (:func:`mean_interval`) judged by :func:`claim_verdict`.

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"config": "a", "seed": [0, 1, 2], "epoch": 1, "test_accuracy": [0.931, 0.929, 0.930]})
        >>> judge_claim(df, "a", metric="test_accuracy", about=0.93, chance=0.1135).word
        'holds'
        >>> judge_claim(df.assign(test_accuracy=[0.11, 0.12, 0.11]), "a", metric="test_accuracy", about=0.93, chance=0.1135).word
        'not judged'
    """
    confidence = _confidence(confidence)
    _claim_band(about, tolerance, at_least, at_most)  # a malformed claim is an error, judged or not
    reason = why_not_judged(
        results, config, metric=metric, epoch=epoch, by=by, accuracy=accuracy, chance=chance, margin=margin
    )
    if reason is not None:
        return Verdict(NOT_JUDGED, reason)
    frame = _final_rows(_frame_with(results, [by, "seed", "epoch", metric]), epoch, by)
    measured = mean_interval(frame.loc[frame[by] == config, metric], confidence=confidence)
    return claim_verdict(measured, about=about, tolerance=tolerance, at_least=at_least, at_most=at_most)


def detectable_difference(n: int, std: float, *, confidence: float = 0.95, power: float | None = None) -> float:
    """The smallest paired difference a design with ``n`` seeds and this noise can tell from zero.

    Formula: the half-width of the Student-t interval of the mean difference,
    ``t_{(1+confidence)/2, n-1} * std / sqrt(n)``, where ``std`` is the
    seed-to-seed standard deviation (``ddof=1``) of the paired difference
    (``paired_difference(...).std``, or a pilot run's).

    Conventions: a measured mean difference must be larger than this for its
    interval to exclude zero, so it is the smallest difference the design can
    call at all; a *true* difference of exactly this size is called only about
    half the time. With ``power`` (e.g. 0.8) the answer is the true difference
    called with that probability, ``(t_{(1+confidence)/2, n-1} + t_{power, n-1})
    * std / sqrt(n)`` (the usual approximation to the noncentral t: within two
    points of the exact power for n >= 5 at power >= 0.8). It shrinks
    as ``1/sqrt(n)`` and faster for small ``n``, where the t factor is large
    (12.7 at n=2, 2.78 at n=5, 2.26 at n=10).

    Args:
        n: the number of seeds (paired differences), >= 2.
        std: their sample standard deviation, finite and >= 0.
        confidence: the interval's level, in (0, 1).
        power: None (the half-width), or a probability in [0.5, 1).

    Example:
        >>> round(detectable_difference(5, 0.01), 4)
        0.0124
        >>> round(detectable_difference(2, 0.01), 4), round(detectable_difference(5, 0.01, power=0.8), 4)
        (0.0898, 0.0166)
    """
    from scipy import stats

    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n must be the number of seeds (an integer), got {_describe(n)}")
    if n < 2:
        raise ValueError(
            f"n must be >= 2: with {n} seed(s) there is no estimate of the noise and nothing can be detected"
        )
    std = _finite(std, "std", minimum=0.0, hint="pass the seed-to-seed std of the paired difference, e.g. diff.std")
    confidence = _confidence(confidence)
    factor = float(stats.t.ppf((1 + confidence) / 2, n - 1))
    if power is not None:
        power = _finite(power, "power", hint="pass e.g. power=0.8")
        if not 0.5 <= power < 1:
            raise ValueError(f"power must be in [0.5, 1), got {power!r}; e.g. power=0.8")
        factor += float(stats.t.ppf(power, n - 1))
    return factor * std / math.sqrt(int(n))
