"""The public functions: argument checking, normalisation, dispatch.

Every argument is checked here, once, for every backend, so that all backends raise the
same errors (TypeError for a wrong kind of thing, ValueError for a wrong value, NumPy's
AxisError for a bad axis) and the kernels can trust what they get. Then the call is
normalised -- axes to a sorted tuple of non-negative ints, the result dtype resolved,
`where` and `out` checked against the input -- and handed to the backend chosen by
csoftmax._registry.
"""
from __future__ import annotations

import math
import numbers
import operator

import numpy as np

from . import _registry

AxisError = np.exceptions.AxisError

_FLOATS = ("float16", "float32", "float64")


# ---- arrays ------------------------------------------------------------------------------
def _as_array(x, argname="x"):
    """x itself if some backend or the array API knows its type; Python scalars and
    sequences (and NumPy scalars) become NumPy arrays."""
    if type(x) is np.ndarray:
        return x
    if isinstance(x, np.ndarray):
        if type(x).__module__.startswith("numpy.ma"):
            raise TypeError(
                f"{argname} is a masked array, whose mask would be ignored: pass its data with where=~mask"
            )
        return x
    if isinstance(x, (list, tuple, numbers.Number, np.generic)):
        try:
            return np.asarray(x)
        except (ValueError, TypeError) as exc:
            raise TypeError(f"{argname} could not be converted to an array: {exc}") from None
    for name in _registry.backends():
        if _registry.backend_record(name).accepts(x):
            return x
    if hasattr(x, "__array_namespace__") or hasattr(x, "shape") and hasattr(x, "dtype"):
        return x
    raise TypeError(f"{argname} must be an array, got {type(x).__module__}.{type(x).__qualname__}")


def _same_kind_array(ref, a, argname):
    """a as an array of ref's library (lists and scalars accepted)."""
    a = _as_array(a, argname)
    if not _same_library(ref, a):
        raise TypeError(
            f"{argname} must be an array of the same library as x "
            f"({type(ref).__module__}.{type(ref).__qualname__}), got {type(a).__module__}.{type(a).__qualname__}"
        )
    return a


_NP_KINDS = {"b": "bool", "i": "int", "u": "int", "f": "float", "c": "complex"}


def _category(xp, dt) -> str:
    """'float', 'int', 'bool', 'complex' or 'other' for a dtype of namespace xp."""
    if isinstance(dt, np.dtype):  # NumPy and CuPy
        return _NP_KINDS.get(dt.kind, "other")
    isdtype = getattr(xp, "isdtype", None)
    if isdtype is not None:
        try:
            for cat, kind in (("bool", "bool"), ("int", "integral"), ("float", "real floating"),
                              ("complex", "complex floating")):
                if isdtype(dt, kind):
                    return cat
            return "other"
        except (TypeError, ValueError):
            pass
    return _NP_KINDS.get(getattr(dt, "kind", None), "other")


_NAMES: dict = {}


def _dtype_name(dt) -> str:
    name = _NAMES.get(dt)
    if name is None:
        name = str(getattr(dt, "name", dt)).replace("torch.", "")
        try:
            _NAMES[dt] = name
        except TypeError:  # unhashable dtype object
            pass
    return name


def _numpy_like_dtype(xp, dt):
    """NumPy and CuPy spell dtypes as numpy.dtype instances; keep that form."""
    if xp is np or getattr(xp, "__name__", "") == "cupy":
        return np.dtype(dt)
    return dt


def _normalize_dtype(xp, dtype):
    """A float dtype of namespace xp from what the caller passed (dtype, name, type)."""
    if isinstance(dtype, str):
        dt = getattr(xp, dtype, None)
        if dt is None:
            raise TypeError(f"dtype must be a float dtype (float16, float32 or float64), got {dtype!r}")
        dt = _numpy_like_dtype(xp, dt)
    elif xp is np or getattr(xp, "__name__", "") == "cupy":
        try:
            dt = np.dtype(dtype)
        except TypeError:
            raise TypeError(f"dtype must be a float dtype (float16, float32 or float64), got {dtype!r}") from None
    else:
        dt = dtype
    if _category(xp, dt) != "float" or _dtype_name(dt) not in _FLOATS:
        raise TypeError(f"dtype must be a float dtype (float16, float32 or float64), got {_dtype_name(dt)}")
    return dt


def _result_dtype(xp, in_dtype, dtype=None):
    """The dtype of the result: dtype= if given (a float dtype); else the input's for
    float16/32/64, float64 for integer and bool input. Complex: TypeError."""
    if dtype is not None:
        return _normalize_dtype(xp, dtype)
    cat = _category(xp, in_dtype)
    if cat == "float":
        if _dtype_name(in_dtype) not in _FLOATS:
            raise TypeError(f"unsupported float dtype {_dtype_name(in_dtype)}: convert to float64 first")
        if not getattr(in_dtype, "isnative", True):  # results come in native byte order
            in_dtype = in_dtype.newbyteorder("=")
        return in_dtype
    if cat in ("int", "bool"):
        return _numpy_like_dtype(xp, xp.float64)
    if cat == "complex":
        raise TypeError(
            "complex input is not supported here; csoftmax.special.logsumexp takes complex input as scipy does"
        )
    raise TypeError(f"x must have a real numeric dtype, got {_dtype_name(in_dtype)}")


# ---- scalar arguments ----------------------------------------------------------------------
def _check_temperature(t) -> float:
    if isinstance(t, (bool, np.bool_)) or not isinstance(t, numbers.Real):
        raise TypeError(f"temperature must be a real number, got {type(t).__name__}")
    try:
        t = float(t)
    except OverflowError:  # an int beyond float's range
        raise ValueError(f"temperature {t} is beyond the float range (use float('inf'))") from None
    if not t > 0.0:  # also NaN
        raise ValueError(f"temperature must be > 0 (or +inf), got {t}")
    return t


def _normalize_axes(axis, ndim, argname="axis"):
    """Sorted tuple of non-negative axes. None: all axes; () : none."""
    if type(axis) is int and ndim and -ndim <= axis < ndim:
        return (axis % ndim,)
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, (tuple, list)):
        items = list(axis)
    else:
        items = [axis]
    out = []
    for a in items:
        if isinstance(a, (bool, np.bool_)):
            raise TypeError(f"{argname} must be an int, a tuple of ints or None, got a bool")
        try:
            a = operator.index(a)
        except TypeError:
            raise TypeError(f"{argname} must be an int, a tuple of ints or None, got {type(a).__name__}") from None
        lim = max(ndim, 1)  # a 0-d array takes axis 0 or -1
        if not -lim <= a < lim:
            raise AxisError(a, ndim, argname)
        out.append(a % lim if ndim else None)
    if ndim == 0:
        return ()
    if len(set(out)) != len(out):
        raise ValueError(f"repeated axis in {argname}: {axis}")
    return tuple(sorted(out))


def _single_axis(axis, ndim, argname="axis") -> int:
    if isinstance(axis, (bool, np.bool_)) or axis is None or isinstance(axis, (tuple, list)):
        raise TypeError(f"{argname} must be a single int here, got {axis!r}")
    try:
        a = operator.index(axis)
    except TypeError:
        raise TypeError(f"{argname} must be an int, got {type(axis).__name__}") from None
    if not -ndim <= a < ndim:
        raise AxisError(a, ndim, argname)
    return a % ndim


def _broadcasts_to(shape, target) -> bool:
    if len(shape) > len(target):
        return False
    return all(s == 1 or s == t for s, t in zip(reversed(shape), reversed(target)))


def _check_where(x, xp, where, shape):
    if where is None:
        return None
    where = _same_kind_array(x, where, "where")
    if _category(xp, where.dtype) != "bool":
        raise TypeError(f"where must be a boolean array, got dtype {_dtype_name(where.dtype)}")
    if not _broadcasts_to(tuple(where.shape), tuple(shape)):
        raise ValueError(f"where with shape {tuple(where.shape)} does not broadcast to the input's shape {tuple(shape)}")
    return where


def _same_library(ref, a) -> bool:
    if isinstance(ref, np.ndarray):
        return isinstance(a, np.ndarray) and not type(a).__module__.startswith("numpy.ma")
    return type(a) is type(ref)


def _check_out(x, mod, out, shape, rdt, argname="out"):
    if out is None:
        return None
    if not _same_library(x, out):
        raise TypeError(
            f"{argname} must be an array of the input's library ({type(x).__module__}.{type(x).__qualname__}), "
            f"got {type(out).__module__}.{type(out).__qualname__}"
        )
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"{argname} has shape {tuple(out.shape)}, expected {tuple(shape)}")
    if out.dtype != rdt:
        raise ValueError(f"{argname} has dtype {_dtype_name(out.dtype)}, expected {_dtype_name(rdt)}")
    if not mod.writable(out):
        raise ValueError(f"{argname} is read-only")
    return out


def _prepare(op, x, backend):
    x = _as_array(x)
    be = _registry.resolve(x, op, backend)
    mod = _registry.load(be.name)
    return x, be, mod, mod.namespace(x)


# ---- forward -------------------------------------------------------------------------------
_KIND = {"softmax": 0, "log_softmax": 1, "logsumexp": 2}  # csm_kind


def _fast_backend(op):
    """The `c` module when dispatch would give a plain call of op on a NumPy array to it."""
    if _registry._override.get():
        return None
    b = _registry._auto_cache.get((np.ndarray, op))
    if b is None or b.name != "c":  # not resolved yet, or another backend takes NumPy arrays
        return None
    return _registry._modules["c"]


def _fast(op, x, axis, temperature, out=None):
    """The call without options (but `out=`) on a NumPy array, when dispatch would give it
    to `c`: straight to the core, skipping the general checks (the core's fast entry
    declines anything unusual by returning None)."""
    mod = _fast_backend(op)
    return None if mod is None else mod.fast_forward(_KIND[op], x, axis, temperature, out)


def _forward(op, x, axis, temperature, where, dtype, out, backend):
    x, be, mod, xp = _prepare(op, x, backend)
    tau = _check_temperature(temperature)
    axes = _normalize_axes(axis, x.ndim)
    rdt = _result_dtype(xp, x.dtype, dtype)
    where = _check_where(x, xp, where, x.shape)
    out = _check_out(x, mod, out, x.shape, rdt)
    return getattr(mod, op)(x, axes, tau, where, out, rdt)


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
    if type(x) is np.ndarray and where is None and dtype is None and backend is None:
        r = _fast("softmax", x, axis, temperature, out)
        if r is not None:
            return r
    return _forward("softmax", x, axis, temperature, where, dtype, out, backend)


def log_softmax(x, /, axis=-1, *, temperature=1.0, where=None, dtype=None, out=None, backend=None):
    """Log of softmax(x / temperature) along axis, as (x - max)/tau - log1p(S'), where S'
    sums exp((x_j - max)/tau) over all entries but the max: finite for finite input and
    exact at the max entry (-log1p(S'), not 0). Arguments as softmax; masked entries and
    fully masked slices get -inf."""
    if type(x) is np.ndarray and where is None and dtype is None and backend is None:
        r = _fast("log_softmax", x, axis, temperature, out)
        if r is not None:
            return r
    return _forward("log_softmax", x, axis, temperature, where, dtype, out, backend)


def logsumexp(x, /, axis=None, *, keepdims=False, where=None, dtype=None, out=None, backend=None):
    """log(sum(exp(x))) over axis (default: all axes), as max + log1p(S') with S' leaving
    the max entry out, so logsumexp([0, -40]) = 4.248e-18 rather than 0.

    where: boolean mask; masked entries take no part, a fully masked slice gives -inf.
    A NaN gives NaN; a +inf gives +inf (NaN wins over +inf); an empty axis gives -inf.
    """
    if type(x) is np.ndarray and not keepdims and where is None and dtype is None and out is None and backend is None:
        r = _fast("logsumexp", x, axis, 1.0)
        if r is not None:
            return r
    x, be, mod, xp = _prepare("logsumexp", x, backend)
    axes = _normalize_axes(axis, x.ndim)
    rdt = _result_dtype(xp, x.dtype, dtype)
    where = _check_where(x, xp, where, x.shape)
    shape = tuple((1 if i in axes else s) for i, s in enumerate(x.shape) if keepdims or i not in axes)
    out = _check_out(x, mod, out, shape, rdt)
    return mod.logsumexp(x, axes, bool(keepdims), where, out, rdt)


# ---- backward ------------------------------------------------------------------------------
_BWD_KIND = {"softmax_backward": 3, "log_softmax_backward": 4}  # csm_kind


def _backward(op, grad_output, output, axis, temperature, where, out, backend):
    if type(grad_output) is np.ndarray and type(output) is np.ndarray and where is None and backend is None:
        mod = _fast_backend(op)
        if mod is not None:
            r = mod.fast_backward(_BWD_KIND[op], grad_output, output, axis, temperature, out)
            if r is not None:
                return r
    g = _as_array(grad_output, "grad_output")
    be = _registry.resolve(g, op, backend)
    mod = _registry.load(be.name)
    xp = mod.namespace(g)
    y = _same_kind_array(g, output, "output")
    if tuple(g.shape) != tuple(y.shape):
        raise ValueError(f"grad_output has shape {tuple(g.shape)} but output has shape {tuple(y.shape)}")
    tau = _check_temperature(temperature)
    axes = _normalize_axes(axis, g.ndim)
    rg = _result_dtype(xp, g.dtype)
    ry = _result_dtype(xp, y.dtype)
    rdt = xp.result_type(rg, ry)
    where = _check_where(g, xp, where, g.shape)
    out = _check_out(g, mod, out, g.shape, rdt)
    return getattr(mod, op)(g, y, axes, tau, where, out, rdt)


def softmax_backward(grad_output, output, /, axis=-1, *, temperature=1.0, where=None, out=None, backend=None):
    """Vector-Jacobian product of softmax: dx = y * (g - sum(g * y)) / temperature, where
    y = softmax(x / temperature) is the forward *output* and g the incoming gradient.
    One fused pass; masked entries and fully masked slices get exactly 0. out may be
    grad_output or output (in place)."""
    return _backward("softmax_backward", grad_output, output, axis, temperature, where, out, backend)


def log_softmax_backward(grad_output, output, /, axis=-1, *, temperature=1.0, where=None, out=None, backend=None):
    """Vector-Jacobian product of log_softmax: dx = (g - exp(y) * sum(g)) / temperature,
    where y = log_softmax(x / temperature) is the forward *output*. Arguments as
    softmax_backward."""
    return _backward("log_softmax_backward", grad_output, output, axis, temperature, where, out, backend)


# ---- Jacobians -----------------------------------------------------------------------------
def _jacobian(op, x, axis, temperature, max_bytes, backend):
    x, be, mod, xp = _prepare(op, x, backend)
    if x.ndim == 0:
        raise ValueError(f"{op} needs an array with at least one dimension")
    ax = _single_axis(axis, x.ndim)
    tau = _check_temperature(temperature)
    rdt = _result_dtype(xp, x.dtype)
    if isinstance(max_bytes, (bool, np.bool_)) or not isinstance(max_bytes, numbers.Integral):
        raise TypeError(f"max_bytes must be an int, got {type(max_bytes).__name__}")
    n = x.shape[ax]
    shape = tuple(s for i, s in enumerate(x.shape) if i != ax) + (n, n)
    itemsize = np.dtype(_dtype_name(rdt)).itemsize
    nbytes = math.prod(shape) * itemsize
    if nbytes > max_bytes:
        raise ValueError(
            f"{op} of shape {shape} would take {nbytes} bytes, over max_bytes={int(max_bytes)}; "
            f"pass a larger max_bytes, or use {op.replace('_jacobian', '_backward')} for "
            "vector-Jacobian products without forming the matrix"
        )
    if n == 0:
        return xp.zeros(shape, dtype=rdt)
    return getattr(mod, op)(x, ax, tau, rdt)


def softmax_jacobian(x, /, axis=-1, *, temperature=1.0, max_bytes=2**30, backend=None):
    """Batched Jacobian of softmax(x / temperature) along one axis:
    J[..., i, j] = s_i (delta_ij - s_j) / temperature, with that axis moved to the last two
    positions (shape x.shape without axis, then (n, n)). The diagonal uses
    1 - s_i = -expm1(log_softmax_i), exact also where s_i is close to 1.

    A result larger than max_bytes (default 1 GiB) raises ValueError naming its size: for
    large n use softmax_backward, which applies the Jacobian without forming it."""
    return _jacobian("softmax_jacobian", x, axis, temperature, max_bytes, backend)


def log_softmax_jacobian(x, /, axis=-1, *, temperature=1.0, max_bytes=2**30, backend=None):
    """Batched Jacobian of log_softmax(x / temperature) along one axis:
    J[..., i, j] = (delta_ij - s_j) / temperature; see softmax_jacobian."""
    return _jacobian("log_softmax_jacobian", x, axis, temperature, max_bytes, backend)


# ---- cross-entropy ---------------------------------------------------------------------------
_REDUCTIONS = ("mean", "sum", "none")


def _first_true(xp, flags, values):
    """The element of values at the first true flag (both flattened)."""
    f = xp.reshape(flags, (-1,))
    v = xp.reshape(values, (-1,))
    i = int(xp.argmax(xp.astype(f, xp.int8)))
    return int(v[i])


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
    x, be, mod, xp = _prepare("softmax_cross_entropy", logits, backend)
    if x.ndim == 0:
        raise ValueError("logits must have at least one dimension (the class axis)")
    ax = _single_axis(axis, x.ndim)
    n = x.shape[ax]
    if n == 0:
        raise ValueError("logits has no classes along axis")
    tau = _check_temperature(temperature)
    rdt = _result_dtype(xp, x.dtype)
    where = _check_where(x, xp, where, x.shape)
    if not isinstance(reduction, str) or reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if isinstance(label_smoothing, (bool, np.bool_)) or not isinstance(label_smoothing, numbers.Real):
        raise TypeError(f"label_smoothing must be a real number, got {type(label_smoothing).__name__}")
    eps = float(label_smoothing)
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {eps}")
    if isinstance(ignore_index, (bool, np.bool_)):
        raise TypeError("ignore_index must be an int, got a bool")
    try:
        ignore_index = operator.index(ignore_index)
    except TypeError:
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}") from None
    if not isinstance(return_grad, (bool, np.bool_)):
        raise TypeError(f"return_grad must be a bool, got {type(return_grad).__name__}")

    labels = _same_kind_array(x, labels, "labels")
    row_shape = tuple(s for i, s in enumerate(x.shape) if i != ax)
    cat = _category(xp, labels.dtype)
    probs = None
    if cat == "int":
        if tuple(labels.shape) != row_shape:
            raise ValueError(
                f"integer labels must have the logits' shape without axis, {row_shape}; got {tuple(labels.shape)}"
            )
    elif cat == "float":
        if tuple(labels.shape) != tuple(x.shape):
            raise ValueError(
                f"probability labels must have the logits' shape {tuple(x.shape)}; got {tuple(labels.shape)}"
            )
        probs, labels = labels, None
        if ignore_index != -100:
            raise ValueError("ignore_index is not supported for probability targets (as in torch)")
    else:
        raise ValueError(
            f"labels must be integer class indices or float class probabilities, got dtype {_dtype_name(labels.dtype)}"
        )

    if weight is not None:
        weight = _same_kind_array(x, weight, "weight")
        if _category(xp, weight.dtype) not in ("float", "int"):
            raise TypeError(f"weight must be real numbers, got dtype {_dtype_name(weight.dtype)}")
        if tuple(weight.shape) != (n,):
            raise ValueError(f"weight must have shape ({n},) (one per class), got {tuple(weight.shape)}")
        weight = xp.astype(weight, xp.float64)

    rows = math.prod(row_shape)
    if labels is not None:
        valid = labels != ignore_index
        bad = valid & ((labels < 0) | (labels >= n))
        if bool(xp.any(bad)):  # one flag read back from the device
            raise ValueError(
                f"labels contains {_first_true(xp, bad, labels)}, outside [0, {n}) for {n} classes "
                f"(ignore_index={ignore_index})"
            )
        safe = xp.where(valid, labels, xp.zeros_like(labels))
        if where is not None:
            live = xp.broadcast_to(where, x.shape)
            idx = xp.reshape(xp.arange(n), tuple(n if i == ax else 1 for i in range(x.ndim)))
            hit = idx == xp.expand_dims(safe, axis=ax)
            live_label = xp.any(hit & live, axis=ax)
            masked = valid & ~live_label
            if bool(xp.any(masked)):
                raise ValueError(
                    f"label {_first_true(xp, masked, labels)} points at a class masked out by where"
                )
        if reduction == "mean":
            if weight is None:
                w_lab = xp.astype(valid, xp.float64)
            else:
                w_lab = xp.where(valid, _take_weights(xp, weight, safe), xp.zeros(safe.shape, dtype=xp.float64))
            denom = float(xp.sum(w_lab))
        else:
            denom = 1.0
    else:
        denom = float(rows) if reduction == "mean" else 1.0
    scale = 1.0 / denom if denom != 0.0 else 0.0

    row_loss, grad = mod.softmax_cross_entropy(
        x, ax, labels, probs, weight, ignore_index, eps, tau, where, scale, bool(return_grad), rdt
    )
    if reduction == "none":
        loss = xp.astype(row_loss, rdt)
    else:
        total = xp.sum(row_loss)
        if reduction == "mean":
            total = total / denom if denom != 0.0 else math.nan
        loss = xp.astype(xp.asarray(total, dtype=xp.float64), rdt)
    return (loss, grad) if return_grad else loss


def _take_weights(xp, weight, labels):
    """weight[labels] for index labels of any shape."""
    flat = xp.reshape(labels, (-1,))
    return xp.reshape(xp.take(weight, flat, axis=0), tuple(labels.shape))


# ---- registry front ---------------------------------------------------------------------------
def get_backend(x, op="softmax"):
    """The backend (a csoftmax.Backend) that would compute op on x."""
    return _registry.get_backend(_as_array(x), op)
