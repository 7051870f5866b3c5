/*
 * csm_dd.h - scalar double-double arithmetic for the per-row bookkeeping, shared by the C
 * core and the CUDA kernels (csm_portable.h: plain C, valid C++ and CUDA).
 *
 * A row's sum S' = sum_{j != argmax} exp(x_j - max) is carried as an unevaluated pair
 * hi + lo. Pieces of one row (threads, blocks, chunks) are merged with
 * S' = S1' + (1 + S2') * exp(m2 - m1), and the factor is computed here to ~1e-30, so a
 * row's accuracy does not depend on how it was split. None of this runs per element.
 */
#ifndef CSM_DD_H
#define CSM_DD_H

#include "csm_portable.h"

/* finite: neither inf nor NaN */
CSM_FN int csm_finite(double v) { return v - v == 0.0; }

typedef struct {
    double hi, lo;
} csm_dd;

CSM_FN csm_dd csm_dd_make(double hi, double lo)
{
    csm_dd r = {hi, lo};
    return r;
}

/* s + e == a + b exactly */
CSM_FN csm_dd csm_two_sum(double a, double b)
{
    double s = a + b;
    double bb = s - a;
    double e = (a - (s - bb)) + (b - bb);
    return csm_dd_make(s, e);
}

/* requires |a| >= |b| (or a == 0) */
CSM_FN csm_dd csm_fast_two_sum(double a, double b)
{
    double s = a + b;
    return csm_dd_make(s, b - (s - a));
}

/* p + e == a * b exactly (barring underflow) */
CSM_FN csm_dd csm_two_prod(double a, double b)
{
    double p = a * b;
    return csm_dd_make(p, fma(a, b, -p));
}

CSM_FN csm_dd csm_dd_add(csm_dd a, csm_dd b)
{
    csm_dd s = csm_two_sum(a.hi, b.hi);
    if (!csm_finite(s.hi)) return csm_dd_make(s.hi, 0.0); /* an infinite sum stays infinite, not NaN */
    csm_dd t = csm_two_sum(a.lo, b.lo);
    s.lo += t.hi;
    s = csm_fast_two_sum(s.hi, s.lo);
    s.lo += t.lo;
    return csm_fast_two_sum(s.hi, s.lo);
}

CSM_FN csm_dd csm_dd_add_d(csm_dd a, double b)
{
    csm_dd s = csm_two_sum(a.hi, b);
    if (!csm_finite(s.hi)) return csm_dd_make(s.hi, 0.0);
    s.lo += a.lo;
    return csm_fast_two_sum(s.hi, s.lo);
}

/* a compensated running sum (Ogita, Rump and Oishi's Sum2): s.hi the plain sum, s.lo the
   sum of its rounding errors (two_sum's), so one add per term lies on the dependency
   chain; the total is csm_dd_sum2_total (where the sum is +-inf or NaN: that) */
CSM_FN csm_dd csm_dd_sum2_add(csm_dd s, double v)
{
    double t = s.hi + v, bb = t - s.hi;
    s.lo += (s.hi - (t - bb)) + (v - bb);
    s.hi = t;
    return s;
}

CSM_FN double csm_dd_sum2_total(csm_dd s) { return csm_finite(s.hi) ? s.hi + s.lo : s.hi; }

CSM_FN csm_dd csm_dd_mul(csm_dd a, csm_dd b)
{
    csm_dd p = csm_two_prod(a.hi, b.hi);
    p.lo += a.hi * b.lo + a.lo * b.hi;
    return csm_fast_two_sum(p.hi, p.lo);
}

CSM_FN csm_dd csm_dd_mul_d(csm_dd a, double b)
{
    csm_dd p = csm_two_prod(a.hi, b);
    p.lo += a.lo * b;
    return csm_fast_two_sum(p.hi, p.lo);
}

/* a / b for b > 0 finite */
CSM_FN csm_dd csm_dd_div_d(csm_dd a, double b)
{
    double q = a.hi / b;
    if (!csm_finite(q)) return csm_dd_make(q, 0.0); /* overflow (or inf/NaN in): no low part */
    double r = fma(-q, b, a.hi) + a.lo; /* exact remainder of the leading quotient, plus a.lo */
    return csm_fast_two_sum(q, r / b);
}

/* exp(a) to about 1e-30 relative; the caller's arguments are <= ~0 and finite, but
   -inf, NaN, underflow and overflow are handled. */
CSM_FN csm_dd csm_dd_exp(csm_dd a)
{
    if (a.hi != a.hi) return csm_dd_make(a.hi, 0.0);
    if (a.hi < -746.0) return csm_dd_make(0.0, 0.0);
    if (a.hi > 710.0) return csm_dd_make(CSM_INF, 0.0);
    /* ln 2 in three parts; the first two have 32 significant bits, so k * part is exact */
    const double ln2_1 = 0x1.62e42fee00000p-1;   /* ln 2 truncated to 32 bits */
    const double ln2_2 = 0x1.a39ef35600000p-33;  /* the next 32 bits */
    const double ln2_3 = 4.275175589747649e-20;  /* the rest, rounded */
    double k = rint(a.hi * 1.4426950408889634074);
    csm_dd r = csm_two_sum(a.hi, -k * ln2_1);
    r = csm_dd_add_d(r, -k * ln2_2);
    r = csm_dd_add_d(r, a.lo - k * ln2_3);
    /* exp(r) = exp(r / 256)^256; Taylor to degree 10 at |r/256| < 0.0014 */
    r.hi = ldexp(r.hi, -8);
    r.lo = ldexp(r.lo, -8);
    csm_dd term = csm_dd_make(1.0, 0.0), sum = csm_dd_make(1.0, 0.0);
    for (int i = 1; i <= 10; i++) {
        term = csm_dd_div_d(csm_dd_mul(term, r), (double)i);
        sum = csm_dd_add(sum, term);
    }
    for (int i = 0; i < 8; i++) sum = csm_dd_mul(sum, sum);
    int ki = (int)k;
    /* two steps keep the intermediate normal at both ends of the range */
    int k1 = ki / 2, k2 = ki - k1;
    sum.hi = ldexp(ldexp(sum.hi, k1), k2);
    sum.lo = ldexp(ldexp(sum.lo, k1), k2);
    return sum;
}

/* a * exp(d) for d <= 0 (d may be -inf): exp(d) = 2^k exp(r) with |r| <= ln(2)/2, and the
   power of two applied last, so that a product in the subnormal range is rounded once
   instead of vanishing where exp(d) alone would underflow (rescaling a running sum to a
   new, much larger maximum keeps every term that is representable) */
CSM_FN csm_dd csm_dd_mul_exp(csm_dd a, csm_dd d)
{
    if (d.hi != d.hi || a.hi != a.hi) return csm_dd_make(d.hi + a.hi, 0.0);
    if (d.hi < -1.0e4) return csm_dd_make(0.0, 0.0); /* below 2^-14000: nothing survives */
    const double ln2_1 = 0x1.62e42fee00000p-1, ln2_2 = 0x1.a39ef35600000p-33, ln2_3 = 4.275175589747649e-20;
    double k = rint(d.hi * 1.4426950408889634074); /* |k| < 2^14: k * ln2_1, k * ln2_2 exact */
    csm_dd r = csm_two_sum(d.hi, -k * ln2_1);
    r = csm_dd_add_d(r, -k * ln2_2);
    r = csm_dd_add_d(r, d.lo - k * ln2_3);
    csm_dd p = csm_dd_mul(a, csm_dd_exp(r));
    int ki = (int)k;
    return csm_dd_make(ldexp(p.hi, ki), ldexp(p.lo, ki));
}

/* a * exp((x - y) / tau), tau > 0 finite, by csm_dd_mul_exp (the power of two last: a
   rescaled sum far below its new reference is rounded once, not lost with an exp that
   underflows); where x - y overflows, x lies far below y: 0 (NaN stays NaN) */
CSM_FN csm_dd csm_dd_mul_expdiff(csm_dd a, double x, double y, double tau)
{
    csm_dd d = csm_two_sum(x, -y);
    if (!csm_finite(d.hi)) return a.hi != a.hi ? a : csm_dd_make(0.0, 0.0);
    if (tau != 1.0) d = csm_dd_div_d(d, tau);
    return csm_dd_mul_exp(a, d);
}

/* exp((a - b) / tau) in double-double, for a <= b; tau > 0 finite */
CSM_FN csm_dd csm_dd_expdiff(double a, double b, double tau)
{
    csm_dd d = csm_two_sum(a, -b);
    if (!csm_finite(d.hi)) return csm_dd_make(0.0, 0.0); /* a - b overflowed: far below */
    if (tau != 1.0) d = csm_dd_div_d(d, tau);
    return csm_dd_exp(d);
}

/* log1p(a) for a >= 0 */
CSM_FN double csm_dd_log1p(csm_dd a)
{
    return log1p(a.hi) + a.lo / (1.0 + a.hi);
}

/* 1 / (1 + a) for a >= 0 */
CSM_FN double csm_dd_inv_1p(csm_dd a)
{
    csm_dd s = csm_dd_add_d(a, 1.0);
    double q = 1.0 / s.hi;
    return q - q * (s.lo * q); /* first-order correction for the low part */
}

#endif /* CSM_DD_H */
