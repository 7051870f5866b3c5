/*
 * csm_internal.h - what the dispatcher (csm_dispatch.c) and the kernel builds
 * (csm_kernels.c) share: the normalised layout of a task and its iterators, the
 * temperature parameters, the entry points of the builds, the flag specialisations,
 * cross-entropy's parameters, the thread rule and per-row value stores.
 */
#ifndef CSM_INTERNAL_H
#define CSM_INTERNAL_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "csm_core.h"
#include "csm_half.h"
#ifdef _OPENMP
#include <omp.h>
#endif

#define CSM_INLINE static inline __attribute__((always_inline))

/*
 * Flag specialisations. The hot loops are always-inline bodies whose flags (mask or not,
 * tau or not, store or not) are compile-time constants; CSM_FLAGS2(a, b, F) expands to
 * F(A, B) for the four constant pairs, choosing by the runtime values a and b, so that F,
 * a function-like macro, names the call once. The result is an expression (of F's type).
 */
#define CSM_FLAGS1(a, F) ((a) ? F(1) : F(0))
#define CSM_FLAGS2(a, b, F) ((a) ? ((b) ? F(1, 1) : F(1, 0)) : ((b) ? F(0, 1) : F(0, 0)))
#define CSM_FLAGS3(a, b, c, F)                                                                                         \
    ((a) ? ((b) ? ((c) ? F(1, 1, 1) : F(1, 1, 0)) : ((c) ? F(1, 0, 1) : F(1, 0, 0)))                                   \
         : ((b) ? ((c) ? F(0, 1, 1) : F(0, 1, 0)) : ((c) ? F(0, 0, 1) : F(0, 0, 0))))

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

/*
 * temperature: x is divided by tau before the softmax. The kernels multiply by 1/tau;
 * where 1/tau is no normal number of the compute type (float rows: of float; double
 * rows: of double) -- tau finite but below ~2.9e-39 or above ~8.5e37 for float rows,
 * below ~5.6e-309 or above ~4.5e307 for double rows -- a multiply would give 0 * inf or
 * lose the digits of a subnormal, so those rows take the rim kernels (csm_rim.h), which
 * divide by tau (docs/design.md, "Temperature").
 */
typedef struct csm_temp {
    double tau, inv_tau;
    int scaled;  /* tau != 1 */
    int tau_inf; /* tau == +inf: uniform over the entries that are not -inf */
    int rim_f32, rim_f64; /* 1/tau is no normal finite float, double (tau finite) */
} csm_temp;

static inline csm_temp csm_temp_make(double tau)
{
    csm_temp tp;
    tp.tau = tau;
    tp.inv_tau = 1.0 / tau;
    tp.scaled = tau != 1.0;
    tp.tau_inf = isinf(tau);
    tp.rim_f64 = !tp.tau_inf && !(tp.inv_tau >= 0x1p-1022 && tp.inv_tau <= 0x1.fffffffffffffp1023);
    tp.rim_f32 = !tp.tau_inf && !(tp.inv_tau >= 0x1p-126 && tp.inv_tau <= 0x1.fffffep127);
    return tp;
}

/* v / tau, in double: a multiply by 1/tau, or where 1/tau is no normal double a division */
static inline double csm_div_tau(const csm_temp *tp, double v) { return tp->rim_f64 ? v / tp->tau : v * tp->inv_tau; }

/* the entry of one kernel build: csm_run_<isa>_f32 (float32 and float16 storage) and
   csm_run_<isa>_f64, one for each instruction set compiled (csm_kernels.c) */
typedef int (*csm_run_fn)(const csm_task *, const csm_layout *);
#define CSM_DECLARE_BUILD(isa)                                                                                         \
    int csm_run_##isa##_f32(const csm_task *, const csm_layout *);                                                     \
    int csm_run_##isa##_f64(const csm_task *, const csm_layout *);
CSM_DECLARE_BUILD(baseline)
#if defined(CSM_BUILD_X86_ISAS)
CSM_DECLARE_BUILD(avx2)
CSM_DECLARE_BUILD(avx512)
#endif
#undef CSM_DECLARE_BUILD

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
/* elements per thread below which another thread is not worth having. Independent rows
   (and columns): on 2 cores an idle second thread pays from ~2^13 elements each, but a
   busy one makes the team wait for a scheduler slice (milliseconds), so arrays below
   ~0.5 MB of float32 stay on one thread (benchmarks/RESULTS.md, "Threads"). The parts of
   a long row: every row is 128 KiB or more already, so its split keeps the break-even. */
#define CSM_PAR_MIN_WORK ((csm_intp)1 << 16)
#define CSM_SPLIT_MIN_WORK ((csm_intp)1 << 13)

/* this thread's number and the team's size (0 and 1 outside a parallel region) */
static inline void csm_thread_id(int *tid, int *nt)
{
#ifdef _OPENMP
    *tid = omp_get_thread_num();
    *nt = omp_get_num_threads();
#else
    *tid = 0;
    *nt = 1;
#endif
}

/* threads for `units` independent pieces of `work` elements each, at least min_work
   elements per thread */
int csm_pick_threads(csm_intp units, csm_intp work, csm_intp min_work);

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
