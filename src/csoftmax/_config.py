"""show_config(): what this installation of csoftmax has and what it would use -- the
backends (and why an unavailable one is unavailable), the C core's instruction sets and
threads, and the optional libraries installed (found without importing them)."""
from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import platform
import sys
from typing import TextIO

from . import _registry

# the optional libraries show_config() looks for: (import name, what csoftmax does with it)
OPTIONAL_LIBRARIES: tuple[tuple[str, str], ...] = (
    ("cupy", "array library: the cuda backend"),
    ("torch", "array library: the torch backend; parity tests, benchmarks"),
    ("jax", "array library: the jax backend"),
    ("dask", "array library: the dask backend (with dask.distributed: on a cluster)"),
    ("array_api_strict", "array library: the reference backend"),
    ("array_api_compat", "namespaces for arrays without __array_namespace__"),
    ("scipy", "benchmarks and the csoftmax.special parity tests"),
    ("threadpoolctl", "thread limits of the C core"),
    ("matplotlib", "the plot of `python -m csoftmax bench --plot`"),
)


@functools.cache
def _distributions() -> dict[str, list[str]]:
    return dict(importlib.metadata.packages_distributions())


def library_version(module: str) -> str | None:
    """The installed version of an importable top-level module, without importing it;
    None when it is not installed."""
    try:
        if importlib.util.find_spec(module) is None:
            return None
    except (ImportError, ValueError):
        return None
    for dist in [module] + _distributions().get(module, []):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "version unknown"


def _c_core_lines() -> list[str]:
    try:
        from . import _ckernels as ck
        from ._backends import c  # the adapter applies CSOFTMAX_ISA when it loads the core
    except ImportError as exc:
        return [f"  not importable: {exc}"]

    names = ck.isa_names()
    if ck.openmp_enabled():
        threads = f"OpenMP: yes, up to {ck.max_threads()} threads"
    else:
        threads = "OpenMP: no (built without it): one thread"
    return [
        f"  instruction sets compiled: {', '.join(names)}",
        f"  supported by this CPU:     {', '.join(n for i, n in enumerate(names) if ck.isa_supported(i))}",
        f"  selected:                  {names[ck.get_isa()]}{c.isa_note()}",
        f"  {threads}",
    ]


def show_config(file: TextIO | None = None) -> None:
    """Print what this installation has and what it would use.

    The version; each registered backend in dispatch order, whether it is available here
    and, if not, why (CuPy missing, no GPU, the driver's error); the C core's instruction
    sets (compiled, supported by this CPU, selected) and its threads; the optional
    libraries installed, found without importing them.

    Parameters
    ----------
    file : text stream, optional
        Where to print; ``sys.stdout`` by default.

    See Also
    --------
    backends : the names of the registered backends.

    Examples
    --------
    >>> import io
    >>> buf = io.StringIO()
    >>> csoftmax.show_config(file=buf)
    >>> print(buf.getvalue().splitlines()[1])
    backends, in dispatch order:
    """
    from . import __version__

    out = file if file is not None else sys.stdout
    lines = [
        f"csoftmax {__version__} (Python {platform.python_version()}, {platform.machine()})",
        "backends, in dispatch order:",
    ]
    for name in _registry.backends():
        rec = _registry.backend_record(name)
        why = _registry.unavailable_reason(name)
        state = "available" if why is None else "unavailable"
        lines.append(f"  {name:<10} {state:<12} {rec.description}")
        if why is not None:
            lines.append(f"  {'':<10} {'':<12} why: {why}")
    lines.append("C core:")
    lines.extend(_c_core_lines())
    lines.append("optional libraries:")
    for module, use in OPTIONAL_LIBRARIES:
        version = library_version(module)
        lines.append(f"  {module:<17} {version or 'not installed':<16} {use}")
    print("\n".join(lines), file=out)
