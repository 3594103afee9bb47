"""Benchmark suite of ce_reference's fused kernels against the memory floor and peers.

Run from the repository root::

    python -m benchmarks [--quick] [--json PATH] [--plot PATH]

Iterates the registry: every loss's ``NAME_value_and_grad`` on the cases its
spec lists (``LossSpec.benchmarks``; a default case otherwise), side by side
with the ``np.copyto`` floor and the loss's peers from its oracle module
(textbook NumPy, ``scipy.special``, ``jax.jit`` of optax on CPU, PyTorch CPU
eager; each optional: skipped when not installed), reporting median time,
effective GB/s, ratios, the spec's speed goals and peak memory.  See
``docs/benchmarks.md``.
"""
