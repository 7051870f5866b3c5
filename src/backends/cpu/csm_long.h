/*
 * csm_long.h - the statistics of rows too long to keep in cache (generic over REAL; see
 * csm_real.h): read once, in blocks, then once more to be written; rows split across
 * threads merge their parts here (csm_drive.h drives both).
 *
 * A block of CSM_BLOCK entries is scanned (read from memory), then summed from L1
 * relative to a reference r. r moves only when a block's max exceeds it by more than
 * CSM_LAZY (in units of x / tau), so the running sum is rescaled rarely, and then by a
 * double-double factor: the result does not depend on how the row was cut. Pieces of a
 * row (threads) merge with S' = S1' + (1 + S2') exp((m2 - m1) / tau), also in
 * double-double (CSM_LAZY: common/csm_special.h).
 */
#define CSM_BLOCK 2048

typedef struct {
    REAL m;     /* max so far; -inf if none */
    csm_intp k; /* its index in the row */
    REAL r;     /* reference of s; -inf until a finite block max */
    csm_dd s;   /* sum over the unmasked j != k of exp((x_j - r) / tau); after
                   csm_part_settle: relative to m (S') */
    int any;    /* an unmasked entry */
} csm_part;

static void csm_part_init(csm_part *c)
{
    c->m = c->r = -R_INF;
    c->k = -1;
    c->s = csm_dd_make(0.0, 0.0);
    c->any = 0;
}

static int csm_has_nan(const REAL *x, const uint8_t *mask, csm_intp n)
{
    for (csm_intp i = 0; i < n; i++)
        if (x[i] != x[i] && (!mask || mask[i])) return 1;
    return 0;
}

/* fold the range x[0:n] (entries at row index off + j) into c */
static void csm_part_add(csm_part *c, const REAL *x, const uint8_t *mask, csm_intp n,
                                   csm_intp off, const csm_temp *tp)
{
    const double tau = tp->tau, inv = tp->inv_tau;
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
            if (csm_has_nan(xb, mb, bn)) c->s = csm_dd_make(NAN, 0.0);
            continue;
        }
        if (c->r == -R_INF) {
            c->r = st.m;
        } else if (((double)st.m - (double)c->r) * inv > CSM_LAZY) {
            c->s = csm_dd_mul(c->s, csm_dd_expdiff((double)c->r, (double)st.m, tp->tau));
            c->r = st.m;
        }
        csm_intp excl = -1;
        if (st.m > c->m) { /* a new max: it leaves the sum, the old one joins it */
            csm_intp kb = csm_row_find(xb, mb, bn, st.m);
            if (c->m > -R_INF) c->s = csm_dd_add(c->s, csm_dd_expdiff((double)c->m, (double)c->r, tp->tau));
            c->m = st.m;
            c->k = off + b0 + kb;
            excl = kb;
        }
#define CSM_EXPSUM(M, S) csm_expsum_t(xb, (M) ? mb : NULL, NULL, bn, c->r, excl, tau, inv, M, S, 0, CSM_EXP_ANY)
        c->s = csm_dd_add(c->s, CSM_FLAGS2(mb != NULL, tp->scaled, CSM_EXPSUM));
#undef CSM_EXPSUM
    }
}

/* make c's sum relative to its max (S'); for a part with a finite max */
static void csm_part_settle(csm_part *c, const csm_temp *tp)
{
    if (c->m > -R_INF && c->m < R_INF && c->r != c->m)
        c->s = csm_dd_mul(c->s, csm_dd_expdiff((double)c->r, (double)c->m, tp->tau));
    c->r = c->m;
}

/* a += b, both settled */
static void csm_part_merge(csm_part *a, const csm_part *b, const csm_temp *tp)
{
    a->any |= b->any;
    if (a->m == R_INF || b->m == R_INF) {
        a->m = R_INF;
        return;
    }
    const int nan = a->s.hi != a->s.hi || b->s.hi != b->s.hi;
    if (!(b->m > -R_INF)) {
        if (nan) a->s = csm_dd_make(NAN, 0.0);
        return;
    }
    csm_part hi = *a, lo = *b;
    if (b->m > a->m || !(a->m > -R_INF)) {
        hi = *b;
        lo = *a;
    }
    if (lo.m > -R_INF) { /* the smaller max and its sum join the larger's sum */
        const csm_dd f = csm_dd_expdiff((double)lo.m, (double)hi.m, tp->tau);
        hi.s = csm_dd_add(hi.s, csm_dd_mul(csm_dd_add_d(lo.s, 1.0), f));
    }
    if (nan) hi.s = csm_dd_make(NAN, 0.0);
    hi.any = a->any;
    *a = hi;
}

/* the finishing pass over x[0:n] of a row (or of a part of one) whose stats are c (settled) */
static void csm_part_finish(int kind, const REAL *x, const uint8_t *mask, REAL *out, csm_intp n,
                                      const csm_part *c, const csm_temp *tp, int stream)
{
    if (kind == CSM_SOFTMAX)
        csm_row_softmax(x, mask, out, n, c->m, (REAL)csm_dd_inv_1p(c->s), tp, stream);
    else if (kind == CSM_LOG_SOFTMAX)
        csm_row_logsub(x, mask, out, n, c->m, (REAL)csm_dd_log1p(c->s), tp, stream);
}

static int csm_part_is_special(const csm_part *c, const csm_temp *tp)
{
    return tp->tau_inf || !c->any || !(c->m > -R_INF && c->m < R_INF) || c->s.hi != c->s.hi;
}

/* One long contiguous row on one thread: stats in one read, then the finishing pass. */
static double csm_row_forward_long(int kind, const REAL *x, const uint8_t *mask, REAL *out, csm_intp n,
                                            const csm_temp *tp, int stream)
{
    csm_part c;
    csm_part_init(&c);
    csm_part_add(&c, x, mask, n, 0, tp);
    csm_part_settle(&c, tp);
    if (csm_part_is_special(&c, tp)) {
        csm_stats st = {0};
        st.m = c.m;
        st.any = c.any;
        return csm_special_row(kind, x, 1, mask, 1, out, 1, n, &st, tp->tau_inf);
    }
    csm_part_finish(kind, x, mask, out, n, &c, tp, stream);
    return (double)c.m + csm_dd_log1p(c.s);
}
