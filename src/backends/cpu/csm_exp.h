/*
 * csm_exp.h - the vectorised exp of the C core (generic over REAL; see csm_real.h).
 *
 * csm_vexp_t(dh, dl, range) = exp(dh + dl), where dl is a small correction (the rounding
 * error of x - max, or of (x - max) / tau). Folding dl into the reduced argument costs
 * one add and is what makes softmax accurate to a few ulp: exp amplifies an absolute
 * error in its argument into the same relative error in the result.
 *
 * Method: k = round(d / ln2), r = d - k ln2 (Cody-Waite, exact first step), exp(r) =
 * 1 + r + r^2 P(r) with P a minimax polynomial (common/csm_expconst.h, shared with the
 * CUDA kernels), scaled by 2^k built in the exponent bits. Arguments are clamped to
 * [lo, hi] beyond which the result is 0 or inf, so -inf -> 0, +inf -> inf, and NaN
 * propagates (the clamps are max/min instructions that return their second operand, the
 * argument, where it is NaN). Subnormal results and overflow take a second scaling step
 * so that the only rounding is the final, correct one. Error: < 1 ulp
 * (tests/test_accuracy.py measures it through softmax against mpmath and an
 * extended-precision oracle; docs/design.md, "Accuracy").
 *
 * The sums of exps take exp(d) 2^CSM_ESCALE instead (csm_vexp_sc): the power of two is
 * part of the exponent that is added anyway, so it costs nothing, and a term far below
 * the max stays a normal number while it is summed instead of losing its digits as a
 * subnormal. The sum is unscaled once, per row (csm_rows.h, csm_long.h, csm_cols.h).
 * CSM_ESCALE leaves room for the arguments up to CSM_LAZY (60) that the blocked and
 * column sums take: e^60 2^40 < FLT_MAX.
 *
 * Float builds also have csm_vlog1p_d, log1p in double lanes: the row groups of
 * csm_short.h take log1p(S') for all their rows at once rather than through libm's
 * scalar log1p per row.
 */

#if REAL_IS_F32
#define EXP_LO CSM_EXP_F32_LO
#define EXP_HI CSM_EXP_F32_HI
#define EXP_LOG2E CSM_EXP_F32_LOG2E
#define EXP_MAGIC CSM_EXP_F32_MAGIC
#define EXP_LN2_HI CSM_EXP_F32_LN2_HI
#define EXP_LN2_LO CSM_EXP_F32_LN2_LO
#define EXP_KMIN (-126)
#define EXP_KMAX 127
#define EXP_NPOLY CSM_EXP_F32_NPOLY
#define EXP_BOUND 87.0 /* exp(-87) is still normal, with room for the correction term */
#define CSM_ESCALE 40  /* exp(d) 2^40 is normal for d >= -115 */
#define CSM_EUNSCALE 0x1p-40 /* 2^-CSM_ESCALE: unscales a sum of csm_vexp_sc's terms */
static const float csm_exp_poly[EXP_NPOLY] = {CSM_EXP_F32_POLY};
#else
#define EXP_LO CSM_EXP_F64_LO
#define EXP_HI CSM_EXP_F64_HI
#define EXP_LOG2E CSM_EXP_F64_LOG2E
#define EXP_MAGIC CSM_EXP_F64_MAGIC
#define EXP_LN2_HI CSM_EXP_F64_LN2_HI
#define EXP_LN2_LO CSM_EXP_F64_LN2_LO
#define EXP_KMIN (-1022)
#define EXP_KMAX 1023
#define EXP_NPOLY CSM_EXP_F64_NPOLY
#define EXP_BOUND 708.0
#define CSM_ESCALE 128 /* exp(d) 2^128 is normal for d >= -796 */
#define CSM_EUNSCALE 0x1p-128
static const double csm_exp_poly[EXP_NPOLY] = {CSM_EXP_F64_POLY};
#endif

/* 2^k for integer lanes k in the normal exponent range */
static inline VR csm_vpow2i(VI k)
{
    return (VR)((k + R_EXP_BIAS) << R_MANT_BITS);
}

/* how far below the max a row may reach for the CSM_EXP_BOUNDED variant */
static const double csm_exp_bound = EXP_BOUND;

/*
 * exp(dh + dl) 2^scale, by the range the caller can promise (constants at every call site):
 *   CSM_EXP_ANY      any arguments
 *   CSM_EXP_NONPOS   dh <= 0, -inf or NaN (x - max): no overflow side; with a scale, dh
 *                    up to CSM_LAZY
 *   CSM_EXP_BOUNDED  dh in [-87, 0] (float) / [-708, 0] (double), finite: the result is
 *                    normal, so no clamps and no range check (rows whose min and max the
 *                    scan has seen within that distance)
 * scale: 0 or CSM_ESCALE. The clamps move with it, so that -inf still gives 0 and the
 * result is 0 or inf exactly where exp(d) 2^scale rounds to them.
 */
CSM_INLINE VR csm_vexp_sc(VR dh, VR dl, const int range, const int scale)
{
    VR x = dh;
    if (range != CSM_EXP_BOUNDED) {
        /* NaN stays NaN: VMAX returns its second operand */
        x = VMAX(VSPLAT((REAL)((double)EXP_LO - scale * 0.69314718055994531)), x);
        if (range == CSM_EXP_ANY) x = VMIN(VSPLAT((REAL)((double)EXP_HI - scale * 0.69314718055994531)), x);
        /* past a clamp (and for NaN) the correction is meaningless, even NaN from inf - inf */
        dl = (VR)((VI)dl & (x == dh));
    }

    VR t = VFMA(x, VSPLAT(EXP_LOG2E), VSPLAT(EXP_MAGIC));
    VR kf = t - VSPLAT(EXP_MAGIC);
    VR r = VFMA(kf, VSPLAT(-EXP_LN2_HI), x) + VFMA(kf, VSPLAT(-EXP_LN2_LO), dl);

    VR p = VSPLAT(csm_exp_poly[0]);
    for (int i = 1; i < EXP_NPOLY; i++) p = VFMA(p, r, VSPLAT(csm_exp_poly[i]));
    VR e = VSPLAT(1) + VFMA(p, r * r, r);

    VI k = (VI)t - (VI)VSPLAT(EXP_MAGIC) + (VIS)scale;
    if (range == CSM_EXP_BOUNDED) return e * csm_vpow2i(k);
    VI outside = k < EXP_KMIN;
    if (range == CSM_EXP_ANY) outside |= k > EXP_KMAX;
    if (__builtin_expect(!VANY(outside), 1)) return e * csm_vpow2i(k);
    /* subnormal result or overflow: two exact factors, so only the last product rounds */
    VI k1 = k >> 1;
    VI k2 = k - k1;
    return (e * csm_vpow2i(k1)) * csm_vpow2i(k2);
}

/* exp(dh + dl), unscaled */
CSM_INLINE VR csm_vexp_t(VR dh, VR dl, const int range)
{
    return csm_vexp_sc(dh, dl, range, 0);
}

/* exp(dh + dl) for dh <= 0 (or NaN, -inf): the softmax case, x - max */
CSM_INLINE VR csm_vexp_neg(VR dh, VR dl)
{
    return csm_vexp_t(dh, dl, CSM_EXP_NONPOS);
}

static inline VR csm_vexp(VR x)
{
    return csm_vexp_t(x, VSPLAT(0), CSM_EXP_ANY);
}

/*
 * The anchored exp, for the rows the scan shows to be tame: no mask, tau = 1, every entry
 * within CSM_ANCHOR_MAX of 0 and within exp's normal range (EXP_BOUND) below the max.
 * There exp(x_j) itself is reduced, from x_j, which is exact, rather than exp(x_j - m),
 * whose argument carries the rounding error of x_j - m (csm_vdiff's two_diff and the
 * correction's fold: the one-vector loop of a stored row is 28 vector instructions on
 * the bounded general path, 19 anchored on AVX-512 and 21 on AVX2). With
 * k_m = round(m / ln2) and r_m = m - k_m ln2,
 *     exp(x_j - m) = exp(x_j) 2^-k_m e^-r_m,
 * so the vector loop computes a_j = exp(x_j) 2^(CSM_ESCALE - k_m) (csm_vexp_anchored: the
 * power of two goes into the exponent, which is built anyway; AVX-512's vscalef does
 * both in one instruction) and the row's factor u = 2^-CSM_ESCALE e^-r_m, in double
 * (csm_vanchor_d, a group's rows at once; csm_anchor_of for one), takes the sums and the stored exps
 * back to exp(x_j - m). Every a_j is normal (2^(CSM_ESCALE - 127) and up), so there are no
 * clamps and no range checks.
 * Error: the reduction's first step is exact (k LN2_HI is exact, and x - k LN2_HI by
 * Sterbenz), LN2_LO's own rounding adds |k| 2^-37 <= 2^-27 for |x| <= CSM_ANCHOR_MAX, and u
 * is good to 2^-50: the result is the general path's exp to well within an ulp. Float rows
 * only: a double row's u would need a double-double exp per row (csm_dd_exp), which costs
 * more than a short row; double rows keep the general path.
 */
#if REAL_IS_F32
#define CSM_ANCHOR 1
#define CSM_ANCHOR_MAX 512.0
#else
#define CSM_ANCHOR 0
#define CSM_ANCHOR_MAX 0.0
#endif

/* exp(x) 2^kc for |x| <= CSM_ANCHOR_MAX, kc an integer (lane-wise the same) that keeps
   the result normal */
CSM_INLINE VR csm_vexp_anchored(VR x, VR kc)
{
    const VR t = VFMA(x, VSPLAT(EXP_LOG2E), VSPLAT(EXP_MAGIC));
    const VR kf = t - VSPLAT(EXP_MAGIC);
    const VR r = VFMA(kf, VSPLAT(-EXP_LN2_LO), VFMA(kf, VSPLAT(-EXP_LN2_HI), x));
    VR p = VSPLAT(csm_exp_poly[0]);
    for (int i = 1; i < EXP_NPOLY; i++) p = VFMA(p, r, VSPLAT(csm_exp_poly[i]));
    const VR e = VSPLAT(1) + VFMA(p, r * r, r);
#if CSM_HAVE_SCALEF
    return VSCALEF(e, kf + kc);
#else
    return e * csm_vpow2i((VI)t - (VI)VSPLAT(EXP_MAGIC) + __builtin_convertvector(kc, VI));
#endif
}

/* the anchors of the double lanes m (|m| <= CSM_ANCHOR_MAX): k_m, and u = 2^-CSM_ESCALE
   e^-r_m with e^-r_m as 1 + r + r^2 P(r) by the double exp's polynomial (|r_m| <= ln(2)/2),
   within 2^-52 (double lanes exist in every build) */
static inline csm_vd csm_vanchor_d(csm_vd m, csm_vd *km)
{
    static const double c[CSM_EXP_F64_NPOLY] = {CSM_EXP_F64_POLY};
    const csm_vd z = (csm_vd){0};
    *km = csm_fma_d(m, z + 1.4426950408889634074, z + CSM_EXP_F64_MAGIC) - CSM_EXP_F64_MAGIC;
    const csm_vd r = csm_fma_d(*km, z + 0x1.62e42fefa39efp-1, -m); /* -r_m */
    csm_vd p = z + c[0];
    for (int i = 1; i < CSM_EXP_F64_NPOLY; i++) p = csm_fma_d(p, r, z + c[i]);
    return (1.0 + csm_fma_d(p, r * r, r)) * CSM_EUNSCALE;
}

/* one row's anchor: kc = CSM_ESCALE - k_m for csm_vexp_anchored, and u */
typedef struct {
    REAL kc;
    double u;
} csm_anchor;

static inline csm_anchor csm_anchor_of(REAL m)
{
    csm_vd km;
    const csm_vd u = csm_vanchor_d((csm_vd){0} + (double)m, &km);
    csm_anchor a;
    a.kc = (REAL)(CSM_ESCALE - km[0]);
    a.u = u[0];
    return a;
}

#if REAL_IS_F32
/*
 * log1p(x) for finite x >= 0, lane-wise in double, within a few units in the last place
 * of double (a float result rounds it once more). u = 1 + x rounded, c = (1 + x) - u
 * exactly; u = 2^k m with m in [sqrt(1/2), sqrt(2)); log m = 2 atanh(s), s = (m - 1) /
 * (m + 1), |s| <= 0.172, by its series to s^21 (the next term is below 2^-60 of the sum);
 * log1p(x) = k ln2 + log m + c / u, ln2 as a pair whose high part has 32 trailing zero
 * bits (k ln2_hi is exact).
 */
static inline csm_vd csm_vlog1p_d(csm_vd x)
{
    const csm_vd one = (csm_vd){0} + 1.0;
    const csm_vd u = one + x;
    const csm_vd c = x - (u - one);
    const csm_vi64 bits = (csm_vi64)u;
    csm_vi64 k = (bits >> 52) - 1023; /* u >= 1 is normal */
    csm_vd m = (csm_vd)((bits & 0x000FFFFFFFFFFFFFLL) | 0x3FF0000000000000LL);
    const csm_vi64 big = m > (csm_vd){0} + 0x1.6a09e667f3bcdp+0;
    m = (csm_vd)(((csm_vi64)(m * 0.5) & big) | ((csm_vi64)m & ~big));
    k -= big; /* a comparison's true lanes are -1 */
    const csm_vd kd = (csm_vd)(k + 0x4330000000000000LL) - 0x1p52; /* 0 <= k < 2^52 */
    const csm_vd s = (m - one) / (m + one), z = s * s;
    csm_vd p = (csm_vd){0} + 2.0 / 21.0;
    for (int j = 9; j >= 1; j--) p = p * z + 2.0 / (2 * j + 1);
    const csm_vd logm = s * 2.0 + s * (z * p);
    return kd * 0x1.62e42p-1 + (logm + (kd * 0x1.fdf473de6af28p-22 + c / u));
}
#endif

#undef EXP_LO
#undef EXP_HI
#undef EXP_LOG2E
#undef EXP_MAGIC
#undef EXP_LN2_HI
#undef EXP_LN2_LO
#undef EXP_KMIN
#undef EXP_KMAX
#undef EXP_NPOLY
#undef EXP_BOUND
