r"""Python side of the compiled kernels: layouts, the fixed block partition, threads.

Threads.  A call's work is a fixed list of blocks (a function of the shapes only).
With ``workers = k > 1`` and at least :data:`PARALLEL_MIN` elements, the block list
is cut into contiguous chunks taken dynamically by ``k - 1`` threads of a persistent
``ThreadPoolExecutor`` (kernels are compiled ``nogil=True``) and by the calling
thread.  Each block writes only its own rows and per-row losses (and returns its
error bits), so the results are bitwise identical for every ``workers`` (and in
place).
Below the threshold, or with one worker, the kernel runs once over all blocks in
the calling thread: no pool, no allocation besides the kernel's own scratch.
"""

from __future__ import annotations

import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor


# Elements below which a call runs in the calling thread (a pool round trip costs
# ~20-40 us; a (64, 1000) float32 call computes in ~40 us on one core).
PARALLEL_MIN = 1 << 17
# Elements per chunk of a parallel call (at least; one kernel call per chunk costs
# ~2-5 us of dispatch and scratch allocation).
CHUNK_ELEMENTS = 1 << 16

_pool = None
_pool_size = 0
_pool_lock = threading.Lock()


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


_CORES = _cores()


def available_cores() -> int:
    """Cores this process may run on (the affinity mask, read once at import)."""
    return _CORES


def _executor(n: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size < n:
            # A larger pool replaces the old one, which is not shut down: a concurrent
            # call may still be submitting to it (its idle threads exit once it is
            # garbage collected).
            _pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="ce_reference-numba")
            _pool_size = n
        return _pool


def run(fn, args, ntasks: int, workers, nelem: int, combine=True):
    """``fn(*args, b0, b1)`` over the tasks ``[0, ntasks)``.

    Parallel calls cut the task list into at most ``8 k`` contiguous chunks of about
    :data:`CHUNK_ELEMENTS` elements or more, handed out dynamically (a shared
    counter): a thread that the OS descheduled does not hold up the others, and
    which thread runs a chunk never changes what the chunk computes.  Returns the
    OR of the kernel's integer results (its error bits), or None with
    ``combine=False``.
    """
    if ntasks <= 0:
        return 0
    nt = min(_CORES if workers is None else int(workers), ntasks)
    if nt <= 1 or nelem < PARALLEL_MIN:
        r = fn(*args, 0, ntasks)
        return int(r) if combine else None
    nchunks = min(ntasks, 8 * nt, max(nt, nelem // CHUNK_ELEMENTS))
    cuts = [ntasks * k // nchunks for k in range(nchunks + 1)]
    counter = itertools.count()          # next() is atomic under the GIL

    def worker():
        bad = 0
        for k in counter:
            if k >= nchunks:
                return bad
            r = fn(*args, cuts[k], cuts[k + 1])
            if combine:
                bad |= int(r)
        return bad

    ex = _executor(nt - 1)
    futs = [ex.submit(worker) for _ in range(nt - 1)]
    bad = worker()
    for f in futs:
        bad |= f.result()
    return bad if combine else None
