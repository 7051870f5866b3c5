/*
 * csm_rows.h - per-row kernels of the forward ops, generic over REAL (include between
 * csm_real_begin.h and csm_real_end.h, after csm_exp.h).
 *
 * One contiguous row at a time, kept in cache:
 *   scan     max m over the unmasked entries, whether there is an unmasked NaN, whether
 *            any entry is unmasked; then k, the first index of m
 *   expsum   S' = sum_{j != k} exp((x_j - m) / tau), optionally writing every exp into the
 *            output (softmax); sums accumulate in double (float32 rows) or in Kahan-
 *            compensated double (float64 rows)
 *   finish   softmax  out_j = e_j / (1 + S')
 *            log_softmax  out_j = (x_j - m) / tau - log1p(S')   (exactly -log1p(S') at k)
 *            logsumexp  m + log1p(S')
 * Leaving the max entry out of S' is what keeps log1p(S') accurate when S' is tiny
 * (logsumexp([0, -40]) = 4.248e-18 rather than 0).
 *
 * x - m is computed with its rounding error (two_diff), and the error is folded into
 * exp's reduced argument; with tau != 1 the quotient carries its remainder likewise.
 *
 * Rows whose max is not finite, that contain an unmasked NaN, that are fully masked, or
 * that use tau = +inf go to csm_special_row, a plain scalar loop over a strided row that
 * writes the values of the semantics table (DESIGN.md section 3). Tails shorter than a
 * vector run through the same vector code on a padded copy, so every element of a row is
 * computed by the same instructions.
 */

typedef struct {
    REAL m;      /* max over the unmasked entries; -inf if there are none */
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
    VM8 b = {0};
    memcpy(&b, p, (size_t)cnt);
    return __builtin_convertvector(b, VI) != 0;
}

/* x with the masked lanes (and the lanes past cnt) set to -inf */
CSM_INLINE VR CSM_SFX(csm_load_masked)(const REAL *x, const uint8_t *mask, csm_intp cnt)
{
    VR v = CSM_SFX(csm_load)(x, cnt, -R_INF);
    if (mask) v = VSEL(CSM_SFX(csm_load_mask)(mask, cnt), v, VSPLAT(-R_INF));
    return v;
}

/*
 * (x - ref) / tau as an unevaluated pair dh + dl, accurate to about one unit in the
 * last place of REAL in absolute terms (what exp needs). `scaled` is a constant at every
 * call site, so the branch disappears.
 */
CSM_INLINE void CSM_SFX(csm_vdiff)(VR x, VR ref, const csm_temp *tp, int scaled, VR *dh, VR *dl)
{
    if (!scaled) {
        CSM_SFX(csm_vtwo_diff)(x, ref, dh, dl);
        return;
    }
#if REAL_IS_F32
    /* in double the difference is exact and the product's error is far below float's */
    VACC d = (__builtin_convertvector(x, VACC) - __builtin_convertvector(ref, VACC)) * tp->inv_tau;
    *dh = __builtin_convertvector(d, VR);
    *dl = __builtin_convertvector(d - __builtin_convertvector(*dh, VACC), VR);
    *dl = VSEL(*dl - *dl == 0, *dl, VSPLAT(0)); /* dh overflowed float: the error is meaningless */
#else
    VR sh, sl, p, pe;
    CSM_SFX(csm_vtwo_diff)(x, ref, &sh, &sl);
    VR q = sh * tp->inv_tau;
    CSM_SFX(csm_vtwo_prod)(q, VSPLAT(tp->tau), &p, &pe);
    VR rem = (sh - p) - pe; /* sh - q * tau, exactly */
    *dh = q;
    *dl = (rem + sl) * tp->inv_tau;
    *dl = VSEL(*dl - *dl == 0, *dl, VSPLAT(0)); /* |q| near the overflow threshold: the split overflowed */
#endif
}

/* ---- the sums: double lanes for float rows, Kahan-compensated lanes for double rows ---- */
typedef struct {
    VACC s, c;
} CSM_SFX(csm_vacc);

CSM_INLINE void CSM_SFX(csm_acc_add)(CSM_SFX(csm_vacc) *a, VR e)
{
#if REAL_IS_F32
    a->s += __builtin_convertvector(e, VACC);
#else
    VACC y = e - a->c;
    VACC t = a->s + y;
    a->c = (t - a->s) - y;
    a->s = t;
#endif
}

static inline csm_dd CSM_SFX(csm_acc_total)(const CSM_SFX(csm_vacc) *a)
{
    csm_dd tot = csm_dd_make(0.0, 0.0);
    for (int l = 0; l < VL; l++) {
        tot = csm_dd_add_d(tot, a->s[l]);
#if !REAL_IS_F32
        tot = csm_dd_add_d(tot, -a->c[l]);
#endif
    }
    return tot;
}

/* ---- scan: max, NaN, any ---- */
CSM_INLINE void CSM_SFX(csm_scan_step)(const REAL *x, const uint8_t *mask, csm_intp cnt, VR *mv, VI *nanv, VI *anyv)
{
    VR v = CSM_SFX(csm_load)(x, cnt, -R_INF);
    if (mask) {
        VI mk = CSM_SFX(csm_load_mask)(mask, cnt);
        *anyv |= mk;
        v = VSEL(mk, v, VSPLAT(-R_INF));
    }
    *nanv |= v != v;
    *mv = VSEL(v > *mv, v, *mv);
}

static void CSM_SFX(csm_row_scan)(const REAL *x, const uint8_t *mask, csm_intp n, CSM_SFX(csm_stats) *st)
{
    VR mv0 = VSPLAT(-R_INF), mv1 = mv0;
    VI nanv = {0}, anyv = {0};
    csm_intp i = 0;
    for (; i + 2 * VL <= n; i += 2 * VL) {
        CSM_SFX(csm_scan_step)(x + i, mask ? mask + i : NULL, VL, &mv0, &nanv, &anyv);
        CSM_SFX(csm_scan_step)(x + i + VL, mask ? mask + i + VL : NULL, VL, &mv1, &nanv, &anyv);
    }
    for (; i < n; i += VL) {
        csm_intp cnt = n - i < VL ? n - i : VL;
        CSM_SFX(csm_scan_step)(x + i, mask ? mask + i : NULL, cnt, &mv0, &nanv, &anyv);
    }
    mv0 = VSEL(mv1 > mv0, mv1, mv0);
    REAL m = -R_INF;
    for (int l = 0; l < VL; l++) m = mv0[l] > m ? mv0[l] : m;
    st->m = m;
    st->nan = VANY(nanv);
    st->any = mask ? VANY(anyv) : n > 0;
    st->k = -1;
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

/* ---- expsum: S' and, when out != NULL, every exp written to out ---- */
CSM_INLINE void CSM_SFX(csm_expsum_step)(const REAL *x, const uint8_t *mask, REAL *out, csm_intp i, csm_intp cnt,
                                         VR ref, csm_intp k, const csm_temp *tp, int scaled, CSM_SFX(csm_vacc) *acc)
{
    VR v = CSM_SFX(csm_load_masked)(x + i, mask ? mask + i : NULL, cnt);
    VR dh, dl;
    CSM_SFX(csm_vdiff)(v, ref, tp, scaled, &dh, &dl);
    VR e = CSM_SFX(csm_vexp2)(dh, dl);
    if (out) CSM_SFX(csm_store)(out + i, e, cnt);
    if ((size_t)(k - i) < (size_t)cnt) e[k - i] = 0;
    CSM_SFX(csm_acc_add)(acc, e);
}

CSM_INLINE csm_dd CSM_SFX(csm_row_expsum_t)(const REAL *x, const uint8_t *mask, REAL *out, csm_intp n, REAL m,
                                            csm_intp k, const csm_temp *tp, int scaled)
{
    CSM_SFX(csm_vacc) a0 = {{0}, {0}}, a1 = {{0}, {0}};
    VR ref = VSPLAT(m);
    csm_intp i = 0;
    for (; i + 2 * VL <= n; i += 2 * VL) {
        CSM_SFX(csm_expsum_step)(x, mask, out, i, VL, ref, k, tp, scaled, &a0);
        CSM_SFX(csm_expsum_step)(x, mask, out, i + VL, VL, ref, k, tp, scaled, &a1);
    }
    for (; i < n; i += VL) {
        csm_intp cnt = n - i < VL ? n - i : VL;
        CSM_SFX(csm_expsum_step)(x, mask, out, i, cnt, ref, k, tp, scaled, &a0);
    }
    return csm_dd_add(CSM_SFX(csm_acc_total)(&a0), CSM_SFX(csm_acc_total)(&a1));
}

static csm_dd CSM_SFX(csm_row_expsum)(const REAL *x, const uint8_t *mask, REAL *out, csm_intp n, REAL m, csm_intp k,
                                      const csm_temp *tp)
{
    return tp->scaled ? CSM_SFX(csm_row_expsum_t)(x, mask, out, n, m, k, tp, 1)
                      : CSM_SFX(csm_row_expsum_t)(x, mask, out, n, m, k, tp, 0);
}

/* ---- finishing passes ---- */
static void CSM_SFX(csm_row_scale)(REAL *out, csm_intp n, REAL c)
{
    VR cv = VSPLAT(c);
    csm_intp i = 0;
    for (; i + VL <= n; i += VL) {
        VR v;
        memcpy(&v, out + i, sizeof v);
        v *= cv;
        memcpy(out + i, &v, sizeof v);
    }
    for (; i < n; i++) out[i] *= c;
}

CSM_INLINE void CSM_SFX(csm_logsub_step)(const REAL *x, const uint8_t *mask, REAL *out, csm_intp i, csm_intp cnt,
                                         VR ref, VR lse, const csm_temp *tp, int scaled)
{
    VR v = CSM_SFX(csm_load_masked)(x + i, mask ? mask + i : NULL, cnt);
    VR dh, dl;
    CSM_SFX(csm_vdiff)(v, ref, tp, scaled, &dh, &dl);
    dl = VSEL(dh > VSPLAT(-R_INF), dl, VSPLAT(0)); /* -inf - m: the error term is NaN */
    CSM_SFX(csm_store)(out + i, (dh - lse) + dl, cnt);
}

CSM_INLINE void CSM_SFX(csm_row_logsub_t)(const REAL *x, const uint8_t *mask, REAL *out, csm_intp n, REAL m, REAL lse,
                                          const csm_temp *tp, int scaled)
{
    VR ref = VSPLAT(m), lv = VSPLAT(lse);
    csm_intp i = 0;
    for (; i + VL <= n; i += VL) CSM_SFX(csm_logsub_step)(x, mask, out, i, VL, ref, lv, tp, scaled);
    if (i < n) CSM_SFX(csm_logsub_step)(x, mask, out, i, n - i, ref, lv, tp, scaled);
}

static void CSM_SFX(csm_row_logsub)(const REAL *x, const uint8_t *mask, REAL *out, csm_intp n, REAL m, REAL lse,
                                    const csm_temp *tp)
{
    if (tp->scaled)
        CSM_SFX(csm_row_logsub_t)(x, mask, out, n, m, lse, tp, 1);
    else
        CSM_SFX(csm_row_logsub_t)(x, mask, out, n, m, lse, tp, 0);
}

/* ---- rows the vector path does not take: the semantics table, in plain scalar code ---- */
static int CSM_SFX(csm_row_is_special)(const CSM_SFX(csm_stats) *st, const csm_temp *tp)
{
    return tp->tau_inf || !st->any || st->nan || !isfinite(st->m);
}

/*
 * Write a special row of a forward kind (strides in elements) and return its logsumexp.
 *   fully masked      softmax 0, log_softmax -inf, logsumexp -inf
 *   an unmasked NaN   NaN everywhere (logsumexp NaN)
 *   max +inf          softmax and log_softmax NaN, logsumexp +inf
 *   all -inf          softmax and log_softmax NaN, logsumexp -inf
 *   tau = +inf        uniform over the unmasked entries that are not -inf
 */
static double CSM_SFX(csm_special_row)(int kind, const REAL *x, csm_intp sx, const uint8_t *mask, csm_intp smk,
                                       REAL *out, csm_intp so, csm_intp n, const CSM_SFX(csm_stats) *st)
{
    REAL fill_in, fill_out; /* value for entries in the support, and outside it */
    double lse;
    if (!st->any) {
        fill_in = kind == CSM_SOFTMAX ? 0 : -R_INF;
        fill_out = fill_in;
        lse = -INFINITY;
    } else if (st->nan) {
        fill_in = fill_out = (REAL)NAN;
        lse = NAN;
    } else if (st->m == R_INF || st->m == -R_INF) {
        fill_in = fill_out = (REAL)NAN;
        lse = st->m;
    } else { /* tau = +inf with a finite max: uniform over the entries > -inf */
        csm_intp cnt = 0;
        for (csm_intp j = 0; j < n; j++)
            if ((!mask || mask[j * smk]) && x[j * sx] > -R_INF) cnt++;
        fill_in = kind == CSM_SOFTMAX ? (REAL)(1.0 / (double)cnt) : (REAL)(-log((double)cnt));
        fill_out = kind == CSM_SOFTMAX ? 0 : -R_INF;
        lse = NAN; /* logsumexp takes no temperature */
    }
    if (kind != CSM_LOGSUMEXP) {
        for (csm_intp j = 0; j < n; j++) {
            int in = (!mask || mask[j * smk]) && x[j * sx] > -R_INF;
            /* masked entries are outside the support; -inf entries too, except that a
               NaN or all-(-inf) row is NaN throughout */
            REAL v = in ? fill_in : fill_out;
            if (mask && !mask[j * smk]) v = kind == CSM_SOFTMAX ? 0 : -R_INF;
            out[j * so] = v;
        }
    }
    return lse;
}

/*
 * One contiguous row of a forward kind. out may equal x (in place). Returns the row's
 * logsumexp (meaningful for CSM_LOGSUMEXP).
 */
static double CSM_SFX(csm_row_forward)(int kind, const REAL *x, const uint8_t *mask, REAL *out, csm_intp n,
                                       const csm_temp *tp)
{
    CSM_SFX(csm_stats) st;
    CSM_SFX(csm_row_scan)(x, mask, n, &st);
    if (CSM_SFX(csm_row_is_special)(&st, tp))
        return CSM_SFX(csm_special_row)(kind, x, 1, mask, 1, out, 1, n, &st);
    st.k = CSM_SFX(csm_row_find)(x, mask, n, st.m);
    st.s = CSM_SFX(csm_row_expsum)(x, mask, kind == CSM_SOFTMAX ? out : NULL, n, st.m, st.k, tp);
    if (kind == CSM_SOFTMAX) {
        CSM_SFX(csm_row_scale)(out, n, (REAL)csm_dd_inv_1p(st.s));
        return 0.0;
    }
    double lse = csm_dd_log1p(st.s);
    if (kind == CSM_LOG_SOFTMAX) {
        CSM_SFX(csm_row_logsub)(x, mask, out, n, st.m, (REAL)lse, tp);
        return 0.0;
    }
    return (double)st.m + lse;
}
