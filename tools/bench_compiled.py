"""Benchmarks of the compiled (numba) kernels: ``python tools/bench_compiled.py [what ...]``.

what: ``math`` (ns/element of the elementary functions, in cache, one thread),
``large`` (the issue's four large cases and every option, as a multiple of the
``np.copyto`` floor, float32 / float64), ``small`` (fixed cost of small calls, in
microseconds), ``compile`` (cold and cached compile time, in fresh processes).
Default: all.  Options: ``--rounds N`` (interleaved rounds, default 9),
``--workers K`` (default 2), ``--json PATH``.

Every timing is a median over interleaved rounds (each round runs every
implementation of a case once, in the same order), with ``os.getloadavg()``
printed next to it: this machine is shared, and a load above the core count
inflates every number, the floor included.

Both backends are timed as a caller runs them: the public
``NAME_value_and_grad(..., out=, workers=, backend="numba" | "numpy")`` (validation, the
mean denominators, the kernel and the reduction of the per-row losses).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


def load():
    return os.getloadavg()[0]


CLOCK = time.perf_counter


def median_rounds(fns, rounds):
    """Interleaved rounds: ``{name: median seconds}`` (wall clock, or with ``--cpu`` the
    CPU time of the calling thread, which time-sharing with other processes does not
    inflate; use it with ``--workers 1``)."""
    times = {k: [] for k in fns}
    for f in fns.values():      # warm-up (compile / cache load, first touch)
        f()
    for _ in range(rounds):
        for k, f in fns.items():
            t0 = CLOCK()
            f()
            times[k].append(CLOCK() - t0)
    BEST.clear()
    BEST.update({k: float(np.min(v)) for k, v in times.items()})
    return {k: float(np.median(v)) for k, v in times.items()}


BEST = {}   # minimum over the rounds of the last median_rounds() call


# ------------------------------------------------------------------------------ callers

# ------------------------------------------------------------------------------ math

def bench_math():
    from numba import njit
    from ce_reference.compiled import _math as M

    def mk(f, two=False, three=False):
        if three:
            @njit(error_model="numpy")
            def loop(x, out, reps):
                s = M.as_dtype_of(x, 30.0)
                inv = M.as_dtype_of(x, 1.0) / s
                for _ in range(reps):
                    for i in range(x.size):
                        a, b = f(x[i], s, inv)
                        out[i] = a + b
            return loop
        if two:
            @njit(error_model="numpy")
            def loop(x, out, reps):
                for _ in range(reps):
                    for i in range(x.size):
                        a, b = f(x[i])
                        out[i] = a + b
            return loop

        @njit(error_model="numpy")
        def loop(x, out, reps):
            for _ in range(reps):
                for i in range(x.size):
                    out[i] = f(x[i])
        return loop

    n, reps = 4096, 4000
    rows = []
    cases = [("exp (x <= 0)", M.exp_nonpos, (-80, 0), np.exp, {}),
             ("log1p", M.log1p, (0, 1), np.log1p, {}),
             ("log", M.log_pos, (1e-3, 1), np.log, {}),
             ("tanh + sech^2", M.tanh_sech2, (-5, 5), None, {"two": True}),
             ("softcap (s tanh(x/s), sech^2)", M.softcap, (-50, 50), None, {"three": True})]
    for name, f, (lo, hi), npf, kw in cases:
        for dt in (np.float32, np.float64):
            x = np.linspace(lo, hi, n).astype(dt)
            o = np.empty_like(x)
            loop = mk(f, **kw)
            loop(x, o, 1)
            best = min(_cpu(lambda: loop(x, o, reps)) for _ in range(5)) / (n * reps) * 1e9
            npt = None
            if npf is not None:
                npt = min(_cpu(lambda: [npf(x, out=o) for _ in range(reps // 10)])
                          for _ in range(3)) / (n * reps // 10) * 1e9
            rows.append({"function": name, "dtype": np.dtype(dt).name, "ns_per_elem": best,
                         "numpy_ns_per_elem": npt, "load": load()})
            print(f"| {name} | {np.dtype(dt).name} | {best:.3f} | "
                  f"{'-' if npt is None else f'{npt:.3f}'} | {load():.1f} |", flush=True)
    return rows


def _cpu(f):
    t0 = time.thread_time()
    f()
    return time.thread_time() - t0


# ------------------------------------------------------------------------------ large

def bench_large(rounds, workers):
    import ce_reference as ce
    rng = np.random.default_rng(0)
    results = []
    print("| case | option | compiled / copy | numpy kernels / copy | compiled ms | numpy ms "
          "| copy ms | best-of-rounds compiled / copy | load |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    softmax_cases = [((4096, 8192), np.float32), ((256, 131072), np.float32),
                     ((1_000_000, 10), np.float32), ((4096, 8192), np.float64)]
    for shape, dt in softmax_cases:
        x = (rng.standard_normal(shape) * 2).astype(dt)
        N, C = shape
        ti = rng.integers(0, C, N)
        options = [("plain", {}), ("weight", {"weight": rng.uniform(0.5, 2, C).astype(dt)}),
                   ("ignore_index", {"ignore_index": 0}), ("label_smoothing", {"label_smoothing": 0.1}),
                   ("probability targets", {"_prob": True}), ("z_loss", {"z_loss": 1e-4}),
                   ("softcap", {"softcap": 30.0})]
        if dt == np.float64:
            options = options[:1]
        probs = None
        for oname, opts in options:
            opts = dict(opts)
            if opts.pop("_prob", False):
                if probs is None:
                    probs = rng.random(shape).astype(dt)
                    probs /= probs.sum(axis=1, keepdims=True)
                t = probs
            else:
                t = ti
            out = np.empty_like(x)
            out_np = np.empty_like(x)
            # both backends through the public function, as a caller runs them
            fns = {"copy": lambda: np.copyto(out, x),
                   "compiled": lambda: ce.softmax_cross_entropy_value_and_grad(
                       x, t, out=out, workers=workers, backend="numba", **opts),
                   "numpy": lambda: ce.softmax_cross_entropy_value_and_grad(
                       x, t, out=out_np, workers=workers, backend="numpy", **opts)}
            np_ok = True
            med = median_rounds(fns, rounds)
            r = {"case": f"softmax {shape} {np.dtype(dt).name}", "option": oname,
                 "compiled_ratio": med["compiled"] / med["copy"],
                 "numpy_ratio": med["numpy"] / med["copy"] if np_ok else None,
                 "compiled_ms": med["compiled"] * 1e3,
                 "numpy_ms": med["numpy"] * 1e3 if np_ok else None,
                 "copy_ms": med["copy"] * 1e3, "best_ratio": BEST["compiled"] / BEST["copy"],
                 "load": load()}
            results.append(r)
            _print_row(r)
    n = 10_000_000
    x = (rng.standard_normal(n) * 3).astype(np.float32)
    y = (rng.random(n) < 0.5).astype(np.float32)
    for oname, opts in [("plain", {}), ("weight", {"weight": rng.random(n).astype(np.float32)}),
                        ("pos_weight", {"pos_weight": np.array([2.0], np.float32)})]:
        out = np.empty_like(x)
        out_np = np.empty_like(x)
        fns = {"copy": lambda: np.copyto(out, x),
               "compiled": lambda: ce.binary_cross_entropy_with_logits_value_and_grad(
                   x, y, out=out, workers=workers, backend="numba", **opts),
               "numpy": lambda: ce.binary_cross_entropy_with_logits_value_and_grad(
                   x, y, out=out_np, workers=workers, backend="numpy", **opts)}
        med = median_rounds(fns, rounds)
        r = {"case": "BCE-logits 1e7 float32", "option": oname,
             "compiled_ratio": med["compiled"] / med["copy"],
             "numpy_ratio": med["numpy"] / med["copy"], "compiled_ms": med["compiled"] * 1e3,
             "numpy_ms": med["numpy"] * 1e3, "copy_ms": med["copy"] * 1e3,
             "best_ratio": BEST["compiled"] / BEST["copy"], "load": load()}
        results.append(r)
        _print_row(r)
    return results


def _print_row(r):
    f = (lambda v: "-" if v is None else f"{v:.2f}")
    print(f"| {r['case']} | {r['option']} | {f(r['compiled_ratio'])} | {f(r['numpy_ratio'])} | "
          f"{f(r['compiled_ms'])} | {f(r['numpy_ms'])} | {f(r['copy_ms'])} | {f(r['best_ratio'])} "
          f"| {r['load']:.1f} |",
          flush=True)


# ------------------------------------------------------------------------------ small

def bench_small(rounds, workers):
    import ce_reference as ce
    rng = np.random.default_rng(0)
    rows = []
    print("| (N, C) float32 | compiled us | numpy kernels us | np.copyto us | load |")
    print("|---|---:|---:|---:|---:|")
    for N, C in [(32, 10), (64, 1000), (256, 1000), (512, 8192)]:
        x = rng.standard_normal((N, C)).astype(np.float32)
        t = rng.integers(0, C, N)
        out = np.empty_like(x)
        out_np = np.empty_like(x)
        reps = 50 if N * C < 10**6 else 10
        fns = {"copy": lambda: [np.copyto(out, x) for _ in range(reps)],
               "compiled": lambda: [ce.softmax_cross_entropy_value_and_grad(
                   x, t, out=out, workers=workers, backend="numba") for _ in range(reps)],
               "numpy": lambda: [ce.softmax_cross_entropy_value_and_grad(
                   x, t, out=out_np, workers=workers, backend="numpy") for _ in range(reps)]}
        med = median_rounds(fns, max(rounds, 9))
        r = {"shape": [N, C], **{k + "_us": v / reps * 1e6 for k, v in med.items()},
             "load": load()}
        rows.append(r)
        print(f"| ({N}, {C}) | {r['compiled_us']:.1f} | {r['numpy_us']:.0f} | {r['copy_us']:.1f} "
              f"| {r['load']:.1f} |", flush=True)
    return rows


# ------------------------------------------------------------------------------ compile

def bench_compile():
    code = ("import time; t0 = time.perf_counter(); import ce_reference.compiled as c; "
            "t1 = time.perf_counter(); info = c.warmup(); "
            "print(round(t1 - t0, 3), round(info['seconds'], 3), info['compiled'], info['loaded'])")
    rows = []
    with tempfile.TemporaryDirectory() as d:
        env = dict(os.environ, CE_REFERENCE_CACHE_DIR=d)
        for label in ("cold (empty cache)", "cached"):
            out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                 text=True, check=True).stdout.split()
            r = {"run": label, "import_s": float(out[0]), "warmup_s": float(out[1]),
                 "compiled": int(out[2]), "loaded": int(out[3]), "load": load()}
            rows.append(r)
            print(f"| {label} | {r['import_s']:.2f} | {r['warmup_s']:.2f} | {r['compiled']} | "
                  f"{r['loaded']} | {r['load']:.1f} |", flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("what", nargs="*", default=["math", "large", "small", "compile"])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json")
    ap.add_argument("--cpu", action="store_true",
                    help="time the calling thread's CPU time instead of the wall clock")
    a = ap.parse_args(argv)
    global CLOCK
    if a.cpu:
        CLOCK = time.thread_time
    res = {"load_start": os.getloadavg(), "workers": a.workers, "rounds": a.rounds,
           "clock": "thread cpu time" if a.cpu else "wall"}
    import numba
    res["versions"] = {"numpy": np.__version__, "numba": numba.__version__,
                       "python": sys.version.split()[0]}
    print(f"# load {os.getloadavg()}, numba {numba.__version__}, numpy {np.__version__}, "
          f"workers {a.workers}, clock {res['clock']}, rounds {a.rounds}")
    if "compile" in a.what:
        print("\n| run | import s | warmup s | compiled | loaded | load |\n|---|---:|---:|---:|---:|---:|")
        res["compile"] = bench_compile()
    if "math" in a.what:
        print("\n| function | dtype | ns/element | NumPy ns/element | load |\n|---|---|---:|---:|---:|")
        res["math"] = bench_math()
    if "small" in a.what:
        print()
        res["small"] = bench_small(a.rounds, a.workers)
    if "large" in a.what:
        print()
        res["large"] = bench_large(a.rounds, a.workers)
    res["load_end"] = os.getloadavg()
    print(f"\n# load at the end {res['load_end']}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
