"""Shared fixtures: JAX in float64, a deterministic hypothesis profile, seeded RNGs."""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import jax

jax.config.update("jax_enable_x64", True)

# Deterministic property tests: the same examples on every run and in CI.
settings.register_profile(
    "ce_reference",
    derandomize=True,
    deadline=None,
    max_examples=int(os.environ.get("CE_HYPOTHESIS_EXAMPLES", "60")),
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile("ce_reference")


@pytest.fixture
def rng():
    return np.random.default_rng(20261128)


def _backend_params():
    from ce_reference import backends

    skip = pytest.mark.skipif(not backends.compiled_available(),
                              reason="numba is not installed (the 'fast' extra)")
    return [pytest.param(name, marks=() if name == "numpy" else skip, id=name)
            for name in backends.BACKENDS]


#: Every backend, the compiled one skipped without numba (for parametrize and strategies).
BACKEND_PARAMS = _backend_params()


@pytest.fixture(params=BACKEND_PARAMS)
def backend(request, monkeypatch):
    """Each backend in turn, as the default of every ``NAME_value_and_grad`` (through
    ``CE_REFERENCE_BACKEND``, so that generic code such as the contract checks runs on it)."""
    from ce_reference import backends

    monkeypatch.setenv(backends.ENV_VAR, request.param)
    return request.param


#: Block sizes of ``many_blocks``: a few hundred elements make several blocks.
SMALL_BLOCK_BYTES = 2048
SMALL_COMPILED_BLOCK = 256        # elements per softmax block of the compiled kernels
SMALL_COMPILED_TILE = 64          # elements per BCE / categorical block


@pytest.fixture
def many_blocks(backend, monkeypatch):
    """``backend`` with small blocks and no single-thread cut-off, so that ``workers=``
    really splits small inputs over threads (the results must not change)."""
    from ce_reference.kernels import _blocks

    monkeypatch.setattr(_blocks, "BLOCK_BYTES", SMALL_BLOCK_BYTES)
    monkeypatch.setattr(_blocks, "TILE_BYTES", SMALL_BLOCK_BYTES)
    monkeypatch.setattr(_blocks, "SERIAL_ELEMENTS", 0)
    if backend == "numba":
        from ce_reference.compiled import _api_other, _driver, _softmax

        monkeypatch.setattr(_softmax, "BLOCK", SMALL_COMPILED_BLOCK)
        monkeypatch.setattr(_api_other, "BCE_BLOCK", SMALL_COMPILED_TILE)
        monkeypatch.setattr(_api_other, "CCE_BLOCK", SMALL_COMPILED_TILE)
        monkeypatch.setattr(_driver, "PARALLEL_MIN", 0)
    return backend
