/*
 * csm_dispatch.c - the core's entry point: choose the instruction-set build once (the
 * best this CPU runs; the Python layer may cap it from CSOFTMAX_ISA), normalise a task's
 * layout, and hand the task to the kernel build for its instruction set and dtype.
 * Also the thread rule the kernel builds share.
 */
#include <stdlib.h>
#include <string.h>

#include "csm_internal.h"

/* csoftmax/_ckernels.pyx declares csm_task with these array sizes */
_Static_assert(CSM_MAXDIM == 64 && CSM_NOPERANDS == 6, "update csm_task's declaration in _ckernels.pyx");

/* the kernel builds, by instruction set: {float32 and float16 storage, float64} */
static const csm_run_fn csm_builds[CSM_NISA][2] = {
    {csm_run_baseline_f32, csm_run_baseline_f64},
#if defined(CSM_BUILD_X86_ISAS)
    {csm_run_avx2_f32, csm_run_avx2_f64},
    {csm_run_avx512_f32, csm_run_avx512_f64},
#endif
};

static const char *const csm_isa_names[CSM_NISA] = {"baseline", "avx2", "avx512"};

static int csm_isa_current = CSM_ISA_BASELINE;

int csm_isa_supported(int isa)
{
    if (isa < 0 || isa >= CSM_NISA || !csm_builds[isa][0]) return 0;
#if defined(CSM_BUILD_X86_ISAS)
    __builtin_cpu_init();
    if (isa == CSM_ISA_AVX2) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (isa == CSM_ISA_AVX512)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("fma");
#endif
    return isa == CSM_ISA_BASELINE;
}

void csm_init(void)
{
    int best = CSM_ISA_BASELINE;
    for (int isa = 0; isa < CSM_NISA; isa++)
        if (csm_isa_supported(isa)) best = isa;
    csm_isa_current = best;
}

int csm_set_isa(int isa)
{
    if (!csm_isa_supported(isa)) return -1;
    csm_isa_current = isa;
    return 0;
}

int csm_get_isa(void) { return csm_isa_current; }

const char *csm_isa_name(int isa) { return isa >= 0 && isa < CSM_NISA ? csm_isa_names[isa] : "unknown"; }

int csm_max_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

int csm_openmp_enabled(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

int csm_pick_threads(csm_intp units, csm_intp work, csm_intp min_work)
{
#ifdef _OPENMP
    const csm_intp max = omp_get_max_threads();
    if (max <= 1 || units < 2) return 1;
    csm_intp by_work = units * (work > 0 ? work : 1) / min_work;
    csm_intp nth = max;
    if (nth > units) nth = units;
    if (nth > by_work) nth = by_work;
    return nth < 1 ? 1 : (int)nth;
#else
    (void)units;
    (void)work;
    (void)min_work;
    return 1;
#endif
}

/* ---- layout ---- */
static csm_intp csm_dtype_size(int dtype) { return dtype == CSM_F16 ? 2 : dtype == CSM_F32 ? 4 : 8; }

typedef struct {
    csm_intp shape;
    csm_intp stride[CSM_NOPERANDS];
} csm_dim;

/* sort by X's stride, largest first (insertion sort: stable, ndim is small) */
static void csm_sort_dims(csm_dim *d, int nd)
{
    for (int i = 1; i < nd; i++) {
        csm_dim cur = d[i];
        int j = i - 1;
        while (j >= 0 && d[j].stride[CSM_X] < cur.stride[CSM_X]) {
            d[j + 1] = d[j];
            j--;
        }
        d[j + 1] = cur;
    }
}

/* merge neighbours that every operand walks as one; returns the new count */
static int csm_merge_dims(csm_dim *d, int nd, char *const *base)
{
    if (nd == 0) return 0;
    int out = 0;
    for (int i = 1; i < nd; i++) {
        int ok = 1;
        for (int op = 0; op < CSM_NOPERANDS && ok; op++)
            if (base[op]) ok = d[out].stride[op] == d[i].shape * d[i].stride[op];
        if (ok) {
            d[out].shape *= d[i].shape;
            for (int op = 0; op < CSM_NOPERANDS; op++) d[out].stride[op] = d[i].stride[op];
        } else {
            d[++out] = d[i];
        }
    }
    return out + 1;
}

int csm_layout_build(const csm_task *t, csm_layout *L)
{
    csm_dim od[CSM_MAXDIM], rd[CSM_MAXDIM];
    int no = 0, nr = 0, empty_row = 0;
    /* cross-entropy keeps its class axis as given: labels and weights index it */
    const int keep_red_order = t->kind == CSM_XENT;

    /* the struct is large (strides for every operand and dimension): fill only what is used */
    L->nouter = L->nred = 0;
    L->n = 0;
    for (int op = 0; op < CSM_NOPERANDS; op++) L->base[op] = t->data[op];
    L->nrows = 1;
    for (int d = 0; d < t->ndim; d++) {
        int reduced = (int)((t->reduce >> d) & 1u);
        if (t->shape[d] == 0) {
            if (!reduced) {
                L->nrows = 0;
                return CSM_OK;
            }
            empty_row = 1;
        }
        if (t->shape[d] <= 1) continue;
        csm_dim dim;
        dim.shape = t->shape[d];
        for (int op = 0; op < CSM_NOPERANDS; op++) dim.stride[op] = t->data[op] ? t->strides[op][d] : 0;
        if (dim.stride[CSM_X] < 0 && !(reduced && keep_red_order)) {
            /* walk this dimension backwards in every operand: rows are independent and a
               softmax does not depend on the order of its entries */
            for (int op = 0; op < CSM_NOPERANDS; op++) {
                if (!L->base[op]) continue;
                L->base[op] += (dim.shape - 1) * dim.stride[op];
                dim.stride[op] = -dim.stride[op];
            }
        }
        if (reduced)
            rd[nr++] = dim;
        else
            od[no++] = dim;
    }
    csm_sort_dims(od, no);
    no = csm_merge_dims(od, no, L->base);
    if (!keep_red_order) csm_sort_dims(rd, nr);
    nr = csm_merge_dims(rd, nr, L->base);

    L->nouter = no;
    for (int i = 0; i < no; i++) {
        L->oshape[i] = od[i].shape;
        L->nrows *= od[i].shape;
        for (int op = 0; op < CSM_NOPERANDS; op++) L->ostride[op][i] = od[i].stride[op];
    }
    if (empty_row || nr == 0) {
        /* a row of 0 or 1 entries: describe it as one contiguous axis */
        L->nred = 1;
        L->rshape[0] = L->n = empty_row ? 0 : 1;
        const csm_intp es = csm_dtype_size(t->dtype);
        L->rstride[CSM_X][0] = L->rstride[CSM_Y][0] = L->rstride[CSM_OUT][0] = es;
        L->rstride[CSM_MASK][0] = 1;
        L->rstride[CSM_ROW][0] = L->rstride[CSM_LABEL][0] = 0;
        return CSM_OK;
    }
    L->nred = nr;
    L->n = 1;
    for (int i = 0; i < nr; i++) {
        L->rshape[i] = rd[i].shape;
        L->n *= rd[i].shape;
        for (int op = 0; op < CSM_NOPERANDS; op++) L->rstride[op][i] = rd[i].stride[op];
    }
    return CSM_OK;
}

/* ---- entry ---- */
int csm_run(const csm_task *t)
{
    csm_layout L;
    int err = csm_layout_build(t, &L);
    if (err) return err;
    return csm_builds[csm_isa_current][t->dtype == CSM_F64](t, &L);
}
