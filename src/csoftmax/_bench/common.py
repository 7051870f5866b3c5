"""What the CPU and GPU benchmarks share: shape lists, the result records, the progress
bar, the CSV/JSON/Markdown writers and the plot.

A result is a Record: one implementation timed on one case (op, dtype, shape, axis,
threads), with its median time, its throughput and its ratio to csoftmax's time in the
same run. Records are long-form, so CSV and JSON have one row per implementation and
the plot draws one line per implementation over the row length.
"""
from __future__ import annotations

import csv
import dataclasses
import importlib
import json
import math
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

Shape = tuple[tuple[int, ...], int]  # (shape, softmax axis)


def parse_shapes(text: str, named: dict[str, list[Shape]]) -> list[Shape]:
    """A named shape set ('default', 'quick', 'sweep', ...) or a comma-separated list of
    shapes like 4096x4096 (softmax along the last axis) or 4096x4096:0 (along axis 0)."""
    if text in named:
        return list(named[text])
    shapes: list[Shape] = []
    for item in text.split(","):
        dims, _, ax = item.strip().partition(":")
        try:
            shape = tuple(int(d) for d in dims.split("x"))
            axis = int(ax) if ax else -1
        except ValueError:
            raise ValueError(f"--shapes: {item!r} is neither a shape like 64x1000[:axis] nor one of "
                             f"{', '.join(named)}") from None
        if not shape or min(shape) < 1 or not -len(shape) <= axis < len(shape):
            raise ValueError(f"--shapes: {item!r} is not a shape with a valid axis")
        shapes.append((shape, axis))
    return shapes


def parse_list(text: str, allowed: Sequence[str], what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad or not items:
        raise ValueError(f"--{what}: {', '.join(bad) or 'nothing'} not among {', '.join(allowed)}")
    return items


def sweep(row_lengths: Iterable[int], elements: int) -> list[Shape]:
    """Rows of each length n, as many as make `elements` entries per array."""
    return [((max(1, elements // n), n), -1) for n in row_lengths]


@dataclasses.dataclass
class Record:
    device: str  # "cpu" or the GPU's name
    op: str
    dtype: str
    shape: str  # "4096x128"
    axis: int
    n: int  # the row length: shape[axis]
    threads: int  # CPU threads (0 on the GPU)
    impl: str  # "csoftmax", "csoftmax out=", "numpy", "torch", "copy (...)", ...
    seconds: float  # median time of one call
    gbps: float  # bytes moved per second / 1e9 (the case's bytes, see the benchmark)
    ratio: float  # this implementation's time / csoftmax's (> 1: csoftmax is faster)


FIELDS = [f.name for f in dataclasses.fields(Record)]


def fmt_time(t: float) -> str:
    return f"{t * 1e6:.1f} us" if t < 1e-3 else f"{t * 1e3:.2f} ms"


class Progress:
    """A progress bar on stderr: redrawn in place on a terminal, a line per step
    elsewhere (logs); nothing when disabled."""

    def __init__(self, total: int, enabled: bool = True, stream: TextIO | None = None, width: int = 24):
        self.total, self.done, self.width = total, 0, width
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled and total > 0
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.started = time.perf_counter()

    def step(self, label: str) -> None:
        """Announce the step about to run."""
        if not self.enabled:
            return
        frac = self.done / self.total
        fill = int(round(frac * self.width))
        bar = "#" * fill + "." * (self.width - fill)
        elapsed = time.perf_counter() - self.started
        text = f"[{bar}] {self.done}/{self.total} {elapsed:5.0f}s  {label}"
        if self.tty:
            self.stream.write("\r\033[K" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
        self.done += 1

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write(f"\r\033[K{self.total}/{self.total} cases in {time.perf_counter() - self.started:.0f}s\n")
            self.stream.flush()


# ---- output ------------------------------------------------------------------------------
def write_csv(path: str, records: Sequence[Record]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        for r in records:
            w.writerow(dataclasses.asdict(r))


def write_json(path: str, header: dict[str, Any], records: Sequence[Record]) -> None:
    with open(path, "w") as f:
        json.dump({"header": header, "results": [dataclasses.asdict(r) for r in records]}, f, indent=1)
        f.write("\n")


def write_markdown(path: str, title: str, columns: Sequence[str], rows: Sequence[dict[str, str]]) -> None:
    with open(path, "w") as f:
        f.write(f"{title}\n\n| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n")
        for r in rows:
            f.write("| " + " | ".join(r.get(c, "") for c in columns) + " |\n")


PLOT_HINT = "the plot needs matplotlib: pip install 'csoftmax[plot]' (or matplotlib), then pass --plot FILE.png"


def plot(path: str, title: str, records: Sequence[Record]) -> bool:
    """A PNG of throughput (GB/s) against row length, a panel per (device, op, dtype,
    threads) and a line per implementation; False (and nothing written) without
    matplotlib."""
    try:  # an optional dependency (the plot extra), imported by name: typed or not, installed or not
        importlib.import_module("matplotlib").use("Agg")
        plt: Any = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        return False
    panels: dict[tuple[str, str, str, int], list[Record]] = {}
    for r in records:
        panels.setdefault((r.device, r.op, r.dtype, r.threads), []).append(r)
    ncols = min(3, len(panels)) or 1
    nrows = max(1, math.ceil(len(panels) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.6 * nrows), squeeze=False)
    styles: dict[str, dict[str, Any]] = {}
    for ax, ((device, op, dtype, threads), rs) in zip(axes.flat, panels.items()):
        impls = list(dict.fromkeys(r.impl for r in rs))
        for impl in impls:
            pts = sorted((r.n, r.gbps) for r in rs if r.impl == impl)
            if impl not in styles:  # one look per implementation across the panels
                copy = impl.startswith("copy")
                styles[impl] = {"linestyle": ":" if copy else "-", "marker": "" if copy else "o",
                                "linewidth": 2.2 if impl == "csoftmax" else 1.2, "color": f"C{len(styles) % 10}"}
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=impl, markersize=3.5, **styles[impl])
        ax.set_xscale("log", base=2)
        ax.set_xlabel("row length n")
        ax.set_ylabel("GB/s")
        where = device if device != "cpu" else f"cpu, {threads} thread{'s' if threads != 1 else ''}"
        ax.set_title(f"{op} {dtype} ({where})", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
