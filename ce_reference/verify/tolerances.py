"""Named tolerances of the verifier, one per check and dtype, each with its reason.

Units
-----
Every elementwise error of a value, gradient or Hessian-vector product is
measured two ways against an oracle ``o`` (see :mod:`.errors`):

* ``ulp = |got - o| / spacing(o)`` in the dtype of the result, and
* ``opnd = |got - o| / (eps * operand)``: the error relative to the largest
  operand of the formula (e.g. ``max(p S, A)`` for the softmax gradient
  ``p S - A``), with ``eps`` the dtype's machine epsilon.  An element whose
  exact value is a difference of nearly equal operands (``p - 1`` for a
  confident prediction) cannot be computed to a few ULP in working precision
  by any implementation; it can be computed to a few ``eps`` of its operands.

An element passes when ``min(ulp, opnd)`` is within the tolerance.  The
per-case error of an oracle is the worst element (value and gradient
together).  Finite differences (central) are measured normwise instead
(``||g - fd|| / ||operands||``), since their own error is normwise.
"""

from __future__ import annotations

import numpy as np

# Absolute differences below ABS_FLOOR * (smallest normal number of the dtype)
# are not errors: such numbers carry no relative precision (a gradient of
# 4e-322 is a handful of subnormal ULPs, and whether a product underflows to
# 0 or to the nearest subnormal depends on operation order), and XLA on CPU
# flushes subnormals to zero, so the JAX oracle returns 0 for them.
ABS_FLOOR = 1.0
# For the JAX oracle in float64 the floor is larger: XLA flushes subnormal
# *intermediates* to zero too, so sigma(-709.78) = 1.1e-308 becomes 0 before
# it is multiplied by a weight of 1e3; weights and pos_weights reach 1e3 each
# in the inputs, hence 1e-300 (> 2.2e-308 * 1e6).
JAX_ABS_FLOOR = 1e-300

# Exact (mpmath) oracle.  The reference rounds each operation (<= 0.5 ULP), and
# a handful of operations sit between the inputs and any result (log1p of a
# sum, a quotient, one product with the reduction scale), so a correct
# implementation stays within a few ULP; 8 leaves room for float32 reductions
# whose per-element terms each carry ~2 ULP.  A gradient scaled by (1 + 1e-6)
# is 4.5e9 ULP off in float64 and 8 ULP in float32, so float32 catches only
# bugs of relative size > ~1e-6.
TOL_MP = {np.dtype(np.float64): 8.0, np.dtype(np.float32): 8.0}

# JAX twin in float64 (evaluated at the same, exactly representable, inputs).
# The twin has its own rounding, and XLA's CPU log1p is not correctly rounded:
# jnp.log1p(-p) was measured up to 128 ULP off mpmath over 20,000 uniform p in
# float64 (numpy.log1p: 1 ULP).  So in float64 this oracle can only vouch for
# ~256 ULP; the mpmath column is the tight gate.  Against a float32 result the
# float64 twin is exact to well below a float32 ULP.
TOL_JAX = {np.dtype(np.float64): 256.0, np.dtype(np.float32): 8.0}

# Complex step (h = 1e-20) differentiates the reference's own float64 value
# code: no subtraction error, only the rounding of that code (a few eps of the
# operands), as for JAX.
TOL_COMPLEX_STEP = {np.dtype(np.float64): 16.0, np.dtype(np.float32): 8.0}
COMPLEX_STEP_H = 1e-20   # far below any input's ULP: Im f(x + ih) / h = f'(x) + O(h^2)

# Hessian-vector products vs the exact H v (mpmath), elementwise in the same
# ULP-or-operand units.  H v has one more level of products than the gradient
# (p_k p_j v_j), hence twice the gradient's budget.
TOL_HVP = {np.dtype(np.float64): 32.0, np.dtype(np.float32): 16.0}
# ... and vs jax.jvp(jax.grad(twin)): JAX's own second derivatives of
# log_sigmoid / log_softmax are accurate to a few eps of the largest curvature
# (the operand used), plus XLA's log1p error; as for the first-order JAX check.
TOL_HVP_JAX = {np.dtype(np.float64): 256.0, np.dtype(np.float32): 16.0}

# Central differences of the per-row losses through scipy.optimize.approx_fprime
# (the engine of check_grad; steps +h and -h averaged), float64 only:
# err = ||g - fd|| / ||operands|| (the gradient's operands, >= |g|; see
# oracles.fd_check).  With the step h = (eps max(1, |f_row|))^(1/3) per coordinate
# (oracles.fd_steps) the truncation error ~ h^2 |f'''| / 6 and the cancellation error
# ~ eps |f| / h are both ~ eps^(2/3) ~ 4e-11 relative; measured worst over 10,000
# correct cases: see docs/verification.md.  1e-5 is far above that floor and 10x
# below the smallest gradient error (1e-4 relative) that we want finite differences
# alone to see; smaller planted errors are the exact oracles' job.
TOL_FD = 1e-5
# Finite differences do not gate in float32: a float32 loss has a cancellation
# error of ~eps32 |f| / h, about 1% of the gradient at the best step.
FD_DTYPES = (np.dtype(np.float64),)

# check_grad(direction="all") needs n + 1 evaluations; above this size the
# seeded random-direction mode (scalar directional derivative) is used.
FD_ALL_MAX_SIZE = 200
FD_RANDOM_DIRECTIONS = 3

# mpmath working precision (decimal digits) and the re-check precision.  A
# result is trusted when both precisions round to the same float64 (within one
# ULP); otherwise the case is reported as an oracle disagreement (a failure).
MP_DPS = 50
# Inputs each loss's oracle calls extreme (ce_reference.oracles.<loss>.extreme: logits
# beyond 36, where sigma(x) rounds to 1 in float64 -- the sigma(700) - 1 trap --, or
# probabilities within 1e-12 of 0 or 1) are always re-checked, at this precision:
MP_DPS_EXTREME = 400
# Cases larger than this skip the mpmath oracle (it is pure Python).
MP_MAX_ELEMENTS = 2100

# jax.hessian (a dense n x n Hessian) is only formed for inputs this small.
HESSIAN_MAX_SIZE = 24
# ... and compared normwise: max |hvp - H v| / max(|H v|, operand of H v).  jax.hessian's
# forward-over-reverse derivative of a saturated sigmoid is accurate to ~eps
# absolute, not relative (1.7829e-14 vs the exact 1.7828e-14 was measured), so
# an elementwise test would measure JAX, not the HVP; normwise it was measured
# up to 5.5e-13 in float64 (weights of 1e3 next to small entries).  1e-10 /
# 1e-4 still flag any HVP error of relative size 1e-6 (float64).
TOL_HESSIAN_NORMWISE = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-4}

