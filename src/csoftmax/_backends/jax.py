"""The `jax` backend: JAX arrays and tracers, behind the backend protocol
(csoftmax._protocol).

Concrete arrays are computed by the backends of their memory through zero-copy views:
on the CPU by the C core (`c`: np.asarray in; results written into 64-byte-aligned NumPy
buffers that jnp.from_dlpack takes without a copy), on a GPU by the CUDA kernels (`cuda`,
through DLPack to CuPy; without CuPy a TypeError says so).

Under jit, grad and vmap the arguments are tracers: each op is then a jax.pure_callback
into the C core (on the host; vmap_method="broadcast_all", the batch axes leading),
wrapped in a jax.custom_vjp whose backward is csoftmax's own -- the backward passes on the
saved output for softmax and log_softmax, softmax(x) * g for logsumexp, the saved
gradient of the fused cross-entropy pass (and csoftmax._reference.cross_entropy_target_vjp
for probability targets and class weights); the backward passes' own backward is
csoftmax._reference.*_backward_vjp in jax.numpy, so grad of grad works. Labels, `where`
and weights may be traced too: their values are then checked inside the callback, with
csoftmax's messages (JAX reports the error when the computation runs).

JAX arrays are immutable: out= is refused as read-only (writable is False). Float64 is
used only where jax_enable_x64 is on; without it integer input computes in float32 (the
front end asks the namespace, csoftmax._checks.default_float), so no call warns.
"""
from __future__ import annotations

import functools
import importlib
from typing import Any

import numpy as np

import csoftmax

from .. import _reference as R
from .._ops import Family, Kind, Op
from . import c as _c

# typed as Any: JAX is optional, and absent where mypy may run
jax: Any = importlib.import_module("jax")
jnp: Any = importlib.import_module("jax.numpy")

_Tracer = jax.core.Tracer
_ALIGN = 64  # what jnp.from_dlpack takes without a copy


# ---- the protocol's interface ----
def namespace(x: Any) -> Any:
    return jnp


def writable(out: Any) -> bool:
    return False


def deferred(a: Any) -> bool:
    return isinstance(a, _Tracer)


def from_numpy(a: Any) -> Any:
    return jnp.asarray(a if a.dtype.isnative else a.astype(a.dtype.newbyteorder("=")))


def to_numpy(a: Any) -> Any:
    return np.asarray(a)


# ---- concrete arrays: views onto the C core (CPU) or CuPy (GPU) ----
def _traced(*arrays: Any) -> bool:
    return any(isinstance(a, _Tracer) for a in arrays)


def _on_cpu(a: Any) -> bool:
    return bool(a.device.platform == "cpu")


def _empty(shape: Any, dtype: Any) -> Any:
    """An uninitialised NumPy array whose data starts on a 64-byte boundary."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape)) * dtype.itemsize
    buf = np.empty(n + _ALIGN, dtype=np.uint8)
    start = (-buf.ctypes.data) % _ALIGN
    return buf[start:start + n].view(dtype).reshape(shape)


def _down(a: Any) -> Any:
    if a is None or not isinstance(a, jax.Array):
        return a
    if _on_cpu(a):
        return np.asarray(a)
    if a.device.platform != "gpu":
        raise TypeError(f"csoftmax takes JAX arrays on the CPU and on CUDA GPUs, not on {a.device.platform}")
    try:
        cupy = importlib.import_module("cupy")
    except ImportError:
        raise TypeError(
            f"JAX arrays on {a.device.platform} need CuPy for csoftmax's CUDA kernels (pip install csoftmax[cuda]); "
            "or move the arrays to the CPU"
        ) from None
    return cupy.from_dlpack(a)


def _up(r: Any) -> Any:
    if r is None:
        return None
    if isinstance(r, np.ndarray):
        canon = jax.dtypes.canonicalize_dtype(r.dtype)
        if canon != r.dtype or not r.flags.writeable:
            r = r.astype(canon)
        return jnp.from_dlpack(r)
    return jnp.from_dlpack(r)


def _np_dtype(dtype: Any) -> Any:
    return np.dtype(dtype)


def _compute(x: Any, family: Any, *args: Any, out_shape: Any = None, **kw: Any) -> Any:
    """A family method of the backend of x's memory on views of the JAX arrays among args
    and kw. Families with out= give out_shape: on the CPU the result is then written into
    an aligned buffer, which becomes the JAX array without a copy."""
    low = [_down(a) for a in args]
    kw = {k: _down(v) for k, v in kw.items()}
    kw["dtype"] = _np_dtype(kw["dtype"])
    if out_shape is not None:
        kw["out"] = _empty(out_shape, kw["dtype"]) if _on_cpu(x) else None
    if _on_cpu(x):
        res = getattr(_c, family)(*low, **kw)
    else:
        from . import cuda

        res = getattr(cuda, family)(*low, **kw)
    if isinstance(res, tuple):
        return tuple(_up(r) for r in res)
    return _up(res)


def _forward_shape(op: Op, shape: Any, axes: Any, keepdims: Any) -> Any:
    if op.kind is not Kind.LOGSUMEXP:
        return tuple(shape)
    return tuple((1 if i in axes else s) for i, s in enumerate(shape) if keepdims or i not in axes)


# ---- traced arrays: host callbacks with csoftmax's own backward ----
def _shift(axes: Any, nb: Any) -> Any:
    """The axes of an unbatched call, in an array with nb leading batch axes."""
    return tuple(a + nb for a in axes)


def _host(a: Any) -> Any:
    return None if a is None else np.asarray(a)


def _mask(where: Any, nb: Any, nd: Any) -> Any:
    """A where mask made for nd dimensions, as vmap passes it (its batch axes leading):
    the dimensions it omits put back after the batch axes, so that it broadcasts."""
    if where is None:
        return None
    where = np.asarray(where)
    missing = nb + nd - where.ndim
    if nb and missing:
        where = where.reshape(where.shape[:nb] + (1,) * missing + where.shape[nb:])
    return where


def _host_forward(static: Any, nd: Any, x: Any, where: Any) -> Any:
    op, axes, tau, keepdims, dtype, _ = static
    x = np.asarray(x)
    nb = x.ndim - nd
    r = _c.forward(op, x, axes=_shift(axes, nb), temperature=tau, keepdims=keepdims, where=_mask(where, nb, nd),
                   out=None, dtype=np.dtype(dtype))
    return np.asarray(r, dtype=dtype)


def _host_backward(static: Any, nd: Any, g: Any, y: Any, where: Any) -> Any:
    op, axes, tau, dtype = static
    g = np.asarray(g)
    nb = g.ndim - nd
    r = _c.backward(op, g, np.asarray(y), axes=_shift(axes, nb), temperature=tau, where=_mask(where, nb, nd), out=None,
                    dtype=np.dtype(dtype))
    return np.asarray(r, dtype=dtype)


def _host_cross_entropy(static: Any, nd: Any, logits: Any, probs: Any, weight: Any, labels: Any, where: Any) -> Any:
    """Per-row losses and the gradient of each row's loss, through the public function on
    NumPy arrays: the label values are checked there, with its messages. Under vmap
    (nb leading batch axes) with class weights, one call per batch element, each with its
    own weights."""
    op, axis, ignore_index, eps, tau, dtype = static
    logits, target = np.asarray(logits), np.asarray(labels if probs is None else probs)
    nb = logits.ndim - nd
    weight, where = _host(weight), _mask(where, nb, nd)

    def rows(i: Any, w: Any) -> Any:
        return csoftmax.softmax_cross_entropy(
            logits[i], target[i], axis=axis + nb - len(i), weight=w, ignore_index=ignore_index, label_smoothing=eps,
            reduction="none", temperature=tau, where=None if where is None else where[i], return_grad=True,
            backend="c",
        )

    if weight is None or nb == 0:
        loss, grad = rows((), weight)
    else:
        loss = np.empty(tuple(s for i, s in enumerate(logits.shape) if i != axis + nb), dtype=dtype)
        grad = np.empty(logits.shape, dtype=dtype)
        for i in np.ndindex(logits.shape[:nb]):
            loss[i], grad[i] = rows(i, weight[i])
    return np.asarray(loss, dtype=dtype), np.asarray(grad, dtype=dtype)


def _as_jax(*arrays: Any) -> list[Any]:
    """Residuals and cotangents as JAX arrays (None stays None): they may come as NumPy
    arrays or JAX's literals (jax.test_util's do)."""
    return [None if a is None else jnp.asarray(a) for a in arrays]


def _callback(fn: Any, result: Any, *args: Any) -> Any:
    return jax.pure_callback(fn, result, *args, vmap_method="broadcast_all")


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _forward_op(static: Any, x: Any, where: Any) -> Any:
    op, axes, tau, keepdims, dtype, _ = static
    result = jax.ShapeDtypeStruct(_forward_shape(op, x.shape, axes, keepdims), dtype)
    return _callback(functools.partial(_host_forward, static, x.ndim), result, x, where)


def _forward_op_fwd(static: Any, x: Any, where: Any) -> Any:
    y = _forward_op(static, x, where)
    return y, (x if static[0].kind is Kind.LOGSUMEXP else y, where)


def _forward_op_bwd(static: Any, res: Any, g: Any) -> Any:
    saved, where, g = _as_jax(*res, g)
    op, axes, tau, keepdims, _, x_dtype = static
    if op.kind is Kind.LOGSUMEXP:
        s = csoftmax.softmax(saved, axis=axes, where=where, dtype=g.dtype, backend="jax")
        dx = s * (g if keepdims else jnp.expand_dims(g, axes))
    else:
        dx = getattr(csoftmax, f"{op.name}_backward")(g, saved, axis=axes, temperature=tau, where=where,
                                                                backend="jax")
    return dx.astype(x_dtype), None


_forward_op.defvjp(_forward_op_fwd, _forward_op_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _backward_op(static: Any, g: Any, y: Any, where: Any) -> Any:
    result = jax.ShapeDtypeStruct(g.shape, static[3])
    return _callback(functools.partial(_host_backward, static, g.ndim), result, g, y, where)


def _backward_op_fwd(static: Any, g: Any, y: Any, where: Any) -> Any:
    return _backward_op(static, g, y, where), (g, y, where)


def _backward_op_bwd(static: Any, res: Any, h: Any) -> Any:
    g, y, where, h = _as_jax(*res, h)
    op, axes, tau, _ = static
    dg, dy = getattr(R, f"{op.name}_vjp")(jnp, h, g.astype(h.dtype), y.astype(h.dtype), axes, tau, where)
    return dg.astype(g.dtype), dy.astype(y.dtype), None


_backward_op.defvjp(_backward_op_fwd, _backward_op_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _cross_entropy_op(static: Any, logits: Any, probs: Any, weight: Any, labels: Any, where: Any) -> Any:
    _, axis, _, _, _, dtype = static
    rows = tuple(s for i, s in enumerate(logits.shape) if i != axis)
    result = (jax.ShapeDtypeStruct(rows, dtype), jax.ShapeDtypeStruct(logits.shape, dtype))
    return _callback(functools.partial(_host_cross_entropy, static, logits.ndim), result, logits, probs, weight,
                     labels, where)


def _cross_entropy_op_fwd(static: Any, logits: Any, probs: Any, weight: Any, labels: Any, where: Any) -> Any:
    row_loss, grad = _cross_entropy_op(static, logits, probs, weight, labels, where)
    return (row_loss, grad), (grad, logits, probs, weight, labels, where)


def _cross_entropy_op_bwd(static: Any, res: Any, cotangents: Any) -> Any:
    grad, logits, probs, weight, labels, where = _as_jax(*res)
    _, axis, ignore_index, eps, tau, _ = static
    g_row = jnp.asarray(cotangents[0])  # the returned gradient is a constant to autodiff
    d_logits = (grad * jnp.expand_dims(g_row, axis).astype(grad.dtype)).astype(logits.dtype)
    d_probs = d_weight = None
    if probs is not None or weight is not None:
        logp = csoftmax.log_softmax(logits, axis=axis, temperature=tau, where=where, backend="jax")
        d_probs, d_weight = R.cross_entropy_target_vjp(jnp, logp, axis, labels, ignore_index, probs, weight, eps,
                                                       where, g_row.astype(logp.dtype))
        d_probs = None if d_probs is None else d_probs.astype(probs.dtype)
    return d_logits, d_probs, d_weight, None, None


_cross_entropy_op.defvjp(_cross_entropy_op_fwd, _cross_entropy_op_bwd)


# ---- the families ----
def forward(op: Op, x: Any, /, *, axes: Any, temperature: Any, keepdims: Any, where: Any, out: Any, dtype: Any) -> Any:
    if _traced(x, where):
        return _forward_op((op, axes, temperature, keepdims, _np_dtype(dtype), _np_dtype(x.dtype)), x, where)
    return _compute(x, "forward", op, x, out_shape=_forward_shape(op, x.shape, axes, keepdims), axes=axes,
                    temperature=temperature, keepdims=keepdims, where=where, dtype=dtype)


def backward(op: Op, grad_output: Any, output: Any, /, *, axes: Any, temperature: Any, where: Any, out: Any,
             dtype: Any) -> Any:
    if _traced(grad_output, output, where):
        return _backward_op((op, axes, temperature, _np_dtype(dtype)), grad_output, output, where)
    return _compute(grad_output, "backward", op, grad_output, output, out_shape=grad_output.shape, axes=axes,
                    temperature=temperature, where=where, dtype=dtype)


def jacobian(op: Op, x: Any, /, *, axis: Any, temperature: Any, dtype: Any) -> Any:
    if _traced(x):
        xl = jnp.moveaxis(x, axis, -1)
        s = csoftmax.softmax(xl, axis=-1, temperature=temperature, dtype=dtype, backend="jax")
        lp = csoftmax.log_softmax(xl, axis=-1, temperature=temperature, dtype=dtype, backend="jax")
        return R.jacobian(jnp, s, lp, temperature, op.log)
    return _compute(x, "jacobian", op, x, axis=axis, temperature=temperature, dtype=dtype)


def cross_entropy(op: Op, logits: Any, /, *, axis: Any, labels: Any, probs: Any, weight: Any, ignore_index: Any,
                  label_smoothing: Any, temperature: Any, where: Any, grad_scale: Any, want_grad: Any,
                  dtype: Any) -> Any:
    if _traced(logits, labels, probs, weight, where) or not isinstance(grad_scale, float):
        static = (op, axis, ignore_index, label_smoothing, temperature, _np_dtype(dtype))
        row_loss, grad = _cross_entropy_op(static, logits, probs, weight, labels, where)
        return row_loss, (grad * grad_scale if want_grad else None)
    return _compute(logits, "cross_entropy", op, logits, axis=axis, labels=labels, probs=probs, weight=weight,
                    ignore_index=ignore_index, label_smoothing=label_smoothing, temperature=temperature, where=where,
                    grad_scale=grad_scale, want_grad=want_grad, dtype=dtype)


# ---- plain calls: the C core's fast entry on the views ----
def fast_entry(op: Op, cls: Any) -> Any:
    """For plain calls on concrete JAX arrays on the CPU: the C core's fast entry on their
    NumPy views (None, to decline, for anything else)."""
    core = _c.fast_entry(op, np.ndarray)
    if core is None or issubclass(cls, _Tracer):
        return None

    def logsumexp_entry(x: Any, axis: Any, temperature: Any, out: Any) -> Any:
        if out is not None or not _on_cpu(x):
            return None
        r = core(np.asarray(x), axis, temperature, None)
        return None if r is None else _up(r)

    def forward_entry(x: Any, axis: Any, temperature: Any, out: Any) -> Any:
        if out is not None or not _on_cpu(x):
            return None
        xn = np.asarray(x)
        res = _empty(xn.shape, xn.dtype)
        return None if core(xn, axis, temperature, res) is None else jnp.from_dlpack(res)

    def backward_entry(g: Any, y: Any, axis: Any, temperature: Any, out: Any) -> Any:
        if out is not None or not (_on_cpu(g) and _on_cpu(y)):
            return None
        gn, yn = np.asarray(g), np.asarray(y)
        res = _empty(gn.shape, gn.dtype)
        return None if core(gn, yn, axis, temperature, res) is None else jnp.from_dlpack(res)

    if op.kind is Kind.LOGSUMEXP:
        return logsumexp_entry
    return forward_entry if op.family is Family.FORWARD else backward_entry
