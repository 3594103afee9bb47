"""The JAX vocab-parallel loss on N simulated CPU devices: ``python _jax_devices_worker.py N OUT``.

``XLA_FLAGS=--xla_force_host_platform_device_count=N`` is set here, before JAX
initialises.  For every option set, dtype and vocabulary (divisible by N, and
not: then the function pads), on the verifier's extreme rows, it compares
``jax.jit(jax.value_and_grad(...))`` of the sharded loss with mpmath, with the
NumPy reference and with the same function on one device, and writes the worst
errors to ``OUT`` (JSON).
"""


def main():
    import json
    import os
    import sys

    N, out = int(sys.argv[1]), sys.argv[2]
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={N}").strip()
    os.environ["JAX_PLATFORMS"] = "cpu"
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

    import jax  # noqa: E402
    import jax.numpy as jnp  # noqa: E402
    import numpy as np  # noqa: E402
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

    jax.config.update("jax_enable_x64", True)

    import ce_reference.jax as cj  # noqa: E402
    from ce_reference.jax_parallel import vocab_parallel_cross_entropy  # noqa: E402
    from ce_reference.parallel import reference_cross_entropy  # noqa: E402
    from _parallel_helpers import extreme_rows, grad_units, mp_loss_grad, value_ulps  # noqa: E402

    # (V, dtype, options, compare with one device, compare with the JAX twin); V = 11 is
    # padded to a multiple of N inside the function.  Kept small: each is a compilation.
    CONFIGS = [
        (11, "float64", {}, True, True),
        (11, "float64", {"label_smoothing": 0.1}, False, False),
        (11, "float64", {"label_smoothing": 0.1, "smoothing": "others"}, False, False),
        (11, "float64", {"z_loss": 1e-4, "ignore_index": 2}, False, True),
        (11, "float64", {"z_loss": 0.5, "label_smoothing": 0.3, "smoothing": "others",
                         "reduction": "sum"}, False, False),
        (11, "float64", {"reduction": "none", "label_smoothing": 0.05}, False, False),
        (16, "float64", {}, False, False),
        (16, "float64", {"label_smoothing": 0.1, "smoothing": "others", "z_loss": 1e-2}, True, False),
        (11, "float32", {}, False, False),
        (11, "float32", {"label_smoothing": 0.1, "smoothing": "others", "z_loss": 1e-3}, True, False),
        (16, "float32", {"label_smoothing": 0.1}, False, True),
    ]

    assert jax.device_count() == N, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("vocab",))
    one = Mesh(np.array(jax.devices()[:1]), ("vocab",))
    rng = np.random.default_rng(100 + N)
    report = {"devices": N, "jax": jax.__version__, "rows": []}


    def total(x, y, m, opts):
        return jnp.sum(vocab_parallel_cross_entropy(x, y, mesh=m, axis_name="vocab", **opts))


    batches = {}
    for V, dname, opts, vs_one, vs_twin in CONFIGS:
        dtype = np.dtype(dname).type
        if (V, dname) not in batches:
            rows = extreme_rows(rng, V, dtype, n_split=N)
            x = np.stack([r for _, r in rows])
            y = rng.integers(0, V, size=len(rows))
            fin = np.where(np.isfinite(x), x, -np.inf)
            y[::2] = np.argmax(fin, axis=-1)[::2]
            y = np.where(np.isneginf(np.take_along_axis(x, y[:, None], -1)[:, 0]), 1, y)
            batches[V, dname] = x, y
        x, y = batches[V, dname]
        xx = x if not opts.get("label_smoothing") else np.where(np.isneginf(x), dtype(-30), x)
        f = jax.jit(jax.value_and_grad(lambda a, b, o=opts: total(a, b, mesh, o)))
        xs = jax.device_put(xx, NamedSharding(mesh, P(None, "vocab"))) if V % N == 0 else xx
        loss, grad = f(xs, y)
        loss, grad = float(loss), np.asarray(grad)
        assert grad.dtype == dtype and grad.shape == xx.shape
        red = opts.get("reduction", "mean")
        sum_opts = dict(opts, reduction="sum" if red == "none" else red)
        ev, eg = mp_loss_grad(xx, y, **sum_opts)
        rv, rg = reference_cross_entropy(xx, y, **sum_opts)
        entry = {
            "V": V, "dtype": dname, "options": opts,
            "mp_value_ulps": value_ulps(loss, ev, dtype),
            "mp_grad_eps": grad_units(grad, eg, xx, y, dtype, **sum_opts),
            "ref_value_ulps": value_ulps(loss, rv, dtype),
            "ref_grad_eps": grad_units(grad, rg, xx, y, dtype, **sum_opts),
            "finite": bool(np.isfinite(loss) and np.all(np.isfinite(grad))),
        }
        if vs_one:                    # the same function on one device
            f1 = jax.jit(jax.value_and_grad(lambda a, b, o=opts: total(a, b, one, o)))
            l1, g1 = f1(jax.device_put(xx, jax.devices()[0]), y)
            entry["one_device_value_ulps"] = value_ulps(loss, float(l1), dtype)
            entry["one_device_grad_eps"] = grad_units(grad, np.asarray(g1), xx, y, dtype, **sum_opts)
        if vs_twin:                   # the single-device JAX twin, written from the definition
            tw = jax.jit(jax.value_and_grad(lambda a, b, o=sum_opts: cj.softmax_cross_entropy(
                a, b, **o)))
            lt, gt = tw(xx, y)
            entry["twin_value_ulps"] = value_ulps(loss, float(lt), dtype)
            entry["twin_grad_eps"] = grad_units(grad, np.asarray(gt), xx, y, dtype, **sum_opts)
        report["rows"].append(entry)

    # rows split over a second mesh axis too (data x vocab)
    if N >= 4:
        dmesh = Mesh(np.array(jax.devices()).reshape(2, N // 2), ("data", "vocab"))
        xb, yb = batches[11, "float64"]
        xb, yb = xb[: len(xb) // 2 * 2], yb[: len(yb) // 2 * 2]
        opts = {"label_smoothing": 0.1, "z_loss": 1e-3, "ignore_index": 2}
        xb = np.where(np.isneginf(xb), -30.0, xb)
        fb = jax.jit(jax.value_and_grad(lambda a, b: jnp.sum(vocab_parallel_cross_entropy(
            a, b, mesh=dmesh, axis_name="vocab", batch_axis="data", **opts))))
        lb, gb = fb(xb, yb)
        ev, eg = mp_loss_grad(xb, yb, **opts)
        report["batch_axis"] = {"mp_value_ulps": value_ulps(float(lb), ev, np.float64),
                                "mp_grad_eps": grad_units(np.asarray(gb), eg, xb, yb, np.float64,
                                                          **opts)}

    # the collectives are really there: the compiled HLO of N > 1 has all-reduces
    txt = jax.jit(lambda a, b: total(a, b, mesh, {"label_smoothing": 0.1})).lower(
        np.zeros((2, 16), np.float32), np.zeros(2, np.int32)).compile().as_text()
    report["all_reduce_ops"] = txt.count("all-reduce")
    # an Explicit mesh (jax.make_mesh's default) under jax.set_mesh
    emesh = jax.make_mesh((N,), ("vocab",))
    with (getattr(jax, "set_mesh", None) or jax.sharding.use_mesh)(emesh):
        le = jax.jit(lambda a, b: total(a, b, emesh, {}))(np.ones((2, 16), np.float32),
                                                         np.array([0, 15]))
    report["explicit_mesh_loss"] = float(le)
    with open(out, "w") as fh:
        json.dump(report, fh)


if __name__ == "__main__":
    main()
