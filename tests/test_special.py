"""csoftmax.special against scipy.special: same results, special values, return types,
weights, signs and complex input; the documented deliberate differences."""
from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest

import csoftmax.special as cs

ss = pytest.importorskip("scipy.special")

SPECIAL_ROWS = [
    [np.inf, 1.0],
    [np.nan, 1.0],
    [-np.inf, -np.inf],
    [-np.inf, 1.0],
    [np.inf, np.nan],
    [np.inf, np.inf],
    [-np.inf, np.inf],
    [np.inf, -np.inf, 2.0],
    [1.0, 2.0, 3.0],
    [0.0, -40.0],
    [5.0],
]


def _same(a, b, rtol=1e-14, atol=1e-300):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, equal_nan=True)


def _scipy(fn, *args, **kw):
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return fn(*args, **kw)


# Where scipy's answer changed between the versions the test extra allows (scipy >= 1.12):
# csoftmax.special follows scipy 1.17, whose answers are the closed forms below, and the
# tests accept the older scipy answers listed as scipy's, judging ours by the closed form.
#   logsumexp([inf, 1], b=[-1, 1]): the sum is -inf, so log|sum| = inf with sign -1, and
#     without return_sign NaN (scipy <= 1.15: inf and sign +1; scipy 1.16: sign NaN);
#   logsumexp([inf, 1], return_sign=True): the sum is +inf, sign +1 (scipy 1.16: NaN);
#   logsumexp([-inf], return_sign=True): the sum is 0, sign 0 (scipy <= 1.15: +1).
# key: (a, b, return_sign) -> (the closed form, the older scipy answers)
SCIPY_CHANGED = {
    ((np.inf, 1.0), (-1.0, 1.0), False): (np.nan, [np.inf]),
    ((np.inf, 1.0), (-1.0, 1.0), True): ((np.inf, -1.0), [(np.inf, 1.0), (np.inf, np.nan)]),
    ((np.inf, 1.0), None, True): ((np.inf, 1.0), [(np.inf, np.nan)]),
    ((-np.inf,), None, True): ((-np.inf, 0.0), [(-np.inf, 1.0)]),
}


def _scipy_logsumexp(a, b=None, **kw):
    """scipy.special.logsumexp, or the closed form where an older scipy answers otherwise
    (SCIPY_CHANGED)."""
    want = _scipy(ss.logsumexp, a, b=b, **kw)
    key = (tuple(np.ravel(a).tolist()), None if b is None else tuple(np.ravel(b).tolist()),
           bool(kw.get("return_sign", False)))
    if key in SCIPY_CHANGED and np.ndim(a) == 1:
        closed, older = SCIPY_CHANGED[key]
        flat = tuple(float(v) for v in np.ravel(want)) if isinstance(want, tuple) else float(want)
        same = lambda u, v: np.array_equal(np.asarray(u, dtype=float), np.asarray(v, dtype=float), equal_nan=True)  # noqa: E731
        assert same(flat, closed) or any(same(flat, o) for o in older), f"scipy gives {want} for {key}"
        want = tuple(np.float64(v) for v in closed) if isinstance(closed, tuple) else np.float64(closed)
    return want


@pytest.mark.parametrize("row", SPECIAL_ROWS, ids=[str(r) for r in SPECIAL_ROWS])
@pytest.mark.parametrize("name", ["softmax", "log_softmax", "logsumexp"])
def test_special_values_match_scipy(name, row):
    x = np.array(row)
    got = getattr(cs, name)(x)
    want = _scipy(getattr(ss, name), x)
    if name == "log_softmax" and row == [0.0, -40.0]:
        # deliberate: the max entry is -log1p(S') = -4.25e-18, scipy's is 0
        assert got[0] == pytest.approx(-4.248354255291589e-18, rel=1e-15) and want[0] == 0
        got, want = got[1:], want[1:]
    _same(got, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
@pytest.mark.parametrize("axis", [None, 0, 1, -1, (0, 2)])
@pytest.mark.parametrize("name", ["softmax", "log_softmax", "logsumexp"])
def test_random_arrays_match_scipy(name, axis, dtype):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((4, 5, 6)) * 3).astype(dtype)
    got = getattr(cs, name)(x, axis=axis)
    want = _scipy(getattr(ss, name), x, axis=axis)
    rtol = 1e-14
    if np.dtype(dtype) == np.float32:
        # scipy's float32 log_softmax loses digits near 0 (x - max - log(s) cancels); judge
        # both against scipy in float64, ours within a few float32 ulp
        assert np.asarray(got).dtype == np.asarray(want).dtype
        want = _scipy(getattr(ss, name), x.astype(np.float64), axis=axis).astype(np.float32)
        rtol = 4e-7
    # scipy's log_softmax near 0 carries an absolute error of a few ulp of the inputs
    atol = 4 * np.finfo(np.asarray(got).dtype).eps * (1 + np.abs(x).max()) if name == "log_softmax" else 1e-300
    _same(got, want, rtol=rtol, atol=atol)
    if name == "logsumexp":
        # keepdims: the shape and type scipy gives, the values judged as above (scipy's own
        # float32 logsumexp can be 3 ulp off where the result cancels towards 0)
        kept = _scipy(ss.logsumexp, x, axis=axis, keepdims=True)
        _same(cs.logsumexp(x, axis=axis, keepdims=True), np.asarray(want, dtype=np.asarray(kept).dtype).reshape(np.shape(kept)), rtol)


def test_return_types_match_scipy():
    for args in ([1.0, 2.0], 3.0, [[1, 2], [3, 4]]):
        for name in ("softmax", "log_softmax", "logsumexp"):
            got, want = getattr(cs, name)(args), _scipy(getattr(ss, name), args)
            assert type(got) is type(want), (name, args, type(got), type(want))


@pytest.mark.parametrize(
    "a,b",
    [
        ([1.0, 2.0], [1.0, -1.0]),
        ([1.0, 2.0], [1.0, -2.0]),
        ([1.0, 2.0], [0.0, 0.0]),
        ([1.0, 2.0, 3.0], [0.5, 0.0, 2.0]),
        ([np.inf, 1.0], [-1.0, 1.0]),
        ([-np.inf, 1.0], [1.0, 1.0]),
        ([[1.0, 2.0], [3.0, 4.0]], [[1.0, -1.0], [2.0, 1.0]]),
        ([1.0, 2.0], 3.0),
        ([1, 2], [1, -1]),
    ],
)
@pytest.mark.parametrize("return_sign", [False, True])
def test_weights_and_signs_match_scipy(a, b, return_sign):
    a, b = np.asarray(a), np.asarray(b)
    for axis in (None, -1):
        got = cs.logsumexp(a, axis=axis, b=b, return_sign=return_sign)
        want = _scipy_logsumexp(a, axis=axis, b=b, return_sign=return_sign)
        if return_sign:
            _same(got[0], want[0])
            _same(got[1], want[1])
        else:
            _same(got, want)


@pytest.mark.parametrize("row", [[-np.inf], [np.nan, 1.0], [np.inf, 1.0], [1.0, 2.0]])
def test_return_sign_without_weights(row):
    got = cs.logsumexp(np.array(row), return_sign=True)
    want = _scipy_logsumexp(np.array(row), return_sign=True)
    _same(got[0], want[0])
    _same(got[1], want[1])


@pytest.mark.parametrize(
    "a",
    [[1 + 1j, 2.0], [1 + 3j, -2 - 4j, 0.5j], [[1 + 1j, 2], [3 - 1j, 4]], [5 + 7j]],
    ids=["pair", "triple", "2d", "one"],
)
@pytest.mark.parametrize("name", ["softmax", "log_softmax", "logsumexp"])
def test_complex_matches_scipy(name, a):
    a = np.asarray(a, dtype=np.complex128)
    for axis in (None, -1):
        got = getattr(cs, name)(a, axis=axis)
        want = _scipy(getattr(ss, name), a, axis=axis)
        _same(got, want)
    if name == "logsumexp":
        for b, rs in itertools.product([None, np.ones(a.shape)], [False, True]):
            got = cs.logsumexp(a, b=b, return_sign=rs)
            want = _scipy(ss.logsumexp, a, b=b, return_sign=rs)
            if rs:
                _same(got[0], want[0])
                _same(got[1], want[1])
            else:
                _same(got, want)


def test_deliberate_differences():
    """An empty axis gives an empty array (scipy raises); logsumexp of it is -inf as scipy."""
    e = np.zeros((0, 3))
    assert cs.softmax(e, axis=0).shape == (0, 3)
    assert cs.log_softmax(e, axis=0).shape == (0, 3)
    _same(cs.logsumexp(e, axis=0), ss.logsumexp(e, axis=0))


def test_float16_is_kept_and_more_accurate():
    x = np.array([1.0, 2.0, 3.0], dtype=np.float16)
    got = cs.softmax(x)
    assert got.dtype == np.float16
    exact = np.exp([1.0, 2.0, 3.0]) / np.exp([1.0, 2.0, 3.0]).sum()
    assert np.abs(got - exact).max() <= np.abs(ss.softmax(x) - exact).max()
