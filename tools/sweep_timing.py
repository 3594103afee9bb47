"""Time ``ce-reference verify`` serially, on ``--workers 2`` and on a 2-worker Dask
LocalCluster (the numbers in docs/distributed.md), interleaved and repeated.

    python tools/sweep_timing.py [--cases 20000] [--repeat 1] [--json timings.json]

Each run is a fresh ``ce-reference verify`` process (a cold JAX compilation cache, as a
user's sweep has), with ``--checkpoint`` so that every batch's own run time is known.
The cluster (one per run, fresh workers) binds to 127.0.0.1 only, its HTTP server too.
Per run: wall time, cases per second, the load average around it, the summed batch time
(the work), and the parallel efficiency work / (workers x wall).  Then the Dask
scheduler's overhead per task, from no-op tasks (one at a time: the round trip; a
window of in-flight tasks as the sweep keeps: the cost per task), and the projection of
a 1e7-case sweep on 64 workers.  The three reports of a repeat must be equal (the rows,
bitwise): the tool says so.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

#: No-op tasks timed for the scheduler's overhead.
NOOP_TASKS = 400
#: The projection's sweep and cluster.
PROJECT_CASES, PROJECT_WORKERS = 10_000_000, 64


def _noop(i):
    return i


def run_verify(cases, seed, extra, workdir, label, losses=()):
    ck, out = os.path.join(workdir, f"{label}.jsonl"), os.path.join(workdir, f"{label}.json")
    for path in (ck, out):
        if os.path.exists(path):
            os.remove(path)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "ce_reference", "verify", "--cases",
                           str(cases), "--seed", str(seed), "--no-progress", "--json", out,
                           "--checkpoint", ck, *extra, *(a for name in losses for a in ("--loss", name))],
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{label}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    with open(out, encoding="utf-8") as fh:
        report = json.load(fh)
    batch_seconds, batches = 0.0, 0
    with open(ck, encoding="utf-8") as fh:
        next(fh)
        for line in fh:
            batch_seconds += json.loads(line)["result"]["seconds"]
            batches += 1
    return {"label": label, "wall": wall, "elapsed": report["elapsed_seconds"],
            "cases": report["cases"], "rate": report["cases"] / wall, "ok": report["ok"],
            "batches": batches, "batch_seconds": batch_seconds,
            "checkpoint_bytes": os.path.getsize(ck),
            "load_before": load_before, "load_after": os.getloadavg(),
            "rows": _rows(report)}


def _rows(report):
    return json.dumps({k: v for k, v in report.items()
                       if k not in ("elapsed_seconds", "environment")}, sort_keys=True)


def local_cluster():
    import distributed

    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       host="127.0.0.1", dashboard_address="127.0.0.1:0")
    return cluster, distributed.Client(cluster, set_as_default=False)


def scheduler_overhead():
    """Seconds per no-op task: one at a time (round trip) and 4 in flight (pipelined)."""
    from ce_reference.verify.sweep import IN_FLIGHT_PER_WORKER

    cluster, client = local_cluster()
    try:
        ex = client.get_executor(pure=False)
        for i in range(20):                         # warm up
            ex.submit(_noop, i).result()
        t0 = time.perf_counter()
        for i in range(NOOP_TASKS):
            ex.submit(_noop, i).result()
        round_trip = (time.perf_counter() - t0) / NOOP_TASKS
        import collections
        import concurrent.futures as cf

        window = IN_FLIGHT_PER_WORKER * 2
        t0, running, todo = time.perf_counter(), set(), collections.deque(range(NOOP_TASKS))
        while todo or running:
            while todo and len(running) < window:
                running.add(ex.submit(_noop, todo.popleft()))
            done, running = cf.wait(running, return_when=cf.FIRST_COMPLETED)
        pipelined = (time.perf_counter() - t0) / NOOP_TASKS
    finally:
        client.close()
        cluster.close()
    return {"round_trip": round_trip, "pipelined": pipelined}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--loss", action="append", default=[], help="restrict (a quick try)")
    args = parser.parse_args(argv)
    runs = []
    with tempfile.TemporaryDirectory() as workdir:
        for r in range(args.repeat):
            reports = []
            for label in ("serial", "workers2", "dask2"):
                if label == "dask2":
                    cluster, client = local_cluster()
                    try:
                        res = run_verify(args.cases, args.seed,
                                         ["--scheduler", client.scheduler.address], workdir,
                                         f"{label}-{r}", args.loss)
                    finally:
                        client.close()
                        cluster.close()
                else:
                    extra = ["--workers", "2"] if label == "workers2" else []
                    res = run_verify(args.cases, args.seed, extra, workdir, f"{label}-{r}",
                                     args.loss)
                reports.append(res.pop("rows"))
                res["workers"] = 1 if label == "serial" else 2
                res["efficiency"] = res["batch_seconds"] / (res["workers"] * res["wall"])
                runs.append(res)
                print(json.dumps(res), flush=True)
            print(f"repeat {r}: reports equal: {len(set(reports)) == 1}", flush=True)
    overhead = scheduler_overhead()
    print(json.dumps({"scheduler_overhead": overhead}), flush=True)
    out = {"runs": runs, "scheduler_overhead": overhead, "projection": project(runs, overhead)}
    print(json.dumps(out["projection"], indent=1))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=1)


def project(runs, overhead):
    """A 1e7-case sweep on 64 workers: the work per case measured on the cluster runs
    (seconds of batch time per case), spread over 64 workers at the measured efficiency."""
    from ce_reference.verify.batches import BATCH_CASES

    dask = [r for r in runs if r["label"].startswith("dask2")]
    per_case = min(r["batch_seconds"] / r["cases"] for r in dask)
    efficiency = max(r["efficiency"] for r in dask)
    batches = PROJECT_CASES / BATCH_CASES
    seconds = PROJECT_CASES * per_case / (PROJECT_WORKERS * efficiency)
    return {"cases": PROJECT_CASES, "workers": PROJECT_WORKERS,
            "work_seconds_per_case": per_case, "efficiency": efficiency,
            "hours": seconds / 3600, "batches": batches,
            "scheduler_seconds": batches * overhead["pipelined"],
            "checkpoint_gib": max(r["checkpoint_bytes"] / r["batches"] for r in dask)
            * batches / 2**30}


if __name__ == "__main__":
    main()
