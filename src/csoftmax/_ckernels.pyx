# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The Cython wrapper of the C core (src/backends/cpu): NumPy arrays in, a csm_task out.

run() takes trusted input: csoftmax._backends.c has checked types, shapes, dtypes, byte
order, alignment and writability. It only copies pointers, shapes and strides into the
task struct (a mask that broadcasts gets stride 0 where it does) and runs it with the
GIL released. Reduced dimensions of per-row operands (ROW, LABEL) arrive with keepdims
shapes; their strides there are set to 0. fast_forward()/fast_backward() are the fast
entry of plain calls: they check what they take themselves and decline the rest;
tensor_view() gives them torch tensors' memory as arrays.
"""
cimport numpy as cnp
from libc.stdint cimport int64_t, uint64_t

cnp.import_array()


cdef extern from "csm_core.h" nogil:
    ctypedef Py_ssize_t csm_intp
    enum:
        CSM_MAXDIM
        CSM_X
        CSM_Y
        CSM_OUT
        CSM_MASK
        CSM_ROW
        CSM_LABEL
        CSM_NOPERANDS
    enum:  # csm_kinds.h
        CSM_SOFTMAX
        CSM_LOG_SOFTMAX
        CSM_LOGSUMEXP
        CSM_SOFTMAX_BWD
        CSM_LOG_SOFTMAX_BWD
        CSM_XENT
        CSM_STATS
        CSM_NKINDS
    enum:
        CSM_STAT_FIELDS
    enum:
        CSM_F16
        CSM_F32
        CSM_F64
    enum:
        CSM_OK
        CSM_ENOMEM
    enum:
        CSM_NISA

    # the sizes here are CSM_MAXDIM and CSM_NOPERANDS (csm_dispatch.c asserts them)
    ctypedef struct csm_task:
        int kind
        int dtype
        int row_dtype
        int ndim
        csm_intp shape[64]
        char *data[6]
        csm_intp strides[6][64]
        uint64_t reduce
        double temperature
        const double *class_weight
        double smoothing
        int64_t ignore_index
        double grad_scale

    int csm_run(const csm_task *task)
    void csm_stats_merge(double *a, const double *b, csm_intp nrecords, double temperature)
    void csm_stats_logsumexp(const double *rec, double *lse, csm_intp nrecords)
    void csm_init()
    int csm_set_isa(int isa)
    int csm_get_isa()
    int csm_isa_supported(int isa)
    const char *csm_isa_name(int isa)
    int csm_max_threads()
    int csm_openmp_enabled()


def kind_codes():
    """The kernel kinds as the compiled core numbers them (csm_kinds.h): name -> code;
    tests/test_ops.py checks csoftmax._ops.Kind against it."""
    return {"SOFTMAX": CSM_SOFTMAX, "LOG_SOFTMAX": CSM_LOG_SOFTMAX, "LOGSUMEXP": CSM_LOGSUMEXP,
            "SOFTMAX_BWD": CSM_SOFTMAX_BWD, "LOG_SOFTMAX_BWD": CSM_LOG_SOFTMAX_BWD, "XENT": CSM_XENT,
            "STATS": CSM_STATS}


STAT_FIELDS = CSM_STAT_FIELDS  # doubles per statistics record (csm_core.h)


def merge_stats(cnp.ndarray a, cnp.ndarray b, double temperature):
    """a becomes the merge of the statistics records a and b (C-contiguous float64 arrays of
    one shape, the last axis STAT_FIELDS), record by record."""
    cdef csm_intp n = cnp.PyArray_SIZE(a) // CSM_STAT_FIELDS
    cdef double *pa = <double *>cnp.PyArray_DATA(a)
    cdef const double *pb = <const double *>cnp.PyArray_DATA(b)
    with nogil:
        csm_stats_merge(pa, pb, n, temperature)


def stats_logsumexp(cnp.ndarray rec, cnp.ndarray lse):
    """lse (C-contiguous float64, one value per record) from the records rec (C-contiguous
    float64, the last axis STAT_FIELDS)."""
    cdef csm_intp n = cnp.PyArray_SIZE(lse)
    with nogil:
        csm_stats_logsumexp(<const double *>cnp.PyArray_DATA(rec), <double *>cnp.PyArray_DATA(lse), n)


csm_init()


cdef int _dtype_code(cnp.ndarray a) except -1:
    cdef int num = cnp.PyArray_TYPE(a)
    if num == cnp.NPY_FLOAT64:
        return CSM_F64
    if num == cnp.NPY_FLOAT32:
        return CSM_F32
    if num == cnp.NPY_FLOAT16:
        return CSM_F16
    raise TypeError(f"internal: unsupported dtype {a.dtype}")


cdef inline void _put(csm_task *t, int op, cnp.ndarray a, uint64_t zero_reduced):
    cdef int d
    cdef cnp.npy_intp *st = cnp.PyArray_STRIDES(a)
    t.data[op] = <char *>cnp.PyArray_DATA(a)
    for d in range(t.ndim):
        if (zero_reduced >> d) & 1:
            t.strides[op][d] = 0
        else:
            t.strides[op][d] = st[d]


cdef inline void _put_broadcast(csm_task *t, int op, cnp.ndarray a):
    """An operand that broadcasts to the task's shape (the `where` mask): its missing
    leading dimensions and its size-1 dimensions get stride 0."""
    cdef int d, nd = cnp.PyArray_NDIM(a), off = t.ndim - cnp.PyArray_NDIM(a)
    cdef cnp.npy_intp *st = cnp.PyArray_STRIDES(a)
    cdef cnp.npy_intp *sh = cnp.PyArray_DIMS(a)
    t.data[op] = <char *>cnp.PyArray_DATA(a)
    for d in range(t.ndim):
        if d < off or sh[d - off] == 1:
            t.strides[op][d] = 0
        else:
            t.strides[op][d] = st[d - off]


def run(int kind, cnp.ndarray x, *, object y=None, object out=None, object mask=None, object row=None,
        object label=None, uint64_t reduce=0, double temperature=1.0, object weight=None, double smoothing=0.0,
        int64_t ignore_index=-100, double grad_scale=1.0):
    """Run one task of the C core (kind: a csm_kinds.h code). x, y, out share a shape and a
    float dtype; mask is uint8/bool and broadcasts to that shape; row and label have the
    keepdims shape; reduce is a bit mask of the softmax axes; weight is a contiguous
    float64 array or None."""
    cdef csm_task t
    cdef int d, status
    cdef cnp.ndarray arr
    cdef cnp.npy_intp *shape = cnp.PyArray_DIMS(x)
    t.kind = kind
    t.ndim = cnp.PyArray_NDIM(x)
    t.dtype = _dtype_code(x)
    t.row_dtype = t.dtype
    t.reduce = reduce
    t.temperature = temperature
    t.class_weight = NULL
    t.smoothing = smoothing
    t.ignore_index = ignore_index
    t.grad_scale = grad_scale
    for d in range(t.ndim):
        t.shape[d] = shape[d]
    for d in range(CSM_NOPERANDS):
        t.data[d] = NULL
    _put(&t, CSM_X, x, 0)
    if y is not None:
        _put(&t, CSM_Y, <cnp.ndarray>y, 0)
    if out is not None:
        _put(&t, CSM_OUT, <cnp.ndarray>out, 0)
    if mask is not None:
        _put_broadcast(&t, CSM_MASK, <cnp.ndarray>mask)
    if row is not None:
        _put(&t, CSM_ROW, <cnp.ndarray>row, reduce)
        t.row_dtype = _dtype_code(<cnp.ndarray>row)
    if label is not None:
        _put(&t, CSM_LABEL, <cnp.ndarray>label, reduce)
    if weight is not None:
        arr = <cnp.ndarray>weight
        t.class_weight = <const double *>cnp.PyArray_DATA(arr)
    with nogil:
        status = csm_run(&t)
    if status == CSM_ENOMEM:
        raise MemoryError("csoftmax: out of memory for the per-thread row buffers")
    if status != CSM_OK:
        raise RuntimeError(f"csoftmax: C core failed with status {status}")


cdef extern from "numpy/arrayobject.h":
    object PyArray_NewLikeArray(cnp.ndarray prototype, cnp.NPY_ORDER order, void *descr, int subok)


cdef inline int _fast_tau(object temperature, double *tau):
    """A float > 0, or an int in 1 .. 2**53 (exact as a double); else 0."""
    if type(temperature) is float:
        tau[0] = temperature
        return tau[0] > 0.0
    if type(temperature) is int and 0 < temperature <= 9007199254740992:
        tau[0] = temperature
        return 1
    return 0


cdef inline int _fast_array(cnp.ndarray a):
    """float32/float64, native byte order, aligned, at least one dimension; else 0."""
    cdef int typ = cnp.PyArray_TYPE(a)
    if typ != cnp.NPY_FLOAT64 and typ != cnp.NPY_FLOAT32:
        return 0
    return cnp.PyArray_NDIM(a) > 0 and cnp.PyArray_ISNOTSWAPPED(a) and cnp.PyArray_ISALIGNED(a)


cdef inline int _fast_axis(object axis, int nd, int kind, uint64_t *reduce):
    cdef int a
    if axis is None:
        if kind != CSM_LOGSUMEXP:
            return 0
        reduce[0] = (<uint64_t>1 << nd) - 1 if nd < 64 else <uint64_t>0xFFFFFFFFFFFFFFFF
        return 1
    if type(axis) is not int or not -nd <= axis < nd:  # compared as Python ints: any size
        return 0
    a = axis
    if a < 0:
        a += nd
    reduce[0] = <uint64_t>1 << a
    return 1


cdef inline void _fast_task(csm_task *t, int kind, cnp.ndarray x, uint64_t reduce, double tau):
    cdef int d
    cdef cnp.npy_intp *shape = cnp.PyArray_DIMS(x)
    t.kind = kind
    t.ndim = cnp.PyArray_NDIM(x)
    t.dtype = CSM_F64 if cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT64 else CSM_F32
    t.row_dtype = t.dtype
    t.reduce = reduce
    t.temperature = tau
    t.class_weight = NULL
    t.smoothing = 0.0
    t.ignore_index = -100
    t.grad_scale = 1.0
    for d in range(CSM_NOPERANDS):
        t.data[d] = NULL
    for d in range(t.ndim):
        t.shape[d] = shape[d]
    _put(t, CSM_X, x, 0)


cdef inline int _fast_same_layout(cnp.ndarray a, cnp.ndarray b):
    """a and b are the same elements in the same order: data pointer, dtype, byte order,
    shape and strides all equal."""
    cdef int d, nd = cnp.PyArray_NDIM(a)
    if cnp.PyArray_DATA(a) != cnp.PyArray_DATA(b) or nd != cnp.PyArray_NDIM(b):
        return 0
    if cnp.PyArray_TYPE(a) != cnp.PyArray_TYPE(b) or cnp.PyArray_ISBYTESWAPPED(a) != cnp.PyArray_ISBYTESWAPPED(b):
        return 0
    for d in range(nd):
        if cnp.PyArray_DIMS(a)[d] != cnp.PyArray_DIMS(b)[d] or cnp.PyArray_STRIDES(a)[d] != cnp.PyArray_STRIDES(b)[d]:
            return 0
    return 1


cdef inline void _extent(cnp.ndarray a, char **lo, char **hi):
    """The bytes [lo, hi) that a's elements lie in (lo == hi when a is empty)."""
    cdef int d
    cdef cnp.npy_intp span
    lo[0] = hi[0] = <char *>cnp.PyArray_DATA(a)
    for d in range(cnp.PyArray_NDIM(a)):
        if cnp.PyArray_DIMS(a)[d] == 0:
            return
        span = cnp.PyArray_STRIDES(a)[d] * (cnp.PyArray_DIMS(a)[d] - 1)
        if span < 0:
            lo[0] += span
        else:
            hi[0] += span
    hi[0] += cnp.PyArray_ITEMSIZE(a)


cdef int _self_overlaps(cnp.ndarray a):
    """Whether two elements of a may share bytes (a view made with as_strided, say): the
    dimensions of size > 1 sorted by the size of their strides, each must step past all
    the bytes the smaller ones span. Conservative: 1 where it cannot tell."""
    cdef int d, j, k, nd = cnp.PyArray_NDIM(a)
    cdef cnp.npy_intp st[64]
    cdef cnp.npy_intp ex[64]
    cdef cnp.npy_intp span, v
    if cnp.PyArray_IS_C_CONTIGUOUS(a) or cnp.PyArray_IS_F_CONTIGUOUS(a):
        return 0
    k = 0
    for d in range(nd):
        if cnp.PyArray_DIMS(a)[d] > 1:
            st[k] = cnp.PyArray_STRIDES(a)[d] if cnp.PyArray_STRIDES(a)[d] >= 0 else -cnp.PyArray_STRIDES(a)[d]
            ex[k] = cnp.PyArray_DIMS(a)[d]
            k += 1
    for d in range(1, k):  # insertion sort by stride
        j = d
        while j > 0 and st[j - 1] > st[j]:
            v = st[j]; st[j] = st[j - 1]; st[j - 1] = v
            v = ex[j]; ex[j] = ex[j - 1]; ex[j - 1] = v
            j -= 1
    span = cnp.PyArray_ITEMSIZE(a)
    for d in range(k):
        if st[d] < span:
            return 1
        span += st[d] * (ex[d] - 1)
    return 0


def self_overlaps(cnp.ndarray a):
    """Whether two elements of a may share bytes (see _self_overlaps)."""
    return bool(_self_overlaps(a))


cdef inline int _fast_out_beside(cnp.ndarray out, cnp.ndarray a):
    """out may be written while a is read: it is a itself, or their bytes are apart."""
    cdef char *olo
    cdef char *ohi
    cdef char *alo
    cdef char *ahi
    if _fast_same_layout(out, a):
        return not _self_overlaps(out)
    _extent(out, &olo, &ohi)
    _extent(a, &alo, &ahi)
    return olo == ohi or alo == ahi or ohi <= alo or ahi <= olo


cdef inline int _fast_out(object out, cnp.ndarray like, cnp.ndarray other):
    """An `out=` the core can write directly: an aligned, native, writable ndarray of
    like's dtype and shape that is each input (like, other) or lies apart from it; else 0
    (the general path then checks it, computes aside or raises)."""
    cdef int d
    cdef cnp.ndarray o
    if type(out) is not cnp.ndarray:
        return 0
    o = <cnp.ndarray>out
    if not _fast_array(o) or not cnp.PyArray_ISWRITEABLE(o) or cnp.PyArray_TYPE(o) != cnp.PyArray_TYPE(like):
        return 0
    if cnp.PyArray_NDIM(o) != cnp.PyArray_NDIM(like):
        return 0
    for d in range(cnp.PyArray_NDIM(o)):
        if cnp.PyArray_DIMS(o)[d] != cnp.PyArray_DIMS(like)[d]:
            return 0
    if _self_overlaps(o):
        return 0
    return _fast_out_beside(o, like) and (other is None or _fast_out_beside(o, other))


cdef inline object _fast_run(csm_task *t, object out):
    cdef int status
    with nogil:
        status = csm_run(t)
    if status != CSM_OK:
        raise MemoryError("csoftmax: out of memory for the per-thread row buffers")
    return out


def fast_forward(int kind, cnp.ndarray x, object axis, object temperature, object out_arg=None):
    """The common call -- an aligned, native float32/float64 array, an int axis (or None
    for logsumexp), a plain number temperature, no `out=` or one the core can write
    directly (softmax, log_softmax) -- straight to the core. Returns None whenever anything
    else is asked, and the general path takes over (and raises the errors)."""
    cdef double tau
    cdef uint64_t reduce = 0
    cdef csm_task t
    cdef cnp.ndarray out
    cdef cnp.npy_intp rdims[64]
    cdef int rnd = 0, d, nd
    if not _fast_tau(temperature, &tau) or not _fast_array(x):
        return None
    nd = cnp.PyArray_NDIM(x)
    if not _fast_axis(axis, nd, kind, &reduce):
        return None
    if out_arg is not None and (kind == CSM_LOGSUMEXP or not _fast_out(out_arg, x, None)):
        return None
    _fast_task(&t, kind, x, reduce, tau)
    if kind == CSM_LOGSUMEXP:
        for d in range(nd):
            if not (reduce >> d) & 1:
                rdims[rnd] = cnp.PyArray_DIMS(x)[d]
                rnd += 1
        out = cnp.PyArray_EMPTY(rnd, rdims, cnp.PyArray_TYPE(x), 0)
        t.data[CSM_ROW] = <char *>cnp.PyArray_DATA(out)
        rnd = 0
        for d in range(nd):
            if (reduce >> d) & 1:
                t.strides[CSM_ROW][d] = 0
            else:
                t.strides[CSM_ROW][d] = cnp.PyArray_STRIDES(out)[rnd]
                rnd += 1
    else:
        out = PyArray_NewLikeArray(x, cnp.NPY_KEEPORDER, NULL, 0) if out_arg is None else out_arg
        _put(&t, CSM_OUT, out, 0)
    return _fast_run(&t, out)


def fast_backward(int kind, cnp.ndarray g, cnp.ndarray y, object axis, object temperature, object out_arg=None):
    """The backward passes' common call: g and y of one shape and float dtype, native and
    aligned, an int axis, a plain number temperature, no `out=` or one the core can write
    directly. None otherwise."""
    cdef double tau
    cdef uint64_t reduce = 0
    cdef csm_task t
    cdef cnp.ndarray out
    cdef int d, nd
    if not _fast_tau(temperature, &tau) or not _fast_array(g) or not _fast_array(y):
        return None
    nd = cnp.PyArray_NDIM(g)
    if cnp.PyArray_TYPE(g) != cnp.PyArray_TYPE(y) or nd != cnp.PyArray_NDIM(y):
        return None
    for d in range(nd):
        if cnp.PyArray_DIMS(g)[d] != cnp.PyArray_DIMS(y)[d]:
            return None
    if not _fast_axis(axis, nd, kind, &reduce):
        return None
    if out_arg is not None and not _fast_out(out_arg, g, y):
        return None
    _fast_task(&t, kind, g, reduce, tau)
    _put(&t, CSM_Y, y, 0)
    out = PyArray_NewLikeArray(g, cnp.NPY_KEEPORDER, NULL, 0) if out_arg is None else out_arg
    _put(&t, CSM_OUT, out, 0)
    return _fast_run(&t, out)


def tensor_view(object t, dict typenums):
    """A NumPy array over the memory of a CPU tensor, built from its data pointer, shape
    and strides -- what Tensor.numpy() gives, for a fraction of its cost, for the fast
    entries of the torch backend. None (to decline) for a tensor that requires grad, is
    not on the CPU, has its negative bit set (a lazy negation that numpy() refuses too),
    has a dtype not in typenums (torch dtype -> NumPy type number; float32 and float64
    only), or whose pointer or
    strides torch does not give (sparse, nested, wrapped tensors). The array does not
    hold the tensor: it serves the duration of one call, while the caller holds it."""
    cdef cnp.npy_intp dims[64]
    cdef cnp.npy_intp strides[64]
    cdef int nd, d, typ
    cdef Py_ssize_t itemsize
    if t.requires_grad or not t.is_cpu or t.is_neg():
        return None
    code = typenums.get(t.dtype)
    if code is None:
        return None
    typ = code
    if typ != cnp.NPY_FLOAT64 and typ != cnp.NPY_FLOAT32:  # the dtypes the fast entries take
        return None
    try:
        ptr = t.data_ptr()
        shape = t.shape
        st = t.stride()
    except (RuntimeError, TypeError, NotImplementedError, ValueError):
        return None
    nd = len(shape)
    if nd > 64 or len(st) != nd:
        return None
    itemsize = 8 if typ == cnp.NPY_FLOAT64 else 4
    for d in range(nd):
        dims[d] = shape[d]
        strides[d] = <cnp.npy_intp>st[d] * itemsize
    return cnp.PyArray_New(cnp.ndarray, nd, dims, typ, strides, <void *><size_t>ptr, 0, cnp.NPY_ARRAY_WRITEABLE,
                           None)


def same_layout(cnp.ndarray a, cnp.ndarray b):
    """Whether a and b are the same elements in the same order: same data pointer, dtype,
    shape and strides."""
    return bool(_fast_same_layout(a, b))


def isa_names():
    """Names of the instruction-set builds, lowest first."""
    return [csm_isa_name(i).decode() for i in range(CSM_NISA)]


def isa_supported(int isa):
    return bool(csm_isa_supported(isa))


def get_isa():
    return csm_get_isa()


def set_isa(int isa):
    if csm_set_isa(isa) != 0:
        raise ValueError(f"instruction set {csm_isa_name(isa).decode()!r} is not available on this CPU")


def max_threads():
    return csm_max_threads()


def openmp_enabled():
    return bool(csm_openmp_enabled())
