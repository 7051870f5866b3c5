"""pytest configuration: the backend fixtures (one per registered, available backend, and
for `c` one per instruction set this CPU runs), and a guard that the tests run against the
installed package when CI asks for it."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/helpers.py

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


@pytest.fixture(params=_backend_params())
def backend(request):
    """A backend name; for `c`, its instruction set is selected for the test's duration."""
    name, isa = request.param
    if isa is None:
        yield name
        return
    from csoftmax._backends import c

    prev = c.set_isa(isa)
    try:
        yield name
    finally:
        c.set_isa(prev)
