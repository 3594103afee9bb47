"""Command line of the benchmark suite (``python -m benchmarks --help``)."""

from __future__ import annotations

import argparse
import json
import math
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
#: A timed round repeats a fast call until it lasts about this long (a single call of a
#: few microseconds is below what one clock reading resolves on a loaded machine); the
#: round's time is divided by the number of calls.
ROUND_SECONDS = 2e-3
#: ... but never more calls per round than this.
MAX_CALLS_PER_ROUND = 1000

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
    if targets == "log_soft":                   # log-probability targets (a teacher's)
        return x, np.log(q).astype(dtype)
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


def _calls_per_round(f):
    """How many calls of ``f`` make one timed round (see :data:`ROUND_SECONDS`)."""
    t0 = time.perf_counter()
    f()
    one = time.perf_counter() - t0
    return max(1, min(MAX_CALLS_PER_ROUND, math.ceil(ROUND_SECONDS / max(one, 1e-9))))


def _timed_round(f, calls):
    t0 = time.perf_counter()
    for _ in range(calls):
        f()
    return (time.perf_counter() - t0) / calls


def run_case(spec, case, dtype, repeat, workers, only=None, log=print, shape=None):
    """Time every implementation of one case, interleaved round by round (each round of a
    fast implementation repeats its call, :data:`ROUND_SECONDS`)."""
    shape = case.shape if shape is None else shape
    options = dict(case.options)
    x, t = _inputs(spec, shape, case.targets, dtype)
    fns, mem_ok, calls = {}, {}, {}
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
        fns[name], mem_ok[name], calls[name] = f, traced, _calls_per_round(f)
    times = {name: [] for name in fns}
    for _ in range(repeat):                    # interleaved: load drifts hit all alike
        for name, f in fns.items():
            times[name].append(_timed_round(f, calls[name]))
    rows = []
    floor = statistics.median(times[impls.FLOOR]) if impls.FLOOR in times else None
    for name, ts in times.items():
        med = statistics.median(ts)
        nbytes = 2 * x.nbytes if name == impls.FLOOR else _min_bytes(x, t)
        peak = _peak_bytes(fns[name]) if mem_ok[name] else None
        rows.append({
            "implementation": name, "median_s": med, "min_s": min(ts), "times_s": ts,
            "calls_per_round": calls[name], "gb_per_s": nbytes / med / 1e9,
            "x_floor": med / floor if floor else None,
            "peak_extra_bytes": peak,
        })
    impls.add_ratios(rows)
    return {"kind": spec.label, "loss": spec.name, "shape": list(shape),
            "options": {k: v for k, v in case.options},
            "dtype": np.dtype(dtype).name, "input_bytes": x.nbytes, "grad_bytes": x.nbytes,
            "rows": rows, "goals": [list(g) for g in case.goals],
            "compiled_goals": [list(g) for g in case.compiled_goals]}


#: Who each list of a case's goals holds to them: (key, row, short name in the labels).  The
#: compiled kernel's goals are with out= (the speed targets: the fresh gradient's
#: first-touch cost is the row without out=, reported beside it).
GOAL_HOLDERS = (("goals", impls.FUSED, "fused"),
                ("compiled_goals", impls.COMPILED_OUT, "compiled, out="))


def _goal_checks(case, rows, key, row_name, short):
    """One case's goals of one ce_reference row (``goals``: fused, ``compiled_goals``)."""
    own = rows.get(row_name)
    out = []
    for what, cmp, goal in case.get(key, ()) if own is not None else ():
        if what == "floor":
            value = own["x_floor"]
            label = f"{short} / {case.get('floor', 'np.copyto')} time"
        elif what in rows:
            value, label = rows[what]["median_s"] / own["median_s"], f"{what} / {short} time"
        else:
            continue
        met = {"<=": value <= goal, ">=": value >= goal, ">": value > goal}[cmp]
        out.append({"kind": case["kind"], "shape": case["shape"], "quantity": label,
                    "goal": f"{cmp} {goal}", "measured": value, "met": bool(met)})
    return out


def check_targets(results):
    """The cases' goals (float32 only) and the memory bounds, each as measured."""
    out = []
    for case in results:
        if case["dtype"] != "float32":
            continue
        rows = {r["implementation"]: r for r in case["rows"]}
        for key, row_name, short in GOAL_HOLDERS:
            out.extend(_goal_checks(case, rows, key, row_name, short))
    for case in results:  # memory targets, every case measured
        rows = {r["implementation"]: r for r in case["rows"]}
        extra = case.get("extra_limit_bytes", 32 * MiB)
        bounds = []
        for plain, with_out in impls.BACKEND_ROWS.values():
            short = plain.removeprefix("ce_reference ")
            bounds += [(plain, case["grad_bytes"] + extra,
                        f"{short}: peak extra <= grad + {extra / MiB:.0f} MiB"),
                       (with_out, extra, f"{short}: peak extra with out= <= {extra / MiB:.0f} MiB")]
        for name, limit, label in bounds:
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
    for mod in ("ce_reference", "numpy", "scipy", "jax", "jaxlib", "optax", "torch", "numba"):
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


def _time(v):
    """A time with four significant digits and no exponent (1500, 2.345, 0.02130)."""
    if v is None:
        return "—"
    digits = 3 - math.floor(math.log10(abs(v))) if v else 0
    return f"{v:.{max(0, digits)}f}"


#: The columns of a case's table: (header, cell of a row).
COLUMNS = (
    ("implementation", lambda r: r["implementation"]),
    ("median ms", lambda r: _time(r["median_s"] * 1e3)),
    ("min ms", lambda r: _time(r["min_s"] * 1e3)),
    ("GB/s", lambda r: _fmt(r["gb_per_s"], ".2f")),
    ("× floor", lambda r: _fmt(r["x_floor"], ".2f")),
    ("time / fused", lambda r: _fmt(r.get("peer_over_fused"), ".2f")),
    ("time / compiled", lambda r: _fmt(r.get("peer_over_compiled"), ".2f")),
    ("peak extra MiB", lambda r: _fmt(None if r["peak_extra_bytes"] is None
                                      else r["peak_extra_bytes"] / MiB, ".1f")),
)


def _case_lines(case):
    return [[cell(r) for _, cell in COLUMNS] for r in case["rows"]]


def _target_lines(targets):
    return [[f"{t['kind']} {tuple(t['shape'])} {t.get('dtype', 'float32')}", t["quantity"],
             t["goal"], f"{t['measured']:.2f}", "met" if t["met"] else "NOT met"]
            for t in targets]


def _print_table(console, title, cols, lines):
    if console is None:
        print(title)
        for line in [cols] + lines:
            print("  " + " | ".join(line))
        return
    from rich.table import Table

    table = Table(title=title)
    for c in cols:
        table.add_column(c, justify="left" if c in ("implementation", "case", "quantity")
                         else "right")
    for line in lines:
        table.add_row(*line)
    console.print(table)


def _console():
    try:
        from rich.console import Console
    except ImportError:  # plain text fallback
        return None
    return Console()


def print_report(results, targets, info, first_call=None):
    console = _console()
    cols = [c for c, _ in COLUMNS]
    for case in results:
        title = (f"{case['kind']} {tuple(case['shape'])} {case['dtype']}  "
                 f"({case['input_bytes'] / MiB:.3g} MiB input)")
        _print_table(console, title, cols, _case_lines(case))
    _print_table(console, "speed goals (ratios) and memory bounds",
                 ["case", "quantity", "goal", "measured", ""], _target_lines(targets))
    if first_call:
        print(first_call_text(first_call))
    print(f"load average start {info['loadavg_start']}, end {info.get('loadavg_end')}; "
          f"threads {info['threads'].get('ce_reference workers')}; "
          f"versions {info['versions']}")


def _markdown_table(cols, lines, right_from=1):
    out = ["| " + " | ".join(cols) + " |",
           "|" + "|".join("---" if i < right_from else "---:" for i in range(len(cols))) + "|"]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return out


def markdown_tables(results, targets, first_call=None):
    """The tables in Markdown (for docs/benchmarks.md)."""
    out = []
    for case in results:
        out.append(f"**{case['kind']} {tuple(case['shape'])} {case['dtype']}**\n")
        out += _markdown_table([c for c, _ in COLUMNS], _case_lines(case))
        out.append("")
    lines = [line[:4] + ["met" if line[4] == "met" else "**not met**"]
             for line in _target_lines(targets)]
    out += _markdown_table(["case", "quantity", "goal", "measured", ""], lines, right_from=3)
    if first_call:
        out += ["", first_call_text(first_call)]
    return "\n".join(out)


#: Rows of the size sweep: the floor, both backends with and without out=, the peers that
#: run every size (the textbook ones are not worth timing per size).
SWEEP_ROWS = {impls.FLOOR, impls.FUSED, impls.FUSED_OUT, impls.COMPILED, impls.COMPILED_OUT,
              "jax.jit + optax", "torch eager"}
#: In the sweep, ce_reference's compiled kernel (out=) must beat these peers at every size.
SWEEP_PEERS = ("jax.jit + optax", "torch eager")


def sweep_markdown(sweep):
    """Each implementation's time (and over the floor's and the references'), per size."""
    cols = ["loss", "shape", "implementation", "median µs", "× floor", "time / fused",
            "time / compiled"]
    lines = [[case["kind"], str(tuple(case["shape"])), r["implementation"],
              _time(r["median_s"] * 1e6), _fmt(r["x_floor"], ".2f"),
              _fmt(r.get("peer_over_fused"), ".2f"), _fmt(r.get("peer_over_compiled"), ".2f")]
             for case in sweep for r in case["rows"]]
    return "\n".join(_markdown_table(cols, lines, right_from=3))


def sweep_targets(sweep):
    """Per size of the sweep (float32): each of :data:`SWEEP_PEERS` over the compiled
    kernel with out= (> 1: the compiled kernel is faster)."""
    out = []
    for case in sweep:
        rows = {r["implementation"]: r for r in case["rows"]}
        own = rows.get(impls.COMPILED_OUT)
        for peer in SWEEP_PEERS if own is not None else ():
            if peer in rows:
                value = rows[peer]["median_s"] / own["median_s"]
                out.append({"kind": case["kind"], "shape": case["shape"],
                            "quantity": f"{peer} / compiled, out= time", "goal": "> 1",
                            "measured": value, "met": bool(value > 1)})
    return out


def size_sweep(dtype, repeat, workers, log, selected=None):
    """Every case with a ``sweep`` over its shapes: the per-call cost from the smallest
    shape up, and the throughput plot."""
    sweep = []
    for spec, case in selected or cases():
        for shape in case.sweep:
            log(f"sweep {spec.name} {shape} {np.dtype(dtype).name}")
            only = None if spec.structure == "linear" else SWEEP_ROWS
            sweep.append(runner(spec)(spec, case, dtype, repeat, workers, shape=shape,
                                      only=only, log=log))
    return sweep


# --------------------------------------------------------------------------- first call

#: Measured in a fresh interpreter: importing the package, then the compiled kernels'
#: warm-up (every signature compiled, or loaded from the disk cache), then one call.
_FIRST_CALL_SCRIPT = """
import json, time
t0 = time.perf_counter()
import numpy as np
import ce_reference as ce
from ce_reference import backends
t1 = time.perf_counter()
out = {"import_s": t1 - t0, "available": backends.compiled_available()}
if out["available"]:
    from ce_reference import compiled
    t2 = time.perf_counter()
    out["import_compiled_s"] = t2 - t1
    out.update(compiled.warmup())
    x = np.zeros((32, 10), np.float32)
    t3 = time.perf_counter()
    ce.softmax_cross_entropy_value_and_grad(x, np.zeros(32, np.int64), backend="numba")
    out["first_call_after_warmup_s"] = time.perf_counter() - t3
print(json.dumps(out))
"""


def first_call_cost(cold=False, log=print):
    """The compiled backend's one-time cost, in a fresh process: ``import_s``,
    ``import_compiled_s`` (numba), ``seconds`` of :func:`ce_reference.compiled.warmup`
    with how many signatures were ``compiled`` / ``loaded`` from the cache, and the first
    call after it.  ``cold``: with an empty cache directory (every signature compiled:
    a minute or more)."""
    import tempfile

    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="ce_reference-cold-cache-") as empty:
        if cold:
            env["CE_REFERENCE_CACHE_DIR"] = empty
        log(f"first-call cost ({'empty cache' if cold else 'disk cache as installed'})")
        done = subprocess.run([sys.executable, "-c", _FIRST_CALL_SCRIPT], env=env,
                              capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"cold": cold, "error": done.stderr.strip().splitlines()[-1:]}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["cold"] = cold
    return result


def first_call_text(results):
    """One line per first-call measurement."""
    lines = []
    for r in results:
        what = "empty cache" if r.get("cold") else "cache as installed"
        if "error" in r:
            lines.append(f"first call ({what}): failed: {r['error']}")
        elif not r.get("available"):
            lines.append(f"first call ({what}): numba not installed; import "
                         f"{r['import_s']:.2f} s")
        else:
            lines.append(
                f"first call ({what}, fresh process): import ce_reference {r['import_s']:.2f} s"
                f", import the compiled kernels (numba) {r['import_compiled_s']:.2f} s, "
                f"warmup() {r['seconds']:.2f} s ({r['compiled']} signatures compiled, "
                f"{r['loaded']} loaded), then a (32, 10) call "
                f"{r['first_call_after_warmup_s'] * 1e3:.2f} ms")
    return "\n".join(lines)


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
                         "float32; e.g. 8192,1024,65536 (about 5 minutes)")
    ap.add_argument("--cold-compile", action="store_true",
                    help="also measure the compiled backend's first call with an empty cache "
                         "(every kernel compiled in a fresh process: a minute or more)")
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
    first_call = [first_call_cost(log=log)]
    if args.cold_compile:
        first_call.append(first_call_cost(cold=True, log=log))
    results = []
    selected = [(s, c) for s, c in cases() if not args.case or case_key(s, c) in args.case]
    for dt in dtypes:
        for spec, case in selected:
            log(f"{spec.name} {case.shape} {np.dtype(dt).name}")
            results.append(runner(spec)(spec, case, dt, repeat, workers, log=log))
            results[-1]["loadavg_end"] = os.getloadavg()
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
    targets = check_targets(results) + sweep_targets(sweep or [])
    print_report(results, targets, info, first_call)
    if args.plot and sweep:
        if plot(sweep, args.plot):
            log(f"plot written to {args.plot}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": info, "repeat": repeat, "results": results,
                       "targets": targets, "sweep": sweep, "linear_memory": memory,
                       "first_call": first_call}, fh, indent=1, default=str)
        log(f"results written to {args.json}")
    extra_md = []
    if sweep:
        extra_md.append(sweep_markdown(sweep))
        print(extra_md[-1])
    if memory:
        extra_md.append(linear.memory_markdown(memory["shape"], "float32", memory["peaks"]))
        print(extra_md[-1])
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write("\n\n".join([markdown_tables(results, targets, first_call)] + extra_md)
                     + "\n")
    log(f"wall time {info['wall_s']:.0f} s")
    return 0
