"""Collect nothing here when numba is not installed (``--doctest-modules`` imports every
module of the package; the compiled backend is optional)."""

from ce_reference.compiled import AVAILABLE

collect_ignore_glob = [] if AVAILABLE else ["*.py"]
