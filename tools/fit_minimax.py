"""Remez fits of the polynomials in ce_reference/compiled/_math.py (run once; prints coefficients).

exp:  e^r ~ 1 + r + r^2 P(r) on |r| <= ln2/2, minimax in relative error of e^r.
The printed coefficients are rounded to the target precision (float32 / float64);
the accuracy of the rounded polynomial inside the whole algorithm is what
tests/test_compiled_math.py measures.
"""
import sys
import mpmath as mp
import numpy as np

mp.mp.dps = 60


def remez(f, basis, weight, a, b, iters=30, grid=4001):
    """Minimise max |weight(x) (sum c_k basis_k(x) - f(x))| over [a, b]."""
    n = len(basis)
    # initial reference: Chebyshev extrema
    ref = [mp.mpf(a + b) / 2 - mp.mpf(b - a) / 2 * mp.cos(mp.pi * (i + mp.mpf(0.3)) / (n + 1)) for i in range(n + 1)]
    xs = [mp.mpf(a) + (mp.mpf(b) - a) * i / grid for i in range(grid + 1)]
    for it in range(iters):
        # solve sum c_k B_k(x_i) - f(x_i) = (-1)^i E / weight(x_i)
        A = mp.matrix(n + 1, n + 1)
        rhs = mp.matrix(n + 1, 1)
        for i, x in enumerate(ref):
            for k in range(n):
                A[i, k] = basis[k](x)
            A[i, n] = (-1) ** i / weight(x)
            rhs[i] = f(x)
        sol = mp.lu_solve(A, rhs)
        c = [sol[k] for k in range(n)]
        E = sol[n]

        def err(x):
            return weight(x) * (sum(c[k] * basis[k](x) for k in range(n)) - f(x))
        vals = [err(x) for x in xs]
        # one extremum per interval between consecutive sign changes of err
        segs, cur = [], [0]
        for i in range(1, len(xs)):
            if mp.sign(vals[i]) != mp.sign(vals[cur[-1]]) and vals[i] != 0:
                segs.append(cur)
                cur = [i]
            else:
                cur.append(i)
        segs.append(cur)
        alt = [max(((xs[i], vals[i]) for i in seg), key=lambda t: abs(t[1])) for seg in segs]
        while len(alt) > n + 1:
            if abs(alt[0][1]) < abs(alt[-1][1]):
                alt.pop(0)
            else:
                alt.pop()
        if len(alt) < n + 1:
            print("  (fewer alternations than needed; stopping)", file=sys.stderr)
            break
        ref = [x for x, _ in alt]
        maxerr = max(abs(v) for v in vals)
    return c, maxerr


def fit_exp(deg_p):
    h = mp.log(2) / 2
    f = lambda r: (mp.exp(r) - 1 - r) / r**2 if r != 0 else mp.mpf(1) / 2
    basis = [(lambda k: (lambda r: r**k))(k) for k in range(deg_p + 1)]
    weight = lambda r: r**2 / mp.exp(r) if r != 0 else mp.mpf(0)
    # weight 0 at r = 0 breaks the system: fit on the relative error with r^2 factored in
    weight = lambda r: (r**2 if r != 0 else mp.mpf('1e-30')) / mp.exp(r)
    return remez(f, basis, weight, -h, h)


if __name__ == "__main__":
    for deg, dt in ((2, np.float32), (3, np.float32), (4, np.float32), (8, np.float64), (9, np.float64)):
        c, e = fit_exp(deg)
        print(f"exp P degree {deg}: max rel err {mp.nstr(e, 5)} ({float(e) / np.finfo(dt).eps * 2:.3f} half-ulp units)")
        print("   ", [repr(dt(float(ci))) if dt is np.float32 else repr(float(ci)) for ci in c])
