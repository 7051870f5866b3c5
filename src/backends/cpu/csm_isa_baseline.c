/* csm_isa_baseline.c - the kernels for any CPU of the architecture (SSE2 on x86-64, NEON on arm64). */
#define CSM_VB 16
#define CSM_ISA_TABLE csm_table_baseline
#include "csm_isa_body.h"
