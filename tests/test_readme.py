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


def test_interactive_examples(text):
    blocks = re.findall(r"```python\n(>>>.*?)```", text, flags=re.S)
    assert blocks
    parser = doctest.DocTestParser()
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    for i, block in enumerate(blocks):
        runner.run(parser.get_doctest(block, {}, f"README[{i}]", str(README), 0))
    assert runner.summarize(verbose=False).failed == 0


def test_training_loop(text, capsys):
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "for step in range" in b]
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
