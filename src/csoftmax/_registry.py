"""The backend registry: what a backend is, which ones exist, and which one takes an array.

A backend is a small record: a name, a predicate that recognises its arrays by their class
(without importing the array library), a loader that imports the module implementing the
ops (lazily, on first use), and an availability check. Dispatch order for an op on an
array x:

    explicit backend= > the innermost use_backend(...) > the first registered, available
    backend that accepts type(x) and implements the op > "reference"

The automatic choice is resolved once per (type, op) and cached, and so, once the
backend's module is loaded, are the module and its fast entry for plain calls
(fast_entry); registering or unregistering a backend clears the caches. What a loaded
module must provide is csoftmax._protocol's.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import threading
from typing import Any, Callable, Iterator

from . import _ops, _protocol
from ._ops import BY_NAME, OPS


def _always() -> bool:
    return True


@dataclasses.dataclass(frozen=True)
class Backend:
    """A backend: how csoftmax recognises its arrays and loads its implementation.

    Parameters
    ----------
    name : str
        What ``backend=`` and ``use_backend()`` take.
    accepts : callable
        ``accepts(x) -> bool``, true for arrays this backend computes on; it must not
        import anything (look at ``type(x).__module__`` and the class name).
    loader : callable
        Returns the module (or object) implementing the backend protocol
        (``csoftmax._protocol``) for its ops; called once, on first use.
    ops : tuple of str, optional
        The op names it implements (a subset of ``csoftmax.OPS``; default: all).
    available : callable, optional
        ``available() -> bool``, whether it can run here (compiled extension present,
        library importable, device present); called lazily and cached. An exception
        it raises also means unavailable, and its message is the reason
        ``show_config()`` gives.
    description : str, optional
        One line for ``show_config()``.

    See Also
    --------
    register_backend, get_backend

    Examples
    --------
    >>> rec = csoftmax.get_backend(np.zeros(3))
    >>> rec.name, rec.implements("logsumexp")
    ('c', True)
    >>> mine = csoftmax.Backend("mine", accepts=lambda x: False, loader=lambda: None, ops=("softmax",))
    >>> mine.ops
    ('softmax',)
    """

    name: str
    accepts: Callable[[Any], bool]
    loader: Callable[[], Any]
    ops: tuple[str, ...] = OPS
    available: Callable[[], bool] = _always
    description: str = ""

    def implements(self, op: str) -> bool:
        """Whether the backend implements the op of this name."""
        return op in self.ops


_lock = threading.RLock()
_backends: dict[str, Backend] = {}
_modules: dict[str, Any] = {}
_availability: dict[str, bool] = {}
_reasons: dict[str, str] = {}  # why an unavailable backend is unavailable
_auto_cache: dict[tuple[type, str], Backend] = {}
# plain dispatch of (type, op) once its backend is loaded: (backend, module, fast entry)
_loaded_cache: dict[tuple[type, str], tuple[Backend, Any, Any]] = {}
# the backend whose library an array type belongs to (library_of)
_library_cache: dict[type, Backend | None] = {}
_override: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("csoftmax_backend", default=())


def register_backend(backend: Backend, *, before: str | None = None, replace: bool = False) -> None:
    """Add a backend to dispatch.

    It is tried after those registered earlier, or just before the one named by
    ``before``; registering clears the cached dispatch choices.

    Parameters
    ----------
    backend : Backend
        The record of the backend.
    before : str, optional
        The name of a registered backend to put it in front of (e.g. "reference").
    replace : bool, optional
        Replace a registered backend of the same name.

    Raises
    ------
    TypeError
        When ``backend`` is not a ``csoftmax.Backend``.
    ValueError
        For a name already taken (without ``replace=True``), an unknown ``before``, or
        ops that are not csoftmax's.

    See Also
    --------
    unregister_backend, Backend

    Examples
    --------
    A backend for a type of one's own that computes softmax with the reference:

    >>> class Boxed:
    ...     def __init__(self, a):
    ...         self.a = np.asarray(a, dtype=float)
    ...         self.shape, self.dtype, self.ndim = self.a.shape, self.a.dtype, self.a.ndim
    >>> class BoxedBackend:
    ...     def namespace(self, x):
    ...         return np
    ...     def writable(self, out):
    ...         return True
    ...     def forward(self, op, x, /, *, axes, temperature, keepdims, where, out, dtype):
    ...         return Boxed(csoftmax.softmax(x.a, axis=axes, temperature=temperature))
    >>> csoftmax.register_backend(csoftmax.Backend(
    ...     "boxed", accepts=lambda x: type(x).__name__ == "Boxed", loader=BoxedBackend, ops=("softmax",)),
    ...     before="reference")
    >>> csoftmax.softmax(Boxed([1.0, 2.0])).a
    array([0.26894142, 0.73105858])
    >>> csoftmax.unregister_backend("boxed").name
    'boxed'
    """
    if not isinstance(backend, Backend):
        raise TypeError(f"backend must be a csoftmax.Backend, got {type(backend).__name__}")
    unknown = set(backend.ops) - set(OPS)
    if unknown:
        raise ValueError(f"backend {backend.name!r} names unknown ops: {sorted(unknown)}")
    with _lock:
        if backend.name in _backends and not replace:
            raise ValueError(f"a backend named {backend.name!r} is already registered")
        if before is not None and before not in _backends:
            raise ValueError(f"unknown backend {before!r} in before=")
        items = [(k, v) for k, v in _backends.items() if k != backend.name]
        if before is None:
            items.append((backend.name, backend))
        else:
            at = next(i for i, (k, _) in enumerate(items) if k == before)
            items.insert(at, (backend.name, backend))
        _backends.clear()
        _backends.update(items)
        _forget(backend.name)


def unregister_backend(name: str) -> Backend:
    """Remove a registered backend: the inverse of ``register_backend``.

    Parameters
    ----------
    name : str
        The backend's name.

    Returns
    -------
    Backend
        The record removed.

    Raises
    ------
    ValueError
        When no backend of that name is registered.

    Examples
    --------
    >>> csoftmax.register_backend(csoftmax.Backend("none", accepts=lambda x: False, loader=lambda: None))
    >>> csoftmax.unregister_backend("none").name
    'none'
    >>> "none" in csoftmax.backends()
    False
    """
    with _lock:
        rec = backend_record(name)
        del _backends[name]
        _forget(name)
    return rec


def _forget(name: str) -> None:
    _modules.pop(name, None)
    _availability.pop(name, None)
    _reasons.pop(name, None)
    _auto_cache.clear()
    _loaded_cache.clear()
    _library_cache.clear()


def backends() -> tuple[str, ...]:
    """The names of the registered backends, in dispatch order.

    Available here or not (``show_config()`` says which, and why).

    Returns
    -------
    tuple of str

    Examples
    --------
    >>> csoftmax.backends()[:5]
    ('c', 'cuda', 'torch', 'jax', 'dask')
    """
    return tuple(_backends)


def backend_record(name: str) -> Backend:
    if not isinstance(name, str):
        raise TypeError(f"backend must be a registered backend's name (a str), got {type(name).__name__}")
    try:
        return _backends[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; registered: {', '.join(_backends)}") from None


def is_available(name: str) -> bool:
    """Whether the backend can run here (its check, run once)."""
    b = backend_record(name)
    ok = _availability.get(name)
    if ok is None:
        try:
            ok = bool(b.available())
            if not ok:
                _reasons[name] = "its availability check says no"
        except Exception as exc:
            ok = False
            _reasons[name] = str(exc) or type(exc).__name__
        _availability[name] = ok
    return ok


def unavailable_reason(name: str) -> str | None:
    """Why a backend cannot run here (the message its availability check raised); None
    when it is available."""
    if is_available(name):
        return None
    return _reasons.get(name, "its availability check says no")


def load(name: str) -> Any:
    """The module implementing a backend's ops (imported on first use, and checked
    against the protocol then)."""
    mod = _modules.get(name)
    if mod is None:
        b = backend_record(name)
        if not is_available(name):
            raise RuntimeError(f"backend {name!r} is not available here; see csoftmax.show_config()")
        with _lock:
            mod = _modules.get(name)
            if mod is None:
                mod = b.loader()
                lacks = _protocol.missing(mod, tuple(BY_NAME[o] for o in b.ops))
                if lacks:
                    raise TypeError(f"backend {name!r}: its module lacks {', '.join(lacks)} (see csoftmax._protocol)")
                _modules[name] = mod
    return mod


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[Backend]:
    """A context in which calls without ``backend=`` use this backend.

    Thread- and task-local (a context variable); blocks nest, the innermost wins. The
    backend must be able to take the arrays passed, or the call raises.

    Parameters
    ----------
    name : str
        A registered backend's name.

    Yields
    ------
    Backend
        The backend's record.

    Raises
    ------
    ValueError
        For an unknown backend (on entering the block).

    Examples
    --------
    >>> x = np.array([1.0, 2.0])
    >>> with csoftmax.use_backend("reference") as rec:
    ...     print(rec.name, csoftmax.get_backend(x).name, csoftmax.softmax(x))
    reference reference [0.26894142 0.73105858]
    """
    b = backend_record(name)
    token = _override.set(_override.get() + (b.name,))
    try:
        yield b
    finally:
        _override.reset(token)


def _auto(cls: type, op: str, x: Any) -> Backend:
    key = (cls, op)
    b = _auto_cache.get(key)
    if b is None:
        for cand in _backends.values():
            if cand.name != "reference" and cand.implements(op) and cand.accepts(x) and is_available(cand.name):
                b = cand
                break
        else:
            b = _backends["reference"]
        _auto_cache[key] = b
    return b


def library_of(x: Any) -> Backend | None:
    """The first registered backend other than the reference that accepts x -- what
    makes two arrays "of the same library" (a JAX array and a JAX tracer, a torch tensor
    and a Parameter) -- or None for arrays only the reference takes. Cached per type."""
    cls = type(x)
    try:
        return _library_cache[cls]
    except KeyError:
        pass
    found = next((b for b in _backends.values() if b.name != "reference" and b.accepts(x)), None)
    _library_cache[cls] = found
    return found


def resolve(x: Any, op: str, backend: str | None = None) -> Backend:
    """The backend that computes op on x."""
    name = backend
    if name is None:
        stack = _override.get()
        if not stack:
            return _auto(type(x), op, x)
        name = stack[-1]
    b = backend_record(name)
    if not b.implements(op):
        raise ValueError(f"backend {name!r} does not implement {op}")
    if not b.accepts(x):
        raise TypeError(f"backend {name!r} cannot take arrays of type {type(x).__module__}.{type(x).__qualname__}")
    if not is_available(name):
        raise RuntimeError(f"backend {name!r} is not available here; see csoftmax.show_config()")
    return b


def dispatch(x: Any, op: str, backend: str | None = None) -> tuple[Backend, Any]:
    """The backend that computes op on x, and its module (loaded here if need be)."""
    auto = backend is None and not _override.get()
    if auto:
        hit = _loaded_cache.get((type(x), op))
        if hit is not None:
            return hit[0], hit[1]
    b = resolve(x, op, backend)
    mod = load(b.name)
    if auto:
        fast = getattr(mod, "fast_entry", None)
        _loaded_cache[(type(x), op)] = (b, mod, fast(BY_NAME[op], type(x)) if fast is not None else None)
    return b, mod


def fast_entry(cls: type, op: str) -> Callable[..., Any] | None:
    """The fast entry of the backend that plain dispatch gives (cls, op) -- once a call has
    loaded it, and unless use_backend() is in force; None otherwise."""
    if _override.get():
        return None
    hit = _loaded_cache.get((cls, op))
    return None if hit is None else hit[2]


def get_backend(x: Any, op: str = "softmax") -> Backend:
    """The backend a call of ``op`` on ``x`` would use (honouring use_backend)."""
    return resolve(x, _ops.op(op).name)
