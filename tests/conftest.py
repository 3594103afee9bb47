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
