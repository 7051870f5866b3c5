"""Argument checking and normalisation: the vocabulary csoftmax._api (and
csoftmax.special) check every argument with, once, for every backend.

Each check raises what the contract says (docs/design.md, "Errors"): TypeError for the
wrong kind of thing, ValueError for a wrong value, NumPy's AxisError (a ValueError) for a
bad axis; every message names the argument. What passes comes out normalised: axes as a
sorted tuple of non-negative ints, dtypes as the array library spells them.
"""
from __future__ import annotations

import numbers
import operator
from typing import Any, cast

import numpy as np

from . import _registry

AxisError = np.exceptions.AxisError

FLOATS = ("float16", "float32", "float64")
REDUCTIONS = ("mean", "sum", "none")


def quiet(xp: Any) -> Any:
    """Where NumPy computes a value that is meant to be inf or NaN (a cast beyond a dtype's
    range, inf / inf), no warning: NumPy's errstate -- for NumPy, and for the namespaces
    that compute with NumPy underneath when called (array-api-strict's, ...); it costs the
    others nothing. A lazy namespace computes later, outside it: Dask's makes its astype,
    divide and sum quiet tasks themselves (csoftmax._backends.dask)."""
    return np.errstate(all="ignore")


# ---- arrays ------------------------------------------------------------------------------
def as_array(x: Any, argname: str = "x") -> Any:
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
    raise TypeError(f"{argname} must be an array, got {type_name(x)}")


def type_name(a: Any) -> str:
    return f"{type(a).__module__}.{type(a).__qualname__}"


def same_library(ref: Any, a: Any) -> bool:
    """Whether a is an array of ref's library: for the libraries a backend takes, the
    array types that backend accepts (NumPy's subclasses, JAX's arrays and tracers, torch's
    tensors and parameters), else ref's exact type."""
    if isinstance(ref, np.ndarray):
        return isinstance(a, np.ndarray) and not type(a).__module__.startswith("numpy.ma")
    if type(a) is type(ref):
        return True
    lib = _registry.library_of(ref)
    return lib is not None and lib.accepts(a)


def same_kind_array(ref: Any, a: Any, argname: str, refname: str = "x") -> Any:
    """a as an array of ref's library (lists and scalars accepted)."""
    a = as_array(a, argname)
    if not same_library(ref, a):
        raise TypeError(
            f"{argname} must be an array of the same library as {refname} ({type_name(ref)}), got {type_name(a)}"
        )
    return a


# ---- dtypes ----------------------------------------------------------------------------------
# Dtypes are recognised through the array's namespace (isdtype, and the namespace's own
# float16/float32/float64), not by NumPy's names, so that every array-API library's
# dtypes are understood; NumPy, CuPy, JAX and Dask spell theirs as numpy.dtype instances.
_NP_KINDS = {"b": "bool", "i": "int", "u": "int", "f": "float", "c": "complex"}
_ISDTYPE_KINDS = (("bool", "bool"), ("int", "integral"), ("float", "real floating"), ("complex", "complex floating"))


def category(xp: Any, dt: Any) -> str:
    """'float', 'int', 'bool', 'complex' or 'other' for a dtype of namespace xp."""
    if isinstance(dt, np.dtype):  # NumPy, CuPy, JAX, Dask
        return _NP_KINDS.get(dt.kind, "other")
    isdtype = getattr(xp, "isdtype", None)
    if isdtype is not None:
        try:
            for cat, kind in _ISDTYPE_KINDS:
                if isdtype(dt, kind):
                    return cat
            return "other"
        except (TypeError, ValueError):
            pass
    return _NP_KINDS.get(str(getattr(dt, "kind", "")), "other")


_NAMES: dict[tuple[type, Any], str] = {}  # keyed by the dtype's class too: no comparisons across libraries


def dtype_name(dt: Any) -> str:
    """A dtype's name without its library's prefix ('float32' for torch.float32 and for
    array_api_strict.float32 too)."""
    try:
        key = (type(dt), dt)
        name = _NAMES.get(key)
    except TypeError:  # unhashable dtype object
        key, name = None, None
    if name is None:
        name = str(getattr(dt, "name", dt)).rsplit(".", 1)[-1]
        if key is not None:
            _NAMES[key] = name
    return name


_SPELLS_NUMPY: dict[int, bool] = {}


def _spells_numpy(xp: Any) -> bool:
    """Whether namespace xp spells dtypes as numpy.dtype instances: NumPy and CuPy (whose
    float64 is NumPy's scalar type), JAX (whose scalar types carry a numpy.dtype), Dask."""
    if xp is np:
        return True
    known = _SPELLS_NUMPY.get(id(xp))
    if known is None:
        f = getattr(xp, "float64", None)
        known = (isinstance(f, type) and issubclass(f, np.generic)) or isinstance(getattr(f, "dtype", None), np.dtype)
        _SPELLS_NUMPY[id(xp)] = known
    return known


def _namespace_floats(xp: Any) -> tuple[str, ...] | None:
    """The float dtypes the namespace can make here, by name (None: it does not say).
    JAX without jax_enable_x64 has no float64; float16, outside the array-API standard,
    is the namespace's if it has one."""
    info = getattr(xp, "__array_namespace_info__", None)
    if info is None:
        return None
    try:
        names = [dtype_name(d) for d in info().dtypes(kind="real floating").values()]
    except Exception:
        return None
    if getattr(xp, "float16", None) is not None:
        names.append("float16")
    return tuple(names)


def default_float(xp: Any) -> Any:
    """The namespace's widest float dtype here: float64, or the default real floating
    dtype where that is narrower (JAX without jax_enable_x64: float32) -- what integer
    input computes in, and what weights and sums are held in, without the namespace
    warning about a dtype it cannot make."""
    floats = _namespace_floats(xp)
    dt = xp.float64
    if floats is not None and "float64" not in floats:
        dt = xp.__array_namespace_info__().default_dtypes()["real floating"]
    return np.dtype(dt) if _spells_numpy(xp) else dt


def _float_dtype_error(what: Any) -> TypeError:
    return TypeError(f"dtype must be a float dtype (float16, float32 or float64), got {what}")


def normalize_dtype(xp: Any, dtype: Any) -> Any:
    """A float dtype of namespace xp from what the caller passed: a dtype of xp, a type, or
    what NumPy reads as a dtype ('float32', 'f4', 'd', '<f8', 'float', 'e', np.float32, ...)
    for any namespace. The result is in native byte order."""
    if isinstance(dtype, str):
        try:
            name = np.dtype(dtype).name
        except TypeError:
            raise TypeError(f"dtype must be a float dtype (float16, float32 or float64), got {dtype!r}") from None
        dt = getattr(xp, name, None) if name in FLOATS else None
        if dt is None:
            raise _float_dtype_error(repr(dtype))
        if _spells_numpy(xp):
            dt = np.dtype(dt)
    elif _spells_numpy(xp):
        try:
            dt = np.dtype(dtype)
        except TypeError:
            raise _float_dtype_error(repr(dtype)) from None
    else:
        dt = dtype
        if isinstance(dt, np.dtype) or category(xp, dt) == "other":  # a NumPy dtype, spelled by xp
            try:
                name = np.dtype(dtype).name
            except TypeError:
                raise _float_dtype_error(repr(dtype)) from None
            dt = getattr(xp, name, None) if name in FLOATS else None
            if dt is None:
                raise _float_dtype_error(name)
    name = dtype_name(dt)
    if category(xp, dt) != "float" or name not in FLOATS:
        raise _float_dtype_error(name)
    floats = _namespace_floats(xp)
    if floats is not None and name not in floats:
        raise TypeError(f"dtype {name} is not available for these arrays here (the library's float dtypes: "
                        f"{', '.join(floats)})")
    if not getattr(dt, "isnative", True):
        dt = dt.newbyteorder("=")
    return dt


def result_dtype(xp: Any, in_dtype: Any, dtype: Any = None, argname: str = "x", complex_hint: bool = True) -> Any:
    """The dtype of the result: dtype= if given (a float dtype); else the input's for
    float16/32/64, the namespace's default_float for integer and bool input (float64, or
    float32 for JAX without x64). Complex: TypeError (pointing to csoftmax.special where
    complex_hint: for the forward ops, which scipy's take complex)."""
    if dtype is not None:
        return normalize_dtype(xp, dtype)
    cat = category(xp, in_dtype)
    if cat == "float":
        if dtype_name(in_dtype) not in FLOATS:
            raise TypeError(f"unsupported float dtype {dtype_name(in_dtype)}: convert to float64 first")
        if not getattr(in_dtype, "isnative", True):  # results come in native byte order
            in_dtype = in_dtype.newbyteorder("=")
        return in_dtype
    if cat in ("int", "bool"):
        return default_float(xp)
    if cat == "complex":
        hint = "; csoftmax.special takes complex input as scipy does" if complex_hint else ""
        raise TypeError(f"{argname} is complex, which is not supported here{hint}")
    raise TypeError(f"{argname} must have a real numeric dtype, got {dtype_name(in_dtype)}")


def scalar(v: Any) -> float:
    """A 0-d array's value as a float, read outside any autodiff graph (torch warns when
    a tensor that requires grad is converted)."""
    detach = getattr(v, "detach", None)
    return float(v if detach is None else detach())


# ---- scalar arguments ----------------------------------------------------------------------
def _is_bool(v: Any) -> bool:
    return isinstance(v, (bool, np.bool_))


def check_int(name: str, v: Any) -> int:
    """An integer argument (bools refused)."""
    if _is_bool(v):
        raise TypeError(f"{name} must be an int, got a bool")
    try:
        return operator.index(v)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(v).__name__}") from None


def check_real(name: str, v: Any) -> float:
    """A real-number argument (bools refused)."""
    if _is_bool(v) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
    return float(v)


def check_bool(name: str, v: Any) -> bool:
    if not _is_bool(v):
        raise TypeError(f"{name} must be a bool, got {type(v).__name__}")
    return bool(v)


def check_temperature(t: Any) -> float:
    if _is_bool(t) or not isinstance(t, numbers.Real):
        raise TypeError(f"temperature must be a real number, got {type(t).__name__}")
    try:
        t = float(t)
    except OverflowError:  # an int beyond float's range
        raise ValueError(f"temperature {t} is beyond the float range (use float('inf'))") from None
    if not t > 0.0:  # also NaN
        raise ValueError(f"temperature must be > 0 (or +inf), got {t}")
    return float(t)


def normalize_axes(axis: Any, ndim: int, argname: str = "axis") -> tuple[int, ...]:
    """Sorted tuple of non-negative axes. None: all axes; () : none."""
    if type(axis) is int and ndim and -ndim <= axis < ndim:
        return (axis % ndim,)
    if axis is None:
        return tuple(range(ndim))
    items = list(axis) if isinstance(axis, (tuple, list)) else [axis]
    out = []
    for a in items:
        if _is_bool(a):
            raise TypeError(f"{argname} must be an int, a tuple of ints or None, got a bool")
        try:
            a = operator.index(a)
        except TypeError:
            raise TypeError(f"{argname} must be an int, a tuple of ints or None, got {type(a).__name__}") from None
        lim = max(ndim, 1)  # a 0-d array takes axis 0 or -1
        if not -lim <= a < lim:
            raise AxisError(a, ndim, argname)
        out.append(a % lim)
    if len(set(out)) != len(out):
        raise ValueError(f"repeated axis in {argname}: {axis}")
    return tuple(sorted(out)) if ndim else ()


def single_axis(axis: Any, ndim: int, argname: str = "axis") -> int:
    if _is_bool(axis) or axis is None or isinstance(axis, (tuple, list)):
        raise TypeError(f"{argname} must be a single int here, got {axis!r}")
    try:
        a = operator.index(axis)
    except TypeError:
        raise TypeError(f"{argname} must be an int, got {type(axis).__name__}") from None
    if not -ndim <= a < ndim:
        raise AxisError(a, ndim, argname)
    return a % ndim


# ---- where= and out= -----------------------------------------------------------------------
def _broadcasts_to(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    if len(shape) > len(target):
        return False
    return all(s == 1 or s == t for s, t in zip(reversed(shape), reversed(target)))


def check_where(x: Any, xp: Any, where: Any, shape: tuple[int, ...], refname: str = "x") -> Any:
    if where is None:
        return None
    where = same_kind_array(x, where, "where", refname)
    if category(xp, where.dtype) != "bool":
        raise TypeError(f"where must be a boolean array, got dtype {dtype_name(where.dtype)}")
    if not _broadcasts_to(tuple(where.shape), tuple(shape)):
        raise ValueError(f"where with shape {tuple(where.shape)} does not broadcast to the input's shape {tuple(shape)}")
    return where


def check_out(x: Any, mod: Any, out: Any, shape: tuple[int, ...], rdt: Any, argname: str = "out") -> Any:
    if out is None:
        return None
    if not same_library(x, out):
        raise TypeError(f"{argname} must be an array of the input's library ({type_name(x)}), got {type_name(out)}")
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"{argname} has shape {tuple(out.shape)}, expected {tuple(shape)}")
    native = out.dtype.newbyteorder("=") if isinstance(out.dtype, np.dtype) else out.dtype
    if native != rdt:  # any byte order, as NumPy's ufuncs take it
        raise ValueError(f"{argname} has dtype {dtype_name(out.dtype)}, expected {dtype_name(rdt)}")
    if not mod.writable(out):
        raise ValueError(f"{argname} is read-only")
    return out


# ---- cross-entropy's targets ---------------------------------------------------------------
def xent_targets(x: Any, xp: Any, labels: Any, ax: int, ignore_index: int) -> tuple[Any, Any]:
    """(index labels, probability targets): exactly one is an array, the other None."""
    labels = same_kind_array(x, labels, "labels", "logits")
    row_shape = tuple(s for i, s in enumerate(x.shape) if i != ax)
    cat = category(xp, labels.dtype)
    if cat == "int":
        if tuple(labels.shape) != row_shape:
            raise ValueError(
                f"integer labels must have the logits' shape without axis, {row_shape}; got {tuple(labels.shape)}"
            )
        return labels, None
    if cat == "float":
        if tuple(labels.shape) != tuple(x.shape):
            raise ValueError(
                f"probability labels must have the logits' shape {tuple(x.shape)}; got {tuple(labels.shape)}"
            )
        if ignore_index != -100:
            raise ValueError("ignore_index is not supported for probability targets (as in torch)")
        return None, labels
    raise ValueError(
        f"labels must be integer class indices or float class probabilities, got dtype {dtype_name(labels.dtype)}"
    )


def xent_weight(x: Any, xp: Any, weight: Any, n: int) -> Any:
    """The class weights as default_float (float64 but for JAX without x64), or None."""
    if weight is None:
        return None
    weight = same_kind_array(x, weight, "weight", "logits")
    if category(xp, weight.dtype) not in ("float", "int"):
        raise TypeError(f"weight must be real numbers, got dtype {dtype_name(weight.dtype)}")
    if tuple(weight.shape) != (n,):
        raise ValueError(f"weight must have shape ({n},) (one per class), got {tuple(weight.shape)}")
    return xp.astype(weight, default_float(xp))
