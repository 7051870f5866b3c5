/*
 * csoftmax_kernels.cu - the CUDA kernels of csoftmax's `cuda` backend.
 *
 * One templated source, compiled by NVRTC through cupy.RawModule with name_expressions
 * (csoftmax/_backends/cuda.py lists them), lazily, once per device and dtype. The same
 * source also compiles as host C++ against tests/cuda_emu/emu.h, which runs the kernels
 * on the CPU in the test suite (CSM_EMULATE).
 *
 * Storage types T: csm_half (float16, computed in float), float, double. Every kernel
 * computes what the C core computes, with the same accuracy measures: x - max is taken
 * with its rounding error (two_sum) and the error is folded into exp's argument (our own
 * exp, with the C core's constants: csm_expconst.h); sums run in double (float16/32) or
 * Kahan-compensated double (float64); the max entry is left out of the sum S', so
 * log_softmax's max entry is -log1p(S'); pieces of a row merge in double-double
 * (csm_dd.h, the C core's). Special rows (NaN, infinite max, fully masked, tau = +inf)
 * get the values of the semantics table (csm_special.h, the C core's). The shared
 * headers come from src/backends/common; docs/design.md, "The CUDA kernels".
 *
 * Kernels (the planner in cuda.py chooses by layout and row length):
 *   csm_fwd_rows<T, G, NC>  G lanes per row (32 / G rows per warp), NC 16-byte chunks
 *                           per lane, the row in registers (n <= G NC V)
 *   csm_fwd_block<T>        a block per row, the row cached in shared memory
 *   csm_fwd_split_*<T>      longer rows, or few long ones: per-chunk statistics, a merge
 *                           per row in double-double, then the chunks write their outputs
 *   csm_fwd_cols<T>         a strided softmax axis whose neighbour is contiguous: a
 *                           thread per column, loads coalesced across the columns
 *   csm_bwd_warp<T, E>, csm_bwd_block<T>   the two backward passes, fused
 *   csm_xent_block<T>       cross-entropy: loss and gradient in one kernel
 *   csm_jacobian<T>         J[r, i, j] from softmax and log_softmax rows
 * Rows are addressed by a row stride and an entry stride (elements; 64-bit), so any
 * layout whose rows are evenly spaced runs without a copy. `kind` is a csm_kinds.h code.
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

/* the shared headers of the C core (src/backends/common), as device code */
#define CSM_FN __device__ inline
#include "csm_dd.h"
#include "csm_expconst.h"
#include "csm_kinds.h"
#include "csm_special.h"

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
 * subnormal operands and results to zero (a softmax output of 1e-39 would come out 0,
 * and x - max would lose a subnormal x). Wherever a float value can be subnormal -- the
 * outputs, x - max, the max itself, widening to and narrowing from double -- the kernels
 * use these, which issue the IEEE instructions (no .ftz); double arithmetic is never
 * flushed, so its overloads are plain. */
#ifdef CSM_EMULATE
#define CSM_F32_OP2(name, expr)                                                                                        \
    __device__ __forceinline__ float name(float a, float b) { return expr; }
CSM_F32_OP2(csm_add, a + b)
CSM_F32_OP2(csm_sub, a - b)
CSM_F32_OP2(csm_mul, a * b)
CSM_F32_OP2(csm_fmax, fmaxf(a, b))
__device__ __forceinline__ float csm_fma(float a, float b, float c) { return fmaf(a, b, c); }
__device__ __forceinline__ double csm_w(float v) { return (double)v; }
__device__ __forceinline__ float csm_narrow_f(double v) { return (float)v; }
__device__ __forceinline__ bool csm_gt(float a, float b) { return a > b; }
__device__ __forceinline__ bool csm_eq(float a, float b) { return a == b; }
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
CSM_F32_OP2(csm_fmax, "max.f32") /* a NaN operand gives the other, as fmaxf */
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
#define CSM_F32_CMP(name, ins)                                                                                         \
    __device__ __forceinline__ bool name(float a, float b)                                                             \
    {                                                                                                                  \
        unsigned r;                                                                                                    \
        asm("{ .reg .pred p; " ins " p, %1, %2; selp.u32 %0, 1, 0, p; }" : "=r"(r) : "f"(a), "f"(b));                 \
        return r != 0;                                                                                                 \
    }
CSM_F32_CMP(csm_gt, "setp.gt.f32")
CSM_F32_CMP(csm_eq, "setp.eq.f32")
#endif
__device__ __forceinline__ double csm_add(double a, double b) { return a + b; }
__device__ __forceinline__ double csm_sub(double a, double b) { return a - b; }
__device__ __forceinline__ double csm_mul(double a, double b) { return a * b; }
__device__ __forceinline__ double csm_fmax(double a, double b) { return fmax(a, b); }
__device__ __forceinline__ double csm_fma(double a, double b, double c) { return fma(a, b, c); }
__device__ __forceinline__ double csm_w(double v) { return v; }
__device__ __forceinline__ bool csm_gt(double a, double b) { return a > b; }
__device__ __forceinline__ bool csm_eq(double a, double b) { return a == b; }
/* an element widened to double, keeping subnormals */
template <typename T> __device__ __forceinline__ double csm_loadw(const T *p) { return csm_w(csm_traits<T>::load(p)); }
/* double -> the compute type C, keeping subnormals */
template <typename C> __device__ __forceinline__ C csm_n(double v);
template <> __device__ __forceinline__ float csm_n<float>(double v) { return csm_narrow_f(v); }
template <> __device__ __forceinline__ double csm_n<double>(double v) { return v; }

/* ---- scalar helpers ---- */
__device__ __forceinline__ bool csm_isnan(double v) { return v != v; }

/* s + e == a - b exactly */
template <typename C> __device__ __forceinline__ void csm_two_diff(C a, C b, C &s, C &e)
{
    s = csm_sub(a, b);
    C bb = csm_sub(s, a);
    e = csm_sub(csm_sub(a, csm_sub(s, bb)), csm_add(b, bb));
}

/* ---- the exp of the C core: exp(dh + dl), dh may be +-inf or NaN ----
 * One body over the constants of each compute type (csm_expconst.h): the float version's
 * final scaling is csm_mul, IEEE even under -ftz, since its result may be subnormal. */
template <typename C> struct csm_expk;
#define CSM_EXPK_CONSTANTS(C, P)                                                                                       \
    static constexpr C LO = CSM_EXP_##P##_LO, HI = CSM_EXP_##P##_HI, LOG2E = CSM_EXP_##P##_LOG2E;                     \
    static constexpr C MAGIC = CSM_EXP_##P##_MAGIC, LN2_HI = CSM_EXP_##P##_LN2_HI, LN2_LO = CSM_EXP_##P##_LN2_LO;
template <> struct csm_expk<float> {
    typedef int I;
    CSM_EXPK_CONSTANTS(float, F32)
    enum { KMIN = -126, KMAX = 127, BIAS = 127, MANT = 23 };
    static __device__ __forceinline__ float fma(float a, float b, float c) { return fmaf(a, b, c); }
    static __device__ __forceinline__ I bits(float v) { return __float_as_int(v); }
    static __device__ __forceinline__ float pow2(I k) { return __int_as_float((k + BIAS) << MANT); }
};
template <> struct csm_expk<double> {
    typedef i64 I;
    CSM_EXPK_CONSTANTS(double, F64)
    enum { KMIN = -1022, KMAX = 1023, BIAS = 1023, MANT = 52 };
    static __device__ __forceinline__ double fma(double a, double b, double c) { return ::fma(a, b, c); }
    static __device__ __forceinline__ I bits(double v) { return __double_as_longlong(v); }
    static __device__ __forceinline__ double pow2(I k) { return __longlong_as_double((k + BIAS) << MANT); }
};
#undef CSM_EXPK_CONSTANTS
/* P(r) by Horner's rule */
__device__ __forceinline__ float csm_exp_poly(float r)
{
    const float c[CSM_EXP_F32_NPOLY] = {CSM_EXP_F32_POLY};
    float p = c[0];
    for (int i = 1; i < CSM_EXP_F32_NPOLY; i++) p = fmaf(p, r, c[i]);
    return p;
}
__device__ __forceinline__ double csm_exp_poly(double r)
{
    const double c[CSM_EXP_F64_NPOLY] = {CSM_EXP_F64_POLY};
    double p = c[0];
    for (int i = 1; i < CSM_EXP_F64_NPOLY; i++) p = fma(p, r, c[i]);
    return p;
}

template <typename C> __device__ __forceinline__ C csm_exp_dd(C dh, C dl)
{
    typedef csm_expk<C> K;
    typedef typename K::I I;
    C x = dh < K::LO ? K::LO : (dh > K::HI ? K::HI : dh);
    if (x != dh) dl = (C)0;
    if (dh != dh) return dh;
    C t = K::fma(x, K::LOG2E, K::MAGIC);
    C kf = t - K::MAGIC;
    C r = K::fma(kf, -K::LN2_HI, x) + K::fma(kf, -K::LN2_LO, dl);
    C e = (C)1 + K::fma(csm_exp_poly(r), r * r, r);
    I k = K::bits(t) - K::bits(K::MAGIC);
    if (k >= K::KMIN && k <= K::KMAX) return csm_mul(e, K::pow2(k));
    I k1 = k >> 1, k2 = k - k1; /* the result may be subnormal */
    return csm_mul(csm_mul(e, K::pow2(k1)), K::pow2(k2));
}

/* (x - ref) / tau as dh + dl, accurate to ~1 ulp of C in absolute terms */
__device__ __forceinline__ void csm_diff(float x, float ref, double tau, double inv_tau, float &dh, float &dl)
{
    if (tau == 1.0) {
        csm_two_diff(x, ref, dh, dl);
        return;
    }
    double d = (csm_w(x) - csm_w(ref)) * inv_tau; /* exact difference, one rounding far below float's */
    dh = csm_narrow_f(d);
    dl = csm_finite(d) ? csm_narrow_f(d - csm_w(dh)) : 0.0f;
    if (!csm_finite(dl)) dl = 0.0f;
}

__device__ __forceinline__ void csm_diff(double x, double ref, double tau, double inv_tau, double &dh, double &dl)
{
    double sh, sl;
    csm_two_diff(x, ref, sh, sl);
    if (tau == 1.0) {
        dh = sh;
        dl = csm_finite(sl) ? sl : 0.0;
        return;
    }
    double q = sh * inv_tau;
    double rem = fma(-q, tau, sh); /* sh - q tau, exactly */
    dh = q;
    dl = (rem + (csm_finite(sl) ? sl : 0.0)) * inv_tau;
    if (!csm_finite(dl)) dl = 0.0;
}

/* exp((x - ref) / tau) */
template <typename C> __device__ __forceinline__ C csm_expdiff(C x, C ref, double tau, double inv_tau)
{
    C dh, dl;
    csm_diff(x, ref, tau, inv_tau, dh, dl);
    return csm_exp_dd(dh, dl);
}

/* (x - m) / tau - lse, the log_softmax of one entry (same-sign parts: no error term) */
template <typename C> __device__ __forceinline__ C csm_logp(C x, C m, C lse, double inv_tau, bool scaled)
{
    C d = csm_sub(x, m);
    if (scaled) {
        const C it = csm_n<C>(inv_tau);
        C q = csm_mul(d, it);
        d = (d == -(C)CSM_INF && x > -(C)CSM_INF) ? csm_sub(csm_mul(x, it), csm_mul(m, it)) : q;
    }
    return csm_sub(d, lse);
}

/* a finished forward value: softmax e * f, where v holds e = exp((x - m) / tau) and f =
   1 / (1 + S'); log_softmax (x - m) / tau - f, where v holds x and f = log1p(S') */
template <typename C> __device__ __forceinline__ C csm_finish(int kind, C v, C m, C f, double inv_tau, bool scaled)
{
    return kind == CSM_SOFTMAX ? csm_mul(v, f) : csm_logp(v, m, f, inv_tau, scaled);
}
template <typename C> __device__ __forceinline__ C csm_finish_factor(int kind, csm_dd s)
{
    return kind == CSM_SOFTMAX ? csm_n<C>(csm_dd_inv_1p(s)) : csm_n<C>(csm_dd_log1p(s));
}

/* ---- the per-thread sum: double for float rows; Kahan-compensated for double rows ---- */
struct csm_sum {
    double s, c; /* value s - c */
    __device__ __forceinline__ void add(double v)
    {
        double y = v - c, t = s + y;
        c = csm_finite(t) ? (t - s) - y : 0.0; /* past an inf, plain addition: +-inf, or NaN */
        s = t;
    }
};

/* ---- reductions ----
 * csm_butterfly<G>(v, op): op over the G lanes of an aligned group (every lane of the
 * warp takes part), every lane gets the result. csm_block_reduce: the same over a block
 * (blockDim.x a multiple of 32, <= 1024), through one slot per warp. */
struct csm_op_max {
    template <typename V> __device__ __forceinline__ V operator()(V a, V b) const { return csm_fmax(a, b); }
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
    double d[32];
    int i[32];
    i64 l[32];
    csm_dd dd[32];
};
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
__device__ __forceinline__ double csm_block_max(double v, csm_block_scratch *sh)
{
    return csm_block_reduce(v, csm_op_max(), -CSM_INF, sh);
}
__device__ __forceinline__ int csm_block_or(int v, csm_block_scratch *sh) { return csm_block_reduce(v, csm_op_or(), 0, sh); }
__device__ __forceinline__ csm_dd csm_block_sum(csm_dd v, csm_block_scratch *sh)
{
    return csm_block_reduce(v, csm_op_sum(), csm_dd_make(0.0, 0.0), sh);
}
/* block sums of counts, exactly: one count, or two or three packed into one 64-bit sum
   (each below 2^21 here) */
__device__ __forceinline__ int csm_block_count(int a, csm_block_scratch *sh)
{
    return csm_block_reduce(a, csm_op_sum(), 0, sh);
}
__device__ __forceinline__ void csm_block_counts(int &a, int &b, int &c, csm_block_scratch *sh)
{
    const i64 packed = csm_block_reduce((i64)a | ((i64)b << 21) | ((i64)c << 42), csm_op_sum(), (i64)0, sh);
    a = (int)(packed & 0x1fffff);
    b = (int)((packed >> 21) & 0x1fffff);
    c = (int)(packed >> 42);
}
__device__ __forceinline__ void csm_block_counts(int &a, int &b, csm_block_scratch *sh)
{
    int c = 0;
    csm_block_counts(a, b, c, sh);
}

/* the values of a special row's entry, in the compute type (csm_special.h) */
template <typename C> __device__ __forceinline__ C csm_special_entry(const csm_special &sp, bool on, C v)
{
    return csm_n<C>(csm_special_value(sp, on, csm_w(v)));
}

/* ---- 16-byte chunks: V = 16 / sizeof(T) consecutive entries, one vector access ---- */
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

/* V entries j .. j + V - 1 of a row (those below `end`): one 16-byte load when vec and
   the chunk is whole, else one at a time along the stride; masked and missing entries
   -inf. Returns the live bits. */
template <typename T>
__device__ __forceinline__ unsigned csm_load_piece(const T *xr, i64 x_es, const unsigned char *mr, i64 m_es, i64 j,
                                                   i64 end, bool vec, typename csm_traits<T>::C *v)
{
    typedef typename csm_traits<T>::C C;
    enum { V = csm_chunk<T>::V };
    unsigned live = 0;
    if (vec && j + V <= end) {
        csm_chunk<T>::load(xr + j, v);
        live = (1u << V) - 1u;
    } else {
#pragma unroll
        for (int t = 0; t < V; t++) {
            v[t] = -(C)CSM_INF;
            if (j + t < end) {
                v[t] = csm_traits<T>::load(xr + (j + t) * x_es);
                live |= 1u << t;
            }
        }
    }
    if (mr) {
#pragma unroll
        for (int t = 0; t < V; t++)
            if (j + t < end && !mr[(j + t) * m_es]) {
                live &= ~(1u << t);
                v[t] = -(C)CSM_INF;
            }
    }
    return live;
}

/* the store matching csm_load_piece */
template <typename T>
__device__ __forceinline__ void csm_store_piece(T *orow, i64 o_es, i64 j, i64 end, bool vec,
                                                const typename csm_traits<T>::C *v)
{
    enum { V = csm_chunk<T>::V };
    if (vec && j + V <= end) {
        csm_chunk<T>::store(orow + j, v);
    } else {
#pragma unroll
        for (int t = 0; t < V; t++)
            if (j + t < end) csm_traits<T>::store(orow + (j + t) * o_es, v[t]);
    }
}

/* the per-lane sum of exps: plain double for float rows (29 spare bits), compensated for
   double rows; group-reduced to S' as double-double */
template <typename C> struct csm_rowsum;
template <> struct csm_rowsum<float> {
    double s;
    __device__ __forceinline__ void init() { s = 0.0; }
    __device__ __forceinline__ void add(float e) { s += csm_w(e); }
    __device__ __forceinline__ csm_dd local() const { return csm_dd_make(s, 0.0); }
    template <int G> __device__ __forceinline__ csm_dd total() { return csm_dd_make(csm_butterfly<G>(s, csm_op_sum()), 0.0); }
};
template <> struct csm_rowsum<double> {
    csm_sum k;
    __device__ __forceinline__ void init() { k.s = k.c = 0.0; }
    __device__ __forceinline__ void add(double e) { k.add(e); }
    __device__ __forceinline__ csm_dd local() const { return csm_dd_make(k.s, -k.c); }
    template <int G> __device__ __forceinline__ csm_dd total() { return csm_butterfly<G>(local(), csm_op_sum()); }
};

/* ---- forward: G lanes per row (32 / G rows per warp), the row in registers ----
 * Lane l of a row's group holds chunks l, l + G, ..., NC of them, of V consecutive
 * entries (n <= G NC V). With vec (rows contiguous and 16-byte aligned) a whole chunk is
 * one 16-byte load and store; otherwise entries go one at a time along their strides.
 * The max's own exp is left out of S' by counting the entries equal to the max: S' = the
 * sum over the entries below it + (ties - 1). Groups past the last row shadow it (they
 * read, never write), so every lane reaches every shuffle. */
template <typename T, int G, int NC>
__global__ void __launch_bounds__(256)
    csm_fwd_rows(const T *x, i64 x_rs, i64 x_es, T *out, i64 o_rs, i64 o_es, const unsigned char *mask, i64 m_rs,
                 i64 m_es, T *lse_out, i64 l_rs, i64 nrows, i64 n, double tau, int kind, int vec)
{
    typedef typename csm_traits<T>::C C;
    enum { V = csm_chunk<T>::V, E = NC * csm_chunk<T>::V };
    const int lane = threadIdx.x & (G - 1);
    const i64 grow = ((i64)blockIdx.x * blockDim.x + threadIdx.x) / G;
    const bool active = grow < nrows;
    const i64 row = active ? grow : nrows - 1;
    const bool tau_inf = !csm_finite(tau);
    const double inv_tau = 1.0 / tau;
    const T *xr = x + row * x_rs;
    const unsigned char *mr = mask ? mask + row * m_rs : 0;
    C v[E];
    unsigned live = 0;
#pragma unroll
    for (int c = 0; c < NC; c++)
        live |= csm_load_piece(xr, x_es, mr, m_es, ((i64)c * G + lane) * V, n, vec, v + c * V) << (c * V);
    C m = -(C)CSM_INF;
    int nan = 0;
#pragma unroll
    for (int e = 0; e < E; e++) {
        m = csm_fmax(m, v[e]);
        nan |= csm_isnan(v[e]);
    }
    m = csm_butterfly<G>(m, csm_op_max());
    int ties = 0;
#pragma unroll
    for (int e = 0; e < E; e++) ties += csm_eq(v[e], m);
    /* ties (11 bits), lanes holding a NaN, lanes holding a live entry: one reduction */
    const unsigned packed =
        csm_butterfly<G>((unsigned)ties | ((unsigned)nan << 16) | ((unsigned)(live != 0) << 24), csm_op_sum());
    ties = packed & 0xffff;
    nan = (packed >> 16) & 0xff;
    const int any = packed >> 24;
    bool special = !any || nan || !csm_finite(csm_w(m)) || tau_inf;
    csm_dd s = csm_dd_make(0.0, 0.0);
    {
        csm_rowsum<C> acc;
        acc.init();
#pragma unroll
        for (int e = 0; e < E; e++) {
            const C ev = csm_expdiff(v[e], m, tau, inv_tau); /* masked and padding: exp(-inf) = 0 */
            acc.add(csm_eq(v[e], m) ? (C)0 : ev);
            if (kind == CSM_SOFTMAX && !special) v[e] = ev; /* softmax keeps the exps */
        }
        s = acc.template total<G>();
        s = csm_dd_add_d(s, (double)(ties - 1));
    }
    if (csm_butterfly<32>((int)special, csm_op_or())) { /* rare: the semantics table; counts need every lane */
        int cnt = 0;
#pragma unroll
        for (int e = 0; e < E; e++) cnt += ((live >> e) & 1) && csm_gt(v[e], -(C)CSM_INF);
        cnt = csm_butterfly<G>(cnt, csm_op_sum());
        if (special) {
            if (!active) return;
            const csm_special sp = csm_special_values(kind, any, nan, csm_w(m), cnt, tau_inf);
            if (kind == CSM_LOGSUMEXP) {
                if (lane == 0) csm_traits<T>::store(lse_out + row * l_rs, csm_n<C>(sp.lse));
                return;
            }
#pragma unroll
            for (int c = 0; c < NC; c++)
#pragma unroll
                for (int t = 0; t < V; t++) {
                    const i64 j = ((i64)c * G + lane) * V + t;
                    const int e = c * V + t;
                    if (j >= n) continue;
                    csm_traits<T>::store(out + row * o_rs + j * o_es, csm_special_entry(sp, (live >> e) & 1, v[e]));
                }
            return;
        }
    }
    if (!active) return;
    if (kind == CSM_LOGSUMEXP) {
        if (lane == 0) csm_traits<T>::store(lse_out + row * l_rs, csm_n<C>(csm_w(m) + csm_dd_log1p(s)));
        return;
    }
    const C f = csm_finish_factor<C>(kind, s);
    const bool scaled = tau != 1.0;
#pragma unroll
    for (int e = 0; e < E; e++) v[e] = csm_finish(kind, v[e], m, f, inv_tau, scaled);
    T *orow = out + row * o_rs;
#pragma unroll
    for (int c2 = 0; c2 < NC; c2++) csm_store_piece(orow, o_es, ((i64)c2 * G + lane) * V, n, vec, v + c2 * V);
}

/* a piece of V compute values that moves to and from shared memory in 16-byte units */
template <typename T> union csm_piece {
    enum { V = csm_chunk<T>::V, U = csm_chunk<T>::V * sizeof(typename csm_traits<T>::C) / 16 };
    typename csm_traits<T>::C c[csm_chunk<T>::V];
    uint4 u[csm_chunk<T>::V * sizeof(typename csm_traits<T>::C) / 16];
    __device__ __forceinline__ void put(typename csm_traits<T>::C *cache, i64 j, i64 end) const
    {
        if (j + V <= end) {
#pragma unroll
            for (int k = 0; k < U; k++) ((uint4 *)(cache + j))[k] = u[k];
        } else {
            for (int t = 0; t < V && j + t < end; t++) cache[j + t] = c[t];
        }
    }
    __device__ __forceinline__ void get(const typename csm_traits<T>::C *cache, i64 j, i64 end)
    {
        if (j + V <= end) {
#pragma unroll
            for (int k = 0; k < U; k++) u[k] = ((const uint4 *)(cache + j))[k];
        } else {
#pragma unroll
            for (int t = 0; t < V; t++) c[t] = j + t < end ? cache[j + t] : -(typename csm_traits<T>::C)CSM_INF;
        }
    }
};

/* ---- forward: a block per row, the row cached in shared memory (as C) ----
 * Pass 1 reads the row from global memory once (16-byte pieces where vec) into the cache,
 * with its max; pass 2 sums exps from the cache (the max's own exp left out by counting
 * ties, as csm_fwd_rows); pass 3 writes from the cache. Rows longer than the cache go to
 * the split kernels. */
template <typename T>
__global__ void csm_fwd_block(const T *x, i64 x_rs, i64 x_es, T *out, i64 o_rs, i64 o_es, const unsigned char *mask,
                              i64 m_rs, i64 m_es, T *lse_out, i64 l_rs, i64 nrows, i64 n, double tau, int kind, int vec)
{
    typedef typename csm_traits<T>::C C;
    enum { V = csm_chunk<T>::V };
    __shared__ csm_block_scratch red;
    CSM_DYNAMIC_SMEM(double, smem_raw); /* double: aligned for either compute type */
    C *cache = (C *)smem_raw;
    const i64 row = blockIdx.x;
    if (row >= nrows) return;
    const bool tau_inf = !csm_finite(tau);
    const double inv_tau = 1.0 / tau;
    const T *xr = x + row * x_rs;
    const unsigned char *mr = mask ? mask + row * m_rs : 0;
    const i64 j_first = (i64)threadIdx.x * V, step = (i64)blockDim.x * V;
    C m = -(C)CSM_INF;
    int any = 0, nan = 0, ties = 0;
#pragma unroll 4
    for (i64 j = j_first; j < n; j += step) {
        csm_piece<T> p;
        any |= csm_load_piece(xr, x_es, mr, m_es, j, n, vec, p.c) != 0;
#pragma unroll
        for (int t = 0; t < V; t++) {
            m = csm_fmax(m, p.c[t]);
            nan |= csm_isnan(p.c[t]);
        }
        p.put(cache, j, n);
    }
    m = csm_n<C>(csm_block_max(csm_w(m), &red));
    csm_block_counts(nan, any, &red);
    const bool special = !any || nan || !csm_finite(csm_w(m)) || tau_inf;
    const bool keep_exps = kind == CSM_SOFTMAX && !special; /* softmax: pass 3 only scales */
    csm_rowsum<C> acc;
    acc.init();
    for (i64 j = j_first; j < n; j += step) {
        csm_piece<T> p;
        p.get(cache, j, n);
#pragma unroll
        for (int t = 0; t < V; t++) {
            const bool tie = csm_eq(p.c[t], m);
            const C ev = csm_expdiff(p.c[t], m, tau, inv_tau);
            ties += tie;
            acc.add(tie ? (C)0 : ev);
            p.c[t] = ev;
        }
        if (keep_exps) p.put(cache, j, n);
    }
    ties = csm_block_count(ties, &red);
    const csm_dd s = csm_dd_add_d(csm_block_sum(acc.local(), &red), (double)(ties - 1));
    if (special) { /* the semantics table (masked entries are -inf in the cache) */
        int cnt = 0;
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) cnt += csm_gt(cache[j], -(C)CSM_INF);
        cnt = csm_block_count(cnt, &red);
        const csm_special sp = csm_special_values(kind, any, nan, csm_w(m), cnt, tau_inf);
        if (kind == CSM_LOGSUMEXP) {
            if (threadIdx.x == 0) csm_traits<T>::store(lse_out + row * l_rs, csm_n<C>(sp.lse));
            return;
        }
        for (i64 j = threadIdx.x; j < n; j += blockDim.x)
            csm_traits<T>::store(out + row * o_rs + j * o_es, csm_special_entry(sp, !mr || mr[j * m_es], cache[j]));
        return;
    }
    if (kind == CSM_LOGSUMEXP) {
        if (threadIdx.x == 0) csm_traits<T>::store(lse_out + row * l_rs, csm_n<C>(csm_w(m) + csm_dd_log1p(s)));
        return;
    }
    const C f = csm_finish_factor<C>(kind, s);
    const bool scaled = tau != 1.0;
    T *orow = out + row * o_rs;
    for (i64 j = j_first; j < n; j += step) {
        csm_piece<T> p;
        p.get(cache, j, n);
#pragma unroll
        for (int t = 0; t < V; t++) p.c[t] = csm_finish(kind, p.c[t], m, f, inv_tau, scaled);
        csm_store_piece(orow, o_es, j, n, vec, p.c);
    }
}

/* ---- forward, rows longer than the cache (or few long rows): chunks in their own blocks ----
 * stats: per (row, chunk) its max, the count of entries equal to it (ties), S below it,
 * any, NaN, entries above -inf; merge: one block per row combines the chunks in
 * double-double (S' = (ties at the row's max - 1) + the rest, the integer part exact);
 * finish: every chunk writes its outputs. Grid (rows, chunks); chunk a multiple of V.
 * The stats pass reads its chunk twice (max, then sum): the second read comes from L2. */
#define CSM_SPLIT_STRIDE 7 /* m, ties, s.hi, s.lo, any, nan, entries above -inf */

template <typename T>
__global__ void csm_fwd_split_stats(const T *x, i64 x_rs, i64 x_es, const unsigned char *mask, i64 m_rs, i64 m_es,
                                    double *ws, i64 nrows, i64 n, i64 chunk, double tau, int vec)
{
    typedef typename csm_traits<T>::C C;
    enum { V = csm_chunk<T>::V };
    __shared__ csm_block_scratch red;
    const i64 row = blockIdx.x, c = blockIdx.y, nchunks = gridDim.y;
    const i64 j0 = c * chunk, j1 = j0 + chunk < n ? j0 + chunk : n;
    const double inv_tau = 1.0 / tau;
    const T *xr = x + row * x_rs;
    const unsigned char *mr = mask ? mask + row * m_rs : 0;
    const i64 step = (i64)blockDim.x * V;
    C m = -(C)CSM_INF;
    int any = 0, nan = 0, cnt = 0, ties = 0;
#pragma unroll 4
    for (i64 j = j0 + (i64)threadIdx.x * V; j < j1; j += step) {
        C p[V];
        any |= csm_load_piece(xr, x_es, mr, m_es, j, j1, vec, p) != 0;
#pragma unroll
        for (int t = 0; t < V; t++) {
            m = csm_fmax(m, p[t]);
            nan |= csm_isnan(p[t]);
            cnt += csm_gt(p[t], -(C)CSM_INF);
        }
    }
    m = csm_n<C>(csm_block_max(csm_w(m), &red));
    csm_block_counts(cnt, nan, any, &red);
    csm_dd s = csm_dd_make(0.0, 0.0);
    if (csm_finite(csm_w(m))) {
        csm_rowsum<C> acc;
        acc.init();
        for (i64 j = j0 + (i64)threadIdx.x * V; j < j1; j += step) {
            C p[V];
            csm_load_piece(xr, x_es, mr, m_es, j, j1, vec, p);
#pragma unroll
            for (int t = 0; t < V; t++) {
                const bool tie = csm_eq(p[t], m);
                ties += tie;
                acc.add(tie ? (C)0 : csm_expdiff(p[t], m, tau, inv_tau));
            }
        }
        ties = csm_block_count(ties, &red);
        s = csm_block_sum(acc.local(), &red);
    }
    if (threadIdx.x == 0) {
        double *w = ws + (row * nchunks + c) * CSM_SPLIT_STRIDE;
        w[0] = csm_w(m);
        w[1] = ties;
        w[2] = s.hi;
        w[3] = s.lo;
        w[4] = any;
        w[5] = nan;
        w[6] = cnt;
    }
}

/* one block per row: the chunks' stats merged into the row's, written over chunk 0:
   m, -, S'.hi, S'.lo, any, nan, count */
__global__ void csm_fwd_split_merge(double *ws, i64 nrows, i64 nchunks, double tau)
{
    __shared__ csm_block_scratch red;
    const i64 row = blockIdx.x;
    if (row >= nrows) return;
    double *w = ws + row * nchunks * CSM_SPLIT_STRIDE;
    double m = -CSM_INF, cnt = 0.0;
    int any = 0, nan = 0;
    for (i64 c = threadIdx.x; c < nchunks; c += blockDim.x) {
        m = fmax(m, w[c * CSM_SPLIT_STRIDE]);
        any |= w[c * CSM_SPLIT_STRIDE + 4] != 0.0;
        nan |= w[c * CSM_SPLIT_STRIDE + 5] != 0.0;
        cnt += w[c * CSM_SPLIT_STRIDE + 6];
    }
    m = csm_block_max(m, &red);
    any = csm_block_or(any, &red);
    nan = csm_block_or(nan, &red);
    cnt = csm_block_sum(csm_dd_make(cnt, 0.0), &red).hi;
    /* chunks whose max is the row's: S + ties as they are; the others scaled by
       exp(m_c - m); the row's first max leaves by subtracting 1 from the ties' integer sum */
    csm_dd s = csm_dd_make(0.0, 0.0);
    double ties = 0.0;
    const bool finite = csm_finite(m);
    if (finite) {
        for (i64 c = threadIdx.x; c < nchunks; c += blockDim.x) {
            const double *wc = w + c * CSM_SPLIT_STRIDE;
            if (!(wc[0] > -CSM_INF)) continue; /* nothing above -inf there */
            csm_dd sc = csm_dd_make(wc[2], wc[3]);
            if (wc[0] == m) {
                ties += wc[1];
            } else {
                sc = csm_dd_mul(csm_dd_add_d(sc, wc[1]), csm_dd_expdiff(wc[0], m, tau));
            }
            s = csm_dd_add(s, sc);
        }
    }
    s = csm_block_sum(s, &red);
    ties = csm_block_sum(csm_dd_make(ties, 0.0), &red).hi;
    s = csm_dd_add_d(s, ties - 1.0);
    __syncthreads(); /* every thread has read the chunks' entries */
    if (threadIdx.x == 0) {
        w[0] = m;
        w[2] = s.hi;
        w[3] = s.lo;
        w[4] = any;
        w[5] = nan || (finite && csm_isnan(s.hi));
        w[6] = cnt;
    }
}

template <typename T>
__global__ void csm_fwd_split_finish(const T *x, i64 x_rs, i64 x_es, T *out, i64 o_rs, i64 o_es,
                                     const unsigned char *mask, i64 m_rs, i64 m_es, T *lse_out, i64 l_rs,
                                     const double *ws, i64 nrows, i64 n, i64 chunk, double tau, int kind, int vec)
{
    typedef typename csm_traits<T>::C C;
    enum { V = csm_chunk<T>::V };
    const i64 row = blockIdx.x, c = blockIdx.y, nchunks = gridDim.y;
    const i64 j0 = c * chunk, j1 = j0 + chunk < n ? j0 + chunk : n;
    const bool tau_inf = !csm_finite(tau);
    const double inv_tau = 1.0 / tau;
    const double *w = ws + row * nchunks * CSM_SPLIT_STRIDE;
    const C m = csm_n<C>(w[0]);
    const csm_dd s = csm_dd_make(w[2], w[3]);
    const int any = w[4] != 0.0, nan = w[5] != 0.0;
    const T *xr = x + row * x_rs;
    const unsigned char *mr = mask ? mask + row * m_rs : 0;
    const bool special = !any || !csm_finite(csm_w(m)) || tau_inf || nan;
    if (special) {
        const csm_special sp = csm_special_values(kind, any, nan, csm_w(m), (i64)w[6], tau_inf);
        if (kind == CSM_LOGSUMEXP) {
            if (c == 0 && threadIdx.x == 0) csm_traits<T>::store(lse_out + row * l_rs, csm_n<C>(sp.lse));
            return;
        }
        for (i64 j = j0 + threadIdx.x; j < j1; j += blockDim.x)
            csm_traits<T>::store(out + row * o_rs + j * o_es,
                                 csm_special_entry(sp, !mr || mr[j * m_es], csm_traits<T>::load(xr + j * x_es)));
        return;
    }
    if (kind == CSM_LOGSUMEXP) {
        if (c == 0 && threadIdx.x == 0) csm_traits<T>::store(lse_out + row * l_rs, csm_n<C>(csm_w(m) + csm_dd_log1p(s)));
        return;
    }
    const C f = csm_finish_factor<C>(kind, s);
    const bool scaled = tau != 1.0;
    T *orow = out + row * o_rs;
#pragma unroll 4
    for (i64 j = j0 + (i64)threadIdx.x * V; j < j1; j += (i64)blockDim.x * V) {
        C p[V];
        csm_load_piece(xr, x_es, mr, m_es, j, j1, vec, p);
#pragma unroll
        for (int t = 0; t < V; t++)
            p[t] = csm_finish(kind, kind == CSM_SOFTMAX ? csm_expdiff(p[t], m, tau, inv_tau) : p[t], m, f, inv_tau, scaled);
        csm_store_piece(orow, o_es, j, j1, vec, p);
    }
}

/* ---- forward along a strided axis: a thread per column ----
 * Column c of group g: entries at g * x_gs + c + i * x_rs (i < n). Pass 1 keeps the max,
 * and the sum S of exp((x - r) / tau) over the other entries relative to a reference r
 * that moves (rescaling S in double-double) only when an entry exceeds it by more than
 * CSM_LAZY; the max's own exp waits in emax until a larger max arrives (the C core's column
 * kernel, one lane per thread). Pass 2 writes. */
template <typename T>
__global__ void csm_fwd_cols(const T *x, i64 x_gs, i64 x_rs, T *out, i64 o_gs, i64 o_rs, const unsigned char *mask,
                             i64 m_gs, i64 m_rs, i64 m_cs, T *lse_out, i64 l_gs, i64 l_cs, i64 ngroups, i64 width,
                             i64 n, double tau, int kind)
{
    typedef typename csm_traits<T>::C C;
    const i64 col = (i64)blockIdx.x * blockDim.x + threadIdx.x, g = blockIdx.y;
    if (col >= width || g >= ngroups) return;
    const bool tau_inf = !csm_finite(tau);
    const double inv_tau = 1.0 / tau;
    const T *xc = x + g * x_gs + col;
    const unsigned char *mc = mask ? mask + g * m_gs + col * m_cs : 0;
    C m = -(C)CSM_INF, r = -(C)CSM_INF, emax = 0;
    csm_dd S = csm_dd_make(0.0, 0.0);
    csm_sum acc = {0.0, 0.0};
    int any = 0, nan = 0;
    for (i64 i = 0; i < n; i++) {
        const bool on = !mc || mc[i * m_rs];
        C v = on ? csm_traits<T>::load(xc + i * x_rs) : -(C)CSM_INF;
        any |= on;
        nan |= on && csm_isnan(v);
        if (csm_isnan(v) || v == (C)CSM_INF) {
            if (v == (C)CSM_INF) m = v;
            continue;
        }
        if (!(v > -(C)CSM_INF)) continue; /* exp(-inf) = 0 */
        if (r == -(C)CSM_INF || (csm_w(v) - (double)r) * inv_tau > CSM_LAZY) { /* move the reference */
            csm_dd f = r == -(C)CSM_INF ? csm_dd_make(0.0, 0.0) : csm_dd_expdiff(csm_w(r), (double)v, tau);
            S = csm_dd_mul(csm_dd_add(S, csm_dd_make(acc.s, -acc.c)), f);
            acc.s = acc.c = 0.0;
            emax = csm_n<C>(csm_w(emax) * f.hi);
            r = v;
        }
        C ev = csm_expdiff(v, r, tau, inv_tau);
        if (csm_gt(v, m)) { /* a new max: the old one's exp joins S, this one's waits */
            acc.add(csm_w(emax));
            emax = ev;
            m = v;
        } else {
            acc.add(csm_w(ev));
        }
    }
    S = csm_dd_add(S, csm_dd_make(acc.s, -acc.c));
    bool special = !any || !csm_finite(csm_w(m)) || tau_inf || nan;
    csm_dd sp_ = csm_dd_make(0.0, 0.0);
    if (!special) {
        csm_dd f = csm_eq(r, m) ? csm_dd_make(1.0, 0.0) : csm_dd_expdiff(csm_w(r), csm_w(m), tau);
        sp_ = csm_dd_mul(S, f); /* S' relative to the max */
        special = csm_isnan(sp_.hi);
    }
    if (special) {
        i64 cnt = 0;
        if (tau_inf)
            for (i64 i = 0; i < n; i++) {
                const bool on = !mc || mc[i * m_rs];
                cnt += on && csm_traits<T>::load(xc + i * x_rs) > -(C)CSM_INF;
            }
        const csm_special sp = csm_special_values(kind, any, nan, csm_w(m), cnt, tau_inf);
        if (kind == CSM_LOGSUMEXP) {
            csm_traits<T>::store(lse_out + g * l_gs + col * l_cs, csm_n<C>(sp.lse));
            return;
        }
        for (i64 i = 0; i < n; i++)
            csm_traits<T>::store(out + g * o_gs + col + i * o_rs,
                                 csm_special_entry(sp, !mc || mc[i * m_rs], csm_traits<T>::load(xc + i * x_rs)));
        return;
    }
    if (kind == CSM_LOGSUMEXP) {
        csm_traits<T>::store(lse_out + g * l_gs + col * l_cs, csm_n<C>(csm_w(m) + csm_dd_log1p(sp_)));
        return;
    }
    const C f = csm_finish_factor<C>(kind, sp_);
    for (i64 i = 0; i < n; i++) {
        const bool on = !mc || mc[i * m_rs];
        C v = on ? csm_traits<T>::load(xc + i * x_rs) : -(C)CSM_INF;
        if (kind == CSM_SOFTMAX) v = csm_expdiff(v, m, tau, inv_tau);
        csm_traits<T>::store(out + g * o_gs + col + i * o_rs, csm_finish(kind, v, m, f, inv_tau, tau != 1.0));
    }
}

/* ---- backward: dx = y (g - sum(g y)) / tau  or  (g - exp(y) sum(g)) / tau ---- */
template <typename C> __device__ __forceinline__ C csm_bwd_value(int kind, C g, C y, csm_dd sum, double inv_tau)
{
    const double gw = csm_w(g), yw = csm_w(y);
    double v;
    if (kind == CSM_SOFTMAX_BWD) {
        v = yw * ((gw - sum.hi) - sum.lo);
    } else if (!csm_finite(sum.hi) && y > -(C)CSM_INF) { /* exp(y) * inf is inf for every finite y */
        v = gw - sum.hi;
    } else {
        const double e = csm_w(csm_exp_dd(y, (C)0));
        v = fma(-e, sum.hi, gw) - e * sum.lo;
    }
    if (!csm_finite(v) && csm_finite(gw) && csm_finite(yw) && csm_finite(sum.hi)) {
        /* overflowed although the value need not (g and the sum near the largest double):
           in halves, as the C core's csm_bwd_wide */
        const double gh = gw * 0.5, sh = sum.hi * 0.5, sl = sum.lo * 0.5;
        const double e = kind == CSM_SOFTMAX_BWD ? 0.0 : exp(yw);
        const double half = kind == CSM_SOFTMAX_BWD ? yw * ((gh - sh) - sl) : (gh - e * sh) - e * sl;
        return csm_n<C>(half * inv_tau * 2.0);
    }
    return csm_n<C>(v * inv_tau);
}

template <typename T, int E>
__global__ void csm_bwd_warp(const T *g, i64 g_rs, i64 g_es, const T *y, i64 y_rs, i64 y_es, T *out, i64 o_rs,
                             i64 o_es, const unsigned char *mask, i64 m_rs, i64 m_es, i64 nrows, i64 n, double tau,
                             int kind)
{
    typedef typename csm_traits<T>::C C;
    const int lane = threadIdx.x & 31;
    const i64 row = (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= nrows) return;
    const double inv_tau = 1.0 / tau;
    C gv[E], yv[E];
    int live = 0;
    csm_sum acc = {0.0, 0.0};
#pragma unroll
    for (int e = 0; e < E; e++) {
        const i64 j = lane + 32 * e;
        gv[e] = yv[e] = 0;
        if (j < n && (!mask || mask[row * m_rs + j * m_es])) {
            gv[e] = csm_traits<T>::load(g + row * g_rs + j * g_es);
            yv[e] = csm_traits<T>::load(y + row * y_rs + j * y_es);
            live |= 1 << e;
            acc.add(kind == CSM_SOFTMAX_BWD ? csm_w(gv[e]) * csm_w(yv[e]) : csm_w(gv[e]));
        }
    }
    csm_dd s = csm_butterfly<32>(csm_dd_make(acc.s, -acc.c), csm_op_sum());
#pragma unroll
    for (int e = 0; e < E; e++) {
        const i64 j = lane + 32 * e;
        if (j >= n) continue;
        C r = ((live >> e) & 1) ? csm_bwd_value(kind, gv[e], yv[e], s, inv_tau) : (C)0;
        csm_traits<T>::store(out + row * o_rs + j * o_es, r);
    }
}

template <typename T>
__global__ void csm_bwd_block(const T *g, i64 g_rs, i64 g_es, const T *y, i64 y_rs, i64 y_es, T *out, i64 o_rs,
                              i64 o_es, const unsigned char *mask, i64 m_rs, i64 m_es, i64 nrows, i64 n, double tau,
                              int kind)
{
    typedef typename csm_traits<T>::C C;
    __shared__ csm_block_scratch red;
    const i64 row = blockIdx.x;
    if (row >= nrows) return;
    const double inv_tau = 1.0 / tau;
    csm_sum acc = {0.0, 0.0};
    for (i64 j = threadIdx.x; j < n; j += blockDim.x) {
        if (mask && !mask[row * m_rs + j * m_es]) continue;
        C gj = csm_traits<T>::load(g + row * g_rs + j * g_es);
        acc.add(kind == CSM_SOFTMAX_BWD ? csm_w(gj) * csm_loadw(y + row * y_rs + j * y_es) : csm_w(gj));
    }
    csm_dd s = csm_block_sum(csm_dd_make(acc.s, -acc.c), &red);
    for (i64 j = threadIdx.x; j < n; j += blockDim.x) {
        C r = 0;
        if (!mask || mask[row * m_rs + j * m_es])
            r = csm_bwd_value(kind, csm_traits<T>::load(g + row * g_rs + j * g_es),
                              csm_traits<T>::load(y + row * y_rs + j * y_es), s, inv_tau);
        csm_traits<T>::store(out + row * o_rs + j * o_es, r);
    }
}

/* ---- cross-entropy, a block per row: loss (double, one per row) and gradient ----
 * index targets: labels[row] (int64; ignore_index rows give 0); probability targets: q
 * (same layout as x). weight: per class, or NULL. The gradient is scaled by `scale` and
 * 1/tau (torch.nn.functional.cross_entropy; the formulas are csm_grad.h's, the C core's).
 * Three steps: the row's statistics (as the forward kernels: the max's own exp left out
 * of S' by counting ties), the loss, the gradient. */

/* one row of cross-entropy's operands */
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
    __device__ __forceinline__ C logit(i64 j) const { return live(j) ? csm_traits<T>::load(x + j * x_es) : -(C)CSM_INF; }
    __device__ __forceinline__ double weight(i64 j) const { return w ? w[j] : 1.0; }
    __device__ __forceinline__ double target(i64 j) const { return csm_loadw(q + j * q_es); }
};

/* what the loss and the gradient need of a row */
struct csm_xent_stats {
    double m;          /* the max */
    double L, cinv;    /* ordinary rows: log1p(S'), 1 / (1 + S') */
    double uniform_lp; /* tau = +inf: log of the entries above -inf */
    double eps_k, W;   /* smoothing per unmasked class; the sum of their weights */
    bool normal, uniform, any;
    /* -log p_j of an unmasked entry of value v: L + (m - v) / tau on ordinary rows;
       special rows by the semantics table (p uniform, NaN, or 0 for the -inf entries) */
    template <typename C> __device__ __forceinline__ double neglogp(C v, double inv_tau) const
    {
        if (normal) return L + (m - csm_w(v)) * inv_tau;
        if (uniform) return v > -(C)CSM_INF ? uniform_lp : CSM_INF;
        return any ? CSM_NAN : CSM_INF;
    }
    template <typename C> __device__ __forceinline__ double prob(C v, double tau, double inv_tau) const
    {
        if (normal) return csm_w(csm_expdiff(v, csm_n<C>(m), tau, inv_tau)) * cinv;
        return exp(-neglogp(v, inv_tau));
    }
};

template <typename T>
__device__ csm_xent_stats csm_xent_row_stats(const csm_xent_row<T> &r, i64 n, double tau, double inv_tau, double eps,
                                             csm_block_scratch *red)
{
    typedef typename csm_traits<T>::C C;
    C m = -(C)CSM_INF;
    int any = 0, nan = 0, K = 0;
    double W = 0.0;
    for (i64 j = threadIdx.x; j < n; j += blockDim.x) {
        const bool on = r.live(j);
        const C v = r.logit(j);
        any |= on;
        nan |= on && csm_isnan(v);
        K += on;
        if (on) W += r.weight(j);
        m = csm_fmax(m, v);
    }
    csm_xent_stats st;
    m = csm_n<C>(csm_block_max(csm_w(m), red));
    csm_block_counts(any, nan, red);
    K = csm_block_count(K, red);
    st.m = csm_w(m);
    st.any = any != 0;
    st.W = csm_block_sum(csm_dd_make(W, 0.0), red).hi;
    st.eps_k = K > 0 ? eps / (double)K : 0.0;
    st.normal = any && csm_finite(st.m) && csm_finite(tau) && !nan;
    st.L = st.cinv = st.uniform_lp = 0.0;
    if (st.normal) {
        csm_sum acc = {0.0, 0.0};
        int ties = 0;
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) {
            const C v = r.logit(j);
            const bool tie = csm_eq(v, m);
            ties += tie;
            acc.add(tie ? 0.0 : csm_w(csm_expdiff(v, m, tau, inv_tau)));
        }
        ties = csm_block_count(ties, red);
        const csm_dd s = csm_dd_add_d(csm_block_sum(csm_dd_make(acc.s, -acc.c), red), (double)(ties - 1));
        st.normal = !csm_isnan(s.hi);
        st.L = csm_dd_log1p(s);
        st.cinv = csm_dd_inv_1p(s);
    }
    st.uniform = !st.normal && !csm_finite(tau) && any && !nan && csm_finite(st.m);
    if (st.uniform) {
        int cnt = 0;
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) cnt += r.live(j) && r.logit(j) > -(C)CSM_INF;
        st.uniform_lp = log((double)csm_block_count(cnt, red));
    }
    return st;
}

/* the row's loss; and A (the gradient is p A - B): sum_j w_j q'_j for probabilities */
template <typename T>
__device__ double csm_xent_row_loss(const csm_xent_row<T> &r, const csm_xent_stats &st, i64 label, i64 n, double eps,
                                    double inv_tau, double *A, csm_block_scratch *red)
{
    double loss = 0.0, a = 0.0;
    for (i64 j = threadIdx.x; j < n; j += blockDim.x) {
        if (!r.live(j)) continue;
        const double wj = r.weight(j);
        double tj;
        if (r.q) {
            tj = (1.0 - eps) * r.target(j) + st.eps_k;
            a += wj * tj;
        } else {
            tj = (j == label ? 1.0 - eps : 0.0) + st.eps_k;
        }
        if (tj != 0.0) loss += wj * tj * st.neglogp(r.logit(j), inv_tau); /* 0 * log 0 = 0 */
    }
    const csm_dd total = csm_block_sum(csm_dd_make(loss, 0.0), red);
    a = csm_block_sum(csm_dd_make(a, 0.0), red).hi;
    *A = r.q ? a : (1.0 - eps) * r.weight(label) + st.eps_k * st.W;
    return total.hi + total.lo;
}

template <typename T>
__global__ void csm_xent_block(const T *x, i64 x_rs, i64 x_es, const T *q, i64 q_rs, i64 q_es, const i64 *labels,
                               i64 lab_s, const double *weight, const unsigned char *mask, i64 m_rs, i64 m_es,
                               double *loss, i64 loss_s, T *grad, i64 gr_rs, i64 gr_es, i64 nrows, i64 n, double tau,
                               double eps, i64 ignore_index, double scale)
{
    typedef typename csm_traits<T>::C C;
    __shared__ csm_block_scratch red;
    const i64 row = blockIdx.x;
    if (row >= nrows) return;
    const double inv_tau = 1.0 / tau;
    T *gr = grad ? grad + row * gr_rs : 0;
    const i64 label = labels ? labels[row * lab_s] : 0;
    if (labels && label == ignore_index) {
        if (threadIdx.x == 0) loss[row * loss_s] = 0.0;
        if (gr)
            for (i64 j = threadIdx.x; j < n; j += blockDim.x) csm_traits<T>::store(gr + j * gr_es, (C)0);
        return;
    }
    const csm_xent_row<T> r = {x + row * x_rs, x_es, mask ? mask + row * m_rs : 0, m_es, q ? q + row * q_rs : 0, q_es,
                               weight};
    const csm_xent_stats st = csm_xent_row_stats(r, n, tau, inv_tau, eps, &red);
    double A;
    const double l = csm_xent_row_loss(r, st, label, n, eps, inv_tau, &A, &red);
    if (threadIdx.x == 0) loss[row * loss_s] = l;
    if (!gr) return;
    const double f = scale * inv_tau;
    for (i64 j = threadIdx.x; j < n; j += blockDim.x) {
        C g = 0;
        if (r.live(j)) {
            const double wj = r.weight(j);
            const double bj = r.q ? wj * ((1.0 - eps) * r.target(j) + st.eps_k)
                                  : (j == label ? (1.0 - eps) * wj : 0.0) + st.eps_k * wj;
            g = csm_n<C>((st.prob(r.logit(j), tau, inv_tau) * A - bj) * f);
        }
        csm_traits<T>::store(gr + j * gr_es, g);
    }
}

/* ---- Jacobians from contiguous rows of softmax s and log_softmax lp (rows x n) ---- */
template <typename T>
__global__ void csm_jacobian(const T *s, const T *lp, T *J, i64 nrows, i64 n, double tau, int log_kind)
{
    typedef typename csm_traits<T>::C C;
    const double inv_tau = 1.0 / tau;
    const i64 total = nrows * n * n;
    for (i64 t = (i64)blockIdx.x * blockDim.x + threadIdx.x; t < total; t += (i64)gridDim.x * blockDim.x) {
        const i64 r = t / (n * n), ij = t - r * n * n, i = ij / n, j = ij - i * n;
        const double sj = csm_loadw(s + r * n + j);
        double v;
        if (i == j) {
            const double om = -expm1(csm_loadw(lp + r * n + i)); /* 1 - s_i, exactly */
            v = log_kind ? om : sj * om;
        } else {
            v = log_kind ? -sj : -csm_loadw(s + r * n + i) * sj;
        }
        csm_traits<T>::store(J + t, csm_n<C>(v * inv_tau));
    }
}
