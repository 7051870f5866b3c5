"""The `cuda` backend beyond the shared matrix (which runs it on a GPU where CuPy and one
are present, and its kernels under the host emulator everywhere else):

* every kernel instantiation compiles for sm_90 with nvcc (where nvcc is installed);
* the launch planning reaches every kernel, and the kernels agree with the C core there
  (emulator);
* on a GPU: CuPy in, CuPy out on the same device and stream, out=, labels out of range,
  64-bit indexing. Skipped with a reason where CuPy or a GPU is missing.
"""
from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess

import numpy as np
import pytest

import csoftmax
from csoftmax import _registry
from csoftmax._backends import cuda
from helpers import assert_matches, backend_module, forward_atol, oracle

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


# ---- compile ------------------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed here")
def test_every_kernel_compiles_for_sm90(tmp_path):
    names = ["csm_fwd_split_merge"] + [n for dt in ("float16", "float32", "float64") for n in cuda.kernel_names(dt)]
    src = tmp_path / "all.cu"
    src.write_text(
        cuda.kernel_source() + "\nvoid csm_instantiate_all() {\n" + "".join(f"    (void)&{n};\n" for n in names) + "}\n"
    )
    res = subprocess.run(
        ["nvcc", "-std=c++17", "-arch=sm_90", "--ptx", *[f"-I{d}" for d in cuda.kernel_dirs()], str(src), "-o",
         str(tmp_path / "all.ptx")],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    ptx = (tmp_path / "all.ptx").read_text()
    assert ptx.count(".entry") == len(names)


def test_kernel_source_ships_with_the_package():
    src = cuda.kernel_source()
    for name in ("csm_fwd_rows", "csm_fwd_block", "csm_fwd_split_stats", "csm_fwd_cols", "csm_bwd_warp",
                 "csm_xent_block", "csm_jacobian"):
        assert re.search(rf"__global__ void [^;{{]*\b{name}\(", src), name


# ---- the planning reaches every kernel (emulator) ----------------------------------------------------
CASES = [
    ("softmax", (6, 40), -1, "csm_fwd_rows<double, 32, 1>"),
    ("log_softmax", (9, 5), -1, "csm_fwd_rows<double, 4, 1>"),
    ("softmax", (5, 7), -1, "csm_fwd_rows<double, 4, 1>"),
    ("log_softmax", (3, 1300), -1, "csm_fwd_block<double>"),
    ("softmax", (3, 300), -1, "csm_fwd_rows<double, 32, 8>"),
    ("logsumexp", (9, 1500), -1, "csm_fwd_block<double>"),
    ("softmax", (1, 5000), -1, "csm_fwd_split_finish<double>"),
    ("logsumexp", (2, 9000), -1, "csm_fwd_split_finish<double>"),
    ("softmax", (700, 50), 0, "csm_fwd_cols<double>"),
    ("log_softmax", (30, 3, 20), 1, "csm_fwd_cols<double>"),
    ("logsumexp", (40, 70), 0, "csm_fwd_cols<double>"),
]


@pytest.mark.parametrize("op,shape,axis,kernel", CASES)
def test_planning_reaches_each_kernel(op, shape, axis, kernel):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape) * 5
    x.reshape(-1)[3] = -np.inf
    got, launched = _launches(op, x, axis=axis)
    assert kernel in launched, launched
    assert_matches(got, oracle(op, x, axis=axis), "float64", f"{op} {shape} via {kernel}")


def test_block_kernel_for_each_dtype():
    """A block per row, the row cached in shared memory (float16 rows computed in float);
    special rows among ordinary ones."""
    rng = np.random.default_rng(1)
    for dtype, kernel in (("float16", "csm_fwd_block<csm_half>"), ("float32", "csm_fwd_block<float>"),
                          ("float64", "csm_fwd_block<double>")):
        x = (rng.standard_normal((4, 1100)) * 3).astype(dtype)
        x[1, 5] = np.nan
        x[2, :] = -np.inf
        for op in ("softmax", "log_softmax"):
            got, launched = _launches(op, x, temperature=0.5)
            assert kernel in launched, launched
            assert_matches(got, oracle(op, x, temperature=0.5), dtype, f"{op} {dtype} via {kernel}")


def test_split_kernels_with_chunks_of_every_kind():
    """Rows longer than the cache: chunks holding the max, chunks below it, a chunk of
    only -inf, a tie of the max across chunks, and a partial last chunk."""
    rng = np.random.default_rng(5)
    for dtype in ("float32", "float64"):
        x = (rng.standard_normal((3, 5003)) * 4).astype(dtype)
        x[0, 600:1100] = -np.inf
        x[1, 10] = x[1, 4000] = 30.0  # the max twice, in different chunks
        x[2, :] = rng.standard_normal(5003).astype(dtype) * 1e-3
        for op in ("softmax", "log_softmax", "logsumexp"):
            got, launched = _launches(op, x, axis=1)
            assert f"csm_fwd_split_finish<{cuda._CTYPE[dtype]}>" in launched, launched
            assert_matches(got, oracle(op, x, axis=1), dtype, f"{op} {dtype} split",
                           atol=forward_atol(op, x, dtype))


def test_backward_and_xent_and_jacobian_kernels():
    rng = np.random.default_rng(2)
    for n, kernel in ((50, "csm_bwd_warp<double, 2>"), (3000, "csm_bwd_block<double>")):
        x, g = rng.standard_normal((3, n)), rng.standard_normal((3, n))
        y = np.asarray(oracle("softmax", x))
        got, launched = _launches("softmax_backward", g, y)
        assert kernel in launched, launched
        assert_matches(got, oracle("softmax_backward", g, y), "float64", kernel, rtol=1e-13, atol=1e-15)
    x = rng.standard_normal((4, 7))
    J, launched = _launches("softmax_jacobian", x)
    assert "csm_jacobian<double>" in launched, launched
    assert_matches(J, oracle("softmax_jacobian", x), "float64", "jacobian", atol=1e-16)
    labels = rng.integers(0, 7, size=4)
    (loss, grad), launched = _launches("softmax_cross_entropy", x, labels, return_grad=True)
    assert "csm_xent_block<double>" in launched, launched
    want_loss, want_grad = oracle("softmax_cross_entropy", x, labels, return_grad=True)
    assert_matches(loss, want_loss, "float64", "cross-entropy loss", rtol=1e-14, atol=1e-15)
    assert_matches(grad, want_grad, "float64", "cross-entropy gradient", rtol=1e-13, atol=1e-15)


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
