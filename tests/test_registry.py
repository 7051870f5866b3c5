"""The backend registry: dispatch order, use_backend, backend=, registering a backend,
show_config, lazy imports, and the instruction-set override of the C core."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import csoftmax


def test_builtin_backends_in_order():
    builtin = ("c", "cuda", "torch", "jax", "dask", "reference")
    assert tuple(b for b in csoftmax.backends() if b in builtin) == builtin


def test_dispatch_by_type():
    assert csoftmax.get_backend(np.zeros(3)).name == "c"
    assert csoftmax.get_backend([1.0, 2.0]).name == "c"  # lists are taken as NumPy
    assert csoftmax.get_backend(np.zeros(3), "softmax_cross_entropy").name == "c"


def test_use_backend_and_explicit_backend():
    x = np.zeros(3)
    with csoftmax.use_backend("reference"):
        assert csoftmax.get_backend(x).name == "reference"
        with csoftmax.use_backend("c"):
            assert csoftmax.get_backend(x).name == "c"
        assert csoftmax.get_backend(x).name == "reference"
    assert csoftmax.get_backend(x).name == "c"
    with pytest.raises(ValueError, match="unknown backend"):
        with csoftmax.use_backend("nope"):
            pass


def test_use_backend_is_thread_local():
    seen = {}

    def worker():
        seen["other"] = csoftmax.get_backend(np.zeros(2)).name

    with csoftmax.use_backend("reference"):
        t = threading.Thread(target=worker)
        t.start()
        t.join()
        seen["here"] = csoftmax.get_backend(np.zeros(2)).name
    assert seen == {"other": "c", "here": "reference"}


class Wrapped:
    """A toy array type no built-in backend accepts by class."""

    __module__ = "toyarrays"

    def __init__(self, a):
        self.a = np.asarray(a, dtype=np.float64)
        self.shape, self.dtype, self.ndim = self.a.shape, self.a.dtype, self.a.ndim


class ToyBackend:
    """Implements softmax only (the forward family's method, as csoftmax._protocol has it),
    by delegating to the reference on the wrapped data."""

    calls = 0

    @staticmethod
    def namespace(x):
        return np

    @staticmethod
    def writable(out):
        return True

    @classmethod
    def forward(cls, op, x, /, *, axes, temperature, keepdims, where, out, dtype):
        assert op.name == "softmax"
        cls.calls += 1
        return Wrapped(csoftmax.softmax(x.a, axis=axes, temperature=temperature, backend="reference"))


def test_register_backend_widens_dispatch():
    rec = csoftmax.Backend("toy", lambda x: type(x).__module__ == "toyarrays", lambda: ToyBackend, ops=("softmax",))
    csoftmax.register_backend(rec, before="reference")
    try:
        assert csoftmax.backends().index("toy") == csoftmax.backends().index("reference") - 1
        w = Wrapped([1.0, 2.0, 3.0])
        assert csoftmax.get_backend(w).name == "toy"
        res = csoftmax.softmax(w)
        assert isinstance(res, Wrapped) and ToyBackend.calls == 1
        np.testing.assert_allclose(res.a, csoftmax.softmax(np.array([1.0, 2.0, 3.0])))
        # an op it does not implement falls through to the next backend that takes the type
        assert csoftmax.get_backend(w, "log_softmax").name == "reference"
        with pytest.raises(ValueError, match="already registered"):
            csoftmax.register_backend(rec)
        with pytest.raises(ValueError, match="does not implement"):
            csoftmax.log_softmax(w, backend="toy")
    finally:
        assert csoftmax.unregister_backend("toy") is rec
    assert "toy" not in csoftmax.backends()
    assert csoftmax.get_backend(Wrapped([1.0])).name == "reference"  # the dispatch cache forgot it
    with pytest.raises(ValueError, match="unknown backend"):
        csoftmax.unregister_backend("toy")


def test_a_module_that_lacks_its_family_method_is_refused_at_load():
    class Half:
        namespace = staticmethod(lambda x: np)
        writable = staticmethod(lambda out: True)

    rec = csoftmax.Backend("half", lambda x: type(x).__module__ == "toyarrays", lambda: Half, ops=("softmax",))
    csoftmax.register_backend(rec, before="reference")
    try:
        with pytest.raises(TypeError, match="lacks forward"):
            csoftmax.softmax(Wrapped([1.0, 2.0]))
    finally:
        csoftmax.unregister_backend("half")


def test_register_backend_checks_its_argument():
    with pytest.raises(TypeError):
        csoftmax.register_backend("c")
    with pytest.raises(ValueError, match="unknown ops"):
        csoftmax.register_backend(csoftmax.Backend("bad", lambda x: False, lambda: None, ops=("softplus",)))


def test_show_config_names_everything():
    buf = io.StringIO()
    csoftmax.show_config(file=buf)
    text = buf.getvalue()
    assert csoftmax.__version__ in text
    for name in csoftmax.backends():
        assert name in text
    assert "instruction sets compiled: baseline" in text
    assert "selected:" in text


def test_show_config_says_why_a_backend_is_unavailable_and_lists_libraries():
    def broken():
        raise RuntimeError("the widget driver says no (error 7)")

    rec = csoftmax.Backend("widget", lambda x: False, lambda: None, available=broken, description="widgets")
    csoftmax.register_backend(rec, before="reference")
    try:
        buf = io.StringIO()
        csoftmax.show_config(file=buf)
        lines = buf.getvalue().splitlines()
        at = next(i for i, line in enumerate(lines) if line.split()[:2] == ["widget", "unavailable"])
        assert lines[at + 1].split() == ["why:", "the", "widget", "driver", "says", "no", "(error", "7)"]
    finally:
        csoftmax.unregister_backend("widget")
    libs = buf.getvalue().split("optional libraries:\n")[1].splitlines()
    from csoftmax._config import OPTIONAL_LIBRARIES

    assert [line.split()[0] for line in libs] == [m for m, _ in OPTIONAL_LIBRARIES]
    import importlib.metadata

    for line in libs:
        module = line.split()[0]
        try:
            version = importlib.metadata.version(module)
        except importlib.metadata.PackageNotFoundError:
            continue
        assert line.split()[1] == version, line
    assert "OpenMP: " in buf.getvalue()


def test_an_availability_check_that_returns_false_is_reported_too():
    csoftmax.register_backend(csoftmax.Backend("nope", lambda x: False, lambda: None, available=lambda: False))
    try:
        from csoftmax import _registry

        assert _registry.unavailable_reason("nope") == "its availability check says no"
        assert _registry.unavailable_reason("reference") is None
    finally:
        csoftmax.unregister_backend("nope")


def _run(code, **env):
    full = dict(os.environ)
    full.update(env)
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=full)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_import_is_light():
    """import csoftmax loads neither the C core nor CuPy, torch or Dask."""
    out = _run(
        """
        import sys, csoftmax
        print(sorted(m for m in ("cupy", "torch", "dask", "csoftmax._ckernels", "scipy") if m in sys.modules))
        """
    )
    assert out == "[]"


def test_isa_environment_variable_caps_the_choice():
    out = _run(
        """
        import io, numpy as np, csoftmax
        csoftmax.softmax(np.zeros(3))
        from csoftmax import _ckernels as ck
        print(ck.isa_names()[ck.get_isa()])
        """,
        CSOFTMAX_ISA="baseline",
    )
    assert out == "baseline"
    text = _run("import csoftmax; csoftmax.show_config()", CSOFTMAX_ISA="baseline")
    assert "capped by CSOFTMAX_ISA=baseline" in text


def test_isa_environment_variable_unknown_value_warns():
    out = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-c", "import numpy, csoftmax; csoftmax.softmax(numpy.zeros(2))"],
        capture_output=True,
        text=True,
        env=dict(os.environ, CSOFTMAX_ISA="sse9"),
    )
    assert out.returncode != 0 and "CSOFTMAX_ISA" in out.stderr
