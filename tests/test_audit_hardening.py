"""Audit and command-line hardening: no verdict over zero cases, validated arguments, one entry
point for every audit, timeouts, a verify table that fits a terminal, one tolerance in eps."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import ce_reference
from ce_reference.cli import main
from ce_reference.testing import assert_matches_reference

sys.path.insert(0, str(Path(__file__).parent))
import _audit_targets as A  # noqa: E402

SOFTMAX = "softmax_cross_entropy"
ROOT = Path(__file__).resolve().parents[1]


def _usage_error(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


def _module(tmp_path, monkeypatch, name, body):
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(name, None)


# --------------------------------------------------------------------------- zero cases

@pytest.mark.parametrize("targets", [("one-hot",), ("hard",), ("index", "nope")])
def test_unknown_target_kind_is_an_error_naming_the_valid_ones(targets):
    with pytest.raises(ValueError, match="index, onehot, soft"):
        ce_reference.audit(A.one_and_a_half_times, loss=SOFTMAX, targets=targets, cases=5)


def test_empty_targets_or_dtypes_are_errors():
    with pytest.raises(ValueError, match="targets"):
        ce_reference.audit(A.one_and_a_half_times, loss=SOFTMAX, targets=(), cases=5)
    with pytest.raises(ValueError, match="dtypes"):
        ce_reference.audit(A.one_and_a_half_times, loss=SOFTMAX, dtypes=(), cases=5)


def test_a_requested_kind_without_cases_is_inconclusive_never_match():
    # stable_softmax_ce accepts no weight; every one-hot option set of the loss needs one
    r = ce_reference.audit(A.stable_softmax_ce, loss=SOFTMAX, targets=("onehot",), cases=10)
    assert r.status == "INCONCLUSIVE" and not r.ok and r.n_cases == 0
    assert "INCONCLUSIVE" in str(r) and "weight" in str(r)
    assert r.to_dict()["status"] == "INCONCLUSIVE"
    with pytest.raises(AssertionError, match="INCONCLUSIVE"):
        assert_matches_reference(A.stable_softmax_ce, loss=SOFTMAX, targets=("onehot",),
                                 cases=10)


def test_a_wrong_loss_cannot_pass_through_a_misspelt_kind():
    with pytest.raises(ValueError):
        assert_matches_reference(A.one_and_a_half_times, loss=SOFTMAX, targets=("one-hot",))


def test_inconclusive_exits_1(tmp_path, monkeypatch, capsys):
    code = main(["audit", "_audit_targets:stable_softmax_ce", "--loss", SOFTMAX,
                 "--targets", "onehot", "--cases", "5", "--timeout", "0", "--no-progress"])
    assert code == 1
    assert "INCONCLUSIVE" in capsys.readouterr().out


# --------------------------------------------------------------------------- CLI options

def test_cli_audit_restricts_targets_dtypes_and_tolerance(capsys):
    base = ["audit", "_audit_targets:stable_softmax_ce", "--loss", SOFTMAX, "--cases", "20",
            "--timeout", "0", "--no-progress"]
    assert main(base) == 1                                  # probability targets: IndexError
    assert "IndexError" in capsys.readouterr().out
    assert main(base + ["--targets", "index"]) == 0
    assert main(base + ["--targets", "index", "--dtypes", "float32,float64"]) == 0
    out = capsys.readouterr().out
    assert "float32" in out and "float64" in out
    off = ["audit", "_audit_targets:off_by_1e9", "--loss", SOFTMAX, "--cases", "10",
           "--targets", "index", "--timeout", "0", "--no-progress"]
    assert main(off) == 1
    assert main(off + ["--rtol", "1e-8"]) == 0              # looser, unitless


@pytest.mark.parametrize("extra", [
    ["--targets", "one-hot"], ["--targets", "hard"], ["--dtypes", "float16"],
    ["--dtypes", "int8"], ["--rtol", "-1"], ["--rtol", "nan"], ["--rtol", "x"],
    ["--cases", "0"], ["--seed", "-1"], ["--timeout", "-1"], ["--quick"], ["--strict"],
])
def test_cli_audit_options_are_validated(extra, capsys):
    err = _usage_error(["audit", "_audit_targets:stable_softmax_ce", "--loss", SOFTMAX,
                        "--timeout", "0"] + extra, capsys)
    assert "unrecognized arguments" not in err          # a known option, with a bad value
    assert extra[0] in err


def test_cli_unpicklable_function_is_a_usage_error(tmp_path, monkeypatch, capsys):
    _module(tmp_path, monkeypatch, "lambda_mod", "f = lambda x, t: 0.0\n")
    err = _usage_error(["audit", "lambda_mod:f", "--loss", SOFTMAX], capsys)
    assert "pickle" in err


# --------------------------------------------------------------------------- one entry point

def _fake_frameworks(monkeypatch):
    import types

    calls = []
    fake = types.ModuleType("ce_reference.frameworks")
    fake.run_framework_audit = lambda name, **kw: calls.append((name, kw)) or 0
    monkeypatch.setitem(sys.modules, "ce_reference.frameworks", fake)
    return calls


def test_framework_audit_takes_its_flags(monkeypatch):
    calls = _fake_frameworks(monkeypatch)
    assert main(["audit", "sklearn", "--strict", "--quick", "--seed", "3"]) == 0
    name, kw = calls[-1]
    assert name == "sklearn" and kw["strict"] and kw["quick"] and kw["seed"] == 3
    assert main(["audit", "all", "--no-progress"]) == 0
    assert calls[-1][0] == "all" and calls[-1][1]["progress"] is False


@pytest.mark.parametrize("extra", [["--cases", "5"], ["--loss", SOFTMAX],
                                   ["--grad", "nosuch:thing"], ["--targets", "index"],
                                   ["--dtypes", "float32"], ["--rtol", "1e-3"],
                                   ["--timeout", "5"]])
def test_options_that_do_not_apply_to_a_framework_are_usage_errors(extra, monkeypatch, capsys):
    calls = _fake_frameworks(monkeypatch)
    err = _usage_error(["audit", "sklearn"] + extra, capsys)
    assert "only for MODULE:FUNCTION audits" in err and extra[0] in err and not calls


def test_unknown_framework_lists_the_known_ones(capsys):
    err = _usage_error(["audit", "pytorch"], capsys)
    assert "torch, optax, keras, sklearn, megatron, torch-linear, liger, cce, all" in err


def test_python_dash_m_frameworks_is_the_same_command(monkeypatch, capsys):
    from ce_reference.frameworks.__main__ import main as fw_main

    calls = _fake_frameworks(monkeypatch)
    assert fw_main(["sklearn", "--strict"]) == 0 and calls[-1][1]["strict"]
    with pytest.raises(SystemExit) as info:
        fw_main(["sklearn", "--cases", "5"])
    assert info.value.code == 2


# --------------------------------------------------------------------------- argument checks

@pytest.mark.parametrize("kw, exc, match", [
    (dict(rtol=-1), ValueError, "rtol"), (dict(rtol=math.nan), ValueError, "rtol"),
    (dict(rtol=True), TypeError, "rtol"), (dict(rtol={np.float64: -1.0}), ValueError, "rtol"),
    (dict(dtypes=("float16",)), ValueError, "float16"),
    (dict(dtypes=(np.float16,)), ValueError, "float16"),
    (dict(seed=-1), ValueError, "seed"), (dict(seed=1.5), ValueError, "seed"),
    (dict(cases=True), ValueError, "cases"), (dict(timeout=-1), ValueError, "timeout"),
])
def test_audit_arguments_are_named_errors(kw, exc, match):
    with pytest.raises(exc, match=match):
        ce_reference.audit(A.stable_softmax_ce, loss=SOFTMAX, **kw)


def test_verify_seed_is_checked():
    from ce_reference.verify import verify

    with pytest.raises(ValueError, match="seed"):
        verify(SOFTMAX, cases=1, seed=-1)


def test_verify_negative_seed_is_a_usage_error(capsys):
    err = _usage_error(["verify", "--seed", "-1"], capsys)
    assert "--seed" in err


@pytest.mark.parametrize("command", [
    ["verify", "--loss", SOFTMAX, "--no-progress"],
    ["audit", "_audit_targets:stable_softmax_ce", "--loss", SOFTMAX, "--no-progress"],
    ["audit", "sklearn", "--no-progress"],
])
def test_output_paths_are_checked_before_the_work(command, tmp_path, monkeypatch, capsys):
    import ce_reference.auditing
    import ce_reference.verify.runner

    def must_not_run(*a, **k):
        raise AssertionError("the work started before the output path was checked")

    monkeypatch.setattr(ce_reference.verify.runner, "verify", must_not_run)
    monkeypatch.setattr(ce_reference.auditing, "audit", must_not_run)
    calls = _fake_frameworks(monkeypatch)
    for flag, path in (("--json", "/nonexistent/dir/r.json"), ("--markdown", str(tmp_path))):
        err = _usage_error(command + [flag, path], capsys)
        assert flag in err
    assert not calls


def test_framework_audit_api_checks_paths_and_seed_first():
    from ce_reference.frameworks import run_framework_audit

    with pytest.raises(ValueError, match="json_path"):
        run_framework_audit("sklearn", json_path="/nonexistent/dir/r.json", console=False)
    with pytest.raises(ValueError, match="seed"):
        run_framework_audit("sklearn", seed=-1, console=False)


# --------------------------------------------------------------------------- hanging functions

def test_a_hanging_function_times_out_and_is_reported_with_its_input():
    seen = []
    t0 = time.perf_counter()
    r = ce_reference.audit(A.hangs_on_large_logits, loss=SOFTMAX, targets=("index",),
                           cases=14, timeout=2, progress=lambda *a: seen.append(a))
    assert time.perf_counter() - t0 < 120
    assert r.status == "MISMATCH"
    hung = [m for m in r.mismatches if "timed out" in m.message]
    assert hung and hung[0].got is None and not hung[0].shrunk
    assert np.max(np.abs(hung[0].case.x)) > 50                # the input that hangs it
    assert "timed out" in str(r) and "input (not shrunk)" in str(r)
    assert seen and all(len(a) == 3 for a in seen) and seen[0][1] >= seen[0][0]
    assert not _audit_workers()                             # the hung worker was killed


def _audit_workers():
    """Live audit worker processes started by this process (Linux /proc; [] elsewhere)."""
    import os

    out = []
    for pid in os.listdir("/proc") if os.path.isdir("/proc") else []:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmd = fh.read()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == os.getpid() and b"ce_reference.auditing.isolation" in cmd:
            out.append(pid)
    return out


def test_a_function_that_always_hangs_stops_after_three_timeouts():
    t0 = time.perf_counter()
    r = ce_reference.audit(A.hangs_always, loss=SOFTMAX, targets=("index",), cases=30,
                           timeout=1)
    assert r.status == "MISMATCH" and any("stopped" in n for n in r.notes)
    assert time.perf_counter() - t0 < 90


def test_timeout_needs_an_importable_function():
    with pytest.raises(TypeError, match="pickle|module level"):
        ce_reference.audit(lambda x, t: 0.0, loss=SOFTMAX, timeout=5)

    def local(x, t):
        return 0.0

    with pytest.raises(TypeError, match="pickle|module level"):
        ce_reference.audit(local, loss=SOFTMAX, timeout=5)


def test_cli_timeout_and_progress(tmp_path, monkeypatch, capsys):
    code = main(["audit", "_audit_targets:hangs_on_large_logits", "--loss", SOFTMAX,
                 "--targets", "index", "--cases", "7", "--timeout", "2"])
    cap = capsys.readouterr()
    assert code == 1 and "timed out" in cap.out
    assert "] index" in cap.err                               # plain progress lines on stderr


# --------------------------------------------------------------------------- verify report

@pytest.fixture(scope="module")
def small_report():
    from ce_reference.verify import verify

    return verify(["binary_cross_entropy_with_logits", SOFTMAX], cases=1, seed=1,
                  dtypes=(np.float64,), option_sets=("hard targets", "index + weight"),
                  regions=("random",))


def test_verify_table_fits_100_columns_by_default(small_report, capsys):
    from ce_reference.verify import report as R

    R.print_report(small_report)
    out = capsys.readouterr().out
    assert "worst/gate" in out and "softmax_cross_entropy" in out
    assert max(len(line) for line in out.splitlines()) <= 100, out


def test_verify_wide_table_marks_grad_ulp_as_information(small_report, capsys):
    from ce_reference.verify import report as R

    R.print_report(small_report, wide=True)
    out = capsys.readouterr().out
    assert "grad ULP (info)" in out.replace("\n", " ") or "(info)" in out
    assert "information only" in out


def test_verify_outputs_describe_check_grad_as_the_code_does(small_report, tmp_path):
    from ce_reference.verify import report as R

    R.to_json(small_report, tmp_path / "r.json")
    R.to_markdown(small_report, tmp_path / "r.md")
    doc = json.loads((tmp_path / "r.json").read_text())
    md = (tmp_path / "r.md").read_text()
    for text in (doc["measures"]["check_grad"], md):
        assert "central differences" in text and "||operands||" in text
        assert "forward differences" not in text and "||g - fd|| / ||g||" not in text
    assert "grad ULP (info)" in md and "information only" in doc["measures"]["grad ULP"]


def test_verify_cases_help_says_what_it_means():
    res = subprocess.run([sys.executable, "-m", "ce_reference", "verify", "--help"],
                         capture_output=True, text=True, check=True)
    text = " ".join(res.stdout.split())
    assert "at least one per shape layout" in text and "--cases 1 runs" in text
    from ce_reference.verify.runner import plan

    minimum = sum(n for *_, n in plan(list(ce_reference.LOSSES.values()), 1))
    assert f"--cases 1 runs {minimum}" in text


# --------------------------------------------------------------------------- one tolerance

def test_a_float64_value_off_by_1e9_is_a_mismatch_in_eps():
    r = ce_reference.audit(A.off_by_1e9, loss=SOFTMAX, targets=("index",), cases=20)
    assert r.status == "MISMATCH"
    assert 1e6 < r.worst["float64"] < 1e7                     # 1e-9 / 2.2e-16 = 4.5e6 eps
    assert r.verdict().startswith("MISMATCH: worst 4.5e6 eps")
    ok = ce_reference.audit(A.off_by_1e9, loss=SOFTMAX, targets=("index",), cases=20,
                            rtol=1e-8)
    assert ok.ok and ok.verdict().startswith("MATCH: worst")


def test_every_verdict_states_the_worst_error_in_eps():
    r = ce_reference.audit(A.stable_softmax_ce, loss=SOFTMAX, targets=("index",), cases=20,
                           dtypes=("float64", "float32"))
    assert r.ok and "eps in float64" in r.verdict() and "eps in float32" in r.verdict()
    assert r.worst["float64"] < 16 and r.tolerance == {"float64": 256.0, "float32": 256.0}
    assert "eps" in str(r).splitlines()[0]


def test_the_audits_share_one_tolerance_constant():
    from ce_reference.auditing.tolerance import TOL_EPS
    from ce_reference.frameworks import _core

    assert _core.TOL_EPS is TOL_EPS == 256.0


# --------------------------------------------------------------------------- changelog

def test_changelog_records_the_changes_newest_first():
    text = (ROOT / "CHANGELOG.md").read_text()
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert headings and "Unreleased" in headings[0]
    for needle in ("256 eps", "INCONCLUSIVE", "ce_reference.binary", "ce_reference.losses.",
                   "ce_reference.oracles.", "float16", "TOL_ULPS", "verify.audit"):
        assert needle in text, needle
