"""show_config(): what this installation of csoftmax has and what it would use."""
from __future__ import annotations

import platform
import sys

from . import _registry


def _c_core_lines():
    try:
        from ._backends import c  # the adapter applies CSOFTMAX_ISA when it loads the core
    except ImportError as exc:
        return [f"  not importable: {exc}"]
    ck = c.ck

    names = ck.isa_names()
    lines = [
        f"  instruction sets compiled: {', '.join(names)}",
        f"  supported by this CPU:     {', '.join(n for i, n in enumerate(names) if ck.isa_supported(i))}",
        f"  selected:                  {names[ck.get_isa()]}{c.isa_note()}",
        f"  OpenMP: {'yes' if ck.openmp_enabled() else 'no'}, up to {ck.max_threads()} threads",
    ]
    return lines


def show_config(file=None):
    """Print the version, each backend with whether it is available here, and the C
    core's instruction sets (compiled, supported, selected) and threads."""
    from . import __version__

    out = file if file is not None else sys.stdout
    lines = [
        f"csoftmax {__version__} (Python {platform.python_version()}, {platform.machine()})",
        "backends, in dispatch order:",
    ]
    for name in _registry.backends():
        rec = _registry.backend_record(name)
        state = "available" if _registry.is_available(name) else "unavailable"
        lines.append(f"  {name:<10} {state:<12} {rec.description}")
    lines.append("C core:")
    lines.extend(_c_core_lines())
    print("\n".join(lines), file=out)
