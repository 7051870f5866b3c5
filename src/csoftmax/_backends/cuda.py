"""The `cuda` backend: CuPy arrays on csoftmax's own CUDA kernels, behind the backend
protocol (csoftmax._protocol).

The kernels (src/backends/cuda/csoftmax_kernels.cu, shipped in the package as
csoftmax/_cuda_kernels/) are compiled by NVRTC through cupy.RawModule with
name_expressions: lazily, one module per dtype, cached by CuPy per device. Launches go to
the current device and stream; results are CuPy arrays on the input's device.

This module plans the launches -- which kernel for a row length, grid and block sizes,
strides -- against a small device interface (`_CupyDevice` here; the test suite plugs in
a host emulator that runs the same kernel source on the CPU), so the planning is tested
everywhere and only the CuPy calls need a GPU.

Layouts: rows evenly spaced with any entry stride run in place; a strided softmax axis
whose neighbouring dimension is contiguous runs the column kernel; anything else (several
non-mergeable softmax axes, say) is first copied to contiguous rows, and the result
copied back. Kernel choice by row length n (docs/design.md, "The CUDA kernels"):
n <= ROWS_MAX_N: csm_fwd_rows, G lanes per row (the fewest that hold the row in 16-byte
chunks), the row in registers; longer rows whose compute values fit SMEM_CACHE_BYTES: a
block per row with the row cached in shared memory (csm_fwd_block); longer rows still,
or few rows of at least SPLIT_MIN_N: chunks in their own blocks merged in double-double
(csm_fwd_split_*). Backward passes: a warp per row up to 32 * 32 entries, else a block.
"""
from __future__ import annotations

import functools
import importlib
import math
from pathlib import Path
from typing import Any

import numpy as np

from .._ops import Kind, Op

_CTYPE = {"float16": "csm_half", "float32": "float", "float64": "double"}
_WARP_E = (1, 2, 4, 8, 16, 32)  # entries per lane of csm_bwd_warp's instantiations
_CHUNK = {"float16": 8, "float32": 4, "float64": 2}  # entries per 16-byte chunk
_COMPUTE_BYTES = {"float16": 4, "float32": 4, "float64": 8}  # float16 is computed in float
ROWS_MAX_N = 1024  # rows up to this long are held in registers (32 entries per lane at most)
NULL = np.uint64(0)  # a null pointer argument (for optional operands)
i64 = np.int64


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def kernel_names(dtype_name: str) -> list[str]:
    """Every kernel instantiation the backend may launch for one storage dtype."""
    t = _CTYPE[dtype_name]
    names = [f"csm_fwd_rows<{t}, {g}, {nc}>" for g, nc in _rows_shapes(dtype_name)]
    names += [f"csm_fwd_block<{t}>"]
    names += [f"csm_fwd_split_stats<{t}>", f"csm_fwd_split_finish<{t}>", f"csm_fwd_cols<{t}>"]
    names += [f"csm_bwd_warp<{t}, {e}>" for e in _WARP_E] + [f"csm_bwd_block<{t}>"]
    names += [f"csm_xent_block<{t}>", f"csm_jacobian<{t}>"]
    return names


def _rows_shapes(dtype_name: Any) -> Any:
    """The (lanes per row G, chunks per lane NC) of csm_fwd_rows' instantiations."""
    v = _CHUNK[dtype_name]
    return [(g, 1) for g in (1, 2, 4, 8, 16)] + [(32, nc) for nc in (1, 2, 4, 8, 16) if nc * v <= 32]


def _rows_shape(n: Any, dtype_name: Any) -> Any:
    """(G, NC) for rows of n <= ROWS_MAX_N entries: the fewest lanes that hold a row in
    chunks of 16 bytes, then the fewest chunks per lane."""
    chunks = _cdiv(n, _CHUNK[dtype_name])
    if chunks <= 32:
        return 1 << (chunks - 1).bit_length(), 1
    return 32, 1 << (_cdiv(chunks, 32) - 1).bit_length()


def kernel_dirs() -> list[Path]:
    """Directories holding the CUDA source and the headers it includes: the package's
    _cuda_kernels (an installation), or the source tree's cuda and common folders."""
    here = Path(__file__).resolve().parent.parent
    installed = here / "_cuda_kernels"
    if (installed / "csoftmax_kernels.cu").exists():
        return [installed]
    tree = here.parent / "backends"
    if (tree / "cuda" / "csoftmax_kernels.cu").exists():
        return [tree / "cuda", tree / "common"]
    raise FileNotFoundError("csoftmax's CUDA kernel source (csoftmax_kernels.cu) is missing from the installation")


def kernel_source() -> str:
    """The CUDA source (its includes resolve in kernel_dirs())."""
    return (kernel_dirs()[0] / "csoftmax_kernels.cu").read_text()


# ---- the device: CuPy ---------------------------------------------------------------------
class _CupyDevice:
    """Arrays, launches and properties through CuPy."""

    SMEM_CACHE_BYTES = 96 * 1024  # two such blocks fit in a Hopper multiprocessor (228 KiB)
    SPLIT_CHUNK = 8192  # entries per block of the split kernels
    SPLIT_MIN_N = 16384  # rows this long go to the split kernels when they are few

    def __init__(self) -> None:
        self.xp: Any = importlib.import_module("cupy")
        self._modules: dict[str, Any] = {}
        self._functions: dict[tuple[int, str], Any] = {}  # (device id, kernel name): a loaded kernel

    def module(self, dtype_name: Any) -> Any:
        mod = self._modules.get(dtype_name)
        if mod is None:
            names = kernel_names(dtype_name) + ["csm_fwd_split_merge"]
            options = ("-std=c++17",) + tuple(f"-I{d}" for d in kernel_dirs())
            mod = self.xp.RawModule(code=kernel_source(), options=options, name_expressions=names)
            self._modules[dtype_name] = mod
        return mod

    def launch(self, dtype_name: Any, name: Any, grid: Any, block: Any, args: Any, shared_mem: Any=0) -> None:
        key = (self.xp.cuda.Device().id, name)
        fn = self._functions.get(key)
        if fn is None:
            fn = self.module(dtype_name).get_function(name)
            if name.startswith("csm_fwd_block"):  # more dynamic shared memory than the default 48 KiB
                fn.max_dynamic_shared_size_bytes = self.SMEM_CACHE_BYTES
            self._functions[key] = fn
        fn(grid, block, tuple(args), shared_mem=shared_mem)

    @staticmethod
    def ptr(a: Any) -> Any:
        return a.data.ptr

    @functools.cached_property
    def num_sms(self) -> Any:
        dev = self.xp.cuda.Device()
        return int(dev.attributes["MultiProcessorCount"])


# ---- planning ----------------------------------------------------------------------------------
def _elems(a: Any) -> Any:
    """Strides of an array in elements (they are multiples of the itemsize here)."""
    return tuple(s // a.itemsize for s in a.strides)


def _outer_order(x: Any, skip: Any) -> Any:
    """x's dimensions other than `skip` (and of size > 1), outermost first by x's strides:
    every operand's rows are enumerated in this one order."""
    es = _elems(x)
    return sorted((d for d in range(x.ndim) if d not in skip and x.shape[d] > 1), key=lambda d: -abs(es[d]))


def _merge(a: Any, order: Any) -> Any:
    """(count, stride) of a's dimensions `order` walked as one, or None if they are not
    evenly spaced in a."""
    if not order:
        return 1, 0
    es = _elems(a)
    count, stride = a.shape[order[-1]], es[order[-1]]
    for d in reversed(order[:-1]):
        if es[d] != stride * count:
            return None
        count *= a.shape[d]
    return count, stride


class _View:
    """An operand as a kernel takes it: its pointer (or NULL) and its strides in elements
    -- (row stride, entry stride) of rows, or the strides a column kernel names."""

    def __init__(self, array: Any=None, *strides: Any) -> None:
        self.array, self.strides = array, strides

    def args(self) -> Any:
        return [self.array if self.array is not None else NULL] + [i64(s) for s in self.strides]


_NO_VIEW = _View(None, 0, 0)


def _rows(arrays: Any, axis: Any, order: Any) -> Any:
    """(nrows, [_View per array]) if every array is evenly spaced rows along `axis` in
    `order`, else None. None entries get a NULL view."""
    views, nrows = [], None
    for a in arrays:
        if a is None:
            views.append(_NO_VIEW)
            continue
        m = _merge(a, order)
        if m is None or (nrows is not None and m[0] != nrows):
            return None
        nrows = m[0]
        views.append(_View(a, m[1], _elems(a)[axis]))
    return nrows, views


class Ops:
    """The planning and launches on one device (CuPy's, or the tests' emulated one)."""

    def __init__(self, device: Any) -> None:
        self.dev = device
        self.xp = device.xp

    # -- helpers --
    def _storage(self, a: Any, rdt: Any) -> Any:
        return a if a.dtype == rdt else a.astype(rdt)

    def _mask(self, where: Any, shape: Any) -> Any:
        return None if where is None else self.xp.broadcast_to(where, shape)

    def _overlaps(self, a: Any, b: Any) -> Any:
        if a is b:
            return False
        try:
            return bool(self.xp.shares_memory(a, b))
        except Exception:
            return True

    def _flat_rows(self, a: Any, axes: Any) -> Any:
        """a's softmax axes moved last and made contiguous rows (a copy)."""
        perm = [i for i in range(a.ndim) if i not in axes] + list(axes)
        n = math.prod(a.shape[i] for i in axes) if axes else 1
        return self.xp.ascontiguousarray(a.transpose(perm)).reshape(-1, n), perm

    def _unflat(self, flat: Any, perm: Any, shape: Any) -> Any:
        moved = tuple(shape[i] for i in perm)
        return flat.reshape(moved).transpose(tuple(np.argsort(perm)))

    def _vectorizable(self, view: Any) -> Any:
        """Whether a row view starts on 16 bytes and is contiguous, so whole 16-byte chunks
        can be loaded and stored."""
        a, (rs, es) = view.array, view.strides
        return a is None or (es == 1 and self.dev.ptr(a) % 16 == 0 and (rs * a.itemsize) % 16 == 0)

    # -- forward --
    def forward(self, kind: Any, x: Any, axes: Any, tau: Any, where: Any, out: Any, rdt: Any,
                keepdims: Any=False) -> Any:
        xp = self.xp
        xs = self._storage(x, rdt)
        mask = self._mask(where, x.shape)
        lse = kind == Kind.LOGSUMEXP
        if lse:
            res = xp.empty(tuple(1 if i in axes else s for i, s in enumerate(x.shape)), dtype=rdt)
        elif out is not None and out.dtype == rdt and not self._overlaps(out, xs):
            res = out
        else:
            res = xp.empty_like(xs)
        if 0 in x.shape:
            if lse:
                res[...] = -math.inf
        elif not axes:  # every element its own slice: rows of one
            self._forward_flat(kind, xs[..., None], res[..., None], None if mask is None else mask[..., None],
                               (x.ndim,), tau)
        else:
            self._forward_flat(kind, xs, res, mask, axes, tau)
        if lse and not keepdims:
            res = res.reshape(tuple(s for i, s in enumerate(x.shape) if i not in axes))
        if out is not None and res is not out:
            out[...] = res
            return out
        return res

    def _forward_flat(self, kind: Any, xs: Any, res: Any, mask: Any, axes: Any, tau: Any) -> None:
        if len(axes) == 1:
            axis = axes[0]
            rv = _rows([xs, res, mask], axis, _outer_order(xs, (axis,)))
            # rows whose entries are contiguous; else columns (loads coalesced across the
            # rows); else rows with strided entries
            if rv is not None and rv[1][0].strides[1] in (1, -1):
                self._rows_launch(kind, rv, xs.shape[axis], tau)
                return
            if self._cols_launch(kind, xs, res, mask, axis, tau):
                return
            if rv is not None:
                self._rows_launch(kind, rv, xs.shape[axis], tau)
                return
        # anything else: contiguous rows of the softmax axes, then back
        flat, perm = self._flat_rows(xs, axes)
        mflat = None if mask is None else self._flat_rows(mask, axes)[0]
        n = flat.shape[1]
        ofl = self.xp.empty((flat.shape[0], 1 if kind == Kind.LOGSUMEXP else n), dtype=res.dtype)
        self._rows_launch(kind, _rows([flat, ofl, mflat], 1, [0]), n, tau)
        if kind == Kind.LOGSUMEXP:
            res[...] = ofl.reshape(res.shape)
        else:
            res[...] = self._unflat(ofl, perm, xs.shape)

    def _rows_launch(self, kind: Any, rv: Any, n: Any, tau: Any) -> None:
        """The forward row kernels; rv = (nrows, [x, out (logsumexp: its values), mask views])."""
        nrows, (xv, ov, mv) = rv
        if kind == Kind.LOGSUMEXP:  # the per-row value: out's row stride is lse_out's
            outv, lsev = _NO_VIEW, _View(ov.array, ov.strides[0])
        else:
            outv, lsev = ov, _View(None, 0)
        dt = xv.array.dtype.name
        vec = self._vectorizable(xv) and (kind == Kind.LOGSUMEXP or self._vectorizable(ov))
        common = xv.args() + outv.args() + mv.args() + lsev.args()
        tail = [i64(nrows), i64(n), np.float64(tau), np.int32(kind)]
        if n <= ROWS_MAX_N:
            g, nc = _rows_shape(n, dt)
            threads = 256
            self.dev.launch(dt, f"csm_fwd_rows<{_CTYPE[dt]}, {g}, {nc}>", (_cdiv(nrows * g, threads),), (threads,),
                            common + tail + [np.int32(vec)])
            return
        cached = n * _COMPUTE_BYTES[dt] <= self.dev.SMEM_CACHE_BYTES
        if cached and not (n >= self.dev.SPLIT_MIN_N and nrows < 2 * self.dev.num_sms):
            threads = 512 if n >= 8192 else 256
            self.dev.launch(dt, f"csm_fwd_block<{_CTYPE[dt]}>", (nrows,), (threads,), common + tail + [np.int32(vec)],
                            shared_mem=n * _COMPUTE_BYTES[dt])
        else:
            self._split_launch(kind, xv, mv, common, nrows, n, tau, vec)

    def _split_launch(self, kind: Any, xv: Any, mv: Any, common: Any, nrows: Any, n: Any, tau: Any, vec: Any) -> None:
        """Rows in chunks of their own blocks: enough chunks to keep every multiprocessor
        busy, each a multiple of 8 entries (whole 16-byte pieces), at most 65535 per row."""
        dt = xv.array.dtype.name
        want = max(_cdiv(n, self.dev.SPLIT_CHUNK), _cdiv(4 * self.dev.num_sms, nrows), 2)
        nchunks = min(want, 65535, max(1, n // 8))
        chunk = _cdiv(_cdiv(n, nchunks), 8) * 8
        nchunks = _cdiv(n, chunk)
        ws = self.xp.empty(nrows * nchunks * 7, dtype=np.float64)
        sizes = [i64(nrows), i64(n), i64(chunk), np.float64(tau)]
        self.dev.launch(dt, f"csm_fwd_split_stats<{_CTYPE[dt]}>", (nrows, nchunks), (256,),
                        xv.args() + mv.args() + [ws] + sizes + [np.int32(vec)])
        self.dev.launch(dt, "csm_fwd_split_merge", (nrows,), (256,), [ws, i64(nrows), i64(nchunks), np.float64(tau)])
        self.dev.launch(dt, f"csm_fwd_split_finish<{_CTYPE[dt]}>", (nrows, nchunks), (256,),
                        common + [ws] + sizes + [np.int32(kind), np.int32(vec)])

    def _cols_launch(self, kind: Any, xs: Any, res: Any, mask: Any, axis: Any, tau: Any) -> Any:
        """The column kernel, if x (and out) are contiguous along a dimension other than
        axis and the rest is evenly spaced groups; returns whether it launched."""
        ex = _elems(xs)
        cands = [d for d in range(xs.ndim) if d != axis and ex[d] == 1 and xs.shape[d] > 1]
        if not cands:
            return False
        c = cands[0]
        if kind != Kind.LOGSUMEXP and _elems(res)[c] != 1:
            return False
        gv = _rows([xs, res, mask], c, _outer_order(xs, (axis, c)))  # groups: the other dimensions merged
        if gv is None:
            return False
        ngroups, (xg, og, mg) = gv
        width, n = xs.shape[c], xs.shape[axis]
        xv = _View(xs, xg.strides[0], ex[axis])  # group stride, entry stride
        if kind == Kind.LOGSUMEXP:
            outv, lsev = _NO_VIEW, _View(res, *og.strides)  # group stride, column stride
        else:
            outv, lsev = _View(res, og.strides[0], _elems(res)[axis]), _NO_VIEW
        maskv = _View(mask, mg.strides[0], _elems(mask)[axis], mg.strides[1]) if mask is not None else _View(None, 0, 0, 0)
        dt = xs.dtype.name
        threads = 128
        self.dev.launch(dt, f"csm_fwd_cols<{_CTYPE[dt]}>", (_cdiv(width, threads), ngroups), (threads,),
                        xv.args() + outv.args() + maskv.args() + lsev.args()
                        + [i64(ngroups), i64(width), i64(n), np.float64(tau), np.int32(kind)])
        return True

    # -- backward --
    def backward(self, kind: Any, g: Any, y: Any, axes: Any, tau: Any, where: Any, out: Any, rdt: Any) -> Any:
        xp = self.xp
        gs, ys = self._storage(g, rdt), self._storage(y, rdt)
        inplace_ok = out is not None and out.dtype == rdt and not (self._overlaps(out, gs) or self._overlaps(out, ys))
        res = out if inplace_ok else xp.empty_like(gs)
        mask = self._mask(where, g.shape)
        if g.size:
            rv = _rows([gs, ys, res, mask], axes[0], _outer_order(gs, axes)) if len(axes) == 1 else None
            if rv is not None:
                self._bwd_launch(kind, rv, gs.shape[axes[0]], tau)
            else:
                (gf, perm), yf = self._flat_rows(gs, axes), self._flat_rows(ys, axes)[0]
                mf = None if mask is None else self._flat_rows(mask, axes)[0]
                of = xp.empty_like(gf)
                self._bwd_launch(kind, _rows([gf, yf, of, mf], 1, [0]), gf.shape[1], tau)
                res[...] = self._unflat(of, perm, gs.shape)
        if out is not None and res is not out:
            out[...] = res
            return out
        return res

    def _bwd_launch(self, kind: Any, rv: Any, n: Any, tau: Any) -> None:
        nrows, views = rv
        dt = views[0].array.dtype.name
        args = [a for v in views for a in v.args()] + [i64(nrows), i64(n), np.float64(tau), np.int32(kind)]
        if n <= 32 * _WARP_E[-1]:
            e = next(e for e in _WARP_E if 32 * e >= n)
            self.dev.launch(dt, f"csm_bwd_warp<{_CTYPE[dt]}, {e}>", (_cdiv(nrows, 8),), (256,), args)
        else:
            self.dev.launch(dt, f"csm_bwd_block<{_CTYPE[dt]}>", (nrows,), (512 if n >= 8192 else 256,), args)

    # -- Jacobians --
    def jacobian(self, x: Any, axis: Any, tau: Any, rdt: Any, log: Any) -> Any:
        xp = self.xp
        flat, perm = self._flat_rows(self._storage(x, rdt), (axis,))
        nrows, n = flat.shape
        s = self.forward(Kind.SOFTMAX, flat, (1,), tau, None, None, rdt)
        lp = self.forward(Kind.LOG_SOFTMAX, flat, (1,), tau, None, None, rdt)
        J = xp.empty((nrows, n, n), dtype=rdt)
        threads = 256
        grid = (max(1, min(_cdiv(J.size, threads), 1 << 18)),)
        dt = flat.dtype.name
        self.dev.launch(dt, f"csm_jacobian<{_CTYPE[dt]}>", grid, (threads,),
                        [s, lp, J, i64(nrows), i64(n), np.float64(tau), np.int32(int(log))])
        return J.reshape(tuple(x.shape[i] for i in perm[:-1]) + (n, n))

    # -- cross-entropy --
    def cross_entropy(self, x: Any, axis: Any, labels: Any, probs: Any, weight: Any, ignore_index: Any, eps: Any,
                      tau: Any, where: Any, grad_scale: Any, want_grad: Any, rdt: Any) -> Any:
        xp = self.xp
        flat, perm = self._flat_rows(self._storage(x, rdt), (axis,))
        nrows, n = flat.shape
        qv = _NO_VIEW if probs is None else _View(self._flat_rows(self._storage(probs, rdt), (axis,))[0], n, 1)
        labv = _View(None, 0)
        if labels is not None:
            labv = _View(xp.ascontiguousarray(labels.astype(np.int64)).reshape(-1), 1)
        w = NULL if weight is None else xp.ascontiguousarray(weight, dtype=np.float64)
        mv = _NO_VIEW
        if where is not None:
            mv = _View(self._flat_rows(self._mask(where, x.shape), (axis,))[0], n, 1)
        loss = xp.empty(nrows, dtype=np.float64)
        grad = xp.empty_like(flat) if want_grad else None
        dt = flat.dtype.name
        threads = min(256, max(32, 1 << (n - 1).bit_length()))  # no idle warps for few classes
        self.dev.launch(dt, f"csm_xent_block<{_CTYPE[dt]}>", (nrows,), (threads,),
                        _View(flat, n, 1).args() + qv.args() + labv.args() + [w] + mv.args() + _View(loss, 1).args()
                        + _View(grad, n, 1).args()
                        + [i64(nrows), i64(n), np.float64(tau), np.float64(eps), i64(ignore_index),
                           np.float64(grad_scale)])
        loss = loss.reshape(tuple(x.shape[i] for i in perm[:-1]))
        if grad is not None:
            grad = self._unflat(grad, perm, x.shape)
        return loss, grad


class CudaBackend:
    """The backend protocol on one device's Ops (the module's own is CuPy's; the tests
    bind an emulated one)."""

    def __init__(self, ops: Any) -> None:
        self.ops = ops
        self.xp = ops.xp

    def namespace(self, x: Any) -> Any:
        return self.xp

    def writable(self, out: Any) -> Any:
        flags = getattr(out, "flags", None)
        return bool(getattr(flags, "writeable", True))

    def from_numpy(self, a: Any) -> Any:
        return self.xp.asarray(a)

    def to_numpy(self, a: Any) -> Any:
        return a.get() if hasattr(a, "get") else np.asarray(a)

    def forward(self, op: Op, x: Any, /, *, axes: Any, temperature: Any, keepdims: Any, where: Any, out: Any,
                dtype: Any) -> Any:
        return self.ops.forward(op.kind, x, axes, temperature, where, out, dtype, keepdims=keepdims)

    def backward(self, op: Op, grad_output: Any, output: Any, /, *, axes: Any, temperature: Any, where: Any, out: Any,
                 dtype: Any) -> Any:
        return self.ops.backward(op.kind, grad_output, output, axes, temperature, where, out, dtype)

    def jacobian(self, op: Op, x: Any, /, *, axis: Any, temperature: Any, dtype: Any) -> Any:
        return self.ops.jacobian(x, axis, temperature, dtype, op.log)

    def cross_entropy(self, op: Op, logits: Any, /, *, axis: Any, labels: Any, probs: Any, weight: Any,
                      ignore_index: Any, label_smoothing: Any, temperature: Any,
                      where: Any, grad_scale: Any, want_grad: Any, dtype: Any) -> Any:
        return self.ops.cross_entropy(logits, axis, labels, probs, weight, ignore_index, label_smoothing, temperature,
                                      where, grad_scale, want_grad, dtype)


@functools.lru_cache(maxsize=None)
def _module() -> Any:
    return CudaBackend(Ops(_CupyDevice()))


def __getattr__(name: Any) -> Any:
    """The protocol's functions, bound to the CuPy device on first use (importing this
    module imports nothing of CuPy)."""
    if not name.startswith("_") and hasattr(CudaBackend, name):
        return getattr(_module(), name)
    raise AttributeError(name)

