r"""Fused, blocked, multithreaded softmax cross-entropy loss and gradient.

:func:`value_and_grad` computes exactly what ``softmax_cross_entropy`` and
``softmax_cross_entropy_grad`` compute (same formulas, same order of
operations wherever that is affordable), in one sweep over the logits:

* the logits are cut into a fixed partition of blocks of about
  :data:`._fused.BLOCK_BYTES` (several rows, or a slab of columns), so that all
  the passes over a block after the first one hit the cache;
* every block-sized operation writes with ``out=`` into the gradient itself or
  into per-thread scratch; there is no one-hot matrix and no temporary the size
  of the input (per-row vectors -- targets, weights, losses -- are O(N));
* blocks run on ``workers`` threads; each writes only its rows of the gradient
  and of the per-row losses, which are reduced once at the end by the plain
  functions' own :func:`._reduction.reduce_loss`, so the result does not depend
  on ``workers`` or on scheduling.

Three layouts, chosen from the shape only:

``rows``   class axis last, ``C >= SMALL_C``: blocks of ``B`` whole rows ``(B, C)``.
``cols``   class axis not last (``x`` viewed as ``(pre, C, post)``), or ``C < SMALL_C``
           (a ``(B, C)`` block transposed into a ``(C, B)`` scratch): the class
           reductions become ``C`` vectorised row operations over ``B`` columns
           instead of ``B`` tiny reductions of length ``C`` (NumPy pays ~50 ns of
           overhead per reduced row).
``online`` one row larger than :data:`ONLINE_ROW_BYTES`: the row is swept in column
           chunks; the chunks' maxima and sums are merged with the online-softmax
           rule (Milakov & Gimelshein 2018) and a second sweep recomputes
           ``exp(x - M)`` from the logits (bitwise the plain function's
           exponentials) and writes the gradient.

``-d + L`` is computed as ``L - d`` (the same rounding): NumPy 2.4.6's
``np.negative`` returns wrong values when input and output are the same strided
single column (e.g. ``D[:, :1]`` of a ``(n, 4)`` float32 array), which a ``(C, b)``
block with ``b = 1`` is.

Stability identity (the one of :func:`._special.log_softmax_parts`): with ``m``
the row maximum at the first arg-max ``a`` and ``t = sum_{c != a} exp(x_c - m)``,
``-log p_c = (m - x_c) + log1p(t)`` (two non-negative terms, no cancellation,
accurate even when ``t`` is far below machine epsilon) and
``p_c = exp(x_c - m) / (1 + t)``.
"""

from __future__ import annotations

import math

import numpy as np

from . import _fused
from . import _validation as V
from ._reduction import grad_scale, reduce_loss
from ._special import mul0

# Class counts below this use the transposed ``cols`` layout when the class axis
# is last (at C = 64 a row of float32 is one 256-byte stretch; below it the per-row
# overhead of NumPy reductions dominates the arithmetic).
SMALL_C = 64

# A row of more than this many bytes (in the compute dtype) is processed in
# column chunks merged with the online-softmax rule.  Rows up to this size are
# kept whole: even when they exceed L2 they stay in the shared L3 between passes,
# which is cheaper than the second exponential sweep the online path costs.
ONLINE_ROW_BYTES = 4 * 1024 * 1024


# Added to the maxima (d == 0) before exp so that they drop out of t: exp(-1e30) = 0.
_NEG_BIG = {"f": np.float32(-1e30), "d": np.float64(-1e30)}


class _Invalid(ValueError):
    """A cheap check found a problem; the plain function's validation names it."""

    def __init__(self):
        super().__init__("invalid arguments (the plain function's validation did not "
                         "say which; please report this)")


class _Scratch:
    """Per-thread scratch buffers, allocated lazily by name and reused."""

    def __init__(self, specs):
        self._specs = specs
        self._bufs = {}

    def __getattr__(self, name):
        bufs = self.__dict__["_bufs"]
        if name not in bufs:
            shape, dtype = self.__dict__["_specs"][name]
            bufs[name] = np.empty(shape, dtype)
        return bufs[name]


def value_and_grad(logits, targets, axis, weight, ignore_index, label_smoothing, reduction,
                   out, workers):
    """Loss and gradient of ``softmax_cross_entropy``; see the module docstring."""
    from . import categorical as _cat  # late import: categorical imports this module

    def reference_check():
        # The plain function's validation, in its order; raises the first problem.
        _cat._SoftmaxProblem(logits, targets, axis, weight, ignore_index, label_smoothing,
                             reduction)

    try:
        x0 = V.as_numeric_array("logits", logits)
        cdt, rdt = V.compute_dtypes(x0.dtype)
        ax = _cat._class_axis("logits", x0, axis)
        t = V.as_numeric_array("targets", targets)
        if t.dtype.kind in "iu":
            T = V.class_targets(t, x0.shape, ax, cdt, ignore_index, "probabilities / one-hot")
            probs = None
        else:
            # Probability targets: only the structure is checked here (the values
            # are checked block by block, without input-sized temporaries).
            if ignore_index is not None or t.shape != x0.shape:
                raise _Invalid()
            T, probs = None, t
        C = x0.shape[ax]
        w = V.class_weight(weight, C, cdt)
        ls = V.check_label_smoothing(label_smoothing)
        reduction = V.check_reduction(reduction)
    except (TypeError, ValueError):
        reference_check()
        raise
    nworkers = _fused.resolve_workers(workers)
    out, in_place = _fused.check_out(out, x0.shape, rdt, x0,
                                     (("targets", t), ("weight", weight)))

    shape = x0.shape
    pre, post = math.prod(shape[:ax]), math.prod(shape[ax + 1:])
    N = pre * post
    x = np.ascontiguousarray(x0)  # a copy only for non-contiguous input
    grad = out if out is not None else np.empty(shape, rdt)
    cast_in = x.dtype != cdt
    direct = rdt == cdt  # the gradient block itself serves as scratch

    # ---- per-row constants (O(N)), exactly as _SoftmaxProblem computes them
    if T is not None:
        index = T.index.reshape(pre, post)
        keep = T.keep.reshape(pre, post)
        if w is None:
            denom = float(np.count_nonzero(T.keep))  # = sum of 1.0 over kept rows
        else:
            wy = w[T.index]
            wy *= T.keep
            denom = float(np.sum(wy, dtype=np.float64))
            del wy
        W = cdt.type(C if w is None else np.sum(w, dtype=np.float64))
    else:
        index = keep = None
        denom = float(N)
        W = None
        if not probs.flags.c_contiguous:
            probs = np.ascontiguousarray(probs)
    scale = grad_scale(reduction, denom)
    k = _Kernel(x, grad, index, keep, probs, w, ls, W, cdt, rdt, scale, pre, C, post,
                cast_in, direct)
    rows = np.empty((pre, post), cdt)
    k.rows = rows
    if T is not None and ls == 0 and k.layout != "online":
        k.prepare_fast()
    k.run(nworkers)
    if k.bad.any():
        # A block saw NaN / +inf / an all -inf row in the logits, or a target outside
        # [0, 1]; the plain validation names it (the offending blocks were not
        # written, so even with out=logits the evidence is still there).
        reference_check()
        raise _Invalid()
    value = reduce_loss(rows.reshape(shape[:ax] + shape[ax + 1:]), reduction, denom, rdt)
    return value, grad


class _Kernel:
    def __init__(self, x, grad, index, keep, probs, w, ls, W, cdt, rdt, scale, pre, C, post,
                 cast_in, direct):
        self.__dict__.update(locals())
        del self.__dict__["self"]
        self.s = cdt.itemsize
        self.scale_c = cdt.type(scale)
        self.one_m_ls = cdt.type(1 - ls)
        self.ls_over_C = cdt.type(ls / C)
        self.wzero = None if w is None else (w == 0)
        if self.wzero is not None and not self.wzero.any():
            self.wzero = None
        budget = _fused.BLOCK_BYTES
        rowb = C * self.s
        if post == 1 and C >= SMALL_C and rowb > ONLINE_ROW_BYTES:
            self.layout = "online"
            self.B = 1
            self.chunk = max(1, budget // self.s)
            self.nblocks = pre
        elif post == 1 and C >= SMALL_C:
            self.layout = "rows"
            self.B = max(1, budget // rowb)
            self.nblocks = -(-pre // self.B)
        else:
            self.layout = "cols"
            self.B = max(1, budget // rowb)
            if post == 1:  # small C, class axis last: transpose blocks of rows
                self.per_slice = -(-pre // self.B)
                self.nblocks = self.per_slice
            else:
                self.B = max(1, min(self.B, post))
                self.per_slice = -(-post // self.B)
                self.nblocks = pre * self.per_slice
        self.bad = np.zeros(self.nblocks, bool)

    # ------------------------------------------------------------------ fast path setup
    def prepare_fast(self):
        """Flags of the common case (index targets, no smoothing).

        There ``c_nll = total = keep w_y`` (_SoftmaxProblem with ``ls = 0``); it is
        recomputed per block (nothing O(N) is stored besides the targets and the
        per-row losses), and skipped altogether when it is 1 on every row.
        """
        self.unit_total = self.w is None and bool(self.keep.all())
        # mul0(c_nll, nll) differs from c_nll * nll only where c_nll == 0 and nll == inf
        self.any_zero_c = not (bool(self.keep.all()) and
                               (self.w is None or bool(np.all(self.w != 0))))
        self.fast = True

    fast = False

    # ------------------------------------------------------------------ driver
    def run(self, nworkers):
        cdt, B, C = self.cdt, self.B, self.C
        if self.layout == "online":
            n = self.chunk
            specs = {"xc": ((n,), cdt), "e": ((n,), cdt), "d": ((n,), cdt), "A": ((n,), cdt),
                     "mask": ((n,), bool)}
            body = self._online
        else:
            shp = (B, C) if self.layout == "rows" else (C, B)
            specs = {"xc": (shp, cdt), "g": (shp, cdt), "d": (shp, cdt), "A": (shp, cdt),
                     "mask": (shp, bool), "ar": ((B,), np.intp),
                     "l2": ((B,), cdt), "l3": ((B,), cdt)}
            specs.update({"fa": ((B,), np.intp), "fy": ((B,), np.intp), "mb": ((B,), cdt),
                          "tb": ((B,), cdt), "dyb": ((B,), cdt), "eyb": ((B,), cdt),
                          "s1": ((B,), cdt), "kb": ((B,), cdt), "T1": (shp, cdt)})
            if self.layout == "rows":
                body = self._rows_fast if self.fast else self._rows
            else:
                body = self._cols_fast if self.fast else self._cols
        if self.layout != "online":
            def make():
                s = _Scratch(specs)
                s.ar[...] = np.arange(B)
                if self.layout == "rows":
                    s.off = np.arange(B) * C                  # flat row offsets of a block
                return s
        else:
            def make():
                return _Scratch(specs)
        # per-thread scratch actually touched: the cast input and/or gradient blocks,
        # plus the (d, A, mask) blocks of the smoothing / probability paths
        blk = (B if self.layout != "online" else 1) * (C if self.layout != "online" else
                                                        self.chunk) * self.s
        nblk = int(self.cast_in) + int(not self.direct) + 2 * int(self.layout == "cols")
        if not self.fast:
            nblk += 3
        vectors = 16 * (B if self.layout != "online" else 1) * 8   # per-row scratch vectors
        _fused.run_blocks(self.nblocks, body, make, nworkers, self.x.size,
                          scratch_bytes=(nblk + 1) * blk + vectors)

    # ------------------------------------------------------------------ per-row algebra
    def _coeffs(self, yb, kb):
        """``c_nll``, ``c_smooth``, ``total`` of the rows of a block (as _SoftmaxProblem)."""
        cdt = self.cdt
        keepf = kb.astype(cdt)
        wy = None if self.w is None else self.w[yb]
        c_nll = keepf * self.one_m_ls
        if wy is not None:
            c_nll = c_nll * wy
        c_smooth = keepf * self.ls_over_C
        total = c_nll + c_smooth * self.W
        return c_nll, c_smooth, total

    def _log1p(self, t, S, b):
        out = np.empty_like(t)
        return _fused.log1p_nonneg(t, out, S.l2[:b], S.l3[:b])

    def _grad_k(self, total, s1):
        """Row factor of the plain-case gradient ``g = e * k``, ``k = total scale / (1+t)``."""
        k = (total.astype(np.float64) * self.scale) / s1.astype(np.float64)
        return k.astype(self.cdt)

    # ------------------------------------------------------------------ rows layout
    def _rows(self, i, S):
        C = self.C
        r0 = i * self.B
        r1 = min(self.pre, r0 + self.B)
        b = r1 - r0
        ar = S.ar[:b]
        xb = self.x.reshape(self.pre, C)[r0:r1]
        if self.cast_in:
            np.copyto(S.xc[:b], xb, casting="unsafe")
            xb = S.xc[:b]
        A = None
        if self.probs is not None:
            A = S.A[:b]
            raw = self.probs.reshape(self.pre, C)[r0:r1]
            if not self._probs_ok(raw):
                self.bad[i] = True
                return
            np.copyto(A, raw, casting="unsafe")
        a = np.argmax(xb, axis=1)
        m = xb[ar, a]
        if not np.isfinite(m).all():
            self.bad[i] = True
            return
        gdst = self.grad.reshape(self.pre, C)[r0:r1]
        gb = gdst if self.direct else S.g[:b]
        np.subtract(xb, m[:, None], out=gb)                 # d = x - m
        d = None
        if self.ls or A is not None:
            d = S.d[:b]
            np.copyto(d, gb)
        if A is None:
            yb = self.index[r0:r1, 0]
            dy = gb[ar, yb]
        np.exp(gb, out=gb)                                   # e = exp(d)
        gb[ar, a] = 0                                        # t = sum_{c != a} e_c
        t = np.sum(gb, axis=1)
        gb[ar, a] = 1
        self._finish(i, r0, r1, S, b, gb, d, A, t, dy if A is None else None,
                     yb if A is None else None, 1)
        if not self.direct:
            np.copyto(gdst, gb, casting="unsafe")

    def _rows_fast(self, i, S):
        """Rows layout, index targets, no smoothing: 5 passes over the block."""
        C = self.C
        r0 = i * self.B
        r1 = min(self.pre, r0 + self.B)
        b = r1 - r0
        xb = self.x.reshape(self.pre, C)[r0:r1]
        if self.cast_in:
            np.copyto(S.xc[:b], xb, casting="unsafe")
            xb = S.xc[:b]
        fa, fy, m = S.fa[:b], S.fy[:b], S.mb[:b]
        np.argmax(xb, axis=1, out=fa)                        # pass 1 (reads x from memory)
        np.add(fa, S.off[:b], out=fa)                        # flat index of the arg-max
        np.take(xb.reshape(-1), fa, out=m)                   # m = row maximum
        if not math.isfinite(float(np.add.reduce(m))) and not np.isfinite(m).all():
            self.bad[i] = True                               # NaN, +inf, all -inf: not written
            return
        gdst = self.grad.reshape(self.pre, C)[r0:r1]
        gb = gdst if self.direct else S.g[:b]
        gf = gb.reshape(-1)
        np.subtract(xb, m[:, None], out=gb)                  # pass 2: d = x - m
        np.add(self.index[r0:r1, 0], S.off[:b], out=fy)
        dy = np.take(gf, fy, out=S.dyb[:b])                  # d_y
        np.exp(gb, out=gb)                                   # pass 3: e = exp(d)
        np.put(gf, fa, 0)
        t = np.sum(gb, axis=1, out=S.tb[:b])                 # pass 4: t = sum_{c != a} e_c
        np.put(gf, fa, 1)
        ey = np.take(gf, fy, out=S.eyb[:b])
        s1 = np.add(t, 1, out=S.s1[:b])
        c = self._fast_c(self.index[r0:r1, 0], self.keep[r0:r1, 0])
        k = self._fast_k(c, s1, S.kb[:b])
        np.multiply(gb, k[:, None], out=gb)                  # pass 5: g = e k
        self._fast_tail(slice(r0, r1), S, b, t, s1, dy, ey, c)
        np.put(gf, fy, S.eyb[:b])                            # target entries (plain order)
        if not self.direct:
            np.copyto(gdst, gb, casting="unsafe")

    # ------------------------------------------------------------------ cols layout
    def _cols_load(self, i, S):
        """Block ``i`` of the cols layout: source ``(C, b)``, its gradient block, targets."""
        C, B = self.C, self.B
        if self.post == 1:  # small C: rows r0:r1 of (pre, C), transposed into scratch
            p, j0 = 0, i * B
            j1 = min(self.pre, j0 + B)
            b = j1 - j0
            src = S.xc[:, :b]
            np.copyto(src, self.x.reshape(self.pre, C)[j0:j1].T, casting="unsafe")
            gb = src                      # computed in place, transposed back at the end
            gdst = self.grad.reshape(self.pre, C)[j0:j1].T
            yb_all, kb_all = (None, None) if self.index is None else (
                self.index[j0:j1, 0], self.keep[j0:j1, 0])
            tsrc = None if self.probs is None else self.probs.reshape(self.pre, C)[j0:j1].T
        else:
            p, q = divmod(i, self.per_slice)
            j0 = q * B
            j1 = min(self.post, j0 + B)
            b = j1 - j0
            x3 = self.x.reshape(self.pre, C, self.post)
            src = x3[p, :, j0:j1]
            if self.cast_in:
                np.copyto(S.xc[:, :b], src, casting="unsafe")
                src = S.xc[:, :b]
            gdst = self.grad.reshape(self.pre, C, self.post)[p, :, j0:j1]
            gb = gdst if self.direct else S.g[:, :b]
            yb_all, kb_all = (None, None) if self.index is None else (
                self.index[p, j0:j1], self.keep[p, j0:j1])
            tsrc = None if self.probs is None else self.probs.reshape(
                self.pre, C, self.post)[p, :, j0:j1]
        return p, j0, j1, b, src, gb, gdst, yb_all, kb_all, tsrc

    def _cols(self, i, S):
        cdt = self.cdt
        p, j0, j1, b, src, gb, gdst, yb_all, kb_all, tsrc = self._cols_load(i, S)
        ar = S.ar[:b]
        A = None
        if tsrc is not None:
            A = S.A[:, :b]
            if not self._probs_ok(tsrc):
                self.bad[i] = True
                return
            np.copyto(A, tsrc, casting="unsafe")
        m = np.max(src, axis=0)
        if not np.isfinite(m).all():
            self.bad[i] = True
            return
        np.subtract(src, m, out=gb)                          # d = x - m
        d = None
        if self.ls or A is not None:
            d = S.d[:, :b]
            np.copyto(d, gb)
        dy = None if A is not None else gb[yb_all, ar]
        M = S.mask[:, :b]
        np.equal(gb, 0, out=M)                               # the maxima (d == 0)
        np.exp(gb, out=gb)
        np.copyto(gb, 0, where=M)                            # exclude them from t ...
        t = np.sum(gb, axis=0)
        if np.count_nonzero(M) != b:                         # ... but ties other than the
            t += (np.sum(M, axis=0) - 1).astype(cdt)         # first arg-max count as 1
        np.copyto(gb, 1, where=M)
        self._finish(i, j0, j1, S, b, gb, d, A, t, dy, yb_all, 0, kb_all)
        if gdst is not gb:
            np.copyto(gdst, gb, casting="unsafe")

    def _cols_fast(self, i, S):
        """Cols layout, index targets, no smoothing."""
        cdt = self.cdt
        p, j0, j1, b, src, gb, gdst, yb, kb, _ = self._cols_load(i, S)
        m = np.max(src, axis=0, out=S.mb[:b])
        if not math.isfinite(float(np.add.reduce(m))) and not np.isfinite(m).all():
            self.bad[i] = True
            return
        np.subtract(src, m, out=gb)                          # d = x - m
        if self.post == 1:                                   # gb is the (C, B) scratch
            ld = self.B
            fy = np.multiply(yb, ld, out=S.fy[:b])
            np.add(fy, S.ar[:b], out=fy)
            gf = S.xc.reshape(-1)
            dy = np.take(gf, fy, out=S.dyb[:b])
        else:
            dy = gb[yb, S.ar[:b]]
        M = S.mask[:, :b]
        np.equal(gb, 0, out=M)                               # the maxima (d == 0)
        # exp(d - 1e30 [d == 0]) drops the maxima from t; masked copies (copyto where=)
        # cost ~2 ns per element here, the product and sum ~0.25 each
        T1 = S.T1[:, :b]
        np.multiply(M, _NEG_BIG[cdt.char], out=T1)
        np.add(gb, T1, out=T1)
        np.exp(T1, out=gb)
        t = np.sum(gb, axis=0, out=S.tb[:b])
        if np.count_nonzero(M) != b:                         # ties other than the first
            t += (np.sum(M, axis=0) - 1).astype(cdt)         # arg-max count as exp(0) = 1
        np.add(gb, M, out=gb)                                # e = exp(d): 1 at the maxima
        ey = np.take(gf, fy, out=S.eyb[:b]) if self.post == 1 else gb[yb, S.ar[:b]]
        s1 = np.add(t, 1, out=S.s1[:b])
        rs = self._row_slice(i, j0, j1)
        c = self._fast_c(yb, kb)
        k = self._fast_k(c, s1, S.kb[:b])
        np.multiply(gb, k, out=gb)                           # g = e k
        self._fast_tail(rs, S, b, t, s1, dy, ey, c)
        if self.post == 1:
            np.put(gf, fy, ey)
        else:
            gb[yb, S.ar[:b]] = ey
        if gdst is not gb:
            np.copyto(gdst, gb, casting="unsafe")

    def _fast_c(self, yb, kb):
        """``c_nll = total`` of a block's rows, or None when it is 1 on every row."""
        if self.unit_total:
            return None
        c = kb.astype(self.cdt)                              # keepf * (1 - 0) * w_y
        if self.w is not None:
            c *= self.w[yb]
        return c

    def _fast_k(self, c, s1, out):
        """Row factor ``k = total scale / (1 + t)`` of ``g_c = exp(x_c - m) k``."""
        if c is None:
            return np.divide(self.scale_c, s1, out=out)
        np.multiply(c, self.scale_c, out=out)
        return np.divide(out, s1, out=out)

    def _fast_tail(self, rs, S, b, t, s1, dy, ey, c):
        """Per-row loss (into ``rows``) and target-entry gradient (into ``ey``), fast path."""
        rows = self.rows.reshape(-1)[rs]
        L = _fused.log1p_nonneg(t, S.mb[:b], s1, S.l3[:b], have_w=True)   # log1p(t)
        if c is None:                                        # c_nll = 1: rows = nll exactly
            np.subtract(L, dy, out=rows)                     # nll = (m - x_y) + log1p(t)
        else:
            np.subtract(L, dy, out=L)
            np.multiply(c, L, out=rows)
            if self.any_zero_c:
                np.copyto(rows, 0, where=c == 0)             # mul0: 0 * inf = 0
        # g_y = ((p_y total) - c_nll) scale with p_y = e_y / (1 + t): the plain order
        np.divide(ey, s1, out=ey)
        if c is None:
            np.subtract(ey, 1, out=ey)
        else:
            np.multiply(ey, c, out=ey)
            np.subtract(ey, c, out=ey)
        np.multiply(ey, self.scale_c, out=ey)

    # ------------------------------------------------------------------ shared tail
    def _probs_ok(self, raw):
        # check_unit_interval's condition (NaN, inf, outside [0, 1]), on the targets as
        # given: class_targets checks them before casting to the compute dtype
        lo, hi = np.min(raw), np.max(raw)
        return bool(lo >= 0) and bool(hi <= 1)

    def _finish(self, i, r0, r1, S, b, gb, d, A, t, dy, yb, cax, kb=None):
        """Loss rows and gradient of a block once ``gb = exp(x - m)`` and ``t`` are known.

        ``cax`` is the class axis of the block (1: ``(b, C)``, 0: ``(C, b)``).
        """
        ar = S.ar[:b]

        def rv(v):  # a per-row vector broadcast against the block
            return v[:, None] if cax == 1 else v[None, :]

        def at(arr):  # the (row, target) entries of a block
            return (ar, yb) if cax == 1 else (yb, ar)

        s1 = 1 + t                                           # sum_c exp(x_c - m)
        L = self._log1p(t, S, b)                             # log1p(t)
        rows = self.rows.reshape(-1)[self._row_slice(i, r0, r1)]
        if A is not None:
            # probability targets: loss = sum_c A_c (-log p_c); grad = p sum_c A_c - A
            if self.ls:
                np.multiply(A, self.one_m_ls, out=A)
                np.add(A, self.ls_over_C, out=A)
            if self.w is not None:
                np.multiply(A, self.w if cax == 1 else self.w[:, None], out=A)
            np.subtract(rv(L), d, out=d)                     # -log p = (m - x) + log1p(t)
            with np.errstate(invalid="ignore"):              # 0 * inf, set to 0 below
                np.multiply(A, d, out=d)
            M = S.mask[:b] if cax == 1 else S.mask[:, :b]
            np.equal(A, 0, out=M)
            np.copyto(d, 0, where=M)                         # mul0: 0 log 0 = 0
            rows[...] = np.sum(d, axis=cax)
            sA = np.sum(A, axis=cax)
            np.divide(gb, rv(s1), out=gb)                    # p
            np.multiply(gb, rv(sA), out=gb)
            np.subtract(gb, A, out=gb)
            np.multiply(gb, self.scale_c, out=gb)
            return
        # index targets with label smoothing (the case without smoothing takes the
        # _rows_fast / _cols_fast paths)
        if kb is None:
            kb = self.keep[r0:r1, 0]
        c_nll, c_smooth, total = self._coeffs(yb, kb)
        nll = -dy + L
        loss = mul0(c_nll, nll)
        np.subtract(rv(L), d, out=d)                         # -log p_c = -d + log1p(t)
        if self.w is not None:
            with np.errstate(invalid="ignore"):
                np.multiply(d, self.w if cax == 1 else self.w[:, None], out=d)
            if self.wzero is not None:
                np.copyto(d, 0, where=self.wzero if cax == 1 else self.wzero[:, None])
        rows[...] = loss + mul0(c_smooth, np.sum(d, axis=cax))
        # the plain function's operation order, for bitwise-equal smoothing terms
        np.divide(gb, rv(s1), out=gb)                        # p
        np.multiply(gb, rv(total), out=gb)
        if self.w is None:
            np.subtract(gb, rv(c_smooth), out=gb)
        else:
            np.multiply(rv(c_smooth), self.w if cax == 1 else self.w[:, None], out=d)
            np.subtract(gb, d, out=gb)
        idx = at(gb)
        gb[idx] = gb[idx] - c_nll
        np.multiply(gb, self.scale_c, out=gb)

    def _row_slice(self, i, r0, r1):
        if self.layout == "cols" and self.post > 1:
            p = i // self.per_slice
            return slice(p * self.post + r0, p * self.post + r1)
        return slice(r0, r1)

    # ------------------------------------------------------------------ online layout
    def _online(self, r, S):
        """One row in column chunks: online (m, t) merge, then the gradient sweep."""
        cdt, C, n = self.cdt, self.C, self.chunk
        xr = self.x.reshape(self.pre, C)[r]
        gr = self.grad.reshape(self.pre, C)[r]
        tr = None if self.probs is None else self.probs.reshape(self.pre, C)[r]

        def load(src, c0, c1, buf):
            if src.dtype == cdt:
                return src[c0:c1]
            np.copyto(buf[:c1 - c0], src[c0:c1], casting="unsafe")
            return buf[:c1 - c0]

        # pass 1: running maximum M and T = sum of exp(x - M) over all entries but the
        # first arg-max, merged chunk by chunk:  a new chunk maximum m_j > M rescales
        # the old terms (the old arg-max included) by exp(M - m_j).
        M, T = -math.inf, 0.0
        sA = 0.0
        for c0 in range(0, C, n):
            c1 = min(C, c0 + n)
            if tr is not None:
                A = self._online_A(tr, c0, c1, S)
                if A is None:
                    self.bad[r] = True
                    return
                sA += float(np.sum(A, dtype=np.float64))
            xc = load(xr, c0, c1, S.xc)
            a = int(np.argmax(xc))
            mj = xc[a]
            if math.isnan(mj) or mj == math.inf:
                self.bad[r] = True
                return
            if mj == -math.inf:
                continue                                     # contributes exp(-inf) = 0
            e = S.e[:c1 - c0]
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
            self.bad[r] = True
            return
        m = cdt.type(M)
        t = np.array([T], cdt)
        s1 = 1 + t
        L = _fused.log1p_nonneg(t, np.empty(1, cdt), np.empty(1, cdt), np.empty(1, cdt))
        rows = self.rows.reshape(-1)
        # pass 2: gradient (and the per-class loss terms that need log1p(t))
        if tr is not None:
            sA_c = cdt.type(sA)
            acc = 0.0
            for c0 in range(0, C, n):
                c1 = min(C, c0 + n)
                A = self._online_A(tr, c0, c1, S)
                xc = load(xr, c0, c1, S.xc)
                d = S.d[:c1 - c0]
                np.subtract(xc, m, out=d)
                g = gr[c0:c1] if self.direct else S.e[:c1 - c0]
                np.exp(d, out=g)
                np.divide(g, s1, out=g)
                np.multiply(g, sA_c, out=g)
                np.subtract(g, A, out=g)
                np.multiply(g, self.scale_c, out=g)
                if not self.direct:
                    np.copyto(gr[c0:c1], g, casting="unsafe")
                np.subtract(L, d, out=d)
                with np.errstate(invalid="ignore"):
                    np.multiply(A, d, out=d)
                np.copyto(d, 0, where=np.equal(A, 0, out=S.mask[:c1 - c0]))
                acc += float(np.sum(d, dtype=np.float64))
            rows[r] = acc
            return
        y = self.index[r, 0]
        c_nll, c_smooth, total = self._coeffs(self.index[r], self.keep[r])
        dy = cdt.type(load(xr, y, y + 1, S.xc)[0]) - m
        nll = -dy + L
        loss = mul0(c_nll, nll)
        k = self._grad_k(total, s1)[0]
        acc = 0.0
        for c0 in range(0, C, n):
            c1 = min(C, c0 + n)
            xc = load(xr, c0, c1, S.xc)
            d = S.d[:c1 - c0]
            np.subtract(xc, m, out=d)
            g = gr[c0:c1] if self.direct else S.e[:c1 - c0]
            np.exp(d, out=g)
            if self.ls:
                np.divide(g, s1, out=g)
                np.multiply(g, total, out=g)
                np.subtract(g, c_smooth if self.w is None else c_smooth * self.w[c0:c1], out=g)
                np.multiply(g, self.scale_c, out=g)
                np.subtract(L, d, out=d)
                if self.w is not None:
                    with np.errstate(invalid="ignore"):
                        np.multiply(d, self.w[c0:c1], out=d)
                    if self.wzero is not None:
                        np.copyto(d, 0, where=self.wzero[c0:c1])
                acc += float(np.sum(d, dtype=np.float64))
            else:
                np.multiply(g, k, out=g)
            if not self.direct:
                np.copyto(gr[c0:c1], g, casting="unsafe")
        ey = np.exp(np.array([dy], cdt))
        if self.ls:
            loss = loss + mul0(c_smooth, np.array([acc], cdt))
            gy = ((ey / s1) * total - c_smooth * (1 if self.w is None else self.w[y]))
            gy = (gy - c_nll) * self.scale_c
        else:
            gy = ((ey / s1) * total - c_nll) * self.scale_c
        gr[y] = gy[0]
        rows[r] = loss[0]

    def _online_A(self, tr, c0, c1, S):
        A = S.A[:c1 - c0]
        if not self._probs_ok(tr[c0:c1]):
            return None
        np.copyto(A, tr[c0:c1], casting="unsafe")
        if self.ls:
            np.multiply(A, self.one_m_ls, out=A)
            np.add(A, self.ls_over_C, out=A)
        if self.w is not None:
            np.multiply(A, self.w[c0:c1], out=A)
        return A
