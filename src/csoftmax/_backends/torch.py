"""The `torch` backend: torch tensors, behind the backend protocol (csoftmax._protocol).

Tensors are computed by the backends of their memory, through zero-copy views: CPU
tensors by the C core (`c`) as NumPy arrays (Tensor.numpy() in -- on plain calls, the
cheaper _ckernels.tensor_view -- and torch.from_numpy out),
CUDA tensors by the CUDA kernels (`cuda`) as CuPy arrays through DLPack, on the tensor's
device and torch's current stream there. Results are tensors of the result dtype on the
input's device; an `out=` tensor is written in place (and its version counter bumped, as
torch's own out= does).

Autograd. When grad mode is on and an input requires grad, the call goes through a
torch.autograd.Function whose backward is csoftmax's own:
  softmax, log_softmax   the fused backward passes (softmax_backward,
                         log_softmax_backward) on the saved output
  logsumexp              softmax(x) times the incoming gradient
  cross-entropy          the gradient, computed in the fused forward pass and saved
                         (for loss.backward() of 'mean' or 'sum' it is returned as it
                         stands); for probability targets and class weights, the
                         products of csoftmax._reference.cross_entropy_target_vjp (first
                         derivatives only: a second one raises torch's once_differentiable
                         error)
  the backward passes    their own vector-Jacobian products in torch operations
                         (csoftmax._reference.*_backward_vjp), so that second derivatives
                         work too
  the Jacobians          built from the differentiable softmax and log_softmax.
Backward functions call csoftmax's public functions on tensors, so with create_graph=True
they are recorded in turn. out= while grad mode is on and an argument requires grad is
refused, as torch refuses it.

The front end checks tensors with _Namespace: torch's functions under the array-API names
csoftmax uses (csoftmax._protocol.NAMESPACE), creating arrays on the tensor's device.
"""
from __future__ import annotations

import functools
import importlib
from typing import Any

import numpy as np

import csoftmax

from .. import _ckernels as ck
from .. import _reference as R
from .._ops import Family, Kind, Op
from . import c as _c

torch: Any = importlib.import_module("torch")  # typed as Any: torch is optional, and absent where mypy may run

_increment_version = torch.autograd.graph.increment_version


# ---- the namespace the front end checks tensors with ----
class _Namespace:
    """torch's functions under the array-API names csoftmax's front end calls, with
    creation functions on one device."""

    float16, float32, float64 = torch.float16, torch.float32, torch.float64
    int8, int64, bool = torch.int8, torch.int64, torch.bool

    def __init__(self, device: Any) -> None:
        self.device = device

    def __getattr__(self, name: Any) -> Any:  # the rest of the standard's names that torch spells alike
        return getattr(torch, name)

    @staticmethod
    def isdtype(dt: Any, kind: Any) -> Any:
        if not isinstance(dt, torch.dtype):
            raise TypeError(f"not a torch dtype: {dt!r}")
        if kind == "bool":
            return dt is torch.bool
        if kind == "real floating":
            return dt.is_floating_point
        if kind == "complex floating":
            return dt.is_complex
        if kind == "integral":
            return not (dt.is_floating_point or dt.is_complex or dt is torch.bool)
        raise ValueError(f"unknown dtype kind {kind!r}")

    @staticmethod
    def astype(a: Any, dtype: Any) -> Any:
        return a.to(dtype)

    @staticmethod
    def result_type(a: Any, b: Any) -> Any:
        return torch.promote_types(a, b)

    def asarray(self, v: Any, dtype: Any = None) -> Any:
        if isinstance(v, torch.Tensor):
            return v if dtype is None else v.to(dtype)
        return torch.as_tensor(v, dtype=dtype, device=self.device)

    def zeros(self, shape: Any, dtype: Any = None) -> Any:
        return torch.zeros(shape, dtype=dtype, device=self.device)

    def arange(self, n: Any) -> Any:
        return torch.arange(n, device=self.device)

    def eye(self, n: Any, dtype: Any = None) -> Any:
        return torch.eye(n, dtype=dtype, device=self.device)

    @staticmethod
    def expand_dims(a: Any, axis: Any) -> Any:
        return torch.unsqueeze(a, axis)

    @staticmethod
    def take(a: Any, indices: Any, axis: Any) -> Any:
        return torch.index_select(a, axis, indices)

    @staticmethod
    def any(a: Any, axis: Any = None, keepdims: Any = False) -> Any:
        if axis is None:
            return torch.any(a)
        return a.clone() if axis == () else torch.any(a, dim=axis, keepdim=keepdims)

    @staticmethod
    def sum(a: Any, axis: Any = None, keepdims: Any = False) -> Any:
        if axis is None:
            return torch.sum(a)
        return a.clone() if axis == () else torch.sum(a, dim=axis, keepdim=keepdims)

    @staticmethod
    def max(a: Any) -> Any:
        return torch.max(a)


@functools.lru_cache(maxsize=None)
def _namespace_on(device: Any) -> Any:
    return _Namespace(device)


# ---- the protocol's interface ----
def namespace(x: Any) -> Any:
    return _namespace_on(x.device)


def writable(out: Any) -> bool:
    return True


def from_numpy(a: Any) -> Any:
    """A tensor of a's values: a view where torch can hold a's layout (native byte order,
    non-negative strides, writable), else a copy."""
    if a.dtype.isnative and a.flags.writeable and all(s >= 0 for s in a.strides):
        return torch.from_numpy(a)
    return torch.from_numpy(np.array(a, dtype=a.dtype.newbyteorder("=")))


def to_numpy(t: Any) -> Any:
    return t.detach().cpu().numpy()


# ---- views: a tensor as the array of the backend that computes it, and back ----
_NP_DTYPES = {torch.float16: np.dtype(np.float16), torch.float32: np.dtype(np.float32),
              torch.float64: np.dtype(np.float64)}


def _down(t: Any) -> Any:
    """The NumPy (CPU) or CuPy (CUDA) view of a tensor; None stays None."""
    if t is None:
        return None
    t = t.detach()
    if t.is_cpu:
        return t.resolve_neg().numpy()  # a lazily negated tensor (negative bit set) made plain first
    if not t.is_cuda:
        raise TypeError(f"csoftmax takes CPU and CUDA tensors, not tensors on {t.device.type}")
    return importlib.import_module("cupy").from_dlpack(t)


def _up(a: Any) -> Any:
    return torch.from_numpy(a) if isinstance(a, np.ndarray) else torch.from_dlpack(a)


def _compute(t: Any, family: Any, *args: Any, **kw: Any) -> Any:
    """Run a family method of the backend of t's memory on views of the tensors among
    args and kw (the result dtype as NumPy spells it); results come back as tensors,
    an out= tensor as itself."""
    low = [_down(a) if isinstance(a, torch.Tensor) else a for a in args]
    out = kw.get("out")
    kw = {k: (_down(v) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    kw["dtype"] = _NP_DTYPES[kw["dtype"]]
    if t.is_cpu:
        res = getattr(_c, family)(*low, **kw)
    else:
        res = _on_device(t, family, low, kw)
    if out is not None:
        _increment_version(out)
        return out
    if isinstance(res, tuple):
        return tuple(None if r is None else _up(r) for r in res)
    return _up(res)


def _on_device(t: Any, family: Any, args: Any, kw: Any) -> Any:
    """The `cuda` backend on t's device and torch's current stream there."""
    cupy = importlib.import_module("cupy")
    from . import cuda

    with cupy.cuda.Device(t.device.index):
        with cupy.cuda.ExternalStream(torch.cuda.current_stream(t.device).cuda_stream, t.device.index):
            return getattr(cuda, family)(*args, **kw)


# ---- autograd ----
def _grad_on(*tensors: Any) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _refuse_out(op: Any) -> Any:
    return ValueError(f"{op.name}(): functions with out=... arguments don't support automatic differentiation, "
                      "but one of the arguments requires grad.")


def _unsqueeze_axes(g: Any, axes: Any) -> Any:
    for a in axes:  # ascending: each lands where it was
        g = g.unsqueeze(a)
    return g


class _Forward(torch.autograd.Function):  # type: ignore[misc]
    """softmax, log_softmax, logsumexp; backward by csoftmax's backward passes."""

    @staticmethod
    def forward(ctx: Any, x: Any, where: Any, op: Any, axes: Any, tau: Any, keepdims: Any, dtype: Any) -> Any:
        y = _compute(x, "forward", op, x, axes=axes, temperature=tau, keepdims=keepdims, where=where, out=None,
                     dtype=dtype)
        ctx.op, ctx.axes, ctx.tau, ctx.keepdims, ctx.x_dtype = op, axes, tau, keepdims, x.dtype
        ctx.save_for_backward(x if op.kind is Kind.LOGSUMEXP else y, where)
        return y

    @staticmethod
    def backward(ctx: Any, g: Any) -> Any:
        saved, where = ctx.saved_tensors
        op, axes = ctx.op, ctx.axes
        if op.kind is Kind.LOGSUMEXP:
            s = csoftmax.softmax(saved, axis=axes, where=where, dtype=g.dtype, backend="torch")
            dx = s * (g if ctx.keepdims else _unsqueeze_axes(g, axes))
        else:
            dx = getattr(csoftmax, f"{op.name}_backward")(g, saved, axis=axes, temperature=ctx.tau, where=where,
                                                                backend="torch")
        return dx.to(ctx.x_dtype), None, None, None, None, None, None


class _FastForward(torch.autograd.Function):  # type: ignore[misc]
    """softmax and log_softmax of a CPU tensor that requires grad, on a plain call: the
    output y was computed by the fast entry (y_array, on the detached tensor's view) before
    apply, so that a call the core declines never enters autograd; backward as _Forward's,
    on the saved y."""

    @staticmethod
    def forward(ctx: Any, x: Any, y_array: Any, op: Any, axis: Any, tau: Any) -> Any:
        y = torch.from_numpy(y_array)
        ctx.op, ctx.axis, ctx.tau = op, axis, tau
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx: Any, g: Any) -> Any:
        (y,) = ctx.saved_tensors
        dx = getattr(csoftmax, f"{ctx.op.name}_backward")(g, y, axis=ctx.axis, temperature=ctx.tau, backend="torch")
        return dx.to(y.dtype), None, None, None, None


class _Backward(torch.autograd.Function):  # type: ignore[misc]
    """softmax_backward, log_softmax_backward; backward in torch operations."""

    @staticmethod
    def forward(ctx: Any, g: Any, y: Any, where: Any, op: Any, axes: Any, tau: Any, dtype: Any) -> Any:
        dx = _compute(g, "backward", op, g, y, axes=axes, temperature=tau, where=where, out=None, dtype=dtype)
        ctx.op, ctx.axes, ctx.tau = op, axes, tau
        ctx.save_for_backward(g, y, where)
        return dx

    @staticmethod
    def backward(ctx: Any, h: Any) -> Any:
        g, y, where = ctx.saved_tensors
        vjp = getattr(R, f"{ctx.op.name}_vjp")
        dg, dy = vjp(namespace(h), h, g.to(h.dtype), y.to(h.dtype), ctx.axes, ctx.tau, where)
        return dg.to(g.dtype), dy.to(y.dtype), None, None, None, None, None


class _CrossEntropy(torch.autograd.Function):  # type: ignore[misc]
    """Per-row losses and their gradient in one fused pass, the gradient scaled by the
    reduction's grad_scale (as return_grad gives it); it is saved and is the backward (the
    second output, that gradient itself, is not differentiable). 'mean' and 'sum' give
    every row the same incoming gradient, grad_scale times the loss's: for loss.backward()
    the saved gradient is the answer as it stands, with no pass over it."""

    @staticmethod
    def forward(ctx: Any, logits: Any, probs: Any, weight: Any, labels: Any, where: Any, op: Op, axis: int,
                ignore_index: int, eps: float, tau: float, grad_scale: float, dtype: Any) -> Any:
        row_loss, grad = _compute(logits, "cross_entropy", op, logits, axis=axis, labels=labels, probs=probs,
                                  weight=weight, ignore_index=ignore_index, label_smoothing=eps, temperature=tau,
                                  where=where, grad_scale=grad_scale, want_grad=True, dtype=dtype)
        ctx.mark_non_differentiable(grad)
        ctx.axis, ctx.ignore_index, ctx.eps, ctx.tau, ctx.grad_scale = axis, ignore_index, eps, tau, grad_scale
        ctx.save_for_backward(grad, logits, probs, weight, labels, where)
        return row_loss, grad

    @staticmethod
    @torch.autograd.function.once_differentiable  # type: ignore[untyped-decorator]  # first-order only
    def backward(ctx: Any, g_row: Any, _g_grad: Any) -> Any:
        grad, logits, probs, weight, labels, where = ctx.saved_tensors
        axis, scale = ctx.axis, ctx.grad_scale
        d_logits = d_probs = d_weight = None
        if ctx.needs_input_grad[0]:
            if scale == 0.0:  # every target ignored: the gradient is 0
                d_logits = grad
            elif g_row.numel() and all(st == 0 for st in g_row.stride()):  # one value for every row
                factor = g_row.reshape(-1)[0].item() / scale
                d_logits = grad if factor == 1.0 else grad * factor
            else:
                d_logits = grad * (g_row.unsqueeze(axis) / scale).to(grad.dtype)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            logp = csoftmax.log_softmax(logits, axis=axis, temperature=ctx.tau, where=where, backend="torch")
            d_probs, d_weight = R.cross_entropy_target_vjp(namespace(logp), logp, axis, labels, ctx.ignore_index,
                                                           probs, weight, ctx.eps, where, g_row.to(logp.dtype))
            d_probs = None if d_probs is None or not ctx.needs_input_grad[1] else d_probs.to(probs.dtype)
            d_weight = None if d_weight is None or not ctx.needs_input_grad[2] else d_weight.to(weight.dtype)
        return (d_logits, d_probs, d_weight) + (None,) * 9


# ---- the families ----
def forward(op: Op, x: Any, /, *, axes: Any, temperature: Any, keepdims: Any, where: Any, out: Any, dtype: Any) -> Any:
    if _grad_on(x, out):
        if out is not None:
            raise _refuse_out(op)
        return _Forward.apply(x, where, op, axes, temperature, keepdims, dtype)
    return _compute(x, "forward", op, x, axes=axes, temperature=temperature, keepdims=keepdims, where=where, out=out,
                    dtype=dtype)


def backward(op: Op, grad_output: Any, output: Any, /, *, axes: Any, temperature: Any, where: Any, out: Any,
             dtype: Any) -> Any:
    if _grad_on(grad_output, output, out):
        if out is not None:
            raise _refuse_out(op)
        return _Backward.apply(grad_output, output, where, op, axes, temperature, dtype)
    return _compute(grad_output, "backward", op, grad_output, output, axes=axes, temperature=temperature, where=where,
                    out=out, dtype=dtype)


def jacobian(op: Op, x: Any, /, *, axis: Any, temperature: Any, dtype: Any) -> Any:
    if _grad_on(x):
        xl = torch.movedim(x, axis, -1)
        s = csoftmax.softmax(xl, axis=-1, temperature=temperature, dtype=dtype, backend="torch")
        lp = csoftmax.log_softmax(xl, axis=-1, temperature=temperature, dtype=dtype, backend="torch")
        return R.jacobian(namespace(x), s, lp, temperature, op.log)
    return _compute(x, "jacobian", op, x, axis=axis, temperature=temperature, dtype=dtype)


def cross_entropy(op: Op, logits: Any, /, *, axis: Any, labels: Any, probs: Any, weight: Any, ignore_index: Any,
                  label_smoothing: Any, temperature: Any, where: Any, grad_scale: Any, want_grad: Any,
                  dtype: Any) -> Any:
    if _grad_on(logits, probs, weight):
        row_loss, grad = _CrossEntropy.apply(logits, probs, weight, labels, where, op, axis, ignore_index,
                                             label_smoothing, temperature, grad_scale, dtype)
        return row_loss, (grad if want_grad else None)
    return _compute(logits, "cross_entropy", op, logits, axis=axis, labels=labels, probs=probs, weight=weight,
                    ignore_index=ignore_index, label_smoothing=label_smoothing, temperature=temperature, where=where,
                    grad_scale=grad_scale, want_grad=want_grad, dtype=dtype)


# ---- plain calls: the C core's fast entry on the views ----
_TYPENUMS: dict[Any, int] = {torch.float32: np.dtype(np.float32).num, torch.float64: np.dtype(np.float64).num}


def fast_entry(op: Op, cls: Any) -> Any:
    """For plain calls on CPU tensors: the C core's fast entry on views of their memory
    (_ckernels.tensor_view: the data pointer, shape and strides, at a fraction of
    Tensor.numpy()'s cost), the result a tensor over the array the core allocated
    (torch.from_numpy, the cheapest way torch has to make one); softmax and log_softmax of
    a tensor that requires grad through _FastForward (a fifth of the general path's
    cost on small tensors). None, to decline, for anything else: the general path takes
    it."""
    core = _c.fast_entry(op, np.ndarray)
    if core is None:
        return None
    view = ck.tensor_view
    differentiable = op.family is Family.FORWARD and op.kind is not Kind.LOGSUMEXP  # (by _FastForward)

    def run(arrays: Any, axis: Any, temperature: Any, out: Any) -> Any:
        """core on the views of the inputs; its result as a tensor, or out= written in place."""
        if out is None:
            r = core(*arrays, axis, temperature, None)
            return None if r is None else torch.from_numpy(r)
        o = view(out, _TYPENUMS) if type(out) is torch.Tensor else None
        if o is None or core(*arrays, axis, temperature, o) is None:
            return None
        _increment_version(out)
        return out

    def forward_entry(x: Any, axis: Any, temperature: Any, out: Any) -> Any:
        if type(x) is torch.Tensor and x.requires_grad:
            grad = torch.is_grad_enabled()
            if grad and (not differentiable or out is not None):
                return None  # (logsumexp's node is the general path's; out= with grad is refused there)
            a = view(x.detach(), _TYPENUMS)
            if a is None:
                return None
            if not grad:  # nothing to record
                return run((a,), axis, temperature, out)
            r = core(a, axis, temperature, None)
            return None if r is None else _FastForward.apply(x, r, op, axis, temperature)
        a = view(x, _TYPENUMS)
        return None if a is None else run((a,), axis, temperature, out)

    def backward_entry(g: Any, y: Any, axis: Any, temperature: Any, out: Any) -> Any:
        if type(y) is not torch.Tensor:
            return None
        a, b = view(g, _TYPENUMS), view(y, _TYPENUMS)
        return None if a is None or b is None else run((a, b), axis, temperature, out)

    return forward_entry if op.family is Family.FORWARD else backward_entry
