"""Rows longer than the in-cache kernels take: statistics read in blocks with a lazily
moving reference, rows split across threads and merged -- against the float64 reference,
for nasty contents (maxima late in the row, ramps that force rescaling, NaN/inf/-inf and
masked blocks), temperatures and thread counts."""
from __future__ import annotations

import numpy as np
import pytest

import csoftmax
import helpers
from helpers import assert_matches, call, oracle, to_backend, to_numpy

threadpoolctl = pytest.importorskip("threadpoolctl")

N = 40_001  # longer than the in-cache kernels take (128 KiB) in float32 and float64; odd


def _rows(dtype, rng):
    ramp = np.linspace(-3000.0, 3000.0, N)  # the max keeps moving by more than the lazy bound
    yield "ramp", ramp
    yield "ramp-down", ramp[::-1].copy()
    late = rng.standard_normal(N) * 5
    late[-3] = 80.0
    yield "late-max", late
    ties = np.round(rng.standard_normal(N))
    yield "ties", ties
    sp = rng.standard_normal(N) * 30
    yield "wide", sp
    nan = rng.standard_normal(N)
    nan[N // 2] = np.nan
    yield "nan-middle", nan
    pinf = rng.standard_normal(N)
    pinf[-1] = np.inf
    yield "pinf-last", pinf
    ninf = rng.standard_normal(N)
    ninf[: N // 2] = -np.inf  # whole blocks of -inf before any finite value
    yield "ninf-blocks", ninf
    yield "all-ninf", np.full(N, -np.inf)
    nanblock = np.full(N, -np.inf)
    nanblock[100_000:100_010] = np.nan  # NaN in an otherwise -inf block
    nanblock[5] = 1.0
    yield "nan-in-ninf-block", nanblock


_cache: dict = {}


def _oracle(key, *args, **kw):
    if key not in _cache:
        _cache[key] = np.asarray(oracle(*args, **kw))
    return _cache[key]


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("op", ["softmax", "log_softmax", "logsumexp"])
def test_long_rows(backend, op, dtype, threads):
    rng = np.random.default_rng(0)
    with threadpoolctl.threadpool_limits(threads, user_api="openmp"):
        for label, row in _rows(dtype, rng):
            x = np.stack([row, row[::-1]]).astype(dtype) if op != "logsumexp" else row.astype(dtype)[None]
            for tau in (1.0, 0.3, 7.0):
                kw = {} if op == "logsumexp" else {"temperature": tau}
                if op == "logsumexp" and tau != 1.0:
                    continue
                want = _oracle((op, dtype, label, tau), op, x, axis=-1, **kw)
                got = call(backend, op, x, axis=-1, **kw)
                assert_matches(got, want, dtype, f"{op} {dtype} {label} tau={tau} threads={threads}")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("op", ["softmax", "log_softmax", "logsumexp"])
def test_long_rows_masked(backend, op, dtype):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((2, N)) * 10).astype(dtype)
    mask = rng.random((2, N)) < 0.5
    mask[0, : N // 2] = False  # half a row masked out, in whole blocks
    mask[1, 7] = True
    x[1, 8] = np.nan  # a masked NaN takes no part
    mask[1, 8] = False
    with threadpoolctl.threadpool_limits(2, user_api="openmp"):
        want = oracle(op, x, axis=-1, where=mask)
        got = call(backend, op, x, axis=-1, where=mask)
    assert_matches(got, want, dtype, f"{op} {dtype} masked long rows")


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_long_rows_in_place_and_streamed(backend, op):
    """Big enough for non-temporal stores, in place and into a strided out."""
    helpers.skip_unless_mutable(backend)
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((3, 1_000_003)) * 4).astype(np.float32)
    want = oracle(op, x)
    xb = to_backend(backend, x.copy())
    res = getattr(csoftmax, op)(xb, out=xb, backend=backend)
    assert_matches(to_numpy(backend, res), want, "float32", f"{op} in place")
    big = to_backend(backend, np.zeros((3, 1_000_004), np.float32))
    out = big[:, 1:]  # rows start off the vector alignment
    getattr(csoftmax, op)(to_backend(backend, x), out=out, backend=backend)
    assert_matches(to_numpy(backend, out), want, "float32", f"{op} misaligned out")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("op", ["log_softmax", "softmax_backward", "log_softmax_backward"])
def test_streamed_rows_off_a_line(backend, op, dtype):
    """Rows of an array big enough to be streamed (8 MiB), too long for the groups
    (> 1024: one at a time), into an out that starts one element past a vector boundary: every row has its own head before the
    first aligned address and its own tail, written lane by lane; the elements around the
    out stay untouched."""
    helpers.skip_unless_mutable(backend)
    rng = np.random.default_rng(5)
    rows, n = {"float32": (2000, 1103), "float64": (1000, 1101)}[dtype]
    x = (rng.standard_normal((rows, n)) * 4).astype(dtype)
    if op == "log_softmax":
        args, rtol = (x,), None
    else:
        y = np.asarray(oracle(op.removesuffix("_backward"), x)).astype(dtype)
        args, rtol = (rng.standard_normal((rows, n)).astype(dtype), y), {"float32": 4e-6, "float64": 1e-14}[dtype]
    want = oracle(op, *args)
    es = np.dtype(dtype).itemsize
    buf = np.full(rows * n + 64, 7.0, dtype)
    k = (-buf.ctypes.data % 64) // es + 1  # one element past a 64-byte boundary
    host = buf[k:k + rows * n].reshape(rows, n)
    out = to_backend(backend, host)  # shares host's memory where the library can
    with threadpoolctl.threadpool_limits(2, user_api="openmp"):
        getattr(csoftmax, op)(*(to_backend(backend, a) for a in args), out=out, backend=backend)
    got = to_numpy(backend, out)
    assert_matches(got, want, dtype, f"{op} {dtype} streamed rows off a line", rtol=rtol,
                   atol=None if rtol is None else rtol * 8)
    assert np.all(buf[:k] == 7.0) and np.all(buf[k + rows * n:] == 7.0), f"{op}: wrote outside out"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("op", ["softmax", "log_softmax", "logsumexp"])
def test_columns_along_a_leading_axis(backend, op, dtype):
    """A softmax axis with a stride, the next one contiguous: columns with maxima that
    keep moving (the reference moves and stored exps go stale), late maxima, -inf heads,
    NaN and +inf lanes, masks, temperatures; widths around the vector widths."""
    rng = np.random.default_rng(3)
    n = 700
    for width in (8, 37, 64, 133):
        x = rng.standard_normal((n, width)) * 3
        x[:, 0] = np.linspace(-4000, 4000, n)  # the max moves by more than the lazy bound
        x[:, 1] = np.linspace(4000, -4000, n)
        x[-1, 2] = 90.0  # a late max
        x[: n // 2, 3] = -np.inf  # -inf before anything finite
        x[5, 4] = np.nan
        x[6, 5] = np.inf
        x[:, 6] = -np.inf
        x = x.astype(dtype)
        for tau in ((1.0, 0.2, 5.0) if op != "logsumexp" else (1.0,)):
            kw = {} if op == "logsumexp" else {"temperature": tau}
            want = oracle(op, x, axis=0, **kw)
            got = call(backend, op, x, axis=0, **kw)
            assert_matches(got, want, dtype, f"{op} {dtype} width={width} tau={tau}")
        mask = rng.random((n, width)) < 0.7
        mask[:, 7] = False
        want = oracle(op, x, axis=0, where=mask)
        got = call(backend, op, x, axis=0, where=mask)
        assert_matches(got, want, dtype, f"{op} {dtype} width={width} masked")
        if op != "logsumexp" and helpers.mutable(backend):
            xb = to_backend(backend, x.copy())
            getattr(csoftmax, op)(xb, axis=0, out=xb, backend=backend)
            assert_matches(to_numpy(backend, xb), oracle(op, x, axis=0), dtype, f"{op} {dtype} width={width} in place")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("op", ["softmax_backward", "log_softmax_backward"])
def test_backward_columns_along_a_leading_axis(backend, op, dtype):
    """The backward passes along a strided axis with the next one contiguous: whole and
    partial column blocks, NaN and inf lanes, masks (a fully masked column among them),
    temperatures, in place into either input."""
    rng = np.random.default_rng(4)
    fwd = op.removesuffix("_backward")
    n = 300
    for width in (8, 37, 64, 133, 300):
        x = rng.standard_normal((n, width)) * 3
        x[:, 1] = np.linspace(-50, 50, n)
        x[: n // 2, 2] = -np.inf
        y = np.asarray(oracle(fwd, x, axis=0)).astype(dtype)
        g = rng.standard_normal((n, width)).astype(dtype)
        g[5, 3] = np.nan
        g[6, 4] = np.inf
        scale = float(np.nanmax(np.abs(np.where(np.isinf(g), 0, g)))) + 1.0
        rtol = {"float32": 4e-6, "float64": 1e-14}[dtype]
        for tau in (1.0, 0.25, 3.0):
            want = oracle(op, g, y, axis=0, temperature=tau)
            got = call(backend, op, g, y, axis=0, temperature=tau)
            assert_matches(got, want, dtype, f"{op} {dtype} width={width} tau={tau}", rtol=rtol,
                           atol=rtol * scale / tau)
        mask = rng.random((n, width)) < 0.7
        mask[:, 7] = False
        want = oracle(op, g, y, axis=0, where=mask)
        got = call(backend, op, g, y, axis=0, where=mask)
        assert_matches(got, want, dtype, f"{op} {dtype} width={width} masked", rtol=rtol, atol=rtol * scale)
        assert np.all(got[~mask] == 0), f"{op}: masked entries must be exactly 0"
        want = oracle(op, g, y, axis=0)
        for target in ("grad_output", "output") if helpers.mutable(backend) else ():
            gb, yb = to_backend(backend, g.copy()), to_backend(backend, y.copy())
            out = gb if target == "grad_output" else yb
            getattr(csoftmax, op)(gb, yb, axis=0, out=out, backend=backend)
            assert_matches(to_numpy(backend, out), want, dtype, f"{op} {dtype} width={width} in place into {target}",
                           rtol=rtol, atol=rtol * scale)
