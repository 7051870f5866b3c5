"""The `cuda` backend beyond the shared matrix (which runs it on a GPU where CuPy and one
are present, and its kernels under the host emulator everywhere else):

* every kernel instantiation compiles for sm_90 as CuPy compiles it (nvcc, -ftz=true):
  no register spill, registers within each kernel's launch bounds, no double-precision or
  call instruction in the per-element code of a float kernel, and the SASS instructions per
  element of the hot kernels printed and held under budgets (tests/cuda_sass.py);
* the launch planning reaches every tier, and the kernels agree with the oracles there
  (emulator); the accuracy holes of terms far below the max and of rescaled sums; the
  temperature over the whole double range against the formula's limit (mpmath);
* the cached launch plans of plain calls;
* on a GPU: CuPy in, CuPy out on the same device and stream, out=, labels out of range,
  64-bit indexing. Skipped with a reason where CuPy or a GPU is missing.
"""
from __future__ import annotations

import importlib.util
import math
import re
import shutil

import numpy as np
import pytest

import csoftmax
from csoftmax import _registry
from csoftmax._backends import cuda
import cuda_sass
from helpers import assert_matches, backend_module, call, forward_atol, oracle

HAVE_GPU = _registry.is_available("cuda")
needs_gpu = pytest.mark.skipif(
    not HAVE_GPU,
    reason="no CUDA GPU with CuPy here" if importlib.util.find_spec("cupy") is None else "CuPy finds no CUDA device",
)


EMULATED = "cuda-emulated"


def _launches(fn, *args, **kw):
    """(the result of csoftmax.fn(*args, backend="cuda-emulated", **kw), the kernels it
    launched): the `cuda` backend's planning and kernels run by the host emulator."""
    emulator = pytest.importorskip("cuda_emu.emulator")
    if emulator.compiler() is None or EMULATED not in csoftmax.backends():
        pytest.skip("no C++ compiler for the CUDA emulator")
    dev = backend_module(EMULATED).ops.dev
    dev.launches.clear()
    res = getattr(csoftmax, fn)(*args, backend=EMULATED, **kw)
    return res, list(dev.launches)


# ---- compiled as CuPy compiles them: registers, spills, SASS per element ---------------------
needs_nvcc = pytest.mark.skipif(
    cuda_sass.nvcc() is None or cuda_sass.cuobjdump() is None or shutil.which("c++filt") is None,
    reason="nvcc, cuobjdump (pip install nvidia-cuda-cuobjdump) or c++filt is not installed here",
)

# the hot kernels, each as two instantiations that differ only in the entries per lane:
# (label, at E, at 2E, E)
HOT = [
    ("softmax float32", "csm_fwd_rows<float, 32, 4, 0, 0, 0>", "csm_fwd_rows<float, 32, 8, 0, 0, 0>", 16),
    ("log_softmax float32", "csm_fwd_rows<float, 32, 4, 1, 0, 0>", "csm_fwd_rows<float, 32, 8, 1, 0, 0>", 16),
    ("softmax float32, tau != 1", "csm_fwd_rows<float, 32, 4, 0, 1, 0>", "csm_fwd_rows<float, 32, 8, 0, 1, 0>", 16),
    ("log_softmax float32, tau != 1", "csm_fwd_rows<float, 32, 4, 1, 1, 0>", "csm_fwd_rows<float, 32, 8, 1, 1, 0>", 16),
    ("softmax float16", "csm_fwd_rows<csm_half, 32, 2, 0, 0, 0>", "csm_fwd_rows<csm_half, 32, 4, 0, 0, 0>", 16),
    ("log_softmax float16", "csm_fwd_rows<csm_half, 32, 2, 1, 0, 0>", "csm_fwd_rows<csm_half, 32, 4, 1, 0, 0>", 16),
    ("softmax_backward float32", "csm_bwd_rows<float, 32, 2, 3, 0, 0>", "csm_bwd_rows<float, 32, 4, 3, 0, 0>", 8),
    ("log_softmax_backward float32", "csm_bwd_rows<float, 32, 2, 4, 0, 0>", "csm_bwd_rows<float, 32, 4, 4, 0, 0>", 8),
    ("softmax_backward float16", "csm_bwd_rows<csm_half, 32, 1, 3, 0, 0>", "csm_bwd_rows<csm_half, 32, 2, 3, 0, 0>", 8),
    ("cross-entropy float32", "csm_xent_rows<float, 32, 4, 0, 0>", "csm_xent_rows<float, 32, 8, 0, 0>", 16),
    ("cross-entropy float16", "csm_xent_rows<csm_half, 32, 2, 0, 0>", "csm_xent_rows<csm_half, 32, 4, 0, 0>", 16),
]
# SASS instructions per element, held a little above what the kernels measure (printed by
# test_sass_instructions_per_element; nvcc 13.0, sm_90). These are static counts: the
# difference of the E and 2E instantiations also holds each 16-byte piece's entry-by-entry
# path for a row's partial first and last pieces, which whole pieces do not execute. The
# ceilings at 100% of a copy on an H100 are ~80 issued instructions per element (float32
# forward), ~40 (float16 forward), ~134 (float32 backward), ~67 (float16 backward).
BUDGET = {
    "softmax float32": 80, "log_softmax float32": 100, "softmax float32, tau != 1": 92,
    "log_softmax float32, tau != 1": 140, "softmax float16": 60, "log_softmax float16": 100,
    # softmax_backward: +13 for its overflow-safe y (g - s) (g - s beyond the float range where
    # y (g - s) is not, taken in halves), which the compiler predicates into the element loop;
    # a per-row test of max |g| + |s| would take it out again
    "softmax_backward float32": 64, "log_softmax_backward float32": 112, "softmax_backward float16": 64,
    "cross-entropy float32": 110, "cross-entropy float16": 110,
}
# Instantiations known to spill (nvcc 13.0, sm_90): the general ones (F = GEN: strided
# entries and masks; TM = WIDE: 1/tau beyond the compute type's range) and the float64
# split finish -- none of the contiguous float16/float32 kernels. To be brought to zero;
# the test fails on a spill anywhere else, and on a listed kernel that no longer spills
# (so the list only shrinks).
KNOWN_SPILLS = {
    "csm_fwd_rows<csm_half, 4, 2, 0, 1, 1>",
    "csm_fwd_rows<csm_half, 32, 2, 0, 1, 1>",
    "csm_fwd_rows<csm_half, 1024, 2, 0, 2, 0>",
    "csm_fwd_rows<csm_half, 4, 2, 0, 2, 1>",
    "csm_fwd_rows<csm_half, 32, 2, 0, 2, 1>",
    "csm_fwd_rows<csm_half, 4, 2, 1, 1, 1>",
    "csm_fwd_rows<csm_half, 32, 2, 1, 1, 1>",
    "csm_fwd_rows<csm_half, 1024, 2, 1, 2, 0>",
    "csm_fwd_rows<csm_half, 4, 2, 1, 2, 1>",
    "csm_fwd_rows<csm_half, 32, 2, 1, 2, 1>",
    "csm_bwd_rows<csm_half, 1024, 1, 3, 0, 1>",
    "csm_bwd_rows<csm_half, 1024, 1, 3, 1, 1>",
    "csm_fwd_cols<csm_half, 0, 0, 1>",
    "csm_fwd_cols<csm_half, 1, 0, 1>",
    "csm_fwd_cols<csm_half, 0, 1, 1>",
    "csm_fwd_cols<float, 0, 0, 1>",
    "csm_fwd_cols<float, 1, 0, 1>",
    "csm_fwd_cols<float, 0, 1, 1>",
    "csm_fwd_rows<double, 1024, 2, 0, 0, 1>",
    "csm_fwd_rows<double, 1024, 2, 1, 2, 1>",
    "csm_bwd_rows<double, 1024, 2, 3, 0, 1>",
    "csm_bwd_rows<double, 1024, 2, 3, 1, 1>",
    "csm_bwd_rows<double, 1024, 2, 3, 2, 1>",
    "csm_bwd_rows<double, 1024, 2, 4, 0, 1>",
    "csm_bwd_rows<double, 1024, 2, 4, 1, 1>",
    "csm_bwd_rows<double, 1024, 2, 4, 2, 1>",
    "csm_bwd_rows<float, 1024, 2, 3, 0, 1>",
    "csm_bwd_rows<float, 1024, 2, 3, 1, 1>",
    "csm_bwd_long<csm_half, 3, 2, 1>",
    "csm_fwd_split_finish<double, 0, 0, 0>",
    "csm_fwd_cols<double, 0, 1, 1>",
}


@pytest.fixture(scope="module")
def sass_report():
    probes = [n for _, a, b, _ in HOT for n in (a, b)]
    return cuda_sass.analyse(cuda.all_kernel_names() + probes)


@needs_nvcc
def test_every_instantiation_compiles_without_spills(sass_report):
    """Every kernel the backend may launch, compiled for sm_90 with CuPy's -ftz=true: no
    spill (beyond KNOWN_SPILLS), registers within its launch bounds."""
    bad = []
    for name in cuda.all_kernel_names():
        r = cuda_sass.lookup(sass_report, name)
        spills = r.get("spill_stores", 0) or r.get("spill_loads", 0)
        if spills and name not in KNOWN_SPILLS:
            bad.append(f"{name}: spills {r['spill_stores']}/{r['spill_loads']} bytes")
        if not spills and name in KNOWN_SPILLS:
            bad.append(f"{name}: no longer spills -- take it off KNOWN_SPILLS")
        if r["registers"] > cuda_sass.register_bound(name):
            bad.append(f"{name}: {r['registers']} registers > {cuda_sass.register_bound(name)}")
    assert not bad, "\n".join(bad)


def _per_element(report, a, b, e, ops=None):
    return (cuda_sass.total(cuda_sass.lookup(report, b), ops) - cuda_sass.total(cuda_sass.lookup(report, a), ops)) / e


@needs_nvcc
def test_float_kernels_compute_in_float_per_element(sass_report):
    """The code that runs once per element of a float kernel (the difference between the E
    and 2E instantiations) has no double-precision, conversion-to-double or call
    instruction. One per element, or per pair, would show as >= 0.5; a smaller difference,
    or a negative one, is the compiler laying out the per-row and cold code of the two
    instantiations differently."""
    bad = []
    for label, a, b, e in HOT:
        for ops, what in ((cuda_sass.FP64_OPS, "double-precision"), (cuda_sass.CALL_OPS, "call")):
            d = _per_element(sass_report, a, b, e, ops)
            if d >= 0.5:
                bad.append(f"{label}: {d:+.2f} {what} instructions per element")
    assert not bad, "\n".join(bad)


@needs_nvcc
def test_sass_instructions_per_element(sass_report, capsys):
    rows = []
    for label, a, b, e in HOT:
        per = _per_element(sass_report, a, b, e)
        regs = cuda_sass.lookup(sass_report, a)["registers"]
        rows.append((label, per, regs))
    with capsys.disabled():
        print("\nSASS instructions per element (sm_90, -ftz=true; E vs 2E entries per lane):")
        for label, per, regs in rows:
            print(f"  {label:32s} {per:6.2f}   budget {BUDGET[label]:3d}   registers {regs}")
    over = [f"{label}: {per:.2f} > {BUDGET[label]}" for label, per, _ in rows if per > BUDGET[label]]
    assert not over, "\n".join(over)


def test_kernel_source_ships_with_the_package():
    src = cuda.kernel_source()
    for name in ("csm_fwd_rows", "csm_fwd_split_stats", "csm_fwd_cols", "csm_bwd_rows", "csm_bwd_long",
                 "csm_xent_rows", "csm_xent_block", "csm_jacobian"):
        assert re.search(rf"__global__ void [^;{{]*\b{name}\(", src), name


def test_every_launched_name_is_instantiated():
    """The planner's names and the list the emulator and the compile checks use are one."""
    names = set(cuda.all_kernel_names())
    for dt in ("float16", "float32", "float64"):
        for fam in ("fwd", "bwd"):
            for general in (False, True):
                assert cuda.row_shapes(fam, dt, general)[-1][0] == 1024
    assert len(names) == len(cuda.all_kernel_names())


# ---- the planning reaches every tier (emulator) -------------------------------------------------------
def _tier(name):
    base, args = name.split("<", 1)
    if base in ("csm_fwd_rows", "csm_bwd_rows", "csm_xent_rows"):
        return "warp" if int(args.split(",")[1]) <= 32 else "block"
    return {"csm_fwd_split_finish": "split", "csm_fwd_cols": "cols", "csm_bwd_long": "long"}.get(base, base)


def _ran(launched, kernel, dtype, tier):
    t = cuda._CTYPE[dtype]
    return any(n.startswith(f"{kernel}<{t},") and _tier(n) == tier for n in launched)


CASES = [
    ("softmax", (6, 40), -1, "warp"),
    ("log_softmax", (9, 5), -1, "warp"),
    ("softmax", (5, 7), -1, "warp"),
    ("log_softmax", (3, 1300), -1, "block"),
    ("softmax", (3, 300), -1, "block"),
    ("logsumexp", (9, 1500), -1, "block"),
    ("softmax", (1, 5000), -1, "split"),
    ("logsumexp", (2, 9000), -1, "split"),
    ("softmax", (700, 50), 0, "cols"),
    ("log_softmax", (30, 3, 20), 1, "cols"),
    ("logsumexp", (40, 70), 0, "cols"),
]


@pytest.mark.parametrize("op,shape,axis,tier", CASES)
def test_planning_reaches_each_tier(op, shape, axis, tier):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape) * 5
    x.reshape(-1)[3] = -np.inf
    got, launched = _launches(op, x, axis=axis)
    kernel = {"split": "csm_fwd_split_finish", "cols": "csm_fwd_cols"}.get(tier, "csm_fwd_rows")
    assert _ran(launched, kernel, "float64", tier), launched
    assert_matches(got, oracle(op, x, axis=axis), "float64", f"{op} {shape} via {tier}",
                   atol=forward_atol(op, x, "float64"))


def test_block_tier_for_each_dtype():
    """A block per row, the row in registers (float16 rows computed in float); special rows
    among ordinary ones; unaligned rows (n not a multiple of the 16-byte piece)."""
    rng = np.random.default_rng(1)
    for dtype in ("float16", "float32", "float64"):
        x = (rng.standard_normal((4, 1101)) * 3).astype(dtype)
        x[1, 5] = np.nan
        x[2, :] = -np.inf
        for op in ("softmax", "log_softmax"):
            got, launched = _launches(op, x, temperature=0.5)
            assert _ran(launched, "csm_fwd_rows", dtype, "block"), launched
            assert_matches(got, oracle(op, x, temperature=0.5), dtype, f"{op} {dtype} via the block tier")


def test_split_kernels_with_chunks_of_every_kind():
    """Rows longer than registers hold: chunks holding the max, chunks below it, a chunk of
    only -inf, a tie of the max across chunks, a partial last chunk, unaligned rows."""
    rng = np.random.default_rng(5)
    for dtype, n in (("float32", 16403), ("float64", 5003)):
        x = (rng.standard_normal((3, n)) * 4).astype(dtype)
        x[0, 600:4700] = -np.inf
        x[1, 10] = x[1, 4500] = 30.0  # the max twice, in different chunks
        x[2, :] = rng.standard_normal(n).astype(dtype) * 1e-3
        for op in ("softmax", "log_softmax", "logsumexp"):
            got, launched = _launches(op, x, axis=1)
            assert _ran(launched, "csm_fwd_split_finish", dtype, "split"), launched
            assert_matches(got, oracle(op, x, axis=1), dtype, f"{op} {dtype} split", atol=forward_atol(op, x, dtype))


def test_backward_and_xent_and_jacobian_kernels():
    rng = np.random.default_rng(2)
    for n, kernel, tier in ((50, "csm_bwd_rows", "warp"), (3000, "csm_bwd_rows", "block"),
                            (5000, "csm_bwd_long", "long")):
        x, g = rng.standard_normal((3, n)), rng.standard_normal((3, n))
        y = np.asarray(oracle("softmax", x))
        got, launched = _launches("softmax_backward", g, y)
        assert _ran(launched, kernel, "float64", tier), launched
        assert_matches(got, oracle("softmax_backward", g, y), "float64", kernel, rtol=1e-13, atol=1e-15)
    x = rng.standard_normal((4, 7))
    J, launched = _launches("softmax_jacobian", x)
    assert "csm_jacobian<double>" in launched, launched
    assert_matches(J, oracle("softmax_jacobian", x), "float64", "jacobian", atol=1e-16)
    labels = rng.integers(0, 7, size=4)
    labels[2] = -100  # ignored
    for kw, kernel in (({}, "csm_xent_rows"), ({"weight": rng.random(7) + 0.5}, "csm_xent_block")):
        (loss, grad), launched = _launches("softmax_cross_entropy", x, labels, return_grad=True, **kw)
        assert any(n.startswith(kernel) for n in launched), launched
        want_loss, want_grad = oracle("softmax_cross_entropy", x, labels, return_grad=True, **kw)
        assert_matches(loss, want_loss, "float64", "cross-entropy loss", rtol=1e-14, atol=1e-15)
        assert_matches(grad, want_grad, "float64", "cross-entropy gradient", rtol=1e-13, atol=1e-15)


# ---- accuracy holes: terms far below the max, rescaled sums ----------------------------------------------
CUDA_BACKENDS = [EMULATED] + (["cuda"] if HAVE_GPU else [])


def _call_cuda(backend, op, x, **kw):
    if backend == EMULATED:
        return _launches(op, x, **kw)[0]
    import cupy

    return cupy.asnumpy(getattr(csoftmax, op)(cupy.asarray(x), backend="cuda", **kw))


def _ulps_vs_ld(got, x, op, axis):
    from test_accuracy import exact_ld, ulps

    xm = np.moveaxis(x, axis, -1)
    gm = np.asarray(got).reshape(xm.shape[:-1]) if op == "logsumexp" else np.moveaxis(np.asarray(got), axis, -1)
    worst = 0.0
    for idx in np.ndindex(xm.shape[:-1]):
        soft, logs = exact_ld(xm[idx])
        if op == "logsumexp":
            xd = xm[idx].astype(np.float64)
            k = int(np.argmax(xd))
            want = np.longdouble(xd[k]) - logs[k]  # m + log1p(S')
            worst = max(worst, float(ulps(gm[idx], want, x.dtype)))
        else:
            worst = max(worst, float(ulps(gm[idx], soft if op == "softmax" else logs, x.dtype).max()))
    return worst


@pytest.mark.skipif(np.finfo(np.longdouble).nmant < 63, reason="numpy.longdouble has no extended precision here")
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
@pytest.mark.parametrize("layout", ["warp", "block", "split", "cols"])
def test_float32_terms_far_below_the_max_keep_their_precision(backend, layout):
    """float32 rows whose other entries lie 100 .. 105 below the max: each exp is below
    float's normal range, yet S' (and log_softmax's max entry, -log1p(S'), itself subnormal)
    stays within 4 ulp, as every other result."""
    rng = np.random.default_rng(3)
    n = {"warp": 300, "block": 5000, "split": 20000, "cols": 3000}[layout]
    x = (-100.0 - 5.0 * rng.random(n)).astype(np.float32)
    x[n // 3] = 0.0
    axis = -1
    if layout == "cols":
        x = np.stack([x, np.roll(x, 7)], axis=1)
        axis = 0
    else:
        x = x[None, :]
    for op in ("softmax", "log_softmax", "logsumexp"):
        got = _call_cuda(backend, op, x, axis=axis)
        err = _ulps_vs_ld(got, x, op, axis)
        assert err <= 4.0, f"{op} {layout}: {err:.1f} ulp"


@pytest.mark.skipif(np.finfo(np.longdouble).nmant < 63, reason="numpy.longdouble has no extended precision here")
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
@pytest.mark.parametrize("layout", ["split", "cols"])
def test_rescaled_sums_keep_every_representable_term(backend, layout):
    """float64: thousands of entries 746 below the max, which comes late (the column's last
    slices, the row's last chunk): the running sum relative to the old maximum is rescaled by
    exp(-746), which underflows on its own; S' ~ 2^-1064 must survive (logsumexp and
    log_softmax's max entry within 4 ulp)."""
    rng = np.random.default_rng(4)
    n = 5003
    x = -746.0 - 0.5 * rng.random(n)
    x[n - 300] = 0.0
    axis = -1
    if layout == "cols":
        x = np.stack([x, x], axis=1)
        axis = 0
    else:
        x = x[None, :]
    for op in ("log_softmax", "logsumexp"):
        got = _call_cuda(backend, op, x, axis=axis)
        err = _ulps_vs_ld(got, x, op, axis)
        assert err <= 4.0, f"{op} {layout}: {err:.1f} ulp"


# ---- the temperature over the whole double range, against the formula's limit (mpmath) ------------------
RIM_TAUS = [1e-320, 5e-309, 1e-300, 1e-40, 3e-39, 1e-30, 1.0, 1e30, 1e38, 1e39, 1e45, 1e300, math.inf]
RIM_X = np.array([[1.5, 3.0, 3.0, -2.0, 0.25, -np.inf], [0.5, -1.0, 2.0, 2.5, -0.75, 1.0]])
RIM_G = np.array([[0.5, -1.0, 0.25, 2.0, -0.5, 1.0], [1.0, 0.75, -2.0, 0.5, 0.25, -1.5]])
RIM_Y = np.array([[0.25, 0.5, 0.25, 0.0, 0.0, 0.0], [0.125, 0.125, 0.25, 0.5, 0.0, 0.0]])  # probabilities
RIM_LABELS = np.array([1, 3])


def _mp():
    import mpmath

    return mpmath


def _rim_softmax(x, tau):
    """(softmax, log_softmax) rows of x / tau in mpmath (tau = +inf: the limit, uniform over
    the entries above -inf)."""
    mp = _mp()
    out_s, out_l = [], []
    for row in x:
        m = max(row)
        d = []
        for v in row:
            if v == -np.inf:
                d.append(-mp.inf)
            elif math.isinf(tau):
                d.append(mp.mpf(0))
            else:
                d.append((mp.mpf(v) - mp.mpf(m)) / mp.mpf(tau))
        e = [mp.exp(v) for v in d]
        lse = mp.log(mp.fsum(e))
        out_s.append([v / mp.fsum(e) for v in e])
        out_l.append([v - lse for v in d])
    return out_s, out_l


def _f(a):
    """mpmath values to float64 (beyond its range: +-inf or 0, as rounding gives)."""
    return np.array([[float(v) for v in row] for row in a])


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("tau", RIM_TAUS)
def test_temperature_rim_gives_the_formulas_limit(backend, dtype, tau):
    """Every tau in (0, inf] gives the limit the formula tends to, for every op: where 1/tau
    overflows, (x - m) / tau is a division (ties at the max share the mass, the rest goes to
    -inf or 0, never 0 * inf = NaN); where it rounds into float's subnormals, it stays in
    double; the backward passes, the Jacobians and cross-entropy divide the same way."""
    mp = _mp()
    mp.mp.dps = 50
    x = RIM_X.astype(dtype)
    g, y = RIM_G.astype(dtype), RIM_Y.astype(dtype)
    xs = x.astype(np.float64)
    soft, logs = _rim_softmax(xs, tau)
    T = mp.inf if math.isinf(tau) else mp.mpf(tau)

    def run(op, *args, **kw):
        if backend == EMULATED:
            return _launches(op, *args, **kw)[0]
        import cupy

        res = getattr(csoftmax, op)(*[cupy.asarray(a) for a in args], backend="cuda", **kw)
        return tuple(cupy.asnumpy(r) for r in res) if isinstance(res, tuple) else cupy.asnumpy(res)

    label = f"{dtype} tau={tau}"
    assert_matches(run("softmax", x, temperature=tau), _f(soft), dtype, f"softmax {label}")
    assert_matches(run("log_softmax", x, temperature=tau), _f(logs), dtype, f"log_softmax {label}")
    # backward passes: y (g - sum g y) / tau; (g - exp(y) sum g) / tau, y log-probabilities
    ys = y.astype(np.float64)
    gs = g.astype(np.float64)
    want_sb, want_lb = [], []
    for gr, yr in zip(gs, ys):
        s = mp.fsum(mp.mpf(a) * mp.mpf(b) for a, b in zip(gr, yr))
        want_sb.append([mp.mpf(b) * (mp.mpf(a) - s) / T for a, b in zip(gr, yr)])
        lp = [mp.log(mp.mpf(b)) if b > 0 else -mp.inf for b in yr]
        sg = mp.fsum(mp.mpf(a) for a in gr)
        want_lb.append([(mp.mpf(a) - mp.exp(v) * sg) / T for a, v in zip(gr, lp)])
    lpy = np.log(np.where(ys > 0, ys, 1.0)).astype(dtype)
    lpy[ys == 0] = -np.inf
    assert_matches(run("softmax_backward", g, y, temperature=tau), _f(want_sb), dtype, f"softmax_backward {label}")
    assert_matches(run("log_softmax_backward", g, lpy, temperature=tau),
                   _f([[(mp.mpf(a) - mp.exp(mp.mpf(float(v))) * mp.fsum(mp.mpf(c) for c in gr)) / T
                        for a, v in zip(gr, lr)] for gr, lr in zip(gs, lpy.astype(np.float64))]),
                   dtype, f"log_softmax_backward {label}", rtol=8 * cuda_rtol(dtype))
    # Jacobians: (diag(s) - s s^T) / tau and (I - 1 s^T) / tau, s = softmax(x / tau)
    js, jl = [], []
    for srow in soft:
        n = len(srow)
        js.append([[((srow[i] if i == j else 0) - srow[i] * srow[j]) / T for j in range(n)] for i in range(n)])
        jl.append([[((1 if i == j else 0) - srow[j]) / T for j in range(n)] for i in range(n)])
    for op, want in (("softmax_jacobian", js), ("log_softmax_jacobian", jl)):
        got = run(op, x, temperature=tau)
        assert_matches(got, np.array([_f(w) for w in want]), dtype, f"{op} {label}")
    # cross-entropy, summed: sum of logsumexp(x / tau) - x[label] / tau; gradient (p - onehot) / tau
    loss, grad = run("softmax_cross_entropy", x, RIM_LABELS, temperature=tau, reduction="sum", return_grad=True)
    want_loss = mp.fsum(-logs[r][RIM_LABELS[r]] for r in range(len(logs)))
    want_grad = [[(soft[r][j] - (1 if j == RIM_LABELS[r] else 0)) / T for j in range(len(soft[r]))]
                 for r in range(len(soft))]
    assert_matches(np.asarray(loss).reshape(1), np.array([float(want_loss)]), dtype, f"cross-entropy loss {label}",
                   rtol=4 * cuda_rtol(dtype))
    assert_matches(grad, _f(want_grad), dtype, f"cross-entropy gradient {label}")


def cuda_rtol(dtype):
    return {"float16": 2.0**-10, "float32": 2e-6, "float64": 4e-15}[dtype]


# ---- plain calls: the cached launch plan (emulator) -------------------------------------------------------
def test_plain_calls_replay_a_cached_plan():
    emulator = pytest.importorskip("cuda_emu.emulator")
    if emulator.compiler() is None or EMULATED not in csoftmax.backends():
        pytest.skip("no C++ compiler for the CUDA emulator")
    from csoftmax._ops import BY_NAME

    mod = backend_module(EMULATED)
    ops, dev = mod.ops, mod.ops.dev
    rng = np.random.default_rng(9)
    for op in ("softmax", "log_softmax", "logsumexp"):
        fast = mod.fast_entry(BY_NAME[op], np.ndarray)
        x = (rng.standard_normal((5, 37)) * 3).astype(np.float32)
        dev.launches.clear()
        first = fast(x, -1, 1.0, None)
        planned = len(ops._plans)
        x2 = (rng.standard_normal((5, 37)) * 3).astype(np.float32)
        second = fast(x2, -1, 1.0, None)
        assert len(ops._plans) == planned  # the same key: replayed, not planned again
        assert len(dev.launches) == 2 and dev.launches[0] == dev.launches[1]
        for got, xin in ((first, x), (second, x2)):
            assert_matches(got, oracle(op, xin, axis=-1), "float32", f"fast {op}", atol=forward_atol(op, xin, "float32"))
        # other strides or temperature: another plan; F-order rows take the column kernel
        xf = np.asfortranarray(x2)
        tau, kw = (1.0, {}) if op == "logsumexp" else (0.5, {"temperature": 0.5})
        assert_matches(fast(xf, -1, tau, None), oracle(op, xf, axis=-1, **kw), "float32", f"fast {op} F",
                       atol=forward_atol(op, xf, "float32"))
        assert len(ops._plans) == planned + 1
    fast = mod.fast_entry(BY_NAME["softmax"], np.ndarray)
    x = np.ones((2, 3), dtype=np.float32)
    assert fast(x, -1, 1.0, np.empty_like(x)) is None  # out=: the general path
    assert fast(x, -1, True, None) is None  # a bool is no temperature
    assert fast(x, 0.5, 1.0, None) is None
    assert fast(x.astype(np.int64), -1, 1.0, None) is None
    assert fast(x, -1, float("nan"), None) is None
    assert mod.fast_entry(BY_NAME["softmax_backward"], np.ndarray) is None

# ---- on a GPU ------------------------------------------------------------------------------------------
@needs_gpu
def test_cupy_in_cupy_out_same_device_and_stream():
    import cupy

    x = cupy.asarray(np.random.default_rng(3).standard_normal((64, 1000)).astype(np.float32))
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        y = csoftmax.softmax(x)
    stream.synchronize()
    assert isinstance(y, cupy.ndarray) and y.device == x.device
    assert csoftmax.get_backend(x).name == "cuda"
    assert_matches(cupy.asnumpy(y), oracle("softmax", cupy.asnumpy(x)), "float32", "gpu softmax")
    out = cupy.empty_like(x)
    assert csoftmax.log_softmax(x, out=out) is out


@needs_gpu
def test_gpu_labels_out_of_range():
    import cupy

    x = cupy.zeros((3, 4), dtype=cupy.float32)
    with pytest.raises(ValueError, match="7"):
        csoftmax.softmax_cross_entropy(x, cupy.asarray([0, 7, 1]))


@needs_gpu
@pytest.mark.slow
def test_gpu_64_bit_indexing():
    """More than 2^31 elements in one row: offsets must not wrap. One entry 5 above the
    rest, so every output has a closed form."""
    import cupy

    n = 2**31 + 64
    try:
        x = cupy.zeros((1, n), dtype=cupy.float32)
        x[0, -1] = 5.0
        y = csoftmax.softmax(x)
    except cupy.cuda.memory.OutOfMemoryError:
        pytest.skip("not enough GPU memory for two arrays of 2^31 float32 entries")
    del x
    denom = (n - 1) + np.exp(5.0)
    got = cupy.asnumpy(y[0, [0, 2**31 - 1, 2**31, n - 2, n - 1]]).astype(np.float64)
    want = np.array([1.0, 1.0, 1.0, 1.0, np.exp(5.0)]) / denom
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert abs(float(cupy.sum(y, dtype=cupy.float64)) - 1.0) < 1e-4
