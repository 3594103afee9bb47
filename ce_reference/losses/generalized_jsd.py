r"""Generalized Jensen-Shannon divergence (Liger Kernel's ``LigerJSD``): one loss, one module.

With :math:`X = \log Q` the **student** log-probabilities (the first argument,
the one differentiated) and :math:`Y = \log P` the **teacher**'s, per element
(class :math:`c` of row :math:`n`):

.. math::

    M = \beta P + (1-\beta) Q,\qquad
    L = \beta P\,(Y - \log M) + (1-\beta)\,Q\,(X - \log M),

so that :math:`\ell_n = \sum_c L_{n,c} = \beta\,\mathrm{KL}(P\|M) +
(1-\beta)\,\mathrm{KL}(Q\|M)` for :math:`0 < \beta < 1`, and at the ends
Liger's own definitions (``src/liger_kernel/ops/jsd.py``, ``_jsd_kernel``):

.. math::

    \beta = 0:\ L = P\,(Y - X)\ \ (\text{forward KL}, \mathrm{KL}(P\|Q)),\qquad
    \beta = 1:\ L = Q\,(X - Y)\ \ (\text{reverse KL}, \mathrm{KL}(Q\|P)).

**Discontinuity.**  The interior formula tends to 0 at both ends (:math:`M \to
Q` as :math:`\beta \to 0` with :math:`\mathrm{JSD}_\beta \approx
\beta\,\mathrm{KL}(P\|Q)`; symmetrically :math:`\approx (1-\beta)\,\mathrm{KL}(Q\|P)`
as :math:`\beta \to 1`), while the end values are the full KLs -- the limits
of :math:`\mathrm{JSD}_\beta/\beta` and :math:`\mathrm{JSD}_\beta/(1-\beta)`.
The loss jumps at :math:`\beta = 0` and :math:`\beta = 1`, and so does its
gradient (:math:`-P` at :math:`\beta = 0` against :math:`(1-\beta)Q(X - \log M)
\to 0`).

**Derivation** of the gradient and the Hessian (the inputs are free
log-probabilities, no softmax couples the classes, so each row's Hessian is
diagonal).  Interior: :math:`\partial M/\partial X = (1-\beta)Q`, hence

.. math::

    \frac{\partial L}{\partial X} = (1-\beta)Q(X - \log M) + (1-\beta)Q
        - M\cdot\frac{(1-\beta)Q}{M} = (1-\beta)\,Q\,r,\qquad r = X - \log M,

and with :math:`\partial r/\partial X = 1 - (1-\beta)Q/M = \beta P/M = a`,

.. math::

    \frac{\partial^2 L}{\partial X^2} = (1-\beta)\,Q\,(r + a);

at :math:`\beta = 0`: :math:`-P` and 0; at :math:`\beta = 1`:
:math:`Q(X - Y + 1)` and :math:`Q(X - Y + 2)`.

**Rows and reduction** (Liger's ``shift_labels``): with ``targets`` (class
indices of the batch shape) and ``ignore_index``, rows whose target equals
``ignore_index`` contribute 0 and get a zero gradient, and ``"mean"`` divides
the sum by the number of kept rows (Liger: ``n_non_ignore =
(shift_labels != ignore_index).sum()``; without labels, the number of rows).
``"sum"`` and ``"none"`` (one value per row) are extensions.  A ``"mean"``
over no kept row is NaN with a zero gradient (this package's rule for a zero
denominator; Liger returns 0).

**Numerics.**  :math:`\log M` is never formed as ``log`` of a sum of
probabilities (Liger #769, #1453: :math:`M` underflows to 0 and ``0 · log 0``
is NaN).  With :math:`d = Y - X`, :math:`r = X - \log M = \log(Q/M)` and
:math:`s = Y - \log M = \log(P/M)` come from the identities
:math:`Q/M = 1/(1 + \beta\,\operatorname{expm1}(d))` and
:math:`P/M = 1/(1 + (1-\beta)\operatorname{expm1}(-d))` (exact to a few ULP
as :math:`d \to 0`, where both tend to 0), or from :math:`M/P` / :math:`M/Q`
as sums of non-negative terms where those are ill-conditioned
(:func:`_mixture`); each element is evaluated as
:math:`M[\beta\,\psi(s) + (1-\beta)\,\psi(r)]` with
:math:`\psi(a) = 1 + (a-1)e^a \ge 0` (:func:`_c_psi`), a sum of two
non-negative terms -- the textbook :math:`\beta P s + (1-\beta) Q r` cancels
to second order when the student is close to the teacher.
:math:`0 \cdot \log 0 = 0` everywhere: a class with :math:`P = Q = 0`
contributes 0 to the value, gradient and Hessian, and :math:`Q = 0` beside
:math:`P > 0` gives the finite :math:`\beta P \log(1/\beta)` (Liger: NaN).

:func:`_block` is the whole computation of a problem or block: the plain
functions run it on the whole problem and ``value_and_grad`` block by block
through the generic blocked driver (:mod:`ce_reference.kernels.driver`).
"""

from __future__ import annotations

from math import factorial

import numpy as np

from .. import _validation as V
from .. import options as O
from .._problem import ClassProblem, deferred_values
from .._reduction import grad_scale, weighted_count
from .._special import mul0
from ..kernels import driver
from ..spec import LossSpec, Option, option_set
from ._hvp import class_last

__all__ = ["generalized_jsd", "generalized_jsd_grad", "generalized_jsd_value_and_grad",
           "generalized_jsd_hvp"]


# --------------------------------------------------------------------------- arguments

def check_beta(beta) -> float:
    """``beta`` must be a real number in [0, 1] (bool and str are TypeErrors, NaN a ValueError)."""
    if isinstance(beta, (bool, np.bool_)) or not isinstance(
            beta, (int, float, np.integer, np.floating)):
        raise TypeError(f"beta must be a float in [0, 1], got {type(beta).__name__} {beta!r}")
    b = float(beta)
    if not 0.0 <= b <= 1.0:            # also rejects NaN
        raise ValueError(f"beta must be in [0, 1], got {beta!r}")
    return b


def check_labels(targets):
    """The row labels (``targets``, Liger's ``shift_labels``): None or an integer array."""
    if targets is None:
        return None
    t = V.as_numeric_array("targets", targets)
    if t.dtype.kind not in "iu":
        raise TypeError("targets must hold integer class indices (the rows' labels, Liger's "
                        f"shift_labels), got dtype {t.dtype}")
    return t


class _JSDProblem(ClassProblem):
    """A :class:`ClassProblem` of the student (input) and the teacher (second argument, a
    log-probability target of the input's shape), plus ``beta`` and the mask of kept rows
    ``row_keep`` (``(pre, post)``, None: every row), which blocks slice too."""

    def block(self, pre_slice, post_slice):
        sub = super().block(pre_slice, post_slice)
        if self.row_keep is not None:
            sub.row_keep = self.row_keep[pre_slice, post_slice]
        return sub


def _problem(student, teacher, beta, axis, ignore_index, targets, reduction, check_values=True):
    """Validated arguments: student and teacher log-probabilities, ``beta``, the row mask.

    ``targets`` and ``ignore_index`` go together: rows whose label equals
    ``ignore_index`` are dropped, and ``mean`` divides by the kept rows.
    """
    t = V.as_numeric_array("teacher_log_probs", teacher)
    if t.dtype.kind in "biu":
        t = t.astype(np.float64)
    P = _JSDProblem(student, t, input_name="student_log_probs",
                    input_kind="log_probabilities", axis=axis, reduction=reduction,
                    probs_what="log-probabilities", targets_kind="log_probabilities",
                    targets_name="teacher_log_probs", check_values=check_values)
    P.beta = check_beta(beta)
    ignore_index = V.check_ignore_index(ignore_index)
    labels = check_labels(targets)
    if labels is None and ignore_index is not None:
        raise ValueError("ignore_index is set but targets is None: ignore_index masks the rows "
                         "whose targets (Liger's shift_labels) equal it; pass targets")
    if labels is not None and ignore_index is None:
        raise ValueError("targets is given but ignore_index is None: targets only serve to mask "
                         "the rows equal to ignore_index (Liger's default is -100); pass "
                         "ignore_index, or drop targets")
    P.row_keep = None
    if labels is not None:
        _, keep = V.index_targets(labels, P.shape, P.ax, ignore_index)
        P.row_keep = keep.reshape(P.pre, P.post)
        P.denominator = weighted_count(keep)
        P.scale = grad_scale(P.reduction, P.denominator)
    P.given = {"teacher_log_probs": P.targets_given, "targets": labels}
    return P


# --------------------------------------------------------------------------- elementwise pieces

def _log1p(z):
    r"""``log1p``, also for the complex step: NumPy's complex ``log1p`` forms
    :math:`\log|1 + z|` and loses the real part's accuracy for small :math:`z`; for
    :math:`|\operatorname{Im} z| \ll |1 + \operatorname{Re} z|` (a complex step)
    :math:`\log(1 + z) = \operatorname{log1p}(\operatorname{Re} z) +
    i\,\operatorname{atan2}(\operatorname{Im} z, 1 + \operatorname{Re} z)`."""
    if np.iscomplexobj(z):
        return np.log1p(z.real) + 1j * np.arctan2(z.imag, 1 + z.real)
    return np.log1p(z)


def _psi_coefficients(dtype) -> np.ndarray:
    r"""Taylor coefficients of :math:`\psi(a)/a^2 = \sum_{j\ge0} \frac{j+1}{(j+2)!}\, a^j`.

    Enough terms for :math:`|a| < 1`: the first omitted one is below
    :math:`\varepsilon\,\psi(a)/a^2` (:math:`\psi(-1) = 1 - 2/e = 0.264`).
    """
    n = 20 if np.dtype(dtype) == np.float64 else 12
    return np.array([(j + 1) / factorial(j + 2) for j in range(n)], dtype=dtype)


def _c_psi(c, a, u):
    r""":math:`c\,\psi(a)`, :math:`\psi(a) = 1 + (a-1)e^a = a e^a - \operatorname{expm1}(a) \ge 0`.

    ``u`` must be :math:`c\,e^a`, which the caller has in a bounded form
    (:math:`\beta P/M` or :math:`(1-\beta)Q/M`: never an overflowing ``exp``).
    Complex-safe (branches on the real part):

    * :math:`|a| < 1`: :math:`c\,a^2 \sum_j \frac{j+1}{(j+2)!} a^j` (Horner): no
      cancellation for :math:`a > 0`, a factor below 4 for :math:`a > -1`;
    * :math:`a \ge 1`: :math:`u(a - 1) + c`, two non-negative terms;
    * :math:`a \le -1`: :math:`u\,a - c\,\operatorname{expm1}(a)` (cancellation
      factor below 4; :math:`\psi(-\infty) = 1` via ``mul0``).
    """
    coef = _psi_coefficients(np.real(a).dtype)
    ar = np.real(a)
    small = np.abs(ar) < 1                       # False for -inf
    a_s = np.where(small, a, 0)
    poly = np.full_like(a_s, coef[-1])
    for cj in coef[-2::-1]:
        poly = poly * a_s + cj
    series = c * (a_s * a_s) * poly
    with np.errstate(invalid="ignore", over="ignore"):
        high = u * (a - 1) + c
        low = mul0(u, a) - c * np.expm1(a)
    return np.where(small, series, np.where(ar >= 1, high, low))


#: log of the smallest normal number (plus a margin), per compute dtype: above it exp is normal.
_NORMAL_LOG = {np.dtype(t): np.log(np.finfo(t).tiny) + 2 for t in (np.float32, np.float64)}


def _mixture(X, Y, beta: float):
    r"""The stable pieces of the interior case (:math:`0 < \beta < 1`), elementwise.

    Returns ``(P, Q, M, a, b, r, s)``: :math:`P = e^Y`, :math:`Q = e^X`,
    :math:`M = \beta P + (1-\beta)Q`, the shares :math:`a = \beta P/M` and
    :math:`b = (1-\beta)Q/M` (:math:`a + b = 1`), :math:`r = \log(Q/M)` and
    :math:`s = \log(P/M)`, each to a few ULP.  ``X`` may be complex (the
    complex step); every branch is chosen on the real part.

    With :math:`d = Y - X` (0 where both are ``-inf``: every piece is then
    multiplied by :math:`P = Q = 0`) and :math:`e = e^{-|d|} \le 1` (the quotient
    :math:`\min(P, Q)/\max(P, Q)` where both are normal numbers, a few ULP
    whatever :math:`|d|` -- ``exp`` of the rounded :math:`d` would carry an error
    of :math:`|d|` eps --, else ``exp(-|d|)``), ``den`` is
    :math:`M/P = \beta + (1-\beta)e` for :math:`d \ge 0` and
    :math:`M/Q = (1-\beta) + \beta e` for :math:`d < 0`: a sum of non-negative
    terms in :math:`[\min(\beta, 1-\beta), 1]`, so :math:`M = \max(P, Q)\cdot`
    ``den`` is 0 only if both probabilities are (no underflow of :math:`M`
    alone: Liger #1453).  Then

    * :math:`r = -\operatorname{log1p}(\beta\,\operatorname{expm1}(d))` where that
      is well conditioned (:math:`d \ge 0`, or ``den >= 1/2``), else
      :math:`-\log \mathrm{den}` (:math:`d < 0`), or :math:`-(d + \log \mathrm{den})`
      where ``expm1(d)`` would overflow;
    * :math:`s`: the mirror image (:math:`d \to -d`, :math:`\beta \to 1-\beta`).
    """
    cdt = np.real(X).dtype
    b1 = cdt.type(beta)
    b0 = cdt.type(1.0 - beta)                   # 1 - beta rounded once (exact for beta >= 1/2)
    both = np.isneginf(np.real(X)) & np.isneginf(Y)
    with np.errstate(invalid="ignore"):
        d = np.where(both, 0, Y - X)
    dr = np.real(d)
    pos = dr >= 0
    normal = (np.real(X) > _NORMAL_LOG[cdt]) & (Y > _NORMAL_LOG[cdt])
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        P, Q = np.exp(Y), np.exp(X)
        # e^{-|d|} = min(P, Q) / max(P, Q): the quotient where both are normal numbers
        # (a few ULP; exp of the rounded d would carry |d| eps), exp(-|d|) where one underflows
        e = np.where(normal, np.where(pos, Q / P, P / Q), np.exp(np.where(pos, -d, d)))
    den = np.where(pos, b1 + b0 * e, b0 + b1 * e)
    M = np.where(pos, P, Q) * den
    a = np.where(pos, b1, b1 * e) / den
    b = np.where(pos, b0 * e, b0) / den
    T = cdt.type(np.log(np.finfo(cdt).max) - 1)   # expm1 below this cannot overflow
    half = cdt.type(0.5)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        r_log1p = 0 - _log1p(b1 * np.expm1(d))      # 0 - z: +0, not -0
        s_log1p = 0 - _log1p(b0 * np.expm1(-d))
        log_den = np.log(den)
        good = np.real(den) >= half
        # d >= 0: the log1p argument of r is >= 0 (well conditioned) unless expm1 overflows
        r = np.where(pos, np.where(dr > T, 0 - (d + log_den), r_log1p),
                     np.where(good, r_log1p, 0 - log_den))
        s = np.where(pos, np.where(good, s_log1p, 0 - log_den),
                     np.where(-dr > T, d - log_den, s_log1p))
    return P, Q, M, a, b, r, s


def _times(p, diff):
    r""":math:`p \cdot \mathrm{diff}` for a probability :math:`p = e^{\log p}` and a difference
    of log-probabilities: 0 where :math:`p = 0` (``mul0``), and ``+inf`` where the difference
    is ``+inf`` -- its own log-probability is then finite, so :math:`p > 0` even where ``exp``
    underflows to 0 (an infinite KL stays infinite)."""
    return np.where(np.isposinf(np.real(diff)), np.inf, mul0(p, diff))


def _pointwise(X, Y, beta: float, want_value=True, want_grad=True):
    r"""Elements :math:`L` and :math:`\partial L/\partial X` (class axis last), ``None`` for what
    was not asked; ``X`` may be complex (the complex step).

    * :math:`\beta = 0`: :math:`L = P(Y - X)`, :math:`G = -P`;
    * :math:`\beta = 1`: :math:`L = Q(X - Y)`, :math:`G = Q(X - Y + 1)`;
    * otherwise :math:`L = M[\beta\psi(s) + (1-\beta)\psi(r)]` (two non-negative
      terms; the identity holds because :math:`\beta(M - P) + (1-\beta)(M - Q) = 0`)
      and :math:`G = (1-\beta)\,Q\,r`.

    Products with a probability go through ``mul0``: :math:`0 \cdot \infty = 0`
    (a zero probability beside a ``-inf`` on the other side contributes 0,
    never NaN); at the ends through :func:`_times`, so that a KL that is
    infinite stays so where the probability underflows.  The end cases cancel like any KL when :math:`X \approx Y`;
    their error is a few ULP of :math:`P|Y - X|` (:math:`Q|X - Y|`).
    """
    cdt = np.real(X).dtype
    L = G = None
    with np.errstate(invalid="ignore", over="ignore"):
        if beta == 0.0:
            P = np.exp(Y)
            if want_value:
                L = _times(P, Y - X)
            if want_grad:
                G = 0 - P
            return L, G
        if beta == 1.0:
            Q = np.exp(X)
            diff = X - Y
            if want_value:
                L = _times(Q, diff)
            if want_grad:
                G = _times(Q, diff + 1)
            return L, G
    P, Q, M, a, b, r, s = _mixture(X, Y, beta)
    if want_value:
        L = M * (_c_psi(cdt.type(beta), s, a) + _c_psi(cdt.type(1.0 - beta), r, b))
    if want_grad:
        G = cdt.type(1.0 - beta) * mul0(Q, r)
    return L, G


def _hessian_diagonal(X, Y, beta: float):
    r""":math:`\partial^2 L/\partial X^2`, elementwise (each row's Hessian is diagonal).

    * :math:`\beta = 0`: 0 (the gradient :math:`-P` does not depend on :math:`X`);
    * :math:`\beta = 1`: :math:`\partial_X[Q(X - Y + 1)] = Q(X - Y + 2)`;
    * otherwise :math:`\partial_X[(1-\beta)Q\,r] = (1-\beta)Q(r + a)` with
      :math:`\partial r/\partial X = 1 - (1-\beta)Q/M = a = \beta P/M`.  It changes
      sign where :math:`r = -a` (the student above the teacher); near there the
      result is a few ULP of :math:`(1-\beta)Q(|r| + a)`.
    """
    if beta == 0.0:
        return np.zeros_like(X)
    with np.errstate(invalid="ignore", over="ignore"):
        if beta == 1.0:
            return _times(np.exp(X), (X - Y) + 2)
        P, Q, M, a, b, r, s = _mixture(X, Y, beta)
        return X.dtype.type(1.0 - beta) * mul0(Q, r + a)


# --------------------------------------------------------------------------- per row

def _mask_rows(P, arr):
    """Zero the ignored rows (class axis last)."""
    if P.row_keep is None:
        return arr
    return np.where(P.row_keep[..., None], arr, 0)


def _row_sums(P, L):
    """Row sums of the elements in float64 (complex128 for the complex step); real rows are
    rounded to the compute dtype, as the driver stores them.  For :math:`0 < \\beta < 1`
    every element is non-negative: the sum does not cancel."""
    if np.iscomplexobj(L):
        return np.sum(L, axis=-1, dtype=np.complex128)
    return np.sum(L, axis=-1, dtype=np.float64).astype(P.cdt)


def _rows(P, X):
    r"""Per-row losses :math:`\ell_n = \sum_c L_{n,c}` for class-last ``X`` (0 on ignored rows)."""
    return _row_sums(P, _mask_rows(P, _pointwise(X, P.probs, P.beta, True, False)[0]))


def _row_grad(P):
    r""":math:`s\,\partial \ell_n/\partial X_{n,c}` (class axis last; 0 on ignored rows)."""
    G = _pointwise(P.x, P.probs, P.beta, False, True)[1]
    return _mask_rows(P, G * P.cdt.type(P.scale))


def _block(P):
    L, G = _pointwise(P.x, P.probs, P.beta, True, True)
    return _row_sums(P, _mask_rows(P, L)), _mask_rows(P, G * P.cdt.type(P.scale))


# --------------------------------------------------------------------------- public

def generalized_jsd(student_log_probs, teacher_log_probs, *, beta=0.5, axis=-1,
                    ignore_index=None, targets=None, reduction="mean"):
    r"""Generalized Jensen-Shannon divergence of Liger Kernel (``LigerJSD``).

    .. math::

        \ell_n = \beta\,\mathrm{KL}(P_n\|M_n) + (1-\beta)\,\mathrm{KL}(Q_n\|M_n),\qquad
        M = \beta P + (1-\beta) Q,

    :math:`P = e^Y` the teacher, :math:`Q = e^X` the student;
    :math:`\mathrm{KL}(P\|Q)` at :math:`\beta = 0` and :math:`\mathrm{KL}(Q\|P)`
    at :math:`\beta = 1` (Liger's definitions; the loss is discontinuous
    there: the interior tends to 0).

    Parameters
    ----------
    student_log_probs : array_like, shape ``(..., C, ...)``
        :math:`X = \log Q`, the distribution that is differentiated (Liger's
        ``_input`` / ``log_q``); ``<= 0``, ``-inf`` allowed; NaN and positive
        values are errors.  Rows are used as given.
    teacher_log_probs : array_like, same shape
        :math:`Y = \log P` (Liger's ``target`` / ``log_p``); same rules; cast
        to the student's compute dtype.
    beta : float in [0, 1], default 0.5
        Mixture weight of the teacher, :math:`M = \beta P + (1 - \beta) Q`.
    axis : int, default -1
        The class axis (Liger's inputs are ``(BT, V)``: the last).
    ignore_index : int, optional
    targets : array_like of integers, optional
        Both or neither.  Rows whose ``targets`` (Liger's ``shift_labels``, of
        the batch shape) equal ``ignore_index`` count for nothing, in the
        value, the gradient and the ``mean`` denominator; the other labels
        must be class indices in ``[0, C)``.  (Liger's default
        ``ignore_index`` is -100.)
    reduction : {"mean", "sum", "none"}
        ``mean``: the sum over kept rows / the number of kept rows (Liger's);
        ``none``: one value per row (0 for ignored rows).

    Returns
    -------
    loss : NumPy scalar, or array of the batch shape for ``"none"``

    Notes
    -----
    :math:`\log M` is computed from :math:`Y - X` with ``log1p``/``expm1``,
    never as ``log`` of the mixed probabilities (Liger #769, #1453), and each
    element as :math:`M[\beta\psi(s) + (1-\beta)\psi(r)] \ge 0` (see the
    module documentation).  A ``-inf`` on either side is a zero probability
    (:math:`0 \log 0 = 0`; Liger: NaN).  A ``mean`` over no kept row is NaN
    with a zero gradient (Liger returns 0).

    Examples
    --------
    >>> import numpy as np, ce_reference as ce
    >>> q, p = [[0.0, -np.inf]], [[-np.inf, 0.0]]   # disjoint supports: JSD = log 2
    >>> float(ce.generalized_jsd(q, p))
    0.6931471805599453
    """
    P = _problem(student_log_probs, teacher_log_probs, beta, axis, ignore_index, targets,
                 reduction)
    return P.reduce(_rows(P, P.x))


def generalized_jsd_grad(student_log_probs, teacher_log_probs, *, beta=0.5, axis=-1,
                         ignore_index=None, targets=None, reduction="mean"):
    r"""Gradient of :func:`generalized_jsd` with respect to the student log-probabilities.

    .. math::

        \frac{\partial \ell_n}{\partial X_{n,c}} = (1-\beta)\,Q_{n,c}\,(X_{n,c} - \log M_{n,c})

    (:math:`-P` at :math:`\beta = 0`, :math:`Q(X - Y + 1)` at :math:`\beta = 1`;
    derivation in the module documentation), times ``1/kept rows`` for
    ``mean``; 0 on ignored rows; for ``"none"`` the gradient of the sum.  Same
    arguments as :func:`generalized_jsd`; returns an array of the student's
    shape.  :math:`X - \log M` is formed without cancellation (the textbook
    ``X - logaddexp(...)`` loses its relative accuracy where it tends to 0).

    Examples
    --------
    >>> import numpy as np, ce_reference as ce
    >>> x = np.log([[0.5, 0.5]])
    >>> ce.generalized_jsd_grad(x, x).tolist()     # student = teacher: X = log M
    [[0.0, 0.0]]
    """
    P = _problem(student_log_probs, teacher_log_probs, beta, axis, ignore_index, targets,
                 reduction)
    return P.finish_grad(_row_grad(P), scaled=True)


def generalized_jsd_value_and_grad(student_log_probs, teacher_log_probs, *, beta=0.5, axis=-1,
                                   ignore_index=None, targets=None, reduction="mean", out=None,
                                   workers=None):
    r"""Loss and gradient of :func:`generalized_jsd` in one blocked sweep.

    Same arguments, errors and (bitwise) numbers as :func:`generalized_jsd` and
    :func:`generalized_jsd_grad`, computed block by block by the generic
    driver (:mod:`ce_reference.kernels.driver`).

    Parameters
    ----------
    out : ndarray, optional
        C-contiguous, writeable buffer of the student's shape and the
        gradient's dtype that receives the gradient (it may be the student
        array itself, not the teacher).
    workers : int, optional
        Threads; default all available cores.  The results do not depend on it.

    Returns
    -------
    (loss, grad)

    Examples
    --------
    >>> import numpy as np, ce_reference as ce
    >>> q, p = [[0.0, -np.inf]], [[-np.inf, 0.0]]
    >>> loss, g = ce.generalized_jsd_value_and_grad(q, p)
    >>> float(loss), g.tolist()                  # (1 - b) Q log(Q / M) = 0.5 log 2
    (0.6931471805599453, [[0.34657359027997264, 0.0]])
    """
    P = deferred_values(lambda check: _problem(student_log_probs, teacher_log_probs, beta, axis,
                                               ignore_index, targets, reduction,
                                               check_values=check))
    return driver.class_value_and_grad(P, _block, out, workers)


def generalized_jsd_hvp(student_log_probs, teacher_log_probs, v, *, beta=0.5, axis=-1,
                        ignore_index=None, targets=None, reduction="mean"):
    r"""Hessian-vector product of :func:`generalized_jsd` with respect to the student.

    The classes of the student enter the loss separately, so the Hessian is
    diagonal:

    .. math::

        (Hv)_{n,c} = s\,\frac{\partial^2 L_{n,c}}{\partial X_{n,c}^2}\, v_{n,c},\qquad
        \frac{\partial^2 L}{\partial X^2} = (1-\beta)\,Q\,\Bigl(X - \log M + \frac{\beta P}{M}\Bigr),

    the derivative of the gradient :math:`(1-\beta)Q(X - \log M)` with
    :math:`\partial(X - \log M)/\partial X = \beta P/M`; 0 at :math:`\beta = 0`
    and :math:`Q(X - Y + 2)` at :math:`\beta = 1`.  :math:`s` is the
    reduction's scale (``1/kept rows`` for ``mean``, 0 when there is none);
    ignored rows get 0.

    Parameters
    ----------
    student_log_probs, teacher_log_probs, beta, axis, ignore_index, targets, reduction
        As in :func:`generalized_jsd` (validated by the same code, same errors).
    v : array_like of the student's shape
        The direction; real, finite.

    Returns
    -------
    hv : ndarray of the student's shape, in the package's result dtype

    Notes
    -----
    Where the exact entry is infinite (:math:`\beta = 1`, a ``-inf`` teacher
    beside a positive student probability) the product is ``±inf`` where
    ``v`` is non-zero and 0 where it is 0.

    Examples
    --------
    >>> import numpy as np, ce_reference as ce
    >>> x = np.log([[0.5, 0.5]])           # student = teacher: H = (1 - b) Q b = 0.125
    >>> ce.generalized_jsd_hvp(x, x, [[1.0, -2.0]]).tolist()
    [[0.125, -0.25]]
    """
    P = _problem(student_log_probs, teacher_log_probs, beta, axis, ignore_index, targets,
                 reduction)
    vm = class_last(P, v)
    h = _mask_rows(P, _hessian_diagonal(P.x, P.probs, P.beta))
    with np.errstate(over="ignore", invalid="ignore"):
        hv = mul0(vm, h) * P.cdt.type(P.scale)      # v = 0 beside an infinite entry: 0
    return P.finish_grad(hv, scaled=True)


def _complex_value(z, teacher, *, beta=0.5, axis=-1, ignore_index=None, targets=None,
                   reduction="mean"):
    """Each row's contribution to the reduced loss at a complex student ``z`` (complex step;
    the verifier passes array options as float64, so the labels come back to integers)."""
    z = np.asarray(z)
    targets = None if targets is None else np.asarray(targets).astype(np.int64)
    P = _problem(z.real, teacher, beta, axis, ignore_index, targets, reduction)
    zc = np.moveaxis(z.reshape(P.pre, P.C, P.post), 1, -1)
    return (_rows(P, zc) * P.scale).reshape(P.batch_shape)


# --------------------------------------------------------------------------- spec

#: The values of ``beta`` the verifier cycles through: the ends (Liger's KLs), the
#: default, and the interior near the ends (where 1 - beta or beta rounds in float32).
BETA_SAMPLES = (0.5, 0.0, 1.0, 0.1, 0.9, 1e-12, 1 - 2.0 ** -40)


def _sample_beta(rng, draw):
    """The case's ``beta`` from :data:`BETA_SAMPLES`, keeping the rows finite (an infinite KL
    is checked in the tests): in ``masked one-sided`` (a zero student probability beside a
    positive teacher one: KL(P||Q) is infinite) only interior values; 1 only in ``masked``,
    where a zero teacher probability always sits beside a zero student one (elsewhere the
    teacher's all-zero rows make KL(Q||P) infinite)."""
    if draw.region == "masked one-sided":
        pool = tuple(b for b in BETA_SAMPLES if 0 < b < 1)
    elif draw.region == "masked":
        pool = BETA_SAMPLES
    else:
        pool = tuple(b for b in BETA_SAMPLES if b != 1)
    return pool[draw.i % len(pool)]


def _sample_labels(rng, draw):
    """The rows' labels: the drawn class indices, with the rows ``ignore_index`` dropped."""
    return np.asarray(draw.index, np.int64)


BETA = Option("beta", 0.5, validate=check_beta, sample=_sample_beta,
              invalid=((1.5, ValueError), (-0.1, ValueError), (float("nan"), ValueError),
                       ("0.5", TypeError), (True, TypeError), (None, TypeError)))
LABELS = Option("targets", None, array=True, shape="batch", validate=check_labels,
                sample=_sample_labels, targets=True,
                invalid=((lambda x: np.zeros(np.shape(x)[:-1]), TypeError),
                         (lambda x: np.zeros(np.size(x) + 1, np.int64), ValueError)))

_REGIONS = ("random", "extreme", "masked", "masked one-sided")

SPEC = LossSpec(
    name="generalized_jsd", input="log_probs", structure="classes", targets=("log_soft",),
    options=(BETA, O.AXIS, O.IGNORE_INDEX, LABELS),
    option_sets=(
        option_set("beta = 0.5", "log_soft", (), _REGIONS),
        option_set("beta", "log_soft", ("beta",), _REGIONS),
        option_set("beta + ignore_index", "log_soft", ("beta", "ignore_index", "targets"),
                   _REGIONS),
    ),
    value=generalized_jsd, grad=generalized_jsd_grad,
    value_and_grad=generalized_jsd_value_and_grad, hvp=generalized_jsd_hvp,
    complex_value=_complex_value,
    oracle="ce_reference.oracles.generalized_jsd:ORACLE",
    short="JSD", ref="ce_reference.losses.generalized_jsd:SPEC",
)
