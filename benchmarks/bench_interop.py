"""Interop benchmark: csoftmax on each library's own arrays against that library's own
softmax, in one run on one machine, same thread count -- and the largest gradient error
against each library's own autodiff, from the same run.

  torch   (4096, 1024) float32: forward (csoftmax.softmax / log_softmax vs torch's),
          forward+backward (y = f(x); y.backward(g), x requiring grad), cross-entropy
          forward+backward vs torch.nn.functional.cross_entropy; the per-call overhead
          on a (10,) tensor over the same call on its NumPy view
  jax     (4096, 1024) float32: plain calls vs jax.nn's (eager, and jitted); under jit,
          forward and forward+backward (jax.grad) vs jax.nn's under jit
  dask    (20000, 4096) float64, rows whole in chunks of (2000, 4096) and cut into chunks
          of (2000, 1024): csoftmax.softmax vs Dask's own formula (exp(x - max) / sum),
          forward+backward (softmax, then softmax_backward vs the formula's), logsumexp
          vs Dask's formula, each stored into a NumPy array; and NumPy in memory (the
          C core, and NumPy's formula) on the same data
Implementations alternate within each round; each figure is the median over rounds; the
ratios are the peer's time over csoftmax's (above 1: csoftmax is faster).

    python benchmarks/bench_interop.py                      # everything, 2 threads
    python benchmarks/bench_interop.py --only torch,jax --rounds 5
    python benchmarks/bench_interop.py --markdown out.md    # also write the tables
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import time

import numpy as np

import csoftmax
from csoftmax._bench.common import fmt_time
from csoftmax._bench.cpu import machine

SHAPE = (4096, 1024)


def median_times(impls, rounds, target=0.05):
    """{name: median seconds per call}; calls per timing calibrated to ~target s."""
    inner = {}
    for name, fn in impls.items():
        fn()
        t0 = time.perf_counter()
        fn()
        inner[name] = max(1, min(20000, int(target / max(time.perf_counter() - t0, 1e-7))))
    times = {name: [] for name in impls}
    for _ in range(rounds):
        for name, fn in impls.items():
            gc.collect()
            t0 = time.perf_counter()
            for _ in range(inner[name]):
                fn()
            times[name].append((time.perf_counter() - t0) / inner[name])
    return {name: statistics.median(ts) for name, ts in times.items()}


def rows_for(lib, case, med, ours, peers):
    return [(lib, case, fmt_time(med[ours]), peer, fmt_time(med[peer]), med[peer] / med[ours]) for peer in peers]


# ---- torch ------------------------------------------------------------------------------------------
def bench_torch(rounds, threads):
    import torch

    F = torch.nn.functional
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    x = torch.from_numpy((rng.standard_normal(SHAPE) * 3).astype(np.float32))
    g = torch.from_numpy(rng.standard_normal(SHAPE).astype(np.float32))
    labels = torch.from_numpy(rng.integers(0, SHAPE[1], SHAPE[0]))
    xr = x.clone().requires_grad_()
    rows = []
    for op in ("softmax", "log_softmax"):
        ours_f, theirs_f = getattr(csoftmax, op), getattr(torch, op)

        def fb(f):
            def run():
                xr.grad = None
                f(xr).backward(g)
            return run

        med = median_times({
            "csoftmax": lambda: ours_f(x), "torch": lambda: theirs_f(x, -1),
            "csoftmax fwd+bwd": fb(ours_f), "torch fwd+bwd": fb(lambda t: theirs_f(t, -1)),
        }, rounds)
        rows += rows_for("torch", f"{op} forward", med, "csoftmax", ["torch"])
        rows += rows_for("torch", f"{op} forward+backward", med, "csoftmax fwd+bwd", ["torch fwd+bwd"])

    def xent(f):
        def run():
            xr.grad = None
            f(xr, labels).backward()
        return run

    med = median_times({"csoftmax": xent(csoftmax.softmax_cross_entropy), "torch": xent(F.cross_entropy)}, rounds)
    rows += rows_for("torch", "cross-entropy forward+backward", med, "csoftmax", ["torch"])
    small = torch.from_numpy(rng.standard_normal(10).astype(np.float32))
    view = small.numpy()
    med = median_times({"tensor": lambda: csoftmax.softmax(small), "numpy view": lambda: csoftmax.softmax(view),
                        "torch": lambda: torch.softmax(small, -1)}, rounds, target=0.02)
    overhead = (med["tensor"] - med["numpy view"]) * 1e6
    rows.append(("torch", "(10,) per call", fmt_time(med["tensor"]), "torch", fmt_time(med["torch"]),
                 med["torch"] / med["tensor"]))
    notes = [f"torch {torch.__version__}, {threads} threads; a plain call on a (10,) tensor costs "
             f"{overhead:.2f} us more than on its NumPy view ({fmt_time(med['numpy view'])})"]
    return rows, notes, torch_gradient_errors()


def torch_gradient_errors():
    import torch

    F = torch.nn.functional
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(64, 5, 33, generator=gen, dtype=torch.float64) * 3).requires_grad_()
    g = torch.randn(64, 5, 33, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 5, (64, 33), generator=gen)
    errs = {}
    for op in ("softmax", "log_softmax"):
        for dim in (1, -1):
            a, = torch.autograd.grad(getattr(csoftmax, op)(x, axis=dim, temperature=0.7), x, g)
            b, = torch.autograd.grad(getattr(torch, op)(x / 0.7, dim), x, g)
            errs[f"{op}"] = max(errs.get(op, 0.0), float((a - b).abs().max()))
    a, = torch.autograd.grad(csoftmax.logsumexp(x, axis=1).sum(), x)
    b, = torch.autograd.grad(torch.logsumexp(x, 1).sum(), x)
    errs["logsumexp"] = float((a - b).abs().max())
    w = torch.rand(5, generator=gen, dtype=torch.float64) + 0.5
    e = 0.0
    for kw in ({}, {"weight": w, "label_smoothing": 0.1}, {"reduction": "sum", "ignore_index": 2}):
        a, = torch.autograd.grad(csoftmax.softmax_cross_entropy(x, labels, axis=1, **kw), x)
        b, = torch.autograd.grad(F.cross_entropy(x, labels, **kw), x)
        e = max(e, float((a - b).abs().max()))
    errs["cross_entropy"] = e
    return errs


# ---- JAX ------------------------------------------------------------------------------------------------
def bench_jax(rounds, threads):
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    x = jnp.asarray((rng.standard_normal(SHAPE) * 3).astype(np.float32))
    g = jnp.asarray(rng.standard_normal(SHAPE).astype(np.float32))
    labels = jnp.asarray(rng.integers(0, SHAPE[1], SHAPE[0]))
    rows = []
    for op in ("softmax", "log_softmax"):
        ours_f, theirs_f = getattr(csoftmax, op), getattr(jax.nn, op)
        jit_ours, jit_theirs = jax.jit(ours_f), jax.jit(theirs_f)
        gr_ours = jax.jit(jax.grad(lambda z: (ours_f(z) * g).sum()))
        gr_theirs = jax.jit(jax.grad(lambda z: (theirs_f(z) * g).sum()))
        med = median_times({
            "csoftmax": lambda: ours_f(x).block_until_ready(),
            "jax.nn (jit)": lambda: jit_theirs(x).block_until_ready(),
            "csoftmax (jit)": lambda: jit_ours(x).block_until_ready(),
            "csoftmax grad (jit)": lambda: gr_ours(x).block_until_ready(),
            "jax.nn grad (jit)": lambda: gr_theirs(x).block_until_ready(),
        }, rounds)
        rows += rows_for("jax", f"{op} forward, plain call", med, "csoftmax", ["jax.nn (jit)"])
        rows += rows_for("jax", f"{op} forward, under jit", med, "csoftmax (jit)", ["jax.nn (jit)"])
        rows += rows_for("jax", f"{op} forward+backward (grad, jit)", med, "csoftmax grad (jit)", ["jax.nn grad (jit)"])

    def xent_ref(z):
        return -jnp.take_along_axis(jax.nn.log_softmax(z), labels[:, None], 1).mean()

    ours = jax.jit(jax.grad(lambda z: csoftmax.softmax_cross_entropy(z, labels)))
    theirs = jax.jit(jax.grad(xent_ref))
    med = median_times({"csoftmax": lambda: ours(x).block_until_ready(),
                        "jax": lambda: theirs(x).block_until_ready()}, rounds)
    rows += rows_for("jax", "cross-entropy forward+backward (grad, jit)", med, "csoftmax", ["jax"])
    notes = [f"jax {jax.__version__} on {jax.devices()[0].platform}, XLA's own threads; "
             "jax.nn's functions jitted (their fastest form)"]
    return rows, notes, jax_gradient_errors()


def jax_gradient_errors():
    import jax
    import jax.numpy as jnp

    prev = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        x = jax.random.normal(jax.random.key(1), (64, 33), dtype=jnp.float64) * 3
        G = jax.random.normal(jax.random.key(2), (64, 33), dtype=jnp.float64)
        labels = jax.random.randint(jax.random.key(3), (64,), 0, 33)
        errs = {}
        for op in ("softmax", "log_softmax"):
            a = jax.grad(lambda z: (getattr(csoftmax, op)(z, temperature=0.7) * G).sum())(x)
            b = jax.grad(lambda z: (getattr(jax.nn, op)(z / 0.7) * G).sum())(x)
            errs[op] = float(jnp.abs(a - b).max())
        a = jax.grad(lambda z: csoftmax.logsumexp(z, axis=1).sum())(x)
        b = jax.grad(lambda z: jax.nn.logsumexp(z, axis=1).sum())(x)
        errs["logsumexp"] = float(jnp.abs(a - b).max())
        a = jax.grad(lambda z: csoftmax.softmax_cross_entropy(z, labels, label_smoothing=0.1))(x)

        def ref(z):
            lp = jax.nn.log_softmax(z)
            nll = -jnp.take_along_axis(lp, labels[:, None], 1)[:, 0]
            return (0.9 * nll - 0.1 * lp.mean(-1)).mean()

        errs["cross_entropy"] = float(jnp.abs(a - jax.grad(ref)(x)).max())
        return errs
    finally:
        jax.config.update("jax_enable_x64", prev)


# ---- Dask -----------------------------------------------------------------------------------------------
DASK_SHAPE = (20000, 4096)


def bench_dask(rounds, threads):
    import dask
    import dask.array as da

    rng = np.random.default_rng(0)
    a = rng.standard_normal(DASK_SHAPE) * 3
    gnp = rng.standard_normal(DASK_SHAPE)
    out = np.empty_like(a)
    rows = []

    def stored(arr):
        return lambda: da.store(arr, out, lock=False, scheduler="threads", num_workers=threads)

    def formula_softmax(x):
        e = da.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def formula_lse(x):
        m = x.max(axis=1, keepdims=True)
        return (m + da.log(da.exp(x - m).sum(axis=1, keepdims=True)))[:, 0]

    lse_out = np.empty(DASK_SHAPE[0])
    for chunks in ((2000, 4096), (2000, 1024)):
        x, g = da.from_array(a, chunks=chunks), da.from_array(gnp, chunks=chunks)
        ys = formula_softmax(x)
        impls = {
            "csoftmax": stored(csoftmax.softmax(x)),
            "dask formula": stored(ys),
            "csoftmax fwd+bwd": stored(csoftmax.softmax_backward(g, csoftmax.softmax(x))),
            "dask formula fwd+bwd": stored(ys * (g - (g * ys).sum(axis=1, keepdims=True))),
            "csoftmax lse": lambda x=x: da.store(csoftmax.logsumexp(x, axis=1), lse_out, lock=False,
                                                 num_workers=threads),
            "dask formula lse": lambda x=x: da.store(formula_lse(x), lse_out, lock=False, num_workers=threads),
        }
        if chunks[1] == DASK_SHAPE[1]:
            impls["numpy in memory (csoftmax)"] = lambda: csoftmax.softmax(a, out=out)
            impls["numpy in memory (formula)"] = lambda: np.divide(*_np_softmax_parts(a), out=out)
        with dask.config.set(scheduler="threads", num_workers=threads):
            med = median_times(impls, rounds, target=0.5)
        label = "rows whole" if chunks[1] == DASK_SHAPE[1] else "rows cut in 4"
        peers = ["dask formula"] + [k for k in impls if k.startswith("numpy")]
        rows += rows_for("dask", f"softmax, chunks {chunks} ({label})", med, "csoftmax", peers)
        rows += rows_for("dask", f"softmax+backward, chunks {chunks}", med, "csoftmax fwd+bwd", ["dask formula fwd+bwd"])
        rows += rows_for("dask", f"logsumexp, chunks {chunks}", med, "csoftmax lse", ["dask formula lse"])
    notes = [f"dask {dask.__version__}, threaded scheduler with {threads} workers; results stored into a NumPy "
             f"array ({a.nbytes / 2**20:.0f} MiB); C core threads: {threads}"]
    return rows, notes, dask_gradient_errors()


def _np_softmax_parts(a):
    e = np.exp(a - a.max(axis=1, keepdims=True))
    return e, e.sum(axis=1, keepdims=True)


def dask_gradient_errors():
    """Dask has no autodiff: its gradients (softmax_backward, cross-entropy's) against the
    same calls on the NumPy array in memory."""
    import dask.array as da

    rng = np.random.default_rng(1)
    x, g = rng.standard_normal((64, 300)) * 3, rng.standard_normal((64, 300))
    labels = rng.integers(0, 300, 64)
    xd, gd = da.from_array(x, chunks=(16, 100)), da.from_array(g, chunks=(16, 100))
    errs = {}
    for op in ("softmax", "log_softmax"):
        y = getattr(csoftmax, op)(x)
        got = getattr(csoftmax, f"{op}_backward")(gd, da.from_array(y, chunks=(16, 100))).compute()
        errs[op] = float(np.abs(got - getattr(csoftmax, f"{op}_backward")(g, y)).max())
    _, grad = csoftmax.softmax_cross_entropy(xd, da.from_array(labels, chunks=16), return_grad=True,
                                             label_smoothing=0.1)
    _, want = csoftmax.softmax_cross_entropy(x, labels, return_grad=True, label_smoothing=0.1)
    errs["cross_entropy"] = float(np.abs(grad.compute() - want).max())
    return errs


# ---- report -------------------------------------------------------------------------------------------
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--only", default="torch,jax,dask")
    ap.add_argument("--markdown", default=None)
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    try:
        import threadpoolctl

        limits = threadpoolctl.threadpool_limits(args.threads)  # noqa: F841 (in force while referenced)
    except ImportError:
        pass
    benches = {"torch": bench_torch, "jax": bench_jax, "dask": bench_dask}
    lines = [f"machine: {machine()}; median of {args.rounds} rounds", ""]
    rows, notes, errors = [], [], {}
    for lib in args.only.split(","):
        try:
            r, n, e = benches[lib](args.rounds, args.threads)
        except ImportError as exc:
            notes.append(f"{lib}: not installed ({exc})")
            continue
        rows += r
        notes += n
        errors[lib] = e
    lines += ["| library | case | csoftmax | peer | peer's time | peer / csoftmax |", "|---|---|---|---|---|---|"]
    lines += [f"| {lib} | {case} | {ours} | {peer} | {theirs} | {ratio:.2f} |"
              for lib, case, ours, peer, theirs, ratio in rows]
    lines += [""] + [f"- {n}" for n in notes] + ["", "Largest gradient error against the library's own autodiff "
                                                 "(float64; Dask: against the same call in memory):", ""]
    lines += ["| library | " + " | ".join(sorted({k for e in errors.values() for k in e})) + " |"]
    keys = sorted({k for e in errors.values() for k in e})
    lines += ["|---|" + "---|" * len(keys)]
    lines += [f"| {lib} | " + " | ".join(f"{e[k]:.1e}" if k in e else "" for k in keys) + " |"
              for lib, e in errors.items()]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
