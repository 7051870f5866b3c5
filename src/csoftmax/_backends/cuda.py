"""The `cuda` backend: CuPy arrays on csoftmax's own CUDA kernels.

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
copied back. Kernel choice by row length n: n <= 1024 a warp per row (registers); few
long rows (n >= 16384, fewer rows than twice the multiprocessors) several blocks per row
with a double-double merge; otherwise a block per row, the row cached in shared memory
when it fits in 48 KiB.
"""
from __future__ import annotations

import functools
import math
import os
from pathlib import Path

import numpy as np

from .. import _reference as R

_CTYPE = {"float16": "csm_half", "float32": "float", "float64": "double"}
_WARP_E = (1, 2, 4, 8, 16, 32)
_CHUNK = {"float16": 8, "float32": 4, "float64": 2}  # entries per 16-byte chunk
ROWS_MAX_N = 1024  # rows up to this long are held in registers (32 entries per lane at most)
_KIND = {"softmax": 0, "log_softmax": 1, "logsumexp": 2, "softmax_backward": 3, "log_softmax_backward": 4}
NULL = np.uint64(0)  # a null pointer argument (for optional operands)


def kernel_names(dtype_name: str) -> list[str]:
    """Every kernel instantiation the backend may launch for one storage dtype."""
    t = _CTYPE[dtype_name]
    names = [f"csm_fwd_rows<{t}, {g}, {nc}>" for g, nc in _rows_shapes(dtype_name)]
    names += [f"csm_fwd_block<{t}>"]
    names += [f"csm_fwd_split_stats<{t}>", f"csm_fwd_split_finish<{t}>", f"csm_fwd_cols<{t}>"]
    names += [f"csm_bwd_warp<{t}, {e}>" for e in _WARP_E] + [f"csm_bwd_block<{t}>"]
    names += [f"csm_xent_block<{t}>", f"csm_jacobian<{t}>"]
    return names


def _rows_shapes(dtype_name):
    """The (lanes per row G, chunks per lane NC) of csm_fwd_rows' instantiations."""
    v = _CHUNK[dtype_name]
    return [(g, 1) for g in (1, 2, 4, 8, 16)] + [(32, nc) for nc in (1, 2, 4, 8, 16) if nc * v <= 32]


def _rows_shape(n, dtype_name):
    """(G, NC) for rows of n <= ROWS_MAX_N entries: the fewest lanes that hold a row in
    chunks of 16 bytes, then the fewest chunks per lane."""
    v = _CHUNK[dtype_name]
    chunks = -(-n // v)
    if chunks <= 32:
        return 1 << (chunks - 1).bit_length(), 1
    return 32, 1 << (-(-chunks // 32) - 1).bit_length()


def kernel_dirs() -> list:
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
    split_chunk = 8192  # entries per block of the split kernels

    def __init__(self):
        import cupy

        self.xp = cupy
        self._modules = {}
        self._functions = {}  # (device id, kernel name): a loaded kernel

    def module(self, dtype_name):
        mod = self._modules.get(dtype_name)
        if mod is None:
            names = kernel_names(dtype_name) + ["csm_fwd_split_merge"]
            options = ("-std=c++17",) + tuple(f"-I{d}" for d in kernel_dirs())
            mod = self.xp.RawModule(code=kernel_source(), options=options, name_expressions=names)
            self._modules[dtype_name] = mod
        return mod

    def launch(self, dtype_name, name, grid, block, args, shared_mem=0):
        key = (self.xp.cuda.Device().id, name)
        fn = self._functions.get(key)
        if fn is None:
            fn = self.module(dtype_name).get_function(name)
            if name.startswith("csm_fwd_block"):  # more dynamic shared memory than the default 48 KiB
                fn.max_dynamic_shared_size_bytes = self.SMEM_CACHE_BYTES
            self._functions[key] = fn
        fn(grid, block, tuple(args), shared_mem=shared_mem)

    @staticmethod
    def ptr(a):
        return a.data.ptr

    @functools.cached_property
    def num_sms(self):
        dev = self.xp.cuda.Device()
        return int(dev.attributes["MultiProcessorCount"])

    split_min_n = 16384


@functools.lru_cache(maxsize=None)
def _device():
    return _CupyDevice()


# ---- the backend interface of csoftmax._api (the ops bind the CuPy device on first use) ----
def namespace(x):
    return _device().xp


def writable(out) -> bool:
    return True


def from_numpy(a):
    return _device().xp.asarray(a)


def to_numpy(a):
    return _device().xp.asnumpy(a)


# ---- planning ----------------------------------------------------------------------------------
def _elems(a):
    """Strides of an array in elements (they are multiples of the itemsize here)."""
    return tuple(s // a.itemsize for s in a.strides)


def _outer_order(x, skip):
    """x's dimensions other than `skip` (and of size > 1), outermost first by x's strides:
    every operand's rows are enumerated in this one order."""
    es = _elems(x)
    return sorted((d for d in range(x.ndim) if d not in skip and x.shape[d] > 1), key=lambda d: -abs(es[d]))


def _merge(a, order):
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


def _rows(arrays, axis, order):
    """(nrows, [(row stride, entry stride) per array]) if every array is evenly spaced rows
    along `axis` in `order`, else None. None entries stay None."""
    views, nrows = [], None
    for a in arrays:
        if a is None:
            views.append(None)
            continue
        m = _merge(a, order)
        if m is None or (nrows is not None and m[0] != nrows):
            return None
        nrows = m[0]
        views.append((m[1], _elems(a)[axis]))
    return nrows, views


class Ops:
    """The ops on one device; the module functions below bind the CuPy device."""

    def __init__(self, device):
        self.dev = device
        self.xp = device.xp

    # -- helpers --
    def _storage(self, a, rdt):
        return a if a.dtype == rdt else a.astype(rdt)

    def _mask(self, where, shape):
        return None if where is None else self.xp.broadcast_to(where, shape)

    def _overlaps(self, a, b):
        if a is b:
            return False
        try:
            return bool(self.xp.shares_memory(a, b))
        except Exception:
            return True

    def _flat_rows(self, a, axes):
        """a's softmax axes moved last and made contiguous rows (a copy)."""
        perm = [i for i in range(a.ndim) if i not in axes] + list(axes)
        n = math.prod(a.shape[i] for i in axes) if axes else 1
        return self.xp.ascontiguousarray(a.transpose(perm)).reshape(-1, n), perm

    def _unflat(self, flat, perm, shape):
        moved = tuple(shape[i] for i in perm)
        return flat.reshape(moved).transpose(tuple(np.argsort(perm)))

    # -- forward --
    def forward(self, op, x, axes, tau, where, out, rdt, keepdims=False):
        xp = self.xp
        kind = _KIND[op]
        xs = self._storage(x, rdt)
        mask = self._mask(where, x.shape)
        if op == "logsumexp":
            res = xp.empty(tuple(1 if i in axes else s for i, s in enumerate(x.shape)), dtype=rdt)
        elif out is not None and not self._overlaps(out, xs):
            res = out
        else:
            res = xp.empty_like(xs)
        if 0 in x.shape:
            if op == "logsumexp":
                res[...] = -math.inf
        elif not axes:  # every element its own slice: rows of one
            self._forward_flat(kind, xs[..., None], res[..., None], None if mask is None else mask[..., None],
                               (x.ndim,), tau)
        else:
            self._forward_flat(kind, xs, res, mask, axes, tau)
        if op == "logsumexp" and not keepdims:
            res = res.reshape(tuple(s for i, s in enumerate(x.shape) if i not in axes))
        if out is not None and res is not out:
            out[...] = res
            return out
        return res

    def _forward_flat(self, kind, xs, res, mask, axes, tau):
        if len(axes) == 1:
            axis = axes[0]
            order = _outer_order(xs, (axis,))
            rv = _rows([xs, res, mask], axis, order)
            # rows whose entries are contiguous; else columns (loads coalesced across the
            # rows); else rows with strided entries
            if rv is not None and rv[1][0][1] in (1, -1):
                self._rows_launch(kind, xs, res, mask, rv, xs.shape[axis], tau)
                return
            if self._cols_launch(kind, xs, res, mask, axis, tau):
                return
            if rv is not None:
                self._rows_launch(kind, xs, res, mask, rv, xs.shape[axis], tau)
                return
        # anything else: contiguous rows of the softmax axes, then back
        flat, perm = self._flat_rows(xs, axes)
        mflat = None if mask is None else self._flat_rows(mask, axes)[0]
        n = flat.shape[1]
        ofl = self.xp.empty((flat.shape[0], 1 if kind == 2 else n), dtype=res.dtype)
        self._rows_launch(kind, flat, ofl, mflat, _rows([flat, ofl, mflat], 1, [0]), n, tau)
        if kind == 2:
            res[...] = ofl.reshape(res.shape)
        else:
            res[...] = self._unflat(ofl, perm, xs.shape)

    def _rows_launch(self, kind, xs, res, mask, rv, n, tau):
        nrows, (xv, ov, mv) = rv
        dt, i64, f64 = xs.dtype.name, np.int64, np.float64
        if kind == 2:
            out_arg, o_rs, o_es, lse, l_rs = NULL, 0, 0, res, ov[0]
        else:
            out_arg, (o_rs, o_es), lse, l_rs = res, ov, NULL, 0
        mask_arg, (m_rs, m_es) = (mask, mv) if mask is not None else (NULL, (0, 0))
        common = [xs, i64(xv[0]), i64(xv[1]), out_arg, i64(o_rs), i64(o_es), mask_arg, i64(m_rs), i64(m_es), lse,
                  i64(l_rs)]
        tail = [i64(nrows), i64(n), f64(tau), np.int32(kind)]
        if n <= ROWS_MAX_N:
            g, nc = _rows_shape(n, dt)
            vec = self._vectorizable(xs, xv, n) and (kind == 2 or self._vectorizable(res, ov, n))
            threads = 256
            grid = ((nrows * g + threads - 1) // threads,)
            self.dev.launch(dt, f"csm_fwd_rows<{_CTYPE[dt]}, {g}, {nc}>", grid, (threads,),
                            common + tail + [np.int32(vec)])
        else:
            csize = 8 if dt == "float64" else 4
            cached = n * csize <= self.dev.SMEM_CACHE_BYTES
            if cached and not (n >= self.dev.split_min_n and nrows < 2 * self.dev.num_sms):
                vec = self._vectorizable(xs, xv, n) and (kind == 2 or self._vectorizable(res, ov, n))
                threads = 512 if n >= 8192 else 256
                self.dev.launch(dt, f"csm_fwd_block<{_CTYPE[dt]}>", (nrows,), (threads,), common + tail + [np.int32(vec)],
                                shared_mem=n * csize)
            else:
                self._split_launch(kind, xs, res, common, nrows, n, xv, ov, (mask_arg, m_rs, m_es), tau)

    def _split_launch(self, kind, xs, res, common, nrows, n, xv, ov, maskv, tau):
        """Rows in chunks of their own blocks: enough chunks to keep every multiprocessor
        busy, each a multiple of 8 entries (whole 16-byte pieces), at most 65535 per row."""
        xp, dt, i64, f64 = self.xp, xs.dtype.name, np.int64, np.float64
        want = max(-(-n // self.dev.split_chunk), -(-4 * self.dev.num_sms // nrows), 2)
        nchunks = min(want, 65535, max(1, n // 8))
        chunk = -(-(-(-n // nchunks)) // 8) * 8
        nchunks = -(-n // chunk)
        vec = self._vectorizable(xs, xv, n) and (kind == 2 or self._vectorizable(res, ov, n))
        ws = xp.empty(nrows * nchunks * 7, dtype=np.float64)
        mask_arg, m_rs, m_es = maskv
        self.dev.launch(dt, f"csm_fwd_split_stats<{_CTYPE[dt]}>", (nrows, nchunks), (256,),
                        [xs, i64(xv[0]), i64(xv[1]), mask_arg, i64(m_rs), i64(m_es), ws, i64(nrows), i64(n),
                         i64(chunk), f64(tau), np.int32(vec)])
        self.dev.launch(dt, "csm_fwd_split_merge", (nrows,), (256,), [ws, i64(nrows), i64(nchunks), f64(tau)])
        self.dev.launch(dt, f"csm_fwd_split_finish<{_CTYPE[dt]}>", (nrows, nchunks), (256,),
                        common + [ws, i64(nrows), i64(n), i64(chunk), f64(tau), np.int32(kind), np.int32(vec)])

    def _vectorizable(self, a, view, n):
        """Whether rows of a (row stride, entry stride = view) start on 16 bytes and are
        contiguous, so whole 16-byte chunks can be loaded and stored."""
        rs, es = view
        return es == 1 and self.dev.ptr(a) % 16 == 0 and (rs * a.itemsize) % 16 == 0

    def _cols_launch(self, kind, xs, res, mask, axis, tau):
        """The column kernel, if x (and out) are contiguous along a dimension other than
        axis and the rest is evenly spaced groups; returns whether it launched."""
        ex = _elems(xs)
        cands = [d for d in range(xs.ndim) if d != axis and ex[d] == 1 and xs.shape[d] > 1]
        if not cands:
            return False
        c = cands[0]
        if kind != 2 and _elems(res)[c] != 1:
            return False
        order = _outer_order(xs, (axis, c))
        gv = _rows([xs, res, mask], c, order)  # groups: the other dimensions merged
        if gv is None:
            return False
        ngroups, (xg, og, mg) = gv
        width, n = xs.shape[c], xs.shape[axis]
        i64 = np.int64
        if kind == 2:
            out_arg, o_gs, o_rs, lse, l_gs, l_cs = NULL, 0, 0, res, og[0], og[1]
        else:
            out_arg, o_gs, o_rs, lse, l_gs, l_cs = res, og[0], _elems(res)[axis], NULL, 0, 0
        if mask is not None:
            mask_arg, m_gs, m_rs, m_cs = mask, mg[0], _elems(mask)[axis], mg[1]
        else:
            mask_arg, m_gs, m_rs, m_cs = NULL, 0, 0, 0
        dt = xs.dtype.name
        threads = 128
        self.dev.launch(dt, f"csm_fwd_cols<{_CTYPE[dt]}>", ((width + threads - 1) // threads, ngroups), (threads,),
                        [xs, i64(xg[0]), i64(ex[axis]), out_arg, i64(o_gs), i64(o_rs), mask_arg, i64(m_gs),
                         i64(m_rs), i64(m_cs), lse, i64(l_gs), i64(l_cs), i64(ngroups), i64(width), i64(n),
                         np.float64(tau), np.int32(kind)])
        return True

    # -- backward --
    def backward(self, op, g, y, axes, tau, where, out, rdt):
        xp = self.xp
        kind = _KIND[op]
        gs, ys = self._storage(g, rdt), self._storage(y, rdt)
        inplace_ok = out is not None and not (self._overlaps(out, gs) or self._overlaps(out, ys))
        res = out if inplace_ok else xp.empty_like(gs)
        mask = self._mask(where, g.shape)
        if g.size:
            rv = None
            if len(axes) == 1:
                rv = _rows([gs, ys, res, mask], axes[0], _outer_order(gs, axes))
            if rv is not None:
                self._bwd_launch(kind, gs, ys, res, mask, rv, gs.shape[axes[0]], tau)
            else:
                (gf, perm), yf = self._flat_rows(gs, axes), self._flat_rows(ys, axes)[0]
                mf = None if mask is None else self._flat_rows(mask, axes)[0]
                of = xp.empty_like(gf)
                self._bwd_launch(kind, gf, yf, of, mf, _rows([gf, yf, of, mf], 1, [0]), gf.shape[1], tau)
                res[...] = self._unflat(of, perm, gs.shape)
        if out is not None and res is not out:
            out[...] = res
            return out
        return res

    def _bwd_launch(self, kind, g, y, out, mask, rv, n, tau):
        nrows, (gv, yv, ov, mv) = rv
        mask_arg, (m_rs, m_es) = (mask, mv) if mask is not None else (NULL, (0, 0))
        dt, i64 = g.dtype.name, np.int64
        args = [g, i64(gv[0]), i64(gv[1]), y, i64(yv[0]), i64(yv[1]), out, i64(ov[0]), i64(ov[1]), mask_arg,
                i64(m_rs), i64(m_es), i64(nrows), i64(n), np.float64(tau), np.int32(kind)]
        if n <= 32 * _WARP_E[-1]:
            e = next(e for e in _WARP_E if 32 * e >= n)
            self.dev.launch(dt, f"csm_bwd_warp<{_CTYPE[dt]}, {e}>", ((nrows + 7) // 8,), (256,), args)
        else:
            self.dev.launch(dt, f"csm_bwd_block<{_CTYPE[dt]}>", (nrows,), (512 if n >= 8192 else 256,), args)

    # -- Jacobians --
    def jacobian(self, x, axis, tau, rdt, log):
        xp = self.xp
        flat, perm = self._flat_rows(self._storage(x, rdt), (axis,))
        nrows, n = flat.shape
        s = self.forward("softmax", flat, (1,), tau, None, None, rdt)
        lp = self.forward("log_softmax", flat, (1,), tau, None, None, rdt)
        J = xp.empty((nrows, n, n), dtype=rdt)
        threads = 256
        grid = (max(1, min((J.size + threads - 1) // threads, 1 << 18)),)
        dt = flat.dtype.name
        self.dev.launch(dt, f"csm_jacobian<{_CTYPE[dt]}>", grid, (threads,),
                        [s, lp, J, np.int64(nrows), np.int64(n), np.float64(tau), np.int32(int(log))])
        return J.reshape(tuple(x.shape[i] for i in perm[:-1]) + (n, n))

    # -- cross-entropy --
    def cross_entropy(self, x, axis, labels, probs, weight, ignore_index, eps, tau, where, grad_scale, want_grad, rdt):
        xp = self.xp
        flat, perm = self._flat_rows(self._storage(x, rdt), (axis,))
        nrows, n = flat.shape
        i64 = np.int64
        q, q_rs = NULL, 0
        if probs is not None:
            q, q_rs = self._flat_rows(self._storage(probs, rdt), (axis,))[0], n
        lab, lab_s = NULL, 0
        if labels is not None:
            lab, lab_s = xp.ascontiguousarray(labels.astype(np.int64)).reshape(-1), 1
        w = NULL if weight is None else xp.ascontiguousarray(weight, dtype=np.float64)
        m, m_rs = NULL, 0
        if where is not None:
            m, m_rs = self._flat_rows(self._mask(where, x.shape), (axis,))[0], n
        loss = xp.empty(nrows, dtype=np.float64)
        grad = xp.empty_like(flat) if want_grad else None
        dt = flat.dtype.name
        threads = min(256, max(32, 1 << (n - 1).bit_length()))  # no idle warps for few classes
        self.dev.launch(dt, f"csm_xent_block<{_CTYPE[dt]}>", (nrows,), (threads,),
                        [flat, i64(n), i64(1), q, i64(q_rs), i64(1), lab, i64(lab_s), w, m, i64(m_rs), i64(1), loss,
                         i64(1), grad if grad is not None else NULL, i64(n), i64(1), i64(nrows), i64(n),
                         np.float64(tau), np.float64(eps), i64(ignore_index), np.float64(grad_scale)])
        loss = loss.reshape(tuple(x.shape[i] for i in perm[:-1]))
        if grad is not None:
            grad = self._unflat(grad, perm, x.shape)
        return loss, grad


class OpsModule:
    """The backend functions of csoftmax._api, bound to one device's Ops (the module-level
    functions below are those of the CuPy device; the tests bind an emulated one)."""

    def __init__(self, ops):
        self.ops = ops
        self.xp = ops.xp

    def namespace(self, x):
        return self.xp

    def from_numpy(self, a):
        return self.xp.asarray(a)

    def to_numpy(self, a):
        return a.get() if hasattr(a, "get") else np.asarray(a)

    def writable(self, out):
        flags = getattr(out, "flags", None)
        return bool(getattr(flags, "writeable", True))

    def softmax(self, x, axes, tau, where, out, rdt):
        return self.ops.forward("softmax", x, axes, tau, where, out, rdt)

    def log_softmax(self, x, axes, tau, where, out, rdt):
        return self.ops.forward("log_softmax", x, axes, tau, where, out, rdt)

    def logsumexp(self, x, axes, keepdims, where, out, rdt):
        return self.ops.forward("logsumexp", x, axes, 1.0, where, out, rdt, keepdims=keepdims)

    def softmax_backward(self, g, y, axes, tau, where, out, rdt):
        return self.ops.backward("softmax_backward", g, y, axes, tau, where, out, rdt)

    def log_softmax_backward(self, g, y, axes, tau, where, out, rdt):
        return self.ops.backward("log_softmax_backward", g, y, axes, tau, where, out, rdt)

    def softmax_jacobian(self, x, axis, tau, rdt):
        return self.ops.jacobian(x, axis, tau, rdt, log=False)

    def log_softmax_jacobian(self, x, axis, tau, rdt):
        return self.ops.jacobian(x, axis, tau, rdt, log=True)

    def softmax_cross_entropy(self, x, axis, labels, probs, weight, ignore_index, eps, tau, where, grad_scale,
                              want_grad, rdt):
        return self.ops.cross_entropy(x, axis, labels, probs, weight, ignore_index, eps, tau, where, grad_scale,
                                      want_grad, rdt)


@functools.lru_cache(maxsize=None)
def _module():
    return OpsModule(Ops(_device()))


def __getattr__(name):
    """The backend functions, bound to the CuPy device on first use."""
    if name in ("softmax", "log_softmax", "logsumexp", "softmax_backward", "log_softmax_backward",
                "softmax_jacobian", "log_softmax_jacobian", "softmax_cross_entropy"):
        return getattr(_module(), name)
    raise AttributeError(name)
