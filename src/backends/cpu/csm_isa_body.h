/*
 * csm_isa_body.h - the whole kernel set for one instruction set. Each csm_isa_*.c defines
 * CSM_VB (bytes per vector) and CSM_ISA_TABLE (the name of its entry table), includes
 * this, and is compiled with that instruction set's flags; the generic headers are
 * instantiated here once for float and once for double.
 */
#include <stdlib.h>

#include "csm_dd.h"
#include "csm_expconst.h"
#include "csm_internal.h"
#include "csm_simd.h"
#ifdef _OPENMP
#include <omp.h>
#endif

#define CSM_REAL_F32
#include "csm_real_begin.h"
#include "csm_exp.h"
#include "csm_rows.h"
#include "csm_buffers.h"
#include "csm_grad.h"
#include "csm_cols.h"
#include "csm_drive.h"
#include "csm_real_end.h"

#define CSM_REAL_F64
#include "csm_real_begin.h"
#include "csm_exp.h"
#include "csm_rows.h"
#include "csm_buffers.h"
#include "csm_grad.h"
#include "csm_cols.h"
#include "csm_drive.h"
#include "csm_real_end.h"

const csm_isa_table CSM_ISA_TABLE = {csm_run_f32, csm_run_f64};
