"""The independent oracles of every loss, one module per loss.

Each module holds, written from the loss's *definition* and never importing
its NumPy implementation (:mod:`ce_reference.losses`):

* the JAX twin (``jax.grad`` of it is a gradient oracle; the public module
  :mod:`ce_reference.jax` re-exports the twins);
* the mpmath oracle: per-example losses, the gradient and ``H v`` at any
  precision, arranged so that no result is a difference of nearly equal
  rounded quantities;
* the operand sizes that define the error unit of each element.

They are collected in an :class:`~ce_reference.spec.Oracle` named ``ORACLE``,
which the loss's spec names and the verifier finds through it.
"""
