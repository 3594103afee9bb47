r"""Softmax layout ``rows``: class axis last, ``C >= SMALL_C``; blocks of whole rows ``(B, C)``.

A block is ``B`` consecutive rows of about :data:`._blocks.BLOCK_BYTES`; every
pass after the first reads it from the cache.  The fast path (index targets,
no label smoothing) makes five passes over the block: arg-max, ``x - m``,
``exp``, the row sum of the other exponentials, and the scaling ``g = e k``;
the target entries are gathered and fixed up with flat indices
(``np.take``/``np.put`` with a row offset), never with a one-hot mask.
"""

from __future__ import annotations

import math

import numpy as np

from . import _blocks
from ._softmax_sweep import SoftmaxSweep


class RowsSweep(SoftmaxSweep):
    """Blocks of ``B`` whole rows of the ``(pre, C)`` logits."""

    def __init__(self, **fields):
        super().__init__(**fields)
        # rows per block; never more than there are (the scratch is sized by B, and a
        # small call must not allocate a whole block's worth: the partition is the same)
        self.B = max(1, min(_blocks.BLOCK_BYTES // (self.C * self.itemsize), self.pre))
        self.nblocks = -(-self.pre // self.B)

    def scratch_specs(self) -> dict:
        B, C, cdt = self.B, self.C, self.cdt
        block = ((B, C), cdt)
        vec = ((B,), cdt)
        return {"x_cast": block, "grad_block": block, "shifted": block, "coeff": block,
                "capped": block, "cap_slope": block, "log1p_t": vec,
                "mask": ((B, C), bool), "arange": ((B,), np.intp),
                "log1p_w": vec, "log1p_c": vec, "argmax_flat": ((B,), np.intp),
                "target_flat": ((B,), np.intp), "row_max": vec, "t_sum": vec,
                "d_target": vec, "e_target": vec, "one_plus_t": vec, "row_factor": vec}

    def make_scratch(self):
        S = super().make_scratch()
        S.arange[...] = np.arange(self.B)
        S.row_offset = np.arange(self.B) * self.C               # flat row offsets of a block
        return S

    def scratch_bytes(self) -> int:
        # the cast input and/or gradient blocks, plus (shifted, coeff, mask) off the fast path
        blocks = (int(self.cast_in) + int(not self.direct) + (0 if self.fast else 3)
                  + (2 if self.softcap is not None else 0))
        return (blocks + 1) * self.B * self.C * self.itemsize + 16 * self.B * 8

    def body(self, i, S):
        if self.fast:
            self.fast_block(i, S)
        else:
            self.general_block(i, S)

    def _load(self, i, S):
        """Rows ``r0:r1`` of the logits in the compute dtype (soft-capped with ``softcap``;
        None when the cap finds NaN or +inf)."""
        r0 = i * self.B
        r1 = min(self.pre, r0 + self.B)
        b = r1 - r0
        xb = self.x.reshape(self.pre, self.C)[r0:r1]
        if self.cast_in:
            np.copyto(S.x_cast[:b], xb, casting="unsafe")
            xb = S.x_cast[:b]
        if self.softcap is not None:
            if not self.cap_into(xb, S.capped[:b], S.cap_slope[:b]):
                return r0, r1, b, None
            xb = S.capped[:b]
        return r0, r1, b, xb

    def _finish_options(self, gb, S, b):
        """The soft cap's chain rule: the block's gradient times ``sech^2(x / s)``."""
        if self.softcap is not None:
            np.multiply(gb, S.cap_slope[:b], out=gb)

    def general_block(self, i, S):
        """Probability targets, or index targets with label smoothing."""
        r0, r1, b, xb = self._load(i, S)
        if xb is None:
            self.bad[i] = True
            return
        arange = S.arange[:b]
        coeff = None
        if self.probs is not None:
            coeff = S.coeff[:b]
            raw = self.probs.reshape(self.pre, self.C)[r0:r1]
            if not self.targets_ok(raw):
                self.bad[i] = True
                return
            np.copyto(coeff, raw, casting="unsafe")
        a = np.argmax(xb, axis=1)
        m = xb[arange, a]
        if not np.isfinite(m).all():
            self.bad[i] = True
            return
        gdst = self.grad.reshape(self.pre, self.C)[r0:r1]
        gb = gdst if self.direct else S.grad_block[:b]
        np.subtract(xb, m[:, None], out=gb)                 # d = x - m
        shifted = S.shifted[:b]
        np.copyto(shifted, gb)
        target_index = d_target = None
        if coeff is None:
            target_index = self.index[r0:r1, 0]
            d_target = gb[arange, target_index]
        np.exp(gb, out=gb)                                   # e = exp(d)
        gb[arange, a] = 0                                    # t = sum_{c != a} e_c
        t = np.sum(gb, axis=1)
        gb[arange, a] = 1
        self.finish(self.rows.reshape(-1)[r0:r1], S, b, gb, shifted, coeff, t, d_target,
                    target_index, 1, None if coeff is not None else self.keep[r0:r1, 0],
                    m=m, z_rows=None if self.z_rows is None else self.z_rows.reshape(-1)[r0:r1])
        self._finish_options(gb, S, b)
        if not self.direct:
            np.copyto(gdst, gb, casting="unsafe")

    def fast_block(self, i, S):
        """Index targets, no smoothing: 5 passes over the block."""
        r0, r1, b, xb = self._load(i, S)
        if xb is None:
            self.bad[i] = True
            return
        argmax_flat, target_flat, m = S.argmax_flat[:b], S.target_flat[:b], S.row_max[:b]
        np.argmax(xb, axis=1, out=argmax_flat)              # pass 1 (reads x from memory)
        np.add(argmax_flat, S.row_offset[:b], out=argmax_flat)   # flat index of the arg-max
        np.take(xb.reshape(-1), argmax_flat, out=m)          # m = row maximum
        if not math.isfinite(float(np.add.reduce(m))) and not np.isfinite(m).all():
            self.bad[i] = True                               # NaN, +inf, all -inf: not written
            return
        gdst = self.grad.reshape(self.pre, self.C)[r0:r1]
        gb = gdst if self.direct else S.grad_block[:b]
        gf = gb.reshape(-1)
        np.subtract(xb, m[:, None], out=gb)                  # pass 2: d = x - m
        target_index = self.index[r0:r1, 0]
        np.add(target_index, S.row_offset[:b], out=target_flat)
        d_target = np.take(gf, target_flat, out=S.d_target[:b])   # d_y
        np.exp(gb, out=gb)                                   # pass 3: e = exp(d)
        np.put(gf, argmax_flat, 0)
        t = np.sum(gb, axis=1, out=S.t_sum[:b])              # pass 4: t = sum_{c != a} e_c
        np.put(gf, argmax_flat, 1)
        e_target = np.take(gf, target_flat, out=S.e_target[:b])
        one_plus_t = np.add(t, 1, out=S.one_plus_t[:b])
        kept = self.keep[r0:r1, 0]
        L = zf = None
        if self.z_loss:                                      # lse = m + log1p(t) per row
            L = _blocks.log1p_nonneg(t, S.log1p_t[:b], one_plus_t, S.log1p_c[:b],
                                     have_w=True)
            zf = self.z_terms(m, L, kept, self.z_rows.reshape(-1)[r0:r1])
        c = self.fast_c(target_index, kept)
        k = self.fast_row_factor(c, one_plus_t, S.row_factor[:b], zf)
        np.multiply(gb, k[:, None], out=gb)                  # pass 5: g = e k
        self.fast_tail(self.rows.reshape(-1)[r0:r1], S, b, t, one_plus_t, d_target, e_target, c,
                       L=L, zf=zf)
        np.put(gf, target_flat, S.e_target[:b])              # target entries (plain order)
        self._finish_options(gb, S, b)
        if not self.direct:
            np.copyto(gdst, gb, casting="unsafe")
