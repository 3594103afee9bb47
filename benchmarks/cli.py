"""Command line of the benchmark suite (``python -m benchmarks --help``)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc
import warnings

import numpy as np

from ce_reference.registry import LOSSES
from ce_reference.spec import BenchCase

from . import impls, linear

MiB = 1 << 20

def runner(spec):
    """The benchmark of a loss's structure: a linear cross-entropy has its own inputs,
    floor (the three GEMMs) and peers (:mod:`benchmarks.linear`)."""
    return linear.run_case if spec.structure == "linear" else run_case


def _default_case(spec):
    """A benchmark case for a loss whose spec names none."""
    shape = (4096, 1024) if spec.structure == "classes" else (1_000_000,)
    return BenchCase(shape, spec.targets[0])


def cases(specs=None):
    """``[(spec, BenchCase)]`` of every registered loss (the registry is the list)."""
    specs = list(LOSSES.values()) if specs is None else specs
    return [(spec, case) for spec in specs for case in (spec.benchmarks or (_default_case(spec),))]


def case_key(spec, case) -> str:
    return f"{spec.name}-{case.key}"


def _inputs(spec, shape, targets, dtype, seed=0):
    """Seeded inputs of ``shape`` (class axis last) for the loss's input domain and targets."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal(shape, dtype=np.float64) * 3
    if spec.input == "logits":
        x = z.astype(dtype)
    else:
        p = np.exp(z - z.max(axis=-1, keepdims=True)) if spec.structure == "classes" else \
            1 / (1 + np.exp(-z))
        if spec.structure == "classes":
            p /= p.sum(axis=-1, keepdims=True)
        x = (p if spec.input == "probs" else np.log(p)).astype(dtype)
    if targets == "index":
        return x, rng.integers(0, shape[-1], shape[:-1])
    if targets == "hard":
        return x, (rng.random(shape) < 0.5).astype(dtype)
    q = rng.random(shape)
    if spec.structure == "classes":
        q /= q.sum(axis=-1, keepdims=True)
    return x, q.astype(dtype)


def _min_bytes(x, t):
    """Least DRAM traffic of a fused forward+backward: read the inputs, write the gradient."""
    return 2 * x.nbytes + (t.nbytes if t.shape == x.shape else 0)


def _peak_bytes(f):
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        f()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def run_case(spec, case, dtype, repeat, workers, only=None, log=print, shape=None):
    """Time every implementation of one case, interleaved round by round."""
    shape = case.shape if shape is None else shape
    options = dict(case.options)
    x, t = _inputs(spec, shape, case.targets, dtype)
    fns, mem_ok = {}, {}
    for name, (factory, traced) in impls.implementations(spec, case.options).items():
        if only and name not in only:
            continue
        f = factory(x, t, workers, **options)
        if f is None:
            log(f"  {name}: not installed, skipped")
            continue
        t0 = time.perf_counter()
        f()                                    # warm-up: JIT compile, first touch
        log(f"  {name}: warm-up {time.perf_counter() - t0:.2f} s")
        fns[name], mem_ok[name] = f, traced
    times = {name: [] for name in fns}
    for _ in range(repeat):                    # interleaved: load drifts hit all alike
        for name, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    rows = []
    floor = statistics.median(times[impls.FLOOR]) if impls.FLOOR in times else None
    for name, ts in times.items():
        med = statistics.median(ts)
        nbytes = 2 * x.nbytes if name == impls.FLOOR else _min_bytes(x, t)
        peak = _peak_bytes(fns[name]) if mem_ok[name] else None
        rows.append({
            "implementation": name, "median_s": med, "min_s": min(ts), "times_s": ts,
            "gb_per_s": nbytes / med / 1e9,
            "x_floor": med / floor if floor else None,
            "peak_extra_bytes": peak,
        })
    fused = next((r["median_s"] for r in rows if r["implementation"] == impls.FUSED), None)
    for r in rows:
        r["peer_over_fused"] = r["median_s"] / fused if fused else None
    return {"kind": spec.label, "loss": spec.name, "shape": list(shape),
            "options": {k: v for k, v in case.options},
            "dtype": np.dtype(dtype).name, "input_bytes": x.nbytes, "grad_bytes": x.nbytes,
            "rows": rows, "goals": [list(g) for g in case.goals]}


def check_targets(results):
    """The cases' goals (float32 only) and the memory bounds, each as measured."""
    out = []
    for case in results:
        if case["dtype"] != "float32":
            continue
        rows = {r["implementation"]: r for r in case["rows"]}
        fused = rows.get(impls.FUSED)
        for what, cmp, goal in case.get("goals", ()):
            if fused is None:
                continue
            if what == "floor":
                value = fused["x_floor"]
                label = f"fused / {case.get('floor', 'np.copyto')} time"
            elif what in rows:
                value, label = rows[what]["median_s"] / fused["median_s"], f"{what} / fused time"
            else:
                continue
            met = {"<=": value <= goal, ">=": value >= goal, ">": value > goal}[cmp]
            out.append({"kind": case["kind"], "shape": case["shape"], "quantity": label,
                        "goal": f"{cmp} {goal}", "measured": value, "met": bool(met)})
    for case in results:  # memory targets, every case measured
        rows = {r["implementation"]: r for r in case["rows"]}
        extra = case.get("extra_limit_bytes", 32 * MiB)
        for name, limit, label in (
                (impls.FUSED, case["grad_bytes"] + extra,
                 f"peak extra <= grad + {extra / MiB:.0f} MiB"),
                (impls.FUSED + ", out=", extra, f"peak extra with out= <= {extra / MiB:.0f} MiB")):
            if name in rows and rows[name]["peak_extra_bytes"] is not None:
                peak = rows[name]["peak_extra_bytes"]
                out.append({"kind": case["kind"], "shape": case["shape"],
                            "dtype": case["dtype"], "quantity": label,
                            "goal": f"<= {limit / MiB:.0f} MiB", "measured": peak / MiB,
                            "met": bool(peak <= limit)})
    return out


def machine_info(workers):
    info = {"python": platform.python_version(), "platform": platform.platform(),
            "cores_available": workers, "loadavg_start": os.getloadavg()}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        keep = ("Model name", "CPU(s)", "Thread(s) per core", "L1d cache", "L2 cache",
                "L3 cache", "Hypervisor vendor")
        info["lscpu"] = {k.strip(): v.strip() for k, _, v in
                         (line.partition(":") for line in lscpu.splitlines())
                         if k.strip() in keep}
    except (OSError, subprocess.SubprocessError):
        pass
    versions = {}
    for mod in ("ce_reference", "numpy", "scipy", "jax", "jaxlib", "optax", "torch"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            versions[mod] = None
    info["versions"] = versions
    threads = {"ce_reference workers": workers}
    try:
        import torch
        threads["torch.get_num_threads()"] = torch.get_num_threads()
    except ImportError:
        pass
    try:
        import jax
        threads["jax devices"] = [str(d) for d in jax.devices()]
        threads["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "")
    except ImportError:
        pass
    try:
        from threadpoolctl import threadpool_info
        threads["blas/openmp pools"] = [
            {k: p.get(k) for k in ("internal_api", "num_threads", "version")}
            for p in threadpool_info()]
    except ImportError:
        pass
    threads["OPENBLAS env"] = {k: v for k, v in os.environ.items() if k.startswith("OPENBLAS")}
    info["threads"] = threads
    try:
        from numpy.lib.introspect import opt_func_info
        info["numpy exp/log SIMD"] = {
            f: v.get("ff", v.get("dd", {})).get("current")
            for f, v in opt_func_info(func_name="^exp$|^log$|log1p").items()}
    except (ImportError, AttributeError):
        pass
    return info


def _fmt(v, spec):
    return "—" if v is None else format(v, spec)


def print_report(results, targets, info):
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # plain text fallback
        Console = None
    console = Console() if Console else None
    for case in results:
        title = (f"{case['kind']} {tuple(case['shape'])} {case['dtype']}  "
                 f"({case['input_bytes'] / MiB:.0f} MiB input)")
        cols = ["implementation", "median ms", "min ms", "GB/s", "× floor", "time / fused",
                "peak extra MiB"]
        lines = [[r["implementation"], _fmt(r["median_s"] * 1e3, ".1f"),
                  _fmt(r["min_s"] * 1e3, ".1f"),
                  _fmt(r["gb_per_s"], ".2f"), _fmt(r["x_floor"], ".2f"),
                  _fmt(r["peer_over_fused"], ".2f"),
                  _fmt(None if r["peak_extra_bytes"] is None else r["peak_extra_bytes"] / MiB,
                       ".1f")] for r in case["rows"]]
        if console:
            table = Table(title=title)
            for c in cols:
                table.add_column(c, justify="left" if c == "implementation" else "right")
            for line in lines:
                table.add_row(*line)
            console.print(table)
        else:
            print(title)
            for line in [cols] + lines:
                print("  " + " | ".join(line))
    lines = [[f"{t['kind']} {tuple(t['shape'])} {t.get('dtype', 'float32')}", t["quantity"],
              t["goal"], f"{t['measured']:.2f}", "met" if t["met"] else "NOT met"]
             for t in targets]
    cols = ["case", "quantity", "goal", "measured", ""]
    if console:
        table = Table(title="speed goals (ratios) and memory bounds")
        for c in cols:
            table.add_column(c)
        for line in lines:
            table.add_row(*line)
        console.print(table)
    else:
        for line in [cols] + lines:
            print("  " + " | ".join(line))
    print(f"load average start {info['loadavg_start']}, end {info.get('loadavg_end')}; "
          f"threads {info['threads'].get('ce_reference workers')}; "
          f"versions {info['versions']}")


def markdown_tables(results, targets):
    """The tables in Markdown (for docs/benchmarks.md)."""
    out = []
    for case in results:
        out.append(f"**{case['kind']} {tuple(case['shape'])} {case['dtype']}**\n")
        out.append("| implementation | median ms | min ms | GB/s | × floor | time / fused "
                   "| peak extra MiB |")
        out.append("|---|---:|---:|---:|---:|---:|---:|")
        for r in case["rows"]:
            out.append(f"| {r['implementation']} | {r['median_s'] * 1e3:.1f} | "
                       f"{r['min_s'] * 1e3:.1f} | "
                       f"{_fmt(r['gb_per_s'], '.2f')} | {_fmt(r['x_floor'], '.2f')} | "
                       f"{_fmt(r['peer_over_fused'], '.2f')} | "
                       f"{_fmt(None if r['peak_extra_bytes'] is None else r['peak_extra_bytes'] / MiB, '.1f')} |")
        out.append("")
    out.append("| case | quantity | goal | measured | |")
    out.append("|---|---|---|---:|---|")
    for t in targets:
        out.append(f"| {t['kind']} {tuple(t['shape'])} {t.get('dtype', 'float32')} | "
                   f"{t['quantity']} | {t['goal']} | {t['measured']:.2f} | "
                   f"{'met' if t['met'] else '**not met**'} |")
    return "\n".join(out)


def sweep_markdown(sweep):
    """Each implementation's time over the floor's, per size of the sweeps."""
    out = ["| loss | shape | " + " | ".join(["implementation", "× floor", "time / fused"]) + " |",
           "|---|---|---|---:|---:|"]
    for case in sweep:
        for r in case["rows"]:
            out.append(f"| {case['kind']} | {tuple(case['shape'])} | {r['implementation']} | "
                       f"{_fmt(r['x_floor'], '.2f')} | {_fmt(r['peer_over_fused'], '.2f')} |")
    return "\n".join(out)


def size_sweep(dtype, repeat, workers, log, selected=None):
    """Every case with a ``sweep`` over its shapes, for the throughput plot."""
    sweep = []
    for spec, case in selected or cases():
        for shape in case.sweep:
            log(f"sweep {spec.name} {shape} {np.dtype(dtype).name}")
            only = None if spec.structure == "linear" else {
                impls.FLOOR, impls.FUSED, "jax.jit + optax", "torch eager", "scipy.special"}
            sweep.append(runner(spec)(spec, case, dtype, repeat, workers, shape=shape,
                                      only=only, log=log))
    return sweep


def plot(sweep, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("--plot needs matplotlib (pip install 'ce_reference[bench]'); no plot drawn",
              file=sys.stderr)
        return False
    sweep = [c for c in sweep if c["rows"][0]["gb_per_s"] is not None]   # memory-bound ones
    if not sweep:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    first = sweep[0]
    sweep = [c for c in sweep if c["loss"] == first["loss"]]       # one loss per plot
    names = [r["implementation"] for r in first["rows"]]
    for name in names:
        xs = [c["input_bytes"] / MiB for c in sweep]
        ys = [next(r["gb_per_s"] for r in c["rows"] if r["implementation"] == name)
              for c in sweep]
        if name == impls.FLOOR:
            ax.plot(xs, ys, "k--", lw=2, label="np.copyto (floor: read + write)")
        else:
            ax.plot(xs, ys, "o-", label=name)
    ax.set_xscale("log")
    ax.set_xlabel(f"input size (MiB), shapes {sweep[0]['shape']} .. {sweep[-1]['shape']}, "
                  f"{sweep[0]['dtype']}")
    ax.set_ylabel("GB/s (read input + write gradient)")
    ax.set_title(f"{first['loss']} forward + backward")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def main(argv=None):
    from ce_reference.kernels import _blocks as _fused

    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    ap.add_argument("--quick", action="store_true",
                    help="float32 only, 3 interleaved rounds (< 2 minutes)")
    ap.add_argument("--repeat", type=int, default=None,
                    help="timed rounds per implementation (default 7, --quick 3)")
    ap.add_argument("--dtype", choices=["float32", "float64", "both"], default=None,
                    help="default: both (float32 with --quick)")
    ap.add_argument("--workers", type=int, default=None,
                    help="threads for ce_reference and torch (default: available cores)")
    ap.add_argument("--json", metavar="PATH", help="write all results as JSON")
    ap.add_argument("--plot", metavar="PATH",
                    help="draw GB/s against size (the cases with a size sweep) with the floor "
                         "as a line")
    ap.add_argument("--markdown", metavar="PATH", help="write the tables as Markdown")
    ap.add_argument("--sweep", action="store_true",
                    help="also time the size sweeps of the cases that have one (float32): "
                         "softmax over the batch size, linear cross-entropy over V")
    ap.add_argument("--linear-memory", metavar="N,H,V", default=None,
                    help="also measure linear cross-entropy's peak memory (RSS, each "
                         "implementation in a fresh process, and tracemalloc) at this size, "
                         "float32; the issue's size is 8192,1024,65536 (about 5 minutes)")
    keys = [case_key(s, c) for s, c in cases()]
    ap.add_argument("--case", action="append", choices=keys, metavar="LOSS-SHAPE",
                    help="run only these cases (repeatable): " + ", ".join(keys))
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", module="jax")
    workers = _fused.resolve_workers(args.workers)
    repeat = args.repeat or (3 if args.quick else 7)
    dtype = args.dtype or ("float32" if args.quick else "both")
    dtypes = [np.float32, np.float64] if dtype == "both" else [np.dtype(dtype).type]
    info = machine_info(workers)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    t_start = time.perf_counter()
    results = []
    selected = [(s, c) for s, c in cases() if not args.case or case_key(s, c) in args.case]
    for dt in dtypes:
        for spec, case in selected:
            log(f"{spec.name} {case.shape} {np.dtype(dt).name}")
            results.append(runner(spec)(spec, case, dt, repeat, workers, log=log))
    sweep = None
    if args.plot or args.sweep:
        sweep = size_sweep(np.float32, repeat, workers, log, selected)
    memory = None
    if args.linear_memory:
        shape = tuple(int(d) for d in args.linear_memory.split(","))
        memory = {"shape": list(shape), "peaks": linear.rss_peaks(shape, "float32", workers,
                                                                  log=log)}
    info["loadavg_end"] = os.getloadavg()
    info["wall_s"] = time.perf_counter() - t_start
    targets = check_targets(results)
    print_report(results, targets, info)
    if args.plot and sweep:
        if plot(sweep, args.plot):
            log(f"plot written to {args.plot}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": info, "repeat": repeat, "results": results,
                       "targets": targets, "sweep": sweep, "linear_memory": memory}, fh,
                      indent=1, default=str)
        log(f"results written to {args.json}")
    extra_md = []
    if sweep:
        extra_md.append(sweep_markdown(sweep))
    if memory:
        extra_md.append(linear.memory_markdown(memory["shape"], "float32", memory["peaks"]))
        print(extra_md[-1])
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write("\n\n".join([markdown_tables(results, targets)] + extra_md) + "\n")
    log(f"wall time {info['wall_s']:.0f} s")
    return 0
