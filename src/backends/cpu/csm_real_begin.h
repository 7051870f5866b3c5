/*
 * csm_real_begin.h - opens one dtype instantiation of the generic kernel headers.
 *
 * Define CSM_REAL_F32 or CSM_REAL_F64, include this, include the generic headers,
 * include csm_real_end.h. Inside, REAL is the element type, VR a vector of REAL, VI the
 * integer vector of the same shape (comparison masks, exponent bits), VL the lane count,
 * VMAX/VMIN lane-wise max/min whose result is the second operand where either is NaN,
 * VMASK the comparison mask of VL mask bytes, and
 * CSM_SFX(name) gives each generic function its dtype suffix (name_f32 / name_f64).
 */
#if defined(CSM_REAL_F32)
#define REAL float
#define REAL_IS_F32 1
#define CSM_SFX(name) name##_f32
#define VR csm_vf
#define VI csm_vi32
#define VIS int32_t
#define VL CSM_VLF
#define VFMA csm_fma_f
#define VANY csm_any_i32
#define VMAX csm_max_f
#define VMIN csm_min_f
#define VMASK csm_mask_f
#define VSTREAM csm_stream_f
#define R_MANT_BITS 23
#define R_EXP_BIAS 127
#define R_EPS 5.9604644775390625e-08 /* 2^-24: unit roundoff */
#elif defined(CSM_REAL_F64)
#define REAL double
#define REAL_IS_F32 0
#define CSM_SFX(name) name##_f64
#define VR csm_vd
#define VI csm_vi64
#define VIS int64_t
#define VL CSM_VLD
#define VFMA csm_fma_d
#define VANY csm_any_i64
#define VMAX csm_max_d
#define VMIN csm_min_d
#define VMASK csm_mask_d
#define VSTREAM csm_stream_d
#define R_MANT_BITS 52
#define R_EXP_BIAS 1023
#define R_EPS 1.1102230246251565e-16 /* 2^-53 */
#else
#error "define CSM_REAL_F32 or CSM_REAL_F64 before including csm_real_begin.h"
#endif

#define R_INF ((REAL)INFINITY)
/* broadcast a scalar to every lane */
#define VSPLAT(s) ((VR){0} + (REAL)(s))
/* lane-wise select: m ? a : b, for a comparison mask m */
#define VSEL(m, a, b) ((VR)(((VI)(a) & (m)) | ((VI)(b) & ~(m))))
