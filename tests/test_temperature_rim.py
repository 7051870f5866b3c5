"""Every temperature in (0, inf] -- not only the comfortable middle: the results are the
formula's exact values for the input as stored (computed with mpmath, whose exponent range
is unbounded), rounded to the result dtype, for temperatures where 1/tau overflows, where
it falls into the subnormals or rounds to zero in float, and everything between; every op
that takes a temperature, every dtype, every backend."""
from __future__ import annotations

import math
import warnings

import mpmath as mp
import numpy as np
import pytest

from helpers import call


TAUS = [5e-324, 1e-320, 5e-309, 2e-308, 1e-300, 1e-45, 1e-40, 3e-39, 1e-38, 1e-30, 1e-3, 1.0, 7.5, 1e30, 1e37, 9e37,
        1e38, 3.5e38, 1e39, 1e45, 1e300, 1.7e308, math.inf]
DTYPES = ["float16", "float32", "float64"]
ULPS = 4

mp.mp.dps = 40


def _rows(dtype):
    """Rows that stress the scaling: ties at the max, -inf entries, the smallest spacing of
    the dtype, wide values."""
    fi = np.finfo(dtype)
    tiny = float(fi.smallest_subnormal)
    big = float(fi.max)
    rows = [
        [0.0, -tiny, -2 * tiny, 1.0],
        [1.0, 1.0, -np.inf, 0.5],
        [big / 2, -big / 2, 0.0, big / 2],
        [-3.0, 2.0, 2.0 - float(fi.eps) * 2, -np.inf],
    ]
    return np.array(rows, dtype=dtype)


def _exact_softmax(row, tau):
    """(softmax, log_softmax) of one row at temperature tau, as mpf lists (tau = inf: the
    limit, uniform over the entries above -inf)."""
    xs = [mp.mpf(float(v)) if np.isfinite(v) else None for v in row]
    if math.isinf(tau):
        live = [v is not None for v in xs]
        k = sum(live)
        soft = [mp.mpf(1) / k if ok else mp.mpf(0) for ok in live]
        logs = [-mp.log(k) if ok else mp.ninf for ok in live]
        return soft, logs
    t = mp.mpf(tau)
    m = max(v for v in xs if v is not None)
    d = [(v - m) / t if v is not None else mp.ninf for v in xs]
    lse = mp.log(mp.fsum(mp.exp(v) for v in d if v != mp.ninf))
    soft = [mp.exp(v - lse) if v != mp.ninf else mp.mpf(0) for v in d]
    logs = [v - lse for v in d]
    return soft, logs


def _to(v, dtype):
    if v == mp.ninf:
        return -np.inf
    if v == mp.inf:
        return np.inf
    with np.errstate(over="ignore", under="ignore"):
        return np.array(float(v)).astype(dtype)  # float() rounds to double first: exact enough here


def _check(got, want, dtype, label):
    got = np.asarray(got, dtype=np.float64)
    want = np.array([float(_to(v, dtype)) for v in want], dtype=np.float64)
    assert not np.isnan(got).any(), f"{label}: NaN in {got}"
    same_inf = np.isinf(want) & (got == want)
    fin = ~np.isinf(want)
    assert np.all(same_inf | fin), f"{label}: got {got}, want {want}"
    with np.errstate(over="ignore"):  # the spacing at the largest finite value is inf
        spacing = np.spacing(np.abs(want[fin]).astype(dtype)).astype(np.float64)
    tiny = float(np.finfo(dtype).smallest_subnormal)
    err = np.abs(got[fin] - want[fin])
    assert np.all(err <= ULPS * np.maximum(spacing, tiny)), f"{label}: got {got}, want {want}"


@pytest.mark.parametrize("tau", TAUS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward(backend, dtype, tau):
    x = _rows(dtype)
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        soft = call(backend, "softmax", x, temperature=tau)
        logs = call(backend, "log_softmax", x, temperature=tau)
    for i, row in enumerate(x):
        s, l = _exact_softmax(row, tau)
        _check(soft[i], s, dtype, f"softmax {dtype} tau={tau} row {row}")
        _check(logs[i], l, dtype, f"log_softmax {dtype} tau={tau} row {row}")


def _exact_backward(op, g, y, tau):
    """The vector-Jacobian product for the given g and y (as stored), exactly."""
    gs = [mp.mpf(float(v)) for v in g]
    ys = [mp.mpf(float(v)) if np.isfinite(v) else v for v in y]
    if math.isinf(tau):
        return [mp.mpf(0)] * len(gs)
    t = mp.mpf(tau)
    if op == "softmax_backward":
        s = mp.fsum(a * b for a, b in zip(gs, ys))
        return [b * (a - s) / t for a, b in zip(gs, ys)]
    s = mp.fsum(gs)
    return [(a - (mp.exp(b) if b != -np.inf else 0) * s) / t for a, b in zip(gs, ys)]


@pytest.mark.parametrize("tau", TAUS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["softmax_backward", "log_softmax_backward"])
def test_backward(backend, op, dtype, tau):
    rng = np.random.default_rng(1)
    fwd = op.removesuffix("_backward")
    x = np.array([[0.5, -1.0, 2.0, 0.0], [1.0, 1.0, -np.inf, 0.25]])
    y = call("reference", fwd, x).astype(dtype)
    g = rng.standard_normal(x.shape).astype(dtype)
    g[1, 3] = 0.0
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        got = call(backend, op, g, y, temperature=tau)
    for i in range(x.shape[0]):
        want = _exact_backward(op, g[i], y[i], tau)
        _check(got[i], want, dtype, f"{op} {dtype} tau={tau} g={g[i]} y={y[i]}")


@pytest.mark.parametrize("tau", TAUS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["softmax_jacobian", "log_softmax_jacobian"])
def test_jacobian(backend, op, dtype, tau):
    x = _rows(dtype)[:2]
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        J = call(backend, op, x, temperature=tau)
    for i, row in enumerate(x):
        s, _ = _exact_softmax(row, tau)
        t = mp.inf if math.isinf(tau) else mp.mpf(tau)
        for a in range(len(row)):
            want = [((1 if a == b else 0) - s[b]) * (s[a] if op == "softmax_jacobian" else 1) / t
                    for b in range(len(row))]
            _check(J[i, a], want, dtype, f"{op} {dtype} tau={tau} row {row} i={a}")


@pytest.mark.parametrize("tau", TAUS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy(backend, dtype, tau):
    x = _rows(dtype)
    labels = np.array([0, 1, 2, 1])
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        loss, grad = call(backend, "softmax_cross_entropy", x, labels, reduction="none", temperature=tau,
                          return_grad=True)
    t = mp.inf if math.isinf(tau) else mp.mpf(tau)
    for i, row in enumerate(x):
        s, l = _exact_softmax(row, tau)
        _check([loss[i]], [-l[labels[i]]], dtype, f"loss {dtype} tau={tau} row {row}")
        want = [(s[j] - (1 if j == labels[i] else 0)) / t for j in range(len(row))]
        _check(grad[i], want, dtype, f"gradient {dtype} tau={tau} row {row}")
