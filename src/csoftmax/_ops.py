"""The op table: every op of csoftmax, once.

An op has a name (the public function's, what backend records list and get_backend
takes), a family -- which fixes the arguments a backend receives for it (see
csoftmax._protocol) -- and the kernel kind that computes it in the C core and the CUDA
kernels. The kinds are the codes of src/backends/common/csm_kinds.h; tests/test_ops.py
checks Kind against that header and against the compiled core. Everything that lists
ops (the public API's __all__, the registry's default, the backends' adapters, the test
matrix) derives from TABLE, so a new op is one entry here plus its public function and
its implementations (docs/design.md, "Ops and kinds").
"""
from __future__ import annotations

import dataclasses
import enum


class Kind(enum.IntEnum):
    """Kernel kinds, as numbered in csm_kinds.h."""

    SOFTMAX = 0
    LOG_SOFTMAX = 1
    LOGSUMEXP = 2
    SOFTMAX_BWD = 3
    LOG_SOFTMAX_BWD = 4
    XENT = 5
    STATS = 6  # no op of its own: rows' statistics records (csoftmax._backends.c.row_stats)


class Family(str, enum.Enum):
    """What an op takes and returns; one method of a backend per family."""

    FORWARD = "forward"  # x -> same shape (softmax, log_softmax) or reduced (logsumexp)
    BACKWARD = "backward"  # (grad_output, output of the forward op) -> grad of x
    JACOBIAN = "jacobian"  # x -> (..., n, n), from the forward op's results
    CROSS_ENTROPY = "cross_entropy"  # (logits, targets) -> per-row loss and grad


@dataclasses.dataclass(frozen=True)
class Op:
    name: str
    family: Family
    kind: Kind | None  # the kernel that computes it; None: composed from other ops
    forward: str  # the forward op it derives from (itself for forward ops)

    @property
    def log(self) -> bool:
        """Whether it is of the log_softmax line (log_softmax, its backward, its Jacobian)."""
        return self.forward == "log_softmax"


TABLE: tuple[Op, ...] = (
    Op("softmax", Family.FORWARD, Kind.SOFTMAX, "softmax"),
    Op("log_softmax", Family.FORWARD, Kind.LOG_SOFTMAX, "log_softmax"),
    Op("logsumexp", Family.FORWARD, Kind.LOGSUMEXP, "logsumexp"),
    Op("softmax_backward", Family.BACKWARD, Kind.SOFTMAX_BWD, "softmax"),
    Op("log_softmax_backward", Family.BACKWARD, Kind.LOG_SOFTMAX_BWD, "log_softmax"),
    Op("softmax_jacobian", Family.JACOBIAN, None, "softmax"),
    Op("log_softmax_jacobian", Family.JACOBIAN, None, "log_softmax"),
    Op("softmax_cross_entropy", Family.CROSS_ENTROPY, Kind.XENT, "log_softmax"),
)

OPS: tuple[str, ...] = tuple(op.name for op in TABLE)
BY_NAME: dict[str, Op] = {op.name: op for op in TABLE}


def op(name: str) -> Op:
    """The op of a name; ValueError for an unknown one."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown op {name!r}; ops: {', '.join(OPS)}") from None


def of_family(family: Family) -> tuple[Op, ...]:
    return tuple(o for o in TABLE if o.family is family)
