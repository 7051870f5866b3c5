/*
 * csm_grad.h - per-row kernels of the derivatives, generic over REAL (include after
 * csm_rows.h): the two backward passes and the fused softmax cross-entropy.
 *
 *   softmax_backward      dx = y * (g - sum(g * y)) / tau
 *   log_softmax_backward  dx = (g - exp(y) * sum(g)) / tau
 * Two passes each (the sum, then dx), so dx may overwrite g or y. Masked entries take no
 * part in the sums and get exactly 0. The element-wise step runs in double lanes for
 * float rows, so each dx is rounded once.
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
CSM_INLINE void CSM_SFX(csm_bwd_sum_step)(int kind, const REAL *g, const REAL *y, const uint8_t *mask, csm_intp cnt,
                                          CSM_SFX(csm_vacc) *acc)
{
    VR gv = CSM_SFX(csm_load)(g, cnt, 0);
    VR v = gv;
    if (kind == CSM_SOFTMAX_BWD) v = gv * CSM_SFX(csm_load)(y, cnt, 0);
    if (mask) v = VSEL(CSM_SFX(csm_load_mask)(mask, cnt), v, VSPLAT(0));
    CSM_SFX(csm_acc_add)(acc, v);
}

/* softmax: y (g - sum) / tau; log_softmax: (g - exp(y) sum) / tau; in double lanes for
   float rows, so each result is rounded once */
CSM_INLINE csm_vd CSM_SFX(csm_bwd_formula)(int kind, csm_vd g, csm_vd y_or_e, double sum, double inv_tau)
{
    if (kind == CSM_SOFTMAX_BWD) return y_or_e * (g - sum) * inv_tau;
    return (g - y_or_e * sum) * inv_tau;
}

CSM_INLINE void CSM_SFX(csm_bwd_out_step)(int kind, const REAL *g, const REAL *y, const uint8_t *mask, REAL *out,
                                          csm_intp cnt, double sum, double inv_tau)
{
    VR gv = CSM_SFX(csm_load)(g, cnt, 0), yv = CSM_SFX(csm_load)(y, cnt, 0);
    VR w = kind == CSM_SOFTMAX_BWD ? yv : CSM_SFX(csm_vexp)(yv);
#if REAL_IS_F32
    VR o = csm_d2f(CSM_SFX(csm_bwd_formula)(kind, csm_f2d_lo(gv), csm_f2d_lo(w), sum, inv_tau),
                   CSM_SFX(csm_bwd_formula)(kind, csm_f2d_hi(gv), csm_f2d_hi(w), sum, inv_tau));
#else
    VR o = CSM_SFX(csm_bwd_formula)(kind, gv, w, sum, inv_tau);
#endif
    if (mask) o = VSEL(CSM_SFX(csm_load_mask)(mask, cnt), o, VSPLAT(0));
    CSM_SFX(csm_store)(out, o, cnt);
}

static void CSM_SFX(csm_row_backward)(int kind, const REAL *g, const REAL *y, const uint8_t *mask, REAL *out,
                                      csm_intp n, const csm_temp *tp)
{
    CSM_SFX(csm_vacc) acc = {{0}, {0}};
    for (csm_intp i = 0; i < n; i += VL) {
        csm_intp cnt = n - i < VL ? n - i : VL;
        CSM_SFX(csm_bwd_sum_step)(kind, g + i, y + i, mask ? mask + i : NULL, cnt, &acc);
    }
    CSM_SFX(csm_vacc) zero = {{0}, {0}};
    csm_dd s = CSM_SFX(csm_acc_total2)(&acc, &zero);
    double sum = s.hi + s.lo;
    for (csm_intp i = 0; i < n; i += VL) {
        csm_intp cnt = n - i < VL ? n - i : VL;
        CSM_SFX(csm_bwd_out_step)(kind, g + i, y + i, mask ? mask + i : NULL, out + i, cnt, sum, tp->inv_tau);
    }
}

/* ---- cross-entropy ---- */
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
        for (csm_intp j = 0; j < n; j++) {
            if (mask && !mask[j]) {
                grad[j] = 0;
                continue;
            }
            double wj = csm_xent_weight(xp, j);
            double bj = q ? wj * ((1.0 - xp->eps) * (double)q[j] + eps_k)
                          : (j == label ? (1.0 - xp->eps) * wj : 0.0) + eps_k * wj;
            grad[j] = (REAL)((exp((double)logp[j]) * A - bj) * f);
        }
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
        for (csm_intp j = 0; j < n; j++) {
            if (mask && !mask[j]) {
                grad[j] = 0;
                continue;
            }
            double wj = csm_xent_weight(xp, j);
            double bj = q ? wj * ((1.0 - xp->eps) * (double)q[j] + eps_k)
                          : (j == label ? (1.0 - xp->eps) * wj : 0.0) + eps_k * wj;
            grad[j] = (REAL)(((double)grad[j] * cA - bj) * f);
        }
    }
    return loss;
}

/*
 * One row of a derivative kind, given each operand's pointer to the row's first element
 * (see csm_forward_row). Returns the row's loss (CSM_XENT).
 */
static double CSM_SFX(csm_other_row)(const csm_task *t, const csm_layout *L, char *const *p, const csm_temp *tp,
                                     int direct, CSM_SFX(csm_scratch) *sc)
{
    const csm_intp n = L->n;
    const uint8_t *mask = (const uint8_t *)p[CSM_MASK];
    if (mask && L->nred == 1 && L->rstride[CSM_MASK][0] == 0 && mask[0]) mask = NULL; /* all of the row takes part */
    if (!direct && mask) {
        CSM_SFX(csm_gather_mask)(sc->mask, (const char *)mask, L);
        mask = sc->mask;
    } else if (mask && L->rstride[CSM_MASK][0] == 0) {
        memset(sc->mask, 0, (size_t)n); /* all masked out: a row of zeros */
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
        CSM_SFX(csm_row_backward)(t->kind, x, y, mask, out, n, tp);
    }
    if (!direct && out) CSM_SFX(csm_scatter)(p[CSM_OUT], out, L, CSM_OUT, t->dtype);
    return v;
}
