"""The bases every normalization layer in bnlib is built on, as PyTorch's ``_NormBase`` (private).

Two classes, one job each:

* :class:`NormBase`: every norm layer. Checks the shared settings
  (``num_features``, ``eps``, ``affine``), registers ``weight`` (gamma, ones)
  and ``bias`` (beta, zeros), resets them, shows the settings in ``repr``,
  checks the input with one message style and chooses the dtype the layer
  computes in (float32 for float16/bfloat16, see below).
* :class:`RunningStatsNorm`: a norm layer with running statistics (batch norm
  and its variants). Registers ``running_mean``, a spread buffer
  (``running_var``, or ``running_std`` for batch renormalization) and
  ``num_batches_tracked`` under torch.nn's names, so state_dicts move both
  ways; owns the one momentum rule (``None`` is the cumulative average ``1/t``)
  and the one running update, which changes the counter and the statistics
  together or not at all; loads state dicts saved before
  ``num_batches_tracked`` existed as torch does (``_version = 2``).

Conventions shared by every layer:

* **eps** is a finite number ``> 0`` (0 divides by zero on a constant
  channel; infinity returns beta whatever the input).
* **Reduced precision:** a float16 or bfloat16 input is normalized in
  float32, whatever the layer's own dtype, and returned in the input's dtype,
  as torch.nn's norms accumulate in float32 (a float16 sum of squares
  overflows at 65,504). A float16 layer keeps float16 parameters and buffers;
  its running statistics are computed in float32 and rounded when stored.
* **NaN** (the batch-norm family): in eager mode a training batch whose
  statistics are NaN or infinite, or whose new running statistics would
  overflow the buffers' dtype, raises a ValueError naming the channels and
  changes nothing. Under ``torch.func`` transforms (``vmap``, ``grad``,
  ``functional_call`` inside them), under ``torch.compile`` and on the meta
  device no value can be read without breaking the transform or splitting the
  graph (:func:`bnlib.functional.values_readable`): the check is skipped and
  NaN propagates to the output and the running statistics, exactly as in
  ``torch.nn.BatchNorm2d``. Layer, instance and group norm never refuse NaN:
  it spoils its own sample (or group) only, as in torch.
* **Switching ``track_running_stats`` after construction** behaves as in
  torch: buffers that exist are used in evaluation but not updated while the
  flag is False; a layer built without buffers uses batch statistics in both
  modes.

Example:
    >>> from bnlib.layers import BatchNorm, GroupNorm
    >>> isinstance(BatchNorm(3), RunningStatsNorm), isinstance(GroupNorm(1, 3), RunningStatsNorm)
    (True, False)
    >>> layer = BatchNorm(3, momentum=None)           # the cumulative average: 1/t at step t
    >>> for t in range(2):
    ...     _ = layer(torch.full((4, 3), float(t)) + torch.arange(4.0)[:, None])
    >>> layer.running_mean.tolist(), int(layer.num_batches_tracked)   # mean of 1.5 and 2.5
    ([2.0, 2.0, 2.0], 2)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from bnlib import _checks, functional

__all__ = ["REDUCED_PRECISION", "NormBase", "RunningStatsNorm", "check_eps", "check_momentum"]

#: Input dtypes that every norm layer normalizes in float32 and returns in their own dtype.
REDUCED_PRECISION = (torch.float16, torch.bfloat16)


def check_eps(eps: object) -> float:
    """A finite ``eps > 0``: with 0, a constant channel divides by zero (NaN or inf, silently)."""
    return _checks.positive_float(eps, "eps", hint="e.g. 1e-5 (PyTorch's default) or 1e-3 (Keras's)")


def check_momentum(momentum: object) -> float | None:
    """PyTorch's momentum, the weight of the new batch, in [0, 1]; None for a cumulative average."""
    if momentum is None:
        return None
    return _checks.probability(
        momentum,
        "momentum",
        hint="the weight of the new batch (PyTorch's convention), or None for a cumulative average; "
        "a Keras momentum of 0.99 is a PyTorch momentum of 0.01",
    )


class NormBase(nn.Module):
    """Settings, affine parameters, ``repr`` and input checks shared by every norm layer.

    Subclasses call ``super().__init__`` with the per-channel parameter count
    and define ``forward``; :meth:`_settings` lists what ``repr`` shows. A
    wrapper around another norm (``NoisyBatchNorm``) passes neither ``eps`` nor
    ``affine`` and gets only the channel check, ``repr`` and the input checks.
    """

    num_features: int
    eps: float
    affine: bool
    weight: nn.Parameter | None
    bias: nn.Parameter | None

    def __init__(
        self,
        num_features: int,
        *,
        eps: float | None = None,
        affine: bool | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        features_name: str = "num_features",
    ) -> None:
        super().__init__()
        self.num_features = _checks.positive_int(
            num_features, features_name, hint="the channel count C at dim 1 of the input"
        )
        if eps is None and affine is None:
            return  # a wrapper (NoisyBatchNorm) whose inner norm holds eps and the parameters
        self.eps = check_eps(eps)
        self.affine = _checks.boolean(affine, "affine", hint="pass affine=True to learn gamma and beta, else False")
        if self.affine:
            self.weight = nn.Parameter(torch.ones(self.num_features, device=device, dtype=dtype))
            self.bias = nn.Parameter(torch.zeros(self.num_features, device=device, dtype=dtype))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    # ------------------------------------------------------------------ settings

    def reset_parameters(self) -> None:
        """Set gamma to 1 and beta to 0 (and, with running statistics, reset those too)."""
        if getattr(self, "affine", False):
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    def _positional(self) -> Sequence[object]:
        """The constructor's positional arguments, for ``repr`` and messages."""
        return (self.num_features,)

    def _settings(self) -> dict[str, object]:
        """The keyword settings ``repr`` shows, in order."""
        return {"eps": self.eps, "affine": self.affine}

    def extra_repr(self) -> str:
        """The settings shown by ``repr``: the positional arguments, then ``name=value`` pairs."""

        def show(value: object) -> str:
            return f"{value:g}" if isinstance(value, float) else str(value)

        items = [show(v) for v in self._positional()] + [f"{k}={show(v)}" for k, v in self._settings().items()]
        return ", ".join(items)

    def _name(self) -> str:
        """How messages name the layer, e.g. ``BatchNorm(16)`` or ``GroupNorm(4, 16)``."""
        return f"{type(self).__name__}({', '.join(str(v) for v in self._positional())})"

    # ------------------------------------------------------------------ dtypes and input

    def _state_dtype(self) -> torch.dtype | None:
        """The dtype of the layer's floating-point parameters and buffers (None when it has none)."""
        for name in ("weight", "running_mean"):  # every layer's floating state: gamma, else the running mean
            tensor = getattr(self, name, None)
            if tensor is not None:
                return tensor.dtype
        return None

    def _compute_dtype(self, x: torch.Tensor) -> torch.dtype:
        """float32 for a float16/bfloat16 input (or the state's wider dtype); else the input's dtype."""
        if x.dtype in REDUCED_PRECISION:
            state = self._state_dtype()
            return state if state is not None and state not in REDUCED_PRECISION else torch.float32
        return x.dtype

    def _check_input(
        self,
        x: torch.Tensor,
        *,
        min_ndim: int = 2,
        expected: str = "(N, C) or (N, C, *)",
        hint: str | None = None,
    ) -> None:
        """The shared input checks (:func:`bnlib.functional.check_input`) with this layer's name and dtype.

        A float16/bfloat16 input is accepted by a layer of its own dtype or
        of a wider one (what ``torch.autocast`` hands a float32 layer); any
        other dtype mismatch is a TypeError.
        """
        state = self._state_dtype()
        if isinstance(x, torch.Tensor) and x.dtype in REDUCED_PRECISION and state not in REDUCED_PRECISION:
            state = None  # autocast: a reduced-precision input to a float32/float64 layer
        functional.check_input(
            x,
            self._name(),
            num_features=self.num_features,
            min_ndim=min_ndim,
            expected=expected,
            dtype=state,
            hint=hint,
        )

    def _affine_in(self, dtype: torch.dtype) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Gamma and beta cast (differentiably) to the compute dtype."""
        cast = lambda t: t if t is None or t.dtype == dtype else t.to(dtype)  # noqa: E731
        return cast(self.weight), cast(self.bias)


class RunningStatsNorm(NormBase):
    """Running statistics, their momentum rule and their update, shared by the batch-norm family.

    Buffers (torch.nn's names): ``running_mean`` (zeros), the spread buffer
    named by ``spread`` (``running_var`` ones, or ``running_std`` ones) and
    ``num_batches_tracked`` (a long scalar 0); all None when
    ``track_running_stats`` is False.

    The one update, :meth:`_update_running_stats`, takes the statistics of
    ``k`` consecutive batches, folds them in one at a time with
    :func:`bnlib.functional.running_average` and the momentum rule
    (``momentum``, or ``1/t`` at step ``t`` when it is None), checks that the
    results are finite in the buffers' dtype, and only then writes the counter
    and the statistics in one call (``torch._foreach_copy_``, which Ctrl-C
    cannot split). A batch that raises, or an interrupt, changes none of them.
    """

    _version = 2  # version 2 added num_batches_tracked (as torch's _NormBase)

    momentum: float | None
    track_running_stats: bool
    running_mean: torch.Tensor | None
    num_batches_tracked: torch.Tensor | None

    def __init__(
        self,
        num_features: int,
        *,
        eps: float,
        momentum: float | None,
        affine: bool,
        track_running_stats: bool,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
        spread: str = "running_var",
    ) -> None:
        super().__init__(num_features, eps=eps, affine=affine, device=device, dtype=dtype)
        self.momentum = check_momentum(momentum)
        self.track_running_stats = _checks.boolean(track_running_stats, "track_running_stats")
        self._spread = spread
        if self.track_running_stats:
            self.register_buffer("running_mean", torch.zeros(self.num_features, device=device, dtype=dtype))
            self.register_buffer(spread, torch.ones(self.num_features, device=device, dtype=dtype))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))
        else:
            for name in ("running_mean", spread, "num_batches_tracked"):
                self.register_buffer(name, None)

    @property
    def _running_spread(self) -> torch.Tensor | None:
        return getattr(self, self._spread)

    def reset_running_stats(self) -> None:
        """Running mean 0, running spread 1, step count 0 (as after construction); nothing without buffers."""
        if self.running_mean is not None:
            self.running_mean.zero_()
            self._running_spread.fill_(1.0)
        if self.num_batches_tracked is not None:
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        """Reset the running statistics and set gamma to 1 and beta to 0."""
        self.reset_running_stats()
        super().reset_parameters()

    def _settings(self) -> dict[str, object]:
        return {"eps": self.eps, "momentum": self.momentum, "affine": self.affine}

    # ------------------------------------------------------------------ which statistics

    def _has_running_stats(self) -> bool:
        return self.running_mean is not None and self._running_spread is not None

    def _uses_batch_statistics(self) -> bool:
        """Torch's rule: batch statistics in training, and in evaluation when there are no buffers."""
        return self.training or not self._has_running_stats()

    def _updates_running_stats(self) -> bool:
        """Running statistics are updated in training while ``track_running_stats`` is True and they exist."""
        return self.training and self.track_running_stats and self._has_running_stats()

    # ------------------------------------------------------------------ the one update

    def _momentum_factor(self, step: int | torch.Tensor | None) -> float | torch.Tensor:
        """The weight of the batch counted as ``step``: ``momentum``, or ``1/step`` when it is None.

        ``step`` is the counter after this batch (a tensor: no ``float()`` that
        would stop ``torch.func.vmap`` or split a compiled graph). Without a
        counter and with ``momentum=None`` the weight is 0, as in torch.
        """
        if self.momentum is not None:
            return self.momentum
        if step is None:
            return 0.0
        return step.to(torch.float64 if self.running_mean.dtype == torch.float64 else torch.float32).reciprocal()

    def _update_running_stats(self, means: torch.Tensor, spreads: torch.Tensor) -> None:
        """Fold ``k`` batches' statistics, (k, C) or (C,), into the running ones; counter and all together.

        Raises ValueError (and changes nothing) when a batch statistic is NaN
        or infinite, or a new running value overflows the buffers' dtype; the
        check is skipped where values cannot be read (see
        :func:`bnlib.functional.values_readable`), and there NaN propagates
        as in torch.
        """
        means = means.detach().reshape(-1, self.num_features)
        spreads = spreads.detach().reshape(-1, self.num_features)
        compute = means.dtype
        running_mean = self.running_mean.to(compute)
        running_spread = self._running_spread.to(compute)
        counter = self.num_batches_tracked
        for i in range(means.shape[0]):
            factor = self._momentum_factor(None if counter is None else counter + (i + 1))
            running_mean = functional.running_average(running_mean, means[i], factor)
            running_spread = functional.running_average(running_spread, spreads[i], factor)
        running_mean = running_mean.to(self.running_mean.dtype)
        running_spread = running_spread.to(self._running_spread.dtype)
        functional.check_finite_statistics(
            means, spreads, self._name(), running=(running_mean, running_spread, self._spread)
        )
        targets = [self.running_mean, self._running_spread]
        values = [running_mean, running_spread]
        if counter is not None:
            targets.append(counter)
            values.append(counter + means.shape[0])
        functional.copy_together_(targets, values)

    # ------------------------------------------------------------------ loading

    def _load_from_state_dict(
        self,
        state_dict: dict,
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list,
        unexpected_keys: list,
        error_msgs: list,
    ) -> None:
        # As torch's _NormBase: a state dict saved before version 2 has no num_batches_tracked; keep the
        # layer's own counter (0 for a fresh layer, or a new 0 when the layer lives on the meta device).
        version = local_metadata.get("version")
        key = prefix + "num_batches_tracked"
        if (version is None or version < 2) and self.track_running_stats and key not in state_dict:
            counter = self.num_batches_tracked
            state_dict[key] = (
                counter
                if counter is not None and counter.device != torch.device("meta")
                else torch.tensor(0, dtype=torch.long)
            )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
