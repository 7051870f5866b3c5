/*
 * csm_simd.h - the SIMD vocabulary of one instruction-set build of the C core.
 *
 * The kernels are written once against the GCC/Clang vector extensions; the width of a
 * vector (CSM_VB bytes: 16 for the baseline SSE2/NEON build, 32 for AVX2+FMA, 64 for
 * AVX-512) is fixed by the translation unit that includes this header, so the same
 * source becomes three machine-code variants that csm_dispatch.c chooses from at import.
 * Only the operations the vector extensions lack are spelled per instruction set here:
 * fused multiply-add, "any lane set" and the exact product.
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
/* one double per float lane: the float kernels accumulate their sums in double */
typedef double csm_vdf __attribute__((vector_size(2 * CSM_VB)));
typedef int64_t csm_vi64f __attribute__((vector_size(2 * CSM_VB)));
/* one mask byte per lane */
typedef uint8_t csm_vmf __attribute__((vector_size(CSM_VB / 4)));
typedef uint8_t csm_vmd __attribute__((vector_size(CSM_VB / 8)));

#define CSM_VLF (CSM_VB / 4) /* float lanes */
#define CSM_VLD (CSM_VB / 8) /* double lanes */

#if defined(__FMA__) || defined(__AVX512F__)
#define CSM_HAVE_FMA 1
#else
#define CSM_HAVE_FMA 0
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
