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
 * (torch.nn.functional.cross_entropy). The gradient is then multiplied by the reduction
 * scale and by 1/tau. -logp_j is computed as log1p(S') + (m - x_j) / tau, a sum of two
 * non-negative terms, and p_j as exp((x_j - m) / tau) / (1 + S') from the same stats as
 * softmax, so both are as accurate as the forward ops.
 */

/* ---- backward passes ---- */
CSM_INLINE void csm_bwd_sum_vec(int kind, const REAL *g, const REAL *y, const uint8_t *mask, csm_intp cnt,
                                         const int full, const int has_mask, csm_vacc *acc)
{
    VR v = csm_load(g, full ? VL : cnt, 0);
    if (kind == CSM_SOFTMAX_BWD) v *= csm_load(y, full ? VL : cnt, 0);
    if (has_mask) v = VSEL(csm_load_mask(mask, full ? VL : cnt), v, VSPLAT(0)); /* 0 * inf would be NaN */
    csm_acc_add_any(acc, v);
}

/*
 * softmax: y (g - s) / tau; log_softmax: (g - exp(y) s) / tau. The sum s comes as a pair
 * s_hi + s_lo in REAL, so that g - s stays accurate where g and s nearly cancel: g - s_hi
 * is exact there (Sterbenz), and exp(y) s_hi leaves g through one fused rounding.
 */
CSM_INLINE VR csm_bwd_value(int kind, VR gv, VR yv, VR s_hi, VR s_lo, VR inv_tau)
{
    if (kind == CSM_SOFTMAX_BWD) return yv * ((gv - s_hi) - s_lo) * inv_tau;
    VR e = csm_vexp(yv);
    return (VFMA(-e, s_hi, gv) - e * s_lo) * inv_tau;
}

CSM_INLINE void csm_bwd_out_vec(int kind, const REAL *g, const REAL *y, const uint8_t *mask, REAL *out,
                                         csm_intp cnt, const int full, const int nt, const int has_mask, VR s_hi,
                                         VR s_lo, VR inv_tau)
{
    VR gv = csm_load(g, full ? VL : cnt, 0), yv = csm_load(y, full ? VL : cnt, 0);
    VR o = csm_bwd_value(kind, gv, yv, s_hi, s_lo, inv_tau);
    if (has_mask) o = VSEL(csm_load_mask(mask, full ? VL : cnt), o, VSPLAT(0));
    csm_put(out, o, cnt, full, nt);
}

/*
 * The row's sum as the REAL pair s_hi + s_lo that csm_bwd_value takes. An infinite or NaN
 * sum has no low part (the formula then gives -inf, +inf or NaN as plain arithmetic does).
 * Returns 0 where the pair cannot carry the sum: a float row whose sum lies beyond float's
 * range (each g finite, their sum not); such a row takes csm_bwd_in_double.
 */
static inline int csm_bwd_split(csm_dd sum, REAL *s_hi, REAL *s_lo)
{
    const double sum_d = sum.hi + sum.lo;
    *s_hi = (REAL)sum_d;
    *s_lo = csm_finite(sum_d) ? (REAL)((sum.hi - (double)*s_hi) + sum.lo) : (REAL)0;
    return !csm_finite(sum_d) || csm_finite((double)*s_hi);
}

/* one dx in double, for the rare sums csm_bwd_split refuses */
static inline REAL csm_bwd_in_double(int kind, REAL g, REAL y, double sum, double inv_tau)
{
    const double v = kind == CSM_SOFTMAX_BWD ? (double)y * ((double)g - sum) : (double)g - exp((double)y) * sum;
    return (REAL)(v * inv_tau);
}

/* pass 1: sum(g * y) (softmax) or sum(g) (log_softmax) over the unmasked entries */
CSM_INLINE csm_dd csm_bwd_sum_t(int kind, const REAL *g, const REAL *y, const uint8_t *mask, csm_intp n,
                                         const int has_mask)
{
    csm_vacc a0 = {{0}, {0}}, a1 = {{0}, {0}};
    csm_intp i = 0;
    for (; i + 2 * VL <= n; i += 2 * VL) {
        csm_bwd_sum_vec(kind, g + i, y + i, has_mask ? mask + i : NULL, VL, 1, has_mask, &a0);
        csm_bwd_sum_vec(kind, g + i + VL, y + i + VL, has_mask ? mask + i + VL : NULL, VL, 1, has_mask, &a1);
    }
    for (; i + VL <= n; i += VL)
        csm_bwd_sum_vec(kind, g + i, y + i, has_mask ? mask + i : NULL, VL, 1, has_mask, &a0);
    if (i < n) csm_bwd_sum_vec(kind, g + i, y + i, has_mask ? mask + i : NULL, n - i, 0, has_mask, &a1);
    return csm_acc_total2(&a0, &a1);
}

static csm_dd csm_bwd_sum(int kind, const REAL *g, const REAL *y, const uint8_t *mask, csm_intp n)
{
#define CSM_BWD_SUM(M) csm_bwd_sum_t(kind, g, y, (M) ? mask : NULL, n, M)
    return CSM_FLAGS1(mask != NULL, CSM_BWD_SUM);
#undef CSM_BWD_SUM
}

/* pass 2: dx over [0, n), given the row's sum */
CSM_INLINE void csm_bwd_out_t(int kind, const REAL *g, const REAL *y, const uint8_t *mask, REAL *out,
                                       csm_intp n, csm_dd sum, double inv_tau, int stream, const int has_mask)
{
    REAL hi, lo;
    if (!csm_bwd_split(sum, &hi, &lo)) {
        const double sum_d = sum.hi + sum.lo;
        for (csm_intp i = 0; i < n; i++) /* element-wise, so in place is safe */
            out[i] = mask && !mask[i] ? (REAL)0 : csm_bwd_in_double(kind, g[i], y[i], sum_d, inv_tau);
        return;
    }
    const VR s_hi = VSPLAT(hi), s_lo = VSPLAT(lo), inv = VSPLAT((REAL)inv_tau);
#define CSM_BWD_BODY(i, cnt, full, nt)                                                                                 \
    csm_bwd_out_vec(kind, g + (i), y + (i), has_mask ? mask + (i) : NULL, out + (i), cnt, full, nt, has_mask, \
                             s_hi, s_lo, inv)
    CSM_FINISH_LOOP(n, out, stream, CSM_BWD_BODY);
#undef CSM_BWD_BODY
}

static void csm_bwd_out(int kind, const REAL *g, const REAL *y, const uint8_t *mask, REAL *out, csm_intp n,
                                 csm_dd sum, const csm_temp *tp, int stream)
{
#define CSM_BWD_OUT(M) csm_bwd_out_t(kind, g, y, (M) ? mask : NULL, out, n, sum, tp->inv_tau, stream, M)
    CSM_FLAGS1(mask != NULL, CSM_BWD_OUT);
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
 * Where one row's -log p_j and p_j come from. Ordinary rows (logp NULL): -log p_j =
 * L + (m - x_j) / tau with L = log1p(S'), and p_j = e_j c with e_j = exp((x_j - m) / tau)
 * (stored by the expsum pass) and c = 1 / (1 + S'). Special rows (NaN, infinite max,
 * fully masked, tau = +inf): from their log_softmax, written out by csm_special_row.
 */
typedef struct {
    const REAL *logp;
    const REAL *x, *e;
    double m, L, c, inv_tau;
} csm_xent_src;

CSM_INLINE double csm_xent_neglogp(const csm_xent_src *s, csm_intp j)
{
    return s->logp ? -(double)s->logp[j] : s->L + (s->m - (double)s->x[j]) * s->inv_tau;
}

CSM_INLINE double csm_xent_p(const csm_xent_src *s, csm_intp j)
{
    return s->logp ? exp((double)s->logp[j]) : (double)s->e[j] * s->c;
}

/* the loss of one row, and its gradient into grad unless NULL (grad may be src->e) */
static double csm_xent_finish(const csm_xent_src *src, const uint8_t *mask, const REAL *q, int64_t label, REAL *grad,
                              csm_intp n, const csm_xent_params *xp, const csm_temp *tp)
{
    csm_intp K = 0;
    double W = 0.0, loss = 0.0, A = 0.0;
    if (xp->eps != 0.0 || q || grad)
        for (csm_intp j = 0; j < n; j++)
            if (!mask || mask[j]) {
                K++;
                W += csm_xent_weight(xp, j);
            }
    const double eps_k = K ? xp->eps / (double)K : 0.0;
    if (q) {
        for (csm_intp j = 0; j < n; j++) {
            if (mask && !mask[j]) continue;
            const double wj = csm_xent_weight(xp, j), tj = (1.0 - xp->eps) * (double)q[j] + eps_k;
            A += wj * tj;
            if (tj != 0.0) loss += wj * tj * csm_xent_neglogp(src, j); /* 0 * log 0 = 0 */
        }
    } else {
        const double wy = csm_xent_weight(xp, label);
        loss = (1.0 - xp->eps) * wy * csm_xent_neglogp(src, label);
        if (xp->eps != 0.0) {
            double sm = 0.0;
            for (csm_intp j = 0; j < n; j++)
                if (!mask || mask[j]) sm += csm_xent_weight(xp, j) * csm_xent_neglogp(src, j);
            loss += eps_k * sm;
        }
        A = (1.0 - xp->eps) * wy + eps_k * W;
    }
    if (grad) {
        const double f = xp->scale * tp->inv_tau;
        for (csm_intp j = 0; j < n; j++)
            grad[j] = mask && !mask[j] ? 0 : (REAL)((csm_xent_p(src, j) * A - csm_xent_b(xp, q, label, eps_k, j)) * f);
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
    if (csm_row_is_special(&st, tp)) {
        csm_special_row(CSM_LOG_SOFTMAX, x, 1, mask, 1, buf, 1, n, &st, tp->tau_inf);
        src.logp = buf;
    } else {
        st.k = csm_row_find(x, mask, n, st.m);
        st.s = csm_row_expsum(x, mask, grad, n, &st, tp); /* grad holds exp((x_j - m) / tau) */
        src.x = x;
        src.e = grad;
        src.m = (double)st.m;
        src.L = csm_dd_log1p(st.s);
        src.c = csm_dd_inv_1p(st.s);
        src.inv_tau = tp->inv_tau;
    }
    return csm_xent_finish(&src, mask, q, label, grad, n, xp, tp);
}
