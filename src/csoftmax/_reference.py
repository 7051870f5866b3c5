"""The array-API reference of every op: the slow twin of the fast backends.

Plain array-API code (any namespace with the 2023.12 standard: NumPy >= 2, CuPy,
array-api-compat wrappers), written for clarity and for accuracy rather than speed. It is
the oracle of the test suite, the fallback for arrays no compiled backend takes, and the
baseline of the benchmarks. Every function here takes float64 arrays (the backend adapter
in csoftmax._backends.reference upcasts), already-validated arguments, and returns new
arrays; none of it allocates less than it could, on purpose.

Accuracy follows the contract of docs/design.md ("Accuracy"), with the same ideas as the
C core, spelled with whole-array operations:
  * x - max is computed with its rounding error (two_diff) and the error is folded in as
    exp(dh) * (1 + dl); with a temperature the quotient carries its remainder likewise;
  * S' = sum of exp over the entries below the max, plus (ties - 1): the max entry itself
    is left out, so log1p(S') keeps its precision when S' is tiny; terms whose exp would
    be subnormal are summed scaled by exp(512), so they keep theirs; sums are pairwise with
    every rounding error carried (accurate_sum), so the namespace's summation order
    (NumPy's is naive along a strided axis) does not matter;
  * log_softmax = (x - max) / tau - log1p(S'), so log_softmax's max entry is -log1p(S').
Special values follow the table of docs/design.md ("Special values"). The functions of
the forward and backward ops carry the ops' names (csoftmax._backends.reference calls
them by name).
"""
from __future__ import annotations

import importlib
import math
from typing import Any

_VELTKAMP = 134217729.0  # 2^27 + 1
_FAR = 512.0  # S' terms with (x - m) / tau below -_FAR are summed scaled by exp(_FAR) (_Stats)
_EXP_FAR = (4.377491037053051e-223, 2.706079830228623e-239)  # exp(-512) as a double-double


def namespace(x: Any) -> Any:
    """The array namespace of x: __array_namespace__, else array-api-compat if installed."""
    get = getattr(x, "__array_namespace__", None)
    if get is not None:
        return get()
    try:
        array_api_compat = importlib.import_module("array_api_compat")
    except ImportError:
        raise TypeError(
            f"csoftmax cannot take arrays of type {type(x).__module__}.{type(x).__qualname__}: "
            "no backend accepts them and they have no __array_namespace__ "
            "(installing array-api-compat adds support for more array libraries)"
        ) from None
    try:
        return array_api_compat.array_namespace(x)
    except TypeError as exc:
        raise TypeError(f"csoftmax cannot take arrays of type {type(x).__qualname__}: {exc}") from None


def _two_diff(a: Any, b: Any) -> Any:
    """s + e == a - b exactly."""
    s = a - b
    bb = s - a
    e = (a - (s - bb)) - (b + bb)
    return s, e


def _two_prod(a: Any, b: Any) -> Any:
    """p + e == a * b exactly (Veltkamp-Dekker; no fused multiply-add in the standard)."""
    p = a * b
    ca, cb = _VELTKAMP * a, _VELTKAMP * b
    ah, bh = ca - (ca - a), cb - (cb - b)
    al, bl = a - ah, b - bh
    e = ((ah * bh - p) + ah * bl + al * bh) + al * bl
    return p, e


def accurate_sum(xp: Any, v: Any, axes: Any) -> Any:
    """Sum over axes (keepdims) to about double-double accuracy, whatever order the
    namespace's own sum would use: pairwise, with every addition's rounding error
    (two_sum) carried along and added at the end. log2(n) whole-array steps."""
    return accurate_sum_pair(xp, v, axes)[0]


def accurate_sum_pair(xp: Any, v: Any, axes: tuple[int, ...]) -> tuple[Any, Any]:
    """accurate_sum as the pair (hi, lo): hi the sum rounded, lo what it left out (for a
    difference g - sum that cancels). Where the running sums of finite terms overflow
    although the sum need not (terms near the largest double, of both signs), the terms
    are summed again scaled down by a power of two, and scaled back. Infinite terms of one
    sign (and no NaN) make the sum that infinity, whatever the finite ones did on the way."""
    hi, lo = _pairwise_sum(xp, v, axes)
    if not axes or bool(xp.all(xp.isfinite(hi))):
        return hi, lo
    nan = xp.any(xp.isnan(v), axis=axes, keepdims=True)
    pos = xp.any(v == math.inf, axis=axes, keepdims=True)
    neg = xp.any(v == -math.inf, axis=axes, keepdims=True)
    one_sign = ~nan & (pos != neg)  # the sums keep the axes, as these do
    hi = xp.where(one_sign, xp.where(pos, xp.full_like(hi, math.inf), xp.full_like(hi, -math.inf)), hi)
    lo = xp.where(one_sign, xp.zeros_like(lo), lo)
    n = 1
    for a in axes:
        n *= v.shape[a]
    k = max(1, (n - 1).bit_length() + 1)
    shi, slo = _pairwise_sum(xp, v * 2.0**-k, axes)
    finite_terms = xp.all(xp.isfinite(v), axis=axes, keepdims=True)
    redo = finite_terms & ~xp.isfinite(hi)
    up = shi * 2.0**k
    return xp.where(redo, up, hi), xp.where(redo & xp.isfinite(up), slo * 2.0**k, lo)


def _pairwise_sum(xp: Any, v: Any, axes: tuple[int, ...]) -> tuple[Any, Any]:
    if not axes:
        return v, xp.zeros_like(v)
    nd = v.ndim
    rest = [a for a in range(nd) if a not in axes]
    moved = xp.permute_dims(v, tuple(rest) + tuple(axes))
    lead = moved.shape[: len(rest)]
    n = 1
    for a in axes:
        n *= v.shape[a]
    hi = xp.reshape(moved, tuple(lead) + (n,))
    lo = xp.zeros_like(hi)
    while hi.shape[-1] > 1:
        if hi.shape[-1] % 2:
            pad = xp.zeros(tuple(lead) + (1,), dtype=hi.dtype)
            hi, lo = xp.concat([hi, pad], axis=-1), xp.concat([lo, pad], axis=-1)
        a, b = hi[..., 0::2], hi[..., 1::2]
        s = a + b
        bb = s - a
        err = (a - (s - bb)) + (b - bb)
        hi, lo = s, lo[..., 0::2] + lo[..., 1::2] + _finite_or_zero(xp, err)
    if not n:
        hi = lo = xp.zeros(tuple(lead) + (1,), dtype=v.dtype)
    total = hi + lo
    rest = _finite_or_zero(xp, (hi - total) + lo)
    total, rest = xp.reshape(total, tuple(lead)), xp.reshape(rest, tuple(lead))
    for a in sorted(axes):  # back to keepdims
        total, rest = xp.expand_dims(total, axis=a), xp.expand_dims(rest, axis=a)
    return total, rest


def _finite_or_zero(xp: Any, v: Any) -> Any:
    return xp.where(xp.isfinite(v), v, xp.zeros_like(v))


def _scaled_diff(xp: Any, x: Any, m: Any, tau: Any) -> Any:
    """(x - m) / tau as dh + dl, accurate to ~1 ulp of float64 in absolute terms."""
    dh, dl = _two_diff(x, m)
    dl = _finite_or_zero(xp, dl)
    if tau != 1.0:
        q = dh / tau
        p, pe = _two_prod(q, xp.asarray(tau, dtype=q.dtype))
        rem = (dh - p) - pe
        dl = _finite_or_zero(xp, (rem + dl) / tau)
        # x - m overflowed although (x - m) / tau may not: x/tau - m/tau has no cancellation then
        over = (dh == -math.inf) & (x > -math.inf)
        dh = xp.where(over, x / tau - m / tau, q)
        dl = xp.where(over, xp.zeros_like(dl), dl)
    return dh, dl


def _bcast_mask(xp: Any, mask: Any, shape: Any) -> Any:
    return None if mask is None else xp.broadcast_to(mask, shape)


def _count(xp: Any, cond: Any, axes: Any) -> Any:
    return xp.sum(xp.astype(cond, xp.float64), axis=axes, keepdims=True)


class _Stats:
    """Per-row quantities of x (float64), kept with keepdims=True shapes."""

    def __init__(self, xp: Any, x: Any, axes: Any, tau: Any, mask: Any) -> None:
        self.xp, self.x, self.axes, self.tau = xp, x, axes, tau
        self.mask = mask = _bcast_mask(xp, mask, x.shape)
        self.live = xp.ones(x.shape, dtype=xp.bool) if mask is None else mask
        xm = xp.where(self.live, x, -math.inf)
        isnan = xp.isnan(xm)
        xn = xp.where(isnan, -math.inf, xm)  # NaN left out of the max; flagged instead
        self.xn = xn
        self.m = xp.max(xn, axis=axes, keepdims=True)
        self.nan = xp.any(isnan, axis=axes, keepdims=True)
        self.any = xp.any(self.live, axis=axes, keepdims=True)
        finite_m = xp.isfinite(self.m)
        self.tau_inf = math.isinf(tau)
        self.special = self.nan | ~self.any | ~finite_m
        if self.tau_inf:
            self.special = xp.ones_like(self.special)
        m0 = xp.where(finite_m, self.m, xp.zeros_like(self.m))
        self.dh, self.dl = _scaled_diff(xp, xn, m0, tau)
        is_max = (xn == self.m) & finite_m
        e = xp.exp(self.dh)
        e = e + e * self.dl
        self.e = e
        # the terms far below the max (subnormal or 0 as exp(dh)) are summed as exp(dh + 512),
        # normal numbers that keep their digits (dh + 512 is exact there), times exp(-512)
        far = self.dh < -_FAR
        zero = xp.zeros_like(e)
        ef = xp.exp(xp.where(far, self.dh + _FAR, -math.inf))
        far_hi, far_lo = accurate_sum_pair(xp, ef + ef * self.dl, axes)
        far_sum = far_hi * _EXP_FAR[0] + (far_hi * _EXP_FAR[1] + far_lo * _EXP_FAR[0])
        others = accurate_sum(xp, xp.where(is_max | far, zero, e), axes) + far_sum
        self.s = (_count(xp, is_max, axes) - 1.0) + others  # S', the max entry left out
        self.log1p_s = xp.log1p(xp.where(self.special, xp.zeros_like(self.s), self.s))

    def special_values(self, kind: Any) -> Any:
        """Values of the special rows (masked entries are overwritten by the caller)."""
        xp = self.xp
        nan = math.nan
        if kind == "logsumexp":
            v = xp.where(self.m == math.inf, xp.full_like(self.m, math.inf), -math.inf)  # m is -inf or +inf here
            v = xp.where(self.nan, nan, v)
            return xp.where(~self.any, -math.inf, v)
        outside = 0.0 if kind == "softmax" else -math.inf
        full = xp.full(self.x.shape, nan, dtype=self.x.dtype)
        if self.tau_inf:
            support = self.live & (self.xn > -math.inf)
            cnt = _count(xp, support, self.axes)
            inside = 1.0 / cnt if kind == "softmax" else -xp.log(cnt)
            uniform = xp.where(support, inside, outside)
            uniform_ok = ~self.nan & xp.isfinite(self.m)
            full = xp.where(uniform_ok, uniform, full)
        return xp.where(self.any, full, outside)


def _masked_fill(xp: Any, v: Any, mask: Any, fill: Any) -> Any:
    if mask is None:
        return v
    return xp.where(mask, v, xp.asarray(fill, dtype=v.dtype))


def softmax(xp: Any, x: Any, axes: Any, tau: Any, mask: Any) -> Any:
    st = _Stats(xp, x, axes, tau, mask)
    v = st.e / (1.0 + xp.where(st.special, xp.zeros_like(st.s), st.s))
    v = xp.where(st.special, st.special_values("softmax"), v)
    return _masked_fill(xp, v, st.mask, 0.0)


def log_softmax(xp: Any, x: Any, axes: Any, tau: Any, mask: Any) -> Any:
    st = _Stats(xp, x, axes, tau, mask)
    v = (st.dh - st.log1p_s) + st.dl
    v = xp.where(st.special, st.special_values("log_softmax"), v)
    return _masked_fill(xp, v, st.mask, -math.inf)


def logsumexp(xp: Any, x: Any, axes: Any, mask: Any, keepdims: Any) -> Any:
    st = _Stats(xp, x, axes, 1.0, mask)
    v = xp.where(st.special, st.special_values("logsumexp"), st.m + st.log1p_s)
    return v if keepdims else xp.squeeze(v, axis=axes)


def softmax_backward(xp: Any, g: Any, y: Any, axes: Any, tau: Any, mask: Any) -> Any:
    mask = _bcast_mask(xp, mask, g.shape)
    gm, ym = _masked_fill(xp, g, mask, 0.0), _masked_fill(xp, y, mask, 0.0)
    dot, dot_lo = accurate_sum_pair(xp, gm * ym, axes)
    d = (g - dot) - dot_lo
    # g - sum may overflow where y (g - sum) does not: there, in halves
    halves = (y * ((g * 0.5 - dot * 0.5) - dot_lo * 0.5)) / tau * 2.0
    v = xp.where(xp.isfinite(d) | ~(xp.isfinite(g) & xp.isfinite(dot)), y * d / tau, halves)
    return _masked_fill(xp, v, mask, 0.0)


def log_softmax_backward(xp: Any, g: Any, y: Any, axes: Any, tau: Any, mask: Any) -> Any:
    mask = _bcast_mask(xp, mask, g.shape)
    total, total_lo = accurate_sum_pair(xp, _masked_fill(xp, g, mask, 0.0), axes)
    e = xp.exp(y)
    # an infinite sum: exp(y) * sum is that infinity for every finite y, underflow or not
    et = xp.where(xp.isinf(total) & (y > -math.inf), total, e * total)
    return _masked_fill(xp, ((g - et) - e * total_lo) / tau, mask, 0.0)


def one_minus_softmax(xp: Any, logp: Any) -> Any:
    """1 - softmax, to full precision also where softmax is close to 1: -expm1(logp)."""
    return -xp.expm1(logp)


def jacobian(xp: Any, s: Any, logp: Any, tau: Any, log: Any) -> Any:
    """Batched Jacobian of softmax (log=False) or log_softmax (log=True) along the last
    axis, from the softmax s and the log_softmax logp of the same row:
      softmax:      J[..., i, j] = s_i (delta_ij - s_j) / tau
      log_softmax:  J[..., i, j] = (delta_ij - s_j) / tau
    The diagonal uses 1 - s_i = -expm1(logp_i), exact also where s_i is close to 1."""
    n = s.shape[-1]
    eye = xp.eye(n, dtype=xp.bool)
    om = one_minus_softmax(xp, logp)
    if log:
        off = -xp.broadcast_to(s[..., None, :], s.shape + (n,))
        diag = om[..., :, None]
    else:
        off = -(s[..., :, None] * s[..., None, :])
        diag = (s * om)[..., :, None]
    return xp.where(eye, diag, off) / tau  # a division: every tau, 1/tau representable or not


def cross_entropy_rows(xp: Any, x: Any, axis: Any, labels: Any, probs: Any, weight: Any, ignore_index: Any, eps: Any,
                       tau: Any, mask: Any, grad_scale: Any, want_grad: Any) -> Any:
    """Per-row losses (shape of x without axis) and, if want_grad, the gradient with
    respect to x, scaled by grad_scale (torch.nn.functional.cross_entropy's formulas; see
    csm_grad.h for the same in C). labels: integer class indices (or None); probs: class
    probabilities of x's shape (or None); weight: float64 per class or None."""
    n = x.shape[axis]
    axes = (axis,)
    logp = log_softmax(xp, x, axes, tau, mask)
    mask = _bcast_mask(xp, mask, x.shape)
    live = xp.ones(x.shape, dtype=xp.bool) if mask is None else mask
    shape_w = [1] * x.ndim
    shape_w[axis] = n
    w = xp.ones(tuple(shape_w), dtype=x.dtype) if weight is None else xp.reshape(weight, tuple(shape_w))
    w = xp.broadcast_to(w, x.shape)
    zero = xp.zeros_like(x)
    K = _count(xp, live, axes)
    eps_k = xp.where(K > 0, eps / xp.where(K > 0, K, 1.0), 0.0)
    neg_logp = -logp
    if probs is not None:
        q = xp.where(live, (1.0 - eps) * probs + eps_k, zero)
        term = xp.where((w == 0.0) | (q == 0.0), zero, w * q * neg_logp)  # a term of weight 0 is 0 (0 * log 0 = 0)
        loss = xp.sum(term, axis=axis)
        A = xp.sum(w * q, axis=axis, keepdims=True)
        B = w * q
        valid = None
    else:
        valid = labels != ignore_index
        lab = xp.where(valid, labels, xp.zeros_like(labels))
        idx = xp.reshape(xp.arange(n), tuple(shape_w))
        onehot = idx == xp.expand_dims(lab, axis=axis)
        w_y = xp.sum(xp.where(onehot, w, zero), axis=axis, keepdims=True)
        nll_y = xp.sum(xp.where(onehot, neg_logp, zero), axis=axis, keepdims=True)
        nll = (1.0 - eps) * xp.where(w_y == 0.0, xp.zeros_like(w_y), w_y * nll_y)  # a term of weight 0 is 0
        if eps == 1.0:
            nll = xp.zeros_like(nll)
        # each term scaled by eps / K before the sum, which would overflow where the loss does not
        smooth = xp.sum(xp.where(live & (w != 0.0), eps_k * w * neg_logp, zero), axis=axis, keepdims=True)
        loss_k = nll + smooth if eps != 0.0 else nll
        valid_k = xp.expand_dims(valid, axis=axis)
        loss = xp.squeeze(xp.where(valid_k, loss_k, xp.zeros_like(loss_k)), axis=axis)
        W = xp.sum(xp.where(live, w, zero), axis=axis, keepdims=True)
        A = (1.0 - eps) * w_y + eps_k * W
        B = xp.where(onehot, (1.0 - eps) * w, zero) + eps_k * w
    if not want_grad:
        return loss, None
    p = softmax(xp, x, axes, tau, mask)
    grad = p * A - B
    if valid is not None:  # at the label, A (p_y - 1) + (A - B_y) with 1 - p_y summed from the other classes: no
        rest = xp.sum(xp.where(onehot | ~live, zero, p), axis=axis, keepdims=True)  # cancelling where p_y is near 1
        grad = xp.where(onehot & ~xp.isnan(p), eps_k * (W - w_y) - A * rest, grad)  # a NaN row stays NaN
    grad = grad * grad_scale / tau
    grad = xp.where(live, grad, zero)
    if valid is not None:
        grad = xp.where(xp.expand_dims(valid, axis=axis), grad, zero)
    return loss, grad


# ---- derivatives the kernels do not compute (for the autodiff adapters: torch, JAX) ----
# Written in whole-array operations of the caller's namespace, so that an autodiff library
# records them and can differentiate once more. Sums here are the namespace's own: these
# are derivatives of derivatives and of targets, not the accuracy-critical forward passes.
def _sum_keep(xp: Any, v: Any, axes: Any) -> Any:
    return xp.sum(v, axis=axes, keepdims=True) if axes else v


def softmax_backward_vjp(xp: Any, h: Any, g: Any, y: Any, axes: Any, tau: float, mask: Any) -> tuple[Any, Any]:
    """The vector-Jacobian product of softmax_backward (dx = y (g - sum(g y)) / tau, 0 at
    masked entries) with respect to (g, y), for the incoming gradient h."""
    if math.isinf(tau):
        return xp.zeros_like(g), xp.zeros_like(y)
    mask = _bcast_mask(xp, mask, g.shape)
    hm, gm, ym = (_masked_fill(xp, v, mask, 0.0) for v in (h, g, y))
    hy = _sum_keep(xp, hm * ym, axes)
    dg = ym * (hm - hy) / tau
    dy = (hm * (gm - _sum_keep(xp, gm * ym, axes)) - gm * hy) / tau
    return _masked_fill(xp, dg, mask, 0.0), _masked_fill(xp, dy, mask, 0.0)


def log_softmax_backward_vjp(xp: Any, h: Any, g: Any, y: Any, axes: Any, tau: float, mask: Any) -> tuple[Any, Any]:
    """The vector-Jacobian product of log_softmax_backward (dx = (g - exp(y) sum(g)) / tau,
    0 at masked entries) with respect to (g, y), for the incoming gradient h."""
    if math.isinf(tau):
        return xp.zeros_like(g), xp.zeros_like(y)
    mask = _bcast_mask(xp, mask, g.shape)
    hm, gm = _masked_fill(xp, h, mask, 0.0), _masked_fill(xp, g, mask, 0.0)
    e = _masked_fill(xp, xp.exp(y), mask, 0.0)
    dg = (hm - _sum_keep(xp, hm * e, axes)) / tau
    dy = -(hm * e) * _sum_keep(xp, gm, axes) / tau
    return _masked_fill(xp, dg, mask, 0.0), _masked_fill(xp, dy, mask, 0.0)


def cross_entropy_target_vjp(xp: Any, logp: Any, axis: int, labels: Any, ignore_index: int, probs: Any, weight: Any,
                             eps: float, mask: Any, g: Any) -> tuple[Any, Any]:
    """The vector-Jacobian products of cross_entropy_rows' per-row losses with respect to
    the probability targets and the class weights, for the incoming per-row gradient g
    (logp's shape without axis), from logp = log_softmax(logits / tau) (-inf at masked
    classes). Returns (d_probs or None, d_weight or None)."""
    n = logp.shape[axis]
    shape_w = tuple(n if i == axis else 1 for i in range(logp.ndim))
    mask = _bcast_mask(xp, mask, logp.shape)
    zero = xp.zeros_like(logp)
    live = xp.ones_like(logp, dtype=xp.bool) if mask is None else mask
    K = xp.sum(xp.astype(live, logp.dtype), axis=axis, keepdims=True)
    eps_k = xp.where(K > 0, eps / xp.where(K > 0, K, 1.0), 0.0)
    neg = xp.where(live, -logp, zero)
    gk = xp.expand_dims(g, axis=axis)
    w = None if weight is None else xp.broadcast_to(xp.reshape(weight, shape_w), logp.shape)
    if probs is not None:
        q = xp.where(live, (1.0 - eps) * probs + eps_k, zero)
        d_probs = xp.where(live, (1.0 - eps) * (neg if w is None else w * neg), zero) * gk
        per_class = xp.where(q == 0.0, zero, q * neg) * gk
    else:
        d_probs = None
        valid = xp.expand_dims(labels != ignore_index, axis=axis)
        lab = xp.expand_dims(xp.where(labels != ignore_index, labels, xp.zeros_like(labels)), axis=axis)
        onehot = xp.reshape(xp.arange(n), shape_w) == lab
        per_class = xp.where(valid, (1.0 - eps) * xp.where(onehot, neg, zero) + eps_k * neg, zero) * gk
    if weight is None:
        return d_probs, None
    rest = tuple(i for i in range(logp.ndim) if i != axis)
    d_weight = xp.reshape(xp.sum(per_class, axis=rest), (n,)) if rest else per_class
    return d_probs, xp.astype(d_weight, weight.dtype)
