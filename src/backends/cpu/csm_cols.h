/*
 * csm_cols.h - forward ops along a non-last axis, generic over REAL (include after
 * csm_rows.h).
 *
 * When the softmax axis is strided and the next dimension is contiguous, a vector holds
 * VL neighbouring rows ("columns") and walks down the softmax axis: every load is a
 * contiguous vector, nothing is transposed, and each lane carries its own max, argmax
 * and sum. The passes and the arithmetic are those of csm_rows.h, lane-wise; lanes that
 * turn out special (NaN, infinite max, fully masked, tau = +inf) are rewritten afterwards
 * by csm_special_row.
 *
 * Layout of one panel (element strides): x[i * sx + l], out[i * so + l],
 * mask[i * smk + l * sml] with sml 0 (one mask byte per i) or 1.
 */

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

CSM_INLINE void CSM_SFX(csm_cols_t)(int kind, const REAL *x, csm_intp sx, const uint8_t *mask, csm_intp smk,
                                    csm_intp sml, REAL *out, csm_intp so, csm_intp n, const csm_temp *tp,
                                    const int has_mask, const int scaled, double *lse_out)
{
    const double tau = tp->tau, inv_tau = tp->inv_tau;
    /* scan: per-lane max and first index of the max */
    VR mv = VSPLAT(-R_INF);
    VI kv = (VI){0} - 1, anyv = {0};
    for (csm_intp i = 0; i < n; i++) {
        VR v = CSM_SFX(csm_load)(x + i * sx, VL, 0);
        if (has_mask) {
            VI mk = CSM_SFX(csm_col_mask)(mask + i * smk, sml);
            anyv |= mk;
            v = VSEL(mk, v, VSPLAT(-R_INF));
        }
        VI gt = v > mv;
        mv = VSEL(gt, v, mv);
        kv = (kv & ~gt) | (((VI){0} + (VIS)i) & gt);
    }
    if (!has_mask) anyv = (VI){0} - (VIS)(n > 0);
    VI special = ~anyv | ~((mv > VSPLAT(-R_INF)) & (mv < VSPLAT(R_INF)));
    if (tp->tau_inf) special = (VI){0} - 1;

    /* expsum, lane-wise, each lane relative to its own max; special lanes compute garbage
       here (no traps, no stores outside the panel) and are rewritten below */
    CSM_SFX(csm_vacc) acc = {{0}, {0}};
    const int work = VANY(~special);
    if (work) {
        const VR ref = VSEL(special, VSPLAT(0), mv);
        for (csm_intp i = 0; i < n; i++) {
            VR v = CSM_SFX(csm_col_load)(x + i * sx, has_mask ? mask + i * smk : NULL, sml, has_mask);
            VR dh, dl;
            CSM_SFX(csm_vdiff)(v, ref, tau, inv_tau, scaled, &dh, &dl);
            VR e = CSM_SFX(csm_vexp2_neg)(dh, dl); /* x - max <= 0 in the lanes that count */
            if (kind == CSM_SOFTMAX) CSM_SFX(csm_store)(out + i * so, e, VL);
            e = VSEL(kv == (VIS)i, VSPLAT(0), e);
            CSM_SFX(csm_acc_add)(&acc, e);
        }
    }

    /* per-lane S' and the finishing factor; a NaN sum marks the lane special */
    VR fin = VSPLAT(0); /* softmax: 1 / (1 + S'); log_softmax: log1p(S') */
    for (int l = 0; l < VL; l++) {
#if REAL_IS_F32
        csm_dd s = csm_dd_make(l < CSM_VLD ? acc.a[l] : acc.b[l - CSM_VLD], 0.0);
#else
        csm_dd s = csm_two_sum(acc.a[l], -acc.b[l]);
#endif
        if (s.hi != s.hi) special[l] = -1;
        if (special[l]) continue;
        double L = csm_dd_log1p(s);
        fin[l] = kind == CSM_SOFTMAX ? (REAL)csm_dd_inv_1p(s) : (REAL)L;
        if (kind == CSM_LOGSUMEXP) lse_out[l] = (double)mv[l] + L;
    }
    if (work && kind == CSM_SOFTMAX) {
        for (csm_intp i = 0; i < n; i++) {
            VR v = CSM_SFX(csm_load)(out + i * so, VL, 0);
            CSM_SFX(csm_store)(out + i * so, v * fin, VL);
        }
    } else if (work && kind == CSM_LOG_SOFTMAX) {
        const VR ref = VSEL(special, VSPLAT(0), mv);
        for (csm_intp i = 0; i < n; i++) {
            VR v = CSM_SFX(csm_col_load)(x + i * sx, has_mask ? mask + i * smk : NULL, sml, has_mask);
            CSM_SFX(csm_store)(out + i * so, CSM_SFX(csm_logp)(v, ref, fin, (REAL)inv_tau, scaled), VL);
        }
    }

    /* rewrite the special lanes (in place their x may be overwritten, but only where the
       lane is NaN, which stays NaN) */
    if (VANY(special)) {
        for (int l = 0; l < VL; l++) {
            if (!special[l]) continue;
            CSM_SFX(csm_stats) st = {0};
            st.m = mv[l];
            st.k = -1;
            st.any = anyv[l] != 0;
            double lse = CSM_SFX(csm_special_row)(kind, x + l, sx, has_mask ? mask + l * sml : NULL, smk, out + l, so,
                                                  n, &st);
            if (kind == CSM_LOGSUMEXP) lse_out[l] = lse;
        }
    }
}

/* VL columns of a panel; lse_out receives VL logsumexps for CSM_LOGSUMEXP */
static void CSM_SFX(csm_cols_forward)(int kind, const REAL *x, csm_intp sx, const uint8_t *mask, csm_intp smk,
                                      csm_intp sml, REAL *out, csm_intp so, csm_intp n, const csm_temp *tp,
                                      double *lse_out)
{
    switch ((mask != NULL) | (tp->scaled << 1)) {
    case 0: CSM_SFX(csm_cols_t)(kind, x, sx, NULL, 0, 0, out, so, n, tp, 0, 0, lse_out); break;
    case 1: CSM_SFX(csm_cols_t)(kind, x, sx, mask, smk, sml, out, so, n, tp, 1, 0, lse_out); break;
    case 2: CSM_SFX(csm_cols_t)(kind, x, sx, NULL, 0, 0, out, so, n, tp, 0, 1, lse_out); break;
    default: CSM_SFX(csm_cols_t)(kind, x, sx, mask, smk, sml, out, so, n, tp, 1, 1, lse_out); break;
    }
}
