"""The contract of every registered loss (ce_reference.contract), run on each spec.

A new loss is covered here the moment it is registered: plain vs fused (``out=``,
in place, ``workers``), the JAX twin's value, grad and JVP, the HVP against
``jax.jvp(jax.grad)``, dtypes, inputs left unmodified, reductions, and errors naming
the argument.  The checks that call ``value_and_grad`` run on each backend of the loss
(NumPy kernels, compiled kernels), with blocks small enough that ``workers=`` really
splits the contract's small inputs.  Loss-specific files keep only pinned values and
extremes.
"""

import pytest

from conftest import BACKEND_PARAMS
from ce_reference import contract
from ce_reference.registry import LOSSES

CASES = [(name, case) for name, spec in LOSSES.items()
         for case in contract.contract_cases(spec)]
SHARED_CHECKS = [c for c in contract.CHECKS if c not in contract.BACKEND_CHECKS]


def _id(item):
    name, case = item
    return f"{name}|{case.option_set}|{case.dtype.name}|{case.region}"


def _on_its_backends(items, name_of):
    """``(item, backend)`` for each backend the item's loss has (only those: a loss
    without a compiled kernel has no compiled case, rather than a skipped one)."""
    by_name = {p.values[0]: p for p in BACKEND_PARAMS}
    return [pytest.param(item, by_name[b].values[0], marks=by_name[b].marks,
                         id=f"{_label(item)}-{b}")
            for item in items for b in LOSSES[name_of(item)].backends if b in by_name]


def _label(item):
    return _id(item) if isinstance(item, tuple) else item


@pytest.mark.parametrize("check", SHARED_CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("item", CASES, ids=[_id(c) for c in CASES])
def test_contract(check, item):
    name, case = item
    check(LOSSES[name], case)


@pytest.mark.parametrize("check", contract.BACKEND_CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("item,backend", _on_its_backends(CASES, lambda item: item[0]),
                         indirect=["backend"])
def test_contract_on_each_backend(check, item, many_blocks):
    name, case = item
    check(LOSSES[name], case)


@pytest.mark.parametrize("name,backend", _on_its_backends(sorted(LOSSES), lambda name: name),
                         indirect=["backend"])
def test_errors_name_the_argument(name, backend):
    spec = LOSSES[name]
    contract.check_errors(spec, contract.error_case(spec))
