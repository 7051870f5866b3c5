"""Runs csoftmax's CUDA kernels on the CPU, for the tests.

Builds a host library from the kernel source (csoftmax_kernels.cu, as the installed
package ships it) and emu.h with the host C++ compiler -- once per source version, cached
in the temporary directory -- and provides a device for csoftmax._backends.cuda.Ops whose
arrays are NumPy arrays. The launch planning of the `cuda` backend and the kernels
themselves are then exercised by the same test matrix as every other backend.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from csoftmax._backends import cuda

HERE = Path(__file__).resolve().parent


def compiler():
    return shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")


def _names():
    return cuda.all_kernel_names()


def _harness(names):
    out = ['#include "emu.h"', '#include "csoftmax_kernels.cu"', "#include <cstring>",
           "struct Entry { const char *name; void (*thunk)(void **); };", "static const Entry table[] = {"]
    for name in names:
        out.append(f'    {{"{name}", [](void **a) {{ emu::invoke(&{name}, a); }}}},')
    out.append("};")
    out.append('''
extern "C" const char *emu_launch(const char *name, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                                  unsigned bz, unsigned long long shmem, void **args)
{
    static std::string err;
    for (const Entry &e : table) {
        if (std::strcmp(e.name, name)) continue;
        dim3 g, b;
        g.x = gx; g.y = gy; g.z = gz;
        b.x = bx; b.y = by; b.z = bz;
        err = emu::launch(e.thunk, g, b, (size_t)shmem, args);
        return err.empty() ? nullptr : err.c_str();
    }
    err = std::string("unknown kernel ") + name;
    return err.c_str();
}
''')
    return "\n".join(out)


@functools.lru_cache(maxsize=None)
def library():
    """The compiled host library (built on first use)."""
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler for the CUDA emulator")
    dirs = cuda.kernel_dirs()
    headers = "".join(p.read_text() for d in dirs for p in sorted(d.glob("*.h")))
    names = _names()
    harness = _harness(names)
    emu_h = (HERE / "emu.h").read_text()
    # as CUDA code expects: no fused multiply-adds behind the kernels' back, pointer casts
    # between types allowed; no _FORTIFY_SOURCE (its longjmp check aborts on the
    # coroutines' own stacks)
    flags = ["-std=c++17", "-O2", "-ffp-contract=off", "-fno-strict-aliasing", "-U_FORTIFY_SOURCE",
             "-D_FORTIFY_SOURCE=0", "-fPIC", "-shared", "-Wno-unknown-pragmas"]
    key = hashlib.sha256((cuda.kernel_source() + headers + emu_h + harness + cxx + " ".join(flags)).encode())
    key = key.hexdigest()[:16]
    build = Path(tempfile.gettempdir()) / f"csoftmax-cuda-emu-{key}"
    lib = build / "libcsm_emu.so"
    if not lib.exists():
        build.mkdir(parents=True, exist_ok=True)
        src = build / f"harness.{os.getpid()}.cpp"  # per process: test workers may build at once
        src.write_text(harness)
        tmp = build / f"lib.{os.getpid()}.so"
        includes = [arg for d in [HERE] + list(dirs) for arg in ("-I", str(d))]
        subprocess.run([cxx, *flags, *includes, str(src), "-o", str(tmp)], check=True,
                       capture_output=True, text=True)
        os.replace(tmp, lib)
    dll = ctypes.CDLL(str(lib))
    dll.emu_launch.restype = ctypes.c_char_p
    dll.emu_launch.argtypes = [ctypes.c_char_p] + [ctypes.c_uint] * 6 + [ctypes.c_ulonglong, ctypes.c_void_p]
    return dll


def _arg(a):
    """A kernel argument as CuPy passes it: an array's data pointer, a Python int as int64,
    a float as double."""
    if isinstance(a, np.ndarray):
        return ctypes.c_void_p(a.ctypes.data if a.size else 0)
    if isinstance(a, bool) or not isinstance(a, (int, float)):
        raise TypeError(f"kernel argument of type {type(a).__name__}: pass arrays, ints or floats")
    return ctypes.c_int64(a) if isinstance(a, int) else ctypes.c_double(a)


class EmulatedDevice:
    """A device for cuda.Ops: NumPy arrays, kernels run by the emulator. The split kernels'
    chunks are smaller than on a GPU so that the tests' arrays reach every path."""

    xp = np
    num_sms = 2
    SPLIT_CHUNK = 4096

    def __init__(self):
        self.lib = library()
        self.launches = []  # kernel names, for the tests that check which kernels ran

    @staticmethod
    def ptr(a):
        return a.ctypes.data

    def function(self, name):
        """The kernel `name` as a callable (grid, block, args), as CuPy's functions are."""
        return functools.partial(self._run, name)

    def launch(self, name, grid, block, args):
        self._run(name, grid, block, args)

    def _run(self, name, grid, block, args):
        keep = [_arg(a) for a in args]
        ptrs = [ctypes.cast(ctypes.pointer(obj), ctypes.c_void_p) for obj in keep]
        argv = (ctypes.c_void_p * len(ptrs))(*ptrs)
        g = tuple(grid) + (1,) * (3 - len(grid))
        b = tuple(block) + (1,) * (3 - len(block))
        self.launches.append(name)
        err = self.lib.emu_launch(name.encode(), *g, *b, 0, ctypes.cast(argv, ctypes.c_void_p))
        if err:
            raise RuntimeError(f"{name}: {err.decode()}")


def backend_module():
    return cuda.CudaBackend(cuda.Ops(EmulatedDevice()))
