/*
 * csoftmax_kernels.cu - the CUDA kernels of csoftmax's `cuda` backend.
 *
 * One templated source, compiled by NVRTC through cupy.RawModule, one module per kernel
 * instantiation, lazily (csoftmax/_backends/cuda.py names them and plans the launches).
 * The same source compiles as host C++ against tests/cuda_emu/emu.h, which runs the
 * kernels on the CPU in the test suite (CSM_EMULATE).
 *
 * Storage types T: csm_half (float16, computed in float), float, double. What a kernel
 * does per element is fixed at compile time: the kind K, the temperature mode TM (tau = 1;
 * 1/tau as a pair; 1/tau out of the compute type's range, so (x - m) / tau in double, by
 * division where 1/tau overflows) and the layout F (0: contiguous entries, no mask, 16-byte
 * accesses; CSM_F_GEN: any entry strides, an optional mask). The arithmetic (docs/design.md, "The CUDA kernels"):
 *   - float rows (float16, float32) compute in float only: x - m exactly by two_diff; our
 *     exp (csm_expconst.h's constants) returning z = exp(d) * 2^CSM_ZS_F, a normal float for
 *     every d down to where the term cannot matter, so a term far below the max keeps its
 *     precision while it is summed; terms summed in pairs, the pairs in float-float, widened
 *     to double once per lane; the row's 1/Z (or log1p(S')) in double once per row; then one
 *     IEEE multiply per output (subnormal results kept under CuPy's -ftz=true);
 *   - double rows the same in double (scale 2^CSM_ZS_D, Kahan-compensated lane sums,
 *     double-double merges: csm_dd.h, the C core's);
 *   - log_softmax and logsumexp leave the max entry out of S' by counting the entries equal
 *     to the max, so log_softmax's max entry is -log1p(S');
 *   - special rows (NaN, an infinite max, fully masked, tau = +inf) take csm_special.h's
 *     table, on a cold path that reloads the row.
 *
 * Kernels (cuda.py's planner chooses by layout and row length):
 *   csm_fwd_rows<T, G, NC, K, TM, F>   G lanes per row (G <= 32: several rows per warp;
 *                                      G > 32: a block per row), NC 16-byte pieces per
 *                                      lane, the row in registers, rows in a grid-stride loop
 *   csm_fwd_split_stats / _merge / _finish   rows too long for registers: per-chunk
 *                                      statistics, an exact merge per row, the outputs
 *   csm_fwd_cols<T, K, TM, F>          a strided softmax axis whose neighbour is contiguous:
 *                                      tiles of 32 columns x slices of rows, merged exactly
 *   csm_bwd_rows<T, G, NC, K, TM, F>   the two backward passes on the rows layout, loads first
 *   csm_bwd_long<T, K, TM, F>          the backward passes of rows too long for registers
 *   csm_xent_rows<T, G, NC, TM, F>     cross-entropy with class indices (no weights, smoothing
 *                                      or mask): loss log1p(S') + (m - x[label]) / tau and the
 *                                      gradient, one read and one write
 *   csm_xent_block<T>                  cross-entropy in general (double arithmetic)
 *   csm_jacobian<T>                    J[r, i, j] from softmax and log_softmax rows
 * Rows are addressed by a row stride and an entry stride (elements; 64-bit); contiguous
 * rows are read and written in 16-byte pieces aligned to 16 bytes (a row's first and last
 * pieces may be partial). Every scalar argument is a 64-bit integer or a double.
 */
#ifdef CSM_EMULATE
/* the host emulator provides the CUDA vocabulary */
#include "csm_half.h"
#else
#define CSM_DYNAMIC_SMEM(type, name) extern __shared__ type name[]
#endif

typedef long long i64;
struct csm_half {
    unsigned short bits;
};

#define CSM_INF __longlong_as_double(0x7ff0000000000000LL)
#define CSM_NAN __longlong_as_double(0x7ff8000000000000LL)
#define CSM_FLT_MAX 3.40282347e38f

/* the shared headers of the C core (src/backends/common), as device code */
#define CSM_FN __device__ inline
#include "csm_dd.h"
#include "csm_expconst.h"
#include "csm_kinds.h"
#include "csm_special.h"

/* ---- compile-time parameters ---- */
enum { CSM_TAU_ONE = 0, CSM_TAU_PAIR = 1, CSM_TAU_WIDE = 2 }; /* TM; cuda.py's _tau_mode chooses */
enum { CSM_F_GEN = 1 }; /* F: entries strided, a mask optional (else contiguous, no mask) */

/* the scaled exp: z = exp(d) 2^ZS is a normal number for every d >= ZLO; below ZLO a term
   is < 2^-189 (float) or < 2^-1139 (double) and cannot change any result */
#define CSM_ZS_F 64
#define CSM_ZLO_F (-131.0f)
#define CSM_ZDL_F 7.62939453125e-06f /* 2^-17: |dl| <= ulp(131) / 2 */
#define CSM_ZS_D 128
#define CSM_ZLO_D (-790.0)
#define CSM_ZDL_D 9.094947017729282e-13 /* 2^-40 */

/* ---- storage <-> compute types ---- */
template <typename T> struct csm_traits;
template <> struct csm_traits<float> {
    typedef float C;
    static __device__ __forceinline__ float load(const float *p) { return *p; }
    static __device__ __forceinline__ void store(float *p, float v) { *p = v; }
};
template <> struct csm_traits<double> {
    typedef double C;
    static __device__ __forceinline__ double load(const double *p) { return *p; }
    static __device__ __forceinline__ void store(double *p, double v) { *p = v; }
};
template <> struct csm_traits<csm_half> {
    typedef float C;
    static __device__ __forceinline__ float load(const csm_half *p)
    {
#ifdef CSM_EMULATE
        return csm_half_to_float(p->bits);
#else
        float f;
        asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(p->bits));
        return f;
#endif
    }
    static __device__ __forceinline__ void store(csm_half *p, float v)
    {
#ifdef CSM_EMULATE
        p->bits = csm_float_to_half(v);
#else
        unsigned short h;
        asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
        p->bits = h;
#endif
    }
};

/* ---- float arithmetic that keeps subnormals ----
 * CuPy appends -ftz=true to every NVRTC compile, so plain float arithmetic flushes
 * subnormal operands and results to zero. Wherever a float can be subnormal and matters --
 * x - max, the max itself, outputs, conversions -- the kernels issue the IEEE instructions
 * through these (each one instruction); double arithmetic is never flushed. */
#ifdef CSM_EMULATE
__device__ __forceinline__ float csm_add(float a, float b) { return a + b; }
__device__ __forceinline__ float csm_sub(float a, float b) { return a - b; }
__device__ __forceinline__ float csm_mul(float a, float b) { return a * b; }
__device__ __forceinline__ float csm_fma(float a, float b, float c) { return fmaf(a, b, c); }
__device__ __forceinline__ double csm_w(float v) { return (double)v; }
__device__ __forceinline__ float csm_narrow_f(double v) { return (float)v; }
__device__ __forceinline__ float csm_maxnan(float a, float b) { return (a > b || a != a) ? a : b; }
__device__ __forceinline__ float csm_minnan(float a, float b) { return (a < b || a != a) ? a : b; }
/* z, or 0 with ties counted, where x == m (an IEEE comparison) */
__device__ __forceinline__ float csm_untie(float x, float m, float z, int &ties)
{
    const bool p = x == m;
    ties += p;
    return p ? 0.0f : z;
}
__device__ __forceinline__ double csm_rcp(double z) { return 1.0 / z; }
#else
#define CSM_F32_OP2(name, ins)                                                                                         \
    __device__ __forceinline__ float name(float a, float b)                                                            \
    {                                                                                                                  \
        float r;                                                                                                       \
        asm(ins " %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));                                                            \
        return r;                                                                                                      \
    }
CSM_F32_OP2(csm_add, "add.rn.f32")
CSM_F32_OP2(csm_sub, "sub.rn.f32")
CSM_F32_OP2(csm_mul, "mul.rn.f32")
#if __CUDA_ARCH__ >= 800
CSM_F32_OP2(csm_maxnan, "max.NaN.f32")
CSM_F32_OP2(csm_minnan, "min.NaN.f32")
#else
__device__ __forceinline__ float csm_maxnan(float a, float b) { return (a > b || a != a) ? a : b; }
__device__ __forceinline__ float csm_minnan(float a, float b) { return (a < b || a != a) ? a : b; }
#endif
#undef CSM_F32_OP2
__device__ __forceinline__ float csm_fma(float a, float b, float c)
{
    float r;
    asm("fma.rn.f32 %0, %1, %2, %3;" : "=f"(r) : "f"(a), "f"(b), "f"(c));
    return r;
}
__device__ __forceinline__ double csm_w(float v)
{
    double r;
    asm("cvt.f64.f32 %0, %1;" : "=d"(r) : "f"(v));
    return r;
}
__device__ __forceinline__ float csm_narrow_f(double v)
{
    float r;
    asm("cvt.rn.f32.f64 %0, %1;" : "=f"(r) : "d"(v));
    return r;
}
__device__ __forceinline__ float csm_untie(float x, float m, float z, int &ties)
{
    float r;
    asm("{ .reg .pred p; setp.eq.f32 p, %2, %3; selp.f32 %0, 0f00000000, %4, p; @p add.s32 %1, %1, 1; }"
        : "=f"(r), "+r"(ties)
        : "f"(x), "f"(m), "f"(z));
    return r;
}
/* 1 / z for a normal z far from the range's ends: the hardware estimate and two Newton steps */
__device__ __forceinline__ double csm_rcp(double z)
{
    double q;
    asm("rcp.approx.ftz.f64 %0, %1;" : "=d"(q) : "d"(z));
    q = fma(q, fma(-z, q, 1.0), q);
    return fma(q, fma(-z, q, 1.0), q);
}
#endif
__device__ __forceinline__ double csm_add(double a, double b) { return a + b; }
__device__ __forceinline__ double csm_sub(double a, double b) { return a - b; }
__device__ __forceinline__ double csm_mul(double a, double b) { return a * b; }
__device__ __forceinline__ double csm_fma(double a, double b, double c) { return fma(a, b, c); }
__device__ __forceinline__ double csm_w(double v) { return v; }
__device__ __forceinline__ double csm_maxnan(double a, double b) { return (a > b || a != a) ? a : b; }
__device__ __forceinline__ double csm_minnan(double a, double b) { return (a < b || a != a) ? a : b; }
__device__ __forceinline__ double csm_untie(double x, double m, double z, int &ties)
{
    const bool p = x == m;
    ties += p;
    return p ? 0.0 : z;
}
/* double -> the compute type C, keeping subnormals */
template <typename C> __device__ __forceinline__ C csm_n(double v);
template <> __device__ __forceinline__ float csm_n<float>(double v) { return csm_narrow_f(v); }
template <> __device__ __forceinline__ double csm_n<double>(double v) { return v; }
template <typename C> __device__ __forceinline__ bool csm_isfin(C v) { return v - v == (C)0; }
__device__ __forceinline__ bool csm_isnan(double v) { return v != v; }

/* s + e == a - b exactly */
template <typename C> __device__ __forceinline__ void csm_two_diff(C a, C b, C &s, C &e)
{
    s = csm_sub(a, b);
    C bb = csm_sub(s, a);
    e = csm_sub(csm_sub(a, csm_sub(s, bb)), csm_add(b, bb));
}

/* ---- exp ----
 * The C core's constants (csm_expconst.h): Cody-Waite reduction with ln 2 in two parts,
 * exp(r) = 1 + r + r^2 P(r). */
template <typename C> struct csm_expk;
#define CSM_EXPK_CONSTANTS(C, P)                                                                                       \
    static constexpr C LO = CSM_EXP_##P##_LO, HI = CSM_EXP_##P##_HI, LOG2E = CSM_EXP_##P##_LOG2E;                     \
    static constexpr C MAGIC = CSM_EXP_##P##_MAGIC, LN2_HI = CSM_EXP_##P##_LN2_HI, LN2_LO = CSM_EXP_##P##_LN2_LO;
template <> struct csm_expk<float> {
    typedef int I;
    CSM_EXPK_CONSTANTS(float, F32)
    static constexpr int ZS = CSM_ZS_F, MANT = 23, BIAS = 127;
    static constexpr float ZLO = CSM_ZLO_F, ZDL = CSM_ZDL_F, ZMAGIC = CSM_EXP_F32_MAGIC + CSM_ZS_F;
    static __device__ __forceinline__ float fma(float a, float b, float c) { return fmaf(a, b, c); }
    static __device__ __forceinline__ I bits(float v) { return __float_as_int(v); }
    static __device__ __forceinline__ float from_bits(I v) { return __int_as_float(v); }
    static __device__ __forceinline__ float pow2(I k) { return __int_as_float((k + BIAS) << MANT); }
};
template <> struct csm_expk<double> {
    typedef i64 I;
    CSM_EXPK_CONSTANTS(double, F64)
    static constexpr int ZS = CSM_ZS_D, MANT = 52, BIAS = 1023;
    static constexpr double ZLO = CSM_ZLO_D, ZDL = CSM_ZDL_D, ZMAGIC = CSM_EXP_F64_MAGIC + CSM_ZS_D;
    static __device__ __forceinline__ double fma(double a, double b, double c) { return ::fma(a, b, c); }
    static __device__ __forceinline__ I bits(double v) { return __double_as_longlong(v); }
    static __device__ __forceinline__ double from_bits(I v) { return __longlong_as_double(v); }
    static __device__ __forceinline__ double pow2(I k) { return __longlong_as_double((k + BIAS) << MANT); }
};
#undef CSM_EXPK_CONSTANTS
/* P(r) by Horner's rule */
__device__ __forceinline__ float csm_exp_poly(float r)
{
    const float c[CSM_EXP_F32_NPOLY] = {CSM_EXP_F32_POLY};
    float p = c[0];
#pragma unroll
    for (int i = 1; i < CSM_EXP_F32_NPOLY; i++) p = fmaf(p, r, c[i]);
    return p;
}
__device__ __forceinline__ double csm_exp_poly(double r)
{
    const double c[CSM_EXP_F64_NPOLY] = {CSM_EXP_F64_POLY};
    double p = c[0];
#pragma unroll
    for (int i = 1; i < CSM_EXP_F64_NPOLY; i++) p = fma(p, r, c[i]);
    return p;
}

/* z = exp(dh + dl) 2^ZS for dh <= 0 (x - max): always a normal number, built in the exponent
   bits without a branch. dh below ZLO (and -inf, or the NaN of a special row) is clamped to
   ZLO, dl to [-ZDL, ZDL] (a NaN dl, from x = -inf, too), where the term is negligible. */
template <typename C> __device__ __forceinline__ C csm_zexp(C dh, C dl)
{
    typedef csm_expk<C> K;
    dh = dh > K::ZLO ? dh : K::ZLO;
    dl = dl > -K::ZDL ? (dl < K::ZDL ? dl : K::ZDL) : -K::ZDL;
    const C t = K::fma(dh, K::LOG2E, K::ZMAGIC); /* round(dh log2 e) + ZS in the low bits */
    const C kf = t - K::ZMAGIC;
    const C r = K::fma(kf, -K::LN2_HI, dh) + K::fma(kf, -K::LN2_LO, dl);
    const C e = (C)1 + K::fma(csm_exp_poly(r), r * r, r);
    return K::from_bits(K::bits(e) + ((K::bits(t) - K::bits(K::MAGIC)) << K::MANT));
}

/* exp(dh + dl) over the whole float range (dh may be positive; NaN stays NaN), the power of
   two applied in two IEEE multiplies so that a subnormal result is rounded once */
__device__ __forceinline__ float csm_exp_full(float dh, float dl)
{
    typedef csm_expk<float> K;
    const float x = csm_minnan(csm_maxnan(dh, K::LO), K::HI);
    dl = dl > -K::ZDL ? (dl < K::ZDL ? dl : K::ZDL) : -K::ZDL;
    const float t = fmaf(x, K::LOG2E, K::MAGIC);
    const float kf = t - K::MAGIC;
    const float r = fmaf(kf, -K::LN2_HI, x) + fmaf(kf, -K::LN2_LO, dl);
    const float e = 1.0f + fmaf(csm_exp_poly(r), r * r, r);
    const int k = K::bits(t) - K::bits(K::MAGIC), k1 = k >> 1;
    return csm_mul(csm_mul(e, K::pow2(k1)), K::pow2(k - k1));
}

/* ---- the temperature ----
 * What (x - m) / tau is, per mode (the host's choice, cuda.py _tau_mode): ONE; PAIR, with
 * 1/tau given as inv + inv_lo (float rows: both floats, 4 float operations, ~2^-48 relative;
 * double rows: q = d inv with its exact remainder); WIDE, for 1/tau beyond the compute
 * type's range: the difference in double, times inv where inv is a normal double, else
 * divided by tau (0 stays 0: no 0 * inf). */
template <typename C, int TM> struct csm_tau;
template <int TM> struct csm_tau<float, TM> {
    double tau, inv;
    float ih, il;
    bool by_mul;
    __device__ __forceinline__ csm_tau(double t, double i, double ilo)
        : tau(t), inv(i), ih(csm_narrow_f(i)), il(csm_narrow_f(ilo)), by_mul(i >= 2.2250738585072014e-308 && csm_finite(i))
    {
    }
    __device__ __forceinline__ double wide(float x, float m) const
    {
        const double d = csm_w(x) - csm_w(m); /* exact */
        return by_mul ? d * inv : d / tau;
    }
    /* (x - m) / tau as dh + dl */
    __device__ __forceinline__ void diff(float x, float m, float &dh, float &dl) const
    {
        if constexpr (TM == CSM_TAU_ONE) {
            csm_two_diff(x, m, dh, dl);
        } else if constexpr (TM == CSM_TAU_PAIR) {
            float a, b;
            csm_two_diff(x, m, a, b);
            const float p = csm_mul(a, ih);
            dh = p;
            dl = csm_fma(b, ih, csm_fma(a, il, csm_fma(a, ih, -p)));
        } else {
            const double d = wide(x, m);
            dh = csm_narrow_f(d);
            dl = csm_narrow_f(d - csm_w(dh));
        }
    }
    /* log_softmax's (x - m) / tau - L; L = log1p(S') as float (Lf) and double */
    __device__ __forceinline__ float logout(float x, float m, float Lf, double L) const
    {
        if constexpr (TM == CSM_TAU_WIDE) {
            return csm_narrow_f(wide(x, m) - L);
        } else {
            float dh, dl;
            diff(x, m, dh, dl);
            if constexpr (TM == CSM_TAU_PAIR) /* x - m overflowed although (x - m) / tau need not (tau > 1) */
                if (dh == -(float)CSM_INF && x > -(float)CSM_INF && ih < 1.0f) {
                    dh = csm_sub(csm_mul(x, ih), csm_mul(m, ih));
                    dl = 0.0f;
                }
            dl = fminf(fmaxf(dl, -CSM_FLT_MAX), CSM_FLT_MAX); /* NaN (x = -inf) or inf (an overflowed product) */
            return csm_add(csm_sub(dh, Lf), dl);
        }
    }
    /* v / tau for the backward passes (v a finished float value) */
    __device__ __forceinline__ float scale(float v) const
    {
        if constexpr (TM == CSM_TAU_ONE) return v;
        else if constexpr (TM == CSM_TAU_PAIR) {
            const float r = csm_mul(v, ih);
            return csm_isfin(r) ? csm_fma(v, il, r) : r; /* no inf * 0 from the low part */
        } else {
            return csm_narrow_f(by_mul ? csm_w(v) * inv : csm_w(v) / tau);
        }
    }
};
template <int TM> struct csm_tau<double, TM> {
    double tau, inv;
    __device__ __forceinline__ csm_tau(double t, double i, double) : tau(t), inv(i) {}
    __device__ __forceinline__ void diff(double x, double m, double &dh, double &dl) const
    {
        double sh, sl;
        csm_two_diff(x, m, sh, sl);
        if constexpr (TM == CSM_TAU_ONE) {
            dh = sh;
            dl = sl;
        } else {
            const double q = TM == CSM_TAU_PAIR ? sh * inv : sh / tau;
            const double rem = fma(-q, tau, sh); /* sh - q tau, exactly */
            dh = q;
            dl = TM == CSM_TAU_PAIR ? (rem + sl) * inv : (rem + sl) / tau;
            if (sh == -CSM_INF && x > -CSM_INF && tau > 1.0) { /* x - m overflowed although (x - m) / tau need not */
                dh = TM == CSM_TAU_PAIR ? x * inv - m * inv : x / tau - m / tau;
                dl = 0.0;
            }
        }
    }
    __device__ __forceinline__ double logout(double x, double m, double, double L) const
    {
        double dh, dl;
        diff(x, m, dh, dl);
        return (dh - L) + (csm_finite(dl) ? dl : 0.0);
    }
    __device__ __forceinline__ double scale(double v) const
    {
        if constexpr (TM == CSM_TAU_ONE) return v;
        else if constexpr (TM == CSM_TAU_PAIR) return v * inv;
        else return v / tau;
    }
};
/* d / tau in double, by division where 1/tau is not a normal double (per row, or in the
   general kernels) */
__device__ __forceinline__ double csm_tdiv(double d, double tau, double inv)
{
    return inv >= 2.2250738585072014e-308 && csm_finite(inv) ? d * inv : d / tau;
}

/* ---- sums of the scaled exps ----
 * float: pairs added in float, the pairs accumulated in float-float, the lane's total
 * widened once; double: Kahan-compensated. total() is the lane's sum as a double-double. */
template <typename C> struct csm_zsum;
template <> struct csm_zsum<float> {
    float hi = 0.0f, lo = 0.0f;
    __device__ __forceinline__ void add(float v)
    {
        const float s = hi + v, bb = s - hi;
        lo += (hi - (s - bb)) + (v - bb);
        hi = s;
    }
    __device__ __forceinline__ void add2(float a, float b) { add(a + b); }
    __device__ __forceinline__ double total() const { return csm_finite(csm_w(hi)) ? csm_w(hi) + csm_w(lo) : csm_w(hi); }
};
template <> struct csm_zsum<double> {
    double s = 0.0, c = 0.0; /* value s - c */
    __device__ __forceinline__ void add(double v)
    {
        const double y = v - c, t = s + y;
        c = csm_finite(t) ? (t - s) - y : 0.0; /* past an inf, plain addition */
        s = t;
    }
    __device__ __forceinline__ void add2(double a, double b)
    {
        add(a);
        add(b);
    }
    __device__ __forceinline__ csm_dd total() const { return csm_dd_make(s, -c); }
};

__device__ __forceinline__ csm_dd csm_zsum_dd(double v) { return csm_dd_make(v, 0.0); }
__device__ __forceinline__ csm_dd csm_zsum_dd(csm_dd v) { return v; }

/* ---- reductions ----
 * csm_butterfly<G>(v, op): op over the G lanes of an aligned group (every lane of the warp
 * takes part), every lane gets the result. csm_block_reduce: the same over a block
 * (blockDim.x a multiple of 32, <= 1024) through one slot per warp. csm_group_reduce<G>:
 * whichever of the two a group of G lanes is. */
struct csm_op_max {
    template <typename V> __device__ __forceinline__ V operator()(V a, V b) const { return csm_maxnan(a, b); }
};
struct csm_op_sum {
    template <typename V> __device__ __forceinline__ V operator()(V a, V b) const { return a + b; }
    __device__ __forceinline__ csm_dd operator()(csm_dd a, csm_dd b) const { return csm_dd_add(a, b); }
};
struct csm_op_or {
    __device__ __forceinline__ int operator()(int a, int b) const { return a | b; }
};

template <typename V> __device__ __forceinline__ V csm_shfl_xor(V v, int o) { return __shfl_xor_sync(0xffffffffu, v, o); }
__device__ __forceinline__ csm_dd csm_shfl_xor(csm_dd v, int o)
{
    return csm_dd_make(__shfl_xor_sync(0xffffffffu, v.hi, o), __shfl_xor_sync(0xffffffffu, v.lo, o));
}

template <int G, typename V, typename Op> __device__ __forceinline__ V csm_butterfly(V v, Op op)
{
#pragma unroll
    for (int o = G / 2; o > 0; o >>= 1) v = op(v, csm_shfl_xor(v, o));
    return v;
}

union csm_block_scratch {
    float f[32];
    double d[32];
    int i[32];
    i64 l[32];
    csm_dd dd[32];
};
__device__ __forceinline__ float *csm_slots(csm_block_scratch *sh, float) { return sh->f; }
__device__ __forceinline__ double *csm_slots(csm_block_scratch *sh, double) { return sh->d; }
__device__ __forceinline__ int *csm_slots(csm_block_scratch *sh, int) { return sh->i; }
__device__ __forceinline__ i64 *csm_slots(csm_block_scratch *sh, i64) { return sh->l; }
__device__ __forceinline__ csm_dd *csm_slots(csm_block_scratch *sh, csm_dd) { return sh->dd; }

template <typename V, typename Op> __device__ V csm_block_reduce(V v, Op op, V identity, csm_block_scratch *sh)
{
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    V *slot = csm_slots(sh, v);
    v = csm_butterfly<32>(v, op);
    __syncthreads();
    if (lane == 0) slot[w] = v;
    __syncthreads();
    v = lane < nw ? slot[lane] : identity;
    return csm_butterfly<32>(v, op);
}
template <int G, typename V, typename Op>
__device__ __forceinline__ V csm_group_reduce(V v, Op op, V identity, csm_block_scratch *sh)
{
    if constexpr (G <= 32) return csm_butterfly<G>(v, op);
    else return csm_block_reduce(v, op, identity, sh);
}
/* a row's sum over its group, as a double-double: float rows reduce plain doubles (53 bits
   over at most 2^21 partials is far below float's precision), double rows double-doubles */
template <int G> __device__ __forceinline__ csm_dd csm_group_total(double v, csm_block_scratch *sh)
{
    return csm_dd_make(csm_group_reduce<G>(v, csm_op_sum(), 0.0, sh), 0.0);
}
template <int G> __device__ __forceinline__ csm_dd csm_group_total(csm_dd v, csm_block_scratch *sh)
{
    return csm_group_reduce<G>(v, csm_op_sum(), csm_dd_make(0.0, 0.0), sh);
}
/* whether any group of the warp (G <= 32) or the block (G > 32: b is the block's) has b */
template <int G> __device__ __forceinline__ bool csm_vote(bool b)
{
    if constexpr (G <= 32) return csm_butterfly<32>((int)b, csm_op_or()) != 0;
    else return b;
}
__device__ __forceinline__ double csm_block_max(double v, csm_block_scratch *sh)
{
    return csm_block_reduce(v, csm_op_max(), -CSM_INF, sh);
}
__device__ __forceinline__ int csm_block_count(int a, csm_block_scratch *sh) { return csm_block_reduce(a, csm_op_sum(), 0, sh); }
__device__ __forceinline__ csm_dd csm_block_sum(csm_dd v, csm_block_scratch *sh)
{
    return csm_block_reduce(v, csm_op_sum(), csm_dd_make(0.0, 0.0), sh);
}

/* ---- rows in 16-byte pieces ----
 * Piece q of a row holds entries q V - off .. q V - off + V - 1, where off puts piece
 * boundaries on 16-byte addresses (0 for strided rows); a piece wholly inside a contiguous
 * row is one vector access, others go entry by entry (missing and masked entries -inf). */
template <typename T> struct csm_chunk {
    enum { V = 16 / sizeof(T) };
    union U {
        uint4 u;
        T t[16 / sizeof(T)];
    };
    typedef typename csm_traits<T>::C C;
    static __device__ __forceinline__ void load(const T *p, C *v)
    {
        U b;
        b.u = *(const uint4 *)p;
#pragma unroll
        for (int i = 0; i < V; i++) v[i] = csm_traits<T>::load(&b.t[i]);
    }
    static __device__ __forceinline__ void store(T *p, const C *v)
    {
        U b;
#pragma unroll
        for (int i = 0; i < V; i++) csm_traits<T>::store(&b.t[i], v[i]);
        *(uint4 *)p = b.u;
    }
};

template <typename T, int F> __device__ __forceinline__ int csm_offset(const T *row)
{
    if constexpr ((F & CSM_F_GEN) != 0) return 0;
    else return (int)(((unsigned long long)(size_t)row / sizeof(T)) & (csm_chunk<T>::V - 1));
}
template <int F> __device__ __forceinline__ i64 csm_es(i64 es) { return (F & CSM_F_GEN) ? es : 1; }

/* piece q of a row into v; returns the live bits (entries present and unmasked) */
template <typename T, int F>
__device__ __forceinline__ unsigned csm_load_piece(const T *xr, i64 x_es, const unsigned char *mr, i64 m_es, i64 q,
                                                   int off, i64 n, typename csm_traits<T>::C *v)
{
    typedef typename csm_traits<T>::C C;
    enum { V = csm_chunk<T>::V };
    const i64 j0 = q * V - off;
    unsigned live = 0;
    if (!(F & CSM_F_GEN) && j0 >= 0 && j0 + V <= n) {
        csm_chunk<T>::load(xr + j0, v);
        live = (1u << V) - 1u;
    } else {
#pragma unroll
        for (int t = 0; t < V; t++) {
            const i64 j = j0 + t;
            v[t] = -(C)CSM_INF;
            if (j >= 0 && j < n) {
                v[t] = csm_traits<T>::load(xr + j * csm_es<F>(x_es));
                live |= 1u << t;
            }
        }
    }
    if constexpr ((F & CSM_F_GEN) != 0) {
#pragma unroll
        for (int t = 0; t < V; t++) {
            const i64 j = j0 + t;
            if (mr && j >= 0 && j < n && !mr[j * m_es]) {
                live &= ~(1u << t);
                v[t] = -(C)CSM_INF;
            }
        }
    }
    return live;
}

template <typename T, int F>
__device__ __forceinline__ void csm_store_piece(T *orow, i64 o_es, i64 q, int off, i64 n,
                                                const typename csm_traits<T>::C *v)
{
    enum { V = csm_chunk<T>::V };
    const i64 j0 = q * V - off;
    if (!(F & CSM_F_GEN) && j0 >= 0 && j0 + V <= n) {
        csm_chunk<T>::store(orow + j0, v);
    } else {
#pragma unroll
        for (int t = 0; t < V; t++) {
            const i64 j = j0 + t;
            if (j >= 0 && j < n) csm_traits<T>::store(orow + j * csm_es<F>(o_es), v[t]);
        }
    }
}

/* ---- groups of lanes per row ----
 * G <= 32: BLOCK / G rows per block, each a group of G lanes inside a warp; G > 32: a block
 * of G threads per row. Launch bounds keep 768 threads (24 warps) resident per
 * multiprocessor, so at most 80 registers per thread (64 for G = 1024); the backward
 * passes, which hold two operands, 512 threads (128 registers). */
template <int G> struct csm_group {
    enum {
        BLOCK = G <= 32 ? 256 : G,
        RPB = G <= 32 ? 256 / G : 1,
        MINB = BLOCK >= 768 ? 1 : 768 / BLOCK,
        MINB_BWD = BLOCK >= 512 ? 1 : 512 / BLOCK
    };
};

/* S' = Z' 2^-ZS + (ties - 1), the max's own term left out (Z' sums the entries below it) */
template <typename C> __device__ __forceinline__ csm_dd csm_sprime(csm_dd z, double ties)
{
    const double u = ldexp(1.0, -csm_expk<C>::ZS);
    return csm_dd_add_d(csm_dd_make(z.hi * u, z.lo * u), ties - 1.0);
}
/* 1 / Z for a row's total Z (>= 2^ZS), in the compute type */
template <typename C> __device__ __forceinline__ C csm_zinv(csm_dd z)
{
    const double q = csm_rcp(z.hi);
    return csm_n<C>(q - q * (z.lo * q));
}

/* the values of a special row, one entry at a time from global memory (cold) */
template <typename T, int G, int F>
__device__ __forceinline__ void csm_special_row(int kind, const T *xr, i64 x_es, const unsigned char *mr, i64 m_es, T *orow, i64 o_es,
                                T *lse, i64 n, int lane, bool write, typename csm_traits<T>::C m, bool tau_inf,
                                csm_block_scratch *red)
{
    typedef typename csm_traits<T>::C C;
    int any = 0, cnt = 0;
    for (i64 j = lane; j < n; j += G) {
        const bool on = !mr || mr[j * m_es];
        any += on;
        cnt += on && csm_traits<T>::load(xr + j * csm_es<F>(x_es)) > -(C)CSM_INF;
    }
    any = csm_group_reduce<G>(any, csm_op_sum(), 0, red);
    cnt = csm_group_reduce<G>(cnt, csm_op_sum(), 0, red);
    if (!write) return;
    const csm_special sp = csm_special_values(kind, any, csm_isnan(csm_w(m)), csm_w(m), cnt, tau_inf);
    if (kind == CSM_LOGSUMEXP) {
        if (lane == 0) csm_traits<T>::store(lse, csm_n<C>(sp.lse));
        return;
    }
    for (i64 j = lane; j < n; j += G) {
        const bool on = !mr || mr[j * m_es];
        const double v = csm_w(csm_traits<T>::load(xr + j * csm_es<F>(x_es)));
        csm_traits<T>::store(orow + j * csm_es<F>(o_es), csm_n<C>(csm_special_value(sp, on, v)));
    }
}

/* ---- forward: G lanes per row, the row in registers ----
 * Lane l of a row's group holds pieces l, l + G, ..., NC of them (n + off <= G NC V). K is
 * CSM_SOFTMAX or CSM_LOG_SOFTMAX; the latter writes logsumexp instead where lse is given. */
template <typename T, int G, int NC, int K, int TM, int F>
__global__ void __launch_bounds__(csm_group<G>::BLOCK, csm_group<G>::MINB)
    csm_fwd_rows(const T *x, i64 x_rs, i64 x_es, T *out, i64 o_rs, i64 o_es, const unsigned char *mask, i64 m_rs,
                 i64 m_es, T *lse, i64 l_rs, i64 nrows, i64 n, double tau, double inv, double inv_lo)
{
    typedef typename csm_traits<T>::C C;
    typedef csm_group<G> Gr;
    enum { V = csm_chunk<T>::V, E = NC * csm_chunk<T>::V };
    __shared__ csm_block_scratch red;
    const csm_tau<C, TM> tm(tau, inv, inv_lo);
    const bool tau_inf = !csm_finite(tau);
    const int lane = G <= 32 ? (int)(threadIdx.x & (G - 1)) : (int)threadIdx.x;
    const int kind = K == CSM_SOFTMAX ? CSM_SOFTMAX : (lse ? CSM_LOGSUMEXP : CSM_LOG_SOFTMAX);
    for (i64 r0 = (i64)blockIdx.x * Gr::RPB; r0 < nrows; r0 += (i64)gridDim.x * Gr::RPB) {
        const i64 grow = r0 + (G <= 32 ? threadIdx.x / G : 0);
        const bool active = grow < nrows;
        const i64 row = active ? grow : nrows - 1; /* groups past the last row shadow it: read, never write */
        const T *xr = x + row * x_rs;
        const unsigned char *mr = (F & CSM_F_GEN) && mask ? mask + row * m_rs : 0;
        const int off = csm_offset<T, F>(xr);
        C v[E];
#pragma unroll
        for (int c = 0; c < NC; c++) csm_load_piece<T, F>(xr, x_es, mr, m_es, (i64)c * G + lane, off, n, v + c * V);
        C m = -(C)CSM_INF;
#pragma unroll
        for (int e = 0; e < E; e++) m = csm_maxnan(m, v[e]);
        m = csm_group_reduce<G>(m, csm_op_max(), -(C)CSM_INF, &red);
        const bool special = !csm_isfin(m) || tau_inf;
        csm_zsum<C> acc;
        int ties = 0;
#pragma unroll
        for (int e = 0; e < E; e += 2) {
            C dh, dl, eh, el;
            tm.diff(v[e], m, dh, dl);
            tm.diff(v[e + 1], m, eh, el);
            C z0 = csm_zexp(dh, dl), z1 = csm_zexp(eh, el);
            if constexpr (K == CSM_SOFTMAX) {
                v[e] = z0; /* softmax keeps the exps */
                v[e + 1] = z1;
            } else {
                z0 = csm_untie(v[e], m, z0, ties);
                z1 = csm_untie(v[e + 1], m, z1, ties);
            }
            acc.add2(z0, z1);
        }
        const csm_dd z = csm_group_total<G>(acc.total(), &red);
        if constexpr (K != CSM_SOFTMAX) ties = csm_group_reduce<G>(ties, csm_op_sum(), 0, &red);
        T *orow = out + row * o_rs;
        if (csm_vote<G>(special)) { /* rare: the semantics table */
            csm_special_row<T, G, F>(kind, xr, x_es, mr, m_es, orow, o_es, lse + row * l_rs, n, lane,
                                     special && active, m, tau_inf, &red);
            if (special) continue;
        }
        if (!active) continue;
        if constexpr (K == CSM_SOFTMAX) {
            const C c = csm_zinv<C>(z);
#pragma unroll
            for (int e = 0; e < E; e++) v[e] = csm_mul(v[e], c);
        } else {
            const double L = csm_dd_log1p(csm_sprime<C>(z, (double)ties));
            if (kind == CSM_LOGSUMEXP) {
                if (lane == 0) csm_traits<T>::store(lse + row * l_rs, csm_n<C>(csm_w(m) + L));
                continue;
            }
            const C Lc = csm_n<C>(L);
#pragma unroll
            for (int e = 0; e < E; e++) v[e] = tm.logout(v[e], m, Lc, L);
        }
#pragma unroll
        for (int c = 0; c < NC; c++) csm_store_piece<T, F>(orow, o_es, (i64)c * G + lane, off, n, v + c * V);
    }
}

/* ---- forward, rows too long for registers: chunks in their own blocks ----
 * stats: per (row, chunk) its max (NaN if any), the entries equal to it (ties), Z' of the
 * others relative to it (scaled as the row kernels'), the live entries and those above
 * -inf; merge: one block per row combines the chunks exactly -- Z'_c (1 + its ties) times
 * exp((m_c - m) / tau) with the power of two applied last (csm_dd_mul_exp), so a chunk far
 * below the max still counts for what it is; finish: every chunk writes its outputs. Grid
 * (rows, chunks); chunk a multiple of V; pieces counted from the row's start. The stats pass
 * reads its chunk twice (max, then sum): the second read comes from L2. */
#define CSM_SPLIT_STRIDE 7 /* m, ties, Z'.hi, Z'.lo, live, above -inf, (merged: -) */

template <typename T, int TM, int F>
__global__ void __launch_bounds__(256)
    csm_fwd_split_stats(const T *x, i64 x_rs, i64 x_es, const unsigned char *mask, i64 m_rs, i64 m_es, double *ws,
                        i64 nrows, i64 n, i64 chunk, double tau, double inv, double inv_lo)
{
    typedef typename csm_traits<T>::C C;
    enum { V = csm_chunk<T>::V };
    __shared__ csm_block_scratch red;
    const csm_tau<C, TM> tm(tau, inv, inv_lo);
    const i64 row = blockIdx.x, c = blockIdx.y, nchunks = gridDim.y;
    const T *xr = x + row * x_rs;
    const unsigned char *mr = (F & CSM_F_GEN) && mask ? mask + row * m_rs : 0;
    const int off = csm_offset<T, F>(xr);
    const i64 j0 = c * chunk, j1 = j0 + chunk < n ? j0 + chunk : n; /* entries; pieces cover [j0, j1) */
    const i64 q0 = (j0 + off) / V, q1 = (j1 + off + V - 1) / V;
    C m = -(C)CSM_INF;
    int live = 0, above = 0;
#pragma unroll 4
    for (i64 q = q0 + threadIdx.x; q < q1; q += blockDim.x) {
        C p[V];
        const unsigned lv = csm_load_piece<T, F>(xr, x_es, mr, m_es, q, off, j1, p);
#pragma unroll
        for (int t = 0; t < V; t++) {
            const bool in = q * V - off + t >= j0 && ((lv >> t) & 1);
            m = in ? csm_maxnan(m, p[t]) : m;
            live += in;
            above += in && p[t] > -(C)CSM_INF;
        }
    }
    m = csm_n<C>(csm_block_max(csm_w(m), &red));
    live = csm_block_count(live, &red);
    above = csm_block_count(above, &red);
    csm_dd z = csm_dd_make(0.0, 0.0);
    int ties = 0;
    if (csm_isfin(m)) {
        csm_zsum<C> acc;
        for (i64 q = q0 + threadIdx.x; q < q1; q += blockDim.x) {
            C p[V];
            const unsigned lv = csm_load_piece<T, F>(xr, x_es, mr, m_es, q, off, j1, p);
#pragma unroll
            for (int t = 0; t < V; t++) {
                C dh, dl;
                tm.diff(p[t], m, dh, dl);
                const bool in = q * V - off + t >= j0 && ((lv >> t) & 1);
                const C zt = csm_untie(p[t], m, csm_zexp(dh, dl), ties);
                acc.add(in ? zt : (C)0);
                ties -= !in && p[t] == m; /* an entry of the neighbouring chunk equal to m */
            }
        }
        ties = csm_block_count(ties, &red);
        z = csm_group_total<1024>(acc.total(), &red);
    }
    if (threadIdx.x == 0) {
        double *w = ws + (row * nchunks + c) * CSM_SPLIT_STRIDE;
        w[0] = csm_w(m);
        w[1] = ties;
        w[2] = z.hi;
        w[3] = z.lo;
        w[4] = live;
        w[5] = above;
    }
}

/* one block per row: the chunks' stats merged into the row's, written over chunk 0:
   m (NaN if any entry is), -, S'.hi, S'.lo, live, above -inf */
template <typename C>
__global__ void __launch_bounds__(256) csm_fwd_split_merge(double *ws, i64 nrows, i64 nchunks, double tau)
{
    __shared__ csm_block_scratch red;
    const i64 row = blockIdx.x;
    if (row >= nrows) return;
    double *w = ws + row * nchunks * CSM_SPLIT_STRIDE;
    double m = -CSM_INF;
    int live = 0, above = 0;
    for (i64 c = threadIdx.x; c < nchunks; c += blockDim.x) {
        m = csm_maxnan(m, w[c * CSM_SPLIT_STRIDE]);
        live += (int)w[c * CSM_SPLIT_STRIDE + 4];
        above += (int)w[c * CSM_SPLIT_STRIDE + 5];
    }
    m = csm_block_max(m, &red);
    live = csm_block_count(live, &red);
    above = csm_block_count(above, &red);
    csm_dd s = csm_dd_make(0.0, 0.0);
    double ties = 0.0;
    if (csm_finite(m)) {
        const double zs = ldexp(1.0, csm_expk<C>::ZS);
        for (i64 c = threadIdx.x; c < nchunks; c += blockDim.x) {
            const double *wc = w + c * CSM_SPLIT_STRIDE;
            if (!(wc[0] > -CSM_INF)) continue; /* nothing above -inf there */
            csm_dd zc = csm_dd_make(wc[2], wc[3]);
            if (wc[0] == m) {
                ties += wc[1];
            } else { /* Z'_c and its ties relative to the row's max */
                csm_dd d = csm_two_sum(wc[0], -m);
                if (tau != 1.0) d = csm_dd_div_d(d, tau);
                zc = csm_dd_mul_exp(csm_dd_add_d(zc, wc[1] * zs), d);
            }
            s = csm_dd_add(s, zc);
        }
    }
    s = csm_block_sum(s, &red);
    ties = csm_block_sum(csm_dd_make(ties, 0.0), &red).hi;
    const csm_dd sp = csm_sprime<C>(s, ties);
    __syncthreads(); /* every thread has read the chunks' entries */
    if (threadIdx.x == 0) {
        w[0] = m;
        w[2] = sp.hi;
        w[3] = sp.lo;
        w[4] = live;
        w[5] = above;
    }
}

template <typename T, int K, int TM, int F>
__global__ void __launch_bounds__(256)
    csm_fwd_split_finish(const T *x, i64 x_rs, i64 x_es, T *out, i64 o_rs, i64 o_es, const unsigned char *mask,
                         i64 m_rs, i64 m_es, T *lse, i64 l_rs, const double *ws, i64 nrows, i64 n, i64 chunk,
                         double tau, double inv, double inv_lo)
{
    typedef typename csm_traits<T>::C C;
    enum { V = csm_chunk<T>::V };
    const csm_tau<C, TM> tm(tau, inv, inv_lo);
    const i64 row = blockIdx.x, c = blockIdx.y, nchunks = gridDim.y;
    const double *w = ws + row * nchunks * CSM_SPLIT_STRIDE;
    const C m = csm_n<C>(w[0]);
    const csm_dd sp = csm_dd_make(w[2], w[3]);
    const bool tau_inf = !csm_finite(tau);
    const int kind = K == CSM_SOFTMAX ? CSM_SOFTMAX : (lse ? CSM_LOGSUMEXP : CSM_LOG_SOFTMAX);
    const T *xr = x + row * x_rs;
    const unsigned char *mr = (F & CSM_F_GEN) && mask ? mask + row * m_rs : 0;
    const i64 j0 = c * chunk, j1 = j0 + chunk < n ? j0 + chunk : n;
    if (!csm_isfin(m) || tau_inf || csm_isnan(sp.hi)) {
        const csm_special sp2 = csm_special_values(kind, w[4] != 0.0, csm_isnan(w[0]) || (!tau_inf && csm_isnan(sp.hi)), w[0],
                                                   (i64)w[5], tau_inf);
        if (kind == CSM_LOGSUMEXP) {
            if (c == 0 && threadIdx.x == 0) csm_traits<T>::store(lse + row * l_rs, csm_n<C>(sp2.lse));
            return;
        }
        for (i64 j = j0 + threadIdx.x; j < j1; j += blockDim.x) {
            const bool on = !mr || mr[j * m_es];
            const double v = csm_w(csm_traits<T>::load(xr + j * csm_es<F>(x_es)));
            csm_traits<T>::store(out + row * o_rs + j * csm_es<F>(o_es), csm_n<C>(csm_special_value(sp2, on, v)));
        }
        return;
    }
    const double L = csm_dd_log1p(sp);
    if (kind == CSM_LOGSUMEXP) {
        if (c == 0 && threadIdx.x == 0) csm_traits<T>::store(lse + row * l_rs, csm_n<C>(csm_w(m) + L));
        return;
    }
    /* 1 / Z = 2^-ZS / (1 + S') */
    const csm_dd tot = csm_dd_add_d(sp, 1.0);
    const C cz = csm_zinv<C>(csm_dd_make(ldexp(tot.hi, csm_expk<C>::ZS), ldexp(tot.lo, csm_expk<C>::ZS)));
    const C Lc = csm_n<C>(L);
    const int off = csm_offset<T, F>(xr);
    T *orow = out + row * o_rs;
    const i64 q0 = (j0 + off) / V, q1 = (j1 + off + V - 1) / V;
#pragma unroll 4
    for (i64 q = q0 + threadIdx.x; q < q1; q += blockDim.x) {
        C p[V];
        csm_load_piece<T, F>(xr, x_es, mr, m_es, q, off, j1, p);
#pragma unroll
        for (int t = 0; t < V; t++) {
            if constexpr (K == CSM_SOFTMAX) {
                C dh, dl;
                tm.diff(p[t], m, dh, dl);
                p[t] = csm_mul(csm_zexp(dh, dl), cz);
            } else {
                p[t] = tm.logout(p[t], m, Lc, L);
            }
        }
        /* the piece's entries before j0 belong to the previous chunk: written entry by entry */
        if (q * V - off >= j0) {
            csm_store_piece<T, F>(orow, o_es, q, off, j1, p);
        } else {
#pragma unroll
            for (int t = 0; t < V; t++) {
                const i64 j = q * V - off + t;
                if (j >= j0 && j < j1) csm_traits<T>::store(orow + j * csm_es<F>(o_es), p[t]);
            }
        }
    }
}

/* ---- forward along a strided axis: tiles of 32 columns x R slices of rows ----
 * Column col of group g: entries at g x_gs + col + i x_rs (i < n). Thread (cx, ry) of a
 * block walks rows ry, ry + R, ... of column 32 blockIdx.x + cx, CSM_COLS_U loads at a time
 * (all issued before any is used), keeping the max m of its entries, the ties and Z' below
 * it relative to m exactly: when a larger max arrives Z' and the ties are rescaled by
 * exp((m_old - m) / tau) with the power of two applied last (csm_dd_mul_exp: nothing
 * representable is lost). The R partial states merge the same way in shared memory; then
 * every thread writes its rows. */
#define CSM_COLS_U 8
#define CSM_COLS_R 8
template <typename T, int K, int TM, int F>
__global__ void __launch_bounds__(32 * CSM_COLS_R)
    csm_fwd_cols(const T *x, i64 x_gs, i64 x_rs, T *out, i64 o_gs, i64 o_rs, const unsigned char *mask, i64 m_gs,
                 i64 m_rs, i64 m_cs, T *lse, i64 l_gs, i64 l_cs, i64 ngroups, i64 width, i64 n, double tau,
                 double inv, double inv_lo)
{
    typedef typename csm_traits<T>::C C;
    enum { U = CSM_COLS_U, R = CSM_COLS_R };
    __shared__ C s_m[R][32];
    __shared__ double s_zh[R][32], s_zl[R][32];
    __shared__ int s_t[R][32], s_live[R][32], s_above[R][32];
    const csm_tau<C, TM> tm(tau, inv, inv_lo);
    const bool tau_inf = !csm_finite(tau);
    const int cx = threadIdx.x, ry = threadIdx.y;
    const i64 col = (i64)blockIdx.x * 32 + cx, g = blockIdx.y;
    const bool on_col = col < width;
    const i64 colc = on_col ? col : width - 1;
    const T *xc = x + g * x_gs + colc;
    const unsigned char *mc = (F & CSM_F_GEN) && mask ? mask + g * m_gs + colc * m_cs : 0;
    const int kind = K == CSM_SOFTMAX ? CSM_SOFTMAX : (lse ? CSM_LOGSUMEXP : CSM_LOG_SOFTMAX);
    const double zs = ldexp(1.0, csm_expk<C>::ZS);
    C m = -(C)CSM_INF;
    csm_dd z = csm_dd_make(0.0, 0.0);
    int ties = 0, live = 0, above = 0, nan = 0;
    for (i64 i0 = ry; i0 < n; i0 += (i64)R * U) {
        C v[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            const i64 i = i0 + (i64)u * R;
            const bool on = i < n && (!mc || mc[i * m_rs]);
            v[u] = on ? csm_traits<T>::load(xc + i * x_rs) : -(C)CSM_INF;
            live += on;
        }
        C bm = -(C)CSM_INF;
#pragma unroll
        for (int u = 0; u < U; u++) {
            nan |= v[u] != v[u];
            above += v[u] > -(C)CSM_INF;
            bm = v[u] > bm ? v[u] : bm;
        }
        if (bm > m) { /* a new max: what was kept relative to the old one moves to it */
            if (m > -(C)CSM_INF) {
                csm_dd d = csm_two_sum(csm_w(m), -csm_w(bm));
                if (TM != CSM_TAU_ONE) d = csm_dd_div_d(d, tau);
                z = csm_dd_mul_exp(csm_dd_add_d(z, ties * zs), d);
            }
            ties = 0;
            m = bm;
        }
        if (!csm_isfin(m)) continue; /* +inf: a special column */
        csm_zsum<C> acc;
#pragma unroll
        for (int u = 0; u < U; u++) {
            C dh, dl;
            tm.diff(v[u], m, dh, dl);
            acc.add(csm_untie(v[u], m, csm_zexp(dh, dl), ties));
        }
        z = csm_dd_add(z, csm_zsum_dd(acc.total()));
    }
    s_m[ry][cx] = m;
    s_zh[ry][cx] = z.hi;
    s_zl[ry][cx] = z.lo;
    s_t[ry][cx] = ties | (nan << 30);
    s_live[ry][cx] = live;
    s_above[ry][cx] = above;
    __syncthreads();
    if (ry == 0) { /* the R slices of this column merged */
        C mm = -(C)CSM_INF;
        int anynan = 0;
        for (int k = 0; k < R; k++) {
            mm = s_m[k][cx] > mm ? s_m[k][cx] : mm;
            anynan |= s_t[k][cx] >> 30;
            live += k ? s_live[k][cx] : 0;
            above += k ? s_above[k][cx] : 0;
        }
        csm_dd zz = csm_dd_make(0.0, 0.0);
        double tt = 0.0;
        if (csm_isfin(mm)) {
            for (int k = 0; k < R; k++) {
                const C mk = s_m[k][cx];
                const int tk = s_t[k][cx] & ((1 << 30) - 1);
                const csm_dd zk = csm_dd_make(s_zh[k][cx], s_zl[k][cx]);
                if (!(mk > -(C)CSM_INF)) continue;
                if (mk == mm) {
                    zz = csm_dd_add(zz, zk);
                    tt += tk;
                } else {
                    csm_dd d = csm_two_sum(csm_w(mk), -csm_w(mm));
                    if (TM != CSM_TAU_ONE) d = csm_dd_div_d(d, tau);
                    zz = csm_dd_add(zz, csm_dd_mul_exp(csm_dd_add_d(zk, tk * zs), d));
                }
            }
        }
        const csm_dd sp = csm_sprime<C>(zz, tt);
        s_m[0][cx] = anynan ? (C)CSM_NAN : mm;
        s_zh[0][cx] = sp.hi;
        s_zl[0][cx] = sp.lo;
        s_live[0][cx] = live;
        s_above[0][cx] = above;
    }
    __syncthreads();
    if (!on_col) return;
    m = s_m[0][cx];
    const csm_dd sp = csm_dd_make(s_zh[0][cx], s_zl[0][cx]);
    T *oc = out + g * o_gs + col;
    if (!csm_isfin(m) || tau_inf || csm_isnan(sp.hi)) {
        const csm_special sv = csm_special_values(kind, s_live[0][cx] != 0, csm_isnan(csm_w(m)) || (!tau_inf && csm_isnan(sp.hi)),
                                                  csm_w(m), s_above[0][cx], tau_inf);
        if (kind == CSM_LOGSUMEXP) {
            if (ry == 0) csm_traits<T>::store(lse + g * l_gs + col * l_cs, csm_n<C>(sv.lse));
            return;
        }
        for (i64 i = ry; i < n; i += R) {
            const bool on = !mc || mc[i * m_rs];
            csm_traits<T>::store(oc + i * o_rs, csm_n<C>(csm_special_value(sv, on, csm_w(csm_traits<T>::load(xc + i * x_rs)))));
        }
        return;
    }
    const double L = csm_dd_log1p(sp);
    if (kind == CSM_LOGSUMEXP) {
        if (ry == 0) csm_traits<T>::store(lse + g * l_gs + col * l_cs, csm_n<C>(csm_w(m) + L));
        return;
    }
    const csm_dd tot = csm_dd_add_d(sp, 1.0);
    const C cz = csm_zinv<C>(csm_dd_make(ldexp(tot.hi, csm_expk<C>::ZS), ldexp(tot.lo, csm_expk<C>::ZS)));
    const C Lc = csm_n<C>(L);
    for (i64 i0 = ry; i0 < n; i0 += (i64)R * U) {
        C v[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            const i64 i = i0 + (i64)u * R;
            const bool on = i < n && (!mc || mc[i * m_rs]);
            v[u] = on ? csm_traits<T>::load(xc + i * x_rs) : -(C)CSM_INF;
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            const i64 i = i0 + (i64)u * R;
            C r;
            if constexpr (K == CSM_SOFTMAX) {
                C dh, dl;
                tm.diff(v[u], m, dh, dl);
                r = csm_mul(csm_zexp(dh, dl), cz);
            } else {
                r = tm.logout(v[u], m, Lc, L);
            }
            if (i < n) csm_traits<T>::store(oc + i * o_rs, r);
        }
    }
}

/* ---- backward: dx = y (g - sum(g y)) / tau  or  (g - exp(y) sum(g)) / tau ----
 * The row's sum per lane in float-float (g y exact as a product and its fma remainder),
 * widened once per lane; dx in float: y ((g - s_hi) - s_lo), and exp(y + log|sum g|) for
 * log_softmax (one exp, no overflow of the product where the result is representable).
 * A row whose float sum overflowed is summed again in double, and one whose sum is beyond
 * float is finished in double (cold, entry by entry). */
template <typename C> struct csm_gsum;
template <> struct csm_gsum<float> {
    float hi = 0.0f, lo = 0.0f;
    __device__ __forceinline__ void add(float v, float err)
    {
        const float s = hi + v, bb = s - hi;
        lo += ((hi - (s - bb)) + (v - bb)) + err;
        hi = s;
    }
    __device__ __forceinline__ void add_prod(float g, float y)
    {
        const float p = csm_mul(g, y);
        add(p, csm_fma(g, y, -p));
    }
    __device__ __forceinline__ double total() const { return csm_finite(csm_w(hi)) ? csm_w(hi) + csm_w(lo) : csm_w(hi); }
};
template <> struct csm_gsum<double> {
    csm_zsum<double> k;
    __device__ __forceinline__ void add(double v, double) { k.add(v); }
    __device__ __forceinline__ void add_prod(double g, double y)
    {
        const double p = g * y;
        k.add(p);
        if (csm_finite(p)) k.add(fma(g, y, -p));
    }
    __device__ __forceinline__ csm_dd total() const { return k.total(); }
};


/* one entry's dx given the row's sum s (softmax: s = sh + sl in the compute type;
   log_softmax: exp(y) s as exp(y) times s rounded where exp(y) is a normal number -- exact
   at y = 0 -- else as sign(s) exp(y + log|s|), lh + ll = log|s|, which keeps the product's
   precision where exp(y) alone would be subnormal) */
template <typename C, int K, int TM> struct csm_bwd_math {
    C sh, sl, lh, ll, sg;
    __device__ __forceinline__ void init(csm_dd s)
    {
        const double t = csm_finite(s.hi) ? s.hi + s.lo : s.hi;
        sh = csm_n<C>(s.hi);
        sl = csm_finite(s.hi) ? csm_n<C>((s.hi - csm_w(sh)) + s.lo) : (C)0;
        if constexpr (K != CSM_SOFTMAX_BWD) {
            sh = csm_n<C>(t);
            const double L = log(fabs(t));
            lh = csm_n<C>(L);
            ll = csm_finite(L) ? csm_n<C>(L - csm_w(lh)) : (C)0;
            sg = t < 0 ? (C)-1 : (C)1;
            if (t != t) sg = (C)CSM_NAN;
        }
    }
    __device__ __forceinline__ C value(C g, C y, const csm_tau<C, TM> &tm) const
    {
        if constexpr (K == CSM_SOFTMAX_BWD) {
            const C d = csm_sub(csm_sub(g, sh), sl);
            if (!csm_isfin(d) && csm_isfin(g) && csm_isfin(sh)) /* g - s overflowed where y (g - s) need not: in halves */
                return csm_mul(tm.scale(csm_mul(y, csm_sub(csm_sub(csm_mul(g, (C)0.5), csm_mul(sh, (C)0.5)),
                                                           csm_mul(sl, (C)0.5)))), (C)2);
            return tm.scale(csm_mul(y, d));
        } else {
            C dh, dl, e;
            csm_two_diff(y, -lh, dh, dl);
            if constexpr (sizeof(C) == 4) {
                const float direct = csm_mul(csm_exp_full(y, 0.0f), sh);
                e = y >= -87.0f ? direct : csm_mul(sg, csm_exp_full(dh, csm_add(dl, ll)));
            } else {
                const double c = dl + ll;
                e = y >= -708.0 ? exp(y) * sh : sg * (exp(dh) * (csm_finite(c) ? 1.0 + c : 1.0));
                if (y != y) e = y;
            }
            return tm.scale(csm_sub(g, e));
        }
    }
};

/* a backward row finished in double, entry by entry from global memory (cold) */
template <typename T, int G, int K, int F>
__device__ __forceinline__ void csm_bwd_row_wide(const T *gr, i64 g_es, const T *yr, i64 y_es, T *orow, i64 o_es,
                                 const unsigned char *mr, i64 m_es, i64 n, int lane, double s, double tau, double inv)
{
    typedef typename csm_traits<T>::C C;
    for (i64 j = lane; j < n; j += G) {
        double r = 0.0;
        if (!mr || mr[j * m_es]) {
            const double g = csm_w(csm_traits<T>::load(gr + j * csm_es<F>(g_es)));
            const double y = csm_w(csm_traits<T>::load(yr + j * csm_es<F>(y_es)));
            r = csm_tdiv(K == CSM_SOFTMAX_BWD ? y * (g - s) : g - exp(y) * s, tau, inv);
        }
        csm_traits<T>::store(orow + j * csm_es<F>(o_es), csm_n<C>(r));
    }
}
/* the row's sum in double, entry by entry (cold: a float sum that overflowed), as the
   exact sum: infinite terms of one sign (and no NaN) make it that infinity, whatever the
   finite terms' running sums did on the way; out of line, so that its registers do not
   weigh on the hot loop's */
template <typename T, int G, int K, int F>
__device__ __noinline__ double csm_bwd_sum_wide(const T *gr, i64 g_es, const T *yr, i64 y_es, const unsigned char *mr, i64 m_es,
                                   i64 n, int lane, int stride, csm_block_scratch *red)
{
    double s = 0.0;
    int flags = 0; /* 1: a +inf term, 2: a -inf term, 4: a NaN term */
    for (i64 j = lane; j < n; j += stride)
        if (!mr || mr[j * m_es]) {
            const double g = csm_w(csm_traits<T>::load(gr + j * csm_es<F>(g_es)));
            const double t = K == CSM_SOFTMAX_BWD ? g * csm_w(csm_traits<T>::load(yr + j * csm_es<F>(y_es))) : g;
            flags |= t == CSM_INF ? 1 : t == -CSM_INF ? 2 : t != t ? 4 : 0;
            s += t;
        }
    s = csm_group_reduce<G>(s, csm_op_sum(), 0.0, red);
    /* the lanes' flags counted in one reduction: fields of 11 bits hold up to 1024 lanes */
    const int cnt = csm_group_reduce<G>((flags & 1) | (flags & 2) << 10 | (flags & 4) << 20, csm_op_sum(), 0, red);
    const int pos = cnt & 2047, neg = cnt >> 11 & 2047, nan = cnt >> 22;
    return nan || (pos && neg) ? CSM_NAN : pos ? CSM_INF : neg ? -CSM_INF : s;
}

template <typename T, int G, int NC, int K, int TM, int F>
__global__ void __launch_bounds__(csm_group<G>::BLOCK, csm_group<G>::MINB_BWD)
    csm_bwd_rows(const T *g, i64 g_rs, i64 g_es, const T *y, i64 y_rs, i64 y_es, T *out, i64 o_rs, i64 o_es,
                 const unsigned char *mask, i64 m_rs, i64 m_es, i64 nrows, i64 n, double tau, double inv, double inv_lo)
{
    typedef typename csm_traits<T>::C C;
    typedef csm_group<G> Gr;
    enum { V = csm_chunk<T>::V, E = NC * csm_chunk<T>::V };
    __shared__ csm_block_scratch red;
    const csm_tau<C, TM> tm(tau, inv, inv_lo);
    const int lane = G <= 32 ? (int)(threadIdx.x & (G - 1)) : (int)threadIdx.x;
    for (i64 r0 = (i64)blockIdx.x * Gr::RPB; r0 < nrows; r0 += (i64)gridDim.x * Gr::RPB) {
        const i64 grow = r0 + (G <= 32 ? threadIdx.x / G : 0);
        const bool active = grow < nrows;
        const i64 row = active ? grow : nrows - 1;
        const T *gr = g + row * g_rs, *yr = y + row * y_rs;
        const unsigned char *mr = (F & CSM_F_GEN) && mask ? mask + row * m_rs : 0;
        const int off = csm_offset<T, F>(gr);
        C gv[E], yv[E];
        unsigned live = 0;
#pragma unroll
        for (int c = 0; c < NC; c++) {
            live |= csm_load_piece<T, F>(gr, g_es, mr, m_es, (i64)c * G + lane, off, n, gv + c * V) << (c * V);
            csm_load_piece<T, F>(yr, y_es, 0, 0, (i64)c * G + lane, off, n, yv + c * V);
        }
#pragma unroll
        for (int e = 0; e < E; e++)
            if (!((live >> e) & 1)) gv[e] = yv[e] = (C)0; /* masked and missing entries take no part */
        csm_gsum<C> acc;
#pragma unroll
        for (int e = 0; e < E; e++) {
            if constexpr (K == CSM_SOFTMAX_BWD) acc.add_prod(gv[e], yv[e]);
            else acc.add(gv[e], (C)0);
        }
        csm_dd s = csm_group_total<G>(acc.total(), &red);
        T *orow = out + row * o_rs;
        if (csm_vote<G>(!csm_finite(s.hi))) { /* rare: a float sum that overflowed is summed in double */
            const double sw = csm_bwd_sum_wide<T, G, K, F>(gr, g_es, yr, y_es, mr, m_es, n, lane, G, &red);
            if (!csm_finite(s.hi)) s = csm_dd_make(sw, 0.0);
        }
        const bool wide = sizeof(C) == 4 && !(fabs(s.hi) <= (double)CSM_FLT_MAX) && csm_finite(s.hi);
        if (csm_vote<G>(wide)) { /* rare: a sum beyond float, the row finished in double */
            if (wide) {
                if (active) csm_bwd_row_wide<T, G, K, F>(gr, g_es, yr, y_es, orow, o_es, mr, m_es, n, lane, s.hi, tau, inv);
                continue;
            }
        }
        if (!active) continue;
        csm_bwd_math<C, K, TM> bm;
        bm.init(s);
#pragma unroll
        for (int e = 0; e < E; e++) gv[e] = ((live >> e) & 1) ? bm.value(gv[e], yv[e], tm) : (C)0;
#pragma unroll
        for (int c = 0; c < NC; c++) csm_store_piece<T, F>(orow, o_es, (i64)c * G + lane, off, n, gv + c * V);
    }
}

/* the backward passes of rows too long for registers: a block per row, two passes over the
   row in 16-byte pieces (the sum; then dx), CSM_BWD_UNROLL pieces in flight per thread */
#define CSM_BWD_UNROLL 4
template <typename T, int K, int TM, int F>
__global__ void __launch_bounds__(512)
    csm_bwd_long(const T *g, i64 g_rs, i64 g_es, const T *y, i64 y_rs, i64 y_es, T *out, i64 o_rs, i64 o_es,
                 const unsigned char *mask, i64 m_rs, i64 m_es, i64 nrows, i64 n, double tau, double inv, double inv_lo)
{
    typedef typename csm_traits<T>::C C;
    enum { V = csm_chunk<T>::V, U = CSM_BWD_UNROLL };
    __shared__ csm_block_scratch red;
    const csm_tau<C, TM> tm(tau, inv, inv_lo);
    const int lane = threadIdx.x;
    for (i64 row = blockIdx.x; row < nrows; row += gridDim.x) {
        const T *gr = g + row * g_rs, *yr = y + row * y_rs;
        const unsigned char *mr = (F & CSM_F_GEN) && mask ? mask + row * m_rs : 0;
        const int off = csm_offset<T, F>(gr);
        const i64 nq = (n + off + V - 1) / V, step = (i64)blockDim.x * U;
        csm_gsum<C> acc;
        for (i64 q0 = lane; q0 < nq; q0 += step) {
            C gv[U][V], yv[U][V];
            unsigned live[U];
#pragma unroll
            for (int u = 0; u < U; u++) {
                const i64 q = q0 + (i64)u * blockDim.x;
                live[u] = csm_load_piece<T, F>(gr, g_es, mr, m_es, q, off, q < nq ? n : 0, gv[u]);
                csm_load_piece<T, F>(yr, y_es, 0, 0, q, off, q < nq ? n : 0, yv[u]);
            }
#pragma unroll
            for (int u = 0; u < U; u++)
#pragma unroll
                for (int t = 0; t < V; t++) {
                    const bool on = (live[u] >> t) & 1;
                    if constexpr (K == CSM_SOFTMAX_BWD) acc.add_prod(on ? gv[u][t] : (C)0, on ? yv[u][t] : (C)0);
                    else acc.add(on ? gv[u][t] : (C)0, (C)0);
                }
        }
        csm_dd s = csm_group_total<1024>(acc.total(), &red);
        if (!csm_finite(s.hi)) s = csm_dd_make(csm_bwd_sum_wide<T, 1024, K, F>(gr, g_es, yr, y_es, mr, m_es, n, lane, blockDim.x, &red), 0.0);
        T *orow = out + row * o_rs;
        if (sizeof(C) == 4 && !(fabs(s.hi) <= (double)CSM_FLT_MAX) && csm_finite(s.hi)) {
            for (i64 j = lane; j < n; j += blockDim.x) {
                double r = 0.0;
                if (!mr || mr[j * m_es]) {
                    const double gj = csm_w(csm_traits<T>::load(gr + j * csm_es<F>(g_es)));
                    const double yj = csm_w(csm_traits<T>::load(yr + j * csm_es<F>(y_es)));
                    r = csm_tdiv(K == CSM_SOFTMAX_BWD ? yj * (gj - s.hi) : gj - exp(yj) * s.hi, tau, inv);
                }
                csm_traits<T>::store(orow + j * csm_es<F>(o_es), csm_n<C>(r));
            }
            continue;
        }
        csm_bwd_math<C, K, TM> bm;
        bm.init(s);
        for (i64 q0 = lane; q0 < nq; q0 += step) {
            C gv[U][V], yv[U][V];
            unsigned live[U];
#pragma unroll
            for (int u = 0; u < U; u++) {
                const i64 q = q0 + (i64)u * blockDim.x;
                live[u] = csm_load_piece<T, F>(gr, g_es, mr, m_es, q, off, q < nq ? n : 0, gv[u]);
                csm_load_piece<T, F>(yr, y_es, 0, 0, q, off, q < nq ? n : 0, yv[u]);
            }
#pragma unroll
            for (int u = 0; u < U; u++) {
                const i64 q = q0 + (i64)u * blockDim.x;
#pragma unroll
                for (int t = 0; t < V; t++) gv[u][t] = ((live[u] >> t) & 1) ? bm.value(gv[u][t], yv[u][t], tm) : (C)0;
                if (q < nq) csm_store_piece<T, F>(orow, o_es, q, off, n, gv[u]);
            }
        }
    }
}

/* ---- cross-entropy with class indices: G lanes per row, the row in registers ----
 * loss = log1p(S') + (m - x[label]) / tau (double; 0 where label == ignore_index), and with
 * grad: (softmax - onehot(label)) f, f = grad_scale / tau given as the pair f + f_lo. No
 * weights, smoothing or mask (csm_xent_block takes those). Special rows (NaN, an infinite
 * max, tau = +inf) by the semantics of csm_xent_block, cold. */
template <typename T, int G, int NC, int TM, int F>
__global__ void __launch_bounds__(csm_group<G>::BLOCK, csm_group<G>::MINB)
    csm_xent_rows(const T *x, i64 x_rs, i64 x_es, const i64 *labels, i64 lab_s, double *loss, i64 loss_s, T *grad,
                  i64 gr_rs, i64 gr_es, i64 nrows, i64 n, double tau, double inv, double inv_lo, i64 ignore_index,
                  double f, double f_lo)
{
    typedef typename csm_traits<T>::C C;
    typedef csm_group<G> Gr;
    enum { V = csm_chunk<T>::V, E = NC * csm_chunk<T>::V };
    __shared__ csm_block_scratch red;
    const csm_tau<C, TM> tm(tau, inv, inv_lo);
    const C fh = csm_n<C>(f), fl = csm_n<C>(f_lo);
    const bool tau_inf = !csm_finite(tau);
    const int lane = G <= 32 ? (int)(threadIdx.x & (G - 1)) : (int)threadIdx.x;
    for (i64 r0 = (i64)blockIdx.x * Gr::RPB; r0 < nrows; r0 += (i64)gridDim.x * Gr::RPB) {
        const i64 grow = r0 + (G <= 32 ? threadIdx.x / G : 0);
        const bool active = grow < nrows;
        const i64 row = active ? grow : nrows - 1;
        const T *xr = x + row * x_rs;
        const int off = csm_offset<T, F>(xr);
        const i64 label = labels[row * lab_s];
        const bool ignored = label == ignore_index;
        C v[E];
#pragma unroll
        for (int c = 0; c < NC; c++) csm_load_piece<T, F>(xr, x_es, 0, 0, (i64)c * G + lane, off, n, v + c * V);
        C m = -(C)CSM_INF;
#pragma unroll
        for (int e = 0; e < E; e++) m = csm_maxnan(m, v[e]);
        m = csm_group_reduce<G>(m, csm_op_max(), -(C)CSM_INF, &red);
        const bool special = !csm_isfin(m) || tau_inf;
        csm_zsum<C> acc;
        int ties = 0;
#pragma unroll
        for (int e = 0; e < E; e += 2) {
            C dh, dl, eh, el;
            tm.diff(v[e], m, dh, dl);
            tm.diff(v[e + 1], m, eh, el);
            const C z0 = csm_zexp(dh, dl), z1 = csm_zexp(eh, el);
            const C u0 = csm_untie(v[e], m, z0, ties), u1 = csm_untie(v[e + 1], m, z1, ties);
            v[e] = z0;
            v[e + 1] = z1;
            acc.add2(u0, u1);
        }
        const csm_dd z = csm_group_total<G>(acc.total(), &red);
        ties = csm_group_reduce<G>(ties, csm_op_sum(), 0, &red);
        T *gr = grad ? grad + row * gr_rs : 0;
        if (csm_vote<G>(special)) { /* rare: uniform (tau = +inf) or NaN rows */
            int cnt = 0;
            for (i64 j = lane; j < n; j += G) cnt += csm_traits<T>::load(xr + j * csm_es<F>(x_es)) > -(C)CSM_INF;
            cnt = csm_group_reduce<G>(cnt, csm_op_sum(), 0, &red);
            if (special) {
                if (!active) continue;
                const bool uniform = tau_inf && csm_isfin(m);
                const double xl = ignored ? 0.0 : csm_w(csm_traits<T>::load(xr + label * csm_es<F>(x_es)));
                if (lane == 0)
                    loss[row * loss_s] = ignored ? 0.0 : uniform ? (xl > -CSM_INF ? log((double)cnt) : CSM_INF) : CSM_NAN;
                if (gr)
                    for (i64 j = lane; j < n; j += G) {
                        const double xj = csm_w(csm_traits<T>::load(xr + j * csm_es<F>(x_es)));
                        const double p = uniform ? (xj > -CSM_INF ? 1.0 / cnt : 0.0) : CSM_NAN;
                        csm_traits<T>::store(gr + j * csm_es<F>(gr_es),
                                             ignored ? (C)0 : csm_n<C>((p - (j == label ? 1.0 : 0.0)) * f));
                    }
                continue;
            }
        }
        if (!active) continue;
        const csm_dd sp = csm_sprime<C>(z, (double)ties);
        if (lane == 0) {
            const double xl = ignored ? 0.0 : csm_w(csm_traits<T>::load(xr + label * csm_es<F>(x_es)));
            loss[row * loss_s] = ignored ? 0.0 : csm_dd_log1p(sp) + csm_tdiv(csm_w(m) - xl, tau, inv);
        }
        if (!gr) continue;
        const csm_dd tot = csm_dd_add_d(sp, 1.0);
        const C cz = csm_zinv<C>(csm_dd_make(ldexp(tot.hi, csm_expk<C>::ZS), ldexp(tot.lo, csm_expk<C>::ZS)));
        /* at a label that holds the max, p_y - 1 = -S' / (1 + S') (p_y - 1 would cancel) */
        const bool lab_max = !ignored && (C)csm_traits<T>::load(xr + label * csm_es<F>(x_es)) == m;
        const C qy = -csm_mul(csm_n<C>(ldexp(sp.hi, csm_expk<C>::ZS)), cz);
#pragma unroll
        for (int c = 0; c < NC; c++)
#pragma unroll
            for (int t = 0; t < V; t++) {
                const int e = c * V + t;
                const i64 j = ((i64)c * G + lane) * V - off + t;
                const C q = j == label && lab_max ? qy : csm_sub(csm_mul(v[e], cz), j == label ? (C)1 : (C)0);
                v[e] = ignored ? (C)0 : csm_fma(q, fh, csm_mul(q, fl));
            }
#pragma unroll
        for (int c = 0; c < NC; c++) csm_store_piece<T, F>(gr, gr_es, (i64)c * G + lane, off, n, v + c * V);
    }
}

/* ---- cross-entropy in general, a block per row, in double ----
 * index targets: labels[row] (int64; ignore_index rows give 0); probability targets: q
 * (same layout as x). weight: per class, or NULL. The gradient is scaled by `scale` / tau
 * (torch.nn.functional.cross_entropy; the formulas are csm_grad.h's, the C core's). */
template <typename T> struct csm_xent_row {
    typedef typename csm_traits<T>::C C;
    const T *x;
    i64 x_es;
    const unsigned char *mask;
    i64 m_es;
    const T *q; /* probability targets, or NULL */
    i64 q_es;
    const double *w; /* class weights, or NULL */
    __device__ __forceinline__ bool live(i64 j) const { return !mask || mask[j * m_es]; }
    __device__ __forceinline__ double logit(i64 j) const
    {
        return live(j) ? csm_w(csm_traits<T>::load(x + j * x_es)) : -CSM_INF;
    }
    __device__ __forceinline__ double weight(i64 j) const { return w ? w[j] : 1.0; }
    __device__ __forceinline__ double target(i64 j) const { return csm_w(csm_traits<T>::load(q + j * q_es)); }
};

/* what the loss and the gradient need of a row */
struct csm_xent_stats {
    double m;          /* the max */
    double L, cz;      /* ordinary rows: log1p(S'), 2^-ZS / (1 + S') */
    double uniform_lp; /* tau = +inf: log of the entries above -inf */
    double eps_k, W;   /* smoothing per unmasked class; the sum of their weights */
    double tau, inv;
    bool normal, uniform, any;
    /* -log p_j of an unmasked entry of value v: L + (m - v) / tau on ordinary rows; special
       rows by the semantics table (p uniform, NaN, or 0 for the -inf entries) */
    __device__ __forceinline__ double neglogp(double v) const
    {
        if (normal) return L + csm_tdiv(m - v, tau, inv);
        if (uniform) return v > -CSM_INF ? uniform_lp : CSM_INF;
        return any ? CSM_NAN : CSM_INF;
    }
    __device__ __forceinline__ double prob(double v, const csm_tau<double, CSM_TAU_WIDE> &tw) const
    {
        if (normal) {
            double dh, dl;
            tw.diff(v, m, dh, dl);
            return csm_zexp(dh, dl) * cz;
        }
        return exp(-neglogp(v));
    }
};

template <typename T>
__device__ csm_xent_stats csm_xent_row_stats(const csm_xent_row<T> &r, i64 n, double tau, double inv, double eps,
                                             csm_block_scratch *red)
{
    const csm_tau<double, CSM_TAU_WIDE> tw(tau, inv, 0.0);
    double m = -CSM_INF;
    int any = 0, nan = 0, K = 0;
    double W = 0.0;
    for (i64 j = threadIdx.x; j < n; j += blockDim.x) {
        const bool on = r.live(j);
        const double v = r.logit(j);
        any |= on;
        nan |= on && csm_isnan(v);
        K += on;
        if (on) W += r.weight(j);
        m = csm_isnan(v) ? m : fmax(m, v);
    }
    csm_xent_stats st;
    st.tau = tau;
    st.inv = inv;
    m = csm_block_max(m, red);
    any = csm_block_count(any, red);
    nan = csm_block_count(nan, red);
    K = csm_block_count(K, red);
    st.m = m;
    st.any = any != 0;
    st.W = csm_block_sum(csm_dd_make(W, 0.0), red).hi;
    st.eps_k = K > 0 ? eps / (double)K : 0.0;
    st.normal = any && csm_finite(st.m) && csm_finite(tau) && !nan;
    st.L = st.cz = st.uniform_lp = 0.0;
    if (st.normal) {
        csm_zsum<double> acc;
        int ties = 0;
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) {
            const double v = r.logit(j);
            double dh, dl;
            tw.diff(v, m, dh, dl);
            acc.add(csm_untie(v, m, csm_zexp(dh, dl), ties));
        }
        ties = csm_block_count(ties, red);
        const csm_dd zs = csm_block_sum(acc.total(), red);
        const csm_dd sp = csm_sprime<double>(zs, (double)ties);
        st.normal = !csm_isnan(sp.hi);
        st.L = csm_dd_log1p(sp);
        const csm_dd tot = csm_dd_add_d(sp, 1.0);
        st.cz = ldexp(1.0 / tot.hi - tot.lo / (tot.hi * tot.hi), -csm_expk<double>::ZS);
    }
    st.uniform = !st.normal && !csm_finite(tau) && any && !nan && csm_finite(st.m);
    if (st.uniform) {
        int cnt = 0;
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) cnt += r.live(j) && r.logit(j) > -CSM_INF;
        st.uniform_lp = log((double)csm_block_count(cnt, red));
    }
    return st;
}

/* the row's loss; and A (the gradient is p A - B): sum_j w_j q'_j for probabilities */
template <typename T>
__device__ double csm_xent_row_loss(const csm_xent_row<T> &r, const csm_xent_stats &st, i64 label, i64 n, double eps,
                                    double *A, csm_block_scratch *red)
{
    csm_zsum<double> loss, a;
    for (i64 j = threadIdx.x; j < n; j += blockDim.x) {
        if (!r.live(j)) continue;
        const double wj = r.weight(j);
        double tj;
        if (r.q) {
            tj = (1.0 - eps) * r.target(j) + st.eps_k;
            a.add(wj * tj);
        } else {
            tj = (j == label ? 1.0 - eps : 0.0) + st.eps_k;
        }
        if (tj != 0.0 && wj != 0.0) loss.add(wj * tj * st.neglogp(r.logit(j))); /* weight 0: no term (0 log 0 = 0) */
    }
    const csm_dd total = csm_block_sum(loss.total(), red);
    const csm_dd at = csm_block_sum(a.total(), red);
    *A = r.q ? at.hi + at.lo : (1.0 - eps) * r.weight(label) + st.eps_k * st.W;
    return total.hi + total.lo;
}

template <typename T>
__global__ void __launch_bounds__(256)
    csm_xent_block(const T *x, i64 x_rs, i64 x_es, const T *q, i64 q_rs, i64 q_es, const i64 *labels, i64 lab_s,
                   const double *weight, const unsigned char *mask, i64 m_rs, i64 m_es, double *loss, i64 loss_s,
                   T *grad, i64 gr_rs, i64 gr_es, i64 nrows, i64 n, double tau, double inv, double eps,
                   i64 ignore_index, double scale)
{
    typedef typename csm_traits<T>::C C;
    __shared__ csm_block_scratch red;
    const csm_tau<double, CSM_TAU_WIDE> tw(tau, inv, 0.0);
    for (i64 row = blockIdx.x; row < nrows; row += gridDim.x) {
        T *gr = grad ? grad + row * gr_rs : 0;
        const i64 label = labels ? labels[row * lab_s] : 0;
        if (labels && label == ignore_index) {
            if (threadIdx.x == 0) loss[row * loss_s] = 0.0;
            if (gr)
                for (i64 j = threadIdx.x; j < n; j += blockDim.x) csm_traits<T>::store(gr + j * gr_es, (C)0);
            continue;
        }
        const csm_xent_row<T> r = {x + row * x_rs, x_es, mask ? mask + row * m_rs : 0, m_es, q ? q + row * q_rs : 0,
                                   q_es, weight};
        const csm_xent_stats st = csm_xent_row_stats(r, n, tau, inv, eps, &red);
        double A;
        const double l = csm_xent_row_loss(r, st, label, n, eps, &A, &red);
        if (threadIdx.x == 0) loss[row * loss_s] = l;
        if (!gr) continue;
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) {
            double gj = 0.0;
            if (r.live(j)) {
                const double wj = r.weight(j);
                const double bj = r.q ? wj * ((1.0 - eps) * r.target(j) + st.eps_k)
                                      : (j == label ? (1.0 - eps) * wj : 0.0) + st.eps_k * wj;
                gj = csm_tdiv((st.prob(r.logit(j), tw) * A - bj) * scale, tau, inv);
            }
            csm_traits<T>::store(gr + j * gr_es, csm_n<C>(gj));
        }
    }
}

/* ---- Jacobians from contiguous rows of softmax s and log_softmax lp (rows x n) ----
 * A block per (row, i): J[r, i, j] for every j, in double, divided by tau where 1/tau is
 * not a normal double (no 0 * inf). */
template <typename T>
__global__ void __launch_bounds__(256)
    csm_jacobian(const T *s, const T *lp, T *J, i64 nrows, i64 n, double tau, double inv, i64 log_kind)
{
    typedef typename csm_traits<T>::C C;
    for (i64 b = blockIdx.x; b < nrows * n; b += gridDim.x) {
        const i64 r = b / n, i = b - r * n;
        const T *sr = s + r * n;
        const double si = csm_w(csm_traits<T>::load(sr + i));
        const double om = -expm1(csm_w(csm_traits<T>::load(lp + r * n + i))); /* 1 - s_i, exactly */
        T *Jr = J + b * n;
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) {
            const double sj = csm_w(csm_traits<T>::load(sr + j));
            const double v = i == j ? (log_kind ? om : sj * om) : (log_kind ? -sj : -si * sj);
            csm_traits<T>::store(Jr + j, csm_n<C>(csm_tdiv(v, tau, inv)));
        }
    }
}
