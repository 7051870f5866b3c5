"""The backend protocol: what a backend's loader returns, and what it may rely on.

csoftmax._api checks and normalises every argument once, for every backend, so that all
backends raise the same errors and a backend only computes. It then calls one method of
the backend per op *family* (csoftmax._ops.Family), passing the op (a csoftmax._ops.Op:
name, kind, the forward op it derives from). A backend implements the families of the
ops its csoftmax.Backend record claims; the registry checks that when it loads it.

What every method receives, already checked:
  arrays     of the backend's own type (Backend.accepts took the input; the other arrays
             were converted or refused as "not the same library"), in any dtype the
             public function allows (float16/32/64, and for forward ops integers and
             bools), any layout (strides, byte order, alignment)
  axes       a sorted tuple of distinct non-negative ints, possibly empty (then every
             element is its own slice); axis: one non-negative int
  temperature  a float > 0, or +inf (logsumexp: 1.0)
  where      None, or a boolean array broadcastable to the input's shape
  out        None, or a writable array of the result's shape and dtype (it may be an
             input itself: in place)
  dtype      the result's dtype, as the backend's namespace spells it
and what it returns: the result (``out`` itself when given), of ``dtype``.

Family methods (keyword-only after the arrays):
  forward(op, x, *, axes, temperature, keepdims, where, out, dtype)
      softmax and log_softmax: an array of x's shape; logsumexp: x reduced over axes
      (kept as size 1 with keepdims)
  backward(op, grad_output, output, *, axes, temperature, where, out, dtype)
      the vector-Jacobian product of op.forward at its output (same shape)
  jacobian(op, x, *, axis, temperature, dtype)
      x.shape without axis + (n, n), n = x.shape[axis] >= 1
  cross_entropy(op, logits, *, axis, labels, probs, weight, ignore_index,
                label_smoothing, temperature, where, grad_scale, want_grad, dtype)
      -> (loss per row: logits' shape without axis, any float dtype; the gradient of
      the rows' losses times grad_scale, of dtype, or None unless want_grad). Exactly one
      of labels (integers in [0, n) or equal to ignore_index) and probs (floats of the
      logits' shape) is given; weight is None or float64 of shape (n,).

Besides: namespace(x) (the array-API namespace of the backend's arrays) and
writable(out). Optional hooks: fast_entry(op, cls) -> a callable for plain calls (see
csoftmax._api: it takes the public function's positional arguments and returns None to
decline), and from_numpy(a) / to_numpy(a), which the test suite and
``python -m csoftmax check`` use to run a backend on NumPy-made inputs.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from ._ops import Family, Op

# what a backend module must have besides its family methods
INTERFACE = ("namespace", "writable")

# what the front end calls on a backend's namespace (besides the float dtypes by name,
# and isdtype and __array_namespace_info__ where the namespace has them)
NAMESPACE = (
    "float32", "float64", "int8", "bool", "astype", "asarray", "result_type", "zeros", "zeros_like", "ones_like",
    "full_like", "arange", "eye", "reshape", "broadcast_to", "expand_dims", "take", "where", "any", "sum", "max",
    "argmax", "isnan", "exp", "expm1",
)


@runtime_checkable
class BackendModule(Protocol):
    """A backend implementing every family (a backend of fewer ops needs only theirs)."""

    def namespace(self, x: Any) -> Any: ...

    def writable(self, out: Any) -> bool: ...

    def forward(self, op: Op, x: Any, /, *, axes: tuple[int, ...], temperature: float, keepdims: bool,
                where: Any, out: Any, dtype: Any) -> Any: ...

    def backward(self, op: Op, grad_output: Any, output: Any, /, *, axes: tuple[int, ...], temperature: float,
                 where: Any, out: Any, dtype: Any) -> Any: ...

    def jacobian(self, op: Op, x: Any, /, *, axis: int, temperature: float, dtype: Any) -> Any: ...

    def cross_entropy(self, op: Op, logits: Any, /, *, axis: int, labels: Any, probs: Any, weight: Any,
                      ignore_index: int, label_smoothing: float, temperature: float, where: Any, grad_scale: float,
                      want_grad: bool, dtype: Any) -> tuple[Any, Any]: ...


def method(family: Family) -> str:
    """The name of a family's method on a backend module."""
    return family.value


def missing(module: Any, ops: tuple[Op, ...]) -> list[str]:
    """What a backend module lacks for the ops it claims (empty when it is complete)."""
    need = list(INTERFACE) + sorted({method(o.family) for o in ops})
    return [name for name in need if not callable(getattr(module, name, None))]
