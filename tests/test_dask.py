"""Dask arrays: lazy results, the plan each chunking gets (one map_blocks when the softmax
axes lie in one chunk; per-chunk statistics merged exactly, then a map_blocks that
normalises, when they are cut; logsumexp through da.reduction), values against the
float64 oracle and the in-memory call for every chunking, cross-entropy over chunked
rows and classes with 'mean' over all chunks, label errors when computed, and a
dask.distributed cluster of processes. The equivalence matrix, error parity and gradient
tests run the `dask` backend too (its from_numpy cuts every dimension in two)."""
from __future__ import annotations

import numpy as np
import pytest

import csoftmax
from helpers import assert_matches, forward_atol, oracle, values

da = pytest.importorskip("dask.array", reason="Dask is not installed: the dask backend's tests are skipped")
import dask  # noqa: E402


def _layers(arr):
    return set(arr.__dask_graph__().layers)


def _plan(arr):
    """The csoftmax layers of a result's graph, by kind."""
    return {name.split("-")[1] for name in _layers(arr) if name.startswith("csoftmax-")}


CHUNKINGS = [(6, 40), (2, 40), (6, 7), (3, 13), (1, 1)]


# ---- laziness and plans ------------------------------------------------------------------------------
def test_results_are_lazy():
    calls = []

    def make(block_id=None):
        calls.append(block_id)
        return np.ones((3, 4))

    x = da.map_blocks(make, chunks=((3, 3), (4, 4)), dtype=np.float64, meta=np.empty((0, 0)))
    results = [csoftmax.softmax(x), csoftmax.log_softmax(x, axis=0), csoftmax.logsumexp(x, axis=1),
               csoftmax.softmax_backward(x, x), csoftmax.softmax_jacobian(x),
               csoftmax.softmax_cross_entropy(x, da.zeros(6, dtype=np.int64, chunks=3), return_grad=True)[1]]
    assert calls == [] and all(isinstance(r, da.Array) for r in results)
    np.testing.assert_allclose(results[0].compute(), np.full((6, 8), 1 / 8))
    assert calls


def test_one_map_blocks_when_the_axis_is_whole_two_stages_when_it_is_cut():
    x = da.from_array(np.random.default_rng(0).standard_normal((8, 12)), chunks=(4, 12))
    assert _plan(csoftmax.softmax(x, axis=1)) == {"softmax"}
    assert _plan(csoftmax.log_softmax(x, axis=0)) == {"stats", "log_softmax"}
    assert _plan(csoftmax.logsumexp(x, axis=1)) == {"logsumexp"}  # da.reduction over the records
    assert _plan(csoftmax.logsumexp(x, axis=0)) == {"logsumexp"}
    assert any("rechunk" in n for n in _layers(csoftmax.softmax_backward(x, x, axis=0)))  # the axis made whole


# ---- values ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "int64"])
@pytest.mark.parametrize("op", ["softmax", "log_softmax", "logsumexp"])
def test_forward_values_for_every_chunking(op, dtype):
    rng = np.random.default_rng(1)
    rdt = np.dtype(dtype) if np.dtype(dtype).kind == "f" else np.dtype(np.float64)
    for kind in ("normal", "wide", "ninf", "nan_pinf") if rdt == np.dtype(dtype) else ("normal",):
        x = values((6, 40), kind, dtype, rng).astype(dtype)
        mask = rng.random((6, 40)) < 0.7
        mask[2] = False
        for chunks in CHUNKINGS:
            xd = da.from_array(x, chunks=chunks)
            for axis in (1, 0, None):
                for kw in ({}, {"where": mask}) if op == "logsumexp" else ({}, {"temperature": 0.3}, {"where": mask}):
                    dkw = {k: (da.from_array(v, chunks=chunks) if k == "where" else v) for k, v in kw.items()}
                    got = getattr(csoftmax, op)(xd, axis=axis, **dkw).compute()
                    want = oracle(op, x, axis=axis, **kw)
                    label = f"{op} {dtype} {kind} chunks={chunks} axis={axis} {sorted(kw)}"
                    assert_matches(got, want, rdt, label, atol=forward_atol(op, x, rdt))
                    inmem = getattr(csoftmax, op)(x, axis=axis, **kw)
                    assert_matches(got, inmem, rdt, label + " vs in memory", atol=forward_atol(op, x, rdt))


def test_long_rows_cut_into_chunks_keep_the_accuracy():
    """Rows of 200000 entries in chunks of 30000: statistics merged across chunks in
    double-double give the in-memory result to a few ulp (float32: a rounding of x - max
    to float would cost hundreds)."""
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((3, 200_000)) * 30).astype(np.float32)
    got = csoftmax.log_softmax(da.from_array(x, chunks=(1, 30_000))).compute()
    want = oracle("log_softmax", x)
    assert_matches(got, want, "float32", "long rows in chunks")
    np.testing.assert_allclose(got, csoftmax.log_softmax(x), rtol=4 * np.finfo(np.float32).eps, atol=0)


def test_backward_and_jacobian_values_for_every_chunking():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 40)) * 3
    g = rng.standard_normal((6, 40))
    for fwd in ("softmax", "log_softmax"):
        y = getattr(csoftmax, fwd)(x, axis=0)
        want = oracle(f"{fwd}_backward", g, y, axis=0, temperature=0.5)
        jac = oracle(f"{fwd}_jacobian", x[:, :7], axis=0)
        for chunks in CHUNKINGS:
            got = getattr(csoftmax, f"{fwd}_backward")(da.from_array(g, chunks=chunks), da.from_array(y, chunks=chunks),
                                                       axis=0, temperature=0.5)
            assert_matches(got.compute(), want, "float64", f"{fwd}_backward chunks={chunks}", atol=1e-14)
            J = getattr(csoftmax, f"{fwd}_jacobian")(da.from_array(x[:, :7], chunks=chunks), axis=0)
            assert_matches(J.compute(), jac, "float64", f"{fwd}_jacobian chunks={chunks}", atol=1e-15)


XENT = [{}, {"reduction": "sum"}, {"reduction": "none"}, {"weight": True}, {"label_smoothing": 0.2},
        {"weight": True, "label_smoothing": 0.1}, {"ignore_index": 3}, {"temperature": 0.6}, {"where": True}]


@pytest.mark.parametrize("probs", [False, True])
@pytest.mark.parametrize("kw", XENT, ids=[str(sorted(k)) for k in XENT])
def test_cross_entropy_over_chunked_rows_and_classes(kw, probs):
    """The loss ('mean' over all chunks) and its gradient are NumPy's: per-row losses
    exactly, and the gradient exactly but for the weights' 'mean' denominator, a sum that
    Dask adds up in another order (then to its rounding, as reduced losses)."""
    if probs and "ignore_index" in kw:
        return
    rng = np.random.default_rng(4)
    x = rng.standard_normal((12, 9)) * 2
    w = rng.random(9) + 0.5
    mask = rng.random(9) < 0.8
    mask[[0, 3]] = True
    if probs:
        t = rng.random((12, 9))
        t /= t.sum(1, keepdims=True)
    else:
        t = rng.choice(np.flatnonzero(mask), 12)  # classes the mask leaves
        t[[2, 7]] = kw.get("ignore_index", -100)
    np_kw = {k: (w if k == "weight" else mask if k == "where" else v) for k, v in kw.items()}
    want_loss, want_grad = csoftmax.softmax_cross_entropy(x, t, return_grad=True, **np_kw)
    for chunks in ((4, 9), (5, 4), (12, 2)):
        dkw = {k: (da.from_array(v, chunks=4) if isinstance(v, np.ndarray) else v) for k, v in np_kw.items()}
        tchunks = chunks if probs else chunks[0]
        loss, grad = csoftmax.softmax_cross_entropy(da.from_array(x, chunks=chunks), da.from_array(t, chunks=tchunks),
                                                    return_grad=True, **dkw)
        loss, grad = dask.compute(loss, grad)
        if "weight" in kw and kw.get("reduction", "mean") == "mean" and not probs:
            np.testing.assert_allclose(grad, want_grad, rtol=1e-15, atol=0)
        else:
            np.testing.assert_array_equal(grad, want_grad)
        if kw.get("reduction") == "none":
            np.testing.assert_array_equal(loss, want_loss)
        else:
            np.testing.assert_allclose(loss, want_loss, rtol=1e-15, atol=0)


def test_cross_entropy_along_a_leading_class_axis():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((5, 8, 3))
    t = rng.integers(0, 5, (8, 3))
    want = csoftmax.softmax_cross_entropy(x, t, axis=0, return_grad=True, label_smoothing=0.1)
    got = csoftmax.softmax_cross_entropy(da.from_array(x, chunks=(2, 3, 2)), da.from_array(t, chunks=(3, 2)), axis=0,
                                         return_grad=True, label_smoothing=0.1)
    np.testing.assert_allclose(got[0].compute(), want[0], rtol=4e-16)
    np.testing.assert_array_equal(got[1].compute(), want[1])


def test_label_errors_are_raised_when_computed():
    x = da.from_array(np.zeros((6, 5)), chunks=(2, 5))
    loss = csoftmax.softmax_cross_entropy(x, da.from_array(np.array([0, 1, 2, 3, 4, 7]), chunks=2))
    with pytest.raises(ValueError, match=r"labels contains 7, outside \[0, 5\) for 5 classes"):
        loss.compute()


def test_out_is_written_by_item_assignment():
    x = da.from_array(np.random.default_rng(6).standard_normal((4, 10)), chunks=(2, 5))
    out = da.zeros((4, 10), chunks=(2, 5))
    assert csoftmax.softmax(x, out=out) is out
    np.testing.assert_allclose(out.compute(), csoftmax.softmax(x.compute()), rtol=4e-16)


# ---- a cluster of processes --------------------------------------------------------------------------
def test_a_local_cluster_of_processes():
    """Every task pickles and runs in worker processes: the two-stage softmax, logsumexp
    and cross-entropy with 'mean' over all chunks."""
    distributed = pytest.importorskip("distributed", reason="dask.distributed is not installed")
    rng = np.random.default_rng(7)
    x = rng.standard_normal((40, 30))
    t = rng.integers(0, 30, 40)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with distributed.Client(cluster):
            xd = da.from_array(x, chunks=(10, 8))
            sm, lse, (loss, grad) = dask.compute(
                csoftmax.softmax(xd, temperature=0.7), csoftmax.logsumexp(xd, axis=1),
                csoftmax.softmax_cross_entropy(xd, da.from_array(t, chunks=10), return_grad=True))
    np.testing.assert_allclose(sm, csoftmax.softmax(x, temperature=0.7), rtol=4e-16, atol=1e-300)
    np.testing.assert_allclose(lse, csoftmax.logsumexp(x, axis=1), rtol=4e-16)
    want_loss, want_grad = csoftmax.softmax_cross_entropy(x, t, return_grad=True)
    np.testing.assert_allclose(loss, want_loss, rtol=4e-16)
    # a row's gradient may come from the C core's groups of rows in memory and from its
    # one-row kernel in a chunk of 10: the two round differently, within an ulp
    np.testing.assert_allclose(grad, want_grad, rtol=4e-16, atol=0)


# ---- CuPy chunks -----------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_cupy_chunks_on_the_cuda_kernels():
    if not csoftmax._registry.is_available("cuda"):
        pytest.skip("no CuPy and GPU here: Dask arrays of CuPy chunks are not tested")
    import cupy

    x = np.random.default_rng(8).standard_normal((64, 300)).astype(np.float32)
    xd = da.from_array(cupy.asarray(x), chunks=(16, 100))
    for op in ("softmax", "log_softmax", "logsumexp"):
        got = getattr(csoftmax, op)(xd, axis=1).compute()
        assert isinstance(got, cupy.ndarray)
        assert_matches(cupy.asnumpy(got), oracle(op, x, axis=1), "float32", f"{op} CuPy chunks",
                       atol=forward_atol(op, x, np.float32))
