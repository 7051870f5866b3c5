"""Threads: the C core honours threadpoolctl's OpenMP limit, and the thread count never
changes a result."""
from __future__ import annotations

import numpy as np
import pytest

import csoftmax

threadpoolctl = pytest.importorskip("threadpoolctl")
ck = pytest.importorskip("csoftmax._ckernels")


def test_threadpoolctl_limits_the_core():
    csoftmax.softmax(np.zeros(3))  # load the core
    if not ck.openmp_enabled():
        pytest.skip("the C core was built without OpenMP")
    with threadpoolctl.threadpool_limits(1, user_api="openmp"):
        assert ck.max_threads() == 1
    info = [i for i in threadpoolctl.threadpool_info() if i["user_api"] == "openmp"]
    assert info, "the OpenMP runtime of the C core is visible to threadpoolctl"


SHAPES = [((512, 1000), -1), ((64, 70000), -1), ((2, 3_000_000), -1), ((3_000_000, 2), 0), ((1000, 300), 0)]


@pytest.mark.parametrize("shape,axis", SHAPES)
@pytest.mark.parametrize("op", ["softmax", "log_softmax", "logsumexp", "softmax_backward", "log_softmax_backward"])
def test_thread_count_does_not_change_results(op, shape, axis):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape) * 10).astype(np.float32)
    args = (x,) if not op.endswith("backward") else (rng.standard_normal(shape).astype(np.float32), csoftmax.softmax(x, axis=axis))
    results = []
    for n in (1, 2, 4):
        with threadpoolctl.threadpool_limits(n, user_api="openmp"):
            results.append(getattr(csoftmax, op)(*args, axis=axis))
    for r in results[1:]:
        np.testing.assert_allclose(r, results[0], rtol=4e-7, atol=1e-37)
