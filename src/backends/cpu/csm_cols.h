/*
 * csm_cols.h - forward ops along a non-last axis, generic over REAL (include after
 * csm_rows.h).
 *
 * When the softmax axis is strided and the next dimension is contiguous, a vector holds
 * VL neighbouring rows ("columns") and walks down the softmax axis: every load is a
 * contiguous vector, nothing is transposed, and each lane carries its own max, argmax,
 * NaN/any flags and sum. The passes and the arithmetic are those of csm_rows.h, lane-wise;
 * lanes that turn out special are rewritten afterwards by csm_special_row.
 *
 * Layout of one panel (element strides): x[i * sx + l], out[i * so + l],
 * mask[i * smk + l * sml] with sml 0 (one mask byte per i) or 1.
 */

CSM_INLINE VI CSM_SFX(csm_col_mask)(const uint8_t *mask, csm_intp sml)
{
    if (sml) return CSM_SFX(csm_load_mask)(mask, VL);
    return (VI){0} - (VIS)(mask[0] != 0); /* one byte for every lane */
}

CSM_INLINE void CSM_SFX(csm_cols_pass)(int kind, const REAL *x, csm_intp sx, const uint8_t *mask, csm_intp smk,
                                       csm_intp sml, REAL *out, csm_intp so, csm_intp n, const csm_temp *tp,
                                       int scaled, double *lse_out)
{
    /* scan: per-lane max, first index of the max, NaN and any flags */
    VR mv = VSPLAT(-R_INF);
    VI kv = (VI){0} - 1, nanv = {0}, anyv = {0};
    for (csm_intp i = 0; i < n; i++) {
        VR v;
        memcpy(&v, x + i * sx, sizeof v);
        if (mask) {
            VI mk = CSM_SFX(csm_col_mask)(mask + i * smk, sml);
            anyv |= mk;
            v = VSEL(mk, v, VSPLAT(-R_INF));
        }
        nanv |= v != v;
        VI gt = v > mv;
        mv = VSEL(gt, v, mv);
        kv = (kv & ~gt) | (((VI){0} + (VIS)i) & gt);
    }
    if (!mask) anyv = (VI){0} - (VIS)(n > 0);
    VI special = nanv | ~anyv | ~((mv > VSPLAT(-R_INF)) & (mv < VSPLAT(R_INF)));
    if (tp->tau_inf) special = (VI){0} - 1;

    /* expsum, lane-wise, each lane relative to its own max */
    CSM_SFX(csm_vacc) acc = {{0}, {0}};
    if (VANY(~special)) {
        for (csm_intp i = 0; i < n; i++) {
            VR v;
            memcpy(&v, x + i * sx, sizeof v);
            if (mask) v = VSEL(CSM_SFX(csm_col_mask)(mask + i * smk, sml), v, VSPLAT(-R_INF));
            VR dh, dl;
            CSM_SFX(csm_vdiff)(v, mv, tp, scaled, &dh, &dl);
            VR e = CSM_SFX(csm_vexp2)(dh, dl);
            if (kind == CSM_SOFTMAX) memcpy(out + i * so, &e, sizeof e);
            e = VSEL(kv == (VIS)i, VSPLAT(0), e);
            CSM_SFX(csm_acc_add)(&acc, e);
        }
    }

    /* finish the normal lanes */
    VR fin = VSPLAT(0); /* softmax: 1 / (1 + S'); log_softmax: log1p(S') */
    for (int l = 0; l < VL; l++) {
#if REAL_IS_F32
        csm_dd s = csm_dd_make(acc.s[l], 0.0);
#else
        csm_dd s = csm_two_sum(acc.s[l], -acc.c[l]);
#endif
        if (special[l]) {
            fin[l] = 0;
            continue;
        }
        double L = csm_dd_log1p(s);
        fin[l] = kind == CSM_SOFTMAX ? (REAL)csm_dd_inv_1p(s) : (REAL)L;
        if (kind == CSM_LOGSUMEXP) lse_out[l] = (double)mv[l] + L;
    }
    if (kind == CSM_SOFTMAX) {
        for (csm_intp i = 0; i < n; i++) {
            VR v;
            memcpy(&v, out + i * so, sizeof v);
            v *= fin;
            memcpy(out + i * so, &v, sizeof v);
        }
    } else if (kind == CSM_LOG_SOFTMAX) {
        for (csm_intp i = 0; i < n; i++) {
            VR v;
            memcpy(&v, x + i * sx, sizeof v);
            if (mask) v = VSEL(CSM_SFX(csm_col_mask)(mask + i * smk, sml), v, VSPLAT(-R_INF));
            VR dh, dl;
            CSM_SFX(csm_vdiff)(v, mv, tp, scaled, &dh, &dl);
            dl = VSEL(dh > VSPLAT(-R_INF), dl, VSPLAT(0));
            VR o = (dh - fin) + dl;
            memcpy(out + i * so, &o, sizeof o);
        }
    }

    /* rewrite the special lanes */
    if (VANY(special)) {
        for (int l = 0; l < VL; l++) {
            if (!special[l]) continue;
            CSM_SFX(csm_stats) st;
            st.m = mv[l];
            st.k = -1;
            st.nan = nanv[l] != 0;
            st.any = anyv[l] != 0;
            st.s = csm_dd_make(0.0, 0.0);
            double lse = CSM_SFX(csm_special_row)(kind, x + l, sx, mask ? mask + l * sml : NULL, smk, out + l, so, n,
                                                  &st);
            if (kind == CSM_LOGSUMEXP) lse_out[l] = lse;
        }
    }
}

/* VL columns of a panel; lse_out receives VL logsumexps for CSM_LOGSUMEXP */
static void CSM_SFX(csm_cols_forward)(int kind, const REAL *x, csm_intp sx, const uint8_t *mask, csm_intp smk,
                                      csm_intp sml, REAL *out, csm_intp so, csm_intp n, const csm_temp *tp,
                                      double *lse_out)
{
    if (tp->scaled)
        CSM_SFX(csm_cols_pass)(kind, x, sx, mask, smk, sml, out, so, n, tp, 1, lse_out);
    else
        CSM_SFX(csm_cols_pass)(kind, x, sx, mask, smk, sml, out, so, n, tp, 0, lse_out);
}
