"""Collect nothing here when numba is not installed (``--doctest-modules`` imports every
module of the package; the compiled backend is optional)."""
import importlib.util

collect_ignore_glob = [] if importlib.util.find_spec("numba") else ["*.py"]
