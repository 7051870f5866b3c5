/*
 * csm_grad.h - the row kernels of the derivatives (generic over REAL; see csm_real.h):
 * the two backward passes and the fused softmax cross-entropy.
 *
 *   softmax_backward      dx = y * (g - sum(g * y)) / tau
 *   log_softmax_backward  dx = (g - exp(y) * sum(g)) / tau
 * Two passes each (the sum, then dx), so dx may overwrite g or y. Masked entries take no
 * part in the sums and get exactly 0. Sums accumulate in double (compensated for double
 * rows); the element-wise step keeps the sum as a pair so cancellation costs nothing.
 *
 * Cross-entropy of one row, with z = x / tau, logp = log_softmax(z), K unmasked classes,
 * class weights w (1 without), smoothing eps:
 *   index target y   loss = (1 - eps) w_y (-logp_y) + eps / K * sum_j w_j (-logp_j)
 *                    grad = p * A - B,  A = (1 - eps) w_y + eps / K * sum_j w_j,
 *                                       B_j = (1 - eps) w_y [j == y] + eps / K * w_j
 *   probabilities q  q' = (1 - eps) q + eps / K;  loss = sum_j w_j q'_j (-logp_j), with
 *                    0 * log 0 = 0;  grad = p * sum_l w_l q'_l - w q'
 * A term of weight 0 (w_j t_j = 0) is 0 even where -logp_j is infinite: (1 - eps) = 0,
 * a class weight 0 or a probability 0 drops its class from the loss
 * (torch.nn.functional.cross_entropy). The gradient is then multiplied by the reduction
 * scale and by 1/tau. -logp_j is computed as log1p(S') + (m - x_j) / tau, a sum of two
 * non-negative terms, and p_j as exp((x_j - m) / tau) / (1 + S') from the same stats as
 * softmax, so both are as accurate as the forward ops.
 */

/* ---- backward passes ---- */
/* one vector's terms into a row's sum. Plain compensated steps (csm_acc_add), without
   csm_acc_add_any's guard of the compensation against infinities: a term or running sum
   that is not finite leaves the row's sum not finite, NaN included, and such a sum is
   taken again by csm_bwd_sum_rescaled (a group's row goes to the row kernels first), so
   that the result is the guarded sum's, bit for bit, where every step stays finite and
   the rescaled one elsewhere -- as before. The guard was 3 of a double row's 7 vector
   operations per vector, which bound its sums pass where the vector unit is 128 bits
   wide (softmax_backward float64: 0.81-0.92 of the time, benchmarks/RESULTS.md, "Short
   groups on a Zen 1"). */
CSM_INLINE void csm_bwd_sum_vec(int kind, const REAL *g, const REAL *y, const uint8_t *mask, csm_intp cnt,
                                         const int full, const int has_mask, csm_vacc *acc)
{
    VR v = csm_load(g, full ? VL : cnt, 0);
    if (kind == CSM_SOFTMAX_BWD) v *= csm_load(y, full ? VL : cnt, 0);
    if (has_mask) v = VSEL(csm_load_mask(mask, full ? VL : cnt), v, VSPLAT(0)); /* 0 * inf would be NaN */
    csm_acc_add(acc, v);
}

/* two whole vectors' terms into the sum: for float rows the pair in float first, the
   second product fused onto the first (one rounding of 2^-24 relative to the pair, where
   each product rounds to float anyway), so that one widening serves both, as the forward
   sums' csm_acc_add2; double rows take each in turn */
CSM_INLINE void csm_bwd_sum_vec2(int kind, const REAL *g, const REAL *y, const uint8_t *mask, const int has_mask,
                                 csm_vacc *acc)
{
#if REAL_IS_F32
    if (!has_mask) {
        const VR a = csm_load(g, VL, 0), b = csm_load(g + VL, VL, 0);
        csm_acc_add(acc, kind == CSM_SOFTMAX_BWD ? VFMA(b, csm_load(y + VL, VL, 0), a * csm_load(y, VL, 0)) : a + b);
        return;
    }
#endif
    csm_bwd_sum_vec(kind, g, y, mask, VL, 1, has_mask, acc);
    csm_bwd_sum_vec(kind, g + VL, y + VL, has_mask ? mask + VL : NULL, VL, 1, has_mask, acc);
}

/*
 * softmax: y (g - s) / tau; log_softmax: (g - exp(y) s) / tau. The sum s comes as a pair
 * s_hi + s_lo in REAL, so that g - s stays accurate where g and s nearly cancel: g - s_hi
 * is exact there (Sterbenz), and exp(y) s_hi leaves g through one fused rounding. A value
 * that is not finite although its inputs are is computed again, wider (csm_bwd_wide).
 */
/* the lanes of o that are not finite although their g and y are, computed again wider (a
   cold path out of line, so that a loop over csm_bwd_value keeps o in a register rather
   than in memory for the lane-wise writes, and tests only o) */
static __attribute__((noinline, cold)) VR csm_bwd_redo(int kind, VR o, VR gv, VR yv, VR s_hi, VR s_lo,
                                                       const csm_temp *tp)
{
    const VI redo = ~(o - o == 0) & (gv - gv == 0) & (yv - yv == 0);
    for (int l = 0; l < VL; l++)
        if (redo[l]) o[l] = (REAL)csm_bwd_wide(kind, gv[l], yv[l], s_hi[l], s_lo[l], tp);
    return o;
}

CSM_INLINE VR csm_bwd_value(int kind, VR gv, VR yv, VR s_hi, VR s_lo, VR inv_tau, const csm_temp *tp)
{
    VR o;
    if (kind == CSM_SOFTMAX_BWD) {
        o = yv * ((gv - s_hi) - s_lo) * inv_tau;
    } else {
        VR e = csm_vexp(yv);
        o = (VFMA(-e, s_hi, gv) - e * s_lo) * inv_tau;
    }
    /* o - o: +0 (no bits set) where o is finite, NaN where not */
    if (__builtin_expect(VANY((VI)(o - o)), 0)) o = csm_bwd_redo(kind, o, gv, yv, s_hi, s_lo, tp);
    return o;
}

CSM_INLINE void csm_bwd_out_vec(int kind, const REAL *g, const REAL *y, const uint8_t *mask, REAL *out,
                                         csm_intp cnt, const int full, const int nt, const int has_mask, VR s_hi,
                                         VR s_lo, VR inv_tau, const csm_temp *tp)
{
    VR gv = csm_load(g, full ? VL : cnt, 0), yv = csm_load(y, full ? VL : cnt, 0);
    VR o = csm_bwd_value(kind, gv, yv, s_hi, s_lo, inv_tau, tp);
    if (has_mask) o = VSEL(csm_load_mask(mask, full ? VL : cnt), o, VSPLAT(0));
    csm_put(out, o, cnt, full, nt);
}

/*
 * The row's sum as the REAL pair s_hi + s_lo that csm_bwd_value takes. Returns 0 where
 * the pair cannot carry the sum and the row takes csm_bwd_in_double instead: an infinite
 * or NaN sum, or a float row whose sum lies beyond float's range (each g finite, their
 * sum not).
 */
static inline int csm_bwd_split(csm_dd sum, REAL *s_hi, REAL *s_lo)
{
    const double sum_d = sum.hi + sum.lo;
    *s_hi = (REAL)sum_d;
    *s_lo = csm_finite(sum_d) ? (REAL)((sum.hi - (double)*s_hi) + sum.lo) : (REAL)0;
    return csm_finite(sum_d) && csm_finite((double)*s_hi);
}

/* one dx in double, for the sums csm_bwd_split refuses (csm_rim.h's csm_bwd_scalar) */
static inline REAL csm_bwd_in_double(int kind, REAL g, REAL y, double sum, const csm_temp *tp)
{
    return (REAL)csm_bwd_scalar(kind, (double)g, (double)y, sum, 0.0, tp);
}

/* pass 1: sum(g * y) (softmax) or sum(g) (log_softmax) over the unmasked entries */
CSM_INLINE csm_dd csm_bwd_sum_t(int kind, const REAL *g, const REAL *y, const uint8_t *mask, csm_intp n,
                                         const int has_mask)
{
    csm_vacc a0 = {{0}, {0}}, a1 = {{0}, {0}};
    csm_intp i = 0;
    for (; i + 4 * VL <= n; i += 4 * VL) {
        csm_bwd_sum_vec2(kind, g + i, y + i, has_mask ? mask + i : NULL, has_mask, &a0);
        csm_bwd_sum_vec2(kind, g + i + 2 * VL, y + i + 2 * VL, has_mask ? mask + i + 2 * VL : NULL, has_mask, &a1);
    }
    for (; i + VL <= n; i += VL)
        csm_bwd_sum_vec(kind, g + i, y + i, has_mask ? mask + i : NULL, VL, 1, has_mask, &a0);
    if (i < n) csm_bwd_sum_vec(kind, g + i, y + i, has_mask ? mask + i : NULL, n - i, 0, has_mask, &a1);
    return csm_acc_total2(&a0, &a1);
}

/* the term of entry i of the backward sum (element strides): g y (softmax) or g
   (log_softmax); 0 if masked */
static inline double csm_bwd_term(int kind, const REAL *g, csm_intp sg, const REAL *y, csm_intp sy,
                                  const uint8_t *mask, csm_intp smk, csm_intp i)
{
    if (mask && !mask[i * smk]) return 0.0;
    return kind == CSM_SOFTMAX_BWD ? (double)(g[i * sg] * y[i * sy]) : (double)g[i * sg];
}

/*
 * The sum again where the vector sum came out infinite or NaN, as the exact sum of the
 * terms: a NaN term, or infinite terms of both signs, make it NaN; infinite terms of one
 * sign make it that infinity, whatever the finite terms' running sums did on the way
 * (two terms near the largest double and a -inf: -inf, not inf - inf). If every term is
 * finite, the running sums overflowed although the sum itself need not (double rows;
 * terms near the largest double of both signs) -- then the terms scaled down by a power
 * of two that no running sum of n of them can overflow, summed, and scaled back (an
 * infinity now is the sum's own).
 */
static csm_dd csm_bwd_sum_rescaled(int kind, const REAL *g, csm_intp sg, const REAL *y, csm_intp sy,
                                   const uint8_t *mask, csm_intp smk, csm_intp n)
{
    int k = 1, pos = 0, neg = 0;
    for (csm_intp i = 0; i < n; i++) {
        const double t = csm_bwd_term(kind, g, sg, y, sy, mask, smk, i);
        if (t != t) return csm_dd_make(CSM_NAN, 0.0);
        pos |= t == CSM_INF;
        neg |= t == -CSM_INF;
    }
    if (pos || neg) return csm_dd_make(pos && neg ? CSM_NAN : pos ? CSM_INF : -CSM_INF, 0.0);
    while (((csm_intp)1 << (k - 1)) < n && k < 62) k++;
    const double down = ldexp(1.0, -k);
    csm_dd t = csm_dd_make(0.0, 0.0);
    for (csm_intp i = 0; i < n; i++) t = csm_dd_add_d(t, csm_bwd_term(kind, g, sg, y, sy, mask, smk, i) * down);
    const double hi = ldexp(t.hi, k);
    return csm_dd_make(hi, csm_finite(hi) ? ldexp(t.lo, k) : 0.0);
}

static csm_dd csm_bwd_sum(int kind, const REAL *g, const REAL *y, const uint8_t *mask, csm_intp n)
{
#define CSM_BWD_SUM(M) csm_bwd_sum_t(kind, g, y, (M) ? mask : NULL, n, M)
    const csm_dd sum = CSM_FLAGS1(mask != NULL, CSM_BWD_SUM);
#undef CSM_BWD_SUM
    if (__builtin_expect(!csm_finite(sum.hi), 0)) return csm_bwd_sum_rescaled(kind, g, 1, y, 1, mask, 1, n);
    return sum;
}

/*
 * dx of one vector on pass 2's common path: for log_softmax, |y| within csm_exp_bound, so
 * exp(y) needs none of csm_vexp's clamps or range tests; *bad gets bits set in the lanes
 * that leave that path (o not finite, or log_softmax's y outside the bound -- -inf, NaN, a
 * tiny or large value), which csm_bwd_out_vec computes instead.
 */
CSM_INLINE VR csm_bwd_fast(const int kind, VR gv, VR yv, VR s_hi, VR s_lo, VR inv, const int scaled, VI *bad)
{
    VR o;
    if (kind == CSM_SOFTMAX_BWD) {
        o = yv * ((gv - s_hi) - s_lo);
        if (scaled) o *= inv; /* (tau = 1: the product by 1 left out) */
        *bad = (VI)(o - o);
    } else {
        const VI magnitude = (VI){0} + (VIS)(((uint64_t)1 << (8 * sizeof(REAL) - 1)) - 1); /* all bits but the sign */
        /* y is exact and within csm_exp_bound of 0: the anchored exp's reduction from y
           itself (csm_exp.h), exp(y) 2^0, without the general path's correction term */
        const VR e = csm_vexp_anchored(yv, VSPLAT(0));
        o = VFMA(-e, s_hi, gv) - e * s_lo;
        if (scaled) o *= inv;
        *bad = (VI)(o - o) | (((VI)yv & magnitude) > (VI)VSPLAT(csm_exp_bound)); /* NaN's bits exceed the bound's */
    }
    return o;
}

/*
 * Pass 2's hot loop: whole vectors from i on, while each is csm_bwd_fast's common case. It
 * returns where it stopped: past the last whole vector, or at one it left unwritten for
 * csm_bwd_out_vec. The loop holds no call, so its constants stay in registers.
 */
CSM_INLINE csm_intp csm_bwd_run(const int kind, const REAL *g, const REAL *y, const uint8_t *mask, REAL *out,
                                csm_intp i, csm_intp n, const int nt, const int has_mask, const int scaled, VR s_hi,
                                VR s_lo, VR inv)
{
    for (; i + VL <= n; i += VL) {
        VI bad;
        VR o = csm_bwd_fast(kind, csm_load(g + i, VL, 0), csm_load(y + i, VL, 0), s_hi, s_lo, inv, scaled, &bad);
        if (__builtin_expect(VANY(bad), 0)) break;
        if (has_mask) o = VSEL(csm_load_mask(mask + i, VL), o, VSPLAT(0));
        csm_put(out + i, o, VL, 1, nt);
    }
    return i;
}

/* dx from i to n, the row's sum as the pair hi + lo (csm_bwd_split): the whole vectors
   by csm_bwd_run, each vector it leaves by csm_bwd_out_vec, the tail as a partial vector */
CSM_INLINE void csm_bwd_vectors(const int kind, const REAL *g, const REAL *y, const uint8_t *mask, REAL *out,
                                csm_intp i, csm_intp n, const int nt, const int has_mask, const int scaled, VR s_hi,
                                VR s_lo, VR inv, const csm_temp *tp)
{
    for (;;) {
        i = csm_bwd_run(kind, g, y, mask, out, i, n, nt, has_mask, scaled, s_hi, s_lo, inv);
        if (i + VL > n) break;
        csm_bwd_out_vec(kind, g + i, y + i, has_mask ? mask + i : NULL, out + i, VL, 1, nt, has_mask, s_hi, s_lo, inv,
                        tp); /* the vector the loop left */
        i += VL;
    }
    if (i < n)
        csm_bwd_out_vec(kind, g + i, y + i, has_mask ? mask + i : NULL, out + i, n - i, 0, nt, has_mask, s_hi, s_lo, inv,
                        tp);
}

/* pass 2's vector loop: dx over [0, n), the row's sum as the pair hi + lo; the head up to
   an aligned address for streamed stores, the rest by csm_bwd_vectors */
CSM_INLINE void csm_bwd_out_pair_t(const int kind, const REAL *g, const REAL *y, const uint8_t *mask, REAL *out,
                                   csm_intp n, REAL hi, REAL lo, const csm_temp *tp, int stream, const int has_mask)
{
    const VR s_hi = VSPLAT(hi), s_lo = VSPLAT(lo), inv = VSPLAT((REAL)tp->inv_tau);
    csm_intp i = 0, head = stream ? csm_align_head(out) : -1;
    const int nt = head >= 0;
    if (head > n) head = n;
    if (head > 0) {
        csm_bwd_out_vec(kind, g, y, mask, out, head, 0, nt, has_mask, s_hi, s_lo, inv, tp);
        i = head;
    }
#define CSM_BWD_VECTORS(NT, S) csm_bwd_vectors(kind, g, y, mask, out, i, n, NT, has_mask, S, s_hi, s_lo, inv, tp)
    CSM_FLAGS2(nt, tp->scaled, CSM_BWD_VECTORS);
#undef CSM_BWD_VECTORS
}

/* pass 2: dx over [0, n), given the row's sum */
CSM_INLINE void csm_bwd_out_t(int kind, const REAL *g, const REAL *y, const uint8_t *mask, REAL *out,
                                       csm_intp n, csm_dd sum, const csm_temp *tp, int stream, const int has_mask)
{
    REAL hi, lo;
    if (CSM_TAU_RIM(tp)) { /* element-wise, so in place is safe */
        csm_rim_backward(kind, g, y, mask, out, n, sum, tp);
        return;
    }
    if (!csm_bwd_split(sum, &hi, &lo)) {
        const double sum_d = sum.hi + sum.lo;
        for (csm_intp i = 0; i < n; i++)
            out[i] = mask && !mask[i] ? (REAL)0 : csm_bwd_in_double(kind, g[i], y[i], sum_d, tp);
        return;
    }
    csm_bwd_out_pair_t(kind, g, y, mask, out, n, hi, lo, tp, stream, has_mask);
}

static void csm_bwd_out(int kind, const REAL *g, const REAL *y, const uint8_t *mask, REAL *out, csm_intp n,
                                 csm_dd sum, const csm_temp *tp, int stream)
{
#define CSM_BWD_OUT(SM, M)                                                                                             \
    csm_bwd_out_t((SM) ? CSM_SOFTMAX_BWD : CSM_LOG_SOFTMAX_BWD, g, y, (M) ? mask : NULL, out, n, sum, tp, stream, M)
    CSM_FLAGS2(kind == CSM_SOFTMAX_BWD, mask != NULL, CSM_BWD_OUT);
#undef CSM_BWD_OUT
}

static void csm_row_backward(int kind, const REAL *g, const REAL *y, const uint8_t *mask, REAL *out,
                                      csm_intp n, const csm_temp *tp, int stream)
{
    csm_bwd_out(kind, g, y, mask, out, n, csm_bwd_sum(kind, g, y, mask, n), tp, stream);
}

/* ---- cross-entropy ---- */
/* B_j: the part of the gradient that is not p_j A (the weighted target) */
static inline double csm_xent_b(const csm_xent_params *xp, const REAL *q, int64_t label, double eps_k, csm_intp j)
{
    const double wj = csm_xent_weight(xp, j);
    if (q) return wj * ((1.0 - xp->eps) * (double)q[j] + eps_k);
    return (j == label ? (1.0 - xp->eps) * wj : 0.0) + eps_k * wj;
}

/*
 * Where one row's -log p_j and p_j come from (j unmasked):
 *   ordinary rows   -log p_j = L + (m - x_j) / tau, L = log1p(S'); p_j = e_j c with
 *                   e_j = exp((x_j - m) / tau) 2^CSM_ESCALE (stored by the expsum pass),
 *                   c = 2^-CSM_ESCALE / (1 + S')
 *   rim rows        the same in double by csm_rim.h's division by tau (csm_temp.rim_*)
 *   special rows    (NaN, infinite max, fully masked, tau = +inf) from their log_softmax as
 *                   csm_special_row writes it: p_j = exp(logp_j)
 */
enum { CSM_XENT_ORDINARY, CSM_XENT_RIM, CSM_XENT_LOGP };

typedef struct {
    int from;
    const REAL *x, *e, *logp;
    double m, L, c, tau, inv_tau;
} csm_xent_src;

CSM_INLINE double csm_xent_neglogp(const csm_xent_src *s, csm_intp j)
{
    if (s->from == CSM_XENT_LOGP) return -(double)s->logp[j];
    if (s->from == CSM_XENT_ORDINARY) {
        const double x = (double)s->x[j], d = s->m - x;
        /* m - x overflowed although (m - x) / tau may not: no cancellation in m/tau - x/tau */
        return s->L + (csm_finite(d) ? d * s->inv_tau : s->m * s->inv_tau - x * s->inv_tau);
    }
    double q, e;
    csm_rim_diff((double)s->x[j], s->m, s->tau, &q, &e);
    return s->L - (q + e);
}

CSM_INLINE double csm_xent_p(const csm_xent_src *s, csm_intp j)
{
    if (s->from == CSM_XENT_LOGP) return exp((double)s->logp[j]);
    if (s->from == CSM_XENT_ORDINARY) return (double)s->e[j] * s->c;
    double q, e;
    csm_rim_diff((double)s->x[j], s->m, s->tau, &q, &e);
    return csm_rim_exp(q, e) * s->c;
}

/*
 * The gradient of an ordinary row with an index target and no weights, smoothing or mask,
 * from the exps that grad holds (scaled by 2^CSM_ESCALE): p_j scale / tau, vectorised,
 * each rounded once from double; at the label p_y - 1, which is -S' / (1 + S') where the
 * label holds the max (e_y = 2^CSM_ESCALE: no cancellation). scale_tau = scale / tau; a
 * factor outside double's normal range takes the general loop instead.
 */
static inline double csm_xent_grad_plain_ok(csm_dd s, double scale_tau)
{
    const double c = csm_dd_inv_1p(s) * CSM_EUNSCALE * scale_tau;
    return csm_finite(c) && fabs(c) >= 0x1p-1022 ? c : 0.0;
}

static void csm_xent_grad_plain(REAL *grad, csm_intp n, int64_t label, csm_dd s, double scale_tau)
{
    const double c = csm_dd_inv_1p(s), cu = c * CSM_EUNSCALE, cs = cu * scale_tau;
    const REAL ey = grad[label];
    const double py1 = ey == (REAL)(1.0 / CSM_EUNSCALE) ? -(s.hi + s.lo) * c : (double)ey * cu - 1.0;
    csm_intp i = 0;
    for (; i + VL <= n; i += VL) csm_store(grad + i, csm_mul_wide(csm_load(grad + i, VL, 0), cs), VL);
    if (i < n) csm_store(grad + i, csm_mul_wide(csm_load(grad + i, n - i, 0), cs), n - i);
    grad[label] = (REAL)(py1 * scale_tau);
}

/* the loss of one row, and its gradient into grad unless NULL (grad may be src->e). The
   loss's sums over the classes, and A, are compensated (csm_dd_sum2_add), as the forward
   sums are: a plain sum over 1e5 classes loses ~80 ulp of a float64 loss. */
static double csm_xent_finish(const csm_xent_src *srcp, const uint8_t *mask, const REAL *q, int64_t label, REAL *grad,
                              csm_intp n, const csm_xent_params *xp, const csm_temp *tp)
{
    /* copies, which the stores into grad cannot alias */
    const csm_xent_src sv = *srcp, *src = &sv;
    const csm_temp tv = *tp;
    tp = &tv;
    csm_intp K = 0;
    double W = 0.0; /* the label path's A only: a gradient's factor, not the loss */
    csm_dd lossd = csm_dd_make(0.0, 0.0), Ad = csm_dd_make(0.0, 0.0);
    if (!mask) {
        K = n;
        if (xp->w && (xp->eps != 0.0 || q || grad))
            for (csm_intp j = 0; j < n; j++) W += xp->w[j];
        else
            W = (double)n;
    } else if (xp->eps != 0.0 || q || grad) {
        for (csm_intp j = 0; j < n; j++)
            if (mask[j]) {
                K++;
                W += csm_xent_weight(xp, j);
            }
    }
    const double eps_k = K ? xp->eps / (double)K : 0.0;
    double loss, A;
    if (q) {
        for (csm_intp j = 0; j < n; j++) {
            if (mask && !mask[j]) continue;
            const double wj = csm_xent_weight(xp, j), tj = (1.0 - xp->eps) * (double)q[j] + eps_k;
            Ad = csm_dd_sum2_add(Ad, wj * tj);
            if (tj != 0.0 && wj != 0.0) /* weight 0: no term (0 log 0 = 0) */
                lossd = csm_dd_sum2_add(lossd, wj * tj * csm_xent_neglogp(src, j));
        }
        loss = csm_dd_sum2_total(lossd);
        A = csm_dd_sum2_total(Ad);
    } else {
        const double wy = csm_xent_weight(xp, label);
        loss = xp->eps != 1.0 && wy != 0.0 ? (1.0 - xp->eps) * wy * csm_xent_neglogp(src, label) : 0.0; /* weight 0: no term */
        if (xp->eps != 0.0) {
            /* each term scaled by eps / K before it is summed: the sum of the unscaled
               terms can overflow where the loss does not (an entry near the largest
               double: -logp_j ~ 1.8e308 for several classes) */
            csm_dd sm = csm_dd_make(0.0, 0.0);
            for (csm_intp j = 0; j < n; j++)
                if ((!mask || mask[j]) && csm_xent_weight(xp, j) != 0.0)
                    sm = csm_dd_sum2_add(sm, eps_k * csm_xent_weight(xp, j) * csm_xent_neglogp(src, j));
            loss += csm_dd_sum2_total(sm);
        }
        A = (1.0 - xp->eps) * wy + eps_k * W;
    }
    if (grad) {
        for (csm_intp j = 0; j < n; j++)
            grad[j] = mask && !mask[j]
                          ? 0
                          : (REAL)csm_div_tau(tp, (csm_xent_p(src, j) * A - csm_xent_b(xp, q, label, eps_k, j)) * xp->scale);
    }
    return loss;
}

/*
 * One row of cross-entropy. x: logits; q: probability targets or NULL (then `label`);
 * grad: the gradient row or NULL; buf: a row of scratch (special rows only).
 */
static double csm_row_xent(const REAL *x, const REAL *q, int64_t label, const uint8_t *mask, REAL *grad, REAL *buf,
                           csm_intp n, const csm_xent_params *xp, const csm_temp *tp)
{
    if (!q && label == xp->ignore_index) {
        if (grad) memset(grad, 0, (size_t)n * sizeof(REAL));
        return 0.0;
    }
    csm_stats st;
    csm_row_scan(x, mask, n, &st);
    csm_xent_src src = {0};
    double unscale = CSM_EUNSCALE; /* what the stored exps are unscaled by (csm_row_expsum) */
    src.x = x;
    src.m = (double)st.m;
    src.tau = tp->tau;
    src.inv_tau = tp->inv_tau;
    const int special = csm_row_is_special(&st, tp), rim = !special && CSM_TAU_RIM(tp);
    if (rim) st.s = csm_rim_sum(x, mask, n, src.m, tp);
    if (special || st.s.hi != st.s.hi) { /* the latter: a NaN at the rim */
        csm_special_row(CSM_LOG_SOFTMAX, x, 1, mask, 1, buf, 1, n, &st, tp->tau_inf);
        src.from = CSM_XENT_LOGP;
        src.logp = buf;
    } else if (rim) {
        src.from = CSM_XENT_RIM;
    } else {
        st.k = csm_row_find(x, mask, n, st.m);
        /* grad holds exp((x_j - m) / tau) 2^CSM_ESCALE (the gradient's finishers take that
           scale, so the row may take the anchored exp only where there is no gradient) */
        st.s = csm_row_expsum(x, mask, grad, n, &st, tp, grad ? NULL : &unscale);
        src.from = CSM_XENT_ORDINARY;
        src.e = grad;
    }
    src.L = csm_dd_log1p(st.s);
    src.c = csm_dd_inv_1p(st.s) * (src.from == CSM_XENT_ORDINARY ? unscale : 1.0); /* e is scaled */
    if (src.from == CSM_XENT_ORDINARY && !q && !mask && !xp->w && xp->eps == 0.0 &&
        (!grad || csm_xent_grad_plain_ok(st.s, xp->scale * tp->inv_tau) != 0.0)) {
        if (grad) csm_xent_grad_plain(grad, n, label, st.s, xp->scale * tp->inv_tau);
        return csm_xent_neglogp(&src, label);
    }
    return csm_xent_finish(&src, mask, q, label, grad, n, xp, tp);
}
