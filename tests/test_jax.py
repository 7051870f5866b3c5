"""JAX arrays as users hold them: plain calls on the C core, and under jit, grad and vmap
(tracers) host callbacks whose derivatives are csoftmax's own -- checked against
jax.nn's functions and JAX's autodiff of them (also with traced labels, `where` and
weights, and grad of grad), against finite differences, and in fresh processes without
jax_enable_x64 (float32 everywhere, never a warning). The equivalence matrix, error
parity and gradient tests run the `jax` backend too (it is in the registry; the tests of
out= skip: JAX arrays are immutable)."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest

import csoftmax
from csoftmax import _registry

jax = pytest.importorskip("jax", reason="JAX is not installed: the jax backend's tests are skipped")
jnp = jax.numpy

pytestmark = pytest.mark.skipif(not jax.config.jax_enable_x64, reason="the suite runs JAX with jax_enable_x64 on")


def _x(*shape, seed=0, dtype=jnp.float64):
    return (jax.random.normal(jax.random.key(seed), shape) * 2).astype(dtype)


def _close(a, b, rtol=1e-12, atol=1e-14):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


# ---- plain calls ---------------------------------------------------------------------------------------
def test_plain_calls_return_jax_arrays_from_the_core():
    x = _x(5, 9)
    for op, ref in (("softmax", jax.nn.softmax), ("log_softmax", jax.nn.log_softmax)):
        r = getattr(csoftmax, op)(x, axis=0, temperature=0.5)
        assert isinstance(r, jax.Array) and r.dtype == x.dtype
        _close(r, ref(x / 0.5, axis=0))
        np.testing.assert_array_equal(np.asarray(r), getattr(csoftmax, op)(np.asarray(x), axis=0, temperature=0.5))
    _close(csoftmax.logsumexp(x, axis=1), jax.nn.logsumexp(x, axis=1))
    assert csoftmax.get_backend(x).name == "jax"
    assert _registry.fast_entry(type(x), "softmax") is not None
    for dtype in (jnp.float16, jnp.float32):
        assert csoftmax.softmax(x.astype(dtype)).dtype == dtype
    assert csoftmax.softmax(jnp.arange(4)).dtype == jnp.float64


def test_out_is_refused_jax_arrays_are_immutable():
    x = _x(3, 4)
    with pytest.raises(ValueError, match="out is read-only"):
        csoftmax.softmax(x, out=jnp.zeros((3, 4)))


# ---- transformations ------------------------------------------------------------------------------
@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_jit_grad_vmap_match_jax(op):
    x = _x(4, 6, 3)
    ref = getattr(jax.nn, op)
    G = _x(4, 6, 3, seed=1)
    for axis, tau in ((1, 1.0), (-1, 0.6), ((0, 2), 0.6)):
        f = jax.jit(lambda z, axis=axis, tau=tau: getattr(csoftmax, op)(z, axis=axis, temperature=tau))
        _close(f(x), ref(x / tau, axis=axis))
        ours = jax.grad(lambda z: (getattr(csoftmax, op)(z, axis=axis, temperature=tau) * G).sum())(x)
        theirs = jax.grad(lambda z: (ref(z / tau, axis=axis) * G).sum())(x)
        _close(ours, theirs)
    _close(jax.vmap(lambda z: getattr(csoftmax, op)(z, axis=0))(x), jax.vmap(lambda z: ref(z, axis=0))(x))
    _close(jax.vmap(jax.grad(lambda z: getattr(csoftmax, op)(z)[0, 1]))(x),
           jax.vmap(jax.grad(lambda z: ref(z)[0, 1]))(x))


def test_where_traced_and_under_vmap():
    x = _x(5, 8)
    mask = _x(5, 8, seed=2) > -0.7
    mask = mask.at[:, 0].set(True)
    fill = jnp.where(mask, x, -jnp.inf)
    f = jax.jit(lambda z, m: csoftmax.softmax(z, where=m))
    _close(f(x, mask), jax.nn.softmax(fill))
    gx = jax.grad(lambda z, m: (csoftmax.log_softmax(z, where=m) * jnp.where(m, 1.0, 0.0)).sum())(x, mask)
    gt = jax.grad(lambda z: (jnp.where(mask, jax.nn.log_softmax(jnp.where(mask, z, -jnp.inf)), 0.0)).sum())(x)
    _close(gx, gt)
    assert np.all(np.asarray(gx)[~np.asarray(mask)] == 0)
    row = jnp.array([True] * 6 + [False] * 2)  # a mask of fewer dimensions, under vmap
    _close(jax.vmap(lambda z: csoftmax.softmax(z, where=row))(x), jax.nn.softmax(jnp.where(row, x, -jnp.inf)))


@pytest.mark.parametrize("keepdims", [False, True])
def test_logsumexp_grad(keepdims):
    x = _x(4, 5, 3)
    for axis in ((1, None) if keepdims else ((0, 2),)):
        ours = jax.grad(lambda z: (csoftmax.logsumexp(z, axis=axis, keepdims=keepdims) ** 2).sum())(x)
        theirs = jax.grad(lambda z: (jax.nn.logsumexp(z, axis=axis, keepdims=keepdims) ** 2).sum())(x)
        _close(ours, theirs)


def _xent_reference(z, labels, w, eps, tau=1.0, reduction="mean"):
    """torch.nn.functional.cross_entropy's formula in jax.numpy (index targets)."""
    lp = jax.nn.log_softmax(z / tau, axis=-1)
    valid = labels != -100
    t = jnp.where(valid, labels, 0)
    w = jnp.ones(z.shape[-1], z.dtype) if w is None else w
    nll = -jnp.take_along_axis(lp, t[:, None], axis=1)[:, 0] * w[t]
    rows = jnp.where(valid, (1 - eps) * nll - eps * (lp * w).sum(-1) / z.shape[-1], 0.0)
    if reduction == "none":
        return rows
    return rows.sum() / jnp.where(valid, w[t], 0.0).sum() if reduction == "mean" else rows.sum()


@pytest.mark.parametrize("traced_labels", [False, True])
def test_cross_entropy_grad_with_labels_and_weights(traced_labels):
    x = _x(6, 5)
    labels = jnp.array([0, 4, -100, 2, 2, 1])
    w = jnp.linspace(0.5, 2.0, 5)
    cases = ((0.2, 0.7, "mean"), (0.0, 1.0, "none")) if traced_labels else ((0.0, 1.0, "mean"), (0.1, 1.0, "sum"))
    for eps, tau, reduction in cases:
        def ours(z, ww, lab):
            loss = csoftmax.softmax_cross_entropy(z, lab, weight=ww, label_smoothing=eps, temperature=tau,
                                                  reduction=reduction)
            return (loss * jnp.arange(1.0, 1.0 + loss.size).reshape(loss.shape)).sum()

        def theirs(z, ww, lab):
            loss = _xent_reference(z, lab, ww, eps, tau, reduction)
            return (loss * jnp.arange(1.0, 1.0 + loss.size).reshape(loss.shape)).sum()

        if traced_labels:
            g_ours = jax.jit(jax.grad(ours, argnums=(0, 1)))(x, w, labels)
        else:
            g_ours = jax.grad(lambda z, ww: ours(z, ww, labels), argnums=(0, 1))(x, w)
        g_theirs = jax.grad(theirs, argnums=(0, 1))(x, w, labels)
        for a, b in zip(g_ours, g_theirs):
            _close(a, b)
        _close(ours(x, w, labels), theirs(x, w, labels))


def test_cross_entropy_under_jit_with_concrete_labels():
    """Labels closed over by a jitted function are concrete, but every operation on them
    inside the trace is traced: the checks then wait for the callback."""
    x = _x(6, 5)
    labels = jnp.array([0, 4, -100, 2, 2, 1])
    loss, g = jax.jit(jax.value_and_grad(lambda z: csoftmax.softmax_cross_entropy(z, labels, label_smoothing=0.1)))(x)
    want_loss, want_g = jax.value_and_grad(lambda z: _xent_reference(z, labels, None, 0.1))(x)
    _close(loss, want_loss)
    _close(g, want_g)


def test_cross_entropy_grad_with_probability_targets():
    x = _x(4, 6)
    q = jax.nn.softmax(_x(4, 6, seed=3))
    w = jnp.linspace(0.5, 2.0, 6)

    def theirs(z, qq, ww, eps=0.2):
        lp = jax.nn.log_softmax(z)
        qs = (1 - eps) * qq + eps / z.shape[-1]
        return -(qs * ww * lp).sum() / z.shape[0]

    ours = jax.grad(lambda z, qq, ww: csoftmax.softmax_cross_entropy(z, qq, weight=ww, label_smoothing=0.2),
                    argnums=(0, 1, 2))(x, q, w)
    for a, b in zip(ours, jax.grad(theirs, argnums=(0, 1, 2))(x, q, w)):
        _close(a, b)


def test_cross_entropy_under_vmap_with_batched_weights():
    x = jnp.stack([_x(4, 5), _x(4, 5, seed=1)])
    labels = jnp.array([[0, 1, 4, 2], [3, 3, -100, 0]])
    w = jnp.stack([jnp.linspace(0.5, 2.0, 5), jnp.linspace(2.0, 1.0, 5)])
    got = jax.vmap(lambda z, lab, ww: csoftmax.softmax_cross_entropy(z, lab, weight=ww))(x, labels, w)
    want = jax.vmap(lambda z, lab, ww: _xent_reference(z, lab, ww, 0.0))(x, labels, w)
    _close(got, want)


def test_grad_of_grad():
    """Second derivatives go through the backward passes' own derivatives (reverse over
    reverse; custom_vjp has no forward mode, so jax.hessian is jacfwd(jacrev) and is not
    available)."""
    x = _x(6)
    for op in ("softmax", "log_softmax"):
        ours = jax.jacrev(jax.jacrev(lambda z: getattr(csoftmax, op)(z, temperature=0.8)[2]))(x)
        theirs = jax.hessian(lambda z: getattr(jax.nn, op)(z / 0.8)[2])(x)
        _close(ours, theirs)


def test_jacobians_traced_and_differentiated():
    x = _x(3, 4)
    _close(jax.jit(lambda z: csoftmax.softmax_jacobian(z, axis=1))(x), jax.vmap(jax.jacobian(jax.nn.softmax))(x))
    ours = jax.grad(lambda z: csoftmax.log_softmax_jacobian(z, axis=1)[1].sum())(x)
    theirs = jax.grad(lambda z: jax.jacobian(jax.nn.log_softmax)(z[1]).sum())(x)
    _close(ours, theirs)


def test_gradients_against_finite_differences():
    from jax.test_util import check_grads

    x = _x(3, 5)
    check_grads(lambda z: csoftmax.softmax(z, axis=0, temperature=0.7), (x,), order=2, modes=["rev"])
    check_grads(lambda z: csoftmax.logsumexp(z, axis=1), (x,), order=2, modes=["rev"])
    labels = jnp.array([0, 4, 1])  # check_grads evaluates at NumPy points: the logits are made JAX arrays
    check_grads(lambda z: csoftmax.softmax_cross_entropy(jnp.asarray(z), labels, label_smoothing=0.1), (x,),
                order=1, modes=["rev"])


def test_bad_labels_under_jit_are_reported_with_the_message():
    x = _x(4, 6)
    f = jax.jit(lambda z, lab: csoftmax.softmax_cross_entropy(z, lab))
    with pytest.raises(Exception, match=r"labels contains 9, outside \[0, 6\)"):
        jax.block_until_ready(f(x, jnp.array([0, 9, 1, 1])))
    with pytest.raises(ValueError, match=r"labels contains 9"):  # concrete labels: at the call
        jax.grad(lambda z: csoftmax.softmax_cross_entropy(z, jnp.array([0, 9, 1, 1])))(x)


# ---- without jax_enable_x64, in fresh processes -----------------------------------------------------
def _run(code):
    env = dict(os.environ, JAX_ENABLE_X64="0", JAX_PLATFORMS="cpu")
    res = subprocess.run([sys.executable, "-W", "error", "-c", textwrap.dedent(code)], capture_output=True, text=True,
                         env=env, cwd=tempfile.gettempdir())
    assert res.returncode == 0, res.stderr
    return res.stdout.split()


def test_without_x64_everything_is_float32_and_nothing_warns():
    out = _run(
        """
        import jax, jax.numpy as jnp, csoftmax
        x = jnp.arange(12.0).reshape(3, 4) / 5
        lab = jnp.array([0, 3, 1])
        w = jnp.array([1, 2, 3, 4])  # integer weights become float32, not float64
        res = [csoftmax.softmax(x), csoftmax.log_softmax(x, temperature=0.5), csoftmax.logsumexp(x),
               csoftmax.softmax(jnp.arange(4)), csoftmax.softmax_jacobian(x),
               csoftmax.softmax_cross_entropy(x, lab, weight=w),
               jax.jit(lambda z: csoftmax.softmax_cross_entropy(z, lab, weight=w))(x),
               jax.grad(lambda z: csoftmax.softmax_cross_entropy(z, lab, label_smoothing=0.1))(x),
               jax.vmap(csoftmax.log_softmax)(x)]
        print(*sorted({str(r.dtype) for r in res}))
        try:
            csoftmax.softmax(x, dtype="float64")
        except TypeError as exc:
            print("TypeError" if "float64" in str(exc) else exc)
        """
    )
    assert out == ["float32", "TypeError"]


def test_first_call_in_a_fresh_process():
    out = _run(
        """
        import jax.numpy as jnp, numpy as np, csoftmax
        x = jnp.array([1.0, 2.0, 3.0])
        print(csoftmax.get_backend(x).name, np.round(np.asarray(csoftmax.softmax(x)), 6).tolist())
        """
    )
    assert out[0] == "jax"
    np.testing.assert_allclose(eval("".join(out[1:])), [0.090031, 0.244728, 0.665241])


# ---- GPU arrays ----------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_gpu_arrays_through_cupy():
    gpus = [d for d in jax.devices() if d.platform == "gpu"] if jax.default_backend() == "gpu" else []
    if not gpus:
        pytest.skip("no GPU for JAX here: its DLPack path to CuPy is not tested")
    pytest.importorskip("cupy", reason="CuPy is not installed")
    x = jax.device_put(_x(64, 100, dtype=jnp.float32), gpus[0])
    _close(csoftmax.softmax(x), jax.nn.softmax(x), rtol=2e-6, atol=1e-7)
