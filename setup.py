"""Build of csoftmax's compiled core.

One extension, csoftmax._ckernels: the Cython wrapper, the dispatcher, and the C kernels
(src/backends/cpu/csm_kernels.c) compiled once per instruction set and dtype. On x86-64
the kernel source is compiled six times -- baseline (SSE2), AVX2+FMA and AVX-512, each
for float and double -- with its instruction set's flags, and the best build the CPU
runs is chosen at import. Elsewhere only the baseline builds exist (the kernels use
GCC/Clang vector extensions, so that is NEON on arm64).

Flags: -O3 and -ffp-contract=off (the kernels' error-free transformations must not be
fused behind their back); -g0, so the extension carries no debug information (about 1.5
MB instead of 14; CSOFTMAX_DEBUG=1 keeps Python's -g, for debuggers and sanitizers); the
project's own C sources with -Wall -Wextra -Wshadow (CSOFTMAX_WERROR=1 makes their
warnings errors, as CI does; the Cython-generated file is left out). Never -ffast-math:
it breaks inf/NaN semantics.

Sanitizers: CSOFTMAX_SANITIZE=1 compiles every object (the Cython wrapper included) and
links the extension with -fsanitize=address,undefined -fno-sanitize-recover=undefined
-fno-omit-frame-pointer, adds -fno-wrapv (Python's CFLAGS carry -fwrapv, under which GCC
does not check signed overflow), and compiles with -O1 -g1 instead of -O3 -g0: line tables
for the reports' stack traces, and a build four times faster (the checks are the same at
every level; -O3 with full debug information takes a minute per kernel object).
CI runs the equivalence matrix and the fuzzer on this build (.ci/run); Python itself is not
instrumented, so the runtime must come first: LD_PRELOAD="$(gcc -print-file-name=libasan.so)
$(gcc -print-file-name=libubsan.so)" and ASAN_OPTIONS=detect_leaks=0 (CPython's own
allocations would be reported as leaks). The OpenMP probe below is compiled and linked with
the same flags, so the sanitized build keeps OpenMP.

OpenMP: used where the compiler has it (threads across rows). CSOFTMAX_NO_OPENMP=1 builds
without it on purpose (one thread; show_config() says so). A compiler without OpenMP
(its -fopenmp probe does not compile) gives a one-thread build with a warning; a compiler
that compiles -fopenmp but cannot link it -- CFLAGS or LDFLAGS that break the link, say
sanitizer flags in CFLAGS only -- is a build error that shows the linker's message,
rather than a one-thread build nobody asked for.

The CUDA kernel source (src/backends/cuda/*.cu) and the headers it shares with the C core
(src/backends/common/*.h) are copied into the package as csoftmax/_cuda_kernels/ so the
wheel carries them; CuPy compiles them at first use.
"""
import os
import platform
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import numpy
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

HERE = Path(__file__).parent.resolve()
CPU_DIR = Path("src") / "backends" / "cpu"
COMMON_DIR = Path("src") / "backends" / "common"  # shared by the C core and the CUDA kernels
CUDA_DIR = HERE / "src" / "backends" / "cuda"

IS_X86_64 = platform.machine().lower() in ("x86_64", "amd64")
SANITIZE = os.environ.get("CSOFTMAX_SANITIZE", "") not in ("", "0")
# AddressSanitizer + UndefinedBehaviorSanitizer, at compile and link time; -fno-wrapv undoes
# Python's -fwrapv, which would switch off the signed-overflow check
SANITIZE_FLAGS = (["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer",
                   "-fno-wrapv"] if SANITIZE else [])
if SANITIZE:
    OPTIMIZE = ["-O1", "-g1"]  # line tables for the reports; -O3 -g compiles four times slower
else:
    OPTIMIZE = ["-O3"] + ([] if os.environ.get("CSOFTMAX_DEBUG") == "1" else ["-g0"])
COMMON_FLAGS = OPTIMIZE + ["-ffp-contract=off"] + SANITIZE_FLAGS
# the project's own C sources: warn loudly (and fail on a warning when CI asks)
WARNINGS = ["-Wall", "-Wextra", "-Wshadow"] + (["-Werror"] if os.environ.get("CSOFTMAX_WERROR") == "1" else [])
# the kernel builds: (name, bytes per vector, compiler flags), lowest first
ISAS = [("baseline", 16, [])] + (
    [("avx2", 32, ["-mavx2", "-mfma"]), ("avx512", 64, ["-mavx512f", "-mavx512dq", "-mfma"])] if IS_X86_64 else []
)
# without OpenMP the core's omp pragmas are ignored, and a thread count that only a pragma
# reads is unused: not warnings of the code (the OpenMP build, which CI also runs with
# -Werror, keeps every other unused variable an error)
NO_OPENMP_WARNINGS = ["-Wno-unknown-pragmas", "-Wno-unused-variable", "-Wno-unused-but-set-variable"]
KERNELS = CPU_DIR / "csm_kernels.c"
SCALAR_SOURCES = [CPU_DIR / "csm_dispatch.c", CPU_DIR / "csm_stats.c"]  # compiled once, baseline flags


OPENMP_PROBE = """#include <omp.h>
int csm_probe(void) { return omp_get_max_threads(); }
"""


def openmp_flags(compiler):
    """["-fopenmp"] where the compiler compiles and links OpenMP code into a shared library
    (as the extension is); [] without OpenMP: switched off by CSOFTMAX_NO_OPENMP=1, or a
    compiler that does not know it (warned). A compiler that compiles the probe but cannot
    link it is an error: the flags are broken, and a silent one-thread build would hide it.
    The probe carries the sanitizer flags when CSOFTMAX_SANITIZE is set, as the extension does."""
    if os.environ.get("CSOFTMAX_NO_OPENMP", "") not in ("", "0"):
        print("csoftmax: building without OpenMP (CSOFTMAX_NO_OPENMP is set): the C core runs on one thread")
        return []
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "probe_omp.c"
        src.write_text(OPENMP_PROBE)
        try:
            objs = compiler.compile([str(src)], output_dir=tmp, extra_postargs=["-fopenmp"] + SANITIZE_FLAGS)
        except Exception as exc:
            warnings.warn(f"csoftmax: the compiler does not compile OpenMP code ({exc}); building without "
                          "OpenMP: the C core will run on one thread (set CSOFTMAX_NO_OPENMP=1 to say so on purpose)",
                          stacklevel=1)
            return []
        try:
            compiler.link_shared_object(objs, str(Path(tmp) / "probe_omp.so"),
                                        extra_postargs=["-fopenmp"] + SANITIZE_FLAGS)
        except Exception as exc:
            raise SystemExit(
                "csoftmax: the compiler compiles OpenMP code (-fopenmp) but linking it failed:\n"
                f"    {exc}\n"
                "The OpenMP runtime (libgomp, libomp) may be missing, or the link flags (LDFLAGS, LDSHARED) lack what "
                "CFLAGS need. Fix that, or build without OpenMP on purpose with CSOFTMAX_NO_OPENMP=1 (one thread)."
            ) from None
    return ["-fopenmp"]


class BuildExt(build_ext):
    def build_extensions(self):
        if self.compiler.compiler_type == "msvc":
            sys.exit("csoftmax's C core needs GCC or Clang (it uses their vector extensions)")
        if SANITIZE:
            print("csoftmax: building with AddressSanitizer + UndefinedBehaviorSanitizer (CSOFTMAX_SANITIZE is set): "
                  "run it with the runtime preloaded (LD_PRELOAD, see setup.py)")
        openmp = openmp_flags(self.compiler)
        self.quiet = [] if openmp else NO_OPENMP_WARNINGS  # placed after -Wall, which would turn them back on
        for ext in self.extensions:
            ext.extra_compile_args += openmp
            ext.extra_link_args += openmp
            # the project's own C: the dispatcher and the statistics records, and the kernel
            # builds -- one source, an object per (instruction set, dtype)
            for source in SCALAR_SOURCES:
                ext.extra_objects += self._compile(ext, source, self.build_temp, [])
            for isa, vector_bytes, flags in ISAS:
                for real in ("F32", "F64"):
                    macros = [("CSM_ISA", isa), ("CSM_VB", str(vector_bytes)), (f"CSM_REAL_{real}", "1")]
                    ext.extra_objects += self._compile(ext, KERNELS, Path(self.build_temp) / f"{isa}-{real.lower()}",
                                                       macros, flags)
        super().build_extensions()

    def _compile(self, ext, source, output_dir, macros, flags=()):
        return self.compiler.compile(
            [str(source)],
            output_dir=str(output_dir),
            include_dirs=ext.include_dirs,
            macros=ext.define_macros + macros,
            extra_postargs=ext.extra_compile_args + WARNINGS + self.quiet + list(flags),
            depends=ext.depends,
        )


class BuildPy(build_py):
    """Also place the CUDA kernel sources, and the headers they include, inside the package."""

    def run(self):
        super().run()
        target = Path(self.build_lib) / "csoftmax" / "_cuda_kernels"
        target.mkdir(parents=True, exist_ok=True)
        for src in sorted(CUDA_DIR.glob("*.cu")) + sorted((HERE / COMMON_DIR).glob("*.h")):
            shutil.copy2(src, target / src.name)


depends = sorted(str(p) for p in list(CPU_DIR.glob("*.h")) + list(COMMON_DIR.glob("*.h")))
extension = Extension(
    "csoftmax._ckernels",
    sources=["src/csoftmax/_ckernels.pyx"],  # the C sources: BuildExt
    include_dirs=[str(CPU_DIR), str(COMMON_DIR), numpy.get_include()],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
    + ([("CSM_BUILD_X86_ISAS", "1")] if IS_X86_64 else []),
    extra_compile_args=list(COMMON_FLAGS),
    extra_link_args=list(SANITIZE_FLAGS),
    depends=depends,
)

try:
    from Cython.Build import cythonize
except ImportError:  # pragma: no cover - build requirements name Cython
    sys.exit("building csoftmax needs Cython >= 3 (pip installs it from pyproject.toml)")

setup(
    ext_modules=cythonize([extension], compiler_directives={"language_level": "3"}),
    cmdclass={"build_ext": BuildExt, "build_py": BuildPy},
)
