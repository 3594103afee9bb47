"""The kernel audits: PyTorch's F.linear_cross_entropy, Liger Kernel, cut-cross-entropy.

The machinery (linear cases, the shrinker on them, the exact reference, the
low-precision criterion) needs nothing beyond the library and PyTorch.  The
audits need the ``kernels`` extra (``pip install -e ".[kernels]"``); they are
skipped without it -- except in CI (``CI`` set), where a missing package is a
failure: CI installs what the README says, and the README installs the extra.
Each installed kernel audit runs once per session in ``--quick`` mode; the
pinned findings below run their smallest inputs directly.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os

import numpy as np
import pytest

from ce_reference.auditing.tolerance import low_precision
from ce_reference.cases import Case, regions, shrink
from ce_reference.frameworks import KERNELS, _core, _kernels as K, audit_framework

_PACKAGES = {"torch-linear": ("torch",), "liger": ("torch", "triton", "liger_kernel"),
             "cce": ("torch", "triton", "cut_cross_entropy")}


def _installed(*modules):
    return all(importlib.util.find_spec(m) is not None for m in modules)


def _require(name):
    """Skip without the packages of audit ``name`` -- but fail in CI, which must run them."""
    mods = _PACKAGES[name]
    if not _installed(*mods):
        missing = [m for m in mods if not _installed(m)]
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the {name} audit, but {missing} are not installed "
                        "(the README's install command installs the 'kernels' extra)")
        pytest.skip(f"not installed: {missing} (pip install -e '.[kernels]')")


def _case(N=4, H=8, V=37, dtype=np.float32, seed=0, **options):
    return regions.linear(rows=N, hidden=H, vocab=V)(np.random.default_rng(seed), dtype,
                                                     options, "scale 3")


# --------------------------------------------------------------------------- machinery

def test_linear_generator_makes_the_regions_logits():
    g = regions.linear()
    for region in regions.LINEAR_REGIONS:
        c = g(np.random.default_rng(1), "float64", {"ignore_index": -100, "linear_bias": "random"},
              region)
        z = c.x @ c.kwargs["linear_weight"].T + c.kwargs["linear_bias"]
        assert z.shape[0] == 4 and np.all(np.isfinite(z))
        assert c.linear == "linear_weight" and c.axis == 1 and c.domain == "features"
        assert c.batch_shape == (4,) and c.index_targets
    # all ignored needs ignore_index
    assert g(np.random.default_rng(0), "float32", {}, "all ignored") is None
    # the logits of "dominant right" are the region's (exactly, in float64)
    c = g(np.random.default_rng(2), "float64", {}, "dominant right")
    z = c.x @ c.kwargs["linear_weight"].T
    assert np.all(np.argmax(z, axis=1) == c.targets)


def test_shrinker_drops_rows_classes_and_features_of_a_linear_case():
    c = _case(dtype=np.float64, weight="random", linear_bias="random", label_smoothing=0.1)
    target_class = int(c.targets[0])

    def still(cand):        # "fails" while the first class of the first row is present
        W = cand.kwargs["linear_weight"]
        return cand.x.shape[0] >= 1 and W.shape[1] >= 1 and int(cand.targets[0]) < W.shape[0]

    small, _ = shrink(c, still, budget=2000)
    W = small.kwargs["linear_weight"]
    assert small.x.shape == (1, 1) and W.shape == (1, 1)
    assert small.targets.tolist() == [0]                    # renumbered
    assert "label_smoothing" not in small.kwargs and "weight" not in small.kwargs
    assert "linear_bias" not in small.kwargs
    assert target_class >= 0


def test_shrinker_keeps_weight_bias_and_class_weights_aligned():
    c = _case(dtype=np.float64, weight="random", linear_bias="random")
    seen = []

    def still(cand):
        if not {"linear_bias", "weight"} <= cand.kwargs.keys():
            return False
        W, b, w = (cand.kwargs[k] for k in ("linear_weight", "linear_bias", "weight"))
        seen.append(cand)
        return W.shape[0] == b.shape[0] == w.shape[0] and W.shape[1] == cand.x.shape[1] \
            and int(cand.targets.max()) < W.shape[0] and W.shape[0] > 3

    small, _ = shrink(c, still, budget=300)
    assert small.kwargs["linear_weight"].shape[0] == 4
    assert all(cand.kwargs["linear_weight"].shape[0] == cand.kwargs["linear_bias"].shape[0]
               for cand in seen if "linear_bias" in cand.kwargs)


def test_low_precision_ratio():
    exact = np.array([1.0, -2.0, 0.5])
    base = exact + np.array([1e-3, 0, 0])
    eps = 2.0 ** -10
    m = low_precision(exact + np.array([0, 4e-3, 0]), exact, base, "float16")
    assert m.worst == pytest.approx(4e-3 / (1e-3 + eps * 2.0)) and m.index == (1,) and m.detail
    assert low_precision(base, exact, base, "float16").worst < 1
    assert low_precision(exact, exact, base, "float16").worst == 0
    # NaN where the exact result is finite: infinite, unless the composition fails the same way
    bad = exact.copy()
    bad[1] = np.nan
    assert math.isinf(low_precision(bad, exact, base, "float16").worst)
    assert low_precision(bad, exact, bad, "float16").worst == 1.0


def test_exact_linear_shift_and_per_row_upstream_gradient():
    from ce_reference.losses.softmax_cross_entropy import softmax_cross_entropy_value_and_grad
    c = _case(dtype=np.float64, N=6, shift=True, reduction="none", grad_output="random")
    r = K.exact_linear(c).arrays
    x, W, y = c.x, c.kwargs["linear_weight"], c.targets
    g = c.kwargs["grad_output"]
    assert r["value"].shape == (2, 3) and r["grad input"].shape == x.shape
    assert not r["grad input"][:, -1].any()                  # the last position has no target
    z = x[:, :-1] @ W.T
    loss, G = softmax_cross_entropy_value_and_grad(z.reshape(-1, 37), y[:, 1:].reshape(-1),
                                                   reduction="none")
    G = G * g.reshape(-1)[:, None]
    np.testing.assert_allclose(r["value"].ravel(), loss, rtol=1e-13)
    np.testing.assert_allclose(r["grad weight"], G.T @ x[:, :-1].reshape(-1, 8), rtol=1e-12,
                               atol=1e-15)


@pytest.mark.parametrize("options", [
    {"weight": "random", "ignore_index": -100, "label_smoothing": 0.1, "linear_bias": "random"},
    {"z_loss": 1e-2, "softcap": 3.0, "reduction": "sum"},
    {"reduction": "none", "grad_output": "random", "weight": "random"},
    {"shift": True, "ignore_index": -100, "z_loss": 0.5, "reduction": "mean"},
])
def test_composition_in_float64_is_the_exact_reference(options):
    """The float16 baseline (plain PyTorch ops) and the reference agree in float64."""
    pytest.importorskip("torch")
    c = _case(dtype=np.float64, N=6, seed=3, **options)
    ref, comp = K.exact_linear(c).arrays, K.composition(c).arrays
    assert set(ref) == set(comp)
    for k in ref:
        np.testing.assert_allclose(comp[k], ref[k], rtol=1e-12, atol=1e-14, err_msg=k)


def test_low_precision_judgement_of_a_target():
    pytest.importorskip("torch")

    def run(case):
        r = K.composition(case)
        r.arrays["grad weight"] = r.arrays["grad weight"] * np.float16(1.01)
        return r

    t = _core.Target("fake", "", run, K.exact_linear, regions.linear(), [{}], ("scale 3",),
                     K.linear_scales, dtypes=("float16",), baseline=K.composition)
    c = t.gen(np.random.default_rng(0), "float16", {}, "scale 3")
    o = _core.evaluate(t, c)
    assert o.unit == "ratio" and not o.ok and o.kind == "grad weight"
    assert o.errors["grad weight"] > 1 >= o.errors["value"]


# --------------------------------------------------------------------------- the quick audits

@pytest.fixture(scope="session")
def kernel_reports():
    return {}


def _report(kernel_reports, name):
    _require(name)
    if name not in kernel_reports:
        kernel_reports[name] = audit_framework(name, quick=True)
    return kernel_reports[name]


def _finding(rep, fid):
    return next(f for f in rep["findings"] if f["id"] == fid)


EXPECTED = {
    "torch-linear": {"torch-chunked-all-ignored-nan-grad": "defect",
                     "torch-chunked-f16-target-term-overflow": "defect",
                     "torch-zero-weight-mean": "convention",
                     "torch-chunked-f16-bias-double-rounding": "precision"},
    "liger": {"liger-all-ignored-zero": "convention", "liger-softcap-neginf": "convention",
              "liger-zero-weight-mean": "convention", "liger-1298": "not reproduced",
              "liger-243": "not reproduced", "liger-1329-float16": "not reproduced",
              "liger-f16-bias-double-rounding": "precision",
              "liger-softcap-derivative-float32": "precision"},
    "cce": {"cce-softcap-padding": "defect", "cce-all-ignored-zero-division": "defect",
            "cce-indexed-dot-float16-products": "precision",
            "cce-14-float16": "not reproduced", "cce-52": "not exercised"},
}


@pytest.mark.parametrize("name", KERNELS)
def test_quick_audit_runs_and_everything_is_classified(kernel_reports, name):
    rep = _report(kernel_reports, name)
    assert rep["status"] == "ran", rep.get("reason")
    assert rep["unclassified_cases"] == 0, rep["unclassified"]
    assert rep["exit_code"] == 0
    assert {r["dtype"] for r in rep["rows"]} == {"float32", "float16"}
    assert sum(r["cases"] for r in rep["rows"]) >= 6
    assert rep["worst_match_eps"] <= _core.TOL_EPS and rep.get("worst_match_ratio", 0) <= 1
    assert rep["about"]["versions"]["torch"]
    for fid, cls in EXPECTED[name].items():
        f = _finding(rep, fid)
        assert f["class"] == cls, (fid, f)


def test_quick_audit_markdown_has_the_kernel_sections(kernel_reports, tmp_path):
    from ce_reference.frameworks import _report as R
    rep = _report(kernel_reports, "liger")
    text = R.markdown({"seed": 0, "frameworks": [rep]})
    for heading in ("### Versions", "### Interpreter patches, and why", "### Exercised",
                    "### Not exercised, and why", "### Time per call", "float16 (ratio)"):
        assert heading in text, heading
    assert "libdevice" in text and "bfloat16" in text


# --------------------------------------------------------------------------- pinned findings

def test_interpreter_patches():
    _require("liger")
    from ce_reference.frameworks import _triton_interp
    _triton_interp.enable()
    f = _triton_interp.facts()
    assert f["patched"] and f["float_arg .to()"].startswith("ok")
    assert float(f["libdevice.tanh"].split()[-1]) < 1e-6
    # the fact that keeps bfloat16 out of the audits: the interpreter's bf16 arithmetic
    assert f["torch.bfloat16 a*b+c vs torch"]["differing_fraction"] > 0.5
    assert f["torch.float16 a*b+c vs torch"]["differing_fraction"] == 0.0


def test_liger_fused_linear_every_option_float32_and_callers_arrays_untouched():
    _require("liger")
    from ce_reference.frameworks import _liger
    _liger.load()
    c = _case(weight="random", ignore_index=-100, label_smoothing=0.1, z_loss=1e-2,
              softcap=3.0, linear_bias="random", seed=5)
    before = {k: v.copy() for k, v in c.kwargs.items() if isinstance(v, np.ndarray)}
    x0 = c.x.copy()
    t = next(t for t in _liger.targets() if t.name == _liger.FLCE)
    o = _core.evaluate(t, c)
    assert o.ok, o.detail
    assert max(o.errors.values()) < 16
    assert np.array_equal(c.x, x0) and all(np.array_equal(c.kwargs[k], v)
                                           for k, v in before.items())


def test_liger_cross_entropy_all_ignored_mean_is_zero():
    _require("liger")
    from ce_reference.frameworks import _liger
    _liger.load()
    gen = regions.categorical("logits", "index")
    c = gen.case(np.zeros((2, 3), np.float32), np.array([-100, -100]), {"ignore_index": -100})
    r = _liger.run_cross_entropy(c)
    assert r.arrays["value"] == 0 and not r.arrays["grad"].any()
    assert np.isnan(K.exact_logits(c).arrays["value"])


def test_cce_softcap_padding_defect_is_pinned():
    _require("cce")
    from ce_reference.frameworks import _cce
    _cce.load()
    one = regions.linear().case(np.zeros((1, 1), np.float32), [0],
                                {"linear_weight": np.zeros((1, 1), np.float32), "softcap": 1.0,
                                 "reduction": "sum"})
    loss = _cce.run(one, "cce").arrays["value"]
    # exact: one class, loss 0; cut-cross-entropy 25.1.1: log(1 + 127 / e), 127 padded columns
    assert float(loss) == pytest.approx(np.log1p(127 / np.e), rel=1e-6)
    full = one.replace(kwargs={**one.kwargs, "linear_weight": np.zeros((128, 1), np.float32)})
    assert float(_cce.run(full, "cce").arrays["value"]) == pytest.approx(np.log(128), rel=1e-6)


def test_cce_float32_backward_is_refused_by_the_package():
    _require("cce")
    import torch
    from cut_cross_entropy import linear_cross_entropy

    from ce_reference.frameworks import _cce
    _cce.load()
    e = torch.zeros((2, 4), requires_grad=True)
    c = torch.zeros((5, 4), requires_grad=True)
    with pytest.raises(AssertionError, match="bf16 or fp16"):
        linear_cross_entropy(e, c, torch.tensor([0, 1]), impl="cce").backward()


def test_torch_chunked_all_ignored_mean_gives_nan_gradients():
    _require("torch-linear")
    from ce_reference.frameworks import _torch_linear as T
    T.load()
    one = np.ones((2, 2), np.float32)
    kw = {"linear_weight": np.ones((3, 2), np.float32), "ignore_index": -100}
    c = regions.linear().case(one, [-100, -100], kw)
    ref = T.run(c)
    chunked = T.run(c.replace(kwargs={**kw, "options": {}}))
    assert np.isnan(ref.arrays["value"]) and not ref.arrays["grad input"].any()
    assert np.isnan(chunked.arrays["value"]) and np.isnan(chunked.arrays["grad input"]).all()


def test_cli_runs_a_kernel_audit(tmp_path, capsys):
    _require("torch-linear")
    from ce_reference.cli import main
    js, md = tmp_path / "a.json", tmp_path / "a.md"
    code = main(["audit", "torch-linear", "--quick", "--no-progress", "--json", str(js),
                 "--markdown", str(md)])
    doc = json.loads(js.read_text())
    assert code == 0 and doc["ok"] and doc["frameworks"][0]["framework"] == "torch-linear"
    assert "torch-chunked-all-ignored-nan-grad" in md.read_text()


def test_missing_kernel_package_is_a_clear_skip(monkeypatch, tmp_path):
    from importlib import metadata

    from ce_reference.frameworks import run_framework_audit
    real = metadata.version

    def version(name):
        if name == "liger-kernel":
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(K.metadata, "version", version)
    rep = audit_framework("liger")
    assert rep["status"] == "skipped" and rep["exit_code"] == 0
    assert "not installed: liger-kernel" in rep["reason"] and ".[kernels]" in rep["reason"]
    md = tmp_path / "a.md"
    assert run_framework_audit("liger", markdown_path=str(md), console=False) == 0
    assert "not installed: liger-kernel" in md.read_text()


def test_unknown_audit_name_lists_the_kernels():
    from ce_reference.frameworks import run_framework_audit
    with pytest.raises(ValueError, match="torch-linear"):
        run_framework_audit("triton", console=False)


def test_case_without_linear_weight_is_rejected():
    with pytest.raises(TypeError):
        Case(x=np.zeros((1, 2)), targets=np.zeros(1, int), linear="linear_weight")
