/*
 * csm_cols.h - the kernels along a non-last axis (generic over REAL; see csm_real.h):
 * the forward ops and the backward passes.
 *
 * When the softmax axis is strided and the next dimension is contiguous, each vector
 * lane is its own softmax ("column"), and CSM_COLV vectors side by side walk down the
 * softmax axis together: every load is a full contiguous stretch of cache lines, nothing
 * is transposed, and the data is streamed twice at most -- a column block of a large
 * array does not stay in cache (its rows are a power-of-two stride apart), so no pass
 * may count on reading it back from there.
 *
 * Forward, pass 1 keeps, per lane, the max m and the sum S of exp((x - r) / tau) over the
 * other entries, relative to a reference r: the lane's first finite value, moved (rarely)
 * when an entry exceeds it by more than CSM_LAZY. When a new max arrives, the old max's
 * exp joins S and the new one's is kept aside (emax), so S always leaves the max out --
 * the precision of log1p(S') that the row kernels have. Softmax writes each exp to out as
 * it goes. Pass 2 writes the results: softmax scales the stored exps (and recomputes,
 * from x, those stored before a lane's reference moved); log_softmax computes
 * (x - m) / tau - log1p(S') from x. Lanes that turn out special (NaN, infinite max, fully
 * masked, tau = +inf) are rewritten by csm_special_row. S and emax hold exps scaled by
 * 2^CSM_ESCALE (csm_exp.h: terms far below the max keep their digits), unscaled once per
 * lane when settled; a moved reference rescales them with the power of two last
 * (csm_dd_mul_expdiff), so a sum far below the new reference is rounded once, not lost.
 * Backward: lane-wise sums, then dx (csm_grad.h's element formula).
 *
 * Layout of one panel (element strides): x[i * sx + l], out[i * so + l],
 * mask[i * smk + l * sml] with sml 0 (one mask byte per i) or 1.
 */
#define CSM_COLV (256 / CSM_VB) /* vectors side by side: four 64-byte lines of each row */
#define CSM_COLPF 16            /* rows ahead to prefetch */

CSM_INLINE VI csm_col_mask(const uint8_t *mask, csm_intp sml)
{
    if (sml) return VMASK(mask);
    return (VI){0} - (VIS)(mask[0] != 0); /* one byte for every lane */
}

/* the vector at x, its masked lanes -inf */
CSM_INLINE VR csm_col_load(const REAL *x, const uint8_t *mask, csm_intp sml, const int has_mask)
{
    VR v = csm_load(x, VL, 0);
    if (has_mask) v = VSEL(csm_col_mask(mask, sml), v, VSPLAT(-R_INF));
    return v;
}

/* rows are a large stride apart (hardware prefetchers stop at page ends): ask for the
   lines of row i + CSM_COLPF of a panel of nv vectors */
CSM_INLINE void csm_col_prefetch(const REAL *p, csm_intp stride, csm_intp i, csm_intp n, int nv, const int write)
{
    if (i + CSM_COLPF >= n) return;
    for (int u = 0; u < nv * VL; u += 64 / (int)sizeof(REAL)) {
        if (write)
            __builtin_prefetch(p + (i + CSM_COLPF) * stride + u, 1);
        else
            __builtin_prefetch(p + (i + CSM_COLPF) * stride + u);
    }
}

/* lane l of an accumulator as a double-double (float rows: a plain double sum; double
   rows: the Kahan pair a - b) */
CSM_INLINE csm_dd csm_acc_lane(const csm_vacc *acc, int l)
{
#if REAL_IS_F32
    return csm_dd_make(l < CSM_VLD ? acc->a[l] : acc->b[l - CSM_VLD], 0.0);
#else
    return csm_two_sum(acc->a[l], -acc->b[l]);
#endif
}

typedef struct {
    VR m, r, emax; /* max, reference, exp((m - r) / tau) */
    VI moved;      /* the row where r last moved (exps stored before it are stale) */
    VI any;
    csm_vacc s;
} csm_colstate;

/* r moves to v in the lanes of `mv` (rare): S and emax are rescaled in double-double */
static void csm_col_move(csm_colstate *c, VR v, VI mv, csm_intp i, const csm_temp *tp)
{
    for (int l = 0; l < VL; l++) {
        if (!mv[l]) continue;
        const double r = (double)c->r[l], to = (double)v[l];
        const csm_dd sv = csm_dd_mul_expdiff(csm_acc_lane(&c->s, l), r, to, tp->tau);
#if REAL_IS_F32
        *(l < CSM_VLD ? &c->s.a[l] : &c->s.b[l - CSM_VLD]) = sv.hi;
#else
        c->s.a[l] = sv.hi;
        c->s.b[l] = -sv.lo;
#endif
        c->emax[l] = (REAL)csm_dd_mul_expdiff(csm_dd_make((double)c->emax[l], 0.0), r, to, tp->tau).hi;
        c->r[l] = v[l];
        c->moved[l] = (VIS)i;
    }
}

/* ---- forward ---- */
/* pass 1 over the block: the per-lane stats; softmax stores the exps into out */
CSM_INLINE void csm_cols_stats_t(int kind, const REAL *x, csm_intp sx, const uint8_t *mask, csm_intp smk,
                                 csm_intp sml, REAL *out, csm_intp so, csm_intp n, const int nv, csm_colstate *cs,
                                 const csm_temp *tp, const int has_mask, const int scaled)
{
    const double tau = tp->tau, inv_tau = tp->inv_tau;
    const REAL lazy = (REAL)CSM_LAZY;
    /* r starts at the most negative finite value: the first finite entry then lies far
       above it and moves it there (csm_col_move), while -inf entries give exp(-inf) = 0
       against it -- no test for "not yet set" in the loop */
    for (int u = 0; u < nv; u++) {
        csm_colstate *c = &cs[u];
        c->m = VSPLAT(-R_INF);
        c->r = VSPLAT(-R_MAX);
        c->emax = VSPLAT(0);
        c->moved = (VI){0};
        c->any = (VI){0} - (VIS)(!has_mask && n > 0);
        c->s.a = c->s.b = (csm_vd){0};
    }
    for (csm_intp i = 0; i < n; i++) {
        csm_col_prefetch(x, sx, i, n, nv, 0);
        for (int u = 0; u < nv; u++) {
            csm_colstate *c = &cs[u];
            VR v = csm_load(x + i * sx + u * VL, VL, 0);
            if (has_mask) {
                VI mk = csm_col_mask(mask + i * smk + u * VL * sml, sml);
                c->any |= mk;
                v = VSEL(mk, v, VSPLAT(-R_INF));
            }
            VR over = v - c->r; /* +inf past the unset reference: that moves it */
            if (scaled) over *= (REAL)inv_tau;
            VI far = over > lazy; /* false for NaN; a +inf entry makes its lane special anyway */
            if (__builtin_expect(VANY(far), 0)) csm_col_move(c, v, far, i, tp);
            VR dh, dl;
            csm_vdiff(v, c->r, tau, inv_tau, scaled, &dh, &dl);
            /* arguments are at most CSM_LAZY: far from overflow, so the variant without
               the overflow side will do; softmax stores the exps unscaled */
            VR e = csm_vexp_sc(dh, dl, CSM_EXP_NONPOS, CSM_ESCALE);
            if (kind == CSM_SOFTMAX && out) csm_store(out + i * so + u * VL, e * VSPLAT(CSM_EUNSCALE), VL);
            VI nm = v > c->m; /* a new max: the old one's exp joins S, this one's waits in emax */
            csm_acc_add(&c->s, VSEL(nm, c->emax, e));
            c->emax = VSEL(nm, e, c->emax);
            c->m = VSEL(nm, v, c->m);
        }
    }
}

/* what pass 2 needs of each vector of lanes, from pass 1's stats */
typedef struct {
    VI special;  /* lanes to rewrite by the semantics table */
    VR fin;      /* softmax: the factor of the stored exps (relative to r); log_softmax: log1p(S') */
    VR fresh;    /* softmax: the factor of exps recomputed relative to m */
    csm_intp last_move; /* the latest row at which a lane's reference moved (softmax) */
} csm_colfinish;

static void csm_cols_settle(int kind, const csm_colstate *cs, int nv, const csm_temp *tp, csm_colfinish *fs,
                            double *lse_out)
{
    for (int u = 0; u < nv; u++) {
        const csm_colstate *c = &cs[u];
        csm_colfinish *f = &fs[u];
        f->special = ~c->any | ~((c->m > VSPLAT(-R_INF)) & (c->m < VSPLAT(R_INF)));
        if (tp->tau_inf) f->special = (VI){0} - 1;
        f->fin = f->fresh = VSPLAT(0);
        f->last_move = 0;
        for (int l = 0; l < VL; l++) {
            const csm_dd s = csm_acc_lane(&c->s, l);
            if (s.hi != s.hi) f->special[l] = -1; /* an unmasked NaN */
            if (f->special[l]) continue;
            const int moved = c->r[l] != c->m[l];
            csm_dd sp = moved ? csm_dd_mul_expdiff(s, (double)c->r[l], (double)c->m[l], tp->tau) : s;
            sp = csm_dd_make(sp.hi * CSM_EUNSCALE, sp.lo * CSM_EUNSCALE); /* S' relative to the max */
            const double L = csm_dd_log1p(sp), inv = csm_dd_inv_1p(sp);
            if (kind == CSM_SOFTMAX) {
                const double factor = moved ? csm_dd_expdiff((double)c->r[l], (double)c->m[l], tp->tau).hi : 1.0;
                f->fin[l] = (REAL)(factor * inv); /* stored exps are relative to r */
                f->fresh[l] = (REAL)inv;             /* recomputed ones to m */
                if (c->moved[l] > f->last_move) f->last_move = c->moved[l];
            } else {
                f->fin[l] = (REAL)L;
            }
            if (kind == CSM_LOGSUMEXP) lse_out[u * VL + l] = (double)c->m[l] + L;
        }
    }
}

/* exp((v - m) / tau) * c per lane; special lanes compute against 0 (their values are
   rewritten later) */
CSM_INLINE VR csm_col_softmax(VR v, const csm_colstate *c, const csm_colfinish *f, const csm_temp *tp,
                              const int scaled)
{
    VR dh, dl;
    csm_vdiff(v, VSEL(f->special, VSPLAT(0), c->m), tp->tau, tp->inv_tau, scaled, &dh, &dl);
    return csm_vexp_neg(dh, dl) * f->fresh;
}

/* pass 2 of softmax. store: pass 1 stored the exps into out (not in place) */
CSM_INLINE void csm_cols_softmax_t(const REAL *x, csm_intp sx, const uint8_t *mask, csm_intp smk, csm_intp sml,
                                   REAL *out, csm_intp so, csm_intp n, const int nv, const csm_colstate *cs,
                                   const csm_colfinish *fs, const csm_temp *tp, int store, const int has_mask,
                                   const int scaled)
{
    csm_intp last_move = 0;
    for (int u = 0; u < nv; u++) last_move = fs[u].last_move > last_move ? fs[u].last_move : last_move;
    for (csm_intp i = 0; i < n; i++) {
        csm_col_prefetch(out, so, i, n, nv, 1);
        if (!store) csm_col_prefetch(x, sx, i, n, nv, 0);
        for (int u = 0; u < nv; u++) {
            REAL *o = out + i * so + u * VL;
            const uint8_t *mk = has_mask ? mask + i * smk + u * VL * sml : NULL;
            VR e;
            if (store) {
                e = csm_load(o, VL, 0) * fs[u].fin;
                if (i < last_move) { /* exps stored before a lane's reference moved: recompute */
                    VI stale = cs[u].moved > (VIS)i;
                    if (VANY(stale)) {
                        VR v = csm_col_load(x + i * sx + u * VL, mk, sml, has_mask);
                        e = VSEL(stale, csm_col_softmax(v, &cs[u], &fs[u], tp, scaled), e);
                    }
                }
            } else { /* in place: every exp from x; special lanes keep x for their rewrite */
                VR xv = csm_load(x + i * sx + u * VL, VL, 0);
                VR v = has_mask ? VSEL(csm_col_mask(mk, sml), xv, VSPLAT(-R_INF)) : xv;
                e = VSEL(fs[u].special, xv, csm_col_softmax(v, &cs[u], &fs[u], tp, scaled));
            }
            /* exps stored relative to r times a factor rounded separately can land an
               ulp above 1 where the exact value is 1 - tiny: never above 1 (VMIN
               keeps NaN, its second operand) */
            csm_store(o, VMIN(VSPLAT(1), e), VL);
        }
    }
}

/* pass 2 of log_softmax: (x - m) / tau - log1p(S') from x */
CSM_INLINE void csm_cols_logsoftmax_t(const REAL *x, csm_intp sx, const uint8_t *mask, csm_intp smk, csm_intp sml,
                                      REAL *out, csm_intp so, csm_intp n, const int nv, const csm_colstate *cs,
                                      const csm_colfinish *fs, const csm_temp *tp, const int has_mask,
                                      const int scaled)
{
    for (csm_intp i = 0; i < n; i++) {
        csm_col_prefetch(x, sx, i, n, nv, 0);
        csm_col_prefetch(out, so, i, n, nv, 1);
        for (int u = 0; u < nv; u++) {
            VR xv = csm_load(x + i * sx + u * VL, VL, 0);
            VR v = has_mask ? VSEL(csm_col_mask(mask + i * smk + u * VL * sml, sml), xv, VSPLAT(-R_INF)) : xv;
            VR o = csm_logp(v, VSEL(fs[u].special, VSPLAT(0), cs[u].m), fs[u].fin, (REAL)tp->inv_tau, scaled);
            /* special lanes keep x (in place it is read again by their rewrite) */
            csm_store(out + i * so + u * VL, VSEL(fs[u].special, xv, o), VL);
        }
    }
}

/* the special lanes, rewritten (their x is intact: pass 2 kept it in place) */
static void csm_cols_special(int kind, const REAL *x, csm_intp sx, const uint8_t *mask, csm_intp smk, csm_intp sml,
                             REAL *out, csm_intp so, csm_intp n, int nv, const csm_colstate *cs,
                             const csm_colfinish *fs, const csm_temp *tp, double *lse_out)
{
    for (int u = 0; u < nv; u++) {
        if (!VANY(fs[u].special)) continue;
        for (int l = 0; l < VL; l++) {
            if (!fs[u].special[l]) continue;
            const csm_intp col = u * VL + l;
            csm_stats st = {0};
            st.m = cs[u].m[l];
            st.k = -1;
            st.any = cs[u].any[l] != 0;
            double lse = csm_special_row(kind, x + col, sx, mask ? mask + col * sml : NULL, smk,
                                         out ? out + col : NULL, so, n, &st, tp->tau_inf);
            if (kind == CSM_LOGSUMEXP) lse_out[col] = lse;
        }
    }
}

CSM_INLINE void csm_cols_forward_t(int kind, const REAL *x, csm_intp sx, const uint8_t *mask, csm_intp smk,
                                   csm_intp sml, REAL *out, csm_intp so, csm_intp n, const int nv, const csm_temp *tp,
                                   const int has_mask, const int scaled, double *lse_out)
{
    csm_colstate cs[CSM_COLV];
    csm_colfinish fs[CSM_COLV];
    /* in place, pass 2 may need x after pass 1 would have overwritten it (stale exps are
       recomputed from x): then softmax stores nothing in pass 1 and computes every exp
       again in pass 2 */
    const int store = kind == CSM_SOFTMAX && !((const REAL *)out == x && so == sx);
    csm_cols_stats_t(kind, x, sx, mask, smk, sml, store ? out : NULL, so, n, nv, cs, tp, has_mask, scaled);
    csm_cols_settle(kind, cs, nv, tp, fs, lse_out);
    if (kind == CSM_SOFTMAX)
        csm_cols_softmax_t(x, sx, mask, smk, sml, out, so, n, nv, cs, fs, tp, store, has_mask, scaled);
    else if (kind == CSM_LOG_SOFTMAX)
        csm_cols_logsoftmax_t(x, sx, mask, smk, sml, out, so, n, nv, cs, fs, tp, has_mask, scaled);
    csm_cols_special(kind, x, sx, has_mask ? mask : NULL, smk, sml, out, so, n, nv, cs, fs, tp, lse_out);
}

/* nv (compile-time) vectors of columns: their state lives in registers */
CSM_INLINE void csm_cols_nv(int kind, const REAL *x, csm_intp sx, const uint8_t *mask, csm_intp smk, csm_intp sml,
                            REAL *out, csm_intp so, csm_intp n, const int nv, const csm_temp *tp, double *lse_out)
{
#define CSM_COLS(M, S)                                                                                                 \
    csm_cols_forward_t(kind, x, sx, (M) ? mask : NULL, (M) ? smk : 0, (M) ? sml : 0, out, so, n, nv, tp, M, S, lse_out)
    CSM_FLAGS2(mask != NULL, tp->scaled, CSM_COLS);
#undef CSM_COLS
}

/* nv * VL columns of a panel (nv <= CSM_COLV); lse_out receives their logsumexps. The
   full unit is instantiated for its constant width (the loops over its vectors unroll). */
static void csm_cols_forward(int kind, const REAL *x, csm_intp sx, const uint8_t *mask, csm_intp smk, csm_intp sml,
                             REAL *out, csm_intp so, csm_intp n, int nv, const csm_temp *tp, double *lse_out)
{
    if (nv == CSM_COLV)
        csm_cols_nv(kind, x, sx, mask, smk, sml, out, so, n, CSM_COLV, tp, lse_out);
    else
        for (int u = 0; u < nv; u++) /* the narrower last unit: a vector at a time */
            csm_cols_nv(kind, x + u * VL, sx, mask ? mask + u * VL * sml : NULL, smk, sml, out ? out + u * VL : NULL,
                        so, n, 1, tp, lse_out + u * VL);
}

/* ---- the backward passes: lane-wise sums, then dx (csm_grad.h) ---- */
CSM_INLINE void csm_cols_backward_t(int kind, const REAL *g, csm_intp sg, const REAL *y, csm_intp sy,
                                    const uint8_t *mask, csm_intp smk, csm_intp sml, REAL *out, csm_intp so,
                                    csm_intp n, const int nv, const csm_temp *tp, const int has_mask)
{
    csm_vacc acc[CSM_COLV];
    for (int u = 0; u < nv; u++) acc[u].a = acc[u].b = (csm_vd){0};
    for (csm_intp i = 0; i < n; i++) {
        csm_col_prefetch(g, sg, i, n, nv, 0);
        if (kind == CSM_SOFTMAX_BWD) csm_col_prefetch(y, sy, i, n, nv, 0);
        for (int u = 0; u < nv; u++) {
            VR v = csm_load(g + i * sg + u * VL, VL, 0);
            if (kind == CSM_SOFTMAX_BWD) v *= csm_load(y + i * sy + u * VL, VL, 0);
            if (has_mask) v = VSEL(csm_col_mask(mask + i * smk + u * VL * sml, sml), v, VSPLAT(0));
            csm_acc_add_any(&acc[u], v);
        }
    }
    REAL sum_hi[CSM_COLV * VL], sum_lo[CSM_COLV * VL];
    double in_double[CSM_COLV * VL]; /* the columns csm_bwd_split refuses: their sums, else NaN */
    int any_in_double = 0;
    for (int u = 0; u < nv; u++) {
        for (int l = 0; l < VL; l++) {
#if REAL_IS_F32
            const csm_dd s = csm_acc_lane(&acc[u], l);
#else
            /* a sum of user data may be infinite: then its compensation means nothing, and
               the running sums may have overflowed (csm_bwd_sum_rescaled) */
            csm_dd s = csm_finite(acc[u].a[l]) ? csm_acc_lane(&acc[u], l) : csm_dd_make(acc[u].a[l], 0.0);
            if (!csm_finite(s.hi))
                s = csm_bwd_sum_rescaled(kind, g + u * VL + l, sg, y + u * VL + l, sy,
                                         has_mask ? mask + (u * VL + l) * sml : NULL, smk, n);
#endif
            const int ok = csm_bwd_split(s, &sum_hi[u * VL + l], &sum_lo[u * VL + l]);
            in_double[u * VL + l] = ok ? NAN : s.hi + s.lo;
            any_in_double |= !ok;
        }
    }
    const VR inv = VSPLAT((REAL)tp->inv_tau);
    for (csm_intp i = 0; i < n; i++) {
        csm_col_prefetch(g, sg, i, n, nv, 0);
        csm_col_prefetch(y, sy, i, n, nv, 0);
        for (int u = 0; u < nv; u++) {
            VR gv = csm_load(g + i * sg + u * VL, VL, 0), yv = csm_load(y + i * sy + u * VL, VL, 0);
            VR o = csm_bwd_value(kind, gv, yv, csm_load(sum_hi + u * VL, VL, 0), csm_load(sum_lo + u * VL, VL, 0), inv, tp);
            if (__builtin_expect(any_in_double, 0))
                for (int l = 0; l < VL; l++)
                    if (in_double[u * VL + l] == in_double[u * VL + l])
                        o[l] = csm_bwd_in_double(kind, gv[l], yv[l], in_double[u * VL + l], tp);
            if (has_mask) o = VSEL(csm_col_mask(mask + i * smk + u * VL * sml, sml), o, VSPLAT(0));
            csm_store(out + i * so + u * VL, o, VL);
        }
    }
}

static void csm_cols_backward(int kind, const REAL *g, csm_intp sg, const REAL *y, csm_intp sy, const uint8_t *mask,
                              csm_intp smk, csm_intp sml, REAL *out, csm_intp so, csm_intp n, int nv,
                              const csm_temp *tp)
{
#define CSM_COLS_BWD(M, NV)                                                                                            \
    csm_cols_backward_t(kind, g, sg, y, sy, (M) ? mask : NULL, (M) ? smk : 0, (M) ? sml : 0, out, so, n, NV, tp, M)
    if (nv == CSM_COLV) {
#define CSM_COLS_BWD_FULL(M) CSM_COLS_BWD(M, CSM_COLV)
        CSM_FLAGS1(mask != NULL, CSM_COLS_BWD_FULL);
#undef CSM_COLS_BWD_FULL
        return;
    }
    for (int u = 0; u < nv; u++) /* the narrower last unit: a vector at a time */
        csm_cols_backward_t(kind, g + u * VL, sg, y + u * VL, sy, mask ? mask + u * VL * sml : NULL, smk, sml,
                            out + u * VL, so, n, 1, tp, mask != NULL);
#undef CSM_COLS_BWD
}
