/*
 * csm_portable.h - what lets the shared headers of src/backends/common compile both as
 * C for the C core and as CUDA device code (docs/design.md, "Layers").
 *
 * CUDA code defines CSM_FN (a device qualifier), CSM_INF and CSM_NAN before including
 * any shared header; C gets static inline functions and <math.h>'s constants.
 */
#ifndef CSM_PORTABLE_H
#define CSM_PORTABLE_H

#ifndef CSM_FN
#include <math.h>
#define CSM_FN static inline
#define CSM_INF ((double)INFINITY)
#define CSM_NAN ((double)NAN)
#endif

#endif /* CSM_PORTABLE_H */
