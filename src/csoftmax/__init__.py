"""csoftmax: softmax, log_softmax and logsumexp, their derivatives and a fused softmax
cross-entropy -- numerically stable, fast, on whatever array the caller holds.

NumPy arrays run on a compiled C core, CuPy arrays on CUDA kernels, other arrays on an
array-API reference; see show_config(). `import csoftmax` imports neither the compiled
core nor any array library besides NumPy: backends load on first use.
"""
from __future__ import annotations

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
