"""pytest configuration: the backend fixtures (one per registered, available backend, and
for `c` one per instruction set this CPU runs), and a guard that the tests run against the
installed package when CI asks for it."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/helpers.py
# JAX arrays of every dtype the matrix uses (read when JAX is first imported); the tests
# of JAX without x64 run in fresh processes (tests/test_jax.py)
os.environ.setdefault("JAX_ENABLE_X64", "1")

import csoftmax  # noqa: E402
import helpers  # noqa: E402


def pytest_report_header(config):
    import io

    buf = io.StringIO()
    csoftmax.show_config(file=buf)
    return [f"csoftmax imported from {Path(csoftmax.__file__).parent}"] + buf.getvalue().splitlines()


def pytest_sessionstart(session):
    if os.environ.get("CSOFTMAX_TEST_INSTALLED") == "1":
        src = Path(__file__).resolve().parent.parent / "src"
        here = Path(csoftmax.__file__).resolve()
        if src in here.parents:
            raise pytest.UsageError(f"CSOFTMAX_TEST_INSTALLED=1 but csoftmax comes from the source tree: {here}")


def _register_emulated_cuda():
    """The `cuda` backend's launch planning and kernels, run on the CPU by the host
    emulator (tests/cuda_emu), join every test that iterates over the backends -- where a
    C++ compiler is at hand."""
    from cuda_emu import emulator

    from csoftmax._backends import _is_numpy

    if emulator.compiler() is None or "cuda-emulated" in csoftmax.backends():
        return
    csoftmax.register_backend(
        csoftmax.Backend(
            "cuda-emulated",
            _is_numpy,
            emulator.backend_module,
            description="the cuda backend's kernels, run by the host emulator (tests only)",
        )
    )


_register_emulated_cuda()


class _StrictArrays:
    """array-api-strict arrays -- the array-API standard and nothing more -- on the
    reference backend's code, as plain dispatch computes them, with the test hooks."""

    def __init__(self):
        import numpy as np
        import array_api_strict

        from csoftmax._backends import reference

        self._np, self._xp, self._ref = np, array_api_strict, reference

    def __getattr__(self, name):
        return getattr(self._ref, name)

    def from_numpy(self, a):
        if a.dtype.kind == "f" and a.dtype.itemsize == 2:
            pytest.skip("array-api-strict has no float16")
        return self._xp.asarray(self._np.array(a, dtype=a.dtype.newbyteorder("=")))

    def to_numpy(self, a):
        return self._np.asarray(a)


def _register_array_api_strict():
    """Arrays of array-api-strict join every test that iterates over the backends, where
    it is installed (dtypes and functions outside the standard fail there)."""
    import importlib.util

    if importlib.util.find_spec("array_api_strict") is None or "array-api-strict" in csoftmax.backends():
        return
    csoftmax.register_backend(
        csoftmax.Backend(
            "array-api-strict",
            lambda x: type(x).__module__.startswith("array_api_strict"),
            _StrictArrays,
            description="array-api-strict arrays on the reference code (tests only)",
        ),
        before="reference",
    )


_register_array_api_strict()


def _cupy_without_pool():
    """Under compute-sanitizer (.ci/gpu): every CuPy allocation its own cudaMalloc, so an
    access past an array's end is caught instead of landing in the pool's next block."""
    if os.environ.get("CSOFTMAX_TEST_CUPY_NO_POOL") == "1":
        import cupy

        cupy.cuda.set_allocator(None)
        cupy.cuda.set_pinned_memory_allocator(None)


_cupy_without_pool()


def _backend_params():
    params = []
    for name in helpers.available_backends():
        if name == "c":
            from csoftmax._backends import c

            for isa in c.supported_isas():
                params.append(pytest.param(("c", isa), id=f"c-{isa}"))
        else:
            params.append(pytest.param((name, None), id=name))
    return params


# The dtypes some backends run the dtype-parametrized tests in, and why (docs/design.md, "Tests").
DTYPE_SUBSETS = {
    "dask": (("float32", "float64"), "dask runs these in float32 and float64: float16 and integers take the same "
             "plans and chunk kernels (tests/test_dask.py runs them through every plan), and each call costs a graph"),
    "array-api-strict": (("float64",), "array-api-strict runs these in float64: they check that the reference code "
                         "uses nothing outside the standard, whatever the dtype (tests/test_array_api.py: float32)"),
}


@pytest.fixture(params=_backend_params())
def backend(request):
    """A backend name; for `c`, its instruction set is selected for the test's duration."""
    name, isa = request.param
    callspec = getattr(request.node, "callspec", None)
    dtype = callspec.params.get("dtype") if callspec is not None else None
    if name in DTYPE_SUBSETS and dtype is not None and np.dtype(dtype).name not in DTYPE_SUBSETS[name][0]:
        pytest.skip(DTYPE_SUBSETS[name][1])
    if isa is None:
        yield name
        return
    from csoftmax._backends import c

    prev = c.set_isa(isa)
    try:
        yield name
    finally:
        c.set_isa(prev)
