"""The JAX vocab-parallel loss: on 1, 2, 4 and 8 simulated CPU devices (a subprocess per
device count), across 2 processes with ``jax.distributed`` (every socket checked to stay on
loopback while it runs), and in-process on one device (jit, grad, options, errors)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from ce_reference._loopback import LoopbackMonitor, free_loopback_port, ss_available
from ce_reference.jax_parallel import vocab_parallel_cross_entropy
from ce_reference.parallel import reference_cross_entropy

HERE = os.path.dirname(os.path.abspath(__file__))

#: Gates, in eps(dtype) units (values relative to the exact value, gradients relative to
#: their operands).  Measured on the worker's extreme rows: <= 2 against mpmath and <= 5
#: against the JAX twin, for every device count; XLA's CPU log1p and exp are not correctly
#: rounded (log1p measured up to 128 ULP off elsewhere), hence the margin.
GATE_MP = 16
GATE_ONE_DEVICE = 16
GATE_TWIN = 32


def _env():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    env.pop("JAX_NUM_CPU_DEVICES", None)
    return env


@pytest.mark.parametrize("n_devices", [1, 2, 4, 8])
def test_on_simulated_cpu_devices(tmp_path, n_devices):
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, os.path.join(HERE, "_jax_devices_worker.py"),
                           str(n_devices), str(out)], env=_env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rep = json.loads(out.read_text())
    if os.environ.get("CE_PARALLEL_REPORT_DIR"):       # keep the numbers (docs/parallel.md)
        with open(os.path.join(os.environ["CE_PARALLEL_REPORT_DIR"],
                               f"jax-{n_devices}-devices.json"), "w") as fh:
            fh.write(out.read_text())
    assert rep["devices"] == n_devices
    if n_devices > 1:
        assert rep["all_reduce_ops"] >= 1
    assert np.isclose(rep["explicit_mesh_loss"], np.log(16))
    if n_devices >= 4:                     # rows over a "data" axis, classes over "vocab"
        b = rep["batch_axis"]
        assert b["mp_value_ulps"] <= GATE_MP and b["mp_grad_eps"] <= GATE_MP, b
    for r in rep["rows"]:
        where = f"{n_devices} devices, V={r['V']} {r['dtype']} {r['options']}"
        assert r["finite"], where
        assert r["mp_value_ulps"] <= GATE_MP and r["mp_grad_eps"] <= GATE_MP, (where, r)
        if "one_device_value_ulps" in r:
            assert r["one_device_value_ulps"] <= GATE_ONE_DEVICE, (where, r)
            assert r["one_device_grad_eps"] <= GATE_ONE_DEVICE, (where, r)
        if "twin_value_ulps" in r:
            assert r["twin_value_ulps"] <= GATE_TWIN and r["twin_grad_eps"] <= GATE_TWIN, (where, r)


@pytest.mark.skipif(not ss_available(), reason="cannot check that the sockets stay on loopback "
                                               "without `ss` (iproute2): the 2-process test is "
                                               "left out")
def test_two_processes_loopback_only(tmp_path):
    """2 processes, each holding half of the vocabulary: the same loss and gradient as one
    device; every socket of both processes on 127.0.0.1 / ::1 while it runs."""
    port = free_loopback_port()
    outs = [tmp_path / f"p{i}.json" for i in range(2)]
    procs = []

    def abort(line):                       # a socket outside loopback: stop the run at once
        for p in procs:
            p.kill()

    t0 = time.monotonic()
    with LoopbackMonitor(interval=0.1, on_violation=abort) as mon:
        for i in range(2):
            procs.append(subprocess.Popen(
                [sys.executable, os.path.join(HERE, "_jax_mp_worker.py"), str(i), "2", str(port),
                 str(outs[i])], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True))
            mon.add_pid(procs[-1].pid)
        logs = []
        try:
            for p in procs:
                logs.append(p.communicate(timeout=600)[0])
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait(timeout=60)
    seconds = time.monotonic() - t0
    evidence = mon.summary()
    if os.environ.get("CE_LOOPBACK_EVIDENCE"):
        with open(os.environ["CE_LOOPBACK_EVIDENCE"], "a") as fh:
            fh.write(f"# jax.distributed, 2 processes, {seconds:.1f} s\n{evidence}\n")
    mon.check()
    assert mon.samples >= 3
    assert any(f"127.0.0.1]:{port}" in s or f"127.0.0.1:{port}" in s for s in mon.listeners), \
        evidence                           # the coordinator was seen, on loopback
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)[-4000:]
    reps = [json.loads(o.read_text()) for o in outs]
    if os.environ.get("CE_PARALLEL_REPORT_DIR"):
        with open(os.path.join(os.environ["CE_PARALLEL_REPORT_DIR"], "jax-2-processes.json"),
                  "w") as fh:
            json.dump({"seconds": seconds, "loopback": evidence, "processes": reps}, fh)
    assert [r["process"] for r in reps] == [0, 1]
    for a, b in zip(reps[0]["results"], reps[1]["results"]):
        assert a["options"] == b["options"] and a["shard"] != b["shard"]
        assert a["loss"] == b["loss"]                   # replicated on both processes
        for r in (a, b):
            tol = 64 * np.finfo(r["dtype"]).eps
            assert abs(r["loss"] - r["loss_one_device"]) <= tol * max(1, abs(r["loss_one_device"]))
            assert abs(r["loss"] - r["loss_reference"]) <= tol * max(1, abs(r["loss_reference"]))
            assert r["grad_vs_one_device"] <= tol * max(1, r["grad_scale"])
            assert r["grad_vs_reference"] <= tol * max(1, r["grad_scale"])


# --------------------------------------------------------------------------- in-process

@pytest.fixture(scope="module")
def mesh1():
    return Mesh(np.array(jax.devices()[:1]), ("vocab",))


def _f(mesh, **opts):
    return lambda x, y: vocab_parallel_cross_entropy(x, y, mesh=mesh, axis_name="vocab", **opts)


@pytest.mark.parametrize("opts", [
    {}, {"label_smoothing": 0.2, "smoothing": "others", "z_loss": 0.1},
    {"ignore_index": 1, "reduction": "sum", "label_smoothing": 0.1},
])
def test_grad_equals_numpy_reference(rng, mesh1, opts):
    x = rng.normal(size=(2, 3, 7)) * 4
    y = rng.integers(0, 7, size=(2, 3))
    y[0, 0] = 1
    loss, grad = jax.jit(jax.value_and_grad(_f(mesh1, **opts)))(x, y)
    rl, rg = reference_cross_entropy(x, y, **opts)
    np.testing.assert_allclose(float(loss), rl, rtol=1e-14)
    np.testing.assert_allclose(np.asarray(grad), rg, rtol=1e-12, atol=1e-15)


def test_reduction_none_and_dtypes(rng, mesh1):
    x = rng.normal(size=(4, 5)).astype(np.float32)
    y = np.array([0, 1, 2, 3])
    rows = jax.jit(_f(mesh1, reduction="none"))(x, y)
    assert rows.shape == (4,) and rows.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(rows), reference_cross_entropy(x, y, reduction="none")[0],
                               rtol=1e-6)
    h = jax.jit(_f(mesh1))(x.astype(np.float16), y)
    assert h.dtype == jnp.float16


def test_empty_mean_is_nan_with_zero_gradient(mesh1):
    x = np.zeros((2, 3))
    y = np.array([-100, -100])
    loss, g = jax.jit(jax.value_and_grad(_f(mesh1, ignore_index=-100, z_loss=0.1)))(x, y)
    assert np.isnan(float(loss)) and np.all(np.asarray(g) == 0)


def test_masked_classes_no_nan(mesh1):
    x = np.array([[0.0, -np.inf, 2.0, -np.inf]])
    loss, g = jax.jit(jax.value_and_grad(_f(mesh1, z_loss=0.1)))(x, np.array([2]))
    rl, rg = reference_cross_entropy(x, np.array([2]), z_loss=0.1)
    assert np.isclose(float(loss), rl) and np.allclose(np.asarray(g), rg)
    ls, gs = jax.jit(jax.value_and_grad(_f(mesh1, label_smoothing=0.1)))(x, np.array([2]))
    assert np.isposinf(float(ls)) and np.all(np.isfinite(np.asarray(gs)))


@pytest.mark.parametrize("opts, exc, match", [
    ({"label_smoothing": 1.5}, ValueError, "label_smoothing"),
    ({"smoothing": "megatron"}, ValueError, "smoothing"),
    ({"z_loss": -1.0}, ValueError, "z_loss"),
    ({"reduction": "avg"}, ValueError, "reduction"),
    ({"ignore_index": 1.5}, TypeError, "ignore_index"),
])
def test_bad_options(mesh1, opts, exc, match):
    with pytest.raises(exc, match=match):
        _f(mesh1, **opts)(np.zeros((1, 3)), np.array([0]))


def test_bad_batch_axis(mesh1):
    with pytest.raises(ValueError, match="batch_axis"):
        vocab_parallel_cross_entropy(np.zeros((2, 3)), np.array([0, 1]), mesh=mesh1,
                                     axis_name="vocab", batch_axis="vocab")


def test_explicit_mesh_needs_the_mesh_context():
    mesh = jax.make_mesh((1,), ("vocab",))
    if "Explicit" not in str(getattr(mesh, "axis_types", "")):
        pytest.skip("this jax's make_mesh makes Auto axes")
    with pytest.raises(ValueError, match="set_mesh"):
        _f(mesh)(np.zeros((1, 3)), np.array([0]))
    with (getattr(jax, "set_mesh", None) or jax.sharding.use_mesh)(mesh):
        assert np.isclose(float(jax.jit(_f(mesh))(np.zeros((1, 3)), np.array([0]))), np.log(3))


# --------------------------------------------------------------------------- the monitor

@pytest.mark.parametrize("line, bad", [
    ('tcp LISTEN 0 4096 127.0.0.1:46477 0.0.0.0:* users:(("python",pid=7,fd=11))', False),
    ('tcp LISTEN 0 4096 [::ffff:127.0.0.1]:58411 *:* users:(("python",pid=7,fd=7))', False),
    ('tcp LISTEN 0 4096 [::1]:58411 [::]:* users:(("python",pid=7,fd=7))', False),
    ('tcp ESTAB 0 0 127.0.0.1:35104 127.0.0.1:46477 users:(("python",pid=7,fd=15))', False),
    ('tcp LISTEN 0 4096 0.0.0.0:46477 0.0.0.0:* users:(("python",pid=7,fd=11))', True),
    ('tcp LISTEN 0 4096 *:46477 *:* users:(("python",pid=7,fd=11))', True),
    ('tcp LISTEN 0 4096 [::]:46477 [::]:* users:(("python",pid=7,fd=11))', True),
    ('tcp LISTEN 0 4096 192.0.2.2:46477 0.0.0.0:* users:(("python",pid=7,fd=11))', True),
    ('tcp ESTAB 0 0 127.0.0.1:35104 192.0.2.9:443 users:(("python",pid=7,fd=15))', True),
    ('tcp ESTAB 0 0 [fd00::2]:35104 [::1]:443 users:(("python",pid=7,fd=15))', True),
    ('udp UNCONN 0 0 0.0.0.0:5353 0.0.0.0:* users:(("python",pid=7,fd=3))', True),
])
def test_loopback_classification(line, bad):
    from ce_reference._loopback import parse_ss_line
    key, pids, got = parse_ss_line(line)
    assert pids == {7} and got is bad
