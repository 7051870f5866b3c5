"""The README's examples run and print what it says."""
from __future__ import annotations

import doctest
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture(scope="module")
def text():
    if not README.exists():
        pytest.skip("README.md is not next to the tests")
    return README.read_text()


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
def test_interactive_examples(text):
    blocks = re.findall(r"```python\n(>>>.*?)```", text, flags=re.S)
    assert blocks
    parser = doctest.DocTestParser()
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    for i, block in enumerate(blocks):
        runner.run(parser.get_doctest(block, {}, f"README[{i}]", str(README), 0))
    assert runner.summarize(verbose=False).failed == 0


def test_training_loop(text, capsys):
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "X @ W + b" in b]
    assert len(blocks) == 1
    exec(compile(blocks[0], "README training loop", "exec"), {})
    out = capsys.readouterr().out
    assert out.strip() == "loss 0.083, accuracy 0.971"


def test_new_backend_example(text, capsys):
    """The backends section's block: a backend for a type of one's own, registered and used."""
    import csoftmax

    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "register_backend(csoftmax.Backend(" in b]
    assert len(blocks) == 1
    try:
        exec(compile(blocks[0], "README backends example", "exec"), {})
        assert capsys.readouterr().out.strip() == "tagged [0.26894142 0.73105858]"
        comment = blocks[0].strip().splitlines()[-1]
        assert comment == "# tagged [0.26894142 0.73105858]", comment
    finally:
        if "tagged" in csoftmax.backends():
            csoftmax.unregister_backend("tagged")


# ---- the examples of torch, JAX, Dask and array-API arrays: each a program of its own ----
def _example(text, marker):
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if marker in b]
    assert len(blocks) == 1, marker
    return blocks[0]


def _run_example(code, tmp_path, warnings_are_errors=True):
    import os
    import subprocess
    import sys

    script = tmp_path / "example.py"
    script.write_text(code)
    flags = ["-W", "error"] if warnings_are_errors else []
    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}  # as a user runs it (conftest sets it)
    res = subprocess.run([sys.executable, *flags, str(script)], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_torch_training_step(text, tmp_path):
    pytest.importorskip("torch", reason="torch is not installed")
    out = _run_example(_example(text, "torch.optim"), tmp_path).strip()
    m = re.fullmatch(r"loss (\d\.\d\d), accuracy (\d\.\d\d)", out)
    assert m, out
    assert float(m.group(2)) >= 0.95 and float(m.group(1)) < 0.5


def test_jax_example_prints_what_the_readme_says(text, tmp_path):
    pytest.importorskip("jax", reason="JAX is not installed")
    code = _example(text, "jax.value_and_grad")
    printed = re.search(re.escape(code) + r"```\n\nprints\n\n```\n(.*?)```", text, flags=re.S).group(1)
    out = _run_example(code, tmp_path)
    assert out.split() == printed.split()


def test_dask_cluster_example(text, tmp_path):
    pytest.importorskip("distributed", reason="dask.distributed is not installed")
    import dask.array as da
    import numpy as np

    import csoftmax

    out = _run_example(_example(text, "LocalCluster"), tmp_path, warnings_are_errors=False)
    total, rest = out.split(" ", 1)
    lse = np.array(rest[rest.index("[") + 1:rest.index("]")].split(), dtype=float)
    loss = float(rest[rest.index("]") + 1:])
    x = da.random.default_rng(0).standard_normal((10_000, 2048), chunks=(2_500, 512)).compute()
    labels = da.random.default_rng(1).integers(0, 2048, 10_000, chunks=2_500).compute()
    assert abs(float(total) - 1.0) < 1e-12
    np.testing.assert_allclose(lse, csoftmax.logsumexp(x[:2], axis=1), rtol=1e-7)  # as printed
    assert loss == pytest.approx(float(csoftmax.softmax_cross_entropy(x, labels)), rel=1e-13)


def test_array_api_strict_example(text, tmp_path):
    pytest.importorskip("array_api_strict", reason="array-api-strict is not installed")
    code = _example(text, "array_api_strict as xp")
    stated = re.search(re.escape(code) + r"```\n\nprints `(.*?)`\nand `(.*?)`", text, flags=re.S)
    out = _run_example(code, tmp_path)
    assert out.split() == (stated.group(1) + " " + stated.group(2)).split()
