"""The command line, as a user runs it (`python -m csoftmax ...` and the `csoftmax`
script, each in a fresh interpreter away from the source tree): info, check, bench and
its outputs; and the self-test catching a backend that computes wrong results."""
from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

import csoftmax
from csoftmax import _cli, _selftest
from csoftmax._bench import common, cpu, gpu

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _run(*args, env=None, cwd=None):
    full = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=full,
                          cwd=cwd or tempfile.gettempdir())


def _csoftmax(*args, env=None):
    res = _run("-m", "csoftmax", *args, env=env)
    assert res.returncode == 0, res.stderr
    return res


# ---- info, check ---------------------------------------------------------------------------
def test_info_is_show_config_with_reasons_and_libraries():
    out = _csoftmax("info").stdout
    assert out.startswith(f"csoftmax {csoftmax.__version__}")
    for name in ("c", "cuda", "reference"):
        assert f"  {name} " in out
    assert "instruction sets compiled:" in out and "selected:" in out
    assert "optional libraries:" in out and "numpy" not in out.split("optional libraries:")[1].split()[:1]
    from csoftmax import _registry

    why = _registry.unavailable_reason("cuda")
    if why is not None:  # no CuPy or no GPU here: the line says which
        assert f"why: {why}" in out


def test_console_script():
    script = Path(sys.executable).parent / "csoftmax"
    if not script.exists():
        pytest.skip(f"no console script next to {sys.executable} (installed without scripts)")
    res = subprocess.run([str(script), "--version"], capture_output=True, text=True, cwd=tempfile.gettempdir())
    assert res.returncode == 0 and res.stdout.strip() == f"csoftmax {csoftmax.__version__}"


def test_check_passes_here():
    out = _csoftmax("check").stdout
    assert out.splitlines()[-1] == "all backends agree with the reference"
    assert "  c (" in out and " ok: " in out


def test_no_command_prints_help_and_fails():
    res = _run("-m", "csoftmax")
    assert res.returncode == 2 and "info" in res.stdout and "bench" in res.stdout


class Skewed:
    """An array type whose backend's softmax is off by 1e-3 (and log_softmax right)."""

    __module__ = "skewedarrays"

    def __init__(self, a):
        self.a = np.asarray(a)
        self.shape, self.dtype, self.ndim = self.a.shape, self.a.dtype, self.a.ndim


class SkewedBackend:
    @staticmethod
    def namespace(x):
        return np

    @staticmethod
    def writable(out):
        return True

    @staticmethod
    def from_numpy(a):
        return Skewed(a)

    @staticmethod
    def to_numpy(a):
        return a.a

    @staticmethod
    def forward(op, x, /, *, axes, temperature, keepdims, where, out, dtype):
        mask = None if where is None else where.a
        kw = {"keepdims": keepdims} if op.name == "logsumexp" else {"temperature": temperature}
        r = getattr(csoftmax, op.name)(x.a, axis=axes, where=mask, dtype=dtype, backend="reference", **kw)
        return Skewed(r + 1e-3 if op.name == "softmax" else r)


def test_check_reports_a_wrong_backend_and_fails():
    rec = csoftmax.Backend("skewed", lambda x: type(x).__module__ == "skewedarrays", lambda: SkewedBackend,
                           ops=("softmax", "log_softmax", "logsumexp"))
    csoftmax.register_backend(rec, before="reference")
    try:
        buf = io.StringIO()
        failures = _selftest.run(buf)
        text = buf.getvalue()
        assert failures > 0
        assert "skewed           FAILED:" in text and "softmax float32 7 axis=-1" in text
        assert "log_softmax" not in "".join(line for line in text.splitlines() if line.startswith("      "))
        assert _cli.main(["check"]) == 1
    finally:
        csoftmax.unregister_backend("skewed")


def test_selftest_compare_catches_each_kind_of_difference():
    f64 = np.dtype("float64")
    base = np.array([0.5, np.nan, np.inf, 1e-3])
    assert _selftest.compare(base.copy(), base, f64) is None
    assert "NaN" in _selftest.compare(np.array([0.5, 0.0, np.inf, 1e-3]), base, f64)
    assert "infinities" in _selftest.compare(np.array([0.5, np.nan, -np.inf, 1e-3]), base, f64)
    assert "values off" in _selftest.compare(base * (1 + 1e-12), base, f64)
    assert "dtype" in _selftest.compare(base.astype(np.float32), base, f64)
    assert "shape" in _selftest.compare(base[:2], base, f64)


# ---- bench ---------------------------------------------------------------------------------
def test_bench_writes_csv_json_and_plot(tmp_path):
    files = {k: tmp_path / f"b.{k}" for k in ("csv", "json", "png", "md")}
    res = _csoftmax("bench", "--device", "cpu", "--ops", "softmax,softmax_cross_entropy", "--shapes", "64x16,8x256",
                    "--dtypes", "float32", "--rounds", "1", "--threads", "1", "--csv", str(files["csv"]),
                    "--json", str(files["json"]), "--plot", str(files["png"]), "--markdown", str(files["md"]))
    out, err = res.stdout, res.stderr
    assert "instruction set selected:" in out.splitlines()[0]
    assert "[" in err and "1/4" in err and "softmax float32 64x16" in err  # the progress bar
    rows = list(csv.DictReader(files["csv"].open()))
    assert {r["op"] for r in rows} == {"softmax", "softmax_cross_entropy"}
    assert {r["shape"] for r in rows} == {"64x16", "8x256"} and {r["n"] for r in rows} == {"16", "256"}
    ours = [r for r in rows if r["impl"] == "csoftmax"]
    assert len(ours) == 4 and all(float(r["ratio"]) == 1.0 and float(r["seconds"]) > 0 for r in ours)
    peers = {r["impl"] for r in rows}
    assert {"numpy", "copy (numpy, 1 thread)"} <= peers
    doc = json.loads(files["json"].read_text())
    assert doc["header"]["cpu"]["threads"] == [1] and len(doc["results"]) == len(rows)
    assert files["md"].read_text().count("\n| softmax |") == 2
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert not files["png"].exists() and "pip install 'csoftmax[plot]'" in out
    else:
        assert files["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"wrote {files['png']}" in out


def test_bench_header_names_the_selected_instruction_set():
    out = _csoftmax("bench", "--device", "cpu", "--ops", "softmax", "--shapes", "8x8", "--dtypes", "float64",
                    "--rounds", "1", "--no-progress", env={"CSOFTMAX_ISA": "baseline"})
    first = out.stdout.splitlines()[0]
    assert "instruction set selected: baseline (capped by CSOFTMAX_ISA=baseline)" in first
    assert out.stderr == ""  # --no-progress


@pytest.mark.parametrize("args,message", [
    (["--ops", "softplus"], "--ops: softplus not among"),
    (["--shapes", "4x"], "--shapes: '4x' is neither"),
    (["--shapes", "4x4:2"], "not a shape with a valid axis"),
    (["--dtypes", "int8"], "--dtypes: int8 not among"),
    (["--threads", "two"], "--threads: 'two' is not"),
    (["--threads", "0"], "--threads must be positive"),
])
def test_bench_refuses_bad_arguments(args, message):
    res = _run("-m", "csoftmax", "bench", "--device", "cpu", *args)
    assert res.returncode == 2 and message in res.stderr


def test_bench_on_the_gpu_without_one_says_why():
    from csoftmax import _registry

    why = _registry.unavailable_reason("cuda")
    if why is None:
        pytest.skip("the cuda backend is available here")
    res = _run("-m", "csoftmax", "bench", "--device", "gpu")
    assert res.returncode == 2 and why in res.stderr


def test_the_benchmark_scripts_are_entry_points():
    if not BENCHMARKS.exists():
        pytest.skip("benchmarks/ is not next to the tests")
    res = _run(str(BENCHMARKS / "bench_cpu.py"), "--ops", "log_softmax", "--shapes", "16x16", "--dtypes", "float32",
               "--rounds", "1", "--no-progress")
    assert res.returncode == 0, res.stderr
    assert "log_softmax float32        16x16" in res.stdout
    res = _run(str(BENCHMARKS / "bench_gpu.py"), "--help")
    assert res.returncode == 0 and "--repeats" in res.stdout and "--threads" in res.stdout


def test_shape_sets():
    sweep = cpu.SHAPE_SETS["sweep"]
    assert [s[0][1] for s in sweep] == [8, 16, 32, 64, 128, 256, 512, 1000, 4096, 32768]
    assert all(s[0][0] * s[0][1] <= 2**22 < (s[0][0] + 1) * s[0][1] for s in sweep)
    assert common.parse_shapes("sweep", cpu.SHAPE_SETS) == sweep
    assert common.parse_shapes("4096x4096:0,10", cpu.SHAPE_SETS) == [((4096, 4096), 0), ((10,), -1)]
    # cross-entropy runs on 2-d shapes along the last axis only; threads x ops x dtypes x shapes
    todo = cpu.cases(["softmax", "softmax_cross_entropy"], ["float32"], [((10,), -1), ((4, 8), -1), ((4, 8), 0)], [1, 2])
    assert len(todo) == 2 * (3 + 1)


def test_gpu_default_cases():
    """The GPU benchmark's default list: softmax on every default shape, the other ops on
    rows of 1024 and 32768, all with 2^27 elements but (4, 16M); --ops narrows it."""
    todo = gpu.cases(list(gpu.OPS), ["float16"], None)
    soft = [c for c in todo if c[0] == "softmax"]
    assert len(soft) == len(gpu.SHAPE_SETS["default"]) == 12
    assert sorted({c[2][1] for c in todo if c[0] != "softmax"}) == [1024, 32768]
    assert all(np.prod(c[2]) == gpu.ELEMS for c in todo if c[2] != (4, 16 * 2**20))
    assert {c[0] for c in gpu.cases(["log_softmax"], ["float32"], None)} == {"log_softmax"}
    assert len(gpu.cases(list(gpu.OPS), ["float32"], gpu.SHAPE_SETS["quick"])) == 4 * 4


def test_progress_bar_on_a_terminal_redraws_in_place():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    buf = Tty()
    bar = common.Progress(2, stream=buf)
    bar.step("first")
    bar.step("second")
    bar.close()
    text = buf.getvalue()
    assert text.count("\r") == 3 and "0/2" in text and "1/2" in text and "2/2 cases" in text and "\n" == text[-1]
