"""The `reference` backend: any array with an array-API namespace, on csoftmax._reference,
behind the backend protocol (csoftmax._protocol).

The adapter between the public API's validated arguments and the reference math: it
computes in float64 (the inputs are first cast to the result dtype, as every backend
does), casts the result to the result dtype (float16 through float32, as the fast
backends round), and honours out=. Arrays of libraries without a compiled backend land
here; in the tests it is the oracle every other backend is compared with.
"""
from __future__ import annotations

from typing import Any

from .. import _reference as R
from .._checks import quiet  # NumPy warns of the inf - inf in rows the special values then overwrite
from .._ops import Op

namespace = R.namespace


def _to_compute(xp: Any, a: Any, rdt: Any) -> Any:
    if a.dtype != rdt:
        a = xp.astype(a, rdt)
    return xp.astype(a, xp.float64)


def _to_result(xp: Any, v: Any, rdt: Any) -> Any:
    if rdt == getattr(xp, "float16", None):  # float16 is not in every namespace (array-api-strict)
        v = xp.astype(v, xp.float32)
    return xp.astype(v, rdt)


def _deliver(xp: Any, v: Any, rdt: Any, out: Any) -> Any:
    v = _to_result(xp, v, rdt)
    if out is None:
        return v
    out[...] = v
    return out


def writable(out: Any) -> bool:
    flags = getattr(out, "flags", None)
    return bool(getattr(flags, "writeable", True))


def from_numpy(a: Any) -> Any:
    return a


def to_numpy(a: Any) -> Any:
    import numpy as np

    return np.asarray(a)


# ---- the families: each op is the function of its name in csoftmax._reference ----
def forward(op: Op, x: Any, /, *, axes: Any, temperature: Any, keepdims: Any, where: Any, out: Any, dtype: Any) -> Any:
    xp = namespace(x)
    with quiet(xp):
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


def backward(op: Op, grad_output: Any, output: Any, /, *, axes: Any, temperature: Any, where: Any, out: Any,
             dtype: Any) -> Any:
    xp = namespace(grad_output)
    with quiet(xp):
        g, y = _to_compute(xp, grad_output, dtype), _to_compute(xp, output, dtype)
        v = getattr(R, op.name)(xp, g, y, axes, temperature, where)
        return _deliver(xp, v, dtype, out)


def jacobian(op: Op, x: Any, /, *, axis: Any, temperature: Any, dtype: Any) -> Any:
    xp = namespace(x)
    with quiet(xp):
        xc = xp.moveaxis(_to_compute(xp, x, dtype), axis, -1)
        last = (xc.ndim - 1,)
        s = R.softmax(xp, xc, last, temperature, None)
        lp = R.log_softmax(xp, xc, last, temperature, None)
        return _to_result(xp, R.jacobian(xp, s, lp, temperature, op.log), dtype)


def cross_entropy(op: Op, logits: Any, /, *, axis: Any, labels: Any, probs: Any, weight: Any, ignore_index: Any,
                  label_smoothing: Any, temperature: Any, where: Any,
                  grad_scale: Any, want_grad: Any, dtype: Any) -> Any:
    xp = namespace(logits)
    with quiet(xp):
        xc = _to_compute(xp, logits, dtype)
        pc = None if probs is None else _to_compute(xp, probs, dtype)
        loss, grad = R.cross_entropy_rows(
            xp, xc, axis, labels, pc, weight, ignore_index, label_smoothing, temperature, where, grad_scale, want_grad
        )
        return loss, (None if grad is None else _to_result(xp, grad, dtype))
