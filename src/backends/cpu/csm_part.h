/*
 * csm_part.h - the statistics of a part of a row, in double whatever the row's dtype:
 * its max m, and S' = the sum of exp((x - m) / tau) over its unmasked entries but one copy
 * of the max, kept as a double-double relative to a reference r (settled: r = m). Parts of
 * one row -- blocks of a long row, slices on several threads, chunks of a Dask array --
 * merge exactly here: S' = S1' + (1 + S2') exp((m2 - m1) / tau), in double-double with
 * the factor's power of two applied last (csm_dd_mul_expdiff), so a row's result does not
 * depend on how it was cut, however far below the max a part lies.
 *
 * A statistics record is the part as six doubles (csm_core.h, CSM_STAT_*), for callers
 * that keep parts of rows themselves (kind CSM_STATS writes them; softmax and log_softmax
 * tasks given records finish from them; csm_stats.c merges them).
 */
#ifndef CSM_PART_H
#define CSM_PART_H

#include "csm_dd.h"
#include "csm_internal.h"
#include "csm_special.h"

typedef struct {
    double m;  /* max so far; -inf if none; +inf: the row is special, nothing more to add */
    double r;  /* reference of s; -inf until a finite max */
    csm_dd s;  /* sum over the unmasked entries but one copy of m of exp((x - r) / tau);
                  NaN after an unmasked NaN; settled (r = m: S') between the calls that
                  fill a part (csm_long.h's csm_part_add) and in records */
    int any;   /* an unmasked entry */
} csm_part;

static inline void csm_part_init(csm_part *c)
{
    c->m = c->r = -CSM_INF;
    c->s = csm_dd_make(0.0, 0.0);
    c->any = 0;
}

/* a += b, both settled */
static inline void csm_part_merge(csm_part *a, const csm_part *b, const csm_temp *tp)
{
    a->any |= b->any;
    if (a->m == CSM_INF || b->m == CSM_INF) {
        a->m = CSM_INF;
        return;
    }
    const int nan = a->s.hi != a->s.hi || b->s.hi != b->s.hi;
    if (!(b->m > -CSM_INF)) {
        if (nan) a->s = csm_dd_make(CSM_NAN, 0.0);
        return;
    }
    csm_part hi = *a, lo = *b;
    if (b->m > a->m || !(a->m > -CSM_INF)) {
        hi = *b;
        lo = *a;
    }
    if (lo.m > -CSM_INF) /* the smaller max and its sum join the larger's sum (rounded once if far below) */
        hi.s = csm_dd_add(hi.s, csm_dd_mul_expdiff(csm_dd_add_d(lo.s, 1.0), lo.m, hi.m, tp->tau));
    if (nan) hi.s = csm_dd_make(CSM_NAN, 0.0);
    hi.any = a->any;
    *a = hi;
}

static inline int csm_part_is_special(const csm_part *c, const csm_temp *tp)
{
    return tp->tau_inf || !c->any || !(c->m > -CSM_INF && c->m < CSM_INF) || c->s.hi != c->s.hi;
}

/* ---- statistics records ---- */
static inline csm_part csm_part_from_record(const double *rec)
{
    csm_part c;
    c.m = c.r = rec[CSM_STAT_M];
    c.s = csm_dd_make(rec[CSM_STAT_NAN] != 0.0 ? CSM_NAN : rec[CSM_STAT_S_HI], rec[CSM_STAT_S_LO]);
    c.any = rec[CSM_STAT_ANY] != 0.0;
    return c;
}

/* the semantics table's values for a record's row (a forward kind; csm_special.h) */
static inline csm_special csm_record_special(int kind, const double *rec, int tau_inf)
{
    return csm_special_values(kind, rec[CSM_STAT_ANY] != 0.0, rec[CSM_STAT_NAN] != 0.0, rec[CSM_STAT_M],
                              (long long)rec[CSM_STAT_COUNT], tau_inf);
}

static inline int csm_record_is_special(const double *rec, const csm_temp *tp)
{
    const csm_part c = csm_part_from_record(rec);
    return csm_part_is_special(&c, tp);
}

#endif /* CSM_PART_H */
