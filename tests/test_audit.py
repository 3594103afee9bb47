"""ce_reference.audit / testing.assert_matches_reference on external-style functions."""

import numpy as np
import pytest

import ce_reference
from ce_reference.testing import assert_matches_reference


def naive_softmax_ce(logits, targets, *, reduction="mean"):
    """A textbook implementation: exp overflows for large logits."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        e = np.exp(logits)
        p = e / e.sum(axis=-1, keepdims=True)
        nll = -np.log(np.take_along_axis(p, targets[..., None], axis=-1)[..., 0])
    return {"mean": nll.mean(), "sum": nll.sum(), "none": nll}[reduction]


def stable_softmax_ce(logits, targets, *, reduction="mean"):
    z = logits - logits.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=-1))
    nll = lse - np.take_along_axis(z, targets[..., None], axis=-1)[..., 0]
    return {"mean": nll.mean(), "sum": nll.sum(), "none": nll}[reduction]


def test_a_stable_implementation_matches_and_only_its_keywords_are_exercised():
    result = ce_reference.audit(stable_softmax_ce, loss="softmax_cross_entropy", cases=60,
                                targets=("index",))
    assert result.ok, str(result)
    assert result.exercised == ("reduction",)
    assert set(result.not_exercised) == {"axis", "weight", "ignore_index", "label_smoothing",
                                         "z_loss", "softcap"}
    assert "MATCH" in str(result)


def test_a_naive_implementation_fails_on_extreme_logits_with_a_shrunk_input():
    result = ce_reference.audit(naive_softmax_ce, loss="softmax_cross_entropy", cases=60,
                                targets=("index",))
    assert not result.ok
    m = result.mismatches[0]
    assert m.quantity == "value"
    assert m.case.x.size <= 4                               # a couple of logits suffice
    assert np.abs(m.case.x).max() > 80                      # ... and they are large ones


def test_keyword_arguments_follow_the_signature():
    seen = set()

    def spy(logits, targets, *, label_smoothing=0.0, reduction="mean"):
        seen.update(k for k, v in (("label_smoothing", label_smoothing),) if v)
        return ce_reference.softmax_cross_entropy(logits, targets, label_smoothing=label_smoothing,
                                                  reduction=reduction)

    result = ce_reference.audit(spy, loss="softmax_cross_entropy", cases=40)
    assert result.ok, str(result)
    assert "label_smoothing" in result.exercised and "label_smoothing" in seen
    assert "weight" not in result.exercised


def test_assert_matches_reference_raises_a_readable_message():
    def wrong_grad(logits, targets, **kw):
        return ce_reference.binary_cross_entropy_with_logits_grad(logits, targets, **kw) * 2

    with pytest.raises(AssertionError) as info:
        assert_matches_reference(ce_reference.binary_cross_entropy_with_logits,
                                 loss="binary_cross_entropy_with_logits", grad=wrong_grad,
                                 cases=30)
    msg = str(info.value)
    assert "grad mismatch" in msg and "smallest input found" in msg and "expected" in msg
    ok = assert_matches_reference(ce_reference.binary_cross_entropy_with_logits,
                                  loss="binary_cross_entropy_with_logits", cases=20)
    assert ok.ok


def test_exceptions_and_bad_shapes_are_mismatches_not_crashes():
    def raises(x, t):
        raise RuntimeError("boom")

    r = ce_reference.audit(raises, loss="binary_cross_entropy", cases=10, shrink=False)
    assert not r.ok and "RuntimeError: boom" in str(r)

    def wrong_shape(x, t, *, reduction="mean"):
        return np.zeros(3)

    r = ce_reference.audit(wrong_shape, loss="binary_cross_entropy", cases=10, shrink=False)
    assert not r.ok and "shape" in str(r)


def test_argument_errors():
    with pytest.raises(ValueError, match="unknown loss"):
        ce_reference.audit(stable_softmax_ce, loss="nope")
    with pytest.raises(TypeError, match="callable"):
        ce_reference.audit(42, loss="softmax_cross_entropy")
    with pytest.raises(ValueError, match="cases"):
        ce_reference.audit(stable_softmax_ce, loss="softmax_cross_entropy", cases=0)


def test_result_to_dict_is_json_serialisable():
    import json

    from ce_reference.verify.report import clean_json

    r = ce_reference.audit(naive_softmax_ce, loss="softmax_cross_entropy", cases=20,
                           targets=("index",))
    d = json.loads(json.dumps(clean_json(r.to_dict()), allow_nan=False))
    assert d["ok"] is False and d["mismatches"][0]["quantity"] == "value"


def test_import_of_ce_reference_stays_light():
    import subprocess
    import sys

    code = "import sys, ce_reference; print('jax' in sys.modules, 'mpmath' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "False"]
