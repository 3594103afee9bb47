"""JAX twins of the losses: the independent oracle for the NumPy gradients.

Each twin is written straight from the *definition* of its loss (log-softmax,
log-sigmoid, ``xlogy``), never from the hand-derived gradient formulas of the
NumPy implementation, so ``jax.grad`` of a twin checks those formulas
independently.  They live with each loss's other oracles in
``ce_reference.oracles.<name>`` (the twin is the function named like the
loss) and are all exported here, with :func:`vocab_parallel_cross_entropy`, the
sharded algorithm of :mod:`ce_reference.jax_parallel`.  Signatures and conventions are the NumPy
ones (see :mod:`ce_reference`); results are ``jax.Array``.  The twins are
jit-compatible: ``axis``, ``ignore_index``, ``label_smoothing``, ``eps`` and
``reduction`` are Python values (static under ``jax.jit``), arrays may be
traced.  They do **not** validate values (that cannot be done under ``jit``):
feed them inputs that the NumPy functions accept.

Call ``jax.config.update("jax_enable_x64", True)`` before using them in
float64, as the verifier does.  Known differences from the NumPy functions,
all at points where the NumPy result is a documented convention: a ``mean``
with a zero denominator has a NaN gradient here (zero in NumPy), and at a clip
boundary ``jnp.clip`` splits the derivative (NumPy passes it through).
"""

from __future__ import annotations

import importlib
import pkgutil

from . import oracles as _oracles

_TWINS = {}
for _info in sorted(pkgutil.iter_modules(_oracles.__path__), key=lambda i: i.name):
    if not _info.name.startswith("_"):
        _module = importlib.import_module(f"{_oracles.__name__}.{_info.name}")
        _TWINS[_info.name] = getattr(_module, _info.name)

globals().update(_TWINS)

# Vocab-parallel cross-entropy on jax.shard_map (not a twin: the sharded algorithm itself).
from .jax_parallel import vocab_parallel_cross_entropy  # noqa: E402

__all__ = sorted([*_TWINS, "vocab_parallel_cross_entropy"])
