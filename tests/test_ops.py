"""The op table is the one definition of the ops: its kernel kinds agree with the shared
header (src/backends/common/csm_kinds.h, as installed with the CUDA sources) and with the
compiled core; every op is public, covered by the test families, and implemented by
every backend that claims it."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

import csoftmax
from csoftmax import _ops, _protocol, _registry
from csoftmax._backends import cuda
from helpers import available_backends, backend_module

HERE = Path(__file__).resolve().parent


def _header_kinds():
    """The enumerators of enum csm_kind, from the header the package ships."""
    header = next(d / "csm_kinds.h" for d in cuda.kernel_dirs() if (d / "csm_kinds.h").exists())
    body = re.search(r"enum csm_kind \{(.*?)\};", header.read_text(), re.S).group(1)
    return {name: int(code) for name, code in re.findall(r"CSM_(\w+)\s*=\s*(\d+)", body)}


def test_kinds_match_the_shared_header():
    assert {k.name: int(k) for k in _ops.Kind} == _header_kinds()


def test_kinds_match_the_compiled_core():
    ck = pytest.importorskip("csoftmax._ckernels", reason="the C core is not built here")
    assert {k.name: int(k) for k in _ops.Kind} == ck.kind_codes()


def test_every_kind_computes_an_op():
    """Each kind is an op's, but STATS: the rows' statistics of the C core's two-stage
    interface (csoftmax._backends.c.row_stats), which no op computes alone."""
    assert {op.kind for op in _ops.TABLE if op.kind is not None} == set(_ops.Kind) - {_ops.Kind.STATS}


def test_the_table_is_the_public_api():
    assert csoftmax.OPS == tuple(op.name for op in _ops.TABLE)
    for name in csoftmax.OPS:
        assert callable(getattr(csoftmax, name)) and name in csoftmax.__all__
        assert _ops.op(name).forward in csoftmax.OPS
    with pytest.raises(ValueError, match="unknown op"):
        _ops.op("softplus")


def test_every_op_is_covered_by_the_equivalence_matrix():
    """Each op is a parameter of some test of the matrix (they take their ops from the
    table by family, so a new op of a known family joins them; one of a new family fails
    here until a test family covers it)."""
    import test_equivalence

    covered = set()
    for fn in vars(test_equivalence).values():
        for mark in getattr(fn, "pytestmark", []):
            if mark.name == "parametrize" and mark.args[0] == "op":
                covered |= set(mark.args[1])
    assert covered == set(csoftmax.OPS), f"not in the matrix: {sorted(set(csoftmax.OPS) - covered)}"


@pytest.mark.parametrize("name", available_backends())
def test_every_backend_implements_the_ops_it_claims(name):
    rec = _registry.backend_record(name)
    mod = backend_module(name)
    assert _protocol.missing(mod, tuple(_ops.BY_NAME[o] for o in rec.ops)) == []
    for hook in ("from_numpy", "to_numpy"):  # what the test matrix runs a backend with
        assert callable(getattr(mod, hook, None)), f"{name} lacks {hook}"


def test_the_protocol_names_every_family():
    for family in _ops.Family:
        assert hasattr(_protocol.BackendModule, _protocol.method(family))
