"""A seeded fuzzer over the whole argument space: shapes (empty and 0-d included), dtypes,
memory layouts, masks, temperatures from 5e-324 to +inf, out= views inside a larger
buffer, special values -- every op, every backend (each instruction set of the C core).

Each case checks that the backend
  * agrees with the oracle (the reference, or for the reference the C core; float64 copies)
    and, for softmax and log_softmax, with an extended-precision oracle (numpy.longdouble)
    within the accuracy contract;
  * raises exactly what the reference raises (type and message), for bad arguments too;
  * leaves its inputs untouched, and writes no byte of an out= buffer outside the view;
  * warns nowhere (helpers.strict()).
The budget: CSOFTMAX_FUZZ_EXAMPLES examples per test (default 25: seconds; CI runs more),
CSOFTMAX_FUZZ_SEED picks another deterministic campaign. A failure prints the case as a
Python snippet that reproduces it.
"""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, note, seed, settings
from hypothesis import strategies as st

import csoftmax
from helpers import (
    LAYOUTS,
    Family,
    assert_matches,
    forward_atol,
    mutable,
    ops_of,
    oracle,
    oracle_backend,
    result_dtype,
    strict,
    to_backend,
    to_numpy,
    with_layout,
)

EXAMPLES = int(os.environ.get("CSOFTMAX_FUZZ_EXAMPLES", "25"))
SEED = int(os.environ.get("CSOFTMAX_FUZZ_SEED", "20261201"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])
LD_EXACT = np.finfo(np.longdouble).nmant >= 63
SENTINEL = -12345.0

# ---- the argument space ---------------------------------------------------------------------
shapes = st.one_of(
    st.lists(st.integers(0, 9), min_size=0, max_size=4).map(tuple),
    st.sampled_from([(33,), (130,), (3, 65), (2, 2, 257), (1100,)]),  # past the vector widths and short-row tiers
)
temperatures = st.one_of(
    st.just(1.0),
    st.floats(1e-3, 1e3),
    st.sampled_from([5e-324, 1e-310, 1e-300, 1e-40, 1e-30, 1e30, 1e38, 1e39, 1e300, math.inf]),
)
bad_temperatures = st.sampled_from([0.0, -1.0, math.nan, -math.inf])


@st.composite
def values(draw, shape, dtype):
    """Values as stored in dtype: normal at several scales, with ties, +-inf, NaN, the
    dtype's extremes and subnormals mixed in."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    size = math.prod(shape)
    dt = np.dtype(dtype)
    if dt.kind in "iub":
        return rng.integers(-5, 6, size=shape).astype(dt) if dt.kind != "b" else rng.random(shape) < 0.5
    scale = draw(st.sampled_from([1.0, 30.0, 300.0, 1e-3]))
    v = rng.standard_normal(size) * scale
    fi = np.finfo(dt)
    specials = [np.nan, np.inf, -np.inf, float(fi.smallest_subnormal), 0.0, -0.0, float(fi.max), -float(fi.max)]
    rate = draw(st.sampled_from([0.0, 0.0, 0.05, 0.3]))
    hit = rng.random(size) < rate
    v[hit] = rng.choice(specials, size=int(hit.sum()))
    if draw(st.booleans()) and size:
        v[rng.integers(0, size, size=max(1, size // 4))] = v[0]  # ties
    with np.errstate(all="ignore"):
        return v.reshape(shape).astype(dt)


@st.composite
def axes(draw, ndim, single=False):
    if single:
        return draw(st.integers(-ndim, ndim - 1)) if ndim else 0
    if ndim == 0:
        return draw(st.sampled_from([-1, 0, None, ()]))
    opts = [st.integers(-ndim, ndim - 1), st.just(None),
            st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True).map(tuple)]
    return draw(st.one_of(*opts))


@st.composite
def bad_axes(draw, ndim):
    return draw(st.sampled_from([ndim, -ndim - 1, 2**40, (0, 0) if ndim else (0, 0), 1.5, "0"]))


@st.composite
def masks(draw, shape):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["none", "none", "full", "trailing", "rows"]))
    if kind == "none" or not shape:
        return None
    if kind == "full":
        return rng.random(shape) < 0.6
    if kind == "trailing":
        return rng.random(shape[-1:]) < 0.6
    return rng.random(shape[:-1] + (1,)) < 0.6


def _repro(op, arrays, kw, layout):
    with np.printoptions(threshold=10**6, floatmode="unique"):
        args = ", ".join(f"np.{a!r}" if isinstance(a, np.ndarray) else repr(a) for a in arrays)
        kws = ", ".join(f"{k}=np.{v!r}" if isinstance(v, np.ndarray) else f"{k}={v!r}" for k, v in kw.items())
    return f"csoftmax.{op}({args}, {kws})  # inputs laid out as {layout!r}"


# ---- running one case -----------------------------------------------------------------------
def _outcome(fn):
    try:
        return "ok", fn()
    except Exception as exc:  # the message names the input's library; compare the rest
        msg = str(exc)
        for lib in ("numpy.", "cupy.", "torch.", "jax."):
            msg = msg.replace(lib, "<lib>.")
        return "error", (type(exc), msg)


def _run(backend, op, arrays, kw, layout, out_shape=None, out_dtype=None):
    """The backend's outcome, with the input, out= and warning checks done on the way."""
    note(_repro(op, arrays, kw, layout) + ("" if out_shape is None else f"; out= a strided view of shape {out_shape}"))
    arrays = [np.asarray(a) if isinstance(a, np.generic) else a for a in arrays]  # NumPy scalars as 0-d arrays
    laid = [with_layout(a, layout) if isinstance(a, np.ndarray) else a for a in arrays]
    b_args = [to_backend(backend, a) if isinstance(a, np.ndarray) else a for a in laid]
    b_kw = {k: to_backend(backend, v) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
    before = [to_numpy(backend, b).copy() if isinstance(a, np.ndarray) else None for a, b in zip(laid, b_args)]
    buf = view = None
    if out_shape is not None:
        buf = np.full(tuple(2 * s + 1 for s in out_shape), SENTINEL, dtype=out_dtype)
        view = buf[(Ellipsis,) + tuple(slice(1, None, 2) for _ in out_shape)]  # a view, also 0-d
        b_kw["out"] = to_backend(backend, view)
    def run():  # a lazy backend's errors about values arrive when it computes: part of the call's outcome
        res = getattr(csoftmax, op)(*b_args, backend=backend, **b_kw)
        return tuple(_computed(backend, r) for r in res) if isinstance(res, tuple) else _computed(backend, res)

    with strict():
        status, res = _outcome(run)
    for a, b in zip(b_args, before):
        if isinstance(b, np.ndarray):
            np.testing.assert_array_equal(to_numpy(backend, a), b, err_msg=f"{op} changed an input")
    if status == "ok" and view is not None:
        if isinstance(b_kw["out"], np.ndarray):
            gaps = np.ones(buf.shape, dtype=bool)
            gaps[tuple(slice(1, None, 2) for _ in out_shape)] = False
            assert np.all(buf[gaps] == SENTINEL), f"{op} wrote outside its out= view"
            res = view
        else:
            res = b_kw["out"]  # the backend's own array: converted below
    if status == "ok":
        res = tuple(_as_numpy(backend, r) for r in res) if isinstance(res, tuple) else _as_numpy(backend, res)
    return status, res


def _computed(backend, r):
    """A lazy (Dask) result computed into NumPy; any other result as it is."""
    return to_numpy(backend, r) if hasattr(r, "dask") else r


def _as_numpy(backend, r):
    return r if r is None or isinstance(r, np.ndarray) else to_numpy(backend, r)


def _oracle_outcome(backend, op, arrays, kw):
    conv = []
    for i, a in enumerate(arrays):
        keep = not isinstance(a, np.ndarray) or (op == "softmax_cross_entropy" and i == 1 and a.dtype.kind in "iu")
        conv.append(a if keep else np.asarray(a, dtype=np.float64))
    kw = {k: (np.asarray(v, dtype=np.float64) if k == "weight" and isinstance(v, np.ndarray) else v)
          for k, v in kw.items()}
    with np.errstate(all="ignore"):
        return _outcome(lambda: getattr(csoftmax, op)(*conv, backend=oracle_backend(backend), **kw))


def _ld_check(op, x, axis, tau, where, got, rdt):
    """softmax / log_softmax against an extended-precision oracle, on the slices whose
    unmasked entries are all finite: within 4 ulp (float16: 1 ulp)."""
    if not LD_EXACT or op not in ("softmax", "log_softmax") or x.dtype.kind != "f" or x.size == 0 or x.ndim == 0:
        return
    if axis is None or isinstance(axis, tuple):
        return
    ax = axis % x.ndim
    xl = np.moveaxis(x.astype(np.longdouble), ax, -1).reshape(-1, x.shape[ax])
    gl = np.moveaxis(np.asarray(got, dtype=np.longdouble), ax, -1).reshape(xl.shape)
    ml = None if where is None else np.moveaxis(np.broadcast_to(where, x.shape), ax, -1).reshape(xl.shape)
    limit = 1.0 if rdt == np.float16 else 4.0
    with np.errstate(all="ignore"):
        for r in range(xl.shape[0]):
            row, live = xl[r], (np.ones(xl.shape[1], bool) if ml is None else ml[r])
            if not live.any() or not np.all(np.isfinite(row[live])) or math.isinf(tau):
                continue
            m = row[live].max()
            d = np.where(live, (row - m) / np.longdouble(tau), -np.inf)
            e = np.exp(d)
            k = int(np.argmax(np.where(live, row, -np.inf)))
            s_rest = np.sum(np.delete(e, k))  # S': the max entry left out, not subtracted
            exact = e / (1 + s_rest) if op == "softmax" else d - np.log1p(s_rest)
            if op == "log_softmax":
                exact[k] = -np.log1p(s_rest)
            fin = np.isfinite(exact.astype(rdt))
            spacing = np.maximum(np.spacing(np.abs(exact[fin]).astype(rdt)).astype(np.longdouble),
                                 np.longdouble(np.finfo(rdt).smallest_subnormal))
            err = np.abs(gl[r][fin] - exact[fin]) / spacing
            assert np.all(err <= limit), f"{op}: {float(err.max()):.2f} ulp against the extended-precision oracle"


def _compare(backend, op, arrays, kw, layout, rdt, out_shape=None):
    got = _run(backend, op, arrays, kw, layout, out_shape, rdt if out_shape is not None else None)
    want = _oracle_outcome(backend, op, arrays, kw)
    assert got[0] == want[0], f"{op}: {backend} {got[0]} ({got[1]!r:.200}), the oracle {want[0]} ({want[1]!r:.200})"
    if got[0] == "error":
        assert got[1] == want[1], f"{op}: {backend} raised {got[1]}, the oracle {want[1]}"
        return None
    return got[1], want[1]


# ---- the tests --------------------------------------------------------------------------------
DTYPES = st.sampled_from(["float16", "float32", "float64"])


@seed(SEED)
@SETTINGS
@given(data=st.data())
def test_fuzz_forward(backend, data):
    op = data.draw(st.sampled_from(ops_of(Family.FORWARD)), label="op")
    dtype = data.draw(st.one_of(DTYPES, st.sampled_from(["int64", "bool"])), label="dtype")
    shape = data.draw(shapes, label="shape")
    x = data.draw(values(shape, dtype), label="x")
    bad = data.draw(st.sampled_from([None] * 8 + ["axis", "temperature"]), label="bad")
    axis = data.draw(bad_axes(len(shape)) if bad == "axis" else axes(len(shape)), label="axis")
    kw = {"axis": axis}
    if op != "logsumexp":
        kw["temperature"] = data.draw(bad_temperatures if bad == "temperature" else temperatures, label="tau")
    else:
        kw["keepdims"] = data.draw(st.booleans(), label="keepdims")
    where = data.draw(masks(shape), label="where")
    if where is not None:
        kw["where"] = where
    layout = data.draw(st.sampled_from(LAYOUTS), label="layout")
    rdt = result_dtype(dtype)
    out_shape = None
    if op != "logsumexp" and bad is None and mutable(backend) and data.draw(st.booleans(), label="out="):
        out_shape = x.shape
    res = _compare(backend, op, [x], kw, layout, rdt, out_shape)
    if res is None:
        return
    got, want = res
    atol = forward_atol(op, x, rdt) if op == "logsumexp" else None
    assert_matches(got, want, rdt, f"{op} {dtype} {shape} {kw}", atol=atol)
    _ld_check(op, x, axis, kw.get("temperature", 1.0), where, got, rdt)


@seed(SEED)
@SETTINGS
@given(data=st.data())
def test_fuzz_backward(backend, data):
    op = data.draw(st.sampled_from(ops_of(Family.BACKWARD)), label="op")
    fwd = csoftmax._ops.BY_NAME[op].forward
    dtype = data.draw(DTYPES, label="dtype")
    shape = data.draw(shapes, label="shape")
    axis = data.draw(axes(len(shape)), label="axis")
    x = data.draw(values(shape, "float64"), label="x")
    with np.errstate(all="ignore"):
        y = np.asarray(oracle(fwd, x, axis=axis)).astype(dtype)
    g = data.draw(values(shape, dtype), label="g")
    kw = {"axis": axis, "temperature": data.draw(temperatures, label="tau")}
    where = data.draw(masks(shape), label="where")
    if where is not None:
        kw["where"] = where
    layout = data.draw(st.sampled_from(LAYOUTS), label="layout")
    out_shape = shape if mutable(backend) and data.draw(st.booleans(), label="out=") else None
    res = _compare(backend, op, [g, y], kw, layout, np.dtype(dtype), out_shape)
    if res is None:
        return
    got, want = res
    rtol = {"float16": 2e-3, "float32": 4e-6, "float64": 1e-14}[dtype]
    with np.errstate(all="ignore"):  # as the matrix: errors relative to the gradients' size (g - sum cancels)
        ga = np.abs(g.astype(np.float64))
        scale = float(np.max(ga[np.isfinite(ga)], initial=0.0)) + 1.0
        atol = rtol * scale / kw["temperature"]
    if not atol < float(np.finfo(dtype).max):
        return  # the contract's bound, |g| / tau, lies beyond the dtype: no value to hold it to
    assert_matches(got, want, dtype, f"{op} {dtype} {shape} {kw}", rtol=rtol, atol=atol)


@seed(SEED)
@SETTINGS
@given(data=st.data())
def test_fuzz_jacobian(backend, data):
    op = data.draw(st.sampled_from(ops_of(Family.JACOBIAN)), label="op")
    dtype = data.draw(DTYPES, label="dtype")
    shape = data.draw(st.lists(st.integers(0, 6), min_size=1, max_size=3).map(tuple), label="shape")
    x = data.draw(values(shape, dtype), label="x")
    kw = {"axis": data.draw(axes(len(shape), single=True), label="axis"),
          "temperature": data.draw(temperatures, label="tau")}
    layout = data.draw(st.sampled_from(LAYOUTS), label="layout")
    res = _compare(backend, op, [x], kw, layout, np.dtype(dtype))
    if res is None:
        return
    got, want = res
    assert_matches(got, want, dtype, f"{op} {dtype} {shape} {kw}",
                   atol={"float16": 1e-3, "float32": 1e-7, "float64": 1e-15}[dtype])


@seed(SEED)
@SETTINGS
@given(data=st.data())
def test_fuzz_cross_entropy(backend, data):
    op = data.draw(st.sampled_from(ops_of(Family.CROSS_ENTROPY)), label="op")
    dtype = data.draw(DTYPES, label="dtype")
    shape = data.draw(st.lists(st.integers(1, 7), min_size=1, max_size=3).map(tuple), label="shape")
    axis = data.draw(axes(len(shape), single=True), label="axis")
    ax = axis % len(shape)
    n = shape[ax]
    rows = tuple(s for i, s in enumerate(shape) if i != ax)
    x = data.draw(values(shape, dtype), label="x")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="rng"))
    if data.draw(st.booleans(), label="probabilities"):
        t = rng.random(shape)
        t = (t / t.sum(axis=ax, keepdims=True)).astype(dtype)
    else:
        t = rng.integers(-1 if data.draw(st.booleans(), label="a bad label") else 0, n, size=rows)
        if t.size and data.draw(st.booleans(), label="ignored"):
            t.reshape(-1)[0] = -100
    kw = {"axis": axis, "temperature": data.draw(temperatures, label="tau"),
          "reduction": data.draw(st.sampled_from(["mean", "sum", "none"]), label="reduction"),
          "label_smoothing": data.draw(st.sampled_from([0.0, 0.1, 1.0]), label="eps"), "return_grad": True}
    if data.draw(st.booleans(), label="weight"):
        kw["weight"] = rng.random(n) + 0.25
    layout = data.draw(st.sampled_from(["C", "F", "negative", "strided"]), label="layout")
    res = _compare(backend, op, [x, t], kw, layout, np.dtype(dtype))
    if res is None:
        return
    (loss, grad), (want_loss, want_grad) = res
    rtol = {"float16": 3e-3, "float32": 1e-5, "float64": 1e-13}[dtype]
    with np.errstate(all="ignore"):
        wl = np.abs(np.asarray(want_loss, dtype=np.float64))
        scale = 1.0 + float(np.max(wl[np.isfinite(wl)], initial=0.0))
        tau = kw["temperature"]
        gatol = rtol / tau if math.isfinite(tau) and 1 / tau < 1e300 else None
    assert_matches(loss, want_loss, dtype, f"loss {dtype} {shape} {kw}", rtol=rtol, atol=rtol * scale)
    assert_matches(grad, want_grad, dtype, f"gradient {dtype} {shape} {kw}", rtol=rtol, atol=gatol)
