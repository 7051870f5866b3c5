/*
 * csm_kernels.c - the whole kernel set for one instruction set and one dtype.
 *
 * setup.py compiles this file six times on x86-64 (baseline SSE2, AVX2+FMA and
 * AVX-512, each for float and double; elsewhere the baseline pair only), with
 *   CSM_VB        bytes per vector (16, 32, 64)
 *   CSM_ISA       the build's name (baseline, avx2, avx512)
 *   CSM_REAL_F32 or CSM_REAL_F64
 * and that instruction set's compiler flags. Everything here is static but the entry
 * csm_run_<isa>_<f32|f64>, which csm_dispatch.c puts in its table. The headers are
 * included in dependency order (docs/design.md, "The C core").
 */
#include <stdlib.h>

#include "csm_dd.h"
#include "csm_expconst.h"
#include "csm_internal.h"
#include "csm_part.h"
#include "csm_special.h"
#include "csm_simd.h"
#include "csm_real.h"

#include "csm_vec.h"
#include "csm_exp.h"
#include "csm_rim.h"
#include "csm_rows.h"
#include "csm_long.h"
#include "csm_buffers.h"
#include "csm_grad.h"
#include "csm_short.h"
#include "csm_cols.h"
#include "csm_drive.h"

#if REAL_IS_F32
#define CSM_ENTRY_DT f32
#else
#define CSM_ENTRY_DT f64
#endif
#define CSM_ENTRY_NAME_(isa, dt) csm_run_##isa##_##dt
#define CSM_ENTRY_NAME(isa, dt) CSM_ENTRY_NAME_(isa, dt)

int CSM_ENTRY_NAME(CSM_ISA, CSM_ENTRY_DT)(const csm_task *t, const csm_layout *L) { return csm_run_kernels(t, L); }
