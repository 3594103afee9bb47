r"""Vocab-parallel softmax cross-entropy on JAX's sharding engine (``jax.shard_map``).

``vocab_parallel_cross_entropy(logits, targets, *, mesh, axis_name, **options)`` is
:func:`ce_reference.parallel.vocab_parallel_cross_entropy` (same options, same
formulas) run by ``jax.shard_map`` over a :class:`jax.sharding.Mesh` whose axis
``axis_name`` splits the class axis: every device holds ``V / n`` classes of every
row, computes the local statistics, and the collectives combine them --
``lax.pmax`` of the row maxima (under ``stop_gradient``: ``pmax`` has no
differentiation rule, JAX #7167, and the loss does not depend on the shift
mathematically) and one ``lax.psum`` of the stacked
``(M - x_y, sum of rescaled exponentials, arg-max count, shifted row-logit sum)``.
The result is replicated on every device.  Differentiable (``jax.grad`` through it
equals the single-device gradient) and jit-compatible: ``mesh``, ``axis_name``
and the options are static Python values, ``logits`` and ``targets`` may be
traced.  It will become ``ce_reference.jax.vocab_parallel_cross_entropy``.

Per row, with ``M`` the global maximum (see :mod:`ce_reference.parallel`):

.. math::

    \ell = \alpha\,(M - x_y) + \beta \sum_{c \ne y} (M - x_c) + \operatorname{log1p}(t)
           + z\,(M + \operatorname{log1p}(t))^2,
    \qquad t = \sum_{c \ne a} e^{x_c - M},

where the global arg-max ``a``'s term is computed as ``expm1(x_a - M)`` (0 in
value, derivative 1: the gradient stays exact under the ``stop_gradient`` shift).

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

SMOOTHING = ("uniform", "others")


def _coefficients(eps, smoothing, V):
    if eps == 0:
        return 1.0, 0.0
    if smoothing == "uniform":
        return 1 - eps + eps / V, eps / V
    return 1 - eps, eps / (V - 1)


def _has_explicit_axes(mesh):
    return any("Explicit" in str(t) for t in getattr(mesh, "axis_types", ()) or ())


def _check_options(label_smoothing, smoothing, z_loss, ignore_index, reduction, V):
    eps = float(label_smoothing)
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}")
    if smoothing not in SMOOTHING:
        raise ValueError(f"smoothing must be one of {SMOOTHING}, got {smoothing!r}")
    if smoothing == "others" and eps > 0 and V < 2:
        raise ValueError("smoothing='others' needs V >= 2 classes")
    z = float(z_loss)
    if not z >= 0 or z == float("inf"):
        raise ValueError(f"z_loss must be a finite float >= 0, got {z_loss!r}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be one of ('mean', 'sum', 'none'), got {reduction!r}")
    if ignore_index is not None and (isinstance(ignore_index, bool)
                                     or not isinstance(ignore_index, int)):
        raise TypeError(f"ignore_index must be None or an int, got {ignore_index!r}")
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
    tgt = (cols == ys[:, None]) & kept[:, None]           # this device holds the target
    D = jnp.sum(jnp.where(tgt, -d, 0), axis=-1)           # M - x_y (one device contributes)
    has = m_loc == M                                      # holds a global maximum
    is_a = (j == jnp.argmax(xs, axis=-1)[:, None]) & has[:, None]
    f = jnp.where(is_a, jnp.expm1(d), jnp.exp(d))         # the arg-max's 1 split out as expm1
    stats = [D, jnp.sum(f, axis=-1), has.astype(dt)]
    if eps > 0:
        valid = cols < V                                   # the padding is not a class
        stats.append(jnp.sum(jnp.where(valid & ~tgt, -d, 0), axis=-1))   # sum_{c != y} M - x_c

    # 3. all-reduce SUM of the stacked statistics
    S = lax.psum(jnp.stack(stats, axis=-1), axis_name)
    t = S[:, 1] + (S[:, 2] - 1)                           # ties on several devices count once
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
                                 reduction="mean"):
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
    smap = jax.shard_map(local, mesh=mesh, in_specs=(P(None, axis_name), P()), out_specs=P())
    if _has_explicit_axes(mesh):
        # an Explicit mesh (jax.make_mesh's default) wants the arguments' types to match
        # in_specs: reshard them, which needs the mesh context of jax.set_mesh
        am = jax.sharding.get_abstract_mesh()
        if getattr(am, "empty", True) or axis_name not in am.axis_names:
            raise ValueError(
                f"mesh has Explicit axes {mesh.axis_names} (jax.make_mesh's default): call "
                "this under `with jax.set_mesh(mesh):`, or build the mesh with "
                "axis_types=(jax.sharding.AxisType.Auto, ...) / jax.sharding.Mesh(devices, names)")
        rows = smap(jax.sharding.reshard(x2, P(None, axis_name)), jax.sharding.reshard(y, P()))
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
