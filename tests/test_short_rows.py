"""Many short rows, as the C core computes them in groups (src/backends/cpu/csm_short.h):
row lengths on both sides of a vector's and of the group kernels' limits, a special row
(NaN, +inf, all -inf, an ignored label, a tie for the max) at every position of a group
beside ordinary ones, in place (where the library's arrays are writable), on every backend
against the oracle."""
from __future__ import annotations

import mpmath
import numpy as np
import pytest

import csoftmax
from helpers import assert_matches, call, forward_atol, mutable, oracle, to_backend, to_numpy
from test_equivalence import _backward_tol

LENGTHS = [1, 2, 7, 8, 9, 15, 16, 17, 31, 32, 33, 100, 1023, 1024, 1025]
# the C core's groups hold a vector's lanes of rows (up to 16: float32 on AVX-512): two of
# the widest and one row left over on the C core's backends (c and each c-<isa>); the
# others (whose glue, not the groups, is theirs to test) take fewer rows
C_ROWS, ROWS = 33, 9
SPECIALS = ["nan", "posinf", "neginf", "tie", "far"]


def rows_for(backend):
    return C_ROWS if backend == "c" or backend.startswith("c-") else ROWS


def positions(backend, *at):
    """Rows to make special: the given ones that exist, and the last row."""
    return sorted({a for a in at if a < rows_for(backend)} | {rows_for(backend) - 1})


def rows_with(n, special, at, dtype, rng, rows):
    """`rows` rows of n logits; row `at` special (none: at < 0)."""
    x = (rng.standard_normal((rows, n)) * 3).astype(dtype)
    if at >= 0:
        r = x[at]
        if special == "nan":
            r[n // 2] = np.nan
        elif special == "posinf":
            r[n // 3] = np.inf
        elif special == "neginf":
            r[:] = -np.inf
        elif special == "tie":
            r[:] = np.round(r)
            r[0] = r[-1] = r.max() + 1
        elif special == "far":  # every other entry far below the max: the checked exp
            r[1::2] -= 200 if dtype == "float32" else 800
    return x


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("op", ["softmax", "log_softmax", "logsumexp"])
def test_forward_groups(backend, op, n, dtype):
    rng = np.random.default_rng(n)
    for special in SPECIALS:
        for at in positions(backend, -1, 0, 3, 5, 15, 16):
            x = rows_with(n, special, at, dtype, rng, rows_for(backend))
            want = oracle(op, x, against=backend)
            label = f"{op} n={n} {special} at row {at}"
            assert_matches(call(backend, op, x), want, dtype, label, atol=forward_atol(op, x, dtype))
            if op != "logsumexp" and mutable(backend):
                y = to_backend(backend, x.copy())
                getattr(csoftmax, op)(y, out=y, backend=backend)  # in place: the group writes over its input
                assert_matches(to_numpy(backend, y), want, dtype, label + " in place")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n", [1, 7, 16, 17, 32, 33, 100])
@pytest.mark.parametrize("op", ["softmax_backward", "log_softmax_backward"])
def test_backward_groups(backend, op, n, dtype):
    rng = np.random.default_rng(n)
    fwd = op.replace("_backward", "")
    for special in ["tie", "far"]:  # far: log_softmax's y beyond the exp's bound, in one row
        for at in positions(backend, -1, 0, 3, 15):
            x = rows_with(n, special, at, dtype, rng, rows_for(backend))
            y = oracle(fwd, x).astype(dtype)
            g = rng.standard_normal(x.shape).astype(dtype)
            if at >= 0 and special == "tie":
                g[at, 0] = np.inf  # a row whose sum is not finite: the careful path
            want = oracle(op, g, y, against=backend)
            rtol, atol = _backward_tol(g, y, dtype, op)
            label = f"{op} n={n} {special} at row {at}"
            assert_matches(call(backend, op, g, y), want, dtype, label, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n", [8, 16, 33, 256, 257])
@pytest.mark.parametrize("case", ["overflow", "redo"])
@pytest.mark.parametrize("op", ["softmax_backward", "log_softmax_backward"])
def test_backward_groups_at_the_range_limits(backend, op, n, dtype, case):
    """A row of finite g near the largest value beside ordinary rows: its sum overflows
    the dtype (log_softmax: n * 0.75 max; the group hands its rows to the careful path), or
    g - sum overflows although dx does not (signs alternating: the lanes computed again,
    wider); each row judged at its own scale; in place too, over g and over y."""
    rng = np.random.default_rng(n)
    big = float(np.finfo(dtype).max) * 0.75
    fwd = op.replace("_backward", "")
    for at in positions(backend, 0, 5, 15):
        x = rows_with(n, "none", -1, dtype, rng, rows_for(backend))
        y = oracle(fwd, x).astype(dtype)
        g = rng.standard_normal(x.shape).astype(dtype)
        g[at] = big if case == "overflow" else np.where(np.arange(n) % 2, big, -big).astype(dtype)
        with np.errstate(over="ignore"):  # the exact dx rounded to the dtype: inf beyond its range
            want = np.asarray(oracle(op, g, y, against=backend)).astype(dtype)
        label = f"{op} n={n} {case} at row {at}"
        got = [call(backend, op, g, y)]
        if mutable(backend):
            for into in (0, 1):
                gb, yb = to_backend(backend, g.copy()), to_backend(backend, y.copy())
                getattr(csoftmax, op)(gb, yb, out=(gb, yb)[into], backend=backend)
                got.append(to_numpy(backend, (gb, yb)[into]))
        rtol = 4e-6 if dtype == "float32" else 1e-14
        for res in got:
            for r in range(len(g)):  # (an infinity where the exact dx overflows, as wanted)
                scale = float(np.abs(g[r].astype(np.float64)).max()) + 1.0
                np.testing.assert_allclose(res[r], want[r], rtol=rtol, atol=rtol * scale, err_msg=f"{label}, row {r}")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n", [1, 2, 8, 9, 16, 33, 1000, 1025])
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_cross_entropy_groups(backend, n, dtype, reduction):
    """Rows in the C core's groups, and the gradient at a label that holds the row's max,
    p_y - 1, against 50 digits on every backend: it must not cancel (the C core takes it as
    -S' / (1 + S'), the reference as minus the sum of the other classes' probabilities)."""
    rng = np.random.default_rng(n)
    for special in SPECIALS + ["ignored", "label_at_max"]:
        # every row's label at its max: each row's gradient against 50 digits, once
        for at in positions(backend, -1, 1, 3, 15) if special != "label_at_max" else [-1]:
            x = rows_with(n, special if special in SPECIALS else "tie", at, dtype, rng, rows_for(backend))
            labels = rng.integers(0, n, size=len(x))
            if at >= 0 and special == "ignored":
                labels[at] = -100
            if special == "label_at_max":  # p_y - 1 near 0: the label's gradient without cancellation
                x[:, 0] += 30
                labels[:] = 0
            kw = {"reduction": reduction, "return_grad": True}
            loss, grad = call(backend, "softmax_cross_entropy", x, labels, **kw)
            wloss, wgrad = oracle("softmax_cross_entropy", x, labels, against=backend, **kw)
            label = f"cross-entropy n={n} {special} at row {at}"
            assert_matches(loss, wloss, dtype, label + " loss")
            wgrad = wgrad.copy()
            for r, y in enumerate(labels):  # the oracle's p_y - 1 cancels where the label is the max
                if y >= 0 and np.isfinite(x[r]).all() and x[r, y] == x[r].max():
                    wgrad[r, y] = label_gradient(x[r], y, np.sum(labels >= 0) if reduction == "mean" else 1)
            assert_matches(grad, wgrad, dtype, label + " gradient")


def label_gradient(row, y, scale):
    """d loss / d x_y at a label y at the row's max: (p_y - 1) / scale = -S' / (1 + S') /
    scale with S' = sum_{j != y} exp(x_j - x_y), in 50 digits."""
    with mpmath.workdps(50):
        s = mpmath.fsum(mpmath.exp(mpmath.mpf(float(v)) - mpmath.mpf(float(row[y]))) for j, v in enumerate(row) if j != y)
        return float(-s / (1 + s) / scale)


@pytest.mark.parametrize("dtype,n", [("float32", 128), ("float64", 64)])
@pytest.mark.parametrize("op", ["softmax", "log_softmax", "logsumexp", "softmax_backward", "log_softmax_backward"])
def test_groups_from_memory(backend, op, dtype, n):
    """An array of 8 MiB and more, in groups whose rows are long enough for the first pass to
    prefetch the next group (csm_short.h, CSM_SHORT_PF_BYTES): the same values as the
    oracle, special rows included (the last groups' prefetches point past the array)."""
    if not (backend == "c" or backend.startswith("c-")):
        pytest.skip("the prefetching group kernels are the C core's")
    rng = np.random.default_rng(n)
    rows = (8 << 20) // (n * np.dtype(dtype).itemsize) + 5
    x = (rng.standard_normal((rows, n)) * 3).astype(dtype)
    x[19, 7] = np.nan
    x[rows // 2, :] = -np.inf
    x[rows - 9, 3] = np.inf
    label = f"{op} n={n} rows={rows}"
    if op.endswith("_backward"):
        y = oracle(op.replace("_backward", ""), x).astype(dtype)
        y[~np.isfinite(y)] = 0.5
        g = rng.standard_normal(x.shape).astype(dtype)
        rtol, atol = _backward_tol(g, y, dtype, op)
        assert_matches(call(backend, op, g, y), oracle(op, g, y, against=backend), dtype, label, rtol=rtol, atol=atol)
    else:
        want = oracle(op, x, against=backend)
        assert_matches(call(backend, op, x), want, dtype, label, atol=forward_atol(op, x, dtype))
