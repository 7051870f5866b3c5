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

from .._registry import Backend, register_backend


def _has_class(x, test) -> bool:
    """Whether x's class, or a class it derives from, passes test(module, name)."""
    return any(test(k.__module__, k.__name__) for k in type(x).__mro__)


def _is_numpy(x) -> bool:
    """numpy.ndarray and its subclasses (np.matrix, np.memmap, ...), masked arrays aside."""
    cls = type(x)
    if cls.__module__ == "numpy" and cls.__name__ == "ndarray":
        return True
    return not cls.__module__.startswith("numpy.ma") and _has_class(x, lambda m, n: m == "numpy" and n == "ndarray")


def _is_cupy(x) -> bool:
    cls = type(x)
    return cls.__module__.startswith("cupy") and cls.__name__ == "ndarray"


def _is_torch(x) -> bool:
    """torch.Tensor and its subclasses (torch.nn.Parameter, ...)."""
    return _has_class(x, lambda m, n: m == "torch" and n == "Tensor")


def _is_jax(x) -> bool:
    """JAX's arrays and its tracers (inside jit, grad, vmap): one library."""
    return _has_class(x, lambda m, n: (m.startswith("jaxlib") and n == "ArrayImpl")
                      or (m.startswith("jax.") and n == "Tracer"))


def _is_dask(x) -> bool:
    return _has_class(x, lambda m, n: m == "dask.array.core" and n == "Array")


def _c_available() -> bool:
    return importlib.util.find_spec("csoftmax._ckernels") is not None


def _cuda_available() -> bool:
    if importlib.util.find_spec("cupy") is None:
        return False
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def _importable(name):
    return lambda: _c_available() and importlib.util.find_spec(name) is not None


def _load(name):
    return lambda: importlib.import_module(f"csoftmax._backends.{name}")


register_backend(Backend("c", _is_numpy, _load("c"), available=_c_available,
                         description="NumPy arrays on the compiled C core"))
register_backend(Backend("cuda", _is_cupy, _load("cuda"), available=_cuda_available,
                         description="CuPy arrays on CUDA kernels (CuPy RawModule)"))
register_backend(Backend("torch", _is_torch, _load("torch"), available=_importable("torch"),
                         description="torch tensors: CPU on the C core, CUDA on the CUDA kernels; autograd"))
register_backend(Backend("jax", _is_jax, _load("jax"), available=_importable("jax"),
                         description="JAX arrays on the C core; under jit/grad/vmap through callbacks"))
register_backend(Backend("dask", _is_dask, _load("dask"), available=_importable("dask.array"),
                         description="Dask arrays, lazily: the C core (or CUDA) chunk by chunk"))
register_backend(Backend("reference", lambda x: True, _load("reference"),
                         description="any array-API array, in plain array-API code"))
