"""The `cuda` backend: CuPy arrays on csoftmax's own CUDA kernels, behind the backend
protocol (csoftmax._protocol).

The kernels (src/backends/cuda/csoftmax_kernels.cu, shipped in the package as
csoftmax/_cuda_kernels/) are compiled by NVRTC through cupy.RawModule, one module per
instantiation, lazily (CuPy caches the binaries on disk). Launches go to the current device
and stream; results are CuPy arrays on the input's device.

This module plans the launches -- which kernel instantiation for a layout and row length,
grid and block sizes, strides, the temperature's mode -- against a small device interface
(`_CupyDevice` here; the test suite plugs in a host emulator that runs the same kernel
source on the CPU), so the planning is tested everywhere and only the CuPy calls need a
GPU. Plain calls (fast_entry) replay a launch plan cached per (op, shape, strides, dtype,
axis, temperature, alignment, device): no planning, one allocation, the kernel function
called directly.

Layouts: rows evenly spaced run in place (contiguous entries with no mask: 16-byte
accesses, `F = 0`; anything else the general instantiation, `F = GEN`); a strided softmax
axis whose neighbouring dimension is contiguous runs the column kernel; anything else is
first copied to contiguous rows, and the result copied back. Kernel tiers by row length n
(docs/design.md, "The CUDA kernels"): n <= rows_max: csm_fwd_rows with G lanes per row (the
fewest that hold the row in registers; G > 32 is a block per row); longer rows: the split
kernels (per-chunk statistics merged exactly per row). Backward passes: csm_bwd_rows, then
csm_bwd_long; cross-entropy with class indices: csm_xent_rows, else csm_xent_block.
"""
from __future__ import annotations

import functools
import importlib
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._ops import Family, Kind, Op

Array = Any  # a CuPy array (or the emulator's NumPy one): CuPy has no type stubs

_CTYPE = {"float16": "csm_half", "float32": "float", "float64": "double"}
_CHUNK = {"float16": 8, "float32": 4, "float64": 2}  # entries per 16-byte piece (V)
# pieces per lane of the row kernels (E = NC V entries: 16 for float rows, 4 for double rows
# forward; half as many for the backward passes, which hold two operands)
_NCMIN = {"fwd": {"float16": 2, "float32": 4, "float64": 2}, "bwd": {"float16": 1, "float32": 2, "float64": 2}}
_GROUPS = tuple(1 << k for k in range(11))  # lanes per row, 1 .. 1024
_GROUPS_GENERAL = (1, 4, 32, 256, 1024)  # the general instantiations' (F = GEN or TM = WIDE)
TM_ONE, TM_PAIR, TM_WIDE = 0, 1, 2  # the temperature modes (csoftmax_kernels.cu, CSM_TAU_*)
F_FAST, F_GEN = 0, 1  # layouts (CSM_F_GEN)
_FWD_KINDS = (int(Kind.SOFTMAX), int(Kind.LOG_SOFTMAX))  # the row kernels' K (logsumexp is LOG_SOFTMAX's)
_BWD_KINDS = (int(Kind.SOFTMAX_BWD), int(Kind.LOG_SOFTMAX_BWD))
_F32_MIN_INV, _F32_MAX_INV = 2.0**-101, 2.0**127  # 1/tau as a float pair: both parts normal
_F64_MIN_INV = 2.0**-1000
COLS_TILE = (32, 8)  # csm_fwd_cols' block: 32 columns x CSM_COLS_R slices of rows
WAVES = 8  # grid-stride kernels: at most this many resident grids' worth of blocks


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _pow2_at_least(v: int) -> int:
    return 1 << max(0, (v - 1).bit_length())


# ---- instantiations -------------------------------------------------------------------------
def row_shapes(family: str, dtype_name: str, general: bool = False) -> list[tuple[int, int]]:
    """The (G lanes per row, NC pieces per lane) of the row kernels of a family ("fwd": the
    forward ops and cross-entropy; "bwd") for a dtype, by capacity; the general
    instantiations have a coarser set."""
    nc0 = _NCMIN[family][dtype_name]
    if general:
        return [(g, nc0) for g in _GROUPS_GENERAL]
    return [(1, 1 << k) for k in range(nc0.bit_length()) if (1 << k) <= nc0] + [(g, nc0) for g in _GROUPS[1:]]


def rows_max(family: str, dtype_name: str) -> int:
    """The longest row the row kernels of a family hold in registers."""
    g, nc = row_shapes(family, dtype_name)[-1]
    return g * nc * _CHUNK[dtype_name]


def _is_general(tm: int, f: int) -> bool:
    return tm == TM_WIDE or f == F_GEN


def kernel_names(dtype_name: str) -> list[str]:
    """Every kernel instantiation the backend may launch for one storage dtype."""
    t = _CTYPE[dtype_name]
    names = []
    for fam, kernel, kinds in (("fwd", "csm_fwd_rows", _FWD_KINDS), ("bwd", "csm_bwd_rows", _BWD_KINDS)):
        for k in kinds:
            for tm in (TM_ONE, TM_PAIR, TM_WIDE):
                for f in (F_FAST, F_GEN):
                    names += [f"{kernel}<{t}, {g}, {nc}, {k}, {tm}, {f}>"
                              for g, nc in row_shapes(fam, dtype_name, _is_general(tm, f))]
    names += [f"csm_xent_rows<{t}, {g}, {nc}, {tm}, {F_FAST}>" for tm in (TM_ONE, TM_PAIR)
              for g, nc in row_shapes("fwd", dtype_name)]
    for tm in (TM_ONE, TM_PAIR, TM_WIDE):
        for f in (F_FAST, F_GEN):
            names.append(f"csm_fwd_split_stats<{t}, {tm}, {f}>")
            names += [f"csm_fwd_split_finish<{t}, {k}, {tm}, {f}>" for k in _FWD_KINDS]
            names += [f"csm_fwd_cols<{t}, {k}, {tm}, {f}>" for k in _FWD_KINDS]
            names += [f"csm_bwd_long<{t}, {k}, {tm}, {f}>" for k in _BWD_KINDS]
    names += [f"csm_fwd_split_merge<{'double' if dtype_name == 'float64' else 'float'}>"]
    names += [f"csm_xent_block<{t}>", f"csm_jacobian<{t}>"]
    return names


def all_kernel_names() -> list[str]:
    """Every instantiation, all dtypes (each once)."""
    return list(dict.fromkeys(n for dt in _CTYPE for n in kernel_names(dt)))


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


def compile_options() -> tuple[str, ...]:
    """What the backend passes to NVRTC (CuPy appends -ftz=true and the architecture)."""
    return ("-std=c++17",) + tuple(f"-I{d}" for d in kernel_dirs())


# ---- the temperature ------------------------------------------------------------------------
def tau_args(tau: float, dtype_name: str) -> tuple[int, float, float, float]:
    """(mode, tau, inv, inv_lo) as the kernels take the temperature: TM_ONE for tau = 1;
    TM_PAIR where 1/tau is a normal number
    of the compute type, given as the pair inv + inv_lo (float rows: two floats); TM_WIDE
    otherwise (tau = +inf too) -- (x - m) / tau in double, by division where 1/tau is not a
    normal double."""
    tau = float(tau)
    if tau == 1.0:
        return TM_ONE, tau, 1.0, 0.0
    if math.isinf(tau):  # the forward kernels' rows are special; the backward passes divide by it
        return TM_WIDE, tau, 0.0, 0.0
    inv = 1.0 / tau
    if dtype_name == "float64":
        if math.isfinite(inv) and inv >= _F64_MIN_INV:
            return TM_PAIR, tau, inv, 0.0
    elif math.isfinite(inv) and _F32_MIN_INV <= inv <= _F32_MAX_INV:
        return TM_PAIR, tau, inv, inv - float(np.float32(inv))
    return TM_WIDE, tau, inv, 0.0


def _float_pair(v: float, dtype_name: str) -> tuple[float, float] | None:
    """v as hi + lo in the compute type, or None if hi would not be a normal number (0 is)."""
    if dtype_name == "float64":
        return (v, 0.0) if math.isfinite(v) else None
    if v == 0.0:
        return 0.0, 0.0
    if not (math.isfinite(v) and _F32_MIN_INV <= abs(v) <= _F32_MAX_INV):
        return None
    return v, v - float(np.float32(v))


# ---- the device: CuPy -------------------------------------------------------------------------
class _CupyDevice:
    """Kernel functions, arrays and properties through CuPy."""

    SPLIT_CHUNK = 8192  # entries per block of the split kernels

    def __init__(self) -> None:
        self.xp: Any = importlib.import_module("cupy")
        self._functions: dict[tuple[int, str], Any] = {}  # (device id, kernel name): a loaded kernel

    def device_id(self) -> int:
        return int(self.xp.cuda.runtime.getDevice())

    def function(self, name: str) -> Any:
        """The kernel `name`, loaded on the current device: a callable (grid, block, args,
        shared_mem=0)."""
        key = (self.device_id(), name)
        fn = self._functions.get(key)
        if fn is None:
            mod = self.xp.RawModule(code=kernel_source(), options=compile_options(), name_expressions=[name])
            fn = self._functions[key] = mod.get_function(name)
        return fn

    def launch(self, name: str, grid: tuple[int, ...], block: tuple[int, ...], args: Sequence[Any]) -> None:
        self.function(name)(grid, block, tuple(args))

    @staticmethod
    def ptr(a: Array) -> int:
        return int(a.data.ptr)

    @functools.cached_property
    def num_sms(self) -> int:
        dev = self.xp.cuda.Device()
        return int(dev.attributes["MultiProcessorCount"])


# ---- planning ------------------------------------------------------------------------------------
def _elems(a: Array) -> tuple[int, ...] | None:
    """Strides of an array in elements (they are multiples of the itemsize here), or None."""
    if any(s % a.itemsize for s in a.strides):
        return None
    return tuple(s // a.itemsize for s in a.strides)


def _outer_order(x: Array, skip: Sequence[int]) -> list[int]:
    """x's dimensions other than `skip` (and of size > 1), outermost first by x's strides:
    every operand's rows are enumerated in this one order."""
    es = x.strides
    return sorted((d for d in range(x.ndim) if d not in skip and x.shape[d] > 1), key=lambda d: -abs(es[d]))


def _merge(a: Array, order: list[int]) -> tuple[int, int] | None:
    """(count, stride) of a's dimensions `order` walked as one, or None if they are not
    evenly spaced in a."""
    if not order:
        return 1, 0
    es = _elems(a)
    if es is None:
        return None
    count, stride = a.shape[order[-1]], es[order[-1]]
    for d in reversed(order[:-1]):
        if es[d] != stride * count:
            return None
        count *= a.shape[d]
    return count, stride


class _View:
    """An operand as a kernel takes it: the array (or None: a null pointer) and its strides
    in elements -- (row stride, entry stride) of rows, or the strides a column kernel names."""

    def __init__(self, array: Array = None, *strides: int) -> None:
        self.array, self.strides = array, strides

    def args(self) -> list[Any]:
        return [self.array if self.array is not None else 0] + [int(s) for s in self.strides]


_NO_VIEW = _View(None, 0, 0)


def _rows(arrays: Sequence[Array], axis: int, order: list[int]) -> tuple[int, list[_View]] | None:
    """(nrows, [_View per array]) if every array is evenly spaced rows along `axis` in
    `order`, else None. None entries get a null view."""
    views: list[_View] = []
    nrows: int | None = None
    for a in arrays:
        if a is None:
            views.append(_NO_VIEW)
            continue
        m = _merge(a, order)
        es = _elems(a)
        if m is None or es is None or (nrows is not None and m[0] != nrows):
            return None
        nrows = m[0]
        views.append(_View(a, m[1], es[axis]))
    return (1 if nrows is None else nrows), views


class _Recorder:
    """Stands in for a device while a call is planned: records the launches, so that a plain
    call's plan can be replayed (Ops.fast_forward)."""

    def __init__(self, dev: Any) -> None:
        self.dev, self.xp = dev, dev.xp
        self.launches: list[tuple[str, tuple[int, ...], tuple[int, ...], list[Any]]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.dev, name)

    def launch(self, name: str, grid: tuple[int, ...], block: tuple[int, ...], args: Sequence[Any]) -> None:
        self.launches.append((name, grid, block, list(args)))
        self.dev.launch(name, grid, block, args)


class Ops:
    """The planning and launches on one device (CuPy's, or the tests' emulated one)."""

    def __init__(self, device: Any) -> None:
        self.dev = device
        self.xp = device.xp
        self._plans: dict[tuple[Any, ...], tuple[int, list[tuple[Any, tuple[int, ...], tuple[int, ...], list[Any]]]]] = {}

    # -- helpers --
    def _storage(self, a: Array, rdt: Any) -> Array:
        """a in the compute dtype: itself, or a cast in which values out of range become
        inf as NumPy's own casts make them (without its overflow warning)."""
        if a.dtype == rdt:
            return a
        with np.errstate(over="ignore", invalid="ignore"):
            return a.astype(rdt)

    def _mask(self, where: Array, shape: tuple[int, ...]) -> Array:
        return None if where is None else self.xp.broadcast_to(where, shape)

    def _overlaps(self, a: Array, b: Array) -> bool:
        if a is b:
            return False
        try:
            return bool(self.xp.shares_memory(a, b))
        except Exception:
            return True

    def _flat_rows(self, a: Array, axes: Sequence[int]) -> tuple[Array, list[int]]:
        """a's softmax axes moved last and made contiguous rows (a copy)."""
        perm = [i for i in range(a.ndim) if i not in axes] + list(axes)
        n = math.prod(a.shape[i] for i in axes) if axes else 1
        return self.xp.ascontiguousarray(a.transpose(perm)).reshape(-1, n), perm

    def _unflat(self, flat: Array, perm: list[int], shape: tuple[int, ...]) -> Array:
        moved = tuple(shape[i] for i in perm)
        return flat.reshape(moved).transpose(tuple(np.argsort(perm)))

    def _layout(self, views: Sequence[_View], nrows: int, mask_view: _View | None = None) -> tuple[int, bool]:
        """(F, aligned) for row operands: F_FAST when every operand has contiguous entries,
        its pointer on its element size and every operand's rows on the same 16-byte phase
        (then pieces are 16-byte aligned in all at once), and there is no mask; aligned: every
        row starts on 16 bytes."""
        if mask_view is not None and mask_view.array is not None:
            return F_GEN, False
        phase: int | None = None
        rphase: int | None = None
        for v in views:
            a = v.array
            if a is None:
                continue
            rs, es = v.strides
            p = self.dev.ptr(a)
            if es != 1 or p % a.itemsize:
                return F_GEN, False
            ph, rph = p % 16, (rs * a.itemsize) % 16 if nrows > 1 else 0
            if phase is None:
                phase, rphase = ph, rph
            elif (ph, rph) != (phase, rphase):
                return F_GEN, False
        return F_FAST, phase in (0, None) and rphase in (0, None)

    def _shape(self, family: str, dt: str, n: int, f: int, tm: int, aligned: bool) -> tuple[int, int] | None:
        """(G, NC) for rows of n entries, or None if they do not fit in registers."""
        n_eff = n if (f == F_GEN or aligned) else n + _CHUNK[dt] - 1
        for g, nc in row_shapes(family, dt, _is_general(tm, f)):
            if g * nc * _CHUNK[dt] >= n_eff:
                return g, nc
        return None

    def _grid(self, nrows: int, g: int, bwd: bool = False) -> tuple[tuple[int], tuple[int]]:
        """Blocks of a grid-stride row kernel: enough for every row, at most WAVES resident grids."""
        block = 256 if g <= 32 else g
        per_sm = max(1, (512 if bwd else 768) // block)
        need = _cdiv(nrows, 256 // g) if g <= 32 else nrows
        return (max(1, min(need, self.dev.num_sms * per_sm * WAVES)),), (block,)

    # -- forward --
    def forward(self, kind: Kind, x: Array, axes: tuple[int, ...], tau: float, where: Array, out: Array, rdt: Any,
                keepdims: bool = False) -> Array:
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

    def _forward_flat(self, kind: Kind, xs: Array, res: Array, mask: Array, axes: tuple[int, ...], tau: float) -> None:
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
        self._rows_launch(kind, _flat_views([flat, ofl, mflat]), n, tau)
        if kind == Kind.LOGSUMEXP:
            res[...] = ofl.reshape(res.shape)
        else:
            res[...] = self._unflat(ofl, perm, xs.shape)

    def _rows_launch(self, kind: Kind, rv: tuple[int, list[_View]], n: int, tau: float) -> None:
        """The forward row kernels; rv = (nrows, [x, out (logsumexp: its values), mask views])."""
        nrows, (xv, ov, mv) = rv
        lse = kind == Kind.LOGSUMEXP
        if lse:  # the per-row value: out's row stride is lse's
            outv, lsev = _NO_VIEW, _View(ov.array, ov.strides[0])
        else:
            outv, lsev = ov, _View(None, 0)
        dt = xv.array.dtype.name
        t = _CTYPE[dt]
        k = int(Kind.LOG_SOFTMAX) if lse else int(kind)
        tm, tau_, inv, inv_lo = tau_args(tau, dt)
        f, aligned = self._layout([xv] if lse else [xv, outv], nrows, mv)
        tail = [nrows, n, tau_, inv, inv_lo]
        common = xv.args() + outv.args() + mv.args() + lsev.args()
        shape = self._shape("fwd", dt, n, f, tm, aligned)
        if shape is not None:
            g, nc = shape
            grid, block = self._grid(nrows, g)
            self.dev.launch(f"csm_fwd_rows<{t}, {g}, {nc}, {k}, {tm}, {f}>", grid, block, common + tail)
            return
        # rows too long for registers: chunks in their own blocks, enough to keep every
        # multiprocessor busy, each a multiple of 256 pieces' worth, at most 65535 per row
        want = max(_cdiv(n, self.dev.SPLIT_CHUNK), _cdiv(4 * self.dev.num_sms, nrows), 2)
        nchunks = min(want, 65535)
        chunk = _cdiv(_cdiv(n, nchunks), _CHUNK[dt]) * _CHUNK[dt]
        nchunks = _cdiv(n, chunk)
        ws = self.xp.empty(nrows * nchunks * 7, dtype=np.float64)
        sizes = [nrows, n, chunk, tau_, inv, inv_lo]
        c = "double" if dt == "float64" else "float"
        self.dev.launch(f"csm_fwd_split_stats<{t}, {tm}, {f}>", (nrows, nchunks), (256,),
                        xv.args() + mv.args() + [ws] + sizes)
        self.dev.launch(f"csm_fwd_split_merge<{c}>", (nrows,), (256,), [ws, nrows, nchunks, tau_])
        self.dev.launch(f"csm_fwd_split_finish<{t}, {k}, {tm}, {f}>", (nrows, nchunks), (256,), common + [ws] + sizes)

    def _cols_launch(self, kind: Kind, xs: Array, res: Array, mask: Array, axis: int, tau: float) -> bool:
        """The column kernel, if x (and out) are contiguous along a dimension other than
        axis and the rest is evenly spaced groups; returns whether it launched."""
        ex = _elems(xs)
        if ex is None:
            return False
        cands = [d for d in range(xs.ndim) if d != axis and ex[d] == 1 and xs.shape[d] > 1]
        if not cands:
            return False
        c = cands[0]
        er = _elems(res)
        if er is None or (kind != Kind.LOGSUMEXP and er[c] != 1):
            return False
        gv = _rows([xs, res, mask], c, _outer_order(xs, (axis, c)))  # groups: the other dimensions merged
        if gv is None or gv[0] > 65535:
            return False
        ngroups, (xg, og, mg) = gv
        width, n = xs.shape[c], xs.shape[axis]
        xv = _View(xs, xg.strides[0], ex[axis])  # group stride, entry stride
        if kind == Kind.LOGSUMEXP:
            outv, lsev = _NO_VIEW, _View(res, *og.strides)  # group stride, column stride
        else:
            outv, lsev = _View(res, og.strides[0], er[axis]), _NO_VIEW
        em = _elems(mask) if mask is not None else None
        maskv = _View(mask, mg.strides[0], em[axis], mg.strides[1]) if em is not None else _View(None, 0, 0, 0)
        dt = xs.dtype.name
        k = int(Kind.LOG_SOFTMAX) if kind == Kind.LOGSUMEXP else int(kind)
        tm, tau_, inv, inv_lo = tau_args(tau, dt)
        f = F_GEN if mask is not None else F_FAST
        self.dev.launch(f"csm_fwd_cols<{_CTYPE[dt]}, {k}, {tm}, {f}>", (_cdiv(width, COLS_TILE[0]), ngroups), COLS_TILE,
                        xv.args() + outv.args() + maskv.args() + lsev.args() + [ngroups, width, n, tau_, inv, inv_lo])
        return True

    # -- the plain call, planned once --
    def fast_forward(self, kind: Kind, x: Array, axis: int, tau: float) -> Array:
        """A plain forward call (x of a float dtype, one int axis, no mask, no out=): the
        launch plan of (kind, shape, strides, dtype, axis, tau, alignment, device) replayed,
        or planned and recorded; None where the general path must take the call."""
        xp = self.xp
        nd = x.ndim
        if not -nd <= axis < nd or x.size == 0:
            return None
        axis %= nd
        lse = kind == Kind.LOGSUMEXP
        dev_id = self.dev.device_id() if hasattr(self.dev, "device_id") else 0
        key = (kind, x.shape, x.strides, x.dtype.name, axis, tau, self.dev.ptr(x) % 16, dev_id)
        plan = self._plans.get(key)
        if lse:
            res = xp.empty(tuple(s for i, s in enumerate(x.shape) if i != axis), dtype=x.dtype)
        else:
            res = xp.empty_like(x)
        if plan is not None:
            if self.dev.ptr(res) % 16 != plan[0]:
                return None
            xptr, rptr = x, res
            for fn, grid, block, args in plan[1]:
                fn(grid, block, tuple(xptr if a is _SLOT_X else rptr if a is _SLOT_R else a for a in args))
            return res
        rec = _Recorder(self.dev)
        ops = Ops(rec)
        target = res.reshape(tuple(1 if i == axis else s for i, s in enumerate(x.shape))) if lse else res
        ops._forward_flat(kind, x, target, None, (axis,), tau)
        steps: list[tuple[Any, tuple[int, ...], tuple[int, ...], list[Any]]] = []
        for name, grid, block, args in rec.launches:
            conv = []
            for a in args:
                if a is x:
                    conv.append(_SLOT_X)
                elif a is target:
                    conv.append(_SLOT_R)
                elif hasattr(a, "shape"):  # a temporary or a view: this call is not replayable
                    return res
                else:
                    conv.append(a)
            fn = self.dev.function(name)
            steps.append((fn, grid, block, conv))
        if len(self._plans) > 4096:
            self._plans.clear()
        self._plans[key] = (self.dev.ptr(res) % 16, steps)
        return res

    # -- backward --
    def backward(self, kind: Kind, g: Array, y: Array, axes: tuple[int, ...], tau: float, where: Array, out: Array,
                 rdt: Any) -> Array:
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
                self._bwd_launch(kind, _flat_views([gf, yf, of, mf]), gf.shape[1], tau)
                res[...] = self._unflat(of, perm, gs.shape)
        if out is not None and res is not out:
            out[...] = res
            return out
        return res

    def _bwd_launch(self, kind: Kind, rv: tuple[int, list[_View]], n: int, tau: float) -> None:
        nrows, views = rv
        dt = views[0].array.dtype.name
        t = _CTYPE[dt]
        tm, tau_, inv, inv_lo = tau_args(tau, dt)
        f, aligned = self._layout(views[:3], nrows, views[3])
        args = [a for v in views for a in v.args()] + [nrows, n, tau_, inv, inv_lo]
        shape = self._shape("bwd", dt, n, f, tm, aligned)
        if shape is not None:
            g, nc = shape
            grid, block = self._grid(nrows, g, bwd=True)
            self.dev.launch(f"csm_bwd_rows<{t}, {g}, {nc}, {int(kind)}, {tm}, {f}>", grid, block, args)
        else:
            threads = 512 if n >= 8192 else 256
            grid = (max(1, min(nrows, self.dev.num_sms * (1024 // threads) * WAVES)),)
            self.dev.launch(f"csm_bwd_long<{t}, {int(kind)}, {tm}, {f}>", grid, (threads,), args)

    # -- Jacobians --
    def jacobian(self, x: Array, axis: int, tau: float, rdt: Any, log: bool) -> Array:
        xp = self.xp
        flat, perm = self._flat_rows(self._storage(x, rdt), (axis,))
        nrows, n = flat.shape
        s = self.forward(Kind.SOFTMAX, flat, (1,), tau, None, None, rdt)
        lp = self.forward(Kind.LOG_SOFTMAX, flat, (1,), tau, None, None, rdt)
        J = xp.empty((nrows, n, n), dtype=rdt)
        threads = min(256, max(32, _pow2_at_least(n)))
        grid = (max(1, min(nrows * n, 1 << 20)),)
        dt = flat.dtype.name
        tau = float(tau)
        self.dev.launch(f"csm_jacobian<{_CTYPE[dt]}>", grid, (threads,),
                        [s, lp, J, nrows, n, tau, 1.0 / tau, int(log)])
        return J.reshape(tuple(x.shape[i] for i in perm[:-1]) + (n, n))

    # -- cross-entropy --
    def cross_entropy(self, x: Array, axis: int, labels: Array, probs: Array, weight: Array, ignore_index: int,
                      eps: float, tau: float, where: Array, grad_scale: float, want_grad: bool,
                      rdt: Any) -> tuple[Array, Array]:
        xp = self.xp
        flat, perm = self._flat_rows(self._storage(x, rdt), (axis,))
        nrows, n = flat.shape
        dt = flat.dtype.name
        t = _CTYPE[dt]
        loss = xp.empty(nrows, dtype=np.float64)
        grad = xp.empty_like(flat) if want_grad else None
        tm, tau_, inv, inv_lo = tau_args(tau, dt)
        fpair = _float_pair(float(grad_scale) / tau_, dt)
        labv = _View(None, 0)
        if labels is not None:
            labv = _View(xp.ascontiguousarray(labels.astype(np.int64)).reshape(-1), 1)
        fast = (labels is not None and probs is None and weight is None and eps == 0.0 and where is None
                and tm != TM_WIDE and fpair is not None)
        if fast:
            views = [_View(flat, n, 1)] + ([_View(grad, n, 1)] if grad is not None else [])
            f, aligned = self._layout(views, nrows)
            shape = self._shape("fwd", dt, n, f, tm, aligned) if f == F_FAST else None
            if shape is not None and fpair is not None:
                g, nc = shape
                grid, block = self._grid(nrows, g)
                self.dev.launch(f"csm_xent_rows<{t}, {g}, {nc}, {tm}, {F_FAST}>", grid, block,
                                _View(flat, n, 1).args() + labv.args() + _View(loss, 1).args()
                                + _View(grad, n, 1).args() + [nrows, n, tau_, inv, inv_lo, int(ignore_index)]
                                + list(fpair))
                return self._xent_result(loss, grad, x, perm)
        qv = _NO_VIEW if probs is None else _View(self._flat_rows(self._storage(probs, rdt), (axis,))[0], n, 1)
        w = 0 if weight is None else xp.ascontiguousarray(weight, dtype=np.float64)
        mv = _NO_VIEW
        if where is not None:
            mv = _View(self._flat_rows(self._mask(where, x.shape), (axis,))[0], n, 1)
        threads = min(256, max(32, _pow2_at_least(n)))  # no idle warps for few classes
        grid = (max(1, min(nrows, self.dev.num_sms * 8 * WAVES)),)
        self.dev.launch(f"csm_xent_block<{t}>", grid, (threads,),
                        _View(flat, n, 1).args() + qv.args() + labv.args() + [w] + mv.args() + _View(loss, 1).args()
                        + _View(grad, n, 1).args()
                        + [nrows, n, tau_, inv, float(eps), int(ignore_index), float(grad_scale)])
        return self._xent_result(loss, grad, x, perm)

    def _xent_result(self, loss: Array, grad: Array, x: Array, perm: list[int]) -> tuple[Array, Array]:
        loss = loss.reshape(tuple(x.shape[i] for i in perm[:-1]))
        if grad is not None:
            grad = self._unflat(grad, perm, x.shape)
        return loss, grad


def _flat_views(arrays: Sequence[Array]) -> tuple[int, list[_View]]:
    """The row views of contiguous 2-D arrays (or None), which always exist."""
    rv = _rows(arrays, 1, [0])
    assert rv is not None, "contiguous rows are evenly spaced"
    return rv


def _kind(op: Op) -> Kind:
    assert op.kind is not None, op.name
    return op.kind


_SLOT_X, _SLOT_R = object(), object()  # a plan's placeholders for the input and the result
_FAST_DTYPES = ("float16", "float32", "float64")


class CudaBackend:
    """The backend protocol on one device's Ops (the module's own is CuPy's; the tests
    bind an emulated one)."""

    def __init__(self, ops: Ops) -> None:
        self.ops = ops
        self.xp = ops.xp

    def namespace(self, x: Array) -> Any:
        return self.xp

    def writable(self, out: Array) -> bool:
        flags = getattr(out, "flags", None)
        return bool(getattr(flags, "writeable", True))

    def from_numpy(self, a: np.ndarray[Any, Any]) -> Array:
        return self.xp.asarray(a)

    def to_numpy(self, a: Array) -> np.ndarray[Any, Any]:
        return a.get() if hasattr(a, "get") else np.asarray(a)

    def fast_entry(self, op: Op, cls: type) -> Callable[[Any, Any, Any, Any], Any] | None:
        """Plain forward calls on arrays of cls: a float array, an int axis, a number
        temperature (> 0), no out=; anything else returns None (the general path)."""
        if op.family is not Family.FORWARD or cls is not self.xp.ndarray:
            return None
        kind, ops = op.kind, self.ops
        ndarray: Any = self.xp.ndarray
        if kind is None:
            return None

        def fast(x: Any, axis: Any, temperature: Any, out: Any) -> Array:
            if out is not None or type(x) is not ndarray or x.dtype.name not in _FAST_DTYPES or x.ndim == 0:
                return None
            if type(axis) is not int or type(temperature) not in (float, int) or not temperature > 0:
                return None
            if not x.dtype.isnative:
                return None
            return ops.fast_forward(kind, x, axis, float(temperature))

        return fast

    def forward(self, op: Op, x: Array, /, *, axes: tuple[int, ...], temperature: float, keepdims: bool, where: Array,
                out: Array, dtype: Any) -> Array:
        return self.ops.forward(_kind(op), x, axes, temperature, where, out, dtype, keepdims=keepdims)

    def backward(self, op: Op, grad_output: Array, output: Array, /, *, axes: tuple[int, ...], temperature: float,
                 where: Array, out: Array, dtype: Any) -> Array:
        return self.ops.backward(_kind(op), grad_output, output, axes, temperature, where, out, dtype)

    def jacobian(self, op: Op, x: Array, /, *, axis: int, temperature: float, dtype: Any) -> Array:
        return self.ops.jacobian(x, axis, temperature, dtype, op.log)

    def cross_entropy(self, op: Op, logits: Array, /, *, axis: int, labels: Array, probs: Array, weight: Array,
                      ignore_index: int, label_smoothing: float, temperature: float, where: Array, grad_scale: float,
                      want_grad: bool, dtype: Any) -> tuple[Array, Array]:
        return self.ops.cross_entropy(logits, axis, labels, probs, weight, ignore_index, label_smoothing, temperature,
                                      where, grad_scale, want_grad, dtype)


@functools.lru_cache(maxsize=None)
def _module() -> CudaBackend:
    return CudaBackend(Ops(_CupyDevice()))


def __getattr__(name: str) -> Any:
    """The protocol's functions, bound to the CuPy device on first use (importing this
    module imports nothing of CuPy)."""
    if not name.startswith("_") and hasattr(CudaBackend, name):
        return getattr(_module(), name)
    raise AttributeError(name)
