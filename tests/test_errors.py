"""Bad input: a clear TypeError or ValueError (NumPy's AxisError for axes) naming the
argument, the same from every backend -- never a crash, never a silent wrong answer."""
from __future__ import annotations

import numpy as np
import pytest

import csoftmax
from csoftmax._checks import type_name
from helpers import available_backends, backend_module, call, to_backend, to_numpy

AxisError = np.exceptions.AxisError

X = np.arange(12, dtype=np.float64).reshape(3, 4) / 7.0


class Foreign:
    """An array of a library no backend shares with anything else."""

    __module__ = "foreignarrays"
    shape, dtype, ndim = (4,), np.dtype(np.float64), 1


def _ro():
    a = np.zeros((3, 4))
    a.flags.writeable = False
    return a


def _reshape(x, shape):
    """x reshaped, as its library spells it (the array API has no reshape method)."""
    get = getattr(x, "__array_namespace__", None)
    return x.reshape(shape) if get is None else get().reshape(x, shape)


# (id, call(x, a) -> result, expected exception, word the message must contain); a(numpy array)
# gives the array in x's library, so every argument reaches the check under test
CASES = [
    ("tau-zero", lambda x, a: csoftmax.softmax(x, temperature=0.0), ValueError, "temperature"),
    ("tau-negative", lambda x, a: csoftmax.log_softmax(x, temperature=-1), ValueError, "temperature"),
    ("tau-nan", lambda x, a: csoftmax.softmax(x, temperature=float("nan")), ValueError, "temperature"),
    ("tau-str", lambda x, a: csoftmax.softmax(x, temperature="1"), TypeError, "temperature"),
    ("tau-none", lambda x, a: csoftmax.softmax(x, temperature=None), TypeError, "temperature"),
    ("tau-bool", lambda x, a: csoftmax.softmax(x, temperature=True), TypeError, "temperature"),
    ("tau-complex", lambda x, a: csoftmax.softmax(x, temperature=1j), TypeError, "temperature"),
    ("tau-huge-int", lambda x, a: csoftmax.softmax(x, temperature=10**400), ValueError, "temperature"),
    ("axis-big", lambda x, a: csoftmax.softmax(x, axis=2), AxisError, "axis"),
    ("axis-neg", lambda x, a: csoftmax.logsumexp(x, axis=-3), AxisError, "axis"),
    ("axis-float", lambda x, a: csoftmax.softmax(x, axis=1.0), TypeError, "axis"),
    ("axis-str", lambda x, a: csoftmax.softmax(x, axis="0"), TypeError, "axis"),
    ("axis-bool", lambda x, a: csoftmax.softmax(x, axis=True), TypeError, "axis"),
    ("axis-repeat", lambda x, a: csoftmax.log_softmax(x, axis=(0, -2)), ValueError, "axis"),
    ("axis-tuple-bad", lambda x, a: csoftmax.logsumexp(x, axis=(0, 5)), AxisError, "axis"),
    ("axis-beyond-int64", lambda x, a: csoftmax.softmax(x, axis=2**64), AxisError, "axis"),
    ("axis-beyond-int32-neg", lambda x, a: csoftmax.log_softmax(x, axis=-(2**31) - 1), AxisError, "axis"),
    ("axis-0d-repeated", lambda x, a: csoftmax.softmax(x[0, 0], axis=(0, -1)), ValueError, "repeated"),
    ("bwd-axis-huge", lambda x, a: csoftmax.softmax_backward(x, x, axis=2**63), AxisError, "axis"),
    ("dtype-int", lambda x, a: csoftmax.softmax(x, dtype="int32"), TypeError, "dtype"),
    ("dtype-type", lambda x, a: csoftmax.softmax(x, dtype=np.int64), TypeError, "dtype"),
    ("dtype-junk", lambda x, a: csoftmax.softmax(x, dtype="nonsense"), TypeError, "dtype"),
    ("dtype-complex", lambda x, a: csoftmax.logsumexp(x, dtype=np.complex128), TypeError, "dtype"),
    ("where-int", lambda x, a: csoftmax.softmax(x, where=a(np.ones((3, 4), dtype=int))), TypeError, "where"),
    ("where-shape", lambda x, a: csoftmax.softmax(x, where=a(np.ones((2, 4), dtype=bool))), ValueError, "where"),
    ("where-bigger", lambda x, a: csoftmax.softmax(x, where=a(np.ones((2, 3, 4), dtype=bool))), ValueError, "where"),
    ("out-shape", lambda x, a: csoftmax.softmax(x, out=a(np.empty((4, 3)))), ValueError, "out"),
    ("out-dtype", lambda x, a: csoftmax.softmax(x, out=a(np.empty((3, 4), np.float32))), ValueError, "out"),
    ("out-readonly", lambda x, a: csoftmax.log_softmax(x, out=a(_ro())), ValueError, "out"),
    ("out-list", lambda x, a: csoftmax.softmax(x, out=[0.0] * 12), TypeError, "out"),
    ("lse-out-shape", lambda x, a: csoftmax.logsumexp(x, axis=0, out=a(np.empty(3))), ValueError, "out"),
    ("backend-unknown", lambda x, a: csoftmax.softmax(x, backend="nope"), ValueError, "backend"),
    ("backend-list", lambda x, a: csoftmax.softmax(x, backend=["c"]), TypeError, "backend"),
    ("x-none", lambda x, a: csoftmax.logsumexp(None), TypeError, "x must be an array"),
    ("bwd-grad-none", lambda x, a: csoftmax.softmax_backward(None, x), TypeError, "grad_output"),
    ("bwd-output-none", lambda x, a: csoftmax.log_softmax_backward(x, None), TypeError, "output"),
    ("bwd-output-list-of-str", lambda x, a: csoftmax.softmax_backward(x, ["a"]), TypeError, "output"),
    ("bwd-shapes", lambda x, a: csoftmax.softmax_backward(x, x[:2, :]), ValueError, "shape"),
    ("bwd-tau", lambda x, a: csoftmax.log_softmax_backward(x, x, temperature=0), ValueError, "temperature"),
    ("bwd-out", lambda x, a: csoftmax.softmax_backward(x, x, out=a(np.empty(3))), ValueError, "out"),
    ("bwd-out-dtype", lambda x, a: csoftmax.log_softmax_backward(x, x, out=a(np.empty((3, 4), np.float32))), ValueError,
     "out"),
    ("bwd-out-readonly", lambda x, a: csoftmax.softmax_backward(x, x, out=a(_ro())), ValueError, "out"),
    ("jac-bytes", lambda x, a: csoftmax.softmax_jacobian(x, max_bytes=100), ValueError, "bytes"),
    ("jac-axis-tuple", lambda x, a: csoftmax.softmax_jacobian(x, axis=(0, 1)), TypeError, "axis"),
    ("jac-axis-none", lambda x, a: csoftmax.log_softmax_jacobian(x, axis=None), TypeError, "axis"),
    ("jac-0d", lambda x, a: csoftmax.softmax_jacobian(x[0, 0]), ValueError, "dimension"),
    ("jac-maxbytes-float", lambda x, a: csoftmax.softmax_jacobian(x, max_bytes=1e9), TypeError, "max_bytes"),
    ("jac-64-dims", lambda x, a: csoftmax.log_softmax_jacobian(_reshape(x, (1,) * 62 + (3, 4))), ValueError,
     "dimensions"),
    ("ce-label-range", lambda x, a: csoftmax.softmax_cross_entropy(x, a(np.array([0, 4, 1]))), ValueError, "4"),
    ("ce-label-neg", lambda x, a: csoftmax.softmax_cross_entropy(x, a(np.array([0, -3, 1]))), ValueError, "-3"),
    ("ce-label-bool", lambda x, a: csoftmax.softmax_cross_entropy(x, a(np.array([True, False, True]))), ValueError, "labels"),
    ("ce-label-shape", lambda x, a: csoftmax.softmax_cross_entropy(x, a(np.array([0, 1]))), ValueError, "labels"),
    ("ce-prob-shape", lambda x, a: csoftmax.softmax_cross_entropy(x, a(np.ones((3, 3)))), ValueError, "labels"),
    ("ce-reduction", lambda x, a: csoftmax.softmax_cross_entropy(x, a(np.array([0, 1, 2])), reduction="avg"), ValueError,
     "reduction"),
    ("ce-smoothing", lambda x, a: csoftmax.softmax_cross_entropy(x, a(np.array([0, 1, 2])), label_smoothing=1.5), ValueError,
     "label_smoothing"),
    ("ce-smoothing-type", lambda x, a: csoftmax.softmax_cross_entropy(x, a(np.array([0, 1, 2])), label_smoothing="a"),
     TypeError, "label_smoothing"),
    ("ce-weight-shape", lambda x, a: csoftmax.softmax_cross_entropy(x, a(np.array([0, 1, 2])), weight=a(np.ones(3))),
     ValueError, "weight"),
    ("ce-ignore-type", lambda x, a: csoftmax.softmax_cross_entropy(x, a(np.array([0, 1, 2])), ignore_index=1.5), TypeError,
     "ignore_index"),
    ("ce-masked-label", lambda x, a: csoftmax.softmax_cross_entropy(
        x, a(np.array([0, 1, 2])), where=a(np.array([True, False, True, True]))), ValueError, "masked"),
    ("ce-0d", lambda x, a: csoftmax.softmax_cross_entropy(x[0, 0], a(np.array(0))), ValueError, "dimension"),
    ("ce-logits-str", lambda x, a: csoftmax.softmax_cross_entropy("abc", a(np.array([0]))), TypeError, "logits"),
    ("ce-ignore-huge", lambda x, a: csoftmax.softmax_cross_entropy(x, a(np.array([0, 1, 2])), ignore_index=2**70),
     ValueError, "ignore_index"),
    ("ce-weight-other-library", lambda x, a: csoftmax.softmax_cross_entropy(x, a(np.array([0, 1, 2])),
                                                                             weight=Foreign()), TypeError, "logits"),
    ("ce-grad-flag", lambda x, a: csoftmax.softmax_cross_entropy(x, a(np.array([0, 1, 2])), return_grad="yes"), TypeError,
     "return_grad"),
]


# cases whose message depends on the input's library: a list is taken as a NumPy array, so
# for another library's x it is an array of another library (a TypeError naming the
# argument all the same, which is what is checked there)
LIBRARY_DEPENDENT = {"bwd-output-list-of-str"}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_error_parity(case):
    """Every backend raises the same exception, with the same message, naming the argument;
    so does plain dispatch of a NumPy array (which first tries the core's fast entry)."""
    name, call, exc, word = case
    seen = {}
    with pytest.raises(exc) as info:
        call(X.copy(), lambda a: a)
    seen["dispatch"] = (type(info.value), str(info.value))
    for backend in available_backends():
        if "readonly" in name and backend_module(backend).writable(to_backend(backend, _ro())):
            continue  # this library's arrays cannot be read-only (CuPy's)
        x = to_backend(backend, X.copy())
        if name in LIBRARY_DEPENDENT and not isinstance(x, np.ndarray):
            with csoftmax.use_backend(backend), pytest.raises(exc, match=word):
                call(x, lambda a: to_backend(backend, a))
            continue
        with csoftmax.use_backend(backend):
            with pytest.raises(exc) as info:
                res = call(x, lambda a: to_backend(backend, a))
                for r in res if isinstance(res, tuple) else (res,):  # lazy arrays raise when computed
                    to_numpy(backend, r)
        # the message names the input's array type; the rest must agree
        seen[backend] = (type(info.value), str(info.value).replace(type_name(x), "numpy.ndarray"))
        assert word in str(info.value), f"{backend}: message {info.value!s} does not name {word!r}"
    assert len(set(seen.values())) == 1, f"backends disagree: {seen}"


@pytest.mark.parametrize(
    "bad",
    [None, object(), "abc", [[1.0, 2.0], [3.0]], np.array([1 + 2j]), np.array(["a"]), np.array([None]),
     np.array([1, 2], dtype="datetime64[s]")],
    ids=["none", "object", "str", "ragged", "complex", "unicode", "object-array", "datetime"],
)
@pytest.mark.parametrize("op", ["softmax", "log_softmax", "logsumexp"])
def test_bad_inputs_are_type_errors(op, bad):
    with pytest.raises(TypeError):
        getattr(csoftmax, op)(bad)


def test_masked_arrays_are_refused():
    """A numpy.ma array would have its mask silently ignored: refuse it, point to where=."""
    a = np.ma.array([1.0, 2.0, 3.0], mask=[False, True, False])
    with pytest.raises(TypeError, match="where"):
        csoftmax.softmax(a)


def test_backend_that_cannot_take_the_array():
    with pytest.raises(TypeError, match="cannot take"):
        csoftmax.softmax(X, backend="cuda")


def test_longdouble_is_refused():
    with pytest.raises(TypeError, match="float64"):
        csoftmax.softmax(X.astype(np.longdouble))


def test_jacobian_limit_names_the_size_and_points_to_backward():
    with pytest.raises(ValueError) as info:
        csoftmax.softmax_jacobian(np.zeros((10, 1000)), max_bytes=2**20)
    msg = str(info.value)
    assert "80000000" in msg and "softmax_backward" in msg


def test_all_ignored_mean_is_nan_with_zero_grad(backend):
    x = np.random.default_rng(0).standard_normal((4, 5))
    loss, grad = call(backend, "softmax_cross_entropy", x, np.full(4, -100), return_grad=True)
    assert np.isnan(loss)
    assert np.all(grad == 0)


def test_every_op_has_error_cases():
    """A new op joins the error-parity cases (the ops each case calls, read off its code)."""
    covered = {name for _, fn, *_ in CASES for name in fn.__code__.co_names if name in csoftmax.OPS}
    assert covered == set(csoftmax.OPS), f"no error case calls {sorted(set(csoftmax.OPS) - covered)}"
