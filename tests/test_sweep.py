"""Sweeps in batches: the same report for any batch size and a local process pool,
checkpoints (resume, torn lines, refusals), failed batches, killed workers."""

import concurrent.futures as cf
import dataclasses
import functools
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from ce_reference.cases import make_case
from ce_reference.cli import main
from ce_reference.registry import LOSSES
from ce_reference.verify import verify
from ce_reference.verify.batches import BatchResult, BatchTask, run_batch, ship_spec, split
from ce_reference.verify.sweep import CheckpointError, SweepInterrupted

from _sweep_helpers import (BCE_LOGITS, SMALL, TINY, VICTIM_ENV, comparable, comparable_json,
                            killer_spec, raising_spec)


@pytest.fixture(scope="module")
def serial_small():
    return verify(**SMALL)


@pytest.fixture(scope="module")
def serial_tiny():
    return verify(**TINY)


# --------------------------------------------------------------------------- the plan

def test_split_is_even_and_covers_every_case():
    assert split(5, 2) == [(0, 1), (1, 3), (3, 5)]
    assert split(64, 64) == [(0, 64)]
    assert split(1, 64) == [(0, 1)]
    for n in range(1, 40):
        for size in (1, 3, 7, 64):
            cuts = split(n, size)
            assert cuts[0][0] == 0 and cuts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(cuts, cuts[1:]))
            assert max(b - a for a, b in cuts) <= size
            assert max(b - a for a, b in cuts) - min(b - a for a, b in cuts) <= 1


def test_specs_travel_by_ref_unless_it_names_another_loss():
    spec = LOSSES[BCE_LOGITS]
    assert ship_spec(spec) == ("ref", spec.ref)
    kind, blob = ship_spec(killer_spec())            # dataclasses.replace keeps the ref
    assert kind == "pickle" and isinstance(blob, bytes)


def test_an_unpicklable_spec_is_a_clear_error_before_anything_runs():
    spec = LOSSES[BCE_LOGITS]
    lock = threading.Lock()                          # neither pickle nor cloudpickle take it
    bad = dataclasses.replace(spec, value=functools.partial(_locked_value, lock), ref=None)
    with pytest.raises(TypeError, match="cannot be sent to worker processes"):
        verify(specs=[bad], cases=1, dtypes=(np.float64,), workers=2)


def _locked_value(lock, x, targets, **kw):
    with lock:
        return LOSSES[BCE_LOGITS].value(x, targets, **kw)


def test_batch_result_json_round_trip_is_exact():
    task = BatchTask(0, 0, BCE_LOGITS, ship_spec(LOSSES[BCE_LOGITS]), "hard targets",
                     "float64", "random", 0, 3, 4, "spec")
    result = run_batch(task)
    assert result.error is None and result.stop - result.start == 3
    result.errors["mpmath"][0][1] = np.nan           # NaN, inf and absent values survive
    result.errors["mpmath"][0][2] = np.inf
    result.errors["mpmath"][1][0] = False
    back = BatchResult.from_json(json.loads(json.dumps(result.to_json())))
    for m, (values, present) in result.errors.items():
        assert back.errors[m][0].tobytes() == values.tobytes()
        assert np.array_equal(back.errors[m][1], present)
    assert (back.worst, back.problems, back.n_problems) == (result.worst, result.problems,
                                                            result.n_problems)


# --------------------------------------------------------------------------- same report

def test_batch_size_does_not_change_the_report(serial_small):
    assert comparable(verify(**{**SMALL, "batch_cases": 3})) == comparable(serial_small)


def test_two_local_workers_give_the_serial_report_even_when_one_is_killed(serial_small):
    """``workers=2`` equals the serial run bitwise; a pool process killed mid-sweep is
    replaced and the batches it took down are run again."""
    killed = []

    def status(st):
        if st.batches_done >= 2 and not killed:
            pool = [p for p in multiprocessing.active_children() if "Dask" not in p.name]
            if pool:
                os.kill(pool[0].pid, signal.SIGKILL)
                killed.append(st.done)

    pooled = verify(**SMALL, workers=2, status=status)
    assert pooled.environment["executor"] == "local process pool (2 workers)"
    assert killed and killed[0] < pooled.cases, "no worker was killed mid-sweep"
    assert comparable(pooled) == comparable(serial_small)


def test_a_batch_that_kills_its_worker_twice_is_reported_with_its_inputs(tmp_path, monkeypatch):
    options = dict(losses=None, specs=[killer_spec()], cases=1, seed=5, dtypes=(np.float64,),
                   option_sets=("hard targets",), regions=("random",), batch_cases=2)
    spec = LOSSES[BCE_LOGITS]
    opt = spec.option_sets[0]
    victim = make_case(spec, opt, np.float64, "random", 3, 5)
    np.save(tmp_path / "victim.npy", victim.x)
    monkeypatch.setenv(VICTIM_ENV, str(tmp_path / "victim.npy"))
    rep = verify(**options, workers=2)
    assert not rep.ok
    (row,) = rep.rows
    assert row.n == 5
    detail = [f for f in row.failures if f["measure"] == "contract"]
    assert [f["case"] for f in detail] == [
        make_case(spec, opt, np.float64, "random", i, 5).describe() for i in (3, 4)]
    assert all("failed: its worker process died" in f["detail"] for f in detail)
    assert any("failed 2 attempts" in n for n in rep.notes)
    assert row.stats["mpmath"]["n"] == 3             # the other batches ran


def test_a_batch_that_raises_twice_is_reported_not_dropped():
    rep = verify(specs=[raising_spec()], cases=1, seed=2, dtypes=(np.float64,),
                 option_sets=("hard targets",), regions=("extreme",), batch_cases=8)
    assert not rep.ok
    (row,) = rep.rows
    assert row.n == 3 and all(s is None for s in row.stats.values())
    assert len(row.failures) == 3
    assert all("RuntimeError: complex step broke" in f["detail"] for f in row.failures)
    assert "hard targets | float64 | extreme | case 0, seed 2" in row.failures[0]["case"]
    assert any("failed 2 attempts" in n and "complex step broke" in n for n in rep.notes)


# --------------------------------------------------------------------------- checkpoints

def _lines(path):
    return path.read_bytes().split(b"\n")


def test_resume_runs_only_the_missing_batches(tmp_path, serial_tiny):
    ck = tmp_path / "ck.jsonl"
    first = verify(**TINY, checkpoint=ck)
    assert comparable(first) == comparable(serial_tiny)
    lines = _lines(ck)
    assert lines[-1] == b"" and len(lines) == 1 + 5 + 1       # header, 5 batches, ""
    again = verify(**TINY, checkpoint=ck, resume=True)
    assert again.environment["batches_resumed"] == 5
    assert comparable(again) == comparable(serial_tiny)
    # keep two batches and a torn third line: the resumed sweep runs three batches
    ck.write_bytes(b"\n".join(lines[:3]) + b"\n" + lines[3][:40])
    resumed = verify(**TINY, checkpoint=ck, resume=True)
    assert resumed.environment["batches_resumed"] == 2
    assert comparable(resumed) == comparable(serial_tiny)
    assert all(json.loads(line) for line in _lines(ck)[:-1])  # the torn line was cut off
    assert len(_lines(ck)) == 1 + 5 + 1


def test_checkpoint_refusals(tmp_path):
    ck = tmp_path / "ck.jsonl"
    verify(**TINY, checkpoint=ck)
    with pytest.raises(CheckpointError, match="already exists"):
        verify(**TINY, checkpoint=ck)
    with pytest.raises(CheckpointError, match=r"different sweep.*seed: checkpoint 4, this "
                                              r"sweep 5"):
        verify(**{**TINY, "seed": 5}, checkpoint=ck, resume=True)
    with pytest.raises(CheckpointError, match="cases"):
        verify(**{**TINY, "cases": 40}, checkpoint=ck, resume=True)
    lines = _lines(ck)
    ck.write_bytes(b"\n".join(lines[:2] + [b"{not json"] + lines[3:]))
    with pytest.raises(CheckpointError, match="line 3 .* damaged"):
        verify(**TINY, checkpoint=ck, resume=True)
    (tmp_path / "other.txt").write_text("hello\n")
    with pytest.raises(CheckpointError, match="not a ce_reference verify checkpoint"):
        verify(**TINY, checkpoint=tmp_path / "other.txt", resume=True)
    with pytest.raises(ValueError, match="resume=True needs the checkpoint"):
        verify(**TINY, resume=True)


class _LostScheduler(cf.Executor):
    """An executor whose every task fails as a lost connection does."""

    def submit(self, fn, *args, **kwargs):
        future = cf.Future()
        future.set_exception(ConnectionError("scheduler connection lost"))
        return future


def test_a_failing_executor_stops_the_sweep_and_says_how_to_resume(tmp_path):
    ck = tmp_path / "ck.jsonl"
    with pytest.raises(SweepInterrupted, match=r"ConnectionError: scheduler connection "
                                               r"lost.*--resume .*ck.jsonl") as info:
        verify(**TINY, executor=_LostScheduler(), checkpoint=ck)
    assert not info.value.by_user
    assert len(_lines(ck)) == 2                      # the header only


# --------------------------------------------------------------------------- command line

@pytest.mark.parametrize("argv", [
    ["--workers", "0"],
    ["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"],
    ["--checkpoint", "a.jsonl", "--resume", "b.jsonl"],
    ["--resume", "no/such/checkpoint.jsonl"],
    ["--batch-cases", "0"],
])
def test_sweep_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(["verify", "--loss", BCE_LOGITS, *argv])
    assert info.value.code == 2


def test_cli_refuses_an_existing_or_mismatched_checkpoint(tmp_path, capsys):
    ck = tmp_path / "ck.jsonl"
    verify(**TINY, checkpoint=ck)
    for argv, message in ((["--checkpoint", str(ck)], "already exists"),
                          (["--resume", str(ck)], "belongs to a different sweep")):
        with pytest.raises(SystemExit) as info:
            main(["verify", "--loss", BCE_LOGITS, "--no-progress", *argv])
        assert info.value.code == 2
        assert message in capsys.readouterr().err


#: Batches the interrupted sweep must have recorded before it is sent SIGINT.
INTERRUPT_AFTER_BATCHES = 6


def test_ctrl_c_then_resume_gives_the_uninterrupted_report(tmp_path):
    """``ce-reference verify --workers 2 --checkpoint`` sent SIGINT halfway exits 130 and
    says how to resume; ``--resume`` (serial here: the executor is not part of the
    sweep's identity) finishes it with the report of an uninterrupted serial run."""
    ck, out, ref = tmp_path / "ck.jsonl", tmp_path / "resumed.json", tmp_path / "ref.json"
    common = ["verify", "--loss", BCE_LOGITS, "--cases", "1", "--seed", "9",
              "--batch-cases", "4", "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-m", "ce_reference", *common, "--workers", "2",
                             "--checkpoint", str(ck)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 600
        while proc.poll() is None and time.monotonic() < deadline:
            if ck.exists() and len(_lines(ck)) - 2 >= INTERRUPT_AFTER_BATCHES:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the sweep finished before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert f"--resume {ck}" in err
    saved = len(_lines(ck)) - 2
    assert INTERRUPT_AFTER_BATCHES <= saved < 20
    assert main([*common, "--resume", str(ck), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["environment"]["batches_resumed"] == saved
    assert main([*common, "--json", str(ref)]) == 0
    assert comparable_json(out) == comparable_json(ref)


# --------------------------------------------------------------------------- progress

def test_status_counts_cases_rate_eta_and_failing_rows():
    seen = []
    rep = verify(specs=[raising_spec()], cases=1, seed=2, dtypes=(np.float64,),
                 option_sets=("hard targets",), batch_cases=2, status=seen.append)
    done = [st.done for st in seen]
    assert done == sorted(done) and done[-1] == rep.cases == seen[-1].total
    assert seen[-1].batches_done == seen[-1].batches_total == 3 + 2       # 5 + 3 cases
    assert seen[-1].failing_rows == 2 and seen[0].failing_rows == 0
    assert seen[-1].rate > 0 and seen[-1].eta == 0


def test_plain_progress_line(capsys):
    from ce_reference.cli import _plain_sweep_progress
    from ce_reference.verify.sweep import SweepStatus

    update = _plain_sweep_progress()
    update(SweepStatus(64, 20020, "softmax_cross_entropy | index | float64 | random", 2, 12.5,
                       1596.0, 1, 420))
    update(SweepStatus(128, 20020, "next", 2, 12.5, 1590.0, 2, 420))      # within 30 s: quiet
    assert capsys.readouterr().err == (
        "[64/20020 cases, 12.5 cases/s, ETA 0:26:36, 2 failing rows] "
        "softmax_cross_entropy | index | float64 | random\n")
