/*
 * csm_cols.h - forward ops along a non-last axis, generic over REAL (include after
 * csm_rows.h).
 *
 * When the softmax axis is strided and the next dimension is contiguous, each vector
 * lane is its own softmax ("column"), and CSM_COLV vectors side by side walk down the
 * softmax axis together: every load is a full contiguous stretch of cache lines, nothing
 * is transposed, and the data is streamed twice at most -- a column block of a large
 * array does not stay in cache (its rows are a power-of-two stride apart), so no pass
 * may count on reading it back from there.
 *
 * Pass 1 keeps, per lane, the max m and the sum S of
 * exp((x - r) / tau) over the other entries, relative to a reference r: the lane's first
 * finite value, moved (rarely) when an entry exceeds it by more than CSM_LAZY. When a new
 * max arrives, the old max's exp joins S and the new one's is kept aside (emax), so S
 * always leaves the max out -- the precision of log1p(S') that the row kernels have.
 * Softmax writes each exp to out as it goes. Pass 2 writes the results: softmax scales
 * the stored exps (and recomputes, from x, those stored before a lane's reference moved);
 * log_softmax computes (x - m) / tau - log1p(S') from x. Lanes that turn out special
 * (NaN, infinite max, fully masked, tau = +inf) are rewritten by csm_special_row.
 *
 * Layout of one panel (element strides): x[i * sx + l], out[i * so + l],
 * mask[i * smk + l * sml] with sml 0 (one mask byte per i) or 1.
 */
#ifndef CSM_COLV
#define CSM_COLV (256 / CSM_VB) /* vectors side by side: four 64-byte lines of each row */
#define CSM_COLPF 16            /* rows ahead to prefetch */
#endif

CSM_INLINE VI CSM_SFX(csm_col_mask)(const uint8_t *mask, csm_intp sml)
{
    if (sml) return VMASK(mask);
    return (VI){0} - (VIS)(mask[0] != 0); /* one byte for every lane */
}

CSM_INLINE VR CSM_SFX(csm_col_load)(const REAL *x, const uint8_t *mask, csm_intp sml, const int has_mask)
{
    VR v = CSM_SFX(csm_load)(x, VL, 0);
    if (has_mask) v = VSEL(CSM_SFX(csm_col_mask)(mask, sml), v, VSPLAT(-R_INF));
    return v;
}

typedef struct {
    VR m, r, emax; /* max, reference, exp((m - r) / tau) */
    VI moved;      /* the row where r last moved (exps stored before it are stale) */
    VI any;
    CSM_SFX(csm_vacc) s;
} CSM_SFX(csm_colstate);

/* r moves to v in the lanes of `mv` (rare): S and emax are rescaled in double-double */
static void CSM_SFX(csm_col_move)(CSM_SFX(csm_colstate) *c, VR v, VI mv, csm_intp i, const csm_temp *tp)
{
    for (int l = 0; l < VL; l++) {
        if (!mv[l]) continue;
        csm_dd f = csm_dd_expdiff((double)c->r[l], (double)v[l], tp->tau);
#if REAL_IS_F32
        double *sl = l < CSM_VLD ? &c->s.a[l] : &c->s.b[l - CSM_VLD];
        *sl = csm_dd_mul_d(f, *sl).hi;
#else
        csm_dd sv = csm_dd_mul(csm_two_sum(c->s.a[l], -c->s.b[l]), f);
        c->s.a[l] = sv.hi;
        c->s.b[l] = -sv.lo;
#endif
        c->emax[l] = (REAL)((double)c->emax[l] * f.hi);
        c->r[l] = v[l];
        c->moved[l] = (VIS)i;
    }
}

/* pass 1 over the block: the per-lane stats; softmax stores the exps into out */
CSM_INLINE void CSM_SFX(csm_cols_stats_t)(int kind, const REAL *x, csm_intp sx, const uint8_t *mask, csm_intp smk,
                                          csm_intp sml, REAL *out, csm_intp so, csm_intp n, const int nv,
                                          CSM_SFX(csm_colstate) *cs, const csm_temp *tp, const int has_mask,
                                          const int scaled)
{
    const double tau = tp->tau, inv_tau = tp->inv_tau;
    const REAL lazy = (REAL)CSM_LAZY;
    /* r starts at the most negative finite value: the first finite entry then lies far
       above it and moves it there (csm_col_move), while -inf entries give exp(-inf) = 0
       against it -- no test for "not yet set" in the loop */
    const REAL unset = REAL_IS_F32 ? -3.4028234663852886e38f : -1.7976931348623157e308;
    for (int u = 0; u < nv; u++) {
        CSM_SFX(csm_colstate) *c = &cs[u];
        c->m = VSPLAT(-R_INF);
        c->r = VSPLAT(unset);
        c->emax = VSPLAT(0);
        c->moved = (VI){0};
        c->any = (VI){0} - (VIS)(!has_mask && n > 0);
        c->s.a = c->s.b = (csm_vd){0};
    }
    for (csm_intp i = 0; i < n; i++) {
        /* rows are a large stride apart (hardware prefetchers stop at page ends): ask for
           the lines CSM_COLPF rows ahead */
        if (i + CSM_COLPF < n)
            for (int u = 0; u < nv * VL; u += 64 / (int)sizeof(REAL)) __builtin_prefetch(x + (i + CSM_COLPF) * sx + u);
        for (int u = 0; u < nv; u++) {
            CSM_SFX(csm_colstate) *c = &cs[u];
            VR v = CSM_SFX(csm_load)(x + i * sx + u * VL, VL, 0);
            if (has_mask) {
                VI mk = CSM_SFX(csm_col_mask)(mask + i * smk + u * VL * sml, sml);
                c->any |= mk;
                v = VSEL(mk, v, VSPLAT(-R_INF));
            }
            VR over = v - c->r; /* +inf past the unset reference: that moves it */
            if (scaled) over *= (REAL)inv_tau;
            VI far = over > lazy; /* false for NaN; a +inf entry makes its lane special anyway */
            if (__builtin_expect(VANY(far), 0)) CSM_SFX(csm_col_move)(c, v, far, i, tp);
            VR dh, dl;
            CSM_SFX(csm_vdiff)(v, c->r, tau, inv_tau, scaled, &dh, &dl);
            /* arguments are at most CSM_LAZY: far from overflow, so the variant without
               the overflow side will do */
            VR e = CSM_SFX(csm_vexp2_neg)(dh, dl);
            if (kind == CSM_SOFTMAX && out) CSM_SFX(csm_store)(out + i * so + u * VL, e, VL);
            VI nm = v > c->m; /* a new max: the old one's exp joins S, this one's waits in emax */
            CSM_SFX(csm_acc_add)(&c->s, VSEL(nm, c->emax, e));
            c->emax = VSEL(nm, e, c->emax);
            c->m = VSEL(nm, v, c->m);
        }
    }
}

CSM_INLINE void CSM_SFX(csm_cols_forward_t)(int kind, const REAL *x, csm_intp sx, const uint8_t *mask, csm_intp smk,
                                            csm_intp sml, REAL *out, csm_intp so, csm_intp n, const int nv,
                                            const csm_temp *tp, const int has_mask, const int scaled,
                                            double *lse_out)
{
    CSM_SFX(csm_colstate) cs[CSM_COLV];
    /* in place, pass 2 may need x after pass 1 would have overwritten it (stale exps are
       recomputed from x): then softmax stores nothing in pass 1 and computes every exp
       again in pass 2 */
    const int store = kind == CSM_SOFTMAX && !((const REAL *)out == x && so == sx);
    CSM_SFX(csm_cols_stats_t)(kind, x, sx, mask, smk, sml, store ? out : NULL, so, n, nv, cs, tp, has_mask, scaled);
    const double tau = tp->tau, inv_tau = tp->inv_tau;
    VR fin[CSM_COLV], fresh_c[CSM_COLV];
    VI special[CSM_COLV];
    csm_intp last_move = 0;
    for (int u = 0; u < nv; u++) {
        CSM_SFX(csm_colstate) *c = &cs[u];
        special[u] = ~c->any | ~((c->m > VSPLAT(-R_INF)) & (c->m < VSPLAT(R_INF)));
        if (tp->tau_inf) special[u] = (VI){0} - 1;
        fin[u] = fresh_c[u] = VSPLAT(0);
        for (int l = 0; l < VL; l++) {
#if REAL_IS_F32
            csm_dd s = csm_dd_make(l < CSM_VLD ? c->s.a[l] : c->s.b[l - CSM_VLD], 0.0);
#else
            csm_dd s = csm_two_sum(c->s.a[l], -c->s.b[l]);
#endif
            if (s.hi != s.hi) special[u][l] = -1; /* an unmasked NaN */
            if (special[u][l]) continue;
            csm_dd f = c->r[l] == c->m[l] ? csm_dd_make(1.0, 0.0)
                                          : csm_dd_expdiff((double)c->r[l], (double)c->m[l], tp->tau);
            csm_dd sp = csm_dd_mul(s, f); /* S' relative to the max */
            double L = csm_dd_log1p(sp), inv = csm_dd_inv_1p(sp);
            if (kind == CSM_SOFTMAX) {
                fin[u][l] = (REAL)(f.hi * inv);  /* stored exps are relative to r */
                fresh_c[u][l] = (REAL)inv;       /* recomputed ones to m */
                if (c->moved[l] > last_move) last_move = c->moved[l];
            } else {
                fin[u][l] = (REAL)L;
            }
            if (kind == CSM_LOGSUMEXP) lse_out[u * VL + l] = (double)c->m[l] + L;
        }
    }

    /* pass 2 */
    if (kind == CSM_SOFTMAX) {
        for (csm_intp i = 0; i < n; i++) {
            if (i + CSM_COLPF < n)
                for (int u = 0; u < nv * VL; u += 64 / (int)sizeof(REAL)) {
                    __builtin_prefetch(out + (i + CSM_COLPF) * so + u, 1);
                    if (!store) __builtin_prefetch(x + (i + CSM_COLPF) * sx + u);
                }
            for (int u = 0; u < nv; u++) {
                REAL *o = out + i * so + u * VL;
                VR e;
                if (store) {
                    e = CSM_SFX(csm_load)(o, VL, 0) * fin[u];
                    if (i < last_move) { /* exps stored before a lane's reference moved: recompute */
                        VI stale = cs[u].moved > (VIS)i;
                        if (VANY(stale)) {
                            VR v = CSM_SFX(csm_col_load)(x + i * sx + u * VL,
                                                         has_mask ? mask + i * smk + u * VL * sml : NULL, sml, has_mask);
                            VR dh, dl;
                            CSM_SFX(csm_vdiff)(v, VSEL(special[u], VSPLAT(0), cs[u].m), tau, inv_tau, scaled, &dh, &dl);
                            e = VSEL(stale, CSM_SFX(csm_vexp2_neg)(dh, dl) * fresh_c[u], e);
                        }
                    }
                } else { /* in place: every exp from x; special lanes keep x for their rewrite */
                    VR xv = CSM_SFX(csm_load)(x + i * sx + u * VL, VL, 0);
                    VR v = has_mask ? VSEL(CSM_SFX(csm_col_mask)(mask + i * smk + u * VL * sml, sml), xv,
                                           VSPLAT(-R_INF))
                                    : xv;
                    VR dh, dl;
                    CSM_SFX(csm_vdiff)(v, VSEL(special[u], VSPLAT(0), cs[u].m), tau, inv_tau, scaled, &dh, &dl);
                    e = VSEL(special[u], xv, CSM_SFX(csm_vexp2_neg)(dh, dl) * fresh_c[u]);
                }
                /* exps stored relative to r times a factor rounded separately can land an
                   ulp above 1 where the exact value is 1 - tiny: never above 1 (VMIN
                   keeps NaN, its second operand) */
                CSM_SFX(csm_store)(o, VMIN(VSPLAT(1), e), VL);
            }
        }
    } else if (kind == CSM_LOG_SOFTMAX) {
        for (csm_intp i = 0; i < n; i++) {
            if (i + CSM_COLPF < n)
                for (int u = 0; u < nv * VL; u += 64 / (int)sizeof(REAL)) {
                    __builtin_prefetch(x + (i + CSM_COLPF) * sx + u);
                    __builtin_prefetch(out + (i + CSM_COLPF) * so + u, 1);
                }
            for (int u = 0; u < nv; u++) {
                VR xv = CSM_SFX(csm_load)(x + i * sx + u * VL, VL, 0);
                VR v = has_mask ? VSEL(CSM_SFX(csm_col_mask)(mask + i * smk + u * VL * sml, sml), xv, VSPLAT(-R_INF))
                                : xv;
                VR o = CSM_SFX(csm_logp)(v, VSEL(special[u], VSPLAT(0), cs[u].m), fin[u], (REAL)inv_tau, scaled);
                /* special lanes keep x (in place it is read again by their rewrite) */
                CSM_SFX(csm_store)(out + i * so + u * VL, VSEL(special[u], xv, o), VL);
            }
        }
    }

    /* rewrite the special lanes (their x is intact: pass 2 kept it in place) */
    for (int u = 0; u < nv; u++) {
        if (!VANY(special[u])) continue;
        for (int l = 0; l < VL; l++) {
            if (!special[u][l]) continue;
            const csm_intp col = u * VL + l;
            CSM_SFX(csm_stats) st = {0};
            st.m = cs[u].m[l];
            st.k = -1;
            st.any = cs[u].any[l] != 0;
            double lse = CSM_SFX(csm_special_row)(kind, x + col, sx, has_mask ? mask + col * sml : NULL, smk,
                                                  out ? out + col : NULL, so, n, &st, tp->tau_inf);
            if (kind == CSM_LOGSUMEXP) lse_out[col] = lse;
        }
    }
}

/* nv (compile-time) vectors of columns: their state lives in registers */
CSM_INLINE void CSM_SFX(csm_cols_nv)(int kind, const REAL *x, csm_intp sx, const uint8_t *mask, csm_intp smk,
                                     csm_intp sml, REAL *out, csm_intp so, csm_intp n, const int nv,
                                     const csm_temp *tp, double *lse_out)
{
    switch ((mask != NULL) | (tp->scaled << 1)) {
    case 0: CSM_SFX(csm_cols_forward_t)(kind, x, sx, NULL, 0, 0, out, so, n, nv, tp, 0, 0, lse_out); break;
    case 1: CSM_SFX(csm_cols_forward_t)(kind, x, sx, mask, smk, sml, out, so, n, nv, tp, 1, 0, lse_out); break;
    case 2: CSM_SFX(csm_cols_forward_t)(kind, x, sx, NULL, 0, 0, out, so, n, nv, tp, 0, 1, lse_out); break;
    default: CSM_SFX(csm_cols_forward_t)(kind, x, sx, mask, smk, sml, out, so, n, nv, tp, 1, 1, lse_out); break;
    }
}

/* nv * VL columns of a panel (nv <= CSM_COLV); lse_out receives their logsumexps. The
   full unit is instantiated for its constant width (the loops over its vectors unroll). */
static void CSM_SFX(csm_cols_forward)(int kind, const REAL *x, csm_intp sx, const uint8_t *mask, csm_intp smk,
                                      csm_intp sml, REAL *out, csm_intp so, csm_intp n, int nv, const csm_temp *tp,
                                      double *lse_out)
{
    if (nv == CSM_COLV)
        CSM_SFX(csm_cols_nv)(kind, x, sx, mask, smk, sml, out, so, n, CSM_COLV, tp, lse_out);
    else
        for (int u = 0; u < nv; u++) /* the narrower last unit: a vector at a time */
            CSM_SFX(csm_cols_nv)(kind, x + u * VL, sx, mask ? mask + u * VL * sml : NULL, smk, sml,
                                 out ? out + u * VL : NULL, so, n, 1, tp, lse_out + u * VL);
}

/* ---- the backward passes along a strided axis: lane-wise sums, then dx (csm_grad.h) ---- */
CSM_INLINE void CSM_SFX(csm_cols_backward_t)(int kind, const REAL *g, csm_intp sg, const REAL *y, csm_intp sy,
                                             const uint8_t *mask, csm_intp smk, csm_intp sml, REAL *out, csm_intp so,
                                             csm_intp n, const int nv, const csm_temp *tp, const int has_mask)
{
    CSM_SFX(csm_vacc) acc[CSM_COLV];
    for (int u = 0; u < nv; u++) acc[u].a = acc[u].b = (csm_vd){0};
    for (csm_intp i = 0; i < n; i++) {
        if (i + CSM_COLPF < n)
            for (int u = 0; u < nv * VL; u += 64 / (int)sizeof(REAL)) {
                __builtin_prefetch(g + (i + CSM_COLPF) * sg + u);
                if (kind == CSM_SOFTMAX_BWD) __builtin_prefetch(y + (i + CSM_COLPF) * sy + u);
            }
        for (int u = 0; u < nv; u++) {
            VR v = CSM_SFX(csm_load)(g + i * sg + u * VL, VL, 0);
            if (kind == CSM_SOFTMAX_BWD) v *= CSM_SFX(csm_load)(y + i * sy + u * VL, VL, 0);
            if (has_mask) v = VSEL(CSM_SFX(csm_col_mask)(mask + i * smk + u * VL * sml, sml), v, VSPLAT(0));
            CSM_SFX(csm_acc_add_any)(&acc[u], v);
        }
    }
    REAL sum_hi[CSM_COLV * VL], sum_lo[CSM_COLV * VL];
    double in_double[CSM_COLV * VL]; /* the columns csm_bwd_split refuses: their sums, else NaN */
    int any_in_double = 0;
    for (int u = 0; u < nv; u++) {
        for (int l = 0; l < VL; l++) {
#if REAL_IS_F32
            csm_dd s = csm_dd_make(l < CSM_VLD ? acc[u].a[l] : acc[u].b[l - CSM_VLD], 0.0);
#else
            csm_dd s = csm_finite(acc[u].a[l]) ? csm_two_sum(acc[u].a[l], -acc[u].b[l]) : csm_dd_make(acc[u].a[l], 0.0);
#endif
            const int ok = CSM_SFX(csm_bwd_split)(s, &sum_hi[u * VL + l], &sum_lo[u * VL + l]);
            in_double[u * VL + l] = ok ? NAN : s.hi + s.lo;
            any_in_double |= !ok;
        }
    }
    const VR inv = VSPLAT((REAL)tp->inv_tau);
    for (csm_intp i = 0; i < n; i++) {
        if (i + CSM_COLPF < n)
            for (int u = 0; u < nv * VL; u += 64 / (int)sizeof(REAL)) {
                __builtin_prefetch(g + (i + CSM_COLPF) * sg + u);
                __builtin_prefetch(y + (i + CSM_COLPF) * sy + u);
            }
        for (int u = 0; u < nv; u++) {
            VR gv = CSM_SFX(csm_load)(g + i * sg + u * VL, VL, 0), yv = CSM_SFX(csm_load)(y + i * sy + u * VL, VL, 0);
            VR o = CSM_SFX(csm_bwd_value)(kind, gv, yv, CSM_SFX(csm_load)(sum_hi + u * VL, VL, 0),
                                          CSM_SFX(csm_load)(sum_lo + u * VL, VL, 0), inv);
            if (__builtin_expect(any_in_double, 0))
                for (int l = 0; l < VL; l++)
                    if (in_double[u * VL + l] == in_double[u * VL + l])
                        o[l] = CSM_SFX(csm_bwd_in_double)(kind, gv[l], yv[l], in_double[u * VL + l], tp->inv_tau);
            if (has_mask) o = VSEL(CSM_SFX(csm_col_mask)(mask + i * smk + u * VL * sml, sml), o, VSPLAT(0));
            CSM_SFX(csm_store)(out + i * so + u * VL, o, VL);
        }
    }
}

static void CSM_SFX(csm_cols_backward)(int kind, const REAL *g, csm_intp sg, const REAL *y, csm_intp sy,
                                       const uint8_t *mask, csm_intp smk, csm_intp sml, REAL *out, csm_intp so,
                                       csm_intp n, int nv, const csm_temp *tp)
{
    if (nv == CSM_COLV) {
        if (mask)
            CSM_SFX(csm_cols_backward_t)(kind, g, sg, y, sy, mask, smk, sml, out, so, n, CSM_COLV, tp, 1);
        else
            CSM_SFX(csm_cols_backward_t)(kind, g, sg, y, sy, NULL, 0, 0, out, so, n, CSM_COLV, tp, 0);
        return;
    }
    for (int u = 0; u < nv; u++) /* the narrower last unit: a vector at a time */
        CSM_SFX(csm_cols_backward_t)(kind, g + u * VL, sg, y + u * VL, sy, mask ? mask + u * VL * sml : NULL, smk, sml,
                                     out + u * VL, so, n, 1, tp, mask != NULL);
}
