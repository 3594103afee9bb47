r"""Softmax cross-entropy on logits (PyTorch's ``F.cross_entropy``): one loss, one module.

Targets are either class indices (integer dtype, the input's shape without the
class axis) or probabilities / one-hot rows (any other dtype, the input's
shape); the dtype decides, as in PyTorch.  The class axis is moved last
internally (the problem's ``(pre, post, C)`` view); every result is moved back.

Two options of today's large models are built in: ``softcap`` (Gemma 2's
logit soft-capping ``s tanh(x / s)``, applied before everything else) and
``z_loss`` (PaLM's ``z lse(x)^2`` on every kept row).

The per-row formulas (:func:`_rows`, :func:`_row_grad`) serve the plain
functions, the complex-step oracle and the Hessian-vector product; the fused
``value_and_grad`` is the hand-written kernel :mod:`ce_reference.kernels.softmax`.
"""

from __future__ import annotations

import math

import numpy as np

from .. import backends
from .. import options as O
from .._problem import ClassProblem, deferred_values
from .._reduction import grad_scale, reduce_parts, weighted_count
from .._special import log_softmax_parts, mul0, sech2, soft_cap
from .._validation import check_float, check_label_smoothing
from ..kernels import softmax as _kernel
from ..spec import BenchCase, LossSpec, Option, option_set
from ._hvp import class_last

__all__ = [
    "softmax_cross_entropy",
    "softmax_cross_entropy_grad",
    "softmax_cross_entropy_value_and_grad",
    "softmax_cross_entropy_hvp",
]


def _check_z_loss(z_loss) -> float:
    return check_float("z_loss", z_loss, 0.0, math.inf, hi_open=True)


def _check_softcap(softcap):
    if softcap is None:
        return None
    return check_float("softcap", softcap, 0.0, math.inf, lo_open=True, hi_open=True)


def _problem(logits, targets, axis, weight, ignore_index, label_smoothing, z_loss, softcap,
             reduction, check_values=True):
    """Validated arguments (see :class:`ClassProblem`), plus the loss's own options.

    The z-loss has its own ``mean`` denominator, the number of kept rows
    (:attr:`z_denominator`); when the cross-entropy's denominator is 0 the whole
    ``mean`` is NaN and every gradient is zero (:attr:`z_scale` is then 0 too).
    """
    P = ClassProblem(logits, targets, input_name="logits", input_kind="logits", axis=axis,
                     weight=weight, ignore_index=ignore_index, reduction=reduction,
                     probs_what="probabilities / one-hot", check_values=check_values)
    P.label_smoothing = check_label_smoothing(label_smoothing)
    P.z_loss = _check_z_loss(z_loss)
    P.softcap = _check_softcap(softcap)
    # the number of kept rows: the CE denominator itself unless class weights enter it
    P.z_denominator = (weighted_count(P.keep) if P.index is not None and P.weight is not None
                       else P.denominator)
    P.z_scale = 0.0 if P.scale == 0 else grad_scale(P.reduction, P.z_denominator)
    return P


def _capped(P, x):
    """The logits after soft-capping (``x`` itself without ``softcap``)."""
    return x if P.softcap is None else soft_cap(x, x.real.dtype.type(P.softcap))


def _coefficients(P):
    """Per-row coefficients of the loss, as ``(c_nll, c_smooth, A)``.

    Index targets: ``c_nll = keep (1 - eps) w_y`` multiplies ``-log p_y`` and
    ``c_smooth = keep eps / C`` multiplies ``sum_c w_c (-log p_c)`` (PyTorch's
    weighting: the true-class term carries ``w_y``, the uniform term each
    ``w_c``); ``A`` is None.  Probability targets: ``A_c = w_c q'_c`` with
    ``q' = (1 - eps) q + eps / C``; the two others are None.
    """
    cdt, ls = P.cdt, P.label_smoothing
    if P.index is not None:
        wy = np.ones(P.index.shape, cdt) if P.weight is None else P.weight[P.index]
        keepf = P.keep.astype(cdt)
        return keepf * cdt.type(1 - ls) * wy, keepf * cdt.type(ls / P.C), None
    q = P.probs if ls == 0 else P.probs * cdt.type(1 - ls) + cdt.type(ls / P.C)
    return None, None, (q if P.weight is None else q * P.weight)


def _kept(P):
    return np.ones((P.pre, P.post), bool) if P.keep is None else P.keep


def _rows(P, x):
    """Per-row ``(cross-entropy, z-loss)`` for the class-last logits ``x`` (normally ``P.x``);
    the z-loss rows are None without ``z_loss``.  Complex-safe: the complex-step oracle
    passes a perturbed complex copy through this same code."""
    neg_logp, _, lse = log_softmax_parts(_capped(P, x), with_lse=True)
    z_rows = None
    if P.z_loss:
        with np.errstate(over="ignore"):        # lse^2 beyond the range: inf, rounded right
            z_rows = np.where(_kept(P), P.cdt.type(P.z_loss) * lse[..., 0] ** 2, 0)
    c_nll, c_smooth, A = _coefficients(P)
    if A is not None:
        return np.sum(mul0(A, neg_logp), axis=-1), z_rows
    nll = np.take_along_axis(neg_logp, P.index[..., None], axis=-1)[..., 0]
    rows = mul0(c_nll, nll)
    if P.label_smoothing:
        per_class = neg_logp if P.weight is None else mul0(P.weight, neg_logp)
        rows = rows + mul0(c_smooth, np.sum(per_class, axis=-1))
    return rows, z_rows


def _reduce(P, rows, z_rows):
    """The reduced loss: ``sum_n ce_n / D + sum_n z_n / D_z`` for ``mean``."""
    if z_rows is None:
        return P.reduce(rows)
    return reduce_parts(((rows, P.denominator), (z_rows, P.z_denominator)), P.reduction,
                        P.rdt, P.batch_shape)


def _row_mass(P, c_nll, c_smooth, A):
    """``S = sum_c A_c`` per row: the total target mass the gradient multiplies ``p`` by."""
    if A is not None:
        return np.sum(A, axis=-1, keepdims=True)
    W = P.C if P.weight is None else np.sum(P.weight, dtype=np.float64)
    return (c_nll + c_smooth * P.x.dtype.type(W))[..., None]


def _cross_entropy_grad(P, p):
    """d(row cross-entropy)/du with the class axis last: ``p * sum_c A_c - A``."""
    c_nll, c_smooth, A = _coefficients(P)
    if A is not None:
        return p * _row_mass(P, c_nll, c_smooth, A) - A
    g = p * _row_mass(P, c_nll, c_smooth, A)
    if P.label_smoothing:
        g -= c_smooth[..., None] * (1 if P.weight is None else P.weight)
    idx = P.index[..., None]
    np.put_along_axis(g, idx, np.take_along_axis(g, idx, axis=-1) - c_nll[..., None], axis=-1)
    return g


def _z_factor(P, lse):
    """Per-row factor ``2 z lse s_z`` (kept rows) of the z-loss gradient ``2 z lse s_z p``."""
    return np.where(_kept(P)[..., None], P.cdt.type(2 * P.z_loss * P.z_scale) * lse, 0)


def _grad_u(P, u):
    """The scaled gradient with respect to the (capped) logits ``u``: ``(p S - A) s``
    plus ``2 z lse p s_z``; returns it with ``p`` and ``lse``."""
    _, p, lse = log_softmax_parts(u, with_lse=True)
    g = _cross_entropy_grad(P, p) * P.cdt.type(P.scale)
    if P.z_loss:
        g = g + _z_factor(P, lse) * p
    return g, p, lse


def _row_grad(P):
    """The gradient of the reduced loss, class axis last (scaled).

    ``softcap``: times ``du/dx = sech^2(x / s)`` (:func:`~ce_reference._special.sech2`,
    never ``1 - tanh^2``)."""
    if not P.z_loss and P.softcap is None:   # the classic loss: one product by the scale
        _, p = log_softmax_parts(P.x)
        return _cross_entropy_grad(P, p) * P.cdt.type(P.scale)
    g, _, _ = _grad_u(P, _capped(P, P.x))
    if P.softcap is not None:
        g = g * sech2(P.x / P.cdt.type(P.softcap))
    return g


def softmax_cross_entropy(logits, targets, *, axis=-1, weight=None, ignore_index=None,
                          label_smoothing=0.0, z_loss=0.0, softcap=None, reduction="mean"):
    r"""Softmax cross-entropy of logits (PyTorch's ``F.cross_entropy``).

    With :math:`-\log p_{n,c} = \operatorname{logsumexp}(x_n) - x_{n,c}` and
    label smoothing :math:`\varepsilon`:

    .. math::

        \ell_n = \sum_c w_c\, q'_{n,c}\,\bigl(\operatorname{logsumexp}(x_n) - x_{n,c}\bigr),
        \qquad q' = (1 - \varepsilon)\, q + \varepsilon / C,

    where for index targets :math:`q` is one-hot and, as in PyTorch, the
    true-class term carries :math:`w_{y_n}` while the uniform term carries each
    :math:`w_c` (``(1-ε) w_y (-log p_y) + (ε/C) Σ_c w_c (-log p_c)``); rows with
    ``targets == ignore_index`` contribute 0.

    With ``softcap`` :math:`s` the logits are first replaced by
    :math:`s\tanh(x/s)` (Gemma 2; a ``-inf`` logit stays ``-inf``), and every
    term above -- smoothing, weights, the z-loss -- uses the capped logits.
    With ``z_loss`` :math:`z` each kept row adds
    :math:`z\,\operatorname{logsumexp}(x_n)^2` (PaLM), not multiplied by the
    class weight:

    .. math::

        \texttt{mean} = \frac{\sum_n \ell_n}{D}
        + \frac{\sum_{n\,\mathrm{kept}} z \operatorname{lse}(x_n)^2}{D_z},

    :math:`D` the denominator below, :math:`D_z` the number of kept rows (the
    number of rows for probability targets).  Without ``weight``
    :math:`D = D_z` and this is the PaLM / t5x definition; with class weights
    it is Liger Kernel's ``lse_square_scale`` (the z-loss unweighted, over the
    count of kept rows).  ``sum`` and ``none`` add the two terms per row.

    Parameters
    ----------
    logits : array_like, shape ``(..., C, ...)``
        Real logits, class axis ``axis``.  ``-inf`` marks a class with
        probability 0; NaN, ``+inf`` and rows that are all ``-inf`` are errors.
    targets : array_like
        Integer class indices in ``[0, C)`` of the batch shape (the input's
        shape without ``axis``), or probabilities / one-hot rows of the input's
        shape (any non-integer dtype).
    axis : int, default -1
        The class axis.  (PyTorch fixes it at 1; pass ``axis=1`` for its layout.)
    weight : array_like of shape ``(C,)``, optional
        Non-negative per-class weights.
    ignore_index : int, optional
        Index targets only.  ``None`` (default) ignores nothing and any index
        outside ``[0, C)`` is an error; an int drops the rows whose target
        equals it (zero loss, zero gradient, not in the ``mean`` denominator).
        It may be negative (PyTorch's own default is -100) or a valid class.
    label_smoothing : float in [0, 1], default 0
    z_loss : float >= 0, default 0
        Coefficient :math:`z` of the z-loss (t5x, OLMo 2: 1e-4).
    softcap : float > 0, optional
        Soft-capping :math:`s` of the logits (Gemma 2: 30); ``None`` (default)
        leaves them as they are.
    reduction : {"mean", "sum", "none"}
        ``mean`` divides by :math:`\sum_{n \text{ kept}} w_{y_n}` (the count of
        kept rows without weights) for index targets and by the number of rows
        for probability targets, exactly as PyTorch does (PyTorch #107680).

    Returns
    -------
    loss : NumPy scalar, or array of the batch shape for ``"none"``

    Notes
    -----
    ``logsumexp(x) - x_c`` is computed as ``(m - x_c) + log1p(t)`` with ``m``
    the row maximum and ``t`` the sum of the other shifted exponentials, so
    both terms are non-negative and a confident row keeps its accuracy.
    ``mean`` over an empty batch, over all-ignored rows, or with target
    weights summing to 0 is NaN (PyTorch's 0/0); the gradient is then zero --
    the z-loss's too, although its own denominator may be positive (the whole
    loss follows the zero-denominator rule, so a NaN value never comes with a
    non-zero gradient; Liger gives NaN for both).

    Examples
    --------
    >>> import numpy as np, ce_reference as ce
    >>> z = np.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]])
    >>> float(ce.softmax_cross_entropy(z, np.array([0, 1])))
    0.3185397696491856
    """
    P = _problem(logits, targets, axis, weight, ignore_index, label_smoothing, z_loss, softcap,
                 reduction)
    return _reduce(P, *_rows(P, P.x))


def softmax_cross_entropy_grad(logits, targets, *, axis=-1, weight=None, ignore_index=None,
                               label_smoothing=0.0, z_loss=0.0, softcap=None,
                               reduction="mean"):
    r"""Gradient of :func:`softmax_cross_entropy` with respect to ``logits``.

    .. math::

        \frac{\partial \ell_n}{\partial x_{n,k}}
        = p_{n,k} \sum_c w_c\, q'_{n,c} - w_k\, q'_{n,k},
        \qquad p_n = \operatorname{softmax}(x_n),

    which is ``softmax(x) - q`` without weights or smoothing; times
    ``1/denominator`` for ``mean``.  Ignored rows get exactly zero.  The
    z-loss adds :math:`2 z \operatorname{lse}(x_n)\, p_{n,k}` (times
    ``1/D_z`` for ``mean``); with ``softcap`` the whole gradient with respect
    to the capped logits is multiplied by
    :math:`\operatorname{sech}^2(x/s) = 4e/(1+e)^2`, :math:`e = e^{-2|x|/s}`
    (not :math:`1-\tanh^2`, which cancels to 0 for :math:`|x/s| \gtrsim 9` in
    float32).  Same arguments as the loss; returns an array of ``logits``'
    shape.

    Examples
    --------
    >>> import numpy as np, ce_reference as ce
    >>> ce.softmax_cross_entropy_grad(np.zeros((1, 2)), np.array([0])).tolist()
    [[-0.5, 0.5]]
    """
    P = _problem(logits, targets, axis, weight, ignore_index, label_smoothing, z_loss, softcap,
                 reduction)
    return P.finish_grad(_row_grad(P), scaled=True)


def softmax_cross_entropy_value_and_grad(logits, targets, *, axis=-1, weight=None,
                                         ignore_index=None, label_smoothing=0.0, z_loss=0.0,
                                         softcap=None, reduction="mean", out=None,
                                         workers=None, backend=None):
    r"""Loss and gradient of :func:`softmax_cross_entropy` in one fused sweep.

    Same arguments, numbers and errors as :func:`softmax_cross_entropy` and
    :func:`softmax_cross_entropy_grad` (to a few ULP; see
    ``docs/benchmarks.md``), computed by a blocked, multithreaded
    kernel (:mod:`ce_reference.kernels.softmax`) that reads the logits once
    and allocates nothing the size of the input but the gradient.

    Parameters
    ----------
    out : ndarray, optional
        C-contiguous, writeable buffer of the logits' shape and the gradient's
        dtype that receives the gradient (and is returned).  It may be the
        logits array itself: the gradient then overwrites the logits in place
        (an in-place call checks the logits' values before the first write, so an
        invalid value raises with the logits untouched: one extra read pass).
    workers : int, optional
        Threads to use; default: the cores available to this process.  The
        results are bitwise identical for every value.
    backend : {"numpy", "numba"}, optional
        The kernels: the blocked NumPy ones or the compiled ones (the ``fast``
        extra).  Default: ``$CE_REFERENCE_BACKEND``, else ``"numba"`` when numba is
        installed, else ``"numpy"`` (:mod:`ce_reference.backends`).  Both give the
        plain functions' numbers to a few ULP, each gated against mpmath by the
        verifier.

    Returns
    -------
    (loss, grad)

    Examples
    --------
    >>> import numpy as np, ce_reference as ce
    >>> z = np.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]])
    >>> loss, g = ce.softmax_cross_entropy_value_and_grad(z, np.array([0, 1]))
    >>> float(loss)
    0.3185397696491856
    >>> bool(np.allclose(g, ce.softmax_cross_entropy_grad(z, np.array([0, 1])), rtol=1e-15))
    True
    """
    backend = backends.resolve(backend)
    P = deferred_values(lambda check: _problem(
        logits, targets, axis, weight, ignore_index, label_smoothing, z_loss, softcap,
        reduction, check_values=check))
    P.backend = backend
    return _kernel.value_and_grad(P, out, workers)


def _centered(p, v):
    r"""``d = v - <p, v>`` per row (class axis last), accurate to the operands.

    With ``a`` the row's arg-max class (the one whose ``p_a`` may be close to
    1), ``r = sum_{j != a} p_j`` and ``T = sum_{j != a} p_j v_j``, and using
    ``p_a = 1 - r``:

        d_k = p_a (v_k - v_a) + (r v_k - T).

    This never forms ``1 - p_a`` by subtraction (it is ``r``, a sum of
    positive terms), so for a confident row ``d_a = r v_a - T`` is accurate
    even though the naive ``v_a - <p, v>`` cancels to ``v_a (1 - p_a)``; every
    rounding error is bounded by a few ULP of the componentwise operand size
    ``(1 - p_k)|v_k| + sum_{j != k} p_j |v_j|``.  The row sums accumulate in
    float64; ``p`` and ``v`` are float64 here.
    """
    a = np.argmax(p, axis=-1)[..., None]
    pa = np.take_along_axis(p, a, axis=-1)
    va = np.take_along_axis(v, a, axis=-1)
    rest = p.copy()
    np.put_along_axis(rest, a, 0.0, axis=-1)
    r = np.sum(rest, axis=-1, keepdims=True)
    T = np.sum(rest * v, axis=-1, keepdims=True)
    return pa * (v - va) + (r * v - T)


def softmax_cross_entropy_hvp(logits, targets, v, *, axis=-1, weight=None, ignore_index=None,
                              label_smoothing=0.0, z_loss=0.0, softcap=None,
                              reduction="mean"):
    r"""Hessian-vector product of :func:`softmax_cross_entropy` with respect to ``logits``.

    Per row, with :math:`p = \operatorname{softmax}(u_n)` (:math:`u` the
    possibly soft-capped logits), :math:`A_{n,c} = w_c q'_{n,c}` the
    coefficients of the loss and :math:`S_n = \sum_c A_{n,c}`,

    .. math::

        H^u_n = (S_n s + 2 z \ell_n s_z)\,\bigl(\operatorname{diag}(p) - p\,p^{\mathsf T}\bigr)
                + 2 z s_z\, p\,p^{\mathsf T},
        \qquad \ell_n = \operatorname{lse}(u_n),

    :math:`s` the reduction's scale (``1/denominator`` for ``mean``), :math:`s_z`
    the z-loss's (``1/D_z``), :math:`z = 0` without ``z_loss``.  Derivation: the
    gradient is :math:`(p S - A) s + 2 z \ell p s_z` with :math:`A` independent
    of :math:`u`, :math:`\partial p_k/\partial u_j = p_k(\delta_{kj} - p_j)` and
    :math:`\partial\ell/\partial u = p`.  With ``softcap``, :math:`u = s_c\tanh(x/s_c)`,
    :math:`c = du/dx = \operatorname{sech}^2(x/s_c)` and
    :math:`c' = d^2u/dx^2 = -\tfrac{2}{s_c} c \tanh(x/s_c)`, the chain rule gives

    .. math::

        H v = c \odot H^u (c \odot v) + (g_u \odot c') \odot v,

    the second term being the cap's own curvature (:math:`g_u` the gradient
    with respect to :math:`u`).  For index targets
    :math:`S_n = (1-\varepsilon)\,w_{y_n} + (\varepsilon/C)\sum_c w_c`, 0 for
    ignored rows; for probability targets :math:`S_n = \sum_c w_c q'_{n,c}`.
    Without the cap and the z-loss each block is positive semi-definite with
    :math:`H_n \mathbf 1 = 0` (shifting a row of logits does not change the loss).

    Parameters
    ----------
    logits, targets, axis, weight, ignore_index, label_smoothing, z_loss, softcap, reduction
        As in :func:`softmax_cross_entropy` (validated by the same code, with
        the same errors).
    v : array_like of ``logits``' shape
        The direction; real, finite; cast to ``logits``' compute dtype.

    Returns
    -------
    hv : ndarray of ``logits``' shape, in the package's result dtype

    Notes
    -----
    The :math:`C \times C` block is never formed: the product costs
    :math:`O(C)` per row.  :math:`v_k - \langle p, v\rangle` is computed as
    :math:`p_a (v_k - v_a) + (r v_k - T)` with :math:`a` the arg-max class,
    :math:`r = \sum_{j\ne a} p_j = 1 - p_a` and :math:`T = \sum_{j\ne a} p_j v_j`,
    so a confident row (:math:`p_a \approx 1`) does not suffer the cancellation
    of :math:`1 - p_a`; the error is a few ULP of the componentwise bound
    :math:`(|H|\,|v|)_k`.  A class with logit ``-inf`` has :math:`p_k = 0` and
    gets 0.  A ``mean`` with a zero denominator gives a zero product.

    Examples
    --------
    >>> import numpy as np, ce_reference as ce
    >>> ce.softmax_cross_entropy_hvp(np.zeros((1, 2)), np.array([0]), [[1.0, -1.0]]).tolist()
    [[0.5, -0.5]]
    """
    P = _problem(logits, targets, axis, weight, ignore_index, label_smoothing, z_loss, softcap,
                 reduction)
    vm = class_last(P, v)
    cap = None if P.softcap is None else P.cdt.type(P.softcap)
    u = _capped(P, P.x)
    c = None if cap is None else sech2(P.x / cap)
    _, p, lse = log_softmax_parts(u, with_lse=True)
    # The O(C) combination below runs in float64 (exact products for float32 input) and is
    # rounded once to the result dtype.
    p64 = p.astype(np.float64, copy=False)
    v64 = vm.astype(np.float64, copy=False) if c is None else \
        vm.astype(np.float64) * c.astype(np.float64)
    coef = _hvp_row_coefficient(P, lse)
    post = 1.0
    if v64.size and np.max(np.abs(v64)) > np.finfo(np.float64).max / 4:
        # Keep v_k - v_a from overflowing: scale by an exact power of 2, undo it at the end.
        v64, post = v64 * 0.25, 4.0
    with np.errstate(over="ignore"):  # only a result beyond the dtype's range overflows
        hv = (p64 * _centered(p64, v64)) * coef
        if P.z_loss:                  # the z-loss's rank-one term 2 z s_z p <p, c v>
            pv = np.sum(p64 * v64, axis=-1, keepdims=True)
            hv = hv + (2 * P.z_loss * P.z_scale) * _kept(P)[..., None] * p64 * pv
        if post != 1.0:
            hv = hv * post
        if c is not None:
            hv = _capped_curvature(P, hv, c, cap, u, vm)
    return P.finish_grad(hv, scaled=True)


def _hvp_row_coefficient(P, lse):
    """``S s + 2 z lse s_z`` per row (float64), the factor of ``diag(p) - p p^T``."""
    c_nll, c_smooth, A = _coefficients(P)
    if A is not None:
        S = np.sum(A, axis=-1, dtype=np.float64)
    else:
        W = P.C if P.weight is None else np.sum(P.weight, dtype=np.float64)
        S = c_nll.astype(np.float64) + c_smooth.astype(np.float64) * W
    coef = S * P.scale
    if P.z_loss:
        coef = coef + np.where(_kept(P), 2 * P.z_loss * P.z_scale * lse[..., 0], 0)
    return coef[..., None]


def _capped_curvature(P, hv_u, c, cap, u, v):
    """``c (H^u (c v)) + g_u c' v`` with ``c' = -(2/s) c tanh(x/s)`` and ``tanh = u / s``."""
    g_u, _, _ = _grad_u(P, u)
    tanh = np.where(np.isneginf(u), 0.0, u.astype(np.float64) / float(cap))   # masked: c' = 0
    curvature = (-2.0 / float(cap)) * c.astype(np.float64) * tanh
    return c.astype(np.float64) * hv_u + g_u.astype(np.float64) * curvature * v


def _complex_value(z, targets, *, axis=-1, weight=None, ignore_index=None,
                   label_smoothing=0.0, z_loss=0.0, softcap=None, reduction="mean"):
    """Each row's contribution to the reduced loss at complex logits ``z`` (complex step)."""
    z = np.asarray(z)
    P = _problem(z.real, targets, axis, weight, ignore_index, label_smoothing, z_loss, softcap,
                 reduction)
    rows, z_rows = _rows(P, np.moveaxis(z.reshape(P.pre, P.C, P.post), 1, -1))
    out = rows * P.scale
    if z_rows is not None:
        out = out + z_rows * P.z_scale
    return out.reshape(P.batch_shape)


def _sample_z_loss(rng, draw):
    return (1e-4, 0.5, 2.0)[draw.k % 3]


def _sample_softcap(rng, draw):
    return (30.0, 5.0, 0.5)[draw.k % 3]


Z_LOSS = Option("z_loss", 0.0, validate=_check_z_loss, sample=_sample_z_loss, own_mean=True,
                invalid=((-1e-4, ValueError), (float("nan"), ValueError), (True, TypeError),
                         ("1e-4", TypeError)))
SOFTCAP = Option("softcap", None, validate=_check_softcap, sample=_sample_softcap,
                 invalid=((0.0, ValueError), (-30.0, ValueError), (float("inf"), ValueError),
                          ("30", TypeError)))

_LOGITS = ("random", "extreme")
#: The compiled kernel's targets at the large cases (copy floor, peers; float32, out=).
_COMPILED_LARGE_GOALS = (("floor", "<=", 1.5), ("torch eager", ">=", 5.0),
                         ("jax.jit + optax", ">=", 3.0))

SPEC = LossSpec(
    name="softmax_cross_entropy", input="logits", structure="classes",
    targets=("index", "onehot", "soft"),
    options=(O.AXIS, O.CLASS_WEIGHT, O.IGNORE_INDEX, O.LABEL_SMOOTHING, Z_LOSS, SOFTCAP),
    option_sets=(
        option_set("index", "index", (), _LOGITS),
        option_set("index + weight", "index", ("weight",), _LOGITS),
        option_set("index + ignore_index", "index", ("ignore_index",), _LOGITS),
        option_set("index + label_smoothing", "index", ("label_smoothing",), _LOGITS),
        option_set("index + weight + ignore + smoothing", "index",
                   ("weight", "ignore_index", "label_smoothing"), _LOGITS),
        option_set("soft (Dirichlet)", "soft", (), _LOGITS),
        option_set("one-hot + weight + smoothing", "onehot", ("weight", "label_smoothing"),
                   _LOGITS),
        option_set("index + z_loss", "index", ("z_loss",), _LOGITS),
        option_set("index + softcap", "index", ("softcap",), _LOGITS),
        option_set("index + weight + ignore + smoothing + z_loss + softcap", "index",
                   ("weight", "ignore_index", "label_smoothing", "z_loss", "softcap"), _LOGITS),
        option_set("soft + weight + z_loss + softcap", "soft",
                   ("weight", "z_loss", "softcap"), _LOGITS),
    ),
    value=softmax_cross_entropy, grad=softmax_cross_entropy_grad,
    value_and_grad=softmax_cross_entropy_value_and_grad, hvp=softmax_cross_entropy_hvp,
    complex_value=_complex_value,
    oracle="ce_reference.oracles.softmax_cross_entropy:ORACLE",
    benchmarks=(
        BenchCase((4096, 8192), "index",
                  goals=(("floor", "<=", 2.0), ("torch eager", ">=", 5.0),
                         ("jax.jit + optax", ">=", 2.5)),
                  compiled_goals=_COMPILED_LARGE_GOALS,
                  # the calls of a training step (32, 10) .. (512, 8192), then the
                  # throughput curve at C = 8192
                  sweep=((32, 10), (64, 1000), (16, 8192), (256, 1000), (64, 8192),
                         (256, 8192), (512, 8192), (1024, 8192), (4096, 8192))),
        BenchCase((256, 131072), "index",
                  goals=(("floor", "<=", 2.0), ("torch eager", ">=", 5.0),
                         ("jax.jit + optax", ">=", 2.5)),
                  compiled_goals=_COMPILED_LARGE_GOALS),
        BenchCase((1_000_000, 10), "index",
                  goals=(("floor", "<=", 4.0), ("jax.jit + optax", ">=", 2.0)),
                  compiled_goals=(("floor", "<=", 3.5), ("torch eager", ">=", 5.0),
                                  ("jax.jit + optax", ">=", 3.0))),
    ),
    backends=("numpy", "numba"),
    short="softmax-CE", ref="ce_reference.losses.softmax_cross_entropy:SPEC",
)
