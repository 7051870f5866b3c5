"""The public functions' docstrings: every one in numpydoc form with an Examples section,
and the examples run, as doctests, against the installed package and print what they say."""
from __future__ import annotations

import doctest
import inspect

import numpy as np
import pytest

import csoftmax
import csoftmax.special


def _public():
    """(name, object) of every public function and class: csoftmax's __all__ and
    csoftmax.special's."""
    objs = [(n, getattr(csoftmax, n)) for n in csoftmax.__all__ if callable(getattr(csoftmax, n))]
    objs += [(f"special.{n}", getattr(csoftmax.special, n)) for n in csoftmax.special.__all__]
    return objs


PUBLIC = _public()


def test_every_public_function_is_listed():
    names = {n for n, _ in PUBLIC}
    assert set(csoftmax.OPS) <= names
    assert {"show_config", "backends", "get_backend", "use_backend", "register_backend", "unregister_backend",
            "Backend", "special.softmax", "special.log_softmax", "special.logsumexp"} <= names


@pytest.mark.parametrize("name,obj", PUBLIC, ids=[n for n, _ in PUBLIC])
def test_numpydoc_sections(name, obj):
    doc = inspect.getdoc(obj)
    assert doc, f"{name} has no docstring"
    sections = {line.strip() for line, under in zip(doc.splitlines(), doc.splitlines()[1:])
                if under.strip() and set(under.strip()) == {"-"} and len(under.strip()) == len(line.strip())}
    assert "Examples" in sections, f"{name}: no Examples section"
    params = [p for p in inspect.signature(obj).parameters.values() if p.name not in ("self", "cls")]
    if params:
        assert "Parameters" in sections, f"{name}: no Parameters section"
        for p in params:
            assert f"{p.name} :" in doc or f"{p.name}:" in doc or f"\n{p.name}\n" in doc, f"{name}: {p.name} not documented"
    if not inspect.isclass(obj) and inspect.signature(obj).return_annotation not in (None, "None"):
        assert {"Returns", "Yields"} & sections, f"{name}: no Returns section"


@pytest.mark.parametrize("name,obj", PUBLIC, ids=[n for n, _ in PUBLIC])
def test_examples_run(name, obj):
    tests = doctest.DocTestFinder(recurse=False).find(obj, name, globs={"np": np, "csoftmax": csoftmax})
    assert tests and tests[0].examples, f"{name}: no examples"
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    out = []
    for t in tests:
        runner.run(t, out=out.append)
    assert runner.summarize(verbose=False).failed == 0, "".join(out)
    assert not {"boxed", "none"} & set(csoftmax.backends()), "an example left a backend registered"
