"""Time the JAX vocab-parallel loss against the single-device loss.

    python tools/bench_vocab_parallel.py [--rows 4096] [--vocab 131072] [--devices 8] [--repeat 3]

Simulates ``--devices`` CPU devices (``--xla_force_host_platform_device_count``,
set here before JAX starts), puts float32 logits ``(rows, vocab)`` sharded along the
class axis, and times (compile excluded, ``block_until_ready``, median of
``--repeat`` after one warm-up):

* ``sharded``: ``jax.jit`` of ``ce_reference.jax_parallel.vocab_parallel_cross_entropy``
  on the ``devices``-way mesh (loss, and ``value_and_grad``);
* ``one device, same algorithm``: the same function on a 1-device mesh;
* ``one device, twin``: ``ce_reference.jax.softmax_cross_entropy`` (``jax.nn.log_softmax``)
  on one device.

Each variant runs alone (its arrays are freed before the next), so the peak memory is
about four times the logits (input, gradient, two temporaries).  On a machine with
fewer cores than devices the simulated devices share the cores: this measures the
overhead of the sharded program, not a speed-up.
"""

import argparse
import json
import os
import sys
import time

ap = argparse.ArgumentParser()
ap.add_argument("--rows", type=int, default=4096)
ap.add_argument("--vocab", type=int, default=131072)
ap.add_argument("--devices", type=int, default=8)
ap.add_argument("--repeat", type=int, default=3)
ap.add_argument("--json", metavar="PATH")
a = ap.parse_args()

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + f" --xla_force_host_platform_device_count={a.devices}").strip()
os.environ["JAX_PLATFORMS"] = "cpu"

import gc  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

import ce_reference.jax as cj  # noqa: E402
from ce_reference.jax_parallel import vocab_parallel_cross_entropy  # noqa: E402

nbytes = a.rows * a.vocab * 4
with open("/proc/meminfo") as fh:
    avail = int(next(l for l in fh if l.startswith("MemAvailable")).split()[1]) * 1024
if avail < 5 * nbytes:
    sys.exit(f"refusing: {avail / 2**30:.1f} GiB available, need ~{5 * nbytes / 2**30:.1f} GiB")

assert jax.device_count() == a.devices
mesh = Mesh(np.array(jax.devices()), ("vocab",))
one = Mesh(np.array(jax.devices()[:1]), ("vocab",))
rng = np.random.default_rng(0)
y = rng.integers(0, a.vocab, a.rows).astype(np.int32)


def make(sharding):
    x = rng.standard_normal((a.rows, a.vocab), dtype=np.float32)
    xd = jax.device_put(x, sharding)
    del x
    gc.collect()
    return jax.block_until_ready(xd)


def timeit(f, *args):
    jax.block_until_ready(f(*args))                    # compile + warm-up
    ts = []
    for _ in range(a.repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)), float(np.min(ts))


results = {"rows": a.rows, "vocab": a.vocab, "devices": a.devices, "dtype": "float32",
           "repeat": a.repeat, "jax": jax.__version__, "cpus": os.cpu_count(), "variants": {}}
variants = [
    ("sharded", NamedSharding(mesh, P(None, "vocab")),
     lambda x, y: vocab_parallel_cross_entropy(x, y, mesh=mesh, axis_name="vocab")),
    ("one device, same algorithm", jax.devices()[0],
     lambda x, y: vocab_parallel_cross_entropy(x, y, mesh=one, axis_name="vocab")),
    ("one device, twin (log_softmax)", jax.devices()[0],
     lambda x, y: cj.softmax_cross_entropy(x, y)),
]
for name, sharding, fn in variants:
    x = make(sharding)
    loss = timeit(jax.jit(fn), x, y)
    vg = timeit(jax.jit(jax.value_and_grad(fn)), x, y)
    results["variants"][name] = {"loss_s": loss[0], "loss_best_s": loss[1],
                                 "value_and_grad_s": vg[0], "value_and_grad_best_s": vg[1]}
    print(f"{name:32s} loss {loss[0]:.3f} s (best {loss[1]:.3f})   value_and_grad "
          f"{vg[0]:.3f} s (best {vg[1]:.3f})", flush=True)
    del x
    gc.collect()
base = results["variants"]["one device, twin (log_softmax)"]
s = results["variants"]["sharded"]
results["ratio_sharded_to_twin"] = {"loss": s["loss_s"] / base["loss_s"],
                                    "value_and_grad": s["value_and_grad_s"] / base["value_and_grad_s"]}
print(json.dumps(results["ratio_sharded_to_twin"]))
if a.json:
    with open(a.json, "w") as fh:
        json.dump(results, fh, indent=1)
