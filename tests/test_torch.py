"""torch tensors as users hold them: results are tensors of the input's dtype and device,
out= is written in place, and with requires_grad the calls are torch.autograd.Functions
whose backward is csoftmax's -- checked against torch's own autograd for every argument
(axes incl. dim 1 of (N, C, L), temperature, where, weight, label smoothing,
ignore_index, reductions, probability targets), against finite differences
(gradcheck, gradgradcheck in float64), and in a training step. The equivalence matrix,
error parity and gradient tests run the `torch` backend too (it is in the registry);
here is what only tensors have. CUDA tensors: skipped with a reason without a GPU."""
from __future__ import annotations

import numpy as np
import pytest

import csoftmax
from csoftmax import _registry

torch = pytest.importorskip("torch", reason="torch is not installed: the torch backend's tests are skipped")
F = torch.nn.functional

DT = torch.float64


def _randn(*shape, dtype=DT, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=dtype) * 2).requires_grad_(requires_grad)


def _grads(fn, *inputs, seed=1):
    """The gradients of <fn(*inputs), G> for a fixed random G, by autograd."""
    out = fn(*inputs)
    G = _randn(*out.shape, dtype=out.dtype, seed=seed)
    return torch.autograd.grad((out * G).sum(), [t for t in inputs if t.requires_grad])


def _close(a, b, rtol=1e-12, atol=1e-14):
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol, equal_nan=True)


# ---- what comes back ----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_results_are_tensors_of_the_input_dtype(dtype):
    x = _randn(5, 7, dtype=dtype)
    for op in ("softmax", "log_softmax", "logsumexp"):
        r = getattr(csoftmax, op)(x, axis=-1) if op != "logsumexp" else csoftmax.logsumexp(x, axis=-1)
        assert isinstance(r, torch.Tensor) and r.dtype == dtype and r.device == x.device
        want = getattr(torch, op)(x.double(), -1).to(dtype)
        _close(r, want, rtol=1e-3 if dtype == torch.float16 else 2e-6, atol=1e-6)
    assert csoftmax.softmax(torch.arange(6)).dtype == torch.float64  # integers compute in float64
    assert csoftmax.get_backend(x).name == "torch"
    assert csoftmax.get_backend(torch.nn.Parameter(x)).name == "torch"


def test_plain_calls_take_the_fast_entry_on_views():
    x = _randn(4, 6)
    csoftmax.softmax(x)
    assert _registry.fast_entry(torch.Tensor, "softmax") is not None
    xc = x.clone()
    ptr = xc.data_ptr()
    assert csoftmax.softmax(xc, out=xc) is xc and xc.data_ptr() == ptr  # in place, on the tensor's memory
    _close(xc, torch.softmax(x, -1))
    layouts = (x.t(), x[:, ::2], x[1:, 2:], x.unsqueeze(0).expand(3, 4, 6), x[0, 0], x[:0])
    for layout in layouts:  # strides torch holds: views, an offset, stride 0, 0-d, empty
        _close(csoftmax.log_softmax(layout, axis=-1), torch.log_softmax(layout, -1))
        g = _randn(*layout.shape, seed=3)
        _close(csoftmax.softmax_backward(g, layout, axis=-1), torch._softmax_backward_data(g, layout, -1, DT))
    neg = torch._neg_view(x)  # the negative bit: a lazy negation the memory does not hold
    assert neg.is_neg()
    _close(csoftmax.softmax(neg), torch.softmax(-x, -1))
    _close(csoftmax.log_softmax_backward(neg, x), torch._log_softmax_backward_data(-x, x, -1, DT))
    o = torch.empty(6, 8, dtype=DT)
    assert csoftmax.softmax(x, out=o[1:5, 1:7]) is not None
    _close(o[1:5, 1:7], torch.softmax(x, -1))
    y32 = torch.softmax(x, -1).float()  # another dtype: promoted, by the general path
    _close(csoftmax.softmax_backward(x, y32), torch._softmax_backward_data(x, y32.double(), -1, DT))
    with pytest.raises(TypeError, match="same library"):
        csoftmax.softmax_backward(x, y32.numpy())


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_calls_with_grad_take_the_fast_entry_too(op):
    """A plain call on a tensor that requires grad runs the core on the detached view and
    records one autograd node (_FastForward): its gradients are the general path's (a
    where= of all True takes that one) and torch's, to second order; nothing is recorded
    under no_grad or inference_mode; a dtype the view declines (float16) goes the general
    way."""
    fn, theirs = getattr(csoftmax, op), getattr(torch, op)
    for dtype, tol in ((torch.float64, {}), (torch.float32, {"rtol": 1e-5, "atol": 5e-7})):
        x = _randn(3, 4, 5, dtype=dtype, requires_grad=True)
        x64 = x.detach().double().requires_grad_()
        everywhere = torch.ones(3, 4, 5, dtype=torch.bool)
        for axis in (-1, 1):
            y = fn(x, axis=axis, temperature=0.7)
            assert type(y.grad_fn).__name__ == "_FastForwardBackward" and y.dtype == dtype
            (fast,) = _grads(lambda t: fn(t, axis=axis, temperature=0.7), x)
            (general,) = _grads(lambda t: fn(t, axis=axis, temperature=0.7, where=everywhere), x)
            out = theirs(x64 / 0.7, axis)  # the oracle: torch in float64, the same G
            (ref,) = torch.autograd.grad((out * _randn(*out.shape, dtype=dtype, seed=1).double()).sum(), x64)
            eps = torch.finfo(dtype).eps  # (the masked kernels may round differently: a few ulp)
            _close(fast, general, rtol=4 * eps, atol=4 * eps)
            _close(fast.double(), ref, **tol)
    x = _randn(3, 5, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda t: fn(t, temperature=0.7), (x,))
    with torch.no_grad():
        assert not fn(x).requires_grad
    with torch.inference_mode():
        assert not fn(x).requires_grad
    h = _randn(3, 5, dtype=torch.float16, requires_grad=True)
    y = fn(h)
    assert type(y.grad_fn).__name__ != "_FastForwardBackward" and y.dtype == torch.float16
    _close(_grads(fn, h)[0].double(), _grads(lambda t: theirs(t.double(), -1), h)[0].double(), rtol=1e-2, atol=1e-3)


def test_out_bumps_the_version_counter():
    """Writing out= through the NumPy view is an in-place change torch must know of: a
    tensor saved for a backward pass and overwritten so is caught, as with torch's out=."""
    a = _randn(3, 4, requires_grad=True)
    y = a.exp()  # saves its output for the backward pass
    with torch.no_grad():
        csoftmax.softmax(_randn(3, 4, seed=5), out=y)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_out_with_grad_is_refused_as_torch_refuses_it():
    x = _randn(3, 4, requires_grad=True)
    o = torch.empty(3, 4, dtype=DT)
    with pytest.raises(RuntimeError) as theirs:
        torch.exp(x, out=o)
    with pytest.raises(ValueError) as ours:
        csoftmax.softmax(x, out=o)
    assert str(ours.value) == str(theirs.value).replace("exp()", "softmax()")
    with pytest.raises(ValueError, match="automatic differentiation"):
        csoftmax.softmax(x.detach(), out=o.requires_grad_())
    with pytest.raises(ValueError, match="automatic differentiation"):
        csoftmax.log_softmax_backward(x, x.detach(), out=torch.empty(3, 4, dtype=DT))
    with torch.no_grad():  # as torch: allowed where nothing is recorded
        assert csoftmax.softmax(x, out=o) is o
    _close(o, torch.softmax(x.detach(), -1))


def test_unsupported_float_dtypes_are_type_errors():
    with pytest.raises(TypeError, match="bfloat16"):
        csoftmax.softmax(torch.zeros(3, dtype=torch.bfloat16))
    with pytest.raises(TypeError, match="dtype"):
        csoftmax.softmax(torch.zeros(3), dtype=torch.int32)
    assert csoftmax.softmax(torch.zeros(3), dtype=torch.float64).dtype == torch.float64
    assert csoftmax.softmax(torch.zeros(3), dtype="float16").dtype == torch.float16


# ---- autograd against torch's own -----------------------------------------------------------------
AXES = [((4, 5, 3), 1), ((4, 5, 3), -1), ((4, 5, 3), 0), ((6, 7), -1), ((9,), 0)]


@pytest.mark.parametrize("tau", [1.0, 0.4, 3.0])
@pytest.mark.parametrize("shape,dim", AXES)
@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_softmax_gradients_match_torch(op, shape, dim, tau):
    x = _randn(*shape, requires_grad=True)
    ours = _grads(lambda t: getattr(csoftmax, op)(t, axis=dim, temperature=tau), x)[0]
    theirs = _grads(lambda t: getattr(torch, op)(t / tau, dim), x)[0]
    _close(ours, theirs)


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_masked_gradients_match_torch_on_masked_logits(op):
    """where= is torch's masked_fill(-inf) for the rows with an unmasked entry; masked
    entries get exactly 0; a fully masked row is 0 (0 / -inf) with a zero gradient, where
    torch's is NaN."""
    x = _randn(5, 8, requires_grad=True)
    mask = _randn(5, 8, seed=3) > -0.5
    mask[:, 0] = True
    mask[3] = False  # fully masked
    fill = torch.where(mask, x, torch.tensor(-torch.inf, dtype=DT))
    ours_y = getattr(csoftmax, op)(x, where=mask)
    theirs_y = getattr(torch, op)(fill, -1)
    live = mask.any(-1)
    _close(ours_y[live], theirs_y[live])
    assert torch.all(ours_y[3] == (0.0 if op == "softmax" else -torch.inf))
    G = _randn(5, 8, seed=4)
    (gx,) = torch.autograd.grad((torch.where(mask, ours_y, 0.0) * G).sum(), x)
    (gt,) = torch.autograd.grad((torch.where(mask, theirs_y, 0.0) * G).sum(), x)
    _close(gx[live], gt[live])
    assert torch.all(gx[~mask] == 0)


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("dim", [1, -1, (0, 2)])
def test_logsumexp_gradients_match_torch(dim, keepdims):
    x = _randn(4, 5, 3, requires_grad=True)
    ours = _grads(lambda t: csoftmax.logsumexp(t, axis=dim, keepdims=keepdims), x)[0]
    theirs = _grads(lambda t: torch.logsumexp(t, dim, keepdim=keepdims), x)[0]
    _close(ours, theirs)


CE = [
    {},
    {"reduction": "sum"},
    {"reduction": "none"},
    {"weight": True},
    {"label_smoothing": 0.2},
    {"weight": True, "label_smoothing": 0.1, "reduction": "none"},
    {"ignore_index": 3},
    {"weight": True, "ignore_index": 1, "reduction": "sum"},
    {"temperature": 0.5},
]


@pytest.mark.parametrize("probs", [False, True])
@pytest.mark.parametrize("kw", CE, ids=[str(sorted(k.items())) for k in CE])
@pytest.mark.parametrize("shape,axis", [((6, 5), -1), ((3, 5, 4), 1)], ids=["(N,C)", "(N,C,L)"])
def test_cross_entropy_loss_and_gradient_match_torch(shape, axis, kw, probs):
    if probs and "ignore_index" in kw:
        return  # refused for probability targets, as torch (test_gradients)
    C = shape[1]
    x = _randn(*shape, requires_grad=True)
    w = torch.rand(C, dtype=DT, generator=torch.Generator().manual_seed(2)) + 0.5
    if probs:
        t = torch.softmax(_randn(*shape, seed=7), 1)
    else:
        t = torch.randint(0, C, (shape[0],) + shape[2:], generator=torch.Generator().manual_seed(3))
        t.view(-1)[0] = kw.get("ignore_index", -100)
    ours_kw = {k: (w if k == "weight" else v) for k, v in kw.items()}
    theirs_kw = {k: v for k, v in ours_kw.items() if k != "temperature"}
    tau = kw.get("temperature", 1.0)
    ours = csoftmax.softmax_cross_entropy(x, t, axis=axis, **ours_kw)
    theirs = F.cross_entropy(x / tau, t, **theirs_kw)
    _close(ours, theirs)
    G = _randn(*ours.shape, seed=8) if ours.ndim else torch.tensor(1.7, dtype=DT)
    (gx,) = torch.autograd.grad((ours * G).sum(), x)
    (gt,) = torch.autograd.grad((theirs * G).sum(), x)
    _close(gx, gt)


def test_cross_entropy_return_grad_is_the_autograd_gradient():
    x = _randn(6, 5, requires_grad=True)
    t = torch.tensor([0, 4, 2, -100, 1, 1])
    loss, grad = csoftmax.softmax_cross_entropy(x, t, label_smoothing=0.1, return_grad=True)
    (gx,) = torch.autograd.grad(loss, x)
    _close(grad, gx)
    assert not grad.requires_grad  # a constant to autograd


def test_all_ignored_mean_is_nan_with_a_zero_gradient_as_torch():
    x = _randn(3, 4, requires_grad=True)
    t = torch.full((3,), -100)
    ours = csoftmax.softmax_cross_entropy(x, t)
    theirs = F.cross_entropy(x, t)
    assert torch.isnan(ours) and torch.isnan(theirs)
    (gx,) = torch.autograd.grad(ours, x)
    (gt,) = torch.autograd.grad(theirs, x)
    assert torch.all(gx == 0) and torch.all(gt == 0)


def test_gradients_with_respect_to_targets_and_weights_match_torch():
    x = _randn(5, 6, requires_grad=True)
    q = torch.softmax(_randn(5, 6, seed=2), -1).requires_grad_()
    w = (torch.rand(6, dtype=DT, generator=torch.Generator().manual_seed(4)) + 0.5).requires_grad_()
    for kw in ({}, {"label_smoothing": 0.3}, {"reduction": "sum"}):
        ours = torch.autograd.grad(csoftmax.softmax_cross_entropy(x, q, weight=w, **kw), (x, q, w))
        theirs = torch.autograd.grad(F.cross_entropy(x, q, weight=w, **kw), (x, q, w))
        for a, b in zip(ours, theirs):
            _close(a, b)
    # torch does not differentiate index-target losses by the weights: its formula, in torch ops
    t = torch.tensor([0, 5, -100, 2, 2])
    valid, tt = t != -100, t.clamp(min=0)

    def theirs(ww, eps, reduction):
        lp = torch.log_softmax(x, -1)
        nll = -lp.gather(1, tt[:, None])[:, 0] * ww[tt]
        rows = torch.where(valid, (1 - eps) * nll - eps * (lp * ww).sum(-1) / lp.shape[-1], 0.0)
        if reduction == "none":
            return rows
        return rows.sum() / (ww[tt] * valid).sum() if reduction == "mean" else rows.sum()

    for eps, reduction in ((0.0, "mean"), (0.3, "mean"), (0.1, "sum"), (0.0, "none")):
        ours = csoftmax.softmax_cross_entropy(x, t, weight=w, label_smoothing=eps, reduction=reduction)
        _close(ours, theirs(w, eps, reduction))
        _close(_grads(lambda ww: csoftmax.softmax_cross_entropy(x, t, weight=ww, label_smoothing=eps,
                                                                reduction=reduction), w)[0],
               _grads(lambda ww: theirs(ww, eps, reduction), w)[0])


# ---- finite differences: gradcheck, gradgradcheck -------------------------------------------------
def _check(fn, *inputs, second=True):
    assert torch.autograd.gradcheck(fn, inputs)
    if second:
        assert torch.autograd.gradgradcheck(fn, inputs)


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_gradcheck_forward_ops(op):
    x = _randn(3, 4, 5, requires_grad=True)
    mask = _randn(3, 4, 5, seed=9) > -1.0
    _check(lambda t: getattr(csoftmax, op)(t, axis=1, temperature=0.7), x)
    _check(lambda t: getattr(csoftmax, op)(t, axis=(0, 2)), x)
    _check(lambda t: torch.where(mask, getattr(csoftmax, op)(t, axis=-1, where=mask), 0.0), x)
    _check(lambda t: csoftmax.logsumexp(t, axis=(1, 2), where=mask), x)


@pytest.mark.parametrize("op", ["softmax_backward", "log_softmax_backward"])
def test_gradcheck_backward_ops(op):
    """The backward passes are differentiable in both arguments (second derivatives of
    softmax go through them)."""
    fwd = op.removesuffix("_backward")
    g = _randn(4, 6, requires_grad=True)
    y = getattr(csoftmax, fwd)(_randn(4, 6, seed=3)).requires_grad_()
    mask = _randn(4, 6, seed=5) > -1.0
    _check(lambda a, b: getattr(csoftmax, op)(a, b, axis=-1, temperature=0.6), g, y)
    _check(lambda a, b: getattr(csoftmax, op)(a, b, axis=0, where=mask), g, y)


@pytest.mark.parametrize("op", ["softmax_jacobian", "log_softmax_jacobian"])
def test_gradcheck_jacobians(op):
    _check(lambda t: getattr(csoftmax, op)(t, axis=1, temperature=1.3), _randn(2, 4, 3, requires_grad=True))


def test_gradcheck_cross_entropy():
    x = _randn(4, 5, requires_grad=True)
    q = torch.softmax(_randn(4, 5, seed=2), -1).requires_grad_()
    w = (torch.rand(5, dtype=DT, generator=torch.Generator().manual_seed(4)) + 0.5).requires_grad_()
    t = torch.tensor([1, -100, 4, 0])
    mask = torch.tensor([True, True, False, True, True])
    _check(lambda a, b, c: csoftmax.softmax_cross_entropy(a, b, weight=c, label_smoothing=0.2), x, q, w, second=False)
    _check(lambda a, c: csoftmax.softmax_cross_entropy(a, t, weight=c, temperature=0.8, where=mask), x, w,
           second=False)
    with pytest.raises(RuntimeError, match="once_differentiable|not have a grad_fn|double backward|differentiate"):
        (g,) = torch.autograd.grad(csoftmax.softmax_cross_entropy(x, t), x, create_graph=True)
        torch.autograd.grad(g.sum(), x)


# ---- a training step ------------------------------------------------------------------------------
def test_a_training_step_matches_torch():
    """One step of a small classifier with csoftmax's cross-entropy and with torch's: the
    same loss, the same parameters after SGD."""
    torch.manual_seed(0)
    X = torch.randn(64, 10)
    y = torch.randint(0, 4, (64,))
    nets = [torch.nn.Linear(10, 4) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    losses = []
    for net, loss_fn in zip(nets, (csoftmax.softmax_cross_entropy, F.cross_entropy)):
        opt = torch.optim.SGD(net.parameters(), lr=0.5)
        loss = loss_fn(net(X), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ---- CUDA tensors ---------------------------------------------------------------------------------
def _cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device for torch here: the CUDA tensor tests are skipped")
    pytest.importorskip("cupy", reason="CuPy is not installed: CUDA tensors need it for csoftmax's kernels")


@pytest.mark.gpu
def test_cuda_tensors_on_the_cuda_kernels():
    _cuda()
    x = _randn(64, 1000, dtype=torch.float32).cuda()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        y = csoftmax.softmax(x)
        lse = csoftmax.logsumexp(x, axis=1)
    stream.synchronize()
    assert y.device == x.device and y.dtype == torch.float32
    _close(y.cpu(), torch.softmax(x.cpu(), -1), rtol=2e-6, atol=1e-7)
    _close(lse.cpu(), torch.logsumexp(x.cpu(), 1), rtol=2e-6, atol=1e-5)
    xg = x.double().requires_grad_()
    t = torch.randint(0, 1000, (64,), device=x.device)
    (gx,) = torch.autograd.grad(csoftmax.softmax_cross_entropy(xg, t, label_smoothing=0.1), xg)
    (gt,) = torch.autograd.grad(F.cross_entropy(xg, t, label_smoothing=0.1), xg)
    _close(gx, gt)


def test_numpy_results_of_the_same_call():
    """The tensor path and the NumPy path compute the same values (the same core)."""
    x = _randn(7, 33, dtype=torch.float32)
    for op in ("softmax", "log_softmax"):
        np.testing.assert_array_equal(getattr(csoftmax, op)(x, temperature=0.3).numpy(),
                                      getattr(csoftmax, op)(x.numpy(), temperature=0.3))
