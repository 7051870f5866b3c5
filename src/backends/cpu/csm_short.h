/*
 * csm_short.h - short contiguous rows, CSM_SHORT_ROWS of them at a time (generic over
 * REAL; see csm_real.h).
 *
 * Where a row holds only a few vectors, the work of a row -- the horizontal max and sum,
 * the loop setup, the first-max search, log1p and the division -- costs more than its
 * elements (docs/design.md, "Performance method"). Here every pass runs over a group of
 * rows at once, lane-parallel within a row and interleaved across rows, so that the
 * rows' dependency chains and reductions overlap, and the max's index is never searched:
 *   softmax           S = sum_j e_j over every entry, e_j = exp((x_j - m) / tau), and
 *                     S' = S - 1 (the max entry's term is exactly 1); the exps are summed
 *                     and stored scaled by 2^CSM_ESCALE, as csm_rows.h's (csm_exp.h)
 *   log_softmax,      the entries equal to the max are counted and left out of the sum,
 *   logsumexp         S' = sum_{x_j != m} e_j + (ties - 1), as the single-row kernels'
 *                     S' leaves out only the first of them
 *   cross-entropy     (index targets, no weights, smoothing or mask) as log_softmax, with
 *                     the exps stored in the gradient and scaled in place: p_j scale / tau,
 *                     and p_y - 1 at the label taken as -S' / (1 + S') when e_y = 1
 *   backward passes   the row sums interleaved and split into REAL pairs a vector of rows
 *                     at a time; each row is then finished by csm_grad.h's vector loop
 * A group is CSM_SHORT_ROWS rows, at least a vector's lanes of them: the passes run over
 * CSM_SHORT_SUB rows at a time (their state in registers), keep each row's lane-wise
 * partials, and reduce them for all the group's rows at once (VTRED, csm_simd.h: a row's
 * max, min, sum or tie count in about one shuffle pair per row, where its own horizontal
 * reduction costs log2(VL) of them).
 * Tails are partial vectors (masked loads and stores, csm_simd.h). A group in which any
 * row is special (not finite max, NaN, an ignored label) or whose sum needs the careful
 * path is computed row by row by the general kernels instead, which nothing here has
 * written to yet except where they expect it (softmax's exps of a NaN row).
 */
#define CSM_SHORT_SUB 4 /* rows whose passes are interleaved */
#define CSM_SHORT_SUBE 2 /* the same for the exp pass, whose constants fill the registers */
#define CSM_SHORT_ROWS (VL > CSM_SHORT_SUB ? VL : CSM_SHORT_SUB) /* rows per group */
/* rows up to this many entries take the group kernels (measured: benchmarks/RESULTS.md) */
#define CSM_SHORT_MAX ((csm_intp)1024)

typedef struct {
    const REAL *x[CSM_SHORT_ROWS];    /* the input (backward: g) */
    const REAL *y[CSM_SHORT_ROWS];    /* backward: the forward output */
    REAL *out[CSM_SHORT_ROWS];        /* the output, the gradient, or NULL */
    int64_t label[CSM_SHORT_ROWS];    /* cross-entropy */
    double val[CSM_SHORT_ROWS];       /* logsumexp, the loss */
    csm_intp ahead_x, ahead_y;        /* bytes from a row of x (y) to the same row of the
                                         next group, to prefetch; 0: none */
} csm_short_grp;

/*
 * Out of cache, a group's interleaved rows are many short streams that the hardware
 * prefetchers follow late: float32 rows of 128-256 ran 1.5-2.6x slower per element than
 * rows of 512+ (one at a time) at 2^22 elements. So where the rows are at least
 * CSM_SHORT_PF_BYTES and the array at least CSM_STREAM_BYTES (csm_drive.h: it comes from
 * memory), the first pass over a group (scan, backward sums; log_softmax_backward's output
 * pass, csm_short_backward) asks for the same lines of the next group into L2, one
 * prefetch per vector and operand (benchmarks/RESULTS.md, "Prefetching the next group").
 * In cache those prefetches cost 3-11%, so the passes are instantiated without them
 * (pf = 0) too.
 */
#define CSM_SHORT_PF_BYTES ((csm_intp)512)

static inline void csm_short_prefetch(const REAL *p, csm_intp ahead, const int pf)
{
    if (pf) __builtin_prefetch((const char *)p + ahead, 0, 2);
}

static const csm_vacc csm_short_zero = {{0}, {0}};

/* the group's S' (or sums), row r's as hi[r] + lo[r]: arrays, so that the steps after the
   sums (S' from the totals, log1p, the finishing factors, the backward pairs) run a vector
   of rows at a time */
typedef struct {
    double hi[CSM_SHORT_ROWS], lo[CSM_SHORT_ROWS];
} csm_short_sums;

/*
 * softmax's exps of the partial vector at each row's end, where the group finishes the rows
 * itself: stored whole here rather than masked into the output, and loaded back whole. A
 * load does not take its data from a masked store still in flight but waits for it to
 * reach the cache (a Zen 4: 26 cycles a round trip against 15, benchmarks/micro/
 * store_forward.c); float32 rows of 8 spent 40% of their finishing pass on the load of
 * the exps just stored, and now cost 63 cycles a row, not 89 (benchmarks/RESULTS.md,
 * "Short rows' tails").
 */
typedef struct {
    VR e[CSM_SHORT_ROWS];
} csm_short_tails;

/* a row's lane-wise sums as a pass leaves them for csm_short_totals: float rows' two halves
   (csm_vacc) added lane-wise, which is the totals' first step, so that each row stores and
   loads one vector rather than two; double rows' sum and compensation */
#if REAL_IS_F32
typedef csm_vd csm_short_part;
static inline csm_short_part csm_short_part_of(csm_vacc a) { return a.a + a.b; }
#else
typedef csm_vacc csm_short_part;
static inline csm_short_part csm_short_part_of(csm_vacc a) { return a; }
#endif

static inline csm_dd csm_short_dd(const csm_short_sums *s, int r) { return csm_dd_make(s->hi[r], s->lo[r]); }

/* csm_dd_add_d (csm_dd.h) lane-wise: hi + lo + b as a pair; where the sum is not finite,
   that sum and 0 */
static inline void csm_short_vdd_add_d(csm_vd *hi, csm_vd *lo, csm_vd b)
{
    const csm_vd a = *hi, s = a + b, bb = s - a, e = (a - (s - bb)) + (b - bb);
    const csm_vi64 fin = s - s == (csm_vd){0};
    const csm_vd l = e + *lo, h = s + l, t = l - (h - s);
    *hi = (csm_vd)(((csm_vi64)h & fin) | ((csm_vi64)s & ~fin));
    *lo = (csm_vd)((csm_vi64)t & fin);
}

/* csm_dd_inv_1p lane-wise: 1 / (1 + hi + lo) */
static inline csm_vd csm_short_vdd_inv_1p(csm_vd hi, csm_vd lo)
{
    csm_short_vdd_add_d(&hi, &lo, (csm_vd){0} + 1.0);
    const csm_vd q = 1.0 / hi;
    return q - q * (lo * q); /* first-order correction for the low part */
}

/* lane j of the reduction that VTRED leaves in v[0] is row bitrev(j)'s: the rows go in
   in that order (W a power of two) */
static inline int csm_bitrev(int j, int w)
{
    int r = 0;
    for (int b = 1; b < w; b <<= 1, j >>= 1) r = (r << 1) | (j & 1);
    return r;
}

/* out[r] = OP over the lanes of v[r], for the group's rows (VT vectors of W lanes, ET
   elements) */
#define CSM_SHORT_DEFRED(NAME, VT, ET, W, TRED, OP)                                                                    \
    static inline void NAME(const VT *v, ET *out)                                                                    \
    {                                                                                                                  \
        for (int c = 0; c < CSM_SHORT_ROWS; c += (W)) {                                                                \
            VT t[W];                                                                                                   \
            for (int j = 0; j < (W); j++) t[j] = v[c + csm_bitrev(j, W)];                                              \
            TRED(t, OP);                                                                                               \
            memcpy(out + c, &t[0], sizeof t[0]);                                                                       \
        }                                                                                                              \
    }
CSM_SHORT_DEFRED(csm_short_rmax, VR, REAL, VL, VTRED, VMAX)
CSM_SHORT_DEFRED(csm_short_rmin, VR, REAL, VL, VTRED, VMIN)
CSM_SHORT_DEFRED(csm_short_rsum_i, VI, VIS, VL, VTRED, CSM_OP_ADD)
#if REAL_IS_F32
CSM_SHORT_DEFRED(csm_short_rsum_d, csm_vd, double, CSM_VLD, CSM_TRED_D, CSM_OP_ADD)
#endif
#undef CSM_SHORT_DEFRED

/* a group's lane-wise sums (csm_short_part each) as the double-doubles csm_acc_total2
   gives */
static void csm_short_totals(const csm_short_part *acc, csm_short_sums *s)
{
#if REAL_IS_F32
    /* float rows: the two halves' sums (added lane-wise already), across lanes */
    csm_short_rsum_d(acc, s->hi);
    memset(s->lo, 0, sizeof s->lo);
#else
    /* double rows: csm_acc_total2's steps (with a zero second accumulator) a vector of rows
       at a time -- the lanes transposed, lane l of CSM_VLD rows in one vector, then added
       in its scalar loop's order, so that each row's total is bit for bit the one it
       gives, without its chain of dependent scalar two-sums per row (softmax float64 rows
       of 8 on a Zen 4: 233 cycles a row with it, 112 without; benchmarks/RESULTS.md,
       "Targets of the short-rows issue") */
    for (int c = 0; c < CSM_SHORT_ROWS; c += CSM_VLD) {
        csm_vd a[CSM_VLD], b[CSM_VLD];
        for (int l = 0; l < CSM_VLD; l++)
            for (int r = 0; r < CSM_VLD; r++) {
                a[l][r] = acc[c + r].a[l] + 0.0; /* (+ 0: as a0 + a1 and b0 + b1 there, -0 to +0) */
                b[l][r] = acc[c + r].b[l] + 0.0;
            }
        csm_vd plain = a[0], hi = a[0], lo = {0}, comp = b[0];
        for (int l = 1; l < CSM_VLD; l++) {
            plain += a[l];
            csm_short_vdd_add_d(&hi, &lo, a[l]);
            comp += b[l];
        }
        csm_short_vdd_add_d(&hi, &lo, -comp);
        const csm_vi64 fin = plain - plain == (csm_vd){0}; /* else: the plain sum, and 0 */
        hi = (csm_vd)(((csm_vi64)hi & fin) | ((csm_vi64)plain & ~fin));
        lo = (csm_vd)((csm_vi64)lo & fin);
        memcpy(s->hi + c, &hi, sizeof hi);
        memcpy(s->lo + c, &lo, sizeof lo);
    }
#endif
}

/* max and min of each row (NaN left out by the comparisons) */
CSM_INLINE void csm_short_scan_t(const csm_short_grp *g, csm_intp n, REAL *m, REAL *mn, const int pf)
{
    VR hi[CSM_SHORT_ROWS], lo[CSM_SHORT_ROWS];
    for (int r0 = 0; r0 < CSM_SHORT_ROWS; r0 += CSM_SHORT_SUB) {
        const REAL *const *x = g->x + r0;
        VR h[CSM_SHORT_SUB], l[CSM_SHORT_SUB];
        for (int r = 0; r < CSM_SHORT_SUB; r++) {
            h[r] = VSPLAT(-R_INF);
            l[r] = VSPLAT(R_INF);
        }
        csm_intp i = 0;
        for (; i + VL <= n; i += VL)
            for (int r = 0; r < CSM_SHORT_SUB; r++) {
                csm_short_prefetch(x[r] + i, g->ahead_x, pf);
                const VR v = csm_load(x[r] + i, VL, 0);
                h[r] = VMAX(v, h[r]);
                l[r] = VMIN(v, l[r]);
            }
        if (i < n)
            for (int r = 0; r < CSM_SHORT_SUB; r++) {
                csm_short_prefetch(x[r] + i, g->ahead_x, pf);
                h[r] = VMAX(csm_load(x[r] + i, n - i, -R_INF), h[r]);
                l[r] = VMIN(csm_load(x[r] + i, n - i, R_INF), l[r]);
            }
        for (int r = 0; r < CSM_SHORT_SUB; r++) {
            hi[r0 + r] = h[r];
            lo[r0 + r] = l[r];
        }
    }
    csm_short_rmax(hi, m);
    csm_short_rmin(lo, mn);
}

/* the exps of one vector of one row: stored to e (store; ecnt lanes of them), the max's ties
   counted and left out (ties); returns the terms of the sum */
CSM_INLINE VR csm_short_term(const REAL *x, REAL *e, csm_intp cnt, const int full, csm_intp ecnt, VR ref, VR kc,
                             double tau, double inv_tau, const int store, const int ties, const int scaled,
                             const int range, VI *tie)
{
    /* a partial vector's padding is the max (exp 1, taken out below) rather than -inf, whose
       exp would go through the subnormal range, which costs a microcode assist per vector */
    const VR v = csm_load(x, full ? VL : cnt, ref[0]);
    VR t;
    if (range == CSM_EXP_ANCHORED) {
        t = csm_vexp_anchored(v, kc); /* exp(x) 2^kc (csm_exp.h) */
    } else {
        VR dh, dl;
        csm_vdiff(v, ref, tau, inv_tau, scaled, &dh, &dl);
        t = csm_vexp_sc(dh, dl, range, CSM_ESCALE); /* scaled (csm_exp.h); the max's term is 2^CSM_ESCALE */
    }
    if (store) csm_store(e, t, ecnt);
    const VI live = full ? ~(VI){0} : csm_iota() < (VIS)cnt;
    if (ties) {
        const VI eq = (v == ref) & live;
        *tie -= eq; /* a comparison's true lanes are -1 */
        t = VSEL(eq, VSPLAT(0), t);
    }
    if (!full) t = VSEL(live, t, VSPLAT(0));
    return t;
}

/* S' of every row of the group (m finite); when storing, row r's exps go to g->out[r],
   times 1 / us[r] -- but the partial vector at a row's end to tails[r] (whole, unmasked)
   where tails is given (softmax). Two vectors of a row at a time, their terms summed by
   csm_acc_add2. kc: the rows' anchors (CSM_EXP_ANCHORED). */
CSM_INLINE void csm_short_expsum_t(const csm_short_grp *g, csm_intp n, const REAL *m, const REAL *kcs,
                                   const double *us, double tau, double inv_tau, csm_short_sums *s, const int store,
                                   const int ties, const int scaled, const int range, csm_short_tails *tails)
{
    csm_short_part sums[CSM_SHORT_ROWS];
    VI tied[CSM_SHORT_ROWS];
    /* rows of one vector: a row's terms are its sum's one step, so nothing of a row lives
       past it, and the exp's constants stay in registers for all the group's rows (the
       loop below, two rows at a time with their accumulators live across the row, loads
       the constants again for every pair and spills: AVX2 has 16 registers) */
    const int one = n <= VL;
#define CSM_SHORT_ONE(r, cnt, full, e, ecnt)                                                                           \
    csm_short_term(g->x[r], e, cnt, full, ecnt, VSPLAT(m[r]), VSPLAT(kcs[r]), tau, inv_tau, store, ties, scaled, range, \
                   &tie)
    for (int r = 0; one && r < CSM_SHORT_ROWS; r++) {
        VI tie = (VI){0};
        csm_vacc acc = csm_short_zero;
        if (n == VL)
            csm_acc_add(&acc, CSM_SHORT_ONE(r, VL, 1, store ? g->out[r] : NULL, VL));
        else if (!ties && tails) /* (softmax's only, as below) */
            csm_acc_add(&acc, CSM_SHORT_ONE(r, n, 0, (REAL *)&tails->e[r], VL));
        else
            csm_acc_add(&acc, CSM_SHORT_ONE(r, n, 0, store ? g->out[r] : NULL, n));
        sums[r] = csm_short_part_of(acc);
        tied[r] = tie;
    }
#undef CSM_SHORT_ONE
    for (int r0 = 0; !one && r0 < CSM_SHORT_ROWS; r0 += CSM_SHORT_SUBE) {
        /* the rows' pointers as locals: the build does not assume strict aliasing, so read
           through g and e they would be loaded again after every store */
        const REAL *x[CSM_SHORT_SUBE];
        REAL *ex[CSM_SHORT_SUBE];
        csm_vacc acc[CSM_SHORT_SUBE];
        VI tie[CSM_SHORT_SUBE];
        VR ref[CSM_SHORT_SUBE], kc[CSM_SHORT_SUBE];
        for (int r = 0; r < CSM_SHORT_SUBE; r++) {
            kc[r] = VSPLAT(kcs[r0 + r]);
            x[r] = g->x[r0 + r];
            ex[r] = store ? g->out[r0 + r] : NULL;
            acc[r] = csm_short_zero;
            tie[r] = (VI){0};
            ref[r] = VSPLAT(m[r0 + r]);
        }
#define CSM_SHORT_TERM(r, i, cnt, full, e, ecnt)                                                                       \
    csm_short_term(x[r] + (i), e, cnt, full, ecnt, ref[r], kc[r], tau, inv_tau, store, ties, scaled, range, &tie[r])
        csm_intp i = 0;
        for (; i + 2 * VL <= n; i += 2 * VL)
            for (int r = 0; r < CSM_SHORT_SUBE; r++)
                csm_acc_add2(&acc[r], CSM_SHORT_TERM(r, i, VL, 1, store ? ex[r] + i : NULL, VL),
                             CSM_SHORT_TERM(r, i + VL, VL, 1, store ? ex[r] + i + VL : NULL, VL));
        if (i + VL <= n) {
            for (int r = 0; r < CSM_SHORT_SUBE; r++)
                csm_acc_add(&acc[r], CSM_SHORT_TERM(r, i, VL, 1, store ? ex[r] + i : NULL, VL));
            i += VL;
        }
        if (i < n)
            for (int r = 0; r < CSM_SHORT_SUBE; r++)
                csm_acc_add(&acc[r], !ties && tails /* (softmax's only: no test in the others) */
                                         ? CSM_SHORT_TERM(r, i, n - i, 0, (REAL *)&tails->e[r0 + r], VL)
                                         : CSM_SHORT_TERM(r, i, n - i, 0, store ? ex[r] + i : NULL, n - i));
#undef CSM_SHORT_TERM
        for (int r = 0; r < CSM_SHORT_SUBE; r++) {
            sums[r0 + r] = csm_short_part_of(acc[r]);
            tied[r0 + r] = tie[r];
        }
    }
    csm_short_sums sum;
    VIS cnt[CSM_SHORT_ROWS] = {0};
    csm_short_totals(sums, &sum);
    if (ties) csm_short_rsum_i(tied, cnt);
    /* unscaled; softmax: the max's term (and its ties') are in the sum; else they are
       counted. A vector of rows at a time. */
    for (int c = 0; c < CSM_SHORT_ROWS; c += CSM_VLD) {
        csm_vd hi, lo, u, b;
        for (int l = 0; l < CSM_VLD; l++) b[l] = ties ? (double)cnt[c + l] - 1.0 : -1.0;
        memcpy(&hi, sum.hi + c, sizeof hi);
        memcpy(&lo, sum.lo + c, sizeof lo);
        memcpy(&u, us + c, sizeof u);
        hi *= u;
        lo *= u;
        csm_short_vdd_add_d(&hi, &lo, b);
        memcpy(s->hi + c, &hi, sizeof hi);
        memcpy(s->lo + c, &lo, sizeof lo);
    }
}

/* the group's anchors (csm_exp.h): kc and u of each row, a vector of double lanes at a time */
static void csm_short_anchors(const REAL *m, REAL *kc, double *u)
{
    for (int c = 0; c < CSM_SHORT_ROWS; c += CSM_VLD) {
        csm_vd mv, km;
        for (int l = 0; l < CSM_VLD; l++) mv[l] = (double)m[c + l];
        const csm_vd uv = csm_vanchor_d(mv, &km);
        for (int l = 0; l < CSM_VLD; l++) {
            u[c + l] = uv[l];
            kc[c + l] = (REAL)(CSM_ESCALE - km[l]);
        }
    }
}

/* S' of the group's rows by the exp variant `range`; the exps stored (store) are exp(x_j -
   m) / us[r] */
static void csm_short_expsum(const csm_short_grp *g, csm_intp n, const REAL *m, const csm_temp *tp,
                             int store, int ties, int range, csm_short_sums *s, double *us, csm_short_tails *tails)
{
    const double tau = tp->tau, inv = tp->inv_tau;
    REAL kc[CSM_SHORT_ROWS] = {0};
    if (range == CSM_EXP_ANCHORED)
        csm_short_anchors(m, kc, us);
    else
        for (int r = 0; r < CSM_SHORT_ROWS; r++) us[r] = CSM_EUNSCALE;
#define CSM_SHORT_EXPSUM(T, S, RANGE)                                                                                  \
    csm_short_expsum_t(g, n, m, kc, us, tau, inv, s, !(T) || store, T, S, RANGE, tails)
#define CSM_SHORT_BOUNDED(T, S) CSM_SHORT_EXPSUM(T, S, CSM_EXP_BOUNDED)
#define CSM_SHORT_NONPOS(T, S) CSM_SHORT_EXPSUM(T, S, CSM_EXP_NONPOS)
#define CSM_SHORT_ANCHORED(T) CSM_SHORT_EXPSUM(T, 0, CSM_EXP_ANCHORED)
    if (range == CSM_EXP_ANCHORED)
        CSM_FLAGS1(ties, CSM_SHORT_ANCHORED);
    else if (range == CSM_EXP_BOUNDED)
        CSM_FLAGS2(ties, tp->scaled, CSM_SHORT_BOUNDED);
    else
        CSM_FLAGS2(ties, tp->scaled, CSM_SHORT_NONPOS);
#undef CSM_SHORT_EXPSUM
#undef CSM_SHORT_BOUNDED
#undef CSM_SHORT_NONPOS
#undef CSM_SHORT_ANCHORED
}

/* log1p(S') of every row of the group, as csm_dd_log1p takes it: float rows all at once
   in double lanes (csm_vlog1p_d), double rows through libm's */
static void csm_short_log1p(const csm_short_sums *s, double *L)
{
#if REAL_IS_F32
    for (int c = 0; c < CSM_SHORT_ROWS; c += CSM_VLD) {
        csm_vd hi, lo;
        memcpy(&hi, s->hi + c, sizeof hi);
        memcpy(&lo, s->lo + c, sizeof lo);
        const csm_vd v = csm_vlog1p_d(hi) + lo / (1.0 + hi);
        memcpy(L + c, &v, sizeof v);
    }
#else
    for (int r = 0; r < CSM_SHORT_ROWS; r++) L[r] = csm_dd_log1p(csm_short_dd(s, r));
#endif
}

/* rows up to this many entries are finished in the group's own loop below rather than by
   a call per row (csm_row_scale, csm_row_logsub), whose setup costs more than such a row */
#define CSM_SHORT_INLINE_MAX ((csm_intp)(2 * VL))

/* the finishing pass of a group's short rows: softmax out = e c[r] from the exps stored in
   out and tails (c[r] as the pair chi[r] + clos[r], csm_scale_pair), log_softmax out =
   (x - m[r]) / tau - L[r] with L[r] = chi[r] (csm_logp); whole vectors at aligned
   addresses streamed where `stream` (the caller fences) */
CSM_INLINE void csm_short_finish_t(const csm_short_grp *g, csm_intp n, const REAL *m, const double *c,
                                   const REAL *chi, const REAL *clos, REAL inv_tau, int stream, const int logsm,
                                   const int scaled, const csm_short_tails *tails)
{
    for (int r = 0; r < CSM_SHORT_ROWS; r++) {
        const REAL *src = logsm ? g->x[r] : g->out[r];
        REAL *out = g->out[r];
        const VR ref = VSPLAT(m[r]), cv = VSPLAT(chi[r]), clo = VSPLAT(clos[r]);
        const int nt = stream && csm_align_head(out) == 0;
        csm_intp i = 0;
        for (; i + VL <= n; i += VL) {
            const VR v = csm_load(src + i, VL, 0);
            csm_put(out + i, logsm ? csm_logp(v, ref, cv, inv_tau, scaled) : csm_scale_pair(v, cv, clo, c[r]), VL, 1, nt);
        }
        if (i < n) {
            /* softmax: tails is given wherever a row has a partial vector (lanes past n - i unused) */
            const VR v = logsm ? csm_load(src + i, n - i, 0) : tails->e[r];
            csm_store(out + i, logsm ? csm_logp(v, ref, cv, inv_tau, scaled) : csm_scale_pair(v, cv, clo, c[r]), n - i);
        }
    }
}

/*
 * One group of a forward kind or plain cross-entropy; returns 0 (nothing written but
 * where csm_row_forward would have written too) if the group must go row by row.
 * softmax's exps are stored to its output and scaled there.
 */
static int csm_short_forward(int kind, csm_short_grp *g, csm_intp n, const csm_temp *tp, int stream,
                             double grad_scale, int64_t ignore_index)
{
    REAL m[CSM_SHORT_ROWS], mn[CSM_SHORT_ROWS];
    csm_short_sums s;
    const int xent = kind == CSM_XENT;
    for (int r = 0; r < CSM_SHORT_ROWS; r++)
        if (xent && g->label[r] == ignore_index) return 0;
#define CSM_SHORT_SCAN(PF) csm_short_scan_t(g, n, m, mn, PF)
    CSM_FLAGS1(g->ahead_x != 0, CSM_SHORT_SCAN);
#undef CSM_SHORT_SCAN
    /* the rows' checks, a vector of rows at a time and without branches (a scalar loop's
       compares mispredict): every max finite; every row within the exp's normal range
       (min - max rounds by at most half an ulp of the bound, inside its slack); every
       entry within CSM_ANCHOR_MAX of 0 */
    int finite = 1, bounded = 1, tame = 1;
    const VI absbits = (VI){0} + (VIS)(((uint64_t)1 << (8 * sizeof(REAL) - 1)) - 1); /* all bits but the sign */
    for (int c = 0; c < CSM_SHORT_ROWS; c += VL) {
        VR mv, nv;
        memcpy(&mv, m + c, sizeof mv);
        memcpy(&nv, mn + c, sizeof nv);
        finite &= !VANY(~(mv - mv == VSPLAT(0)));
        bounded &= !VANY(~((nv - mv) * (REAL)tp->inv_tau >= VSPLAT(-csm_exp_bound)));
        const VR a = VMAX((VR)((VI)mv & absbits), (VR)((VI)nv & absbits));
        tame &= !VANY(~(a <= VSPLAT(CSM_ANCHOR_MAX)));
    }
    if (!finite) return 0;
    const int store = kind == CSM_SOFTMAX || (xent && g->out[0]);
    /* the anchored exp where the rows allow it, but not under a gradient, whose finishers
       take the plain scale */
    int range = bounded ? CSM_EXP_BOUNDED : CSM_EXP_NONPOS;
    if (CSM_ANCHOR && bounded && tame && !tp->scaled && !(xent && g->out[0]))
        range = CSM_EXP_ANCHORED;
    double us[CSM_SHORT_ROWS];
    /* softmax rows the group finishes itself keep their tails' exps apart (csm_short_tails) */
    const int own = n <= CSM_SHORT_INLINE_MAX && (kind == CSM_SOFTMAX || kind == CSM_LOG_SOFTMAX);
    csm_short_tails tails, *const tl = own && kind == CSM_SOFTMAX && n % VL ? &tails : NULL;
    csm_short_expsum(g, n, m, tp, store, kind != CSM_SOFTMAX, range, &s, us, tl);
    int nan = 0;
    for (int r = 0; r < CSM_SHORT_ROWS; r++) nan |= s.hi[r] != s.hi[r];
    if (nan && kind != CSM_SOFTMAX) return 0; /* nothing written over x: row by row */
    if (xent && g->out[0])
        for (int r = 0; r < CSM_SHORT_ROWS; r++)
            if (csm_xent_grad_plain_ok(csm_short_dd(&s, r), grad_scale * tp->inv_tau) == 0.0) return 0;
    double L[CSM_SHORT_ROWS];
    if (kind != CSM_SOFTMAX) csm_short_log1p(&s, L);
    if (own && !(kind == CSM_SOFTMAX && nan)) {
        /* the rows' factors, a vector of rows at a time: softmax's us / (1 + S') (the exps
           are scaled; csm_dd_inv_1p lane-wise) as the REAL pair chi + clo, log_softmax's L
           rounded to REAL */
        double c[CSM_SHORT_ROWS];
        REAL chi[CSM_SHORT_ROWS], clo[CSM_SHORT_ROWS];
        for (int k = 0; k < CSM_SHORT_ROWS; k += CSM_VLD) {
            csm_vd cv;
            if (kind == CSM_SOFTMAX) {
                csm_vd hi, lo, u;
                memcpy(&hi, s.hi + k, sizeof hi);
                memcpy(&lo, s.lo + k, sizeof lo);
                memcpy(&u, us + k, sizeof u);
                cv = csm_short_vdd_inv_1p(hi, lo) * u;
            } else {
                memcpy(&cv, L + k, sizeof cv);
            }
            memcpy(c + k, &cv, sizeof cv);
        }
        for (int r = 0; r < CSM_SHORT_ROWS; r++) {
            chi[r] = (REAL)c[r];
            clo[r] = (REAL)(c[r] - (double)chi[r]);
        }
        const REAL inv = (REAL)tp->inv_tau;
#define CSM_SHORT_FINISH(LOGSM, S) csm_short_finish_t(g, n, m, c, chi, clo, inv, stream, LOGSM, S, tl)
        CSM_FLAGS2(kind == CSM_LOG_SOFTMAX, tp->scaled, CSM_SHORT_FINISH);
#undef CSM_SHORT_FINISH
        return 1;
    }
    if (tl) /* a NaN row among them: the tails to out after all */
        for (int r = 0; r < CSM_SHORT_ROWS; r++) csm_store(g->out[r] + n - n % VL, tl->e[r], n % VL);
    for (int r = 0; r < CSM_SHORT_ROWS; r++) {
        if (kind == CSM_SOFTMAX && s.hi[r] != s.hi[r]) {
            /* a NaN: the semantics table, from the exps in place if out is x (NaN stays NaN) */
            csm_stats st = {0};
            st.m = m[r];
            st.any = 1;
            csm_special_row(kind, g->x[r], 1, NULL, 1, g->out[r], 1, n, &st, 0);
        } else if (kind == CSM_SOFTMAX) {
            csm_row_scale(g->out[r], g->out[r], n, csm_dd_inv_1p(csm_short_dd(&s, r)) * us[r], stream); /* the exps are scaled */
        } else if (kind == CSM_LOG_SOFTMAX) {
            csm_row_logsub(g->x[r], NULL, g->out[r], n, m[r], (REAL)L[r], tp, stream);
        } else if (kind == CSM_LOGSUMEXP) {
            g->val[r] = (double)m[r] + L[r];
        } else {
            csm_xent_src src = {0};
            src.from = CSM_XENT_ORDINARY;
            src.x = g->x[r];
            src.m = (double)m[r];
            src.inv_tau = tp->inv_tau;
            src.L = L[r];
            g->val[r] = csm_xent_neglogp(&src, g->label[r]);
            if (g->out[r]) csm_xent_grad_plain(g->out[r], n, g->label[r], csm_short_dd(&s, r), grad_scale * tp->inv_tau);
        }
    }
    return 1;
}

/* the backward sums of a group's rows, lane-wise (csm_short_part each) */
CSM_INLINE void csm_short_bwd_sums_t(int kind, const csm_short_grp *g, csm_intp n, csm_short_part *sums,
                                     const int pf)
{
    for (int r0 = 0; r0 < CSM_SHORT_ROWS; r0 += CSM_SHORT_SUB) {
        const REAL *const *x = g->x + r0, *const *y = g->y + r0;
        csm_vacc acc[CSM_SHORT_SUB];
        for (int r = 0; r < CSM_SHORT_SUB; r++) acc[r] = csm_short_zero;
        csm_intp i = 0;
#define CSM_SHORT_PF(r, i)                                                                                             \
    do {                                                                                                               \
        csm_short_prefetch(x[r] + (i), g->ahead_x, pf);                                                                \
        csm_short_prefetch(y[r] + (i), g->ahead_y, pf); /* log_softmax (in place): for pass 2 */                      \
    } while (0)
        for (; i + 2 * VL <= n; i += 2 * VL)
            for (int r = 0; r < CSM_SHORT_SUB; r++) {
                CSM_SHORT_PF(r, i);
                CSM_SHORT_PF(r, i + VL);
                csm_bwd_sum_vec2(kind, x[r] + i, y[r] + i, NULL, 0, &acc[r]);
            }
        for (; i + VL <= n; i += VL)
            for (int r = 0; r < CSM_SHORT_SUB; r++) {
                CSM_SHORT_PF(r, i);
                csm_bwd_sum_vec(kind, x[r] + i, y[r] + i, NULL, VL, 1, 0, &acc[r]);
            }
        if (i < n)
            for (int r = 0; r < CSM_SHORT_SUB; r++) {
                CSM_SHORT_PF(r, i);
                csm_bwd_sum_vec(kind, x[r] + i, y[r] + i, NULL, n - i, 0, 0, &acc[r]);
            }
#undef CSM_SHORT_PF
        for (int r = 0; r < CSM_SHORT_SUB; r++) sums[r0 + r] = csm_short_part_of(acc[r]);
    }
}

/*
 * The group's sums as the REAL pairs hi + lo of csm_bwd_split, a vector of rows at a time
 * and without branches (a row's scalar split, with its tests, cost more than a row of 8);
 * returns 0 if a pair cannot carry its row's sum (not finite, or beyond float's range).
 * (d - d: +0, no bits set, where d is finite; NaN where not.)
 */
static inline int csm_short_bwd_pairs(const csm_short_part *acc, REAL *hi, REAL *lo)
{
    csm_short_sums s;
    csm_short_totals(acc, &s);
    VI bad = {0};
#if REAL_IS_F32
    /* float rows (whose totals have no low part): hi = (float)t and lo = (float)(t - hi),
       two vectors of double lanes to one of float */
    for (int c = 0; c < CSM_SHORT_ROWS; c += VL) {
        csm_vd a, b;
        memcpy(&a, s.hi + c, sizeof a);
        memcpy(&b, s.hi + c + CSM_VLD, sizeof b);
        const VR h = csm_d2f(a, b), l = csm_d2f(a - csm_f2d_lo(h), b - csm_f2d_hi(h));
        bad |= (VI)(h - h) | (VI)csm_d2f(a - a, b - b);
        memcpy(hi + c, &h, sizeof h);
        memcpy(lo + c, &l, sizeof l);
    }
#else
    for (int c = 0; c < CSM_SHORT_ROWS; c += VL) {
        VR sh, sl;
        memcpy(&sh, s.hi + c, sizeof sh);
        memcpy(&sl, s.lo + c, sizeof sl);
        const VR d = sh + sl, l = (sh - d) + sl;
        bad |= (VI)(d - d);
        memcpy(hi + c, &d, sizeof d);
        memcpy(lo + c, &l, sizeof l);
    }
#endif
    return !VANY(bad);
}

/* dx of the group's rows, each row's sum as the pair hi + lo: csm_grad.h's vector loop
   (csm_bwd_vectors) over each row with none of a single row's setup -- the group has made
   the checks and takes one instantiation for all its rows (nt: every row's output
   aligned for streamed stores) */
CSM_INLINE void csm_short_bwd_out_t(const int kind, const csm_short_grp *g, csm_intp n, const REAL *hi,
                                    const REAL *lo, const csm_temp *tp, const int nt, const int scaled)
{
    const VR inv = VSPLAT((REAL)tp->inv_tau);
    for (int r = 0; r < CSM_SHORT_ROWS; r++) {
        const REAL *x = g->x[r], *y = g->y[r];
        REAL *out = g->out[r];
        const VR s_hi = VSPLAT(hi[r]), s_lo = VSPLAT(lo[r]);
        csm_bwd_vectors(kind, x, y, NULL, out, 0, n, nt, 0, scaled, s_hi, s_lo, inv, tp);
    }
}

/* dx of a group whose outputs are not its inputs, without a test per vector: every row
   written by csm_bwd_fast, the lanes that leave its path gathered for the group; returns
   0 if there was any (the group is then written again by csm_short_bwd_out_t, from the
   inputs, which these stores left intact). A partial vector's padding is 0, on the path.
   log_softmax_backward asks here for the next group's lines (csm_short_backward), so that
   its sums pass, which reads g alone, has the memory to itself: 0.56-0.94 of the time of
   prefetching in the sums pass (benchmarks/RESULTS.md, "Backward rows from memory"). */
CSM_INLINE int csm_short_bwd_fast_t(const int kind, const csm_short_grp *g, csm_intp n, const REAL *hi,
                                    const REAL *lo, const csm_temp *tp, const int nt, const int scaled)
{
    const VR inv = VSPLAT((REAL)tp->inv_tau);
    const int pf = kind == CSM_LOG_SOFTMAX_BWD && g->ahead_x != 0;
    VI bad = {0}, b;
    for (int r = 0; r < CSM_SHORT_ROWS; r++) {
        const REAL *x = g->x[r], *y = g->y[r];
        REAL *out = g->out[r];
        const VR s_hi = VSPLAT(hi[r]), s_lo = VSPLAT(lo[r]);
        csm_intp i = 0;
        for (; i + VL <= n; i += VL) {
            csm_short_prefetch(x + i, g->ahead_x, pf);
            csm_short_prefetch(y + i, g->ahead_y, pf);
            const VR o = csm_bwd_fast(kind, csm_load(x + i, VL, 0), csm_load(y + i, VL, 0), s_hi, s_lo, inv, scaled, &b);
            csm_put(out + i, o, VL, 1, nt);
            bad |= b;
        }
        if (i < n) {
            const VR o =
                csm_bwd_fast(kind, csm_load(x + i, n - i, 0), csm_load(y + i, n - i, 0), s_hi, s_lo, inv, scaled, &b);
            csm_store(out + i, o, n - i);
            bad |= b;
        }
    }
    return !VANY(bad);
}

/* one group of a backward kind; returns 0 (nothing written) if the group must go row by
   row: a sum that is not finite, or that the REAL pair cannot carry */
static int csm_short_backward(int kind, csm_short_grp *g, csm_intp n, const csm_temp *tp, int stream)
{
    csm_short_part sums[CSM_SHORT_ROWS];
    REAL hi[CSM_SHORT_ROWS], lo[CSM_SHORT_ROWS];
    const int sm = kind == CSM_SOFTMAX_BWD;
    /* an output is one of the inputs (the same layout) or lies apart from both, as a whole
       array (_ckernels.pyx, _fast_out; the API's checks): its first row tells which */
    const int apart = g->out[0] != g->x[0] && g->out[0] != g->y[0];
    int nt = stream;
    if (stream)
        for (int r = 0; r < CSM_SHORT_ROWS; r++) nt &= csm_align_head(g->out[r]) == 0;
    /* the next group's prefetches (CSM_SHORT_PF_BYTES): softmax_backward's in the sums
       pass, which reads both operands; log_softmax_backward's, whose sums pass reads g
       alone, in the output pass where csm_short_bwd_fast_t writes it (apart), else in the
       sums pass */
#define CSM_SHORT_BWD(SM, PF) csm_short_bwd_sums_t((SM) ? CSM_SOFTMAX_BWD : CSM_LOG_SOFTMAX_BWD, g, n, sums, PF)
    CSM_FLAGS2(sm, g->ahead_x != 0 && (sm || !apart), CSM_SHORT_BWD);
#undef CSM_SHORT_BWD
    if (!csm_short_bwd_pairs(sums, hi, lo)) return 0;
    int done = 0;
#define CSM_SHORT_BWD_FAST(SM, NT, S)                                                                                  \
    (done = csm_short_bwd_fast_t((SM) ? CSM_SOFTMAX_BWD : CSM_LOG_SOFTMAX_BWD, g, n, hi, lo, tp, NT, S))
    if (apart) CSM_FLAGS3(sm, nt, tp->scaled, CSM_SHORT_BWD_FAST);
#undef CSM_SHORT_BWD_FAST
    if (done) return 1;
#define CSM_SHORT_BWD_OUT(SM, NT, S)                                                                                   \
    csm_short_bwd_out_t((SM) ? CSM_SOFTMAX_BWD : CSM_LOG_SOFTMAX_BWD, g, n, hi, lo, tp, NT, S)
    CSM_FLAGS3(sm, nt, tp->scaled, CSM_SHORT_BWD_OUT);
#undef CSM_SHORT_BWD_OUT
    return 1;
}

/* the backward passes' rows take the group kernels up to this length (measured on a Xeon,
   AVX-512, one thread, 2^16 elements: groups 1.1-1.5x faster than one row at a time for
   n = 64-256, even at 512, slower at 1024, where each row is read while the previous
   one's output is written) */
#define CSM_SHORT_BWD_MAX ((csm_intp)256)

/* whether a task's rows (contiguous, direct) take the group kernels */
static int csm_short_takes(const csm_task *t, const csm_layout *L, const csm_temp *tp)
{
    if (L->n < 1 || L->n > CSM_SHORT_MAX || L->base[CSM_MASK] || CSM_TAU_RIM(tp) || tp->tau_inf ||
        L->nrows < CSM_SHORT_ROWS)
        return 0;
    if (CSM_KIND_IS_FORWARD(t->kind)) return L->base[CSM_ROW] == NULL || t->kind == CSM_LOGSUMEXP;
    if (CSM_KIND_IS_BACKWARD(t->kind)) return L->n <= CSM_SHORT_BWD_MAX;
    return t->kind == CSM_XENT && !L->base[CSM_Y] && !t->class_weight && t->smoothing == 0.0;
}
