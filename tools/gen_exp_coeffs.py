"""Derive the polynomial coefficients of csoftmax's exp, in src/backends/common/csm_expconst.h
(shared by the C core's vector exp and the CUDA kernels).

exp(r) is written 1 + r + r^2 * P(r) on |r| <= ln(2)/2 (plus a margin for the folded-in
correction term). P is fitted to (e^r - 1 - r) / r^2 with a minimax (Remez) iteration on
the relative error of the whole expression, in mpmath. Run it to regenerate the constants;
it prints the two macros as the header stores them (highest degree first, for Horner's
rule):

    python tools/gen_exp_coeffs.py
"""
import mpmath as mp

mp.mp.dps = 60
A = mp.mpf("0.35")   # ln(2)/2 = 0.34657..., plus margin


def f(r):
    # (e^r - 1 - r) / r^2 as its Taylor series: no cancellation near 0
    return mp.fsum(r**k / mp.factorial(k + 2) for k in range(45))


def weight(r):
    # relative error of P; it enters exp(r) further damped by r^2 / e^r <= 0.18
    return 1 / f(r)


def remez(deg, iters=8):
    n = deg + 2
    xs = [A * mp.cos(mp.pi * (n - 1 - i) / (n - 1)) for i in range(n)]
    for _ in range(iters):  # converges in a handful of steps
        # solve sum c_j x_i^j + (-1)^i E / w(x_i) = f(x_i)
        M = mp.matrix(n, n)
        b = mp.matrix(n, 1)
        for i, x in enumerate(xs):
            for j in range(deg + 1):
                M[i, j] = x**j
            w = weight(x)
            M[i, deg + 1] = (-1) ** i / w if w != 0 else 0
            b[i] = f(x)
        sol = mp.qr_solve(M, b)[0]
        c = [sol[j] for j in range(deg + 1)]
        err = lambda x: (f(x) - mp.polyval(c[::-1], x)) * weight(x)
        # new reference: the largest |err| in each run of constant sign
        grid = [A * (2 * mp.mpf(k) / 2000 - 1) for k in range(2001)]
        vals = [err(x) for x in grid]
        runs = []
        for x, v in zip(grid, vals):
            if runs and (v >= 0) == (runs[-1][1] >= 0):
                if abs(v) > abs(runs[-1][1]):
                    runs[-1] = (x, v)
            else:
                runs.append((x, v))
        while len(runs) > n:   # drop the smaller end until n alternating points remain
            runs.pop(0 if abs(runs[0][1]) < abs(runs[-1][1]) else -1)
        if len(runs) == n:
            xs = [x for x, _ in runs]
    maxerr = max(abs(v) for v in vals)
    return c, maxerr


for name, macro, deg, fmt in (("float", "F32", 5, "{:.9e}f"), ("double", "F64", 10, "{:.17e}")):
    c, e = remez(deg)
    print(f"/* {name}: P of degree {deg} (c{deg + 2} .. c2, highest first), max rel. error of P {mp.nstr(e, 2)} */")
    print(f"#define CSM_EXP_{macro}_POLY " + ", ".join(fmt.format(float(cj)) for cj in reversed(c)))
    print(f"#define CSM_EXP_{macro}_NPOLY {deg + 1}")
