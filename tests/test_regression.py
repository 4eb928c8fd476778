"""bnlib.regression: gradient descent on least squares against np.linalg.lstsq and torch.optim.SGD."""

from __future__ import annotations

import numpy as np
import pytest

from bnlib import z_score_normalize
from bnlib.regression import (
    CarPrices,
    gradient_descent,
    hessian_eigenvalues,
    least_squares_loss,
    loss_on_grid,
    make_car_prices,
    max_stable_learning_rate,
)


def problem(seed: int = 0, n: int = 50, p: int = 3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, p)) * rng.uniform(0.5, 3.0, size=p)
    y = x @ rng.normal(size=p) + 0.1 * rng.normal(size=n)
    return x, y


# --- the data -----------------------------------------------------------------


def test_make_car_prices_is_seeded_and_plausible():
    cars = make_car_prices(300, seed=4)
    assert isinstance(cars, CarPrices)
    assert cars.features.shape == (300, 2) and cars.prices.shape == (300,)
    again, other = make_car_prices(300, seed=4), make_car_prices(300, seed=5)
    np.testing.assert_array_equal(cars.features, again.features)
    np.testing.assert_array_equal(cars.prices, again.prices)
    assert not np.array_equal(cars.prices, other.prices)
    age, km = cars.features.T
    assert age.min() >= 0.5 and age.max() <= 12.0
    assert km.min() > 0 and 5_000 < np.median(km / age) < 30_000
    assert cars.prices.min() >= 500.0
    assert 0.5 < np.corrcoef(age, km)[0, 1] < 0.95, "age and distance are correlated, but not perfectly"
    frame = cars.frame()
    assert list(frame.columns) == ["age_years", "km", "price_eur"] and len(frame) == 300


def test_make_car_prices_follows_its_coefficients():
    cars = make_car_prices(20_000, seed=0)
    design = np.column_stack([np.ones(20_000), cars.features])
    fitted = np.linalg.lstsq(design, cars.prices, rcond=None)[0]
    truth = [cars.coefficients[k] for k in ("intercept", "per_year", "per_km")]
    # the 500-euro floor bends a few prices, so allow a few percent
    np.testing.assert_allclose(fitted, truth, rtol=0.05)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"n": 2}, "n must be an integer >= 3"),
        ({"n": 5.0}, "got 5.0"),
        ({"n": 5, "seed": -1}, "seed must be a non-negative integer"),
    ],
)
def test_make_car_prices_bad_input(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        make_car_prices(**kwargs)


# --- gradient descent against references ----------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_converges_to_the_lstsq_solution(seed):
    x, y = problem(seed)
    run = gradient_descent(x, y, learning_rate=0.5 * max_stable_learning_rate(x), max_steps=10_000, tol=1e-14)
    best = np.linalg.lstsq(x, y, rcond=None)[0]
    assert run.converged_at is not None and not run.diverged
    np.testing.assert_allclose(run.optimum, best, rtol=1e-12)
    np.testing.assert_allclose(run.path[-1], best, rtol=1e-5, atol=1e-6)
    assert run.min_loss == pytest.approx(least_squares_loss(x, y, best), rel=1e-12)


def test_path_matches_torch_sgd():
    torch = pytest.importorskip("torch")
    x, y = problem(3)
    lr = 0.7 * max_stable_learning_rate(x)
    initial = np.array([1.0, -2.0, 0.5])
    ours = gradient_descent(x, y, learning_rate=lr, max_steps=25, tol=1e-30, initial=initial)
    w = torch.tensor(initial, requires_grad=True)
    optimizer = torch.optim.SGD([w], lr=lr)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    path = [w.detach().clone().numpy()]
    for _ in range(25):
        optimizer.zero_grad()
        loss = ((xt @ w - yt) ** 2).mean() / 2
        loss.backward()
        optimizer.step()
        path.append(w.detach().clone().numpy())
    np.testing.assert_allclose(ours.path, np.array(path), rtol=1e-10, atol=1e-12)


def test_losses_and_excess_match_direct_computation():
    x, y = problem(4)
    run = gradient_descent(x, y, learning_rate=0.3 * max_stable_learning_rate(x), max_steps=40, tol=1e-30)
    direct = np.array([least_squares_loss(x, y, w) for w in run.path])
    np.testing.assert_allclose(run.losses, direct, rtol=1e-10)
    np.testing.assert_allclose(run.excess, (direct - run.min_loss) / (direct[0] - run.min_loss), rtol=1e-6, atol=1e-12)
    assert run.path.shape == (41, 3) and run.steps == 40 and run.excess[0] == 1.0


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.9, 0.99])
def test_stable_rates_decrease_the_loss_and_obey_the_bound(fraction):
    x, y = problem(5)
    eigenvalues = hessian_eigenvalues(x)
    lr = fraction * max_stable_learning_rate(x)
    run = gradient_descent(x, y, learning_rate=lr, max_steps=300, tol=1e-30)
    assert np.all(np.diff(run.losses) <= 1e-12 * run.losses[0])
    # every eigen-direction shrinks by |1 - lr * lambda| per step, so the excess by its square
    rate = np.max(np.abs(1 - lr * eigenvalues))
    bound = rate ** (2 * np.arange(run.steps + 1))
    assert np.all(run.excess <= bound * (1 + 1e-9) + 1e-15)


@pytest.mark.parametrize("fraction", [1.05, 2.0])
def test_rates_above_2_over_lambda_max_diverge(fraction):
    x, y = problem(6)
    run = gradient_descent(x, y, learning_rate=fraction * max_stable_learning_rate(x), max_steps=100_000)
    assert run.diverged and run.converged_at is None
    assert run.steps < 100_000


def test_converged_at_is_the_first_step_below_tol():
    x, y = problem(7)
    run = gradient_descent(x, y, learning_rate=0.5 * max_stable_learning_rate(x), tol=1e-4)
    step = run.converged_at
    assert step is not None and step == run.steps
    assert run.excess[step] <= 1e-4 < run.excess[step - 1]


def test_max_steps_stops_an_unconverged_run():
    x, y = problem(8)
    run = gradient_descent(x, y, learning_rate=1e-6, max_steps=7)
    assert run.steps == 7 and run.converged_at is None and not run.diverged


def test_starting_at_the_optimum_has_converged_at_step_0():
    x, y = problem(9)
    best = np.linalg.lstsq(x, y, rcond=None)[0]
    run = gradient_descent(x, y, learning_rate=0.1, initial=best)
    assert run.converged_at == 0 and run.steps == 0


def test_scaling_the_features_makes_descent_fast_on_the_cars():
    # The chapter's claim, as a test: standardized features converge, raw ones crawl.
    cars = make_car_prices(200, seed=0)
    target = cars.prices - cars.prices.mean()
    centred = cars.features - cars.features.mean(axis=0)
    scaled = z_score_normalize(cars.features, axis=0)
    kappa = [np.divide(*hessian_eigenvalues(f)[::-1]) for f in (centred, scaled)]
    assert kappa[0] > 1e6 and kappa[1] < 100
    runs = [
        gradient_descent(f, target, learning_rate=0.5 * max_stable_learning_rate(f), max_steps=2_000)
        for f in (centred, scaled)
    ]
    assert runs[0].converged_at is None and runs[1].converged_at is not None and runs[1].converged_at < 200
    # both describe the same fitted prices
    np.testing.assert_allclose(centred @ runs[0].optimum, scaled @ runs[1].optimum, rtol=1e-8, atol=1e-6)


# --- helpers ------------------------------------------------------------------------


def test_hessian_eigenvalues_are_the_covariance_spectrum_on_centred_data():
    x, _ = problem(10)
    centred = x - x.mean(axis=0)
    np.testing.assert_allclose(
        hessian_eigenvalues(centred), np.linalg.eigvalsh(np.cov(centred.T, bias=True)), rtol=1e-12
    )
    assert max_stable_learning_rate(centred) == pytest.approx(
        2 / np.linalg.eigvalsh(np.cov(centred.T, bias=True)).max()
    )


def test_loss_on_grid_matches_direct_losses():
    x, y = problem(11, p=2)
    w0, w1 = np.linspace(-3, 3, 7), np.linspace(-2, 4, 5)
    grid = loss_on_grid(x, y, w0, w1)
    assert grid.shape == (5, 7)
    for i, b in enumerate(w1):
        for j, a in enumerate(w0):
            assert grid[i, j] == pytest.approx(least_squares_loss(x, y, [a, b]), rel=1e-10)
    best = np.linalg.lstsq(x, y, rcond=None)[0]
    assert loss_on_grid(x, y, [best[0]], [best[1]])[0, 0] == pytest.approx(least_squares_loss(x, y, best), rel=1e-12)


# --- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "error", "pattern"),
    [
        (
            lambda x, y: gradient_descent(x[:, 0], y, learning_rate=0.1),
            ValueError,
            r"features must be a 2-D array \(n_samples, n_features\), got shape \(50,\); reshape",
        ),
        (
            lambda x, y: gradient_descent(x, y[:-1], learning_rate=0.1),
            ValueError,
            r"one value per row of features \(50\), got shape \(49,\)",
        ),
        (lambda x, y: gradient_descent(x, y[:, None], learning_rate=0.1), ValueError, r"targets must be a 1-D array"),
        (
            lambda x, y: gradient_descent(np.where(x > 1, np.nan, x), y, learning_rate=0.1),
            ValueError,
            r"features must be finite, got NaN or inf",
        ),
        (
            lambda x, y: gradient_descent(x.astype(str), y, learning_rate=0.1),
            TypeError,
            r"features must hold real numbers, got dtype <U",
        ),
        (
            lambda x, y: gradient_descent(np.zeros((0, 3)), y[:0], learning_rate=0.1),
            ValueError,
            r"must not be empty, got shape \(0, 3\)",
        ),
        (
            lambda x, y: gradient_descent(x, y, learning_rate=0.0),
            ValueError,
            r"learning_rate must be positive and finite, got 0.0",
        ),
        (
            lambda x, y: gradient_descent(x, y, learning_rate=float("nan")),
            ValueError,
            r"learning_rate must be positive and finite, got nan",
        ),
        (
            lambda x, y: gradient_descent(x, y, learning_rate="0.1"),
            TypeError,
            r"learning_rate must be a number, got str",
        ),
        (
            lambda x, y: gradient_descent(x, y, learning_rate=0.1, max_steps=0),
            ValueError,
            r"max_steps must be a positive integer, got 0",
        ),
        (
            lambda x, y: gradient_descent(x, y, learning_rate=0.1, max_steps=10.0),
            ValueError,
            r"max_steps must be a positive integer, got 10.0",
        ),
        (
            lambda x, y: gradient_descent(x, y, learning_rate=0.1, tol=1.0),
            ValueError,
            r"tol must be a number in \(0, 1\), got 1.0",
        ),
        (
            lambda x, y: gradient_descent(x, y, learning_rate=0.1, initial=[0.0, 1.0]),
            ValueError,
            r"weights must have shape \(3,\), one per feature, got shape \(2,\)",
        ),
        (
            lambda x, y: loss_on_grid(x, y, [0.0], [0.0]),
            ValueError,
            r"needs exactly 2 features to draw a 2-D grid, got 3",
        ),
        (
            lambda x, y: loss_on_grid(x[:, :2], y, np.zeros((2, 2)), [0.0]),
            ValueError,
            r"weights_0 must be 1-D grid values, got shape \(2, 2\)",
        ),
        (lambda x, y: hessian_eigenvalues(x[:, 0]), ValueError, r"features must be 2-D"),
        (lambda x, y: least_squares_loss(x, y, [1.0]), ValueError, r"weights must have shape \(3,\)"),
    ],
    ids=[
        "1-D-features",
        "short-targets",
        "2-D-targets",
        "nan",
        "strings",
        "empty",
        "zero-rate",
        "nan-rate",
        "string-rate",
        "zero-steps",
        "float-steps",
        "tol-1",
        "initial-shape",
        "grid-3-features",
        "grid-2-D",
        "hessian-1-D",
        "loss-weights",
    ],
)
def test_bad_input(call, error, pattern):
    x, y = problem(12)
    with pytest.raises(error, match=pattern):
        call(x, y)
