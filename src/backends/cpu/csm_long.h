/*
 * csm_long.h - the statistics of rows too long to keep in cache (generic over REAL; see
 * csm_real.h): read once, in blocks, then once more to be written; rows split across
 * threads merge their parts here (csm_drive.h drives both).
 *
 * A block of CSM_BLOCK entries is scanned (read from memory), then summed from L1
 * relative to a reference r. r moves only when a block's max exceeds it by more than
 * CSM_LAZY (in units of x / tau), so the running sum is rescaled rarely, and then by a
 * double-double factor whose power of two comes last: the result does not depend on how
 * the row was cut. The parts'
 * statistics and their exact merge are csm_part.h's (CSM_LAZY: common/csm_special.h).
 * Here too: the statistics record of a row (kind CSM_STATS), and a row finished from a
 * record its caller merged.
 */
#define CSM_BLOCK 2048

static int csm_has_nan(const REAL *x, const uint8_t *mask, csm_intp n)
{
    for (csm_intp i = 0; i < n; i++)
        if (x[i] != x[i] && (!mask || mask[i])) return 1;
    return 0;
}

/*
 * Fold the range x[0:n] into c (initialised, or settled), leaving it settled. In between,
 * the sum is kept scaled by 2^CSM_ESCALE, as the block sums come (csm_rows.h), and moved to
 * a new reference by csm_dd_mul_expdiff: terms far below the max keep their digits, and a
 * sum far below a new reference is rounded once rather than dropped with an exp that
 * underflows. It is unscaled once, at the end.
 */
static void csm_part_add(csm_part *c, const REAL *x, const uint8_t *mask, csm_intp n, const csm_temp *tp)
{
    const double tau = tp->tau, inv = tp->inv_tau;
    csm_dd s = csm_dd_make(c->s.hi / CSM_EUNSCALE, c->s.lo / CSM_EUNSCALE);
    for (csm_intp b0 = 0; b0 < n && c->m != R_INF; b0 += CSM_BLOCK) {
        const csm_intp bn = n - b0 < CSM_BLOCK ? n - b0 : CSM_BLOCK;
        const REAL *xb = x + b0;
        const uint8_t *mb = mask ? mask + b0 : NULL;
        csm_stats st;
        csm_row_scan(xb, mb, bn, &st);
        c->any |= st.any;
        if (st.m == R_INF) { /* the row is special; nothing more to add */
            c->m = R_INF;
            break;
        }
        if (!(st.m > -R_INF)) { /* nothing above -inf here, but maybe a NaN */
            if (csm_has_nan(xb, mb, bn)) s = csm_dd_make(NAN, 0.0);
            continue;
        }
        if (c->r == -R_INF) {
            c->r = st.m;
        } else if (((double)st.m - c->r) * inv > CSM_LAZY) {
            s = csm_dd_mul_expdiff(s, c->r, (double)st.m, tau);
            c->r = st.m;
        }
        csm_intp excl = -1;
        if (st.m > c->m) { /* a new max: it leaves the sum, the old one joins it */
            excl = csm_row_find(xb, mb, bn, st.m);
            if (c->m > -R_INF) s = csm_dd_add(s, csm_dd_mul_expdiff(csm_dd_make(1.0 / CSM_EUNSCALE, 0.0), c->m, c->r, tau));
            c->m = st.m;
        }
        const REAL r = (REAL)c->r; /* a value of the row: exact */
#define CSM_EXPSUM(M, S) csm_expsum_t(xb, (M) ? mb : NULL, NULL, bn, r, 0, excl, tau, inv, M, S, 0, CSM_EXP_ANY)
        s = csm_dd_add(s, CSM_FLAGS2(mb != NULL, tp->scaled, CSM_EXPSUM));
#undef CSM_EXPSUM
    }
    if (c->m > -R_INF && c->m < R_INF && c->r != c->m) s = csm_dd_mul_expdiff(s, c->r, c->m, tau); /* settle */
    c->r = c->m;
    c->s = csm_dd_make(s.hi * CSM_EUNSCALE, s.lo * CSM_EUNSCALE);
}

/* the finishing pass over x[0:n] of a row (or of a part of one) whose stats are c (settled) */
static void csm_part_finish(int kind, const REAL *x, const uint8_t *mask, REAL *out, csm_intp n,
                                      const csm_part *c, const csm_temp *tp, int stream)
{
    if (kind == CSM_SOFTMAX)
        csm_row_softmax(x, mask, out, n, (REAL)c->m, (REAL)csm_dd_inv_1p(c->s), tp, stream);
    else if (kind == CSM_LOG_SOFTMAX)
        csm_row_logsub(x, mask, out, n, (REAL)c->m, (REAL)csm_dd_log1p(c->s), tp, stream);
}

/* One long contiguous row on one thread: stats in one read, then the finishing pass. */
static double csm_row_forward_long(int kind, const REAL *x, const uint8_t *mask, REAL *out, csm_intp n,
                                            const csm_temp *tp, int stream)
{
    if (CSM_TAU_RIM(tp)) return csm_row_forward(kind, x, mask, out, n, tp, 0); /* csm_rim.h's scalar passes */
    csm_part c;
    csm_part_init(&c);
    csm_part_add(&c, x, mask, n, tp);
    if (csm_part_is_special(&c, tp)) {
        csm_stats st = {0};
        st.m = (REAL)c.m;
        st.any = c.any;
        return csm_special_row(kind, x, 1, mask, 1, out, 1, n, &st, tp->tau_inf);
    }
    csm_part_finish(kind, x, mask, out, n, &c, tp, stream);
    return c.m + csm_dd_log1p(c.s);
}

/* ---- statistics records (csm_part.h) ---- */
/* the record of one contiguous row (kind CSM_STATS) */
static void csm_row_stats(const REAL *x, const uint8_t *mask, csm_intp n, const csm_temp *tp, double *rec)
{
    csm_part c;
    csm_part_init(&c);
    if (CSM_TAU_RIM(tp)) {
        csm_stats st;
        csm_row_scan(x, mask, n, &st);
        c.m = c.r = (double)st.m;
        c.any = st.any;
        if (st.m > -R_INF && st.m < R_INF) c.s = csm_rim_sum(x, mask, n, c.m, tp);
    } else if (!tp->tau_inf) {
        csm_part_add(&c, x, mask, n, tp);
    }
    int nan = 0;
    csm_intp cnt = 0;
    if (tp->tau_inf || !(c.m > -CSM_INF && c.m < CSM_INF) || c.s.hi != c.s.hi) {
        /* special rows (and rows without a finite entry): what the table needs exactly, in
           one scalar pass (a +inf stops csm_part_add before it sees a NaN further on) */
        c.m = -CSM_INF;
        for (csm_intp j = 0; j < n; j++) {
            if (mask && !mask[j]) continue;
            const REAL v = x[j];
            c.any = 1;
            nan |= v != v;
            cnt += v > -R_INF;
            if (v > c.m) c.m = (double)v;
        }
    }
    rec[CSM_STAT_M] = c.m;
    rec[CSM_STAT_S_HI] = nan ? CSM_NAN : c.s.hi;
    rec[CSM_STAT_S_LO] = nan ? 0.0 : c.s.lo;
    rec[CSM_STAT_ANY] = c.any;
    rec[CSM_STAT_NAN] = nan;
    rec[CSM_STAT_COUNT] = tp->tau_inf ? (double)cnt : 0.0;
}

/* softmax or log_softmax of one contiguous row (or part of one) from the record of the
   whole row */
static void csm_row_finish_from(int kind, const REAL *x, const uint8_t *mask, REAL *out, csm_intp n, const double *rec,
                                const csm_temp *tp, int stream)
{
    if (csm_record_is_special(rec, tp)) {
        const csm_special sp = csm_record_special(kind, rec, tp->tau_inf);
        csm_special_fill(&sp, x, 1, mask, 1, out, 1, n);
        return;
    }
    const csm_part c = csm_part_from_record(rec);
    if (CSM_TAU_RIM(tp))
        csm_rim_finish(kind, x, mask, out, NULL, n, c.m, c.s, tp);
    else
        csm_part_finish(kind, x, mask, out, n, &c, tp, stream);
}
