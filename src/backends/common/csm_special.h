/*
 * csm_special.h - the semantics table for the rows the fast paths do not take, shared by
 * the C core and the CUDA kernels: the library's contract for special values
 * (docs/design.md, "Special values") is written here once.
 *
 * A row is special when it holds an unmasked NaN, its max is infinite, it is fully
 * masked, or tau = +inf. What its entries become depends only on a few facts about the
 * row, which each kernel gathers in its own way:
 *   any   an unmasked entry exists          nan   an unmasked entry is NaN
 *   m     the max over the unmasked entries (NaN left out)
 *   cnt   the unmasked entries above -inf (tau = +inf only)
 */
#ifndef CSM_SPECIAL_H
#define CSM_SPECIAL_H

#include "csm_kinds.h"
#include "csm_portable.h"

/* How far (in units of x / tau) a running maximum may move above the reference its sum
   is kept relative to before the sum is rescaled: the long-row and column kernels of the
   C core and the CUDA column kernel move the reference lazily by this rule. */
#define CSM_LAZY 60.0

/* inside: the value of the unmasked entries; outside: of the masked ones (and of the -inf
   entries of a uniform row); lse: the row's logsumexp */
typedef struct {
    double inside, outside, lse;
    int uniform; /* tau = +inf with a finite max: -inf entries get `outside` */
} csm_special;

/*
 *   fully masked      softmax 0, log_softmax -inf, logsumexp -inf
 *   an unmasked NaN   NaN (masked entries keep 0 / -inf); logsumexp NaN
 *   max +inf          softmax and log_softmax NaN, logsumexp +inf
 *   all -inf          softmax and log_softmax NaN, logsumexp -inf
 *   tau = +inf        uniform over the unmasked entries above -inf
 * kind is a forward kind; a row that is none of these (defensively: a NaN sum without a
 * NaN in x) is NaN.
 */
CSM_FN csm_special csm_special_values(int kind, int any, int nan, double m, long long cnt, int tau_inf)
{
    csm_special s;
    s.outside = kind == CSM_SOFTMAX ? 0.0 : -CSM_INF;
    s.uniform = 0;
    if (!any) {
        s.inside = s.outside;
        s.lse = -CSM_INF;
    } else if (nan) {
        s.inside = CSM_NAN;
        s.lse = CSM_NAN;
    } else if (!(m - m == 0.0) || !tau_inf) { /* an infinite max */
        s.inside = CSM_NAN;
        s.lse = m - m == 0.0 ? CSM_NAN : m;
    } else {
        s.inside = kind == CSM_SOFTMAX ? 1.0 / (double)cnt : -log((double)cnt);
        s.lse = CSM_NAN; /* not used: logsumexp takes no temperature */
        s.uniform = 1;
    }
    return s;
}

/* the value of one entry of a special row: on = unmasked, v = its input */
CSM_FN double csm_special_value(csm_special s, int on, double v)
{
    return !on || (s.uniform && !(v > -CSM_INF)) ? s.outside : s.inside;
}

#endif /* CSM_SPECIAL_H */
