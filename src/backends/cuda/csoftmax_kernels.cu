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
 * get the values of DESIGN.md section 3. The two headers come from src/backends/common.
 *
 * Kernels, by row length (the launcher in cuda.py chooses):
 *   csm_fwd_warp<T, E>      a warp per row, E entries per lane in registers (n <= 32 E)
 *   csm_fwd_block<T, C>     a block per row; C: the row cached in shared memory
 *   csm_fwd_split_*<T>      few long rows: per-chunk statistics, a merge per row in
 *                           double-double, then the chunks write their outputs
 *   csm_fwd_cols<T>         a strided softmax axis whose neighbour is contiguous: a
 *                           thread per column, loads coalesced across the columns
 *   csm_bwd_warp<T, E>, csm_bwd_block<T>   the two backward passes, fused
 *   csm_xent_block<T>       cross-entropy: loss and gradient in one kernel
 *   csm_jacobian<T>         J[r, i, j] from softmax and log_softmax rows
 * Rows are addressed by a row stride and an entry stride (elements; 64-bit), so any
 * layout whose rows are evenly spaced runs without a copy. Kinds: 0 softmax,
 * 1 log_softmax, 2 logsumexp, 3 softmax_backward, 4 log_softmax_backward.
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

/* the double-double arithmetic and the exp constants of the C core, as device code */
#define CSM_DD_FN __device__ inline
#define CSM_DD_INF CSM_INF
#define CSM_DD_NAN CSM_NAN
#include "csm_dd.h"
#include "csm_expconst.h"

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

/* ---- the exp of the C core: exp(dh + dl), dh may be +-inf or NaN ---- */
__device__ __forceinline__ float csm_exp2(float dh, float dl)
{
    const float poly[CSM_EXP_F32_NPOLY] = {CSM_EXP_F32_POLY};
    float x = dh < CSM_EXP_F32_LO ? CSM_EXP_F32_LO : (dh > CSM_EXP_F32_HI ? CSM_EXP_F32_HI : dh);
    if (x != dh) dl = 0.0f;
    if (dh != dh) return dh;
    float t = fmaf(x, CSM_EXP_F32_LOG2E, CSM_EXP_F32_MAGIC);
    float kf = t - CSM_EXP_F32_MAGIC;
    float r = fmaf(kf, -CSM_EXP_F32_LN2_HI, x) + fmaf(kf, -CSM_EXP_F32_LN2_LO, dl);
    float p = poly[0];
    for (int i = 1; i < CSM_EXP_F32_NPOLY; i++) p = fmaf(p, r, poly[i]);
    float e = 1.0f + fmaf(p, r * r, r);
    int k = __float_as_int(t) - __float_as_int(CSM_EXP_F32_MAGIC);
    if (k >= -126 && k <= 127) return csm_mul(e, __int_as_float((k + 127) << 23));
    int k1 = k >> 1, k2 = k - k1; /* the result may be subnormal */
    return csm_mul(csm_mul(e, __int_as_float((k1 + 127) << 23)), __int_as_float((k2 + 127) << 23));
}

__device__ __forceinline__ double csm_exp2(double dh, double dl)
{
    const double poly[CSM_EXP_F64_NPOLY] = {CSM_EXP_F64_POLY};
    double x = dh < CSM_EXP_F64_LO ? CSM_EXP_F64_LO : (dh > CSM_EXP_F64_HI ? CSM_EXP_F64_HI : dh);
    if (x != dh) dl = 0.0;
    if (dh != dh) return dh;
    double t = fma(x, CSM_EXP_F64_LOG2E, CSM_EXP_F64_MAGIC);
    double kf = t - CSM_EXP_F64_MAGIC;
    double r = fma(kf, -CSM_EXP_F64_LN2_HI, x) + fma(kf, -CSM_EXP_F64_LN2_LO, dl);
    double p = poly[0];
    for (int i = 1; i < CSM_EXP_F64_NPOLY; i++) p = fma(p, r, poly[i]);
    double e = 1.0 + fma(p, r * r, r);
    i64 k = __double_as_longlong(t) - __double_as_longlong(CSM_EXP_F64_MAGIC);
    if (k >= -1022 && k <= 1023) return e * __longlong_as_double((k + 1023) << 52);
    i64 k1 = k >> 1, k2 = k - k1;
    return (e * __longlong_as_double((k1 + 1023) << 52)) * __longlong_as_double((k2 + 1023) << 52);
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
    return csm_exp2(dh, dl);
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

/* ---- warp and block reductions ---- */
__device__ __forceinline__ double csm_warp_max(double v)
{
    for (int o = 16; o > 0; o >>= 1) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ __forceinline__ i64 csm_warp_min_i64(i64 v)
{
    for (int o = 16; o > 0; o >>= 1) {
        i64 w = __shfl_xor_sync(0xffffffffu, v, o);
        v = w < v ? w : v;
    }
    return v;
}
__device__ __forceinline__ int csm_warp_or(int v)
{
    for (int o = 16; o > 0; o >>= 1) v |= __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ csm_dd csm_warp_sum(csm_dd v)
{
    for (int o = 16; o > 0; o >>= 1) {
        csm_dd w = csm_dd_make(__shfl_xor_sync(0xffffffffu, v.hi, o), __shfl_xor_sync(0xffffffffu, v.lo, o));
        v = csm_dd_add(v, w);
    }
    return v;
}
__device__ __forceinline__ double csm_warp_sum_d(double v)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* block-wide reductions (blockDim.x a multiple of 32, <= 1024); every thread gets the result */
struct csm_block_scratch {
    double d[32], e[32];
    i64 i[32];
};
__device__ double csm_block_max(double v, csm_block_scratch *sh)
{
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = csm_warp_max(v);
    __syncthreads();
    if (lane == 0) sh->d[w] = v;
    __syncthreads();
    v = lane < nw ? sh->d[lane] : -CSM_INF;
    return csm_warp_max(v);
}
__device__ i64 csm_block_min_i64(i64 v, csm_block_scratch *sh)
{
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = csm_warp_min_i64(v);
    __syncthreads();
    if (lane == 0) sh->i[w] = v;
    __syncthreads();
    v = lane < nw ? sh->i[lane] : (i64)0x7fffffffffffffffLL;
    return csm_warp_min_i64(v);
}
__device__ int csm_block_or(int v, csm_block_scratch *sh)
{
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = csm_warp_or(v);
    __syncthreads();
    if (lane == 0) sh->i[w] = v;
    __syncthreads();
    v = lane < nw ? (int)sh->i[lane] : 0;
    return csm_warp_or(v);
}
__device__ csm_dd csm_block_sum(csm_dd v, csm_block_scratch *sh)
{
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = csm_warp_sum(v);
    __syncthreads();
    if (lane == 0) {
        sh->d[w] = v.hi;
        sh->e[w] = v.lo;
    }
    __syncthreads();
    v = lane < nw ? csm_dd_make(sh->d[lane], sh->e[lane]) : csm_dd_make(0.0, 0.0);
    return csm_warp_sum(v);
}

/* ---- the semantics table for rows the main path does not take ----
 * inside: the value of the unmasked entries; outside: of masked entries (and of -inf
 * entries of a uniform tau = +inf row); lse: the row's logsumexp. */
struct csm_special {
    double inside, outside, lse;
    bool uniform; /* tau = +inf: -inf entries get `outside` */
};
__device__ __forceinline__ csm_special csm_special_values(int kind, int any, int nan, double m, i64 cnt, bool tau_inf)
{
    csm_special s;
    s.outside = kind == 0 ? 0.0 : -CSM_INF;
    s.uniform = false;
    if (!any) {
        s.inside = s.outside;
        s.lse = -CSM_INF;
    } else if (nan) {
        s.inside = CSM_NAN;
        s.lse = CSM_NAN;
    } else if (!csm_finite(m) || !tau_inf) {
        s.inside = CSM_NAN;
        s.lse = csm_finite(m) ? CSM_NAN : m;
    } else {
        s.inside = kind == 0 ? 1.0 / (double)cnt : -log((double)cnt);
        s.lse = CSM_NAN;
        s.uniform = true;
    }
    return s;
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

/* reductions over a group of G lanes (G a power of two, groups aligned in the warp; every
   lane of the warp takes part) */
template <int G, typename V> __device__ __forceinline__ V csm_group_sum(V v)
{
#pragma unroll
    for (int o = G / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
template <int G, typename C> __device__ __forceinline__ C csm_group_max(C v)
{
#pragma unroll
    for (int o = G / 2; o > 0; o >>= 1) v = csm_fmax(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
template <int G> __device__ __forceinline__ csm_dd csm_group_sum_dd(csm_dd v)
{
#pragma unroll
    for (int o = G / 2; o > 0; o >>= 1)
        v = csm_dd_add(v, csm_dd_make(__shfl_xor_sync(0xffffffffu, v.hi, o), __shfl_xor_sync(0xffffffffu, v.lo, o)));
    return v;
}

/* the per-lane sum of exps: plain double for float rows (29 spare bits), compensated for
   double rows; group-reduced to S' as double-double */
template <typename C> struct csm_rowsum;
template <> struct csm_rowsum<float> {
    double s;
    __device__ __forceinline__ void init() { s = 0.0; }
    __device__ __forceinline__ void add(float e) { s += csm_w(e); }
    __device__ __forceinline__ csm_dd local() const { return csm_dd_make(s, 0.0); }
    template <int G> __device__ __forceinline__ csm_dd total() { return csm_dd_make(csm_group_sum<G>(s), 0.0); }
};
template <> struct csm_rowsum<double> {
    csm_sum k;
    __device__ __forceinline__ void init() { k.s = k.c = 0.0; }
    __device__ __forceinline__ void add(double e) { k.add(e); }
    __device__ __forceinline__ csm_dd local() const { return csm_dd_make(k.s, -k.c); }
    template <int G> __device__ __forceinline__ csm_dd total() { return csm_group_sum_dd<G>(csm_dd_make(k.s, -k.c)); }
};

/* ---- forward: G lanes per row (32 / G rows per warp), the row in registers ----
 * Lane l of a row's group holds chunks l, l + G, ..., NC of them, of V consecutive
 * entries (n <= G NC V). With vec (rows contiguous and 16-byte aligned) a whole chunk is
 * one 16-byte load and store; otherwise entries go one at a time along their strides.
 * The max's own exp is left out of S' by counting the entries equal to the max: S' = the
 * sum over the entries below it + (ties - 1). Groups past the last row shadow it (they
 * read, never write), so every lane reaches every shuffle. */
template <typename T, int G, int NC>
__global__ void csm_fwd_rows __launch_bounds__(256)(const T *x, i64 x_rs, i64 x_es, T *out, i64 o_rs, i64 o_es, const unsigned char *mask,
                             i64 m_rs, i64 m_es, T *lse_out, i64 l_rs, i64 nrows, i64 n, double tau, int kind, int vec)
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
    m = csm_group_max<G>(m);
    int ties = 0;
#pragma unroll
    for (int e = 0; e < E; e++) ties += csm_eq(v[e], m);
    /* ties (11 bits), lanes holding a NaN, lanes holding a live entry: one reduction */
    const unsigned packed = csm_group_sum<G>((unsigned)ties | ((unsigned)nan << 16) | ((unsigned)(live != 0) << 24));
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
            if (kind == 0 && !special) v[e] = ev; /* softmax keeps the exps */
        }
        s = acc.template total<G>();
        s = csm_dd_add_d(s, (double)(ties - 1));
    }
    if (csm_warp_or(special)) { /* rare: the semantics table; counts need every lane */
        int cnt = 0;
#pragma unroll
        for (int e = 0; e < E; e++) cnt += ((live >> e) & 1) && csm_gt(v[e], -(C)CSM_INF);
        cnt = csm_group_sum<G>(cnt);
        if (special) {
            if (!active) return;
            csm_special sp = csm_special_values(kind, any, nan, csm_w(m), cnt, tau_inf);
            if (kind == 2) {
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
                    const bool on = (live >> e) & 1;
                    double val = !on ? sp.outside : (sp.uniform && !(v[e] > -(C)CSM_INF) ? sp.outside : sp.inside);
                    csm_traits<T>::store(out + row * o_rs + j * o_es, csm_n<C>(val));
                }
            return;
        }
    }
    if (!active) return;
    if (kind == 2) {
        if (lane == 0) csm_traits<T>::store(lse_out + row * l_rs, csm_n<C>(csm_w(m) + csm_dd_log1p(s)));
        return;
    }
    const C c = kind == 0 ? csm_n<C>(csm_dd_inv_1p(s)) : csm_n<C>(csm_dd_log1p(s));
    const bool scaled = tau != 1.0;
#pragma unroll
    for (int e = 0; e < E; e++) v[e] = kind == 0 ? csm_mul(v[e], c) : csm_logp(v[e], m, c, inv_tau, scaled);
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

/* block sums of small counts, three at once, exactly (each below 2^20 here) */
__device__ __forceinline__ void csm_block_counts(int &a, int &b, int &c, csm_block_scratch *red)
{
    double packed = csm_block_sum(csm_dd_make((double)a + 1048576.0 * b + 1099511627776.0 * c, 0.0), red).hi;
    c = (int)(packed / 1099511627776.0);
    packed -= 1099511627776.0 * c;
    b = (int)(packed / 1048576.0);
    a = (int)(packed - 1048576.0 * b);
}

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
    int zero = 0;
    csm_block_counts(nan, any, zero, &red);
    const bool special = !any || nan || !csm_finite(csm_w(m)) || tau_inf;
    const bool keep_exps = kind == 0 && !special; /* softmax: pass 3 only scales */
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
    int z0 = 0, z1 = 0;
    csm_block_counts(ties, z0, z1, &red);
    const csm_dd s = csm_dd_add_d(csm_block_sum(acc.local(), &red), (double)(ties - 1));
    if (special) { /* the semantics table (masked entries are -inf in the cache) */
        int cnt = 0, z0 = 0, z1 = 0;
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) cnt += csm_gt(cache[j], -(C)CSM_INF);
        csm_block_counts(cnt, z0, z1, &red);
        csm_special sp = csm_special_values(kind, any, nan, csm_w(m), cnt, tau_inf);
        if (kind == 2) {
            if (threadIdx.x == 0) csm_traits<T>::store(lse_out + row * l_rs, csm_n<C>(sp.lse));
            return;
        }
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) {
            const bool on = !mr || mr[j * m_es];
            double val = !on ? sp.outside : (sp.uniform && !(cache[j] > -(C)CSM_INF) ? sp.outside : sp.inside);
            csm_traits<T>::store(out + row * o_rs + j * o_es, csm_n<C>(val));
        }
        return;
    }
    if (kind == 2) {
        if (threadIdx.x == 0) csm_traits<T>::store(lse_out + row * l_rs, csm_n<C>(csm_w(m) + csm_dd_log1p(s)));
        return;
    }
    const C c = kind == 0 ? csm_n<C>(csm_dd_inv_1p(s)) : csm_n<C>(csm_dd_log1p(s));
    const bool scaled = tau != 1.0;
    T *orow = out + row * o_rs;
    for (i64 j = j_first; j < n; j += step) {
        csm_piece<T> p;
        p.get(cache, j, n);
#pragma unroll
        for (int t = 0; t < V; t++)
            p.c[t] = kind == 0 ? csm_mul(p.c[t], c) : csm_logp(p.c[t], m, c, inv_tau, scaled);
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
        int z0 = 0, z1 = 0;
        csm_block_counts(ties, z0, z1, &red);
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
        csm_special sp = csm_special_values(kind, any, nan, csm_w(m), (i64)w[6], tau_inf);
        if (kind == 2) {
            if (c == 0 && threadIdx.x == 0) csm_traits<T>::store(lse_out + row * l_rs, csm_n<C>(sp.lse));
            return;
        }
        for (i64 j = j0 + threadIdx.x; j < j1; j += blockDim.x) {
            const bool on = !mr || mr[j * m_es];
            C v = csm_traits<T>::load(xr + j * x_es);
            double val = !on ? sp.outside : (sp.uniform && !(v > -(C)CSM_INF) ? sp.outside : sp.inside);
            csm_traits<T>::store(out + row * o_rs + j * o_es, csm_n<C>(val));
        }
        return;
    }
    if (kind == 2) {
        if (c == 0 && threadIdx.x == 0) csm_traits<T>::store(lse_out + row * l_rs, csm_n<C>(csm_w(m) + csm_dd_log1p(s)));
        return;
    }
    const C f = kind == 0 ? csm_n<C>(csm_dd_inv_1p(s)) : csm_n<C>(csm_dd_log1p(s));
    const bool scaled = tau != 1.0;
    T *orow = out + row * o_rs;
#pragma unroll 4
    for (i64 j = j0 + (i64)threadIdx.x * V; j < j1; j += (i64)blockDim.x * V) {
        C p[V];
        csm_load_piece(xr, x_es, mr, m_es, j, j1, vec, p);
#pragma unroll
        for (int t = 0; t < V; t++)
            p[t] = kind == 0 ? csm_mul(csm_expdiff(p[t], m, tau, inv_tau), f) : csm_logp(p[t], m, f, inv_tau, scaled);
        csm_store_piece(orow, o_es, j, j1, vec, p);
    }
}

/* ---- forward along a strided axis: a thread per column ----
 * Column c of group g: entries at g * x_gs + c + i * x_rs (i < n). Pass 1 keeps the max,
 * and the sum S of exp((x - r) / tau) over the other entries relative to a reference r
 * that moves (rescaling S in double-double) only when an entry exceeds it by more than
 * 60; the max's own exp waits in emax until a larger max arrives (the C core's column
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
        if (r == -(C)CSM_INF || (csm_w(v) - (double)r) * inv_tau > 60.0) { /* move the reference */
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
        csm_special sp = csm_special_values(kind, any, nan, csm_w(m), cnt, tau_inf);
        if (kind == 2) {
            csm_traits<T>::store(lse_out + g * l_gs + col * l_cs, csm_n<C>(sp.lse));
            return;
        }
        for (i64 i = 0; i < n; i++) {
            const bool on = !mc || mc[i * m_rs];
            C v = csm_traits<T>::load(xc + i * x_rs);
            double val = !on ? sp.outside : (sp.uniform && !(v > -(C)CSM_INF) ? sp.outside : sp.inside);
            csm_traits<T>::store(out + g * o_gs + col + i * o_rs, csm_n<C>(val));
        }
        return;
    }
    const double L = csm_dd_log1p(sp_);
    if (kind == 2) {
        csm_traits<T>::store(lse_out + g * l_gs + col * l_cs, csm_n<C>(csm_w(m) + L));
        return;
    }
    const C f = kind == 0 ? csm_n<C>(csm_dd_inv_1p(sp_)) : csm_n<C>(L);
    for (i64 i = 0; i < n; i++) {
        const bool on = !mc || mc[i * m_rs];
        C v = on ? csm_traits<T>::load(xc + i * x_rs) : -(C)CSM_INF;
        C o = kind == 0 ? csm_mul(csm_expdiff(v, m, tau, inv_tau), f) : csm_logp(v, m, f, inv_tau, tau != 1.0);
        csm_traits<T>::store(out + g * o_gs + col + i * o_rs, o);
    }
}

/* ---- backward: dx = y (g - sum(g y)) / tau  or  (g - exp(y) sum(g)) / tau ---- */
template <typename C> __device__ __forceinline__ C csm_bwd_value(int kind, C g, C y, csm_dd sum, double inv_tau)
{
    if (kind == 3) return csm_n<C>(csm_w(y) * ((csm_w(g) - sum.hi) - sum.lo) * inv_tau);
    C e = csm_exp2(y, (C)0);
    return csm_n<C>((fma(-csm_w(e), sum.hi, csm_w(g)) - csm_w(e) * sum.lo) * inv_tau);
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
            acc.add(kind == 3 ? csm_w(gv[e]) * csm_w(yv[e]) : csm_w(gv[e]));
        }
    }
    csm_dd s = csm_warp_sum(csm_dd_make(acc.s, -acc.c));
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
        acc.add(kind == 3 ? csm_w(gj) * csm_loadw(y + row * y_rs + j * y_es) : csm_w(gj));
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
 * 1/tau (torch.nn.functional.cross_entropy; see csm_grad.h of the C core). */
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
    const bool tau_inf = !csm_finite(tau);
    const double inv_tau = 1.0 / tau;
    const T *xr = x + row * x_rs;
    const unsigned char *mr = mask ? mask + row * m_rs : 0;
    const i64 label = labels ? labels[row * lab_s] : 0;
    if (labels && label == ignore_index) {
        if (threadIdx.x == 0) loss[row * loss_s] = 0.0;
        if (grad)
            for (i64 j = threadIdx.x; j < n; j += blockDim.x) csm_traits<T>::store(grad + row * gr_rs + j * gr_es, (C)0);
        return;
    }
#define CSM_LIVE(j) (!mr || mr[(j) * m_es])
#define CSM_X(j) (CSM_LIVE(j) ? csm_traits<T>::load(xr + (j) * x_es) : -(C)CSM_INF)
#define CSM_W(j) (weight ? weight[j] : 1.0)
    C m = -(C)CSM_INF;
    i64 k = (i64)0x7fffffffffffffffLL;
    int any = 0, nan = 0;
    csm_dd K = csm_dd_make(0.0, 0.0), W = csm_dd_make(0.0, 0.0);
    double Kl = 0.0, Wl = 0.0;
    for (i64 j = threadIdx.x; j < n; j += blockDim.x) {
        const bool on = CSM_LIVE(j);
        C v = CSM_X(j);
        any |= on;
        nan |= on && csm_isnan(v);
        if (on) {
            Kl += 1.0;
            Wl += CSM_W(j);
        }
        if (csm_gt(v, m)) {
            m = v;
            k = j;
        }
    }
    const C mloc = m;
    m = csm_n<C>(csm_block_max(csm_w(m), &red));
    k = csm_block_min_i64(csm_eq(mloc, m) ? k : (i64)0x7fffffffffffffffLL, &red);
    any = csm_block_or(any, &red);
    nan = csm_block_or(nan, &red);
    K = csm_block_sum(csm_dd_make(Kl, 0.0), &red);
    W = csm_block_sum(csm_dd_make(Wl, 0.0), &red);
    const double eps_k = K.hi > 0 ? eps / K.hi : 0.0;
    bool normal = any && csm_finite(csm_w(m)) && !tau_inf && !nan;
    double L = 0.0, cinv = 0.0;
    if (normal) {
        csm_sum acc = {0.0, 0.0};
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) {
            C ev = csm_expdiff((C)CSM_X(j), m, tau, inv_tau);
            if (j != k) acc.add(csm_w(ev));
        }
        csm_dd s = csm_block_sum(csm_dd_make(acc.s, -acc.c), &red);
        normal = !csm_isnan(s.hi);
        L = csm_dd_log1p(s);
        cinv = csm_dd_inv_1p(s);
    }
    /* -log p_j: normal rows L + (m - x_j) / tau; special rows from the semantics table */
    double uniform_lp = 0.0;
    if (!normal && tau_inf && any && !nan && csm_finite(csm_w(m))) {
        i64 cnt = 0;
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) cnt += CSM_LIVE(j) && CSM_X(j) > -(C)CSM_INF;
        csm_dd c2 = csm_block_sum(csm_dd_make((double)cnt, 0.0), &red);
        uniform_lp = log(c2.hi);
    }
    const bool uniform = !normal && tau_inf && any && !nan && csm_finite(csm_w(m));
#define CSM_NEGLP(j, v)                                                                                                \
    (normal ? L + (csm_w(m) - csm_w(v)) * inv_tau                                                                  \
            : (uniform ? ((v) > -(C)CSM_INF ? uniform_lp : CSM_INF) : (any ? CSM_NAN : CSM_INF)))
    /* the loss and, for probabilities, A = sum w q' */
    double loss_l = 0.0, A_l = 0.0;
    for (i64 j = threadIdx.x; j < n; j += blockDim.x) {
        if (!CSM_LIVE(j)) continue;
        C v = CSM_X(j);
        double wj = CSM_W(j), tj;
        if (q) {
            tj = (1.0 - eps) * csm_loadw(q + row * q_rs + j * q_es) + eps_k;
            A_l += wj * tj;
        } else {
            tj = (j == label ? 1.0 - eps : 0.0) + eps_k;
        }
        if (tj != 0.0) loss_l += wj * tj * CSM_NEGLP(j, v);
    }
    csm_dd lsum = csm_block_sum(csm_dd_make(loss_l, 0.0), &red);
    csm_dd A = csm_block_sum(csm_dd_make(A_l, 0.0), &red);
    double Ad = q ? A.hi : (1.0 - eps) * CSM_W(label) + eps_k * W.hi;
    if (threadIdx.x == 0) loss[row * loss_s] = lsum.hi + lsum.lo;
    if (!grad) return;
    const double fct = scale * inv_tau;
    for (i64 j = threadIdx.x; j < n; j += blockDim.x) {
        C r = 0;
        if (CSM_LIVE(j)) {
            C v = CSM_X(j);
            double wj = CSM_W(j);
            double bj = q ? wj * ((1.0 - eps) * csm_loadw(q + row * q_rs + j * q_es) + eps_k)
                          : (j == label ? (1.0 - eps) * wj : 0.0) + eps_k * wj;
            double p = normal ? csm_w(csm_expdiff(v, m, tau, inv_tau)) * cinv : exp(-CSM_NEGLP(j, v));
            r = csm_n<C>((p * Ad - bj) * fct);
        }
        csm_traits<T>::store(grad + row * gr_rs + j * gr_es, r);
    }
#undef CSM_LIVE
#undef CSM_X
#undef CSM_W
#undef CSM_NEGLP
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
