/*
 * csm_vec.h - the vector vocabulary every kernel header shares (generic over REAL; see
 * csm_real.h): whole and partial loads and stores, mask lanes, the error-free
 * transformations, (x - ref) / tau as a pair, the per-lane sums, and the shape of a
 * finishing pass with optional non-temporal stores.
 */

#if REAL_IS_F32
#define CSM_VELTKAMP 4097.0f /* 2^12 + 1: splits a float into two halves */
#else
#define CSM_VELTKAMP 134217729.0 /* 2^27 + 1 */
#endif

/* ---- loads and stores of whole or partial vectors ---- */
CSM_INLINE VR csm_load(const REAL *p, csm_intp cnt, REAL fill)
{
    if (cnt == VL) {
        VR v;
        memcpy(&v, p, sizeof v);
        return v;
    }
    return VLDPART(p, (int)cnt, VSPLAT(fill));
}

CSM_INLINE void csm_store(REAL *p, VR v, csm_intp cnt)
{
    if (cnt == VL)
        memcpy(p, &v, sizeof v);
    else
        VSTPART(p, v, (int)cnt);
}

/* lanes whose mask byte is nonzero; lanes past cnt are off */
CSM_INLINE VI csm_load_mask(const uint8_t *p, csm_intp cnt)
{
    if (cnt == VL) return VMASK(p);
    uint8_t b[VL] = {0};
    memcpy(b, p, (size_t)cnt);
    return VMASK(b);
}

/* x with the masked lanes (and the lanes past cnt) set to -inf */
CSM_INLINE VR csm_load_masked(const REAL *x, const uint8_t *mask, csm_intp cnt)
{
    VR v = csm_load(x, cnt, -R_INF);
    if (mask) v = VSEL(csm_load_mask(mask, cnt), v, VSPLAT(-R_INF));
    return v;
}

/* lanes 0, 1, 2, ... */
CSM_INLINE VI csm_iota(void)
{
    VI v;
    for (int l = 0; l < VL; l++) v[l] = l;
    return v;
}

/* ---- error-free transformations ---- */
/* p + e == a * b exactly, lane-wise (FMA where available, Veltkamp-Dekker otherwise) */
CSM_INLINE void csm_vtwo_prod(VR a, VR b, VR *p, VR *e)
{
    *p = a * b;
#if CSM_HAVE_FMA
    *e = VFMA(a, b, -*p);
#else
    VR ca = VSPLAT(CSM_VELTKAMP) * a, cb = VSPLAT(CSM_VELTKAMP) * b;
    VR ah = ca - (ca - a), bh = cb - (cb - b);
    VR al = a - ah, bl = b - bh;
    *e = ((ah * bh - *p) + ah * bl + al * bh) + al * bl;
#endif
}

/* s + e == a - b exactly, lane-wise (TwoSum; no magnitude precondition) */
CSM_INLINE void csm_vtwo_diff(VR a, VR b, VR *s, VR *e)
{
    *s = a - b;
    VR bb = *s - a;
    *e = (a - (*s - bb)) - (b + bb);
}

/*
 * (x - ref) / tau as an unevaluated pair dh + dl, accurate to about one unit in the
 * last place of REAL in absolute terms (what exp needs). `scaled` is a constant at every
 * call site, so the branch disappears. A correction that overflowed is dropped.
 */
CSM_INLINE void csm_vdiff(VR x, VR ref, double tau, double inv_tau, const int scaled, VR *dh, VR *dl)
{
    if (!scaled) {
        csm_vtwo_diff(x, ref, dh, dl);
        return;
    }
#if REAL_IS_F32
    /* in double the difference is exact and the product's error is far below float's */
    (void)tau;
    csm_vd inv = (csm_vd){0} + inv_tau;
    csm_vd lo = (csm_f2d_lo(x) - csm_f2d_lo(ref)) * inv;
    csm_vd hi = (csm_f2d_hi(x) - csm_f2d_hi(ref)) * inv;
    *dh = csm_d2f(lo, hi);
    *dl = csm_d2f(lo - csm_f2d_lo(*dh), hi - csm_f2d_hi(*dh));
#else
    VR sh, sl, p, pe;
    csm_vtwo_diff(x, ref, &sh, &sl);
    VR q = sh * inv_tau;
    csm_vtwo_prod(q, VSPLAT(tau), &p, &pe);
    VR rem = (sh - p) - pe; /* sh - q * tau, exactly */
    *dh = q;
    *dl = (rem + sl) * inv_tau;
#endif
    *dl = VSEL(*dl - *dl == 0, *dl, VSPLAT(0)); /* overflow near the range's end: drop it */
}

/* ---- the sums: double lanes for float rows, Kahan-compensated lanes for double rows ---- */
typedef struct {
    csm_vd a, b; /* float rows: the two halves' sums; double rows: sum and compensation */
} csm_vacc;

CSM_INLINE void csm_acc_add(csm_vacc *acc, VR e)
{
#if REAL_IS_F32
    acc->a += csm_f2d_lo(e);
    acc->b += csm_f2d_hi(e);
#else
    csm_vd y = e - acc->b;
    csm_vd t = acc->a + y;
    acc->b = (t - acc->a) - y;
    acc->a = t;
#endif
}

/* two vectors of exps into the sum: for float rows added in float first (one rounding,
   relative 2^-24 of the pair, against the <= 4 ulp of the contract; the CUDA kernels do
   the same), so that one widening serves both; double rows take each in turn */
CSM_INLINE void csm_acc_add2(csm_vacc *acc, VR e0, VR e1)
{
#if REAL_IS_F32
    csm_acc_add(acc, e0 + e1);
#else
    csm_acc_add(acc, e0);
    csm_acc_add(acc, e1);
#endif
}

/* the same for sums of user data, which may hold infinities: a compensation that went
   NaN (inf - inf) is dropped, so that the sum is what plain addition gives: +-inf, or NaN
   for +inf + -inf */
CSM_INLINE void csm_acc_add_any(csm_vacc *acc, VR e)
{
#if REAL_IS_F32
    csm_acc_add(acc, e);
#else
    csm_vd y = e - acc->b;
    csm_vd t = acc->a + y;
    acc->b = (csm_vd)((VI)((t - acc->a) - y) & (t - t == 0));
    acc->a = t;
#endif
}

/* ---- horizontal max, min and sums (every lane takes part) ---- */
#define CSM_OP_ADD(a, b) ((a) + (b))
CSM_INLINE REAL csm_hmax(VR v)
{
    VHRED(v, VMAX);
    return v[0];
}

CSM_INLINE REAL csm_hmin(VR v)
{
    VHRED(v, VMIN);
    return v[0];
}

CSM_INLINE VIS csm_hsum_i(VI v)
{
    VHRED(v, CSM_OP_ADD);
    return v[0];
}

/* the lanes of two accumulators summed into one double-double (once per row: vector
   adds first, then a short scalar tail) */
static inline csm_dd csm_acc_total2(const csm_vacc *a0, const csm_vacc *a1)
{
#if REAL_IS_F32
    /* float rows: double precision is already far beyond what they need */
    csm_vd v = (a0->a + a0->b) + (a1->a + a1->b);
    CSM_HRED_D(v, CSM_OP_ADD);
    return csm_dd_make(v[0], 0.0);
#else
    /* double rows: each lane holds a - b (Kahan); add the two accumulators with two_sum */
    csm_vd s = a0->a + a1->a;
    double plain = 0.0;
    for (int l = 0; l < CSM_VLD; l++) plain += s[l];
    if (!csm_finite(plain)) return csm_dd_make(plain, 0.0); /* an infinite (or NaN) sum */
    csm_vd bb = s - a0->a;
    csm_vd err = (a0->a - (s - bb)) + (a1->a - bb);
    csm_vd c = (a0->b + a1->b) - err;
    csm_dd tot = csm_dd_make(s[0], 0.0);
    double comp = c[0];
    for (int l = 1; l < CSM_VLD; l++) {
        tot = csm_dd_add_d(tot, s[l]);
        comp += c[l];
    }
    return csm_dd_add_d(tot, -comp);
#endif
}

/* REAL lanes times a double factor, rounded once (float rows: through double) */
CSM_INLINE VR csm_mul_wide(VR v, double c)
{
#if REAL_IS_F32
    const csm_vd cd = (csm_vd){0} + c;
    return csm_d2f(csm_f2d_lo(v) * cd, csm_f2d_hi(v) * cd);
#else
    return v * c;
#endif
}

/* ---- finishing passes ----
 * Each writes every element of out once. With `stream`, the whole vectors at aligned
 * addresses use non-temporal stores (large outputs: no read for ownership, no cache
 * pollution); the caller fences once when done. */

/* elements before out + i reaches a vector boundary, or -1 if it never does */
static inline csm_intp csm_align_head(const REAL *out)
{
    uintptr_t a = (uintptr_t)out;
    if (a % sizeof(REAL)) return -1;
    return (csm_intp)(((CSM_VB - a % CSM_VB) % CSM_VB) / sizeof(REAL));
}

/* the loop shape every finishing pass shares: head, streamed body, tail */
#define CSM_FINISH_LOOP(n, out, stream, BODY)                                                                          \
    do {                                                                                                               \
        csm_intp i_ = 0, head_ = (stream) ? csm_align_head(out) : -1;                                         \
        if (head_ >= 0) {                                                                                              \
            if (head_ > (n)) head_ = (n);                                                                              \
            if (head_ > 0) BODY(0, head_, 0, 1);                                                                       \
            for (i_ = head_; i_ + VL <= (n); i_ += VL) BODY(i_, VL, 1, 1);                                             \
        } else {                                                                                                       \
            for (; i_ + VL <= (n); i_ += VL) BODY(i_, VL, 1, 0);                                                       \
        }                                                                                                              \
        if (i_ < (n)) BODY(i_, (n) - i_, 0, head_ >= 0);                                                               \
    } while (0)

/*
 * One vector of a finishing pass into out. nt: the output comes from memory and is streamed
 * -- a whole vector (at an aligned p) with a non-temporal store, a partial one (the row's
 * head before the first aligned address, its tail) lane by lane: a masked store to a line
 * that is not in the cache held the streamed row up, float32 rows of 512 whose output lay
 * 16 bytes off a line took 1.4-1.6x the time of an aligned output; lane by lane, rows of
 * 512-1000 take 0.62-0.94 of the masked store's time (benchmarks/RESULTS.md, "Backward
 * rows from memory, and outputs off a line").
 */
CSM_INLINE void csm_put(REAL *p, VR v, csm_intp cnt, const int full, const int nt)
{
    if (nt && full) {
        VSTREAM(p, v);
    } else if (nt) {
        for (int l = 0; l < (int)cnt; l++) p[l] = v[l];
    } else {
        csm_store(p, v, full ? VL : cnt);
    }
}
