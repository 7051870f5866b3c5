/*
 * csm_rows.h - the in-cache row kernels of the forward ops (generic over REAL; see
 * csm_real.h).
 *
 * One contiguous row at a time, kept in cache:
 *   scan     max m over the unmasked entries (and whether any entry is unmasked); then
 *            k, the first index of m
 *   expsum   S' = sum_{j != k} exp((x_j - m) / tau), optionally writing every exp into the
 *            output (softmax); sums accumulate in double (float32 rows) or in Kahan-
 *            compensated double (float64 rows), of exps scaled by 2^CSM_ESCALE so that
 *            terms far below the max keep their digits (csm_exp.h); the stored exps keep
 *            the scale, which the finishing factor takes back
 *   finish   softmax  out_j = e_j / (1 + S')
 *            log_softmax  out_j = (x_j - m) / tau - log1p(S')   (exactly -log1p(S') at k)
 *            logsumexp  m + log1p(S')
 * Leaving the max entry out of S' is what keeps log1p(S') accurate when S' is tiny
 * (logsumexp([0, -40]) = 4.248e-18 rather than 0). The vector holding k is the only one
 * that pays for leaving it out: the loops are split around it.
 *
 * x - m is computed with its rounding error (two_diff), and the error is folded into
 * exp's reduced argument; with tau != 1 the quotient carries its remainder likewise.
 * Rows whose entries all lie within exp's normal range below the max (the scan keeps the
 * min too) take an exp without clamps or range checks.
 *
 * Every loop is one always-inline body instantiated for its constant flags (mask or not,
 * tau or not, store or not; CSM_FLAGS*), so the hot loops carry no tests. A NaN needs no
 * scan of its own: it makes S' NaN. Rows whose max is not finite, whose S' is NaN, that
 * are fully masked, or that use tau = +inf go to csm_special_row, a plain scalar loop over
 * a strided row that writes the values of the semantics table (common/csm_special.h);
 * rows at the rim of the temperature range go to csm_rim.h. Tails shorter than a vector
 * run through the same vector code as partial vectors.
 */

typedef struct {
    REAL m;      /* max over the unmasked entries; -inf if there are none */
    REAL mn;     /* min over the entries when there is no mask (NaN left out); else -inf */
    csm_intp k;  /* first index of m (when m is finite) */
    int any;     /* an unmasked entry */
    csm_dd s;    /* S' relative to m, the entry at k left out */
} csm_stats;

/* ---- scan: max (NaN left out by the comparison) and, with a mask, whether any lane is on ---- */
CSM_INLINE void csm_scan_t(const REAL *x, const uint8_t *mask, csm_intp n, const int has_mask, REAL *m_out,
                                    REAL *mn_out, int *any_out)
{
    VR m0 = VSPLAT(-R_INF), m1 = m0, m2 = m0, m3 = m0;
    VR lo = VSPLAT(R_INF);
    VI anyv = {0};
    csm_intp i = 0;
#define CSM_SCAN_STEP(acc, off)                                                                                        \
    do {                                                                                                               \
        VR v_ = csm_load(x + i + (off), VL, 0);                                                               \
        if (has_mask) {                                                                                                \
            VI mk_ = VMASK(mask + i + (off));                                                                          \
            anyv |= mk_;                                                                                               \
            v_ = VSEL(mk_, v_, VSPLAT(-R_INF));                                                                        \
        }                                                                                                              \
        acc = VMAX(v_, acc); /* a NaN in v_ leaves acc as it was */                                                    \
        if (!has_mask) lo = VMIN(v_, lo);                                                                              \
    } while (0)
    for (; i + 4 * VL <= n; i += 4 * VL) {
        CSM_SCAN_STEP(m0, 0);
        CSM_SCAN_STEP(m1, VL);
        CSM_SCAN_STEP(m2, 2 * VL);
        CSM_SCAN_STEP(m3, 3 * VL);
    }
    for (; i + VL <= n; i += VL) CSM_SCAN_STEP(m0, 0);
#undef CSM_SCAN_STEP
    if (i < n) {
        VR v = csm_load(x + i, n - i, -R_INF);
        if (has_mask) {
            VI mk = csm_load_mask(mask + i, n - i);
            anyv |= mk;
            v = VSEL(mk, v, VSPLAT(-R_INF));
        }
        m1 = VMAX(v, m1);
        if (!has_mask) lo = VMIN(csm_load(x + i, n - i, R_INF), lo);
    }
    m0 = VMAX(VMAX(m0, m1), VMAX(m2, m3));
    REAL m = -R_INF, mn = R_INF;
    for (int l = 0; l < VL; l++) {
        m = m0[l] > m ? m0[l] : m;
        mn = lo[l] < mn ? lo[l] : mn;
    }
    *m_out = m;
    *mn_out = has_mask ? -R_INF : mn;
    *any_out = has_mask ? VANY(anyv) : n > 0;
}

static void csm_row_scan(const REAL *x, const uint8_t *mask, csm_intp n, csm_stats *st)
{
#define CSM_SCAN(M) csm_scan_t(x, (M) ? mask : NULL, n, M, &st->m, &st->mn, &st->any)
    CSM_FLAGS1(mask != NULL, CSM_SCAN);
#undef CSM_SCAN
    st->k = -1;
    st->s = csm_dd_make(0.0, 0.0);
}

/* first index holding m (unmasked); m is finite and present */
static csm_intp csm_row_find(const REAL *x, const uint8_t *mask, csm_intp n, REAL m)
{
    for (csm_intp i = 0; i < n; i += VL) {
        csm_intp cnt = n - i < VL ? n - i : VL;
        VR v = csm_load_masked(x + i, mask ? mask + i : NULL, cnt);
        if (VANY(v == VSPLAT(m)))
            for (csm_intp j = i; j < i + cnt; j++)
                if (x[j] == m && (!mask || mask[j])) return j;
    }
    return -1; /* not reached for a finite m taken from the row */
}

/* ---- expsum: S' and, when storing, every exp written to out ---- */
/* one vector at i (cnt lanes; full: cnt == VL); excl: the lane left out of S', or -1;
   returns the terms of the sum */
CSM_INLINE VR csm_expsum_vec(const REAL *x, const uint8_t *mask, REAL *out, csm_intp i, csm_intp cnt,
                                      const int full, const int has_mask, const int scaled, const int store,
                                      const int range, VR ref, VR kc, double tau, double inv_tau, csm_intp excl)
{
    VR e;
    if (range == CSM_EXP_ANCHORED) {
        /* a partial vector's padding is the max, a tame entry, taken out below */
        e = csm_vexp_anchored(csm_load(x + i, full ? VL : cnt, ref[0]), kc);
        if (!full) e = VSEL(csm_iota() < (VIS)cnt, e, VSPLAT(0));
    } else {
        VR v = csm_load_masked(x + i, has_mask ? mask + i : NULL, full ? VL : cnt);
        VR dh, dl;
        csm_vdiff(v, ref, tau, inv_tau, scaled, &dh, &dl);
        /* a partial vector's padding is -inf: it needs the checked exp */
        e = csm_vexp_sc(dh, dl, full ? range : CSM_EXP_NONPOS, CSM_ESCALE);
    }
    if (store) csm_store(out + i, e, full ? VL : cnt);
    if (excl >= 0) e = VSEL(csm_iota() == (VIS)excl, VSPLAT(0), e);
    return e;
}

/* S' over the row: two vectors at a time (csm_acc_add2) into two accumulators in turn,
   the vector holding the max's lane k on its own */
CSM_INLINE csm_dd csm_expsum_t(const REAL *x, const uint8_t *mask, REAL *out, csm_intp n, REAL m, REAL kcs,
                                        csm_intp k, double tau, double inv_tau, const int has_mask, const int scaled,
                                        const int store, const int range)
{
    csm_vacc a0 = {{0}, {0}}, a1 = {{0}, {0}};
    const VR ref = VSPLAT(m), kc = VSPLAT(kcs);
    const csm_intp nfull = n - n % VL;
    const csm_intp kb = k >= 0 ? k - k % VL : n; /* the vector holding k; none when k < 0 */
#define CSM_EXPSUM(i, cnt, full, excl)                                                                                  \
    csm_expsum_vec(x, mask, out, i, cnt, full, has_mask, scaled, store, range, ref, kc, tau, inv_tau, excl)
#define CSM_EXPSUM_PAIRS(stop)                                                                                         \
    do {                                                                                                               \
        for (; i + 4 * VL <= (stop); i += 4 * VL) {                                                                    \
            csm_acc_add2(&a0, CSM_EXPSUM(i, VL, 1, -1), CSM_EXPSUM(i + VL, VL, 1, -1));                                \
            csm_acc_add2(&a1, CSM_EXPSUM(i + 2 * VL, VL, 1, -1), CSM_EXPSUM(i + 3 * VL, VL, 1, -1));                   \
        }                                                                                                              \
        for (; i < (stop); i += VL) csm_acc_add(&a0, CSM_EXPSUM(i, VL, 1, -1));                                        \
    } while (0)
    csm_intp i = 0;
    CSM_EXPSUM_PAIRS(kb < nfull ? kb : nfull);
    if (kb < nfull) {
        csm_acc_add(&a1, CSM_EXPSUM(kb, VL, 1, k - kb));
        i = kb + VL;
    }
    CSM_EXPSUM_PAIRS(nfull);
    if (nfull < n) csm_acc_add(&a1, CSM_EXPSUM(nfull, n - nfull, 0, k >= nfull && kb < n ? k - nfull : -1));
#undef CSM_EXPSUM
#undef CSM_EXPSUM_PAIRS
    return csm_acc_total2(&a0, &a1);
}

/* the exp variant a row allows: anchored (float rows: no mask, tau = 1, entries within
   CSM_ANCHOR_MAX of 0), else bounded, when the scan saw no mask and min and max within the
   exp's normal range of each other, else the checked one */
static int csm_exp_range(const csm_stats *st, const csm_temp *tp, int has_mask)
{
    if (has_mask) return CSM_EXP_NONPOS;
    double spread = ((double)st->mn - (double)st->m) * tp->inv_tau;
    if (!(spread >= -csm_exp_bound)) return CSM_EXP_NONPOS; /* also for mn = -inf, NaN */
    if (CSM_ANCHOR && !tp->scaled && fabs((double)st->mn) <= CSM_ANCHOR_MAX && fabs((double)st->m) <= CSM_ANCHOR_MAX)
        return CSM_EXP_ANCHORED;
    return CSM_EXP_BOUNDED;
}

/* S' of a scanned row (k found). The exps stored into out (when given) are
   exp((x_j - m) / tau) / *unscale: *unscale is 2^-CSM_ESCALE, or where the row takes the
   anchored exp (csm_exp.h), 2^-CSM_ESCALE e^-r_m; with unscale NULL, the row may not take
   it (the caller needs the plain scale). */
static csm_dd csm_row_expsum(const REAL *x, const uint8_t *mask, REAL *out, csm_intp n, const csm_stats *st,
                             const csm_temp *tp, double *unscale)
{
    const double tau = tp->tau, inv = tp->inv_tau;
    const REAL m = st->m;
    const csm_intp k = st->k;
#define CSM_EXPSUM_T(M, S, O, RANGE)                                                                                   \
    csm_expsum_t(x, (M) ? mask : NULL, (O) ? out : NULL, n, m, a.kc, k, tau, inv, M, S, O, RANGE)
#define CSM_EXPSUM_BOUNDED(S, O) CSM_EXPSUM_T(0, S, O, CSM_EXP_BOUNDED)
#define CSM_EXPSUM_ANCHORED(O) CSM_EXPSUM_T(0, 0, O, CSM_EXP_ANCHORED)
#define CSM_EXPSUM_NONPOS(M, S, O) CSM_EXPSUM_T(M, S, O, CSM_EXP_NONPOS)
    csm_dd s;
    csm_anchor a = {0, CSM_EUNSCALE};
    int range = csm_exp_range(st, tp, mask != NULL);
    if (range == CSM_EXP_ANCHORED && !unscale) range = CSM_EXP_BOUNDED;
    if (range == CSM_EXP_ANCHORED) {
        a = csm_anchor_of(m);
        s = CSM_FLAGS1(out != NULL, CSM_EXPSUM_ANCHORED);
    } else if (range == CSM_EXP_BOUNDED) {
        s = CSM_FLAGS2(tp->scaled, out != NULL, CSM_EXPSUM_BOUNDED);
    } else {
        s = CSM_FLAGS3(mask != NULL, tp->scaled, out != NULL, CSM_EXPSUM_NONPOS);
    }
    if (unscale) *unscale = a.u;
    return csm_dd_make(s.hi * a.u, s.lo * a.u);
#undef CSM_EXPSUM_T
#undef CSM_EXPSUM_BOUNDED
#undef CSM_EXPSUM_ANCHORED
#undef CSM_EXPSUM_NONPOS
}

/* e * c, rounded once: with FMA, the factor split as chi + clo in REAL and the product
   fused (the factor's own rounding would add half an ulp to every element); without,
   through double (csm_mul_wide) -- two roundings there could take the max's e / S above
   1 */
CSM_INLINE VR csm_scale_pair(VR e, VR chi, VR clo, double c)
{
#if CSM_HAVE_FMA
    (void)c;
    return VFMA(e, chi, e * clo);
#else
    (void)chi;
    (void)clo;
    return csm_mul_wide(e, c);
#endif
}

/* softmax from stored exps: out = e * c (e may be out itself) */
static void csm_row_scale(const REAL *e, REAL *out, csm_intp n, double c, int stream)
{
    const VR chi = VSPLAT((REAL)c), clo = VSPLAT((REAL)(c - (double)(REAL)c));
#define CSM_SCALE_BODY(i, cnt, full, nt)                                                                               \
    csm_put(out + (i), csm_scale_pair(csm_load(e + (i), (full) ? VL : (cnt), 0), chi, clo, c), cnt, full, nt)
    CSM_FINISH_LOOP(n, out, stream, CSM_SCALE_BODY);
#undef CSM_SCALE_BODY
}

/* softmax recomputed from x: out = exp((x - m) / tau) * c (long rows: x read again
   rather than exps stored and read back) */
CSM_INLINE void csm_softmax_vec(const REAL *x, const uint8_t *mask, REAL *out, csm_intp i, csm_intp cnt,
                                         const int full, const int nt, const int has_mask, const int scaled, VR ref,
                                         VR c, double tau, double inv_tau)
{
    VR v = csm_load_masked(x + i, has_mask ? mask + i : NULL, full ? VL : cnt);
    VR dh, dl;
    csm_vdiff(v, ref, tau, inv_tau, scaled, &dh, &dl);
    csm_put(out + i, csm_vexp_neg(dh, dl) * c, cnt, full, nt);
}

CSM_INLINE void csm_softmax_t(const REAL *x, const uint8_t *mask, REAL *out, csm_intp n, REAL m, REAL c,
                                       double tau, double inv_tau, int stream, const int has_mask, const int scaled)
{
    const VR ref = VSPLAT(m), cv = VSPLAT(c);
#define CSM_SOFTMAX_BODY(i, cnt, full, nt)                                                                             \
    csm_softmax_vec(x, mask, out, i, cnt, full, nt, has_mask, scaled, ref, cv, tau, inv_tau)
    CSM_FINISH_LOOP(n, out, stream, CSM_SOFTMAX_BODY);
#undef CSM_SOFTMAX_BODY
}

static void csm_row_softmax(const REAL *x, const uint8_t *mask, REAL *out, csm_intp n, REAL m, REAL c,
                                     const csm_temp *tp, int stream)
{
    const double tau = tp->tau, inv = tp->inv_tau;
#define CSM_SOFTMAX(M, S) csm_softmax_t(x, (M) ? mask : NULL, out, n, m, c, tau, inv, stream, M, S)
    CSM_FLAGS2(mask != NULL, tp->scaled, CSM_SOFTMAX);
#undef CSM_SOFTMAX
}

/*
 * log_softmax: (x - m) / tau - log1p(S'), lane-wise (ref = m, lse = log1p(S')). No error
 * term is needed here: the two parts have the same sign, so their rounding errors are
 * relative to the result (three roundings and log1p's own: <= 2.5 ulp with tau, 1.5
 * without).
 */
CSM_INLINE VR csm_logp(VR v, VR ref, VR lse, REAL inv_tau, const int scaled)
{
    VR d = v - ref;
    if (scaled) {
        VR q = d * inv_tau;
        /* x - m overflowed although (x - m) / tau may not: x/tau - m/tau has no cancellation then */
        d = VSEL((d == VSPLAT(-R_INF)) & (v > VSPLAT(-R_INF)), v * inv_tau - ref * inv_tau, q);
    }
    return d - lse;
}

CSM_INLINE void csm_logsub_vec(const REAL *x, const uint8_t *mask, REAL *out, csm_intp i, csm_intp cnt,
                                        const int full, const int nt, const int has_mask, const int scaled, VR ref,
                                        VR lse, REAL inv_tau)
{
    VR v = csm_load_masked(x + i, has_mask ? mask + i : NULL, full ? VL : cnt);
    csm_put(out + i, csm_logp(v, ref, lse, inv_tau, scaled), cnt, full, nt);
}

CSM_INLINE void csm_logsub_t(const REAL *x, const uint8_t *mask, REAL *out, csm_intp n, REAL m, REAL lse,
                                      REAL inv_tau, int stream, const int has_mask, const int scaled)
{
    const VR ref = VSPLAT(m), lv = VSPLAT(lse);
#define CSM_LOGSUB_BODY(i, cnt, full, nt)                                                                              \
    csm_logsub_vec(x, mask, out, i, cnt, full, nt, has_mask, scaled, ref, lv, inv_tau)
    CSM_FINISH_LOOP(n, out, stream, CSM_LOGSUB_BODY);
#undef CSM_LOGSUB_BODY
}

static void csm_row_logsub(const REAL *x, const uint8_t *mask, REAL *out, csm_intp n, REAL m, REAL lse,
                                    const csm_temp *tp, int stream)
{
    const REAL inv = (REAL)tp->inv_tau;
#define CSM_LOGSUB(M, S) csm_logsub_t(x, (M) ? mask : NULL, out, n, m, lse, inv, stream, M, S)
    CSM_FLAGS2(mask != NULL, tp->scaled, CSM_LOGSUB);
#undef CSM_LOGSUB
}

/* ---- rows the vector path does not take: the semantics table, in plain scalar code ---- */
static int csm_row_is_special(const csm_stats *st, const csm_temp *tp)
{
    return tp->tau_inf || !st->any || !isfinite(st->m);
}

/* a special row's entries from its semantics-table values (strides in elements; out may
   be x) */
static void csm_special_fill(const csm_special *sp, const REAL *x, csm_intp sx, const uint8_t *mask, csm_intp smk,
                             REAL *out, csm_intp so, csm_intp n)
{
    for (csm_intp j = 0; j < n; j++) out[j * so] = (REAL)csm_special_value(*sp, !mask || mask[j * smk], (double)x[j * sx]);
}

/*
 * Write a special row of a forward kind (strides in elements) and return its logsumexp:
 * the semantics table of common/csm_special.h. st->m and st->any come from the scan; NaN
 * and the entries above -inf are counted here. out may be x.
 */
static double csm_special_row(int kind, const REAL *x, csm_intp sx, const uint8_t *mask, csm_intp smk, REAL *out,
                              csm_intp so, csm_intp n, const csm_stats *st, int tau_inf)
{
    int nan = 0;
    csm_intp cnt = 0; /* unmasked entries above -inf */
    for (csm_intp j = 0; j < n; j++) {
        if (mask && !mask[j * smk]) continue;
        REAL v = x[j * sx];
        nan |= v != v;
        cnt += v > -R_INF;
    }
    const csm_special sp = csm_special_values(kind, st->any, nan, (double)st->m, cnt, tau_inf);
    if (kind != CSM_LOGSUMEXP) csm_special_fill(&sp, x, sx, mask, smk, out, so, n);
    return sp.lse;
}

/*
 * One contiguous row of a forward kind, kept in cache (three passes). out may equal x
 * (in place). softmax's exps are stored to out and scaled there. Returns the row's
 * logsumexp (CSM_LOGSUMEXP).
 */
static double csm_row_forward(int kind, const REAL *x, const uint8_t *mask, REAL *out, csm_intp n,
                                       const csm_temp *tp, int stream)
{
    csm_stats st;
    csm_row_scan(x, mask, n, &st);
    if (csm_row_is_special(&st, tp))
        return csm_special_row(kind, x, 1, mask, 1, out, 1, n, &st, tp->tau_inf);
    if (CSM_TAU_RIM(tp)) { /* logsumexp takes no temperature: never here */
        st.s = csm_rim_sum(x, mask, n, (double)st.m, tp);
        if (st.s.hi != st.s.hi) return csm_special_row(kind, x, 1, mask, 1, out, 1, n, &st, tp->tau_inf);
        csm_rim_finish(kind, x, mask, out, NULL, n, (double)st.m, st.s, tp);
        return 0.0;
    }
    st.k = csm_row_find(x, mask, n, st.m);
    double unscale;
    st.s = csm_row_expsum(x, mask, kind == CSM_SOFTMAX ? out : NULL, n, &st, tp, &unscale);
    /* A NaN among the unmasked entries: rewrite the row. In place, x may now hold the
       exps, but NaN stays NaN through exp, which is all csm_special_row needs then. */
    if (st.s.hi != st.s.hi) return csm_special_row(kind, x, 1, mask, 1, out, 1, n, &st, tp->tau_inf);
    if (kind == CSM_SOFTMAX) {
        /* 1 / the sum of the stored exps, the max's own among them (2^CSM_ESCALE, or its
           anchored exp), so that no entry comes out above 1 */
        const double tot = (st.s.hi + st.s.lo) / unscale + (double)out[st.k];
        csm_row_scale(out, out, n, 1.0 / tot, stream);
        return 0.0;
    }
    double lse = csm_dd_log1p(st.s);
    if (kind == CSM_LOG_SOFTMAX) {
        csm_row_logsub(x, mask, out, n, st.m, (REAL)lse, tp, stream);
        return 0.0;
    }
    return (double)st.m + lse;
}

