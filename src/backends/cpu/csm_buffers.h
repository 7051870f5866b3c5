/*
 * csm_buffers.h - storage dtypes and one-row buffers, generic over REAL: loading and
 * storing an element in its storage dtype (float16 converts here), copying a row of an
 * operand that is strided or spans several axes into a contiguous buffer and back, and
 * the per-thread buffers themselves.
 */

CSM_INLINE REAL csm_ld(const char *p, int dtype)
{
#if REAL_IS_F32
    if (dtype == CSM_F16) {
        uint16_t h;
        memcpy(&h, p, sizeof h);
        return csm_half_to_float(h);
    }
#endif
    (void)dtype;
    REAL v;
    memcpy(&v, p, sizeof v);
    return v;
}

CSM_INLINE void csm_st(char *p, int dtype, REAL v)
{
#if REAL_IS_F32
    if (dtype == CSM_F16) {
        uint16_t h = csm_float_to_half(v);
        memcpy(p, &h, sizeof h);
        return;
    }
#endif
    (void)dtype;
    memcpy(p, &v, sizeof v);
}

static void csm_gather(REAL *dst, const char *src, const csm_layout *L, int op, int dtype)
{
    if (L->nred == 1) {
        csm_intp s = L->rstride[op][0];
        for (csm_intp j = 0; j < L->n; j++) dst[j] = csm_ld(src + j * s, dtype);
        return;
    }
    csm_rediter it;
    memset(&it, 0, sizeof it);
    for (csm_intp j = 0; j < L->n; j++, csm_rediter_next(&it, L, op)) dst[j] = csm_ld(src + it.off, dtype);
}

static void csm_scatter(char *dst, const REAL *src, const csm_layout *L, int op, int dtype)
{
    if (L->nred == 1) {
        csm_intp s = L->rstride[op][0];
        for (csm_intp j = 0; j < L->n; j++) csm_st(dst + j * s, dtype, src[j]);
        return;
    }
    csm_rediter it;
    memset(&it, 0, sizeof it);
    for (csm_intp j = 0; j < L->n; j++, csm_rediter_next(&it, L, op)) csm_st(dst + it.off, dtype, src[j]);
}

static void csm_gather_mask(uint8_t *dst, const char *src, const csm_layout *L)
{
    csm_rediter it;
    memset(&it, 0, sizeof it);
    for (csm_intp j = 0; j < L->n; j++, csm_rediter_next(&it, L, CSM_MASK)) dst[j] = src[it.off] != 0;
}

/* per-thread buffers of one row each */
typedef struct {
    REAL *x, *y, *out, *buf;
    uint8_t *mask;
} csm_scratch;

static int csm_scratch_alloc(csm_scratch *sc, const csm_task *t, csm_intp n)
{
    size_t cnt = (size_t)(n > 0 ? n : 1);
    const int xent = t->kind == CSM_XENT;
    memset(sc, 0, sizeof *sc);
    sc->x = (REAL *)malloc(cnt * sizeof(REAL));
    if (t->data[CSM_Y]) sc->y = (REAL *)malloc(cnt * sizeof(REAL));
    if (xent) sc->out = (REAL *)malloc(cnt * sizeof(REAL));
    if (xent) sc->buf = (REAL *)malloc(cnt * sizeof(REAL));
    if (t->data[CSM_MASK]) sc->mask = (uint8_t *)malloc(cnt);
    return sc->x && (sc->y || !t->data[CSM_Y]) && (sc->out || !xent) && (sc->buf || !xent) &&
           (sc->mask || !t->data[CSM_MASK]);
}

static void csm_scratch_free(csm_scratch *sc)
{
    free(sc->x);
    free(sc->y);
    free(sc->out);
    free(sc->buf);
    free(sc->mask);
}

