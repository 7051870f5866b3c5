"""The `c` backend: NumPy arrays on the compiled C core (csoftmax._ckernels).

The adapter's job is to hand the core arrays it can take as they are: float16, float32
or float64 in native byte order and aligned, any strides. Anything else (integers, bools,
byte-swapped or misaligned data) is first cast into the output array, which the core then
computes in place, so the output stays the only allocation; logsumexp, whose output is
smaller than its input, casts into a temporary instead. An `out=` that overlaps the input
without being the same array is computed into a fresh array and copied.
"""
from __future__ import annotations

import os
import warnings

import numpy as np

from .. import _ckernels as ck
from .. import _reference as R

# ---- instruction set: the best the CPU runs, capped by CSOFTMAX_ISA ----
_isa_note = ""


def isa_names():
    return ck.isa_names()


def set_isa(name: str) -> str:
    """Select an instruction-set build by name (tests); returns the previous one."""
    names = ck.isa_names()
    prev = names[ck.get_isa()]
    ck.set_isa(names.index(name))
    return prev


def supported_isas():
    return [n for i, n in enumerate(ck.isa_names()) if ck.isa_supported(i)]


def isa_note() -> str:
    return _isa_note


def _apply_isa_env():
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

fast_forward = ck.fast_forward  # csoftmax._api takes plain calls straight here
fast_backward = ck.fast_backward


def namespace(x):
    return np


def writable(out) -> bool:
    return bool(out.flags.writeable)


def from_numpy(a):
    return a


def to_numpy(a):
    return a


def _takes(x, rdt) -> bool:
    """Whether the core can read x directly for result dtype rdt."""
    return x.dtype == rdt and x.dtype.isnative and x.flags.aligned


def _same_memory(a, b) -> bool:
    """a and b are the same elements in the same order (an in-place call)."""
    return a is b or ck.same_layout(a, b)


def _bits(axes) -> int:
    b = 0
    for a in axes:
        b |= 1 << a
    return b


def _mask(where, shape):
    """The mask as the core takes it: it broadcasts there (stride 0), no view needed."""
    return where


def _elementwise(kind, inputs, out, rdt, call):
    """Run a same-shape kind: inputs are the arrays read, out the result or None.
    call(xs..., res) runs the core on arrays it can take."""
    x = inputs[0]
    if out is not None and (
        not out.flags.aligned
        or (not any(_same_memory(out, a) for a in inputs) and any(np.may_share_memory(out, a) for a in inputs))
    ):
        # out is misaligned, or overlaps an input without being it: compute aside, then copy
        np.copyto(out, _elementwise(kind, inputs, None, rdt, call))
        return out
    res = out if out is not None else np.empty_like(x, dtype=rdt)
    ready = []
    for a in inputs:
        if _takes(a, rdt):
            ready.append(a)
        elif len(inputs) == 1:
            np.copyto(res, a, casting="unsafe")  # cast into the output, compute in place
            ready.append(res)
        else:
            ready.append(a.astype(rdt))
    call(*ready, res)
    return res


def softmax(x, axes, tau, where, out, rdt):
    mask = _mask(where, x.shape)
    return _elementwise(
        ck.SOFTMAX, (x,), out, rdt, lambda xs, res: ck.run(ck.SOFTMAX, xs, None, res, mask, None, None, _bits(axes), tau)
    )


def log_softmax(x, axes, tau, where, out, rdt):
    mask = _mask(where, x.shape)
    return _elementwise(
        ck.LOG_SOFTMAX,
        (x,),
        out,
        rdt,
        lambda xs, res: ck.run(ck.LOG_SOFTMAX, xs, None, res, mask, None, None, _bits(axes), tau),
    )


def logsumexp(x, axes, keepdims, where, out, rdt):
    kshape = tuple(1 if i in axes else s for i, s in enumerate(x.shape))
    xs = x if _takes(x, rdt) else x.astype(rdt)
    if out is None or not out.flags.aligned or np.may_share_memory(out, x):
        row = np.empty(kshape, dtype=rdt)
        result = row if keepdims else row.reshape(tuple(s for i, s in enumerate(x.shape) if i not in axes))
    else:
        row = out if keepdims else np.expand_dims(out, axes)
        result = out
    ck.run(ck.LOGSUMEXP, xs, None, None, _mask(where, x.shape), row, None, _bits(axes), 1.0)
    if out is not None and result is not out:
        np.copyto(out, result)
        return out
    return result


def _backward(kind, g, y, axes, tau, where, out, rdt):
    mask = _mask(where, g.shape)
    return _elementwise(
        kind, (g, y), out, rdt, lambda gs, ys, res: ck.run(kind, gs, ys, res, mask, None, None, _bits(axes), tau)
    )


def softmax_backward(g, y, axes, tau, where, out, rdt):
    return _backward(ck.SOFTMAX_BWD, g, y, axes, tau, where, out, rdt)


def log_softmax_backward(g, y, axes, tau, where, out, rdt):
    return _backward(ck.LOG_SOFTMAX_BWD, g, y, axes, tau, where, out, rdt)


def _jacobian(x, axis, tau, rdt, log):
    """J from the core's softmax and log_softmax, filled in place (one n*n allocation)."""
    xl = np.moveaxis(x, axis, -1)
    last = (xl.ndim - 1,)
    s = softmax(xl, last, tau, None, None, rdt)
    lp = log_softmax(xl, last, tau, None, None, rdt)
    n = xl.shape[-1]
    J = np.empty(xl.shape + (n,), dtype=rdt)
    om = R.one_minus_softmax(np, lp)
    if log:
        J[...] = -s[..., None, :]
        diag = om
    else:
        np.multiply(s[..., :, None], s[..., None, :], out=J)
        np.negative(J, out=J)
        diag = s * om
    J.reshape(J.shape[:-2] + (n * n,))[..., :: n + 1] = diag
    if tau != 1.0:
        np.divide(J, tau, out=J)
    return J


def softmax_jacobian(x, axis, tau, rdt):
    return _jacobian(x, axis, tau, rdt, log=False)


def log_softmax_jacobian(x, axis, tau, rdt):
    return _jacobian(x, axis, tau, rdt, log=True)


def softmax_cross_entropy(x, axis, labels, probs, weight, ignore_index, eps, tau, where, grad_scale, want_grad, rdt):
    xs = x if _takes(x, rdt) else x.astype(rdt)
    ps = None if probs is None else (probs if _takes(probs, rdt) else probs.astype(rdt))
    kshape = tuple(1 if i == axis else s for i, s in enumerate(x.shape))
    row = np.empty(kshape, dtype=np.float64)
    lab = None
    if labels is not None:
        lab = np.expand_dims(labels.astype(np.int64, copy=False), axis)
    w = None if weight is None else np.ascontiguousarray(weight, dtype=np.float64)
    grad = np.empty_like(xs, dtype=rdt) if want_grad else None
    ck.run(
        ck.XENT, xs, ps, grad, _mask(where, x.shape), row, lab, 1 << axis, tau, w, eps, ignore_index, grad_scale
    )
    return np.squeeze(row, axis=axis), grad
