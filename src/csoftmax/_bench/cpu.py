"""CPU benchmark: csoftmax against NumPy's stable formula, scipy.special and torch (CPU,
the same thread count), forward, log, backward and cross-entropy, float32 and float64.

Implementations alternate within each round (the machines are shared and noisy), each
timing is the median over rounds, and every figure is reported next to its peers from
the same run: times, GB/s (one read and one write of the array; backward: two reads,
one write; cross-entropy: the logits read, the gradient written) and ratios. A copy of
the same bytes (torch's copy_, threaded; NumPy's, one thread) gives the memory system's
ceiling.

Shape sets (--shapes NAME, or a list such as 4096x4096,4096x4096:0):
  default  the shapes of the speed issues, from (10,) to (1, 16e6) and a strided axis
  quick    a row-length sweep at 2^20 elements per array (with --quick: under a minute)
  sweep    n = 8 .. 32768 at 2^22 elements per array (run it with --threads 1,2)

    python -m csoftmax bench                       # default shapes, the core's threads
    python -m csoftmax bench --quick --plot bench.png
    python -m csoftmax bench --shapes sweep --threads 1,2 --csv sweep.csv
    python benchmarks/bench_cpu.py --threads 1 --ops softmax --shapes 4096x4096

torch and scipy are optional (their columns are left out when missing).
"""
from __future__ import annotations

import gc
import importlib
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import csoftmax

from . import common
from .common import Record, Shape

OPS = ("softmax", "log_softmax", "softmax_backward", "log_softmax_backward", "softmax_cross_entropy")
DTYPES = ("float32", "float64")
SHAPE_SETS: dict[str, list[Shape]] = {
    "default": [
        ((10,), -1),
        ((1000,), -1),
        ((64, 1000), -1),
        ((4096, 128), -1),
        ((1024, 4096), -1),
        ((4096, 4096), -1),
        ((256, 32768), -1),
        ((8, 1_000_000), -1),
        ((1, 16_000_000), -1),
        ((4096, 4096), 0),
    ],
    "quick": common.sweep([16, 128, 1024, 8192, 65536], 2**20),
    "sweep": common.sweep([8, 16, 32, 64, 128, 256, 512, 1000, 4096, 32768], 2**22),
}
# what --quick runs (on the "quick" shapes)
QUICK: dict[str, Any] = {"ops": ("softmax", "log_softmax", "softmax_backward", "softmax_cross_entropy"),
                         "dtypes": ("float32",), "rounds": 5}


def _peers() -> tuple[Any, Any, Any]:
    """(threadpoolctl, torch, scipy.special), each None when it is not installed."""
    mods: list[Any] = []
    for name in ("threadpoolctl", "torch", "scipy.special"):
        try:
            mods.append(importlib.import_module(name))
        except ImportError:
            mods.append(None)
    return mods[0], mods[1], mods[2]


def machine() -> str:
    """The CPU's model, its logical CPUs and the instruction set csoftmax selected (after
    CSOFTMAX_ISA)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    from .. import _ckernels as ck
    from .._backends import c  # applies CSOFTMAX_ISA

    names = ck.isa_names()
    return (f"{cpu}, {os.cpu_count()} logical CPUs; csoftmax instruction set selected: "
            f"{names[ck.get_isa()]}{c.isa_note()} (of {', '.join(c.supported_isas())} supported)")


# ---- the peers' formulas ---------------------------------------------------------------------
def numpy_softmax(x: np.ndarray, axis: int) -> Any:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def numpy_log_softmax(x: np.ndarray, axis: int) -> Any:
    t = x - x.max(axis=axis, keepdims=True)
    return t - np.log(np.exp(t).sum(axis=axis, keepdims=True))


def numpy_softmax_backward(g: np.ndarray, y: np.ndarray, axis: int) -> Any:
    return y * (g - (g * y).sum(axis=axis, keepdims=True))


def numpy_log_softmax_backward(g: np.ndarray, y: np.ndarray, axis: int) -> Any:
    return g - np.exp(y) * g.sum(axis=axis, keepdims=True)


def numpy_cross_entropy(x: np.ndarray, labels: np.ndarray) -> tuple[Any, Any]:
    """Mean loss and its gradient over rows of x (classes along the last axis)."""
    t = x - x.max(axis=-1, keepdims=True)
    e = np.exp(t)
    s = e.sum(axis=-1, keepdims=True)
    rows = np.arange(x.shape[0])
    loss = np.mean(np.log(s[:, 0]) - t[rows, labels])
    grad = e / s
    grad[rows, labels] -= 1.0
    grad /= x.shape[0]
    return loss, grad


Impls = dict[str, Callable[[], Any]]


def implementations(op: str, x: np.ndarray, axis: int, torch: Any, scipy_special: Any,
                    g: np.ndarray | None = None, y: np.ndarray | None = None,
                    labels: np.ndarray | None = None) -> Impls:
    """name -> a zero-argument callable doing one call of op, for csoftmax and each peer."""
    impls: Impls = {}
    out = np.empty_like(x)
    if op in ("softmax", "log_softmax"):
        f = getattr(csoftmax, op)
        impls["csoftmax"] = lambda: f(x, axis=axis)
        impls["csoftmax out="] = lambda: f(x, axis=axis, out=out)
        npf = numpy_softmax if op == "softmax" else numpy_log_softmax
        impls["numpy"] = lambda: npf(x, axis)
        if scipy_special is not None:
            sf = getattr(scipy_special, op)
            impls["scipy"] = lambda: sf(x, axis=axis)
        if torch is not None:
            tf = getattr(torch, op)
            impls["torch"] = lambda: tf(torch.from_numpy(x), dim=axis)
            aten = torch.ops.aten._softmax.out if op == "softmax" else torch.ops.aten._log_softmax.out
            tout = torch.from_numpy(out)
            impls["torch out="] = lambda: aten(torch.from_numpy(x), axis, False, out=tout)
    elif op == "softmax_cross_entropy":
        impls["csoftmax"] = lambda: csoftmax.softmax_cross_entropy(x, labels, return_grad=True)
        impls["numpy"] = lambda: numpy_cross_entropy(x, labels)  # type: ignore[arg-type]
        if torch is not None:
            tx, tl = torch.from_numpy(x), torch.from_numpy(labels)

            def torch_xent() -> Any:
                t = tx.detach().requires_grad_(True)
                torch.nn.functional.cross_entropy(t, tl).backward()
                return t.grad

            impls["torch"] = torch_xent
    else:
        fwd = op.replace("_backward", "")
        bf = getattr(csoftmax, op)
        impls["csoftmax"] = lambda: bf(g, y, axis=axis)
        impls["csoftmax out="] = lambda: bf(g, y, axis=axis, out=out)
        npb = numpy_softmax_backward if fwd == "softmax" else numpy_log_softmax_backward
        impls["numpy"] = lambda: npb(g, y, axis)  # type: ignore[arg-type]
        if torch is not None:
            gt, yt = torch.from_numpy(g), torch.from_numpy(y)
            aten = (torch.ops.aten._softmax_backward_data if fwd == "softmax"
                    else torch.ops.aten._log_softmax_backward_data)
            impls["torch"] = lambda: aten(gt, yt, axis, gt.dtype)
    if torch is not None:
        tx2, tout2 = torch.from_numpy(x), torch.from_numpy(np.empty_like(x))
        impls["copy (torch, threads)"] = lambda: tout2.copy_(tx2)
    impls["copy (numpy, 1 thread)"] = lambda: np.copyto(out, x)
    return impls


def time_round(fn: Callable[[], Any], inner: int) -> float:
    t = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - t) / inner


def bytes_moved(op: str, x: np.ndarray) -> int:
    """Bytes one call must move: backward passes read two arrays and write one; the others
    read one and write one (cross-entropy: the logits and the gradient)."""
    return x.nbytes * (3 if op.endswith("backward") else 2)


def bench_case(op: str, shape: tuple[int, ...], axis: int, dtype: str, rounds: int, rng: np.random.Generator,
               torch: Any, scipy_special: Any) -> tuple[dict[str, float], int, int]:
    """Median seconds per implementation, the bytes of csoftmax's call, and a copy's bytes."""
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    g = y = labels = None
    if op.endswith("backward"):
        g = rng.standard_normal(shape).astype(dtype)
        y = getattr(csoftmax, op.replace("_backward", ""))(x, axis=axis)
    if op == "softmax_cross_entropy":
        labels = rng.integers(0, shape[-1], size=shape[:-1])
    impls = implementations(op, x, axis, torch, scipy_special, g, y, labels)
    inner = {}
    for name, fn in impls.items():  # calibrate: enough calls per timing for ~2 ms
        fn()
        t = time_round(fn, 1)
        inner[name] = max(1, min(10000, int(2e-3 / max(t, 1e-7))))
    times: dict[str, list[float]] = {name: [] for name in impls}
    for _ in range(rounds):
        for name, fn in impls.items():  # alternate implementations within a round
            times[name].append(time_round(fn, inner[name]))
    return {name: statistics.median(ts) for name, ts in times.items()}, bytes_moved(op, x), 2 * x.nbytes


def cases(ops: list[str], dtypes: list[str], shapes: list[Shape], threads: list[int]) -> list[tuple[Any, ...]]:
    """(threads, op, dtype, shape, axis) of a run; cross-entropy takes 2-d shapes along the
    last axis only (one label per row)."""
    out = []
    for nt in threads:
        for op in ops:
            for dtype in dtypes:
                for shape, axis in shapes:
                    if op == "softmax_cross_entropy" and (len(shape) != 2 or axis % 2 != 1):
                        continue
                    out.append((nt, op, dtype, shape, axis))
    return out


def run(ops: list[str], dtypes: list[str], shapes: list[Shape], threads: list[int], rounds: int,
        progress: bool = True, echo: Callable[[str], None] = print) -> tuple[dict[str, Any], list[Record]]:
    """Time every case; echo a line per case; return (header, records)."""
    threadpoolctl, torch, scipy_special = _peers()
    header = {
        "machine": machine(),
        "threads": threads,
        "rounds": rounds,
        "numpy": np.__version__,
        "torch": torch.__version__ if torch is not None else None,
        "scipy": _version("scipy") if scipy_special is not None else None,
        "csoftmax": csoftmax.__version__,
    }
    echo(f"machine: {header['machine']}")
    echo(f"threads: {','.join(map(str, threads))}; median of {rounds} rounds; numpy {np.__version__}; "
         f"torch {header['torch'] or 'absent'}; scipy {header['scipy'] or 'absent'}")
    todo = cases(ops, dtypes, shapes, threads)
    bar = common.Progress(len(todo), enabled=progress)
    rng = np.random.default_rng(0)
    records: list[Record] = []
    limiter = None
    current = None
    try:
        for nt, op, dtype, shape, axis in todo:
            if nt != current:
                if limiter is not None:
                    limiter.unregister()
                limiter = threadpoolctl.threadpool_limits(nt) if threadpoolctl is not None else None
                if torch is not None:
                    torch.set_num_threads(nt)
                current = nt
            sname = "x".join(map(str, shape))
            bar.step(f"{op} {dtype} {sname} axis {axis}, {nt} thread{'s' if nt != 1 else ''}")
            gc.collect()
            med, nbytes, copy_bytes = bench_case(op, shape, axis, dtype, rounds, rng, torch, scipy_special)
            ours = med["csoftmax"]
            n = shape[axis]
            for impl, t in med.items():
                base = med.get("csoftmax out=", ours) if "out=" in impl else ours
                moved = copy_bytes if impl.startswith("copy") else nbytes
                records.append(Record("cpu", op, dtype, sname, axis, n, nt, impl, t, moved / t / 1e9, t / base))
            echo(_line(op, dtype, sname, axis, nt, med, nbytes, copy_bytes))
    finally:
        bar.close()
        if limiter is not None:
            limiter.unregister()
    return header, records


def _version(dist: str) -> str | None:
    from .._config import library_version

    return library_version(dist)


def _line(op: str, dtype: str, sname: str, axis: int, nt: int, med: dict[str, float], nbytes: int,
          copy_bytes: int) -> str:
    ours = med["csoftmax"]
    text = f"{op:>21} {dtype:>7} {sname:>12} ax{axis:>2} t{nt}  csoftmax {common.fmt_time(ours):>10} " \
           f"({nbytes / ours / 1e9:5.1f} GB/s"
    if "csoftmax out=" in med:
        text += f", out= {nbytes / med['csoftmax out='] / 1e9:5.1f}"
    text += ")"
    for peer in ("numpy", "scipy", "torch", "torch out="):
        if peer in med:
            base = med["csoftmax out="] if "out=" in peer else ours
            text += f"  {peer} x{med[peer] / base:.2f}"
    copy = med.get("copy (torch, threads)")
    if copy is not None:
        mine = med.get("csoftmax out=", ours)
        text += f"  copy {copy_bytes / copy / 1e9:.1f} GB/s, out=/copy {(nbytes / mine) / (copy_bytes / copy):.2f}"
    return text


# ---- the Markdown table of RESULTS.md ------------------------------------------------------
MARKDOWN_COLUMNS = ["op", "dtype", "shape", "axis", "threads", "csoftmax", "GB/s", "GB/s out=", "x numpy", "x scipy",
                    "x torch", "x torch out=", "copy GB/s", "out= / copy"]


def markdown_rows(records: list[Record]) -> list[dict[str, str]]:
    """One row per case, in the columns of benchmarks/RESULTS.md."""
    cases_: dict[tuple[Any, ...], dict[str, Record]] = {}
    for r in records:
        cases_.setdefault((r.op, r.dtype, r.shape, r.axis, r.threads), {})[r.impl] = r
    rows = []
    for (op, dtype, shape, axis, nt), by in cases_.items():
        ours = by["csoftmax"]
        row = {"op": op, "dtype": dtype, "shape": shape, "axis": str(axis), "threads": str(nt),
               "csoftmax": common.fmt_time(ours.seconds), "GB/s": f"{ours.gbps:.1f}"}
        if "csoftmax out=" in by:
            row["GB/s out="] = f"{by['csoftmax out='].gbps:.1f}"
        for peer in ("numpy", "scipy", "torch", "torch out="):
            if peer in by:
                row[f"x {peer}"] = f"{by[peer].ratio:.2f}"
        copy = by.get("copy (torch, threads)")
        if copy is not None:
            row["copy GB/s"] = f"{copy.gbps:.1f}"
            row["out= / copy"] = f"{by.get('csoftmax out=', ours).gbps / copy.gbps:.2f}"
        rows.append(row)
    return rows


def default_threads() -> int:
    """The C core's thread count here (OpenMP's, after OMP_NUM_THREADS)."""
    from .. import _ckernels as ck
    from .._backends import c  # noqa: F401  (the adapter sets the core up)

    return max(1, int(ck.max_threads()))

