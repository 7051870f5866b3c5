"""The C core's statistics records (csoftmax._backends.c: row_stats, merge_stats, finish,
stats_logsumexp): a slice cut into parts anywhere, its parts' records merged in any order,
must give the softmax, log_softmax and logsumexp of the whole slice -- checked against the
float64 oracle over nasty values, masks, temperatures and dtypes."""
from __future__ import annotations

import numpy as np
import pytest

from csoftmax import _ops, _registry
from helpers import VALUE_KINDS, assert_matches, forward_atol, oracle, values

pytestmark = pytest.mark.skipif(not _registry.is_available("c"), reason="the C core is not built here")


def _c():
    from csoftmax._backends import c

    return c


def _cuts(n, rng):
    """Random cut points of [0, n): parts of every size, empty ones included."""
    k = int(rng.integers(1, 5))
    return sorted(set([0, n] + [int(v) for v in rng.integers(0, n + 1, size=k)]))


def _merged(c, x, axis, tau, where, rng):
    cuts = _cuts(x.shape[axis], rng)
    parts = []
    for a, b in zip(cuts, cuts[1:]):
        sl = [slice(None)] * x.ndim
        sl[axis] = slice(a, b)
        m = None if where is None else np.broadcast_to(where, x.shape)[tuple(sl)]
        parts.append((tuple(sl), c.row_stats(x[tuple(sl)], (axis,), tau, m)))
    order = rng.permutation(len(parts))
    rec = parts[order[0]][1]
    for i in order[1:]:
        rec = c.merge_stats(rec, parts[i][1], tau)
    return rec, [p[0] for p in parts]


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("kind", VALUE_KINDS)
def test_parts_merge_to_the_whole(dtype, kind):
    c = _c()
    rng = np.random.default_rng(abs(hash((dtype, kind))) % 2**32)
    for shape, axis in [((7, 50), 1), ((40, 6), 0), ((3, 1, 300), 2), ((2, 5000), 1)]:
        x = values(shape, kind, dtype, rng).astype(dtype)
        for tau in (1.0, 0.4, 7.0, np.inf):
            for masked in (False, True):
                where = rng.random(shape) < 0.7 if masked else None
                if masked:
                    where[0] = False  # a fully masked slice among the rest
                rec, slices = _merged(c, x, axis, tau, where, rng)
                for name in ("softmax", "log_softmax"):
                    op = _ops.BY_NAME[name]
                    got = np.empty(shape, dtype=dtype)
                    for sl in slices:
                        m = None if where is None else where[sl]
                        got[sl] = c.finish(op, x[sl], rec, (axis,), tau, m, None, np.dtype(dtype))
                    want = oracle(name, x, axis=axis, temperature=tau, where=where)
                    assert_matches(got, want, dtype, f"{name} {dtype} {shape}/{kind} tau={tau} masked={masked}")
                if tau == 1.0:
                    got = c.stats_logsumexp(rec, np.dtype(dtype)).squeeze(axis)
                    want = oracle("logsumexp", x, axis=axis, where=where)
                    assert_matches(got, want, dtype, f"logsumexp {dtype} {shape}/{kind} masked={masked}",
                                   atol=forward_atol("logsumexp", x, dtype))


def test_record_fields():
    """The record of [1, 2, 3] (tau 1): m 3, S' = e^-1 + e^-2, any, no NaN."""
    c = _c()
    rec = c.row_stats(np.array([[1.0, 2.0, 3.0]]), (1,), 1.0, None)[0, 0]
    assert rec.shape == (c.STATS_FIELDS,)
    m, s_hi, s_lo, any_, nan, count = rec
    assert m == 3.0 and any_ == 1.0 and nan == 0.0 and count == 0.0
    assert s_hi + s_lo == pytest.approx(np.exp(-1.0) + np.exp(-2.0), rel=1e-16)
    inf = c.row_stats(np.array([[1.0, -np.inf, 3.0]]), (1,), np.inf, None)[0, 0]
    assert inf[0] == 3.0 and inf[5] == 2.0  # tau = +inf counts the entries above -inf
    nan = c.row_stats(np.array([[np.inf, np.nan]]), (1,), 1.0, None)[0, 0]
    assert nan[0] == np.inf and nan[4] == 1.0  # the NaN after a +inf is seen
