"""Smoke tests of the benchmark suite (``python -m benchmarks``); no timing assertions."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

cli = pytest.importorskip("benchmarks.cli")
impls = pytest.importorskip("benchmarks.impls")


@pytest.mark.parametrize("kind,shape", [("softmax", (64, 300)), ("softmax", (500, 10)),
                                        ("bce", (5000,))])
def test_run_case_reports_every_field(kind, shape):
    res = cli.run_case(kind, shape, np.float32, repeat=2, workers=2,
                       only={impls.FLOOR, impls.FUSED, impls.FUSED + ", out=",
                             "textbook NumPy", "scipy.special"}, log=lambda m: None)
    rows = {r["implementation"]: r for r in res["rows"]}
    assert set(rows) == {impls.FLOOR, impls.FUSED, impls.FUSED + ", out=", "textbook NumPy",
                         "scipy.special"}
    for r in rows.values():
        assert r["median_s"] > 0 and len(r["times_s"]) == 2 and r["gb_per_s"] > 0
        assert r["peak_extra_bytes"] >= 0
    assert rows[impls.FLOOR]["x_floor"] == 1.0
    assert rows[impls.FUSED]["peer_over_fused"] == 1.0
    # the NumPy peers compute the same loss as the fused kernel
    x, t = cli._inputs(kind, shape, np.float32)
    fused = (impls.SOFTMAX if kind == "softmax" else impls.BCE)[impls.FUSED][0](x, t, 1)()
    # (the textbook recipe clips p at eps, which changes the loss of badly wrong rows)
    for name, rtol in (("textbook NumPy", 1e-2), ("scipy.special", 1e-5)):
        peer = (impls.SOFTMAX if kind == "softmax" else impls.BCE)[name][0](x, t, 1)()
        np.testing.assert_allclose(float(peer[0]), float(fused[0]), rtol=rtol)
        np.testing.assert_allclose(peer[1], fused[1], rtol=1e-3, atol=1e-9)


def test_targets_and_markdown_from_synthetic_results():
    def case(kind, shape, times):
        rows = [{"implementation": n, "median_s": t, "min_s": t, "gb_per_s": 1.0,
                 "x_floor": t / times[impls.FLOOR],
                 "peer_over_fused": t / times[impls.FUSED], "peak_extra_bytes": 0}
                for n, t in times.items()]
        return {"kind": kind, "shape": list(shape), "dtype": "float32", "input_bytes": 1,
                "grad_bytes": 1, "rows": rows}
    results = [case("softmax", (4096, 8192), {impls.FLOOR: 1.0, impls.FUSED: 1.5,
                                              "torch eager": 9.0, "jax.jit + optax": 3.0})]
    got = {(t["quantity"], t["goal"]): (round(t["measured"], 3), t["met"])
           for t in cli.check_targets(results)}
    assert got[("fused / np.copyto time", "<= 2.0")] == (1.5, True)
    assert got[("torch eager / fused time", ">= 5.0")] == (6.0, True)
    assert got[("jax.jit + optax / fused time", ">= 2.5")] == (2.0, False)
    md = cli.markdown_tables(results, cli.check_targets(results))
    assert "| ce_reference fused | 1500.0 | 1500.0 |" in md and "**not met**" in md


def test_command_line_help_and_json(tmp_path):
    out = subprocess.run([sys.executable, "-m", "benchmarks", "--help"], capture_output=True,
                         text=True, check=True)
    assert "--quick" in out.stdout and "--json" in out.stdout and "--plot" in out.stdout
    path = tmp_path / "r.json"
    cli_args = ["--case", "bce-10000000", "--repeat", "1"]
    # only the argument parsing and the JSON writer: run main on a patched, tiny case list
    old = cli.CASES
    try:
        cli.CASES = [("bce", (10_000_000,))]
        orig = cli.run_case
        cli.run_case = lambda kind, shape, dt, repeat, workers, log=print: orig(
            kind, (1000,), dt, repeat, workers, only={impls.FLOOR, impls.FUSED}, log=log)
        assert cli.main(cli_args + ["--json", str(path)]) == 0
    finally:
        cli.CASES = old
        cli.run_case = orig
    data = json.loads(path.read_text())
    assert data["results"][0]["kind"] == "bce" and "versions" in data["machine"]
