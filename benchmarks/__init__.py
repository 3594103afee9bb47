"""Benchmark suite of ce_reference's fused kernels against the memory floor and peers.

Run from the repository root::

    python -m benchmarks [--quick] [--json PATH] [--plot PATH]

Times ``softmax_cross_entropy_value_and_grad`` (integer targets, mean) and
``binary_cross_entropy_with_logits_value_and_grad`` side by side with the
``np.copyto`` floor, textbook NumPy, ``scipy.special``, ``jax.jit`` of optax's
losses on CPU and PyTorch CPU eager (each optional: skipped when not
installed), and reports median time, effective GB/s, ratios and peak memory.
See ``docs/benchmarks.md``.
"""
