r"""Framework conventions, reproduced exactly: value *and* hand-derived gradient.

The core functions of :mod:`ce_reference` follow PyTorch's ``F.cross_entropy``
and evaluate the exact formulas.  Other libraries document other choices --
how labels are smoothed, how probabilities are clipped, what a "mean" divides
by.  This module reproduces each of those choices so that a framework can be
compared *like with like* (see :mod:`ce_reference.frameworks`), and so that a
user porting a model can compute what the other framework computes.

Design: a few building blocks, each a NumPy function returning
``(value, gradient)`` with a formula-first docstring, composed by keyword
arguments; :data:`CONVENTIONS` names each framework's choice and says which
building block and keywords reproduce it.

Building blocks
---------------
:func:`smooth_labels`
    ``uniform`` (:math:`(1-\varepsilon)q + \varepsilon/C`: PyTorch, optax,
    Keras categorical), ``binary`` (:math:`(1-\varepsilon)y + \varepsilon/2`:
    Keras binary), ``off_class`` (:math:`1-\varepsilon` on the true class,
    :math:`\varepsilon/(C-1)` elsewhere: Megatron-LM, t5x).
:func:`weighted_reduction`
    ``none`` / ``sum`` / ``mean``; the mean divides by ``"weights"`` (the sum of
    the per-example weights of the kept examples: PyTorch index targets,
    scikit-learn ``sample_weight``, Keras ``mean_with_sample_weight``) or by
    ``"count"`` (the number of kept examples: Keras ``sum_over_batch_size``,
    PyTorch probability targets); a zero denominator gives ``NaN`` (PyTorch)
    or ``0`` (Keras ``divide_no_nan``).
:func:`softmax_cross_entropy_rows`
    :math:`\sum_c q_c(\operatorname{logsumexp} x - x_c)` per row, any targets.
:func:`clamped_binary_cross_entropy`
    PyTorch ``F.binary_cross_entropy``: each log clamped at -100.
:func:`clipped_binary_cross_entropy_elements`
    Keras: probabilities clipped to ``[eps, 1 - eps]`` (``eps = 1e-7``).
:func:`clipped_categorical_cross_entropy_rows`
    Keras (renormalise, then clip at 1e-7) and scikit-learn ``log_loss``
    (clip at the dtype's eps, no renormalisation).
:func:`sigmoid_cross_entropy_elements`
    :math:`\mathrm{pw}\,y\,\operatorname{softplus}(-x) + (1-y)\operatorname{softplus}(x)`.
:func:`keras_binary_focal_elements` / :func:`keras_categorical_focal_rows`
    Keras 3 ``BinaryFocalCrossentropy`` / ``CategoricalFocalCrossentropy`` with
    ``from_logits=True``: probabilities clipped to ``[eps, 1 - eps]``, the focal
    factor of the unclipped probability, ``alpha`` only with class balancing
    (binary) or as a plain multiplier (categorical).
:func:`keras_kl_divergence_rows`
    Keras 3 ``KLDivergence``: probabilities (not log-probabilities), both
    clipped to ``[eps, 1]``.
:func:`half_binomial` / :func:`half_multinomial`
    scikit-learn's ``HalfBinomialLoss`` / ``HalfMultinomialLoss``: loss, gradient
    and diagonal Hessian with respect to the raw prediction.

Every function is built from the core pieces -- the losses' own validation
(their problem objects), per-element and per-row formulas, and the one
``mean``-denominator rule (:func:`ce_reference._reduction.weighted_count`) --
so a gradient formula or a validator is never written twice; only what
differs (PyTorch's log clamp, Keras' renormalisation, the reductions'
knobs) is written here.  Every gradient is hand-derived (the formula is in
the docstring) and is tested against ``jax.grad`` of a twin written from the
definition (``tests/test_conventions.py``).  Dtypes follow the package's one
policy (:func:`ce_reference._validation.compute_dtypes`: float64 and float32
are computed as such, float16 in float32, integers and bools in float64);
results are in the compute dtype, sums accumulate in float64; inputs are
never modified.
"""

from __future__ import annotations

import operator

import numpy as np
from scipy import special as _sp

from . import _validation as V
from ._problem import check_input_values
from ._reduction import weighted_count
from ._special import log_softmax_parts, mul0
from .losses import binary_cross_entropy as _bce
from .losses import binary_cross_entropy_with_logits as _bce_logits
from .losses import softmax_cross_entropy as _softmax

__all__ = [
    "CONVENTIONS",
    "SMOOTHING_SCHEMES",
    "DENOMINATORS",
    "smooth_labels",
    "weighted_reduction",
    "softmax_cross_entropy_rows",
    "masked_softmax_cross_entropy",
    "clamped_binary_cross_entropy",
    "clipped_binary_cross_entropy_elements",
    "clipped_categorical_cross_entropy_rows",
    "sigmoid_cross_entropy_elements",
    "half_binomial",
    "half_multinomial",
    "keras_binary_focal_elements",
    "keras_categorical_focal_rows",
    "keras_kl_divergence_rows",
]

SMOOTHING_SCHEMES = ("uniform", "binary", "off_class")
DENOMINATORS = ("weights", "count")

#: PyTorch's ``F.binary_cross_entropy`` clamps each log term at -100
#: (aten/src/ATen/native/Loss.cpp); exp(-100) ~ 3.7e-44.
TORCH_LOG_CLAMP = -100.0

#: Keras 3's ``backend.epsilon()`` default (keras/src/backend/config.py); the
#: probability paths clip to [eps, 1 - eps] with it.
KERAS_EPSILON = 1e-7


def _float(name, a):
    """``a`` in its compute dtype (the package's dtype policy), never modified in place."""
    arr = V.as_numeric_array(name, a)
    return arr.astype(V.compute_dtypes(arr.dtype)[0], copy=False)


# --------------------------------------------------------------------------- targets

def smooth_labels(targets, label_smoothing, *, num_classes=None, scheme="uniform"):
    r"""Smoothed probability targets under one of the three schemes in use.

    .. math::

        \texttt{uniform}:\; q' = (1-\varepsilon)\,q + \varepsilon / C
        \qquad
        \texttt{binary}:\; y' = (1-\varepsilon)\,y + \varepsilon / 2

    .. math::

        \texttt{off\_class}:\; q'_c = (1-\varepsilon)\,q_c
        + \frac{\varepsilon}{C-1}\,(1 - q_c)

    ``uniform`` is PyTorch's ``label_smoothing``, optax ``smooth_labels`` and
    Keras ``CategoricalCrossentropy``; ``binary`` is Keras
    ``BinaryCrossentropy`` (each element is its own two-class problem);
    ``off_class`` (true class keeps exactly :math:`1-\varepsilon`, the others
    share :math:`\varepsilon` equally) is Megatron-LM's and t5x's.  For a
    one-hot :math:`q` the true class gets :math:`1-\varepsilon+\varepsilon/C`
    under ``uniform`` and :math:`1-\varepsilon` under ``off_class``.

    Parameters
    ----------
    targets : array_like
        Integer class indices (then ``num_classes`` is required and the result
        gains a trailing class axis) or probabilities with the class axis last.
    label_smoothing : float in [0, 1]
    num_classes : int, optional
        ``C``; defaults to the last axis of probability targets.
    scheme : {"uniform", "binary", "off_class"}

    Returns
    -------
    ndarray of float64 (float32 for float32 targets)

    Examples
    --------
    >>> from ce_reference.conventions import smooth_labels
    >>> smooth_labels([0], 0.1, num_classes=3).round(4).tolist()
    [[0.9333, 0.0333, 0.0333]]
    >>> smooth_labels([0], 0.1, num_classes=3, scheme="off_class").tolist()
    [[0.9, 0.05, 0.05]]
    >>> smooth_labels([1.0, 0.0], 0.1, scheme="binary").round(12).tolist()
    [0.95, 0.05]
    """
    eps = V.check_label_smoothing(label_smoothing)
    if scheme not in SMOOTHING_SCHEMES:
        raise ValueError(f"scheme must be one of {SMOOTHING_SCHEMES}, got {scheme!r}")
    t = V.as_numeric_array("targets", targets)
    if t.dtype.kind in "iu":
        if num_classes is None:
            raise ValueError("num_classes is required with integer class-index targets")
        C = _operator_index("num_classes", num_classes)
        if t.size and (t.min() < 0 or t.max() >= C):
            raise ValueError(f"targets holds class indices outside [0, {C - 1}]")
        q = np.eye(C, dtype=np.float64)[t]
    else:
        q = _float("targets", t)
        V.check_unit_interval("targets", q, "probabilities")
        if scheme != "binary" and q.ndim == 0:
            raise ValueError("probability targets need a class axis (last axis)")
        C = q.shape[-1] if scheme != "binary" else 2
        if num_classes is not None and scheme != "binary" and num_classes != C:
            raise ValueError(f"num_classes={num_classes} but targets has {C} classes")
    dt = q.dtype.type
    if scheme == "binary":
        return q * dt(1 - eps) + dt(eps / 2)
    if scheme == "uniform":
        return q * dt(1 - eps) + dt(eps / C)
    if C < 2:
        raise ValueError("scheme='off_class' needs at least 2 classes")
    return q * dt(1 - eps) + (1 - q) * dt(eps / (C - 1))


def _operator_index(name, v):
    """``v`` as a positive int, or a TypeError/ValueError naming ``name``."""
    try:
        v = operator.index(v)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {v!r}") from None
    if v < 1:
        raise ValueError(f"{name} must be >= 1, got {v}")
    return v


# --------------------------------------------------------------------------- reductions

def weighted_reduction(rows, row_grads, *, sample_weight=None, keep=None, reduction="mean",
                       denominator="weights", zero_division="nan"):
    r"""Reduce per-example losses and their gradients the way a framework does.

    With per-example losses :math:`\ell_n`, weights :math:`s_n` (default 1)
    and a keep mask :math:`k_n \in \{0, 1\}` (default 1):

    .. math::

        \texttt{none}:\ s_n k_n \ell_n \qquad
        \texttt{sum}:\ \sum_n s_n k_n \ell_n \qquad
        \texttt{mean}:\ \frac{\sum_n s_n k_n \ell_n}{D},

    .. math::

        D = \sum_n s_n k_n \;(\texttt{"weights"}) \quad\text{or}\quad
        D = \sum_n k_n \;(\texttt{"count"}).

    The gradient of example ``n`` is ``row_grads[n]`` times :math:`s_n k_n`
    (``none``, ``sum``: the gradient of the sum) or :math:`s_n k_n / D`
    (``mean``).  A mean with :math:`D = 0` is ``NaN`` for
    ``zero_division="nan"`` (PyTorch's deliberate 0/0) and ``0`` for
    ``"zero"`` (Keras' ``divide_no_nan``); its gradient is 0 either way.
    Products use :math:`0 \cdot \infty = 0`.

    Which framework uses which denominator: PyTorch index targets
    ``weights`` with :math:`s_n = w_{y_n}`; PyTorch probability targets and
    BCE ``count``; Keras ``sum_over_batch_size`` ``count`` (kept examples,
    ``sample_weight`` not in it) with ``zero``; Keras
    ``mean_with_sample_weight`` and scikit-learn ``sample_weight`` ``weights``.

    Parameters
    ----------
    rows : array_like, shape ``(N,)``
    row_grads : array_like, shape ``(N, ...)`` or None
        Gradient of each :math:`\ell_n` with respect to its own input row.
    sample_weight, keep : array_like of shape ``(N,)``, optional
    reduction : {"none", "sum", "mean"}
    denominator : {"weights", "count"}
    zero_division : {"nan", "zero"}

    Returns
    -------
    (value, grad) : value is a float64 scalar (``none``: an array); grad has
    ``row_grads``' shape (None if ``row_grads`` is None).

    Examples
    --------
    >>> from ce_reference.conventions import weighted_reduction
    >>> v, g = weighted_reduction([1.0, 3.0], [[1.0], [1.0]], sample_weight=[1.0, 3.0])
    >>> float(v), g.ravel().tolist()
    (2.5, [0.25, 0.75])
    >>> float(weighted_reduction([1.0, 3.0], None, sample_weight=[1.0, 3.0],
    ...                          denominator="count")[0])
    5.0
    """
    r = _float("rows", rows)
    if r.ndim != 1:
        raise ValueError(f"rows must be 1-D (one loss per example), got shape {r.shape}")
    V.check_reduction(reduction)
    if denominator not in DENOMINATORS:
        raise ValueError(f"denominator must be one of {DENOMINATORS}, got {denominator!r}")
    if zero_division not in ("nan", "zero"):
        raise ValueError(f"zero_division must be 'nan' or 'zero', got {zero_division!r}")
    n = r.shape[0]
    s = np.ones(n) if sample_weight is None else _float("sample_weight", sample_weight)
    if s.shape != (n,):
        raise ValueError(f"sample_weight must have shape ({n},), got {s.shape}")
    V.check_nonnegative_finite("sample_weight", s)
    k = np.ones(n, bool) if keep is None else np.asarray(keep, bool)
    if k.shape != (n,):
        raise ValueError(f"keep must have shape ({n},), got {k.shape}")
    c = np.where(k, s, 0).astype(np.float64)                 # s_n k_n
    if reduction == "mean":
        D = weighted_count(k, s if denominator == "weights" else None)
        scale = 0.0 if D == 0 else 1.0 / D
    else:
        D, scale = None, 1.0
    weighted = mul0(c, r.astype(np.float64))
    if reduction == "none":
        value = weighted
    elif reduction == "sum":
        value = np.float64(np.sum(weighted))
    elif D == 0:
        value = np.float64(np.nan if zero_division == "nan" else 0.0)
    else:
        value = np.float64(np.sum(weighted) / D)
    grad = None
    if row_grads is not None:
        G = _float("row_grads", row_grads)
        if G.shape[:1] != (n,):
            raise ValueError(f"row_grads must have {n} rows, got shape {G.shape}")
        f = (c * scale).reshape((n,) + (1,) * (G.ndim - 1))
        grad = mul0(f, G.astype(np.float64))
    return value, grad


# --------------------------------------------------------------------------- logits paths

def softmax_cross_entropy_rows(logits, targets):
    r"""Per-row softmax cross-entropy with arbitrary non-negative targets.

    .. math::

        \ell_n = \sum_c q_{n,c}\,\bigl(\operatorname{logsumexp}(x_n) - x_{n,c}\bigr),
        \qquad
        \frac{\partial \ell_n}{\partial x_{n,k}} = p_{n,k}\sum_c q_{n,c} - q_{n,k},

    with :math:`p = \operatorname{softmax}(x)` and :math:`0\cdot\infty = 0`
    (a ``-inf`` logit with target 0 contributes nothing, to the loss *or* the
    gradient).  Targets need not sum to 1 (optax ``softmax_cross_entropy``
    does not require it).  Integer targets are class indices (one-hot).  This
    is optax's ``softmax_cross_entropy`` / ``safe_softmax_cross_entropy`` and
    Keras' ``from_logits=True`` paths before reduction.

    Parameters
    ----------
    logits : array_like, shape ``(N, C)`` (class axis last)
        Finite or ``-inf``; every row needs one finite entry.
    targets : array_like
        Shape ``(N, C)`` non-negative finite weights, or ``(N,)`` integers.

    Returns
    -------
    (rows, grad) : shapes ``(N,)`` and ``(N, C)``

    Examples
    --------
    >>> import numpy as np
    >>> from ce_reference.conventions import softmax_cross_entropy_rows
    >>> l, g = softmax_cross_entropy_rows([[0.0, -np.inf]], [[1.0, 0.0]])
    >>> l.tolist(), g.tolist()
    ([0.0], [[0.0, 0.0]])
    """
    x = _float("logits", logits)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"logits must have shape (N, C) with C >= 1, got {x.shape}")
    V.check_logits("logits", x, axis=1)
    q = _index_or_probs("targets", targets, x)
    # The core softmax cross-entropy's row formulas with A = q (its targets are only
    # required to be non-negative here, so its problem skips the [0, 1] check).
    P = _softmax._problem(x, q, -1, None, None, 0.0, 0.0, None, "none", check_values=False)
    return P.reduce(_softmax._rows(P, P.x)[0]), P.finish_grad(_softmax._row_grad(P), scaled=True)


def _class_axes(axis, ndim):
    """``(batch axes, class axes)`` of an ``int`` or ``tuple`` ``axis`` (optax's convention)."""
    axes = (axis,) if not isinstance(axis, tuple) else axis
    if not axes:
        raise ValueError("axis must name at least one class axis")
    classes = tuple(V.normalize_axis(a, ndim) for a in axes)
    if len(set(classes)) != len(classes):
        raise ValueError(f"axis {axis!r} names an axis twice")
    return tuple(k for k in range(ndim) if k not in classes), classes


def masked_softmax_cross_entropy(logits, labels, *, axis=-1, where=None):
    r"""optax's softmax cross-entropy with a ``where`` mask and any tuple of class axes.

    The class axes (an ``int``, or a ``tuple`` moved last in the order given and
    flattened into one class axis of size :math:`C = \prod` of their sizes; integer
    labels are then flat indices into it) hold the classes; ``where`` (the batch's
    shape, one flag per example, or the logits' shape, one per logit) marks the
    entries that take part.  With :math:`M_n` the included classes of row :math:`n`,

    .. math::

        \ell_n = \operatorname{lse}_{c \in M_n}(x_{n,c}) - x_{n,y_n}
        \quad\text{(integer labels)},\qquad
        \ell_n = -\sum_{c \in M_n} q_{n,c}\,\bigl(x_{n,c} -
        \operatorname{lse}_{c' \in M_n}(x_{n,c'})\bigr)
        \quad\text{(label rows)},

    with gradients :math:`p^M_{n,k} - [k = y_n]` and
    :math:`p^M_{n,k} \sum_{c \in M_n} q_{n,c} - q_{n,k}` on :math:`M_n` (0 elsewhere),
    :math:`p^M` the softmax over :math:`M_n`; a row with no included class gives 0.
    (optax takes an integer label's logit even where it is masked: so does this.)
    These are ``optax.softmax_cross_entropy`` and
    ``optax.softmax_cross_entropy_with_integer_labels`` with ``axis`` and ``where``
    (optax >= 0.2.4); per example, no reduction.  Built from the core softmax
    cross-entropy's row formulas on the logits with the excluded classes at
    ``-inf`` (a masked class, as everywhere here).

    Returns
    -------
    (rows, grad) : the batch's shape, and the logits' shape

    Examples
    --------
    >>> import numpy as np
    >>> from ce_reference.conventions import masked_softmax_cross_entropy
    >>> rows, g = masked_softmax_cross_entropy([[0.0, 5.0, 0.0]], [0],
    ...                                        where=[[True, False, True]])
    >>> round(float(rows[0]), 6), g.round(3).tolist()
    (0.693147, [[-0.5, 0.0, 0.5]])
    """
    x = _float("logits", logits)
    batch_axes, class_axes = _class_axes(axis, x.ndim)
    order = batch_axes + class_axes
    batch_shape = tuple(x.shape[k] for k in batch_axes)
    C = int(np.prod([x.shape[k] for k in class_axes]))

    def flat(a):
        return np.transpose(a, order).reshape(batch_shape + (C,))

    V.check_no_nan("logits", x)
    mask = np.ones(x.shape, bool)
    if where is not None:
        w = np.asarray(where, bool)
        if w.ndim != x.ndim:
            w = np.expand_dims(w, class_axes)
        mask = np.broadcast_to(w, x.shape)
    m2, x2 = flat(mask), flat(x)
    empty = ~m2.any(axis=-1)
    xm = np.where(m2, x2, -np.inf)
    xm[empty] = 0.0                       # no class included: a dummy row, zeroed below
    V.check_logits("logits", xm, axis=-1)
    t = V.as_numeric_array("labels", labels)
    if t.dtype.kind in "iu":
        if t.shape != batch_shape:
            raise ValueError(f"labels holds class indices, so its shape must be {batch_shape}, "
                             f"got {t.shape}")
        index, _ = V.index_targets(t, batch_shape + (C,), len(batch_shape))
        _, p, lse = log_softmax_parts(xm, with_lse=True)
        rows = lse[..., 0] - np.take_along_axis(x2, index[..., None], axis=-1)[..., 0]
        g = p
        np.put_along_axis(g, index[..., None],
                          np.take_along_axis(g, index[..., None], axis=-1) - 1, axis=-1)
    else:
        if t.shape != x.shape:
            raise ValueError(f"labels holds label rows, so its shape must be the logits' "
                             f"{x.shape}, got {t.shape}")
        q = np.where(m2, flat(t.astype(x.dtype, copy=False)), 0)
        V.check_nonnegative_finite("labels", q)
        P = _softmax._problem(xm, q, -1, None, None, 0.0, 0.0, None, "none",
                              check_values=False)
        rows = _softmax._rows(P, P.x)[0].reshape(batch_shape)
        g = P.finish_grad(_softmax._row_grad(P), scaled=True)
    rows = np.where(empty, 0.0, rows).astype(x.dtype)
    g = np.where(empty[..., None], 0.0, g).astype(x.dtype)
    inverse = np.argsort(order)
    grad = g.reshape(batch_shape + tuple(x.shape[k] for k in class_axes)).transpose(inverse)
    return rows, grad


def _index_or_probs(name, targets, x):
    t = V.as_numeric_array(name, targets)
    N, C = x.shape
    if t.dtype.kind in "iu":
        if t.shape != (N,):
            raise ValueError(f"{name} holds class indices so its shape must be ({N},), got {t.shape}")
        if t.size and (t.min() < 0 or t.max() >= C):
            raise ValueError(f"{name} holds class indices outside [0, {C - 1}]")
        return np.eye(C, dtype=x.dtype)[t]
    q = t.astype(x.dtype, copy=False)
    if q.shape != x.shape:
        raise ValueError(f"{name} must have the input's shape {x.shape}, got {q.shape}")
    V.check_nonnegative_finite(name, q)
    return q


def sigmoid_cross_entropy_elements(logits, targets, *, pos_weight=None):
    r"""Elementwise sigmoid cross-entropy, value and derivative.

    .. math::

        \ell = \mathrm{pw}\,y\,\operatorname{softplus}(-x)
             + (1-y)\operatorname{softplus}(x),
        \qquad
        \frac{\partial\ell}{\partial x} = (1-y)\,\sigma(x) - \mathrm{pw}\,y\,\sigma(-x).

    optax ``sigmoid_binary_cross_entropy``, Keras ``from_logits=True``
    (before its mean over the last axis), PyTorch
    ``binary_cross_entropy_with_logits`` elementwise.  Targets may be any real
    (optax and Keras do not check them); both softplus terms are
    non-negative.

    Examples
    --------
    >>> from ce_reference.conventions import sigmoid_cross_entropy_elements
    >>> l, g = sigmoid_cross_entropy_elements([0.0], [1.0])
    >>> round(float(l[0]), 6), g.tolist()
    (0.693147, [-0.5])
    """
    x = _float("logits", logits)
    check_input_values("logits", "logits", x)
    # BCE with logits' own problem (shapes) and elementwise formulas; any real target
    # is evaluated by the same formula (optax and Keras do not check them).
    P = _bce_logits._problem(x, targets, None, pos_weight, "none", check_values=False)
    a, b = _bce_logits.coefficients(P.operand("targets"), P.operand("pos_weight"))
    return _bce_logits.elementwise_loss(x, a, b), _bce_logits.elementwise_grad(x, a, b)


# --------------------------------------------------------------------------- probability paths

def clamped_binary_cross_entropy(probs, targets, *, weight=None, log_min=TORCH_LOG_CLAMP,
                                 reduction="mean"):
    r"""PyTorch ``F.binary_cross_entropy``: each log clamped from below.

    .. math::

        \ell_i = -w_i\bigl[y_i \max(\log p_i, L) + (1-y_i)\max(\log(1-p_i), L)\bigr],
        \quad L = -100,

    reduced by ``mean`` (over all elements; the weight is not in the
    denominator), ``sum`` or ``none``.  The gradient is the derivative *of
    this function*:

    .. math::

        \frac{\partial \ell_i}{\partial p_i}
        = -w_i\Bigl[\frac{y_i}{p_i}\,[\log p_i \ge L]
          - \frac{1-y_i}{1-p_i}\,[\log(1-p_i) \ge L]\Bigr],

    each term 0 where its coefficient is 0.  Where a clamp is active the
    term's slope is 0; PyTorch's own backward uses
    :math:`w(p-y)/\max(p(1-p), 10^{-12})` instead (pytorch#103316), so the
    two disagree exactly there.  ``log(1 - p)`` is evaluated as
    ``log1p(-p)``.

    Examples
    --------
    >>> from ce_reference.conventions import clamped_binary_cross_entropy
    >>> v, g = clamped_binary_cross_entropy([0.0, 0.5], [1.0, 1.0], reduction="none")
    >>> v.round(6).tolist(), g.tolist()
    ([100.0, 0.693147], [0.0, -2.0])
    """
    P = _bce._problem(_float("probs", probs), targets, weight, None, reduction)  # its checks
    p, y, w = P.x, P.operand("targets"), P.operand("weight")
    L = float(log_min)
    with np.errstate(divide="ignore"):
        lp, lq = np.log(p), np.log1p(-p)
    on_p, on_q = lp >= L, lq >= L                          # clamp inactive
    loss = -(mul0(y, np.maximum(lp, L)) + mul0(1 - y, np.maximum(lq, L)))
    with np.errstate(divide="ignore"):
        g = (np.divide(1 - y, 1 - p, out=np.zeros_like(p), where=(1 - y != 0) & on_q)
             - np.divide(y, p, out=np.zeros_like(p), where=(y != 0) & on_p))
    if w is not None:
        loss, g = mul0(w, loss), mul0(w, g)
    flat_l, flat_g = loss.reshape(-1), g.reshape(-1, 1)
    v, G = weighted_reduction(flat_l, flat_g, reduction=reduction, denominator="count")
    if reduction == "none":
        v = v.reshape(p.shape)
    return v, G.reshape(p.shape)


def clipped_binary_cross_entropy_elements(probs, targets, *, eps=KERAS_EPSILON):
    r"""Elementwise binary cross-entropy of clipped probabilities (Keras).

    With :math:`c = \operatorname{clip}(p, \epsilon, 1-\epsilon)`:

    .. math::

        \ell = -\bigl[y \log c + (1-y)\log(1-c)\bigr],
        \qquad
        \frac{\partial\ell}{\partial p} = \Bigl[\frac{1-y}{1-c} - \frac{y}{c}\Bigr]
        [\epsilon \le p \le 1-\epsilon].

    Keras ``BinaryCrossentropy(from_logits=False)`` on every backend
    (``eps = keras.config.epsilon()``, 1e-7 by default); the loss is at most
    :math:`-\log 10^{-7} \approx 16.12` per element.  Targets are not checked
    by Keras; any real :math:`y` is evaluated by the same formula here.

    Examples
    --------
    >>> from ce_reference.conventions import clipped_binary_cross_entropy_elements
    >>> l, g = clipped_binary_cross_entropy_elements([0.0], [1.0])
    >>> round(float(l[0]), 4), g.tolist()
    (16.1181, [0.0])
    """
    p = _float("probs", probs)
    # BCE's own problem (probabilities checked, targets any real: Keras does not check
    # them) and formulas, with its clip of p to [eps, 1 - eps] and the clip's derivative.
    check_input_values("probabilities", "probs", p)
    P = _bce._problem(p, targets, None, None, "none", check_values=False)
    P.eps = p.dtype.type(eps)
    y = P.operand("targets")
    return _bce._loss(P, p, y, None), _bce._grad(P, p, y, None)


def clipped_categorical_cross_entropy_rows(probs, targets, *, eps, renormalize):
    r"""Per-row categorical cross-entropy of renormalised and/or clipped probabilities.

    With :math:`s_n = \sum_c p_{n,c}`, :math:`r = p/s` (``renormalize``) or
    :math:`r = p`, and :math:`c = \operatorname{clip}(r, \epsilon, 1-\epsilon)`:

    .. math::

        \ell_n = -\sum_k q_{n,k}\log c_{n,k},
        \qquad
        u_{n,k} = -\frac{q_{n,k}}{c_{n,k}}\,[\epsilon \le r_{n,k} \le 1-\epsilon],

    .. math::

        \frac{\partial \ell_n}{\partial p_{n,j}} =
        \frac{1}{s_n}\Bigl(u_{n,j} - \sum_k u_{n,k}\, r_{n,k}\Bigr)
        \;\text{(renormalize)}, \qquad u_{n,j} \;\text{(otherwise)},

    from :math:`\partial r_k/\partial p_j = (\delta_{kj} - r_k)/s`.  Keras
    ``CategoricalCrossentropy``/``SparseCategoricalCrossentropy`` with
    ``from_logits=False``: ``renormalize=True, eps=1e-7``.  scikit-learn
    ``log_loss`` (>= 1.5): ``renormalize=False, eps=np.finfo(dtype).eps``.

    Parameters
    ----------
    probs : array_like, shape ``(N, C)``, entries in [0, 1]; with
        ``renormalize`` every row must have a positive sum.
    targets : array_like, shape ``(N, C)`` non-negative, or ``(N,)`` integers
    eps : float
    renormalize : bool

    Returns
    -------
    (rows, grad) : shapes ``(N,)`` and ``(N, C)``

    Examples
    --------
    >>> from ce_reference.conventions import clipped_categorical_cross_entropy_rows
    >>> l, g = clipped_categorical_cross_entropy_rows([[0.2, 0.3, 0.5]], [0], eps=1e-7,
    ...                                               renormalize=True)
    >>> round(float(l[0]), 6), g.round(12).tolist()
    (1.609438, [[-4.0, 1.0, 1.0]])
    """
    p = _float("probs", probs)
    if p.ndim != 2:
        raise ValueError(f"probs must have shape (N, C), got {p.shape}")
    V.check_unit_interval("probs", p, "probabilities")
    q = _index_or_probs("targets", targets, p)
    dt = p.dtype.type
    if renormalize:
        s = np.sum(p, axis=1, keepdims=True)
        if p.shape[0] and (s == 0).any():
            raise ValueError("probs has a row summing to 0; it cannot be renormalised")
        r = p / s
    else:
        s, r = None, p
    lo, hi = dt(eps), dt(1 - eps)
    c = np.clip(r, lo, hi)
    rows = -np.sum(_sp.xlogy(q, c), axis=1)
    u = np.where((r >= lo) & (r <= hi), -q / c, 0)
    if renormalize:
        g = (u - np.sum(u * r, axis=1, keepdims=True)) / s
    else:
        g = u
    return rows, g


# --------------------------------------------------------------------------- scikit-learn

def half_binomial(raw_prediction, y_true):
    r"""scikit-learn ``HalfBinomialLoss``: loss, gradient and Hessian per sample.

    .. math::

        \ell = \log(1 + e^{x}) - y x
             = y\operatorname{softplus}(-x) + (1-y)\operatorname{softplus}(x),

    .. math::

        \frac{\partial\ell}{\partial x} = \sigma(x) - y
        = (1-y)\,\sigma(x) - y\,\sigma(-x), \qquad
        \frac{\partial^2\ell}{\partial x^2} = \sigma(x)\,\sigma(-x).

    (The second form of each is the one evaluated: no cancellation, no
    overflow for any finite :math:`x`.)

    Examples
    --------
    >>> from ce_reference.conventions import half_binomial
    >>> l, g, h = half_binomial([0.0], [1.0])
    >>> round(float(l[0]), 6), g.tolist(), h.tolist()
    (0.693147, [-0.5], [0.25])
    """
    x = _float("raw_prediction", raw_prediction)
    loss, grad = sigmoid_cross_entropy_elements(x, y_true)
    return loss, grad, _bce_logits._sigmoid_prime(x)


def half_multinomial(raw_prediction, y_true):
    r"""scikit-learn ``HalfMultinomialLoss``: loss, gradient and diagonal Hessian.

    .. math::

        \ell_n = \operatorname{logsumexp}(x_n) - x_{n,y_n},\qquad
        \frac{\partial\ell_n}{\partial x_{n,k}} = p_{n,k} - [k = y_n],\qquad
        \frac{\partial^2\ell_n}{\partial x_{n,k}^2} = p_{n,k}(1 - p_{n,k}),

    with :math:`p = \operatorname{softmax}(x_n)` (scikit-learn returns only the
    diagonal of the Hessian).  ``y_true`` holds class indices (scikit-learn
    stores them as floats; they must be whole numbers in ``[0, C)``).

    Examples
    --------
    >>> from ce_reference.conventions import half_multinomial
    >>> l, g, h = half_multinomial([[0.0, 0.0]], [1.0])
    >>> round(float(l[0]), 6), g.tolist(), h.tolist()
    (0.693147, [[0.5, -0.5]], [[0.25, 0.25]])
    """
    x = _float("raw_prediction", raw_prediction)
    y = V.as_numeric_array("y_true", y_true)
    if y.shape != x.shape[:1]:
        raise ValueError(f"y_true must have shape ({x.shape[0]},), got {y.shape}")
    if y.size and (np.any(y != np.round(y)) or y.min() < 0 or y.max() >= x.shape[1]):
        raise ValueError(f"y_true must hold whole class indices in [0, {x.shape[1] - 1}]")
    loss, grad = softmax_cross_entropy_rows(x, y.astype(np.int64))
    _, p = log_softmax_parts(x)
    return loss, grad, p * (1 - p)


# --------------------------------------------------------------------------- the table

#: Each framework's documented choice, and how this module reproduces it.
#: Keys are stable identifiers used by the audit report.
CONVENTIONS = {
    "smoothing-uniform": (
        "Label smoothing q' = (1-eps) q + eps/C",
        "PyTorch cross_entropy, optax smooth_labels, Keras CategoricalCrossentropy",
        "smooth_labels(..., scheme='uniform')"),
    "smoothing-binary": (
        "Label smoothing y' = (1-eps) y + eps/2 on each element",
        "Keras BinaryCrossentropy",
        "smooth_labels(..., scheme='binary')"),
    "smoothing-off-class": (
        "Label smoothing: 1-eps on the true class, eps/(C-1) on each other class",
        "Megatron-LM vocab_parallel_cross_entropy, t5x",
        "smooth_labels(..., scheme='off_class')"),
    "torch-log-clamp": (
        "Each log term clamped at -100 (loss <= 100 per element)",
        "PyTorch binary_cross_entropy",
        "clamped_binary_cross_entropy(log_min=-100)"),
    "keras-clip": (
        "Probabilities renormalised to sum 1, then clipped to [1e-7, 1-1e-7]",
        "Keras 3 CategoricalCrossentropy / SparseCategoricalCrossentropy / "
        "BinaryCrossentropy (no renormalisation for binary), from_logits=False",
        "clipped_categorical_cross_entropy_rows(eps=1e-7, renormalize=True), "
        "clipped_binary_cross_entropy_elements(eps=1e-7)"),
    "sklearn-clip": (
        "Probabilities clipped to [eps, 1-eps], eps = finfo(dtype).eps, not renormalised",
        "scikit-learn metrics.log_loss (>= 1.5)",
        "clipped_categorical_cross_entropy_rows(eps=finfo.eps, renormalize=False)"),
    "mean-target-weight": (
        "mean = sum_n w_{y_n} l_n / sum_n w_{y_n} over kept rows; all ignored -> NaN",
        "PyTorch cross_entropy / nll_loss with class indices",
        "weighted_reduction(denominator='weights', zero_division='nan'); the core "
        "softmax_cross_entropy"),
    "mean-rows": (
        "mean = sum_n l_n / N (weights not in the denominator)",
        "PyTorch cross_entropy with probability targets, binary_cross_entropy[_with_logits]",
        "weighted_reduction(denominator='count')"),
    "keras-sum-over-batch-size": (
        "sum_over_batch_size = sum_n s_n k_n l_n / sum_n k_n (sample weights not in "
        "the denominator; all masked -> 0); BinaryCrossentropy first averages over "
        "the last axis",
        "Keras 3 Loss default reduction",
        "weighted_reduction(denominator='count', zero_division='zero')"),
    "sample-weight-mean": (
        "mean = sum_n s_n l_n / sum_n s_n",
        "scikit-learn log_loss and BaseLoss.__call__ (np.average), Keras "
        "mean_with_sample_weight",
        "weighted_reduction(denominator='weights')"),
    "optax-where-axes": (
        "Per-example softmax cross-entropy over a tuple of class axes (flattened, integer "
        "labels as flat indices) with a where mask per example or per logit (masked rows 0)",
        "optax softmax_cross_entropy[_with_integer_labels](axis=..., where=...) >= 0.2.4",
        "masked_softmax_cross_entropy(axis=..., where=...)"),
    "no-reduction": (
        "Per-example losses; the caller reduces",
        "optax (every loss), scikit-learn _loss .loss()",
        "softmax_cross_entropy_rows / sigmoid_cross_entropy_elements"),
}


# --------------------------------------------------------------------------- Keras focal / KL

def _keras_bounds(dtype, eps):
    """Keras' clip bounds as the case's dtype holds them (``ops.clip`` casts them)."""
    dt = np.dtype(dtype).type
    return float(dt(eps)), float(dt(1 - eps))


def _sigmoids(x):
    """``(sigma(x), sigma(-x))`` in float64, each without cancellation."""
    return _sp.expit(x), _sp.expit(-x)


def keras_binary_focal_elements(logits, targets, *, gamma=2.0, alpha=None, eps=KERAS_EPSILON,
                                sigmoid=None):
    r"""Keras ``binary_focal_crossentropy(from_logits=True)`` per element, and its derivative.

    With :math:`p = \sigma(x)`, :math:`\bar p = \operatorname{clip}(p, \epsilon, 1-\epsilon)`
    (bounds in the input's dtype), :math:`u = 1 - p_t = y(1-p) + (1-y)p` (the *unclipped*
    probability) and :math:`a = y\alpha + (1-y)(1-\alpha)` (1 when ``alpha`` is None:
    ``apply_class_balancing=False``):

    .. math::

        \ell = a\,u^\gamma B,\quad B = -y\log\bar p - (1-y)\log(1-\bar p),\qquad
        \frac{\partial\ell}{\partial x} = a\bigl[\gamma(1-2y)\,s\,u^{\gamma-1} B
        + u^\gamma(p - y)[\epsilon < p < 1-\epsilon]\bigr],\quad s = p(1-p).

    Exactly (``rounded=False``): :math:`\log p = -\operatorname{softplus}(-x)`,
    :math:`1 - p = \sigma(-x)`, and :math:`s u^{\gamma-1} = \sigma(x) u^\gamma`
    (:math:`y = 1`) or :math:`\sigma(-x) u^\gamma` (:math:`y = 0`), finite where
    :math:`u` underflows.  ``sigmoid`` (an array of :math:`p` in the input's dtype, as a
    framework computed it) evaluates the same formulas at those rounded values (what Keras'
    probability-space computation sees;
    :math:`\partial B/\partial p = (\bar p - y)/(\bar p(1-\bar p))` inside the clip, half
    of it on a bound, where ``jnp.clip`` splits the derivative of a tie).
    Results in float64.
    """
    x = np.asarray(logits)
    dtype = x.dtype if x.dtype.kind == "f" else np.dtype(np.float64)
    lo, hi = _keras_bounds(dtype, eps)
    x = x.astype(np.float64)
    y = np.asarray(targets, np.float64)
    p, q = _sigmoids(x)
    rounded = sigmoid is not None
    if rounded:
        p = np.asarray(sigmoid, np.float64)
        q = 1.0 - p
    inside = (p > lo) & (p < hi)
    pc = np.clip(p, lo, hi)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if rounded:
            log_p, log_q = np.log(pc), np.log(1.0 - pc)
            tie = np.where((p == lo) | (p == hi), 0.5, 0.0)    # jnp.clip splits a tie
            dB = np.where(inside, 1.0, tie) * (pc - y) / (pc * (1.0 - pc)) * p * q
        else:
            log_p = np.where(inside, -np.logaddexp(0.0, -x), np.log(pc))
            log_q = np.where(inside, -np.logaddexp(0.0, x), np.log(1.0 - pc))
            dB = np.where(inside, p - y, 0.0)
        B = -(y * log_p + (1.0 - y) * log_q)
        u = y * q + (1.0 - y) * p
        s_over_u = np.where(u > 0, p * q / np.where(u > 0, u, 1.0),
                            np.where(y == 1, p, q))
        ug = u ** gamma
        dF = gamma * (1.0 - 2.0 * y) * s_over_u * ug
    a = 1.0 if alpha is None else y * alpha + (1.0 - y) * (1.0 - alpha)
    value = a * ug * B
    grad = a * (dF * B + ug * dB)
    return value, grad


def keras_categorical_focal_rows(logits, targets, *, gamma=2.0, alpha=0.25, eps=KERAS_EPSILON):
    r"""Keras ``categorical_focal_crossentropy(from_logits=True)`` per row, and its gradient.

    With :math:`p = \operatorname{softmax}(x)` and :math:`o = \operatorname{clip}(p,
    \epsilon, 1-\epsilon)` (Keras renormalises :math:`p / \sum p` first: the identity):

    .. math::

        \ell = \alpha \sum_c y_c (1-o_c)^\gamma(-\log o_c),\qquad
        \frac{\partial\ell}{\partial x} = p \odot (g - \textstyle\sum_c p_c g_c),

    :math:`g_c = \alpha y_c[\gamma(1-o_c)^{\gamma-1}\log o_c - (1-o_c)^\gamma/o_c]
    [\epsilon < p_c < 1-\epsilon]`; ``alpha`` is a plain multiplier (a scalar scales the
    loss).  Inside the clip :math:`\log o = \log\operatorname{softmax}(x)` and
    :math:`1 - o = -\operatorname{expm1}(\log o)`, exact.  Results in float64.
    """
    x = np.asarray(logits)
    dtype = x.dtype if x.dtype.kind == "f" else np.dtype(np.float64)
    lo, hi = _keras_bounds(dtype, eps)
    x = x.astype(np.float64)
    y = np.asarray(targets, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        lp = _sp.log_softmax(x, axis=-1)
        p = np.exp(lp)
        inside = (p > lo) & (p < hi)
        log_o = np.where(inside, lp, np.log(np.clip(p, lo, hi)))
        o = np.where(inside, p, np.clip(p, lo, hi))
        one_minus_o = np.where(inside, -np.expm1(lp), 1.0 - o)
        terms = mul0(y, one_minus_o ** gamma * -log_o)
        g = np.where(inside & (y != 0), alpha * y * (gamma * one_minus_o ** (gamma - 1.0) * log_o
                                                     - one_minus_o ** gamma / o), 0.0)
    rows = alpha * np.sum(terms, axis=-1)
    grad = p * (g - np.sum(p * g, axis=-1, keepdims=True))
    return rows, grad


def keras_kl_divergence_rows(probs, targets, *, eps=KERAS_EPSILON):
    r"""Keras ``kl_divergence(y_true, y_pred)`` per row, and its gradient in ``y_pred``.

    Both arguments are probabilities, clipped to :math:`[\epsilon, 1]`:
    :math:`\ell = \sum_c \bar t_c \log(\bar t_c / \bar p_c)` with
    :math:`\bar t = \operatorname{clip}(t, \epsilon, 1)`, :math:`\bar p =
    \operatorname{clip}(p, \epsilon, 1)`; :math:`\partial\ell/\partial p_c = -\bar t_c /
    \bar p_c\,m_c` with :math:`m_c = 1` inside :math:`(\epsilon, 1)`, 0 outside, and 1/2
    on a bound (``jnp.clip`` = ``min(max(.))`` splits the derivative at a tie).
    Results in float64.
    """
    x = np.asarray(probs)
    dtype = x.dtype if x.dtype.kind == "f" else np.dtype(np.float64)
    lo, _ = _keras_bounds(dtype, eps)
    x = x.astype(np.float64)
    t = np.clip(np.asarray(targets, np.float64), lo, 1.0)
    pc = np.clip(x, lo, 1.0)
    rows = np.sum(t * (np.log(t) - np.log(pc)), axis=-1)
    m = np.where((x > lo) & (x < 1.0), 1.0, np.where((x == lo) | (x == 1.0), 0.5, 0.0))
    return rows, -t / pc * m
