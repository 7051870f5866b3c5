/*
 * csm_simd.h - the SIMD vocabulary of one instruction-set build of the C core.
 *
 * The kernels are written once against the GCC/Clang vector extensions; the width of a
 * vector (CSM_VB bytes: 16 for the baseline SSE2/NEON build, 32 for AVX2+FMA, 64 for
 * AVX-512) is fixed when csm_kernels.c is compiled, so the same source becomes three
 * machine-code variants (each for float and double) that csm_dispatch.c chooses from at
 * import. Only the operations the vector extensions lack, or spell slowly, are written
 * per instruction set here: fused multiply-add, max/min with a known NaN rule, mask bytes
 * to lane masks, partial vectors (the tail of a row), float <-> double conversion, non-temporal stores, "any lane set".
 *
 * Compiled with -ffp-contract=off: a*b+c is never fused behind our back, so the
 * error-free transformations (two_sum, two_prod) stay exact. Never -ffast-math.
 */
#ifndef CSM_SIMD_H
#define CSM_SIMD_H

#include <stdint.h>
#include <string.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#ifndef CSM_VB
#error "CSM_VB (bytes per vector) must be defined by the instruction-set translation unit"
#endif

typedef float csm_vf __attribute__((vector_size(CSM_VB)));
typedef double csm_vd __attribute__((vector_size(CSM_VB)));
typedef int32_t csm_vi32 __attribute__((vector_size(CSM_VB)));
typedef int64_t csm_vi64 __attribute__((vector_size(CSM_VB)));

#define CSM_VLF (CSM_VB / 4) /* float lanes */
#define CSM_VLD (CSM_VB / 8) /* double lanes */

#if defined(__FMA__) || defined(__AVX512F__)
#define CSM_HAVE_FMA 1
#else
#define CSM_HAVE_FMA 0
#endif

/* the argument ranges of the vector exp (csm_exp.h) */
enum { CSM_EXP_BOUNDED = 0, CSM_EXP_NONPOS = 1, CSM_EXP_ANY = 2, CSM_EXP_ANCHORED = 3 };

/* ---- a * 2^k for integer-valued k, one instruction where the ISA has one (AVX-512's
   vscalef; csm_exp.h's anchored exp, whose results are normal, uses it; elsewhere the
   exponent bits are built in integer lanes) ---- */
#if CSM_VB == 64
#define CSM_HAVE_SCALEF 1
static inline csm_vf csm_scalef_f(csm_vf a, csm_vf k) { return (csm_vf)_mm512_scalef_ps((__m512)a, (__m512)k); }
static inline csm_vd csm_scalef_d(csm_vd a, csm_vd k) { return (csm_vd)_mm512_scalef_pd((__m512d)a, (__m512d)k); }
#else
#define CSM_HAVE_SCALEF 0
#endif

/* ---- fused multiply-add: a*b + c with one rounding where the hardware has it ---- */
#if CSM_HAVE_FMA && CSM_VB == 64
static inline csm_vf csm_fma_f(csm_vf a, csm_vf b, csm_vf c) { return (csm_vf)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c); }
static inline csm_vd csm_fma_d(csm_vd a, csm_vd b, csm_vd c) { return (csm_vd)_mm512_fmadd_pd((__m512d)a, (__m512d)b, (__m512d)c); }
#elif CSM_HAVE_FMA && CSM_VB == 32
static inline csm_vf csm_fma_f(csm_vf a, csm_vf b, csm_vf c) { return (csm_vf)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c); }
static inline csm_vd csm_fma_d(csm_vd a, csm_vd b, csm_vd c) { return (csm_vd)_mm256_fmadd_pd((__m256d)a, (__m256d)b, (__m256d)c); }
#else
/* no fused instruction: two roundings, which the polynomials tolerate; exact products
   use csm_two_prod below, which does not rely on fusion */
static inline csm_vf csm_fma_f(csm_vf a, csm_vf b, csm_vf c) { return a * b + c; }
static inline csm_vd csm_fma_d(csm_vd a, csm_vd b, csm_vd c) { return a * b + c; }
#endif

/* ---- max / min with a known NaN rule: where either is NaN, the result is b ---- */
#if CSM_VB == 64
static inline csm_vf csm_max_f(csm_vf a, csm_vf b) { return (csm_vf)_mm512_max_ps((__m512)a, (__m512)b); }
static inline csm_vd csm_max_d(csm_vd a, csm_vd b) { return (csm_vd)_mm512_max_pd((__m512d)a, (__m512d)b); }
static inline csm_vf csm_min_f(csm_vf a, csm_vf b) { return (csm_vf)_mm512_min_ps((__m512)a, (__m512)b); }
static inline csm_vd csm_min_d(csm_vd a, csm_vd b) { return (csm_vd)_mm512_min_pd((__m512d)a, (__m512d)b); }
#elif CSM_VB == 32 && defined(__AVX__)
static inline csm_vf csm_max_f(csm_vf a, csm_vf b) { return (csm_vf)_mm256_max_ps((__m256)a, (__m256)b); }
static inline csm_vd csm_max_d(csm_vd a, csm_vd b) { return (csm_vd)_mm256_max_pd((__m256d)a, (__m256d)b); }
static inline csm_vf csm_min_f(csm_vf a, csm_vf b) { return (csm_vf)_mm256_min_ps((__m256)a, (__m256)b); }
static inline csm_vd csm_min_d(csm_vd a, csm_vd b) { return (csm_vd)_mm256_min_pd((__m256d)a, (__m256d)b); }
#elif CSM_VB == 16 && defined(__SSE2__)
static inline csm_vf csm_max_f(csm_vf a, csm_vf b) { return (csm_vf)_mm_max_ps((__m128)a, (__m128)b); }
static inline csm_vd csm_max_d(csm_vd a, csm_vd b) { return (csm_vd)_mm_max_pd((__m128d)a, (__m128d)b); }
static inline csm_vf csm_min_f(csm_vf a, csm_vf b) { return (csm_vf)_mm_min_ps((__m128)a, (__m128)b); }
static inline csm_vd csm_min_d(csm_vd a, csm_vd b) { return (csm_vd)_mm_min_pd((__m128d)a, (__m128d)b); }
#else
static inline csm_vf csm_max_f(csm_vf a, csm_vf b) { csm_vi32 m = a > b; return (csm_vf)(((csm_vi32)a & m) | ((csm_vi32)b & ~m)); }
static inline csm_vd csm_max_d(csm_vd a, csm_vd b) { csm_vi64 m = a > b; return (csm_vd)(((csm_vi64)a & m) | ((csm_vi64)b & ~m)); }
static inline csm_vf csm_min_f(csm_vf a, csm_vf b) { csm_vi32 m = a < b; return (csm_vf)(((csm_vi32)a & m) | ((csm_vi32)b & ~m)); }
static inline csm_vd csm_min_d(csm_vd a, csm_vd b) { csm_vi64 m = a < b; return (csm_vd)(((csm_vi64)a & m) | ((csm_vi64)b & ~m)); }
#endif

/* ---- mask bytes (one per lane, nonzero = take part) to a comparison mask ---- */
#if CSM_VB == 64
static inline csm_vi32 csm_mask_f(const uint8_t *p)
{
    return (csm_vi32)_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p)) != 0;
}
static inline csm_vi64 csm_mask_d(const uint8_t *p)
{
    return (csm_vi64)_mm512_cvtepu8_epi64(_mm_loadl_epi64((const __m128i *)p)) != 0;
}
#elif CSM_VB == 32 && defined(__AVX2__)
static inline csm_vi32 csm_mask_f(const uint8_t *p)
{
    __m256i w = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p));
    return (csm_vi32)_mm256_cmpgt_epi32(w, _mm256_setzero_si256());
}
static inline csm_vi64 csm_mask_d(const uint8_t *p)
{
    int32_t b;
    memcpy(&b, p, sizeof b);
    __m256i w = _mm256_cvtepu8_epi64(_mm_cvtsi32_si128(b));
    return (csm_vi64)_mm256_cmpgt_epi64(w, _mm256_setzero_si256());
}
#elif CSM_VB == 16 && defined(__SSE2__)
static inline csm_vi32 csm_mask_f(const uint8_t *p)
{
    int32_t b;
    memcpy(&b, p, sizeof b);
    __m128i z = _mm_setzero_si128();
    __m128i w = _mm_unpacklo_epi16(_mm_unpacklo_epi8(_mm_cvtsi32_si128(b), z), z);
    return (csm_vi32)_mm_cmpgt_epi32(w, z);
}
static inline csm_vi64 csm_mask_d(const uint8_t *p)
{
    int32_t b = p[0] | (p[1] << 16); /* one byte in the low half of each 32-bit pair */
    __m128i z = _mm_setzero_si128();
    __m128i w = _mm_unpacklo_epi32(_mm_unpacklo_epi16(_mm_cvtsi32_si128(b), z), z);
    __m128i m = _mm_cmpgt_epi32(w, z);
    return (csm_vi64)_mm_shuffle_epi32(m, _MM_SHUFFLE(2, 2, 0, 0));
}
#else
static inline csm_vi32 csm_mask_f(const uint8_t *p)
{
    csm_vi32 m;
    for (int i = 0; i < CSM_VLF; i++) m[i] = p[i] ? -1 : 0;
    return m;
}
static inline csm_vi64 csm_mask_d(const uint8_t *p)
{
    csm_vi64 m;
    for (int i = 0; i < CSM_VLD; i++) m[i] = p[i] ? -1 : 0;
    return m;
}
#endif

/* ---- float lanes to double lanes and back, in halves (lo: the first CSM_VLD lanes) ---- */
#if CSM_VB == 64
static inline csm_vd csm_f2d_lo(csm_vf v) { return (csm_vd)_mm512_cvtps_pd(_mm512_castps512_ps256((__m512)v)); }
static inline csm_vd csm_f2d_hi(csm_vf v)
{
    return (csm_vd)_mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd((__m512)v), 1)));
}
static inline csm_vf csm_d2f(csm_vd lo, csm_vd hi)
{
    return (csm_vf)_mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtpd_ps((__m512d)lo)), _mm512_cvtpd_ps((__m512d)hi), 1);
}
#elif CSM_VB == 32 && defined(__AVX__)
static inline csm_vd csm_f2d_lo(csm_vf v) { return (csm_vd)_mm256_cvtps_pd(_mm256_castps256_ps128((__m256)v)); }
static inline csm_vd csm_f2d_hi(csm_vf v) { return (csm_vd)_mm256_cvtps_pd(_mm256_extractf128_ps((__m256)v, 1)); }
static inline csm_vf csm_d2f(csm_vd lo, csm_vd hi)
{
    return (csm_vf)_mm256_insertf128_ps(_mm256_castps128_ps256(_mm256_cvtpd_ps((__m256d)lo)), _mm256_cvtpd_ps((__m256d)hi), 1);
}
#elif CSM_VB == 16 && defined(__SSE2__)
static inline csm_vd csm_f2d_lo(csm_vf v) { return (csm_vd)_mm_cvtps_pd((__m128)v); }
static inline csm_vd csm_f2d_hi(csm_vf v) { return (csm_vd)_mm_cvtps_pd(_mm_movehl_ps((__m128)v, (__m128)v)); }
static inline csm_vf csm_d2f(csm_vd lo, csm_vd hi) { return (csm_vf)_mm_movelh_ps(_mm_cvtpd_ps((__m128d)lo), _mm_cvtpd_ps((__m128d)hi)); }
#else
static inline csm_vd csm_f2d_lo(csm_vf v)
{
    csm_vd d;
    for (int i = 0; i < CSM_VLD; i++) d[i] = v[i];
    return d;
}
static inline csm_vd csm_f2d_hi(csm_vf v)
{
    csm_vd d;
    for (int i = 0; i < CSM_VLD; i++) d[i] = v[i + CSM_VLD];
    return d;
}
static inline csm_vf csm_d2f(csm_vd lo, csm_vd hi)
{
    csm_vf f;
    for (int i = 0; i < CSM_VLD; i++) {
        f[i] = (float)lo[i];
        f[i + CSM_VLD] = (float)hi[i];
    }
    return f;
}
#endif

/* ---- non-temporal stores (p aligned to CSM_VB): large outputs bypass the caches, and
   their lines are not read before being written ---- */
#if CSM_VB == 64
static inline void csm_stream_f(float *p, csm_vf v) { _mm512_stream_ps(p, (__m512)v); }
static inline void csm_stream_d(double *p, csm_vd v) { _mm512_stream_pd(p, (__m512d)v); }
#define CSM_HAVE_STREAM 1
#elif CSM_VB == 32 && defined(__AVX__)
static inline void csm_stream_f(float *p, csm_vf v) { _mm256_stream_ps(p, (__m256)v); }
static inline void csm_stream_d(double *p, csm_vd v) { _mm256_stream_pd(p, (__m256d)v); }
#define CSM_HAVE_STREAM 1
#elif CSM_VB == 16 && defined(__SSE2__)
static inline void csm_stream_f(float *p, csm_vf v) { _mm_stream_ps(p, (__m128)v); }
static inline void csm_stream_d(double *p, csm_vd v) { _mm_stream_pd(p, (__m128d)v); }
#define CSM_HAVE_STREAM 1
#else
static inline void csm_stream_f(float *p, csm_vf v) { memcpy(p, &v, sizeof v); }
static inline void csm_stream_d(double *p, csm_vd v) { memcpy(p, &v, sizeof v); }
#define CSM_HAVE_STREAM 0
#endif

/* order the streaming stores before anything that follows */
static inline void csm_stream_fence(void)
{
#if CSM_HAVE_STREAM && (defined(__x86_64__) || defined(__i386__))
    _mm_sfence();
#endif
}

/* ---- the first cnt lanes (0 <= cnt < a vector) loaded or stored without touching the
   memory past them: mask instructions where the instruction set has them (no copy through
   a padded buffer), otherwise a copy; loaded lanes past cnt take the fill vector's ---- */
#if CSM_VB == 64
static inline csm_vf csm_ldpart_f(const float *p, int cnt, csm_vf fill)
{
    return (csm_vf)_mm512_mask_loadu_ps((__m512)fill, (__mmask16)((1u << cnt) - 1), p);
}
static inline csm_vd csm_ldpart_d(const double *p, int cnt, csm_vd fill)
{
    return (csm_vd)_mm512_mask_loadu_pd((__m512d)fill, (__mmask8)((1u << cnt) - 1), p);
}
static inline void csm_stpart_f(float *p, csm_vf v, int cnt) { _mm512_mask_storeu_ps(p, (__mmask16)((1u << cnt) - 1), (__m512)v); }
static inline void csm_stpart_d(double *p, csm_vd v, int cnt) { _mm512_mask_storeu_pd(p, (__mmask8)((1u << cnt) - 1), (__m512d)v); }
#elif CSM_VB == 32 && defined(__AVX2__)
static inline __m256i csm_part_mask32(int cnt) { return _mm256_cmpgt_epi32(_mm256_set1_epi32(cnt), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)); }
static inline __m256i csm_part_mask64(int cnt) { return _mm256_cmpgt_epi64(_mm256_set1_epi64x(cnt), _mm256_setr_epi64x(0, 1, 2, 3)); }
static inline csm_vf csm_ldpart_f(const float *p, int cnt, csm_vf fill)
{
    const __m256i m = csm_part_mask32(cnt);
    return (csm_vf)_mm256_blendv_ps((__m256)fill, _mm256_maskload_ps(p, m), _mm256_castsi256_ps(m));
}
static inline csm_vd csm_ldpart_d(const double *p, int cnt, csm_vd fill)
{
    const __m256i m = csm_part_mask64(cnt);
    return (csm_vd)_mm256_blendv_pd((__m256d)fill, _mm256_maskload_pd(p, m), _mm256_castsi256_pd(m));
}
static inline void csm_stpart_f(float *p, csm_vf v, int cnt) { _mm256_maskstore_ps(p, csm_part_mask32(cnt), (__m256)v); }
static inline void csm_stpart_d(double *p, csm_vd v, int cnt) { _mm256_maskstore_pd(p, csm_part_mask64(cnt), (__m256d)v); }
#else
static inline csm_vf csm_ldpart_f(const float *p, int cnt, csm_vf fill)
{
    memcpy(&fill, p, (size_t)cnt * sizeof(float));
    return fill;
}
static inline csm_vd csm_ldpart_d(const double *p, int cnt, csm_vd fill)
{
    memcpy(&fill, p, (size_t)cnt * sizeof(double));
    return fill;
}
static inline void csm_stpart_f(float *p, csm_vf v, int cnt) { memcpy(p, &v, (size_t)cnt * sizeof(float)); }
static inline void csm_stpart_d(double *p, csm_vd v, int cnt) { memcpy(p, &v, (size_t)cnt * sizeof(double)); }
#endif

/* ---- horizontal reductions: a butterfly of lane permutations, log2(lanes) steps, which
   leaves OP over all lanes in every lane (CSM_HRED_F on float-shaped vectors, float or
   int32 lanes; CSM_HRED_D on double-shaped ones); OP(a, b) is lane-wise ---- */
#if defined(__clang__)
#define CSM_SHUF(v, MT, ...) __builtin_shufflevector((v), (v), __VA_ARGS__)
#else
#define CSM_SHUF(v, MT, ...) __builtin_shuffle((v), (MT){__VA_ARGS__})
#endif
#define CSM_XOR_2_1 1, 0
#define CSM_XOR_4_2 2, 3, 0, 1
#define CSM_XOR_4_1 1, 0, 3, 2
#define CSM_XOR_8_4 4, 5, 6, 7, 0, 1, 2, 3
#define CSM_XOR_8_2 2, 3, 0, 1, 6, 7, 4, 5
#define CSM_XOR_8_1 1, 0, 3, 2, 5, 4, 7, 6
#define CSM_XOR_16_8 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7
#define CSM_XOR_16_4 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11
#define CSM_XOR_16_2 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13
#define CSM_XOR_16_1 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14
#if CSM_VB == 64
#define CSM_HRED_F(v, OP) do {                            \
    (v) = OP((v), CSM_SHUF((v), csm_vi32, CSM_XOR_16_8)); \
    (v) = OP((v), CSM_SHUF((v), csm_vi32, CSM_XOR_16_4)); \
    (v) = OP((v), CSM_SHUF((v), csm_vi32, CSM_XOR_16_2)); \
    (v) = OP((v), CSM_SHUF((v), csm_vi32, CSM_XOR_16_1)); \
} while (0)
#define CSM_HRED_D(v, OP) do {                           \
    (v) = OP((v), CSM_SHUF((v), csm_vi64, CSM_XOR_8_4)); \
    (v) = OP((v), CSM_SHUF((v), csm_vi64, CSM_XOR_8_2)); \
    (v) = OP((v), CSM_SHUF((v), csm_vi64, CSM_XOR_8_1)); \
} while (0)
#elif CSM_VB == 32
#define CSM_HRED_F(v, OP) do {                           \
    (v) = OP((v), CSM_SHUF((v), csm_vi32, CSM_XOR_8_4)); \
    (v) = OP((v), CSM_SHUF((v), csm_vi32, CSM_XOR_8_2)); \
    (v) = OP((v), CSM_SHUF((v), csm_vi32, CSM_XOR_8_1)); \
} while (0)
#define CSM_HRED_D(v, OP) do {                           \
    (v) = OP((v), CSM_SHUF((v), csm_vi64, CSM_XOR_4_2)); \
    (v) = OP((v), CSM_SHUF((v), csm_vi64, CSM_XOR_4_1)); \
} while (0)
#else
#define CSM_HRED_F(v, OP) do {                           \
    (v) = OP((v), CSM_SHUF((v), csm_vi32, CSM_XOR_4_2)); \
    (v) = OP((v), CSM_SHUF((v), csm_vi32, CSM_XOR_4_1)); \
} while (0)
#define CSM_HRED_D(v, OP) do {                           \
    (v) = OP((v), CSM_SHUF((v), csm_vi64, CSM_XOR_2_1)); \
} while (0)
#endif

/* ---- row-wise reductions of lanes-many vectors at once: v[0..W) (W the lane count) become
   one vector whose lane j holds OP over the lanes of v[bitrev(j)] -- log2(W) steps, each
   halving the vectors with two two-source shuffles and one OP per pair (W - 1 pairs in
   all), where W separate horizontal reductions cost W log2(W) steps. A lane pairs with
   the same partner at each step as in CSM_HRED_*, so each row's result is the one its
   horizontal reduction gives. CSM_TRED_F: float-shaped vectors (float or int32 lanes),
   CSM_TRED_D: double-shaped ones; v is overwritten, the result left in v[0]. ---- */
#if defined(__clang__)
#define CSM_SHUF2(a, b, MT, ...) __builtin_shufflevector((a), (b), __VA_ARGS__)
#else
#define CSM_SHUF2(a, b, MT, ...) __builtin_shuffle((a), (b), (MT){__VA_ARGS__})
#endif
#define CSM_PAIR_P_16_8 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23
#define CSM_PAIR_Q_16_8 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31
#define CSM_PAIR_P_16_4 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27
#define CSM_PAIR_Q_16_4 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31
#define CSM_PAIR_P_16_2 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29
#define CSM_PAIR_Q_16_2 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31
#define CSM_PAIR_P_16_1 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30
#define CSM_PAIR_Q_16_1 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31
#define CSM_PAIR_P_8_4 0, 1, 2, 3, 8, 9, 10, 11
#define CSM_PAIR_Q_8_4 4, 5, 6, 7, 12, 13, 14, 15
#define CSM_PAIR_P_8_2 0, 1, 8, 9, 4, 5, 12, 13
#define CSM_PAIR_Q_8_2 2, 3, 10, 11, 6, 7, 14, 15
#define CSM_PAIR_P_8_1 0, 8, 2, 10, 4, 12, 6, 14
#define CSM_PAIR_Q_8_1 1, 9, 3, 11, 5, 13, 7, 15
#define CSM_PAIR_P_4_2 0, 1, 4, 5
#define CSM_PAIR_Q_4_2 2, 3, 6, 7
#define CSM_PAIR_P_4_1 0, 4, 2, 6
#define CSM_PAIR_Q_4_1 1, 5, 3, 7
#define CSM_PAIR_P_2_1 0, 2
#define CSM_PAIR_Q_2_1 1, 3
#define CSM_PAIRSTEP(v, j, MT, OP, P, Q) \
    ((v)[j] = OP(CSM_SHUF2((v)[2 * (j)], (v)[2 * (j) + 1], MT, P), CSM_SHUF2((v)[2 * (j)], (v)[2 * (j) + 1], MT, Q)))
/* W vectors of W lanes */
#define CSM_TRED_16(v, MT, OP) do { \
    for (int j_ = 0; j_ < 8; j_++) CSM_PAIRSTEP(v, j_, MT, OP, CSM_PAIR_P_16_8, CSM_PAIR_Q_16_8); \
    for (int j_ = 0; j_ < 4; j_++) CSM_PAIRSTEP(v, j_, MT, OP, CSM_PAIR_P_16_4, CSM_PAIR_Q_16_4); \
    for (int j_ = 0; j_ < 2; j_++) CSM_PAIRSTEP(v, j_, MT, OP, CSM_PAIR_P_16_2, CSM_PAIR_Q_16_2); \
    for (int j_ = 0; j_ < 1; j_++) CSM_PAIRSTEP(v, j_, MT, OP, CSM_PAIR_P_16_1, CSM_PAIR_Q_16_1); \
} while (0)
#define CSM_TRED_8(v, MT, OP) do { \
    for (int j_ = 0; j_ < 4; j_++) CSM_PAIRSTEP(v, j_, MT, OP, CSM_PAIR_P_8_4, CSM_PAIR_Q_8_4); \
    for (int j_ = 0; j_ < 2; j_++) CSM_PAIRSTEP(v, j_, MT, OP, CSM_PAIR_P_8_2, CSM_PAIR_Q_8_2); \
    for (int j_ = 0; j_ < 1; j_++) CSM_PAIRSTEP(v, j_, MT, OP, CSM_PAIR_P_8_1, CSM_PAIR_Q_8_1); \
} while (0)
#define CSM_TRED_4(v, MT, OP) do { \
    for (int j_ = 0; j_ < 2; j_++) CSM_PAIRSTEP(v, j_, MT, OP, CSM_PAIR_P_4_2, CSM_PAIR_Q_4_2); \
    for (int j_ = 0; j_ < 1; j_++) CSM_PAIRSTEP(v, j_, MT, OP, CSM_PAIR_P_4_1, CSM_PAIR_Q_4_1); \
} while (0)
#define CSM_TRED_2(v, MT, OP) do { \
    for (int j_ = 0; j_ < 1; j_++) CSM_PAIRSTEP(v, j_, MT, OP, CSM_PAIR_P_2_1, CSM_PAIR_Q_2_1); \
} while (0)
#define CSM_TRED_W_(W, v, MT, OP) CSM_TRED_##W(v, MT, OP)
#define CSM_TRED_W(W, v, MT, OP) CSM_TRED_W_(W, v, MT, OP)
#if CSM_VB == 64
#define CSM_TRED_LF 16
#define CSM_TRED_LD 8
#elif CSM_VB == 32
#define CSM_TRED_LF 8
#define CSM_TRED_LD 4
#else
#define CSM_TRED_LF 4
#define CSM_TRED_LD 2
#endif
#define CSM_TRED_F(v, OP) CSM_TRED_W(CSM_TRED_LF, v, csm_vi32, OP)
#define CSM_TRED_D(v, OP) CSM_TRED_W(CSM_TRED_LD, v, csm_vi64, OP)

/* ---- is any lane of a comparison mask set ---- */
#if CSM_VB == 64
static inline int csm_any_i32(csm_vi32 m) { return _mm512_test_epi32_mask((__m512i)m, (__m512i)m) != 0; }
static inline int csm_any_i64(csm_vi64 m) { return _mm512_test_epi64_mask((__m512i)m, (__m512i)m) != 0; }
#elif CSM_VB == 32 && defined(__AVX__)
static inline int csm_any_i32(csm_vi32 m) { return !_mm256_testz_si256((__m256i)m, (__m256i)m); }
static inline int csm_any_i64(csm_vi64 m) { return !_mm256_testz_si256((__m256i)m, (__m256i)m); }
#elif CSM_VB == 16 && defined(__SSE2__)
static inline int csm_any_i32(csm_vi32 m) { return _mm_movemask_epi8((__m128i)m) != 0; }
static inline int csm_any_i64(csm_vi64 m) { return _mm_movemask_epi8((__m128i)m) != 0; }
#else
static inline int csm_any_i32(csm_vi32 m)
{
    int32_t acc = 0;
    for (int i = 0; i < CSM_VLF; i++) acc |= m[i];
    return acc != 0;
}
static inline int csm_any_i64(csm_vi64 m)
{
    int64_t acc = 0;
    for (int i = 0; i < CSM_VLD; i++) acc |= m[i];
    return acc != 0;
}
#endif

#endif /* CSM_SIMD_H */
