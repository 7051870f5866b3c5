/*
 * csm_grad.h - per-row kernels of the derivatives, generic over REAL (include after
 * csm_rows.h): the two backward passes and the fused softmax cross-entropy.
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
CSM_INLINE void CSM_SFX(csm_bwd_sum_vec)(int kind, const REAL *g, const REAL *y, const uint8_t *mask, csm_intp cnt,
                                         const int full, const int has_mask, CSM_SFX(csm_vacc) *acc)
{
    VR v = CSM_SFX(csm_load)(g, full ? VL : cnt, 0);
    if (kind == CSM_SOFTMAX_BWD) v *= CSM_SFX(csm_load)(y, full ? VL : cnt, 0);
    if (has_mask) v = VSEL(CSM_SFX(csm_load_mask)(mask, full ? VL : cnt), v, VSPLAT(0));
    CSM_SFX(csm_acc_add_any)(acc, v);
}

/*
 * softmax: y (g - s) / tau; log_softmax: (g - exp(y) s) / tau. The sum s comes as a pair
 * s_hi + s_lo in REAL, so that g - s stays accurate where g and s nearly cancel: g - s_hi
 * is exact there (Sterbenz), and exp(y) s_hi leaves g through one fused rounding.
 */
CSM_INLINE VR CSM_SFX(csm_bwd_value)(int kind, VR gv, VR yv, VR s_hi, VR s_lo, VR inv_tau)
{
    if (kind == CSM_SOFTMAX_BWD) return yv * ((gv - s_hi) - s_lo) * inv_tau;
    VR e = CSM_SFX(csm_vexp)(yv);
    return (VFMA(-e, s_hi, gv) - e * s_lo) * inv_tau;
}

CSM_INLINE void CSM_SFX(csm_bwd_out_vec)(int kind, const REAL *g, const REAL *y, const uint8_t *mask, REAL *out,
                                         csm_intp cnt, const int full, const int nt, const int has_mask, VR s_hi,
                                         VR s_lo, VR inv_tau)
{
    VR gv = CSM_SFX(csm_load)(g, full ? VL : cnt, 0), yv = CSM_SFX(csm_load)(y, full ? VL : cnt, 0);
    VR o = CSM_SFX(csm_bwd_value)(kind, gv, yv, s_hi, s_lo, inv_tau);
    if (has_mask) o = VSEL(CSM_SFX(csm_load_mask)(mask, full ? VL : cnt), o, VSPLAT(0));
    CSM_SFX(csm_put)(out, o, cnt, full, nt);
}

/*
 * The row's sum as the REAL pair s_hi + s_lo that csm_bwd_value takes. An infinite or NaN
 * sum has no low part (the formula then gives -inf, +inf or NaN as plain arithmetic does).
 * Returns 0 where the pair cannot carry the sum: a float row whose sum lies beyond float's
 * range (each g finite, their sum not); such a row takes csm_bwd_in_double.
 */
static inline int CSM_SFX(csm_bwd_split)(csm_dd sum, REAL *s_hi, REAL *s_lo)
{
    const double sum_d = sum.hi + sum.lo;
    *s_hi = (REAL)sum_d;
    *s_lo = csm_finite(sum_d) ? (REAL)((sum.hi - (double)*s_hi) + sum.lo) : (REAL)0;
    return !csm_finite(sum_d) || csm_finite((double)*s_hi);
}

/* one dx in double, for the rare sums csm_bwd_split refuses */
static inline REAL CSM_SFX(csm_bwd_in_double)(int kind, REAL g, REAL y, double sum, double inv_tau)
{
    const double v = kind == CSM_SOFTMAX_BWD ? (double)y * ((double)g - sum) : (double)g - exp((double)y) * sum;
    return (REAL)(v * inv_tau);
}

/* pass 1: sum(g * y) (softmax) or sum(g) (log_softmax) over the unmasked entries */
CSM_INLINE csm_dd CSM_SFX(csm_bwd_sum_t)(int kind, const REAL *g, const REAL *y, const uint8_t *mask, csm_intp n,
                                         const int has_mask)
{
    CSM_SFX(csm_vacc) a0 = {{0}, {0}}, a1 = {{0}, {0}};
    csm_intp i = 0;
    for (; i + 2 * VL <= n; i += 2 * VL) {
        CSM_SFX(csm_bwd_sum_vec)(kind, g + i, y + i, has_mask ? mask + i : NULL, VL, 1, has_mask, &a0);
        CSM_SFX(csm_bwd_sum_vec)(kind, g + i + VL, y + i + VL, has_mask ? mask + i + VL : NULL, VL, 1, has_mask, &a1);
    }
    for (; i + VL <= n; i += VL)
        CSM_SFX(csm_bwd_sum_vec)(kind, g + i, y + i, has_mask ? mask + i : NULL, VL, 1, has_mask, &a0);
    if (i < n) CSM_SFX(csm_bwd_sum_vec)(kind, g + i, y + i, has_mask ? mask + i : NULL, n - i, 0, has_mask, &a1);
    return CSM_SFX(csm_acc_total2)(&a0, &a1);
}

static csm_dd CSM_SFX(csm_bwd_sum)(int kind, const REAL *g, const REAL *y, const uint8_t *mask, csm_intp n)
{
    return mask ? CSM_SFX(csm_bwd_sum_t)(kind, g, y, mask, n, 1) : CSM_SFX(csm_bwd_sum_t)(kind, g, y, NULL, n, 0);
}

/* pass 2: dx over [0, n), given the row's sum */
CSM_INLINE void CSM_SFX(csm_bwd_out_t)(int kind, const REAL *g, const REAL *y, const uint8_t *mask, REAL *out,
                                       csm_intp n, csm_dd sum, double inv_tau, int stream, const int has_mask)
{
    REAL hi, lo;
    if (!CSM_SFX(csm_bwd_split)(sum, &hi, &lo)) {
        const double sum_d = sum.hi + sum.lo;
        for (csm_intp i = 0; i < n; i++) /* element-wise, so in place is safe */
            out[i] = mask && !mask[i] ? (REAL)0 : CSM_SFX(csm_bwd_in_double)(kind, g[i], y[i], sum_d, inv_tau);
        return;
    }
    const VR s_hi = VSPLAT(hi), s_lo = VSPLAT(lo), inv = VSPLAT((REAL)inv_tau);
#define CSM_BWD_BODY(i, cnt, full, nt)                                                                                 \
    CSM_SFX(csm_bwd_out_vec)(kind, g + (i), y + (i), has_mask ? mask + (i) : NULL, out + (i), cnt, full, nt, has_mask, \
                             s_hi, s_lo, inv)
    CSM_FINISH_LOOP(n, out, stream, CSM_BWD_BODY);
#undef CSM_BWD_BODY
}

static void CSM_SFX(csm_bwd_out)(int kind, const REAL *g, const REAL *y, const uint8_t *mask, REAL *out, csm_intp n,
                                 csm_dd sum, const csm_temp *tp, int stream)
{
    if (mask)
        CSM_SFX(csm_bwd_out_t)(kind, g, y, mask, out, n, sum, tp->inv_tau, stream, 1);
    else
        CSM_SFX(csm_bwd_out_t)(kind, g, y, NULL, out, n, sum, tp->inv_tau, stream, 0);
}

static void CSM_SFX(csm_row_backward)(int kind, const REAL *g, const REAL *y, const uint8_t *mask, REAL *out,
                                      csm_intp n, const csm_temp *tp, int stream)
{
    CSM_SFX(csm_bwd_out)(kind, g, y, mask, out, n, CSM_SFX(csm_bwd_sum)(kind, g, y, mask, n), tp, stream);
}

/* ---- cross-entropy ---- */
/* B_j: the part of the gradient that is not p_j A (the weighted target) */
static inline double CSM_SFX(csm_xent_b)(const csm_xent_params *xp, const REAL *q, int64_t label, double eps_k,
                                         csm_intp j)
{
    const double wj = csm_xent_weight(xp, j);
    if (q) return wj * ((1.0 - xp->eps) * (double)q[j] + eps_k);
    return (j == label ? (1.0 - xp->eps) * wj : 0.0) + eps_k * wj;
}

/*
 * Loss and gradient from a row of log-probabilities already computed (the rows the
 * vector path does not take: NaN, infinite max, fully masked, tau = +inf). grad may be
 * NULL. Returns the loss.
 */
static double CSM_SFX(csm_xent_from_logp)(const REAL *logp, const uint8_t *mask, const REAL *q, int64_t label,
                                          REAL *grad, csm_intp n, const csm_xent_params *xp, const csm_temp *tp)
{
    csm_intp K = 0;
    double W = 0.0;
    for (csm_intp j = 0; j < n; j++)
        if (!mask || mask[j]) {
            K++;
            W += csm_xent_weight(xp, j);
        }
    double loss = 0.0, A = 0.0;
    const double eps_k = K ? xp->eps / (double)K : 0.0;
    for (csm_intp j = 0; j < n; j++) {
        if (mask && !mask[j]) continue;
        double wj = csm_xent_weight(xp, j), lp = (double)logp[j], tj;
        if (q) {
            tj = (1.0 - xp->eps) * (double)q[j] + eps_k;
            A += wj * tj;
        } else {
            tj = (j == label ? 1.0 - xp->eps : 0.0) + eps_k;
        }
        if (tj != 0.0) loss -= wj * tj * lp; /* 0 * log 0 = 0 */
    }
    if (!q) A = (1.0 - xp->eps) * csm_xent_weight(xp, label) + eps_k * W;
    if (grad) {
        const double f = xp->scale * tp->inv_tau;
        for (csm_intp j = 0; j < n; j++)
            grad[j] = mask && !mask[j] ? 0
                                       : (REAL)((exp((double)logp[j]) * A - CSM_SFX(csm_xent_b)(xp, q, label, eps_k, j)) * f);
    }
    return loss;
}

/*
 * One row of cross-entropy. x: logits; q: probability targets or NULL (then `label`);
 * grad: the gradient row or NULL; buf: a row of scratch (special rows only).
 */
static double CSM_SFX(csm_row_xent)(const REAL *x, const REAL *q, int64_t label, const uint8_t *mask, REAL *grad,
                                    REAL *buf, csm_intp n, const csm_xent_params *xp, const csm_temp *tp)
{
    if (!q && label == xp->ignore_index) {
        if (grad) memset(grad, 0, (size_t)n * sizeof(REAL));
        return 0.0;
    }
    CSM_SFX(csm_stats) st;
    CSM_SFX(csm_row_scan)(x, mask, n, &st);
    if (CSM_SFX(csm_row_is_special)(&st, tp)) {
        CSM_SFX(csm_special_row)(CSM_LOG_SOFTMAX, x, 1, mask, 1, buf, 1, n, &st, tp->tau_inf);
        return CSM_SFX(csm_xent_from_logp)(buf, mask, q, label, grad, n, xp, tp);
    }
    st.k = CSM_SFX(csm_row_find)(x, mask, n, st.m);
    st.s = CSM_SFX(csm_row_expsum)(x, mask, grad, n, &st, tp); /* grad holds exp(z_j - z_max) */
    const double L = csm_dd_log1p(st.s), c = csm_dd_inv_1p(st.s), m = (double)st.m;

    /* -logp_j = L + (m - x_j) / tau, both terms >= 0 */
#define CSM_NEG_LOGP(j) (L + (m - (double)x[j]) * tp->inv_tau)
    csm_intp K = 0;
    double W = 0.0, loss = 0.0, A = 0.0;
    const int need_sums = xp->eps != 0.0 || q != NULL;
    if (need_sums || grad) {
        for (csm_intp j = 0; j < n; j++)
            if (!mask || mask[j]) {
                K++;
                W += csm_xent_weight(xp, j);
            }
    }
    const double eps_k = K ? xp->eps / (double)K : 0.0;
    if (q) {
        for (csm_intp j = 0; j < n; j++) {
            if (mask && !mask[j]) continue;
            double wj = csm_xent_weight(xp, j), tj = (1.0 - xp->eps) * (double)q[j] + eps_k;
            A += wj * tj;
            if (tj != 0.0) loss += wj * tj * CSM_NEG_LOGP(j);
        }
    } else {
        const double wy = csm_xent_weight(xp, label);
        loss = (1.0 - xp->eps) * wy * CSM_NEG_LOGP(label);
        if (xp->eps != 0.0) {
            double sm = 0.0;
            for (csm_intp j = 0; j < n; j++)
                if (!mask || mask[j]) sm += csm_xent_weight(xp, j) * CSM_NEG_LOGP(j);
            loss += eps_k * sm;
        }
        A = (1.0 - xp->eps) * wy + eps_k * W;
    }
#undef CSM_NEG_LOGP
    if (grad) {
        const double f = xp->scale * tp->inv_tau, cA = c * A;
        for (csm_intp j = 0; j < n; j++)
            grad[j] = mask && !mask[j] ? 0
                                       : (REAL)(((double)grad[j] * cA - CSM_SFX(csm_xent_b)(xp, q, label, eps_k, j)) * f);
    }
    return loss;
}

/*
 * One row of a derivative kind, given each operand's pointer to the row's first element
 * (see csm_forward_row). Returns the row's loss (CSM_XENT).
 */
static double CSM_SFX(csm_other_row)(const csm_task *t, const csm_layout *L, char *const *p, const csm_temp *tp,
                                     int direct, int stream, CSM_SFX(csm_scratch) *sc)
{
    const csm_intp n = L->n;
    const uint8_t *mask = (const uint8_t *)p[CSM_MASK];
    if (mask && L->nred == 1 && L->rstride[CSM_MASK][0] == 0) {
        if (!mask[0]) { /* the whole row is masked out: a zero gradient, no loss */
            if (p[CSM_OUT]) {
                if (direct)
                    memset(p[CSM_OUT], 0, (size_t)n * sizeof(REAL));
                else
                    for (csm_intp j = 0; j < n; j++) sc->x[j] = 0;
                if (!direct) CSM_SFX(csm_scatter)(p[CSM_OUT], sc->x, L, CSM_OUT, t->dtype);
            }
            return 0.0;
        }
        mask = NULL; /* all of the row takes part */
    }
    if (!direct && mask) {
        CSM_SFX(csm_gather_mask)(sc->mask, (const char *)mask, L);
        mask = sc->mask;
    }
    const REAL *x = (const REAL *)p[CSM_X], *y = (const REAL *)p[CSM_Y];
    REAL *out = (REAL *)p[CSM_OUT];
    if (!direct) {
        CSM_SFX(csm_gather)(sc->x, p[CSM_X], L, CSM_X, t->dtype);
        x = sc->x;
        if (p[CSM_Y]) {
            CSM_SFX(csm_gather)(sc->y, p[CSM_Y], L, CSM_Y, t->dtype);
            y = sc->y;
        }
        if (out) out = t->kind == CSM_XENT ? sc->out : sc->x;
    }
    double v = 0.0;
    if (t->kind == CSM_XENT) {
        csm_xent_params xp = {t->class_weight, t->smoothing, t->ignore_index, t->grad_scale};
        int64_t label = 0;
        if (p[CSM_LABEL]) memcpy(&label, p[CSM_LABEL], sizeof label);
        v = CSM_SFX(csm_row_xent)(x, y, label, mask, out, sc->buf, n, &xp, tp);
    } else {
        CSM_SFX(csm_row_backward)(t->kind, x, y, mask, out, n, tp, direct && stream);
    }
    if (!direct && out) CSM_SFX(csm_scatter)(p[CSM_OUT], out, L, CSM_OUT, t->dtype);
    return v;
}
