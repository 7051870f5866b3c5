"""The `reference` backend: any array with an array-API namespace, on csoftmax._reference,
behind the backend protocol (csoftmax._protocol).

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
    """NumPy warns about the inf - inf inside rows the special-value table then overwrites
    (also under namespaces computing with NumPy, as array-api-strict does)."""
    np = sys.modules.get("numpy")
    return contextlib.nullcontext() if np is None else np.errstate(all="ignore")


def _to_compute(xp, a, rdt):
    if a.dtype != rdt:
        a = xp.astype(a, rdt)
    return xp.astype(a, xp.float64)


def _to_result(xp, v, rdt):
    if rdt == getattr(xp, "float16", None):  # float16 is not in every namespace (array-api-strict)
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


# ---- the families: each op is the function of its name in csoftmax._reference ----
def forward(op, x, /, *, axes, temperature, keepdims, where, out, dtype):
    xp = namespace(x)
    with _quiet(xp):
        if 0 in [x.shape[a] for a in axes]:  # empty rows: nothing to compute
            if op.name == "logsumexp":
                shape = tuple(1 if i in axes else s for i, s in enumerate(x.shape))
                v = xp.full(shape, -float("inf"), dtype=xp.float64)
                if not keepdims:
                    v = xp.squeeze(v, axis=axes)
            else:
                v = xp.empty(x.shape, dtype=xp.float64)
        elif op.name == "logsumexp":
            v = R.logsumexp(xp, _to_compute(xp, x, dtype), axes, where, keepdims)
        else:
            v = getattr(R, op.name)(xp, _to_compute(xp, x, dtype), axes, temperature, where)
        return _deliver(xp, v, dtype, out)


def backward(op, grad_output, output, /, *, axes, temperature, where, out, dtype):
    xp = namespace(grad_output)
    with _quiet(xp):
        g, y = _to_compute(xp, grad_output, dtype), _to_compute(xp, output, dtype)
        v = getattr(R, op.name)(xp, g, y, axes, temperature, where)
        return _deliver(xp, v, dtype, out)


def jacobian(op, x, /, *, axis, temperature, dtype):
    xp = namespace(x)
    with _quiet(xp):
        xc = xp.moveaxis(_to_compute(xp, x, dtype), axis, -1)
        last = (xc.ndim - 1,)
        s = R.softmax(xp, xc, last, temperature, None)
        lp = R.log_softmax(xp, xc, last, temperature, None)
        return _to_result(xp, R.jacobian(xp, s, lp, temperature, op.log), dtype)


def cross_entropy(op, logits, /, *, axis, labels, probs, weight, ignore_index, label_smoothing, temperature, where,
                  grad_scale, want_grad, dtype):
    xp = namespace(logits)
    with _quiet(xp):
        xc = _to_compute(xp, logits, dtype)
        pc = None if probs is None else _to_compute(xp, probs, dtype)
        loss, grad = R.cross_entropy_rows(
            xp, xc, axis, labels, pc, weight, ignore_index, label_smoothing, temperature, where, grad_scale, want_grad
        )
        return loss, (None if grad is None else _to_result(xp, grad, dtype))
