"""The Megatron audit (``ce-reference audit megatron --quick``) on 1, 2 and 4 gloo processes:
every socket on loopback, every deviation catalogued, every catalogued finding reproduced with
its class, on the unified audit stack (the framework audits' cases, regions, shrinker,
tolerance and classification)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from ce_reference._loopback import ss_available

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("megatron") is None
                       or importlib.util.find_spec("torch") is None,
                       reason="megatron-core / torch not installed (extra 'megatron')"),
    pytest.mark.skipif(not ss_available(), reason="cannot check that the gloo sockets stay on "
                                                  "loopback without `ss`: the audit is left out"),
]

EXPECTED = {
    "megatron-smoothing-others": "convention",
    "megatron-smoothing-tp": "defect",
    "megatron-smoothing-tp-width1": "defect",
    "megatron-smoothing-underflow": "defect",
    "megatron-inplace-float32": "defect",
    "megatron-target-range": "defect",
    "megatron-negative-smoothing": "defect",
    "megatron-smoothing-one": "match",
    "megatron-tiny-loss": "match",
    "megatron-fused-bf16-grad": "defect",
}


@pytest.fixture(scope="module")
def report():
    from ce_reference.frameworks import audit_framework
    return audit_framework("megatron", quick=True)


def finding(rep, fid):
    return next(f for f in rep["findings"] if f["id"] == fid)


def test_version_is_the_pinned_one(report):
    from ce_reference.frameworks._megatron import MEGATRON_CORE_VERSION
    assert report["status"] == "ran"
    assert report["version"].startswith(MEGATRON_CORE_VERSION + " (torch ")


def test_sockets_stay_on_loopback(report):
    lb = report["loopback"]
    assert lb["ok"] and not lb["violations"], lb["violations"]
    assert lb["samples"] >= 3 and lb["listening"] >= 1        # gloo's pairs were seen
    assert lb["listening_addresses"] == ["127.0.0.1"]
    assert [g["tp"] for g in report["groups"]] == [1, 2, 4]


def test_every_deviation_is_catalogued(report):
    assert report["unclassified"] == [] and report["exit_code"] == 0 and report["ok"]
    assert report["verdict"].startswith("ALL CLASSIFIED")


def test_findings_reproduce_with_their_class(report):
    got = {f["id"]: f["class"] for f in report["findings"]}
    assert got == EXPECTED
    assert "identical to label_smoothing=0" in finding(report, "megatron-negative-smoothing")[
        "probe"]["note"]
    assert "bfloat16 input after the call: unchanged" in finding(
        report, "megatron-inplace-float32")["probe"]["note"]


def test_float32_only_and_one_tolerance(report):
    from ce_reference.auditing.tolerance import TOL_EPS
    assert {r["dtype"] for r in report["rows"]} == {"float32"}
    assert report["tolerance_eps"] == TOL_EPS


def test_without_smoothing_it_matches_at_every_tp_and_is_tp_invariant(report):
    plain = [r for r in report["rows"] if r["target"].startswith("vocab_parallel_cross_entropy")
             and r["options"] == "defaults"]
    assert {r["target"] for r in plain} == {f"vocab_parallel_cross_entropy tp={tp}"
                                            for tp in (1, 2, 4)}
    assert all(r["matches"] == r["cases"] > 0 for r in plain), plain
    inv = [r for r in report["invariance"] if r["label_smoothing"] == 0]
    assert {r["tp"] for r in inv} == {2, 4} and all(r["ok"] for r in inv)
    smooth = [r for r in report["invariance"] if r["label_smoothing"] > 0]
    assert smooth and not any(r["ok"] for r in smooth)        # the tp dependence (#737)


def test_sweep_witness_is_shrunk_keeping_the_shards_even(report):
    """The one shrinker with class_multiple = tp: a small input, V a multiple of tp."""
    f = finding(report, "megatron-smoothing-tp")
    assert f["sweep_cases"] > 0
    w = f["sweep_witness"]
    tp = int(w["input"].rsplit("tp=", 1)[1].split(",")[0])
    x = w["input"].split("targets=")[0]
    row = x[x.index("[[") + 2: x.index("]")]
    V = len(row.split(","))
    assert tp in (2, 4) and V % tp == 0 and V <= 8 and "x=[[" in x, w


def test_markdown_section(report):
    from ce_reference.frameworks import _report
    md = _report.markdown({"seed": 0, "frameworks": [report]})
    assert "## megatron" in md and "megatron-smoothing-tp" in md
    assert "0 outside loopback" in md and "Invariance across tensor-parallel sizes" in md


def test_shrinker_keeps_classes_a_multiple():
    from ce_reference.cases import Case, shrink
    x = np.arange(16.0).reshape(2, 8)
    case = Case(x=x, targets=np.array([0, 5]), axis=1, target_kind="index", class_multiple=4)
    widths = []

    def still(c):
        widths.append(c.x.shape[1])
        return True

    small, _ = shrink(case, still)
    assert set(widths) == {4, 8}              # never 5, 6 or 7 classes, never fewer than 4
    assert small.x.shape == (1, 4) and small.targets.tolist() in ([0], [1])
