r"""Vocab-parallel softmax cross-entropy on JAX's sharding engine (``jax.shard_map``).

``vocab_parallel_cross_entropy(logits, targets, *, mesh, axis_name, **options)`` is
:func:`ce_reference.parallel.vocab_parallel_cross_entropy` (same options, same
formulas) run by ``jax.shard_map`` over a :class:`jax.sharding.Mesh` whose axis
``axis_name`` splits the class axis: every device holds ``V / n`` classes of every
row, computes the local statistics, and the collectives combine them --
``lax.pmax`` of the row maxima (under ``stop_gradient``: ``pmax`` has no
differentiation rule, JAX #7167, and the loss does not depend on the shift
mathematically) and one ``lax.psum`` of the stacked
``(M - x_y, sum of rescaled exponentials, count of maxima, shifted row-logit sum)``.
The result is replicated on every device.  Differentiable (``jax.grad`` through it
equals the single-device gradient) and jit-compatible: ``mesh``, ``axis_name``
and the options are static Python values, ``logits`` and ``targets`` may be
traced.  :mod:`ce_reference.jax` exports it as ``vocab_parallel_cross_entropy``.

Per row, with ``M`` the global maximum (see :mod:`ce_reference.parallel`):

.. math::

    \ell = \alpha\,(M - x_y) + \beta \sum_{c \ne y} (M - x_c) + \operatorname{log1p}(t)
           + z\,(M + \operatorname{log1p}(t))^2,
    \qquad t = \sum_{c \ne a} e^{x_c - M},

where the terms of the entries equal to ``M`` are replaced by ``x_c - M`` (0 in value,
derivative 1 = exp(0), as ``expm1(x_c - M)`` would be but without evaluating it: the
gradient stays exact under the ``stop_gradient`` shift) and
counted (``H``, psum-ed with the rest); ``t`` adds back ``H - 1`` of their ones.  No
arg-max is needed, and the local work is one pass for the maximum and one fused pass
for the sums.

A vocabulary ``V`` not divisible by the number of devices ``n`` is padded inside
the function with ``-inf`` classes up to ``ceil(V / n) * n``; the padding enters
neither the smoothing coefficients (they use the real ``V``) nor the row-logit
sum, and its gradient is dropped.

Run on several CPU devices of one process with
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (or
``jax.config.update("jax_num_cpu_devices", N)``) set before JAX initialises, and
across processes or hosts after ``jax.distributed.initialize(...)``; see
``docs/parallel.md``.  Requires ``jax >= 0.6.1`` (``jax.shard_map`` with
``check_vma``).

Like the other JAX twins it does not validate values under ``jit``: targets
outside ``[0, V)`` (other than ``ignore_index``) or a row that is all ``-inf``
give meaningless numbers, not errors.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

__all__ = ["vocab_parallel_cross_entropy", "SMOOTHING"]

from .parallel import SMOOTHING, check_options  # noqa: E402 -- one set of option checks


def _coefficients(eps, smoothing, V):
    if eps == 0:
        return 1.0, 0.0
    if smoothing == "uniform":
        return 1 - eps + eps / V, eps / V
    return 1 - eps, eps / (V - 1)


def _has_explicit_axes(mesh):
    return any("Explicit" in str(t) for t in getattr(mesh, "axis_types", ()) or ())


def _check_options(label_smoothing, smoothing, z_loss, ignore_index, reduction, V):
    """The NumPy version's checks (:func:`ce_reference.parallel.check_options`): ``(eps, z)``."""
    eps, z, _, _ = check_options(label_smoothing, smoothing, z_loss, ignore_index, reduction, V)
    return eps, z


def _local_rows(xs, ys, *, axis_name, V, width, eps, alpha, beta, z, ignore_index):
    """One device's part: local statistics, the collectives, the per-row losses (replicated)."""
    dt = xs.dtype
    k = lax.axis_index(axis_name)
    j = lax.broadcasted_iota(jnp.int32, xs.shape, 1)     # local class index
    cols = k * width + j                                  # global class index
    kept = jnp.ones(ys.shape, bool) if ignore_index is None else ys != ignore_index

    # 1. all-reduce MAX of the local maxima (no gradient: pmax has no JVP, JAX #7167)
    m_loc = jnp.max(xs, axis=-1)
    M = lax.stop_gradient(lax.pmax(lax.stop_gradient(m_loc), axis_name))
    d = xs - M[:, None]                                   # <= 0; -inf for masked / padding

    # 2. local statistics
    own = kept & (ys >= k * width) & (ys < (k + 1) * width)   # this device holds the target
    ly = jnp.clip(ys - k * width, 0, width - 1)                # its local index
    D = jnp.where(own, -jnp.take_along_axis(d, ly[:, None], axis=-1)[:, 0], 0)   # M - x_y
    at_max = d == 0                                       # entries equal to the global maximum
    f = jnp.where(at_max, d, jnp.exp(d))                  # their 1s split out: d = 0 in value,
    #                                                       derivative 1 = exp(0) (like expm1)
    stats = [D, jnp.sum(f, axis=-1), jnp.sum(at_max.astype(dt), axis=-1)]
    if eps > 0:
        # sum_{c != y} (M - x_c) over the real classes (not the padding), target excluded
        # by index (subtracting M - x_y from the full sum could cancel)
        drop = (cols >= V) | ((j == ly[:, None]) & own[:, None])
        stats.append(jnp.sum(jnp.where(drop, 0, -d), axis=-1))

    # 3. all-reduce SUM of the stacked statistics
    S = lax.psum(jnp.stack(stats, axis=-1), axis_name)
    t = S[:, 1] + (S[:, 2] - 1)                           # every maximum's 1 but one
    L = jnp.log1p(t)
    rows = alpha * S[:, 0] + L
    if eps > 0:
        rows = rows + beta * S[:, 3]
    if z:
        lse = M + L
        rows = rows + z * lse * lse
    return jnp.where(kept, rows, 0)


def vocab_parallel_cross_entropy(logits, targets, *, mesh, axis_name, label_smoothing=0.0,
                                 smoothing="uniform", z_loss=0.0, ignore_index=None,
                                 reduction="mean", batch_axis=None):
    r"""Softmax cross-entropy with the class axis sharded over ``mesh.shape[axis_name]`` devices.

    Parameters
    ----------
    logits : array, shape ``(..., V)``
        Class axis last.  It may already be sharded along the last axis
        (``NamedSharding(mesh, P(..., axis_name))``); otherwise ``shard_map``
        distributes it.  float16 / bfloat16 are computed in float32.
    targets : int array, shape ``(...)``
        Global class indices (or ``ignore_index``); replicated.
    mesh : jax.sharding.Mesh
        With ``AxisType.Auto`` axes (``jax.sharding.Mesh(devices, names)``) it works
        anywhere; with ``Explicit`` axes (``jax.make_mesh``'s default) call it under
        ``with jax.set_mesh(mesh):``.
    axis_name : str
        The mesh axis that splits the class axis.  Other mesh axes replicate.
    label_smoothing, smoothing, z_loss, ignore_index, reduction
        As :func:`ce_reference.parallel.vocab_parallel_cross_entropy`.
    batch_axis : str, optional
        A second mesh axis that splits the rows (data parallelism): each device then
        holds ``rows / n_batch`` rows and ``V / n`` classes, and the per-row losses
        stay sharded along it (the ``sum``/``mean`` reduce across it).  The number
        of rows (the product of the batch shape) must be divisible by its size.

    Returns
    -------
    jax.Array
        The loss (scalar, or the batch shape for ``"none"``), replicated.
        ``mean`` with no kept row is NaN and its gradient zero.

    Examples
    --------
    >>> import jax, numpy as np
    >>> from ce_reference.jax_parallel import vocab_parallel_cross_entropy
    >>> mesh = jax.sharding.Mesh(np.array(jax.devices()), ("vocab",))
    >>> x = np.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]], np.float32)
    >>> f = jax.jit(lambda x, y: vocab_parallel_cross_entropy(x, y, mesh=mesh, axis_name="vocab"))
    >>> round(float(f(x, np.array([0, 1]))), 6)
    0.31854
    """
    x = jnp.asarray(logits)
    in_dtype = x.dtype
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    elif x.dtype in (jnp.float16, jnp.bfloat16):
        x = x.astype(jnp.float32)
    if x.ndim == 0:
        raise ValueError("logits is 0-dimensional; expected (..., V)")
    V = x.shape[-1]
    eps, z = _check_options(label_smoothing, smoothing, z_loss, ignore_index, reduction, V)
    alpha, beta = _coefficients(eps, smoothing, V)
    n = mesh.shape[axis_name]
    Vp = -(-V // n) * n
    batch = x.shape[:-1]
    x2 = x.reshape(-1, V)
    if Vp != V:
        x2 = jnp.pad(x2, ((0, 0), (0, Vp - V)), constant_values=-jnp.inf)
    y = jnp.asarray(targets)
    if y.shape != batch:
        raise ValueError(f"targets must have the batch shape {batch}, got {y.shape}")
    y = y.reshape(-1).astype(jnp.int32)

    local = functools.partial(_local_rows, axis_name=axis_name, V=V, width=Vp // n, eps=eps,
                              alpha=alpha, beta=beta, z=z, ignore_index=ignore_index)
    if batch_axis is not None:
        if batch_axis == axis_name or batch_axis not in mesh.shape:
            raise ValueError(f"batch_axis={batch_axis!r} must be another axis of the mesh "
                             f"{tuple(mesh.shape)}")
        if x2.shape[0] % mesh.shape[batch_axis]:
            raise ValueError(f"{x2.shape[0]} rows do not split evenly over batch_axis "
                             f"{batch_axis!r} of size {mesh.shape[batch_axis]}")
    xspec, yspec = P(batch_axis, axis_name), P(batch_axis)
    smap = jax.shard_map(local, mesh=mesh, in_specs=(xspec, yspec), out_specs=yspec)
    if _has_explicit_axes(mesh):
        # an Explicit mesh (jax.make_mesh's default) wants the arguments' types to match
        # in_specs: reshard them, which needs the mesh context of jax.set_mesh
        am = jax.sharding.get_abstract_mesh()
        if getattr(am, "empty", True) or axis_name not in am.axis_names:
            raise ValueError(
                f"mesh has Explicit axes {mesh.axis_names} (jax.make_mesh's default): call "
                "this under `with jax.set_mesh(mesh):` (jax < 0.7: jax.sharding.use_mesh), or "
                "build the mesh with "
                "axis_types=(jax.sharding.AxisType.Auto, ...) / jax.sharding.Mesh(devices, names)")
        reshard = getattr(jax.sharding, "reshard", None)
        if reshard is None:                                # jax < 0.7: jax.experimental.shard
            from jax.experimental.shard import reshard
        rows = smap(reshard(x2, xspec), reshard(y, yspec))
    else:
        rows = smap(x2, y)
    rows = rows.reshape(batch)
    if reduction == "none":
        out = rows
    elif reduction == "sum":
        out = jnp.sum(rows)
    else:
        kept = jnp.ones(y.shape, bool) if ignore_index is None else y != ignore_index
        count = jnp.sum(kept)
        # NaN for an empty mean, with a zero (not NaN) gradient
        out = jnp.where(count > 0, jnp.sum(rows) / jnp.maximum(count, 1).astype(rows.dtype),
                        jnp.nan)
    if jnp.issubdtype(in_dtype, jnp.floating):
        out = out.astype(in_dtype)
    return out


def initialize_loopback_cluster(port, num_processes, process_id, *, local_device_ids=None,
                                timeout=120):
    """``jax.distributed.initialize`` for processes on *this* host, every socket on 127.0.0.1.

    For tests and local experiments.  ``jax.distributed.initialize`` binds its
    coordinator to all interfaces unless given ``coordinator_bind_address``, and
    JAX's gloo CPU collectives bind to the address of the host name unless told
    otherwise (``jax_cpu_collectives_implementation="gloo"`` takes no interface
    setting); here the coordinator is bound to ``127.0.0.1:port`` and the CPU
    backend is registered with gloo collectives created with
    ``hostname="127.0.0.1"`` (through ``jax._src.xla_bridge``: a private
    interface, checked against jax 0.10.2).  Call it before anything touches a
    JAX device.  On a real cluster use ``jax.distributed.initialize`` with the
    cluster's coordinator address instead (``docs/parallel.md``).
    """
    from jax._src import distributed as _dist
    from jax._src import xla_bridge as _xb
    from jax._src.lib import _jax

    addr = f"127.0.0.1:{int(port)}"
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=addr, num_processes=num_processes,
                               process_id=process_id, local_device_ids=local_device_ids,
                               coordinator_bind_address=addr, initialization_timeout=timeout)
    collectives = _jax.make_gloo_tcp_collectives(
        distributed_client=_dist.global_state.client, hostname="127.0.0.1")
    _xb.register_backend_factory(
        "cpu", functools.partial(_xb.make_cpu_client, collectives=collectives),
        priority=0, fail_quietly=False)
