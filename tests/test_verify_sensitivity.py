"""Sensitivity shown, not assumed: planted bugs that the verifier and the audit must catch."""

import numpy as np
import pytest

from ce_reference import audit
from ce_reference.registry import LOSSES
from ce_reference.verify import verify

from _verify_helpers import LINEAR_PLANTED, PLANTED, planted


@pytest.mark.parametrize("bug", sorted(PLANTED))
def test_verifier_catches_planted_bug(bug):
    loss, build, option_sets = PLANTED[bug]
    spec = planted(loss, **build())
    rep = verify(specs=[spec], cases=1, seed=4, dtypes=(np.float64,), hvp=False,
                 option_sets=option_sets, regions=("random",))
    assert not rep.ok, f"planted bug {bug!r} went unnoticed"
    caught_by = {f["measure"] for r in rep.rows for f in r.failures}
    assert caught_by & {"mpmath", "jax", "complex step", "check_grad"}


@pytest.mark.parametrize("bug", sorted(PLANTED))
def test_audit_catches_planted_bug_with_a_small_input(bug):
    loss, build, option_sets = PLANTED[bug]
    parts = build()
    ref = LOSSES[loss]
    fn = parts.get("value", ref.value)
    grad = parts.get("grad", ref.grad)
    result = audit(fn, loss=loss, grad=grad, cases=60, seed=5)
    assert not result.ok, f"planted bug {bug!r} went unnoticed by the audit"
    assert result.mismatches
    smallest = min(m.case.x.size for m in result.mismatches)
    assert smallest <= 4, str(result)          # shrunk to a handful of numbers
    text = str(result)
    assert "smallest input found" in text and "expected" in text


def test_scaled_gradient_is_caught_in_float64_only_by_exact_oracles():
    loss, build, option_sets = PLANTED["grad x (1 + 1e-6)"]
    rep = verify(specs=[planted(loss, **build())], cases=1, seed=4, dtypes=(np.float64,),
                 hvp=False, option_sets=option_sets, regions=("random",))
    measures = {f["measure"] for r in rep.rows for f in r.failures}
    assert {"mpmath", "jax"} <= measures
    # finite differences cannot see a 1e-6 relative error (documented tolerance 1e-5)
    assert all(r.stats["check_grad"]["worst"] < 1e-5 for r in rep.rows)


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_no_false_alarm_on_the_reference_audited_as_external(loss):
    spec = LOSSES[loss]
    result = audit(spec.value, loss=loss, grad=spec.grad, cases=60, seed=6)
    assert result.ok, str(result)


@pytest.mark.parametrize("bug", sorted(LINEAR_PLANTED))
def test_verifier_catches_planted_linear_cross_entropy_bug(bug):
    build, option_sets = LINEAR_PLANTED[bug]
    spec = planted("linear_cross_entropy", **build())
    rep = verify(specs=[spec], cases=1, seed=4, dtypes=(np.float64,), hvp=False,
                 option_sets=option_sets, regions=("random",))
    assert not rep.ok, f"planted bug {bug!r} went unnoticed"
    caught_by = {f["measure"] for r in rep.rows for f in r.failures}
    assert caught_by & {"mpmath", "jax", "check_grad"}
    reference = verify(specs=[LOSSES["linear_cross_entropy"]], cases=1, seed=4,
                       dtypes=(np.float64,), hvp=False, option_sets=option_sets,
                       regions=("random",))
    assert reference.ok, "the same rows pass without the bug"


def _richest_option_set(spec):
    """The option set with the most options (the one most likely to hide a bug)."""
    return max(spec.option_sets, key=lambda o: len(o.name)).name


@pytest.mark.parametrize("name", sorted(n for n, s in LOSSES.items() if len(s.wrt) == 1))
def test_a_gradient_off_by_one_in_a_million_fails_for_every_loss(name):
    """Every registered loss: its gradient scaled by 1 + 1e-6 fails the mpmath gate in
    float64 on the random inputs of its richest option set (the error unit -- eps of the
    operands -- is not so loose that it hides a bug of that size)."""
    import dataclasses

    spec = LOSSES[name]
    good = spec.grad

    def planted(*args, **kw):
        return good(*args, **kw) * (1 + 1e-6)

    rep = verify(specs=[dataclasses.replace(spec, grad=planted)], cases=6, seed=5,
                 dtypes=(np.float64,), hvp=False, option_sets=[_richest_option_set(spec)],
                 regions=["random"])
    assert rep.rows and not rep.ok
    assert any(f["measure"] == "mpmath" for r in rep.rows for f in r.failures)
