"""The built-in backends, registered in dispatch order: `c` (NumPy arrays and their
subclasses, the compiled C core), `cuda` (CuPy arrays, hand-written CUDA kernels), `torch`
(torch tensors, CPU and CUDA, with autograd), `jax` (JAX arrays and tracers), `dask` (Dask
arrays, lazily, chunk by chunk), `reference` (any array with an array-API namespace; also
the fallback). Each is recognised by the classes of its arrays -- their module and class
names, along the method resolution order -- so nothing here imports NumPy's C core, CuPy,
torch, JAX, Dask or any other array library."""
from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from typing import Any

from .._registry import Backend, register_backend


def _has_class(x: Any, test: Callable[[str, str], bool]) -> bool:
    """Whether x's class, or a class it derives from, passes test(module, name)."""
    return any(test(k.__module__, k.__name__) for k in type(x).__mro__)


def _is_numpy(x: Any) -> bool:
    """numpy.ndarray and its subclasses (np.matrix, np.memmap, ...), masked arrays aside."""
    cls = type(x)
    if cls.__module__ == "numpy" and cls.__name__ == "ndarray":
        return True
    return not cls.__module__.startswith("numpy.ma") and _has_class(x, lambda m, n: m == "numpy" and n == "ndarray")


def _is_cupy(x: Any) -> bool:
    cls = type(x)
    return cls.__module__.startswith("cupy") and cls.__name__ == "ndarray"


def _is_torch(x: Any) -> bool:
    """torch.Tensor and its subclasses (torch.nn.Parameter, ...)."""
    return _has_class(x, lambda m, n: m == "torch" and n == "Tensor")


def _is_jax(x: Any) -> bool:
    """JAX's arrays and its tracers (inside jit, grad, vmap): one library."""
    return _has_class(x, lambda m, n: (m.startswith("jaxlib") and n == "ArrayImpl")
                      or (m.startswith("jax.") and n == "Tracer"))


def _is_dask(x: Any) -> bool:
    return _has_class(x, lambda m, n: m == "dask.array.core" and n == "Array")


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


def _library_available(module: str, library: str) -> Callable[[], bool]:
    """The check of a backend computing on the C core the arrays of an installed library."""
    def check() -> bool:
        _c_available()
        if importlib.util.find_spec(module) is None:
            raise ImportError(f"{library} is not installed")
        return True
    return check


def _load(name: str) -> Callable[[], Any]:
    return lambda: importlib.import_module(f"csoftmax._backends.{name}")


register_backend(Backend("c", _is_numpy, _load("c"), available=_c_available,
                         description="NumPy arrays on the compiled C core"))
register_backend(Backend("cuda", _is_cupy, _load("cuda"), available=_cuda_available,
                         description="CuPy arrays on CUDA kernels (CuPy RawModule)"))
register_backend(Backend("torch", _is_torch, _load("torch"), available=_library_available("torch", "torch"),
                         description="torch tensors: CPU on the C core, CUDA on the CUDA kernels; autograd"))
register_backend(Backend("jax", _is_jax, _load("jax"), available=_library_available("jax", "JAX"),
                         description="JAX arrays on the C core; under jit/grad/vmap through callbacks"))
register_backend(Backend("dask", _is_dask, _load("dask"), available=_library_available("dask.array", "dask[array]"),
                         description="Dask arrays, lazily: the C core (or CUDA) chunk by chunk"))


def _is_array(x: Any) -> bool:
    """Anything array-like: an array-API namespace, or a shape and a dtype."""
    return hasattr(x, "__array_namespace__") or (hasattr(x, "shape") and hasattr(x, "dtype"))


register_backend(Backend("reference", _is_array, _load("reference"),
                         description="any array-API array, in plain array-API code"))
