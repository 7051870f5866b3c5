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

/* ---- scalar helpers ---- */
__device__ __forceinline__ bool csm_isnan(double v) { return v != v; }
__device__ __forceinline__ float csm_fmax(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ double csm_fmax(double a, double b) { return fmax(a, b); }

/* s + e == a - b exactly */
template <typename C> __device__ __forceinline__ void csm_two_diff(C a, C b, C &s, C &e)
{
    s = a - b;
    C bb = s - a;
    e = (a - (s - bb)) - (b + bb);
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
    if (k >= -126 && k <= 127) return e * __int_as_float((k + 127) << 23);
    int k1 = k >> 1, k2 = k - k1;
    return (e * __int_as_float((k1 + 127) << 23)) * __int_as_float((k2 + 127) << 23);
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
    double d = ((double)x - (double)ref) * inv_tau; /* exact difference, one rounding far below float's */
    dh = (float)d;
    dl = csm_finite(d) ? (float)(d - (double)dh) : 0.0f;
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
    C d = x - m;
    if (scaled) {
        C q = d * (C)inv_tau;
        d = (d == -(C)CSM_INF && x > -(C)CSM_INF) ? x * (C)inv_tau - m * (C)inv_tau : q;
    }
    return d - lse;
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

/* ---- forward: a warp per row, E entries per lane ---- */
template <typename T, int E>
__global__ void csm_fwd_warp(const T *x, i64 x_rs, i64 x_es, T *out, i64 o_rs, i64 o_es, const unsigned char *mask,
                             i64 m_rs, i64 m_es, T *lse_out, i64 l_rs, i64 nrows, i64 n, double tau, int kind)
{
    typedef typename csm_traits<T>::C C;
    const int lane = threadIdx.x & 31;
    const i64 row = (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= nrows) return; /* the whole warp leaves together */
    const bool tau_inf = !csm_finite(tau);
    const double inv_tau = 1.0 / tau;
    C v[E];
    int live = 0, any = 0, nan = 0;
    C m = -(C)CSM_INF;
#pragma unroll
    for (int e = 0; e < E; e++) {
        const i64 j = lane + 32 * e;
        v[e] = -(C)CSM_INF;
        if (j < n) {
            const bool on = !mask || mask[row * m_rs + j * m_es];
            if (on) {
                v[e] = csm_traits<T>::load(x + row * x_rs + j * x_es);
                live |= 1 << e;
                any = 1;
                nan |= csm_isnan(v[e]);
                m = csm_fmax(m, v[e]);
            }
        }
    }
    m = (C)csm_warp_max((double)m);
    any = csm_warp_or(any);
    i64 k = (i64)0x7fffffffffffffffLL;
#pragma unroll
    for (int e = E - 1; e >= 0; e--)
        if (((live >> e) & 1) && v[e] == m) k = lane + 32 * e;
    k = csm_warp_min_i64(k);
    bool special = !any || !csm_finite((double)m) || tau_inf;
    csm_dd s = csm_dd_make(0.0, 0.0);
    if (!special) {
        csm_sum acc = {0.0, 0.0};
#pragma unroll
        for (int e = 0; e < E; e++) {
            const i64 j = lane + 32 * e;
            C ev = csm_expdiff(v[e], m, tau, inv_tau); /* masked and padding: exp(-inf) = 0 */
            if (j != k) acc.add((double)ev);
            v[e] = kind == 0 ? ev : v[e]; /* softmax keeps the exps */
        }
        s = csm_warp_sum(csm_dd_make(acc.s, -acc.c));
        special = csm_isnan(s.hi);
    }
    if (special) {
        i64 cnt = 0;
#pragma unroll
        for (int e = 0; e < E; e++) cnt += ((live >> e) & 1) && v[e] > -(C)CSM_INF;
        cnt = (i64)csm_warp_sum_d((double)cnt);
        nan = csm_warp_or(nan);
        csm_special sp = csm_special_values(kind, any, nan, (double)m, cnt, tau_inf);
        if (kind == 2) {
            if (lane == 0) csm_traits<T>::store(lse_out + row * l_rs, (C)sp.lse);
            return;
        }
#pragma unroll
        for (int e = 0; e < E; e++) {
            const i64 j = lane + 32 * e;
            if (j >= n) continue;
            bool on = (live >> e) & 1;
            double val = !on ? sp.outside : (sp.uniform && !(v[e] > -(C)CSM_INF) ? sp.outside : sp.inside);
            csm_traits<T>::store(out + row * o_rs + j * o_es, (C)val);
        }
        return;
    }
    const double L = csm_dd_log1p(s);
    if (kind == 2) {
        if (lane == 0) csm_traits<T>::store(lse_out + row * l_rs, (C)((double)m + L));
        return;
    }
    const C c = kind == 0 ? (C)csm_dd_inv_1p(s) : (C)L;
#pragma unroll
    for (int e = 0; e < E; e++) {
        const i64 j = lane + 32 * e;
        if (j >= n) continue;
        C r = kind == 0 ? v[e] * c : csm_logp(v[e], m, c, inv_tau, tau != 1.0);
        csm_traits<T>::store(out + row * o_rs + j * o_es, r);
    }
}

/* ---- forward: a block per row; CACHED keeps the row in shared memory ---- */
template <typename T, int CACHED>
__global__ void csm_fwd_block(const T *x, i64 x_rs, i64 x_es, T *out, i64 o_rs, i64 o_es, const unsigned char *mask,
                              i64 m_rs, i64 m_es, T *lse_out, i64 l_rs, i64 nrows, i64 n, double tau, int kind)
{
    typedef typename csm_traits<T>::C C;
    __shared__ csm_block_scratch red;
    CSM_DYNAMIC_SMEM(double, smem_raw); /* double: aligned for either compute type */
    C *cache = (C *)smem_raw;
    const i64 row = blockIdx.x;
    if (row >= nrows) return;
    const bool tau_inf = !csm_finite(tau);
    const double inv_tau = 1.0 / tau;
    const T *xr = x + row * x_rs;
    const unsigned char *mr = mask ? mask + row * m_rs : 0;
#define CSM_GET(j) (CACHED ? cache[j] : ((!mr || mr[(j) * m_es]) ? csm_traits<T>::load(xr + (j) * x_es) : -(C)CSM_INF))
    /* pass 1: max, its first index, any, NaN */
    C m = -(C)CSM_INF;
    i64 k = (i64)0x7fffffffffffffffLL;
    int any = 0, nan = 0;
    for (i64 j = threadIdx.x; j < n; j += blockDim.x) {
        const bool on = !mr || mr[j * m_es];
        C v = on ? csm_traits<T>::load(xr + j * x_es) : -(C)CSM_INF;
        if (CACHED) cache[j] = v;
        any |= on;
        nan |= on && csm_isnan(v);
        if (v > m) { /* strictly greater: the first index of the max stays */
            m = v;
            k = j;
        }
    }
    const C mloc = m;
    m = (C)csm_block_max((double)m, &red);
    k = csm_block_min_i64(mloc == m ? k : (i64)0x7fffffffffffffffLL, &red);
    any = csm_block_or(any, &red);
    bool special = !any || !csm_finite((double)m) || tau_inf;
    csm_dd s = csm_dd_make(0.0, 0.0);
    if (!special) { /* pass 2: S' */
        csm_sum acc = {0.0, 0.0};
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) {
            C ev = csm_expdiff((C)CSM_GET(j), m, tau, inv_tau);
            if (j != k) acc.add((double)ev);
        }
        s = csm_block_sum(csm_dd_make(acc.s, -acc.c), &red);
        special = csm_isnan(s.hi);
    }
    if (special) {
        i64 cnt = 0;
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) {
            const bool on = !mr || mr[j * m_es];
            cnt += on && (C)CSM_GET(j) > -(C)CSM_INF;
        }
        csm_dd c2 = csm_block_sum(csm_dd_make((double)cnt, 0.0), &red);
        nan = csm_block_or(nan, &red);
        csm_special sp = csm_special_values(kind, any, nan, (double)m, (i64)c2.hi, tau_inf);
        if (kind == 2) {
            if (threadIdx.x == 0) csm_traits<T>::store(lse_out + row * l_rs, (C)sp.lse);
            return;
        }
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) {
            const bool on = !mr || mr[j * m_es];
            C v = CSM_GET(j);
            double val = !on ? sp.outside : (sp.uniform && !(v > -(C)CSM_INF) ? sp.outside : sp.inside);
            csm_traits<T>::store(out + row * o_rs + j * o_es, (C)val);
        }
        return;
    }
    const double L = csm_dd_log1p(s);
    if (kind == 2) {
        if (threadIdx.x == 0) csm_traits<T>::store(lse_out + row * l_rs, (C)((double)m + L));
        return;
    }
    const C c = kind == 0 ? (C)csm_dd_inv_1p(s) : (C)L;
    for (i64 j = threadIdx.x; j < n; j += blockDim.x) { /* pass 3 */
        C v = CSM_GET(j);
        C r = kind == 0 ? csm_expdiff(v, m, tau, inv_tau) * c : csm_logp(v, m, c, inv_tau, tau != 1.0);
        csm_traits<T>::store(out + row * o_rs + j * o_es, r);
    }
#undef CSM_GET
}

/* ---- forward, few long rows: chunks of each row in their own blocks ----
 * stats: per (chunk, row) its max m, first index k, S' relative to m without k, any,
 * NaN; merge: one block per row sums the chunks' S' in double-double; finish: every
 * chunk writes its outputs. Workspace rows of CSM_SPLIT_STRIDE doubles per chunk. */
#define CSM_SPLIT_STRIDE 7 /* m, k, s.hi, s.lo, any, nan, entries above -inf */

template <typename T>
__global__ void csm_fwd_split_stats(const T *x, i64 x_rs, i64 x_es, const unsigned char *mask, i64 m_rs, i64 m_es,
                                    double *ws, i64 nrows, i64 n, i64 chunk, double tau)
{
    typedef typename csm_traits<T>::C C;
    __shared__ csm_block_scratch red;
    const i64 row = blockIdx.y, c = blockIdx.x, nchunks = gridDim.x;
    const i64 j0 = c * chunk, j1 = j0 + chunk < n ? j0 + chunk : n;
    const double inv_tau = 1.0 / tau;
    const T *xr = x + row * x_rs;
    const unsigned char *mr = mask ? mask + row * m_rs : 0;
    C m = -(C)CSM_INF;
    i64 k = (i64)0x7fffffffffffffffLL;
    int any = 0, nan = 0;
    double cnt = 0.0;
    for (i64 j = j0 + threadIdx.x; j < j1; j += blockDim.x) {
        const bool on = !mr || mr[j * m_es];
        C v = on ? csm_traits<T>::load(xr + j * x_es) : -(C)CSM_INF;
        any |= on;
        nan |= on && csm_isnan(v);
        cnt += v > -(C)CSM_INF;
        if (v > m) {
            m = v;
            k = j;
        }
    }
    const C mloc = m;
    m = (C)csm_block_max((double)m, &red);
    k = csm_block_min_i64(mloc == m ? k : (i64)0x7fffffffffffffffLL, &red);
    any = csm_block_or(any, &red);
    nan = csm_block_or(nan, &red);
    cnt = csm_block_sum(csm_dd_make(cnt, 0.0), &red).hi;
    csm_dd s = csm_dd_make(0.0, 0.0);
    if (csm_finite((double)m)) {
        csm_sum acc = {0.0, 0.0};
        for (i64 j = j0 + threadIdx.x; j < j1; j += blockDim.x) {
            const bool on = !mr || mr[j * m_es];
            C v = on ? csm_traits<T>::load(xr + j * x_es) : -(C)CSM_INF;
            C ev = csm_expdiff(v, m, tau, inv_tau);
            if (j != k) acc.add((double)ev);
        }
        s = csm_block_sum(csm_dd_make(acc.s, -acc.c), &red);
    }
    if (threadIdx.x == 0) {
        double *w = ws + (row * nchunks + c) * CSM_SPLIT_STRIDE;
        w[0] = (double)m;
        w[1] = (double)k;
        w[2] = s.hi;
        w[3] = s.lo;
        w[4] = any;
        w[5] = nan;
        w[6] = cnt;
    }
}

/* one block per row: the chunks' stats merged into the row's, written over entry 0:
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
    /* the chunk holding the row's first max keeps its S'; the others join as (1 + S') f */
    i64 first = (i64)0x7fffffffffffffffLL;
    for (i64 c = threadIdx.x; c < nchunks; c += blockDim.x)
        if (w[c * CSM_SPLIT_STRIDE] == m && c < first) first = c;
    first = csm_block_min_i64(first, &red);
    csm_dd s = csm_dd_make(0.0, 0.0);
    const bool finite = csm_finite(m);
    if (finite) {
        for (i64 c = threadIdx.x; c < nchunks; c += blockDim.x) {
            const double *wc = w + c * CSM_SPLIT_STRIDE;
            if (!(wc[0] > -CSM_INF)) continue; /* nothing above -inf there */
            csm_dd sc = csm_dd_make(wc[2], wc[3]);
            if (c != first) sc = csm_dd_mul(csm_dd_add(sc, csm_dd_make(1.0, 0.0)), csm_dd_expdiff(wc[0], m, tau));
            s = csm_dd_add(s, sc);
        }
    }
    s = csm_block_sum(s, &red);
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
                                     const double *ws, i64 nrows, i64 n, i64 chunk, double tau, int kind)
{
    typedef typename csm_traits<T>::C C;
    const i64 row = blockIdx.y, c = blockIdx.x, nchunks = gridDim.x;
    const i64 j0 = c * chunk, j1 = j0 + chunk < n ? j0 + chunk : n;
    const bool tau_inf = !csm_finite(tau);
    const double inv_tau = 1.0 / tau;
    const double *w = ws + row * nchunks * CSM_SPLIT_STRIDE;
    const C m = (C)w[0];
    const csm_dd s = csm_dd_make(w[2], w[3]);
    const int any = w[4] != 0.0, nan = w[5] != 0.0;
    const T *xr = x + row * x_rs;
    const unsigned char *mr = mask ? mask + row * m_rs : 0;
    const bool special = !any || !csm_finite((double)m) || tau_inf || nan;
    if (special) {
        csm_special sp = csm_special_values(kind, any, nan, (double)m, (i64)w[6], tau_inf);
        if (kind == 2) {
            if (c == 0 && threadIdx.x == 0) csm_traits<T>::store(lse_out + row * l_rs, (C)sp.lse);
            return;
        }
        for (i64 j = j0 + threadIdx.x; j < j1; j += blockDim.x) {
            const bool on = !mr || mr[j * m_es];
            C v = csm_traits<T>::load(xr + j * x_es);
            double val = !on ? sp.outside : (sp.uniform && !(v > -(C)CSM_INF) ? sp.outside : sp.inside);
            csm_traits<T>::store(out + row * o_rs + j * o_es, (C)val);
        }
        return;
    }
    const double L = csm_dd_log1p(s);
    if (kind == 2) {
        if (c == 0 && threadIdx.x == 0) csm_traits<T>::store(lse_out + row * l_rs, (C)((double)m + L));
        return;
    }
    const C f = kind == 0 ? (C)csm_dd_inv_1p(s) : (C)L;
    for (i64 j = j0 + threadIdx.x; j < j1; j += blockDim.x) {
        const bool on = !mr || mr[j * m_es];
        C v = on ? csm_traits<T>::load(xr + j * x_es) : -(C)CSM_INF;
        C r = kind == 0 ? csm_expdiff(v, m, tau, inv_tau) * f : csm_logp(v, m, f, inv_tau, tau != 1.0);
        csm_traits<T>::store(out + row * o_rs + j * o_es, r);
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
        if (r == -(C)CSM_INF || ((double)v - (double)r) * inv_tau > 60.0) { /* move the reference */
            csm_dd f = r == -(C)CSM_INF ? csm_dd_make(0.0, 0.0) : csm_dd_expdiff((double)r, (double)v, tau);
            S = csm_dd_mul(csm_dd_add(S, csm_dd_make(acc.s, -acc.c)), f);
            acc.s = acc.c = 0.0;
            emax = (C)((double)emax * f.hi);
            r = v;
        }
        C ev = csm_expdiff(v, r, tau, inv_tau);
        if (v > m) { /* a new max: the old one's exp joins S, this one's waits */
            acc.add((double)emax);
            emax = ev;
            m = v;
        } else {
            acc.add((double)ev);
        }
    }
    S = csm_dd_add(S, csm_dd_make(acc.s, -acc.c));
    bool special = !any || !csm_finite((double)m) || tau_inf || nan;
    csm_dd sp_ = csm_dd_make(0.0, 0.0);
    if (!special) {
        csm_dd f = r == m ? csm_dd_make(1.0, 0.0) : csm_dd_expdiff((double)r, (double)m, tau);
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
        csm_special sp = csm_special_values(kind, any, nan, (double)m, cnt, tau_inf);
        if (kind == 2) {
            csm_traits<T>::store(lse_out + g * l_gs + col * l_cs, (C)sp.lse);
            return;
        }
        for (i64 i = 0; i < n; i++) {
            const bool on = !mc || mc[i * m_rs];
            C v = csm_traits<T>::load(xc + i * x_rs);
            double val = !on ? sp.outside : (sp.uniform && !(v > -(C)CSM_INF) ? sp.outside : sp.inside);
            csm_traits<T>::store(out + g * o_gs + col + i * o_rs, (C)val);
        }
        return;
    }
    const double L = csm_dd_log1p(sp_);
    if (kind == 2) {
        csm_traits<T>::store(lse_out + g * l_gs + col * l_cs, (C)((double)m + L));
        return;
    }
    const C f = kind == 0 ? (C)csm_dd_inv_1p(sp_) : (C)L;
    for (i64 i = 0; i < n; i++) {
        const bool on = !mc || mc[i * m_rs];
        C v = on ? csm_traits<T>::load(xc + i * x_rs) : -(C)CSM_INF;
        C o = kind == 0 ? csm_expdiff(v, m, tau, inv_tau) * f : csm_logp(v, m, f, inv_tau, tau != 1.0);
        csm_traits<T>::store(out + g * o_gs + col + i * o_rs, o);
    }
}

/* ---- backward: dx = y (g - sum(g y)) / tau  or  (g - exp(y) sum(g)) / tau ---- */
template <typename C> __device__ __forceinline__ C csm_bwd_value(int kind, C g, C y, csm_dd sum, double inv_tau)
{
    if (kind == 3) return (C)((double)y * (((double)g - sum.hi) - sum.lo) * inv_tau);
    C e = csm_exp2(y, (C)0);
    return (C)((fma(-(double)e, sum.hi, (double)g) - (double)e * sum.lo) * inv_tau);
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
            acc.add(kind == 3 ? (double)gv[e] * (double)yv[e] : (double)gv[e]);
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
        acc.add(kind == 3 ? (double)gj * (double)csm_traits<T>::load(y + row * y_rs + j * y_es) : (double)gj);
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
        if (v > m) {
            m = v;
            k = j;
        }
    }
    const C mloc = m;
    m = (C)csm_block_max((double)m, &red);
    k = csm_block_min_i64(mloc == m ? k : (i64)0x7fffffffffffffffLL, &red);
    any = csm_block_or(any, &red);
    nan = csm_block_or(nan, &red);
    K = csm_block_sum(csm_dd_make(Kl, 0.0), &red);
    W = csm_block_sum(csm_dd_make(Wl, 0.0), &red);
    const double eps_k = K.hi > 0 ? eps / K.hi : 0.0;
    bool normal = any && csm_finite((double)m) && !tau_inf && !nan;
    double L = 0.0, cinv = 0.0;
    if (normal) {
        csm_sum acc = {0.0, 0.0};
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) {
            C ev = csm_expdiff((C)CSM_X(j), m, tau, inv_tau);
            if (j != k) acc.add((double)ev);
        }
        csm_dd s = csm_block_sum(csm_dd_make(acc.s, -acc.c), &red);
        normal = !csm_isnan(s.hi);
        L = csm_dd_log1p(s);
        cinv = csm_dd_inv_1p(s);
    }
    /* -log p_j: normal rows L + (m - x_j) / tau; special rows from the semantics table */
    double uniform_lp = 0.0;
    if (!normal && tau_inf && any && !nan && csm_finite((double)m)) {
        i64 cnt = 0;
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) cnt += CSM_LIVE(j) && CSM_X(j) > -(C)CSM_INF;
        csm_dd c2 = csm_block_sum(csm_dd_make((double)cnt, 0.0), &red);
        uniform_lp = log(c2.hi);
    }
    const bool uniform = !normal && tau_inf && any && !nan && csm_finite((double)m);
#define CSM_NEGLP(j, v)                                                                                                \
    (normal ? L + ((double)m - (double)(v)) * inv_tau                                                                  \
            : (uniform ? ((v) > -(C)CSM_INF ? uniform_lp : CSM_INF) : (any ? CSM_NAN : CSM_INF)))
    /* the loss and, for probabilities, A = sum w q' */
    double loss_l = 0.0, A_l = 0.0;
    for (i64 j = threadIdx.x; j < n; j += blockDim.x) {
        if (!CSM_LIVE(j)) continue;
        C v = CSM_X(j);
        double wj = CSM_W(j), tj;
        if (q) {
            tj = (1.0 - eps) * (double)csm_traits<T>::load(q + row * q_rs + j * q_es) + eps_k;
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
            double bj = q ? wj * ((1.0 - eps) * (double)csm_traits<T>::load(q + row * q_rs + j * q_es) + eps_k)
                          : (j == label ? (1.0 - eps) * wj : 0.0) + eps_k * wj;
            double p = normal ? (double)csm_expdiff(v, m, tau, inv_tau) * cinv : exp(-CSM_NEGLP(j, v));
            r = (C)((p * Ad - bj) * fct);
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
        const double sj = (double)csm_traits<T>::load(s + r * n + j);
        double v;
        if (i == j) {
            const double om = -expm1((double)csm_traits<T>::load(lp + r * n + i)); /* 1 - s_i, exactly */
            v = log_kind ? om : sj * om;
        } else {
            v = log_kind ? -sj : -(double)csm_traits<T>::load(s + r * n + i) * sj;
        }
        csm_traits<T>::store(J + t, (C)(v * inv_tau));
    }
}
