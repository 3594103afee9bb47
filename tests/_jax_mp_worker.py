"""One process of the 2-process JAX test: ``python _jax_mp_worker.py PID NPROC PORT OUT``.

Initialises ``jax.distributed`` on 127.0.0.1 only (coordinator and gloo), holds
``1 / NPROC`` of the vocabulary of seeded logits, runs the vocab-parallel loss
and its gradient over the global mesh (one CPU device per process), and writes
its loss and its gradient shard, next to the same computed on its one local
device alone and by the NumPy reference, to ``OUT`` (JSON).
"""


def main():
    import json
    import sys

    pid, nproc, port, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]

    from ce_reference.jax_parallel import initialize_loopback_cluster  # noqa: E402

    initialize_loopback_cluster(port, nproc, pid)

    import jax  # noqa: E402
    import jax.numpy as jnp  # noqa: E402
    import numpy as np  # noqa: E402
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

    from ce_reference.jax_parallel import vocab_parallel_cross_entropy  # noqa: E402
    from ce_reference.parallel import reference_cross_entropy  # noqa: E402

    jax.config.update("jax_enable_x64", True)

    OPTIONS = [
        {},
        {"label_smoothing": 0.2, "smoothing": "others", "z_loss": 1e-2},
        {"ignore_index": 3, "reduction": "sum", "z_loss": 1e-4},
        {"reduction": "none", "label_smoothing": 0.05},
    ]

    assert jax.process_count() == nproc and jax.process_index() == pid
    devices = jax.devices()
    assert len(devices) == nproc and len(jax.local_devices()) == 1
    mesh = Mesh(np.array(devices), ("vocab",))
    local_mesh = Mesh(np.array(jax.local_devices()), ("vocab",))
    rng = np.random.default_rng(1234)                    # the same logits in every process
    N, V = 6, 10 * nproc
    results = []
    for dtype in (np.float64, np.float32):
        x = (3 * rng.normal(size=(N, V))).astype(dtype)
        x[0, V // nproc:] = -np.inf                       # row 0: only process 0 has finite logits
        x[1, 0] = 30.0                                    # row 1: confident, max on process 0
        x[2, -1] = 30.0                                   # row 2: max on the last process
        y = rng.integers(0, V, size=N)
        y[0] = 1
        y[3] = 3
        w = V // nproc
        local = x[:, pid * w:(pid + 1) * w]
        gx = jax.make_array_from_process_local_data(NamedSharding(mesh, P(None, "vocab")), local,
                                                    (N, V))
        for opts in OPTIONS:
            xx = x
            if opts.get("label_smoothing"):               # smoothing + -inf is an infinite loss
                xx = np.where(np.isneginf(x), dtype(-50.0), x)
                gx_ = jax.make_array_from_process_local_data(
                    NamedSharding(mesh, P(None, "vocab")), xx[:, pid * w:(pid + 1) * w], (N, V))
            else:
                gx_ = gx

            def total(a, b, m, o=opts):
                v = vocab_parallel_cross_entropy(a, b, mesh=m, axis_name="vocab", **o)
                return jnp.sum(v)

            f = jax.jit(jax.value_and_grad(lambda a, b: total(a, b, mesh)))
            loss, grad = f(gx_, y)
            loss_here = float(np.asarray(loss.addressable_data(0)))
            grad_here = np.asarray(grad.addressable_shards[0].data)
            assert grad.addressable_shards[0].index[1] == slice(pid * w, (pid + 1) * w, None)
            # the same on this process's one device alone (a 1-device mesh), and the NumPy reference
            f1 = jax.jit(jax.value_and_grad(lambda a, b: total(a, b, local_mesh)))
            l1, g1 = f1(jax.device_put(xx, jax.local_devices()[0]), y)
            rl, rg = reference_cross_entropy(xx, y, **opts)
            results.append({
                "dtype": np.dtype(dtype).name, "options": opts,
                "loss": loss_here, "loss_one_device": float(l1), "loss_reference": float(np.sum(rl)),
                "grad_vs_one_device": float(np.max(np.abs(grad_here - np.asarray(g1)[:, pid * w:(pid + 1) * w]))),
                "grad_vs_reference": float(np.max(np.abs(grad_here - rg[:, pid * w:(pid + 1) * w]))),
                "grad_scale": float(np.max(np.abs(rg))),
                "shard": [pid * w, (pid + 1) * w],
            })
    with open(out, "w") as fh:
        json.dump({"process": pid, "processes": nproc, "devices": [str(d) for d in devices],
                   "results": results}, fh)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
