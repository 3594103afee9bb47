r"""Vocab-parallel softmax cross-entropy: the sharded algorithm, exact, in NumPy.

When the vocabulary outgrows one device, the logits are split along the class
axis and every device holds a slice ``(..., V_k)`` of each row.  The loss is
then computed from *local* statistics that a collective combines (Megatron-LM's
``VocabParallelCrossEntropy``; t5x / MaxText under JAX sharding).  This module
is that algorithm written out in NumPy, so that each of its terms can be
checked against the single-device reference (:func:`ce_reference.softmax_cross_entropy`)
and against mpmath, and so that a user's sharded implementation can be checked
for what users need most: a result that does not depend on how many devices
share the vocabulary (:func:`check_invariance`).

The algorithm (per row; ``k`` runs over the shards, ``y`` is the target, ``M``
the global row maximum, ``a`` one arg-max of the whole row)
------------------------------------------------------------------------------

1. **MAX** of the shard maxima: :math:`M = \max_k m_k`, :math:`m_k = \max_{c \in k} x_c`.
2. Each shard computes, with :math:`d_c = x_c - M \le 0`:

   * :math:`D_k = M - x_y` if it owns the target, else 0 (the target logit,
     shifted; exactly one shard contributes);
   * :math:`t_k = \sum_{c \in k,\, x_c \ne M} e^{d_c}` (the entries equal to the
     maximum contribute :math:`\operatorname{expm1}(0) = 0` instead of 1) and their
     number :math:`h_k`;
   * for label smoothing, :math:`R_k = \sum_{c \in k,\, c \ne y} (M - x_c)`
     (the row-logit sum, shifted by the global maximum: every term is
     non-negative, so it has no cancellation).

3. **SUM** of :math:`(D_k, t_k, h_k, R_k)` over the shards, in shard order.
   Then :math:`t = \sum_k t_k + (H - 1)` with :math:`H = \sum_k h_k \ge 1`
   (every maximum but one contributes its :math:`e^0 = 1`: ties, on one shard or
   several), which is :math:`\sum_{c \ne a} e^{x_c - M}` for one arg-max ``a``, and

   .. math::

       \operatorname{lse}(x) = M + \operatorname{log1p}(t),\qquad
       \operatorname{lse}(x) - x_y = D + \operatorname{log1p}(t),

   the split log-sum-exp of Blanchard, Higham & Higham (2021) that
   :func:`ce_reference._special.log_softmax_parts` uses: both terms are
   non-negative, so a confident row keeps its last digits.

Loss of a kept row, with label smoothing :math:`\varepsilon` and the z-loss
coefficient :math:`z`:

.. math::

    \ell = \alpha\,D + \beta\,R + \operatorname{log1p}(t) + z\,\operatorname{lse}^2,

where, from :math:`\ell = \sum_c q_c (\operatorname{lse} - x_c) + z \operatorname{lse}^2`:

* ``smoothing="uniform"`` (PyTorch, optax: :math:`q = (1-\varepsilon)\,\mathrm{onehot} + \varepsilon/V`):
  :math:`\alpha = 1 - \varepsilon + \varepsilon/V`, :math:`\beta = \varepsilon/V`;
* ``smoothing="others"`` (Megatron-LM, t5x: :math:`1-\varepsilon` on the target,
  :math:`\varepsilon/(V-1)` on each other class; ``conventions.smooth_labels(...,
  scheme="off_class")``): :math:`\alpha = 1 - \varepsilon`, :math:`\beta = \varepsilon/(V-1)`.

All three terms are non-negative (no cancellation, whatever :math:`\varepsilon`).
The gradient is local to each shard once the statistics are known:

.. math::

    \frac{\partial \ell}{\partial x_c} = p_c\,(1 + 2 z \operatorname{lse}) - q_c,
    \qquad p_c = \frac{e^{x_c - M}}{1 + t},

times ``1/D`` for ``reduction="mean"`` (``D`` the number of kept rows).

Masked classes and empty slices: a ``-inf`` logit gives :math:`e^{d_c} = 0`
(and, under label smoothing, an infinite loss, exactly as
``softmax_cross_entropy`` gives: smoothing puts mass on every class); a shard
whose whole slice of a row is ``-inf`` has :math:`m_k = -\infty < M`,
contributes :math:`t_k = 0, h_k = 0`, and never produces NaN.  A row that is
``-inf`` on *every* shard is an error, as in the single-device loss.

Dtypes follow the package policy: float64 in, float64 out; float32 computes
its elementwise work (``exp``, the gradient) in float32 and accumulates the
statistics in float64 (a collective on a float64 payload); float16 computes in
float32 and returns float16.  All shards must have the same dtype.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass, field

import numpy as np

from . import _validation as V
from ._reduction import grad_scale, reduce_loss, to_result

__all__ = [
    "SMOOTHING",
    "vocab_parallel_cross_entropy",
    "reference_cross_entropy",
    "split_logits",
    "check_invariance",
    "InvarianceReport",
]

#: The two label-smoothing conventions: ``uniform`` = eps/V on every class
#: (PyTorch), ``others`` = eps/(V-1) on every non-target class (Megatron-LM, t5x).
SMOOTHING = ("uniform", "others")

_ACC = np.float64           # dtype of the statistics (the collectives' payload)


# --------------------------------------------------------------------------- arguments

@dataclass
class _Problem:
    shards: list            # compute-dtype arrays (..., V_k)
    offsets: list           # global index of each shard's first class
    V: int
    y: np.ndarray           # int64 targets (ignored rows hold 0)
    keep: np.ndarray        # bool, batch shape
    eps: float
    smoothing: str
    z: float
    reduction: str
    cdt: np.dtype
    rdt: np.dtype
    batch: tuple


def _prepare(logit_shards, targets, label_smoothing, smoothing, z_loss, ignore_index,
             reduction) -> _Problem:
    if isinstance(logit_shards, np.ndarray) or not hasattr(logit_shards, "__iter__"):
        raise TypeError("logit_shards must be a sequence of arrays (one per shard), got "
                        f"{type(logit_shards).__name__}; wrap a single array in a list")
    raw = [V.as_numeric_array(f"logit_shards[{k}]", s) for k, s in enumerate(logit_shards)]
    if not raw:
        raise ValueError("logit_shards is empty; expected at least one shard")
    dtypes = {a.dtype for a in raw}
    if len(dtypes) > 1:
        raise TypeError(f"logit_shards must all have one dtype, got {sorted(map(str, dtypes))}")
    shards, cdt, rdt = [], None, None
    for k, a in enumerate(raw):
        x, cdt, rdt = V.as_input(f"logit_shards[{k}]", a)
        if x.ndim == 0:
            raise ValueError(f"logit_shards[{k}] is 0-dimensional; expected (..., V_{k})")
        shards.append(x)
    batch = shards[0].shape[:-1]
    for k, x in enumerate(shards):
        if x.shape[:-1] != batch:
            raise ValueError(f"logit_shards[{k}] has shape {x.shape}; every shard must have the "
                             f"leading shape {batch} of logit_shards[0] (only the last, class, "
                             "axis may differ)")
        V.check_no_nan(f"logit_shards[{k}]", x)
        if np.isposinf(x).any():
            raise ValueError(f"logit_shards[{k}] contains +inf; expected finite values or -inf "
                             "(a masked class)")
    widths = [x.shape[-1] for x in shards]
    Vtot = int(sum(widths))
    if Vtot == 0:
        raise ValueError("logit_shards has no classes (every shard has width 0)")
    offsets = [0, *itertools.accumulate(widths)][:-1]
    if smoothing not in SMOOTHING:
        raise ValueError(f"smoothing must be one of {SMOOTHING}, got {smoothing!r}")
    eps = V.check_label_smoothing(label_smoothing)
    if smoothing == "others" and Vtot < 2 and eps > 0:
        raise ValueError("smoothing='others' puts eps/(V-1) on the other classes and needs "
                         f"V >= 2 classes, got V={Vtot}")
    z = _check_z_loss(z_loss)
    reduction = V.check_reduction(reduction)
    index, keep = _index_targets(targets, batch + (Vtot,), ignore_index)
    return _Problem(shards, offsets, Vtot, index, keep, eps, smoothing, z, reduction,
                    cdt, rdt, batch)


def _index_targets(targets, x_shape, ignore_index):
    """Global class indices of the batch shape (the input's shape without the last axis)."""
    ignore_index = V.check_ignore_index(ignore_index)
    t = V.as_numeric_array("targets", targets)
    if t.dtype.kind not in "iu":
        raise TypeError("targets must be integer class indices (global, in [0, V)); "
                        "probability targets are not supported by the vocab-parallel loss")
    return V.index_targets(t, x_shape, len(x_shape) - 1, ignore_index)


def _check_z_loss(z_loss) -> float:
    if isinstance(z_loss, bool):
        raise TypeError(f"z_loss must be a float, got {z_loss!r}")
    try:
        z = float(z_loss)
    except (TypeError, ValueError):
        raise TypeError(f"z_loss must be a float, got {z_loss!r}") from None
    if not (z >= 0 and math.isfinite(z)):
        raise ValueError(f"z_loss must be a finite float >= 0, got {z_loss!r}")
    return z


def _coefficients(eps, smoothing, V):
    """``(alpha, beta, q_target, q_other)`` of the row loss and the target distribution."""
    if eps == 0:
        return 1.0, 0.0, 1.0, 0.0
    if smoothing == "uniform":
        return 1 - eps + eps / V, eps / V, 1 - eps + eps / V, eps / V
    return 1 - eps, eps / (V - 1), 1 - eps, eps / (V - 1)


# --------------------------------------------------------------------------- the collective

def _allreduce(parts, op):
    """What an all-reduce returns: ``op`` folded over the shards' arrays *in shard order*.

    A real collective (ring, tree) may associate the sum differently; the fixed
    left-to-right order makes this reference deterministic for a given split.
    """
    fold = {"max": np.maximum, "sum": np.add}[op]
    return functools.reduce(fold, parts)


# --------------------------------------------------------------------------- per shard

def _local_max(x):
    """Step 1 on one shard: the row maxima (``-inf`` for a width-0 shard)."""
    if x.shape[-1] == 0:
        return np.full(x.shape[:-1], -np.inf, x.dtype)
    return np.max(x, axis=-1)


def _local_stats(x, off, P: _Problem, M, want_R):
    """Step 2 on one shard: ``(D_k, t_k, h_k, R_k)`` in the accumulation dtype, and ``e``.

    ``x`` is the shard (compute dtype), ``off`` its first global class index,
    ``M`` the global maxima (compute dtype).
    """
    w = x.shape[-1]
    batch = x.shape[:-1]
    own = P.keep & (P.y >= off) & (P.y < off + w)            # this shard holds the target
    if w == 0:
        zero = np.zeros(batch, _ACC)
        return zero, zero, zero, zero, np.empty(x.shape, x.dtype), own, np.zeros(batch, np.int64)
    with np.errstate(invalid="ignore"):                    # -inf - M is fine (-inf)
        d = x - M[..., None]
    ly = np.where(own, P.y - off, 0)                        # local target index
    D = np.where(own, -np.take_along_axis(d, ly[..., None], axis=-1)[..., 0], 0).astype(_ACC)
    e = np.exp(d)
    at_max = d == 0                                        # entries equal to the global maximum
    # their terms are expm1(0) = 0 (the "1"s of 1 + t, counted separately in h)
    t = np.sum(np.where(at_max, np.expm1(d), e), axis=-1, dtype=_ACC)
    h = np.count_nonzero(at_max, axis=-1).astype(_ACC)
    if want_R:
        nd = -d.astype(_ACC)                               # M - x_c >= 0 (inf for -inf logits)
        put = np.where(own, 0.0, np.take_along_axis(nd, ly[..., None], axis=-1)[..., 0])
        np.put_along_axis(nd, ly[..., None], put[..., None], axis=-1)   # drop the target
        R = np.sum(nd, axis=-1)
    else:
        R = np.zeros(batch, _ACC)
    return D, t, h, R, e, own, ly


# --------------------------------------------------------------------------- the loss

def vocab_parallel_cross_entropy(logit_shards, targets, *, label_smoothing=0.0,
                                 smoothing="uniform", z_loss=0.0, ignore_index=None,
                                 reduction="mean"):
    r"""Softmax cross-entropy of logits split along the class axis; loss and per-shard gradients.

    Each shard computes local statistics, which are combined by exactly the
    reductions a collective performs (MAX of the row maxima; SUM of the shifted
    target logit, of the rescaled exponentials and, for label smoothing, of the
    shifted row logits), in shard order; see the module docstring for the
    formulas.  For every split the result equals the single-device loss on the
    concatenated logits to a few ULP (``softmax_cross_entropy`` for
    ``smoothing="uniform"``; :func:`reference_cross_entropy` for every option).

    Parameters
    ----------
    logit_shards : sequence of array_like, shapes ``(..., V_k)``
        Consecutive slices of the logits along the last (class) axis:
        concatenated they are the full ``(..., V)`` logits.  Uneven widths are
        allowed, and so are shards of width 1 or 0.  ``-inf`` marks a masked
        class; NaN, ``+inf`` and a row that is ``-inf`` on every shard are errors.
    targets : array_like of int, shape ``(...)``
        *Global* class indices in ``[0, V)`` (or ``ignore_index``).
    label_smoothing : float in [0, 1], default 0
    smoothing : {"uniform", "others"}
        ``uniform``: :math:`\varepsilon/V` on every class (PyTorch).
        ``others``: :math:`1-\varepsilon` on the target and
        :math:`\varepsilon/(V-1)` on each other class (Megatron-LM, t5x).
    z_loss : float >= 0, default 0
        Adds :math:`z \operatorname{lse}(x)^2` to each kept row (PaLM, t5x);
        under ``mean`` it is divided by the number of kept rows like the rest.
    ignore_index : int, optional
        Rows whose target equals it contribute 0 (loss and gradient) and are
        not counted by ``mean``.
    reduction : {"mean", "sum", "none"}
        ``mean`` divides by the number of kept rows (NaN if there are none; the
        gradient is then zero).

    Returns
    -------
    (loss, grads)
        ``loss``: NumPy scalar, or array of the batch shape for ``"none"``;
        ``grads``: list of per-shard gradients of the reduced loss (of the sum
        for ``"none"``), each of its shard's shape and the result dtype.

    Examples
    --------
    >>> import numpy as np, ce_reference as ce
    >>> from ce_reference.parallel import vocab_parallel_cross_entropy
    >>> z = np.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]])
    >>> loss, (g0, g1) = vocab_parallel_cross_entropy([z[:, :1], z[:, 1:]], np.array([0, 1]))
    >>> float(loss), float(ce.softmax_cross_entropy(z, np.array([0, 1])))
    (0.3185397696491856, 0.3185397696491856)
    >>> [g.shape for g in (g0, g1)]
    [(2, 1), (2, 2)]
    """
    P = _prepare(logit_shards, targets, label_smoothing, smoothing, z_loss, ignore_index,
                 reduction)
    alpha, beta, q_y, q_o = _coefficients(P.eps, P.smoothing, P.V)
    want_R = P.eps > 0

    # 1. all-reduce MAX of the local maxima
    m_local = [_local_max(x) for x in P.shards]
    M = _allreduce(m_local, "max")
    if M.size and np.isneginf(M).any():
        raise ValueError("logit_shards has a row whose entries are all -inf (on every shard); "
                         "no class has probability")

    # 2. local statistics, 3. all-reduce SUM (one payload per shard, in shard order)
    local = [_local_stats(x, off, P, M, want_R) for x, off in zip(P.shards, P.offsets)]
    D = _allreduce([s[0] for s in local], "sum")
    t = _allreduce([s[1] for s in local], "sum")
    H = _allreduce([s[2] for s in local], "sum")
    R = _allreduce([s[3] for s in local], "sum")
    t = t + (H - 1)                                  # sum over c != a of exp(x_c - M)

    L = np.log1p(t)
    keep = P.keep
    with np.errstate(invalid="ignore"):              # beta * inf for masked classes is inf
        rows = alpha * D + L
        if want_R:
            rows = rows + beta * R
    lse = M.astype(_ACC) + L
    if P.z:
        rows = rows + P.z * lse * lse
    rows = np.where(keep, rows, 0.0)
    denom = float(np.count_nonzero(keep))
    loss = reduce_loss(rows, P.reduction, denom, P.rdt)

    # 4. the gradient, local to each shard: p_c (1 + 2 z lse) - q_c, times the scale
    scale = P.cdt.type(grad_scale(P.reduction, denom))
    one_plus_t = (1 + t).astype(P.cdt)                   # p = e / (1 + t)
    coef = (1 + 2 * P.z * lse).astype(P.cdt) if P.z else None
    grads = []
    for x, (_, _, _, _, e, own, ly) in zip(P.shards, local):
        if x.shape[-1] == 0:
            grads.append(to_result(np.zeros(x.shape, P.cdt), P.rdt))
            continue
        p = e / one_plus_t[..., None]
        pc = p if coef is None else p * coef[..., None]
        g = pc - P.cdt.type(q_o) if q_o else pc.copy()
        # the target's entry is p_y (1 + 2 z lse) - q_y, formed from p_y itself
        li = ly[..., None]
        gy = np.take_along_axis(pc, li, axis=-1) - P.cdt.type(q_y)
        np.put_along_axis(g, li, np.where(own[..., None], gy, np.take_along_axis(g, li, -1)),
                          axis=-1)
        g = np.where(keep[..., None], g, P.cdt.type(0))
        grads.append(to_result(g * scale, P.rdt))
    return loss, grads


# --------------------------------------------------------------------------- single device

def reference_cross_entropy(logits, targets, *, label_smoothing=0.0, smoothing="uniform",
                            z_loss=0.0, ignore_index=None, reduction="mean"):
    r"""The single-device loss and gradient that :func:`vocab_parallel_cross_entropy` must equal.

    Composed from the library's single-device pieces, never from the sharded
    algorithm: ``smoothing="uniform"`` is :func:`ce_reference.softmax_cross_entropy`
    (and its ``_grad``) with ``label_smoothing`` and ``z_loss``; ``"others"`` feeds
    the targets smoothed by :func:`ce_reference.conventions.smooth_labels`
    (``scheme="off_class"``) to ``softmax_cross_entropy`` as probability rows (the
    ignored rows zeroed) and adds :math:`z \operatorname{lse}^2` per kept row, with
    gradient :math:`2 z \operatorname{lse}\, p` (``lse`` and ``p`` from
    :func:`ce_reference._special.log_softmax_parts`).  ``mean`` divides by the number
    of kept rows.  Returns ``(loss, grad)``.
    """
    from . import softmax_cross_entropy, softmax_cross_entropy_grad
    from ._special import log_softmax_parts
    from .conventions import smooth_labels

    x, cdt, rdt = V.as_input("logits", logits)
    if x.ndim == 0:
        raise ValueError("logits is 0-dimensional; expected (..., V)")
    Vn = x.shape[-1]
    eps = V.check_label_smoothing(label_smoothing)
    z = _check_z_loss(z_loss)
    reduction = V.check_reduction(reduction)
    if smoothing not in SMOOTHING:
        raise ValueError(f"smoothing must be one of {SMOOTHING}, got {smoothing!r}")
    index, keep = _index_targets(targets, x.shape, ignore_index)
    if smoothing == "uniform" or eps == 0:
        kw = dict(ignore_index=ignore_index, label_smoothing=eps, z_loss=z, reduction=reduction)
        return softmax_cross_entropy(x, targets, **kw), softmax_cross_entropy_grad(x, targets, **kw)
    # "others": per-row losses and the gradient of their sum, then our own reduction
    if Vn < 2:
        raise ValueError("smoothing='others' needs V >= 2 classes")
    denom = float(np.count_nonzero(keep))
    q = smooth_labels(index, eps, num_classes=Vn, scheme="off_class").astype(cdt)
    q = np.where(keep[..., None], q, cdt.type(0))
    rows = softmax_cross_entropy(x, q, reduction="none").astype(_ACC)
    grad = softmax_cross_entropy_grad(x, q, reduction="sum").astype(cdt)
    if z:
        _, p, lse = log_softmax_parts(x, with_lse=True)
        lse = lse[..., 0].astype(_ACC)
        rows = rows + z * lse * lse
        grad = grad + (2 * z * lse).astype(cdt)[..., None] * p
    rows = np.where(keep, rows, 0.0)
    grad = np.where(keep[..., None], grad, cdt.type(0))
    loss = reduce_loss(rows, reduction, denom, rdt)
    return loss, to_result(grad * cdt.type(grad_scale(reduction, denom)), rdt)


def split_logits(logits, n):
    """``n`` consecutive slices of ``logits`` along the last axis, widths differing by at most 1.

    (``np.array_split``: the first ``V mod n`` slices are one class wider; with
    ``n > V`` the last slices have width 0.)
    """
    x = np.asarray(logits)
    return np.array_split(x, int(n), axis=-1)


# --------------------------------------------------------------------------- invariance

@dataclass
class _Row:
    options: dict
    ok: bool
    loss_err: float = 0.0               # worst |loss - reference| in eps * operand units
    grad_err: float = 0.0
    loss_abs: float = 0.0               # worst absolute differences
    grad_abs: float = 0.0
    split_loss_err: float = 0.0         # worst difference between two splits, eps units
    split_grad_err: float = 0.0
    split_loss_abs: float = 0.0
    split_grad_abs: float = 0.0
    worst_split: int | None = None
    splits_run: tuple = ()
    splits_skipped: tuple = ()
    error: str | None = None            # the callable raised / returned the wrong structure
    witness: dict | None = None         # the smallest input showing the worst deviation
    worst_row: tuple | None = None      # (when ok) the row with the largest deviation


@dataclass
class InvarianceReport:
    """Result of :func:`check_invariance`: one row per option combination.

    ``ok`` is True when every split of every option combination agrees with
    the reference and with every other split within ``tol_eps`` (errors are
    ``|got - expected| / (eps(dtype) * S)``, ``S`` the operand scale: the
    larger of the largest reference entry and ``max(1, max|x|)`` for the loss
    -- times the number of kept rows for ``sum`` -- or the largest gradient
    entry at logits 0 for the gradient).
    """

    rows: list = field(default_factory=list)
    tol_eps: float = 256.0
    dtype: str = ""
    shape: tuple = ()

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    def __str__(self) -> str:
        lines = [f"check_invariance: logits {self.shape} {self.dtype}; errors in eps x operand "
                 f"(tolerance {self.tol_eps:g}); {'OK' if self.ok else 'FAIL'}"]
        for r in self.rows:
            head = f"  [{'ok' if r.ok else 'FAIL'}] {_label(r.options)}"
            sp = ",".join(map(str, r.splits_run))
            if r.error:
                lines += [head, f"      splits {sp}: ERROR {r.error}"]
                continue
            lines += [head, f"      splits {sp}: vs reference loss {r.loss_err:.3g}, grad "
                            f"{r.grad_err:.3g} (worst split {r.worst_split}); between splits "
                            f"loss {r.split_loss_err:.3g}, grad {r.split_grad_err:.3g}"]
            if r.splits_skipped:
                lines.append(f"      skipped (more shards than classes): "
                             f"{','.join(map(str, r.splits_skipped))}")
            if r.witness:
                lines.append(f"      smallest input: {r.witness['describe']}")
        return "\n".join(lines)


def _label(opts):
    return ", ".join(f"{k}={v!r}" for k, v in opts.items()) or "defaults"


def _scales(x, keep_count, reduction, g_ref):
    xf = np.abs(x[np.isfinite(x)]).astype(np.float64)
    xs = max(1.0, float(xf.max())) if xf.size else 1.0
    loss_s = xs * (max(1, keep_count) if reduction == "sum" else 1)
    gs = float(np.max(np.abs(g_ref[np.isfinite(g_ref)]))) if np.isfinite(g_ref).any() else 0.0
    return loss_s, gs


def _diff(a, b, S, eps):
    """(eps-units error, absolute error) of ``a`` against ``b`` (inf for a non-finite mismatch)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape != b.shape:
        return math.inf, math.inf
    same_nonfinite = (np.isnan(a) & np.isnan(b)) | (np.isinf(a) & (a == b))
    fin = np.isfinite(a) & np.isfinite(b)
    if np.any(~fin & ~same_nonfinite):
        return math.inf, math.inf
    if not fin.any():
        return 0.0, 0.0
    d = float(np.max(np.abs(a[fin] - b[fin])))
    S = max(S, float(np.max(np.abs(b[fin]))), np.finfo(np.float64).tiny)
    return d / (eps * S), d


def _evaluate(fn, x, y, opts, splits, tol, want_rows=False):
    """Run ``fn`` on every split; return a filled :class:`_Row`."""
    row = _Row(dict(opts), True)
    ref_loss, ref_grad = reference_cross_entropy(x, y, **opts)
    dt = np.dtype(ref_grad.dtype)
    eps = float(np.finfo(dt if dt.kind == "f" else np.float64).eps)
    ig = opts.get("ignore_index")
    keep_count = int(np.count_nonzero(np.asarray(y) != ig)) if ig is not None else int(np.size(y))
    red = opts.get("reduction", "mean")
    g0 = reference_cross_entropy(np.zeros_like(x), y, **opts)[1]
    Sl, Sg = _scales(x, keep_count, red, np.asarray(g0))
    first = None
    run, skipped = [], []
    for n in splits:
        if n > x.shape[-1]:
            skipped.append(n)
            continue
        shards = split_logits(x, n)
        try:
            out = fn([s.copy() for s in shards], y.copy(), **opts)
            loss, grads = out
            grad = np.concatenate([np.asarray(g) for g in grads], axis=-1)
        except Exception as exc:    # noqa: BLE001 -- reported, not raised
            row.ok, row.error = False, f"split {n}: {type(exc).__name__}: {exc}".splitlines()[0]
            run.append(n)
            break
        run.append(n)
        le, la = _diff(loss, ref_loss, Sl, eps)
        ge, ga = _diff(grad, ref_grad, Sg, eps)
        if max(le, ge) > max(row.loss_err, row.grad_err) or row.worst_split is None:
            row.worst_split = n
        row.loss_err, row.loss_abs = max(row.loss_err, le), max(row.loss_abs, la)
        row.grad_err, row.grad_abs = max(row.grad_err, ge), max(row.grad_abs, ga)
        if first is None:
            first = (loss, grad)
        else:
            sle, sla = _diff(loss, first[0], Sl, eps)
            sge, sga = _diff(grad, first[1], Sg, eps)
            row.split_loss_err, row.split_loss_abs = max(row.split_loss_err, sle), max(
                row.split_loss_abs, sla)
            row.split_grad_err, row.split_grad_abs = max(row.split_grad_err, sge), max(
                row.split_grad_abs, sga)
    row.splits_run, row.splits_skipped = tuple(run), tuple(skipped)
    if row.error is None:
        row.ok = max(row.loss_err, row.grad_err, row.split_loss_err, row.split_grad_err) <= tol
    return row


def _shrink(fn, x, y, opts, splits, tol, budget=200):
    """Greedy shrink of ``(x, y)`` while the check still fails: rows, classes, values."""
    calls = [0]

    def fails(xc, yc):
        if calls[0] >= budget:
            return False
        calls[0] += 1
        try:
            return not _evaluate(fn, xc, yc, opts, splits, tol).ok
        except (ValueError, TypeError):             # the reference rejects the candidate
            return False

    x2, y2 = x.reshape(-1, x.shape[-1]), np.asarray(y).reshape(-1)
    changed = True
    while changed and calls[0] < budget:
        changed = False
        i = 0
        while x2.shape[0] > 1 and i < x2.shape[0]:           # drop rows
            cx, cy = np.delete(x2, i, 0), np.delete(y2, i, 0)
            if fails(cx, cy):
                x2, y2, changed = cx, cy, True
            else:
                i += 1
        j = 0
        while x2.shape[1] > 1 and j < x2.shape[1]:           # drop classes nobody targets
            if np.any(y2 == j):
                j += 1
                continue
            cy = np.where((y2 > j) & (y2 < x2.shape[1]), y2 - 1, y2)
            cx = np.delete(x2, j, 1)
            if fails(cx, cy):
                x2, y2, changed = cx, cy, True
            else:
                j += 1
        for idx in np.ndindex(x2.shape):                      # simpler values
            v = float(x2[idx])
            if not math.isfinite(v) or v == 0:
                continue
            for alt in (0.0, float(f"{v:.1g}")):
                if alt == v:
                    continue
                cx = x2.copy()
                cx[idx] = alt
                if fails(cx, y2):
                    x2, changed = cx, True
                    break
    return x2, y2


def _describe(x, y, opts):
    with np.printoptions(floatmode="unique", threshold=60, linewidth=10_000):
        xs = np.array2string(np.asarray(x), separator=", ").replace("\n", "")
        ys = np.array2string(np.asarray(y), separator=", ")
    o = "".join(f", {k}={v!r}" for k, v in opts.items())
    return f"logits={xs} ({np.asarray(x).dtype}), targets={ys}{o}"


def check_invariance(fn, logits, targets, *, splits=(1, 2, 4, 8), tol_eps=256.0, shrink=True,
                     **options):
    r"""Check a sharded cross-entropy for split invariance and against the reference.

    ``fn(shards, targets, **opts)`` must take a list of consecutive slices of
    the logits along the last axis (as :func:`split_logits` makes them:
    uneven, possibly of width 1) and return ``(loss, [per-shard gradients])``,
    like :func:`vocab_parallel_cross_entropy`.  It is run on every split in
    ``splits`` (splits into more shards than classes are skipped) and compared
    with :func:`reference_cross_entropy` on the full logits and with the other
    splits.

    ``options`` are the keyword options passed to ``fn`` and the reference
    (``label_smoothing``, ``smoothing``, ``z_loss``, ``ignore_index``,
    ``reduction``).  An option given as a list sweeps its values: every
    combination is checked and reported on its own row.

    Returns an :class:`InvarianceReport`: per option combination the largest
    difference from the reference and between splits (in units of
    ``eps(dtype)`` times the operand scale, and absolute), the split where it
    occurred, and -- for a combination that exceeds ``tol_eps`` -- the smallest
    input found that still shows it (greedy shrink over rows, untargeted
    classes and values), otherwise the row with the largest deviation.

    Examples
    --------
    >>> import numpy as np
    >>> from ce_reference.parallel import check_invariance, vocab_parallel_cross_entropy
    >>> x = np.random.default_rng(0).normal(size=(4, 9))
    >>> y = np.array([0, 3, 8, 5])
    >>> rep = check_invariance(vocab_parallel_cross_entropy, x, y, label_smoothing=[0.0, 0.1],
    ...                        smoothing=["uniform", "others"])
    >>> rep.ok, len(rep.rows)
    (True, 4)
    """
    x = V.as_numeric_array("logits", logits)
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    y = np.asarray(targets)
    names = list(options)
    values = [v if isinstance(v, list) else [v] for v in options.values()]
    report = InvarianceReport(tol_eps=float(tol_eps), dtype=str(x.dtype), shape=tuple(x.shape))
    for combo in itertools.product(*values):
        opts = dict(zip(names, combo))
        row = _evaluate(fn, x, y, opts, splits, tol_eps)
        if not row.ok and shrink:
            sx, sy = _shrink(fn, x, y, opts, splits, tol_eps)
            small = _evaluate(fn, sx, sy, opts, splits, tol_eps)
            row.witness = {"logits": sx, "targets": sy, "describe": _describe(sx, sy, opts),
                           "loss_err": small.loss_err, "grad_err": small.grad_err,
                           "split_loss_err": small.split_loss_err,
                           "split_grad_err": small.split_grad_err, "error": small.error}
        elif row.ok and x.ndim >= 2:
            row.worst_row = _worst_row(fn, x, y, opts, splits)
        report.rows.append(row)
    return report


def _worst_row(fn, x, y, opts, splits):
    """Index of the row (reduction 'none') with the largest deviation from the reference."""
    o = dict(opts, reduction="none")
    x2, y2 = x.reshape(-1, x.shape[-1]), y.reshape(-1)
    try:
        ref = np.asarray(reference_cross_entropy(x2, y2, **o)[0], np.float64)
        worst = np.zeros(x2.shape[0])
        for n in splits:
            if n > x2.shape[-1]:
                continue
            got = np.asarray(fn(split_logits(x2, n), y2.copy(), **o)[0], np.float64)
            with np.errstate(invalid="ignore"):
                d = np.where(np.isfinite(ref) & np.isfinite(got), np.abs(got - ref), 0)
            worst = np.maximum(worst, d)
    except Exception:   # noqa: BLE001 -- a fn without reduction='none' support
        return None
    return (int(np.argmax(worst)),) if worst.size else None
