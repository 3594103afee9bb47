"""A loss defined entirely in this file joins the package through the public extension point.

``twice_softmax_cross_entropy`` is ``2 * softmax_cross_entropy`` with its own value,
gradient, value-and-gradient, HVP, JAX twin and mpmath oracle.  Registered with
``ce_reference.register``, it is verified through every oracle, passes the contract
tests and the audit, and the same loss with a planted gradient bug fails the
verifier -- and no library file knows about it.
"""

import dataclasses

import numpy as np
import pytest

import ce_reference as ce
from ce_reference import contract, registry
from ce_reference.options import AXIS, CLASS_WEIGHT, LABEL_SMOOTHING
from ce_reference.oracles import softmax_cross_entropy as softmax_oracle
from ce_reference.oracles._operands import Operands
from ce_reference.spec import LossSpec, Oracle, option_set
from ce_reference.verify import verify

NAME = "twice_softmax_cross_entropy"
_SOFTMAX = ce.LOSSES["softmax_cross_entropy"]


# --------------------------------------------------------------------------- NumPy

def twice_softmax_cross_entropy(logits, targets, *, axis=-1, weight=None, label_smoothing=0.0,
                                reduction="mean"):
    """``2 * softmax_cross_entropy``."""
    return 2 * ce.softmax_cross_entropy(logits, targets, axis=axis, weight=weight,
                                        label_smoothing=label_smoothing, reduction=reduction)


def twice_softmax_cross_entropy_grad(logits, targets, *, axis=-1, weight=None,
                                     label_smoothing=0.0, reduction="mean"):
    return 2 * ce.softmax_cross_entropy_grad(logits, targets, axis=axis, weight=weight,
                                             label_smoothing=label_smoothing,
                                             reduction=reduction)


def twice_softmax_cross_entropy_value_and_grad(logits, targets, *, axis=-1, weight=None,
                                               label_smoothing=0.0, reduction="mean", out=None,
                                               workers=None):
    value, grad = ce.softmax_cross_entropy_value_and_grad(
        logits, targets, axis=axis, weight=weight, label_smoothing=label_smoothing,
        reduction=reduction, out=out, workers=workers)
    grad *= 2
    return 2 * value, grad


def twice_softmax_cross_entropy_hvp(logits, targets, v, *, axis=-1, weight=None,
                                    label_smoothing=0.0, reduction="mean"):
    return 2 * ce.softmax_cross_entropy_hvp(logits, targets, v, axis=axis, weight=weight,
                                            label_smoothing=label_smoothing, reduction=reduction)


def _complex_value(z, targets, **options):
    return 2 * _SOFTMAX.complex_value(z, targets, **options)


# --------------------------------------------------------------------------- oracles

def twin(logits, targets, **options):
    """The JAX twin: twice the softmax cross-entropy written from its definition."""
    return 2 * softmax_oracle.softmax_cross_entropy(logits, targets, **options)


def exact(mp, case):
    losses, grads, denominator = softmax_oracle.exact(mp, case)
    return [2 * v for v in losses], grads * 2, denominator


def exact_hvp(mp, case):
    hv, denominator = softmax_oracle.exact_hvp(mp, case)
    return hv * 2, denominator


def operands(case, v=None):
    return Operands(*(None if a is None else 2 * a for a in softmax_oracle.operands(case, v)))


ORACLE = Oracle(twin=twin, exact=exact, exact_hvp=exact_hvp, operands=operands,
                extreme=softmax_oracle.extreme)

_REGIONS = ("random", "extreme")
SPEC = LossSpec(
    name=NAME, input="logits", structure="classes", targets=("index", "soft"),
    options=(AXIS, CLASS_WEIGHT, LABEL_SMOOTHING),
    option_sets=(option_set("index", "index", (), _REGIONS),
                 option_set("index + weight + smoothing", "index",
                            ("weight", "label_smoothing"), _REGIONS),
                 option_set("soft", "soft", (), _REGIONS)),
    value=twice_softmax_cross_entropy, grad=twice_softmax_cross_entropy_grad,
    value_and_grad=twice_softmax_cross_entropy_value_and_grad,
    hvp=twice_softmax_cross_entropy_hvp, complex_value=_complex_value, oracle=ORACLE,
    short="2x softmax-CE", ref=f"{__name__}:SPEC")


@pytest.fixture
def registered():
    registry.register(SPEC)
    yield SPEC
    registry.unregister(NAME)


def test_registered_and_importable_by_name(registered):
    assert ce.LOSSES[NAME] is SPEC
    assert registry.get(NAME) is SPEC
    assert registry.get(SPEC.ref) is SPEC              # how process pools rebuild it
    with pytest.raises(ValueError, match="already registered"):
        registry.register(dataclasses.replace(SPEC))


def test_verifier_runs_every_oracle_and_passes(registered):
    rep = verify(NAME, cases=40, seed=3)
    assert rep.ok, [r.failures for r in rep.rows if not r.ok]
    measured = {m for r in rep.rows for m, s in r.stats.items() if s is not None}
    assert {"mpmath", "fused", "jax", "check_grad", "complex step", "hvp",
            "hvp jax"} <= measured
    assert {r.label for r in rep.rows} == {"2x softmax-CE"}


def test_contract_and_audit_accept_it(registered):
    contract.check_all(SPEC, contract.contract_cases(SPEC)[::3])
    result = ce.audit(twice_softmax_cross_entropy, loss=NAME,
                      grad=twice_softmax_cross_entropy_grad, cases=30)
    assert result.ok, str(result)
    wrong = ce.audit(ce.softmax_cross_entropy, loss=NAME, cases=30)      # half the loss
    assert not wrong.ok


def test_planted_gradient_bug_fails_the_verifier():
    def grad_bug(*args, **kw):
        return twice_softmax_cross_entropy_grad(*args, **kw) * (1 + 1e-6)

    buggy = dataclasses.replace(SPEC, grad=grad_bug)
    rep = verify(specs=[buggy], cases=20, seed=3, dtypes=(np.float64,))
    assert not rep.ok
    assert any(f["measure"] == "mpmath" for r in rep.rows for f in r.failures)
