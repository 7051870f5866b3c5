/* csm_isa_avx512.c - the kernels for x86-64 with AVX-512 F/DQ (compiled with -mavx512f -mavx512dq -mfma). */
#define CSM_VB 64
#define CSM_ISA_TABLE csm_table_avx512
#include "csm_isa_body.h"
