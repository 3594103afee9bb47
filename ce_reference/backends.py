"""Which kernels run ``NAME_value_and_grad``: the ``backend=`` argument and its default.

Two backends compute the fused loss and gradient of the losses that have both:

``"numpy"``
    The blocked NumPy kernels of :mod:`ce_reference.kernels` (always installed).
``"numba"``
    The compiled kernels of :mod:`ce_reference.compiled` (the ``fast`` extra,
    ``pip install 'ce_reference[fast]'``).

:func:`resolve` decides, once per call: the ``backend`` argument when given,
else the environment variable ``CE_REFERENCE_BACKEND`` (unset or empty: no
choice), else ``"numba"`` when numba is installed, else ``"numpy"``.  A backend
asked for by name must exist: an unknown name is a ``ValueError`` (a non-string
a ``TypeError``) naming the argument or the variable, and ``"numba"`` without
numba an ``ImportError`` naming the extra.  The compiled subpackage is imported
on the first call that needs it (importing numba takes a few tenths of a second).
"""

from __future__ import annotations

import contextlib
import os

#: The backends, the always-available one first.
BACKENDS = ("numpy", "numba")
#: Environment variable giving the default backend.
ENV_VAR = "CE_REFERENCE_BACKEND"
#: How to install the compiled backend.
INSTALL_HINT = "pip install 'ce_reference[fast]'"


_AVAILABLE = []        # compiled.AVAILABLE, once known (the import is done once)


def compiled_available() -> bool:
    """True when the compiled backend can run (numba is installed and imports)."""
    if not _AVAILABLE:
        from . import compiled
        _AVAILABLE.append(compiled.AVAILABLE)
    return _AVAILABLE[0]


def available(names=BACKENDS) -> tuple:
    """The backends among ``names`` that can run here (``"numba"`` needs numba)."""
    return tuple(n for n in names if n != "numba" or compiled_available())


@contextlib.contextmanager
def default(name):
    """Make ``name`` the default backend (``CE_REFERENCE_BACKEND``) inside the block: how
    generic code -- the contract checks, a benchmark -- runs a loss on one backend without
    knowing whether its functions take ``backend=``."""
    old = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = name
    try:
        yield name
    finally:
        if old is None:
            del os.environ[ENV_VAR]
        else:
            os.environ[ENV_VAR] = old


def resolve(backend=None) -> str:
    """The backend a call runs on (see the module docstring); raises for a bad choice."""
    source = "backend"
    if backend is None:
        backend = os.environ.get(ENV_VAR) or None
        source = ENV_VAR
    if backend is None:
        return "numba" if compiled_available() else "numpy"
    if not isinstance(backend, str):
        raise TypeError(f"{source} must be None or one of {BACKENDS}, "
                        f"got {type(backend).__name__} {backend!r}")
    if backend not in BACKENDS:
        raise ValueError(f"{source} must be None or one of {BACKENDS}, got {backend!r}")
    if backend == "numba" and not compiled_available():
        raise ImportError(f"{source}='numba' needs numba, which is not installed "
                          f"(the 'fast' extra: {INSTALL_HINT})")
    return backend
