"""Fused, blocked, multithreaded kernels behind validated problems.

The kernels receive a validated problem (:mod:`ce_reference._problem`) and
never import the public loss modules: :mod:`.softmax` (softmax cross-entropy,
three layouts), :mod:`.bce_logits` (BCE with logits) and :mod:`.driver` (the
generic row-blocked driver that gives every other loss its
``value_and_grad`` with ``out=`` and ``workers=``), on the plumbing of
:mod:`._blocks`.  :mod:`.compiled_backend` hands the same validated problems to
the compiled kernels of :mod:`ce_reference.compiled` when a call's backend is
``"numba"`` (:mod:`ce_reference.backends`).
"""
