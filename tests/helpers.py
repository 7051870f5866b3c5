"""Shared test machinery: the backends under test (taken from the registry, so a new
backend widens every test), the ops by family (taken from the op table, so a new op
widens every test of its family), one way to call an op on a backend, a generator of
nasty arrays, memory layouts, tolerances and the float64 oracle."""
from __future__ import annotations

import contextlib
import itertools
import warnings

import numpy as np
import pytest

import csoftmax
from csoftmax import _ops, _registry

FLOATS = ("float16", "float32", "float64")
Family = _ops.Family

# ---- backends and ops -------------------------------------------------------------------


def available_backends():
    return [name for name in csoftmax.backends() if _registry.is_available(name)]


def backend_module(name):
    return _registry.load(name)


def to_backend(name, a):
    return None if a is None else backend_module(name).from_numpy(a)


def to_numpy(name, a):
    return None if a is None else np.asarray(backend_module(name).to_numpy(a))


def mutable(name):
    """Whether a backend's arrays can be written (out=, in place): not JAX's, which are
    immutable (the backend refuses out= as read-only, which test_errors checks)."""
    return backend_module(name).writable(to_backend(name, np.zeros(1)))


def has_float16(name):
    """Whether a backend's namespace has float16 (array-api-strict's, like the standard, not)."""
    x = to_backend(name, np.zeros(1))
    return getattr(backend_module(name).namespace(x), "float16", None) is not None


def skip_unless_mutable(name):
    if not mutable(name):
        pytest.skip(f"{name}: the library's arrays are immutable, so there is no out= to test")


def ops_of(family):
    """The names of the ops of a family, from the op table."""
    return tuple(op.name for op in _ops.of_family(family))


ARRAY_KWARGS = ("where", "out", "weight")


@contextlib.contextmanager
def strict():
    """Any warning is an error, and so is any NumPy floating-point event: a csoftmax call
    warns only where it means to (it never does), under np.seterr(all='raise') too."""
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        yield


def call(backend, op, *arrays, **kw):
    """op on a backend, as a user of that backend's arrays calls it: the NumPy arrays among
    the arguments (and where=, out=, weight=) converted to the backend's type, the results
    converted back to NumPy (tuples element by element). The call itself runs strict()."""
    args = [to_backend(backend, a) if isinstance(a, np.ndarray) else a for a in arrays]
    for k in ARRAY_KWARGS:
        if isinstance(kw.get(k), np.ndarray):
            kw[k] = to_backend(backend, kw[k])
    with strict():
        res = getattr(csoftmax, op)(*args, backend=backend, **kw)
    if isinstance(res, tuple):
        return tuple(to_numpy(backend, r) for r in res)
    return to_numpy(backend, res)


# ---- arrays --------------------------------------------------------------------------------
SHAPES = [
    (),
    (0,),
    (1,),
    (2,),
    (3,),
    (7,),
    (8,),
    (9,),
    (16,),
    (17,),
    (33,),
    (100,),
    (4, 0),
    (0, 4),
    (3, 5),
    (5, 20),
    (7, 35),
    (2, 3, 4),
    (4, 1, 6),
    (3, 17, 9),
    (6, 3, 16),
    (2, 2, 2, 5),
]


def axes_for(ndim):
    if ndim == 0:
        return [-1, None, ()]
    if ndim == 1:
        return [-1, 0, None]
    if ndim == 2:
        return [-1, 0, None, (0, 1)]
    if ndim == 3:
        return [-1, 0, 1, (0, 2), None]
    return [-1, 2, (1, 3), (0, 1, 2)]


def reduced_axes(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    if ndim == 0:
        return ()
    if isinstance(axis, tuple):
        return tuple(sorted(a % ndim for a in axis))
    return (axis % ndim,)


VALUE_KINDS = ("normal", "wide", "ties", "big", "tiny", "nan", "pinf", "ninf", "nan_pinf")


def values(shape, kind, dtype, rng):
    """An array of float64 values exactly representable in dtype, of a given kind."""
    dt = np.dtype(dtype)
    size = int(np.prod(shape))
    if dt.kind in "iu":
        return rng.integers(-6, 7, size=shape).astype(np.float64)
    if dt.kind == "b":
        return rng.integers(0, 2, size=shape).astype(np.float64)
    big = {"float16": 6e4, "float32": 3e38, "float64": 1.7e308}[dt.name]
    tiny = {"float16": 6e-8, "float32": 1e-42, "float64": 1e-320}[dt.name]
    if kind == "normal":
        v = rng.standard_normal(shape)
    elif kind == "wide":
        v = rng.standard_normal(shape) * (3.0 if dt.name == "float16" else 30.0)
    elif kind == "ties":
        v = rng.integers(-2, 3, size=shape).astype(np.float64)
    elif kind == "big":
        v = rng.choice([-big, -big / 2, big / 2, big, 0.0, 1.0], size=shape)
    elif kind == "tiny":
        v = rng.choice([-tiny, tiny, 0.0, -0.0, 2 * tiny], size=shape)
    else:
        v = rng.standard_normal(shape) * 4.0
        specials = {"nan": [np.nan], "pinf": [np.inf], "ninf": [-np.inf], "nan_pinf": [np.nan, np.inf, -np.inf]}[kind]
        if size:
            flat = v.reshape(-1)
            hits = rng.random(size) < 0.2
            flat[hits] = rng.choice(specials, size=int(hits.sum()))
            if kind == "ninf" and v.ndim:
                v[..., 0] = -np.inf  # a row (or more) entirely -inf
                v.reshape(-1)[: max(1, size // 3)] = -np.inf
    return np.asarray(np.asarray(v).astype(dt), dtype=np.float64)


def nasty_arrays(dtype, rng, kinds=VALUE_KINDS, shapes=SHAPES):
    """(label, numpy array of dtype) over shapes x value kinds."""
    for shape, kind in itertools.product(shapes, kinds):
        yield f"{shape}/{kind}", np.asarray(values(shape, kind, dtype, rng), dtype=dtype)


# ---- layouts ----------------------------------------------------------------------------------
LAYOUTS = ("C", "F", "strided", "negative", "readonly", "swapped", "unaligned")


def with_layout(x, layout):
    """An array equal to x, laid out in memory as named."""
    if layout == "C" or x.ndim == 0 and layout in ("F", "strided", "negative"):
        return x.copy(order="C")
    if layout == "F":
        return np.asfortranarray(x)
    if layout == "strided":
        big = np.zeros(tuple(2 * s + 1 for s in x.shape), dtype=x.dtype)
        view = big[tuple(slice(1, None, 2) for _ in x.shape)]
        view[...] = x
        return view
    if layout == "negative":
        rev = tuple(slice(None, None, -1) for _ in x.shape)
        return x[rev].copy(order="C")[rev]
    if layout == "readonly":
        y = x.copy()
        y.flags.writeable = False
        return y
    if layout == "swapped":
        return x.astype(x.dtype.newbyteorder())
    if layout == "unaligned":
        if x.dtype.itemsize == 1:
            return x.copy()
        buf = np.zeros(x.nbytes + 1, dtype=np.uint8)
        y = buf[1:].view(x.dtype).reshape(x.shape)
        y[...] = x
        assert not y.flags.aligned or x.size == 0
        return y
    raise ValueError(layout)


# ---- comparison -------------------------------------------------------------------------------
RTOL = {"float16": 2.0**-10, "float32": 2e-6, "float64": 4e-15}
ATOL = {"float16": 1e-7, "float32": 1e-40, "float64": 1e-305}


def forward_atol(op, x, rdt):
    """The absolute tolerance of a forward op: logsumexp = max + log1p(S') cancels when the
    two terms are close and of opposite sign, so its error is relative to their size (a
    few ulps of the largest finite |x|), not to the result; other ops: the default."""
    rdt = np.dtype(rdt)
    if op != "logsumexp":
        return None
    xf = np.abs(np.asarray(x, dtype=np.float64))
    big = float(np.max(xf[np.isfinite(xf)], initial=0.0))
    return ATOL[rdt.name] + 4 * float(np.finfo(rdt).eps) * big


def assert_matches(got, want, rdt, label, rtol=None, atol=None):
    """got (result dtype rdt) against want (float64 oracle), element-wise: the same NaNs,
    the same infinities, finite values within tolerance (after rounding want to rdt)."""
    rdt = np.dtype(rdt)
    got = np.asarray(got)
    assert got.dtype == rdt, f"{label}: dtype {got.dtype}, expected {rdt}"
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{label}: shape {got.shape}, expected {want.shape}"
    with np.errstate(over="ignore"):
        w = want.astype(rdt).astype(np.float64)
    g = got.astype(np.float64)
    nan_g, nan_w = np.isnan(g), np.isnan(w)
    bad = nan_g != nan_w
    assert not bad.any(), f"{label}: NaN mismatch at {np.argwhere(bad)[:5].tolist()}: got {g[bad][:5]}, want {w[bad][:5]}"
    inf_g, inf_w = np.isinf(g), np.isinf(w)
    bad = (inf_g != inf_w) | (inf_g & (g != w))
    assert not bad.any(), f"{label}: inf mismatch at {np.argwhere(bad)[:5].tolist()}: got {g[bad][:5]}, want {w[bad][:5]}"
    fin = np.isfinite(w)
    rtol = RTOL[rdt.name] if rtol is None else rtol
    atol = ATOL[rdt.name] if atol is None else atol
    err = np.abs(g[fin] - w[fin])
    lim = atol + rtol * np.abs(w[fin])
    bad = err > lim
    if bad.any():
        i = np.argmax(err / lim)
        raise AssertionError(
            f"{label}: {int(bad.sum())} values off; worst got {g[fin][i]!r}, want {w[fin][i]!r} "
            f"(err {err[i]:.3g}, allowed {lim[i]:.3g})"
        )


def result_dtype(dtype):
    dt = np.dtype(dtype)
    return dt if dt.kind == "f" else np.dtype(np.float64)


REFERENCE_CODE = ("reference", "array-api-strict")  # the backends computing with csoftmax._reference


def oracle_backend(backend=None):
    """The implementation a backend's results are compared with: the reference backend;
    for the backends computing with the reference code themselves, the C core (an
    independent implementation of the same contract), where it is built."""
    if backend not in REFERENCE_CODE:
        return "reference"
    return "c" if _registry.is_available("c") else "reference"


def oracle(op, *arrays, against=None, **kwargs):
    """The oracle backend (oracle_backend(against)) on float64 copies of the inputs (values
    as stored); integer arrays stay integers for cross-entropy's labels."""
    conv = []
    for i, a in enumerate(arrays):
        a = np.asarray(a)
        keep = a.dtype.kind in "iu" and op == "softmax_cross_entropy" and i == 1
        conv.append(a if keep else np.asarray(a, dtype=np.float64))
    return getattr(csoftmax, op)(*conv, backend=oracle_backend(against), **kwargs)
