"""Type checking as a user meets it: `mypy --strict` on the installed package, on a user
script whose results must have the types the overloads promise, and on a script with
mistakes that mypy must report. Skipped where mypy is not installed."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("mypy", reason="mypy is not installed (pip install mypy, or the typing extra)")


def _mypy(tmp_path, *args):
    env = dict(os.environ, MYPY_CACHE_DIR=str(tmp_path / ".mypy_cache"))
    res = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-error-summary", *args], capture_output=True,
                         text=True, cwd=tmp_path, env=env)  # away from the source tree: the installed package
    return res.returncode, res.stdout + res.stderr


def test_the_package_is_clean_under_strict(tmp_path):
    rc, out = _mypy(tmp_path, "-p", "csoftmax")
    assert rc == 0, out


USER_SCRIPT = """
from typing import Any

import numpy as np
from numpy.typing import NDArray
from typing_extensions import assert_type

import csoftmax
import csoftmax.special

x32: NDArray[np.float32] = np.zeros((3, 4), dtype=np.float32)
x64 = np.ones(5)
assert_type(csoftmax.softmax(x32), NDArray[np.float32])
assert_type(csoftmax.log_softmax(x32, axis=0, temperature=2.0), NDArray[np.float32])
assert_type(csoftmax.logsumexp(x32, axis=(0, 1), keepdims=True), NDArray[np.float32])
assert_type(csoftmax.softmax([1.0, 2.0]), NDArray[np.floating[Any]])
assert_type(csoftmax.softmax(np.arange(3)), NDArray[np.floating[Any]])
assert_type(csoftmax.softmax(x32, dtype=np.float64), NDArray[np.floating[Any]])
y = csoftmax.softmax(x64)
assert_type(csoftmax.softmax_backward(x64, y), NDArray[np.float64])
assert_type(csoftmax.softmax_jacobian(x32), NDArray[np.float32])
labels = np.array([0, 1, 2])
assert_type(csoftmax.softmax_cross_entropy(x32, labels), NDArray[np.float32])
loss, grad = csoftmax.softmax_cross_entropy(x32, labels, return_grad=True)
assert_type(grad, NDArray[np.float32])
flag = bool(np.random.default_rng().random() > 0.5)
either = csoftmax.softmax_cross_entropy(x32, labels, return_grad=flag)


class Other:  # another library's array type: the result keeps it
    shape = (3,)
    dtype = "float32"


assert_type(csoftmax.softmax(Other()), Other)
assert_type(csoftmax.get_backend(x64), csoftmax.Backend)
with csoftmax.use_backend("reference") as rec:
    assert_type(rec.name, str)
assert_type(csoftmax.backends(), tuple[str, ...])
csoftmax.show_config()
s = csoftmax.special.logsumexp([1.0, 2.0], b=[1.0, -1.0], return_sign=True)
assert_type(s, tuple[Any, Any])
assert_type(csoftmax.special.softmax([1.0, 2.0]), Any)
"""


def test_a_user_script_type_checks(tmp_path):
    (tmp_path / "user.py").write_text(textwrap.dedent(USER_SCRIPT))
    rc, out = _mypy(tmp_path, "user.py")
    assert rc == 0, out


MISTAKES = {
    # without return_grad=True the result is one array, with it a pair
    "pair: tuple[np.ndarray, np.ndarray] = csoftmax.softmax_cross_entropy(x, labels)": "Incompatible types",
    "one: np.ndarray = csoftmax.softmax_cross_entropy(x, labels, return_grad=True)": "Incompatible types",
    "csoftmax.softmax(x, temperature='hot')": 'No overload variant of "softmax"',
    "csoftmax.softmax(x, reduction='mean')": 'No overload variant of "softmax"',
    "csoftmax.softmax_cross_entropy(x, labels, reduction='average')": "No overload variant",
    "csoftmax.sofmax(x)": 'Module has no attribute "sofmax"',
    "csoftmax.register_backend('c')": 'incompatible type "str"',
    "n: int = csoftmax.logsumexp(x)": "Incompatible types in assignment",
}


def test_mistakes_are_reported(tmp_path):
    body = "import numpy as np\nimport csoftmax\nx = np.ones((2, 3))\nlabels = np.array([0, 1])\n"
    lines = list(MISTAKES)
    (tmp_path / "wrong.py").write_text(body + "\n".join(lines) + "\n")
    rc, out = _mypy(tmp_path, "wrong.py")
    assert rc == 1
    first = body.count("\n") + 1
    for i, (line, message) in enumerate(MISTAKES.items()):
        reported = [m for m in out.splitlines() if m.startswith(f"wrong.py:{first + i}:")]
        assert any(message in m for m in reported), f"{line!r}: mypy said {reported}"
