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
from typing import Any, Literal, overload

import numpy as np
from numpy.typing import NDArray

from . import _checks as C
from . import _registry
from ._ops import BY_NAME, Op
from ._registry import Backend
from ._typing import ArrayT, Axis, FloatArray, FloatT, NumPyInput

_FAST_MISS = None  # what a fast entry returns to decline a call
_MAX_NDIM = 64  # NumPy's (and the C core's) limit on an array's dimensions


def _prepare(op: Op, x: Any, backend: str | None, argname: str = "x") -> tuple[Any, Any, Any]:
    x = C.as_array(x, argname)
    _, mod = _registry.dispatch(x, op.name, backend)
    return x, mod, mod.namespace(x)


# ---- forward -------------------------------------------------------------------------------
def _forward(op: Op, x: Any, axis: Any, temperature: Any, keepdims: Any, where: Any, dtype: Any, out: Any,
             backend: str | None) -> Any:
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


@overload
def softmax(x: NDArray[FloatT], /, axis: Axis = -1, *, temperature: float = 1.0, where: Any = None, dtype: None = None,
            out: NDArray[FloatT] | None = None, backend: str | None = None) -> NDArray[FloatT]: ...
@overload
def softmax(x: NumPyInput, /, axis: Axis = -1, *, temperature: float = 1.0, where: Any = None, dtype: Any = None,
            out: NDArray[Any] | None = None, backend: str | None = None) -> FloatArray: ...
@overload
def softmax(x: ArrayT, /, axis: Axis = -1, *, temperature: float = 1.0, where: Any = None, dtype: Any = None,
            out: ArrayT | None = None, backend: str | None = None) -> ArrayT: ...
def softmax(x: Any, /, axis: Axis = -1, *, temperature: float = 1.0, where: Any = None, dtype: Any = None,
            out: Any = None, backend: str | None = None) -> Any:
    """Softmax of ``x / temperature`` along ``axis``, computed stably.

    ``exp((x - max) / temperature)`` divided by its sum over the slice: shifted by the
    max, so never overflowing, and accurate to a few ulp (x - max is carried with its
    rounding error, the exp is csoftmax's own, the sums are kept in higher precision).

    Parameters
    ----------
    x : array_like
        A NumPy array (or a list, scalar), a CuPy array, or any array-API array.
    axis : int, tuple of ints or None, optional
        The axis (default -1) or axes of one softmax over their joint extent; None:
        all axes; ``()``: every element is its own slice.
    temperature : float, optional
        tau > 0, or +inf (uniform over the entries that are not -inf); fused into the
        kernel, without a temporary. Default 1.
    where : array of bool, optional
        Broadcastable to ``x``. Masked entries (False) take no part: softmax gives 0
        there, log_softmax -inf; a fully masked slice is all 0 (softmax), all -inf
        (log_softmax) or -inf (logsumexp) -- never NaN.
    dtype : float dtype, optional
        Compute and return in this dtype (float16, float32 or float64); the input is
        cast to it first. By default float16, float32 and float64 keep their dtype
        (float16 is computed in float32 and rounded) and integers and bools give
        float64.
    out : array, optional
        The result is written here and returned; it must have the result's shape and
        dtype and be of ``x``'s library. Any strides; it may be ``x`` itself.
    backend : str, optional
        The name of a registered backend to compute with, overriding dispatch.

    Returns
    -------
    array
        The softmax, of x's shape and library (NumPy for lists and scalars) and of the
        result dtype.

    Raises
    ------
    TypeError
        For the wrong kind of argument: ``x`` not an array (or complex),
        a non-number temperature, a non-float ``dtype``, an ``out`` of another
        library, a ``where`` that is not boolean.
    ValueError
        For a wrong value: temperature <= 0 or NaN, an ``out`` of the wrong shape or
        dtype or read-only, a ``where`` that does not broadcast, an unknown backend.
    numpy.exceptions.AxisError
        For an axis out of range (a ValueError).

    See Also
    --------
    log_softmax, softmax_backward, softmax_jacobian, csoftmax.special.softmax

    Notes
    -----
    Special values, slice by slice: a NaN makes the slice all NaN; a +inf, or every
    entry -inf, makes it NaN (as scipy, torch and JAX); -inf entries among finite ones
    get 0. With ``temperature=inf`` a slice is uniform over its unmasked entries
    above -inf.

    Examples
    --------
    >>> csoftmax.softmax([1.0, 2.0, 3.0])
    array([0.09003057, 0.24472847, 0.66524096])
    >>> csoftmax.softmax(np.float32([1, 2, 3]), temperature=2.0)
    array([0.18632373, 0.30719587, 0.5064804 ], dtype=float32)
    >>> csoftmax.softmax([[1.0, 2.0], [3.0, 5.0]], axis=0)
    array([[0.11920292, 0.04742587],
           [0.88079708, 0.95257413]])
    >>> csoftmax.softmax([1.0, 2.0, 3.0], where=np.array([True, False, True]))
    array([0.11920292, 0.        , 0.88079708])
    >>> csoftmax.softmax([10, 2, 10000, 4])       # integers give float64; never NaN
    array([0., 0., 1., 0.])
    """
    return _forward(_SOFTMAX, x, axis, temperature, False, where, dtype, out, backend)


@overload
def log_softmax(x: NDArray[FloatT], /, axis: Axis = -1, *, temperature: float = 1.0, where: Any = None,
                dtype: None = None,
                out: NDArray[FloatT] | None = None, backend: str | None = None) -> NDArray[FloatT]: ...
@overload
def log_softmax(x: NumPyInput, /, axis: Axis = -1, *, temperature: float = 1.0, where: Any = None, dtype: Any = None,
                out: NDArray[Any] | None = None, backend: str | None = None) -> FloatArray: ...
@overload
def log_softmax(x: ArrayT, /, axis: Axis = -1, *, temperature: float = 1.0, where: Any = None, dtype: Any = None,
                out: ArrayT | None = None, backend: str | None = None) -> ArrayT: ...
def log_softmax(x: Any, /, axis: Axis = -1, *, temperature: float = 1.0, where: Any = None, dtype: Any = None,
                out: Any = None, backend: str | None = None) -> Any:
    """Log of softmax(``x / temperature``) along ``axis``, computed stably.

    ``(x - max) / tau - log1p(S')``, where S' sums ``exp((x_j - max) / tau)`` over every
    entry but the max: finite for finite input, and exact at the max entry
    (``-log1p(S')``, not 0).

    Parameters
    ----------
    x : array_like
        A NumPy array (or a list, scalar), a CuPy array, or any array-API array.
    axis : int, tuple of ints or None, optional
        The axis (default -1) or axes of one softmax over their joint extent; None:
        all axes; ``()``: every element is its own slice.
    temperature : float, optional
        tau > 0, or +inf; fused into the kernel. Default 1.
    where : array of bool, optional
        Broadcastable to ``x``. Masked entries (False) take no part: softmax gives 0
        there, log_softmax -inf; a fully masked slice is all 0 (softmax), all -inf
        (log_softmax) or -inf (logsumexp) -- never NaN.
    dtype : float dtype, optional
        Compute and return in this dtype (float16, float32 or float64); the input is
        cast to it first. By default float16, float32 and float64 keep their dtype
        (float16 is computed in float32 and rounded) and integers and bools give
        float64.
    out : array, optional
        The result is written here and returned; it must have the result's shape and
        dtype and be of ``x``'s library. Any strides; it may be ``x`` itself.
    backend : str, optional
        The name of a registered backend to compute with, overriding dispatch.

    Returns
    -------
    array
        The log-softmax, of x's shape and library and of the result dtype.

    Raises
    ------
    TypeError
        For the wrong kind of argument: ``x`` not an array (or complex),
        a non-number temperature, a non-float ``dtype``, an ``out`` of another
        library, a ``where`` that is not boolean.
    ValueError
        For a wrong value: temperature <= 0 or NaN, an ``out`` of the wrong shape or
        dtype or read-only, a ``where`` that does not broadcast, an unknown backend.
    numpy.exceptions.AxisError
        For an axis out of range (a ValueError).

    See Also
    --------
    softmax, log_softmax_backward, log_softmax_jacobian, softmax_cross_entropy

    Notes
    -----
    Special values as softmax's: a slice with a NaN or a +inf, or every entry -inf, is
    all NaN; -inf entries among finite ones get -inf; masked entries and fully masked
    slices get -inf. The result is -inf only where the exact value lies beyond the
    dtype's range.

    Examples
    --------
    >>> csoftmax.log_softmax([1.0, 2.0, 3.0])
    array([-2.40760596, -1.40760596, -0.40760596])
    >>> csoftmax.log_softmax([0.0, -40.0])       # the max entry is -log1p(exp(-40)), not 0
    array([-4.24835426e-18, -4.00000000e+01])
    """
    return _forward(_LOG_SOFTMAX, x, axis, temperature, False, where, dtype, out, backend)


@overload
def logsumexp(x: NDArray[FloatT], /, axis: Axis = None, *, keepdims: bool = False, where: Any = None,
              dtype: None = None,
              out: NDArray[FloatT] | None = None, backend: str | None = None) -> NDArray[FloatT]: ...
@overload
def logsumexp(x: NumPyInput, /, axis: Axis = None, *, keepdims: bool = False, where: Any = None, dtype: Any = None,
              out: NDArray[Any] | None = None, backend: str | None = None) -> FloatArray: ...
@overload
def logsumexp(x: ArrayT, /, axis: Axis = None, *, keepdims: bool = False, where: Any = None, dtype: Any = None,
              out: ArrayT | None = None, backend: str | None = None) -> ArrayT: ...
def logsumexp(x: Any, /, axis: Axis = None, *, keepdims: bool = False, where: Any = None, dtype: Any = None,
              out: Any = None, backend: str | None = None) -> Any:
    """``log(sum(exp(x)))`` over ``axis``, computed stably.

    ``max + log1p(S')`` with S' leaving the max entry out of the sum, so
    ``logsumexp([0, -40])`` is 4.248e-18 rather than 0.

    Parameters
    ----------
    x : array_like
        A NumPy array (or a list, scalar), a CuPy array, or any array-API array.
    axis : int, tuple of ints or None, optional
        The axis or axes to reduce; None (the default): all axes; ``()``: none (the
        result is x as floats).
    keepdims : bool, optional
        Keep the reduced axes, with size 1.
    where : array of bool, optional
        Broadcastable to ``x``. Masked entries (False) take no part: a fully masked slice
        gives -inf.
    dtype : float dtype, optional
        Compute and return in this dtype (float16, float32 or float64); the input is
        cast to it first. By default float16, float32 and float64 keep their dtype
        (float16 is computed in float32 and rounded) and integers and bools give
        float64.
    out : array, optional
        The result is written here and returned; it must have the result's shape and
        dtype and be of ``x``'s library. Any strides.
    backend : str, optional
        The name of a registered backend to compute with, overriding dispatch.

    Returns
    -------
    array
        x reduced over the axes (a 0-d array when all are reduced), of x's library and
        of the result dtype.

    Raises
    ------
    TypeError
        For the wrong kind of argument: ``x`` not an array (or complex),
        a non-number temperature, a non-float ``dtype``, an ``out`` of another
        library, a ``where`` that is not boolean.
    ValueError
        For a wrong value: temperature <= 0 or NaN, an ``out`` of the wrong shape or
        dtype or read-only, a ``where`` that does not broadcast, an unknown backend.
    numpy.exceptions.AxisError
        For an axis out of range (a ValueError).

    See Also
    --------
    log_softmax, csoftmax.special.logsumexp

    Notes
    -----
    A NaN gives NaN; a +inf gives +inf (NaN wins over +inf); an empty axis gives
    -inf; all entries -inf give -inf.

    Examples
    --------
    >>> csoftmax.logsumexp([1.0, 2.0, 3.0])
    array(3.40760596)
    >>> csoftmax.logsumexp([0.0, -40.0])
    array(4.24835426e-18)
    >>> csoftmax.logsumexp([[1.0, 2.0], [3.0, 4.0]], axis=1, keepdims=True)
    array([[2.31326169],
           [4.31326169]])
    """
    return _forward(_LOGSUMEXP, x, axis, 1.0, keepdims, where, dtype, out, backend)


# ---- backward ------------------------------------------------------------------------------
def _backward(op: Op, grad_output: Any, output: Any, axis: Any, temperature: Any, where: Any, out: Any,
              backend: str | None) -> Any:
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


@overload
def softmax_backward(grad_output: NDArray[FloatT], output: NDArray[FloatT], /, axis: Axis = -1, *,
                     temperature: float = 1.0, where: Any = None,
                     out: NDArray[FloatT] | None = None, backend: str | None = None) -> NDArray[FloatT]: ...
@overload
def softmax_backward(grad_output: NumPyInput, output: NumPyInput, /, axis: Axis = -1, *, temperature: float = 1.0,
                     where: Any = None,
                     out: NDArray[Any] | None = None, backend: str | None = None) -> FloatArray: ...
@overload
def softmax_backward(grad_output: ArrayT, output: ArrayT, /, axis: Axis = -1, *, temperature: float = 1.0,
                     where: Any = None,
                     out: ArrayT | None = None, backend: str | None = None) -> ArrayT: ...
def softmax_backward(grad_output: Any, output: Any, /, axis: Axis = -1, *, temperature: float = 1.0,
                     where: Any = None, out: Any = None,
                     backend: str | None = None) -> Any:
    """Vector-Jacobian product of softmax, from its output.

    ``dx = y * (g - sum(g * y)) / temperature``, where ``y = softmax(x / temperature)``
    is the forward *output* (as PyTorch's and JAX's rules take it) and ``g`` the incoming
    gradient; one fused pass.

    Parameters
    ----------
    grad_output : array_like
        g, the gradient with respect to softmax's output.
    output : array_like
        y, softmax's output, of ``grad_output``'s shape and library.
    axis : int, tuple of ints or None, optional
        The axis or axes of the forward op (default -1).
    temperature : float, optional
        The forward op's temperature tau (the result includes its 1/tau factor; 0 at
        tau = +inf). Default 1.
    where : array of bool, optional
        The forward op's mask: masked entries and fully masked slices get exactly 0.
    out : array, optional
        The result is written here and returned (the result's shape and dtype, the
        inputs' library); it may be ``grad_output`` or ``output`` itself.
    backend : str, optional
        The name of a registered backend to compute with, overriding dispatch.

    Returns
    -------
    array
        The gradient with respect to the forward op's input, of the inputs' shape and
        library; its dtype is the promotion of theirs (integers count as float64).

    Raises
    ------
    TypeError
        For arrays of different libraries, a non-number temperature, a non-boolean
        ``where``.
    ValueError
        For inputs of different shapes, temperature <= 0 or NaN, a wrong ``out``.
    numpy.exceptions.AxisError
        For an axis out of range.

    See Also
    --------
    softmax, softmax_jacobian

    Examples
    --------
    >>> y = csoftmax.softmax([1.0, 2.0, 3.0])
    >>> csoftmax.softmax_backward([1.0, 0.0, 0.0], y)
    array([ 0.08192507, -0.02203304, -0.05989202])
    >>> J = csoftmax.softmax_jacobian([1.0, 2.0, 3.0])    # the same, through the matrix
    >>> np.allclose(np.array([1.0, 0.0, 0.0]) @ J, csoftmax.softmax_backward([1.0, 0.0, 0.0], y))
    True
    """
    return _backward(BY_NAME["softmax_backward"], grad_output, output, axis, temperature, where, out, backend)


@overload
def log_softmax_backward(grad_output: NDArray[FloatT], output: NDArray[FloatT], /, axis: Axis = -1, *,
                         temperature: float = 1.0, where: Any = None,
                         out: NDArray[FloatT] | None = None, backend: str | None = None) -> NDArray[FloatT]: ...
@overload
def log_softmax_backward(grad_output: NumPyInput, output: NumPyInput, /, axis: Axis = -1, *, temperature: float = 1.0,
                         where: Any = None,
                         out: NDArray[Any] | None = None, backend: str | None = None) -> FloatArray: ...
@overload
def log_softmax_backward(grad_output: ArrayT, output: ArrayT, /, axis: Axis = -1, *, temperature: float = 1.0,
                         where: Any = None,
                         out: ArrayT | None = None, backend: str | None = None) -> ArrayT: ...
def log_softmax_backward(grad_output: Any, output: Any, /, axis: Axis = -1, *, temperature: float = 1.0,
                         where: Any = None, out: Any = None,
                         backend: str | None = None) -> Any:
    """Vector-Jacobian product of log_softmax, from its output.

    ``dx = (g - exp(y) * sum(g)) / temperature``, where ``y = log_softmax(x / temperature)``
    is the forward *output* and ``g`` the incoming gradient; one fused pass.

    Parameters
    ----------
    grad_output : array_like
        g, the gradient with respect to log_softmax's output.
    output : array_like
        y, log_softmax's output, of ``grad_output``'s shape and library.
    axis : int, tuple of ints or None, optional
        The axis or axes of the forward op (default -1).
    temperature : float, optional
        The forward op's temperature tau (the result includes its 1/tau factor; 0 at
        tau = +inf). Default 1.
    where : array of bool, optional
        The forward op's mask: masked entries and fully masked slices get exactly 0.
    out : array, optional
        The result is written here and returned (the result's shape and dtype, the
        inputs' library); it may be ``grad_output`` or ``output`` itself.
    backend : str, optional
        The name of a registered backend to compute with, overriding dispatch.

    Returns
    -------
    array
        The gradient with respect to the forward op's input, of the inputs' shape and
        library; its dtype is the promotion of theirs (integers count as float64).

    Raises
    ------
    TypeError
        For arrays of different libraries, a non-number temperature, a non-boolean
        ``where``.
    ValueError
        For inputs of different shapes, temperature <= 0 or NaN, a wrong ``out``.
    numpy.exceptions.AxisError
        For an axis out of range.

    See Also
    --------
    log_softmax, log_softmax_jacobian

    Examples
    --------
    >>> y = csoftmax.log_softmax([1.0, 2.0, 3.0])
    >>> csoftmax.log_softmax_backward([1.0, 0.0, 0.0], y)
    array([ 0.90996943, -0.24472847, -0.66524096])
    """
    return _backward(BY_NAME["log_softmax_backward"], grad_output, output, axis, temperature, where, out, backend)


# ---- Jacobians -----------------------------------------------------------------------------
def _jacobian(op: Op, x: Any, axis: Any, temperature: Any, max_bytes: Any, backend: str | None) -> Any:
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


@overload
def softmax_jacobian(x: NDArray[FloatT], /, axis: int = -1, *, temperature: float = 1.0, max_bytes: int = 2**30,
                     backend: str | None = None) -> NDArray[FloatT]: ...
@overload
def softmax_jacobian(x: NumPyInput, /, axis: int = -1, *, temperature: float = 1.0, max_bytes: int = 2**30,
                     backend: str | None = None) -> FloatArray: ...
@overload
def softmax_jacobian(x: ArrayT, /, axis: int = -1, *, temperature: float = 1.0, max_bytes: int = 2**30,
                     backend: str | None = None) -> ArrayT: ...
def softmax_jacobian(x: Any, /, axis: int = -1, *, temperature: float = 1.0, max_bytes: int = 2**30,
                     backend: str | None = None) -> Any:
    """Batched Jacobian of softmax(``x / temperature``) along one axis.

    ``J[..., i, j] = s_i (delta_ij - s_j) / temperature``, with the softmax axis moved to
    the last two positions. The diagonal uses ``1 - s_i = -expm1(log_softmax_i)``, exact
    also where ``s_i`` is close to 1.

    Parameters
    ----------
    x : array_like
        A NumPy array (or a list), a CuPy array, or any array-API array, with at least
        one dimension.
    axis : int, optional
        The softmax axis (default -1); one axis only.
    temperature : float, optional
        tau > 0, or +inf (then the Jacobian is 0). Default 1.
    max_bytes : int, optional
        The largest result allowed, in bytes (default 2**30, 1 GiB).
    backend : str, optional
        The name of a registered backend to compute with, overriding dispatch.

    Returns
    -------
    array
        Of shape ``x.shape`` without ``axis``, then ``(n, n)``; x's library, the result
        dtype.

    Raises
    ------
    ValueError
        For a result larger than ``max_bytes`` (the message names its size: for large
        n, the backward functions apply the Jacobian without forming it), a 0-d
        input, temperature <= 0 or NaN.
    TypeError
        For an axis that is not a single int, a non-number temperature.
    numpy.exceptions.AxisError
        For an axis out of range.

    See Also
    --------
    softmax_backward : the vector-Jacobian product, without the matrix.
    log_softmax_jacobian

    Examples
    --------
    >>> csoftmax.softmax_jacobian([1.0, 2.0])
    array([[ 0.19661193, -0.19661193],
           [-0.19661193,  0.19661193]])
    >>> csoftmax.softmax_jacobian(np.zeros((5, 3)), axis=0).shape
    (3, 5, 5)
    """
    return _jacobian(BY_NAME["softmax_jacobian"], x, axis, temperature, max_bytes, backend)


@overload
def log_softmax_jacobian(x: NDArray[FloatT], /, axis: int = -1, *, temperature: float = 1.0, max_bytes: int = 2**30,
                         backend: str | None = None) -> NDArray[FloatT]: ...
@overload
def log_softmax_jacobian(x: NumPyInput, /, axis: int = -1, *, temperature: float = 1.0, max_bytes: int = 2**30,
                         backend: str | None = None) -> FloatArray: ...
@overload
def log_softmax_jacobian(x: ArrayT, /, axis: int = -1, *, temperature: float = 1.0, max_bytes: int = 2**30,
                         backend: str | None = None) -> ArrayT: ...
def log_softmax_jacobian(x: Any, /, axis: int = -1, *, temperature: float = 1.0, max_bytes: int = 2**30,
                         backend: str | None = None) -> Any:
    """Batched Jacobian of log_softmax(``x / temperature``) along one axis.

    ``J[..., i, j] = (delta_ij - s_j) / temperature``, with the softmax axis moved to the
    last two positions; the diagonal is ``-expm1(log_softmax_i) / temperature``.

    Parameters
    ----------
    x : array_like
        A NumPy array (or a list), a CuPy array, or any array-API array, with at least
        one dimension.
    axis : int, optional
        The softmax axis (default -1); one axis only.
    temperature : float, optional
        tau > 0, or +inf (then the Jacobian is 0). Default 1.
    max_bytes : int, optional
        The largest result allowed, in bytes (default 2**30, 1 GiB).
    backend : str, optional
        The name of a registered backend to compute with, overriding dispatch.

    Returns
    -------
    array
        Of shape ``x.shape`` without ``axis``, then ``(n, n)``; x's library, the result
        dtype.

    Raises
    ------
    ValueError
        For a result larger than ``max_bytes`` (the message names its size: for large
        n, the backward functions apply the Jacobian without forming it), a 0-d
        input, temperature <= 0 or NaN.
    TypeError
        For an axis that is not a single int, a non-number temperature.
    numpy.exceptions.AxisError
        For an axis out of range.

    See Also
    --------
    log_softmax_backward : the vector-Jacobian product, without the matrix.
    softmax_jacobian

    Examples
    --------
    >>> csoftmax.log_softmax_jacobian([1.0, 2.0])
    array([[ 0.73105858, -0.73105858],
           [-0.26894142,  0.26894142]])
    """
    return _jacobian(BY_NAME["log_softmax_jacobian"], x, axis, temperature, max_bytes, backend)


# ---- cross-entropy ---------------------------------------------------------------------------
def _first_true(xp: Any, flags: Any, values: Any) -> int:
    """The element of values at the first true flag (both flattened)."""
    f = xp.reshape(flags, (-1,))
    v = xp.reshape(values, (-1,))
    i = int(xp.argmax(xp.astype(f, xp.int8)))
    return int(v[i])


def _check_labels(xp: Any, x: Any, labels: Any, ax: int, n: int, ignore_index: int, where: Any) -> tuple[Any, Any]:
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


def _mean_denominator(xp: Any, valid: Any, safe: Any, weight: Any) -> Any:
    """'mean' over index targets: the sum of the weights of the targets not ignored (a 0-d
    array, which keeps the graph of autodiff libraries)."""
    wide = C.default_float(xp)
    if weight is None:
        return xp.sum(xp.astype(valid, wide))
    flat = xp.reshape(safe, (-1,))
    w_lab = xp.reshape(xp.take(weight, flat, axis=0), tuple(safe.shape))
    return xp.sum(xp.where(valid, w_lab, xp.zeros(safe.shape, dtype=wide)))


def _reduce(xp: Any, row_loss: Any, reduction: str, denom: Any, rdt: Any) -> Any:
    """The loss from the rows' losses (float64), rounded once to the result dtype: a loss
    beyond its range is +-inf, an infinite class weight may give NaN -- values, not
    warnings. A zero denominator (every target ignored) gives NaN, whose gradient is 0 (as
    torch's); denom is a 0-d array, which keeps the graph of autodiff libraries."""
    with C.quiet(xp):
        if reduction == "none":
            return xp.astype(row_loss, rdt)
        total = xp.sum(row_loss)
        if reduction == "mean":
            nonzero = denom != 0
            total = xp.where(nonzero, xp.divide(total, xp.where(nonzero, denom, 1.0)), math.nan)
        return xp.astype(xp.asarray(total, dtype=C.default_float(xp)), rdt)


def _deferred(mod: Any, *arrays: Any) -> bool:
    """Whether any of the arrays holds values that cannot be read now (a lazy Dask array,
    a JAX tracer): the backend's optional `deferred` hook."""
    hook = getattr(mod, "deferred", None)
    return hook is not None and any(a is not None and hook(a) for a in arrays)


@overload
def softmax_cross_entropy(
    logits: NDArray[FloatT], labels: Any, /, axis: int = -1, *, weight: Any = None, ignore_index: int = -100,
    label_smoothing: float = 0.0, reduction: Literal["mean", "sum", "none"] = "mean", temperature: float = 1.0,
    where: Any = None, return_grad: Literal[False] = False,
    backend: str | None = None,
) -> NDArray[FloatT]: ...
@overload
def softmax_cross_entropy(
    logits: NDArray[FloatT], labels: Any, /, axis: int = -1, *, weight: Any = None, ignore_index: int = -100,
    label_smoothing: float = 0.0, reduction: Literal["mean", "sum", "none"] = "mean", temperature: float = 1.0,
    where: Any = None, return_grad: Literal[True],
    backend: str | None = None,
) -> tuple[NDArray[FloatT], NDArray[FloatT]]: ...
@overload
def softmax_cross_entropy(
    logits: NumPyInput, labels: Any, /, axis: int = -1, *, weight: Any = None, ignore_index: int = -100,
    label_smoothing: float = 0.0, reduction: Literal["mean", "sum", "none"] = "mean", temperature: float = 1.0,
    where: Any = None, return_grad: Literal[False] = False,
    backend: str | None = None,
) -> FloatArray: ...
@overload
def softmax_cross_entropy(
    logits: NumPyInput, labels: Any, /, axis: int = -1, *, weight: Any = None, ignore_index: int = -100,
    label_smoothing: float = 0.0, reduction: Literal["mean", "sum", "none"] = "mean", temperature: float = 1.0,
    where: Any = None, return_grad: Literal[True],
    backend: str | None = None,
) -> tuple[FloatArray, FloatArray]: ...
@overload
def softmax_cross_entropy(
    logits: ArrayT, labels: Any, /, axis: int = -1, *, weight: Any = None, ignore_index: int = -100,
    label_smoothing: float = 0.0, reduction: Literal["mean", "sum", "none"] = "mean", temperature: float = 1.0,
    where: Any = None, return_grad: Literal[False] = False,
    backend: str | None = None,
) -> ArrayT: ...
@overload
def softmax_cross_entropy(
    logits: ArrayT, labels: Any, /, axis: int = -1, *, weight: Any = None, ignore_index: int = -100,
    label_smoothing: float = 0.0, reduction: Literal["mean", "sum", "none"] = "mean", temperature: float = 1.0,
    where: Any = None, return_grad: Literal[True],
    backend: str | None = None,
) -> tuple[ArrayT, ArrayT]: ...
@overload
def softmax_cross_entropy(
    logits: Any, labels: Any, /, axis: int = -1, *, weight: Any = None, ignore_index: int = -100,
    label_smoothing: float = 0.0, reduction: Literal["mean", "sum", "none"] = "mean", temperature: float = 1.0,
    where: Any = None, return_grad: bool,
    backend: str | None = None,
) -> Any: ...
def softmax_cross_entropy(
    logits: Any,
    labels: Any,
    /,
    axis: int = -1,
    *,
    weight: Any = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: Literal["mean", "sum", "none"] = "mean",
    temperature: float = 1.0,
    where: Any = None,
    return_grad: bool = False,
    backend: str | None = None,
) -> Any:
    """Softmax cross-entropy of ``logits / temperature`` against labels, with the loss and
    its gradient from one fused pass.

    Follows ``torch.nn.functional.cross_entropy``: logsumexp first, then, with
    ``return_grad=True``, ``softmax - target`` written directly.

    Parameters
    ----------
    logits : array_like
        The class scores, classes along ``axis``; at least one dimension.
    labels : array_like
        Integer class indices of ``logits``' shape without ``axis``, or float class
        probabilities of ``logits``' shape (``0 * log 0 = 0``), of ``logits``' library.
    axis : int, optional
        The class axis (default -1).
    weight : array_like, optional
        One weight per class (length n_classes), real numbers.
    ignore_index : int, optional
        Index targets equal to it contribute nothing (loss 0, gradient 0); with
        probability targets only the default -100 is accepted (as torch).
    label_smoothing : float, optional
        eps in [0, 1]: targets become ``(1 - eps) * target + eps / K`` over the K
        classes that ``where`` leaves (all classes without ``where``).
    reduction : {'mean', 'sum', 'none'}, optional
        'mean' (the default; index targets: divided by the sum of the weights of the
        targets not ignored -- NaN with a zero gradient when all are ignored;
        probability targets: divided by the number of samples), 'sum', or 'none' (one
        loss per sample; the gradient is that of their sum).
    temperature : float, optional
        tau > 0, or +inf. Default 1.
    where : array of bool, optional
        A mask of classes, broadcastable to ``logits``: masked classes take no part
        and get a zero gradient.
    return_grad : bool, optional
        Also return the gradient with respect to ``logits``,
        ``(softmax(logits / tau) - target) * scale / tau`` (weighted as torch).
    backend : str, optional
        The name of a registered backend to compute with, overriding dispatch.

    Returns
    -------
    loss : array
        A 0-d array for 'mean' and 'sum'; one loss per sample for 'none'.
    grad : array
        With ``return_grad=True`` only: of ``logits``' shape and dtype.

    Raises
    ------
    ValueError
        For labels of the wrong shape or dtype, an index outside ``[0, n_classes)``
        other than ``ignore_index`` (the message names it), a label pointing at a
        masked class, an unknown reduction, ``label_smoothing`` outside [0, 1], a
        ``weight`` of the wrong length, logits without classes.
    TypeError
        For a non-number temperature or label_smoothing, a non-int ignore_index, a
        non-bool return_grad, arrays of different libraries.

    See Also
    --------
    log_softmax, softmax

    Examples
    --------
    >>> logits = np.array([[2.0, 3.0, 4.0]])
    >>> csoftmax.softmax_cross_entropy(logits, np.array([1]))
    array(1.40760596)
    >>> loss, grad = csoftmax.softmax_cross_entropy(logits, np.array([1]), return_grad=True)
    >>> grad
    array([[ 0.09003057, -0.75527153,  0.66524096]])
    >>> csoftmax.softmax_cross_entropy(np.array([[2.0, 3.0, 4.0], [1.0, 1.0, 1.0]]), np.array([1, -100]),
    ...                                reduction="none")
    array([1.40760596, 0.        ])
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

    # Label values are checked here, once, unless they cannot be read now (lazy or traced):
    # then the backend checks them when it computes, with the same messages, and the 'mean'
    # denominator and gradient scale stay arrays of its kind.
    late = _deferred(mod, labels, where, weight)
    denom = 1.0
    if labels is not None:
        valid = labels != ignore_index
        late = late or _deferred(mod, valid)  # inside a trace (jit) operations on concrete arrays are traced too
        if late:
            safe = xp.where(valid, labels, xp.zeros_like(labels))
        else:
            valid, safe = _check_labels(xp, x, labels, ax, n, ignore_index, where)
        if reduction == "mean":
            denom = _mean_denominator(xp, valid, safe, weight)
    elif reduction == "mean":
        denom = float(math.prod(s for i, s in enumerate(x.shape) if i != ax))
    if late:
        nonzero = denom != 0
        grad_scale = xp.where(nonzero, 1.0 / xp.where(nonzero, denom, 1.0), 0.0)
    else:
        d = C.scalar(denom)
        grad_scale = 1.0 / d if d != 0.0 else 0.0
    denom = xp.asarray(denom, dtype=C.default_float(xp))
    row_loss, grad = mod.cross_entropy(
        op, x, axis=ax, labels=labels, probs=probs, weight=weight, ignore_index=ignore_index, label_smoothing=eps,
        temperature=tau, where=where, grad_scale=grad_scale, want_grad=want_grad, dtype=rdt,
    )
    loss = _reduce(xp, row_loss, reduction, denom, rdt)
    return (loss, grad) if want_grad else loss


# ---- registry front ---------------------------------------------------------------------------
def get_backend(x: Any, op: str = "softmax") -> Backend:
    """The backend that would compute ``op`` on ``x``.

    Honours ``use_backend``; does not load the backend's module.

    Parameters
    ----------
    x : array_like
        An array (lists and scalars are taken as NumPy).
    op : str, optional
        An op's name (one of ``csoftmax.OPS``; default "softmax").

    Returns
    -------
    Backend
        The backend's record (``.name``, ``.ops``, ``.description``).

    Raises
    ------
    ValueError
        For an unknown op, or a ``use_backend`` backend that does not implement it.
    TypeError
        For an ``x`` that is not an array, or one the ``use_backend`` backend cannot
        take.

    Examples
    --------
    >>> csoftmax.get_backend(np.zeros(3)).name
    'c'
    >>> with csoftmax.use_backend("reference"):
    ...     csoftmax.get_backend(np.zeros(3)).name
    'reference'
    """
    return _registry.get_backend(C.as_array(x), op)
