/*
 * csm_drive.h - the loops around the per-row kernels, generic over REAL (include after
 * the kernel headers): choosing a path for a layout, walking rows, threads.
 *
 * Three paths, by layout:
 *   direct   the softmax axis is contiguous in every same-shape operand: the kernels run
 *            on the arrays themselves
 *   columns  forward kinds whose softmax axis is strided while the next dimension is
 *            contiguous: csm_cols.h, a vector across neighbouring rows
 *   gather   anything else (several non-mergeable softmax axes, odd strides, float16
 *            storage): each row is copied into a per-thread buffer of one row
 *            (csm_buffers.h), computed there in place, and copied out, converting the
 *            storage dtype on the way
 * Threads split the rows; every path writes only the output operands.
 */

/* rows up to this many bytes take the three in-cache passes; longer ones are read once in
   blocks for their statistics, then once more to be written */
#define CSM_CACHE_ROW_BYTES ((csm_intp)128 * 1024)
/* outputs from this many bytes up are written with non-temporal stores */
#define CSM_STREAM_BYTES ((csm_intp)8 * 1024 * 1024)

static int CSM_SFX(csm_is_long)(csm_intp n) { return n * (csm_intp)sizeof(REAL) > CSM_CACHE_ROW_BYTES; }

/*
 * One row of a forward kind, given each operand's pointer to the row's first element.
 * direct: the row is contiguous in X and OUT; otherwise it goes through the buffers.
 * Returns the logsumexp (CSM_LOGSUMEXP).
 */
static double CSM_SFX(csm_forward_row)(const csm_task *t, const csm_layout *L, char *const *p, const csm_temp *tp,
                                       int direct, int stream, CSM_SFX(csm_scratch) *sc)
{
    const csm_intp n = L->n;
    const int kind = t->kind;
    const uint8_t *mask = (const uint8_t *)p[CSM_MASK];
    if (mask && L->nred == 1 && L->rstride[CSM_MASK][0] == 0) {
        if (!mask[0]) { /* the whole row is masked out */
            CSM_SFX(csm_stats) st = {0};
            st.m = -R_INF;
            if (direct)
                return CSM_SFX(csm_special_row)(kind, (REAL *)p[CSM_X], 1, NULL, 0, (REAL *)p[CSM_OUT], 1, n, &st,
                                                tp->tau_inf);
            double v = CSM_SFX(csm_special_row)(kind, sc->x, 1, NULL, 0, sc->x, 1, n, &st, tp->tau_inf);
            if (kind != CSM_LOGSUMEXP) CSM_SFX(csm_scatter)(p[CSM_OUT], sc->x, L, CSM_OUT, t->dtype);
            return v;
        }
        mask = NULL; /* the whole row takes part */
    }
    if (direct) {
        const REAL *x = (const REAL *)p[CSM_X];
        REAL *out = (REAL *)p[CSM_OUT];
        if (CSM_SFX(csm_is_long)(n)) return CSM_SFX(csm_row_forward_long)(kind, x, mask, out, n, tp, stream);
        return CSM_SFX(csm_row_forward)(kind, x, mask, out, sc ? sc->buf : NULL, n, tp, stream);
    }
    CSM_SFX(csm_gather)(sc->x, p[CSM_X], L, CSM_X, t->dtype);
    if (mask) CSM_SFX(csm_gather_mask)(sc->mask, (const char *)mask, L);
    double v = CSM_SFX(csm_row_forward)(kind, sc->x, mask ? sc->mask : NULL, sc->x, sc->buf, n, tp, 0);
    if (kind != CSM_LOGSUMEXP) CSM_SFX(csm_scatter)(p[CSM_OUT], sc->x, L, CSM_OUT, t->dtype);
    return v;
}

static double CSM_SFX(csm_do_row)(const csm_task *t, const csm_layout *L, char *const *p, const csm_temp *tp,
                                  int direct, int stream, CSM_SFX(csm_scratch) *sc)
{
    switch (t->kind) {
    case CSM_SOFTMAX:
    case CSM_LOG_SOFTMAX:
    case CSM_LOGSUMEXP:
        return CSM_SFX(csm_forward_row)(t, L, p, tp, direct, stream, sc);
    default:
        return CSM_SFX(csm_other_row)(t, L, p, tp, direct, stream, sc);
    }
}

/* ---- the row driver ---- */
/* rows [r0, r1) on the calling thread; returns nonzero if its buffers could not be had */
static int CSM_SFX(csm_rows_range)(const csm_task *t, const csm_layout *L, csm_intp r0, csm_intp r1,
                                   const csm_temp *tp, int direct, int stream)
{
    if (r1 <= r0) return 0;
    CSM_SFX(csm_scratch) sc = {0};
    /* softmax keeps its exps in a buffer only when the output is streamed: out is then
       written once, and never read */
    const int need_scratch = !direct || t->kind == CSM_XENT ||
                             (t->kind == CSM_SOFTMAX && stream && !CSM_SFX(csm_is_long)(L->n));
    if (need_scratch && !CSM_SFX(csm_scratch_alloc)(&sc, t, L->n)) {
        CSM_SFX(csm_scratch_free)(&sc);
        return 1;
    }
    csm_rowiter it;
    csm_rowiter_init(&it, L, r0);
    for (csm_intp r = r0; r < r1; r++) {
        double v = CSM_SFX(csm_do_row)(t, L, it.ptr, tp, direct, stream, need_scratch ? &sc : NULL);
        if (it.ptr[CSM_ROW]) csm_store_rowval(it.ptr[CSM_ROW], t->row_dtype, v);
        csm_rowiter_next(&it, L);
    }
    CSM_SFX(csm_scratch_free)(&sc);
    return 0;
}

static int CSM_SFX(csm_drive_rows)(const csm_task *t, const csm_layout *L, int direct)
{
    const csm_temp tp = csm_temp_make(t->temperature);
    const int nth = csm_pick_threads(t, L->nrows, L->n);
    const int stream = direct && L->base[CSM_OUT] && L->nrows * L->n * (csm_intp)sizeof(REAL) >= CSM_STREAM_BYTES;
    int failed = 0;
    if (nth <= 1) {
        failed = CSM_SFX(csm_rows_range)(t, L, 0, L->nrows, &tp, direct, stream);
    } else {
#pragma omp parallel num_threads(nth) reduction(| : failed)
        {
            int tid = 0, nt = 1;
#ifdef _OPENMP
            tid = omp_get_thread_num();
            nt = omp_get_num_threads();
#endif
            failed = CSM_SFX(csm_rows_range)(t, L, L->nrows * tid / nt, L->nrows * (tid + 1) / nt, &tp, direct, stream);
        }
    }
    if (stream) csm_stream_fence();
    return failed ? CSM_ENOMEM : CSM_OK;
}

/*
 * Few long contiguous rows: every thread takes a piece of each row; the pieces' partial
 * results -- forward kinds: statistics (csm_chunk); backward kinds: the sum -- are
 * combined by every thread, in the same order, and every thread writes its piece.
 */
typedef struct {
    CSM_SFX(csm_chunk) stats;
    csm_dd sum;
} CSM_SFX(csm_piece);

static int CSM_SFX(csm_drive_split)(const csm_task *t, const csm_layout *L, int nth)
{
    const csm_temp tp = csm_temp_make(t->temperature);
    const int forward = t->kind == CSM_SOFTMAX || t->kind == CSM_LOG_SOFTMAX || t->kind == CSM_LOGSUMEXP;
    const int stream = L->base[CSM_OUT] && L->nrows * L->n * (csm_intp)sizeof(REAL) >= CSM_STREAM_BYTES;
    CSM_SFX(csm_piece) *pieces = (CSM_SFX(csm_piece) *)malloc((size_t)nth * sizeof *pieces);
    if (!pieces) return CSM_ENOMEM;
    const csm_intp n = L->n;
#pragma omp parallel num_threads(nth)
    {
        int tid = 0, nt = 1;
#ifdef _OPENMP
        tid = omp_get_thread_num();
        nt = omp_get_num_threads();
#endif
        /* pieces start on vector boundaries */
        const csm_intp a = (n * tid / nt) / VL * VL, b = tid == nt - 1 ? n : (n * (tid + 1) / nt) / VL * VL;
        csm_rowiter it;
        csm_rowiter_init(&it, L, 0);
        for (csm_intp r = 0; r < L->nrows; r++) {
            const REAL *x = (const REAL *)it.ptr[CSM_X], *y = (const REAL *)it.ptr[CSM_Y];
            REAL *out = (REAL *)it.ptr[CSM_OUT];
            const uint8_t *mask = (const uint8_t *)it.ptr[CSM_MASK];
            int dead = 0; /* the whole row masked out */
            if (mask && L->rstride[CSM_MASK][0] == 0) {
                dead = !mask[0];
                mask = NULL;
            }
            const uint8_t *mp = mask ? mask + a : NULL;
            if (dead) {
                if (!forward) {
                    memset(out + a, 0, (size_t)(b - a) * sizeof(REAL));
                } else if (tid == 0) {
                    CSM_SFX(csm_stats) st = {0};
                    st.m = -R_INF;
                    double v = CSM_SFX(csm_special_row)(t->kind, x, 1, NULL, 0, out, 1, n, &st, tp.tau_inf);
                    if (it.ptr[CSM_ROW]) csm_store_rowval(it.ptr[CSM_ROW], t->row_dtype, v);
                }
            } else if (!forward) {
                pieces[tid].sum = CSM_SFX(csm_bwd_sum)(t->kind, x + a, y + a, mp, b - a);
#pragma omp barrier
                csm_dd s = pieces[0].sum;
                for (int j = 1; j < nt; j++) s = csm_dd_add(s, pieces[j].sum);
                CSM_SFX(csm_bwd_out)(t->kind, x + a, y + a, mp, out + a, b - a, s, &tp, stream);
            } else {
                CSM_SFX(csm_chunk) *c = &pieces[tid].stats;
                CSM_SFX(csm_chunk_init)(c);
                CSM_SFX(csm_chunk_add)(c, x + a, mp, b - a, a, &tp);
                CSM_SFX(csm_chunk_settle)(c, &tp);
#pragma omp barrier
                CSM_SFX(csm_chunk) all = pieces[0].stats;
                for (int j = 1; j < nt; j++) CSM_SFX(csm_chunk_merge)(&all, &pieces[j].stats, &tp);
                if (CSM_SFX(csm_chunk_is_special)(&all, &tp)) {
                    if (tid == 0) {
                        CSM_SFX(csm_stats) st = {0};
                        st.m = all.m;
                        st.any = all.any;
                        double v = CSM_SFX(csm_special_row)(t->kind, x, 1, mask, 1, out, 1, n, &st, tp.tau_inf);
                        if (it.ptr[CSM_ROW]) csm_store_rowval(it.ptr[CSM_ROW], t->row_dtype, v);
                    }
                } else {
                    CSM_SFX(csm_chunk_finish)(t->kind, x + a, mp, out ? out + a : NULL, b - a, &all, &tp, stream);
                    if (tid == 0 && it.ptr[CSM_ROW])
                        csm_store_rowval(it.ptr[CSM_ROW], t->row_dtype, (double)all.m + csm_dd_log1p(all.s));
                }
            }
#pragma omp barrier
            csm_rowiter_next(&it, L);
        }
    }
    free(pieces);
    if (stream) csm_stream_fence();
    return CSM_OK;
}

/* ---- the column driver: forward and backward kinds, strided softmax axis, contiguous next
   dimension ---- */
static int CSM_SFX(csm_drive_cols)(const csm_task *t, const csm_layout *L)
{
    const csm_temp tp = csm_temp_make(t->temperature);
    const int in = L->nouter - 1; /* the contiguous dimension */
    const csm_intp bw = CSM_COLV * VL; /* columns per unit */
    const csm_intp width = L->oshape[in], nblk = (width + bw - 1) / bw, groups = L->nrows / width;
    const csm_intp units = groups * nblk;
    const int nth = csm_pick_threads(t, units, L->n * bw);
    csm_layout G = *L; /* the groups: the outer dimensions without the contiguous one */
    G.nouter = in;
    G.nrows = groups;
    const csm_intp es = sizeof(REAL);
    const int backward = t->kind == CSM_SOFTMAX_BWD || t->kind == CSM_LOG_SOFTMAX_BWD;
    const csm_intp sx = L->rstride[CSM_X][0] / es;
    const csm_intp sy = L->base[CSM_Y] ? L->rstride[CSM_Y][0] / es : 0;
    const csm_intp so = L->base[CSM_OUT] ? L->rstride[CSM_OUT][0] / es : 0;
    const csm_intp smk = L->base[CSM_MASK] ? L->rstride[CSM_MASK][0] : 0;
    const csm_intp sml = L->base[CSM_MASK] ? L->ostride[CSM_MASK][in] : 0;
    int failed = 0;
#pragma omp parallel num_threads(nth) if (nth > 1) reduction(| : failed)
    {
        int tid = 0, nt = 1;
#ifdef _OPENMP
        tid = omp_get_thread_num();
        nt = omp_get_num_threads();
#endif
        csm_intp u0 = units * tid / nt, u1 = units * (tid + 1) / nt;
        CSM_SFX(csm_scratch) sc = {0};
        int have_scratch = 0;
        for (csm_intp u = u0; u < u1 && !failed; u++) {
            csm_intp g = u / nblk, c0 = (u % nblk) * bw;
            csm_rowiter it;
            csm_rowiter_init(&it, &G, g);
            char *p[CSM_NOPERANDS];
            for (int op = 0; op < CSM_NOPERANDS; op++)
                p[op] = it.ptr[op] ? it.ptr[op] + c0 * L->ostride[op][in] : NULL;
            const csm_intp ncols = width - c0 < bw ? width - c0 : bw;
            const int nv = (int)(ncols / VL);
            if (nv > 0 && backward) {
                CSM_SFX(csm_cols_backward)(t->kind, (const REAL *)p[CSM_X], sx, (const REAL *)p[CSM_Y], sy,
                                           (const uint8_t *)p[CSM_MASK], smk, sml, (REAL *)p[CSM_OUT], so, L->n, nv,
                                           &tp);
            } else if (nv > 0) {
                double lse[CSM_COLV * VL];
                CSM_SFX(csm_cols_forward)(t->kind, (const REAL *)p[CSM_X], sx, (const uint8_t *)p[CSM_MASK], smk, sml,
                                          (REAL *)p[CSM_OUT], so, L->n, nv, &tp, lse);
                if (p[CSM_ROW])
                    for (int l = 0; l < nv * VL; l++)
                        csm_store_rowval(p[CSM_ROW] + l * L->ostride[CSM_ROW][in], t->row_dtype, lse[l]);
            }
            if (nv * VL == ncols) continue;
            /* the last few columns, narrower than a vector: one by one through the buffers */
            if (!have_scratch) {
                have_scratch = 1;
                if (!CSM_SFX(csm_scratch_alloc)(&sc, t, L->n)) {
                    failed = 1;
                    break;
                }
            }
            for (int op = 0; op < CSM_NOPERANDS; op++)
                if (p[op]) p[op] += nv * VL * L->ostride[op][in];
            for (csm_intp c = nv * VL; c < ncols; c++) {
                double v = CSM_SFX(csm_do_row)(t, L, p, &tp, 0, 0, &sc);
                if (p[CSM_ROW]) csm_store_rowval(p[CSM_ROW], t->row_dtype, v);
                for (int op = 0; op < CSM_NOPERANDS; op++)
                    if (p[op]) p[op] += L->ostride[op][in];
            }
        }
        CSM_SFX(csm_scratch_free)(&sc);
    }
    return failed ? CSM_ENOMEM : CSM_OK;
}

/* ---- entry: pick the path ---- */
static int CSM_SFX(csm_run)(const csm_task *t, const csm_layout *L)
{
    const csm_intp es = t->dtype == CSM_F16 ? 2 : (csm_intp)sizeof(REAL);
    const int native = t->dtype != CSM_F16;
    const int forward = t->kind == CSM_SOFTMAX || t->kind == CSM_LOG_SOFTMAX || t->kind == CSM_LOGSUMEXP;
    const int backward = t->kind == CSM_SOFTMAX_BWD || t->kind == CSM_LOG_SOFTMAX_BWD;
    if (L->nrows == 0) return CSM_OK;

    int direct = native && L->nred == 1 && L->rstride[CSM_X][0] == es;
    if (L->base[CSM_Y]) direct = direct && L->rstride[CSM_Y][0] == es;
    if (L->base[CSM_OUT]) direct = direct && L->rstride[CSM_OUT][0] == es;
    if (L->base[CSM_MASK]) direct = direct && (L->rstride[CSM_MASK][0] == 1 || L->rstride[CSM_MASK][0] == 0);
    if (direct && (forward || backward) && CSM_SFX(csm_is_long)(L->n)) {
        /* few long rows: split each across the threads */
        int nth = csm_pick_threads(t, L->n / CSM_BLOCK, CSM_BLOCK);
        if (nth > 1 && L->nrows < nth) return CSM_SFX(csm_drive_split)(t, L, nth);
    }
    if (direct || L->n == 0) return CSM_SFX(csm_drive_rows)(t, L, 1);

    if ((forward || backward) && native && L->nred == 1 && L->nouter >= 1 && L->n <= INT32_MAX) {
        const int in = L->nouter - 1;
        int cols = L->oshape[in] >= VL && L->ostride[CSM_X][in] == es && L->rstride[CSM_X][0] % es == 0;
        if (L->base[CSM_Y]) cols = cols && L->ostride[CSM_Y][in] == es && L->rstride[CSM_Y][0] % es == 0;
        if (L->base[CSM_OUT])
            cols = cols && L->ostride[CSM_OUT][in] == es && L->rstride[CSM_OUT][0] % es == 0;
        if (L->base[CSM_MASK]) cols = cols && (L->ostride[CSM_MASK][in] == 0 || L->ostride[CSM_MASK][in] == 1);
        if (cols) return CSM_SFX(csm_drive_cols)(t, L);
    }
    return CSM_SFX(csm_drive_rows)(t, L, 0);
}
