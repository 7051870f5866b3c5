/*
 * csm_expconst.h - the constants of csoftmax's exp, shared by the C core's vector exp
 * (cpu/csm_exp.h) and the CUDA kernels' scalar one: exp(r) = 1 + r + r^2 P(r) on
 * |r| <= ln(2)/2 with P a minimax polynomial (tools/gen_exp_coeffs.py derives it), after
 * the Cody-Waite reduction d = k ln2 + r. Arguments are clamped to [LO, HI], beyond which
 * the result is 0 or inf.
 */
#ifndef CSM_EXPCONST_H
#define CSM_EXPCONST_H

/* float: P of degree 5 (c7 .. c2, highest first), max rel. error of P 2.9e-9 */
#define CSM_EXP_F32_POLY                                                                                               \
    1.985812702e-04f, 1.393448645e-03f, 8.333361815e-03f, 4.166645746e-02f, 1.666666652e-01f, 5.000000014e-01f
#define CSM_EXP_F32_NPOLY 6
#define CSM_EXP_F32_LO (-104.0f)            /* exp(-104) < 2^-150: rounds to 0 */
#define CSM_EXP_F32_HI (89.0f)              /* exp(89) > FLT_MAX */
#define CSM_EXP_F32_LOG2E 1.44269504088896341f
#define CSM_EXP_F32_MAGIC 12582912.0f       /* 1.5 * 2^23: adding it rounds to an integer */
#define CSM_EXP_F32_LN2_HI 0.693359375f     /* 9 significant bits: k * LN2_HI is exact */
#define CSM_EXP_F32_LN2_LO (-2.12194440e-4f)

/* double: P of degree 10 (c12 .. c2), max rel. error of P 3.0e-18 */
#define CSM_EXP_F64_POLY                                                                                               \
    2.08896257227519033e-09, 2.51062284624525233e-08, 2.75573508357601103e-07, 2.75572529573065877e-06,               \
        2.48015872423518955e-05, 1.98412698767540735e-04, 1.38888888889203356e-03, 8.33333333332558074e-03,           \
        4.16666666666666158e-02, 1.66666666666666713e-01, 5.00000000000000000e-01
#define CSM_EXP_F64_NPOLY 11
#define CSM_EXP_F64_LO (-746.0)             /* exp(-746) < 2^-1075: rounds to 0 */
#define CSM_EXP_F64_HI (710.0)              /* exp(710) > DBL_MAX */
#define CSM_EXP_F64_LOG2E 1.4426950408889634074
#define CSM_EXP_F64_MAGIC 6755399441055744.0 /* 1.5 * 2^52 */
#define CSM_EXP_F64_LN2_HI 6.93147180369123816490e-01 /* 32 significant bits */
#define CSM_EXP_F64_LN2_LO 1.90821492927058770002e-10

#endif /* CSM_EXPCONST_H */
