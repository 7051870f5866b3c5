/*
 * csm_kinds.h - the kernel kinds: what one task of the C core or one CUDA kernel
 * computes. The one definition of these codes: the C core (cpu/csm_core.h), the CUDA
 * kernels and the Python op table (csoftmax/_ops.py, checked against this file by
 * tests/test_ops.py) all take them from here (docs/design.md, "Ops and kinds").
 */
#ifndef CSM_KINDS_H
#define CSM_KINDS_H

enum csm_kind {
    CSM_SOFTMAX = 0,         /* softmax */
    CSM_LOG_SOFTMAX = 1,     /* log_softmax */
    CSM_LOGSUMEXP = 2,       /* logsumexp */
    CSM_SOFTMAX_BWD = 3,     /* softmax_backward */
    CSM_LOG_SOFTMAX_BWD = 4, /* log_softmax_backward */
    CSM_XENT = 5,            /* softmax_cross_entropy: the loss and its gradient */
    CSM_STATS = 6,           /* no op of its own: each row's statistics record, for callers that
                                merge parts of rows themselves (the C core; cpu/csm_part.h) */
    CSM_NKINDS
};

/* the forward kinds (one row in, one row or one value out) and the backward passes */
#define CSM_KIND_IS_FORWARD(kind) ((kind) >= CSM_SOFTMAX && (kind) <= CSM_LOGSUMEXP)
#define CSM_KIND_IS_BACKWARD(kind) ((kind) == CSM_SOFTMAX_BWD || (kind) == CSM_LOG_SOFTMAX_BWD)
/* the kinds that write one value per row (logsumexp, the loss) */
#define CSM_KIND_HAS_ROW_VALUE(kind) ((kind) == CSM_LOGSUMEXP || (kind) == CSM_XENT)

#endif /* CSM_KINDS_H */
