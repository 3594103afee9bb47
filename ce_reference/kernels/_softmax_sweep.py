r"""What the three softmax layouts share: the sweep's fixed data and the per-row algebra.

A :class:`SoftmaxSweep` is built once per call from a validated
:class:`~ce_reference._problem.ClassProblem` (see :mod:`.softmax`) and holds
everything the blocks read: the logits viewed ``(pre, C, post)``, the gradient
buffer, the targets, the per-class weights, the label-smoothing coefficients,
the reduction's scale, the per-row loss buffer and one "bad" flag per block.
The layouts (:mod:`.softmax_rows`, :mod:`.softmax_cols`,
:mod:`.softmax_online`) subclass it with their own block geometry and bodies.

Stability identity (the one of :func:`ce_reference._special.log_softmax_parts`):
with ``m`` the row maximum at the first arg-max ``a`` and
``t = sum_{c != a} exp(x_c - m)``, ``-log p_c = (m - x_c) + log1p(t)`` (two
non-negative terms, no cancellation, accurate even when ``t`` is far below
machine epsilon) and ``p_c = exp(x_c - m) / (1 + t)``.

Per-row coefficients, exactly as the plain function forms them: for index
targets ``c_nll = keep (1 - eps) w_y`` (coefficient of ``-log p_y``),
``c_smooth = keep eps / C`` (coefficient of ``sum_c w_c (-log p_c)``) and
``total = c_nll + c_smooth W`` (``W = sum_c w_c``), the row's total target mass
``S`` in the gradient ``g_c = p_c S - A_c``; for probability targets
``A_c = w_c q'_c``.

The options of large models cost no extra pass where they can: the z-loss's
gradient ``2 z lse p s_z`` is a multiple of ``p``, so it is folded into the
row's factor of ``p`` (``S s + 2 z lse s_z``, with ``lse = m + log1p(t)`` per
row) and its value ``z lse^2`` goes to a per-row buffer of its own (it has its
own ``mean`` denominator).  Soft-capping replaces each loaded block by
``s tanh(x / s)`` (``-inf`` kept) and keeps ``sech^2(x / s) = 4e / (1 + e)^2``,
``e = exp(-2|x| / s)``, to multiply the block's gradient at the end.

``-d + L`` is computed as ``L - d`` (the same rounding): NumPy 2.4.6's
``np.negative`` returns wrong values when input and output are the same strided
single column (e.g. ``D[:, :1]`` of a ``(n, 4)`` float32 array), which a
``(C, b)`` block with ``b = 1`` is.
"""

from __future__ import annotations

import numpy as np

from .._special import mul0
from .._validation import unit_interval_ok
from . import _blocks


class Scratch:
    """Per-thread scratch buffers, allocated on first use by name and reused."""

    def __init__(self, specs: dict):
        self._specs = specs
        self._bufs = {}

    def __getattr__(self, name):
        bufs = self.__dict__["_bufs"]
        if name not in bufs:
            shape, dtype = self.__dict__["_specs"][name]
            bufs[name] = np.empty(shape, dtype)
        return bufs[name]


class SoftmaxSweep:
    """Fixed data of one fused softmax cross-entropy sweep (see module docstring).

    Parameters
    ----------
    x : ndarray
        C-contiguous logits as given (any numeric dtype), shape ``(pre * C * post,)``
        viewable as ``(pre, C, post)``.
    grad : ndarray
        The gradient buffer, C-contiguous, result dtype; may be ``x`` itself.
    index, keep : ndarray or None
        Index targets and kept-row mask, ``(pre, post)``.
    probs : ndarray or None
        C-contiguous probability targets as given, ``(pre, C, post)``.
    weight : ndarray or None
        Class weights ``(C,)``, compute dtype.
    label_smoothing : float
    cdt, rdt : numpy.dtype
    scale : float
        The reduction's gradient scale.
    pre, C, post : int
    rows : ndarray
        ``(pre, post)`` per-row loss buffer (compute dtype), filled by the sweep.
    """

    def __init__(self, *, x, grad, index, keep, probs, weight, label_smoothing, cdt, rdt,
                 scale, pre, C, post, rows, z_loss=0.0, z_scale=0.0, z_rows=None,
                 softcap=None):
        self.x, self.grad, self.rows = x, grad, rows
        self.z_loss, self.z_rows = z_loss, z_rows
        self.z_factor = cdt.type(2 * z_loss * z_scale)       # 2 z s_z
        self.softcap = None if softcap is None else cdt.type(softcap)
        self.index, self.keep, self.probs, self.weight = index, keep, probs, weight
        self.label_smoothing = label_smoothing
        self.cdt, self.rdt, self.scale = cdt, rdt, scale
        self.pre, self.C, self.post = pre, C, post
        self.itemsize = cdt.itemsize
        self.cast_in = x.dtype != cdt
        self.direct = rdt == cdt          # the gradient block itself serves as scratch
        self.scale_c = cdt.type(scale)
        self.one_minus_ls = cdt.type(1 - label_smoothing)
        self.ls_over_C = cdt.type(label_smoothing / C)
        self.weight_sum = None
        if index is not None:
            self.weight_sum = cdt.type(C if weight is None else np.sum(weight, dtype=np.float64))
        self.weight_zero = None if weight is None else (weight == 0)
        if self.weight_zero is not None and not self.weight_zero.any():
            self.weight_zero = None
        # The common case (index targets, no smoothing) takes the layouts' fast paths.
        self.fast = index is not None and label_smoothing == 0
        if self.fast:
            all_kept = bool(keep.all())
            # c_nll = total = keep w_y, skipped altogether when it is 1 on every row
            self.unit_total = weight is None and all_kept
            # mul0(c_nll, nll) differs from c_nll * nll only where c_nll == 0, nll == inf
            self.any_zero_c = not (all_kept and (weight is None or bool(np.all(weight != 0))))
        self.nblocks = 0
        self.bad = np.zeros(0, bool)

    # ------------------------------------------------------------------ driver
    def scratch_specs(self) -> dict:
        raise NotImplementedError

    def make_scratch(self) -> Scratch:
        return Scratch(self.scratch_specs())

    def body(self, i: int, S: Scratch) -> None:
        raise NotImplementedError

    def scratch_bytes(self) -> int:
        raise NotImplementedError

    def run(self, nworkers: int) -> None:
        self.bad = np.zeros(self.nblocks, bool)
        _blocks.run_blocks(self.nblocks, self._guarded_body, self.make_scratch, nworkers,
                           self.x.size, scratch_bytes=self.scratch_bytes())

    def _guarded_body(self, i, S):
        # x - m overflows to -inf for logits like [1e308, -1e308]: the correct exp(x - m) = 0
        # follows; errstate is per thread, so it is set in each block
        with np.errstate(over="ignore"):
            self.body(i, S)

    # ------------------------------------------------------------------ options
    def cap_into(self, x, u, slope) -> bool:
        """``u = s tanh(x / s)`` (``-inf`` kept) and ``slope = sech^2(x / s)``; False when
        ``x`` holds NaN or ``+inf`` (invalid logits, which the cap would hide)."""
        if not np.max(x) < np.inf:
            return False
        np.divide(x, self.softcap, out=u)                   # y = x / s, rounded once
        np.abs(u, out=slope)
        np.multiply(slope, -2, out=slope)
        np.exp(slope, out=slope)                            # e = exp(-2|y|) in [0, 1]
        np.tanh(u, out=u)
        np.multiply(u, self.softcap, out=u)                 # u = s tanh(y)
        if np.min(x) == -np.inf:                            # a masked class stays masked
            np.copyto(u, -np.inf, where=np.isneginf(x))
        # sech^2 = 4 e / (1 + e)^2; (1 + e)^2 in a temporary of the block's size
        denominator = np.add(slope, 1)
        np.multiply(denominator, denominator, out=denominator)
        np.multiply(slope, 4, out=slope)
        np.divide(slope, denominator, out=slope)
        return True

    def z_terms(self, m, L, kept, z_rows):
        """Per kept row: ``z lse^2`` into ``z_rows`` and the gradient factor ``2 z lse s_z``
        (``lse = m + log1p(t)``, ``L = log1p(t)``); ignored rows get 0."""
        lse = m + L
        keepf = kept.astype(self.cdt)
        z_rows[...] = keepf * (self.cdt.type(self.z_loss) * (lse * lse))
        return keepf * (self.z_factor * lse)

    def with_z(self, mass, zf):
        """``mass + zf / s``: the row factor of ``p`` before the product by the scale ``s``,
        so that ``(p (mass + zf / s) - A) s = (p mass - A) s + p zf``."""
        if zf is None or self.scale == 0:
            return mass
        return mass + zf / self.scale_c

    # ------------------------------------------------------------------ per-row algebra
    def coefficients(self, target_index, kept):
        """``c_nll``, ``c_smooth``, ``total`` of some rows (as the plain function)."""
        cdt = self.cdt
        keepf = kept.astype(cdt)
        c_nll = keepf * self.one_minus_ls
        if self.weight is not None:
            c_nll = c_nll * self.weight[target_index]
        c_smooth = keepf * self.ls_over_C
        total = c_nll + c_smooth * self.weight_sum
        return c_nll, c_smooth, total

    def log1p(self, t, S, b):
        return _blocks.log1p_nonneg(t, np.empty_like(t), S.log1p_w[:b], S.log1p_c[:b])

    def row_factor(self, total, one_plus_t):
        """Row factor ``k = total scale / (1 + t)`` of the gradient ``g = exp(x - m) k``."""
        k = (total.astype(np.float64) * self.scale) / one_plus_t.astype(np.float64)
        return k.astype(self.cdt)

    @staticmethod
    def targets_ok(raw) -> bool:
        """Probability targets as given are finite and in [0, 1] (the plain check)."""
        return unit_interval_ok(raw)

    # ------------------------------------------------------------------ fast path
    def fast_c(self, target_index, kept):
        """``c_nll = total`` of a block's rows, or None when it is 1 on every row."""
        if self.unit_total:
            return None
        c = kept.astype(self.cdt)                            # keepf * (1 - 0) * w_y
        if self.weight is not None:
            c *= self.weight[target_index]
        return c

    def fast_row_factor(self, c, one_plus_t, out, zf=None):
        """Row factor ``k = (total scale + zf) / (1 + t)`` of ``g_c = exp(x_c - m) k``
        (``zf`` the z-loss's ``2 z lse s_z``, or None)."""
        if c is None and zf is None:
            return np.divide(self.scale_c, one_plus_t, out=out)
        if c is None:
            np.add(zf, self.scale_c, out=out)
        else:
            np.multiply(c, self.scale_c, out=out)
            if zf is not None:
                np.add(out, zf, out=out)
        return np.divide(out, one_plus_t, out=out)

    def fast_tail(self, rows, S, b, t, one_plus_t, d_target, e_target, c, L=None, zf=None):
        """Per-row loss (into ``rows``) and target-entry gradient (into ``e_target``).

        ``L = log1p(t)`` when already computed (the z-loss needs it first), ``zf`` the
        z-loss's gradient factor: ``g_y = (p_y c - c) s + p_y zf``."""
        if L is None:
            L = _blocks.log1p_nonneg(t, S.row_max[:b], one_plus_t, S.log1p_c[:b],
                                     have_w=True)
        if c is None:                                        # c_nll = 1: rows = nll exactly
            np.subtract(L, d_target, out=rows)               # nll = (m - x_y) + log1p(t)
        else:
            np.subtract(L, d_target, out=L)
            with np.errstate(invalid="ignore"):              # 0 * inf, set to 0 just below
                np.multiply(c, L, out=rows)
            if self.any_zero_c:
                np.copyto(rows, 0, where=c == 0)             # mul0: 0 * inf = 0
        # g_y = ((p_y total) - c_nll) scale with p_y = e_y / (1 + t): the plain order
        np.divide(e_target, one_plus_t, out=e_target)
        z_part = None if zf is None else e_target * zf       # p_y 2 z lse s_z
        if c is None:
            np.subtract(e_target, 1, out=e_target)
        else:
            np.multiply(e_target, c, out=e_target)
            np.subtract(e_target, c, out=e_target)
        np.multiply(e_target, self.scale_c, out=e_target)
        if z_part is not None:
            np.add(e_target, z_part, out=e_target)

    # ------------------------------------------------------------------ general tail
    def finish(self, rows, S, b, gb, shifted, coeff, t, d_target, target_index, cax,
               kept=None, m=None, z_rows=None):
        """Loss rows and gradient of a block once ``gb = exp(x - m)`` and ``t`` are known.

        ``cax`` is the class axis of the block (1: ``(b, C)``, 0: ``(C, b)``);
        ``shifted`` holds ``x - m``; ``coeff`` the probability targets (or None);
        ``m`` the row maxima and ``z_rows`` the block's z-loss rows (with ``z_loss``).
        """
        arange = S.arange[:b]

        def per_row(v):  # a per-row vector broadcast against the block
            return v[:, None] if cax == 1 else v[None, :]

        def per_class(v):
            return v if cax == 1 else v[:, None]

        one_plus_t = 1 + t                                   # sum_c exp(x_c - m)
        L = self.log1p(t, S, b)                              # log1p(t)
        zf = None
        if self.z_loss:
            zf = self.z_terms(m, L, np.ones(b, bool) if kept is None else kept, z_rows)
        if coeff is not None:
            # probability targets: loss = sum_c A_c (-log p_c); grad = p sum_c A_c - A
            if self.label_smoothing:
                np.multiply(coeff, self.one_minus_ls, out=coeff)
                np.add(coeff, self.ls_over_C, out=coeff)
            if self.weight is not None:
                np.multiply(coeff, per_class(self.weight), out=coeff)
            np.subtract(per_row(L), shifted, out=shifted)    # -log p = (m - x) + log1p(t)
            with np.errstate(invalid="ignore"):              # 0 * inf, set to 0 below
                np.multiply(coeff, shifted, out=shifted)
            M = S.mask[:b] if cax == 1 else S.mask[:, :b]
            np.equal(coeff, 0, out=M)
            np.copyto(shifted, 0, where=M)                   # mul0: 0 log 0 = 0
            rows[...] = np.sum(shifted, axis=cax)
            mass = self.with_z(np.sum(coeff, axis=cax), zf)
            np.divide(gb, per_row(one_plus_t), out=gb)       # p
            np.multiply(gb, per_row(mass), out=gb)
            np.subtract(gb, coeff, out=gb)
            np.multiply(gb, self.scale_c, out=gb)
            return
        # index targets with label smoothing (without smoothing: the fast paths)
        c_nll, c_smooth, total = self.coefficients(target_index, kept)
        nll = -d_target + L
        loss = mul0(c_nll, nll)
        np.subtract(per_row(L), shifted, out=shifted)        # -log p_c = -d + log1p(t)
        if self.weight is not None:
            with np.errstate(invalid="ignore"):
                np.multiply(shifted, per_class(self.weight), out=shifted)
            if self.weight_zero is not None:
                np.copyto(shifted, 0, where=per_class(self.weight_zero))
        rows[...] = loss + mul0(c_smooth, np.sum(shifted, axis=cax))
        # the plain function's operation order, for bitwise-equal smoothing terms
        np.divide(gb, per_row(one_plus_t), out=gb)           # p
        np.multiply(gb, per_row(self.with_z(total, zf)), out=gb)
        if self.weight is None:
            np.subtract(gb, per_row(c_smooth), out=gb)
        else:
            np.multiply(per_row(c_smooth), per_class(self.weight), out=shifted)
            np.subtract(gb, shifted, out=gb)
        at = (arange, target_index) if cax == 1 else (target_index, arange)
        gb[at] = gb[at] - c_nll
        np.multiply(gb, self.scale_c, out=gb)
