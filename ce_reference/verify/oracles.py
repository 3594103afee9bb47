"""The independent oracles other than mpmath (which lives in :mod:`.mp`).

* :func:`jax_oracle` -- the JAX twin's value, ``jax.grad`` and (when asked)
  ``jax.jvp(jax.grad)`` and ``jax.hessian(...) @ v``, in float64 (x64 is
  switched on at first use), at the case's exact input values.
* :func:`fd_check` -- ``scipy.optimize.approx_fprime`` (the engine of
  ``check_grad``) on the per-row losses, float64 only, with kinks checked
  one-sided.
* :func:`complex_step` -- ``Im f(x + ih) / h`` through the reference's own
  complex-safe formulas (``spec.complex_value``; losses that are analytic).

JAX and SciPy's optimizer are imported lazily.
"""

from __future__ import annotations

import functools

import numpy as np

from . import tolerances as T
from .errors import operands


# --------------------------------------------------------------------------- JAX

def _jax():
    import jax

    jax.config.update("jax_enable_x64", True)
    return jax


@functools.lru_cache(maxsize=None)
def _jitted(twin, static, array_keys, positional, wrt, want_hvp, want_hessian):
    """The jitted twin: value, ``jax.grad`` with respect to the ``wrt`` arrays (the input
    and array keywords) and, for a single ``wrt``, ``jax.jvp(jax.grad)`` and the dense
    Hessian applied to ``v``."""
    jax = _jax()
    import jax.numpy as jnp

    def call(x, t, arrays):
        kw = dict(static)
        kw.update(zip(array_keys, arrays))
        args = [x if n == "input" else t if n == "targets" else kw.pop(n) for n in positional]
        return twin(*args, **kw)

    def substitute(diffs, x, arrays):
        """``x`` and ``arrays`` with the differentiated ones replaced by ``diffs``."""
        arrays = list(arrays)
        for name, value in zip(wrt, diffs):
            if name == "input":
                x = value
            elif name in array_keys:
                arrays[array_keys.index(name)] = value
        return x, tuple(arrays)

    def total(diffs, x, t, arrays):
        x, arrays = substitute(diffs, x, arrays)
        return jnp.sum(call(x, t, arrays))     # reduction "none": gradient of the sum

    def run(x, t, arrays, v):
        diffs = tuple(x if n == "input" else arrays[array_keys.index(n)]
                      for n in wrt if n == "input" or n in array_keys)
        grads = jax.grad(total)(diffs, x, t, arrays)
        out = {"value": call(x, t, arrays), "grad": grads}
        if want_hvp:
            g = jax.grad(lambda z: total((z,), z, t, arrays))
            out["hvp"] = jax.jvp(g, (x,), (v,))[1]
        if want_hessian:
            H = jax.hessian(lambda z: total((z,), z, t, arrays))(x).reshape(x.size, x.size)
            out["hessian_v"] = (H @ v.reshape(-1)).reshape(x.shape)
        return out

    return jax.jit(run)


def jax_oracle(spec, case, want_hvp=False):
    """Twin value, gradient and (optionally) H v in float64, as NumPy arrays."""
    array_options = spec.array_keywords
    static = tuple(sorted((k, v) for k, v in case.kwargs.items() if k not in array_options))
    array_keys = tuple(k for k in array_options if k in case.kwargs)
    arrays = tuple(np.asarray(case.kwargs[k], np.float64) for k in array_keys)
    t = np.asarray(case.targets)
    t = t if t.dtype.kind in "iu" else t.astype(np.float64)
    want_hessian = want_hvp and case.x.size <= T.HESSIAN_MAX_SIZE
    fn = _jitted(spec.twin, static, array_keys, tuple(spec.positional), tuple(spec.wrt),
                 bool(want_hvp), bool(want_hessian))
    x = case.x.astype(np.float64)
    v = case.v.astype(np.float64)
    inside = None
    if case.kwargs.get("eps") is not None and case.dtype != np.float64:
        # The clip is defined in the input's dtype ([eps, 1 - eps] rounded to float32), the
        # twin runs in float64: clip to the float32 bounds first (they lie strictly inside the
        # float64 ones, so the twin's own clip is then the identity) and apply the clip's
        # derivative (1 on the closed interval, 0 outside) by the chain rule.
        lo = float(case.dtype.type(case.kwargs["eps"]))
        hi = float(case.dtype.type(1) - case.dtype.type(case.kwargs["eps"]))
        inside = (x >= lo) & (x <= hi)
        x = np.clip(x, lo, hi)
        v = np.where(inside, v, 0.0)        # the Hessians of these losses are diagonal
    result = fn(x, t, arrays, v)
    out = {k: np.asarray(val, np.float64) for k, val in result.items() if k != "grad"}
    out["grad"] = _gradient_parts(spec, case, result["grad"])
    if inside is not None:
        for k in ("grad", "hvp", "hessian_v"):
            if k in out:
                out[k] = np.where(inside, out[k], 0.0)
    return out


def _gradient_parts(spec, case, grads):
    """jax.grad's tuple in the NumPy functions' form: one array for a single ``wrt``, else a
    tuple with None for an absent optional array."""
    grads = [np.asarray(g, np.float64) for g in grads]
    if len(spec.wrt) == 1:
        return grads[0]
    it = iter(grads)
    return tuple(None if a is None else next(it) for a in spec.wrt_arrays(case))


# --------------------------------------------------------------------------- finite differences

def _none_kwargs(case):
    kw = dict(case.kwargs)
    kw["reduction"] = "none"
    return kw


def fd_steps(spec, case, x, frow, name="input"):
    """Central-difference step per element of ``x`` (float64), and a mask of usable ones.

    ``frow`` is, per element, the size of the row losses it changes (its own
    row's loss for the input; the sum of every row's for a weight that all rows
    share).  The step balances truncation (``h^2 f''' / 6``) against rounding
    (``eps |f_row| / h``): ``h = (eps max(1, |f_row|))^(1/3)`` (no factor
    ``|x|``: the curvature of these losses does not shrink as the logits
    grow).  Probabilities also keep ``h <= 1e-4 min(p, 1-p)`` (the relative
    truncation error of a central difference of ``log p`` is ``(h/p)^2 / 3``)
    and a tenth of the distance to a clip boundary (the step never crosses a
    kink).  Elements whose step would be below 4 ULP of ``x`` (probabilities
    within ~1e-12 of 0 or 1) cannot be resolved by a float64 difference
    quotient and are skipped (the exact oracles cover them).
    """
    h = np.cbrt(np.finfo(np.float64).eps * np.maximum(1.0, np.abs(frow)))
    if name == "input" and spec.input == "probs":
        pc = x
        if case.clip_bounds is not None:
            lo, hi = case.clip_bounds
            pc = np.clip(x, lo, hi)
            dist = np.minimum(np.abs(x - lo), np.abs(x - hi))
            h = np.minimum(h, 0.1 * np.where(dist > 0, dist, np.inf))
        h = np.minimum(h, 1e-4 * np.minimum(pc, 1 - pc))
        h = np.minimum(h, 0.5 * np.minimum(x, 1 - x))     # stay inside [0, 1]
    usable = h >= 4 * np.spacing(np.abs(x))
    return np.where(usable, h, 0.0), usable


def _row_of_element(spec, case, rows_value):
    """Per-row losses (reduction "none") broadcast to the elements of ``x``."""
    r = np.asarray(rows_value, np.float64)
    if spec.structure == "elementwise":
        return np.broadcast_to(r, case.x.shape)
    ax = case.kwargs.get("axis", -1) % case.x.ndim
    return np.broadcast_to(np.expand_dims(r, ax), case.x.shape)


def fd_check(spec, case, value_fn, grad_fn):
    """Normwise finite-difference error of ``grad_fn`` against ``value_fn`` (float64 only).

    The per-row losses (``reduction="none"``) are differenced, so that the
    rounding error of each difference quotient is relative to its own row's
    loss, not to the whole batch's.  ``scipy.optimize.approx_fprime`` (the
    engine of ``check_grad``) is called with the steps ``+h`` and ``-h``; the
    mean of the two one-sided quotients is the central difference.  Returns
    ``(error, detail)`` where ``error = ||g - fd|| / ||operand||`` over the
    resolvable, kink-free elements (``check_grad``'s number divided by the
    norm of the gradient's operands, which is ``||g||`` unless ``g`` is a
    cancellation such as ``p - 1``), maximised with the one-sided kink check: at a point on a clip
    boundary the reference's convention must lie between the left and right
    difference quotients.  A loss differentiated in several arrays (``spec.wrt``)
    is checked in each, the others held fixed; the error is the worst.
    """
    base = case.replace(kwargs=_none_kwargs(case))
    grads = spec.grad_parts(spec.call(grad_fn, base))
    operand_parts = spec.grad_parts(operands(spec, base).grad)
    row_losses = np.asarray(spec.call(value_fn, base), np.float64)
    err, detail = 0.0, {}
    for name, array, g, op in zip(spec.wrt, spec.wrt_arrays(base), grads, operand_parts):
        if array is None:
            continue
        part_err, part_detail = _fd_part(spec, base, name, array, g, op, row_losses, value_fn)
        err = max(err, part_err)
        prefix = "" if len(spec.wrt) == 1 else f"{name} "
        detail.update({prefix + k: v for k, v in part_detail.items()})
    return err, detail


def _fd_part(spec, case, name, array, g, op, row_losses, value_fn):
    """The finite-difference check in one differentiated array ``name`` (see fd_check)."""
    shape = np.shape(array)
    x = np.asarray(array, np.float64).reshape(-1)

    def rows(z):
        z = z.reshape(shape)
        at = case.replace(x=z) if name == "input" else \
            case.replace(kwargs={**case.kwargs, name: z})
        return np.atleast_1d(np.asarray(spec.call(value_fn, at), np.float64)).reshape(-1)

    g = np.asarray(g, np.float64).reshape(-1)
    # Normalise by the operands of the gradient (>= |g| elementwise, see errors.py), not by
    # |g|: where p - 1 cancels to ~1e-32 the reference's exact answer is 0 +- eps operand.
    op = np.maximum(np.asarray(op, np.float64).reshape(-1), np.abs(g))
    if name == "input":
        frow = _row_of_element(spec, case, row_losses).reshape(-1)
    else:                    # a weight that every row shares changes every row's loss
        frow = np.full(x.size, float(np.sum(np.abs(row_losses))))
    h, usable = fd_steps(spec, case, x, frow, name)
    # An element whose difference quotient carries more rounding noise
    # (~4 eps |f_row| / h) than 1% of the tolerance cannot be checked by finite
    # differences (a tiny gradient next to a large row loss); skip it.
    with np.errstate(divide="ignore", invalid="ignore"):
        noise = np.where(usable, 4 * np.finfo(np.float64).eps * np.abs(frow) / h, np.inf)
    kink = np.zeros(x.size, bool) if case.kink is None or name != "input" else \
        case.kink.reshape(-1)
    # Two passes: elements reliable on their own, then any element whose noise is small
    # next to the norm of those (so a big row loss cannot hide behind the others' norm).
    budget = 0.01 * T.TOL_FD
    alone = usable & ~kink & (noise <= budget * op)
    usable &= noise <= budget * np.maximum(op, _norm(np.where(alone, op, 0.0)))
    use = usable & ~kink
    if x.size <= T.FD_ALL_MAX_SIZE:
        err, detail = _fd_all(rows, x, g, h, use, op), {"mode": "all"}
    else:
        rng = np.random.default_rng([case.seed, case.index, 7])
        err = _fd_random(rows, x, g, h, use, op, rng, per_row=name == "input")
        detail = {"mode": "random"}
    if kink.any():
        err = max(err, _kink_check(rows, x, g, np.flatnonzero(kink), case.dtype))
        detail["kinks"] = int(kink.sum())
    detail["skipped"] = int((~usable).sum())
    return err, detail


def _fd_all(rows, x, g, h, use, op):
    """check_grad(direction="all") with a per-element step (approx_fprime accepts an array)."""
    from scipy.optimize import approx_fprime

    fd = np.zeros(x.size)
    if use.any():
        def rows_sub(z):
            full = x.copy()
            full[use] = z
            return rows(full)

        n = int(use.sum())
        fwd = np.asarray(approx_fprime(x[use], rows_sub, h[use])).reshape(-1, n)
        bwd = np.asarray(approx_fprime(x[use], rows_sub, -h[use])).reshape(-1, n)
        fd[use] = (fwd + bwd).sum(axis=0) / 2   # the derivative of the sum of the rows
    diff = np.where(use, g - fd, 0.0)
    return _ratio(_norm(diff), _norm(np.where(use, op, 0.0)))


def _fd_random(rows, x, g, h, use, op, rng, per_row):
    """check_grad(direction="random"), seeded, with each direction scaled by the steps.

    ``per_row``: the input of a loss whose rows are contiguous in ``x``: one
    directional derivative per row, compared normwise over the rows; otherwise
    (a weight every row shares) the directional derivative of their sum.
    """
    from scipy.optimize import approx_fprime

    err = 0.0
    for _ in range(T.FD_RANDOM_DIRECTIONS):
        d = np.where(use, rng.standard_normal(x.size) * h, 0.0)

        def along(s, d=d):
            return rows(x + s[0] * d)

        fd = (np.asarray(approx_fprime(np.zeros(1), along, 1.0)).reshape(-1)
              + np.asarray(approx_fprime(np.zeros(1), along, -1.0)).reshape(-1)) / 2
        if per_row:
            exact = (g * d).reshape(fd.size, -1).sum(axis=1)
            size = np.abs(op * d).reshape(fd.size, -1).sum(axis=1)
        else:
            exact, fd = np.sum(g * d), np.sum(fd)
            size = np.sum(np.abs(op * d))
        err = max(err, _ratio(_norm(exact - fd), _norm(size)))
    return err


def _norm(a):
    """2-norm without overflow (the gradients at p = 1e-300 are ~1e300)."""
    a = np.abs(np.asarray(a, np.float64)).reshape(-1)
    big = float(np.max(a)) if a.size else 0.0
    if big == 0 or not np.isfinite(big):
        return big
    return big * float(np.linalg.norm(a / big))


def _ratio(num, den):
    if num == 0:
        return 0.0
    return float(num / den) if den > 0 else float("inf")


def _kink_check(rows, x, g, where, dtype):
    """Distance of ``g_i`` outside [left, right] one-sided differences, relative."""
    f0 = rows(x)
    worst = 0.0
    for i in where:
        # one-sided forward differences: truncation error ~ h / (2p) relative, 5e-7 here
        h = 1e-6 * min(abs(x[i]), abs(1 - x[i])) or 1e-6
        out = []
        for step in (h, -h):
            z = x.copy()
            z[i] = x[i] + step
            real = z[i] - x[i]                       # the step actually taken
            out.append(float(np.sum(rows(z) - f0) / real))
        lo, hi = min(out), max(out)
        # rounding error of a difference quotient of row losses of size |f0|
        noise = 4 * np.finfo(np.float64).eps * float(np.max(np.abs(f0))) / h
        scale = max(abs(lo), abs(hi), abs(g[i])) + noise
        slack = T.TOL_FD * scale + noise
        gap = max(lo - slack - g[i], g[i] - hi - slack, 0.0)
        worst = max(worst, _ratio(gap, scale))
    return worst


# --------------------------------------------------------------------------- complex step

CS_RESOLVABLE = 2.0 ** 52   # Im parts at least 2^52 smallest normals: full precision


def complex_step(spec, case):
    """Gradient of the reduced loss by complex step through the reference's own formulas.

    ``spec.complex_value(z, targets, **options)`` gives each example's
    contribution to the reduced loss at a complex input.  Elementwise losses
    are perturbed everywhere at once (each element its own example); losses
    over a class axis one class at a time (rows are independent).  Returns
    None when the loss has no complex-safe formulas (the probability losses
    clip and divide: not analytic).  Elements too small for the imaginary
    part to be resolved are NaN.
    """
    if spec.complex_value is None:
        return None
    h = T.COMPLEX_STEP_H
    kw = {k: (np.asarray(v, np.float64) if isinstance(v, np.ndarray) else v)
          for k, v in case.kwargs.items()}
    x = case.x.astype(np.float64)
    if spec.structure == "elementwise":
        g = np.imag(spec.complex_value(x + 1j * h, case.targets, **kw)) / h
    else:
        ax = kw.get("axis", -1) % x.ndim
        g = np.empty(x.shape)
        for k in range(x.shape[ax]):
            z = x.astype(np.complex128)
            at = (slice(None),) * ax + (k,)
            z[at] += 1j * h
            g[at] = np.imag(spec.complex_value(z, case.targets, **kw)) / h
    operand = operands(spec, case).grad
    # Im f(x + ih) underflows for derivatives below ~tiny / h: such elements are not
    # resolvable by the complex step and are returned as NaN (skipped by the caller).
    return np.where(operand * h < CS_RESOLVABLE * np.finfo(np.float64).tiny, np.nan, g)
