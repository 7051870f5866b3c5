/*
 * csm_stats.c - statistics records of rows (csm_part.h) for callers that cut rows into
 * parts themselves: merging the records of two parts of the same rows, and a row's
 * logsumexp from its record. Scalar double-double code, the same for every instruction
 * set and dtype.
 */
#include "csm_part.h"

void csm_stats_merge(double *a, const double *b, csm_intp nrecords, double temperature)
{
    const csm_temp tp = csm_temp_make(temperature);
    for (csm_intp i = 0; i < nrecords; i++) {
        double *ra = a + i * CSM_STAT_FIELDS;
        const double *rb = b + i * CSM_STAT_FIELDS;
        csm_part pa = csm_part_from_record(ra);
        const csm_part pb = csm_part_from_record(rb);
        csm_part_merge(&pa, &pb, &tp);
        const int nan = ra[CSM_STAT_NAN] != 0.0 || rb[CSM_STAT_NAN] != 0.0;
        ra[CSM_STAT_M] = pa.m;
        ra[CSM_STAT_S_HI] = nan ? CSM_NAN : pa.s.hi;
        ra[CSM_STAT_S_LO] = nan ? 0.0 : pa.s.lo;
        ra[CSM_STAT_ANY] = pa.any;
        ra[CSM_STAT_NAN] = nan;
        ra[CSM_STAT_COUNT] += rb[CSM_STAT_COUNT];
    }
}

void csm_stats_logsumexp(const double *rec, double *lse, csm_intp nrecords)
{
    const csm_temp tp = csm_temp_make(1.0);
    for (csm_intp i = 0; i < nrecords; i++) {
        const double *r = rec + i * CSM_STAT_FIELDS;
        if (csm_record_is_special(r, &tp)) {
            lse[i] = csm_record_special(CSM_LOGSUMEXP, r, 0).lse;
        } else {
            const csm_part c = csm_part_from_record(r);
            lse[i] = c.m + csm_dd_log1p(c.s);
        }
    }
}
