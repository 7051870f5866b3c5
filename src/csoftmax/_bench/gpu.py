"""GPU benchmark: csoftmax's CUDA kernels against torch and cupyx.scipy.special on the
same device, each as a fraction of a device-to-device copy of the same bytes measured in
the same run (the physical limit of a memory-bound op).

Default cases: every input has 2^27 elements (far larger than L2), split into rows of
32 .. 1M entries, plus (4, 16M) and a softmax along a non-last axis; float16 and float32;
softmax over all of them, log_softmax, softmax_backward and cross-entropy with its
gradient at rows of 1024 and 32768. --ops/--dtypes narrow that list; --shapes replaces
the shapes (every op then runs on each). Timings are CUDA events around 10 back-to-back
calls (so host overhead overlaps the GPU's work, as in a training step) after warm-up,
median of repeats, implementations alternating within each repeat; the (10,) per-call
figure is host wall time, launch overhead included. Bytes counted: every array read once
and written once (forward: x in, y out; backward: g and y in, dx out; cross-entropy:
logits in, gradient out).

    python -m csoftmax bench --device gpu [--repeats 20] [--dtypes float16,float32]
    python benchmarks/bench_gpu.py [--repeats 20] [--markdown out.md] [--json out.json]
    python benchmarks/bench_gpu.py --profile   # a few shapes, each called twice, untimed (Nsight Compute)

Needs CuPy and a CUDA GPU; torch and cupyx are optional peers.
"""
from __future__ import annotations

import importlib
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import csoftmax

from . import common
from .common import Record, Shape

ELEMS = 2**27
ROWS = [32, 128, 512, 1024, 2048, 4096, 16384, 65536, 262144, 1048576]
OPS = ("softmax", "log_softmax", "softmax_backward", "softmax_cross_entropy")
DTYPES = ("float16", "float32")
SHAPE_SETS: dict[str, list[Shape]] = {
    "default": common.sweep(ROWS, ELEMS) + [((4, 16 * 2**20), -1), ((4096, ELEMS // 4096), 0)],
    "quick": common.sweep([128, 1024, 16384, 262144], 2**24),
    "sweep": common.sweep(ROWS, ELEMS),
}
# the ops other than softmax run on these rows in the default case list
OTHER_OPS_ROWS = (1024, 32768)
INNER = 10  # calls between one pair of events: the GPU stays busy, host overhead hides


def _peers() -> tuple[Any, Any]:
    """(torch with CUDA, cupyx.scipy.special), each None when missing."""
    torch: Any
    cupyx_special: Any
    try:
        torch = importlib.import_module("torch")
        if not torch.cuda.is_available():
            torch = None
    except ImportError:
        torch = None
    try:
        cupyx_special = importlib.import_module("cupyx.scipy.special")
    except ImportError:
        cupyx_special = None
    return torch, cupyx_special


def time_gpu(cupy: Any, fn: Callable[[], Any], repeats: int) -> list[float]:
    """Seconds per call: CUDA events around INNER back-to-back calls, `repeats` times."""
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    out = []
    for _ in range(repeats):
        start.record()
        for _ in range(INNER):
            fn()
        end.record()
        end.synchronize()
        out.append(cupy.cuda.get_elapsed_time(start, end) * 1e-3 / INNER)
    return out


def cases(ops: list[str], dtypes: list[str], shapes: list[Shape] | None) -> list[tuple[str, str, tuple[int, ...], int]]:
    """(op, dtype, shape, axis): the default list (softmax on every default shape, the
    other ops on rows of OTHER_OPS_ROWS), or every op on the shapes given."""
    out = []
    for dt in dtypes:
        if shapes is None:
            for shape, axis in SHAPE_SETS["default"]:
                if "softmax" in ops:
                    out.append(("softmax", dt, shape, axis))
            for n in OTHER_OPS_ROWS:
                out += [(op, dt, (ELEMS // n, n), -1) for op in OPS[1:] if op in ops]
        else:
            for op in ops:
                for shape, axis in shapes:
                    if op == "softmax_cross_entropy" and (len(shape) != 2 or axis % 2 != 1):
                        continue
                    out.append((op, dt, shape, axis))
    return out


def _implementations(cupy: Any, torch: Any, cupyx_special: Any, op: str, x: Any, axis: int,
                     rng: Any) -> tuple[dict[str, Callable[[], Any]], int]:
    impls: dict[str, Callable[[], Any]] = {}
    nbytes = 2 * x.nbytes
    if op in ("softmax", "log_softmax"):
        f = getattr(csoftmax, op)
        impls["csoftmax"] = lambda: f(x, axis=axis)
        if torch is not None:
            tx = torch.from_dlpack(x)
            tf = getattr(torch, op)
            impls["torch"] = lambda: tf(tx, dim=axis)
        if cupyx_special is not None and op == "softmax":
            impls["cupyx"] = lambda: cupyx_special.softmax(x, axis=axis)
    elif op == "softmax_backward":
        g = rng.standard_normal(x.shape, dtype=cupy.float32).astype(x.dtype)
        y = csoftmax.softmax(x, axis=axis)
        nbytes = 3 * x.nbytes
        impls["csoftmax"] = lambda: csoftmax.softmax_backward(g, y, axis=axis)
        if torch is not None:
            tg, ty = torch.from_dlpack(g), torch.from_dlpack(y)
            impls["torch"] = lambda: torch.ops.aten._softmax_backward_data(tg, ty, axis % x.ndim, tg.dtype)
    else:
        labels = rng.integers(0, x.shape[1], size=x.shape[0]).astype(cupy.int64)
        impls["csoftmax"] = lambda: csoftmax.softmax_cross_entropy(x, labels, return_grad=True)
        if torch is not None:
            tx, tl = torch.from_dlpack(x), torch.from_dlpack(labels)

            def torch_xent() -> Any:
                t = tx.detach().requires_grad_(True)
                torch.nn.functional.cross_entropy(t, tl).backward()
                return t.grad

            impls["torch"] = torch_xent
    return impls, nbytes


def run(ops: list[str], dtypes: list[str], shapes: list[Shape] | None, repeats: int, progress: bool = True,
        echo: Callable[[str], None] = print) -> tuple[dict[str, Any], list[Record]]:
    """Time every case on the current device; echo a line per case; (header, records)."""
    cupy = importlib.import_module("cupy")
    torch, cupyx_special = _peers()
    dev = cupy.cuda.Device()
    name = cupy.cuda.runtime.getDeviceProperties(dev.id)["name"].decode()
    header = {"gpu": name, "repeats": repeats, "cupy": cupy.__version__,
              "torch": torch.__version__ if torch is not None else None, "csoftmax": csoftmax.__version__}
    echo(f"GPU: {name}; median of {repeats} CUDA-event timings; cupy {cupy.__version__}; "
         f"torch {header['torch'] or 'absent'}")
    todo = cases(ops, dtypes, shapes)
    bar = common.Progress(len(todo), enabled=progress)
    rng = cupy.random.default_rng(0)
    records: list[Record] = []
    try:
        for op, dt, shape, axis in todo:
            sname = "x".join(map(str, shape))
            bar.step(f"{op} {dt} {sname} axis {axis}")
            x = (rng.standard_normal(shape, dtype=cupy.float32) * 3).astype(dt)
            impls, nbytes = _implementations(cupy, torch, cupyx_special, op, x, axis, rng)
            dst = cupy.empty(nbytes // 2, dtype=cupy.uint8)
            src = cupy.empty(nbytes // 2, dtype=cupy.uint8)
            impls["copy"] = lambda: dst.__setitem__(Ellipsis, src)
            for fn in impls.values():  # warm-up: compilation, allocation pools
                fn()
            dev.synchronize()
            times: dict[str, list[float]] = {k: [] for k in impls}
            for _ in range(repeats):
                for k, fn in impls.items():
                    times[k] += time_gpu(cupy, fn, 1)
            med = {k: statistics.median(v) for k, v in times.items()}
            copy_bw = (nbytes // 2) * 2 / med["copy"]
            for k, t in med.items():
                moved = (nbytes // 2) * 2 if k == "copy" else nbytes
                records.append(Record(name, op, dt, sname, axis, shape[axis], 0, k, t, moved / t / 1e9,
                                      t / med["csoftmax"]))
            echo(f"{op:>22} {dt:>7} {sname:>16} ax{axis:>2}  " + "  ".join(
                f"{k}: {t * 1e6:.1f} us, {nbytes / t / copy_bw:.0%} of copy" for k, t in med.items() if k != "copy"))
            del x, dst, src, impls
            cupy.get_default_memory_pool().free_all_blocks()
    finally:
        bar.close()
    header["per_call_10_s"] = _per_call(cupy, torch, cupyx_special, echo)
    return header, records


def profile() -> None:
    """A few representative shapes, each softmax called twice along both axes and not
    timed: the run to put under Nsight Compute (`ncu --launch-skip ... python -m
    csoftmax bench --device gpu --profile`)."""
    cupy = importlib.import_module("cupy")
    rng = cupy.random.default_rng(0)
    for shape, dt in (((ELEMS // 1024, 1024), "float32"), ((ELEMS // 16384, 16384), "float32"),
                      ((ELEMS // 1024, 1024), "float16"), ((4096, ELEMS // 4096), "float32")):
        x = (rng.standard_normal(shape, dtype=cupy.float32) * 3).astype(dt)
        for _ in range(2):
            csoftmax.softmax(x, axis=-1)
            csoftmax.softmax(x, axis=0)
        cupy.cuda.Device().synchronize()
        del x
        cupy.get_default_memory_pool().free_all_blocks()


def _per_call(cupy: Any, torch: Any, cupyx_special: Any, echo: Callable[[str], None]) -> dict[str, float]:
    """Host wall time in seconds of one call on a (10,) array, launch overhead included,
    per implementation."""
    out: dict[str, float] = {}
    x10 = cupy.asarray(np.random.default_rng(0).standard_normal(10))
    calls: dict[str, Callable[[], Any]] = {"csoftmax": lambda: csoftmax.softmax(x10)}
    if torch is not None:
        t10 = torch.from_dlpack(x10)
        calls["torch"] = lambda: torch.softmax(t10, -1)
    if cupyx_special is not None:
        calls["cupyx"] = lambda: cupyx_special.softmax(x10)
    for k, fn in calls.items():
        for _ in range(100):
            fn()
        cupy.cuda.Device().synchronize()
        t = time.perf_counter()
        for _ in range(2000):
            fn()
        cupy.cuda.Device().synchronize()
        out[k] = (time.perf_counter() - t) / 2000
        echo(f"(10,) float64 per call, {k}: {out[k] * 1e6:.1f} us")
    return out


MARKDOWN_COLUMNS = ["op", "dtype", "shape", "axis", "csoftmax", "torch", "cupyx"]


def markdown_rows(records: list[Record]) -> list[dict[str, str]]:
    """One row per case: each implementation's time and its fraction of the copy."""
    by_case: dict[tuple[Any, ...], dict[str, Record]] = {}
    for r in records:
        by_case.setdefault((r.op, r.dtype, r.shape, r.axis), {})[r.impl] = r
    rows = []
    for (op, dt, shape, axis), by in by_case.items():
        row = {"op": op, "dtype": dt, "shape": shape, "axis": str(axis)}
        copy = by["copy"]
        for k, r in by.items():
            if k != "copy":
                row[k] = f"{r.seconds * 1e6:.1f} us, {r.gbps / copy.gbps:.0%} of copy"
        rows.append(row)
    return rows
