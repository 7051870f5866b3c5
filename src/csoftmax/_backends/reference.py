"""The `reference` backend: any array with an array-API namespace, on csoftmax._reference.

The adapter between the public API's validated arguments and the reference math: it
computes in float64 (the inputs are first cast to the result dtype, as every backend
does), casts the result to the result dtype (float16 through float32, as the fast
backends round), and honours out=. Arrays of libraries without a compiled backend land
here; in the tests it is the oracle every other backend is compared with.
"""
from __future__ import annotations

import contextlib
import sys

from .. import _reference as R

namespace = R.namespace


def _quiet(xp):
    """NumPy warns about the inf - inf inside rows the special-value table then overwrites."""
    np = sys.modules.get("numpy")
    if np is not None and xp is np:
        return np.errstate(all="ignore")
    return contextlib.nullcontext()


def _to_compute(xp, a, rdt):
    if a.dtype != rdt:
        a = xp.astype(a, rdt)
    return xp.astype(a, xp.float64)


def _to_result(xp, v, rdt):
    if rdt == xp.float16:
        v = xp.astype(v, xp.float32)
    return xp.astype(v, rdt)


def _deliver(xp, v, rdt, out):
    v = _to_result(xp, v, rdt)
    if out is None:
        return v
    out[...] = v
    return out


def writable(out) -> bool:
    flags = getattr(out, "flags", None)
    return bool(getattr(flags, "writeable", True))


def from_numpy(a):
    return a


def to_numpy(a):
    import numpy as np

    return np.asarray(a)


def _forward(fn, x, axes, tau, where, out, rdt):
    xp = namespace(x)
    with _quiet(xp):
        if 0 in [x.shape[a] for a in axes]:  # empty rows: nothing to compute
            v = xp.empty(x.shape, dtype=xp.float64)
        else:
            v = fn(xp, _to_compute(xp, x, rdt), axes, tau, where)
        return _deliver(xp, v, rdt, out)


def softmax(x, axes, tau, where, out, rdt):
    return _forward(R.softmax, x, axes, tau, where, out, rdt)


def log_softmax(x, axes, tau, where, out, rdt):
    return _forward(R.log_softmax, x, axes, tau, where, out, rdt)


def logsumexp(x, axes, keepdims, where, out, rdt):
    xp = namespace(x)
    with _quiet(xp):
        if 0 in [x.shape[a] for a in axes]:
            shape = tuple(1 if i in axes else s for i, s in enumerate(x.shape))
            v = xp.full(shape, -float("inf"), dtype=xp.float64)
            if not keepdims:
                v = xp.squeeze(v, axis=axes)
        else:
            v = R.logsumexp(xp, _to_compute(xp, x, rdt), axes, where, keepdims)
        return _deliver(xp, v, rdt, out)


def _backward(fn, g, y, axes, tau, where, out, rdt):
    xp = namespace(g)
    with _quiet(xp):
        v = fn(xp, _to_compute(xp, g, rdt), _to_compute(xp, y, rdt), axes, tau, where)
        return _deliver(xp, v, rdt, out)


def softmax_backward(g, y, axes, tau, where, out, rdt):
    return _backward(R.softmax_backward, g, y, axes, tau, where, out, rdt)


def log_softmax_backward(g, y, axes, tau, where, out, rdt):
    return _backward(R.log_softmax_backward, g, y, axes, tau, where, out, rdt)


def _jacobian(x, axis, tau, rdt, log):
    xp = namespace(x)
    with _quiet(xp):
        xc = xp.moveaxis(_to_compute(xp, x, rdt), axis, -1)
        s = R.softmax(xp, xc, (xc.ndim - 1,), tau, None)
        lp = R.log_softmax(xp, xc, (xc.ndim - 1,), tau, None)
        return _to_result(xp, R.jacobian(xp, s, lp, tau, log), rdt)


def softmax_jacobian(x, axis, tau, rdt):
    return _jacobian(x, axis, tau, rdt, log=False)


def log_softmax_jacobian(x, axis, tau, rdt):
    return _jacobian(x, axis, tau, rdt, log=True)


def softmax_cross_entropy(x, axis, labels, probs, weight, ignore_index, eps, tau, where, grad_scale, want_grad, rdt):
    xp = namespace(x)
    with _quiet(xp):
        xc = _to_compute(xp, x, rdt)
        pc = None if probs is None else _to_compute(xp, probs, rdt)
        loss, grad = R.cross_entropy_rows(
            xp, xc, axis, labels, pc, weight, ignore_index, eps, tau, where, grad_scale, want_grad
        )
        return loss, (None if grad is None else _to_result(xp, grad, rdt))
