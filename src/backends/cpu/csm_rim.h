/*
 * csm_rim.h - the rows at the rim of the temperature range (generic over REAL; see
 * csm_real.h): tau finite, 1/tau no normal number of the compute type (csm_temp.rim_*),
 * where the vector kernels' multiply by 1/tau would give 0 * inf = NaN at the max, or
 * -inf * 0 = NaN at a -inf entry, or lose digits to a subnormal factor. Here every
 * quotient is a division by tau, in double, so each value is the formula's for the input
 * as stored: ties at the max share the mass as tau -> 0, (x - m) / tau -> -inf elsewhere,
 * and everything -> uniform as tau -> inf. Plain scalar loops: these temperatures are
 * rare, and the rows keep the accuracy contract (x - m with its error term, the sum
 * compensated, the max left out of S').
 */

/* (x - m) / tau as q + e: x - m exactly (TwoSum), divided with its remainder */
static inline void csm_rim_diff(double x, double m, double tau, double *q, double *e)
{
    const csm_dd d = csm_two_sum(x, -m);
    if (!csm_finite(d.hi)) {
        /* x - m overflowed (or x is -inf): x / tau - m / tau has no cancellation */
        *q = x > -CSM_INF ? x / tau - m / tau : -CSM_INF;
        *e = 0.0;
        return;
    }
    *q = d.hi / tau;
    const double rem = csm_finite(*q) ? fma(-*q, tau, d.hi) : 0.0; /* d.hi - q tau, exactly */
    *e = (rem + d.lo) / tau;
    if (!csm_finite(*e)) *e = 0.0;
}

/* exp(q + e) for a small e */
static inline double csm_rim_exp(double q, double e) { return exp(q) * (1.0 + e); }

/* S' of one contiguous row (max m, finite): the sum over the unmasked entries but one
   copy of m; NaN if an unmasked entry is NaN */
static csm_dd csm_rim_sum(const REAL *x, const uint8_t *mask, csm_intp n, double m, const csm_temp *tp)
{
    csm_dd s = csm_dd_make(0.0, 0.0);
    int max_seen = 0;
    for (csm_intp j = 0; j < n; j++) {
        if (mask && !mask[j]) continue;
        const double v = (double)x[j];
        if (v != v) return csm_dd_make(CSM_NAN, 0.0);
        if (v == m && !max_seen) {
            max_seen = 1;
            continue;
        }
        double q, e;
        csm_rim_diff(v, m, tp->tau, &q, &e);
        s = csm_dd_add_d(s, csm_rim_exp(q, e));
    }
    return s;
}

/* softmax or log_softmax of one contiguous row (or part of one) whose max is m and whose
   S' is s, into out (which may be x); with p, the softmax into p too (cross-entropy's
   gradient wants both) */
static void csm_rim_finish(int kind, const REAL *x, const uint8_t *mask, REAL *out, REAL *p, csm_intp n, double m,
                           csm_dd s, const csm_temp *tp)
{
    const double c = csm_dd_inv_1p(s), L = csm_dd_log1p(s);
    for (csm_intp j = 0; j < n; j++) {
        double q = -CSM_INF, e = 0.0;
        if (!mask || mask[j]) csm_rim_diff((double)x[j], m, tp->tau, &q, &e);
        const double soft = csm_rim_exp(q, e) * c;
        if (p) p[j] = (REAL)soft;
        out[j] = kind == CSM_SOFTMAX ? (REAL)soft : (REAL)((q - L) + e);
    }
}

/* a backward pass's dx at an entry where its formula overflowed although the value need not
   (g and s, or exp(y) s, near the largest finite value): in halves, in double */
static double csm_bwd_wide(int kind, double g, double y, double s_hi, double s_lo, const csm_temp *tp)
{
    const double gh = g * 0.5, sh = s_hi * 0.5, sl = s_lo * 0.5;
    double half;
    if (kind == CSM_SOFTMAX_BWD) {
        half = y * ((gh - sh) - sl);
    } else {
        const double e = exp(y);
        half = (gh - e * sh) - e * sl;
    }
    return csm_div_tau(tp, half) * 2.0;
}

/* one dx in double, s = s_hi + s_lo the row's sum: softmax y (g - s) / tau, log_softmax
   (g - exp(y) s) / tau. An infinite s makes exp(y) s that infinity for every finite y,
   even where exp(y) underflows (0 only at y = -inf); where g - s overflowed although the
   value need not, in halves (csm_bwd_wide) */
static double csm_bwd_scalar(int kind, double g, double y, double s_hi, double s_lo, const csm_temp *tp)
{
    double v;
    if (kind == CSM_SOFTMAX_BWD) {
        v = y * ((g - s_hi) - s_lo);
    } else if (!csm_finite(s_hi) && y > -CSM_INF) {
        v = g - s_hi;
    } else {
        const double e = exp(y);
        v = fma(-e, s_hi, g) - e * s_lo;
    }
    if (!csm_finite(v) && csm_finite(g) && csm_finite(y) && csm_finite(s_hi)) return csm_bwd_wide(kind, g, y, s_hi, s_lo, tp);
    return csm_div_tau(tp, v);
}

/* one contiguous row of a backward kind at the rim: each dx by csm_bwd_scalar, whose
   division by tau keeps 0 at 0 and lets the rest overflow to +-inf as the exact quotient
   rounds */
static void csm_rim_backward(int kind, const REAL *g, const REAL *y, const uint8_t *mask, REAL *out, csm_intp n,
                             csm_dd sum, const csm_temp *tp)
{
    /* the sum again, every product and addition exact (the vector sum of a float row is a
       plain double, whose last bits a division by a tiny tau would bring to light) */
    csm_dd exact = csm_dd_make(0.0, 0.0);
    for (csm_intp i = 0; i < n; i++) {
        if (mask && !mask[i]) continue;
        exact = csm_dd_add(exact, kind == CSM_SOFTMAX_BWD ? csm_two_prod((double)g[i], (double)y[i])
                                                          : csm_dd_make((double)g[i], 0.0));
    }
    if (csm_finite(exact.hi)) sum = exact;
    const double s_hi = sum.hi + sum.lo, s_lo = csm_finite(s_hi) ? (sum.hi - s_hi) + sum.lo : 0.0;
    for (csm_intp i = 0; i < n; i++)
        out[i] = mask && !mask[i] ? (REAL)0 : (REAL)csm_bwd_scalar(kind, (double)g[i], (double)y[i], s_hi, s_lo, tp);
}
