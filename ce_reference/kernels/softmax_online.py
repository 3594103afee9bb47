r"""Softmax layout ``online``: one row larger than ``ONLINE_ROW_BYTES``, swept in column chunks.

Pass 1 keeps a running maximum ``M`` and ``T = sum of exp(x - M)`` over all
entries but the first arg-max, merged chunk by chunk with the online-softmax
rule (Milakov & Gimelshein 2018): a new chunk maximum ``m_j > M`` rescales the
old terms (the old arg-max included) by ``exp(M - m_j)``.  Pass 2 recomputes
``exp(x - M)`` from the logits (bitwise the plain function's exponentials) and
writes the gradient, and, where the loss needs ``log1p(T)`` per class
(probability targets, label smoothing), accumulates the per-class loss terms.
One row is one block.
"""

from __future__ import annotations

import math

import numpy as np

from .._special import mul0
from . import _blocks
from ._softmax_sweep import SoftmaxSweep


class OnlineSweep(SoftmaxSweep):
    """One block per row; the row is processed in chunks of :data:`._blocks.BLOCK_BYTES`."""

    def __init__(self, **fields):
        super().__init__(**fields)
        self.fast = False                  # one path: pass 2 handles every target kind
        self.chunk = max(1, _blocks.BLOCK_BYTES // self.itemsize)
        self.nblocks = self.pre

    def scratch_specs(self) -> dict:
        n, cdt = self.chunk, self.cdt
        return {"x_cast": ((n,), cdt), "exp_chunk": ((n,), cdt), "shifted": ((n,), cdt),
                "coeff": ((n,), cdt), "mask": ((n,), bool), "capped": ((n,), cdt),
                "cap_slope": ((n,), cdt)}

    def scratch_bytes(self) -> int:
        blocks = (int(self.cast_in) + int(not self.direct) + (0 if self.fast else 3)
                  + (2 if self.softcap is not None else 0))
        return (blocks + 1) * self.chunk * self.itemsize + 16 * 8

    def _load(self, src, c0, c1, S):
        """Columns ``c0:c1`` of a row in the compute dtype, soft-capped with ``softcap``
        (then ``S.cap_slope`` holds their ``sech^2(x / s)``); None if the cap finds NaN
        or +inf."""
        x = src[c0:c1]
        if src.dtype != self.cdt:
            np.copyto(S.x_cast[:c1 - c0], x, casting="unsafe")
            x = S.x_cast[:c1 - c0]
        if self.softcap is None:
            return x
        if not self.cap_into(x, S.capped[:c1 - c0], S.cap_slope[:c1 - c0]):
            return None
        return S.capped[:c1 - c0]

    def _scale_chunk(self, g, c0, c1, S):
        """The cap's chain rule on a gradient chunk."""
        if self.softcap is not None:
            np.multiply(g, S.cap_slope[:c1 - c0], out=g)

    def _coeff_chunk(self, targets_row, c0, c1, S):
        """``A = w q'`` of one chunk of a probability-target row, or None if invalid."""
        coeff = S.coeff[:c1 - c0]
        if not self.targets_ok(targets_row[c0:c1]):
            return None
        np.copyto(coeff, targets_row[c0:c1], casting="unsafe")
        if self.label_smoothing:
            np.multiply(coeff, self.one_minus_ls, out=coeff)
            np.add(coeff, self.ls_over_C, out=coeff)
        if self.weight is not None:
            np.multiply(coeff, self.weight[c0:c1], out=coeff)
        return coeff

    def _max_and_sum(self, r, x_row, targets_row, S):
        """Pass 1: ``(M, T, sum of A)`` of row ``r``; None when the row is invalid."""
        C, n = self.C, self.chunk
        M, T, mass = -math.inf, 0.0, 0.0
        for c0 in range(0, C, n):
            c1 = min(C, c0 + n)
            if targets_row is not None:
                coeff = self._coeff_chunk(targets_row, c0, c1, S)
                if coeff is None:
                    return None
                mass += float(np.sum(coeff, dtype=np.float64))
            xc = self._load(x_row, c0, c1, S)
            if xc is None:
                return None
            a = int(np.argmax(xc))
            mj = xc[a]
            if math.isnan(mj) or mj == math.inf:
                return None
            if mj == -math.inf:
                continue                                     # contributes exp(-inf) = 0
            e = S.exp_chunk[:c1 - c0]
            np.subtract(xc, mj, out=e)
            np.exp(e, out=e)
            e[a] = 0
            tj = float(np.sum(e, dtype=np.float64))
            mj = float(mj)
            if M == -math.inf:
                M, T = mj, tj
            elif mj > M:
                T = tj + (1.0 + T) * math.exp(M - mj)
                M = mj
            else:
                T = T + (1.0 + tj) * math.exp(mj - M)
        if M == -math.inf:                                   # the whole row is -inf
            return None
        return M, T, mass

    def body(self, r, S):
        cdt, C = self.cdt, self.C
        x_row = self.x.reshape(self.pre, C)[r]
        g_row = self.grad.reshape(self.pre, C)[r]
        targets_row = None if self.probs is None else self.probs.reshape(self.pre, C)[r]
        stats = self._max_and_sum(r, x_row, targets_row, S)
        if stats is None:
            self.bad[r] = True
            return
        M, T, mass = stats
        m = cdt.type(M)
        t = np.array([T], cdt)
        one_plus_t = 1 + t
        L = _blocks.log1p_nonneg(t, np.empty(1, cdt), np.empty(1, cdt), np.empty(1, cdt))
        zf = None
        if self.z_loss:
            kept = np.ones(1, bool) if targets_row is not None else self.keep[r]
            zf = self.z_terms(np.array([m]), L, kept, self.z_rows.reshape(-1)[r:r + 1])
        if targets_row is not None:
            self.rows.reshape(-1)[r] = self._probability_row(
                x_row, g_row, targets_row, m, one_plus_t, L, self.with_z(cdt.type(mass), zf), S)
        else:
            self.rows.reshape(-1)[r] = self._index_row(r, x_row, g_row, m, one_plus_t, L, S, zf)

    def _probability_row(self, x_row, g_row, targets_row, m, one_plus_t, L, mass, S):
        """Pass 2 for probability targets: gradient ``p sum A - A`` and the row's loss."""
        acc = 0.0
        for c0 in range(0, self.C, self.chunk):
            c1 = min(self.C, c0 + self.chunk)
            coeff = self._coeff_chunk(targets_row, c0, c1, S)
            xc = self._load(x_row, c0, c1, S)
            d = S.shifted[:c1 - c0]
            np.subtract(xc, m, out=d)
            g = g_row[c0:c1] if self.direct else S.exp_chunk[:c1 - c0]
            np.exp(d, out=g)
            np.divide(g, one_plus_t, out=g)
            np.multiply(g, mass, out=g)
            np.subtract(g, coeff, out=g)
            np.multiply(g, self.scale_c, out=g)
            self._scale_chunk(g, c0, c1, S)
            if not self.direct:
                np.copyto(g_row[c0:c1], g, casting="unsafe")
            np.subtract(L, d, out=d)                         # -log p = (m - x) + log1p(t)
            with np.errstate(invalid="ignore"):
                np.multiply(coeff, d, out=d)
            np.copyto(d, 0, where=np.equal(coeff, 0, out=S.mask[:c1 - c0]))   # 0 log 0 = 0
            acc += float(np.sum(d, dtype=np.float64))
        return acc

    def _index_row(self, r, x_row, g_row, m, one_plus_t, L, S, zf=None):
        """Pass 2 for index targets (with or without label smoothing)."""
        cdt, C, n = self.cdt, self.C, self.chunk
        y = self.index[r, 0]
        c_nll, c_smooth, total = self.coefficients(self.index[r], self.keep[r])
        total = self.with_z(total, zf)
        d_target = cdt.type(self._load(x_row, y, y + 1, S)[0]) - m
        slope_y = None if self.softcap is None else cdt.type(S.cap_slope[0])   # a copy
        nll = -d_target + L
        loss = mul0(c_nll, nll)
        k = self.row_factor(total, one_plus_t)[0]
        acc = 0.0
        for c0 in range(0, C, n):
            c1 = min(C, c0 + n)
            xc = self._load(x_row, c0, c1, S)
            d = S.shifted[:c1 - c0]
            np.subtract(xc, m, out=d)
            g = g_row[c0:c1] if self.direct else S.exp_chunk[:c1 - c0]
            np.exp(d, out=g)
            if self.label_smoothing:
                np.divide(g, one_plus_t, out=g)
                np.multiply(g, total, out=g)
                np.subtract(g, c_smooth if self.weight is None else
                            c_smooth * self.weight[c0:c1], out=g)
                np.multiply(g, self.scale_c, out=g)
                np.subtract(L, d, out=d)
                if self.weight is not None:
                    with np.errstate(invalid="ignore"):
                        np.multiply(d, self.weight[c0:c1], out=d)
                    if self.weight_zero is not None:
                        np.copyto(d, 0, where=self.weight_zero[c0:c1])
                acc += float(np.sum(d, dtype=np.float64))
            else:
                np.multiply(g, k, out=g)
            self._scale_chunk(g, c0, c1, S)
            if not self.direct:
                np.copyto(g_row[c0:c1], g, casting="unsafe")
        e_target = np.exp(np.array([d_target], cdt))
        smooth_y = c_smooth * (1 if self.weight is None else self.weight[y])
        if self.label_smoothing:
            loss = loss + mul0(c_smooth, np.array([acc], cdt))
            g_target = ((e_target / one_plus_t) * total - smooth_y)
            g_target = (g_target - c_nll) * self.scale_c
        else:
            g_target = ((e_target / one_plus_t) * total - c_nll) * self.scale_c
        if slope_y is not None:
            g_target = g_target * slope_y
        g_row[y] = g_target[0]
        return loss[0]
