"""The implementations timed side by side, for any registered loss.

Each factory takes the NumPy inputs and returns a zero-argument callable that
computes the loss and the gradient of the mean loss with respect to the first
argument (the whole forward + backward), or ``None`` when its library is not
installed.  Besides the ``np.copyto`` floor and ce_reference's own
``NAME_value_and_grad`` on each of its backends (``fused``: the NumPy kernels,
``compiled``: the numba kernels, each with and without ``out=``), the peers of a
loss -- textbook NumPy, ``scipy.special``, ``jax.jit`` of optax, PyTorch eager --
come from its oracle module (``Oracle.peers``), found through its spec; they
exist for the default options only.  Inputs are converted to the library's
arrays once, outside the timed call; JAX functions are compiled in the warm-up
call (compile time is excluded) and synchronised with ``block_until_ready``; the
compiled kernels are compiled (or loaded from their disk cache) in the warm-up
call too -- their first-call cost is measured apart, in a fresh process
(:func:`benchmarks.cli.first_call_cost`).
"""

from __future__ import annotations

import numpy as np

from ce_reference import backends

FLOOR = "np.copyto (floor)"
FUSED = "ce_reference fused"
FUSED_OUT = "ce_reference fused, out="
COMPILED = "ce_reference compiled"
COMPILED_OUT = "ce_reference compiled, out="
#: ce_reference's rows by backend: (without out=, with out=).
BACKEND_ROWS = {"numpy": (FUSED, FUSED_OUT), "numba": (COMPILED, COMPILED_OUT)}
#: The rows whose times the others are divided by ("time / fused", "time / compiled").
REFERENCES = (FUSED, COMPILED)


def floor(x, y, workers, **options):
    g = np.empty_like(x)
    return lambda: np.copyto(g, x)


def _backend(spec, backend):
    """``backend=`` for a loss with several backends (one has no such argument)."""
    return {"backend": backend} if len(spec.backends) > 1 else {}


def fused(spec, backend="numpy"):
    chosen = _backend(spec, backend)

    def factory(x, y, workers, **options):
        return lambda: spec.value_and_grad(x, y, workers=workers, **chosen, **options)
    return factory


def fused_out(spec, backend="numpy"):
    chosen = _backend(spec, backend)

    def factory(x, y, workers, **options):
        g = np.empty_like(x)
        return lambda: spec.value_and_grad(x, y, out=g, workers=workers, **chosen, **options)
    return factory


def implementations(spec, options=()):
    """``{name: (factory, memory measurable with tracemalloc)}`` for one loss."""
    table = {FLOOR: (floor, True)}
    for backend in backends.available(spec.backends):
        plain, with_out = BACKEND_ROWS[backend]
        table[plain] = (fused(spec, backend), True)
        table[with_out] = (fused_out(spec, backend), True)
    oracle = spec.resolve_oracle()
    if oracle is not None and oracle.peers is not None and not options:
        for name, factory in oracle.peers().items():
            # JAX and PyTorch allocate outside Python's allocator: no tracemalloc figure
            table[name] = (factory, name in ("textbook NumPy", "scipy.special"))
    return table


def add_ratios(rows):
    """Each row's time over each reference row's (``peer_over_fused``,
    ``peer_over_compiled``; None where that row was not timed)."""
    medians = {r["implementation"]: r["median_s"] for r in rows}
    for ref, key in ((FUSED, "peer_over_fused"), (COMPILED, "peer_over_compiled")):
        base = medians.get(ref)
        for r in rows:
            r[key] = r["median_s"] / base if base else None
    return rows
