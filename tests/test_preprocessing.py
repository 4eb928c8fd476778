"""min_max_normalize and z_score_normalize against scikit-learn's scalers, with properties and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn.preprocessing import MinMaxScaler, StandardScaler

from bnlib import min_max_normalize, z_score_normalize

FUNCTIONS = [min_max_normalize, z_score_normalize]
SCALERS = {min_max_normalize: MinMaxScaler, z_score_normalize: StandardScaler}


def tables():
    """Tables (n_samples, n_features) of several distributions and scales, one constant column each."""
    rng = np.random.default_rng(0)
    normal = rng.normal(loc=[0.0, 50.0, -3e4], scale=[1.0, 0.01, 2e4], size=(40, 3))
    lognormal = rng.lognormal(mean=2.0, sigma=1.5, size=(25, 4))
    integers = rng.integers(0, 256, size=(30, 5))
    one_row_per_feature = rng.uniform(-1, 1, size=(2, 6))
    out = []
    for raw in (normal, lognormal, integers, one_row_per_feature):
        table = raw.astype(np.float64)
        table[:, 1] = 7.5  # a constant feature: both scalers map it to 0
        out.append(table)
    return out


def reference(function, table):
    return SCALERS[function]().fit_transform(table)


# --- against scikit-learn ---------------------------------------------------


@pytest.mark.parametrize("function", FUNCTIONS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("table", tables(), ids=lambda t: f"{t.shape}")
def test_axis0_matches_sklearn_per_feature(function, table):
    ours = function(table, axis=0)
    np.testing.assert_allclose(ours, reference(function, table), rtol=1e-10, atol=1e-12)
    assert np.all(ours[:, 1] == 0.0), "a constant feature maps to 0"


@pytest.mark.parametrize("function", FUNCTIONS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("table", tables(), ids=lambda t: f"{t.shape}")
def test_axis_none_is_sklearn_on_the_flattened_array(function, table):
    flat = reference(function, table.reshape(-1, 1)).reshape(table.shape)
    np.testing.assert_allclose(function(table), flat, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(function(table, axis=None), flat, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("function", FUNCTIONS, ids=lambda f: f.__name__)
def test_axis1_and_negative_axis_scale_rows(function):
    table = tables()[0]
    by_rows = reference(function, table.T).T
    np.testing.assert_allclose(function(table, axis=1), by_rows, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(function(table, axis=-1), by_rows, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("function", FUNCTIONS, ids=lambda f: f.__name__)
def test_axis_tuple_reduces_over_several_axes(function):
    # (N, C, H, W) images: per-channel statistics over N, H and W, as batch norm takes them.
    images = np.random.default_rng(1).normal(
        loc=[[[3.0]], [[-2.0]], [[0.5]]], scale=[[[2.0]], [[0.1]], [[9.0]]], size=(4, 3, 5, 6)
    )
    per_channel = np.moveaxis(images, 1, -1).reshape(-1, 3)  # (N*H*W, C)
    expected = np.moveaxis(reference(function, per_channel).reshape(4, 5, 6, 3), -1, 1)
    np.testing.assert_allclose(function(images, axis=(0, 2, 3)), expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(function(images, axis=(-1, 0, -2)), expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(function(images, axis=(0, 1, 2, 3)), function(images), rtol=1e-12, atol=1e-12)


def test_hand_computed_values():
    np.testing.assert_array_equal(min_max_normalize([[-2, 10], [0, 20], [2, 30]], axis=0), [[0, 0], [0.5, 0.5], [1, 1]])
    np.testing.assert_allclose(
        z_score_normalize([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]), [-1.5, -0.5, -0.5, -0.5, 0, 0, 1, 2], atol=1e-15
    )


# --- dtypes and input types -------------------------------------------------


@pytest.mark.parametrize("function", FUNCTIONS, ids=lambda f: f.__name__)
@pytest.mark.parametrize(
    ("values", "dtype"),
    [
        (np.array([0, 128, 255], dtype=np.uint8), np.float64),
        (np.array([-3, 0, 9], dtype=np.int64), np.float64),
        (np.array([True, False, True]), np.float64),
        ([1, 2, 3], np.float64),
        (np.array([1.0, 2.0, 4.0], dtype=np.float32), np.float32),
        (np.array([1.0, 2.0, 4.0], dtype=np.float16), np.float16),
        (np.array([1.0, 2.0, 4.0]), np.float64),
    ],
    ids=["uint8", "int64", "bool", "list", "float32", "float16", "float64"],
)
def test_dtypes(function, values, dtype):
    out = function(values)
    assert out.dtype == dtype
    expected = reference(function, np.asarray(values, dtype=np.float64).reshape(-1, 1)).ravel()
    tolerance = {np.float16: 2e-3, np.float32: 1e-6, np.float64: 1e-12}[dtype]
    np.testing.assert_allclose(out.astype(np.float64), expected, atol=tolerance)


def test_float32_matches_sklearn_on_pixels():
    pixels = np.random.default_rng(2).integers(0, 256, size=(64, 10)).astype(np.float32)
    for function in FUNCTIONS:
        out = function(pixels, axis=0)
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, reference(function, pixels.astype(np.float64)), atol=1e-5)


def test_float32_statistics_accumulate_in_float64():
    # Many rows and a rare non-zero value (like a border pixel of MNIST): a float32
    # running sum along axis 0 would be off in the fourth digit.
    rng = np.random.default_rng(3)
    table = (rng.random((20_000, 3)) < [0.5, 0.01, 0.0005]).astype(np.float32) * rng.random((20_000, 3)).astype(
        np.float32
    )
    out = z_score_normalize(table, axis=0)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, StandardScaler().fit_transform(table.astype(np.float64)), rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("function", FUNCTIONS, ids=lambda f: f.__name__)
def test_input_is_not_modified(function):
    table = tables()[0]
    copy = table.copy()
    function(table, axis=0)
    np.testing.assert_array_equal(table, copy)


@pytest.mark.parametrize("function", FUNCTIONS, ids=lambda f: f.__name__)
def test_torch_tensor_input(function):
    torch = pytest.importorskip("torch")
    values = [0.0, 1.0, 3.0]
    np.testing.assert_allclose(function(torch.tensor(values, dtype=torch.float64)), function(values))


# --- extreme magnitudes: the naive formulas overflow or underflow here -------


@pytest.mark.parametrize(
    "values",
    [
        np.array([-1.7e308, 0.0, 1.7e308]),  # max - min overflows float64
        np.array([-6e4, 0.0, 6e4], dtype=np.float16),  # ... and float16
        np.array([3e38, -3e38, 0.0], dtype=np.float32),  # squares overflow float32
        np.array([1e-300, 2e-300, 3e-300]),  # squares underflow to 0
        np.array([1.0, 1.0 + 2.0**-52, 1.0]),  # a spread of one unit in the last place
    ],
    ids=["overflow64", "overflow16", "squares-overflow32", "squares-underflow", "one-ulp"],
)
def test_extreme_magnitudes_give_exact_results_without_warnings(values):
    with np.errstate(all="raise"):
        unit = min_max_normalize(values)
        z = z_score_normalize(values)
    wide = values.astype(np.float64)
    with np.errstate(all="ignore"):  # the naive formula overflows on the first case: skip it there
        expected_unit = (wide - wide.min()) / (wide.max() - wide.min())
    if np.isfinite(expected_unit).all():
        np.testing.assert_allclose(unit, expected_unit, atol=1e-3)
    assert unit.min() == 0 and unit.max() == 1
    z64 = z.astype(np.float64)
    np.testing.assert_allclose([z64.mean(), z64.std()], [0.0, 1.0], atol=2e-3)
    np.testing.assert_allclose(z64, z_score_normalize(unit.astype(np.float64)), atol=2e-3)


# --- properties (hypothesis) --------------------------------------------------

finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
arrays = hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6), elements=finite)
tables_2d = hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=2, min_side=2, max_side=8), elements=finite)


def non_constant(x: np.ndarray) -> bool:
    return x.min() < x.max()


@settings(max_examples=150, deadline=None)
@given(arrays)
def test_min_max_lands_in_unit_interval_and_attains_0_and_1(x):
    out = min_max_normalize(x)
    assert out.shape == x.shape and np.isfinite(out).all()
    assert out.min() >= 0.0 and out.max() <= 1.0
    if non_constant(x):
        assert out.min() == 0.0 and out.max() == 1.0
        assert np.all(out[x == x.min()] == 0.0) and np.all(out[x == x.max()] == 1.0)
    else:
        assert np.all(out == 0.0)


@settings(max_examples=150, deadline=None)
@given(arrays)
def test_min_max_preserves_order(x):
    out = min_max_normalize(x).ravel()
    order = np.argsort(x.ravel(), kind="stable")
    assert np.all(np.diff(out[order]) >= 0)


@settings(max_examples=150, deadline=None)
@given(arrays)
def test_z_score_has_mean_0_and_std_1(x):
    out = z_score_normalize(x)
    assert out.shape == x.shape and np.isfinite(out).all()
    if non_constant(x):
        assert abs(out.mean()) < 1e-9
        assert abs(out.std() - 1.0) < 1e-9
    else:
        assert np.all(out == 0.0)


@settings(max_examples=100, deadline=None)
@given(tables_2d)
def test_per_feature_properties_on_tables(table):
    unit, z = min_max_normalize(table, axis=0), z_score_normalize(table, axis=0)
    for j in range(table.shape[1]):
        if non_constant(table[:, j]):
            assert unit[:, j].min() == 0.0 and unit[:, j].max() == 1.0
            assert abs(z[:, j].mean()) < 1e-9 and abs(z[:, j].std() - 1.0) < 1e-9
        else:
            assert np.all(unit[:, j] == 0.0) and np.all(z[:, j] == 0.0)


@settings(max_examples=100, deadline=None)
@given(arrays, st.floats(0.01, 100.0), st.floats(-100.0, 100.0))
def test_invariant_under_positive_affine_maps(x, scale, shift):
    # a*x + b with a > 0 has the same min-max and z-score as x (up to rounding).
    x = z_score_normalize(x)  # keep magnitudes moderate so a*x + b does not lose x's spread to rounding
    moved = scale * x + shift
    if non_constant(moved):
        np.testing.assert_allclose(min_max_normalize(moved), min_max_normalize(x), atol=1e-9)
        np.testing.assert_allclose(z_score_normalize(moved), z_score_normalize(x), atol=1e-9)


@settings(max_examples=100, deadline=None)
@given(
    hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=5),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([np.float16, np.float32, np.float64]),
)
def test_constant_input_maps_to_zeros(shape, value, dtype):
    with np.errstate(over="ignore"):
        x = np.full(shape, value).astype(dtype)
    if not np.isfinite(x).all():
        return  # the value does not fit this dtype
    for function in FUNCTIONS:
        out = function(x)
        assert out.dtype == dtype and np.all(out == 0)
        last = function(x, axis=-1)
        assert np.all(last == 0)


# --- bad input: errors say what was received and what is expected -------------


@pytest.mark.parametrize("function", FUNCTIONS, ids=lambda f: f.__name__)
@pytest.mark.parametrize(
    ("x", "error", "pattern"),
    [
        ([], ValueError, r"expects a non-empty array, got shape \(0,\)"),
        (np.zeros((0, 3)), ValueError, r"non-empty array, got shape \(0, 3\)"),
        (5.0, ValueError, r"at least a 1-D array, got a scalar .*wrap it in a list"),
        (np.int64(3), ValueError, r"at least a 1-D array, got a scalar"),
        (
            [1.0, np.nan, 3.0],
            ValueError,
            r"expects finite values, got 1 NaN or infinite value\(s\) in an array of shape \(3,\); drop or impute",
        ),
        (
            [[np.inf, 1.0], [-np.inf, 0.0]],
            ValueError,
            r"got 2 NaN or infinite value\(s\) in an array of shape \(2, 2\)",
        ),
        (
            ["a", "b"],
            TypeError,
            r"expects real numbers \(bool, int or float\), got dtype <U1 from list; convert with np.asarray",
        ),
        (np.array([1, 2], dtype=object), TypeError, r"got dtype object from ndarray"),
        ([1 + 2j, 3j], TypeError, r"got dtype complex128"),
        (None, TypeError, r"got dtype object from NoneType"),
        ({"a": 1}, TypeError, r"got dtype object from dict"),
        ([[1.0, 2.0], [3.0]], TypeError, r"expects a numeric array-like, got list"),
        (np.array(["2020-01-01"], dtype="datetime64[D]"), TypeError, r"got dtype datetime64"),
    ],
    ids=[
        "empty",
        "empty-table",
        "scalar",
        "numpy-scalar",
        "nan",
        "inf",
        "strings",
        "objects",
        "complex",
        "none",
        "dict",
        "ragged",
        "datetime",
    ],
)
def test_bad_input(function, x, error, pattern):
    with pytest.raises(error, match=rf"^{function.__name__} .*{pattern}"):
        function(x)


@pytest.mark.parametrize("function", FUNCTIONS, ids=lambda f: f.__name__)
@pytest.mark.parametrize(
    ("axis", "error", "pattern"),
    [
        (
            2,
            ValueError,
            r"axis 2 is out of range for an array of shape \(3, 2\) \(2-D\); use an axis in \[-2, 1\] or None",
        ),
        (-3, ValueError, r"axis -3 is out of range"),
        ((0, 5), ValueError, r"axis 5 is out of range"),
        ((0, -2), ValueError, r"axis \(0, -2\) names the same axis twice"),
        (1.0, TypeError, r"axis must be None, an int or a tuple of ints, got 1.0"),
        ("0", TypeError, r"got '0'"),
        ([0], TypeError, r"got \[0\]"),
        (True, TypeError, r"got True"),
        ((0, 1.5), TypeError, r"got \(0, 1.5\)"),
    ],
    ids=[
        "too-large",
        "too-negative",
        "tuple-out-of-range",
        "repeated",
        "float",
        "string",
        "list",
        "bool",
        "tuple-with-float",
    ],
)
def test_bad_axis(function, axis, error, pattern):
    with pytest.raises(error, match=rf"^{function.__name__}: .*{pattern}"):
        function(np.ones((3, 2)), axis=axis)


def test_numpy_integer_axis_is_accepted():
    table = tables()[0]
    np.testing.assert_array_equal(min_max_normalize(table, axis=np.int64(0)), min_max_normalize(table, axis=0))
