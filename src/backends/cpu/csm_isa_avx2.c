/* csm_isa_avx2.c - the kernels for x86-64 with AVX2 and FMA (compiled with -mavx2 -mfma). */
#define CSM_VB 32
#define CSM_ISA_TABLE csm_table_avx2
#include "csm_isa_body.h"
