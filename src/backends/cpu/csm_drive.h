/*
 * csm_drive.h - the loops around the row kernels (generic over REAL; see csm_real.h):
 * choosing a path for a layout, walking rows, threads.
 *
 * Three paths, by layout:
 *   direct   the softmax axis is contiguous in every same-shape operand: the kernels run
 *            on the arrays themselves
 *   columns  forward and backward kinds whose softmax axis is strided while the next
 *            dimension is contiguous: csm_cols.h, a vector across neighbouring rows
 *   gather   anything else (several non-mergeable softmax axes, odd strides, float16
 *            storage): each row is copied into a per-thread buffer of one row
 *            (csm_buffers.h), computed there in place, and copied out, converting the
 *            storage dtype on the way
 * Short direct rows go by groups (csm_short.h, csm_short_range). Threads split the rows;
 * few long rows are split themselves (csm_drive_split). Every path writes only the output
 * operands.
 */

/* rows up to this many bytes take the three in-cache passes; longer ones are read once in
   blocks for their statistics, then once more to be written */
#define CSM_CACHE_ROW_BYTES ((csm_intp)128 * 1024)
/* outputs from this many bytes up are written with non-temporal stores -- but not
   softmax's in-cache rows: their exps are stored to out and scaled there in cache, which
   measured faster at every size tried (benchmarks/RESULTS.md, "Non-temporal stores");
   softmax's long rows compute their exps again as they write, and stream */
#define CSM_STREAM_BYTES ((csm_intp)8 * 1024 * 1024)

static int csm_is_long(csm_intp n) { return n * (csm_intp)sizeof(REAL) > CSM_CACHE_ROW_BYTES; }

/* A mask of one byte per row (stride 0 along the row) either masks the whole row out or
   lets all of it take part; any other mask is per entry. */
enum { CSM_ROW_LIVE, CSM_ROW_MASKED, CSM_ROW_DEAD };

static int csm_row_mask(const csm_layout *L, const uint8_t *mask)
{
    if (!mask) return CSM_ROW_LIVE;
    if (L->nred == 1 && L->rstride[CSM_MASK][0] == 0) return mask[0] ? CSM_ROW_LIVE : CSM_ROW_DEAD;
    return CSM_ROW_MASKED;
}

/* a fully masked row of a forward kind: its values into out[0:n], its logsumexp returned */
static double csm_dead_row(int kind, REAL *out, csm_intp n, const csm_temp *tp)
{
    const csm_special sp = csm_special_values(kind, 0, 0, -CSM_INF, 0, tp->tau_inf);
    for (csm_intp j = 0; j < n; j++) out[j] = (REAL)sp.outside;
    return sp.lse;
}

/*
 * One row of a forward kind, given each operand's pointer to the row's first element.
 * direct: the row is contiguous in X and OUT; otherwise it goes through the buffers.
 * Returns the logsumexp (CSM_LOGSUMEXP).
 */
static double csm_forward_row(const csm_task *t, const csm_layout *L, char *const *p, const csm_temp *tp, int direct,
                              int stream, csm_scratch *sc)
{
    const csm_intp n = L->n;
    const int kind = t->kind;
    const int state = csm_row_mask(L, (const uint8_t *)p[CSM_MASK]);
    const uint8_t *mask = state == CSM_ROW_MASKED ? (const uint8_t *)p[CSM_MASK] : NULL;
    if (state == CSM_ROW_DEAD) {
        REAL *out = direct ? (REAL *)p[CSM_OUT] : sc->x;
        const double v = csm_dead_row(kind, kind == CSM_LOGSUMEXP ? NULL : out, kind == CSM_LOGSUMEXP ? 0 : n, tp);
        if (!direct && kind != CSM_LOGSUMEXP) csm_scatter(p[CSM_OUT], sc->x, L, CSM_OUT, t->dtype);
        return v;
    }
    if (direct) {
        const REAL *x = (const REAL *)p[CSM_X];
        REAL *out = (REAL *)p[CSM_OUT];
        if (csm_is_long(n)) return csm_row_forward_long(kind, x, mask, out, n, tp, stream);
        return csm_row_forward(kind, x, mask, out, n, tp, stream);
    }
    csm_gather(sc->x, p[CSM_X], L, CSM_X, t->dtype);
    if (mask) csm_gather_mask(sc->mask, (const char *)mask, L);
    double v = csm_row_forward(kind, sc->x, mask ? sc->mask : NULL, sc->x, n, tp, 0);
    if (kind != CSM_LOGSUMEXP) csm_scatter(p[CSM_OUT], sc->x, L, CSM_OUT, t->dtype);
    return v;
}

/*
 * One row of a derivative kind (the backward passes, cross-entropy), as csm_forward_row.
 * Returns the row's loss (CSM_XENT).
 */
static double csm_derivative_row(const csm_task *t, const csm_layout *L, char *const *p, const csm_temp *tp,
                                 int direct, int stream, csm_scratch *sc)
{
    const csm_intp n = L->n;
    const int state = csm_row_mask(L, (const uint8_t *)p[CSM_MASK]);
    const uint8_t *mask = state == CSM_ROW_MASKED ? (const uint8_t *)p[CSM_MASK] : NULL;
    if (state == CSM_ROW_DEAD) { /* a zero gradient, no loss */
        if (p[CSM_OUT] && direct) memset(p[CSM_OUT], 0, (size_t)n * sizeof(REAL));
        if (p[CSM_OUT] && !direct) {
            memset(sc->x, 0, (size_t)n * sizeof(REAL));
            csm_scatter(p[CSM_OUT], sc->x, L, CSM_OUT, t->dtype);
        }
        return 0.0;
    }
    const REAL *x = (const REAL *)p[CSM_X], *y = (const REAL *)p[CSM_Y];
    REAL *out = (REAL *)p[CSM_OUT];
    if (!direct) {
        if (mask) {
            csm_gather_mask(sc->mask, (const char *)mask, L);
            mask = sc->mask;
        }
        csm_gather(sc->x, p[CSM_X], L, CSM_X, t->dtype);
        x = sc->x;
        if (p[CSM_Y]) {
            csm_gather(sc->y, p[CSM_Y], L, CSM_Y, t->dtype);
            y = sc->y;
        }
        if (out) out = t->kind == CSM_XENT ? sc->out : sc->x;
    }
    double v = 0.0;
    if (t->kind == CSM_XENT) {
        const csm_xent_params xp = {t->class_weight, t->smoothing, t->ignore_index, t->grad_scale};
        int64_t label = 0;
        if (p[CSM_LABEL]) memcpy(&label, p[CSM_LABEL], sizeof label);
        v = csm_row_xent(x, y, label, mask, out, sc->buf, n, &xp, tp);
    } else {
        csm_row_backward(t->kind, x, y, mask, out, n, tp, direct && stream);
    }
    if (!direct && out) csm_scatter(p[CSM_OUT], out, L, CSM_OUT, t->dtype);
    return v;
}

/* Softmax or log_softmax given a statistics record per row in ROW: a part of each row is
   finished from the record of the whole row (csm_part.h) */
static int csm_from_record(const csm_task *t, const csm_layout *L)
{
    return (t->kind == CSM_SOFTMAX || t->kind == CSM_LOG_SOFTMAX) && L->base[CSM_ROW] != NULL;
}

/* One row of the record kinds: CSM_STATS writes the row's record, csm_from_record tasks
   read it (as csm_forward_row) */
static void csm_record_row(const csm_task *t, const csm_layout *L, char *const *p, const csm_temp *tp, int direct,
                           int stream, csm_scratch *sc)
{
    const csm_intp n = L->n;
    double *rec = (double *)p[CSM_ROW];
    const int state = csm_row_mask(L, (const uint8_t *)p[CSM_MASK]);
    const uint8_t *mask = state == CSM_ROW_MASKED ? (const uint8_t *)p[CSM_MASK] : NULL;
    if (state == CSM_ROW_DEAD) {
        if (t->kind == CSM_STATS) {
            csm_row_stats(NULL, NULL, 0, tp, rec);
        } else {
            REAL *out = direct ? (REAL *)p[CSM_OUT] : sc->x;
            csm_dead_row(t->kind, out, n, tp);
            if (!direct) csm_scatter(p[CSM_OUT], sc->x, L, CSM_OUT, t->dtype);
        }
        return;
    }
    const REAL *x = (const REAL *)p[CSM_X];
    if (!direct) {
        csm_gather(sc->x, p[CSM_X], L, CSM_X, t->dtype);
        x = sc->x;
        if (mask) {
            csm_gather_mask(sc->mask, (const char *)mask, L);
            mask = sc->mask;
        }
    }
    if (t->kind == CSM_STATS) {
        csm_row_stats(x, mask, n, tp, rec);
        return;
    }
    csm_row_finish_from(t->kind, x, mask, direct ? (REAL *)p[CSM_OUT] : sc->x, n, rec, tp, direct && stream);
    if (!direct) csm_scatter(p[CSM_OUT], sc->x, L, CSM_OUT, t->dtype);
}

static double csm_do_row(const csm_task *t, const csm_layout *L, char *const *p, const csm_temp *tp, int direct,
                         int stream, csm_scratch *sc)
{
    if (t->kind == CSM_STATS || csm_from_record(t, L)) {
        csm_record_row(t, L, p, tp, direct, stream, sc);
        return 0.0;
    }
    if (CSM_KIND_IS_FORWARD(t->kind)) return csm_forward_row(t, L, p, tp, direct, stream, sc);
    return csm_derivative_row(t, L, p, tp, direct, stream, sc);
}

/* ---- the row driver ---- */
/*
 * Rows [r0, r1) of a task csm_short_takes, on the calling thread: whole groups here, the
 * rest (and the groups that must go row by row) through csm_do_row. Returns nonzero if
 * its buffers could not be had.
 */
static int csm_short_range(const csm_task *t, const csm_layout *L, csm_intp r0, csm_intp r1, const csm_temp *tp,
                           int stream)
{
    const csm_intp n = L->n;
    csm_scratch sc = {0};
    if (!csm_scratch_alloc(&sc, t, n)) {
        csm_scratch_free(&sc);
        return 1;
    }
    const int has_row = L->base[CSM_ROW] && CSM_KIND_HAS_ROW_VALUE(t->kind);
    /* one outer dimension (the usual case): a row's operands are a stride apart, so a
       group's are computed as they are needed (every operand only for rows that go one
       at a time), with no iterator */
    const int flat = L->nouter == 1;
    char *base[CSM_NOPERANDS];
    csm_intp step[CSM_NOPERANDS];
    for (int op = 0; op < CSM_NOPERANDS; op++) {
        base[op] = L->base[op];
        step[op] = flat && base[op] ? L->ostride[op][0] : 0;
    }
#define CSM_ROW_PTR(op, row) (base[op] ? base[op] + (row) * step[op] : NULL)
    /* a group's passes prefetch the next one where its rows come from memory
       (csm_short.h, CSM_SHORT_PF_BYTES) */
    const int pf = flat && n * (csm_intp)sizeof(REAL) >= CSM_SHORT_PF_BYTES &&
                   L->nrows * n * (csm_intp)sizeof(REAL) >= CSM_STREAM_BYTES;
    csm_rowiter it;
    csm_rowiter_init(&it, L, r0);
    csm_intp r = r0;
    for (; r + CSM_SHORT_ROWS <= r1; r += CSM_SHORT_ROWS) {
        char *p[CSM_SHORT_ROWS][CSM_NOPERANDS];
        csm_short_grp g;
        g.ahead_x = pf ? CSM_SHORT_ROWS * step[CSM_X] : 0;
        g.ahead_y = pf ? CSM_SHORT_ROWS * step[CSM_Y] : 0;
        if (flat) {
            /* the pointers from locals, so that nothing of the loop lives in memory (the
               compiler kept running pointers on the stack, a store-to-load chain per row),
               as integers, without a test per row and operand: an operand that is absent
               has base 0 and step 0, so its rows' pointers are NULL */
            const uintptr_t bx = (uintptr_t)base[CSM_X] + (uintptr_t)(r * step[CSM_X]);
            const uintptr_t by = (uintptr_t)base[CSM_Y] + (uintptr_t)(r * step[CSM_Y]);
            const uintptr_t bo = (uintptr_t)base[CSM_OUT] + (uintptr_t)(r * step[CSM_OUT]);
            const uintptr_t sx = (uintptr_t)step[CSM_X], sy = (uintptr_t)step[CSM_Y], so = (uintptr_t)step[CSM_OUT];
            for (int q = 0; q < CSM_SHORT_ROWS; q++) {
                g.x[q] = (const REAL *)(bx + q * sx);
                g.y[q] = (const REAL *)(by + q * sy);
                g.out[q] = (REAL *)(bo + q * so);
            }
            memset(g.label, 0, sizeof g.label);
            memset(g.val, 0, sizeof g.val);
            if (base[CSM_LABEL])
                for (int q = 0; q < CSM_SHORT_ROWS; q++)
                    memcpy(&g.label[q], base[CSM_LABEL] + (r + q) * step[CSM_LABEL], sizeof g.label[q]);
        } else {
            for (int q = 0; q < CSM_SHORT_ROWS; q++) {
                memcpy(p[q], it.ptr, sizeof p[q]);
                csm_rowiter_next(&it, L);
                g.x[q] = (const REAL *)p[q][CSM_X];
                g.y[q] = (const REAL *)p[q][CSM_Y];
                g.out[q] = (REAL *)p[q][CSM_OUT];
                g.label[q] = 0;
                if (p[q][CSM_LABEL]) memcpy(&g.label[q], p[q][CSM_LABEL], sizeof g.label[q]);
                g.val[q] = 0.0;
            }
        }
        const int done = CSM_KIND_IS_BACKWARD(t->kind)
                             ? csm_short_backward(t->kind, &g, n, tp, stream)
                             : csm_short_forward(t->kind, &g, n, tp, stream, t->grad_scale, t->ignore_index);
        if (done && !has_row) continue;
        for (int q = 0; q < CSM_SHORT_ROWS; q++) {
            if (flat)
                for (int op = 0; op < CSM_NOPERANDS; op++) p[q][op] = CSM_ROW_PTR(op, r + q);
            const double v = done ? g.val[q] : csm_do_row(t, L, p[q], tp, 1, stream, &sc);
            if (has_row) csm_store_rowval(p[q][CSM_ROW], t->row_dtype, v);
        }
    }
#undef CSM_ROW_PTR
    if (flat) csm_rowiter_init(&it, L, r);
    for (; r < r1; r++) {
        const double v = csm_do_row(t, L, it.ptr, tp, 1, stream, &sc);
        if (has_row) csm_store_rowval(it.ptr[CSM_ROW], t->row_dtype, v);
        csm_rowiter_next(&it, L);
    }
    csm_scratch_free(&sc);
    return 0;
}

/* rows [r0, r1) on the calling thread; returns nonzero if its buffers could not be had */
static int csm_rows_range(const csm_task *t, const csm_layout *L, csm_intp r0, csm_intp r1, const csm_temp *tp,
                          int direct, int stream)
{
    if (r1 <= r0) return 0;
    if (direct && csm_short_takes(t, L, tp)) return csm_short_range(t, L, r0, r1, tp, stream);
    csm_scratch sc = {0};
    const int need_scratch = !direct || t->kind == CSM_XENT;
    if (need_scratch && !csm_scratch_alloc(&sc, t, L->n)) {
        csm_scratch_free(&sc);
        return 1;
    }
    csm_rowiter it;
    csm_rowiter_init(&it, L, r0);
    for (csm_intp r = r0; r < r1; r++) {
        double v = csm_do_row(t, L, it.ptr, tp, direct, stream, need_scratch ? &sc : NULL);
        if (it.ptr[CSM_ROW] && CSM_KIND_HAS_ROW_VALUE(t->kind)) csm_store_rowval(it.ptr[CSM_ROW], t->row_dtype, v);
        csm_rowiter_next(&it, L);
    }
    csm_scratch_free(&sc);
    return 0;
}

static int csm_drive_rows(const csm_task *t, const csm_layout *L, int direct)
{
    const csm_temp tp = csm_temp_make(t->temperature);
    const int nth = csm_pick_threads(L->nrows, L->n, CSM_PAR_MIN_WORK);
    const int stream = direct && (t->kind != CSM_SOFTMAX || csm_is_long(L->n)) && L->base[CSM_OUT] &&
                       L->nrows * L->n * (csm_intp)sizeof(REAL) >= CSM_STREAM_BYTES;
    int failed = 0;
    if (nth <= 1) {
        failed = csm_rows_range(t, L, 0, L->nrows, &tp, direct, stream);
    } else {
#pragma omp parallel num_threads(nth) reduction(| : failed)
        {
            int tid, nt;
            csm_thread_id(&tid, &nt);
            failed = csm_rows_range(t, L, L->nrows * tid / nt, L->nrows * (tid + 1) / nt, &tp, direct, stream);
        }
    }
    if (stream) csm_stream_fence();
    return failed ? CSM_ENOMEM : CSM_OK;
}

/* ---- few long contiguous rows: every thread takes a slice of each row ----
 * The slices' partial results -- forward kinds: statistics (csm_part); backward kinds:
 * the sum -- go to one slot per thread, are combined by every thread in the same order,
 * and every thread writes its slice. */
typedef struct {
    csm_part stats;
    csm_dd sum;
} csm_split_slot;

/* thread tid's slice [a, b) of a row of n; slices start on vector boundaries */
static void csm_split_bounds(csm_intp n, int tid, int nt, csm_intp *a, csm_intp *b)
{
    *a = (n * tid / nt) / VL * VL;
    *b = tid == nt - 1 ? n : (n * (tid + 1) / nt) / VL * VL;
}

/* one row of a forward kind, slice [a, b) on this thread; thread 0 stores the logsumexp */
static void csm_split_forward(const csm_task *t, const csm_layout *L, char *const *p, csm_split_slot *slots, int tid,
                              int nt, csm_intp a, csm_intp b, const csm_temp *tp, int stream)
{
    const csm_intp n = L->n;
    const REAL *x = (const REAL *)p[CSM_X];
    REAL *out = (REAL *)p[CSM_OUT];
    const uint8_t *mask = (const uint8_t *)p[CSM_MASK];
    csm_part *c = &slots[tid].stats;
    csm_part_init(c);
    csm_part_add(c, x + a, mask ? mask + a : NULL, b - a, tp);
#pragma omp barrier
    csm_part all = slots[0].stats;
    for (int j = 1; j < nt; j++) csm_part_merge(&all, &slots[j].stats, tp);
    double lse;
    if (csm_part_is_special(&all, tp)) {
        if (tid != 0) return;
        csm_stats st = {0};
        st.m = (REAL)all.m;
        st.any = all.any;
        lse = csm_special_row(t->kind, x, 1, mask, 1, out, 1, n, &st, tp->tau_inf);
    } else {
        csm_part_finish(t->kind, x + a, mask ? mask + a : NULL, out ? out + a : NULL, b - a, &all, tp, stream);
        if (tid != 0) return;
        lse = all.m + csm_dd_log1p(all.s);
    }
    if (p[CSM_ROW]) csm_store_rowval(p[CSM_ROW], t->row_dtype, lse);
}

/* one row of a backward kind, slice [a, b) on this thread */
static void csm_split_backward(const csm_task *t, const csm_layout *L, char *const *p, csm_split_slot *slots, int tid,
                               int nt, csm_intp a, csm_intp b, const csm_temp *tp, int stream)
{
    const REAL *g = (const REAL *)p[CSM_X], *y = (const REAL *)p[CSM_Y];
    const uint8_t *mask = (const uint8_t *)p[CSM_MASK];
    slots[tid].sum = csm_bwd_sum(t->kind, g + a, y + a, mask ? mask + a : NULL, b - a);
#pragma omp barrier
    csm_dd s = slots[0].sum;
    for (int j = 1; j < nt; j++) s = csm_dd_add(s, slots[j].sum);
    if (!csm_finite(s.hi)) s = csm_bwd_sum_rescaled(t->kind, g, 1, y, 1, mask, 1, L->n); /* the merge overflowed? */
    csm_bwd_out(t->kind, g + a, y + a, mask ? mask + a : NULL, (REAL *)p[CSM_OUT] + a, b - a, s, tp, stream);
}

static int csm_drive_split(const csm_task *t, const csm_layout *L, int nth)
{
    const csm_temp tp = csm_temp_make(t->temperature);
    const int stream = L->base[CSM_OUT] && L->nrows * L->n * (csm_intp)sizeof(REAL) >= CSM_STREAM_BYTES;
    csm_split_slot *slots = (csm_split_slot *)malloc((size_t)nth * sizeof *slots);
    if (!slots) return CSM_ENOMEM;
#pragma omp parallel num_threads(nth)
    {
        int tid, nt;
        csm_thread_id(&tid, &nt);
        csm_intp a, b;
        csm_split_bounds(L->n, tid, nt, &a, &b);
        csm_rowiter it;
        csm_rowiter_init(&it, L, 0);
        for (csm_intp r = 0; r < L->nrows; r++) {
            char *p[CSM_NOPERANDS];
            memcpy(p, it.ptr, sizeof p);
            const int state = csm_row_mask(L, (const uint8_t *)p[CSM_MASK]);
            if (state != CSM_ROW_MASKED) p[CSM_MASK] = NULL;
            if (state == CSM_ROW_DEAD && CSM_KIND_IS_FORWARD(t->kind)) {
                if (tid == 0) {
                    const double v = csm_dead_row(t->kind, (REAL *)p[CSM_OUT], p[CSM_OUT] ? L->n : 0, &tp);
                    if (p[CSM_ROW]) csm_store_rowval(p[CSM_ROW], t->row_dtype, v);
                }
            } else if (state == CSM_ROW_DEAD) {
                memset((REAL *)p[CSM_OUT] + a, 0, (size_t)(b - a) * sizeof(REAL));
            } else if (CSM_KIND_IS_FORWARD(t->kind)) {
                csm_split_forward(t, L, p, slots, tid, nt, a, b, &tp, stream);
            } else {
                csm_split_backward(t, L, p, slots, tid, nt, a, b, &tp, stream);
            }
#pragma omp barrier
            csm_rowiter_next(&it, L);
        }
    }
    free(slots);
    if (stream) csm_stream_fence();
    return CSM_OK;
}

/* ---- the column driver: a strided softmax axis, the next dimension contiguous ---- */
static int csm_drive_cols(const csm_task *t, const csm_layout *L)
{
    const csm_temp tp = csm_temp_make(t->temperature);
    const int in = L->nouter - 1;      /* the contiguous dimension */
    const csm_intp bw = CSM_COLV * VL; /* columns per unit */
    const csm_intp width = L->oshape[in], nblk = (width + bw - 1) / bw, groups = L->nrows / width;
    const csm_intp units = groups * nblk;
    const int nth = csm_pick_threads(units, L->n * bw, CSM_PAR_MIN_WORK);
    csm_layout G = *L; /* the groups: the outer dimensions without the contiguous one */
    G.nouter = in;
    G.nrows = groups;
    const csm_intp es = sizeof(REAL);
    const csm_intp sx = L->rstride[CSM_X][0] / es;
    const csm_intp sy = L->base[CSM_Y] ? L->rstride[CSM_Y][0] / es : 0;
    const csm_intp so = L->base[CSM_OUT] ? L->rstride[CSM_OUT][0] / es : 0;
    const csm_intp smk = L->base[CSM_MASK] ? L->rstride[CSM_MASK][0] : 0;
    const csm_intp sml = L->base[CSM_MASK] ? L->ostride[CSM_MASK][in] : 0;
    int failed = 0;
#pragma omp parallel num_threads(nth) if (nth > 1) reduction(| : failed)
    {
        int tid, nt;
        csm_thread_id(&tid, &nt);
        const csm_intp u0 = units * tid / nt, u1 = units * (tid + 1) / nt;
        csm_scratch sc = {0};
        int have_scratch = 0;
        for (csm_intp u = u0; u < u1 && !failed; u++) {
            const csm_intp g = u / nblk, c0 = (u % nblk) * bw;
            csm_rowiter it;
            csm_rowiter_init(&it, &G, g);
            char *p[CSM_NOPERANDS];
            for (int op = 0; op < CSM_NOPERANDS; op++) p[op] = it.ptr[op] ? it.ptr[op] + c0 * L->ostride[op][in] : NULL;
            const csm_intp ncols = width - c0 < bw ? width - c0 : bw;
            const int nv = (int)(ncols / VL);
            if (nv > 0 && CSM_KIND_IS_BACKWARD(t->kind)) {
                csm_cols_backward(t->kind, (const REAL *)p[CSM_X], sx, (const REAL *)p[CSM_Y], sy,
                                  (const uint8_t *)p[CSM_MASK], smk, sml, (REAL *)p[CSM_OUT], so, L->n, nv, &tp);
            } else if (nv > 0) {
                double lse[CSM_COLV * VL];
                csm_cols_forward(t->kind, (const REAL *)p[CSM_X], sx, (const uint8_t *)p[CSM_MASK], smk, sml,
                                 (REAL *)p[CSM_OUT], so, L->n, nv, &tp, lse);
                if (p[CSM_ROW])
                    for (int l = 0; l < nv * VL; l++)
                        csm_store_rowval(p[CSM_ROW] + l * L->ostride[CSM_ROW][in], t->row_dtype, lse[l]);
            }
            if (nv * VL == ncols) continue;
            /* the last few columns, narrower than a vector: one by one through the buffers */
            if (!have_scratch) {
                have_scratch = 1;
                if (!csm_scratch_alloc(&sc, t, L->n)) {
                    failed = 1;
                    break;
                }
            }
            for (int op = 0; op < CSM_NOPERANDS; op++)
                if (p[op]) p[op] += nv * VL * L->ostride[op][in];
            for (csm_intp c = nv * VL; c < ncols; c++) {
                double v = csm_do_row(t, L, p, &tp, 0, 0, &sc);
                if (p[CSM_ROW] && CSM_KIND_HAS_ROW_VALUE(t->kind)) csm_store_rowval(p[CSM_ROW], t->row_dtype, v);
                for (int op = 0; op < CSM_NOPERANDS; op++)
                    if (p[op]) p[op] += L->ostride[op][in];
            }
        }
        csm_scratch_free(&sc);
    }
    return failed ? CSM_ENOMEM : CSM_OK;
}

/* ---- entry: pick the path ---- */
/* the same-shape operands a layout uses: X, and Y and OUT where present */
static const int csm_elem_operands[] = {CSM_X, CSM_Y, CSM_OUT};

static int csm_run_kernels(const csm_task *t, const csm_layout *L)
{
    const csm_intp es = t->dtype == CSM_F16 ? 2 : (csm_intp)sizeof(REAL);
    const int native = t->dtype != CSM_F16;
    const csm_temp tp = csm_temp_make(t->temperature);
    /* the kinds the split and column paths take (the record kinds, and rows at the rim of
       the temperature range, go row by row) */
    const int forward_or_backward = !CSM_TAU_RIM(&tp) && ((CSM_KIND_IS_FORWARD(t->kind) && !csm_from_record(t, L)) ||
                                                          CSM_KIND_IS_BACKWARD(t->kind));
    if (L->nrows == 0) return CSM_OK;

    int direct = native && L->nred == 1;
    for (size_t i = 0; i < sizeof csm_elem_operands / sizeof *csm_elem_operands; i++) {
        const int op = csm_elem_operands[i];
        if (L->base[op]) direct = direct && L->rstride[op][0] == es;
    }
    if (L->base[CSM_MASK]) direct = direct && (L->rstride[CSM_MASK][0] == 1 || L->rstride[CSM_MASK][0] == 0);
    if (direct && forward_or_backward && csm_is_long(L->n)) {
        /* few long rows: split each across the threads */
        const int nth = csm_pick_threads(L->n / CSM_BLOCK, CSM_BLOCK, CSM_SPLIT_MIN_WORK);
        if (nth > 1 && L->nrows < nth) return csm_drive_split(t, L, nth);
    }
    if (direct || L->n == 0) return csm_drive_rows(t, L, 1);

    if (forward_or_backward && native && L->nred == 1 && L->nouter >= 1 && L->n <= INT32_MAX) {
        const int in = L->nouter - 1;
        int cols = L->oshape[in] >= VL;
        for (size_t i = 0; i < sizeof csm_elem_operands / sizeof *csm_elem_operands; i++) {
            const int op = csm_elem_operands[i];
            if (L->base[op]) cols = cols && L->ostride[op][in] == es && L->rstride[op][0] % es == 0;
        }
        if (L->base[CSM_MASK]) cols = cols && (L->ostride[CSM_MASK][in] == 0 || L->ostride[CSM_MASK][in] == 1);
        if (cols) return csm_drive_cols(t, L);
    }
    return csm_drive_rows(t, L, 0);
}
