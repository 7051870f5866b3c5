"""The built-in backends, registered in dispatch order: `c` (NumPy arrays, the compiled C
core), `cuda` (CuPy arrays, hand-written CUDA kernels), `reference` (any array with an
array-API namespace; also the fallback). Each is recognised by its array's class name,
so nothing here imports NumPy's C core, CuPy or any other array library."""
from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from typing import Any

from .._registry import Backend, register_backend


def _is_numpy(x: Any) -> bool:
    cls = type(x)
    return cls.__module__ == "numpy" and cls.__name__ in ("ndarray", "memmap")


def _is_cupy(x: Any) -> bool:
    cls = type(x)
    return cls.__module__.startswith("cupy") and cls.__name__ == "ndarray"


# The availability checks raise, instead of returning False, to say why a backend is
# unavailable: the registry keeps the message for show_config().
def _c_available() -> bool:
    if importlib.util.find_spec("csoftmax._ckernels") is None:
        raise ImportError("the compiled extension csoftmax._ckernels is not built (a source tree without a build?)")
    return True


def _cuda_available() -> bool:
    if importlib.util.find_spec("cupy") is None:
        raise ImportError("CuPy is not installed (pip install 'csoftmax[cuda]' or 'csoftmax[cuda12]')")
    try:
        cupy = importlib.import_module("cupy")
        count = int(cupy.cuda.runtime.getDeviceCount())
    except Exception as exc:
        raise RuntimeError(f"CuPy cannot reach a CUDA driver or device: {type(exc).__name__}: {exc}") from None
    if count == 0:
        raise RuntimeError("CuPy is installed but there is no CUDA GPU (cupy.cuda.runtime.getDeviceCount() is 0)")
    return True


def _load(name: str) -> Callable[[], Any]:
    return lambda: importlib.import_module(f"csoftmax._backends.{name}")


register_backend(Backend("c", _is_numpy, _load("c"), available=_c_available,
                         description="NumPy arrays on the compiled C core"))
register_backend(Backend("cuda", _is_cupy, _load("cuda"), available=_cuda_available,
                         description="CuPy arrays on CUDA kernels (CuPy RawModule)"))


def _is_array(x: Any) -> bool:
    """Anything array-like: an array-API namespace, or a shape and a dtype."""
    return hasattr(x, "__array_namespace__") or (hasattr(x, "shape") and hasattr(x, "dtype"))


register_backend(Backend("reference", _is_array, _load("reference"),
                         description="any array-API array, in plain array-API code"))
