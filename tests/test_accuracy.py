"""The accuracy contract (docs/design.md, "Accuracy"), measured in ulps of the output dtype
against the exact result for the input as stored.

Oracles: mpmath (40 digits) for short rows and any temperature; for long rows (up to 1e6
entries) an extended-precision oracle in numpy.longdouble (x86's 80-bit format, 64-bit
significand) that itself is checked against mpmath here. x - max is split exactly into
dh + dl in double, and exp(d) is taken as expl(dh) * expl(dl), so the oracle's error is
~1e-19 relative however large |d| is.

Contract: softmax and log_softmax within 4 ulp per element, float32 and float64, rows up
to 1e6, inputs N(0,1)*30, one dominant entry, gaps of 50, tails whose every exp is
subnormal, sums whose reference moves past exp's range; float16 within 1 ulp (of float16)
of the exact value; |sum(softmax) - 1| <= a few eps * log2(n); no backend less
accurate than scipy (and torch, when installed) on the same input.
"""
from __future__ import annotations

import contextlib
import math

import mpmath as mp
import numpy as np
import pytest

from helpers import call

LD = np.longdouble
LD_EXACT = np.finfo(LD).nmant >= 63  # 80-bit extended or better
needs_ld = pytest.mark.skipif(not LD_EXACT, reason="numpy.longdouble has no extended precision on this platform")

ULP_LIMIT = 4.0


# ---- oracles ------------------------------------------------------------------------------------
def _two_diff(a, b):
    s = a - b
    bb = s - a
    return s, (a - (s - bb)) - (b + bb)


def exact_ld(x):
    """(softmax, log_softmax) of a finite 1-D row in longdouble, temperature 1."""
    xd = np.asarray(x, dtype=np.float64)
    m = xd.max()
    dh, dl = _two_diff(xd, m)
    with np.errstate(over="ignore", under="ignore"):
        e = np.exp(dh.astype(LD)) * np.exp(dl.astype(LD))
    k = int(np.argmax(xd))
    rest = e.copy()
    rest[k] = 0
    s_rest = np.sum(rest)  # S', the max entry left out
    soft = e / (1 + s_rest)
    logs = (dh.astype(LD) + dl.astype(LD)) - np.log1p(s_rest)
    logs[k] = -np.log1p(s_rest)
    return soft, logs


def exact_mp(x, tau=1.0):
    """(softmax, log_softmax) of a 1-D row with mpmath, as lists of mpf."""
    with mp.workdps(50):
        xs = [mp.mpf(float(v)) for v in x]
        t = mp.mpf(float(tau))
        m = max(xs)
        k = xs.index(m)
        d = [(v - m) / t for v in xs]
        e = [mp.exp(v) for v in d]
        s_rest = mp.fsum(e[:k] + e[k + 1:])  # log1p of S' keeps the max entry's precision
        return [v / (1 + s_rest) for v in e], [v - mp.log1p(s_rest) for v in d]


def ulps(got, exact, dtype):
    """|got - exact| in units of the last place of dtype at the exact value."""
    got = np.asarray(got, dtype=np.float64)
    exact_ld = np.asarray(exact, dtype=LD)
    with np.errstate(over="ignore", under="ignore"):
        spacing = np.spacing(np.abs(exact_ld.astype(dtype))).astype(LD)
        return np.asarray(np.abs(got.astype(LD) - exact_ld) / spacing, dtype=np.float64)


# ---- inputs ---------------------------------------------------------------------------------------
def _row(kind, n, dtype, rng):
    if kind == "normal30":
        v = rng.standard_normal(n) * 30
    elif kind == "dominant":
        v = rng.standard_normal(n)
        v[rng.integers(n)] += 50
    elif kind == "gaps50":
        v = -50.0 * rng.integers(0, 4, size=n) + rng.standard_normal(n) * 0.1
    elif kind == "underflow":  # many results subnormal or zero
        lim = 100.0 if dtype == np.float32 else 740.0
        v = -rng.random(n) * lim
        v[0] = 0.0
    elif kind == "close":  # S' tiny: the max entry's log_softmax is -log1p(S')
        v = np.full(n, -60.0 if dtype == np.float64 else -25.0) + rng.standard_normal(n) * 0.01
        v[rng.integers(n)] = 0.0
    elif kind == "subnormal_tail":  # every term of S' subnormal: each loses digits unless summed scaled
        lo, hi = (100.0, 104.0) if dtype == np.float32 else (720.0, 745.0)
        v = -(lo + rng.random(n) * (hi - lo))
        v[rng.integers(n)] = 0.0
    elif kind == "far_reference":  # a sum kept relative to -760 moves to the max 0: factor exp(-760)
        v = -702.0 - rng.random(n)  # within CSM_LAZY of -760, so the reference stays there until the max
        v[: n // 3] = -760.0 - rng.random(n // 3)
        v[-1] = 0.0
    elif kind == "far_parts":  # the first half's sum (~n/2) moved to the max 0 by a subnormal exp(-744)
        v = np.full(n, -800.0)
        v[: n // 2] = -744.0 - rng.random(n // 2) * 0.5
        v[-1] = 0.0
    else:
        raise ValueError(kind)
    return v.astype(dtype)


KINDS = ("normal30", "dominant", "gaps50", "underflow", "close", "subnormal_tail", "far_reference", "far_parts")
TAIL_KINDS = ("subnormal_tail", "far_reference", "far_parts")  # S' lies far below the max


# ---- the oracle itself ----------------------------------------------------------------------------
@needs_ld
@pytest.mark.parametrize("kind", KINDS)
def test_longdouble_oracle_agrees_with_mpmath(kind):
    rng = np.random.default_rng(1)
    x = _row(kind, 300, np.float64, rng)
    soft, logs = exact_ld(x)
    msoft, mlogs = exact_mp(x)
    with mp.workdps(50):
        for got, want in ((soft, msoft), (logs, mlogs)):
            for g, w in zip(got, want):
                g = mp.mpf(np.format_float_scientific(g, unique=True))
                assert abs(g - w) <= abs(w) * mp.mpf(2) ** -60


# ---- the contract ------------------------------------------------------------------------------------
@needs_ld
@pytest.mark.parametrize("n", [1, 7, 1000, 100_000, 1_000_000])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_ulp_contract_long_rows(backend, op, dtype, kind, n):
    if n == 1_000_000 and kind not in ("normal30", "close", "subnormal_tail"):
        pytest.skip("the million-entry rows cover three kinds, to keep the suite fast")
    rng = np.random.default_rng(n + len(kind))
    x = _row(kind, n, dtype, rng)
    soft, logs = exact_ld(x)
    got = call(backend, op, x)
    err = ulps(got, soft if op == "softmax" else logs, dtype)
    assert err.max() <= ULP_LIMIT, f"{op} {np.dtype(dtype).name} {kind} n={n}: {err.max():.2f} ulp at {err.argmax()}"


@needs_ld
@pytest.mark.parametrize("tau", [0.37, 2.9, 1e-2])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_ulp_contract_temperature(backend, op, dtype, kind, tau):
    rng = np.random.default_rng(7)
    x = _row(kind, 200, dtype, rng)
    soft, logs = exact_mp(x, tau)
    exact = soft if op == "softmax" else logs
    got = call(backend, op, x, temperature=tau)
    tiny = mp.mpf("1e-4900")  # below longdouble's range: 0 (the results there are 0 too)
    exact_arr = np.array([LD(mp.nstr(v, 30)) if abs(v) > tiny else LD(0) for v in exact], dtype=LD)
    err = ulps(got, exact_arr, dtype)
    assert err.max() <= ULP_LIMIT, f"{op} {kind} tau={tau}: {err.max():.2f} ulp"


@needs_ld
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exp_across_its_range(backend, dtype):
    """softmax([0, d])[1] = e^d / (1 + e^d) over d in [-750, 0]: the exp kernel across
    normal, subnormal and underflowing results; log_softmax's max entry -log1p(e^d)."""
    lo = -105.0 if dtype == np.float32 else -750.0
    d = np.linspace(lo, 0.0, 4001).astype(dtype)
    x = np.stack([np.zeros_like(d), d], axis=1)
    got = call(backend, "softmax", x)
    got_log = call(backend, "log_softmax", x)
    e = np.exp(d.astype(LD))
    want = np.stack([1 / (1 + e), e / (1 + e)], axis=1)
    want_log = np.stack([-np.log1p(e), d.astype(LD) - np.log1p(e)], axis=1)
    assert ulps(got, want, dtype).max() <= ULP_LIMIT
    assert ulps(got_log, want_log, dtype).max() <= ULP_LIMIT


def test_logsumexp_tail_precision(backend):
    got = call(backend, "logsumexp", np.array([0.0, -40.0]))
    assert got == pytest.approx(4.248354255291589e-18, rel=1e-15)
    got = call(backend, "log_softmax", np.array([0.0, -40.0]))
    assert got[0] == pytest.approx(-4.248354255291589e-18, rel=1e-15)
    got32 = call(backend, "log_softmax", np.array([0.0, -20.0], dtype=np.float32))
    assert got32[0] == pytest.approx(-2.0611536e-09, rel=1e-6)


@needs_ld
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_logsumexp_accuracy(backend, dtype):
    rng = np.random.default_rng(3)
    for kind in ("normal30", "dominant", "close"):
        x = _row(kind, 5000, dtype, rng) + dtype(10)  # keep the result away from 0 (no cancellation)
        xd = x.astype(np.float64)
        m = xd.max()
        dh, dl = _two_diff(xd, m)
        e = np.exp(dh.astype(LD)) * np.exp(dl.astype(LD))
        k = int(np.argmax(xd))
        e[k] = 0
        want = LD(m) + np.log1p(np.sum(e))
        got = call(backend, "logsumexp", x)
        assert ulps(got, want, dtype) <= 2.0, kind


def _lse_ld(x):
    """logsumexp of a finite 1-D row in longdouble: m + log1p(S'), S' summed in longdouble,
    where none of its terms is subnormal."""
    xd = np.asarray(x, dtype=np.float64)
    k = int(np.argmax(xd))
    dh, dl = _two_diff(xd, xd[k])
    with np.errstate(over="ignore", under="ignore"):
        e = np.exp(dh.astype(LD)) * np.exp(dl.astype(LD))
    e[k] = 0
    return LD(xd[k]) + np.log1p(np.sum(e))


def _threads(n):
    """The C core limited to n OpenMP threads (a no-op elsewhere); None: as it is."""
    if n is None:
        return contextlib.nullcontext()
    threadpoolctl = pytest.importorskip("threadpoolctl")
    return threadpoolctl.threadpool_limits(n, user_api="openmp")


@needs_ld
@pytest.mark.parametrize("threads", [1, None])
@pytest.mark.parametrize("layout", ["row", "long row", "columns"])
@pytest.mark.parametrize("kind", TAIL_KINDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tails_far_below_the_max(backend, dtype, kind, layout, threads):
    """logsumexp = log1p(S') and log_softmax at the max = -log1p(S'), both tiny (subnormal
    for the deepest tails), where S' is a sum of subnormal exps (subnormal_tail) or a sum
    rescaled by a factor below exp's range (far_reference, far_parts): rows in cache, long
    rows (blocked, split across threads), columns."""
    rng = np.random.default_rng(len(kind) + len(layout))
    n = {"row": 3000, "long row": 100_000, "columns": 3000}[layout]
    x = _row(kind, n, dtype, rng)
    k = int(np.argmax(x))
    want = _lse_ld(x)
    with _threads(threads):
        if layout == "columns":
            xs = np.stack([x, np.roll(x, 1)] * 8, axis=1)  # 16 columns, two of them distinct
            lse, logs = call(backend, "logsumexp", xs, axis=0)[0], call(backend, "log_softmax", xs, axis=0)[k, 0]
        else:
            lse, logs = call(backend, "logsumexp", x), call(backend, "log_softmax", x)[k]
    assert ulps(lse, want, dtype) <= 2.0, f"logsumexp {np.dtype(dtype).name} {kind} {layout}: {lse!r}, want {want!r}"
    assert ulps(logs, -want, dtype) <= ULP_LIMIT, f"log_softmax {kind} {layout}: {logs!r}, want {-want!r}"


@needs_ld
@pytest.mark.parametrize("kind", TAIL_KINDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tails_through_statistics_records(backend, dtype, kind):
    """The C core's statistics records (the Dask path's parts of a row) of those tails: the
    parts' records, merged, give the whole row's logsumexp and log_softmax."""
    if backend != "c":
        pytest.skip("statistics records are the C core's")
    from csoftmax import _ops
    from csoftmax._backends import c

    rng = np.random.default_rng(len(kind))
    x = _row(kind, 60_000, dtype, rng)[None, :]
    k = int(np.argmax(x[0]))
    cuts = [0, 15_000, 15_001, 60_000]  # far_reference: the last part holds -760, -702 and the max
    rec = None
    for a, b in zip(cuts, cuts[1:]):
        part = c.row_stats(x[:, a:b], (1,), 1.0, None)
        rec = part if rec is None else c.merge_stats(rec, part, 1.0)
    want = _lse_ld(x[0])
    lse = c.stats_logsumexp(rec, np.dtype(dtype))[0, 0]
    logs = c.finish(_ops.BY_NAME["log_softmax"], x, rec, (1,), 1.0, None, None, np.dtype(dtype))[0, k]
    assert ulps(lse, want, dtype) <= 2.0, f"logsumexp {kind}: {lse!r}, want {want!r}"
    assert ulps(logs, -want, dtype) <= ULP_LIMIT, f"log_softmax {kind}: {logs!r}, want {-want!r}"


@needs_ld
@pytest.mark.parametrize("kw", [{}, {"label_smoothing": 0.1, "weight": "w"}])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_probability_targets_many_classes(backend, dtype, kw):
    """The loss with probability targets over 1e5 classes, sum_j w_j q'_j (-log p_j), q' =
    (1 - eps) q + eps / K: within 4 ulp of the longdouble value (a naive sum over the
    classes is ~80 ulp off in float64)."""
    rng = np.random.default_rng(23)
    rows, n = 3, 100_000
    x = (rng.standard_normal((rows, n)) * 3).astype(dtype)
    q = rng.random((rows, n)) ** 4
    q = (q / q.sum(axis=1, keepdims=True)).astype(dtype)
    kw = dict(kw)
    w = None
    if "weight" in kw:
        w = kw["weight"] = (0.5 + rng.random(n)).astype(dtype)
    eps = LD(kw.get("label_smoothing", 0.0))
    loss = call(backend, "softmax_cross_entropy", x, q, reduction="none", **kw)
    for r in range(rows):
        xd = x[r].astype(np.float64)
        neglogp = (LD(xd.max()) - xd.astype(LD)) + (_lse_ld(xd) - LD(xd.max()))
        t = (1 - eps) * q[r].astype(LD) + eps / LD(n)
        want = np.sum((LD(1) if w is None else w.astype(LD)) * t * neglogp)
        err = ulps(loss[r], want, dtype)
        assert err <= ULP_LIMIT, f"{np.dtype(dtype).name} row {r}: {err:.1f} ulp"


@pytest.mark.parametrize("n", [3, 1000, 1_000_000])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_sums_to_one(backend, dtype, n):
    rng = np.random.default_rng(n)
    x = (rng.standard_normal(n) * 30).astype(dtype)
    s = call(backend, "softmax", x).astype(LD)
    eps = np.finfo(dtype).eps
    assert abs(float(np.sum(s)) - 1.0) <= 4 * eps * max(1.0, math.log2(n))


def _f16_ulps(got, exact):
    """|got - exact| in float16 ulps at the exact value (longdouble); results below float16's
    normal range count in units of its smallest subnormal."""
    exact = np.asarray(exact, dtype=LD)
    with np.errstate(over="ignore", under="ignore"):
        spacing = np.spacing(np.abs(exact.astype(np.float16))).astype(LD)
    err = np.abs(np.asarray(got, dtype=np.float64).astype(LD) - exact) / spacing
    return np.asarray(err, dtype=np.float64)


@needs_ld
@pytest.mark.parametrize("kind", ("normal4", "wide", "underflow", "close", "ties"))
def test_float16_within_one_ulp_of_the_exact_value(backend, kind):
    """float16 results (computed in float32 or wider) are within 1 ulp of float16 of the
    exact value for the float16 input as stored -- softmax, log_softmax and logsumexp, results
    down in float16's subnormals included."""
    rng = np.random.default_rng(len(kind))
    shape = (37, 50)
    if kind == "normal4":
        x = rng.standard_normal(shape) * 4
    elif kind == "wide":
        x = rng.standard_normal(shape) * 3 + rng.integers(-8, 8, size=shape)
    elif kind == "underflow":  # many results in float16's subnormals or 0
        x = -rng.random(shape) * 20
        x[:, 0] = 0.0
    elif kind == "close":  # S' tiny: log_softmax's max entry is -log1p(S'), float16-subnormal
        x = np.full(shape, -12.0) + rng.standard_normal(shape) * 0.01
        x[:, 3] = 0.0
    else:
        x = rng.integers(-3, 3, size=shape).astype(np.float64)
    x = x.astype(np.float16)
    xd = x.astype(np.float64)
    for op in ("softmax", "log_softmax", "logsumexp"):
        got = call(backend, op, x, axis=-1)
        assert got.dtype == np.float16
        worst = 0.0
        for r in range(x.shape[0]):
            soft, logs = exact_ld(xd[r])
            if op == "logsumexp":
                k = int(np.argmax(xd[r]))
                exact = np.longdouble(xd[r, k]) - logs[k]
                worst = max(worst, float(_f16_ulps(got[r], exact)))
            else:
                worst = max(worst, float(_f16_ulps(got[r], soft if op == "softmax" else logs).max()))
        assert worst <= 1.0, f"{op} float16 {kind}: {worst:.3f} ulp"


@needs_ld
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_not_less_accurate_than_the_peers(backend, op, dtype):
    """On N(0,1)*30 rows, scipy.special reaches ~hundreds of ulp in float32; every backend
    must stay within the contract and never exceed scipy's (or torch's) error."""
    scipy_special = pytest.importorskip("scipy.special")
    rng = np.random.default_rng(11)
    x = (rng.standard_normal(4096) * 30).astype(dtype)
    soft, logs = exact_ld(x)
    exact = soft if op == "softmax" else logs
    ours = ulps(call(backend, op, x), exact, dtype).max()
    peers = {"scipy": ulps(getattr(scipy_special, op)(x), exact, dtype).max()}
    try:
        import torch

        fn = torch.softmax if op == "softmax" else torch.log_softmax
        peers["torch"] = ulps(fn(torch.from_numpy(x), dim=-1).numpy(), exact, dtype).max()
    except ImportError:
        pass
    assert ours <= ULP_LIMIT
    for name, err in peers.items():
        assert ours <= max(err, ULP_LIMIT), f"{name}: {err:.1f} ulp, ours {ours:.1f}"


@needs_ld
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_ulp_contract_along_a_leading_axis(backend, op, dtype, kind):
    """The contract holds whatever the layout: columns of a (n, 40) array, axis 0."""
    rng = np.random.default_rng(17)
    cols = [_row(kind, 3000, dtype, rng) for _ in range(40)]
    x = np.stack(cols, axis=1)
    got = call(backend, op, x, axis=0)
    for j in range(x.shape[1]):
        soft, logs = exact_ld(x[:, j])
        err = ulps(got[:, j], soft if op == "softmax" else logs, dtype)
        assert err.max() <= ULP_LIMIT, f"{op} {kind} column {j}: {err.max():.2f} ulp"


@needs_ld
@pytest.mark.parametrize("n", [5, 16, 100, 2000])
@pytest.mark.parametrize("op", ["softmax", "log_softmax", "logsumexp"])
def test_ulp_contract_tame_rows_at_the_anchor_limits(backend, op, n):
    """float32 rows the C core takes with its anchored exp (no mask, tau = 1, entries within
    512 of 0 and within 87 of the max: exp(x) reduced from x, the row's factor e^-r_m in
    double) and rows just past each limit (the general path), side by side in one batch of
    32, so that the group kernels take the short ones: every op within the contract."""
    rng = np.random.default_rng(n)
    tops = [511.99, 511.0, -425.0, 0.0, 3.0, 512.5, -430.0, 87.0]  # -430 - 86.9 and 512.5: past the limit
    rows = []
    for r in range(32):
        top = tops[r % len(tops)]
        v = top - rng.random(n) * (86.9 if r % 3 else 40.0)
        v[rng.integers(n)] = top
        if r % 5 == 0:
            v[rng.integers(n)] = top - 86.99  # spread at the bounded range's edge
        rows.append(v)
    x = np.array(rows, dtype=np.float32)
    got = call(backend, op, x, axis=-1)
    for r in range(len(rows)):
        if op == "logsumexp":
            assert ulps(got[r], _lse_ld(x[r]), np.float32) <= 2.0, f"row {r} (top {x[r].max()})"
            continue
        soft, logs = exact_ld(x[r])
        err = ulps(got[r], soft if op == "softmax" else logs, np.float32)
        assert err.max() <= ULP_LIMIT, f"row {r} (top {x[r].max()}): {err.max():.2f} ulp at {err.argmax()}"
