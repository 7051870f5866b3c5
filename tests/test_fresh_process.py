"""Short user programs, each in its own interpreter: import order, caches and lazy loading
cannot hide a bug here (the rest of the suite shares one process, whose conftest loads
every backend first). Each program prints what it computed; the test checks it against
an oracle computed here."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest

import csoftmax

X = [1.0, 2.0, 3.0, -1.0]
LABELS = [2]


def _run(code, env=None):
    full = dict(os.environ, **(env or {}))
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=full,
                         cwd=tempfile.gettempdir())  # away from any source tree
    assert res.returncode == 0, res.stderr
    return res.stdout.strip().splitlines()


def _want(op):
    x = np.array(X)
    if op == "softmax_cross_entropy":
        return np.asarray(csoftmax.softmax_cross_entropy(x[None], np.array(LABELS), backend="reference"))
    if op.endswith("_backward"):
        y = getattr(csoftmax, op.removesuffix("_backward"))(x, backend="reference")
        return np.asarray(getattr(csoftmax, op)(x, y, backend="reference"))
    return np.asarray(getattr(csoftmax, op)(x, backend="reference"))


def _call_code(op):
    if op == "softmax_cross_entropy":
        return f"csoftmax.softmax_cross_entropy(np.array([{X}]), np.array({LABELS}))"
    if op.endswith("_backward"):
        fwd = op.removesuffix("_backward")
        return f"csoftmax.{op}(np.array({X}), csoftmax.{fwd}(np.array({X})))"
    return f"csoftmax.{op}(np.array({X}))"


# what a program may do before its first computation
PRELUDES = {
    "nothing": "",
    "get_backend": "csoftmax.get_backend(np.ones(3))",
    "get_backend-of-op": "csoftmax.get_backend(np.ones(3), '{op}')",
    "use_backend": "with csoftmax.use_backend('reference'): pass",
    "use_backend-around": None,  # the call itself inside use_backend('c')
    "show_config": "import io; csoftmax.show_config(file=io.StringIO())",
    "backend=": "csoftmax.softmax(np.ones(3), backend='reference')",
    "special": "import csoftmax.special; csoftmax.special.softmax(np.ones(3))",
    "special-attribute": "csoftmax.special.logsumexp(np.ones(3))",  # reached without importing it
}


@pytest.mark.parametrize("prelude", sorted(PRELUDES))
@pytest.mark.parametrize("op", csoftmax.OPS)
def test_first_call_after_each_prelude(op, prelude):
    first = PRELUDES[prelude]
    call = _call_code(op)
    if first is None:
        body = f"with csoftmax.use_backend('c'):\n    r = {call}\n"
    else:
        body = first.format(op=op) + f"\nr = {call}\n"
    out = _run(
        "import json, numpy as np, csoftmax\n"
        + body
        + "r = r[0] if isinstance(r, tuple) else r\n"
        + "print(json.dumps(np.asarray(r, dtype=float).tolist()))\n"
        + "r2 = " + call + "\n"  # and again: the cached dispatch
        + "r2 = r2[0] if isinstance(r2, tuple) else r2\n"
        + "print(json.dumps(np.asarray(r2, dtype=float).tolist()))\n"
    )
    want = _want(op)
    for line in out:
        np.testing.assert_allclose(np.array(json.loads(line)), want, rtol=1e-13, atol=1e-300)


def test_readme_backends_example():
    """The README's backends block, as a program: get_backend first, then the calls."""
    out = _run(
        """
        import numpy as np, csoftmax
        x = np.array([1.0, 2.0])
        print(csoftmax.get_backend(x).name)
        print(csoftmax.softmax(x).tolist())
        with csoftmax.use_backend("reference"):
            print(csoftmax.softmax(x).tolist())
        print(csoftmax.softmax(x, backend="reference").tolist())
        """
    )
    want = np.exp([1.0, 2.0]) / np.exp([1.0, 2.0]).sum()
    assert out[0] == "c"
    for line in out[1:]:
        np.testing.assert_allclose(json.loads(line), want, rtol=1e-15)


def test_a_failing_loader_reports_its_own_error():
    """A backend whose module cannot be loaded raises the loader's error on every call
    (not a stale cache's KeyError), and other types keep their dispatch."""
    out = _run(
        """
        import numpy as np, csoftmax
        class Tiny:
            __module__ = "tinyarrays"
            shape, dtype, ndim = (2,), np.dtype("float64"), 1
        def broken():
            raise ImportError("the tiny library is broken")
        csoftmax.register_backend(csoftmax.Backend("tiny", lambda x: type(x).__module__ == "tinyarrays", broken),
                                  before="c")
        print(csoftmax.get_backend(Tiny()).name)
        for _ in range(2):
            try:
                csoftmax.softmax(Tiny())
            except ImportError as exc:
                print("ImportError:", exc)
        print(csoftmax.softmax(np.zeros(2)).tolist())
        """
    )
    assert out == ["tiny", "ImportError: the tiny library is broken", "ImportError: the tiny library is broken",
                   "[0.5, 0.5]"]


# each library's arrays, made and read back as its users do
LIBRARIES = {
    "torch": ("import torch", f"torch.tensor({X}, dtype=torch.float64)", "r.numpy()"),
    "jax": ("import jax.numpy as jnp", f"jnp.array({X})", "np.asarray(r)"),
    "dask": ("import dask.array as da", f"da.from_array(np.array({X}), chunks=2)", "r.compute()"),
}


@pytest.mark.parametrize("order", ["library-first", "csoftmax-first"])
@pytest.mark.parametrize("lib", sorted(LIBRARIES))
def test_first_call_on_each_library(lib, order):
    """The backend of a library loads on its arrays' first call, whichever was imported
    first; get_backend before it changes nothing."""
    pytest.importorskip(lib, reason=f"{lib} is not installed")
    imp, make, read = LIBRARIES[lib]
    first = [imp, "import numpy as np, json, csoftmax"]
    out = _run(
        "\n".join(first if order == "library-first" else first[::-1]) + "\n"
        + f"x = {make}\n"
        + "print(csoftmax.get_backend(x).name)\n"
        + "for op in ('softmax', 'log_softmax', 'logsumexp'):\n"
        + "    r = getattr(csoftmax, op)(x)\n"
        + f"    print(json.dumps(np.asarray({read}, dtype=float).tolist()))\n"
    )
    assert out[0] == lib
    for op, line in zip(("softmax", "log_softmax", "logsumexp"), out[1:]):
        np.testing.assert_allclose(json.loads(line), _want(op), rtol=1e-13)


def test_import_does_not_load_the_core_or_array_libraries():
    out = _run(
        """
        import sys, csoftmax
        print(sorted(m for m in ("cupy", "torch", "jax", "dask", "csoftmax._ckernels", "scipy", "csoftmax.special",
                                 "matplotlib", "csoftmax._bench") if m in sys.modules))
        """
    )
    assert out == ["[]"]


def test_special_is_an_attribute_and_dir_is_the_public_api():
    """As scipy's `import scipy; scipy.special.softmax(...)`: csoftmax.special is reached
    as an attribute (imported then, not before); dir() lists the public API only."""
    out = _run(
        """
        import sys, json, csoftmax
        print(json.dumps(dir(csoftmax)))
        print("csoftmax.special" in sys.modules)
        print(csoftmax.special.softmax([0.0, 0.0]).tolist(), "csoftmax.special" in sys.modules)
        try:
            csoftmax.specials
        except AttributeError as exc:
            print(exc)
        """
    )
    assert json.loads(out[0]) == sorted(csoftmax.__all__ + ["special"])
    assert "annotations" not in out[0]
    assert out[1:] == ["False", "[0.5, 0.5] True", "module 'csoftmax' has no attribute 'specials'"]
