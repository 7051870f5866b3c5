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
_CTYPES = {
    np.dtype(np.int64): ctypes.c_int64,
    np.dtype(np.int32): ctypes.c_int32,
    np.dtype(np.uint64): ctypes.c_uint64,
    np.dtype(np.float64): ctypes.c_double,
}


def compiler():
    return shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")


def _names():
    names = ["csm_fwd_split_merge"]
    for dt in ("float16", "float32", "float64"):
        names += cuda.kernel_names(dt)
    return names


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
        (build / "harness.cpp").write_text(harness)
        tmp = build / f"lib.{os.getpid()}.so"
        includes = [arg for d in [HERE] + list(dirs) for arg in ("-I", str(d))]
        subprocess.run([cxx, *flags, *includes, str(build / "harness.cpp"), "-o", str(tmp)], check=True,
                       capture_output=True, text=True)
        os.replace(tmp, lib)
    dll = ctypes.CDLL(str(lib))
    dll.emu_launch.restype = ctypes.c_char_p
    dll.emu_launch.argtypes = [ctypes.c_char_p] + [ctypes.c_uint] * 6 + [ctypes.c_ulonglong, ctypes.c_void_p]
    return dll


class EmulatedDevice:
    """A device for cuda.Ops: NumPy arrays, kernels run by the emulator. Thresholds are
    smaller than on a GPU so that the tests' arrays reach every kernel."""

    xp = np
    SMEM_CACHE_BYTES = 16 * 1024
    num_sms = 2
    SPLIT_MIN_N = 2048
    SPLIT_CHUNK = 4096

    def __init__(self):
        self.lib = library()
        self.launches = []  # kernel names, for the tests that check which kernels ran

    @staticmethod
    def ptr(a):
        return a.ctypes.data

    def launch(self, dtype_name, name, grid, block, args, shared_mem=0):
        keep, ptrs = [], []
        for a in args:
            if isinstance(a, np.ndarray):
                obj = ctypes.c_void_p(a.ctypes.data if a.size else 0)
            elif isinstance(a, np.generic):
                obj = _CTYPES[a.dtype](a.item())
            else:
                raise TypeError(f"kernel argument of type {type(a).__name__}: pass NumPy arrays or NumPy scalars")
            keep.append(obj)
            ptrs.append(ctypes.cast(ctypes.pointer(obj), ctypes.c_void_p))
        argv = (ctypes.c_void_p * len(ptrs))(*ptrs)
        g = tuple(grid) + (1,) * (3 - len(grid))
        b = tuple(block) + (1,) * (3 - len(block))
        self.launches.append(name)
        err = self.lib.emu_launch(name.encode(), *g, *b, int(shared_mem), ctypes.cast(argv, ctypes.c_void_p))
        if err:
            raise RuntimeError(f"{name}: {err.decode()}")


def backend_module():
    return cuda.CudaBackend(cuda.Ops(EmulatedDevice()))
