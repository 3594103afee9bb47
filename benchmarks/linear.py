"""Linear cross-entropy: time and memory against the three GEMMs and the other implementations.

A case is ``(N, H, V)``: features ``h`` ``(N, H)``, the head ``W`` ``(V, H)``,
class-index targets, ``mean``.  Every implementation computes the loss and
the gradients with respect to ``h`` and ``W``:

* ``3 GEMMs (floor)`` -- ``h W^T``, ``G W`` and ``G^T h`` over the whole batch by the
  BLAS ``gemm`` the library uses (SciPy's OpenBLAS; at these shapes faster here than
  NumPy's, which ``np.matmul`` calls) into preallocated buffers at the same BLAS
  threads: no implementation can do less arithmetic;
* ``ce_reference fused`` -- :func:`ce_reference.linear_cross_entropy_value_and_grad`
  (row chunks, the softmax kernel in place, never the ``N x V`` logits) with the
  NumPy softmax kernel; ``ce_reference compiled`` the same with the compiled one
  (``backend="numba"``, when numba is installed);
* ``unfused NumPy`` -- the logits by one GEMM, ce_reference's fused (NumPy) softmax
  kernel, two GEMMs (holds the logits and their gradient: ``2 N V`` floats);
* ``torch eager`` -- ``F.linear`` + ``F.cross_entropy`` + ``backward``;
* ``torch linear_cross_entropy chunked`` -- PyTorch's ``F.linear_cross_entropy``
  with ``LinearCrossEntropyOptions()`` (its chunked path, policies "auto").

Peak memory: ``tracemalloc`` (NumPy's allocations; not BLAS's or PyTorch's)
and, in a fresh process per implementation, the peak resident set
(``VmHWM`` of ``/proc/self/status``) beyond the inputs (:func:`rss_peaks`).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
import tracemalloc

import numpy as np

from . import impls

FLOOR = "3 GEMMs (floor)"
FUSED = "ce_reference fused"
COMPILED = "ce_reference compiled"
UNFUSED = "unfused NumPy"
TORCH_EAGER = "torch eager"
TORCH_CHUNKED = "torch linear_cross_entropy chunked"
NAMES = (FLOOR, FUSED, COMPILED, UNFUSED, TORCH_EAGER, TORCH_CHUNKED)
MiB = 1 << 20


def inputs(shape, dtype, seed=0):
    """Seeded ``(h, W, targets)`` of ``(N, H, V)`` with logits of scale ~3."""
    N, H, V = shape
    rng = np.random.default_rng(seed)
    h = rng.standard_normal((N, H), dtype=np.float32).astype(dtype)
    W = (rng.standard_normal((V, H), dtype=np.float32) * (3 / np.sqrt(H))).astype(dtype)
    return h, W, rng.integers(0, V, N)


def _blas(workers):
    from threadpoolctl import threadpool_limits
    return threadpool_limits(limits=workers, user_api="blas")


def floor(h, W, t, workers):
    z = np.empty((h.shape[0], W.shape[0]), h.dtype)
    d_h, d_W = np.empty_like(h), np.empty_like(W)

    from ce_reference.losses.linear_cross_entropy import gemm

    def run():
        # the same BLAS gemm as the library's sweep, whole batch: z^T = W h^T,
        # d_h^T = W^T z^T, d_W^T = h^T z
        with _blas(workers):
            gemm(z.T, W.T, h.T, trans_a=1)
            gemm(d_h.T, W.T, z.T)
            gemm(d_W.T, h.T, z.T, trans_b=1)
    return run


def fused(spec, backend="numpy"):
    from ce_reference import backends

    def factory(h, W, t, workers):
        if backend not in backends.available():
            return None
        return lambda: spec.value_and_grad(h, W, t, workers=workers, backend=backend)
    return factory


def unfused(h, W, t, workers):
    import ce_reference as ce

    def run():
        with _blas(workers):
            logits = h @ W.T
            value, G = ce.softmax_cross_entropy_value_and_grad(logits, t, workers=workers,
                                                               backend="numpy")
            return value, G @ W, G.T @ h
    return run


def _torch_inputs(h, W, t, workers):
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(workers)
    return (torch, torch.from_numpy(h).requires_grad_(True),
            torch.from_numpy(W).requires_grad_(True), torch.from_numpy(t.astype(np.int64)))


def torch_eager(h, W, t, workers):
    tensors = _torch_inputs(h, W, t, workers)
    if tensors is None:
        return None
    torch, ht, Wt, tt = tensors

    def run():
        ht.grad = Wt.grad = None
        loss = torch.nn.functional.cross_entropy(torch.nn.functional.linear(ht, Wt), tt)
        loss.backward()
        return loss
    return run


def torch_chunked(h, W, t, workers):
    tensors = _torch_inputs(h, W, t, workers)
    if tensors is None or not hasattr(tensors[0].nn.functional, "linear_cross_entropy"):
        return None
    torch, ht, Wt, tt = tensors
    options = torch.nn.LinearCrossEntropyOptions()

    def run():
        ht.grad = Wt.grad = None
        loss = torch.nn.functional.linear_cross_entropy(ht, Wt, tt, options=options)
        loss.backward()
        return loss
    return run


def implementations(spec):
    """``{name: (factory, tracemalloc sees its allocations)}``."""
    return {FLOOR: (floor, True), FUSED: (fused(spec), True),
            COMPILED: (fused(spec, "numba"), True), UNFUSED: (unfused, True),
            TORCH_EAGER: (torch_eager, False), TORCH_CHUNKED: (torch_chunked, False)}


def _traced_peak(f):
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        f()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def run_case(spec, case, dtype, repeat, workers, only=None, log=print, shape=None):
    """Time every implementation of one ``(N, H, V)`` case, interleaved round by round."""
    shape = tuple(case.shape if shape is None else shape)
    h, W, t = inputs(shape, dtype)
    fns, traced = {}, {}
    for name, (factory, seen) in implementations(spec).items():
        if only and name not in only:
            continue
        f = factory(h, W, t, workers)
        if f is None:
            log(f"  {name}: not installed, skipped")
            continue
        t0 = time.perf_counter()
        f()
        log(f"  {name}: warm-up {time.perf_counter() - t0:.2f} s")
        fns[name], traced[name] = f, seen
    times = {name: [] for name in fns}
    for _ in range(repeat):
        for name, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    floor_s = statistics.median(times[FLOOR]) if FLOOR in times else None
    flops = 3 * 2 * shape[0] * shape[1] * shape[2]
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        rows.append({"implementation": name, "median_s": med, "min_s": min(ts), "times_s": ts,
                     "gb_per_s": None, "gflop_per_s": flops / med / 1e9,
                     "x_floor": med / floor_s if floor_s else None,
                     "peak_extra_bytes": _traced_peak(fns[name]) if traced[name] else None})
    impls.add_ratios(rows)
    grad_bytes = h.nbytes + W.nbytes
    return {"kind": spec.label, "loss": spec.name, "shape": list(shape), "options": {},
            "dtype": np.dtype(dtype).name, "input_bytes": h.nbytes + W.nbytes,
            "grad_bytes": grad_bytes, "extra_limit_bytes": 128 * MiB,
            "floor": "3 GEMMs", "rows": rows, "goals": [list(g) for g in case.goals]}


# --------------------------------------------------------------------------- RSS

def _vm(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _measure_one(name, shape, dtype, workers):
    """In this (fresh) process: the peaks of one call of implementation ``name``."""
    from ce_reference.registry import LOSSES

    factory, seen = implementations(LOSSES["linear_cross_entropy"])[name]
    h, W, t = inputs(shape, dtype)
    f = factory(h, W, t, workers)
    if f is None:
        return {"implementation": name, "skipped": "not installed"}
    before = _vm("VmRSS")
    t0 = time.perf_counter()
    if seen:
        traced = _traced_peak(f)
    else:                                   # PyTorch's allocations are not NumPy's: RSS only
        traced = None
        f()
    return {"implementation": name, "rss_peak_extra_bytes": _vm("VmHWM") - before,
            "tracemalloc_peak_bytes": traced, "seconds": time.perf_counter() - t0}


def rss_peaks(shape, dtype="float32", workers=2, names=None, log=print):
    """Peak memory of each implementation, each in a fresh interpreter (its own peak RSS)."""
    out = []
    for name in names or NAMES:
        log(f"memory {name} {tuple(shape)} {dtype}")
        cmd = [sys.executable, "-m", "benchmarks.linear", "--measure", name,
               ",".join(map(str, shape)), dtype, str(workers)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            out.append({"implementation": name, "skipped": done.stderr.strip()[-300:]})
            continue
        out.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return out


def memory_markdown(shape, dtype, peaks):
    N, H, V = shape
    logits = N * V * np.dtype(dtype).itemsize
    lines = [f"**peak memory beyond the inputs, (N, H, V) = {tuple(shape)} {dtype}** "
             f"(the logits alone: {logits / MiB:.0f} MiB; the gradients returned: "
             f"{(N * H + V * H) * np.dtype(dtype).itemsize / MiB:.0f} MiB)\n",
             "| implementation | peak RSS extra MiB | tracemalloc peak MiB | seconds |",
             "|---|---:|---:|---:|"]
    for p in peaks:
        if "skipped" in p:
            lines.append(f"| {p['implementation']} | skipped: {p['skipped']} | | |")
            continue
        tm = p["tracemalloc_peak_bytes"]
        lines.append(f"| {p['implementation']} | {p['rss_peak_extra_bytes'] / MiB:.0f} | "
                     f"{'—' if tm is None else f'{tm / MiB:.0f}'} | {p['seconds']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":   # python -m benchmarks.linear --measure NAME N,H,V DTYPE WORKERS
    if len(sys.argv) != 6 or sys.argv[1] != "--measure":
        sys.exit("usage: python -m benchmarks.linear --measure NAME N,H,V DTYPE WORKERS "
                 "(used by python -m benchmarks --linear-memory)")
    _, _, impl, dims, dt, nworkers = sys.argv
    print(json.dumps(_measure_one(impl, tuple(int(d) for d in dims.split(",")), dt,
                                  int(nworkers))))
