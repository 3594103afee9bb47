"""Sweeps on a Dask cluster: a 2-worker ``LocalCluster`` of separate processes gives the
serial report bitwise, catches a planted bug, survives a killed worker, runs a spec
defined in a test, and listens on loopback only (checked with ``ss`` while it runs).

Every scheduler, nanny and worker binds to 127.0.0.1, and the scheduler's HTTP server
(it always starts one, for its health and metrics routes, on the dashboard address:
``dashboard_address=None`` would mean ``:8787`` on every interface) to 127.0.0.1:0.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from ce_reference._loopback import LoopbackMonitor, ss_available
from ce_reference.cli import main
from ce_reference.registry import LOSSES
from ce_reference.verify import verify
from ce_reference.verify.sweep import SweepInterrupted

from _sweep_helpers import BCE_LOGITS, SMALL, comparable
from _verify_helpers import PLANTED, planted

distributed = pytest.importorskip("distributed")

#: Seconds between two samples of ``ss`` while the cluster runs.
SS_INTERVAL = 0.25
#: Seconds to wait for a scheduler or worker started from the command line.
START_TIMEOUT = 120


@pytest.fixture(scope="module")
def cluster():
    """``(client, monitor)``: a LocalCluster of 2 worker processes on loopback, watched."""
    if not ss_available():
        pytest.skip("the loopback check needs `ss` (iproute2)")
    monitor = LoopbackMonitor(interval=SS_INTERVAL).start()
    local = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                     host="127.0.0.1", dashboard_address="127.0.0.1:0")
    client = distributed.Client(local, set_as_default=False)
    try:
        yield client, monitor
    finally:
        client.close()
        local.close()
        monitor.stop()


@pytest.fixture(scope="module")
def serial_small():
    return verify(**SMALL)


def _executor(client):
    return client.get_executor(pure=False)


def test_cluster_sweep_equals_the_serial_one_and_stays_on_loopback(cluster, serial_small):
    client, monitor = cluster
    rep = verify(**SMALL, executor=_executor(client))
    assert rep.environment["executor"].startswith("Dask cluster at tcp://127.0.0.1:")
    assert comparable(rep) == comparable(serial_small)
    monitor.sample()
    assert monitor.listeners, monitor.summary()
    # scheduler, its HTTP server, 2 nannies, 2 workers and their HTTP servers
    assert len(monitor.listeners) >= 6, monitor.summary()
    assert monitor.ok, monitor.summary()


def test_a_planted_bug_is_caught_on_the_cluster(cluster):
    client, _ = cluster
    loss, build, option_sets = PLANTED["grad x (1 + 1e-6)"]
    spec = planted(loss, **build())                  # lambdas: sent by cloudpickle
    options = dict(specs=[spec], cases=1, seed=3, dtypes=(np.float64,),
                   option_sets=option_sets, regions=("random",), batch_cases=2)
    rep = verify(**options, executor=_executor(client))
    assert not rep.ok
    assert {f["measure"] for r in rep.rows for f in r.failures} & {"mpmath", "jax", "fused"}
    assert comparable(rep) == comparable(verify(**options))


def test_a_spec_defined_in_a_test_runs_on_the_workers(cluster):
    from test_extensibility import NAME, SPEC

    client, _ = cluster
    options = dict(cases=1, seed=2, dtypes=(np.float64,), option_sets=("index",),
                   regions=("random",))
    rep = verify(specs=[SPEC], **options, executor=_executor(client))   # by SPEC.ref
    assert rep.ok and rep.rows[0].loss == NAME
    assert comparable(rep) == comparable(verify(specs=[SPEC], **options))


def test_cli_sweep_on_the_cluster(cluster, tmp_path, capsys):
    client, monitor = cluster
    out = tmp_path / "r.json"
    code = main(["verify", "--loss", BCE_LOGITS, "--cases", "1", "--seed", "6",
                 "--scheduler", client.scheduler.address, "--json", str(out)])
    assert code == 0, capsys.readouterr().out
    assert "PASS" in capsys.readouterr().out
    assert monitor.ok, monitor.summary()


def test_cli_unreachable_scheduler_is_a_usage_error(capsys):
    from ce_reference._loopback import free_loopback_port

    with pytest.raises(SystemExit) as info:
        main(["verify", "--loss", BCE_LOGITS, "--scheduler",
              f"tcp://127.0.0.1:{free_loopback_port()}"])
    assert info.value.code == 2
    assert "no Dask scheduler answered" in capsys.readouterr().err


def _start(args, log):
    return subprocess.Popen([sys.executable, "-m", *args], stdout=log, stderr=subprocess.STDOUT)


def test_a_lost_scheduler_stops_the_sweep_which_resumes_on_another_cluster(
        cluster, serial_small, tmp_path):
    """``dask scheduler`` and ``dask worker`` processes on loopback; the scheduler is killed
    mid-sweep: the sweep stops with SweepInterrupted saying how to resume, and resuming its
    checkpoint on the other cluster gives the serial report."""
    other, monitor = cluster
    ck, address_file = tmp_path / "ck.jsonl", tmp_path / "scheduler.json"
    log = open(tmp_path / "dask.log", "w")
    scheduler = _start(["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
                        "--dashboard-address", "127.0.0.1:0", "--scheduler-file",
                        str(address_file)], log)
    worker = client = None
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not address_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        address = json.loads(address_file.read_text())["address"]
        worker = _start(["distributed.cli.dask_worker", address, "--host", "127.0.0.1",
                         "--nthreads", "1", "--dashboard-address", "127.0.0.1:0"], log)
        client = distributed.Client(address, set_as_default=False, timeout=START_TIMEOUT)
        client.wait_for_workers(1, timeout=START_TIMEOUT)

        def status(st):
            if st.batches_done >= 2 and scheduler.poll() is None:
                scheduler.kill()

        with pytest.raises(SweepInterrupted, match=f"--resume {ck}") as info:
            verify(**SMALL, executor=_executor(client), checkpoint=ck, status=status)
        assert not info.value.by_user
    finally:
        for process in (worker, scheduler):
            if process is not None:
                if process.poll() is None:
                    process.kill()
                process.wait(timeout=START_TIMEOUT)    # reaped: no "still running" warning
        if client is not None:
            client.close(timeout=5)
        log.close()
    rep = verify(**SMALL, executor=_executor(other), checkpoint=ck, resume=True)
    assert rep.environment["batches_resumed"] >= 2
    assert comparable(rep) == comparable(serial_small)
    assert monitor.ok, monitor.summary()


def test_a_killed_worker_is_replaced_and_the_report_unchanged(cluster, serial_small):
    """Runs last of the cluster tests: the nanny restarts the killed worker."""
    client, monitor = cluster
    pids = list(client.run(os.getpid).values())
    killed = []

    def status(st):
        if st.batches_done >= 2 and not killed:
            os.kill(pids[0], signal.SIGKILL)
            killed.append(st.done)

    rep = verify(**SMALL, executor=_executor(client), status=status)
    assert killed and killed[0] < rep.cases, "no worker was killed mid-sweep"
    assert comparable(rep) == comparable(serial_small)
    assert monitor.ok, monitor.summary()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__]))
