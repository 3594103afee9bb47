"""The implementations timed side by side, for any registered loss.

Each factory takes the NumPy inputs and returns a zero-argument callable that
computes the loss and the gradient of the mean loss with respect to the first
argument (the whole forward + backward), or ``None`` when its library is not
installed.  Besides the ``np.copyto`` floor and ce_reference's own
``NAME_value_and_grad`` (with and without ``out=``), the peers of a loss --
textbook NumPy, ``scipy.special``, ``jax.jit`` of optax, PyTorch eager -- come
from its oracle module (``Oracle.peers``), found through its spec; they exist
for the default options only.  Inputs are converted to the library's arrays
once, outside the timed call; JAX functions are compiled in the warm-up call
(compile time is excluded) and synchronised with ``block_until_ready``.
"""

from __future__ import annotations

import numpy as np

FLOOR = "np.copyto (floor)"
FUSED = "ce_reference fused"
FUSED_OUT = "ce_reference fused, out="


def floor(x, y, workers, **options):
    g = np.empty_like(x)
    return lambda: np.copyto(g, x)


def fused(spec):
    def factory(x, y, workers, **options):
        return lambda: spec.value_and_grad(x, y, workers=workers, **options)
    return factory


def fused_out(spec):
    def factory(x, y, workers, **options):
        g = np.empty_like(x)
        return lambda: spec.value_and_grad(x, y, out=g, workers=workers, **options)
    return factory


def implementations(spec, options=()):
    """``{name: (factory, memory measurable with tracemalloc)}`` for one loss."""
    table = {FLOOR: (floor, True), FUSED: (fused(spec), True), FUSED_OUT: (fused_out(spec), True)}
    oracle = spec.resolve_oracle()
    if oracle is not None and oracle.peers is not None and not options:
        for name, factory in oracle.peers().items():
            # JAX and PyTorch allocate outside Python's allocator: no tracemalloc figure
            table[name] = (factory, name in ("textbook NumPy", "scipy.special"))
    return table
