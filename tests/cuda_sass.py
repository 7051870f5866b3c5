"""The CUDA kernels compiled as CuPy compiles them, and read back from the machine code:
registers, spills, and SASS instructions per element -- checks that need nvcc but no GPU.

CuPy hands NVRTC the backend's options (csoftmax._backends.cuda.compile_options) and
appends -ftz=true and the device's architecture; NVRTC's defaults are nvcc's (-fmad=true,
IEEE division and square root). `nvcc -cubin -arch=sm_90 -ftz=true` with the same options
therefore produces the code a Hopper GPU runs. Compiles run in parallel, a few hundred
instantiations per nvcc, and their reports are cached in the temporary directory by a hash
of the source, the names and the compiler.

Per-element counts use the difference method: two instantiations that differ only in the
entries each lane holds (E and 2E) are compiled, and the difference of their instruction
counts, divided by E, is the code that runs once per element (the per-row code cancels).
"""
from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from csoftmax._backends import cuda

ARCH = "sm_90"
# opcodes that run on the FP64 pipe or convert to or from double
FP64_OPS = ("DADD", "DMUL", "DFMA", "DSETP", "DMNMX", "DSET", "F2F.F64", "F2F.F32.F64", "I2F.F64", "F2I.F64",
            "MUFU.RCP64H", "MUFU.RSQ64H", "F2I.S64.F64", "F2I.U32.F64", "F2I.S32.F64")
CALL_OPS = ("CALL",)


def nvcc():
    return shutil.which("nvcc")


def cuobjdump():
    """cuobjdump from PATH or the nvidia-cuda-cuobjdump wheel."""
    found = shutil.which("cuobjdump")
    if found:
        return found
    for base in sys.path:
        for cand in Path(base).glob("nvidia/cu*/bin/cuobjdump"):
            return str(cand)
    return None


def _source(names):
    return cuda.kernel_source() + "\nvoid csm_instantiate_all() {\n" + "".join(f"    (void)&{n};\n" for n in names) + "}\n"


def _compile(names, workdir):
    """ptxas's report per kernel (registers, spill stores/loads, stack) and the SASS."""
    src = workdir / "k.cu"
    src.write_text(_source(names))
    cubin = workdir / "k.cubin"
    cmd = [nvcc(), "-std=c++17", f"-arch={ARCH}", "-cubin", "-ftz=true", "-Xptxas", "-v",
           *[f"-I{d}" for d in cuda.kernel_dirs()], str(src), "-o", str(cubin)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(res.stderr[-4000:])
    report = {}
    cur = None
    for line in res.stderr.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            cur = m.group(1)
            report[cur] = {}
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and cur:
            report[cur].update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        m = re.search(r"Used (\d+) registers", line)
        if m and cur:
            report[cur]["registers"] = int(m.group(1))
    sass = subprocess.run([cuobjdump(), "-sass", str(cubin)], capture_output=True, text=True, check=True).stdout
    counts, fn = {}, None
    for line in sass.splitlines():
        m = re.search(r"Function : (\w+)", line)
        if m:
            fn = m.group(1)
            counts[fn] = collections.Counter()
            continue
        m = re.match(r"\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", line)
        if m and fn:
            counts[fn][m.group(1)] += 1
    demangled = _demangle(list(report))
    out = {}
    for mangled, name in demangled.items():
        out[name] = dict(report[mangled], sass=dict(counts.get(mangled, {})))
    return out


def _demangle(symbols):
    cxxfilt = shutil.which("c++filt")
    if cxxfilt is None:
        raise RuntimeError("c++filt is needed to read kernel names")
    res = subprocess.run([cxxfilt], input="\n".join(symbols), capture_output=True, text=True, check=True)
    return {s: re.sub(r"\(.*", "", d).replace("void ", "", 1).strip() for s, d in zip(symbols, res.stdout.splitlines())}


def analyse(names, jobs=None):
    """{kernel name: {registers, spill_stores, spill_loads, stack, sass: {opcode: count}}}
    for the instantiations `names` (spelled as cuda.kernel_names spells them)."""
    names = list(dict.fromkeys(names))
    tool_id = subprocess.run([nvcc(), "--version"], capture_output=True, text=True).stdout
    headers = "".join(p.read_text() for d in cuda.kernel_dirs() for p in sorted(Path(d).glob("*.h")))
    key = hashlib.sha256((cuda.kernel_source() + headers + "\n".join(names) + tool_id + ARCH).encode()).hexdigest()[:16]
    cache = Path(tempfile.gettempdir()) / f"csoftmax-cuda-sass-{key}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    jobs = jobs or max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2))
    per = max(1, -(-len(names) // (jobs * 3)))
    parts = [names[i:i + per] for i in range(0, len(names), per)]
    result = {}
    with tempfile.TemporaryDirectory() as tmp, concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        dirs = []
        for i in range(len(parts)):
            d = Path(tmp) / str(i)
            d.mkdir()
            dirs.append(d)
        for part in pool.map(_compile, parts, dirs):
            result.update(part)
    tmpfile = cache.with_suffix(f".{os.getpid()}.tmp")
    tmpfile.write_text(json.dumps(result))
    os.replace(tmpfile, cache)
    return result


def _norm(name):
    return name.replace(" ", "")


def lookup(report, name):
    """The report of one instantiation (names compared without spaces)."""
    table = {_norm(k): v for k, v in report.items()}
    return table[_norm(name)]


def total(entry, ops=None):
    """Instructions in a kernel (or those whose opcode starts with one of `ops`); NOPs and
    the trailing BRA-to-self are not issued work and are left out."""
    n = 0
    for op, c in entry["sass"].items():
        if op == "NOP":
            continue
        if ops is None or any(op == o or op.startswith(o + ".") for o in ops):
            n += c
    return n


def register_bound(name):
    """The most registers a kernel may use: what its launch bounds leave (CUDA rounds the
    per-thread allocation down to a multiple of 8, at most 255)."""
    base, args = name.split("<", 1)
    params = [p.strip() for p in args.rstrip(">").split(",")]
    if base in ("csm_fwd_rows", "csm_xent_rows", "csm_bwd_rows"):
        g = int(params[1])
        block = 256 if g <= 32 else g
        resident = 512 if base == "csm_bwd_rows" else 768
        minb = max(1, resident // block)
    elif base == "csm_bwd_long":
        block, minb = 512, 1
    elif base == "csm_fwd_cols":
        block, minb = 256, 1
    else:
        block, minb = 256, 1
    return min(255, (65536 // (block * minb)) // 8 * 8)
