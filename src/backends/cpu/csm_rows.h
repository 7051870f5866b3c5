/*
 * csm_rows.h - per-row kernels of the forward ops, generic over REAL (include between
 * csm_real_begin.h and csm_real_end.h, after csm_exp.h).
 *
 * One contiguous row at a time, kept in cache:
 *   scan     max m over the unmasked entries (and whether any entry is unmasked); then
 *            k, the first index of m
 *   expsum   S' = sum_{j != k} exp((x_j - m) / tau), optionally writing every exp into the
 *            output (softmax); sums accumulate in double (float32 rows) or in Kahan-
 *            compensated double (float64 rows)
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
 * tau or not, store or not), so the hot loops carry no tests. A NaN needs no scan of its
 * own: it makes S' NaN. Rows whose max is not finite, whose S' is NaN, that are fully
 * masked, or that use tau = +inf go to csm_special_row, a plain scalar loop over a
 * strided row that writes the values of the semantics table (DESIGN.md section 3).
 * Tails shorter than a vector run through the same vector code on a padded copy.
 */

typedef struct {
    REAL m;      /* max over the unmasked entries; -inf if there are none */
    REAL mn;     /* min over the entries when there is no mask (NaN left out); else -inf */
    csm_intp k;  /* first index of m (when m is finite) */
    int nan;     /* an unmasked NaN */
    int any;     /* an unmasked entry */
    csm_dd s;    /* S' relative to m, the entry at k left out */
} CSM_SFX(csm_stats);

/* ---- loads and stores of whole or partial vectors ---- */
CSM_INLINE VR CSM_SFX(csm_load)(const REAL *p, csm_intp cnt, REAL fill)
{
    VR v = VSPLAT(fill);
    memcpy(&v, p, (size_t)cnt * sizeof(REAL));
    return v;
}

CSM_INLINE void CSM_SFX(csm_store)(REAL *p, VR v, csm_intp cnt)
{
    memcpy(p, &v, (size_t)cnt * sizeof(REAL));
}

/* lanes whose mask byte is nonzero; lanes past cnt are off */
CSM_INLINE VI CSM_SFX(csm_load_mask)(const uint8_t *p, csm_intp cnt)
{
    if (cnt == VL) return VMASK(p);
    uint8_t b[VL] = {0};
    memcpy(b, p, (size_t)cnt);
    return VMASK(b);
}

/* x with the masked lanes (and the lanes past cnt) set to -inf */
CSM_INLINE VR CSM_SFX(csm_load_masked)(const REAL *x, const uint8_t *mask, csm_intp cnt)
{
    VR v = CSM_SFX(csm_load)(x, cnt, -R_INF);
    if (mask) v = VSEL(CSM_SFX(csm_load_mask)(mask, cnt), v, VSPLAT(-R_INF));
    return v;
}

/* lanes 0, 1, 2, ... */
CSM_INLINE VI CSM_SFX(csm_iota)(void)
{
    VI v;
    for (int l = 0; l < VL; l++) v[l] = l;
    return v;
}

/*
 * (x - ref) / tau as an unevaluated pair dh + dl, accurate to about one unit in the
 * last place of REAL in absolute terms (what exp needs). `scaled` is a constant at every
 * call site, so the branch disappears. A correction that overflowed is dropped.
 */
CSM_INLINE void CSM_SFX(csm_vdiff)(VR x, VR ref, double tau, double inv_tau, const int scaled, VR *dh, VR *dl)
{
    if (!scaled) {
        CSM_SFX(csm_vtwo_diff)(x, ref, dh, dl);
        return;
    }
#if REAL_IS_F32
    /* in double the difference is exact and the product's error is far below float's */
    (void)tau;
    csm_vd inv = (csm_vd){0} + inv_tau;
    csm_vd lo = (csm_f2d_lo(x) - csm_f2d_lo(ref)) * inv;
    csm_vd hi = (csm_f2d_hi(x) - csm_f2d_hi(ref)) * inv;
    *dh = csm_d2f(lo, hi);
    *dl = csm_d2f(lo - csm_f2d_lo(*dh), hi - csm_f2d_hi(*dh));
#else
    VR sh, sl, p, pe;
    CSM_SFX(csm_vtwo_diff)(x, ref, &sh, &sl);
    VR q = sh * inv_tau;
    CSM_SFX(csm_vtwo_prod)(q, VSPLAT(tau), &p, &pe);
    VR rem = (sh - p) - pe; /* sh - q * tau, exactly */
    *dh = q;
    *dl = (rem + sl) * inv_tau;
#endif
    *dl = VSEL(*dl - *dl == 0, *dl, VSPLAT(0)); /* overflow near the range's end: drop it */
}

/* ---- the sums: double lanes for float rows, Kahan-compensated lanes for double rows ---- */
typedef struct {
    csm_vd a, b; /* float rows: the two halves' sums; double rows: sum and compensation */
} CSM_SFX(csm_vacc);

CSM_INLINE void CSM_SFX(csm_acc_add)(CSM_SFX(csm_vacc) *acc, VR e)
{
#if REAL_IS_F32
    acc->a += csm_f2d_lo(e);
    acc->b += csm_f2d_hi(e);
#else
    csm_vd y = e - acc->b;
    csm_vd t = acc->a + y;
    acc->b = (t - acc->a) - y;
    acc->a = t;
#endif
}

/* the same for sums of user data, which may hold infinities: a compensation that went
   NaN (inf - inf) is dropped, so that the sum is what plain addition gives: +-inf, or NaN
   for +inf + -inf */
CSM_INLINE void CSM_SFX(csm_acc_add_any)(CSM_SFX(csm_vacc) *acc, VR e)
{
#if REAL_IS_F32
    CSM_SFX(csm_acc_add)(acc, e);
#else
    csm_vd y = e - acc->b;
    csm_vd t = acc->a + y;
    acc->b = (csm_vd)((VI)((t - acc->a) - y) & (t - t == 0));
    acc->a = t;
#endif
}

/* the lanes of two accumulators summed into one double-double (once per row: vector
   adds first, then a short scalar tail) */
static inline csm_dd CSM_SFX(csm_acc_total2)(const CSM_SFX(csm_vacc) *a0, const CSM_SFX(csm_vacc) *a1)
{
#if REAL_IS_F32
    /* float rows: double precision is already far beyond what they need */
    csm_vd v = (a0->a + a0->b) + (a1->a + a1->b);
    double tot = 0.0;
    for (int l = 0; l < CSM_VLD; l++) tot += v[l];
    return csm_dd_make(tot, 0.0);
#else
    /* double rows: each lane holds a - b (Kahan); add the two accumulators with two_sum */
    csm_vd s = a0->a + a1->a;
    double plain = 0.0;
    for (int l = 0; l < CSM_VLD; l++) plain += s[l];
    if (!csm_finite(plain)) return csm_dd_make(plain, 0.0); /* an infinite (or NaN) sum */
    csm_vd bb = s - a0->a;
    csm_vd err = (a0->a - (s - bb)) + (a1->a - bb);
    csm_vd c = (a0->b + a1->b) - err;
    csm_dd tot = csm_dd_make(s[0], 0.0);
    double comp = c[0];
    for (int l = 1; l < CSM_VLD; l++) {
        tot = csm_dd_add_d(tot, s[l]);
        comp += c[l];
    }
    return csm_dd_add_d(tot, -comp);
#endif
}

/* ---- scan: max (NaN left out by the comparison) and, with a mask, whether any lane is on ---- */
CSM_INLINE void CSM_SFX(csm_scan_t)(const REAL *x, const uint8_t *mask, csm_intp n, const int has_mask, REAL *m_out,
                                    REAL *mn_out, int *any_out)
{
    VR m0 = VSPLAT(-R_INF), m1 = m0, m2 = m0, m3 = m0;
    VR lo = VSPLAT(R_INF);
    VI anyv = {0};
    csm_intp i = 0;
#define CSM_SCAN_STEP(acc, off)                                                                                        \
    do {                                                                                                               \
        VR v_ = CSM_SFX(csm_load)(x + i + (off), VL, 0);                                                               \
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
        VR v = CSM_SFX(csm_load)(x + i, n - i, -R_INF);
        if (has_mask) {
            VI mk = CSM_SFX(csm_load_mask)(mask + i, n - i);
            anyv |= mk;
            v = VSEL(mk, v, VSPLAT(-R_INF));
        }
        m1 = VMAX(v, m1);
        if (!has_mask) lo = VMIN(CSM_SFX(csm_load)(x + i, n - i, R_INF), lo);
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

static void CSM_SFX(csm_row_scan)(const REAL *x, const uint8_t *mask, csm_intp n, CSM_SFX(csm_stats) *st)
{
    if (mask)
        CSM_SFX(csm_scan_t)(x, mask, n, 1, &st->m, &st->mn, &st->any);
    else
        CSM_SFX(csm_scan_t)(x, NULL, n, 0, &st->m, &st->mn, &st->any);
    st->nan = 0;
    st->k = -1;
    st->s = csm_dd_make(0.0, 0.0);
}

/* first index holding m (unmasked); m is finite and present */
static csm_intp CSM_SFX(csm_row_find)(const REAL *x, const uint8_t *mask, csm_intp n, REAL m)
{
    for (csm_intp i = 0; i < n; i += VL) {
        csm_intp cnt = n - i < VL ? n - i : VL;
        VR v = CSM_SFX(csm_load_masked)(x + i, mask ? mask + i : NULL, cnt);
        if (VANY(v == VSPLAT(m)))
            for (csm_intp j = i; j < i + cnt; j++)
                if (x[j] == m && (!mask || mask[j])) return j;
    }
    return -1; /* not reached for a finite m taken from the row */
}

/* ---- expsum: S' and, when storing, every exp written to out ---- */
typedef struct {
    double tau, inv_tau;
} CSM_SFX(csm_tau);

/* one vector at i (cnt lanes; full: cnt == VL); excl: the lane left out of S', or -1 */
CSM_INLINE void CSM_SFX(csm_expsum_vec)(const REAL *x, const uint8_t *mask, REAL *out, csm_intp i, csm_intp cnt,
                                        const int full, const int has_mask, const int scaled, const int store,
                                        const int range, VR ref, double tau, double inv_tau, csm_intp excl,
                                        CSM_SFX(csm_vacc) *acc)
{
    VR v = CSM_SFX(csm_load)(x + i, full ? VL : cnt, -R_INF);
    if (has_mask) v = VSEL(CSM_SFX(csm_load_mask)(mask + i, full ? VL : cnt), v, VSPLAT(-R_INF));
    VR dh, dl;
    CSM_SFX(csm_vdiff)(v, ref, tau, inv_tau, scaled, &dh, &dl);
    /* a partial vector's padding is -inf: it needs the checked exp */
    VR e = CSM_SFX(csm_vexp_t)(dh, dl, full ? range : CSM_EXP_NONPOS);
    if (store) CSM_SFX(csm_store)(out + i, e, full ? VL : cnt);
    if (excl >= 0) e = VSEL(CSM_SFX(csm_iota)() == (VIS)excl, VSPLAT(0), e);
    CSM_SFX(csm_acc_add)(acc, e);
}

CSM_INLINE csm_dd CSM_SFX(csm_expsum_t)(const REAL *x, const uint8_t *mask, REAL *out, csm_intp n, REAL m, csm_intp k,
                                        double tau, double inv_tau, const int has_mask, const int scaled,
                                        const int store, const int range)
{
    CSM_SFX(csm_vacc) a0 = {{0}, {0}}, a1 = {{0}, {0}};
    const VR ref = VSPLAT(m);
    const csm_intp nfull = n - n % VL;
    const csm_intp kb = k >= 0 ? k - k % VL : n; /* the vector holding k; none when k < 0 */
#define CSM_EXPSUM(i, cnt, full, excl, acc)                                                                             \
    CSM_SFX(csm_expsum_vec)(x, mask, out, i, cnt, full, has_mask, scaled, store, range, ref, tau, inv_tau, excl, acc)
    csm_intp i = 0;
    const csm_intp stop = kb < nfull ? kb : nfull;
    for (; i + 2 * VL <= stop; i += 2 * VL) {
        CSM_EXPSUM(i, VL, 1, -1, &a0);
        CSM_EXPSUM(i + VL, VL, 1, -1, &a1);
    }
    for (; i < stop; i += VL) CSM_EXPSUM(i, VL, 1, -1, &a0);
    if (kb < nfull) {
        CSM_EXPSUM(kb, VL, 1, k - kb, &a1);
        i = kb + VL;
    }
    for (; i + 2 * VL <= nfull; i += 2 * VL) {
        CSM_EXPSUM(i, VL, 1, -1, &a0);
        CSM_EXPSUM(i + VL, VL, 1, -1, &a1);
    }
    for (; i < nfull; i += VL) CSM_EXPSUM(i, VL, 1, -1, &a0);
    if (nfull < n) CSM_EXPSUM(nfull, n - nfull, 0, k >= nfull && kb < n ? k - nfull : -1, &a1);
#undef CSM_EXPSUM
    return CSM_SFX(csm_acc_total2)(&a0, &a1);
}

/* the exp variant a row allows: bounded when the scan saw no mask and min and max
   within the exp's normal range of each other */
static int CSM_SFX(csm_exp_range)(const CSM_SFX(csm_stats) *st, const csm_temp *tp)
{
    double spread = ((double)st->mn - (double)st->m) * tp->inv_tau;
    return spread >= -CSM_SFX(csm_exp_bound) ? CSM_EXP_BOUNDED : CSM_EXP_NONPOS; /* false for mn = -inf, NaN */
}

static csm_dd CSM_SFX(csm_row_expsum)(const REAL *x, const uint8_t *mask, REAL *out, csm_intp n,
                                      const CSM_SFX(csm_stats) *st, const csm_temp *tp)
{
    const double tau = tp->tau, inv = tp->inv_tau;
    const REAL m = st->m;
    const csm_intp k = st->k;
    if (!mask && CSM_SFX(csm_exp_range)(st, tp) == CSM_EXP_BOUNDED) {
        switch (tp->scaled | ((out != NULL) << 1)) {
        case 0: return CSM_SFX(csm_expsum_t)(x, NULL, NULL, n, m, k, tau, inv, 0, 0, 0, CSM_EXP_BOUNDED);
        case 1: return CSM_SFX(csm_expsum_t)(x, NULL, NULL, n, m, k, tau, inv, 0, 1, 0, CSM_EXP_BOUNDED);
        case 2: return CSM_SFX(csm_expsum_t)(x, NULL, out, n, m, k, tau, inv, 0, 0, 1, CSM_EXP_BOUNDED);
        default: return CSM_SFX(csm_expsum_t)(x, NULL, out, n, m, k, tau, inv, 0, 1, 1, CSM_EXP_BOUNDED);
        }
    }
    switch ((mask != NULL) | (tp->scaled << 1) | ((out != NULL) << 2)) {
    case 0: return CSM_SFX(csm_expsum_t)(x, NULL, NULL, n, m, k, tau, inv, 0, 0, 0, CSM_EXP_NONPOS);
    case 1: return CSM_SFX(csm_expsum_t)(x, mask, NULL, n, m, k, tau, inv, 1, 0, 0, CSM_EXP_NONPOS);
    case 2: return CSM_SFX(csm_expsum_t)(x, NULL, NULL, n, m, k, tau, inv, 0, 1, 0, CSM_EXP_NONPOS);
    case 3: return CSM_SFX(csm_expsum_t)(x, mask, NULL, n, m, k, tau, inv, 1, 1, 0, CSM_EXP_NONPOS);
    case 4: return CSM_SFX(csm_expsum_t)(x, NULL, out, n, m, k, tau, inv, 0, 0, 1, CSM_EXP_NONPOS);
    case 5: return CSM_SFX(csm_expsum_t)(x, mask, out, n, m, k, tau, inv, 1, 0, 1, CSM_EXP_NONPOS);
    case 6: return CSM_SFX(csm_expsum_t)(x, NULL, out, n, m, k, tau, inv, 0, 1, 1, CSM_EXP_NONPOS);
    default: return CSM_SFX(csm_expsum_t)(x, mask, out, n, m, k, tau, inv, 1, 1, 1, CSM_EXP_NONPOS);
    }
}

/* ---- finishing passes ----
 * Each writes every element of out once. With `stream`, the whole vectors at aligned
 * addresses use non-temporal stores (large outputs: no read for ownership, no cache
 * pollution); the caller fences once when done. */

/* elements before out + i reaches a vector boundary, or -1 if it never does */
static inline csm_intp CSM_SFX(csm_align_head)(const REAL *out)
{
    uintptr_t a = (uintptr_t)out;
    if (a % sizeof(REAL)) return -1;
    return (csm_intp)(((CSM_VB - a % CSM_VB) % CSM_VB) / sizeof(REAL));
}

/* the loop shape every finishing pass shares: head, streamed body, tail */
#define CSM_FINISH_LOOP(n, out, stream, BODY)                                                                          \
    do {                                                                                                               \
        csm_intp i_ = 0, head_ = (stream) ? CSM_SFX(csm_align_head)(out) : -1;                                         \
        if (head_ >= 0) {                                                                                              \
            if (head_ > (n)) head_ = (n);                                                                              \
            if (head_ > 0) BODY(0, head_, 0, 0);                                                                       \
            for (i_ = head_; i_ + VL <= (n); i_ += VL) BODY(i_, VL, 1, 1);                                             \
        } else {                                                                                                       \
            for (; i_ + VL <= (n); i_ += VL) BODY(i_, VL, 1, 0);                                                       \
        }                                                                                                              \
        if (i_ < (n)) BODY(i_, (n) - i_, 0, 0);                                                                        \
    } while (0)

CSM_INLINE void CSM_SFX(csm_put)(REAL *p, VR v, csm_intp cnt, const int full, const int nt)
{
    if (nt)
        VSTREAM(p, v);
    else
        CSM_SFX(csm_store)(p, v, full ? VL : cnt);
}

/* softmax from stored exps: out = e * c (e may be out itself) */
static void CSM_SFX(csm_row_scale)(const REAL *e, REAL *out, csm_intp n, REAL c, int stream)
{
    const VR cv = VSPLAT(c);
#define CSM_SCALE_BODY(i, cnt, full, nt)                                                                               \
    CSM_SFX(csm_put)(out + (i), CSM_SFX(csm_load)(e + (i), (full) ? VL : (cnt), 0) * cv, cnt, full, nt)
    CSM_FINISH_LOOP(n, out, stream, CSM_SCALE_BODY);
#undef CSM_SCALE_BODY
}

/* softmax recomputed from x: out = exp((x - m) / tau) * c (long rows: x read again
   rather than exps stored and read back) */
CSM_INLINE void CSM_SFX(csm_softmax_vec)(const REAL *x, const uint8_t *mask, REAL *out, csm_intp i, csm_intp cnt,
                                         const int full, const int nt, const int has_mask, const int scaled, VR ref,
                                         VR c, double tau, double inv_tau)
{
    VR v = CSM_SFX(csm_load)(x + i, full ? VL : cnt, -R_INF);
    if (has_mask) v = VSEL(CSM_SFX(csm_load_mask)(mask + i, full ? VL : cnt), v, VSPLAT(-R_INF));
    VR dh, dl;
    CSM_SFX(csm_vdiff)(v, ref, tau, inv_tau, scaled, &dh, &dl);
    CSM_SFX(csm_put)(out + i, CSM_SFX(csm_vexp2_neg)(dh, dl) * c, cnt, full, nt);
}

CSM_INLINE void CSM_SFX(csm_softmax_t)(const REAL *x, const uint8_t *mask, REAL *out, csm_intp n, REAL m, REAL c,
                                       double tau, double inv_tau, int stream, const int has_mask, const int scaled)
{
    const VR ref = VSPLAT(m), cv = VSPLAT(c);
#define CSM_SOFTMAX_BODY(i, cnt, full, nt)                                                                             \
    CSM_SFX(csm_softmax_vec)(x, mask, out, i, cnt, full, nt, has_mask, scaled, ref, cv, tau, inv_tau)
    CSM_FINISH_LOOP(n, out, stream, CSM_SOFTMAX_BODY);
#undef CSM_SOFTMAX_BODY
}

static void CSM_SFX(csm_row_softmax)(const REAL *x, const uint8_t *mask, REAL *out, csm_intp n, REAL m, REAL c,
                                     const csm_temp *tp, int stream)
{
    const double tau = tp->tau, inv = tp->inv_tau;
    switch ((mask != NULL) | (tp->scaled << 1)) {
    case 0: CSM_SFX(csm_softmax_t)(x, NULL, out, n, m, c, tau, inv, stream, 0, 0); break;
    case 1: CSM_SFX(csm_softmax_t)(x, mask, out, n, m, c, tau, inv, stream, 1, 0); break;
    case 2: CSM_SFX(csm_softmax_t)(x, NULL, out, n, m, c, tau, inv, stream, 0, 1); break;
    default: CSM_SFX(csm_softmax_t)(x, mask, out, n, m, c, tau, inv, stream, 1, 1); break;
    }
}

/*
 * log_softmax: (x - m) / tau - log1p(S'), lane-wise (ref = m, lse = log1p(S')). No error
 * term is needed here: the two parts have the same sign, so their rounding errors are
 * relative to the result (three roundings and log1p's own: <= 2.5 ulp with tau, 1.5
 * without).
 */
CSM_INLINE VR CSM_SFX(csm_logp)(VR v, VR ref, VR lse, REAL inv_tau, const int scaled)
{
    VR d = v - ref;
    if (scaled) {
        VR q = d * inv_tau;
        /* x - m overflowed although (x - m) / tau may not: x/tau - m/tau has no cancellation then */
        d = VSEL((d == VSPLAT(-R_INF)) & (v > VSPLAT(-R_INF)), v * inv_tau - ref * inv_tau, q);
    }
    return d - lse;
}

CSM_INLINE void CSM_SFX(csm_logsub_vec)(const REAL *x, const uint8_t *mask, REAL *out, csm_intp i, csm_intp cnt,
                                        const int full, const int nt, const int has_mask, const int scaled, VR ref,
                                        VR lse, REAL inv_tau)
{
    VR v = CSM_SFX(csm_load)(x + i, full ? VL : cnt, -R_INF);
    if (has_mask) v = VSEL(CSM_SFX(csm_load_mask)(mask + i, full ? VL : cnt), v, VSPLAT(-R_INF));
    CSM_SFX(csm_put)(out + i, CSM_SFX(csm_logp)(v, ref, lse, inv_tau, scaled), cnt, full, nt);
}

CSM_INLINE void CSM_SFX(csm_logsub_t)(const REAL *x, const uint8_t *mask, REAL *out, csm_intp n, REAL m, REAL lse,
                                      REAL inv_tau, int stream, const int has_mask, const int scaled)
{
    const VR ref = VSPLAT(m), lv = VSPLAT(lse);
#define CSM_LOGSUB_BODY(i, cnt, full, nt)                                                                              \
    CSM_SFX(csm_logsub_vec)(x, mask, out, i, cnt, full, nt, has_mask, scaled, ref, lv, inv_tau)
    CSM_FINISH_LOOP(n, out, stream, CSM_LOGSUB_BODY);
#undef CSM_LOGSUB_BODY
}

static void CSM_SFX(csm_row_logsub)(const REAL *x, const uint8_t *mask, REAL *out, csm_intp n, REAL m, REAL lse,
                                    const csm_temp *tp, int stream)
{
    const REAL inv = (REAL)tp->inv_tau;
    switch ((mask != NULL) | (tp->scaled << 1)) {
    case 0: CSM_SFX(csm_logsub_t)(x, NULL, out, n, m, lse, inv, stream, 0, 0); break;
    case 1: CSM_SFX(csm_logsub_t)(x, mask, out, n, m, lse, inv, stream, 1, 0); break;
    case 2: CSM_SFX(csm_logsub_t)(x, NULL, out, n, m, lse, inv, stream, 0, 1); break;
    default: CSM_SFX(csm_logsub_t)(x, mask, out, n, m, lse, inv, stream, 1, 1); break;
    }
}

/* ---- rows the vector path does not take: the semantics table, in plain scalar code ---- */
static int CSM_SFX(csm_row_is_special)(const CSM_SFX(csm_stats) *st, const csm_temp *tp)
{
    return tp->tau_inf || !st->any || !isfinite(st->m);
}

/*
 * Write a special row of a forward kind (strides in elements) and return its logsumexp.
 * st->m and st->any come from the scan; NaN is looked for here.
 *   fully masked      softmax 0, log_softmax -inf, logsumexp -inf
 *   an unmasked NaN   NaN (masked entries keep 0 / -inf); logsumexp NaN
 *   max +inf          softmax and log_softmax NaN, logsumexp +inf
 *   all -inf          softmax and log_softmax NaN, logsumexp -inf
 *   tau = +inf        uniform over the unmasked entries that are not -inf
 */
static double CSM_SFX(csm_special_row)(int kind, const REAL *x, csm_intp sx, const uint8_t *mask, csm_intp smk,
                                       REAL *out, csm_intp so, csm_intp n, const CSM_SFX(csm_stats) *st, int tau_inf)
{
    const REAL outside = kind == CSM_SOFTMAX ? 0 : -R_INF; /* masked entries, and -inf ones at tau = inf */
    int nan = 0;
    csm_intp cnt = 0; /* unmasked entries above -inf */
    for (csm_intp j = 0; j < n; j++) {
        if (mask && !mask[j * smk]) continue;
        REAL v = x[j * sx];
        nan |= v != v;
        cnt += v > -R_INF;
    }
    REAL inside;
    double lse;
    if (!st->any) {
        inside = outside;
        lse = -INFINITY;
    } else if (nan) {
        inside = (REAL)NAN;
        lse = NAN;
    } else if (!isfinite(st->m) || !tau_inf) {
        /* an infinite max; or (defensively) a NaN sum with no NaN in x */
        inside = (REAL)NAN;
        lse = isfinite(st->m) ? NAN : st->m;
    } else { /* tau = +inf with a finite max: uniform over the entries > -inf */
        inside = kind == CSM_SOFTMAX ? (REAL)(1.0 / (double)cnt) : (REAL)(-log((double)cnt));
        lse = NAN; /* not used: logsumexp takes no temperature */
    }
    if (kind != CSM_LOGSUMEXP) {
        const int uniform = tau_inf && st->any && !nan && isfinite(st->m); /* -inf entries get `outside` */
        for (csm_intp j = 0; j < n; j++) {
            REAL v;
            if (mask && !mask[j * smk])
                v = outside;
            else
                v = uniform && !(x[j * sx] > -R_INF) ? outside : inside;
            out[j * so] = v;
        }
    }
    return lse;
}

/*
 * One contiguous row of a forward kind, kept in cache (three passes). out may equal x
 * (in place). buf, when given, is a row of scratch that holds softmax's exps, so that out
 * is written once (and may be streamed). Returns the row's logsumexp (CSM_LOGSUMEXP).
 */
static double CSM_SFX(csm_row_forward)(int kind, const REAL *x, const uint8_t *mask, REAL *out, REAL *buf, csm_intp n,
                                       const csm_temp *tp, int stream)
{
    CSM_SFX(csm_stats) st;
    CSM_SFX(csm_row_scan)(x, mask, n, &st);
    if (CSM_SFX(csm_row_is_special)(&st, tp))
        return CSM_SFX(csm_special_row)(kind, x, 1, mask, 1, out, 1, n, &st, tp->tau_inf);
    st.k = CSM_SFX(csm_row_find)(x, mask, n, st.m);
    REAL *e = kind != CSM_SOFTMAX ? NULL : buf ? buf : out;
    st.s = CSM_SFX(csm_row_expsum)(x, mask, e, n, &st, tp);
    /* A NaN among the unmasked entries: rewrite the row. In place, x may now hold the
       exps, but NaN stays NaN through exp, which is all csm_special_row needs then. */
    if (st.s.hi != st.s.hi) return CSM_SFX(csm_special_row)(kind, x, 1, mask, 1, out, 1, n, &st, tp->tau_inf);
    if (kind == CSM_SOFTMAX) {
        CSM_SFX(csm_row_scale)(e, out, n, (REAL)csm_dd_inv_1p(st.s), stream);
        return 0.0;
    }
    double lse = csm_dd_log1p(st.s);
    if (kind == CSM_LOG_SOFTMAX) {
        CSM_SFX(csm_row_logsub)(x, mask, out, n, st.m, (REAL)lse, tp, stream);
        return 0.0;
    }
    return (double)st.m + lse;
}

/* ---- long rows: statistics read once, in blocks; rows split across threads ----
 *
 * A block of CSM_BLOCK entries is scanned (read from memory), then summed from L1
 * relative to a reference r. r moves only when a block's max exceeds it by more than
 * CSM_LAZY (in units of x / tau), so the running sum is rescaled rarely, and then by a
 * double-double factor: the result does not depend on how the row was cut. Pieces of a
 * row (threads) merge with S' = S1' + (1 + S2') exp((m2 - m1) / tau), also in
 * double-double. */
#define CSM_BLOCK 2048
#define CSM_LAZY 60.0

typedef struct {
    REAL m;     /* max so far; -inf if none */
    csm_intp k; /* its index in the row */
    REAL r;     /* reference of s; -inf until a finite block max */
    csm_dd s;   /* sum over the unmasked j != k of exp((x_j - r) / tau); after
                   csm_chunk_settle: relative to m (S') */
    int any;    /* an unmasked entry */
} CSM_SFX(csm_chunk);

static void CSM_SFX(csm_chunk_init)(CSM_SFX(csm_chunk) *c)
{
    c->m = c->r = -R_INF;
    c->k = -1;
    c->s = csm_dd_make(0.0, 0.0);
    c->any = 0;
}

static int CSM_SFX(csm_has_nan)(const REAL *x, const uint8_t *mask, csm_intp n)
{
    for (csm_intp i = 0; i < n; i++)
        if (x[i] != x[i] && (!mask || mask[i])) return 1;
    return 0;
}

/* fold the range x[0:n] (entries at row index off + j) into c */
static void CSM_SFX(csm_chunk_add)(CSM_SFX(csm_chunk) *c, const REAL *x, const uint8_t *mask, csm_intp n,
                                   csm_intp off, const csm_temp *tp)
{
    const double tau = tp->tau, inv = tp->inv_tau;
    for (csm_intp b0 = 0; b0 < n && c->m != R_INF; b0 += CSM_BLOCK) {
        const csm_intp bn = n - b0 < CSM_BLOCK ? n - b0 : CSM_BLOCK;
        const REAL *xb = x + b0;
        const uint8_t *mb_ = mask ? mask + b0 : NULL;
        CSM_SFX(csm_stats) st;
        CSM_SFX(csm_row_scan)(xb, mb_, bn, &st);
        c->any |= st.any;
        if (st.m == R_INF) { /* the row is special; nothing more to add */
            c->m = R_INF;
            break;
        }
        if (!(st.m > -R_INF)) { /* nothing above -inf here, but maybe a NaN */
            if (CSM_SFX(csm_has_nan)(xb, mb_, bn)) c->s = csm_dd_make(NAN, 0.0);
            continue;
        }
        if (c->r == -R_INF) {
            c->r = st.m;
        } else if (((double)st.m - (double)c->r) * inv > CSM_LAZY) {
            c->s = csm_dd_mul(c->s, csm_dd_expdiff((double)c->r, (double)st.m, tp->tau));
            c->r = st.m;
        }
        csm_intp excl = -1;
        if (st.m > c->m) { /* a new max: it leaves the sum, the old one joins it */
            csm_intp kb = CSM_SFX(csm_row_find)(xb, mb_, bn, st.m);
            if (c->m > -R_INF) c->s = csm_dd_add(c->s, csm_dd_expdiff((double)c->m, (double)c->r, tp->tau));
            c->m = st.m;
            c->k = off + b0 + kb;
            excl = kb;
        }
        csm_dd part;
        switch ((mb_ != NULL) | (tp->scaled << 1)) {
        case 0: part = CSM_SFX(csm_expsum_t)(xb, NULL, NULL, bn, c->r, excl, tau, inv, 0, 0, 0, CSM_EXP_ANY); break;
        case 1: part = CSM_SFX(csm_expsum_t)(xb, mb_, NULL, bn, c->r, excl, tau, inv, 1, 0, 0, CSM_EXP_ANY); break;
        case 2: part = CSM_SFX(csm_expsum_t)(xb, NULL, NULL, bn, c->r, excl, tau, inv, 0, 1, 0, CSM_EXP_ANY); break;
        default: part = CSM_SFX(csm_expsum_t)(xb, mb_, NULL, bn, c->r, excl, tau, inv, 1, 1, 0, CSM_EXP_ANY); break;
        }
        c->s = csm_dd_add(c->s, part);
    }
}

/* make c's sum relative to its max (S'); for a chunk with a finite max */
static void CSM_SFX(csm_chunk_settle)(CSM_SFX(csm_chunk) *c, const csm_temp *tp)
{
    if (c->m > -R_INF && c->m < R_INF && c->r != c->m)
        c->s = csm_dd_mul(c->s, csm_dd_expdiff((double)c->r, (double)c->m, tp->tau));
    c->r = c->m;
}

/* a += b, both settled */
static void CSM_SFX(csm_chunk_merge)(CSM_SFX(csm_chunk) *a, const CSM_SFX(csm_chunk) *b, const csm_temp *tp)
{
    a->any |= b->any;
    if (a->m == R_INF || b->m == R_INF) {
        a->m = R_INF;
        return;
    }
    const int nan = a->s.hi != a->s.hi || b->s.hi != b->s.hi;
    if (!(b->m > -R_INF)) {
        if (nan) a->s = csm_dd_make(NAN, 0.0);
        return;
    }
    CSM_SFX(csm_chunk) hi = *a, lo = *b;
    if (b->m > a->m || !(a->m > -R_INF)) {
        hi = *b;
        lo = *a;
    }
    if (lo.m > -R_INF) { /* the smaller max and its sum join the larger's sum */
        const csm_dd f = csm_dd_expdiff((double)lo.m, (double)hi.m, tp->tau);
        hi.s = csm_dd_add(hi.s, csm_dd_mul(csm_dd_add_d(lo.s, 1.0), f));
    }
    if (nan) hi.s = csm_dd_make(NAN, 0.0);
    hi.any = a->any;
    *a = hi;
}

/* the finishing pass over x[0:n] of a row whose stats are c (settled), at row offset off */
static void CSM_SFX(csm_chunk_finish)(int kind, const REAL *x, const uint8_t *mask, REAL *out, csm_intp n,
                                      const CSM_SFX(csm_chunk) *c, const csm_temp *tp, int stream)
{
    if (kind == CSM_SOFTMAX)
        CSM_SFX(csm_row_softmax)(x, mask, out, n, c->m, (REAL)csm_dd_inv_1p(c->s), tp, stream);
    else if (kind == CSM_LOG_SOFTMAX)
        CSM_SFX(csm_row_logsub)(x, mask, out, n, c->m, (REAL)csm_dd_log1p(c->s), tp, stream);
}

static int CSM_SFX(csm_chunk_is_special)(const CSM_SFX(csm_chunk) *c, const csm_temp *tp)
{
    return tp->tau_inf || !c->any || !(c->m > -R_INF && c->m < R_INF) || c->s.hi != c->s.hi;
}

/* One long contiguous row on one thread: stats in one read, then the finishing pass. */
static double CSM_SFX(csm_row_forward_long)(int kind, const REAL *x, const uint8_t *mask, REAL *out, csm_intp n,
                                            const csm_temp *tp, int stream)
{
    CSM_SFX(csm_chunk) c;
    CSM_SFX(csm_chunk_init)(&c);
    CSM_SFX(csm_chunk_add)(&c, x, mask, n, 0, tp);
    CSM_SFX(csm_chunk_settle)(&c, tp);
    if (CSM_SFX(csm_chunk_is_special)(&c, tp)) {
        CSM_SFX(csm_stats) st = {0};
        st.m = c.m;
        st.any = c.any;
        return CSM_SFX(csm_special_row)(kind, x, 1, mask, 1, out, 1, n, &st, tp->tau_inf);
    }
    CSM_SFX(csm_chunk_finish)(kind, x, mask, out, n, &c, tp, stream);
    return (double)c.m + csm_dd_log1p(c.s);
}
