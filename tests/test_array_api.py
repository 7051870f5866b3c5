"""Arrays that are not plain NumPy arrays but are computed as if: array-api-strict arrays
(the standard and nothing more; dtypes recognised by the namespace), NumPy's subclasses
(np.matrix, np.memmap) on the C core with NumPy's result types, and the inputs
csoftmax.special takes as scipy.special does (lists, pandas objects, subclasses, torch
tensors; in SCIPY_ARRAY_API mode, arrays of other libraries kept)."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest

import csoftmax
import csoftmax.special as cs
from helpers import assert_matches, oracle

pytestmark = pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")

X = np.array([[1.0, 2.0, 3.0, -1.0], [0.5, 0.5, -2.0, 4.0], [3.0, -1.0, 0.0, 2.0]])


# ---- array-api-strict ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def xs():
    return pytest.importorskip("array_api_strict", reason="array-api-strict is not installed")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_array_api_strict_arrays(xs, dtype):
    x = xs.asarray(X, dtype=getattr(xs, dtype))
    g = xs.asarray(X[::-1].copy(), dtype=getattr(xs, dtype))
    for op in ("softmax", "log_softmax", "logsumexp"):
        r = getattr(csoftmax, op)(x, axis=1)
        assert type(r) is type(x) and r.dtype == x.dtype
        assert_matches(np.asarray(r), oracle(op, X.astype(dtype), axis=1), dtype, f"{op} strict {dtype}")
    for op in ("softmax_backward", "log_softmax_backward"):
        y = getattr(csoftmax, op.removesuffix("_backward"))(x)
        r = getattr(csoftmax, op)(g, y)
        assert type(r) is type(x) and r.dtype == x.dtype
    J = csoftmax.softmax_jacobian(x)
    assert J.shape == (3, 4, 4) and J.dtype == x.dtype
    loss, grad = csoftmax.softmax_cross_entropy(x, xs.asarray([0, 3, 1]), weight=xs.asarray([1.0, 2.0, 1.0, 0.5]),
                                                return_grad=True)
    want_loss, want_grad = oracle("softmax_cross_entropy", X.astype(dtype), np.array([0, 3, 1]),
                                  weight=np.array([1.0, 2.0, 1.0, 0.5]), return_grad=True)
    assert_matches(np.asarray(loss), want_loss, dtype, "strict loss")
    assert_matches(np.asarray(grad), want_grad, dtype, "strict grad", atol=1e-7)
    assert csoftmax.softmax(x, dtype="float32").dtype == xs.float32
    assert csoftmax.softmax(x, where=xs.asarray(X > 0)).dtype == x.dtype


def test_array_api_strict_integers_and_errors(xs):
    assert csoftmax.softmax(xs.asarray([1, 2, 3])).dtype == xs.float64
    with pytest.raises(TypeError, match="float16"):
        csoftmax.softmax(xs.asarray([1.0]), dtype="float16")  # not in the namespace
    with pytest.raises(TypeError, match="same library"):
        csoftmax.softmax(xs.asarray([1.0, 2.0]), where=np.array([True, False]))


# ---- NumPy's subclasses ---------------------------------------------------------------------------
def _memmap(tmp_path, a):
    m = np.memmap(tmp_path / "x.bin", dtype=a.dtype, mode="w+", shape=a.shape)
    m[...] = a
    return m


@pytest.mark.parametrize("backend", [None, "c"])
def test_subclasses_run_on_the_core_with_numpys_result_types(tmp_path, backend):
    """Results of the input's shape come back as NumPy's elementwise ufuncs return them
    (np.exp of a matrix is a matrix, of a memmap an ndarray); reductions and Jacobians are
    ndarrays."""
    m, mm = np.matrix(X), _memmap(tmp_path, X)
    assert csoftmax.get_backend(m).name == "c" and csoftmax.get_backend(mm).name == "c"
    for a in (m, mm):
        same = type(np.exp(a))
        for op in ("softmax", "log_softmax"):
            r = getattr(csoftmax, op)(a, axis=1, backend=backend)
            assert type(r) is same
            np.testing.assert_array_equal(np.asarray(r), getattr(csoftmax, op)(X, axis=1))
        y = csoftmax.softmax(a, backend=backend)
        assert type(csoftmax.softmax_backward(a, y, backend=backend)) is same
        loss, grad = csoftmax.softmax_cross_entropy(a, np.array([0, 3, 1]), return_grad=True, backend=backend)
        assert type(grad) is same and type(loss) is np.ndarray
        assert type(csoftmax.logsumexp(a, axis=1, backend=backend)) is np.ndarray
        assert type(csoftmax.softmax_jacobian(a, backend=backend)) is np.ndarray
        np.testing.assert_array_equal(csoftmax.logsumexp(a, axis=1, backend=backend), csoftmax.logsumexp(X, axis=1))
    out = np.matrix(np.zeros_like(X))
    assert csoftmax.softmax(m, out=out, backend=backend) is out
    np.testing.assert_array_equal(np.asarray(out), csoftmax.softmax(X))
    assert csoftmax.log_softmax(mm, out=mm, backend=backend) is mm  # in place, in the mapped file
    np.testing.assert_array_equal(np.asarray(mm), csoftmax.log_softmax(X))


def test_masked_arrays_stay_refused():
    with pytest.raises(TypeError, match="where"):
        csoftmax.softmax(np.ma.array(X, mask=X > 2), backend="c")


# ---- csoftmax.special takes what scipy takes ----------------------------------------------------------
ss = pytest.importorskip("scipy.special", reason="scipy is not installed")


def _inputs(tmp_path):
    yield "list", X.tolist()
    yield "matrix", np.matrix(X)
    yield "memmap", _memmap(tmp_path, X)
    try:
        import pandas as pd

        yield "DataFrame", pd.DataFrame(X)
        yield "Series", pd.Series(X[0])
    except ImportError:
        pass
    try:
        import torch

        yield "tensor", torch.tensor(X)
    except ImportError:
        pass


@pytest.mark.parametrize("name", ["softmax", "log_softmax", "logsumexp"])
def test_special_takes_what_scipy_takes_and_returns_what_it_returns(tmp_path, name):
    for label, a in _inputs(tmp_path):
        for axis in (None, -1):
            got = getattr(cs, name)(a, axis=axis)
            try:
                want = getattr(ss, name)(a, axis=axis)
            except TypeError:  # scipy's logsumexp fails on np.matrix (matrix.sum takes no keepdims): ours not
                want = getattr(ss, name)(np.asarray(a), axis=axis)
            assert type(got) is type(want), (label, axis, type(got), type(want))
            np.testing.assert_allclose(got, want, rtol=1e-14, err_msg=f"{label} axis={axis}")
    a, b = X.tolist(), np.abs(X).tolist()
    np.testing.assert_allclose(cs.logsumexp(a, b=b, axis=1), ss.logsumexp(a, b=b, axis=1), rtol=1e-14)


def test_special_in_scipys_array_api_mode():
    """SCIPY_ARRAY_API set: arrays of other libraries keep their library, np.matrix is
    refused with scipy's message, array-likes still become NumPy arrays (a fresh process:
    scipy reads the switch at import)."""
    pytest.importorskip("torch", reason="torch is not installed")
    pytest.importorskip("pandas", reason="pandas is not installed")
    code = """
        import numpy as np, pandas as pd, torch, scipy.special as ss, csoftmax.special as cs
        for a in (torch.tensor([[1.0, 2.0, 4.0]]), pd.DataFrame([[1.0, 2.0, 4.0]]), [1.0, 2.0]):
            for f in ("softmax", "logsumexp"):
                got, want = getattr(cs, f)(a), getattr(ss, f)(a)
                assert type(got) is type(want), (f, type(a), type(got), type(want))
                np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6)
        for f in (cs.softmax, ss.softmax):
            try:
                f(np.matrix([[1.0, 2.0]]))
            except TypeError as exc:
                print(exc)
        """
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                         env=dict(os.environ, SCIPY_ARRAY_API="1"), cwd=tempfile.gettempdir())
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 2 and lines[0] == lines[1] == "Inputs of type `numpy.matrix` are not supported."
