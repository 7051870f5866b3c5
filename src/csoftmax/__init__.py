"""csoftmax: softmax, log_softmax and logsumexp, their derivatives and a fused softmax
cross-entropy -- numerically stable, fast, on whatever array the caller holds.

NumPy arrays run on a compiled C core, CuPy arrays on CUDA kernels, other arrays on an
array-API reference; see show_config(). `import csoftmax` imports neither the compiled
core nor any array library besides NumPy: backends load on first use, and
csoftmax.special (scipy.special's drop-in) is imported on first access.
"""
from typing import TYPE_CHECKING as _TYPE_CHECKING

__version__ = "0.1.0"

from . import _backends  # noqa: F401  (registers the built-in backends)
from ._api import (
    get_backend,
    log_softmax,
    log_softmax_backward,
    log_softmax_jacobian,
    logsumexp,
    softmax,
    softmax_backward,
    softmax_cross_entropy,
    softmax_jacobian,
)
from ._config import show_config
from ._ops import OPS
from ._registry import Backend, backends, register_backend, unregister_backend, use_backend

__all__ = list(OPS) + [
    "backends",
    "get_backend",
    "use_backend",
    "register_backend",
    "unregister_backend",
    "Backend",
    "OPS",
    "show_config",
    "__version__",
]

# submodules reachable as attributes without importing them here
_LAZY_SUBMODULES = ("special",)

if _TYPE_CHECKING:
    from . import special
else:

    def __getattr__(name: str) -> object:
        if name in _LAZY_SUBMODULES:
            import importlib

            return importlib.import_module(f"{__name__}.{name}")
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(__all__) | set(_LAZY_SUBMODULES))
