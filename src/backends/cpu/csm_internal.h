/*
 * csm_internal.h - what the dispatcher and the instruction-set builds of the core share:
 * the normalised layout of a task, the temperature parameters, the per-ISA entry table,
 * and float16 conversions.
 */
#ifndef CSM_INTERNAL_H
#define CSM_INTERNAL_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "csm_core.h"
#include "csm_half.h"

#define CSM_INLINE static inline __attribute__((always_inline))

/*
 * A task reduced to "rows": the outer dimensions enumerate independent rows, the reduced
 * dimensions run along one row. Size-1 dimensions are dropped, negative strides of X are
 * flipped (every operand alike), dimensions are sorted by X's stride and adjacent ones
 * are merged where every operand allows it, so the common cases end up with one reduced
 * dimension and one or two outer ones. Strides are in bytes.
 */
typedef struct csm_layout {
    int nouter, nred;
    csm_intp oshape[CSM_MAXDIM], rshape[CSM_MAXDIM];
    csm_intp ostride[CSM_NOPERANDS][CSM_MAXDIM];
    csm_intp rstride[CSM_NOPERANDS][CSM_MAXDIM];
    csm_intp nrows; /* product of oshape */
    csm_intp n;     /* product of rshape: the row length */
    char *base[CSM_NOPERANDS];
} csm_layout;

int csm_layout_build(const csm_task *task, csm_layout *layout);

/* walks the rows of a layout in order, keeping one pointer per operand */
typedef struct csm_rowiter {
    csm_intp idx[CSM_MAXDIM];
    char *ptr[CSM_NOPERANDS];
} csm_rowiter;

static inline void csm_rowiter_init(csm_rowiter *it, const csm_layout *L, csm_intp row)
{
    for (int op = 0; op < CSM_NOPERANDS; op++) it->ptr[op] = L->base[op];
    for (int d = L->nouter - 1; d >= 0; d--) {
        csm_intp i = row % L->oshape[d];
        row /= L->oshape[d];
        it->idx[d] = i;
        for (int op = 0; op < CSM_NOPERANDS; op++)
            if (it->ptr[op]) it->ptr[op] += i * L->ostride[op][d];
    }
}

static inline void csm_rowiter_next(csm_rowiter *it, const csm_layout *L)
{
    for (int d = L->nouter - 1; d >= 0; d--) {
        for (int op = 0; op < CSM_NOPERANDS; op++)
            if (it->ptr[op]) it->ptr[op] += L->ostride[op][d];
        if (++it->idx[d] < L->oshape[d]) return;
        for (int op = 0; op < CSM_NOPERANDS; op++)
            if (it->ptr[op]) it->ptr[op] -= L->oshape[d] * L->ostride[op][d];
        it->idx[d] = 0;
    }
}

/* temperature: x is divided by tau before the softmax */
typedef struct csm_temp {
    double tau, inv_tau;
    int scaled;  /* tau != 1 */
    int tau_inf; /* tau == +inf: uniform over the entries that are not -inf */
} csm_temp;

static inline csm_temp csm_temp_make(double tau)
{
    csm_temp tp;
    tp.tau = tau;
    tp.inv_tau = 1.0 / tau;
    tp.scaled = tau != 1.0;
    tp.tau_inf = isinf(tau);
    return tp;
}

/* one instruction-set build of the core */
typedef int (*csm_run_fn)(const csm_task *, const csm_layout *);
typedef struct csm_isa_table {
    csm_run_fn run_f32; /* float32 and float16 storage */
    csm_run_fn run_f64;
} csm_isa_table;

extern const csm_isa_table csm_table_baseline;
#if defined(CSM_BUILD_X86_ISAS)
extern const csm_isa_table csm_table_avx2;
extern const csm_isa_table csm_table_avx512;
#endif

/* walks the elements of one row of an operand that spans several axes */
typedef struct {
    csm_intp idx[CSM_MAXDIM];
    csm_intp off;
} csm_rediter;

/* advance to the next element of a row of operand op (byte offset in it->off) */
static inline void csm_rediter_next(csm_rediter *it, const csm_layout *L, int op)
{
    for (int d = L->nred - 1; d >= 0; d--) {
        it->off += L->rstride[op][d];
        if (++it->idx[d] < L->rshape[d]) return;
        it->off -= L->rshape[d] * L->rstride[op][d];
        it->idx[d] = 0;
    }
}

/* ---- cross-entropy parameters ---- */
typedef struct {
    const double *w;      /* class weights or NULL */
    double eps;           /* label smoothing */
    int64_t ignore_index;
    double scale;         /* reduction scale of the gradient */
} csm_xent_params;

static inline double csm_xent_weight(const csm_xent_params *xp, csm_intp j)
{
    return xp->w ? xp->w[j] : 1.0;
}

/* ---- threads ---- */
#define CSM_PAR_MIN_WORK ((csm_intp)1 << 13) /* elements per thread below which threads cost more than they save */

/* threads for `units` independent pieces of `work` elements each */
int csm_pick_threads(const csm_task *task, csm_intp units, csm_intp work);

/* one per-row value (logsumexp, loss) into its storage dtype */
static inline void csm_store_rowval(char *p, int dtype, double v)
{
    if (dtype == CSM_F64) {
        memcpy(p, &v, sizeof v);
    } else if (dtype == CSM_F32) {
        float f = (float)v;
        memcpy(p, &f, sizeof f);
    } else {
        uint16_t h = csm_float_to_half((float)v);
        memcpy(p, &h, sizeof h);
    }
}

#endif /* CSM_INTERNAL_H */
