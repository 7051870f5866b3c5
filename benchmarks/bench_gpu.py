"""GPU benchmark: csoftmax's CUDA kernels against torch and cupyx.scipy.special on the same
device, each as a fraction of a device-to-device copy of the same bytes measured in the
same run (the physical limit of a memory-bound op).

Every input has 2^27 elements (far larger than L2), split into rows of 32 .. 1M entries,
plus (4, 16M) and a softmax along a non-last axis; float16 and float32; softmax,
log_softmax, softmax_backward and cross-entropy with its gradient. Timings are CUDA
events around 10 back-to-back calls (so host overhead overlaps the GPU's work, as in a
training step) after warm-up, median of repeats, implementations alternating within each
repeat; the (10,) per-call figure is host wall time, launch overhead included. Bytes counted: every array read once and written once (forward: x
in, y out; backward: g and y in, dx out; cross-entropy: logits in, gradient out).

    python benchmarks/bench_gpu.py [--repeats 20] [--dtypes float16,float32] [--markdown out.md] [--json out.json]
    python benchmarks/bench_gpu.py --profile     # a few shapes, each called twice (for Nsight Compute)

Needs CuPy and a CUDA GPU; torch and cupyx are optional peers.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

import csoftmax

ELEMS = 2**27
ROWS = [32, 128, 512, 1024, 2048, 4096, 16384, 65536, 262144, 1048576]


def _peers():
    try:
        import torch

        if not torch.cuda.is_available():
            torch = None
    except ImportError:
        torch = None
    try:
        import cupyx.scipy.special as cupyx_special
    except ImportError:
        cupyx_special = None
    return torch, cupyx_special


INNER = 10  # calls between one pair of events: the GPU stays busy, host overhead hides


def time_gpu(cupy, fn, repeats):
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


def cases(dtypes):
    for dt in dtypes:
        for n in ROWS:
            yield "softmax", dt, (ELEMS // n, n), -1
        yield "softmax", dt, (4, 16 * 2**20), -1
        yield "softmax", dt, (4096, ELEMS // 4096), 0
        for n in (1024, 32768):
            yield "log_softmax", dt, (ELEMS // n, n), -1
            yield "softmax_backward", dt, (ELEMS // n, n), -1
            yield "softmax_cross_entropy", dt, (ELEMS // n, n), -1


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--dtypes", default="float16,float32")
    ap.add_argument("--markdown", default=None)
    ap.add_argument("--json", default=None, help="every median in seconds, and the copy's, as JSON")
    ap.add_argument("--profile", action="store_true", help="run a few shapes twice each, untimed")
    args = ap.parse_args(argv)
    import cupy

    if args.profile:
        rng = cupy.random.default_rng(0)
        for shape, dt in (((ELEMS // 1024, 1024), "float32"), ((ELEMS // 16384, 16384), "float32"),
                          ((ELEMS // 1024, 1024), "float16"), ((4096, ELEMS // 4096), "float32")):
            x = (rng.standard_normal(shape, dtype=cupy.float32) * 3).astype(dt)
            for _ in range(2):
                csoftmax.softmax(x, axis=-1)
                csoftmax.softmax(x, axis=0)
            cupy.cuda.Device().synchronize()
        return 0

    torch, cupyx_special = _peers()
    dev = cupy.cuda.Device()
    name = cupy.cuda.runtime.getDeviceProperties(dev.id)["name"].decode()
    header = f"GPU: {name}; median of {args.repeats} CUDA-event timings; 2^27 elements per input"
    print(header, flush=True)
    rng = cupy.random.default_rng(0)
    rows, raw = [], []
    for op, dt, shape, axis in cases(args.dtypes.split(",")):
        x = (rng.standard_normal(shape, dtype=cupy.float32) * 3).astype(dt)
        impls, nbytes = {}, 2 * x.nbytes
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
            g = rng.standard_normal(shape, dtype=cupy.float32).astype(dt)
            y = csoftmax.softmax(x, axis=axis)
            nbytes = 3 * x.nbytes
            impls["csoftmax"] = lambda: csoftmax.softmax_backward(g, y, axis=axis)
            if torch is not None:
                tg, ty = torch.from_dlpack(g), torch.from_dlpack(y)
                impls["torch"] = lambda: torch.ops.aten._softmax_backward_data(tg, ty, axis % x.ndim, tg.dtype)
        else:
            labels = rng.integers(0, shape[1], size=shape[0]).astype(cupy.int64)
            impls["csoftmax"] = lambda: csoftmax.softmax_cross_entropy(x, labels, return_grad=True)
            if torch is not None:
                tx, tl = torch.from_dlpack(x), torch.from_dlpack(labels)

                def torch_xent():
                    t = tx.detach().requires_grad_(True)
                    loss = torch.nn.functional.cross_entropy(t, tl)
                    loss.backward()
                    return t.grad

                impls["torch"] = torch_xent
        dst = cupy.empty(nbytes // 2, dtype=cupy.uint8)
        src = cupy.empty(nbytes // 2, dtype=cupy.uint8)
        impls["copy"] = lambda: dst.__setitem__(Ellipsis, src)
        for fn in impls.values():  # warm-up: compilation, allocation pools
            fn()
        cupy.cuda.Device().synchronize()
        times = {k: [] for k in impls}
        for _ in range(args.repeats):
            for k, fn in impls.items():
                times[k] += time_gpu(cupy, fn, 1)
        med = {k: statistics.median(v) for k, v in times.items()}
        copy_bw = (nbytes // 2) * 2 / med["copy"]
        row = {"op": op, "dtype": dt, "shape": "x".join(map(str, shape)), "axis": axis}
        raw.append(dict(row, bytes=nbytes, **{f"{k}_s": t for k, t in med.items()},
                        **{f"{k}_of_copy": nbytes / t / copy_bw for k, t in med.items() if k != "copy"}))
        for k, t in med.items():
            if k == "copy":
                continue
            row[k] = f"{t * 1e6:.1f} us, {nbytes / t / copy_bw:.0%} of copy"
        rows.append(row)
        print(f"{op:>22} {dt:>7} {row['shape']:>16} ax{axis:>2}  " + "  ".join(f"{k}: {v}" for k, v in row.items()
                                                                          if k not in ("op", "dtype", "shape", "axis")),
              flush=True)
        del x
        cupy.get_default_memory_pool().free_all_blocks()
    # per-call overhead on a (10,) array
    x10 = cupy.asarray(np.random.default_rng(0).standard_normal(10))
    calls = {"csoftmax": lambda: csoftmax.softmax(x10)}
    if torch is not None:
        t10 = torch.from_dlpack(x10)
        calls["torch"] = lambda: torch.softmax(t10, -1)
    if cupyx_special is not None:
        calls["cupyx"] = lambda: cupyx_special.softmax(x10)
    per_call = {}
    for k, fn in calls.items():
        for _ in range(100):
            fn()
        cupy.cuda.Device().synchronize()
        t = time.perf_counter()
        for _ in range(2000):
            fn()
        cupy.cuda.Device().synchronize()
        per_call[k] = (time.perf_counter() - t) / 2000
        print(f"(10,) float64 per call, {k}: {per_call[k] * 1e6:.1f} us")
    if args.json:
        import json

        with open(args.json, "w") as f:
            json.dump({"device": name, "repeats": args.repeats, "cases": raw, "per_call_10_s": per_call}, f, indent=1)
    if args.markdown:
        cols = ["op", "dtype", "shape", "axis", "csoftmax", "torch", "cupyx"]
        with open(args.markdown, "w") as f:
            f.write(header + "\n\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n")
            for r in rows:
                f.write("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |\n")


if __name__ == "__main__":
    sys.exit(main())
