r"""Plumbing shared by the fused kernels and the generic blocked driver.

The kernels sweep the input once, in blocks small enough to stay in the
per-core L2 cache, doing every NumPy operation with ``out=`` into scratch
buffers allocated once per thread.  This module holds what they share:

* :func:`resolve_workers` and :func:`run_blocks` -- a fixed partition into
  blocks, run by ``workers`` threads (NumPy ufuncs release the GIL).  Each block
  writes only its own slice of the outputs and its own partial sums, and the
  partial sums are combined in block order afterwards, so the results are
  bitwise identical for every ``workers``.
* :func:`check_out` -- validation of a caller's gradient buffer.
* :func:`coalesce` and :func:`tiles` -- a fixed tiling of elementwise
  operands that never expands a broadcast argument.
* :func:`log1p_nonneg` -- ``log1p`` for non-negative arguments built on the
  vectorised ``log`` (NumPy's ``log1p`` is a scalar libm loop, ~6x slower).
* :func:`raise_invalid` -- when a block finds an invalid value, the problem's
  own value check (:meth:`ce_reference._problem.ClassProblem.check_values`)
  raises the exact error of the plain function.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np
from numpy.lib.stride_tricks import as_strided

# Bytes of input per block of the softmax kernels.  After its first pass reads a
# block from memory, the 4-5 further passes hit the cache (L2, or the shared L3
# for blocks larger than L2).  The size is set by the threads more than by the
# cache: between two big NumPy calls a thread runs a little Python and some tiny
# NumPy calls that hold the GIL, and every hand-over of the GIL between threads
# costs microseconds, so blocks must be large enough for the GIL-free calls to
# dominate.  On the machine of docs/benchmarks.md (512 KiB L2 per core,
# 32 MiB L3), two threads ran 1.3-2x faster with 1 MiB blocks than with 256 KiB
# ones (which fit in L2 but did not scale past one thread).  The partition depends
# only on this constant and the shapes, never on ``workers``: that is what makes
# the results independent of the thread count.
BLOCK_BYTES = 1024 * 1024

# Bytes of input per tile of the elementwise (BCE) kernels, which keep ~7 scratch
# arrays of a tile per thread.
TILE_BYTES = 512 * 1024

# Per-call cap on the per-thread scratch (all threads together): the issue's
# memory bound is "the gradient + 32 MiB".  More workers than fit run fewer threads
# (the results do not change, the partition being fixed).
SCRATCH_BUDGET = 24 * 1024 * 1024

# Below this many input elements a call runs in the calling thread: handing blocks
# to other threads costs tens of microseconds, more than the whole computation.
SERIAL_ELEMENTS = 1 << 16

# The persistent worker threads (created on first use, grown when a call asks for
# more): a new pool per call cost ~100 us of thread start-up.
_POOL = {"executor": None, "size": 0}
_POOL_LOCK = threading.Lock()


#: The core count a call without ``workers=`` uses, when pinned (:func:`pinned_cores`).
_PINNED_CORES = contextvars.ContextVar("ce_reference_pinned_cores", default=None)


@contextlib.contextmanager
def pinned_cores(n: int):
    """Within the block (in this thread), calls without ``workers=`` use ``n`` threads
    whatever the machine has: a verification batch gives the same bits on any worker
    (``linear_cross_entropy``'s GEMMs depend on the BLAS thread count)."""
    token = _PINNED_CORES.set(n)
    try:
        yield
    finally:
        _PINNED_CORES.reset(token)


def available_cores() -> int:
    """Cores this process may run on (``os.process_cpu_count`` / affinity mask), or the
    count pinned by :func:`pinned_cores`."""
    pinned = _PINNED_CORES.get()
    if pinned is not None:
        return pinned
    count = getattr(os, "process_cpu_count", None)  # Python >= 3.13
    if count is not None:
        n = count()
    else:
        try:
            n = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # pragma: no cover - non-Linux
            n = os.cpu_count()
    return max(1, n or 1)


def resolve_workers(workers) -> int:
    """Validate ``workers`` (``None`` = all available cores) and return an int >= 1."""
    if workers is None:
        return available_cores()
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)):
        raise TypeError(f"workers must be None or a positive int, got {workers!r}")
    if workers < 1:
        raise ValueError(f"workers must be None or a positive int, got {workers!r}")
    return int(workers)


def check_out(out, shape: tuple, dtype: np.dtype, x: np.ndarray, others=()):
    """Validate a caller's gradient buffer; return ``(out, in_place)``.

    ``out`` must be a writeable, C-contiguous ndarray of the gradient's shape and
    dtype.  It may be the logits array itself (``in_place`` is then True: each
    block is read completely before its gradient is written), but it must not
    overlap the logits in any other way, nor any other argument.
    """
    if out is None:
        return None, False
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy.ndarray, got {type(out).__name__}")
    if out.dtype != dtype:
        raise TypeError(f"out must have dtype {np.dtype(dtype)} (the gradient's dtype), "
                        f"got {out.dtype}")
    if out.shape != tuple(shape):
        raise ValueError(f"out must have the input's shape {tuple(shape)}, got {out.shape}")
    if not out.flags.c_contiguous:
        raise ValueError("out must be C-contiguous")
    if not out.flags.writeable:
        raise ValueError("out must be writeable")
    in_place = False
    if out.size and np.may_share_memory(out, x):
        same = (x.dtype == out.dtype and x.flags.c_contiguous
                and x.__array_interface__["data"][0] == out.__array_interface__["data"][0])
        if not same:
            raise ValueError("out overlaps the input without being the very same buffer; "
                             "pass out=logits (exactly) for an in-place gradient")
        in_place = True
    for name, arr in others:
        if arr is not None and out.size and np.may_share_memory(out, arr):
            raise ValueError(f"out must not share memory with {name}")
    return out, in_place


def run_blocks(nblocks: int, body, make_scratch, workers: int, nelem: int,
               scratch_bytes: int = 0) -> None:
    """Run ``body(i, scratch)`` for every block ``i`` in ``range(nblocks)``.

    With one worker (or a small input) the blocks run in order in the calling
    thread.  ``scratch_bytes`` (per thread) caps the thread count so that all
    scratch stays within :data:`SCRATCH_BUDGET`.  Otherwise ``workers`` threads (the
    calling one and ``workers - 1`` of a persistent pool) each allocate their own
    scratch once and take block indices from a shared counter (dynamic scheduling;
    which thread runs a block never changes what the block computes).
    """
    if nblocks == 0:
        return
    nthreads = min(workers, nblocks)
    if scratch_bytes:
        nthreads = min(nthreads, max(1, SCRATCH_BUDGET // scratch_bytes))
    if nthreads <= 1 or nelem < SERIAL_ELEMENTS:
        scratch = make_scratch()
        for i in range(nblocks):
            body(i, scratch)
        return
    counter = itertools.count()  # next() is atomic under the GIL

    def worker():
        scratch = make_scratch()
        for i in counter:
            if i >= nblocks:
                return
            body(i, scratch)

    executor = _executor(nthreads - 1)
    futures = [executor.submit(worker) for _ in range(nthreads - 1)]
    try:
        worker()
    finally:
        wait(futures)           # no block may still run once the call has returned
    for f in futures:
        f.result()              # re-raises a worker's exception


def _executor(n: int) -> ThreadPoolExecutor:
    """The persistent pool, with at least ``n`` threads.  A larger pool replaces the old
    one without shutting it down (a concurrent call may still be submitting to it; its
    idle threads exit once it is garbage collected)."""
    with _POOL_LOCK:
        if _POOL["size"] < n:
            _POOL["executor"] = ThreadPoolExecutor(max_workers=n,
                                                   thread_name_prefix="ce_reference")
            _POOL["size"] = n
        return _POOL["executor"]


def log1p_nonneg(u: np.ndarray, out: np.ndarray, w: np.ndarray, c: np.ndarray,
                 have_w: bool = False) -> np.ndarray:
    r"""``log1p(u)`` for finite ``u >= 0``, into ``out`` (``w``, ``c``: scratch).

    Identity: with ``w = fl(1 + u)`` and ``c = u - (w - 1)`` (the rounding error
    of ``1 + u``), ``log1p(u) = log(w) + log1p(c / w) = log(w) + c / w + O(c^2)``,
    and ``|c / w|`` is below one ULP of 1, so the ``O(c^2)`` term is far below
    the last bit.  ``w - 1`` is exact (``1 <= w`` and ``w`` has no bits below
    the ULP of 1 while ``w < 2**p``) and so is ``u - (w - 1)``; the only error is
    that of the vectorised ``log`` (a few ULP).  For ``u`` below half an ULP of 1,
    ``w = 1`` and the result is ``0 + u / 1 = u`` exactly.  NumPy's own ``log1p``
    is a scalar libm loop, about six times slower than ``log`` here, and it is
    the one per-element transcendental besides ``exp`` in the BCE kernel.
    ``u``, ``out``, ``w`` and ``c`` must be distinct arrays of one shape; with
    ``have_w=True`` the caller has already put ``fl(1 + u)`` in ``w``.
    """
    if not have_w:
        np.add(u, 1, out=w)          # w = fl(1 + u)
    np.log(w, out=out)               # log w
    np.subtract(w, 1, out=c)         # w - 1, exact
    np.subtract(u, c, out=c)         # c = u - (w - 1), exact
    np.divide(c, w, out=c)           # c / w
    np.add(out, c, out=out)          # log w + c / w
    return out


def checked_out(out, problem):
    """The caller's gradient buffer, validated against ``problem`` (None stays None).

    In place (``out`` is the input itself) the input's values are checked *before* the
    first block is written -- one extra read pass, for in-place calls only -- so that an
    invalid value late in the input raises with the input untouched.
    """
    out, in_place = check_out(out, problem.shape, problem.rdt, problem.raw,
                              tuple(problem.given.items()))
    if in_place and not problem.values_ok():
        raise_invalid(problem)
    return out


def raise_invalid(problem) -> None:
    """A block saw an invalid value: raise the plain function's error for it."""
    problem.check_values()
    raise ValueError("invalid arguments (the value check did not say which; please report this)")


# --------------------------------------------------------------------------- tiling

def coalesce(shape, arrays):
    """Views of ``arrays`` (all of ``shape``) with adjacent axes merged where possible.

    Axes ``k-1`` and ``k`` merge when, for every array, stepping once along
    ``k-1`` equals stepping ``shape[k]`` times along ``k`` (as ``np.nditer``
    does).  Returns the merged shape and the views (at least 1-d).  A broadcast
    argument (stride 0) is never expanded.
    """
    shp = list(shape) or [1]
    strides = [list(a.strides) or [0] for a in arrays]
    for k in range(len(shp) - 1, 0, -1):
        n1, n2 = shp[k - 1], shp[k]
        if n2 == 1:
            merged = [st[k - 1] for st in strides]
        elif n1 == 1 or all(st[k - 1] == st[k] * n2 for st in strides):
            merged = [st[k] for st in strides]
        else:
            continue
        for st, v in zip(strides, merged):
            st[k - 1] = v
            del st[k]
        shp[k - 1] = n1 * n2
        del shp[k]
    views = [as_strided(a, shape=tuple(shp), strides=tuple(st), writeable=a.flags.writeable)
             for a, st in zip(arrays, strides)]
    return tuple(shp), views


def tiles(shape, max_elems):
    """A fixed C-order list of index tuples covering ``shape`` in tiles of <= ``max_elems``."""
    inner = 1
    k = len(shape) - 1
    while k > 0 and inner * shape[k] <= max_elems:
        inner *= shape[k]
        k -= 1
    if inner * shape[k] <= max_elems:
        return [tuple(slice(None) for _ in shape)]
    step = max(1, max_elems // inner)
    out = []
    for prefix in np.ndindex(*shape[:k]):
        for j0 in range(0, shape[k], step):
            out.append(prefix + (slice(j0, min(shape[k], j0 + step)),))
    return out
