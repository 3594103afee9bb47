r"""Sigmoid focal loss on logits (torchvision's definition), in log space: one loss, one module.

Definition (Lin et al. 2017; torchvision ``ops.sigmoid_focal_loss``), elementwise, with
:math:`p = \sigma(x)` and a target :math:`y \in [0, 1]` (soft targets allowed):

.. math::

    \ell = w\,\alpha_t\,(1 - p_t)^{\gamma}\,\mathrm{ce},\qquad
    \mathrm{ce} = y\operatorname{softplus}(-x) + (1 - y)\operatorname{softplus}(x),

    p_t = p\,y + (1 - p)(1 - y),\qquad
    \alpha_t = \alpha\,y + (1 - \alpha)(1 - y)\quad(\alpha_t = 1 \text{ for } \alpha = \text{None}).

**Log space.**  :math:`1 - p_t = y\,\sigma(-x) + (1 - y)\,\sigma(x)` is a sum of two
non-negative terms and :math:`\log\sigma(\pm x) = -\operatorname{softplus}(\mp x)`, so

.. math::

    L := \log(1 - p_t) = \operatorname{logaddexp}\bigl(\log y - \operatorname{softplus}(x),\;
          \log(1 - y) - \operatorname{softplus}(-x)\bigr),\qquad (1 - p_t)^{\gamma} = e^{\gamma L}

has no cancellation and is finite for every finite logit (at :math:`x = 10^4, y = 1`,
:math:`L = -10^4` while :math:`1 - p_t` itself underflows).  :math:`\gamma = 0` uses the factor 1
exactly, so ``alpha=None, gamma=0`` *is* :mod:`.binary_cross_entropy_with_logits`, bit for bit.

**Gradient.**  :math:`\mathrm{ce}' = (1 - y)\sigma(x) - y\,\sigma(-x)` (``sigma(x) - 1`` is
``-sigma(-x)``, never a subtraction) and, with :math:`\sigma' = \sigma(x)\sigma(-x)`,

.. math::

    L' = \frac{(1 - 2y)\,\sigma(x)\sigma(-x)}{1 - p_t} = (1 - 2y)\,r,\qquad
    r = \frac{1}{1 + y\,e^{-x} + (1 - y)\,e^{x}} \in [0, 1]

(numerator and denominator divided by :math:`\sigma(x)\sigma(-x)`), hence

.. math::

    \frac{\partial\ell}{\partial x} = w\,\alpha_t\,e^{\gamma L}
        \bigl[\mathrm{ce}' + \gamma\,(1 - 2y)\,r\,\mathrm{ce}\bigr].

Every factor is bounded: the textbook :math:`(1 - p_t)^{\gamma - 1}` (``0 ** -1`` at
:math:`\gamma = 0`, ``inf * 0`` for :math:`0 < \gamma < 1`: optax #1267, kornia #918) never
appears.  With :math:`u = e^{-|x|} \le 1`, :math:`r = u / T`, where for :math:`x \ge 0`
:math:`T = (1 - y) + u(1 + y u)` and for :math:`x < 0` :math:`T = y + u(1 + (1 - y)u)` (sums of
non-negative terms); where the constant term vanishes (:math:`y = 1, x \ge 0` or
:math:`y = 0, x < 0`) :math:`r = 1/(1 + u)`.  Forming :math:`1/(1 + e^{|x|})` would flush
:math:`r` to 0 where :math:`e^{|x|}` overflows but :math:`r\,\mathrm{ce}` is still a normal
number (:math:`x = 709.78` in float64, 88.7 in float32); :math:`r\,c` is therefore evaluated as
:math:`((h c) h)/T` with :math:`h = e^{-|x|/2}`, so no intermediate is subnormal before the
result is.

**Hessian** (diagonal).  With :math:`s = \sigma(x)\sigma(-x) = \mathrm{ce}''`, the split
:math:`r + a + b = 1`, :math:`a = y\,e^{-x} r`, :math:`b = (1 - y)\,e^{x} r` (both in
:math:`[0, 1]`) and :math:`r' = r\,(a - b)`, so :math:`L'' = (1 - 2y)\,r\,(a - b)`:

.. math::

    \frac{\partial^2\ell}{\partial x^2} = w\,\alpha_t\,e^{\gamma L}
      \bigl[s + 2\gamma L'\,\mathrm{ce}' + \gamma^2 L'^2\,\mathrm{ce} + \gamma L''\,\mathrm{ce}\bigr]

(differentiate :math:`e^{\gamma L}(\mathrm{ce}' + \gamma L'\mathrm{ce})`, using
:math:`(e^{\gamma L})' = \gamma L' e^{\gamma L}`).  :math:`s = (h/(1 + u))^2`.

The per-element formulas (:func:`_elements`) serve the plain functions, the generic blocked
driver behind ``value_and_grad`` (:mod:`ce_reference.kernels.driver`; bitwise the same
numbers for any ``workers``) and, through :func:`_log_one_minus_pt`, the complex-step oracle.
"""

from __future__ import annotations

import numpy as np

from .. import options as O
from .. import _validation as V
from .._problem import ElementwiseProblem, deferred_values
from .._reduction import to_result
from .._special import log1p, mul0, sigmoid, softplus
from ..kernels import driver
from ..spec import LossSpec, Option, option_set
from ._hvp import direction

__all__ = [
    "sigmoid_focal_loss",
    "sigmoid_focal_loss_grad",
    "sigmoid_focal_loss_value_and_grad",
    "sigmoid_focal_loss_hvp",
]


# --------------------------------------------------------------------------- options

def check_alpha(alpha):
    """``None`` (no class balance) or a real in [0, 1]; returned as a float or None.

    torchvision disables the weighting with a negative alpha; that is a convention we do not
    copy: a negative alpha is a ``ValueError`` like any alpha outside [0, 1].
    """
    if alpha is None:
        return None
    a = V.check_float("alpha", alpha)             # a real number (not a bool), not NaN
    if not 0.0 <= a <= 1.0:
        hint = (" (torchvision disables alpha with a negative value; here pass alpha=None)"
                if a < 0 else "")
        raise ValueError(f"alpha must be None or in [0, 1], got {alpha!r}{hint}")
    return a


#: Class balances the verifier cycles through (period 4 against gamma's 5).
ALPHA_SAMPLES = (0.25, None, 0.0, 1.0)


def _sample_alpha(rng, draw):
    return ALPHA_SAMPLES[draw.i % len(ALPHA_SAMPLES)]


ALPHA = Option("alpha", 0.25, validate=check_alpha, sample=_sample_alpha,
               invalid=((-0.25, ValueError), (1.5, ValueError), (float("nan"), ValueError),
                        (True, TypeError), ("0.25", TypeError)))


def _problem(logits, targets, alpha, gamma, weight, reduction, check_values=True):
    P = ElementwiseProblem(
        logits, input_name="logits", input_kind="logits", reduction=reduction,
        operands=(("targets", targets, "unit"), ("weight", weight, "weight")),
        check_values=check_values)
    P.alpha = check_alpha(alpha)
    P.gamma = O.check_gamma(gamma)
    return P


# --------------------------------------------------------------------------- formulas

def _logaddexp(a, b):
    """``log(e^a + e^b)``; for complex input (complex step) shifted by the larger real part."""
    if np.iscomplexobj(a) or np.iscomplexobj(b):
        hi = np.maximum(np.real(a), np.real(b))
        hi = np.where(np.isfinite(hi), hi, 0)
        return hi + np.log(np.exp(a - hi) + np.exp(b - hi))
    return np.logaddexp(a, b)


def _softplus_c(z):
    """Complex softplus with an accurate real part (the complex step): ``_special.log1p``."""
    pos = np.real(z) > 0
    with np.errstate(invalid="ignore", over="ignore"):
        e = np.exp(np.where(pos, -z, z))
    return np.where(pos, z, 0) + log1p(e)


def _log_one_minus_pt(y, sp_pos, sp_neg):
    r"""``L = log(1 - p_t) = log(y sigma(-x) + (1 - y) sigma(x))`` from ``softplus(+-x)``.

    ``logaddexp(log y - softplus(x), log1p(-y) - softplus(-x))``: the log of a sum of two
    non-negative terms; a hard target's ``log 0 = -inf`` drops a term.  No ``inf - inf``:
    ``log y <= 0 <= softplus``.  Complex-safe (the complex step runs it).
    """
    with np.errstate(divide="ignore"):
        ly, l1y = np.log(y), np.log1p(-y)
    return _logaddexp(ly - sp_pos, l1y - sp_neg)


def _alpha_t(P, y):
    t = y.dtype.type
    return t(P.alpha) * y + t(1 - P.alpha) * (1 - y)


class _Ratio:
    r"""``r = 1 / (1 + y e^{-x} + (1 - y) e^{x})`` and the split ``r + a + b = 1``.

    ``u = e^{-|x|}``, ``h = e^{-|x|/2}``; on the side of ``x`` the constant term of
    ``T = c0 + u (1 + c2 u)`` is ``c0 = 1 - y`` (``x >= 0``) or ``y`` (``x < 0``) and
    ``c2`` the other coefficient: ``r = u / T``, the term from ``c0`` is ``c0 / T``, the
    other ``c2 u^2 / T`` (``a`` and ``b`` by side).  Where ``c0 = 0`` (the *edge*:
    ``y = 1, x >= 0`` or ``y = 0, x < 0``) ``T = u (1 + u)``: ``r = 1/(1 + u)``, the
    ``c0`` term is 0 and the other ``u / (1 + u)``.
    """

    def __init__(self, x, y):
        ax = np.abs(x)
        self.u = u = np.exp(-ax)
        self.h = np.exp(-(ax * x.dtype.type(0.5)))
        pos = x >= 0
        c0 = np.where(pos, 1 - y, y)
        c2 = np.where(pos, y, 1 - y)
        self.edge = c0 == 0
        self.T = T = c0 + u * (1 + c2 * u)
        with np.errstate(divide="ignore", invalid="ignore", under="ignore"):   # the edge branch
            self.r = np.where(self.edge, 1 / (1 + u), u / T)
            k0 = np.where(self.edge, 0, c0 / T)
            k2 = np.where(self.edge, u / (1 + u), (c2 * u) * u / T)
        self.a_minus_b = np.where(pos, k2 - k0, k0 - k2)

    def times(self, c):
        """``r c`` as ``((h c) h) / T``, so that no intermediate is subnormal before the result;
        0 where ``h = 0`` off the edge (``|x| = inf``, or beyond any representable product)."""
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            rc = np.where(self.edge, c / (1 + self.u), ((self.h * c) * self.h) / self.T)
        return np.where(~self.edge & (self.h == 0), 0, rc)


def _elements(P, want_loss=True, want_grad=True):
    r"""Per-element loss and its derivative (unscaled, compute dtype) of a problem or tile.

    ``loss = w alpha_t e^{gamma L} ce``, ``grad = w alpha_t e^{gamma L} [ce' + gamma (1 - 2y)
    r ce]`` (module doc).  ``gamma = 0`` and ``alpha = None`` skip their factors: the
    arithmetic is then exactly binary_cross_entropy_with_logits' (same primitives, same order).
    """
    x, y, w = P.x, P.operand("targets"), P.operand("weight")
    ct = x.dtype.type
    sp_pos, sp_neg = softplus(x), softplus(-x)          # -log(1 - sigma(x)), -log sigma(x)
    ce = mul0(y, sp_neg) + mul0(1 - y, sp_pos)           # two non-negative terms
    m = None
    if P.gamma != 0:
        m = np.exp(ct(P.gamma) * _log_one_minus_pt(y, sp_pos, sp_neg))   # (1 - p_t)^gamma
    at = None if P.alpha is None else _alpha_t(P, y)
    loss = g = None
    if want_loss:
        loss = ce if m is None else mul0(m, ce)          # 0 * inf = 0
        if at is not None:
            loss = at * loss
        if w is not None:
            loss = mul0(w, loss)
    if want_grad:
        g = (1 - y) * sigmoid(x) - y * sigmoid(-x)       # ce'
        if m is not None:
            g = m * (g + ct(P.gamma) * (1 - 2 * y) * _Ratio(x, y).times(ce))
        if at is not None:
            g = at * g
        if w is not None:
            g = w * g
    return loss, g


def _block(P):
    """Losses and scaled gradient of a problem or tile (the blocked driver's unit)."""
    loss, g = _elements(P)
    return loss, g * P.x.dtype.type(P.scale)


def _second_derivative(P):
    r"""``d^2 loss / dx^2`` per element, without ``w`` (module doc, Hessian)."""
    x, y = P.x, P.operand("targets")
    R = _Ratio(x, y)
    s = (R.h / (1 + R.u)) ** 2                            # sigma(x) sigma(-x), no cancellation
    h = s
    if P.gamma != 0:
        G = x.dtype.type(P.gamma)
        sp_pos, sp_neg = softplus(x), softplus(-x)
        ce = mul0(y, sp_neg) + mul0(1 - y, sp_pos)
        ce1 = (1 - y) * sigmoid(x) - y * sigmoid(-x)
        m = np.exp(G * _log_one_minus_pt(y, sp_pos, sp_neg))
        s2y = 1 - 2 * y
        rce = R.times(ce)
        h = m * (s + 2 * G * s2y * R.times(ce1) + (G * s2y) ** 2 * R.r * rce
                 + G * s2y * R.a_minus_b * rce)
    if P.alpha is not None:
        h = _alpha_t(P, y) * h
    return h


# --------------------------------------------------------------------------- public API

def sigmoid_focal_loss(logits, targets, *, alpha=0.25, gamma=2.0, weight=None, reduction="mean"):
    r"""Sigmoid focal loss of logits (torchvision's definition, computed in log space).

    .. math::

        \ell_i = w_i\,\alpha_{t,i}\,(1 - p_{t,i})^{\gamma}\,
                 \bigl[y_i\operatorname{softplus}(-x_i) + (1 - y_i)\operatorname{softplus}(x_i)\bigr],

    :math:`p_t = \sigma(x)\,y + (1 - \sigma(x))(1 - y)`,
    :math:`\alpha_t = \alpha y + (1 - \alpha)(1 - y)`, and
    :math:`(1 - p_t)^\gamma = \exp(\gamma \log(1 - p_t))` with
    :math:`\log(1 - p_t) = \operatorname{logaddexp}(\log y - \operatorname{softplus}(x),
    \log(1 - y) - \operatorname{softplus}(-x))` (no cancellation; module doc).

    Parameters
    ----------
    logits : array_like, any shape
        Real logits; ``±inf`` give the limits, NaN is an error.
    targets : array_like, broadcastable to ``logits``
        Targets in [0, 1]; soft targets allowed (as optax >= 0.2.5 and torchvision's formula).
    alpha : float in [0, 1] or None, default 0.25
        Class balance :math:`\alpha_t`; ``None`` disables it.  (torchvision disables it with a
        negative alpha; here a negative alpha, or one above 1, is a ``ValueError``.)
    gamma : float >= 0, default 2
        Focusing exponent; value and gradient are finite for every ``gamma >= 0``, including
        ``0 < gamma < 1`` and 0.
    weight : array_like, broadcastable to ``logits``, optional
        Non-negative elementwise rescaling :math:`w_i`.
    reduction : {"mean", "sum", "none"}, default "mean"
        ``mean`` over ``logits.size`` elements, torchvision's ``loss.mean()``.  (torchvision's
        default is ``"none"``, optax returns per-element losses: a convention.)

    Returns
    -------
    loss : NumPy scalar, or array of ``logits.shape`` for ``"none"``

    Notes
    -----
    ``alpha=None, gamma=0`` is :func:`ce_reference.binary_cross_entropy_with_logits` exactly
    (the same arithmetic).  Value, gradient and HVP are finite for every finite logit (``|x|``
    up to 1e4 and beyond) and every ``gamma >= 0``.  ``mean`` of an empty input is NaN.

    Examples
    --------
    >>> import ce_reference as ce
    >>> # x = 0: p_t = 1/2 and ce = log 2, alpha_t = 0.25 at y = 1: 0.25 * 0.25 * log 2
    >>> float(ce.sigmoid_focal_loss([0.0], [1.0]))
    0.04332169878499658
    """
    P = _problem(logits, targets, alpha, gamma, weight, reduction)
    loss, _ = _elements(P, want_grad=False)
    return P.reduce(loss)


def sigmoid_focal_loss_grad(logits, targets, *, alpha=0.25, gamma=2.0, weight=None,
                            reduction="mean"):
    r"""Gradient of :func:`sigmoid_focal_loss` with respect to ``logits``.

    .. math::

        \frac{\partial\ell_i}{\partial x_i} = w_i\,\alpha_{t,i}\,(1 - p_{t,i})^{\gamma}
        \Bigl[(1 - y_i)\sigma(x_i) - y_i\sigma(-x_i)
              + \frac{\gamma\,(1 - 2y_i)\,\mathrm{ce}_i}{1 + y_i e^{-x_i} + (1 - y_i) e^{x_i}}\Bigr],

    times ``1/n`` for ``mean`` (for ``reduction="none"``: the gradient of the sum).  No power
    :math:`(1 - p_t)^{\gamma - 1}` is formed (module doc).  Same arguments as the loss.

    Examples
    --------
    >>> import ce_reference as ce
    >>> ce.sigmoid_focal_loss_grad([0.0], [1.0], alpha=None, gamma=0.0).tolist()
    [-0.5]
    """
    P = _problem(logits, targets, alpha, gamma, weight, reduction)
    _, g = _elements(P, want_loss=False)
    return to_result(g * P.x.dtype.type(P.scale), P.rdt)


def sigmoid_focal_loss_value_and_grad(logits, targets, *, alpha=0.25, gamma=2.0, weight=None,
                                      reduction="mean", out=None, workers=None):
    """Loss and gradient of :func:`sigmoid_focal_loss` in one blocked sweep.

    Same arguments, numbers and errors as the loss and its gradient (the gradient bitwise,
    the value up to the order of the float64 partial sums), computed tile by tile on
    ``workers`` threads by the generic blocked driver (:mod:`ce_reference.kernels.driver`).
    ``out``: a C-contiguous, writeable buffer of the logits' shape and the gradient's dtype
    that receives the gradient (it may be the logits array itself).  ``workers``: threads,
    default all available cores; the results do not depend on it.

    Examples
    --------
    >>> import ce_reference as ce
    >>> loss, g = ce.sigmoid_focal_loss_value_and_grad([0.0], [1.0], alpha=None, gamma=0.0)
    >>> float(loss), g.tolist()
    (0.6931471805599453, [-0.5])
    """
    P = deferred_values(lambda check: _problem(logits, targets, alpha, gamma, weight,
                                               reduction, check_values=check))
    return driver.elementwise_value_and_grad(P, _block, out, workers)


def sigmoid_focal_loss_hvp(logits, targets, v, *, alpha=0.25, gamma=2.0, weight=None,
                           reduction="mean"):
    r"""Hessian-vector product of :func:`sigmoid_focal_loss` with respect to ``logits``.

    The Hessian is diagonal: :math:`(Hv)_i = s\,\ell_i''\,v_i` with :math:`s` the ``mean``
    scale (``1/n``, else 1) and

    .. math::

        \ell'' = w\,\alpha_t\,e^{\gamma L}\bigl[\sigma(x)\sigma(-x)
          + 2\gamma L'\,\mathrm{ce}' + \gamma^2 L'^2\,\mathrm{ce} + \gamma L''\,\mathrm{ce}\bigr],
        \quad L' = (1 - 2y)\,r,\quad L'' = (1 - 2y)\,r\,(a - b)

    (module doc for :math:`r, a, b` and the derivation).  The entry can be negative
    (the focal loss is not convex in ``x`` for ``gamma > 0``).

    Parameters
    ----------
    logits, targets, alpha, gamma, weight, reduction
        As in :func:`sigmoid_focal_loss` (validated by the same code, with the same errors).
    v : array_like of ``logits``' shape
        The direction; real, finite; cast to ``logits``' compute dtype.

    Examples
    --------
    >>> import ce_reference as ce
    >>> ce.sigmoid_focal_loss_hvp([0.0], [1.0], [1.0], alpha=None, gamma=0.0).tolist()
    [0.25]
    """
    P = _problem(logits, targets, alpha, gamma, weight, reduction)
    vv = direction(v, P.shape, P.cdt, "logits")
    hv = _second_derivative(P) * vv
    w = P.operand("weight")
    if w is not None:
        hv = w * hv
    with np.errstate(over="ignore"):   # only a result beyond the dtype's range overflows
        hv = hv * P.cdt.type(P.scale)
    return to_result(hv, P.rdt)


def _complex_value(z, targets, *, alpha=0.25, gamma=2.0, weight=None, reduction="mean"):
    """Each element's contribution to the reduced loss at complex logits ``z`` (complex step):
    the formulas of :func:`_elements` on complex-safe pieces (``_softplus_c``, ``_logaddexp``)."""
    z = np.asarray(z)
    P = _problem(z.real, targets, alpha, gamma, weight, reduction)
    y, w = P.operand("targets"), P.operand("weight")
    sp_pos, sp_neg = _softplus_c(z), _softplus_c(-z)
    loss = mul0(y, sp_neg) + mul0(1 - y, sp_pos)
    if P.gamma != 0:
        loss = mul0(np.exp(P.gamma * _log_one_minus_pt(y, sp_pos, sp_neg)), loss)
    if P.alpha is not None:
        loss = _alpha_t(P, y) * loss
    if w is not None:
        loss = mul0(w, loss)
    return loss * P.scale


_REGIONS = ("random", "extreme")

SPEC = LossSpec(
    name="sigmoid_focal_loss", input="logits", structure="elementwise",
    targets=("hard", "soft"),
    options=(ALPHA, O.GAMMA, O.ELEMENT_WEIGHT),
    option_sets=(
        option_set("hard targets, defaults", "hard", (), _REGIONS),
        option_set("hard + alpha + gamma", "hard", ("alpha", "gamma"), _REGIONS),
        option_set("soft + alpha + gamma", "soft", ("alpha", "gamma"), _REGIONS),
        option_set("soft + alpha + gamma + weight", "soft", ("alpha", "gamma", "weight"),
                   _REGIONS),
    ),
    value=sigmoid_focal_loss, grad=sigmoid_focal_loss_grad,
    value_and_grad=sigmoid_focal_loss_value_and_grad, hvp=sigmoid_focal_loss_hvp,
    complex_value=_complex_value,
    oracle="ce_reference.oracles.sigmoid_focal_loss:ORACLE",
    short="sigmoid-focal", ref="ce_reference.losses.sigmoid_focal_loss:SPEC",
)
