"""The contract of every registered loss (ce_reference.contract), run on each spec.

A new loss is covered here the moment it is registered: plain vs fused (``out=``,
in place, ``workers``), the JAX twin's value, grad and JVP, the HVP against
``jax.jvp(jax.grad)``, dtypes, inputs left unmodified, reductions, and errors naming
the argument.  Loss-specific files keep only pinned values and extremes.
"""

import pytest

from ce_reference import contract
from ce_reference.registry import LOSSES

CASES = [(name, case) for name, spec in LOSSES.items()
         for case in contract.contract_cases(spec)]


def _id(item):
    name, case = item
    return f"{name}|{case.option_set}|{case.dtype.name}|{case.region}"


@pytest.mark.parametrize("check", contract.CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("item", CASES, ids=[_id(c) for c in CASES])
def test_contract(check, item):
    name, case = item
    check(LOSSES[name], case)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_errors_name_the_argument(name):
    spec = LOSSES[name]
    contract.check_errors(spec, contract.error_case(spec))
