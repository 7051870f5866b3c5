"""csoftmax.special: a drop-in for scipy.special's softmax, log_softmax and logsumexp.

Same signatures, defaults (axis=None: all axes) and results as scipy.special, special
values included -- scipy's log_softmax([inf, 1]) is [nan, -inf], not the all-NaN slice of
csoftmax.log_softmax, and so it is here. Real input runs on the fast backends; complex
input, logsumexp's `b` weights and `return_sign` run on array-API code that follows
scipy's algorithm. Results for 0-d outputs are NumPy scalars, as scipy's.

Inputs are taken as scipy takes them. By default scipy passes every input through
np.asarray -- lists, pandas DataFrames and Series, NumPy subclasses (np.matrix, memmap),
torch CPU tensors -- and returns NumPy arrays; with the environment variable
SCIPY_ARRAY_API set (to anything, as scipy reads it), arrays of other array libraries
(torch, CuPy, JAX, Dask, array-API arrays) keep their library and np.matrix is refused.
NumPy masked arrays are refused in both modes: np.asarray would drop their mask.

Deliberate differences, where strictly better:
  * an empty axis gives an empty result (scipy raises for softmax and log_softmax);
  * tail precision: softmax and log_softmax are accurate to a few ulp (csoftmax.softmax's
    contract), and log_softmax's max entry is -log1p(S') rather than 0;
  * float16 input is computed in float32 (scipy computes in float16).
"""
from __future__ import annotations

import math
import os
from typing import Any, Literal, overload

import numpy as np

from . import _api, _registry
from . import _checks as C
from ._typing import ArrayT, Axis, NumPyInput

# Results for NumPy input are NumPy arrays, or NumPy scalars where the result is 0-d (as
# scipy's): typed Any, since which one depends on the input's shape.

__all__ = ["softmax", "log_softmax", "logsumexp"]


def _array_api_mode() -> bool:
    """scipy's SCIPY_ARRAY_API switch: any non-empty value turns it on."""
    return bool(os.environ.get("SCIPY_ARRAY_API"))


def _as_input(x: Any) -> Any:
    """x as scipy.special takes it (see the module's docstring)."""
    if type(x) is np.ndarray:
        return x
    if isinstance(x, np.ndarray):
        C.as_array(x)  # refuses masked arrays
        if type(x) is np.matrix and _array_api_mode():
            raise TypeError("Inputs of type `numpy.matrix` are not supported.")
        return np.asarray(x)
    if _array_api_mode() and (_registry.library_of(x) is not None or hasattr(x, "__array_namespace__")):
        return x
    try:
        return np.asarray(x)
    except (ValueError, TypeError) as exc:
        raise TypeError(f"x could not be converted to an array: {exc}") from None


def _namespace(x: Any) -> Any:
    """The array namespace csoftmax's backend for x checks it with."""
    if type(x) is np.ndarray:
        return np
    return _registry.dispatch(x, "softmax")[1].namespace(x)


def _is_complex(xp: Any, a: Any) -> bool:
    return C.category(xp, a.dtype) == "complex"


def _unwrap0(v: Any) -> Any:
    """scipy returns NumPy scalars where the result is 0-d."""
    if isinstance(v, np.ndarray) and v.ndim == 0:
        return v[()]
    return v


@overload
def softmax(x: NumPyInput, axis: Axis = None) -> Any: ...
@overload
def softmax(x: ArrayT, axis: Axis = None) -> ArrayT: ...
def softmax(x: Any, axis: Axis = None) -> Any:
    """scipy.special.softmax: ``exp(x) / sum(exp(x))`` over ``axis``.

    Parameters
    ----------
    x : array_like
        Real or complex input: a NumPy array (or list, scalar), or any array csoftmax
        takes.
    axis : int, tuple of ints or None, optional
        The axes of one softmax; None (the default, as scipy): all axes.

    Returns
    -------
    array or scalar
        Of x's shape; a NumPy scalar where that is 0-d (as scipy's).

    Raises
    ------
    TypeError
        For input that is not an array.
    numpy.exceptions.AxisError
        For an axis out of range.

    See Also
    --------
    csoftmax.softmax : the same, with temperature, where, dtype and out, and axis=-1 by
        default.

    Notes
    -----
    Real input runs on csoftmax.softmax (the fast backends, a few ulp); complex input on
    scipy's formula. Deliberate difference: an empty axis gives an empty result (scipy
    raises).

    Examples
    --------
    >>> from csoftmax import special
    >>> special.softmax([1.0, 2.0, 3.0])
    array([0.09003057, 0.24472847, 0.66524096])
    >>> special.softmax([[1.0, 2.0], [3.0, 4.0]])         # axis=None: over everything
    array([[0.0320586 , 0.08714432],
           [0.23688282, 0.64391426]])
    >>> special.softmax(3.0)
    np.float64(1.0)
    """
    x = _as_input(x)
    xp = _namespace(x)
    if _is_complex(xp, x):
        axes = C.normalize_axes(axis, x.ndim)
        if 0 in [x.shape[a] for a in axes]:
            return x
        e = xp.exp(x - xp.max(x, axis=axes, keepdims=True))  # scipy's formula
        return _unwrap0(e / xp.sum(e, axis=axes, keepdims=True))
    return _unwrap0(_api.softmax(x, axis=axis))


@overload
def log_softmax(x: NumPyInput, axis: Axis = None) -> Any: ...
@overload
def log_softmax(x: ArrayT, axis: Axis = None) -> ArrayT: ...
def log_softmax(x: Any, axis: Axis = None) -> Any:
    """scipy.special.log_softmax: ``log(softmax(x))`` over ``axis``, computed stably.

    Parameters
    ----------
    x : array_like
        Real or complex input: a NumPy array (or list, scalar), or any array csoftmax
        takes.
    axis : int, tuple of ints or None, optional
        The axes of one softmax; None (the default, as scipy): all axes.

    Returns
    -------
    array or scalar
        Of x's shape; a NumPy scalar where that is 0-d.

    Raises
    ------
    TypeError
        For input that is not an array.
    numpy.exceptions.AxisError
        For an axis out of range.

    See Also
    --------
    csoftmax.log_softmax : the same, with temperature, where, dtype and out; a slice
        holding +inf is all NaN there.

    Notes
    -----
    A slice holding +inf (and no NaN) gives NaN at the +inf entries and -inf elsewhere,
    as scipy's. The max entry is ``-log1p(S')`` (scipy's is 0).

    Examples
    --------
    >>> from csoftmax import special
    >>> special.log_softmax([np.inf, 1.0])
    array([ nan, -inf])
    >>> special.log_softmax([0.0, -40.0])
    array([-4.24835426e-18, -4.00000000e+01])
    """
    x = _as_input(x)
    xp = _namespace(x)
    axes = C.normalize_axes(axis, x.ndim)
    if _is_complex(xp, x):
        if 0 in [x.shape[a] for a in axes]:
            return x
        x_max = xp.max(x, axis=axes, keepdims=True)  # scipy's formula
        x_max = xp.where(xp.isfinite(x_max), x_max, xp.zeros_like(x_max))
        tmp = x - x_max
        with np.errstate(divide="ignore", invalid="ignore"):
            return _unwrap0(tmp - xp.log(xp.sum(xp.exp(tmp), axis=axes, keepdims=True)))
    out = _api.log_softmax(x, axis=axis)
    if x.ndim and x.size and C.category(xp, x.dtype) == "float":
        top = xp.max(x)  # NaN if any NaN; +inf if a +inf and no NaN anywhere
        if not (top < math.inf):  # some slice may hold +inf: follow scipy there
            pinf = x == math.inf
            rows = xp.any(pinf, axis=axes, keepdims=True) & ~xp.any(xp.isnan(x), axis=axes, keepdims=True)
            fix = xp.where(pinf, xp.asarray(math.nan, dtype=out.dtype), xp.asarray(-math.inf, dtype=out.dtype))
            out = xp.where(rows, fix, out)
    return _unwrap0(out)


def _complex_max_and_mask(xp: Any, a: Any, axes: tuple[int, ...]) -> tuple[Any, Any]:
    """scipy's shift for complex logsumexp: the element with the largest real part (one
    of ties), and where it is."""
    real = xp.real(a)
    mx = xp.max(real, axis=axes, keepdims=True)
    hit = real == mx
    idx = xp.reshape(xp.arange(math.prod(a.shape)), a.shape)
    idx = xp.where(hit, idx, -1)
    first = idx == xp.max(idx, axis=axes, keepdims=True)
    return xp.sum(xp.where(first, a, xp.zeros_like(a)), axis=axes, keepdims=True), first


@overload
def logsumexp(a: NumPyInput, axis: Axis = None, b: Any = None, keepdims: bool = False,
              return_sign: Literal[False] = False) -> Any: ...
@overload
def logsumexp(a: NumPyInput, axis: Axis = None, b: Any = None, keepdims: bool = False, *,
              return_sign: Literal[True]) -> tuple[Any, Any]: ...
@overload
def logsumexp(a: ArrayT, axis: Axis = None, b: Any = None, keepdims: bool = False,
              return_sign: Literal[False] = False) -> ArrayT: ...
@overload
def logsumexp(a: ArrayT, axis: Axis = None, b: Any = None, keepdims: bool = False, *,
              return_sign: Literal[True]) -> tuple[ArrayT, ArrayT]: ...
@overload
def logsumexp(a: Any, axis: Axis = None, b: Any = None, keepdims: bool = False,
              return_sign: bool = False) -> Any: ...
def logsumexp(a: Any, axis: Axis = None, b: Any = None, keepdims: bool = False, return_sign: bool = False) -> Any:
    """scipy.special.logsumexp: ``log(sum(b * exp(a)))`` over ``axis``.

    Parameters
    ----------
    a : array_like
        Real or complex input.
    axis : int, tuple of ints or None, optional
        The axes to reduce; None (the default): all axes.
    b : array_like, optional
        Weights, broadcastable against ``a``; they may be negative or zero.
    keepdims : bool, optional
        Keep the reduced axes, with size 1.
    return_sign : bool, optional
        Return ``(log|sum|, sign)`` instead; without it a negative sum gives NaN.

    Returns
    -------
    res : array or scalar
        The reduction; a NumPy scalar where it is 0-d.
    sgn : array or scalar
        With ``return_sign=True`` only: the sign of the sum (0 for an empty sum; for
        complex input the complex phase).

    Raises
    ------
    TypeError
        For input that is not an array, or ``b`` of another library.
    numpy.exceptions.AxisError
        For an axis out of range.

    See Also
    --------
    csoftmax.logsumexp : the real case, with where, dtype and out.

    Notes
    -----
    Real input without ``b`` runs on the fast backends (the max entry left out of the
    sum, so ``logsumexp([0, -40])`` is 4.248e-18); ``b``, ``return_sign`` and complex
    input follow scipy's algorithm in array-API code.

    Examples
    --------
    >>> from csoftmax import special
    >>> special.logsumexp([1.0, 2.0, 3.0])
    np.float64(3.40760596444438)
    >>> special.logsumexp([1.0, 2.0], b=[1.0, -1.0], return_sign=True)
    (np.float64(1.5413248546129181), np.float64(-1.0))
    >>> special.logsumexp([1.0, 2.0], b=[1.0, -1.0])      # a negative sum: NaN
    np.float64(nan)
    """
    a = _as_input(a)
    xp = _namespace(a)
    if b is None and not _is_complex(xp, a):
        if a.ndim == 0:
            a = xp.reshape(a, (1,))  # scipy works on at least 1-d
        out = _api.logsumexp(a, axis=axis, keepdims=keepdims)
        if not return_sign:
            return _unwrap0(out)
        sgn = xp.where(out == -math.inf, xp.zeros_like(out), xp.where(xp.isnan(out), out, xp.ones_like(out)))
        return _unwrap0(out), _unwrap0(sgn)
    return _logsumexp_general(xp, a, axis, b, keepdims, return_sign)


def _logsumexp_general(xp: Any, a: Any, axis: Axis, b: Any, keepdims: bool, return_sign: bool) -> Any:
    """scipy's algorithm (scipy/special/_logsumexp.py) for weights, signs and complex input."""
    if b is not None:
        b = C.same_kind_array(a, _as_input(b), "b")
    if a.ndim == 0:
        a = xp.reshape(a, (1,))
    if b is not None:
        a, b = xp.broadcast_arrays(a, b)
        dt = xp.result_type(a.dtype, b.dtype)
    else:
        dt = a.dtype
    if C.category(xp, dt) in ("int", "bool"):
        dt = xp.float64
    a = xp.astype(a, dt)
    b = None if b is None else xp.astype(b, dt)
    axes = C.normalize_axes(axis, a.ndim)
    complex_ = _is_complex(xp, a)
    with np.errstate(all="ignore"):
        if 0 in [a.shape[i] for i in axes] or math.prod(a.shape) == 0:
            shape = tuple(1 if i in axes else s for i, s in enumerate(a.shape))
            out = xp.full(shape, -math.inf, dtype=dt)
            sgn = xp.sign(out)
        else:
            b_exp_a = xp.exp(a) if b is None else b * xp.exp(a)
            total = xp.sum(b_exp_a, axis=axes, keepdims=True)
            sgn_inf = xp.sign(total) if return_sign else None
            out_inf = xp.log(xp.abs(total) if return_sign else total)

            if b is not None:
                a = xp.where(b == 0, xp.asarray(-math.inf, dtype=dt), a)
            if complex_:
                a_max, at_max = _complex_max_and_mask(xp, a, axes)
            else:
                a_max = xp.max(a, axis=axes, keepdims=True)
                at_max = a == a_max
            rest = xp.where(at_max, xp.asarray(-math.inf, dtype=dt), a)
            at_max_f = xp.astype(at_max, dt)
            m = xp.sum(at_max_f if b is None else b * at_max_f, axis=axes, keepdims=True)
            e = xp.exp(rest - a_max) if b is None else b * xp.exp(rest - a_max)
            s = xp.sum(e, axis=axes, keepdims=True)
            s = xp.where(s == 0, s, s / m)
            sgn = xp.sign(s + 1) * xp.sign(m)
            if complex_:
                sgn = sgn * xp.exp(xp.imag(a_max) * 1.0j)
            else:
                s = xp.where(s < -1, -s - 2, s)
                m = xp.abs(m)
            out = xp.log1p(s) + xp.log(m) + a_max
            if return_sign:
                out = xp.real(out)
            elif not complex_:
                out = xp.where(sgn < 0, xp.asarray(math.nan, dtype=out.dtype), out)
            finite = xp.isfinite(out)
            out = xp.where(finite, out, out_inf)
            if return_sign:
                sgn = xp.where(finite, sgn, sgn_inf)
    if complex_:
        if return_sign:
            sgn = xp.real(sgn) + _wrap_radians(xp, xp.imag(sgn)) * 1j
        else:
            out = xp.real(out) + _wrap_radians(xp, xp.imag(out)) * 1j
    if not keepdims:
        out = xp.squeeze(out, axis=axes)
        sgn = xp.squeeze(sgn, axis=axes)
    return (_unwrap0(out), _unwrap0(sgn)) if return_sign else _unwrap0(out)


def _wrap_radians(xp: Any, x: Any) -> Any:
    wrapped = -((-x + math.pi) % (2 * math.pi) - math.pi)
    return xp.where(xp.abs(x) < math.pi, x, wrapped)
