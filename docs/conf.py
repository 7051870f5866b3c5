"""Sphinx configuration of csoftmax's documentation: the API reference from the installed
package's numpydoc docstrings, the design document and the README's tables through
myst-parser, the benchmark results and plots from benchmarks/.

    python -m pip install ".[docs]" && sphinx-build -W -b html docs docs/_build/html
"""
from __future__ import annotations

import csoftmax

project = "csoftmax"
copyright = "2026, the csoftmax developers"
author = "the csoftmax developers"
version = release = csoftmax.__version__

extensions = ["sphinx.ext.autodoc", "numpydoc", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
root_doc = "index"

# the API reference: signatures as written (the overloads' implementation), numpydoc
autodoc_typehints = "none"
autodoc_member_order = "bysource"
numpydoc_show_class_members = False
numpydoc_xref_param_type = False
# every public docstring must document its parameters and returns and carry examples
numpydoc_validation_checks = {"PR01", "PR02", "RT01", "EX01"}
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]
html_theme = "alabaster"
html_title = f"csoftmax {release}"
suppress_warnings = ["myst.xref_missing"]
