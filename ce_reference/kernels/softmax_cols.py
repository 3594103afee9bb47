r"""Softmax layout ``cols``: a class axis that is not last, or few classes (``C < SMALL_C``).

The logits are viewed as ``(pre, C, post)`` and a block is a ``(C, b)`` slab of
``b`` columns: the class reductions become ``C`` vectorised row operations over
``b`` columns instead of ``b`` tiny reductions of length ``C`` (NumPy pays
~50 ns of overhead per reduced row).  With the class axis last and few classes
(``post == 1``), a block of ``b`` rows is transposed into a ``(C, B)`` scratch,
computed there, and transposed back into the gradient.

The maxima of a column are found as ``d == 0`` after ``d = x - m``; the fast
path drops them from ``t`` by ``exp(d - 1e30 [d == 0])`` (a product and a sum
cost ~0.25 ns per element here, a masked ``copyto`` ~2 ns); ties other than
the first arg-max count as ``exp(0) = 1`` in ``t``.
"""

from __future__ import annotations

import math

import numpy as np

from . import _blocks
from ._softmax_sweep import SoftmaxSweep

# Added to the maxima (d == 0) before exp so that they drop out of t: exp(-1e30) = 0.
_NEG_BIG = {"f": np.float32(-1e30), "d": np.float64(-1e30)}


class ColsSweep(SoftmaxSweep):
    """Blocks of ``(C, b)`` column slabs of the ``(pre, C, post)`` logits."""

    def __init__(self, **fields):
        super().__init__(**fields)
        self.B = max(1, _blocks.BLOCK_BYTES // (self.C * self.itemsize))
        if self.post == 1:          # small C, class axis last: transpose blocks of rows
            self.B = max(1, min(self.B, self.pre))   # scratch no larger than the input
            self.per_slice = -(-self.pre // self.B)
            self.nblocks = self.per_slice
        else:
            self.B = max(1, min(self.B, self.post))
            self.per_slice = -(-self.post // self.B)
            self.nblocks = self.pre * self.per_slice

    def scratch_specs(self) -> dict:
        B, C, cdt = self.B, self.C, self.cdt
        block = ((C, B), cdt)
        vec = ((B,), cdt)
        return {"x_cast": block, "grad_block": block, "shifted": block, "coeff": block,
                "shifted_masked": block, "capped": block, "cap_slope": block,
                "mask": ((C, B), bool), "arange": ((B,), np.intp), "log1p_t": vec,
                "log1p_w": vec, "log1p_c": vec, "target_flat": ((B,), np.intp),
                "row_max": vec, "t_sum": vec, "d_target": vec, "e_target": vec,
                "one_plus_t": vec, "row_factor": vec}

    def make_scratch(self):
        S = super().make_scratch()
        S.arange[...] = np.arange(self.B)
        return S

    def scratch_bytes(self) -> int:
        blocks = (int(self.cast_in) + int(not self.direct) + 2 + (0 if self.fast else 3)
                  + (2 if self.softcap is not None else 0))
        return (blocks + 1) * self.B * self.C * self.itemsize + 16 * self.B * 8

    def body(self, i, S):
        if self.fast:
            self.fast_block(i, S)
        else:
            self.general_block(i, S)

    def _rows_of(self, i, j0, j1, rows=None):
        """The block's slice of the flattened ``(pre, post)`` per-row losses (or ``rows``)."""
        rows = self.rows if rows is None else rows
        if self.post > 1:
            p = i // self.per_slice
            return rows.reshape(-1)[p * self.post + j0:p * self.post + j1]
        return rows.reshape(-1)[j0:j1]

    def _z_rows_of(self, i, j0, j1):
        return None if self.z_rows is None else self._rows_of(i, j0, j1, self.z_rows)

    def _cap(self, src, S, b):
        """``(capped source, its gradient block)`` with ``softcap``, or None if invalid."""
        capped = S.capped[:, :b]
        if not self.cap_into(src, capped, S.cap_slope[:, :b]):
            return None
        return capped

    def _load(self, i, S):
        """Block ``i``: source ``(C, b)``, its gradient block and destination, targets."""
        C, B = self.C, self.B
        if self.post == 1:  # small C: rows j0:j1 of (pre, C), transposed into scratch
            j0 = i * B
            j1 = min(self.pre, j0 + B)
            b = j1 - j0
            src = S.x_cast[:, :b]
            np.copyto(src, self.x.reshape(self.pre, C)[j0:j1].T, casting="unsafe")
            if self.softcap is not None:
                src = self._cap(src, S, b)
            gb = src                      # computed in place, transposed back at the end
            gdst = self.grad.reshape(self.pre, C)[j0:j1].T
            target_index = kept = None
            if self.index is not None:
                target_index, kept = self.index[j0:j1, 0], self.keep[j0:j1, 0]
            targets = None if self.probs is None else self.probs.reshape(self.pre, C)[j0:j1].T
        else:
            p, q = divmod(i, self.per_slice)
            j0 = q * B
            j1 = min(self.post, j0 + B)
            b = j1 - j0
            src = self.x.reshape(self.pre, C, self.post)[p, :, j0:j1]
            if self.cast_in:
                np.copyto(S.x_cast[:, :b], src, casting="unsafe")
                src = S.x_cast[:, :b]
            if self.softcap is not None:
                src = self._cap(src, S, b)
            gdst = self.grad.reshape(self.pre, C, self.post)[p, :, j0:j1]
            gb = gdst if self.direct else S.grad_block[:, :b]
            target_index = kept = None
            if self.index is not None:
                target_index, kept = self.index[p, j0:j1], self.keep[p, j0:j1]
            targets = None if self.probs is None else self.probs.reshape(
                self.pre, C, self.post)[p, :, j0:j1]
        return j0, j1, b, src, gb, gdst, target_index, kept, targets

    def general_block(self, i, S):
        """Probability targets, or index targets with label smoothing."""
        j0, j1, b, src, gb, gdst, target_index, kept, targets = self._load(i, S)
        if src is None:
            self.bad[i] = True
            return
        arange = S.arange[:b]
        coeff = None
        if targets is not None:
            coeff = S.coeff[:, :b]
            if not self.targets_ok(targets):
                self.bad[i] = True
                return
            np.copyto(coeff, targets, casting="unsafe")
        m = np.max(src, axis=0)
        if not np.isfinite(m).all():
            self.bad[i] = True
            return
        np.subtract(src, m, out=gb)                          # d = x - m
        shifted = S.shifted[:, :b]
        np.copyto(shifted, gb)
        d_target = None if coeff is not None else gb[target_index, arange]
        M = S.mask[:, :b]
        np.equal(gb, 0, out=M)                               # the maxima (d == 0)
        np.exp(gb, out=gb)
        np.copyto(gb, 0, where=M)                            # exclude them from t ...
        t = np.sum(gb, axis=0)
        if np.count_nonzero(M) != b:                         # ... but ties other than the
            t += (np.sum(M, axis=0) - 1).astype(self.cdt)    # first arg-max count as 1
        np.copyto(gb, 1, where=M)
        self.finish(self._rows_of(i, j0, j1), S, b, gb, shifted, coeff, t, d_target,
                    target_index, 0, kept, m=m, z_rows=self._z_rows_of(i, j0, j1))
        if self.softcap is not None:
            np.multiply(gb, S.cap_slope[:, :b], out=gb)      # the cap's chain rule
        if gdst is not gb:
            np.copyto(gdst, gb, casting="unsafe")

    def fast_block(self, i, S):
        """Index targets, no smoothing."""
        cdt = self.cdt
        j0, j1, b, src, gb, gdst, target_index, kept, _ = self._load(i, S)
        if src is None:
            self.bad[i] = True
            return
        arange = S.arange[:b]
        m = np.max(src, axis=0, out=S.row_max[:b])
        if not math.isfinite(float(np.add.reduce(m))) and not np.isfinite(m).all():
            self.bad[i] = True
            return
        np.subtract(src, m, out=gb)                          # d = x - m
        if self.post == 1:                                   # gb is the (C, B) scratch
            target_flat = np.multiply(target_index, self.B, out=S.target_flat[:b])
            np.add(target_flat, arange, out=target_flat)
            gf = (S.x_cast if self.softcap is None else S.capped).reshape(-1)
            d_target = np.take(gf, target_flat, out=S.d_target[:b])
        else:
            d_target = gb[target_index, arange]
        M = S.mask[:, :b]
        np.equal(gb, 0, out=M)                               # the maxima (d == 0)
        masked = S.shifted_masked[:, :b]
        np.multiply(M, _NEG_BIG[cdt.char], out=masked)
        np.add(gb, masked, out=masked)
        np.exp(masked, out=gb)
        t = np.sum(gb, axis=0, out=S.t_sum[:b])
        if np.count_nonzero(M) != b:                         # ties other than the first
            t += (np.sum(M, axis=0) - 1).astype(cdt)         # arg-max count as exp(0) = 1
        np.add(gb, M, out=gb)                                # e = exp(d): 1 at the maxima
        if self.post == 1:
            e_target = np.take(gf, target_flat, out=S.e_target[:b])
        else:
            e_target = gb[target_index, arange]
        one_plus_t = np.add(t, 1, out=S.one_plus_t[:b])
        L = zf = None
        if self.z_loss:                                      # lse = m + log1p(t) per row
            L = _blocks.log1p_nonneg(t, S.log1p_t[:b], one_plus_t, S.log1p_c[:b],
                                     have_w=True)
            zf = self.z_terms(m, L, kept, self._z_rows_of(i, j0, j1))
        c = self.fast_c(target_index, kept)
        k = self.fast_row_factor(c, one_plus_t, S.row_factor[:b], zf)
        np.multiply(gb, k, out=gb)                           # g = e k
        self.fast_tail(self._rows_of(i, j0, j1), S, b, t, one_plus_t, d_target, e_target, c,
                       L=L, zf=zf)
        if self.post == 1:
            np.put(gf, target_flat, e_target)
        else:
            gb[target_index, arange] = e_target
        if self.softcap is not None:
            np.multiply(gb, S.cap_slope[:, :b], out=gb)      # the cap's chain rule
        if gdst is not gb:
            np.copyto(gdst, gb, casting="unsafe")
