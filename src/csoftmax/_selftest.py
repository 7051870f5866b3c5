"""`python -m csoftmax check`: a short self-test of every available backend on this
machine, against the reference backend in float64.

Useful after installing on a new machine or GPU: each backend that offers the protocol's
from_numpy/to_numpy hooks runs every op of csoftmax._ops.TABLE it implements (by family)
on a few NumPy-made inputs -- ordinary rows, rows with NaN, +inf and -inf entries,
masks, a temperature, several axes -- in float16, float32 and float64, and each result is
compared with the reference backend's on float64 copies of the same values, rounded to
the result dtype. The `c` backend runs once per instruction set the CPU supports; the
reference itself is compared with the C core. A mismatch is reported with its case and
makes the command's exit status 1.
"""
from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Iterator
from typing import Any, TextIO

import numpy as np

from . import _ops, _registry

# relative tolerance per result dtype, and the absolute floor below which values are equal
RTOL = {"float16": 2.0**-10, "float32": 2e-6, "float64": 4e-15}
ATOL = {"float16": 1e-7, "float32": 1e-40, "float64": 1e-305}
DTYPES = ("float16", "float32", "float64")


@dataclasses.dataclass(frozen=True)
class Case:
    """One call: the op, its NumPy arguments and keywords, and a label for reports."""

    label: str
    op: str
    args: tuple[np.ndarray, ...]
    kwargs: dict[str, Any]


def _values(rng: np.random.Generator, shape: tuple[int, ...], dtype: str, special: bool) -> np.ndarray:
    v = rng.standard_normal(shape) * 4.0
    if special and v.size >= 6:
        flat = v.reshape(-1)
        flat[1], flat[3], flat[5] = -np.inf, np.nan, np.inf
    return v.astype(dtype)


def cases(dtype: str, seed: int = 0) -> Iterator[Case]:
    """The inputs of the self-test for one dtype, for every op of the op table."""
    rng = np.random.default_rng(seed)
    shapes: list[tuple[tuple[int, ...], int | tuple[int, ...]]] = [
        ((7,), -1), ((5, 33), -1), ((4, 1000), -1), ((6, 9), 0), ((2, 3, 5), (0, 2))]
    for op in _ops.TABLE:
        fam = op.family
        for shape, axis in shapes:
            tag = f"{op.name} {dtype} {'x'.join(map(str, shape))} axis={axis}"
            if fam is _ops.Family.FORWARD:
                x = _values(rng, shape, dtype, special=True)
                yield Case(tag, op.name, (x,), {"axis": axis})
                mask = rng.random(shape) < 0.7
                kw: dict[str, Any] = {"axis": axis, "where": mask}
                if op.name != "logsumexp":
                    kw["temperature"] = 0.5
                yield Case(tag + " masked", op.name, (x,), kw)
            elif fam is _ops.Family.BACKWARD:
                x = _values(rng, shape, dtype, special=False)
                y = np.asarray(getattr(_api(), op.forward)(x, axis=axis, backend="reference"))
                g = _values(rng, shape, dtype, special=False)
                yield Case(tag, op.name, (g, y), {"axis": axis})
            elif isinstance(axis, int) and shape[axis] <= 64:  # one axis, small matrices
                ax = axis % len(shape)
                x = _values(rng, shape, dtype, special=False)
                if fam is _ops.Family.JACOBIAN:
                    yield Case(tag, op.name, (x,), {"axis": axis, "temperature": 2.0})
                    continue
                labels = rng.integers(0, shape[ax], size=tuple(s for i, s in enumerate(shape) if i != ax))
                yield Case(tag + " labels", op.name, (x, labels), {"axis": axis, "return_grad": True})
                probs = rng.random(shape)
                probs = (probs / probs.sum(axis=ax, keepdims=True)).astype(dtype)
                yield Case(tag + " probs", op.name, (x, probs),
                           {"axis": axis, "return_grad": True, "label_smoothing": 0.1})


def _api() -> Any:
    import csoftmax

    return csoftmax


def _call(backend: str, case: Case) -> list[np.ndarray]:
    """The case on a backend, with its arrays converted by the backend's from_numpy and
    the results back by its to_numpy."""
    mod = _registry.load(backend)
    args = [mod.from_numpy(a) for a in case.args]
    kw = {k: (mod.from_numpy(v) if isinstance(v, np.ndarray) else v) for k, v in case.kwargs.items()}
    res = getattr(_api(), case.op)(*args, backend=backend, **kw)
    return [np.asarray(mod.to_numpy(r)) for r in (res if isinstance(res, tuple) else (res,))]


def _oracle(oracle: str, case: Case) -> list[np.ndarray]:
    """The oracle backend on float64 copies of the inputs (integer labels stay integers)."""
    args = tuple(a if a.dtype.kind in "iu" else a.astype(np.float64) for a in case.args)
    kw = {k: (v.astype(np.float64) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v)
          for k, v in case.kwargs.items()}
    return _call(oracle, Case(case.label, case.op, args, kw))


def compare(got: np.ndarray, want: np.ndarray, rdt: np.dtype, rtol: float | None = None,
            atol: float | None = None) -> str | None:
    """None when got (of dtype rdt) matches the float64 oracle want: the same NaNs and
    infinities, finite values within RTOL/ATOL of want rounded to rdt; else what differs."""
    if got.shape != want.shape:
        return f"shape {got.shape}, expected {want.shape}"
    if got.dtype != rdt:
        return f"dtype {got.dtype}, expected {rdt}"
    with np.errstate(over="ignore"):
        w = want.astype(rdt).astype(np.float64)
    g = got.astype(np.float64)
    if not np.array_equal(np.isnan(g), np.isnan(w)):
        return "NaN in different places"
    if not np.array_equal(np.where(np.isinf(g), g, 0), np.where(np.isinf(w), w, 0)):
        return "infinities differ"
    fin = np.isfinite(w)
    lim = (ATOL[rdt.name] if atol is None else atol) + (RTOL[rdt.name] if rtol is None else rtol) * np.abs(w[fin])
    err = np.abs(g[fin] - w[fin])
    if np.any(err > lim):
        i = int(np.argmax(err / lim))
        return f"{int(np.sum(err > lim))} values off, worst {g[fin][i]!r} against {w[fin][i]!r}"
    return None


# per family, the relative tolerance of results that cancel (backward: g - sum(g * y);
# cross-entropy: softmax - target), as the test suite's equivalence matrix allows
CANCELLING_RTOL = {
    _ops.Family.BACKWARD: {"float16": 2e-3, "float32": 4e-6, "float64": 1e-14},
    _ops.Family.JACOBIAN: {"float16": 1e-3, "float32": 1e-7, "float64": 1e-15},
    _ops.Family.CROSS_ENTROPY: {"float16": 3e-3, "float32": 1e-5, "float64": 1e-13},
}


def _scale(a: np.ndarray) -> float:
    """1 + the largest finite |a|."""
    v = np.abs(a.astype(np.float64))
    return 1.0 + float(np.max(v[np.isfinite(v)], initial=0.0))


def tolerance(case: Case, rdt: np.dtype, k: int, want: np.ndarray) -> tuple[float | None, float | None]:
    """(rtol, atol) for result k of a case (None: RTOL/ATOL). Results that cancel are
    judged relative to the size of the terms: logsumexp = max + log1p(S') by the largest
    |x|, backward passes by the largest |g|, the Jacobian's entries absolutely, the
    cross-entropy loss by its size and its gradient absolutely."""
    fam = _ops.BY_NAME[case.op].family
    if fam is _ops.Family.FORWARD:
        if case.op != "logsumexp":
            return None, None
        return None, ATOL[rdt.name] + 4 * float(np.finfo(rdt).eps) * (_scale(case.args[0]) - 1.0)
    rtol = CANCELLING_RTOL[fam][rdt.name]
    if fam is _ops.Family.BACKWARD:
        return rtol, rtol * _scale(case.args[0])
    if fam is _ops.Family.JACOBIAN:
        return None, rtol
    return rtol, rtol * (_scale(want) if k == 0 else 1.0)


def check_backend(backend: str, oracle: str) -> tuple[int, list[str]]:
    """Run every case of the backend's ops; (cases run, mismatches)."""
    rec = _registry.backend_record(backend)
    ran, bad = 0, []
    for dtype in DTYPES:
        for case in cases(dtype):
            if not rec.implements(case.op) or not _registry.backend_record(oracle).implements(case.op):
                continue
            rdt = np.dtype(dtype)
            try:
                got = _call(backend, case)
                want = _oracle(oracle, case)
            except Exception as exc:  # a backend that raises where the reference computes
                bad.append(f"{case.label}: {type(exc).__name__}: {exc}")
                ran += 1
                continue
            ran += 1
            for k, (g, w) in enumerate(zip(got, want)):
                what = compare(g, w, rdt, *tolerance(case, rdt, k, w))
                if what is not None:
                    bad.append(f"{case.label}{' (gradient)' if k else ''}: {what}")
    return ran, bad


def _runs() -> Iterator[tuple[str, str, str | None]]:
    """(backend, label, instruction set or None) for each run: `c` once per instruction
    set the CPU supports."""
    for name in _registry.backends():
        if name == "c" and _registry.is_available("c"):
            from ._backends import c

            for isa in c.supported_isas():
                yield name, f"c ({isa})", isa
        else:
            yield name, name, None


def run(file: TextIO | None = None) -> int:
    """Self-test every available backend; print a line per backend (and the mismatches);
    return the number of mismatches."""
    out = file if file is not None else sys.stdout
    print("csoftmax self-test: every available backend against the reference backend (float64)", file=out)
    failures = 0
    for name, label, isa in _runs():
        why = _registry.unavailable_reason(name)
        if why is not None:
            print(f"  {label:<16} unavailable: {why}", file=out)
            continue
        mod = _registry.load(name)
        if not (callable(getattr(mod, "from_numpy", None)) and callable(getattr(mod, "to_numpy", None))):
            print(f"  {label:<16} skipped: it has no from_numpy/to_numpy (csoftmax._protocol)", file=out)
            continue
        oracle = "reference" if name != "reference" else ("c" if _registry.is_available("c") else None)
        if oracle is None:
            print(f"  {label:<16} skipped: no other backend to compare the reference with", file=out)
            continue
        if isa is None:
            ran, bad = check_backend(name, oracle)
        else:
            from ._backends import c

            prev = c.set_isa(isa)
            try:
                ran, bad = check_backend(name, oracle)
            finally:
                c.set_isa(prev)
        against = "" if oracle == "reference" else f" (against {oracle})"
        if bad:
            print(f"  {label:<16} FAILED: {len(bad)} of {ran} cases differ{against}", file=out)
            for line in bad[:10]:
                print(f"      {line}", file=out)
        else:
            print(f"  {label:<16} ok: {ran} cases{against}", file=out)
        failures += len(bad)
    print("all backends agree with the reference" if failures == 0 else f"{failures} mismatches", file=out)
    return failures
