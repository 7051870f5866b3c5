"""CPU benchmark: csoftmax against NumPy's stable formula, scipy.special and torch (CPU,
same thread count), over the shapes of the speed issue, float32 and float64, forward,
log and backward.

Implementations alternate within each round (the machines are shared and noisy), each
timing is the median over rounds, and every figure is reported next to its peers from
the same run: times, GB/s (one read and one write of the array; backward: two reads, one
write) and ratios. A two-thread copy of the same bytes (torch's copy_, threaded) and a
one-thread NumPy copy give the memory system's ceiling.

    python benchmarks/bench_cpu.py                   # everything, 2 threads
    python benchmarks/bench_cpu.py --quick           # fewer shapes and rounds
    python benchmarks/bench_cpu.py --threads 1 --ops softmax --shapes 4096x4096
    python benchmarks/bench_cpu.py --markdown out.md # also write the table as Markdown

torch and scipy are optional (their columns are left out when missing).
"""
from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import statistics
import sys
import time

import numpy as np

import csoftmax

try:
    import threadpoolctl
except ImportError:  # pragma: no cover
    threadpoolctl = None

try:
    import torch
except ImportError:
    torch = None

try:
    import scipy.special as scipy_special
except ImportError:
    scipy_special = None

SHAPES = [
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
]
QUICK = [((10,), -1), ((64, 1000), -1), ((1024, 4096), -1), ((4096, 4096), -1), ((1, 16_000_000), -1), ((4096, 4096), 0)]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    from csoftmax import _ckernels as ck

    return f"{cpu}, {os.cpu_count()} logical CPUs, csoftmax ISA {ck.isa_names()[ck.get_isa()]}"


# ---- implementations: each returns a zero-argument callable doing one call ------------------
def numpy_softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def numpy_log_softmax(x, axis):
    t = x - x.max(axis=axis, keepdims=True)
    return t - np.log(np.exp(t).sum(axis=axis, keepdims=True))


def numpy_softmax_backward(g, y, axis):
    return y * (g - (g * y).sum(axis=axis, keepdims=True))


def numpy_log_softmax_backward(g, y, axis):
    return g - np.exp(y) * g.sum(axis=axis, keepdims=True)


def implementations(op, x, axis, g=None, y=None):
    impls = {}
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
    else:
        fwd = op.replace("_backward", "")
        f = getattr(csoftmax, op)
        impls["csoftmax"] = lambda: f(g, y, axis=axis)
        impls["csoftmax out="] = lambda: f(g, y, axis=axis, out=out)
        npf = numpy_softmax_backward if fwd == "softmax" else numpy_log_softmax_backward
        impls["numpy"] = lambda: npf(g, y, axis)
        if torch is not None:
            gt, yt = torch.from_numpy(g), torch.from_numpy(y)
            aten = (torch.ops.aten._softmax_backward_data if fwd == "softmax"
                    else torch.ops.aten._log_softmax_backward_data)
            dt = gt.dtype
            impls["torch"] = lambda: aten(gt, yt, axis, dt)
    if torch is not None:
        tx, tout2 = torch.from_numpy(x), torch.from_numpy(np.empty_like(x))
        impls["copy (torch, threads)"] = lambda: tout2.copy_(tx)
    impls["copy (numpy, 1 thread)"] = lambda: np.copyto(out, x)
    return impls


def time_round(fn, inner):
    t = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - t) / inner


def bench_case(op, shape, axis, dtype, rounds, rng):
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    g = y = None
    if op.endswith("backward"):
        fwd = op.replace("_backward", "")
        g = rng.standard_normal(shape).astype(dtype)
        y = getattr(csoftmax, fwd)(x, axis=axis)
    impls = implementations(op, x, axis, g, y)
    # calibrate: enough calls per timing for ~2 ms
    inner = {}
    for name, fn in impls.items():
        fn()
        t = time_round(fn, 1)
        inner[name] = max(1, min(10000, int(2e-3 / max(t, 1e-7))))
    times = {name: [] for name in impls}
    for _ in range(rounds):
        for name, fn in impls.items():  # alternate implementations within a round
            times[name].append(time_round(fn, inner[name]))
    nbytes = x.nbytes * (3 if g is not None else 2)
    return {name: statistics.median(ts) for name, ts in times.items()}, nbytes


def fmt_time(t):
    return f"{t * 1e6:.1f} us" if t < 1e-3 else f"{t * 1e3:.2f} ms"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--ops", default="softmax,log_softmax,softmax_backward,log_softmax_backward")
    ap.add_argument("--dtypes", default="float32,float64")
    ap.add_argument("--shapes", default=None, help="e.g. 4096x4096,1x16000000 (axis -1); append :0 for axis 0")
    ap.add_argument("--markdown", default=None)
    args = ap.parse_args(argv)

    shapes = QUICK if args.quick else SHAPES
    if args.shapes:
        shapes = []
        for s in args.shapes.split(","):
            dims, _, ax = s.partition(":")
            shapes.append((tuple(int(d) for d in dims.split("x")), int(ax) if ax else -1))
    rounds = 5 if args.quick else args.rounds
    if torch is not None:
        torch.set_num_threads(args.threads)
    limiter = threadpoolctl.threadpool_limits(args.threads) if threadpoolctl else None
    rng = np.random.default_rng(0)
    rows = []
    header = f"machine: {machine()}; threads: {args.threads}; median of {rounds} rounds; torch {torch.__version__ if torch else 'absent'}"
    print(header)
    for op in args.ops.split(","):
        for dtype in args.dtypes.split(","):
            for shape, axis in shapes:
                gc.collect()
                med, nbytes = bench_case(op, shape, axis, np.dtype(dtype), rounds, rng)
                ours = med["csoftmax"]
                line = {
                    "op": op, "dtype": dtype, "shape": "x".join(map(str, shape)), "axis": axis,
                    "csoftmax": ours, "GB/s": nbytes / ours / 1e9,
                    "out=": med["csoftmax out="], "GB/s out=": nbytes / med["csoftmax out="] / 1e9,
                }
                for peer in ("numpy", "scipy", "torch", "torch out="):
                    if peer in med:
                        line[peer] = med[peer]
                        line[f"x {peer}"] = med[peer] / (ours if "out=" not in peer else med["csoftmax out="])
                copy = med.get("copy (torch, threads)")
                if copy is not None:
                    # the copy moves one read and one write of x; compare like for like
                    line["copy GB/s"] = 2 * x_bytes(shape, dtype) / copy / 1e9
                    line["out= / copy"] = (nbytes / med["csoftmax out="]) / (2 * x_bytes(shape, dtype) / copy)
                rows.append(line)
                print(
                    f"{op:>21} {dtype:>7} {line['shape']:>12} ax{axis:>2}  csoftmax {fmt_time(ours):>10} "
                    f"({line['GB/s']:5.1f} GB/s, out= {line['GB/s out=']:5.1f})"
                    + "".join(f"  {p} x{line['x ' + p]:.2f}" for p in ("numpy", "scipy", "torch", "torch out=")
                              if "x " + p in line)
                    + (f"  copy {line['copy GB/s']:.1f} GB/s, out=/copy {line['out= / copy']:.2f}" if copy else ""),
                    flush=True,
                )
    if limiter is not None:
        limiter.unregister()
    if args.markdown:
        write_markdown(args.markdown, header, rows)


def x_bytes(shape, dtype):
    return math.prod(shape) * np.dtype(dtype).itemsize


def write_markdown(path, header, rows):
    cols = ["op", "dtype", "shape", "axis", "csoftmax", "GB/s", "GB/s out=", "x numpy", "x scipy", "x torch",
            "x torch out=", "copy GB/s", "out= / copy"]
    with open(path, "w") as f:
        f.write(f"{header}\n\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n")
        for r in rows:
            cells = []
            for c in cols:
                v = r.get(c, "")
                if c == "csoftmax":
                    v = fmt_time(v)
                elif isinstance(v, float):
                    v = f"{v:.2f}" if c.startswith("x ") or c == "out= / copy" else f"{v:.1f}"
                cells.append(str(v))
            f.write("| " + " | ".join(cells) + " |\n")


if __name__ == "__main__":
    sys.exit(main())
