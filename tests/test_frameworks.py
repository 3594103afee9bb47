"""The framework audits: adapters, classification, shrinking, skipping, reports.

Each installed framework is audited once per session (``quick=True``: every
catalogue probe, a subset of the sweep); the tests read that report.  CI
installs torch==2.13.0, optax, keras (JAX backend) and scikit-learn.  The
Megatron audit (multi-process, float32 only) has its own module,
tests/test_megatron_audit.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import types

import numpy as np
import pytest

from ce_reference.frameworks import FRAMEWORKS, _core, audit_framework, run_framework_audit
from ce_reference.frameworks.__main__ import main

_MODULE = {"torch": "torch", "optax": "optax", "keras": "keras", "sklearn": "sklearn"}
#: The single-process frameworks swept in float64 and float32 (megatron: test_megatron_audit).
SWEPT = tuple(n for n in FRAMEWORKS if n in _MODULE)


def _installed(name):
    return importlib.util.find_spec(_MODULE[name]) is not None


@pytest.fixture(scope="session")
def reports():
    """One quick audit per installed framework (keras/JAX start-up paid once)."""
    before = {k: os.environ.get(k) for k in ("KERAS_BACKEND", "TF_FORCE_GPU_ALLOW_GROWTH")}
    out = {n: audit_framework(n, quick=True) for n in SWEPT if _installed(n)}
    after = {k: os.environ.get(k) for k in before}
    out["_env"] = (before, after)
    return out


def report_for(reports, name):
    if name not in reports:
        pytest.skip(f"{name} is not installed")
    return reports[name]


def finding(rep, fid):
    return next(f for f in rep["findings"] if f["id"] == fid)


# Defects catalogued for the versions installed here (torch 2.13.0, optax 0.2.8,
# keras 3.15.1, scikit-learn 1.9.1); each must be reproduced by running it.
KNOWN_DEFECTS = {
    "torch": ["torch-bce-backward", "torch-ce-prob-neginf", "torch-ce-smoothing-neginf",
              "torch-bcel-target-range", "torch-ce-prob-target-range",
              "torch-nll-zero-weight-neginf", "torch-kl-zero-target-neginf",
              "torch-kl-log-target-neginf"],
    "optax": ["optax-896", "optax-1762", "optax-int-label-negative", "optax-label-range",
              "optax-int-label-range", "optax-poly-neginf", "optax-kl-zero-target-neginf",
              "optax-kl-log-target-neginf"],
    "keras": ["keras-cce-neginf", "keras-scce-neginf", "keras-23451", "keras-mean-float32",
              "keras-scce-label-range", "keras-scce-label-negative", "keras-bce-prob-range",
              "keras-bfocal-nan-grad", "keras-bfocal-probability-space"],
    "sklearn": ["sklearn-multinomial-label-range"],
}
CONVENTIONS = {
    "torch": ["torch-all-ignored-nan", "torch-mean-rows", "torch-log-clamp",
              "torch-smoothing-uniform", "torch-kl-mean-elements", "torch-kl-none-elements"],
    "optax": ["optax-smoothing-uniform"],
    "keras": ["keras-clip", "keras-sum-over-batch-size", "keras-all-masked-zero",
              "keras-smoothing-binary", "keras-clip-boundary-derivative",
              "keras-cce-clip-boundary-derivative", "keras-scce-clip-boundary-derivative",
              "keras-bfocal-clip", "keras-bfocal-class-balancing",
              "keras-cfocal-alpha-multiplier", "keras-cfocal-clip", "keras-kl-clip"],
    "sklearn": ["sklearn-clip"],
}
#: The targets of the divergence, focal and Poly-1 losses: each is swept (quick subset) and
#: every deviation is explained by the catalogue.
NEW_TARGETS = {
    "torch": ["F.nll_loss", "F.kl_div", "F.kl_div one-hot", "F.kl_div (log_target=True)",
              "F.kl_div (log_target=True) one-hot", "F.kl_div (reduction='none', elements)"],
    "optax": ["sigmoid_focal_loss", "sigmoid_focal_loss hard targets",
              "poly_loss_cross_entropy", "poly_loss_cross_entropy one-hot", "kl_divergence",
              "kl_divergence one-hot", "kl_divergence_with_log_targets",
              "kl_divergence_with_log_targets one-hot"],
    "keras": ["BinaryFocalCrossentropy (from_logits)",
              "BinaryFocalCrossentropy (from_logits) hard targets",
              "CategoricalFocalCrossentropy (from_logits)",
              "CategoricalFocalCrossentropy (from_logits) one-hot", "KLDivergence",
              "KLDivergence one-hot"],
}


@pytest.mark.parametrize("name", SWEPT)
def test_audit_runs_and_everything_is_classified(reports, name):
    rep = report_for(reports, name)
    assert rep["status"] == "ran" and rep["version"]
    assert rep["unclassified_cases"] == 0, rep["unclassified"]
    assert rep["exit_code"] == 0
    assert sum(r["cases"] for r in rep["rows"]) > 40
    # float64 and float32 are both swept, and most cases match.
    assert {r["dtype"] for r in rep["rows"]} == {"float64", "float32"}
    assert sum(r["matches"] for r in rep["rows"]) > 0.7 * sum(r["cases"] for r in rep["rows"])


@pytest.mark.parametrize("name", SWEPT)
def test_known_defects_are_reproduced_with_small_inputs(reports, name):
    rep = report_for(reports, name)
    for fid in KNOWN_DEFECTS[name]:
        f = finding(rep, fid)
        assert f["class"] == "defect", (fid, f)
        assert f["probe"]["reproduced"]
        # the probe input is tiny: at most two rows of at most three classes
        x = f["probe"]["input"].split("targets=")[0]
        assert x.count(",") <= 6, (fid, x)


@pytest.mark.parametrize("name", SWEPT)
def test_conventions_are_verified(reports, name):
    rep = report_for(reports, name)
    for fid in CONVENTIONS[name]:
        f = finding(rep, fid)
        assert f["class"] == "convention", (fid, f)


@pytest.mark.parametrize("name", sorted(NEW_TARGETS))
def test_new_loss_targets_are_swept_and_explained(reports, name):
    """The nll / KL / focal / Poly-1 targets run in float64 and float32 (quick subset), and
    none of their deviations is unexplained."""
    rep = report_for(reports, name)
    for target in NEW_TARGETS[name]:
        rows = [r for r in rep["rows"] if r["target"] == target]
        assert rows, target
        assert {r["dtype"] for r in rows} == {"float64", "float32"}, target
        assert sum(r["cases"] for r in rows) > 0, target
        assert not any("unclassified" in r["findings"] for r in rows), (target, rows)
    assert not [u for u in rep["unclassified"] if u["target"] in NEW_TARGETS[name]]


def test_nan_value_with_finite_gradient_is_a_defect(reports):
    """The one rule: a NaN loss whose gradient is finite trains silently -- a defect."""
    r = _core.Result({"value": np.array([np.nan]), "grad": np.array([[0.2, 0.8]])})
    assert _core.nan_value_finite_grad(r)
    assert not _core.nan_value_finite_grad(
        _core.Result({"value": np.array([np.nan]), "grad": np.array([[np.nan, 0.8]])}))
    assert not _core.nan_value_finite_grad(
        _core.Result({"value": np.array([1.0]), "grad": np.array([[0.2, 0.8]])}))
    rep = report_for(reports, "optax")
    f = finding(rep, "optax-int-label-range")
    assert f["kind"] == "defect" and f["class"] == "defect"
    assert "finite gradient" in f["probe"]["framework"]


def test_matches_are_accurate(reports):
    """Matching cases of the logits paths agree to a few eps (well inside TOL_EPS)."""
    rep = report_for(reports, "torch")
    for r in rep["rows"]:
        if "with_logits" in r["target"] or "class indices" in r["target"]:
            assert max(r["worst_eps"].values()) < 32, r


def test_invalid_index_rejected_is_a_match(reports):
    rep = report_for(reports, "torch")
    assert finding(rep, "torch-ce-index-range")["class"] == "match"
    assert "raises" in finding(rep, "torch-ce-index-range")["probe"]["framework"]


def test_sklearn_half_binomial_709_not_reproduced(reports):
    """semantics.md expected NaN below x = -709; scikit-learn 1.9.1 does not show it."""
    rep = report_for(reports, "sklearn")
    f = finding(rep, "sklearn-half-binomial-709")
    assert f["class"] == "not reproduced"
    assert "grad=[-1.]" in f["probe"]["framework"]


def test_torch_bce_backward_witness_is_shrunk(reports):
    rep = report_for(reports, "torch")
    f = finding(rep, "torch-bce-backward")
    assert f["sweep_cases"] > 0
    x = f["sweep_witness"]["input"].split("targets=")[0]
    assert x.count(",") <= 2, x          # shrunk from 6x3 to at most a couple of entries


def test_keras_import_does_not_leak_backend_env(reports):
    if "keras" not in reports:
        pytest.skip("keras is not installed")
    before, after = reports["_env"]
    assert before == after


# --------------------------------------------------------------------------- machinery

def _fake_target(factor):
    from ce_reference import conventions as conv
    from ce_reference.cases import regions

    def ref(case):
        r, g = conv.softmax_cross_entropy_rows(case.x, case.targets)
        return _core.Result({"value": r, "grad": g})

    def run(case):
        r = ref(case)
        return _core.Result({"value": r.arrays["value"], "grad": r.arrays["grad"] * factor})

    return _core.Target("fake", "rows", run, ref, regions.categorical("logits", "soft"), [{}],
                        ("scale 1", "scale 10", "±1e4"), _core.operand_scales(ref))


@pytest.mark.parametrize("factor, ok", [(1 + 1e-6, False), (1 + 1e-14, True)])
def test_planted_gradient_scale_is_caught(factor, ok):
    rows, att, uncl = _core.run_target(_fake_target(factor), [], seed=3)
    assert (not uncl) == ok
    if not ok:
        assert all(o.kind == "grad" for _, o in uncl)


def test_compare_nan_where_finite_is_infinite_error():
    fw = _core.Result({"value": np.array([np.nan, 1.0])})
    ref = _core.Result({"value": np.array([0.0, 1.0])})
    o = _core.compare(fw, ref, "float64", {})
    assert not o.ok and o.errors["value"] == np.inf and o.nonfinite["value"]
    same_inf = _core.compare(_core.Result({"value": np.array([np.inf])}),
                             _core.Result({"value": np.array([np.inf])}), "float64", {})
    assert same_inf.ok


def test_shrink_reduces_to_the_culprit():
    t = _fake_target(1.0)
    bad = t.run

    def run(case):                       # wrong only where a logit is exactly 7
        r = bad(case)
        if np.any(case.x == 7.0):
            r.arrays["value"] = r.arrays["value"] + 1.0
        return r

    t = _core.Target(t.name, t.convention, run, t.reference, t.gen, t.option_sets, t.regions,
                     t.scales)
    x = np.arange(12.0).reshape(4, 3)
    y = np.full((4, 3), 1 / 3)
    small = _core.shrink(t, t.gen.case(x, y), lambda c, o: o.kind == "value")
    assert small.x.shape[0] == 1 and 7.0 in small.x


def test_missing_framework_is_skipped(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "sklearn", None)       # `import sklearn` -> ImportError
    rep = audit_framework("sklearn")
    assert rep["status"] == "skipped" and rep["exit_code"] == 0
    md = tmp_path / "a.md"
    js = tmp_path / "a.json"
    assert run_framework_audit("sklearn", str(js), str(md), console=False) == 0
    assert "skipped" in md.read_text()
    doc = json.loads(js.read_text())
    assert doc["ok"] and doc["frameworks"][0]["status"] == "skipped"


def test_keras_with_another_backend_is_skipped(monkeypatch):
    fake = types.SimpleNamespace(config=types.SimpleNamespace(backend=lambda: "torch"))
    monkeypatch.setitem(sys.modules, "keras", fake)
    rep = audit_framework("keras")
    assert rep["status"] == "skipped" and "torch" in rep["reason"]


def test_reports_written(tmp_path):
    if not _installed("sklearn"):
        pytest.skip("scikit-learn is not installed")
    js, md = tmp_path / "r.json", tmp_path / "r.md"
    code = run_framework_audit("sklearn", str(js), str(md), quick=True, console=False)
    doc = json.loads(js.read_text())
    assert code == 0 and doc["exit_code"] == 0 and doc["ok"] is True
    text = md.read_text()
    assert "sklearn-multinomial-label-range" in text and "| framework |" in text
    # --strict turns a reported defect into a failing status
    assert run_framework_audit("sklearn", quick=True, strict=True, console=False) == 1


def test_cli_usage_errors():
    with pytest.raises(SystemExit) as e:
        main(["tensorflow"])
    assert e.value.code == 2
    with pytest.raises(ValueError, match="unknown framework"):
        run_framework_audit("jax", console=False)


def test_megatron_without_ss_is_skipped(monkeypatch, tmp_path):
    """No `ss`, no loopback evidence: the multi-process audit is skipped, never run blind."""
    import ce_reference._loopback as lb
    monkeypatch.setattr(lb, "ss_available", lambda: False)
    rep = audit_framework("megatron")
    assert rep["status"] == "skipped" and rep["exit_code"] == 0
    if importlib.util.find_spec("megatron") is not None:
        assert "ss" in rep["reason"] and "loopback" in rep["reason"]
    md = tmp_path / "m.md"
    assert run_framework_audit("megatron", markdown_path=str(md), console=False) == 0
    assert "Skipped: not available" in md.read_text()
