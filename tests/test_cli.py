"""ce-reference verify / audit: exit codes, JSON and Markdown output, usage errors."""

import json
import subprocess
import sys
import textwrap

import pytest

from ce_reference.cli import main


def test_verify_small_run_writes_json_and_markdown(tmp_path, capsys):
    js, md = tmp_path / "r.json", tmp_path / "r.md"
    code = main(["verify", "--loss", "binary_cross_entropy_with_logits", "--cases", "1",
                 "--seed", "3", "--json", str(js), "--markdown", str(md), "--no-progress"])
    out = capsys.readouterr().out
    data = json.loads(js.read_text())
    assert code == (0 if data["ok"] else 1)
    assert code == 0, out
    assert isinstance(data["rows"], list) and data["rows"]
    assert all(r["loss"] == "binary_cross_entropy_with_logits" for r in data["rows"])
    assert data["seed"] == 3
    assert "PASS" in out and "mpmath" in out
    assert "| loss |" in md.read_text()


@pytest.mark.parametrize("argv", [
    ["verify", "--loss", "no_such_loss"],
    ["verify", "--cases", "0"],
    ["verify", "--cases", "many"],
    ["verify", "--seed", "x"],
    ["audit", "math:sqrt"],                          # --loss missing
    ["audit", "no_such_module_xyz:f", "--loss", "softmax_cross_entropy"],
    ["audit", "math:no_such_function", "--loss", "softmax_cross_entropy"],
    ["audit", "math", "--loss", "softmax_cross_entropy"],
    [],
])
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2


def _module(tmp_path, monkeypatch, body):
    (tmp_path / "audited_mod.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("audited_mod", None)


def test_audit_exit_codes(tmp_path, monkeypatch, capsys):
    _module(tmp_path, monkeypatch, """
        import numpy as np
        from scipy.special import expit
        def good(logits, targets, *, reduction="mean"):
            l = targets * np.logaddexp(0, -logits) + (1 - targets) * np.logaddexp(0, logits)
            return {"mean": l.mean(), "sum": l.sum(), "none": l}[reduction]
        def good_grad(logits, targets, *, reduction="mean"):
            g = expit(logits) - targets
            return g / g.size if reduction == "mean" else g
        def bad_grad(logits, targets, *, reduction="mean"):
            return -good_grad(logits, targets, reduction=reduction)
    """)
    js = tmp_path / "a.json"
    assert main(["audit", "audited_mod:good", "--loss", "binary_cross_entropy_with_logits",
                 "--grad", "audited_mod:good_grad", "--cases", "40", "--json", str(js)]) == 0
    assert json.loads(js.read_text())["ok"] is True
    assert main(["audit", "audited_mod:good", "--loss", "binary_cross_entropy_with_logits",
                 "--grad", "audited_mod:bad_grad", "--cases", "20"]) == 1
    out = capsys.readouterr().out
    assert "MISMATCH" in out and "smallest input found" in out


def test_framework_audit_dispatch(monkeypatch, capsys, tmp_path):
    import importlib
    import types

    calls = []
    fake = types.ModuleType("ce_reference.frameworks")
    fake.run_framework_audit = lambda name, json_path=None, markdown_path=None, seed=0, **kw: (
        calls.append((name, json_path, markdown_path, seed)) or 1)
    monkeypatch.setitem(sys.modules, "ce_reference.frameworks", fake)
    assert main(["audit", "torch", "--json", "x.json", "--seed", "7"]) == 1
    assert calls == [("torch", "x.json", None, 7)]

    real = importlib.import_module
    monkeypatch.delitem(sys.modules, "ce_reference.frameworks")

    def missing(name, *a, **k):
        if name == "ce_reference.frameworks":
            raise ModuleNotFoundError("No module named 'ce_reference.frameworks'", name=name)
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", missing)
    assert main(["audit", "sklearn"]) == 2
    assert "not available" in capsys.readouterr().err


def test_python_dash_m_entry_point():
    res = subprocess.run([sys.executable, "-m", "ce_reference", "verify", "--help"],
                         capture_output=True, text=True)
    assert res.returncode == 0 and "--cases" in res.stdout and "--markdown" in res.stdout
    res = subprocess.run([sys.executable, "-m", "ce_reference", "bogus"],
                         capture_output=True, text=True)
    assert res.returncode == 2
