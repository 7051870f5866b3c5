"""csoftmax: softmax, log_softmax and logsumexp, their derivatives and a fused softmax
cross-entropy -- numerically stable, fast, on whatever array the caller holds.

NumPy arrays run on a compiled C core, CuPy arrays on CUDA kernels, other arrays on an
array-API reference; see show_config(). `import csoftmax` imports neither the compiled
core nor any array library besides NumPy: backends load on first use, and
csoftmax.special (scipy.special's drop-in) is imported on first access.
"""
import typing as _tp

__version__ = "0.1.0"

# (the "name as name" imports mark the public API as exported, for type checkers)
from . import _backends  # noqa: F401  (registers the built-in backends)
from ._api import get_backend as get_backend
from ._api import log_softmax as log_softmax
from ._api import log_softmax_backward as log_softmax_backward
from ._api import log_softmax_jacobian as log_softmax_jacobian
from ._api import logsumexp as logsumexp
from ._api import softmax as softmax
from ._api import softmax_backward as softmax_backward
from ._api import softmax_cross_entropy as softmax_cross_entropy
from ._api import softmax_jacobian as softmax_jacobian
from ._config import show_config as show_config
from ._ops import OPS as OPS
from ._registry import Backend as Backend
from ._registry import backends as backends
from ._registry import register_backend as register_backend
from ._registry import unregister_backend as unregister_backend
from ._registry import use_backend as use_backend

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

if _tp.TYPE_CHECKING:
    from . import special as special
else:

    def __getattr__(name: str) -> object:
        if name in _LAZY_SUBMODULES:
            import importlib

            return importlib.import_module(f"{__name__}.{name}")
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(__all__) | set(_LAZY_SUBMODULES))
