"""The `c` backend: NumPy arrays on the compiled C core (csoftmax._ckernels), behind the
backend protocol (csoftmax._protocol).

The adapter's job is to hand the core arrays it can take as they are: float16, float32
or float64 in native byte order and aligned, any strides. Anything else (integers, bools,
byte-swapped or misaligned data) is first cast into the output array, which the core then
computes in place, so the output stays the only allocation; logsumexp, whose output is
smaller than its input, casts into a temporary instead. An `out=` that overlaps the input
without being the same array, or that is misaligned, byte-swapped or overlaps itself (an
as_strided view), is computed into a fresh array and copied into. Plain calls on
NumPy arrays reach the core through its fast entry (fast_entry) without this module.

Besides the protocol, the statistics-record interface for callers that cut the softmax
axes into parts themselves (the Dask backend): row_stats per part, merge_stats to combine
parts exactly, finish and stats_logsumexp from the merged records (src/backends/cpu/
csm_part.h).

NumPy's subclasses (np.matrix, np.memmap, ...) are computed on base-class views; results
of the input's shape (softmax, log_softmax, the backward passes, cross-entropy's gradient)
come back through the input's __array_wrap__, as NumPy's elementwise ufuncs return them
(np.exp of a matrix is a matrix, of a memmap an ndarray); reductions and Jacobians, whose
shapes a matrix cannot hold, are plain ndarrays.
"""
from __future__ import annotations

import functools
import os
import warnings
from typing import Any

import numpy as np

from .. import _ckernels as ck
from .._ops import BY_NAME, Family, Kind, Op

# ---- instruction set: the best the CPU runs, capped by CSOFTMAX_ISA ----
_isa_note = ""


def set_isa(name: str) -> str:
    """Select an instruction-set build by name (tests); returns the previous one."""
    names = ck.isa_names()
    prev = names[ck.get_isa()]
    ck.set_isa(names.index(name))
    return prev


def supported_isas() -> list[str]:
    return [n for i, n in enumerate(ck.isa_names()) if ck.isa_supported(i)]


def isa_note() -> str:
    return _isa_note


def _apply_isa_env() -> None:
    global _isa_note
    want = os.environ.get("CSOFTMAX_ISA", "").strip().lower()
    if not want:
        return
    names = ck.isa_names()
    if want not in names:
        warnings.warn(f"CSOFTMAX_ISA={want!r} is not one of {names}; ignored", RuntimeWarning, stacklevel=2)
        return
    if names.index(want) > ck.get_isa():
        warnings.warn(
            f"CSOFTMAX_ISA={want!r} is above what this CPU supports; using {names[ck.get_isa()]!r}",
            RuntimeWarning,
            stacklevel=2,
        )
        return
    ck.set_isa(names.index(want))
    _isa_note = f" (capped by CSOFTMAX_ISA={want})"


_apply_isa_env()


# ---- the protocol's interface ----
def namespace(x: Any) -> Any:
    return np


def writable(out: Any) -> bool:
    return bool(out.flags.writeable)


def from_numpy(a: Any) -> Any:
    return a


def to_numpy(a: Any) -> Any:
    return a


def fast_entry(op: Op, cls: Any) -> Any:
    """The core's fast entry for plain calls of op on exact NumPy arrays (csoftmax._api)."""
    if cls is not np.ndarray or op.kind is None:
        return None
    if op.family is Family.FORWARD:
        return functools.partial(ck.fast_forward, int(op.kind))
    if op.family is Family.BACKWARD:
        return functools.partial(ck.fast_backward, int(op.kind))
    return None


# ---- helpers ----
def _plain(a: Any) -> Any:
    """a as a base-class ndarray (None stays None): the adapter computes on those."""
    return a if a is None or type(a) is np.ndarray else a.view(np.ndarray)


def _like_input(x: Any, res: Any) -> Any:
    """A result of x's shape as NumPy's elementwise ufuncs return it for x's class."""
    if type(x) is np.ndarray or res is None:
        return res
    return x.__array_wrap__(res, None, False)


def _kind(op: Op) -> int:
    """The kernel kind of an op the core computes (every op but the Jacobians)."""
    assert op.kind is not None, op.name
    return int(op.kind)


def _takes(x: Any, rdt: Any) -> bool:
    """Whether the core can read x directly for result dtype rdt."""
    return bool(x.dtype == rdt and x.dtype.isnative and x.flags.aligned)


def _ready(a: Any, rdt: Any) -> Any:
    if _takes(a, rdt):
        return a
    with np.errstate(all="ignore"):  # a cast may round to +-inf: the input as the dtype holds it
        return a.astype(rdt)


def _same_memory(a: Any, b: Any) -> bool:
    """a and b are the same elements in the same order (an in-place call)."""
    return a is b or ck.same_layout(a, b)


def _bits(axes: Any) -> int:
    b = 0
    for a in axes:
        b |= 1 << a
    return b


def _elementwise(inputs: Any, out: Any, rdt: Any, call: Any) -> Any:
    """Run a same-shape kind: inputs are the arrays read, out the result or None.
    call(xs..., res) runs the core on arrays it can take."""
    if out is not None and (
        not out.flags.aligned
        or not out.dtype.isnative
        or ck.self_overlaps(out)
        or (not any(_same_memory(out, a) for a in inputs) and any(np.may_share_memory(out, a) for a in inputs))
    ):
        # out is misaligned, byte-swapped, overlaps itself, or overlaps an input without
        # being it: compute aside, then copy
        np.copyto(out, _elementwise(inputs, None, rdt, call))
        return out
    res = out if out is not None else np.empty_like(inputs[0], dtype=rdt)
    ready = []
    for a in inputs:
        if _takes(a, rdt):
            ready.append(a)
        elif len(inputs) == 1:
            with np.errstate(all="ignore"):  # the cast may round to +-inf, as the dtype holds it
                np.copyto(res, a, casting="unsafe")  # cast into the output, compute in place
            ready.append(res)
        else:
            ready.append(_ready(a, rdt))
    call(*ready, res)
    return res


def _logsumexp(x: Any, axes: Any, keepdims: Any, where: Any, out: Any, rdt: Any) -> Any:
    kshape = tuple(1 if i in axes else s for i, s in enumerate(x.shape))
    xs = _ready(x, rdt)
    if out is None or not out.flags.aligned or not out.dtype.isnative or ck.self_overlaps(out) \
            or np.may_share_memory(out, x):
        row = np.empty(kshape, dtype=rdt)
        result = row if keepdims else row.reshape(tuple(s for i, s in enumerate(x.shape) if i not in axes))
    else:
        row = out if keepdims else np.expand_dims(out, axes)
        result = out
    ck.run(int(Kind.LOGSUMEXP), xs, mask=where, row=row, reduce=_bits(axes))
    if out is not None and result is not out:
        np.copyto(out, result)
        return out
    return result


# ---- the families ----
def forward(op: Op, x: Any, /, *, axes: Any, temperature: Any, keepdims: Any, where: Any, out: Any, dtype: Any) -> Any:
    px, pw, po = _plain(x), _plain(where), _plain(out)
    if op.kind is Kind.LOGSUMEXP:
        res = _logsumexp(px, axes, keepdims, pw, po, dtype)
        return out if out is not None else res
    kind, reduce = _kind(op), _bits(axes)
    res = _elementwise(
        (px,), po, dtype, lambda xs, r: ck.run(kind, xs, out=r, mask=pw, reduce=reduce, temperature=temperature)
    )
    return out if out is not None else _like_input(x, res)


def backward(op: Op, grad_output: Any, output: Any, /, *, axes: Any, temperature: Any, where: Any, out: Any,
             dtype: Any) -> Any:
    kind, reduce, pw = _kind(op), _bits(axes), _plain(where)
    res = _elementwise(
        (_plain(grad_output), _plain(output)),
        _plain(out),
        dtype,
        lambda gs, ys, r: ck.run(kind, gs, y=ys, out=r, mask=pw, reduce=reduce, temperature=temperature),
    )
    return out if out is not None else _like_input(grad_output, res)


_JACOBIAN_BLOCK = 1 << 20  # float64 entries of J computed at a time


def jacobian(op: Op, x: Any, /, *, axis: Any, temperature: Any, dtype: Any) -> Any:
    """J from the core's softmax and log_softmax in float64 (exact for float16 and float32
    input), formed and divided by tau in float64 a block of rows at a time and rounded once
    into the result (a division, so that every tau gives the formula's value)."""
    xl = np.moveaxis(_plain(x), axis, -1)
    n = xl.shape[-1]
    kw = dict(axes=(xl.ndim - 1,), temperature=temperature, keepdims=False, where=None, out=None,
              dtype=np.dtype(np.float64))
    s = forward(BY_NAME["softmax"], xl, **kw).reshape(-1, n)
    lp = forward(BY_NAME["log_softmax"], xl, **kw).reshape(-1, n)
    J = np.empty((s.shape[0], n, n), dtype=dtype)
    rows = max(1, _JACOBIAN_BLOCK // (n * n))
    with np.errstate(all="ignore"):  # a result beyond the dtype's range rounds to +-inf, as it should
        for r0 in range(0, s.shape[0], rows):
            sb, om = s[r0 : r0 + rows], -np.expm1(lp[r0 : r0 + rows])  # 1 - s, exact also where s ~ 1
            if op.log:
                Jb = np.repeat(-sb[:, None, :], n, axis=1)
                diag = om
            else:
                Jb = sb[:, :, None] * sb[:, None, :]
                np.negative(Jb, out=Jb)
                diag = sb * om
            Jb.reshape(Jb.shape[0], n * n)[:, :: n + 1] = diag
            if temperature != 1.0:
                np.divide(Jb, temperature, out=Jb)
            J[r0 : r0 + rows] = Jb
    return J.reshape(xl.shape + (n,))


def cross_entropy(op: Op, logits: Any, /, *, axis: Any, labels: Any, probs: Any, weight: Any, ignore_index: Any,
                  label_smoothing: Any, temperature: Any, where: Any,
                  grad_scale: Any, want_grad: Any, dtype: Any) -> Any:
    xs = _ready(_plain(logits), dtype)
    ps = None if probs is None else _ready(_plain(probs), dtype)
    labels, weight, where = _plain(labels), _plain(weight), _plain(where)
    kshape = tuple(1 if i == axis else s for i, s in enumerate(logits.shape))
    row = np.empty(kshape, dtype=np.float64)
    lab = None if labels is None else np.expand_dims(labels.astype(np.int64, copy=False), axis)
    w = None if weight is None else np.ascontiguousarray(weight, dtype=np.float64)
    grad = np.empty_like(xs, dtype=dtype) if want_grad else None
    ck.run(_kind(op), xs, y=ps, out=grad, mask=where, row=row, label=lab, reduce=1 << axis,
           temperature=temperature, weight=w, smoothing=label_smoothing, ignore_index=ignore_index,
           grad_scale=grad_scale)
    return np.squeeze(row, axis=axis), _like_input(logits, grad)


# ---- statistics records: parts of rows computed apart, merged exactly ----
STATS_FIELDS = ck.STAT_FIELDS  # m, s_hi, s_lo, any, nan, count (csm_core.h, CSM_STAT_*)


def _records(x: Any, axes: Any) -> Any:
    """A float64 array for the records of x's slices over axes: x's shape with the axes
    kept as size 1, then STATS_FIELDS; and the view of its first field the core writes."""
    kshape = tuple(1 if i in axes else s for i, s in enumerate(x.shape))
    rec = np.empty(kshape + (STATS_FIELDS,), dtype=np.float64)
    return rec, rec[..., 0]


def row_stats(x: Any, axes: Any, temperature: Any, where: Any) -> Any:
    """The statistics record of each slice of x over axes (x a NumPy array of any real
    dtype, where a boolean mask broadcastable to it): m, S' as s_hi + s_lo, any, nan and
    (temperature +inf) count -- see csm_core.h's CSM_STAT_* for their meaning."""
    xs = _ready(x, x.dtype.newbyteorder("=") if x.dtype.kind == "f" else np.dtype(np.float64))
    rec, first = _records(x, axes)
    ck.run(int(Kind.STATS), xs, mask=where, row=first, reduce=_bits(axes), temperature=temperature)
    return rec


def merge_stats(a: Any, b: Any, temperature: Any) -> Any:
    """The records of two disjoint parts of the same slices (a and b of one shape), merged
    exactly: a new array."""
    out = np.array(a, dtype=np.float64, order="C", copy=True)
    ck.merge_stats(out, np.ascontiguousarray(b, dtype=np.float64), float(temperature))
    return out


def finish(op: Op, x: Any, stats: Any, axes: Any, temperature: Any, where: Any, out: Any, dtype: Any) -> Any:
    """softmax or log_softmax (op) of x -- a part of each slice over axes -- given the whole
    slices' merged records (stats: x's shape with the axes as size 1, then STATS_FIELDS).
    Returns out (or a new array of dtype)."""
    rec = np.ascontiguousarray(stats, dtype=np.float64)
    first = rec[..., 0]
    kind, reduce = _kind(op), _bits(axes)
    return _elementwise(
        (x,), out, dtype,
        lambda xs, res: ck.run(kind, xs, out=res, mask=where, row=first, reduce=reduce, temperature=temperature),
    )


def stats_logsumexp(stats: Any, dtype: Any) -> Any:
    """The logsumexp of each slice from its record (temperature 1), of dtype."""
    rec = np.ascontiguousarray(stats, dtype=np.float64)
    lse = np.empty(rec.shape[:-1], dtype=np.float64)
    ck.stats_logsumexp(rec, lse)
    with np.errstate(all="ignore"):  # a float16 result may round to a subnormal or 0: as the dtype holds it
        return lse.astype(dtype, copy=False)
