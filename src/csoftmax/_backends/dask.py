"""The `dask` backend: Dask arrays, lazily, behind the backend protocol
(csoftmax._protocol). Every result is a Dask array; nothing is computed until the caller
computes it, and every task is a module-level function of NumPy (or CuPy) chunks, so the
graphs run on a dask.distributed cluster of processes as well as on threads.

Plans (docs/design.md, "Dask"):
  softmax, log_softmax   every softmax axis in one chunk: one map_blocks of csoftmax's
                         function on the chunks (the C core for NumPy chunks, the CUDA
                         kernels for CuPy chunks). A chunked axis: two stages -- each
                         chunk's statistics records (csoftmax._backends.c.row_stats: max,
                         S' as a double-double, flags), merged exactly along the axis by
                         da.reduction (merge_stats, the C core's own long-row merge), then
                         a map_blocks that normalises each chunk with its slices' merged
                         records (finish): the accuracy of the in-memory call (4 ulp)
  logsumexp              da.reduction over the same records (stats_logsumexp at the end)
  backward passes,       the softmax axis (the class axis) rechunked whole, then one
  Jacobians,             map_blocks of csoftmax's function on the chunks; cross-entropy
  cross-entropy          gives per-row losses and per-row gradients, which the front end
                         reduces (with 'mean' over all chunks) and scales lazily
CuPy chunks take the rechunking plan for chunked softmax axes too (the statistics records
are the C core's). Label values are checked when the chunks are computed, with csoftmax's
messages (the deferred hook); out= is written by Dask's item assignment (out[...] = result).

The front end checks Dask arrays with _Namespace: dask.array with NumPy's dtypes and the
array-API names dask.array lacks (astype, isdtype).
"""
from __future__ import annotations

import importlib
import operator
from functools import partial
from typing import Any

import numpy as np

import csoftmax

from .. import _api
from .._ops import BY_NAME, Kind, Op
from . import c as _c

# typed as Any: Dask is optional, and absent where mypy may run
da: Any = importlib.import_module("dask.array")
meta_from_array: Any = importlib.import_module("dask.array.utils").meta_from_array

STATS = np.dtype([("r", np.float64, (_c.STATS_FIELDS,))])  # one slice's statistics record


# ---- the namespace the front end checks Dask arrays with ----
class _Namespace:
    """dask.array, with NumPy's dtypes and the array-API names it lacks."""

    float16, float32, float64 = np.float16, np.float32, np.float64
    int8, int64, bool = np.int8, np.int64, np.bool_
    isdtype = staticmethod(np.isdtype)

    def __getattr__(self, name: Any) -> Any:
        return getattr(da, name)

    @staticmethod
    def astype(a: Any, dtype: Any) -> Any:
        return _cast(a, dtype)

    @staticmethod
    def divide(a: Any, b: Any) -> Any:
        return da.map_blocks(_quiet_divide, a, b, dtype=np.result_type(a.dtype, b.dtype))

    @staticmethod
    def sum(a: Any, axis: Any = None, keepdims: Any = False, dtype: Any = None) -> Any:
        return da.reduction(a, _quiet_sum, _quiet_sum, axis=axis, keepdims=keepdims,
                            dtype=np.dtype(dtype) if dtype is not None else a.dtype)

    @staticmethod
    def asarray(v: Any, dtype: Any = None) -> Any:
        return da.asarray(v, dtype=dtype)


_NAMESPACE = _Namespace()


# ---- the protocol's interface ----
def namespace(x: Any) -> Any:
    return _NAMESPACE


def writable(out: Any) -> bool:
    return True


def deferred(a: Any) -> bool:
    return True


def from_numpy(a: Any) -> Any:
    """A Dask array of a's values, every dimension of two or more cut into two chunks (so
    that the test matrix runs the plans of chunked axes)."""
    return da.from_array(a, chunks=tuple(max(1, -(-s // 2)) for s in a.shape))


def to_numpy(a: Any) -> Any:
    return np.asarray(a.compute(scheduler="synchronous"))


# ---- helpers ----
# Casts, divisions and sums that the front end means to give +-inf or NaN (csoftmax._checks.quiet)
# run when the graph is computed, outside any errstate of the call: their tasks are quiet
# themselves.
def _quiet_astype(b: Any, *, to: Any) -> Any:
    with np.errstate(all="ignore"):
        return b.astype(to, copy=False)


def _quiet_divide(a: Any, b: Any) -> Any:
    with np.errstate(all="ignore"):
        return a / b


def _quiet_sum(b: Any, axis: Any = None, keepdims: bool = False, **kw: Any) -> Any:
    """A chunk's (or the chunks' partial sums') sum for da.reduction: a total beyond the
    dtype's range is inf (a cross-entropy of huge per-row losses), not an overflow warning."""
    kw.pop("computing_meta", None)
    with np.errstate(all="ignore"):
        return np.sum(b, axis=axis, keepdims=keepdims, **kw)


def _cast(a: Any, dtype: Any) -> Any:
    dtype = np.dtype(dtype)
    return a if a.dtype == dtype else a.map_blocks(partial(_quiet_astype, to=dtype), dtype=dtype)


def _on_gpu(x: Any) -> bool:
    return type(x._meta).__module__.startswith("cupy")


def _whole(x: Any, axes: Any) -> Any:
    return len(axes) == 0 or all(len(x.chunks[a]) == 1 for a in axes)


def _mask_like(where: Any, x: Any) -> Any:
    """where broadcast to x's shape and chunked like x (None stays None)."""
    if where is None:
        return None
    return da.broadcast_to(where, x.shape).rechunk(x.chunks)


def _rechunk_whole(x: Any, axes: Any) -> Any:
    return x.rechunk({a: -1 for a in axes})


def _deliver(res: Any, out: Any) -> Any:
    if out is None:
        return res
    if out.size:  # Dask's item assignment refuses an empty value even of the right shape; there is nothing to write
        out[...] = res
    return out


def _letters(n: Any) -> Any:
    return tuple(chr(ord("a") + i) for i in range(n))


# ---- tasks (module-level: picklable for dask.distributed) ----
# Each names the backend of its chunks' library: a task may run in a thread where the
# caller's use_backend() is in force, or in another process.
def _chunk_backend(b: Any) -> str:
    return "cuda" if type(b).__module__.startswith("cupy") else "c"


def _block_forward(xb: Any, wb: Any = None, *, op_name: str, axes: Any, temperature: float, keepdims: bool,
                   rdt: Any) -> Any:
    if op_name == "logsumexp":
        return csoftmax.logsumexp(xb, axis=axes, keepdims=keepdims, where=wb, dtype=rdt, backend=_chunk_backend(xb))
    return getattr(csoftmax, op_name)(xb, axis=axes, temperature=temperature, where=wb, dtype=rdt,
                                      backend=_chunk_backend(xb))


def _records(rec: Any) -> Any:
    """A float64 (..., STATS_FIELDS) array of records as an array of STATS."""
    return np.ascontiguousarray(rec).view(STATS).reshape(rec.shape[:-1])


def _stats_chunk(xb: Any, weights: Any = None, axis: Any = None, keepdims: bool = True, *,
                 temperature: float) -> Any:  # weights: the where mask
    return _records(_c.row_stats(xb, tuple(axis), temperature, weights))


def _merged(parts: Any, temperature: Any) -> Any:
    """The merge of a (nested, as da.reduction passes it) list of records."""
    if isinstance(parts, (list, tuple)):
        merged = None
        for p in parts:
            p = _merged(p, temperature)
            merged = p if merged is None else _records(_c.merge_stats(merged["r"], p["r"], temperature))
        return merged
    return parts


def _stats_combine(parts: Any, axis: Any = None, keepdims: Any = True, *, temperature: Any) -> Any:
    return _merged(parts, temperature)


def _lse_aggregate(parts: Any, axis: Any = None, keepdims: Any = False, *, rdt: Any) -> Any:
    rec = _merged(parts, 1.0)
    lse = _c.stats_logsumexp(rec["r"], rdt)
    return lse if keepdims else np.squeeze(lse, axis=tuple(axis))


def _block_finish(xb: Any, sb: Any, wb: Any = None, *, op_name: Any, axes: Any, temperature: Any, rdt: Any) -> Any:
    return _c.finish(BY_NAME[op_name], xb, sb["r"], axes, temperature, wb, None, rdt)


def _block_backward(gb: Any, yb: Any, wb: Any = None, *, op_name: Any, axes: Any, temperature: Any) -> Any:
    return getattr(csoftmax, op_name)(gb, yb, axis=axes, temperature=temperature, where=wb, backend=_chunk_backend(gb))


def _block_jacobian(xb: Any, *, op_name: Any, axis: Any, temperature: Any, rdt: Any) -> Any:
    # the whole array's size was checked against max_bytes by the front end
    J = getattr(csoftmax, op_name)(xb, axis=axis, temperature=temperature, max_bytes=2**62, backend=_chunk_backend(xb))
    return _quiet_astype(J, to=rdt)


def _block_cross_entropy(xb: Any, tb: Any, wb: Any, weight: Any, scale: Any, *, axis: int, is_labels: bool,
                         ignore_index: int, eps: float, temperature: float, want_grad: bool, rdt: Any) -> Any:
    """(per-row losses in float64, the gradient or None) of one chunk of whole rows, from
    the backend of the chunk's library; label values checked here. One task gives both:
    the two arrays of cross_entropy pick them from its result. scale: the gradient's scale
    (a float, or the 0-d chunk of the lazy 'mean' denominator's inverse), applied in the
    kernel as the in-memory call applies it."""
    op = BY_NAME["softmax_cross_entropy"]
    _, mod = csoftmax._registry.dispatch(xb, op.name, _chunk_backend(xb))
    xp = mod.namespace(xb)
    if is_labels:
        _api._check_labels(xp, xb, tb, axis, xb.shape[axis], ignore_index, wb)
    w = None if weight is None else xp.asarray(weight, dtype=xp.float64)
    loss, grad = mod.cross_entropy(op, xb, axis=axis, labels=tb if is_labels else None,
                                   probs=None if is_labels else tb, weight=w, ignore_index=ignore_index,
                                   label_smoothing=eps, temperature=temperature, where=wb, grad_scale=float(scale),
                                   want_grad=want_grad, dtype=rdt)
    return xp.expand_dims(loss, axis=axis), grad  # the losses keep the class axis, as size 1


# ---- the families ----
def _stats(x: Any, axes: Any, temperature: Any, where: Any) -> Any:
    """The merged statistics records of x's slices over axes: a Dask array of STATS of
    x's shape with the axes kept as size 1 (one chunk along them)."""
    merge = partial(_stats_combine, temperature=temperature)
    return da.reduction(x, partial(_stats_chunk, temperature=temperature), merge, axis=axes, keepdims=True,
                        dtype=STATS, combine=merge, concatenate=False, meta=np.empty((0,) * x.ndim, dtype=STATS),
                        weights=where, name="csoftmax-stats")


def forward(op: Op, x: Any, /, *, axes: Any, temperature: Any, keepdims: Any, where: Any, out: Any, dtype: Any) -> Any:
    where = _mask_like(where, x)
    gpu = _on_gpu(x)
    stats_plan = not gpu and (op.kind is Kind.LOGSUMEXP and bool(axes) or not _whole(x, axes))
    if stats_plan and x.dtype != dtype:  # dtype= casts first, as in memory: the records are of the cast values
        x = _cast(x, dtype)
    if op.kind is Kind.LOGSUMEXP and axes and not gpu:
        res = da.reduction(x, partial(_stats_chunk, temperature=1.0), partial(_lse_aggregate, rdt=dtype), axis=axes,
                           keepdims=keepdims, dtype=dtype, combine=partial(_stats_combine, temperature=1.0),
                           concatenate=False, meta=np.empty((0,) * (x.ndim if keepdims else x.ndim - len(axes)),
                                                            dtype=dtype),
                           weights=where, name="csoftmax-logsumexp")
        return _deliver(res, out)
    if op.kind is not Kind.LOGSUMEXP and not _whole(x, axes) and not gpu:
        stats = _stats(x, axes, temperature, where)
        args: tuple[Any, ...] = (x, stats) if where is None else (x, stats, where)
        res = da.map_blocks(_block_finish, *args, op_name=op.name, axes=axes, temperature=temperature, rdt=dtype,
                            meta=meta_from_array(x, dtype=dtype), token="csoftmax-" + op.name)
        return _deliver(res, out)
    if not _whole(x, axes):
        x = _rechunk_whole(x, axes)
        where = _mask_like(where, x)
    kw = dict(op_name=op.name, axes=axes, temperature=temperature, keepdims=keepdims, rdt=dtype,
              token="csoftmax-" + op.name)
    args = (x,) if where is None else (x, where)
    if op.kind is Kind.LOGSUMEXP:
        chunks = tuple(((1,) if i in axes else c) for i, c in enumerate(x.chunks) if keepdims or i not in axes)
        drop = () if keepdims else axes
        res = da.map_blocks(_block_forward, *args, chunks=chunks, drop_axis=drop,
                            meta=meta_from_array(x, ndim=len(chunks), dtype=dtype), **kw)
    else:
        res = da.map_blocks(_block_forward, *args, meta=meta_from_array(x, dtype=dtype), **kw)
    return _deliver(res, out)


def backward(op: Op, grad_output: Any, output: Any, /, *, axes: Any, temperature: Any, where: Any, out: Any,
             dtype: Any) -> Any:
    g, y = grad_output, output
    if not _whole(g, axes) or g.chunks != y.chunks:
        g = _rechunk_whole(g, axes)
        y = y.rechunk(g.chunks)
    where = _mask_like(where, g)
    args: tuple[Any, ...] = (g, y) if where is None else (g, y, where)
    res = da.map_blocks(_block_backward, *args, op_name=op.name, axes=axes, temperature=temperature,
                        meta=meta_from_array(g, dtype=dtype), token="csoftmax-" + op.name)
    return _deliver(_cast(res, dtype), out)


def jacobian(op: Op, x: Any, /, *, axis: Any, temperature: Any, dtype: Any) -> Any:
    x = _rechunk_whole(x, (axis,))
    ind = _letters(x.ndim)
    n = x.shape[axis]
    out_ind = tuple(c for i, c in enumerate(ind) if i != axis) + ("y", "z")
    return da.blockwise(_block_jacobian, out_ind, x, ind, new_axes={"y": n, "z": n}, concatenate=True,
                        op_name=op.name, axis=axis, temperature=temperature, rdt=dtype,
                        meta=meta_from_array(x, ndim=len(out_ind), dtype=dtype), token="csoftmax-" + op.name)


def cross_entropy(op: Op, logits: Any, /, *, axis: Any, labels: Any, probs: Any, weight: Any, ignore_index: Any,
                  label_smoothing: Any, temperature: Any, where: Any, grad_scale: Any, want_grad: Any,
                  dtype: Any) -> Any:
    x = _rechunk_whole(logits, (axis,))
    ind = _letters(x.ndim)
    row_ind = tuple(c for i, c in enumerate(ind) if i != axis)
    row_chunks = tuple(c for i, c in enumerate(x.chunks) if i != axis)
    if labels is not None:
        target, target_ind = labels.rechunk(row_chunks), row_ind
    else:
        target, target_ind = probs.rechunk(x.chunks), ind
    args: list[Any] = [x, ind, target, target_ind]
    args += [None, None] if where is None else [_mask_like(where, x), ind]
    args += [None, None] if weight is None else [weight.rechunk(-1), (ind[axis],)]
    args += [grad_scale, None] if isinstance(grad_scale, float) else [grad_scale, ()]
    pairs = da.blockwise(_block_cross_entropy, ind, *args, axis=axis, is_labels=labels is not None,
                         ignore_index=ignore_index, eps=label_smoothing, temperature=temperature,
                         want_grad=want_grad, rdt=dtype, meta=np.empty((0,) * x.ndim, dtype=object),
                         token="csoftmax-cross-entropy")
    keep_chunks = tuple((1,) if i == axis else c for i, c in enumerate(x.chunks))
    row_loss = da.map_blocks(operator.getitem, pairs, 0, chunks=keep_chunks,
                             meta=meta_from_array(x, dtype=np.float64)).squeeze(axis)
    if not want_grad:
        return row_loss, None
    return row_loss, da.map_blocks(operator.getitem, pairs, 1, meta=meta_from_array(x, dtype=dtype))

