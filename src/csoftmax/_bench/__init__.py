"""The benchmarks shipped with csoftmax: `python -m csoftmax bench` (and the scripts in
benchmarks/, which call main() here).

cpu.py times NumPy arrays (csoftmax against NumPy's formula, scipy.special and torch),
gpu.py CuPy arrays (against torch and cupyx, as fractions of a device copy); common.py
holds what they share: shape sets, result records, the progress bar, CSV/JSON/Markdown
and the PNG plot. A new set of cases is one more entry of a module's SHAPE_SETS.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from . import common

DEVICES = ("all", "cpu", "gpu")


def parser(prog: str, devices: Sequence[str] = DEVICES) -> argparse.ArgumentParser:
    from . import cpu, gpu

    ap = argparse.ArgumentParser(
        prog=prog,
        description="Benchmark csoftmax against the peers installed here (NumPy, scipy, torch; on a GPU torch and "
                    "cupyx), medians of alternating rounds, as ratios from the same run.",
        epilog=f"CPU shape sets: {', '.join(cpu.SHAPE_SETS)}; GPU shape sets: {', '.join(gpu.SHAPE_SETS)}. "
               "Progress goes to stderr, the results table to stdout.",
    )
    if len(devices) > 1:
        ap.add_argument("--device", choices=devices, default="all",
                        help="cpu, gpu, or all (the GPU where the cuda backend is available; default)")
    ap.add_argument("--quick", action="store_true",
                    help="a short run (under a minute on the CPU): a row-length sweep at 2^20 elements, float32, "
                         "forward/log/backward/cross-entropy, 5 rounds")
    ap.add_argument("--ops", default=None, help=f"comma-separated, of {', '.join(cpu.OPS)}")
    ap.add_argument("--dtypes", default=None, help="comma-separated (CPU default float32,float64; GPU float16,float32)")
    ap.add_argument("--shapes", default=None,
                    help="a shape set's name, or shapes like 4096x4096,1x16000000 (axis -1); append :0 for axis 0")
    ap.add_argument("--threads", default=None,
                    help="CPU threads, comma-separated (e.g. 1,2); default: the C core's (OpenMP's) count")
    ap.add_argument("--rounds", type=int, default=None, help="CPU rounds per case (default 11; --quick 5)")
    ap.add_argument("--repeats", type=int, default=20, help="GPU timings per case (default 20)")
    ap.add_argument("--csv", metavar="FILE", help="write the results as CSV (one row per implementation and case)")
    ap.add_argument("--json", metavar="FILE", help="write the header and results as JSON")
    ap.add_argument("--plot", metavar="FILE.png", help="write a PNG of throughput against row length (matplotlib)")
    ap.add_argument("--markdown", metavar="FILE", help="write the table as Markdown (benchmarks/RESULTS.md's columns)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    if "gpu" in devices:
        ap.add_argument("--profile", action="store_true",
                        help="GPU: run a few shapes twice each, untimed, for a profiler (nothing is measured)")
    return ap


def _options(args: argparse.Namespace, mod: Any) -> tuple[list[str], list[str], Any]:
    """(ops, dtypes, shapes or None) of one benchmark module; the ops are checked against
    every op a benchmark knows (the CPU's) and the module's are kept."""
    from .cpu import OPS, QUICK

    quick = args.quick
    ops = common.parse_list(args.ops, OPS, "ops") if args.ops else list(QUICK["ops"] if quick else mod.OPS)
    ops = [o for o in ops if o in mod.OPS]
    dtypes = common.parse_list(args.dtypes, ("float16", "float32", "float64"), "dtypes") if args.dtypes \
        else list(QUICK["dtypes"] if quick and mod.__name__.endswith("cpu") else mod.DTYPES)
    shapes = None
    if args.shapes:
        shapes = common.parse_shapes(args.shapes, mod.SHAPE_SETS)
    elif quick:
        shapes = list(mod.SHAPE_SETS["quick"])
    return ops, dtypes, shapes


def _gpu_unavailable() -> str | None:
    from .. import _registry

    return _registry.unavailable_reason("cuda")


def main(argv: Sequence[str] | None = None, prog: str = "csoftmax bench", devices: Sequence[str] = DEVICES) -> int:
    """Run the benchmark the arguments ask for; 0 on success, 2 on a bad argument."""
    from . import cpu, gpu

    ap = parser(prog, devices)
    args = ap.parse_args(argv)
    device = getattr(args, "device", devices[0])
    records: list[common.Record] = []
    header: dict[str, Any] = {}
    md_rows: list[dict[str, str]] = []
    md_cols: list[str] = []
    try:
        run_cpu = device in ("all", "cpu")
        run_gpu = device in ("all", "gpu")
        if run_gpu:
            why = _gpu_unavailable()
            if why is not None:
                if device == "gpu":
                    print(f"{prog}: no GPU benchmark: the cuda backend is unavailable ({why})", file=sys.stderr)
                    return 2
                run_gpu = False
        # every option checked before anything runs
        cpu_opts, gpu_opts = _options(args, cpu), _options(args, gpu)
        try:
            threads = [int(t) for t in args.threads.split(",")] if args.threads else [cpu.default_threads()]
        except ValueError:
            raise ValueError(f"--threads: {args.threads!r} is not a comma-separated list of counts") from None
        if min(threads) < 1:
            raise ValueError("--threads must be positive")
    except ValueError as exc:
        ap.error(str(exc))
    if getattr(args, "profile", False):
        if not run_gpu:
            ap.error("--profile needs the GPU (--device gpu, with the cuda backend available)")
        gpu.profile()
        return 0
    if run_cpu:
        ops, dtypes, shapes = cpu_opts
        rounds = args.rounds if args.rounds is not None else (cpu.QUICK["rounds"] if args.quick else 11)
        h, rs = cpu.run(ops, dtypes, shapes or cpu.SHAPE_SETS["default"], threads, rounds,
                        progress=not args.no_progress)
        header["cpu"], records = h, records + rs
        md_rows, md_cols = md_rows + cpu.markdown_rows(rs), cpu.MARKDOWN_COLUMNS
    if run_gpu:
        ops, dtypes, shapes = gpu_opts
        if ops:
            h, rs = gpu.run(ops, dtypes, shapes, args.repeats, progress=not args.no_progress)
            header["gpu"], records = h, records + rs
            md_rows, md_cols = md_rows + gpu.markdown_rows(rs), md_cols or gpu.MARKDOWN_COLUMNS
    if args.csv:
        common.write_csv(args.csv, records)
        print(f"wrote {args.csv} ({len(records)} rows)")
    if args.json:
        common.write_json(args.json, header, records)
        print(f"wrote {args.json}")
    if args.markdown:
        title = "; ".join(f"{k}: {v.get('machine', v.get('gpu'))}" for k, v in header.items())
        common.write_markdown(args.markdown, title, md_cols, md_rows)
        print(f"wrote {args.markdown}")
    title = " | ".join(str(v.get("machine", v.get("gpu"))) for v in header.values())
    if args.plot:
        if common.plot(args.plot, f"csoftmax {header.get('cpu', header.get('gpu', {})).get('csoftmax', '')}: {title}",
                       records):
            print(f"wrote {args.plot}")
        else:
            print(f"no plot written: {common.PLOT_HINT}")
    elif not _have_matplotlib():
        print(f"for a plot of these results: {common.PLOT_HINT}")
    return 0


def _have_matplotlib() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None
