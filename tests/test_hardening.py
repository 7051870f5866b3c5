"""The rim of the documented domain, class by class: results that must be values (+-inf,
NaN) rather than warnings, in place on a view that overlaps itself, byte-swapped out=,
every dtype spelling NumPy accepts, axes far beyond any array's dimensions -- on every
backend, each call under helpers.strict() (warnings and NumPy floating-point events are
errors). The wrong arguments' messages are in test_errors.py."""
from __future__ import annotations

import numpy as np
import pytest
from numpy.lib.stride_tricks import as_strided

import csoftmax
import helpers
from helpers import assert_matches, call, oracle, strict, to_backend, to_numpy

# ---- values where NumPy would warn ----------------------------------------------------------


def test_casts_beyond_the_result_dtype_are_inf(backend):
    """dtype= casts first (torch's rule): values beyond the dtype's range become +-inf."""
    if not helpers.has_float16(backend):
        pytest.skip(f"{backend}'s namespace has no float16")
    x = np.array([[70000, 1, -70000, 2]])
    got = call(backend, "softmax", x, dtype="float16")
    with np.errstate(over="ignore"):
        x16 = x.astype(np.float16)  # [inf, 1, -inf, 2]
    want = oracle("softmax", x16, against=backend)
    assert_matches(got, want, "float16", "softmax of ints beyond float16")
    lse = call(backend, "logsumexp", np.array([1e5, 1.0]), dtype=np.float16)
    assert lse == np.inf


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_cross_entropy_losses_beyond_float32_are_inf(backend, reduction):
    x = np.array([[3e38, -3e38], [3e38, -3e38]], dtype=np.float32)
    loss = call(backend, "softmax_cross_entropy", x, np.array([1, 1]), reduction=reduction)
    assert np.all(loss == np.inf), loss  # the exact loss, 6e38, lies beyond float32: rounds to inf
    loss10 = call(backend, "softmax_cross_entropy", x, np.array([1, 1]), reduction=reduction, temperature=10.0)
    assert np.all(np.isfinite(loss10)) and np.allclose(loss10, 6e37 * (2 if reduction == "sum" else 1), rtol=1e-6)


def test_cross_entropy_smoothing_terms_whose_sum_overflows(backend):
    """Label smoothing on a row holding the largest double: each other class's -log p is
    ~1.8e308, their sum overflows, eps / K times it does not. The loss is finite, against
    50 digits (found by the fuzzer: the C core and the reference summed the terms before
    scaling them)."""
    import mpmath

    x = np.array([0.345584192064786, 0.821618143501158, 0.330437076183387, -1.30315723160436, 1.7976931348623157e308])
    with mpmath.workdps(50):
        v = [mpmath.mpf(float(t)) for t in x]
        lse = max(v) + mpmath.log(mpmath.fsum(mpmath.exp(t - max(v)) for t in v))
        want = float(0.9 * (lse - v[4]) + mpmath.mpf(0.1) / 5 * mpmath.fsum(lse - t for t in v))
    for reduction in ("mean", "sum", "none"):
        loss = call(backend, "softmax_cross_entropy", x, np.array(4), axis=0, label_smoothing=0.1, reduction=reduction)
        np.testing.assert_allclose(loss, want, rtol=1e-14, err_msg=reduction)


def test_cross_entropy_rows_whose_total_overflows(backend):
    """Two rows whose losses are each near the largest double: each is finite, their total
    is not -- 'sum' and 'mean' give +inf as a value, never an overflow warning (found by
    the fuzzer: Dask summed the rows lazily, outside the call's quiet errstate)."""
    big = 1.7976931348623157e308
    x = np.array([[big, 0.5, 0.25], [0.0, -big, 0.125], [0.5, 0.25, 0.0]])
    labels = np.array([1, 1, 0])  # row 0: -log p = big - 0.5; row 1: 0.125 + big
    rows = call(backend, "softmax_cross_entropy", x, labels, reduction="none")
    assert np.all(np.isfinite(rows)), rows
    for reduction in ("sum", "mean"):
        loss = call(backend, "softmax_cross_entropy", x, labels, reduction=reduction)
        assert np.isposinf(loss), (reduction, loss)


def test_cross_entropy_terms_of_weight_zero_are_zero(backend):
    """A class of weight exactly 0 in the loss adds nothing even where its -log p is +inf
    (0 * inf would be NaN): at smoothing 1 the label's own term, a class weight of 0 on a
    logit of -inf, a probability of 0 there. Closed forms."""
    x = np.array([0.25, -0.25])  # the exact loss is 0.25 / tau: finite at 1e-300, beyond range at 5e-324
    for t, want in ((1e-300, 0.25 / 1e-300), (5e-324, np.inf)):
        loss = call(backend, "softmax_cross_entropy", x, np.array(1), axis=0, temperature=t, label_smoothing=1.0)
        assert loss == want or np.isclose(loss, want, rtol=1e-14), (t, loss)
    z = np.array([[0.0, -np.inf, 1.0]])
    w = np.array([1.0, 0.0, 1.0])
    lse = np.log(1 + np.e)
    got = call(backend, "softmax_cross_entropy", z, np.array([0]), weight=w, label_smoothing=0.3, reduction="sum")
    np.testing.assert_allclose(got, 0.7 * lse + 0.1 * (lse + (lse - 1)), rtol=1e-14)
    q = np.array([[0.5, 0.0, 0.5]])
    got = call(backend, "softmax_cross_entropy", z, q, reduction="sum")
    np.testing.assert_allclose(got, 0.5 * lse + 0.5 * (lse - 1), rtol=1e-14)


def test_infinite_class_weight_is_a_value(backend):
    x = np.zeros((2, 3))
    w = np.array([np.inf, 1.0, 1.0])
    loss, grad = call(backend, "softmax_cross_entropy", x, np.array([0, 1]), weight=w, return_grad=True)
    assert np.isnan(loss)  # (inf + log 3) / inf: as torch gives
    want_loss, want_grad = oracle("softmax_cross_entropy", x, np.array([0, 1]), weight=w, return_grad=True,
                                  reduction="sum", against=backend)
    loss_sum = call(backend, "softmax_cross_entropy", x, np.array([0, 1]), weight=w, reduction="sum")
    assert loss_sum == want_loss == np.inf


@pytest.mark.parametrize("op", ["softmax_backward", "log_softmax_backward"])
@pytest.mark.parametrize("order", ["big first", "inf first", "mixed", "columns"])
def test_backward_sum_of_huge_terms_and_an_infinity_is_that_infinity(backend, op, order):
    """Terms near the largest double whose running sum overflows, and -inf terms: the sum
    is -inf (the exact sum), not inf - inf = NaN, in whatever order the terms come. Then
    dx is +inf at every finite g and NaN at the -inf entries (-inf + inf), by the closed form."""
    n = 33
    g = np.linspace(-1.0, 1.0, n)
    big, inf = {"big first": ([0, 1], [5, 9]), "inf first": ([20, 30], [0, 2]),
                "mixed": ([3, 17], [4, 32]), "columns": ([0, 1], [5, 9])}[order]
    g[big] = np.finfo(np.float64).max
    g[inf] = -np.inf
    y = np.log(np.full(n, 1.0 / n)) if op == "log_softmax_backward" else np.full(n, 1.0 / n)
    want = np.where(np.isneginf(g), np.nan, np.inf)
    axis = -1
    if order == "columns":  # the softmax axis strided: the column kernels
        g, y, want = (np.ascontiguousarray(np.tile(a[:, None], (1, 3))) for a in (g, y, want))
        axis = 0
    assert_matches(call(backend, op, g, y, axis=axis), want, "float64", f"{op} {order}")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_log_softmax_backward_outputs_beyond_the_exps_bound(backend, dtype):
    """log_softmax_backward's vector loop takes exp(y) without range checks while every |y|
    of a vector lies within its bound (87 float, 708 double) and hands any other vector to
    the checked path: one entry beyond it -- tiny, subnormal-exp, -inf, NaN, large -- at
    each position of rows long enough for whole vectors of every instruction set, against
    the float64 closed form."""
    n = 70
    specials = {"float32": [-90.0, -104.0, -150.0, -np.inf, np.nan, 88.5, 1.0],
                "float64": [-710.0, -740.0, -800.0, -np.inf, np.nan, 709.5, 1.0]}[dtype]
    rng = np.random.default_rng(17)
    rows = []
    for v in specials:
        for pos in range(0, n, 5):
            y = np.log(rng.dirichlet(np.ones(n))).astype(dtype)
            y[pos] = v
            rows.append(y)
    y = np.array(rows, dtype=dtype)
    g = rng.standard_normal(y.shape).astype(dtype)
    want = oracle("log_softmax_backward", g.astype(np.float64), y.astype(np.float64), against=backend)
    got = call(backend, "log_softmax_backward", g, y)
    rtol = 1e-6 if dtype == "float32" else 1e-14
    with np.errstate(over="ignore"):  # exp(88.5) s beyond float32: -inf, as the exact value rounds
        want = want.astype(dtype)
    assert_matches(got, want, dtype, f"log_softmax_backward {dtype}", rtol=rtol, atol=rtol)


def test_large_ignore_index_is_refused_with_its_name():
    with pytest.raises(ValueError, match="ignore_index"):
        csoftmax.softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 1]), ignore_index=2**70)


# ---- out= and in place ----------------------------------------------------------------------
@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_in_place_on_a_view_that_overlaps_itself(op):
    """as_strided rows that share memory: computed aside, then copied in -- the buffer ends as
    NumPy's own copy into that view leaves it."""
    base = np.linspace(-2.0, 3.0, 9)
    v = as_strided(base, shape=(4, 6), strides=(8, 8))
    want_buf = base.copy()
    np.copyto(as_strided(want_buf, shape=(4, 6), strides=(8, 8)), oracle(op, v.copy()))
    with strict():
        res = getattr(csoftmax, op)(v, out=v)
    assert res is v
    np.testing.assert_allclose(base, want_buf, rtol=1e-15)


@pytest.mark.parametrize("op", ["softmax_backward", "log_softmax_backward"])
def test_backward_into_a_view_that_overlaps_itself(op):
    g0, y0 = np.linspace(-1, 1, 9), np.log(np.linspace(0.05, 0.5, 9))
    g = as_strided(g0.copy(), shape=(4, 6), strides=(8, 8))
    y = as_strided(y0.copy(), shape=(4, 6), strides=(8, 8))
    want = oracle(op, g.copy(), y.copy())
    buf = np.zeros(9)
    out = as_strided(buf, shape=(4, 6), strides=(8, 8))
    want_buf = np.zeros(9)
    np.copyto(as_strided(want_buf, shape=(4, 6), strides=(8, 8)), want)
    with strict():
        getattr(csoftmax, op)(g, y, out=out)
    np.testing.assert_allclose(buf, want_buf, rtol=1e-14, atol=1e-15)


def test_byte_swapped_out(backend):
    x = np.linspace(-2, 2, 12).reshape(3, 4)
    out_np = np.zeros((3, 4), dtype=np.dtype(np.float64).newbyteorder())
    out = to_backend(backend, out_np)
    if getattr(out.dtype, "isnative", True):
        pytest.skip(f"{backend}'s arrays have no byte order of their own")
    with strict():
        res = csoftmax.softmax(to_backend(backend, x), out=out, backend=backend)
    assert res is out
    assert_matches(to_numpy(backend, out).astype(np.float64), oracle("softmax", x), "float64", "byte-swapped out=")


# ---- spellings ------------------------------------------------------------------------------
SPELLINGS = ["f2", "e", "half", "float16", "f4", "single", "float32", "<f4", "f8", "d", "float", "double", "float64",
             "=f8", np.float32, np.dtype(">f8")]


@pytest.mark.parametrize("spelling", SPELLINGS, ids=[str(s) for s in SPELLINGS])
def test_every_float_dtype_numpy_accepts(backend, spelling):
    if np.dtype(spelling) == np.float16 and not helpers.has_float16(backend):
        pytest.skip(f"{backend}'s namespace has no float16")
    got = call(backend, "softmax", np.array([1.0, 2.0, 3.0]), dtype=spelling)
    want = np.dtype(spelling).newbyteorder("=")
    assert got.dtype == want
    assert_matches(got, oracle("softmax", np.array([1.0, 2.0, 3.0])), want, f"dtype={spelling!r}")


@pytest.mark.parametrize("spelling", ["i4", "int32", "complex64", "c16", "pi", "M8[s]", "bogus"])
def test_dtypes_that_are_no_float_are_refused(spelling):
    with pytest.raises(TypeError, match="dtype"):
        csoftmax.softmax(np.zeros(3), dtype=spelling)


@pytest.mark.parametrize("axis", [2**31, -(2**31) - 1, 2**63, -(2**63), 2**64, 10**40])
@pytest.mark.parametrize("op", ["softmax", "log_softmax", "logsumexp", "softmax_backward"])
def test_axes_beyond_any_c_integer_are_axis_errors(op, axis):
    """The fast entry declines them (compared as Python ints), the general path names them."""
    args = (np.zeros(3),) if op != "softmax_backward" else (np.zeros(3), np.full(3, 1 / 3))
    with pytest.raises(np.exceptions.AxisError, match="axis"):
        getattr(csoftmax, op)(*args, axis=axis)


def test_complex_backward_does_not_point_to_special():
    z = np.zeros(3, dtype=complex)
    with pytest.raises(TypeError) as info:
        csoftmax.softmax_backward(z, z)
    assert "grad_output" in str(info.value) and "special" not in str(info.value)
    with pytest.raises(TypeError, match="special"):
        csoftmax.softmax(z)
