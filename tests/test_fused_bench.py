"""Smoke tests of the benchmark suite (``python -m benchmarks``); no timing assertions."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from ce_reference.registry import LOSSES
from ce_reference.spec import BenchCase

cli = pytest.importorskip("benchmarks.cli")
impls = pytest.importorskip("benchmarks.impls")
linear = pytest.importorskip("benchmarks.linear")


@pytest.mark.parametrize("loss,shape,targets", [
    ("softmax_cross_entropy", (64, 300), "index"), ("softmax_cross_entropy", (500, 10), "index"),
    ("binary_cross_entropy_with_logits", (5000,), "hard")])
def test_run_case_reports_every_field(loss, shape, targets):
    spec, case = LOSSES[loss], BenchCase(shape, targets)
    res = cli.run_case(spec, case, np.float32, repeat=2, workers=2,
                       only={impls.FLOOR, impls.FUSED, impls.FUSED_OUT,
                             "textbook NumPy", "scipy.special"}, log=lambda m: None)
    rows = {r["implementation"]: r for r in res["rows"]}
    assert set(rows) == {impls.FLOOR, impls.FUSED, impls.FUSED_OUT, "textbook NumPy",
                         "scipy.special"}
    for r in rows.values():
        assert r["median_s"] > 0 and len(r["times_s"]) == 2 and r["gb_per_s"] > 0
        assert r["peak_extra_bytes"] >= 0
    assert rows[impls.FLOOR]["x_floor"] == 1.0
    assert rows[impls.FUSED]["peer_over_fused"] == 1.0
    # the NumPy peers compute the same loss as the fused kernel
    x, t = cli._inputs(spec, shape, targets, np.float32)
    table = impls.implementations(spec)
    fused = table[impls.FUSED][0](x, t, 1)()
    # (the textbook recipe clips p at eps, which changes the loss of badly wrong rows)
    for name, rtol in (("textbook NumPy", 1e-2), ("scipy.special", 1e-5)):
        peer = table[name][0](x, t, 1)()
        np.testing.assert_allclose(float(peer[0]), float(fused[0]), rtol=rtol)
        np.testing.assert_allclose(peer[1], fused[1], rtol=1e-3, atol=1e-9)


def test_every_registered_loss_has_a_benchmark_case():
    keys = [cli.case_key(s, c) for s, c in cli.cases()]
    assert {s.name for s, _ in cli.cases()} == set(LOSSES)
    assert len(keys) == len(set(keys))
    for spec, case in cli.cases():          # inputs of every case are valid for the loss
        if spec.structure == "linear":
            args = linear.inputs((8, 4, 5), np.float32)
        else:
            small = (8, 5) if spec.structure == "classes" else (40,)
            args = cli._inputs(spec, small, case.targets, np.float32)
        assert np.isfinite(spec.value(*args, **dict(case.options)))


def test_targets_and_markdown_from_synthetic_results():
    def case(kind, shape, times, goals):
        rows = [{"implementation": n, "median_s": t, "min_s": t, "gb_per_s": 1.0,
                 "x_floor": t / times[impls.FLOOR],
                 "peer_over_fused": t / times[impls.FUSED], "peak_extra_bytes": 0}
                for n, t in times.items()]
        return {"kind": kind, "shape": list(shape), "dtype": "float32", "input_bytes": 1,
                "grad_bytes": 1, "rows": rows, "goals": goals}
    goals = [("floor", "<=", 2.0), ("torch eager", ">=", 5.0), ("jax.jit + optax", ">=", 2.5)]
    results = [case("softmax", (4096, 8192), {impls.FLOOR: 1.0, impls.FUSED: 1.5,
                                              "torch eager": 9.0, "jax.jit + optax": 3.0},
                    goals)]
    got = {(t["quantity"], t["goal"]): (round(t["measured"], 3), t["met"])
           for t in cli.check_targets(results)}
    assert got[("fused / np.copyto time", "<= 2.0")] == (1.5, True)
    assert got[("torch eager / fused time", ">= 5.0")] == (6.0, True)
    assert got[("jax.jit + optax / fused time", ">= 2.5")] == (2.0, False)
    md = cli.markdown_tables(results, cli.check_targets(results))
    assert "| ce_reference fused | 1500 | 1500 |" in md and "**not met**" in md


def test_command_line_help_and_json(tmp_path):
    out = subprocess.run([sys.executable, "-m", "benchmarks", "--help"], capture_output=True,
                         text=True, check=True)
    assert "--quick" in out.stdout and "--json" in out.stdout and "--plot" in out.stdout
    path = tmp_path / "r.json"
    spec = LOSSES["binary_cross_entropy_with_logits"]
    key = cli.case_key(spec, spec.benchmarks[0])
    # only the argument parsing and the JSON writer: run main on a patched, tiny case
    orig = cli.run_case
    try:
        cli.run_case = lambda spec, case, dt, repeat, workers, log=print: orig(
            spec, case, dt, repeat, workers, only={impls.FLOOR, impls.FUSED}, log=log,
            shape=(1000,))
        assert cli.main(["--case", key, "--repeat", "1", "--json", str(path)]) == 0
    finally:
        cli.run_case = orig
    data = json.loads(path.read_text())
    assert data["results"][0]["loss"] == spec.name and "versions" in data["machine"]


def test_linear_case_runs_every_implementation_and_measures_memory():
    spec = LOSSES["linear_cross_entropy"]
    case = BenchCase((64, 16, 300), "index", goals=(("floor", "<=", 1e9),))
    res = cli.runner(spec)(spec, case, np.float32, repeat=2, workers=1, log=lambda m: None)
    rows = {r["implementation"]: r for r in res["rows"]}
    assert {linear.FLOOR, linear.FUSED, linear.UNFUSED} <= set(rows)
    assert rows[linear.FLOOR]["x_floor"] == 1.0 and rows[linear.FUSED]["peer_over_fused"] == 1.0
    assert rows[linear.UNFUSED]["peak_extra_bytes"] >= 64 * 300 * 4   # it holds the logits
    targets = cli.check_targets([res])
    assert any(t["quantity"] == "fused / 3 GEMMs time" for t in targets)
    assert "× floor" in cli.markdown_tables([res], targets)
    peaks = linear.rss_peaks((256, 16, 4096), "float32", 1, names=[linear.FUSED, linear.UNFUSED],
                             log=lambda m: None)
    fused_peak, unfused_peak = (p["tracemalloc_peak_bytes"] for p in peaks)
    assert unfused_peak >= 2 * 256 * 4096 * 4 > fused_peak      # logits and their gradient
    assert "peak RSS extra MiB" in linear.memory_markdown((256, 16, 4096), "float32", peaks)


def test_benchmark_output_names_its_targets_and_keeps_xla_quiet():
    """The goals table is named by what it holds (no issue numbers), and ``python -m
    benchmarks`` sets XLA's log level before JAX is imported (its slow_operation_alarm line
    is not a result)."""
    import os

    code = ("import os, runpy, sys; sys.argv = ['benchmarks', '--help'];\n"
            "try:\n    runpy.run_module('benchmarks', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "print('LEVEL', os.environ.get('TF_CPP_MIN_LOG_LEVEL'))")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert "LEVEL 3" in out.stdout
    assert "issue" not in out.stdout.lower()
    spec = LOSSES["softmax_cross_entropy"]
    case = BenchCase((8, 5), "index", goals=(("floor", "<=", 1e9),))
    res = cli.runner(spec)(spec, case, np.float32, repeat=1, workers=1, log=lambda m: None)
    md = cli.markdown_tables([res], cli.check_targets([res]))
    assert "issue" not in md.lower() and "| case | quantity | goal | measured |" in md
