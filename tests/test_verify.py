"""The verifier on the correct reference: every row passes; the second-order oracle works."""

import numpy as np
import pytest

from ce_reference.registry import LOSSES
from ce_reference.verify import report as R
from ce_reference.verify import verify


def _all_rows_pass(rep):
    assert all(r.ok for r in rep.rows), "\n".join(R.failure_lines(rep))


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_every_row_passes_on_the_reference(loss):
    rep = verify(loss, cases=1, seed=1)
    assert rep.rows and all(r.n >= 1 for r in rep.rows)
    # the oracles that apply did run
    f64 = [r for r in rep.rows if r.dtype == "float64"]
    assert all(r.stats["jax"] is not None and r.stats["check_grad"] is not None for r in f64)
    assert any(r.stats["mpmath"] is not None for r in rep.rows)
    if LOSSES[loss].input == "logits":
        assert all(r.stats["complex step"] is not None for r in rep.rows)
    if LOSSES[loss].hvp is not None:                 # ce_reference.hvp is installed
        assert all(r.stats["hvp jax"] is not None for r in rep.rows)
        assert any(r.stats["hvp"] is not None for r in rep.rows)
    _all_rows_pass(rep)


@pytest.mark.parametrize("dtype,p0", [(np.float32, 1e-37), (np.float64, 1e-307)])
def test_gradient_does_not_overflow_before_the_mean_scale(dtype, p0):
    """Regression: found by the 10,000-case sweep.  -w q / p was formed before the
    1/denominator scale, so float32 p = 1e-37 with a weight of 1000 gave -inf
    (and a RuntimeWarning) although the scaled result is representable."""
    import ce_reference as ce

    p = np.array([[p0, 1.0]], dtype)
    g = ce.categorical_cross_entropy_grad(p, np.array([0]), weight=np.array([1000, 1], dtype))
    # mean denominator = the target weight 1000, so the gradient is -1000 / 1000 / p0
    assert g[0, 0] == pytest.approx(-1 / p0, rel=4 * float(np.finfo(dtype).eps))
    pb = np.full(100, 0.5, dtype)
    pb[0] = p0
    w = np.ones(100, dtype)
    w[0] = 1000
    gb = ce.binary_cross_entropy_grad(pb, np.ones(100), weight=w)
    assert gb[0] == pytest.approx(-10 / p0, rel=4 * float(np.finfo(dtype).eps))  # -1000 / 100 / p0


def test_second_order_oracle_catches_a_wrong_hvp():
    good = LOSSES["softmax_cross_entropy"].hvp

    def bad(x, t, v, **kw):
        return good(x, t, v, **kw) * (1 + 1e-6)

    rep = verify("softmax_cross_entropy", cases=4, seed=2, hvp={"softmax_cross_entropy": bad},
                 dtypes=(np.float64,), option_sets=("index",), regions=("random",))
    assert not rep.ok
    assert all(f["measure"] in ("hvp", "hvp jax", "contract") for r in rep.rows for f in r.failures)
    assert any(f["measure"] == "hvp" for r in rep.rows for f in r.failures)


def test_loss_without_hvp_is_reported_not_fatal():
    from dataclasses import replace

    spec = replace(LOSSES["binary_cross_entropy_with_logits"], hvp=None)
    assert spec.hvp is None
    rep = verify(specs=[spec], cases=2, dtypes=(np.float64,),
                 option_sets=("hard targets",), regions=("random",))
    assert rep.ok
    assert any("no Hessian-vector product" in n for n in rep.notes)
    assert all(r.stats["hvp"] is None for r in rep.rows)


def test_report_renders_table_json_markdown(tmp_path):
    import json

    rep = verify("binary_cross_entropy_with_logits", cases=2, dtypes=(np.float64,),
                 option_sets=("weight",), hvp=False)
    R.to_json(rep, tmp_path / "r.json")
    R.to_markdown(rep, tmp_path / "r.md")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["ok"] is True and len(data["rows"]) == len(rep.rows)
    assert {"loss", "option_set", "dtype", "region", "n", "ok", "stats"} <= set(data["rows"][0])
    md = (tmp_path / "r.md").read_text()
    assert "| loss |" in md and "PASS" in md
    assert "check_grad" in R.plain_table(rep)


@pytest.mark.slow
def test_no_false_alarm_over_10000_cases():
    """The long sweep: `ce-reference verify --cases 10000` (about 10 minutes on 2 cores).

    Deselected by default (pyproject's ``-m "not slow"``); run it with
    ``python -m pytest -m slow tests/test_verify.py``.
    """
    rep = verify(cases=10000, seed=0, hvp=False)
    assert rep.cases >= 10000
    _all_rows_pass(rep)
