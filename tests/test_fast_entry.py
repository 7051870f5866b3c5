"""The core's fast entry: a plain call on a NumPy array (int axis, number temperature,
no `where`/`dtype`, an `out=` that can be written directly) goes straight to the core,
skipping the general checks. These tests call through plain dispatch, as users do, and
check (1) which calls the entry takes and which it declines, (2) the values it computes
against the float64 oracle, over nasty arrays, layouts and every kind of `out=`."""
from __future__ import annotations

import numpy as np
import pytest

import csoftmax
from csoftmax import _ops, _registry
from helpers import Family, assert_matches, nasty_arrays, ops_of, oracle, with_layout

pytestmark = pytest.mark.skipif(
    not _registry.is_available("c"), reason="the fast entry belongs to the `c` backend, not built here"
)

FORWARD = ops_of(Family.FORWARD)
BACKWARD = {op.name: op.forward for op in _ops.of_family(Family.BACKWARD)}


def _entry(op):
    """The fast entry plain dispatch of op on a NumPy array uses (after one call resolved it)."""
    args = (np.zeros(2),) if op in FORWARD else (np.zeros(2), np.full(2, 0.5))
    getattr(csoftmax, op)(*args)
    fast = _registry.fast_entry(np.ndarray, op)
    assert fast is not None, f"plain dispatch of {op} on a NumPy array reaches no fast entry"
    return fast


X = np.arange(24, dtype=np.float64).reshape(4, 6) / 5.0
TAKEN = [
    ("f64", X, -1, 1.0, None),
    ("f32", X.astype(np.float32), 0, 0.5, None),
    ("int-tau", X, 1, 3, None),
    ("inf-tau", X, -1, float("inf"), None),
    ("F-order", np.asfortranarray(X), -1, 1.0, None),
    ("strided", X[::2, ::-1], 1, 1.0, None),
    ("out-fresh", X, -1, 1.0, "fresh"),
    ("out-F", X, 0, 1.0, "F"),
    ("out-in-place", X, -1, 1.0, "self"),
    ("out-beside", X, -1, 1.0, "beside"),
]
DECLINED = [
    ("0-d", np.array(1.0), -1, 1.0, None),
    ("f16", X.astype(np.float16), -1, 1.0, None),
    ("int", X.astype(np.int64), -1, 1.0, None),
    ("swapped", X.astype(X.dtype.newbyteorder()), -1, 1.0, None),
    ("tuple-axis", X, (0, 1), 1.0, None),
    ("np-int-axis", X, np.int64(1), 1.0, None),
    ("bad-axis", X, 2, 1.0, None),
    ("bool-tau", X, -1, True, None),
    ("np-tau", X, -1, np.float32(2.0), None),
    ("zero-tau", X, -1, 0.0, None),
    ("nan-tau", X, -1, float("nan"), None),
    ("huge-int-tau", X, -1, 10**400, None),
    ("out-overlap", X, -1, 1.0, "overlap"),
    ("out-dtype", X, -1, 1.0, "f32"),
    ("out-shape", X, -1, 1.0, "T"),
    ("out-readonly", X, -1, 1.0, "readonly"),
    ("out-misaligned", X, -1, 1.0, "misaligned"),
    ("out-list", X, -1, 1.0, "list"),
]


def _out(kind, x):
    """An out= for x of the named kind (the buffer it lives in is kept alive by the view)."""
    if kind is None:
        return None
    if kind == "fresh":
        return np.empty_like(x)
    if kind == "F":
        return np.asfortranarray(np.empty_like(x))
    if kind == "self":
        return x
    if kind == "beside":  # the same buffer, bytes apart from x's
        buf = np.empty((2,) + x.shape, x.dtype)
        buf[0] = x
        x_view = buf[0]
        return buf[1], x_view
    if kind == "overlap":  # shares bytes with x without being it
        buf = np.zeros(x.shape[:-1] + (x.shape[-1] + 1,), x.dtype)
        buf[..., :-1] = x
        return buf[..., 1:], buf[..., :-1]
    if kind == "f32":
        return np.empty(x.shape, np.float32)
    if kind == "T":
        return np.empty(x.shape[::-1], x.dtype)
    if kind == "readonly":
        o = np.empty_like(x)
        o.flags.writeable = False
        return o
    if kind == "misaligned":
        return with_layout(np.zeros(x.shape, x.dtype), "unaligned")
    if kind == "list":
        return [0.0] * x.size
    raise ValueError(kind)


def _args(x, okind):
    o = _out(okind, x)
    if isinstance(o, tuple):  # (out, x as a view of the same buffer)
        return o[1], o[0]
    return x, o


@pytest.mark.parametrize("case", TAKEN + DECLINED, ids=[c[0] for c in TAKEN + DECLINED])
def test_which_calls_the_entry_takes(case):
    name, x, axis, tau, okind = case
    fast = _entry("softmax")
    x, out = _args(x.copy() if x.ndim else x, okind)
    r = fast(x, axis, tau, out)
    taken = any(name == c[0] for c in TAKEN)
    assert (r is not None) == taken, f"{name}: {'declined' if taken else 'taken'}"
    if out is not None and taken:
        assert r is out


def test_backward_entry_takes_out_equal_to_either_input():
    fast = _entry("softmax_backward")
    g = np.linspace(-1, 1, 24).reshape(4, 6)
    y = np.asarray(oracle("softmax", X))
    for out in (g, y, np.empty_like(g)):
        assert fast(g.copy() if out is not g else g, y.copy() if out is not y else y, -1, 1.0, out) is out
    assert fast(g, y[:, ::-1], -1, 1.0, y) is None  # overlaps y, is not it
    assert fast(g, y.astype(np.float32), -1, 1.0, None) is None  # mixed dtypes


@pytest.mark.parametrize("op", FORWARD + tuple(BACKWARD))
def test_every_forward_and_backward_op_has_a_fast_entry(op):
    assert _entry(op) is not None


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("op", FORWARD)
def test_plain_dispatch_values(op, dtype):
    """Through plain dispatch (fast entry or general path, whichever takes the call): the
    oracle's values for nasty arrays, layouts, axes, temperatures and every kind of out=."""
    rng = np.random.default_rng(sum(map(ord, op + dtype)))
    shapes = [(1,), (7,), (33,), (3, 17), (20, 9), (2, 3, 16)]
    for label, x in nasty_arrays(dtype, rng, shapes=shapes):
        for layout in ("C", "F", "negative", "strided"):
            xl = with_layout(x, layout)
            for axis in range(-1, x.ndim):
                if op == "logsumexp":
                    got = csoftmax.logsumexp(xl, axis=axis)
                    assert_matches(got, oracle(op, x, axis=axis), dtype, f"{op} {label} {layout} axis={axis}")
                    continue
                for tau in (1.0, 2, 0.3):
                    want = oracle(op, x, axis=axis, temperature=tau)
                    got = getattr(csoftmax, op)(xl, axis=axis, temperature=tau)
                    assert_matches(got, want, dtype, f"{op} {label} {layout} axis={axis} tau={tau}")
                for okind in ("fresh", "F", "beside", "overlap", "misaligned"):
                    xv, out = _args(xl.copy(), okind)
                    res = getattr(csoftmax, op)(xv, axis=axis, out=out)
                    assert res is out
                    assert_matches(out, oracle(op, x, axis=axis), dtype, f"{op} {label} {layout} axis={axis} out={okind}")
                xs = xl.copy()
                assert getattr(csoftmax, op)(xs, axis=axis, out=xs) is xs
                assert_matches(xs, oracle(op, x, axis=axis), dtype, f"{op} {label} {layout} axis={axis} in place")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("op", sorted(BACKWARD))
def test_plain_dispatch_backward_values(op, dtype):
    rng = np.random.default_rng(sum(map(ord, op + dtype)))
    for shape in [(9,), (3, 17), (20, 9)]:
        for axis in range(-1, len(shape)):
            y = np.asarray(oracle(BACKWARD[op], rng.standard_normal(shape) * 3, axis=axis)).astype(dtype)
            g = rng.standard_normal(shape).astype(dtype)
            want = oracle(op, g, y, axis=axis, temperature=0.5)
            tol = {"float32": 4e-6, "float64": 1e-14}[dtype]
            kw = dict(rtol=tol, atol=tol * (np.abs(g).max() + 1) / 0.5)
            assert_matches(getattr(csoftmax, op)(g, y, axis=axis, temperature=0.5), want, dtype, f"{op} {shape}", **kw)
            for target in ("grad_output", "output", "fresh", "F"):
                gc, yc = g.copy(), y.copy()
                out = {"grad_output": gc, "output": yc, "fresh": np.empty_like(g),
                       "F": np.asfortranarray(np.empty_like(g))}[target]
                assert getattr(csoftmax, op)(gc, yc, axis=axis, temperature=0.5, out=out) is out
                assert_matches(out, want, dtype, f"{op} {shape} axis={axis} out={target}", **kw)
