"""Build of csoftmax's compiled core.

One extension, csoftmax._ckernels: the Cython wrapper, the dispatcher, and the C kernels
(src/backends/cpu/csm_kernels.c) compiled once per instruction set and dtype. On x86-64
the kernel source is compiled six times -- baseline (SSE2), AVX2+FMA and AVX-512, each
for float and double -- with its instruction set's flags, and the best build the CPU
runs is chosen at import. Elsewhere only the baseline builds exist (the kernels use
GCC/Clang vector extensions, so that is NEON on arm64).

Flags: -O3 and -ffp-contract=off (the kernels' error-free transformations must not be
fused behind their back); OpenMP where the compiler has it; the project's own C sources
with -Wall -Wextra -Wshadow (CSOFTMAX_WERROR=1 makes their warnings errors, as CI does;
the Cython-generated file is left out). Never -ffast-math: it breaks inf/NaN semantics.

The CUDA kernel source (src/backends/cuda/*.cu) and the headers it shares with the C core
(src/backends/common/*.h) are copied into the package as csoftmax/_cuda_kernels/ so the
wheel carries them; CuPy compiles them at first use.
"""
import os
import platform
import shutil
import sys
import tempfile
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
COMMON_FLAGS = ["-O3", "-ffp-contract=off"]
# the project's own C sources: warn loudly (and fail on a warning when CI asks)
WARNINGS = ["-Wall", "-Wextra", "-Wshadow"] + (["-Werror"] if os.environ.get("CSOFTMAX_WERROR") == "1" else [])
# the kernel builds: (name, bytes per vector, compiler flags), lowest first
ISAS = [("baseline", 16, [])] + (
    [("avx2", 32, ["-mavx2", "-mfma"]), ("avx512", 64, ["-mavx512f", "-mavx512dq", "-mfma"])] if IS_X86_64 else []
)
KERNELS = CPU_DIR / "csm_kernels.c"
SCALAR_SOURCES = [CPU_DIR / "csm_dispatch.c", CPU_DIR / "csm_stats.c"]  # compiled once, baseline flags


def compiler_accepts(compiler, flags):
    """Whether the compiler compiles and links a trivial program with these flags."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "probe.c"
        src.write_text("int main(void) { return 0; }\n")
        try:
            objs = compiler.compile([str(src)], output_dir=tmp, extra_postargs=flags)
            compiler.link_executable(objs, str(Path(tmp) / "probe"), extra_postargs=flags)
        except Exception:
            return False
    return True


class BuildExt(build_ext):
    def build_extensions(self):
        if self.compiler.compiler_type == "msvc":
            sys.exit("csoftmax's C core needs GCC or Clang (it uses their vector extensions)")
        openmp = os.environ.get("CSOFTMAX_NO_OPENMP", "") == "" and compiler_accepts(self.compiler, ["-fopenmp"])
        for ext in self.extensions:
            if openmp:
                ext.extra_compile_args += ["-fopenmp"]
                ext.extra_link_args += ["-fopenmp"]
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
            extra_postargs=ext.extra_compile_args + WARNINGS + list(flags),
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
    extra_link_args=[],
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
