r"""Gradient descent on linear least squares: why the scale of the features matters.

The smallest experiment that shows what normalizing inputs does for training:
fit :math:`y \approx Xw` by minimizing the mean squared error

.. math::

    L(w) = \frac{1}{2n} \lVert Xw - y \rVert^2,
    \qquad \nabla L(w) = \frac{1}{n} X^\top (Xw - y),
    \qquad H = \nabla^2 L = \frac{1}{n} X^\top X,

with plain gradient descent :math:`w_{t+1} = w_t - \eta \nabla L(w_t)`. The
loss is a quadratic bowl whose curvature along each eigenvector of :math:`H` is
the matching eigenvalue. Gradient descent is stable only for
:math:`\eta < 2 / \lambda_{\max}`, and then shrinks the error along the
eigenvector of :math:`\lambda_i` by :math:`|1 - \eta\lambda_i|` per step, so
the number of steps grows with the condition number
:math:`\kappa = \lambda_{\max} / \lambda_{\min}` (LeCun et al., *Efficient
BackProp*, 2012). Features on very different scales (years and
kilometres) make :math:`\kappa` huge; standardizing them makes it small.

The module also makes the data: :func:`make_car_prices` draws used cars (age,
kilometres driven, price) from a seeded NumPy generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "CarPrices",
    "make_car_prices",
    "DescentResult",
    "gradient_descent",
    "least_squares_loss",
    "loss_on_grid",
    "hessian_eigenvalues",
    "max_stable_learning_rate",
]

# A run whose loss grows past this multiple of its starting loss is called diverged.
_DIVERGENCE_FACTOR = 1e12


@dataclass(frozen=True)
class CarPrices:
    """Synthetic used cars: age and distance driven (the features) and asking price (the target).

    Attributes:
        features: (n, 2) float64, columns ``age`` in years and ``km`` driven.
        prices: (n,) float64 asking prices in euros.
        coefficients: the rule the prices were drawn from: ``intercept`` (EUR),
            ``per_year`` (EUR per year of age), ``per_km`` (EUR per km) and
            ``noise`` (the standard deviation of the noise, EUR).
        feature_names: ``("age", "km")``.
        units: ``("years", "km")``.
    """

    features: np.ndarray
    prices: np.ndarray
    coefficients: dict[str, float] = field(default_factory=dict)
    feature_names: tuple[str, str] = ("age", "km")
    units: tuple[str, str] = ("years", "km")

    def frame(self):
        """The cars as a pandas DataFrame with columns ``age_years``, ``km`` and ``price_eur``."""
        import pandas as pd

        return pd.DataFrame({"age_years": self.features[:, 0], "km": self.features[:, 1], "price_eur": self.prices})


def make_car_prices(n: int = 200, *, seed: int = 0) -> CarPrices:
    """Draw ``n`` used cars whose price falls linearly with age and with kilometres driven.

    Age is uniform on [0.5, 12] years; a car is driven a log-normal number of
    kilometres per year (median 13,000 km, spread factor about 1.35), so age and
    distance are strongly but not perfectly correlated, as on a real used-car
    market. The price is ``24,000 - 700 * age - 0.04 * km`` euros plus Gaussian
    noise with a standard deviation of 1,000 euros, floored at 500 euros (what
    a scrapyard pays). The numbers are made up to look plausible; they are not
    market data.

    Args:
        n: number of cars, at least 3.
        seed: seed of the NumPy generator (``np.random.default_rng(seed)``);
            the same seed gives the same cars.

    Returns:
        :class:`CarPrices` with ``features`` (n, 2) = (age in years, km) and
        ``prices`` (n,) in euros.

    Example:
        >>> cars = make_car_prices(5, seed=0)
        >>> cars.features.shape, cars.prices.shape
        ((5, 2), (5,))
        >>> bool((cars.prices >= 500).all()) and bool((cars.features[:, 0] <= 12).all())
        True
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 3:
        raise ValueError(f"make_car_prices: n must be an integer >= 3 (cars to draw), got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise ValueError(
            f"make_car_prices: seed must be a non-negative integer below 2**32 (as seed_everything takes), got {seed!r}"
        )
    coefficients = {"intercept": 24_000.0, "per_year": -700.0, "per_km": -0.04, "noise": 1_000.0}
    rng = np.random.default_rng(int(seed))
    age = rng.uniform(0.5, 12.0, size=int(n))
    km_per_year = 13_000.0 * rng.lognormal(mean=0.0, sigma=0.3, size=int(n))
    km = age * km_per_year
    price = (
        coefficients["intercept"]
        + coefficients["per_year"] * age
        + coefficients["per_km"] * km
        + rng.normal(0.0, coefficients["noise"], size=int(n))
    )
    return CarPrices(np.column_stack([age, km]), np.maximum(price, 500.0), coefficients)


def _as_problem(features: Any, targets: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    x = _as_real_array(features, f"{name}: features")
    y = _as_real_array(targets, f"{name}: targets")
    if x.ndim != 2:
        raise ValueError(
            f"{name}: features must be a 2-D array (n_samples, n_features), got shape {x.shape}; "
            "reshape a single feature with x.reshape(-1, 1)"
        )
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(
            f"{name}: targets must be a 1-D array with one value per row of features ({len(x)}), got shape {y.shape}"
        )
    return x, y


def _as_real_array(values: Any, what: str) -> np.ndarray:
    try:
        array = np.asarray(values)
    except Exception as error:
        raise TypeError(f"{what} must be a numeric array-like, got {type(values).__name__}: {error}") from error
    if array.dtype.kind not in "biuf":
        raise TypeError(
            f"{what} must hold real numbers, got dtype {array.dtype}; convert with np.asarray(x, dtype=float)"
        )
    if array.size == 0:
        raise ValueError(f"{what} must not be empty, got shape {array.shape}")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise ValueError(
            f"{what} must be finite, got NaN or inf in an array of shape {array.shape}; drop or impute them"
        )
    return array


def hessian_eigenvalues(features: Any) -> np.ndarray:
    r"""Eigenvalues, in increasing order, of the least-squares Hessian :math:`H = X^\top X / n`.

    They are the curvatures of the loss along its principal axes; their ratio
    ``max / min`` is the condition number, and ``2 / max`` is the largest
    stable learning rate of gradient descent.

    Args:
        features: (n, p) design matrix; add a column of ones yourself to fit an intercept.

    Example:
        >>> hessian_eigenvalues([[1.0, 0.0], [0.0, 10.0]])
        array([ 0.5, 50. ])
    """
    x = _as_real_array(features, "hessian_eigenvalues: features")
    if x.ndim != 2:
        raise ValueError(f"hessian_eigenvalues: features must be 2-D (n_samples, n_features), got shape {x.shape}")
    return np.linalg.eigvalsh(x.T @ x / len(x))


def max_stable_learning_rate(features: Any) -> float:
    r"""The learning rate above which gradient descent on least squares diverges: :math:`2 / \lambda_{\max}(H)`.

    Example:
        >>> max_stable_learning_rate([[1.0, 0.0], [0.0, 10.0]])
        0.04
    """
    return float(2.0 / hessian_eigenvalues(features)[-1])


def least_squares_loss(features: Any, targets: Any, weights: Any) -> float:
    r"""The mean squared error over two, :math:`\lVert Xw - y \rVert^2 / (2n)`.

    Example:
        >>> least_squares_loss([[1.0], [2.0]], [1.0, 1.0], [1.0])
        0.25
    """
    x, y = _as_problem(features, targets, "least_squares_loss")
    w = _weights(weights, x.shape[1], "least_squares_loss")
    return float(np.mean((x @ w - y) ** 2) / 2)


def _weights(weights: Any, p: int, name: str) -> np.ndarray:
    w = _as_real_array(weights, f"{name}: weights")
    if w.shape != (p,):
        raise ValueError(f"{name}: weights must have shape ({p},), one per feature, got shape {w.shape}")
    return w


def _optimum(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """The least-squares solution, its loss and the Hessian."""
    best = np.linalg.lstsq(x, y, rcond=None)[0]
    return best, float(np.mean((x @ best - y) ** 2) / 2), x.T @ x / len(x)


def loss_on_grid(features: Any, targets: Any, weights_0: Any, weights_1: Any) -> np.ndarray:
    r"""The least-squares loss of a two-feature model on a grid of weights, for contour plots.

    Uses the exact identity :math:`L(w) = L(w^*) + \tfrac12 (w - w^*)^\top H (w - w^*)`
    around the least-squares solution :math:`w^*`, which is vectorized over the
    whole grid and does not lose the small excess loss near the optimum to
    rounding, as computing the residuals would.

    Args:
        features: (n, 2) design matrix.
        targets: (n,) targets.
        weights_0: (a,) values of the first weight (the grid's x axis).
        weights_1: (b,) values of the second weight (the grid's y axis).

    Returns:
        (b, a) array ``loss[i, j] = L([weights_0[j], weights_1[i]])``, the layout
        ``matplotlib.pyplot.contour(weights_0, weights_1, loss)`` expects.

    Example:
        >>> grid = loss_on_grid([[1.0, 0.0], [0.0, 1.0]], [1.0, 2.0], [0.0, 1.0, 2.0], [2.0, 3.0])
        >>> grid.shape, float(grid[0, 1])
        ((2, 3), 0.0)
    """
    x, y = _as_problem(features, targets, "loss_on_grid")
    if x.shape[1] != 2:
        raise ValueError(f"loss_on_grid: needs exactly 2 features to draw a 2-D grid, got {x.shape[1]}")
    axes = []
    for name, values in (("weights_0", weights_0), ("weights_1", weights_1)):
        array = _as_real_array(values, f"loss_on_grid: {name}")
        if array.ndim != 1:
            raise ValueError(f"loss_on_grid: {name} must be 1-D grid values, got shape {array.shape}")
        axes.append(array)
    best, min_loss, hessian = _optimum(x, y)
    d0, d1 = np.meshgrid(axes[0] - best[0], axes[1] - best[1])  # (b, a) each
    excess = 0.5 * (hessian[0, 0] * d0**2 + 2 * hessian[0, 1] * d0 * d1 + hessian[1, 1] * d1**2)
    return min_loss + excess


@dataclass(frozen=True)
class DescentResult:
    """What :func:`gradient_descent` returns.

    Attributes:
        path: (steps + 1, p) weights, from the initial ones to the last.
        losses: (steps + 1,) loss at each point of the path.
        excess: (steps + 1,) loss minus the least-squares minimum, divided by
            its initial value: 1 at the start, 0 at the optimum.
        converged_at: first step whose ``excess <= tol``, or ``None``.
        diverged: the loss grew past ``1e12`` times its start or stopped being finite.
        learning_rate: the step size used.
        optimum: (p,) the least-squares solution (``np.linalg.lstsq``).
        min_loss: the loss at ``optimum``.
    """

    path: np.ndarray
    losses: np.ndarray
    excess: np.ndarray
    converged_at: int | None
    diverged: bool
    learning_rate: float
    optimum: np.ndarray
    min_loss: float

    @property
    def steps(self) -> int:
        """The number of steps taken."""
        return len(self.losses) - 1


def gradient_descent(
    features: Any,
    targets: Any,
    *,
    learning_rate: float,
    max_steps: int = 1_000,
    tol: float = 1e-6,
    initial: Any = None,
) -> DescentResult:
    r"""Fit linear least squares by full-batch gradient descent and record the path.

    Each step is :math:`w \leftarrow w - \eta X^\top (Xw - y) / n`, vectorized
    over the samples (the loop runs over steps only; each step needs the one
    before). Runs stop at convergence, at divergence, or after ``max_steps``.

    Convergence is measured against the least-squares solution :math:`w^*`
    (computed once with ``np.linalg.lstsq``): a run has converged at the first
    step where :math:`(L(w_t) - L^*) / (L(w_0) - L^*) \le` ``tol``. This
    relative excess loss compares runs on differently scaled features fairly:
    rescaling the features changes the weights but not the predictions that
    the loss measures. Gradient descent itself never uses :math:`w^*`.

    Args:
        features: (n, p) design matrix. No intercept is added: centre the data
            or append a column of ones.
        targets: (n,) targets.
        learning_rate: step size :math:`\eta > 0`; stable below
            :func:`max_stable_learning_rate`.
        max_steps: most steps to take (positive integer).
        tol: relative excess loss that counts as converged, in (0, 1).
        initial: (p,) starting weights; zeros by default.

    Returns:
        :class:`DescentResult` with the path, losses, relative excess loss and
        the step of convergence.

    Shape:
        features (n, p), targets (n,), path (steps + 1, p), losses (steps + 1,).

    Example:
        >>> x = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
        >>> y = x @ np.array([3.0, -1.0])
        >>> run = gradient_descent(x, y, learning_rate=0.5 * max_stable_learning_rate(x), tol=1e-10)
        >>> run.converged_at is not None, np.allclose(run.path[-1], [3.0, -1.0], atol=1e-4)
        (True, True)
    """
    x, y = _as_problem(features, targets, "gradient_descent")
    n, p = x.shape
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float, np.floating, np.integer)):
        raise TypeError(f"gradient_descent: learning_rate must be a number, got {type(learning_rate).__name__}")
    if not (math.isfinite(learning_rate) and learning_rate > 0):
        raise ValueError(f"gradient_descent: learning_rate must be positive and finite, got {learning_rate!r}")
    if isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer)) or max_steps < 1:
        raise ValueError(f"gradient_descent: max_steps must be a positive integer, got {max_steps!r}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float, np.floating)) or not 0 < tol < 1:
        raise ValueError(f"gradient_descent: tol must be a number in (0, 1), got {tol!r}")
    w = np.zeros(p) if initial is None else _weights(initial, p, "gradient_descent").copy()

    best, min_loss, hessian = _optimum(x, y)

    def excess_loss(weights: np.ndarray) -> float:
        # exact, and free of the rounding that L(w) - L* suffers near the optimum
        d = weights - best
        return float(0.5 * d @ hessian @ d)

    start = excess_loss(w)
    path, excess = [w.copy()], [start]
    converged_at = 0 if start == 0 else None
    diverged = False
    with np.errstate(over="ignore", invalid="ignore"):
        for step in range(1, int(max_steps) + 1):
            if converged_at is not None:
                break
            w = w - learning_rate * (x.T @ (x @ w - y)) / n
            current = excess_loss(w)
            path.append(w.copy())
            excess.append(current)
            if not math.isfinite(current) or current > _DIVERGENCE_FACTOR * (start + min_loss):
                diverged = True
                break
            if current <= tol * start:
                converged_at = step
    excess_array = np.asarray(excess)
    relative = excess_array / start if start > 0 else np.zeros_like(excess_array)
    return DescentResult(
        path=np.asarray(path),
        losses=min_loss + excess_array,
        excess=relative,
        converged_at=converged_at,
        diverged=diverged,
        learning_rate=float(learning_rate),
        optimum=best,
        min_loss=min_loss,
    )
