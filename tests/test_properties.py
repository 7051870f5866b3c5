"""Properties that hold for any input (hypothesis): shift invariance, sums to one,
monotonicity, masks, and the identities between the ops -- on every backend."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from helpers import call

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

dtypes = st.sampled_from([np.float32, np.float64])
shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=12)


@st.composite
def arrays_and_axis(draw, elements=None):
    dtype = draw(dtypes)
    shape = draw(shapes)
    if elements is None:
        elements = st.floats(-50, 50, width=32)
    x = draw(hnp.arrays(dtype, shape, elements=elements))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    return x, axis


@SETTINGS
@given(data=arrays_and_axis(elements=st.integers(-40, 40).map(float)), shift=st.integers(-1000, 1000))
def test_shift_invariance(backend, data, shift):
    """softmax(x + c) and softmax(x) agree when x + c is exact (integers): within 8 ulp, the
    contract's 4 ulp of the exact value for each. Not bit for bit: the C core's anchored
    exp (docs/design.md, "The anchored exp") reduces exp(x) from x itself, so a shifted
    row rounds differently."""
    x, axis = data
    for op in ("softmax", "log_softmax"):
        a = call(backend, op, x, axis=axis)
        b = call(backend, op, x + x.dtype.type(shift), axis=axis)
        np.testing.assert_array_max_ulp(a, b, maxulp=8)


@SETTINGS
@given(data=arrays_and_axis(elements=st.floats(-300, 300, width=32)))
def test_sums_to_one_and_matches_log(backend, data):
    x, axis = data
    s = call(backend, "softmax", x, axis=axis)
    n = x.shape[axis]
    eps = np.finfo(x.dtype).eps
    total = s.astype(np.float64).sum(axis=axis)
    assert np.all(np.abs(total - 1) <= 4 * eps * max(1.0, math.log2(n)))
    assert np.all((s >= 0) & (s <= 1))
    ls = call(backend, "log_softmax", x, axis=axis)
    assert np.all(np.isfinite(ls))
    assert np.all(ls <= 0)
    big = s > 1e-3
    np.testing.assert_allclose(np.exp(ls[big].astype(np.float64)), s[big], rtol=8 * eps)
    lse = call(backend, "logsumexp", x, axis=axis, keepdims=True)
    np.testing.assert_allclose(ls, x - lse, rtol=8 * eps, atol=8 * eps * (np.abs(lse) + 1).max())


@SETTINGS
@given(data=arrays_and_axis())
def test_monotone(backend, data):
    """x_i < x_j implies softmax_i <= softmax_j within a slice."""
    x, axis = data
    s = np.moveaxis(call(backend, "softmax", x, axis=axis), axis, -1).reshape(-1, x.shape[axis])
    xv = np.moveaxis(x, axis, -1).reshape(-1, x.shape[axis])
    order = np.argsort(xv, axis=-1, kind="stable")
    ss = np.take_along_axis(s, order, axis=-1)
    xs = np.take_along_axis(xv, order, axis=-1)
    strict = np.diff(xs, axis=-1) > 0
    assert np.all(np.diff(ss, axis=-1)[strict] >= 0)


@SETTINGS
@given(
    x=hnp.arrays(np.float64, st.integers(1, 40), elements=st.floats(-30, 30)),
    mask_seed=st.integers(0, 2**32 - 1),
)
def test_mask_is_the_softmax_of_the_kept_entries(backend, x, mask_seed):
    """softmax(x, where=m) equals softmax(x[m]) on m and 0 elsewhere; log_softmax -inf."""
    m = np.random.default_rng(mask_seed).random(x.shape) < 0.6
    s = call(backend, "softmax", x, where=m)
    ls = call(backend, "log_softmax", x, where=m)
    lse = call(backend, "logsumexp", x, where=m)
    assert np.all(s[~m] == 0) and np.all(ls[~m] == -np.inf)
    if m.any():
        np.testing.assert_allclose(s[m], call(backend, "softmax", x[m]), rtol=1e-15, atol=0)
        np.testing.assert_allclose(ls[m], call(backend, "log_softmax", x[m]), rtol=1e-15, atol=1e-300)
        assert lse == pytest.approx(float(call(backend, "logsumexp", x[m])), rel=1e-15)
    else:
        assert lse == -np.inf


@SETTINGS
@given(data=arrays_and_axis(elements=st.floats(-20, 20)), tau=st.floats(0.05, 20))
def test_temperature_is_division(backend, data, tau):
    """softmax(x, temperature=t) == softmax(x / t) up to the rounding of x / t."""
    x, axis = data
    xd = x.astype(np.float64)
    a = call(backend, "softmax", xd, axis=axis, temperature=tau)
    b = call(backend, "softmax", xd / tau, axis=axis)
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-300)


@SETTINGS
@given(
    x=hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=4, max_side=6), elements=st.floats(-10, 10)),
    data=st.data(),
)
def test_tuple_axes_are_one_joint_softmax(backend, x, data):
    """Softmax over a tuple of axes equals softmax over those axes moved last and merged."""
    k = data.draw(st.integers(1, x.ndim))
    axes = tuple(sorted(data.draw(st.permutations(range(x.ndim)))[:k]))
    got = call(backend, "softmax", x, axis=axes)
    rest = [a for a in range(x.ndim) if a not in axes]
    moved = np.transpose(x, rest + list(axes))
    flat = moved.reshape(moved.shape[: len(rest)] + (-1,))
    want = call(backend, "softmax", np.ascontiguousarray(flat), axis=-1).reshape(moved.shape)
    np.testing.assert_allclose(np.transpose(got, rest + list(axes)), want, rtol=1e-15, atol=1e-300)


@SETTINGS
@given(
    shape=hnp.array_shapes(min_dims=1, max_dims=3, max_side=9),
    data=st.data(),
)
def test_any_strides_never_crash_and_agree(backend, shape, data):
    """Arbitrary slicing (steps, reversals) of a bigger array: the result equals that of a
    contiguous copy (to rounding: another kernel may sum in another order)."""
    big_shape = tuple(3 * s + 2 for s in shape)
    base = np.random.default_rng(data.draw(st.integers(0, 1000))).standard_normal(big_shape)
    index = []
    for s in shape:
        step = data.draw(st.sampled_from([1, 2, 3, -1, -2]))
        start = 0 if step > 0 else 3 * s + 1
        index.append(slice(start, start + step * s, step))
    view = base[tuple(index)]
    assert view.shape == shape
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    for op in ("softmax", "log_softmax", "logsumexp"):
        a = call(backend, op, view, axis=axis)
        b = call(backend, op, np.ascontiguousarray(view), axis=axis)
        # another kernel may sum in another order: an ulp apart, and logsumexp's max + log1p(S')
        # may cancel to a value well below its parts
        np.testing.assert_allclose(a, b, rtol=1e-14, atol=1e-15)
