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
from ._format import clean_json, fmt_eps
from ._problem import ClassProblem
from ._reduction import grad_scale, reduce_loss, to_result
from .auditing.tolerance import TOL_EPS, Measure, is_within, measure, operand_scale, verdict
from .cases import Case, regions
from .cases import shrink as shrink_case
from .losses.softmax_cross_entropy import _check_z_loss

__all__ = [
    "SMOOTHING",
    "vocab_parallel_cross_entropy",
    "reference_cross_entropy",
    "split_logits",
    "check_invariance",
    "check_options",
    "InvarianceReport",
    "audit_vocab_parallel",
    "VocabParallelAudit",
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
    denominator: float      # the mean's: the number of kept rows


def check_options(label_smoothing=0.0, smoothing="uniform", z_loss=0.0, ignore_index=None,
                  reduction="mean", num_classes=None):
    """The validated options of the vocab-parallel loss: ``(eps, z, ignore_index, reduction)``.

    One set of checks for the NumPy and JAX versions and the single-device
    reference, made of the library's validators (:mod:`ce_reference._validation`
    and the softmax loss's ``z_loss`` check), so that an option is accepted or
    refused with the same message everywhere.  ``num_classes`` (the full
    vocabulary) is needed for ``smoothing="others"``, which puts
    :math:`\varepsilon/(V-1)` on the other classes.
    """
    if smoothing not in SMOOTHING:
        raise ValueError(f"smoothing must be one of {SMOOTHING}, got {smoothing!r}")
    eps = V.check_label_smoothing(label_smoothing)
    if smoothing == "others" and eps > 0 and num_classes is not None and num_classes < 2:
        raise ValueError("smoothing='others' puts eps/(V-1) on the other classes and needs "
                         f"V >= 2 classes, got V={num_classes}")
    return eps, _check_z_loss(z_loss), V.check_ignore_index(ignore_index), \
        V.check_reduction(reduction)


def _index_problem(x_shape, dtype, targets, ignore_index, reduction):
    """The softmax loss's own argument handling (:class:`ce_reference._problem.ClassProblem`,
    index targets only) for logits of ``x_shape`` -- the targets, the kept rows and the
    mean's denominator -- without the logits themselves (a broadcast zero stands for them)."""
    stand_in = np.broadcast_to(np.zeros((), dtype), x_shape)
    return ClassProblem(stand_in, targets, input_name="logits", input_kind="logits", axis=-1,
                        ignore_index=ignore_index, reduction=reduction, index_only=True,
                        check_values=False)


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
        V.check_logits(f"logit_shards[{k}]", x)       # no NaN, no +inf (all -inf: checked below)
    widths = [x.shape[-1] for x in shards]
    Vtot = int(sum(widths))
    if Vtot == 0:
        raise ValueError("logit_shards has no classes (every shard has width 0)")
    offsets = [0, *itertools.accumulate(widths)][:-1]
    eps, z, ignore_index, reduction = check_options(label_smoothing, smoothing, z_loss,
                                                    ignore_index, reduction, Vtot)
    P = _index_problem(batch + (Vtot,), cdt, targets, ignore_index, reduction)
    return _Problem(shards, offsets, Vtot, P.index.reshape(batch), P.keep.reshape(batch), eps,
                    smoothing, z, reduction, cdt, rdt, batch, P.denominator)


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
    denom = P.denominator
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
    eps, z, ignore_index, reduction = check_options(label_smoothing, smoothing, z_loss,
                                                    ignore_index, reduction, Vn)
    P = _index_problem(x.shape, cdt, targets, ignore_index, reduction)   # index targets only
    if smoothing == "uniform" or eps == 0:
        kw = dict(ignore_index=ignore_index, label_smoothing=eps, z_loss=z, reduction=reduction)
        return softmax_cross_entropy(x, targets, **kw), softmax_cross_entropy_grad(x, targets, **kw)
    # "others": per-row losses and the gradient of their sum, then our own reduction
    index, keep = P.index.reshape(x.shape[:-1]), P.keep.reshape(x.shape[:-1])
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
    loss = reduce_loss(rows, reduction, P.denominator, rdt)
    return loss, to_result(grad * cdt.type(P.scale), rdt)


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
    loss_err: float = 0.0               # worst loss error against the reference, eps units
    grad_err: float = 0.0               # (eps of the dtype times the operand, TOL_EPS scheme)
    split_loss_err: float = 0.0         # worst difference between two splits, eps units
    split_grad_err: float = 0.0
    worst_split: int | None = None
    splits_run: tuple = ()
    splits_skipped: tuple = ()
    error: str | None = None            # the callable raised / returned the wrong structure
    detail: str = ""                    # the worst element over the tolerance, if any
    witness: dict | None = None         # the smallest input showing the deviation (shrunk)
    worst_row: tuple | None = None      # (when ok) the row with the largest deviation

    @property
    def worst(self) -> float:
        """The largest of the four errors (inf when the callable failed)."""
        if self.error:
            return math.inf
        return max(self.loss_err, self.grad_err, self.split_loss_err, self.split_grad_err)

    def to_json(self) -> dict:
        w = None
        if self.witness:
            w = {k: v for k, v in self.witness.items() if k not in ("logits", "targets", "case")}
            w["case"] = self.witness["case"].to_json()
        return clean_json({
            "options": self.options, "ok": self.ok, "loss_eps": self.loss_err,
            "grad_eps": self.grad_err, "split_loss_eps": self.split_loss_err,
            "split_grad_eps": self.split_grad_err, "worst_split": self.worst_split,
            "splits_run": list(self.splits_run), "splits_skipped": list(self.splits_skipped),
            "error": self.error, "detail": self.detail, "witness": w})


@dataclass
class InvarianceReport:
    """Result of :func:`check_invariance`: one row per option combination.

    ``ok`` is True when every split of every option combination agrees with
    the reference and with every other split within ``tol_eps``.  Errors are
    in the one tolerance scheme of the audits
    (:mod:`ce_reference.auditing.tolerance`): ``|got - expected| / (eps(dtype)
    * S)``, normwise, ``S`` the larger of the expected array's largest entry and
    the operand size -- ``max(1, max|x|)`` for the loss (times the number of
    kept rows for ``sum``), the largest reference gradient entry at logits 0
    for the gradient.
    """

    rows: list = field(default_factory=list)
    tol_eps: float = TOL_EPS
    dtype: str = ""
    shape: tuple = ()

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    @property
    def worst(self) -> float:
        return max((r.worst for r in self.rows), default=0.0)

    def __str__(self) -> str:
        lines = [f"check_invariance: logits {self.shape} {self.dtype}; errors in eps of the "
                 f"operands (tolerance {fmt_eps(self.tol_eps)}); {'OK' if self.ok else 'FAIL'}"]
        for r in self.rows:
            lines += _row_lines(r)
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"ok": self.ok, "tolerance_eps": self.tol_eps, "dtype": self.dtype,
                "shape": list(self.shape), "worst_eps": clean_json(self.worst),
                "rows": [r.to_json() for r in self.rows]}


def _row_lines(r, indent="  "):
    head = f"{indent}[{'ok' if r.ok else 'FAIL'}] {_label(r.options)}"
    sp = ",".join(map(str, r.splits_run))
    if r.error:
        lines = [head, f"{indent}    splits {sp}: ERROR {r.error}"]
    else:
        lines = [head, f"{indent}    splits {sp}: vs reference loss {fmt_eps(r.loss_err)}, grad "
                       f"{fmt_eps(r.grad_err)} eps (worst split {r.worst_split}); between splits "
                       f"loss {fmt_eps(r.split_loss_err)}, grad {fmt_eps(r.split_grad_err)} eps"]
        if r.detail:
            lines.append(f"{indent}    worst element: {r.detail}")
    if r.splits_skipped:
        lines.append(f"{indent}    skipped (more shards than classes, or uneven with even=True): "
                     f"{','.join(map(str, r.splits_skipped))}")
    if r.witness:
        lines.append(f"{indent}    smallest input: {r.witness['describe']}")
        if r.witness.get("detail"):
            lines.append(f"{indent}      {r.witness['detail']}")
    return lines


def _label(opts):
    return ", ".join(f"{k}={v!r}" for k, v in opts.items()) or "defaults"


def _case(x, y, opts, class_multiple=1, region=""):
    """The :class:`ce_reference.cases.Case` of one check: the options define the row and are
    fixed; the ignore sentinel is never renumbered."""
    ig = "ignore_index" if opts.get("ignore_index") is not None else None
    return Case(x=x, targets=y, kwargs=dict(opts), region=region, axis=x.ndim - 1,
                domain="logits", target_kind="index", fixed=frozenset(opts), ignore=ig,
                class_multiple=class_multiple)


def _operands(x, y, opts):
    """Operand sizes ``(loss, grad)`` of a case (see :class:`InvarianceReport`)."""
    xf = np.abs(x[np.isfinite(x)]).astype(np.float64)
    xs = max(1.0, float(xf.max())) if xf.size else 1.0
    if opts.get("reduction", "mean") == "sum":
        ig = opts.get("ignore_index")
        xs *= max(1, int(np.size(y)) if ig is None else int(np.count_nonzero(np.asarray(y) != ig)))
    with np.errstate(all="ignore"):
        g0 = np.asarray(reference_cross_entropy(np.zeros_like(x), y, **opts)[1], np.float64)
    g0 = g0[np.isfinite(g0)]
    return xs, (float(np.max(np.abs(g0))) if g0.size else 0.0)


def _measure(got, expected, operand, dtype, tol, name):
    """The one error measure (:func:`ce_reference.auditing.tolerance.measure`), normwise."""
    a = np.asarray(got, np.float64)
    r = np.asarray(expected, np.float64)
    if a.shape != r.shape:
        return Measure(math.inf, None, f"{name}: shape {a.shape}, expected {r.shape}")
    return measure(a, r, operand_scale(r, operand), dtype, tol, name)


def _runs(n, V, even):
    return n <= V and not (even and V % n)


def _evaluate(fn, case, splits, tol, even=False):
    """Run ``fn`` on every split of ``case``; return a filled :class:`_Row`."""
    x, y, opts = case.x, case.targets, case.kwargs
    row = _Row(dict(opts), True)
    ref_loss, ref_grad = reference_cross_entropy(x, y, **opts)
    dt = np.dtype(ref_grad.dtype)
    Sl, Sg = _operands(x, y, opts)
    first = None
    run, skipped, worst_detail = [], [], (0.0, "")
    for n in splits:
        if not _runs(n, x.shape[-1], even):
            skipped.append(n)
            continue
        run.append(n)
        try:
            loss, grads = fn([s.copy() for s in split_logits(x, n)], y.copy(), **opts)
            grad = np.concatenate([np.asarray(g) for g in grads], axis=-1)
        except Exception as exc:    # noqa: BLE001 -- reported, not raised
            row.ok, row.error = False, f"split {n}: {type(exc).__name__}: {exc}".splitlines()[0]
            break
        ms = [("ref", _measure(loss, ref_loss, Sl, dt, tol, f"loss (split {n})")),
              ("ref", _measure(grad, ref_grad, Sg, dt, tol, f"grad (split {n})"))]
        le, ge = ms[0][1].worst, ms[1][1].worst
        if row.worst_split is None or max(le, ge) > max(row.loss_err, row.grad_err):
            row.worst_split = n
        row.loss_err, row.grad_err = max(row.loss_err, le), max(row.grad_err, ge)
        if first is None:
            first = (n, loss, grad)
        else:
            m0, m1 = (_measure(loss, first[1], Sl, dt, tol, f"loss (split {n} vs {first[0]})"),
                      _measure(grad, first[2], Sg, dt, tol, f"grad (split {n} vs {first[0]})"))
            ms += [("split", m0), ("split", m1)]
            row.split_loss_err = max(row.split_loss_err, m0.worst)
            row.split_grad_err = max(row.split_grad_err, m1.worst)
        for _, m in ms:
            if m.detail and m.worst > worst_detail[0]:
                worst_detail = (m.worst, m.detail)
    row.splits_run, row.splits_skipped = tuple(run), tuple(skipped)
    row.detail = worst_detail[1]
    if row.error is None:
        row.ok = is_within(row.worst, tol)
    return row


def check_invariance(fn, logits, targets, *, splits=(1, 2, 4, 8), tol_eps=TOL_EPS, shrink=True,
                     even=False, shrink_budget=200, **options):
    r"""Check a sharded cross-entropy for split invariance and against the reference.

    ``fn(shards, targets, **opts)`` must take a list of consecutive slices of
    the logits along the last axis (as :func:`split_logits` makes them:
    uneven, possibly of width 1) and return ``(loss, [per-shard gradients])``,
    like :func:`vocab_parallel_cross_entropy`.  It is run on every split in
    ``splits`` (splits into more shards than classes are skipped; with
    ``even=True``, for an implementation that needs equal shards such as
    Megatron-LM's, also the splits that do not divide the classes) and compared
    with :func:`reference_cross_entropy` on the full logits and with the other
    splits.

    ``options`` are the keyword options passed to ``fn`` and the reference
    (``label_smoothing``, ``smoothing``, ``z_loss``, ``ignore_index``,
    ``reduction``).  An option given as a list sweeps its values: every
    combination is checked and reported on its own row.

    Errors are in eps of the dtype times the operands, the one tolerance scheme
    of every audit (:mod:`ce_reference.auditing.tolerance`; ``tol_eps``
    defaults to :data:`~ce_reference.auditing.tolerance.TOL_EPS`).  Returns an
    :class:`InvarianceReport`: per option combination the largest error against
    the reference and between splits, the split where it occurred, the worst
    element, and -- for a combination that exceeds ``tol_eps`` -- the smallest
    input that still shows it, found by the one shrinker
    (:func:`ce_reference.cases.shrink`: fewer rows, fewer untargeted classes --
    with ``even=True`` in multiples of every split --, simpler values; the
    options stay as they are), otherwise the row with the largest deviation.

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
    splits = tuple(int(n) for n in splits)
    if not splits or min(splits) < 1:
        raise ValueError(f"splits must be positive shard counts, got {splits!r}")
    multiple = math.lcm(*splits) if even else 1
    names = list(options)
    values = [v if isinstance(v, list) else [v] for v in options.values()]
    report = InvarianceReport(tol_eps=float(tol_eps), dtype=str(x.dtype), shape=tuple(x.shape))
    for combo in itertools.product(*values):
        opts = dict(zip(names, combo))
        case = _case(x, y, opts, multiple)
        row = _evaluate(fn, case, splits, tol_eps, even)
        if not row.ok and shrink:
            def still(c):
                try:
                    r = _evaluate(fn, c, splits, tol_eps, even)
                except (ValueError, TypeError):          # the reference rejects the candidate
                    return None
                return r if not r.ok else None

            small, srow = shrink_case(case, still, budget=shrink_budget, info=row)
            row.witness = {"case": small, "logits": small.x, "targets": small.targets,
                           "describe": small.arguments(), "loss_err": srow.loss_err,
                           "grad_err": srow.grad_err, "split_loss_err": srow.split_loss_err,
                           "split_grad_err": srow.split_grad_err, "error": srow.error,
                           "detail": srow.error or srow.detail}
        elif row.ok and x.ndim >= 2:
            row.worst_row = _worst_row(fn, x, y, opts, splits, even)
        report.rows.append(row)
    return report


def _worst_row(fn, x, y, opts, splits, even=False):
    """Index of the row (reduction 'none') with the largest deviation from the reference."""
    o = dict(opts, reduction="none")
    x2, y2 = x.reshape(-1, x.shape[-1]), y.reshape(-1)
    try:
        ref = np.asarray(reference_cross_entropy(x2, y2, **o)[0], np.float64)
        worst = np.zeros(x2.shape[0])
        for n in splits:
            if not _runs(n, x2.shape[-1], even):
                continue
            got = np.asarray(fn(split_logits(x2, n), y2.copy(), **o)[0], np.float64)
            with np.errstate(invalid="ignore"):
                d = np.where(np.isfinite(ref) & np.isfinite(got), np.abs(got - ref), 0)
            worst = np.maximum(worst, d)
    except Exception:   # noqa: BLE001 -- a fn without reduction='none' support
        return None
    return (int(np.argmax(worst)),) if worst.size else None


# --------------------------------------------------------------------------- the audit

#: Option sets of :func:`audit_vocab_parallel` (each with every reduction the function takes;
#: an option set with an option the function does not accept is left out).
AUDIT_OPTION_SETS = (
    {},
    {"label_smoothing": 0.1},
    {"label_smoothing": 0.1, "smoothing": "others"},
    {"z_loss": 1e-3},
    {"ignore_index": -100},
    {"label_smoothing": 0.2, "smoothing": "others", "z_loss": 1e-2, "ignore_index": -100},
)
#: Input regions of :func:`audit_vocab_parallel`: the framework audits' logit regions and the
#: regions of a split class axis (:mod:`ce_reference.cases.regions`).
AUDIT_REGIONS = regions.LOGIT_REGIONS + regions.SHARD_REGIONS
AUDIT_SPLITS = (1, 2, 4, 8)


def accepted_options(fn) -> set | None:
    """The keyword options of the vocab-parallel loss that ``fn`` accepts (None: all, it
    takes ``**kwargs``)."""
    import inspect
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    names = {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    return names & {"label_smoothing", "smoothing", "z_loss", "ignore_index", "reduction"}


@dataclass
class VocabParallelAudit:
    """Result of :func:`audit_vocab_parallel`: one :class:`InvarianceReport` row per option
    set x reduction x dtype x region (``rows``: ``(dtype, region, row)``)."""

    function: str
    splits: tuple
    even: bool
    seed: int
    rows: list = field(default_factory=list)
    option_sets: list = field(default_factory=list)
    tol_eps: float = TOL_EPS

    @property
    def ok(self) -> bool:
        return bool(self.rows) and all(r.ok for _, _, r in self.rows)

    def worst(self, dtype=None) -> float:
        return max((r.worst for d, _, r in self.rows if dtype in (None, d)), default=0.0)

    @property
    def dtypes(self) -> list:
        return list(dict.fromkeys(d for d, _, _ in self.rows))

    def verdict(self) -> str:
        if not self.rows:
            return "INCONCLUSIVE: no case ran"
        parts = [verdict(self.ok, self.worst(d), self.tol_eps).replace(
            " (tolerance", f" in {d} (tolerance") for d in self.dtypes]
        return "; ".join(parts)

    def __str__(self) -> str:
        bad = [(d, g, r) for d, g, r in self.rows if not r.ok]
        lines = [f"vocab-parallel audit of {self.function}: {self.verdict()}",
                 f"  {len(self.rows)} checks (option set x reduction x dtype x region), splits "
                 f"{','.join(map(str, self.splits))}{' (equal shards only)' if self.even else ''}"
                 f", seed {self.seed}; {len(bad)} failing"]
        seen = set()
        for d, g, r in bad:                       # one report per failing option set and dtype
            key = (_label(r.options), d)
            if key in seen:
                continue
            seen.add(key)
            n = sum(1 for d2, _, r2 in bad if (_label(r2.options), d2) == key)
            lines.append(f"  {d}, region {g!r} ({n} region(s) fail with these options):")
            lines += _row_lines(r, indent="    ")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return clean_json({
            "function": self.function, "ok": self.ok, "verdict": self.verdict(),
            "tolerance_eps": self.tol_eps, "splits": list(self.splits), "even": self.even,
            "seed": self.seed, "worst_eps": {d: self.worst(d) for d in self.dtypes},
            "option_sets": self.option_sets,
            "rows": [dict(r.to_json(), dtype=d, region=g) for d, g, r in self.rows]})

    def markdown(self) -> str:
        out = [f"# Vocab-parallel audit of `{self.function}`", "", self.verdict(), "",
               "| dtype | region | options | splits | vs reference (loss / grad eps) "
               "| between splits (loss / grad eps) | ok |", "|---|---|---|---|---|---|---|"]
        for d, g, r in self.rows:
            out.append(f"| {d} | {g} | {_label(r.options)} | {','.join(map(str, r.splits_run))} "
                       f"| {fmt_eps(r.loss_err)} / {fmt_eps(r.grad_err)} "
                       f"| {fmt_eps(r.split_loss_err)} / {fmt_eps(r.split_grad_err)} "
                       f"| {'ok' if r.ok else 'FAIL'} |")
        out += ["", "```", str(self), "```", ""]
        return "\n".join(out)


def audit_vocab_parallel(fn, *, splits=AUDIT_SPLITS, dtypes=("float64", "float32"), seed=0,
                         even=False, shrink=True, progress=None, name=None,
                         regions_=AUDIT_REGIONS) -> VocabParallelAudit:
    """Audit a sharded cross-entropy ``fn`` (the signature of :func:`check_invariance`'s) on
    the audits' seeded random and extreme inputs.

    For every option set of :data:`AUDIT_OPTION_SETS` that ``fn`` accepts (its signature
    decides; ``reduction`` is swept over mean, sum and none when it takes it), every dtype and
    every region of :data:`AUDIT_REGIONS`, a case is drawn from the shared generator
    (:func:`ce_reference.cases.regions.categorical`, index targets; with ``even`` the number
    of classes is a multiple of every split) and :func:`check_invariance` runs it on every
    split (``regions_`` restricts the regions).  ``ok`` when every check is within the
    tolerance.  This is what ``ce-reference audit MODULE:FUNCTION --vocab-parallel`` runs.
    """
    splits = tuple(int(n) for n in splits)
    if not splits or min(splits) < 1:
        raise ValueError(f"splits must be positive shard counts, got {splits!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    dtypes = [np.dtype(d).name for d in dtypes]
    for d in dtypes:
        if d not in ("float64", "float32"):
            raise ValueError(f"dtypes must be float64 and/or float32, got {d!r}")
    accepted = accepted_options(fn)
    sets = []
    for o in AUDIT_OPTION_SETS:
        kept = o if accepted is None else {k: v for k, v in o.items() if k in accepted}
        if kept == o and o not in sets:
            sets.append(o)
    sweep_red = accepted is None or "reduction" in accepted
    gen = regions.categorical("logits", "index",
                              class_multiple=math.lcm(*splits) if even else 1)
    result = VocabParallelAudit(name or getattr(fn, "__qualname__", repr(fn)), splits, even,
                                seed, option_sets=[dict(o) for o in sets])
    unknown = [r for r in regions_ if r not in AUDIT_REGIONS]
    if unknown:
        raise ValueError(f"unknown regions {unknown}; expected some of {AUDIT_REGIONS}")
    total = len(sets) * len(dtypes) * len(regions_)
    done = 0
    for oi, opts in enumerate(sets):
        for di, dt in enumerate(dtypes):
            for region in regions_:
                ri = AUDIT_REGIONS.index(region)
                done += 1
                if progress is not None:
                    progress(done, total, f"{_label(opts)} | {dt} | {region}")
                rng = np.random.default_rng([seed, oi, di, ri])
                case = gen(rng, dt, opts, region)
                if case is None:
                    continue
                kw = dict(opts)
                if sweep_red:
                    kw["reduction"] = ["mean", "sum", "none"]
                rep = check_invariance(fn, case.x, case.targets, splits=splits, shrink=shrink,
                                       even=even, **kw)
                result.rows += [(dt, region, r) for r in rep.rows]
    return result
