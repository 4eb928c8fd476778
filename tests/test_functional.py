"""bnlib.functional: the NumPy reference and the torch helpers, against PyTorch and NumPy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as nnf
from hypothesis import given, settings
from hypothesis import strategies as st

from bnlib import functional as bf

SETTINGS = settings(max_examples=25, deadline=None)


@st.composite
def bn_shapes(draw):
    """(N, D) or (N, C, H, W) with at least 2 values per feature."""
    n = draw(st.integers(2, 6))
    c = draw(st.integers(1, 5))
    if draw(st.booleans()):
        return (n, c)
    return (n, c, draw(st.integers(1, 4)), draw(st.integers(1, 4)))


def _torch_reference(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float):
    xt = torch.tensor(x, requires_grad=True)
    gt = torch.tensor(gamma, requires_grad=True)
    bt = torch.tensor(beta, requires_grad=True)
    y = nnf.batch_norm(xt, None, None, gt, bt, training=True, eps=eps)
    return xt, gt, bt, y


@SETTINGS
@given(shape=bn_shapes(), seed=st.integers(0, 2**16), scale=st.sampled_from([1e-2, 1.0, 100.0]))
def test_numpy_forward_backward_equal_autograd(shape, seed, scale):
    rng = np.random.default_rng(seed)
    x = rng.normal(3.0, scale, size=shape)
    gamma, beta = rng.normal(size=shape[1]), rng.normal(size=shape[1])
    dy = rng.normal(size=shape)
    y, cache = bf.batch_norm_forward(x, gamma, beta, eps=1e-5)
    dx, dgamma, dbeta = bf.batch_norm_backward(dy, cache)

    xt, gt, bt, yt = _torch_reference(x, gamma, beta, 1e-5)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(dgamma, gt.grad.numpy(), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(dbeta, bt.grad.numpy(), rtol=1e-9, atol=1e-9)


def test_numpy_forward_float32_keeps_dtype_and_matches():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(16, 4, 3, 3)).astype(np.float32)
    y, _ = bf.batch_norm_forward(x, np.ones(4), np.zeros(4))
    assert y.dtype == np.float32
    reference = nnf.batch_norm(torch.tensor(x), None, None, training=True).numpy()
    np.testing.assert_allclose(y, reference, atol=1e-5)


def test_backward_gradient_is_centred_and_orthogonal_to_xhat():
    rng = np.random.default_rng(2)
    x, dy = rng.normal(size=(10, 3)), rng.normal(size=(10, 3))
    _, cache = bf.batch_norm_forward(
        x, np.full(3, 2.0), np.zeros(3), eps=1e-300
    )  # eps > 0 but below var's rounding: sum(xhat**2) = m
    dx, _, _ = bf.batch_norm_backward(dy, cache)
    np.testing.assert_allclose(dx.sum(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose((dx * cache["xhat"]).sum(axis=0), 0, atol=1e-12)


def test_two_pass_variance_survives_a_large_mean():
    # E[x^2] - E[x]^2 cancels catastrophically here; the two-pass formula does not.
    rng = np.random.default_rng(3)
    x = 1e8 + rng.normal(size=(1000, 1))
    one_pass = float((x**2).mean() - x.mean() ** 2)
    _, var = bf.moments(torch.tensor(x), 0)
    assert abs(var.item() - x.var()) < 1e-6 * x.var()
    assert abs(one_pass - x.var()) > 0.1 * x.var()  # the formula we avoid really fails
    _, cache = bf.batch_norm_forward(x, np.ones(1), np.zeros(1), eps=1e-300)  # eps > 0, negligible next to var
    np.testing.assert_allclose(cache["inv_std"].ravel(), 1 / x.std(), rtol=1e-6)


@SETTINGS
@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=4),
    data=st.data(),
    unbiased=st.booleans(),
    keepdim=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_moments_equal_torch_var_mean(shape, data, unbiased, keepdim, dtype):
    x = torch.randn(*shape, dtype=dtype) * 3 + 1
    dims = tuple(sorted(data.draw(st.sets(st.integers(0, len(shape) - 1), min_size=1))))
    count = int(np.prod([shape[d] for d in dims]))
    if unbiased and count < 2:
        with pytest.raises(ValueError, match="at least 2 values"):
            bf.moments(x, dims, unbiased=True)
        return
    mean, var = bf.moments(x, dims, unbiased=unbiased, keepdim=keepdim)
    ref_var, ref_mean = torch.var_mean(x, dim=dims, correction=int(unbiased), keepdim=keepdim)
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-12, "rtol": 1e-12}
    torch.testing.assert_close(mean, ref_mean, **tol)
    torch.testing.assert_close(var, ref_var, **tol)


def test_moments_accepts_negative_and_single_dims():
    x = torch.randn(4, 3, 5)
    torch.testing.assert_close(bf.moments(x, -1)[1], bf.moments(x, 2)[1])
    assert bf.moments(x, (0, 2), keepdim=False)[0].shape == (3,)


def test_normalize_and_affine():
    x = torch.randn(6, 3, 2, 2)
    mean, var = bf.moments(x, (0, 2, 3))
    xhat = bf.normalize(x, mean, var, 1e-5)
    torch.testing.assert_close(xhat, (x - mean) / torch.sqrt(var + 1e-5))
    w, b = torch.randn(3), torch.randn(3)
    torch.testing.assert_close(bf.affine(xhat, w, b), xhat * w[:, None, None] + b[:, None, None])
    torch.testing.assert_close(bf.affine(xhat, None, None), xhat)
    torch.testing.assert_close(bf.affine(xhat, w, None), xhat * w[:, None, None])
    w_elem = torch.randn(3, 2, 2)  # LayerNorm-style elementwise weight
    torch.testing.assert_close(bf.affine(xhat, w_elem, None), xhat * w_elem)


def test_update_running_is_the_pytorch_formula():
    running = torch.tensor([1.0, 2.0])
    new = torch.tensor([3.0, 6.0], requires_grad=True)
    out = bf.update_running_(running, new, 0.25)
    assert out is running and not running.requires_grad
    torch.testing.assert_close(running, torch.tensor([0.75 * 1 + 0.25 * 3, 0.75 * 2 + 0.25 * 6]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(5, 4), (3, 4, 6), (2, 4, 3, 5)])
def test_functional_forms_equal_torch(shape, dtype):
    x = torch.randn(*shape, dtype=dtype) * 2 - 1
    w, b = torch.randn(4, dtype=dtype), torch.randn(4, dtype=dtype)
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {}
    rm, rv = torch.zeros(4, dtype=dtype), torch.ones(4, dtype=dtype)
    rm_ref, rv_ref = rm.clone(), rv.clone()
    torch.testing.assert_close(
        bf.batch_norm(x, w, b, running_mean=rm, running_var=rv, momentum=0.3),
        nnf.batch_norm(x, rm_ref, rv_ref, w, b, training=True, momentum=0.3),
        **tol,
    )
    torch.testing.assert_close((rm, rv), (rm_ref, rv_ref), **tol)
    torch.testing.assert_close(
        bf.batch_norm(x, w, b, running_mean=rm, running_var=rv, training=False),
        nnf.batch_norm(x, rm_ref, rv_ref, w, b, training=False),
        **tol,
    )
    torch.testing.assert_close(bf.group_norm(x, 2, w, b), nnf.group_norm(x, 2, w, b), **tol)
    torch.testing.assert_close(bf.layer_norm(x, w, b), nnf.group_norm(x, 1, w, b), **tol)
    torch.testing.assert_close(bf.layer_norm(x), nnf.layer_norm(x, x.shape[1:]), **tol)
    if len(shape) > 2:
        torch.testing.assert_close(bf.instance_norm(x, w, b), nnf.instance_norm(x, weight=w, bias=b), **tol)


def test_functional_batch_norm_errors():
    with pytest.raises(ValueError, match=r"more than 1 value per channel, got input shape \(1, 3\)"):
        bf.batch_norm(torch.randn(1, 3))
    x = torch.randn(4, 2)
    x[1, 0] = float("inf")
    rm, rv = torch.zeros(2), torch.ones(2)
    with pytest.raises(ValueError, match=r"channel\(s\) \[0\] are NaN or infinite.*NOT updated"):
        bf.batch_norm(x, running_mean=rm, running_var=rv)
    assert rm.eq(0).all() and rv.eq(1).all()
    with pytest.raises(ValueError, match="num_channels=4 is not divisible by num_groups=3"):
        bf.group_norm(torch.randn(2, 4), 3)


def test_numpy_reference_rejects_bad_input():
    with pytest.raises(ValueError, match=r"got shape \(5,\); add a batch axis"):
        bf.batch_norm_forward(np.ones(5), np.ones(1), np.zeros(1))
    with pytest.raises(TypeError, match="floating-point array, got dtype int64"):
        bf.batch_norm_forward(np.ones((4, 2), dtype=np.int64), np.ones(2), np.zeros(2))
    with pytest.raises(ValueError, match=r"gamma and beta must have shape \(2,\)"):
        bf.batch_norm_forward(np.ones((4, 2)), np.ones(3), np.zeros(2))
    _, cache = bf.batch_norm_forward(np.random.default_rng(0).normal(size=(4, 2)), np.ones(2), np.zeros(2))
    with pytest.raises(ValueError, match=r"dy must have the shape of the forward input \(4, 2\), got \(4, 3\)"):
        bf.batch_norm_backward(np.ones((4, 3)), cache)


def test_check_input_messages():
    with pytest.raises(TypeError, match=r"expected a torch\.Tensor, got ndarray"):
        bf.check_input(np.ones((2, 3)), "L")
    with pytest.raises(TypeError, match=r"floating-point tensor, got dtype torch.int64; convert with x\.float\(\)"):
        bf.check_input(torch.ones(2, 3, dtype=torch.long), "L")
    with pytest.raises(ValueError, match=r"got shape \(3,\); add a batch axis with x.unsqueeze\(0\)"):
        bf.check_input(torch.ones(3), "L", num_features=3)
    with pytest.raises(ValueError, match=r"got shape \(2, 8, 8, 3\); for channels-last"):
        bf.check_input(torch.ones(2, 8, 8, 3), "L", num_features=3)
    with pytest.raises(TypeError, match=r"has torch\.float32 parameters but got a torch\.float64 input"):
        bf.check_input(torch.ones(2, 3, dtype=torch.float64), "L", num_features=3, dtype=torch.float32)
    assert bf.batch_norm_dims(3) == (0, 2)
    with pytest.raises(ValueError, match="at least 2 dims"):
        bf.batch_norm_dims(1)


def test_moments_refuse_an_empty_set_of_dims():
    # torch.mean(dim=()) reduces over everything: instance norm of an (N, C) tensor would be garbage.
    with pytest.raises(ValueError, match="at least one dim"):
        bf.moments(torch.randn(4, 3), ())
    with pytest.raises(ValueError, match=r"pass \(N, C, H, W\)"):
        bf.instance_norm(torch.randn(4, 3))


def test_group_norm_names_a_bad_group_count():
    with pytest.raises(ValueError, match="positive integer, got 0"):
        bf.group_norm(torch.randn(2, 4, 3), 0)
    with pytest.raises(ValueError, match="num_channels=4 is not divisible by num_groups=3"):
        bf.group_norm(torch.randn(2, 4, 3), 3)


# ---------------------------------------------------------------- malformed and non-finite input refused


def test_numpy_reference_refuses_what_would_be_silently_wrong():
    rng = np.random.default_rng(4)
    ones, zeros = np.ones(3), np.zeros(3)
    with pytest.raises(ValueError, match=r"more than 1 value per feature.*shape \(1, 3\).*beta"):
        bf.batch_norm_forward(rng.normal(size=(1, 3)), ones, zeros)  # returned zeros (beta) before
    for eps in (-1.0, 0.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="eps must be a positive number"):
            bf.batch_norm_forward(rng.normal(size=(4, 3)), ones, zeros, eps=eps)
    with pytest.raises(TypeError, match="eps must be a positive number"):
        bf.batch_norm_forward(rng.normal(size=(4, 3)), ones, zeros, eps="1e-5")
    x = rng.normal(size=(4, 3))
    x[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"NaN or infinite values in feature\(s\) \[1\]"):
        bf.batch_norm_forward(x, ones, zeros)
    with pytest.raises(ValueError, match="gamma must hold finite numbers"):
        bf.batch_norm_forward(rng.normal(size=(4, 3)), np.array([1.0, np.inf, 1.0]), zeros)
    _, cache = bf.batch_norm_forward(rng.normal(size=(4, 3)), ones, zeros)
    with pytest.raises(ValueError, match="dy must hold finite numbers"):
        bf.batch_norm_backward(np.full((4, 3), np.nan), cache)
    with pytest.raises(TypeError, match="cache must be the dict returned by batch_norm_forward"):
        bf.batch_norm_backward(np.ones((4, 3)), None)


def test_numpy_reference_float16_variance_is_taken_in_float32():
    # Values of +-300: their float16 squares (90,000) overflow 65,504; the statistics are taken in float32.
    x = np.array([[300.0], [-300.0], [300.0], [-300.0]], dtype=np.float16)
    y, cache = bf.batch_norm_forward(x, np.ones(1), np.zeros(1))
    assert y.dtype == np.float16 and cache["xhat"].dtype == np.float32
    np.testing.assert_allclose(y.astype(np.float64).ravel(), [1, -1, 1, -1], atol=1e-3)
    expected = nnf.batch_norm(torch.tensor(x), None, None, training=True).numpy()  # torch agrees
    np.testing.assert_allclose(y.astype(np.float64), expected.astype(np.float64), atol=1e-3)


def test_torch_functional_forms_refuse_bad_settings():
    x = torch.randn(4, 3)
    rm, rv = torch.zeros(3), torch.ones(3)
    for momentum in (float("nan"), -0.1, 1.5):
        with pytest.raises(ValueError, match="momentum must be in"):
            bf.batch_norm(x, running_mean=rm, running_var=rv, momentum=momentum)
    assert rm.eq(0).all() and rv.eq(1).all()  # momentum=nan used to poison the running mean
    for eps in (-1.0, 0.0, float("nan"), float("inf")):
        for form in (
            lambda eps: bf.batch_norm(x, eps=eps),
            lambda eps: bf.layer_norm(x, eps=eps),
            lambda eps: bf.instance_norm(x[..., None].expand(4, 3, 2), eps=eps),
            lambda eps: bf.group_norm(x, 1, eps=eps),
            lambda eps: bf.normalize(x, x.mean(0), x.var(0), eps),
        ):
            with pytest.raises(ValueError, match="eps must be a positive number"):
                form(eps)
    with pytest.raises(ValueError, match=r"weight must be a floating-point tensor of shape \(3,\).*got \(2,\)"):
        bf.batch_norm(x, torch.ones(2))
    with pytest.raises(ValueError, match=r"running_var must be a floating-point tensor of shape \(3,\)"):
        bf.batch_norm(x, running_mean=rm, running_var=torch.ones(4))
    with pytest.raises(ValueError, match=r"more than 1 value per sample.*shape \(4, 1\)"):
        bf.layer_norm(torch.randn(4, 1))
    with pytest.raises(TypeError, match="expected a torch.Tensor, got list"):
        bf.layer_norm([[1.0, 2.0]])
    with pytest.raises(ValueError, match=r"dims must be integers in \[-2, 1\].*got 5"):
        bf.moments(x, (5,))
    for momentum in (float("nan"), 2.0, True):
        with pytest.raises(ValueError, match="momentum"):
            bf.running_average(rm, x[0], momentum)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_torch_functional_forms_compute_reduced_precision_in_float32(dtype):
    x = (1000 + 10 * torch.randn(4, 3, 150, 150, generator=torch.Generator().manual_seed(0))).to(dtype)
    exact = x.float()
    tol = {"atol": 2e-2, "rtol": 2e-2} if dtype == torch.float16 else {"atol": 0.1, "rtol": 5e-2}
    rm, rv = torch.zeros(3), torch.ones(3)
    pairs = [
        (bf.batch_norm(x, running_mean=rm, running_var=rv), nnf.batch_norm(exact, None, None, training=True)),
        (bf.layer_norm(x), nnf.group_norm(exact, 1)),
        (bf.group_norm(x, 3), nnf.group_norm(exact, 3)),
        (bf.instance_norm(x), nnf.instance_norm(exact)),
    ]
    for y, expected in pairs:
        assert y.dtype == dtype and torch.isfinite(y).all()
        torch.testing.assert_close(y.float(), expected, **tol)
    torch.testing.assert_close(rm, 0.1 * exact.mean((0, 2, 3)), rtol=1e-2, atol=1e-2)


def test_functional_batch_norm_empty_batch_and_one_write_for_both_buffers(monkeypatch):
    rm, rv = torch.zeros(3), torch.ones(3)
    assert bf.batch_norm(torch.randn(0, 3, 2), running_mean=rm, running_var=rv).shape == (0, 3, 2)
    assert rm.eq(0).all() and rv.eq(1).all()
    calls = []
    original = torch._foreach_copy_
    monkeypatch.setattr(
        torch, "_foreach_copy_", lambda targets, values: calls.append(len(targets)) or original(targets, values)
    )
    bf.batch_norm(torch.randn(4, 3), running_mean=rm, running_var=rv)
    assert calls == [2] and not rm.eq(0).all() and not rv.eq(1).all()  # both buffers in one call


def test_values_readable_and_check_finite_statistics_under_vmap():
    assert bf.values_readable(torch.zeros(1))
    assert not bf.values_readable(torch.zeros(1, device="meta"))
    seen = []
    torch.func.vmap(lambda t: seen.append(bf.values_readable(t)) or t)(torch.zeros(2, 3))
    assert seen == [False]
    bad = torch.tensor([[float("nan"), 1.0]])
    torch.func.vmap(lambda m: bf.check_finite_statistics(m, m, "L") or m)(bad)  # skipped: no error, no crash
    with pytest.raises(ValueError, match=r"channel\(s\) \[0\]"):
        bf.check_finite_statistics(bad, torch.ones(1, 2), "L")
    finite = torch.ones(2)
    with pytest.raises(ValueError, match=r"new running_mean or running_var of channel\(s\) \[1\].*float16"):
        bf.check_finite_statistics(
            finite, finite, "L", running=(torch.tensor([1.0, float("inf")]).half(), finite, "running_var")
        )
