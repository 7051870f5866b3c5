"""The derivatives against independent oracles: central finite differences of the
forward functions (float64), closed forms for cross-entropy, and torch autograd where
torch is installed (skipped with a reason where it is not) -- on every backend."""
from __future__ import annotations

import numpy as np
import pytest

from helpers import call as _call


def numeric_grad(f, x, h=1e-6):
    """Central differences of a scalar function f at x (float64)."""
    g = np.zeros_like(x)
    flat, gf = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        step = h * max(1.0, abs(flat[i]))
        old = flat[i]
        flat[i] = old + step
        fp = f(x)
        flat[i] = old - step
        fm = f(x)
        flat[i] = old
        gf[i] = (fp - fm) / (2 * step)
    return g


FD_TOL = dict(rtol=1e-6, atol=1e-8)


# ---- backward passes -----------------------------------------------------------------------------
@pytest.mark.parametrize("tau", [1.0, 0.6, 4.0])
@pytest.mark.parametrize("shape,axis", [((6,), -1), ((3, 5), -1), ((4, 3), 0), ((2, 3, 4), 1), ((2, 3, 4), (0, 2))])
@pytest.mark.parametrize("fwd", ["softmax", "log_softmax"])
def test_backward_matches_finite_differences(backend, fwd, shape, axis, tau):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape) * 2
    g = rng.standard_normal(shape)
    y = _call(backend, fwd, x, axis=axis, temperature=tau)
    dx = _call(backend, f"{fwd}_backward", g, y, axis=axis, temperature=tau)
    num = numeric_grad(lambda v: float(np.sum(g * _call(backend, fwd, v, axis=axis, temperature=tau))), x.copy())
    np.testing.assert_allclose(dx, num, **FD_TOL)


@pytest.mark.parametrize("fwd", ["softmax", "log_softmax"])
def test_masked_backward_matches_finite_differences(backend, fwd):
    """With where, the masked entries are constants: their gradient is exactly 0, and the
    rest is the gradient of the softmax over the kept entries."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 7))
    mask = rng.random((4, 7)) < 0.6
    mask[:, 0] = True
    mask[2] = False  # a fully masked row
    g = rng.standard_normal((4, 7))
    g[~mask] = np.nan  # masked gradients must not leak into the rest
    y = _call(backend, fwd, x, where=mask)
    dx = _call(backend, f"{fwd}_backward", g, y, where=mask)
    assert np.all(dx[~mask] == 0)
    gz = np.where(mask, g, 0.0)
    with np.errstate(invalid="ignore"):  # 0 * -inf at the masked entries of log_softmax
        num = numeric_grad(lambda v: float(np.sum(np.where(mask, gz * _call(backend, fwd, v, where=mask), 0.0))),
                           x.copy())
    np.testing.assert_allclose(dx[mask], num[mask], **FD_TOL)


# ---- Jacobians -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("tau", [1.0, 0.3])
@pytest.mark.parametrize("fwd", ["softmax", "log_softmax"])
def test_jacobian_matches_finite_differences_and_backward(backend, fwd, tau):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 5, 4))
    axis = 1
    J = _call(backend, f"{fwd}_jacobian", x, axis=axis, temperature=tau)
    assert J.shape == (3, 4, 5, 5)
    xl = np.moveaxis(x, axis, -1)
    for b in np.ndindex(3, 4):
        for i in range(5):
            def f(v, b=b, i=i):
                return float(_call(backend, fwd, v, axis=-1, temperature=tau)[i])

            num = numeric_grad(f, xl[b].copy())
            np.testing.assert_allclose(J[b][i], num, **FD_TOL)
    # J^T g equals the backward pass
    g = rng.standard_normal(x.shape)
    y = _call(backend, fwd, x, axis=axis, temperature=tau)
    dx = _call(backend, f"{fwd}_backward", g, y, axis=axis, temperature=tau)
    jtg = np.einsum("...ij,...i->...j", J, np.moveaxis(g, axis, -1))
    np.testing.assert_allclose(np.moveaxis(dx, axis, -1), jtg, rtol=1e-12, atol=1e-14)


def test_jacobian_diagonal_is_exact_near_one(backend):
    """J_kk = s_k (1 - s_k) with 1 - s_k = -expm1(log_softmax_k): exact where s_k ~ 1."""
    x = np.array([0.0, -30.0, -31.0])
    J = _call(backend, "softmax_jacobian", x)
    sp = np.exp(-30.0) + np.exp(-31.0)
    want = (1 / (1 + sp)) * (sp / (1 + sp))
    assert J[0, 0] == pytest.approx(want, rel=1e-14)
    Jl = _call(backend, "log_softmax_jacobian", x)
    assert Jl[0, 0] == pytest.approx(sp / (1 + sp), rel=1e-14)


# ---- cross-entropy ---------------------------------------------------------------------------------------
def test_textbook_example(backend):
    """The README's example: logits [2, 3, 4], class 1 (its four-digit figures, and the
    closed form exp(x_j) / sum exp(x))."""
    x = np.array([[2.0, 3.0, 4.0]])
    loss, grad = _call(backend, "softmax_cross_entropy", x, np.array([1]), return_grad=True)
    p = _call(backend, "softmax", x)[0]
    np.testing.assert_allclose(p, [0.0900, 0.2447, 0.6652], atol=5e-5)
    np.testing.assert_allclose(grad[0], [0.0900306, -0.7552715, 0.6652410], atol=5e-8)
    closed = np.exp(x[0]) / np.exp(x[0]).sum()
    np.testing.assert_allclose(p, closed, rtol=1e-15)
    assert float(loss) == pytest.approx(-np.log(closed[1]), rel=1e-14)


@pytest.mark.parametrize("n", [2, 5, 100])
def test_uniform_logits_closed_form(backend, n):
    """Equal logits: loss = log(n) for any label and any smoothing; grad = 1/n - target."""
    x = np.zeros((3, n))
    labels = np.array([0, n - 1, 1])
    for eps in (0.0, 0.25):
        loss, grad = _call(backend, "softmax_cross_entropy", x, labels, label_smoothing=eps, reduction="none",
                           return_grad=True)
        np.testing.assert_allclose(loss, np.log(n), rtol=1e-14)
        target = np.full((3, n), eps / n)
        target[np.arange(3), labels] += 1 - eps
        np.testing.assert_allclose(grad, 1 / n - target, atol=1e-15)


def test_probability_targets_equal_to_softmax_have_zero_gradient(backend):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 6))
    p = _call(backend, "softmax", x)
    loss, grad = _call(backend, "softmax_cross_entropy", x, p, reduction="sum", return_grad=True)
    np.testing.assert_allclose(grad, 0, atol=1e-15)
    entropy = -np.sum(p * np.log(p))
    assert float(loss) == pytest.approx(entropy, rel=1e-13)


CE_VARIANTS = [
    {},
    {"reduction": "sum"},
    {"reduction": "none"},
    {"weight": np.array([0.5, 2.0, 1.0, 3.0, 0.25])},
    {"label_smoothing": 0.2},
    {"weight": np.array([0.5, 2.0, 1.0, 3.0, 0.25]), "label_smoothing": 0.1},
    {"temperature": 0.7},
    {"where": np.array([True, True, False, True, True])},
]


@pytest.mark.parametrize("probs", [False, True])
@pytest.mark.parametrize("kw", CE_VARIANTS, ids=[str(sorted(k)) for k in CE_VARIANTS])
def test_cross_entropy_gradient_matches_finite_differences(backend, kw, probs):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, 5))
    if probs:
        t = rng.random((4, 5))
        t /= t.sum(-1, keepdims=True)
    else:
        t = np.array([0, 3, -100, 4])
    loss, grad = _call(backend, "softmax_cross_entropy", x, t, return_grad=True, **kw)

    def total(v):
        return float(np.sum(_call(backend, "softmax_cross_entropy", v, t, **kw)))

    num = numeric_grad(total, x.copy())
    np.testing.assert_allclose(grad, num, **FD_TOL)


# ---- torch parity ----------------------------------------------------------------------------------------
def _torch():
    return pytest.importorskip("torch", reason="torch is not installed: parity with torch autograd is skipped")


@pytest.mark.parametrize("dim", [-1, 0, 1])
@pytest.mark.parametrize("fwd", ["softmax", "log_softmax"])
def test_backward_matches_torch(backend, fwd, dim):
    torch = _torch()
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 6, 3)) * 3
    g = rng.standard_normal(x.shape)
    xt = torch.tensor(x, requires_grad=True)
    yt = getattr(torch, fwd)(xt, dim=dim)
    yt.backward(torch.tensor(g))
    y = _call(backend, fwd, x, axis=dim)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-13, atol=1e-15)
    dx = _call(backend, f"{fwd}_backward", g, y, axis=dim)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-12, atol=1e-14)


TORCH_CE = [
    {},
    {"reduction": "sum"},
    {"reduction": "none"},
    {"weight": True},
    {"label_smoothing": 0.3},
    {"weight": True, "label_smoothing": 0.15},
    {"weight": True, "reduction": "none"},
    {"ignore_index": 2},
]


@pytest.mark.parametrize("probs", [False, True])
@pytest.mark.parametrize("kw", TORCH_CE, ids=[str(sorted(k)) for k in TORCH_CE])
def test_cross_entropy_matches_torch(backend, kw, probs):
    torch = _torch()
    F = torch.nn.functional
    if probs and "ignore_index" in kw:
        with pytest.raises(ValueError, match="ignore_index"):
            _call(backend, "softmax_cross_entropy", np.zeros((2, 3)), np.ones((2, 3)) / 3, ignore_index=2)
        return
    rng = np.random.default_rng(6)
    C = 5
    x = rng.standard_normal((3, C, 4)) * 2  # class axis 1, torch's N-d convention
    weight = rng.random(C) + 0.5
    if probs:
        t = rng.random((3, C, 4))
        t /= t.sum(1, keepdims=True)
        tt = torch.tensor(t)
    else:
        t = rng.integers(0, C, size=(3, 4))
        t[0, 0] = kw.get("ignore_index", -100)
        tt = torch.tensor(t)
    ours_kw = dict(kw)
    torch_kw = dict(kw)
    if kw.get("weight"):
        ours_kw["weight"] = weight
        torch_kw["weight"] = torch.tensor(weight)
    xt = torch.tensor(x, requires_grad=True)
    lt = F.cross_entropy(xt, tt, **torch_kw)
    lt.backward(torch.ones_like(lt))
    loss, grad = _call(backend, "softmax_cross_entropy", x, t, axis=1, return_grad=True, **ours_kw)
    np.testing.assert_allclose(loss, lt.detach().numpy(), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=1e-12, atol=1e-15)


def test_cross_entropy_float32_matches_torch(backend):
    torch = _torch()
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((64, 10)) * 5).astype(np.float32)
    t = rng.integers(0, 10, size=64)
    xt = torch.tensor(x, requires_grad=True)
    lt = torch.nn.functional.cross_entropy(xt, torch.tensor(t), label_smoothing=0.1)
    lt.backward()
    loss, grad = _call(backend, "softmax_cross_entropy", x, t, label_smoothing=0.1, return_grad=True)
    assert loss.dtype == np.float32 and grad.dtype == np.float32
    np.testing.assert_allclose(loss, lt.detach().numpy(), rtol=2e-6)
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=1e-5, atol=1e-8)
