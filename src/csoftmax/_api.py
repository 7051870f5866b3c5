"""The public functions: one per op of csoftmax._ops, each checking its arguments
(csoftmax._checks), normalising them, and handing the call to the backend the registry
chooses, through the backend protocol (csoftmax._protocol).

Plain calls -- no where=, dtype= or backend= -- first try the fast entry of the backend
that plain dispatch gives the input's type (csoftmax._registry.fast_entry): the C core's
takes a NumPy array straight to the kernels and declines anything unusual by returning
None, and then the general path runs (and raises the errors).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import _checks as C
from . import _registry
from ._ops import BY_NAME, Op

_FAST_MISS = None  # what a fast entry returns to decline a call
_MAX_NDIM = 64  # NumPy's (and the C core's) limit on an array's dimensions


def _prepare(op: Op, x: Any, backend: str | None, argname: str = "x") -> tuple[Any, Any, Any]:
    x = C.as_array(x, argname)
    _, mod = _registry.dispatch(x, op.name, backend)
    return x, mod, mod.namespace(x)


# ---- forward -------------------------------------------------------------------------------
def _forward(op: Op, x, axis, temperature, keepdims, where, dtype, out, backend):
    if where is None and dtype is None and backend is None and not keepdims:
        fast = _registry.fast_entry(type(x), op.name)
        if fast is not None:
            r = fast(x, axis, temperature, out)
            if r is not _FAST_MISS:
                return r
    x, mod, xp = _prepare(op, x, backend)
    tau = C.check_temperature(temperature)
    axes = C.normalize_axes(axis, x.ndim)
    rdt = C.result_dtype(xp, x.dtype, dtype)
    where = C.check_where(x, xp, where, x.shape)
    if op.name == "logsumexp":
        shape = tuple((1 if i in axes else s) for i, s in enumerate(x.shape) if keepdims or i not in axes)
    else:
        shape = x.shape
    out = C.check_out(x, mod, out, shape, rdt)
    return mod.forward(op, x, axes=axes, temperature=tau, keepdims=bool(keepdims), where=where, out=out, dtype=rdt)


_SOFTMAX, _LOG_SOFTMAX, _LOGSUMEXP = BY_NAME["softmax"], BY_NAME["log_softmax"], BY_NAME["logsumexp"]


def softmax(x, /, axis=-1, *, temperature=1.0, where=None, dtype=None, out=None, backend=None):
    """Softmax of x / temperature along axis, computed stably (shifted by the max).

    axis: int, tuple of ints (one softmax over their joint extent) or None (all axes).
    temperature: float > 0 or +inf (uniform over the entries that are not -inf), fused in.
    where: boolean mask broadcastable to x; masked entries get 0 and take no part; a fully
        masked slice is all 0.
    dtype: compute and return in this float dtype (the input is cast to it first).
        Default: float16/32/64 keep theirs (float16 computed in float32); integers and
        bools give float64.
    out: result array of x's shape and the result dtype; may be x itself.
    backend: a registered backend's name.
    Special values: a NaN in a slice makes it all NaN; a +inf, or all entries -inf,
    makes it NaN (as scipy, torch and JAX); -inf entries among finite ones get 0.
    """
    return _forward(_SOFTMAX, x, axis, temperature, False, where, dtype, out, backend)


def log_softmax(x, /, axis=-1, *, temperature=1.0, where=None, dtype=None, out=None, backend=None):
    """Log of softmax(x / temperature) along axis, as (x - max)/tau - log1p(S'), where S'
    sums exp((x_j - max)/tau) over all entries but the max: finite for finite input and
    exact at the max entry (-log1p(S'), not 0). Arguments as softmax; masked entries and
    fully masked slices get -inf."""
    return _forward(_LOG_SOFTMAX, x, axis, temperature, False, where, dtype, out, backend)


def logsumexp(x, /, axis=None, *, keepdims=False, where=None, dtype=None, out=None, backend=None):
    """log(sum(exp(x))) over axis (default: all axes), as max + log1p(S') with S' leaving
    the max entry out, so logsumexp([0, -40]) = 4.248e-18 rather than 0.

    where: boolean mask; masked entries take no part, a fully masked slice gives -inf.
    A NaN gives NaN; a +inf gives +inf (NaN wins over +inf); an empty axis gives -inf.
    """
    return _forward(_LOGSUMEXP, x, axis, 1.0, keepdims, where, dtype, out, backend)


# ---- backward ------------------------------------------------------------------------------
def _backward(op: Op, grad_output, output, axis, temperature, where, out, backend):
    if where is None and backend is None and type(output) is type(grad_output):
        fast = _registry.fast_entry(type(grad_output), op.name)
        if fast is not None:
            r = fast(grad_output, output, axis, temperature, out)
            if r is not _FAST_MISS:
                return r
    g, mod, xp = _prepare(op, grad_output, backend, "grad_output")
    y = C.same_kind_array(g, output, "output", "grad_output")
    rdt = xp.result_type(C.result_dtype(xp, g.dtype, argname="grad_output", complex_hint=False),
                         C.result_dtype(xp, y.dtype, argname="output", complex_hint=False))
    if tuple(g.shape) != tuple(y.shape):
        raise ValueError(f"grad_output has shape {tuple(g.shape)} but output has shape {tuple(y.shape)}")
    tau = C.check_temperature(temperature)
    axes = C.normalize_axes(axis, g.ndim)
    where = C.check_where(g, xp, where, g.shape, "grad_output")
    out = C.check_out(g, mod, out, g.shape, rdt)
    return mod.backward(op, g, y, axes=axes, temperature=tau, where=where, out=out, dtype=rdt)


def softmax_backward(grad_output, output, /, axis=-1, *, temperature=1.0, where=None, out=None, backend=None):
    """Vector-Jacobian product of softmax: dx = y * (g - sum(g * y)) / temperature, where
    y = softmax(x / temperature) is the forward *output* and g the incoming gradient.
    One fused pass; masked entries and fully masked slices get exactly 0. out may be
    grad_output or output (in place)."""
    return _backward(BY_NAME["softmax_backward"], grad_output, output, axis, temperature, where, out, backend)


def log_softmax_backward(grad_output, output, /, axis=-1, *, temperature=1.0, where=None, out=None, backend=None):
    """Vector-Jacobian product of log_softmax: dx = (g - exp(y) * sum(g)) / temperature,
    where y = log_softmax(x / temperature) is the forward *output*. Arguments as
    softmax_backward."""
    return _backward(BY_NAME["log_softmax_backward"], grad_output, output, axis, temperature, where, out, backend)


# ---- Jacobians -----------------------------------------------------------------------------
def _jacobian(op: Op, x, axis, temperature, max_bytes, backend):
    x, mod, xp = _prepare(op, x, backend)
    if x.ndim == 0:
        raise ValueError(f"{op.name} needs an array with at least one dimension")
    if x.ndim >= _MAX_NDIM:
        raise ValueError(f"x has {x.ndim} dimensions: its {op.name} would have {x.ndim + 1}, over {_MAX_NDIM}")
    ax = C.single_axis(axis, x.ndim)
    tau = C.check_temperature(temperature)
    rdt = C.result_dtype(xp, x.dtype, complex_hint=False)
    max_bytes = C.check_int("max_bytes", max_bytes)
    n = x.shape[ax]
    shape = tuple(s for i, s in enumerate(x.shape) if i != ax) + (n, n)
    nbytes = math.prod(shape) * np.dtype(C.dtype_name(rdt)).itemsize
    if nbytes > max_bytes:
        raise ValueError(
            f"{op.name} of shape {shape} would take {nbytes} bytes, over max_bytes={max_bytes}; "
            f"pass a larger max_bytes, or use {op.forward}_backward for "
            "vector-Jacobian products without forming the matrix"
        )
    if n == 0:
        return xp.zeros(shape, dtype=rdt)
    return mod.jacobian(op, x, axis=ax, temperature=tau, dtype=rdt)


def softmax_jacobian(x, /, axis=-1, *, temperature=1.0, max_bytes=2**30, backend=None):
    """Batched Jacobian of softmax(x / temperature) along one axis:
    J[..., i, j] = s_i (delta_ij - s_j) / temperature, with that axis moved to the last two
    positions (shape x.shape without axis, then (n, n)). The diagonal uses
    1 - s_i = -expm1(log_softmax_i), exact also where s_i is close to 1.

    A result larger than max_bytes (default 1 GiB) raises ValueError naming its size: for
    large n use softmax_backward, which applies the Jacobian without forming it."""
    return _jacobian(BY_NAME["softmax_jacobian"], x, axis, temperature, max_bytes, backend)


def log_softmax_jacobian(x, /, axis=-1, *, temperature=1.0, max_bytes=2**30, backend=None):
    """Batched Jacobian of log_softmax(x / temperature) along one axis:
    J[..., i, j] = (delta_ij - s_j) / temperature; see softmax_jacobian."""
    return _jacobian(BY_NAME["log_softmax_jacobian"], x, axis, temperature, max_bytes, backend)


# ---- cross-entropy ---------------------------------------------------------------------------
def _first_true(xp, flags, values) -> int:
    """The element of values at the first true flag (both flattened)."""
    f = xp.reshape(flags, (-1,))
    v = xp.reshape(values, (-1,))
    i = int(xp.argmax(xp.astype(f, xp.int8)))
    return int(v[i])


def _check_labels(xp, x, labels, ax, n, ignore_index, where):
    """Index labels: every one in [0, n) or ignore_index, none at a masked class (one flag
    read back from the device for each check). Returns (valid, labels with the ignored
    ones replaced by 0)."""
    valid = labels != ignore_index
    bad = valid & ((labels < 0) | (labels >= n))
    if bool(xp.any(bad)):
        raise ValueError(
            f"labels contains {_first_true(xp, bad, labels)}, outside [0, {n}) for {n} classes "
            f"(ignore_index={ignore_index})"
        )
    safe = xp.where(valid, labels, xp.zeros_like(labels))
    if where is not None:
        live = xp.broadcast_to(where, x.shape)
        idx = xp.reshape(xp.arange(n), tuple(n if i == ax else 1 for i in range(x.ndim)))
        hit = idx == xp.expand_dims(safe, axis=ax)
        masked = valid & ~xp.any(hit & live, axis=ax)
        if bool(xp.any(masked)):
            raise ValueError(f"label {_first_true(xp, masked, labels)} points at a class masked out by where")
    return valid, safe


def _mean_denominator(xp, valid, safe, weight) -> float:
    """'mean' over index targets: the sum of the weights of the targets not ignored."""
    if weight is None:
        return float(xp.sum(xp.astype(valid, xp.float64)))
    flat = xp.reshape(safe, (-1,))
    w_lab = xp.reshape(xp.take(weight, flat, axis=0), tuple(safe.shape))
    return float(xp.sum(xp.where(valid, w_lab, xp.zeros(safe.shape, dtype=xp.float64))))


def _reduce(xp, row_loss, reduction, denom, rdt):
    """The loss from the rows' losses (float64), rounded once to the result dtype: a loss
    beyond its range is +-inf, an infinite class weight may give NaN -- values, not
    warnings."""
    with C.quiet(xp):
        if reduction == "none":
            return xp.astype(row_loss, rdt)
        total = xp.sum(row_loss)
        if reduction == "mean":
            total = total / denom if denom != 0.0 else math.nan
        return xp.astype(xp.asarray(total, dtype=xp.float64), rdt)


def softmax_cross_entropy(
    logits,
    labels,
    /,
    axis=-1,
    *,
    weight=None,
    ignore_index=-100,
    label_smoothing=0.0,
    reduction="mean",
    temperature=1.0,
    where=None,
    return_grad=False,
    backend=None,
):
    """Softmax cross-entropy of logits / temperature against labels, with the loss and its
    gradient from one fused pass (torch.nn.functional.cross_entropy semantics).

    labels: integer class indices with logits' shape minus axis, or float class
        probabilities with logits' shape. Anything else is ValueError; an index outside
        [0, n_classes) other than ignore_index is ValueError naming it.
    weight: per-class weights (length n_classes) or None.
    ignore_index: index targets equal to it contribute nothing (loss 0, gradient 0);
        with probability targets only the default -100 is accepted (as torch).
    label_smoothing: eps in [0, 1]; targets become (1 - eps) * target + eps / K over the K
        classes that `where` leaves (all classes without where).
    reduction: 'mean' (index targets: divided by the sum of the weights of the targets
        not ignored -- NaN with a zero gradient when all are ignored; probability
        targets: divided by the number of samples), 'sum', or 'none' (per sample).
    where: boolean mask of classes, broadcastable to logits; masked classes take no part
        and get a zero gradient; a label pointing at a masked class is ValueError.
    return_grad: also return the gradient with respect to logits,
        (softmax(logits / tau) - target) * scale / tau (weighted as torch).

    Returns the loss (a 0-d array for 'mean' and 'sum'), or (loss, grad).
    """
    op = BY_NAME["softmax_cross_entropy"]
    x, mod, xp = _prepare(op, logits, backend, "logits")
    if x.ndim == 0:
        raise ValueError("logits must have at least one dimension (the class axis)")
    ax = C.single_axis(axis, x.ndim)
    n = x.shape[ax]
    if n == 0:
        raise ValueError("logits has no classes along axis")
    tau = C.check_temperature(temperature)
    rdt = C.result_dtype(xp, x.dtype, argname="logits", complex_hint=False)
    where = C.check_where(x, xp, where, x.shape, "logits")
    if not isinstance(reduction, str) or reduction not in C.REDUCTIONS:
        raise ValueError(f"reduction must be one of {C.REDUCTIONS}, got {reduction!r}")
    eps = C.check_real("label_smoothing", label_smoothing)
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {eps}")
    ignore_index = C.check_int("ignore_index", ignore_index)
    if not -(2**63) <= ignore_index < 2**63:
        raise ValueError(f"ignore_index must fit in int64 (class indices do), got {ignore_index}")
    want_grad = C.check_bool("return_grad", return_grad)
    labels, probs = C.xent_targets(x, xp, labels, ax, ignore_index)
    weight = C.xent_weight(x, xp, weight, n)

    denom = 1.0
    if labels is not None:
        valid, safe = _check_labels(xp, x, labels, ax, n, ignore_index, where)
        if reduction == "mean":
            denom = _mean_denominator(xp, valid, safe, weight)
    elif reduction == "mean":
        denom = float(math.prod(s for i, s in enumerate(x.shape) if i != ax))
    row_loss, grad = mod.cross_entropy(
        op, x, axis=ax, labels=labels, probs=probs, weight=weight, ignore_index=ignore_index, label_smoothing=eps,
        temperature=tau, where=where, grad_scale=1.0 / denom if denom != 0.0 else 0.0, want_grad=want_grad, dtype=rdt,
    )
    loss = _reduce(xp, row_loss, reduction, denom, rdt)
    return (loss, grad) if want_grad else loss


# ---- registry front ---------------------------------------------------------------------------
def get_backend(x, op="softmax"):
    """The backend (a csoftmax.Backend) that would compute op on x."""
    return _registry.get_backend(C.as_array(x), op)
