"""ce_reference: verified reference cross-entropy losses and gradients.

Four losses, each with ``NAME``, ``NAME_grad``, ``NAME_value_and_grad`` and
``NAME_hvp`` (NumPy, hand-derived; the Hessian-vector products live in
:mod:`ce_reference.hvp`); JAX twins in :mod:`ce_reference.jax`; the registry of
all losses in :mod:`ce_reference.registry`.
"""

from .binary import (
    binary_cross_entropy,
    binary_cross_entropy_grad,
    binary_cross_entropy_value_and_grad,
    binary_cross_entropy_with_logits,
    binary_cross_entropy_with_logits_grad,
    binary_cross_entropy_with_logits_value_and_grad,
)
from .categorical import (
    categorical_cross_entropy,
    categorical_cross_entropy_grad,
    categorical_cross_entropy_value_and_grad,
    softmax_cross_entropy,
    softmax_cross_entropy_grad,
    softmax_cross_entropy_value_and_grad,
)
from .hvp import (
    binary_cross_entropy_hvp,
    binary_cross_entropy_with_logits_hvp,
    categorical_cross_entropy_hvp,
    softmax_cross_entropy_hvp,
)

from . import binary as _binary, categorical as _categorical, hvp as _hvp

from . import testing
from .verify.audit import audit

__version__ = "0.1.0"

__all__ = [*_binary.__all__, *_categorical.__all__, *_hvp.__all__, "audit", "testing"]
