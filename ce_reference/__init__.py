"""ce_reference: verified reference cross-entropy losses and gradients.

Every loss has ``NAME``, ``NAME_grad``, ``NAME_value_and_grad`` and
``NAME_hvp`` (NumPy, hand-derived; one module each in
:mod:`ce_reference.losses`, all exported here); JAX twins are in
:mod:`ce_reference.jax`; the registry of all losses, and the extension point
:func:`register`, in :mod:`ce_reference.registry`.
"""

from .losses import PUBLIC as _PUBLIC
from .registry import LOSSES, LossSpec, register

globals().update(_PUBLIC)

from . import testing  # noqa: E402
from .auditing import audit  # noqa: E402

__version__ = "0.1.0"

__all__ = [*_PUBLIC, "LOSSES", "LossSpec", "audit", "register", "testing"]
