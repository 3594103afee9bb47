"""The Megatron audit (quick sweep) on 1, 2 and 4 gloo processes: every socket on loopback,
every deviation catalogued, every catalogued finding reproduced with its class."""

from __future__ import annotations

import importlib.util

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
def report(tmp_path_factory):
    from ce_reference.frameworks._megatron import run_audit
    return run_audit(quick=True, tp_sizes=(1, 2, 4),
                     workdir=str(tmp_path_factory.mktemp("megatron")))


def test_version_is_the_pinned_one(report):
    from ce_reference.frameworks._megatron import MEGATRON_CORE_VERSION
    assert report["status"] == "ran"
    assert report["version"] == MEGATRON_CORE_VERSION


def test_sockets_stay_on_loopback(report):
    lb = report["loopback"]
    assert lb["ok"] and not lb["violations"], lb["violations"]
    assert lb["samples"] >= 3 and lb["listening"] >= 1        # gloo's pairs were seen
    assert lb["listening_addresses"] == ["127.0.0.1"]


def test_every_deviation_is_catalogued(report):
    assert report["unclassified"] == [] and report["exit_code"] == 0


def test_findings_reproduce_with_their_class(report):
    got = {f["id"]: f["class"] for f in report["findings"]}
    assert got == EXPECTED


def test_without_smoothing_it_matches_at_every_tp_and_is_tp_invariant(report):
    plain = [r for r in report["rows"] if r["impl"] == "plain" and r["label_smoothing"] == 0]
    assert {r["tp"] for r in plain} == {1, 2, 4}
    assert all(r["ok"] for r in plain), [r for r in plain if not r["ok"]]
    inv = [r for r in report["invariance"] if r["label_smoothing"] == 0]
    assert inv and all(r["ok"] for r in inv)
    smooth = [r for r in report["invariance"] if r["label_smoothing"] > 0]
    assert smooth and not any(r["ok"] for r in smooth)        # the tp dependence (#737)


def test_markdown_renders(report):
    from ce_reference.frameworks._megatron import markdown
    md = markdown(report)
    assert "megatron-smoothing-tp" in md and "0 outside loopback" in md
