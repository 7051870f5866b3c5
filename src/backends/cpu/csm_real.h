/*
 * csm_real.h - the element type of one kernel build and its vector vocabulary.
 *
 * csm_kernels.c is compiled once per (instruction set, dtype) with CSM_REAL_F32 or
 * CSM_REAL_F64 defined (setup.py); the kernel headers are written once against these
 * names (docs/design.md, "The C core"). REAL is the element type, VR a vector of REAL,
 * VI the integer vector of the same shape (comparison masks, exponent bits), VL the lane
 * count, VMAX/VMIN lane-wise max/min whose result is the second operand where either is
 * NaN, VMASK the comparison mask of VL mask bytes, VLDPART/VSTPART the first lanes of a
 * vector loaded or stored (a row's tail), VHRED a horizontal reduction over VR or VI, VTRED
 * the row-wise reduction of VL such vectors at once, VSCALEF a * 2^k (AVX-512 builds only).
 */
#ifndef CSM_REAL_H
#define CSM_REAL_H

#if defined(CSM_REAL_F32)
#define REAL float
#define REAL_IS_F32 1
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
#define VLDPART csm_ldpart_f
#define VHRED CSM_HRED_F
#define VTRED CSM_TRED_F
#define VSTPART csm_stpart_f
#define VSCALEF csm_scalef_f
#define R_MANT_BITS 23
#define R_EXP_BIAS 127
#define R_MAX 3.4028234663852886e38f /* the largest finite value */
#elif defined(CSM_REAL_F64)
#define REAL double
#define REAL_IS_F32 0
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
#define VLDPART csm_ldpart_d
#define VHRED CSM_HRED_D
#define VTRED CSM_TRED_D
#define VSTPART csm_stpart_d
#define VSCALEF csm_scalef_d
#define R_MANT_BITS 52
#define R_EXP_BIAS 1023
#define R_MAX 1.7976931348623157e308
#else
#error "compile csm_kernels.c with CSM_REAL_F32 or CSM_REAL_F64 defined"
#endif

#define R_INF ((REAL)INFINITY)
/* whether a row of this dtype takes the rim kernels at a temperature (csm_internal.h) */
#define CSM_TAU_RIM(tp) (REAL_IS_F32 ? (tp)->rim_f32 : (tp)->rim_f64)
/* broadcast a scalar to every lane */
#define VSPLAT(s) ((VR){0} + (REAL)(s))
/* lane-wise select: m ? a : b, for a comparison mask m */
#define VSEL(m, a, b) ((VR)(((VI)(a) & (m)) | ((VI)(b) & ~(m))))

#endif /* CSM_REAL_H */
