"""The equivalence matrix: every backend x op x dtype x shape x axis x layout x special
values, each compared with an oracle on float64 copies of the inputs -- the reference
backend, and for the reference backend itself the C core (helpers.oracle_backend), so
that every row compares two independent implementations.

Arrays come from helpers.nasty_arrays (odd tails around every vector width, 0-d, empty,
NaN, +-inf, all -inf rows, ties, values near the dtype's limits, subnormals); layouts from
helpers.with_layout (C, Fortran, strided, negative strides, read-only, byte-swapped,
misaligned). Backends come from the registry and ops from the op table (by family), so
a new backend or op joins the matrix by being registered or listed.
"""
from __future__ import annotations

import zlib

import numpy as np
import pytest

import csoftmax
import helpers
from helpers import (
    LAYOUTS,
    SHAPES,
    VALUE_KINDS,
    Family,
    assert_matches,
    axes_for,
    call,
    forward_atol,
    nasty_arrays,
    oracle,
    ops_of,
    reduced_axes,
    result_dtype,
    to_backend,
    to_numpy,
    values,
    with_layout,
)

FORWARD = ops_of(Family.FORWARD)
ELEMENTWISE = tuple(op for op in FORWARD if op != "logsumexp")  # results of x's shape
BACKWARD = {op.name: op.forward for op in csoftmax._ops.of_family(Family.BACKWARD)}
JACOBIAN = ops_of(Family.JACOBIAN)
CROSS_ENTROPY = ops_of(Family.CROSS_ENTROPY)
DTYPES = ("float16", "float32", "float64", "int64")
FLOAT_DTYPES = ("float16", "float32", "float64")

_oracle_cache: dict = {}


def _rng(*key):
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _oracle(key, op, *arrays, against=None, **kw):
    key = (key, helpers.oracle_backend(against))
    if key not in _oracle_cache:
        _oracle_cache[key] = np.asarray(oracle(op, *arrays, against=against, **kw))
    return _oracle_cache[key]


def _kinds(dtype):
    return VALUE_KINDS if np.dtype(dtype).kind == "f" else ("normal",)


# ---- forward ops: values x axes ----------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", FORWARD)
def test_forward_values(backend, op, dtype):
    rng = _rng("values", op, dtype)
    rdt = result_dtype(dtype)
    for label, x in nasty_arrays(dtype, rng, kinds=_kinds(dtype)):
        for axis in axes_for(x.ndim):
            want = _oracle(("v", op, dtype, label, axis), op, x, axis=axis, against=backend)
            got = call(backend, op, x, axis=axis)
            assert_matches(got, want, rdt, f"{op} {dtype} {label} axis={axis}", atol=forward_atol(op, x, rdt))


# ---- forward ops: memory layouts --------------------------------------------------------------
LAYOUT_SHAPES = [(), (9,), (3, 17), (20, 7), (4, 5, 16), (2, 3, 4, 5)]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", FORWARD)
def test_forward_layouts(backend, op, dtype, layout):
    rng = _rng("layouts", op, dtype, layout)
    rdt = result_dtype(dtype)
    for shape in LAYOUT_SHAPES:
        for kind in ("normal", "nan") if np.dtype(dtype).kind == "f" else ("normal",):
            x = values(shape, kind, dtype, rng).astype(dtype, copy=False)
            xl = with_layout(x, layout)
            for axis in axes_for(x.ndim):
                want = oracle(op, x, axis=axis, against=backend)
                got = call(backend, op, xl, axis=axis)
                assert_matches(got, want, rdt, f"{op} {dtype} {layout} {shape}/{kind} axis={axis}",
                               atol=forward_atol(op, x, rdt))


# ---- forward ops: where masks -----------------------------------------------------------------
def _masks(shape, axes, rng):
    """Masks broadcastable to shape: full random, constant along the softmax axes (whole
    slices in or out), one slice fully masked, a trailing-axes mask, all-True."""
    if not shape:
        yield "scalar-true", np.array(True)
        yield "scalar-false", np.array(False)
        return
    full = rng.random(shape) < 0.6
    yield "random", full
    per_row = tuple(1 if i in axes else s for i, s in enumerate(shape))
    yield "rows", rng.random(per_row) < 0.5
    if full.size:
        one_dead = full.copy()
        idx = tuple(0 if i not in axes else slice(None) for i in range(len(shape)))
        one_dead[idx] = False
        yield "dead-slice", one_dead
    yield "trailing", rng.random(shape[-1:]) < 0.7
    yield "all", np.ones(shape, dtype=bool)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", FORWARD)
def test_forward_where(backend, op, dtype):
    rng = _rng("where", op, dtype)
    rdt = result_dtype(dtype)
    shapes = [(), (1,), (9,), (3, 17), (20, 9), (4, 3, 16), (0, 5)]
    for shape in shapes:
        for kind in ("normal", "nan_pinf", "ninf") if np.dtype(dtype).kind == "f" else ("normal",):
            x = values(shape, kind, dtype, rng).astype(dtype, copy=False)
            for axis in axes_for(len(shape)):
                axes = reduced_axes(axis, len(shape))
                for mlabel, mask in _masks(shape, axes, rng):
                    for layout in ("C", "negative"):
                        xl = with_layout(x, layout)
                        want = oracle(op, x, axis=axis, where=mask, against=backend)
                        got = call(backend, op, xl, axis=axis, where=mask)
                        assert_matches(got, want, rdt, f"{op} {dtype} {shape}/{kind} axis={axis} where={mlabel} {layout}",
                                       atol=forward_atol(op, x, rdt))


# ---- forward ops: temperature --------------------------------------------------------------------
@pytest.mark.parametrize("tau", [0.25, 0.7, 3.0, 1e-3, 1e3, np.inf])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("op", ELEMENTWISE)
def test_forward_temperature(backend, op, dtype, tau):
    rng = _rng("tau", op, dtype, tau)
    for shape in [(), (5,), (17,), (6, 33), (40, 9), (3, 4, 16)]:
        for kind in ("normal", "wide", "ninf", "nan_pinf", "ties", "big"):
            x = values(shape, kind, dtype, rng).astype(dtype, copy=False)
            for axis in axes_for(len(shape)):
                want = oracle(op, x, axis=axis, temperature=tau, against=backend)
                got = call(backend, op, x, axis=axis, temperature=tau)
                assert_matches(got, want, dtype, f"{op} {dtype} {shape}/{kind} axis={axis} tau={tau}")
                if len(shape) == 2 and kind in ("normal", "ninf"):
                    mask = rng.random(shape) < 0.5
                    want = oracle(op, x, axis=axis, temperature=tau, where=mask, against=backend)
                    got = call(backend, op, x, axis=axis, temperature=tau, where=mask)
                    assert_matches(got, want, dtype, f"{op} {dtype} {shape}/{kind} axis={axis} tau={tau} masked")


# ---- forward ops: out= and in place ----------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", FORWARD)
def test_forward_out(backend, op, dtype):
    helpers.skip_unless_mutable(backend)
    rng = _rng("out", op, dtype)
    rdt = result_dtype(dtype)
    for shape in [(), (7,), (3, 17), (20, 9), (2, 3, 16)]:
        x = values(shape, "normal", dtype, rng).astype(dtype, copy=False)
        for axis in axes_for(len(shape)):
            want = oracle(op, x, axis=axis, against=backend)
            if op == "logsumexp":
                axes = reduced_axes(axis, len(shape))
                for keepdims in (False, True):
                    oshape = tuple(1 if i in axes else s for i, s in enumerate(shape) if keepdims or i not in axes)
                    for olayout in ("C", "strided"):
                        out_np = with_layout(np.full(oshape, np.nan, dtype=rdt), olayout)
                        out = to_backend(backend, out_np)
                        res = getattr(csoftmax, op)(to_backend(backend, x), axis=axis, keepdims=keepdims, out=out,
                                                    backend=backend)
                        assert res is out
                        w = oracle(op, x, axis=axis, keepdims=keepdims, against=backend)
                        assert_matches(to_numpy(backend, out), w, rdt, f"{op} out {shape} axis={axis} keepdims={keepdims}",
                                       atol=forward_atol(op, x, rdt))
                continue
            for olayout in ("C", "F", "strided", "negative"):
                out_np = with_layout(np.full(shape, np.nan, dtype=rdt), olayout)
                out = to_backend(backend, out_np)
                res = getattr(csoftmax, op)(to_backend(backend, x), axis=axis, out=out, backend=backend)
                assert res is out
                assert_matches(to_numpy(backend, out), want, rdt, f"{op} {dtype} out={olayout} {shape} axis={axis}")
            if np.dtype(dtype) == rdt:  # in place: out is x
                for layout in ("C", "F", "negative"):
                    xb = to_backend(backend, with_layout(x.copy(), layout))
                    res = getattr(csoftmax, op)(xb, axis=axis, out=xb, backend=backend)
                    assert res is xb
                    assert_matches(to_numpy(backend, xb), want, rdt, f"{op} {dtype} in place {layout} {shape} axis={axis}")


@pytest.mark.parametrize("op", ELEMENTWISE)
def test_out_overlapping_input(backend, op):
    """out= that shares memory with x without being x: computed aside, then copied."""
    helpers.skip_unless_mutable(backend)
    x = np.linspace(-3, 3, 40).reshape(4, 10)
    want = oracle(op, x[:, :8], axis=-1, against=backend)
    buf = to_backend(backend, x.copy())
    got = getattr(csoftmax, op)(buf[:, :8], axis=-1, out=buf[:, 2:], backend=backend)
    assert_matches(to_numpy(backend, got), want, "float64", f"{op}: overlapping out")


# ---- backward ops ------------------------------------------------------------------------------------
def _backward_inputs(fwd, shape, dtype, axis, rng, kind):
    """(grad_output, output): kinds of logits, or of gradients -- a NaN, a +inf, or huge
    ones of one sign whose sums leave the dtype's range (float32: not float64's)."""
    x = values(shape, kind if kind in VALUE_KINDS else "normal", "float64", rng)
    y = np.asarray(oracle(fwd, x, axis=axis)).astype(dtype, copy=False)
    g = values(shape, "normal", dtype, rng).astype(dtype, copy=False)
    if kind in ("nan", "pinf-grad") and g.size:
        g.reshape(-1)[rng.integers(0, g.size)] = np.nan if kind == "nan" else np.inf
    if kind == "huge-grad":
        big = float(np.finfo(dtype).max)
        if fwd == "softmax" and dtype == "float64":
            # sum(g*y) <= max(g) sum(y), and sum(y) may round above 1: at g = DBL_MAX the
            # order of summation would decide between finite and inf
            big /= 2
        g = rng.choice([big / 2, big], size=shape).astype(dtype)
    return g, y


def _backward_tol(g, y, dtype, op):
    """Backward results cancel (g - sum(g*y)): scale the absolute tolerance by the sizes."""
    rtol = {"float16": 2e-3, "float32": 4e-6, "float64": 1e-14}[dtype]
    gy = np.abs(g.astype(np.float64))
    scale = (np.nanmax(gy) if gy.size and np.isfinite(gy).any() else 1.0) + 1.0
    return rtol, rtol * scale


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("op", sorted(BACKWARD))
def test_backward_matrix(backend, op, dtype):
    rng = _rng("bwd", op, dtype)
    fwd = BACKWARD[op]
    for shape in [(), (1,), (9,), (17,), (3, 17), (20, 9), (4, 3, 16), (0, 3)]:
        for kind in ("normal", "wide", "ninf", "nan", "pinf-grad", "huge-grad"):
            for axis in axes_for(len(shape)):
                g, y = _backward_inputs(fwd, shape, dtype, axis, rng, kind)
                for tau in (1.0, 0.5, np.inf):
                    for layout in ("C", "F", "negative", "swapped"):
                        want = oracle(op, g, y, axis=axis, temperature=tau, against=backend)
                        got = call(backend, op, with_layout(g, layout), with_layout(y, layout), axis=axis,
                                    temperature=tau)
                        rtol, atol = _backward_tol(g, y, dtype, op)
                        assert_matches(got, want, dtype, f"{op} {dtype} {shape}/{kind} axis={axis} tau={tau} {layout}",
                                       rtol=rtol, atol=atol)
                if len(shape) >= 1:
                    axes = reduced_axes(axis, len(shape))
                    for mlabel, mask in _masks(shape, axes, rng):
                        want = oracle(op, g, y, axis=axis, where=mask, against=backend)
                        got = call(backend, op, g, y, axis=axis, where=mask)
                        rtol, atol = _backward_tol(g, y, dtype, op)
                        assert_matches(got, want, dtype, f"{op} {dtype} {shape}/{kind} axis={axis} where={mlabel}",
                                       rtol=rtol, atol=atol)
                        if mask.shape == shape:
                            assert np.all(got[~mask] == 0), f"{op}: masked entries must be exactly 0"


@pytest.mark.parametrize("op", sorted(BACKWARD))
def test_backward_in_place(backend, op):
    helpers.skip_unless_mutable(backend)
    rng = _rng("bwd-inplace", op)
    x = rng.standard_normal((6, 13))
    y = np.asarray(oracle(BACKWARD[op], x))
    g = rng.standard_normal((6, 13))
    want = oracle(op, g, y, against=backend)
    for target in ("grad_output", "output"):
        gb, yb = to_backend(backend, g.copy()), to_backend(backend, y.copy())
        out = gb if target == "grad_output" else yb
        res = getattr(csoftmax, op)(gb, yb, out=out, backend=backend)
        assert res is out
        assert_matches(to_numpy(backend, out), want, "float64", f"{op} in place into {target}", rtol=1e-14, atol=1e-14)


# ---- Jacobians -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", JACOBIAN)
def test_jacobian_matrix(backend, op, dtype):
    rng = _rng("jac", op, dtype)
    rdt = result_dtype(dtype)
    for shape in [(1,), (5,), (17,), (3, 9), (4, 2, 6), (0, 4)]:
        for kind in ("normal", "wide", "ninf", "nan") if rdt == np.dtype(dtype) else ("normal",):
            x = values(shape, kind, dtype, rng).astype(dtype, copy=False)
            for axis in range(-len(shape), len(shape)):
                for tau in (1.0, 2.5, np.inf):
                    want = oracle(op, x, axis=axis, temperature=tau, against=backend)
                    got = call(backend, op, with_layout(x, "negative"), axis=axis, temperature=tau)
                    assert_matches(got, want, rdt, f"{op} {dtype} {shape}/{kind} axis={axis} tau={tau}",
                                   atol={"float16": 1e-3, "float32": 1e-7, "float64": 1e-15}[rdt.name])


# ---- cross-entropy -------------------------------------------------------------------------------------
def _xent_cases(dtype, rng):
    for shape, axis in [((5,), 0), ((4, 7), -1), ((9, 3), 1), ((6, 5), 0), ((2, 5, 3), 1), ((3, 4, 9), -1), ((1, 1), -1)]:
        n = shape[axis]
        rows = tuple(s for i, s in enumerate(shape) if i != axis % len(shape))
        for kind in ("normal", "wide", "ninf", "nan"):
            x = values(shape, kind, dtype, rng).astype(dtype, copy=False)
            labels = rng.integers(0, n, size=rows)
            if labels.size > 1:
                labels.reshape(-1)[0] = -100  # ignored
            yield f"{shape}/{kind} axis={axis}", x, axis, labels
            probs = rng.random(shape)
            probs /= probs.sum(axis=axis, keepdims=True)
            probs.reshape(-1)[0] = 0.0  # 0 * log 0
            yield f"{shape}/{kind} axis={axis} probs", x, axis, probs.astype(dtype, copy=False)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("op", CROSS_ENTROPY)
def test_cross_entropy_matrix(backend, op, dtype):
    rng = _rng("xent", dtype)
    rtol = {"float16": 3e-3, "float32": 1e-5, "float64": 1e-13}[dtype]
    for label, x, axis, target in _xent_cases(dtype, rng):
        n = x.shape[axis]
        weight = rng.random(n) + 0.5
        for kw in (
            {},
            {"reduction": "sum"},
            {"reduction": "none"},
            {"weight": weight},
            {"label_smoothing": 0.1},
            {"weight": weight, "label_smoothing": 0.3, "reduction": "none"},
            {"temperature": 2.0},
            {"temperature": np.inf, "reduction": "sum"},
        ):
            want_loss, want_grad = oracle(op, x, target, axis=axis, return_grad=True, **kw, against=backend)
            got_loss, got_grad = call(backend, op, x, target, axis=axis, return_grad=True, **kw)
            wl = np.abs(np.asarray(want_loss, dtype=np.float64))
            scale = 1.0 + float(np.max(wl[np.isfinite(wl)], initial=0.0))
            assert_matches(got_loss, want_loss, dtype, f"loss {dtype} {label} {kw}", rtol=rtol, atol=rtol * scale)
            assert_matches(got_grad, want_grad, dtype, f"grad {dtype} {label} {kw}", rtol=rtol, atol=rtol)
            only_loss = call(backend, op, x, target, axis=axis, **kw)
            assert_matches(only_loss, want_loss, dtype, f"loss only {dtype} {label} {kw}", rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("op", CROSS_ENTROPY)
def test_cross_entropy_where(backend, op, dtype):
    rng = _rng("xent-where", dtype)
    rtol = {"float16": 3e-3, "float32": 1e-5, "float64": 1e-13}[dtype]
    x = values((6, 9), "normal", dtype, rng).astype(dtype, copy=False)
    mask = rng.random((6, 9)) < 0.6
    mask[:, 0] = True
    labels = np.zeros(6, dtype=np.int64)
    labels[1] = -100
    probs = rng.random((6, 9)).astype(dtype, copy=False)
    for target in (labels, probs):
        for kw in ({}, {"label_smoothing": 0.2}, {"weight": rng.random(9) + 0.1, "reduction": "none"}):
            want = oracle(op, x, target, where=mask, return_grad=True, **kw, against=backend)
            got = call(backend, op, x, target, where=mask, return_grad=True, **kw)
            assert_matches(got[0], want[0], dtype, f"loss where {kw}", rtol=rtol, atol=rtol)
            assert_matches(got[1], want[1], dtype, f"grad where {kw}", rtol=rtol, atol=rtol)
            assert np.all(got[1][~mask] == 0)


@pytest.mark.parametrize("tau", [1.0, 0.5, np.inf])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("op", ELEMENTWISE)
def test_forward_in_place_nasty(backend, op, dtype, tau):
    """In place (out is x) with special values: every kernel must still read what it
    needs of x before it overwrites it."""
    helpers.skip_unless_mutable(backend)
    rng = _rng("inplace-nasty", op, dtype, tau)
    shapes = [(9,), (17,), (5, 20), (20, 7), (7, 35), (6, 3, 16), (3, 17, 9)]
    for label, x in nasty_arrays(dtype, rng, shapes=shapes):
        for axis in axes_for(x.ndim):
            for layout in ("C", "F", "negative"):
                want = oracle(op, x, axis=axis, temperature=tau, against=backend)
                xb = to_backend(backend, with_layout(x.copy(), layout))
                res = getattr(csoftmax, op)(xb, axis=axis, temperature=tau, out=xb, backend=backend)
                assert res is xb
                assert_matches(to_numpy(backend, xb), want, dtype, f"{op} {dtype} in place {layout} {label} axis={axis} tau={tau}")
