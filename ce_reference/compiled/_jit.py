r"""The ``kernel`` decorator: numba ``njit`` with a guarded, self-invalidating disk cache.

Every function that Python calls directly is compiled with
``nogil=True`` (threads run kernels concurrently), ``error_model="numpy"``
(no Python division check: a loop with ``/`` vectorises) and
``boundscheck=False``.  Helpers called only from kernels are plain
``njit`` functions; they are compiled into their callers (and cached with them).

Caching, and why not simply ``cache=True``:

* ``cache=True`` decides where to write at *decoration* time, i.e. at import,
  and raises ``RuntimeError: cannot cache function ...: no locator available``
  when neither the package's ``__pycache__``, ``NUMBA_CACHE_DIR`` nor the user
  cache directory is writable (measured, numba 0.68.1).  Here a failure to find
  a writable directory only disables caching (``CACHE_DIR`` is then None).
* numba keys a cached function on the source of *its own file* only: the
  kernels inline the functions of :mod:`._math`, and a cache written before a
  change of ``_math.py`` would be loaded after it.  The stamp used here is a
  hash of every ``.py`` file of this subpackage plus the numba and llvmlite
  versions, so any change recompiles.

Cache directory: the first writable of ``$CE_REFERENCE_CACHE_DIR``,
``$NUMBA_CACHE_DIR/ce_reference``, this subpackage's
``__pycache__/numba``, the user cache directory
(``~/.cache/ce_reference/numba``) and ``<tempdir>/ce_reference-numba-<uid>``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile

import llvmlite
import numba
from numba.core import caching, config

_HERE = os.path.dirname(os.path.abspath(__file__))


def _source_stamp() -> str:
    h = hashlib.sha256()
    for name in sorted(os.listdir(_HERE)):
        if name.endswith(".py"):
            h.update(name.encode())
            with open(os.path.join(_HERE, name), "rb") as f:
                h.update(f.read())
    h.update(f"numba {numba.__version__} llvmlite {llvmlite.__version__}".encode())
    return h.hexdigest()


STAMP = _source_stamp()


def _candidate_dirs():
    env = os.environ.get("CE_REFERENCE_CACHE_DIR")
    if env:
        yield env
    if config.CACHE_DIR:
        yield os.path.join(config.CACHE_DIR, "ce_reference")
    yield os.path.join(_HERE, "__pycache__", "numba")
    yield os.path.join(os.path.expanduser("~"), ".cache", "ce_reference", "numba")
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    yield os.path.join(tempfile.gettempdir(), f"ce_reference-numba-{uid}")


def _writable_dir_from(paths):
    """The first directory of ``paths`` that exists (or can be created) and is writable."""
    for path in paths:
        try:
            os.makedirs(path, exist_ok=True)
            tempfile.TemporaryFile(dir=path).close()
            return path
        except OSError:
            continue
    return None


CACHE_DIR = _writable_dir_from(_candidate_dirs())


class _Locator(caching._CacheLocator):
    """Cache files in a subdirectory of :data:`CACHE_DIR`, stamped with :data:`STAMP`."""

    def __init__(self, py_func, py_file):
        self._py_file = py_file
        self._lineno = py_func.__code__.co_firstlineno
        # One subdirectory per source directory and module name: two installations (or
        # this package imported under another name) never read each other's entries,
        # which pickle references to their own modules.
        key = f"{os.path.dirname(os.path.abspath(py_file))}|{py_func.__module__}"
        self._path = os.path.join(CACHE_DIR, hashlib.sha1(key.encode()).hexdigest()[:16])

    def get_cache_path(self):
        return self._path

    def get_source_stamp(self):
        return STAMP

    def get_disambiguator(self):
        return str(self._lineno)

    @classmethod
    def from_function(cls, py_func, py_file):
        if CACHE_DIR is None:
            return None
        self = cls(py_func, py_file)
        try:
            self.ensure_cache_path()
        except OSError:
            return None
        return self


class _Impl(caching.CompileResultCacheImpl):
    _locator_classes = [_Locator]


class _FunctionCache(caching.FunctionCache):
    _impl_class = _Impl


KERNELS = []          # every kernel, for warmup() and cache statistics


def kernel(fn):
    """``njit(nogil=True, error_model="numpy")`` with the guarded cache."""
    disp = numba.njit(nogil=True, error_model="numpy", boundscheck=False)(fn)
    try:
        disp._cache = _FunctionCache(fn)         # what Dispatcher.enable_caching() does
    except Exception:                            # no writable location: compile per process
        pass
    KERNELS.append(disp)
    return disp


def helper(fn=None, **opts):
    """Plain ``njit`` for functions called only from kernels (compiled into them)."""
    def deco(f):
        return numba.njit(error_model="numpy", boundscheck=False, **opts)(f)
    return deco if fn is None else deco(fn)
