/*
 * csm_core.h - the C core's interface: one task struct describes a call, csm_run
 * executes it on the instruction set chosen at import.
 *
 * The Python layer (csoftmax/_api.py and _checks.py, through _backends/c.py and
 * _ckernels.pyx) validates everything and describes the call as raw arrays: a shape, per-operand byte strides (0 where an
 * operand is broadcast or is per-row), and the set of reduced dimensions. The core
 * trusts that description: it checks nothing the Python layer has already checked.
 *
 * Operands (each optional, by kind):
 *   X      the input (logits; for the backward kinds the incoming gradient g)
 *   Y      backward kinds: the forward output y; cross-entropy: probability targets
 *   OUT    same-shape output (softmax, log_softmax, dx, the cross-entropy gradient)
 *   MASK   uint8 `where` mask, 1 = take part
 *   ROW    one value per row (logsumexp; cross-entropy loss, always float64); for kind
 *          CSM_STATS, and given to softmax / log_softmax: a statistics record per row
 *          (CSM_STAT_FIELDS contiguous doubles at each row's position)
 *   LABEL  int64 class index per row (cross-entropy with index targets)
 */
#ifndef CSM_CORE_H
#define CSM_CORE_H

#include <stddef.h>
#include <stdint.h>

#include "csm_kinds.h" /* enum csm_kind, shared with the CUDA kernels */

#ifdef __cplusplus
extern "C" {
#endif

typedef ptrdiff_t csm_intp;

#define CSM_MAXDIM 64

enum csm_operand { CSM_X = 0, CSM_Y, CSM_OUT, CSM_MASK, CSM_ROW, CSM_LABEL, CSM_NOPERANDS };

enum csm_dtype { CSM_F16 = 0, CSM_F32, CSM_F64 };

/* the fields of a statistics record (cpu/csm_part.h): the max over the unmasked entries
   (NaN left out; +inf if there is an unmasked +inf), S' relative to it as a double-double,
   whether any entry is unmasked, whether an unmasked entry is NaN, and (temperature +inf
   only; 0 otherwise) the count of unmasked entries above -inf */
enum csm_stat { CSM_STAT_M = 0, CSM_STAT_S_HI, CSM_STAT_S_LO, CSM_STAT_ANY, CSM_STAT_NAN, CSM_STAT_COUNT, CSM_STAT_FIELDS };

enum csm_status { CSM_OK = 0, CSM_ENOMEM = -1 };

typedef struct csm_task {
    int kind;
    int dtype;     /* storage dtype of X, Y and OUT */
    int row_dtype; /* storage dtype of ROW */
    int ndim;
    csm_intp shape[CSM_MAXDIM];
    char *data[CSM_NOPERANDS]; /* NULL: operand unused */
    csm_intp strides[CSM_NOPERANDS][CSM_MAXDIM];
    uint64_t reduce; /* bit d: dimension d is a softmax axis */
    double temperature; /* > 0, or +inf */

    /* cross-entropy (kind CSM_XENT) */
    const double *class_weight; /* NULL or one per class (the reduced extent) */
    double smoothing;           /* label smoothing in [0, 1] */
    int64_t ignore_index;
    double grad_scale; /* reduction scale applied to the gradient */
} csm_task;

/* run a task; returns CSM_OK or a negative csm_status */
int csm_run(const csm_task *task);

/* statistics records (csm_stats.c): a[i] becomes the merge of a[i] and b[i], the
   statistics of two disjoint parts of the same rows; lse[i] the logsumexp of a row from its
   record (temperature 1) */
void csm_stats_merge(double *a, const double *b, csm_intp nrecords, double temperature);
void csm_stats_logsumexp(const double *rec, double *lse, csm_intp nrecords);

/* instruction sets, lowest first */
enum csm_isa { CSM_ISA_BASELINE = 0, CSM_ISA_AVX2, CSM_ISA_AVX512, CSM_NISA };

/* choose the instruction set: the best the CPU supports (the Python layer may then
   lower it, from CSOFTMAX_ISA, with csm_set_isa) */
void csm_init(void);
/* select an instruction set at run time (tests); returns 0, or -1 if unsupported */
int csm_set_isa(int isa);
int csm_get_isa(void);
int csm_isa_supported(int isa); /* compiled in and supported by this CPU */
const char *csm_isa_name(int isa);
int csm_max_threads(void);
int csm_openmp_enabled(void);

#ifdef __cplusplus
}
#endif

#endif /* CSM_CORE_H */
