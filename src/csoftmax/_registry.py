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
    """A backend.

    name: what backend= and use_backend() take.
    accepts: ``accepts(x) -> bool``, true for arrays this backend computes on; it must not
        import anything (look at ``type(x).__module__`` and the class name).
    loader: returns the module (or object) implementing csoftmax._protocol's interface for
        its ops; called once, on first use.
    ops: the op names it implements (a subset of csoftmax.OPS).
    available: ``available() -> bool``, whether it can run here (compiled extension
        present, library importable, device present); called lazily and cached. An
        exception it raises also means unavailable, and its message is the reason
        show_config() gives (unavailable_reason).
    description: one line for show_config().
    """

    name: str
    accepts: Callable[[Any], bool]
    loader: Callable[[], Any]
    ops: tuple[str, ...] = OPS
    available: Callable[[], bool] = _always
    description: str = ""

    def implements(self, op: str) -> bool:
        return op in self.ops


_lock = threading.RLock()
_backends: dict[str, Backend] = {}
_modules: dict[str, Any] = {}
_availability: dict[str, bool] = {}
_reasons: dict[str, str] = {}  # why an unavailable backend is unavailable
_auto_cache: dict[tuple[type, str], Backend] = {}
# plain dispatch of (type, op) once its backend is loaded: (backend, module, fast entry)
_loaded_cache: dict[tuple[type, str], tuple[Backend, Any, Any]] = {}
_override: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("csoftmax_backend", default=())


def register_backend(backend: Backend, *, before: str | None = None, replace: bool = False) -> None:
    """Add a backend. It is tried after those registered earlier, or just before the one
    named by ``before``. A name already taken is a ValueError unless ``replace=True``."""
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
    """Remove a registered backend (returns its record); ValueError if there is none."""
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


def backends() -> tuple[str, ...]:
    """Names of the registered backends, in dispatch order."""
    return tuple(_backends)


def backend_record(name: str) -> Backend:
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
    """Within the block, calls without backend= use this backend (thread- and
    task-local). It must be able to take the arrays passed, or the call raises."""
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
