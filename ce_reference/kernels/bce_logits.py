r"""Fused, blocked, multithreaded binary cross-entropy with logits.

The arguments (broadcast to the input's shape) are cut into a
fixed list of tiles of about :data:`._blocks.TILE_BYTES`; each tile is computed
with ``out=`` into per-thread scratch and its loss summed (float64) into its own
slot, and the slots are summed in tile order at the end (the plain functions'
reduction), so the result does not depend on ``workers``.

Broadcast arguments (a ``pos_weight`` of shape ``(C,)``, a weight per row, ...)
are never expanded: adjacent axes are merged where every argument's strides
allow it (as ``np.nditer`` does), and a tile is a slice of the merged array on
which NumPy's own broadcasting applies.

BCE with logits, per element (the identities of :func:`._special.softplus`):
``e = exp(-|x|)``, ``softplus(+-x) = max(+-x, 0) + log1p(e)``,
``loss = w [a softplus(-x) + b softplus(x)]`` with ``a = pw y``, ``b = 1 - y``
(both terms non-negative: no cancellation); without ``pos_weight`` (``a + b = 1``)
this is ``w [log1p(e) + x ([x >= 0] - y)]``, again a sum of non-negative terms; and
``d loss / dx = w [b sigma(x) - a sigma(-x)]``, computed as
``w (b P - a Q) / (1 + e)`` with ``P = max(e, [x >= 0])`` and
``Q = max(e, [x <= 0])`` (``sigma(x) = e / (1 + e)`` for ``x < 0`` and
``1 / (1 + e)`` otherwise), so that ``sigma(x) - 1`` is never formed by
subtraction.  Selections are products by 0/1 masks or maxima: NumPy's masked
``where``/``copyto`` cost ~20 arithmetic passes each on random masks.  A tile whose loss is not
finite (infinite logits, or NaN) is recomputed with the plain function's own
formulas (passed in by the loss), which also detect NaN.
"""

from __future__ import annotations

import math

import numpy as np

from . import _blocks, compiled_backend
from .._validation import nonnegative_finite_ok, unit_interval_ok


class _Scratch:
    """Per-thread tile buffers, allocated on first use (the cast buffers only if needed)."""

    def __init__(self, n, dtype):
        self.n, self.dtype, self.bufs = n, dtype, {}

    def get(self, name, ts):
        if name not in self.bufs:
            self.bufs[name] = np.empty(self.n, self.dtype)
        return self.bufs[name][:math.prod(ts)].reshape(ts)


OPERANDS = ("targets", "weight", "pos_weight")


def value_and_grad(problem, plain, out=None, workers=None):
    """Loss and gradient of BCE with logits for a validated problem, tile by tile.

    ``problem`` is an :class:`~ce_reference._problem.ElementwiseProblem` built
    with ``check_values=False`` (operands ``targets``, ``weight``,
    ``pos_weight``); ``plain(x, y, w, pw) -> (loss, gradient of the sum)`` are
    the loss's plain elementwise formulas, used for a tile whose loss is not
    finite (infinite logits; NaN makes the tile bad).  ``problem.backend == "numba"``
    runs the compiled kernel instead (:func:`.compiled_backend.bce_logits`).
    """
    nworkers = _blocks.resolve_workers(workers)
    if problem.backend == "numba":
        out = _blocks.checked_out(out, problem)
        grad = out if out is not None else np.empty(problem.shape, problem.rdt)
        return problem.reduce(compiled_backend.bce_logits(problem, grad, nworkers)), grad
    problem.check_broadcast_values()
    out = _blocks.checked_out(out, problem)
    sweep = _Sweep(problem, plain, out)
    if sweep.x.size:
        _blocks.run_blocks(len(sweep.tiles), sweep.body,
                           lambda: _Scratch(sweep.tile_size, problem.cdt), nworkers,
                           sweep.x.size, scratch_bytes=sweep.scratch_bytes())
    if sweep.bad.any():
        _blocks.raise_invalid(problem)
    losses = sweep.loss_out if sweep.loss_out is not None else sweep.partial
    return problem.reduce(losses), sweep.grad


class _Sweep:
    """The tiles of one call: coalesced views of the logits, operands and outputs."""

    def __init__(self, problem, plain, out):
        cdt, x0 = problem.cdt, problem.raw
        self.plain, self.cdt = plain, cdt
        self.x = x0 if x0.flags.c_contiguous else x0.copy(order="C")  # 0-d stays 0-d
        self.grad = out if out is not None else np.empty(self.x.shape, problem.rdt)
        self.loss_out = (np.empty(self.x.shape, problem.rdt) if problem.reduction == "none"
                         else None)
        arrays = [self.x] + [np.broadcast_to(problem.ops[n], self.x.shape)
                             if problem.ops[n] is not None else self.x for n in OPERANDS]
        arrays += [self.grad] + ([self.loss_out] if self.loss_out is not None else [])
        shape, views = _blocks.coalesce(self.x.shape, arrays)
        self.X, self.Y, self.W, self.PW, self.G = views[:5]
        self.LO = views[5] if self.loss_out is not None else None
        self.has_weight = problem.ops["weight"] is not None
        self.has_pos_weight = problem.ops["pos_weight"] is not None
        self.full = {n: problem.is_full(n) for n in OPERANDS}
        self.tiles = _blocks.tiles(shape, max(1, _blocks.TILE_BYTES // cdt.itemsize))
        self.tile_size = max(self.X[self.tiles[0]].size, 1)  # the first tile is the largest
        self.partial = np.zeros(len(self.tiles), np.float64)
        self.bad = np.zeros(len(self.tiles), bool)
        self.scale = cdt.type(problem.scale)
        self.one = cdt.type(1)
        self.n_cast = sum(a.dtype != cdt for a in (self.x, self.Y, self.W, self.PW))

    def scratch_bytes(self):
        return (7 + self.n_cast) * self.tile_size * self.cdt.itemsize   # buffers per thread

    def _cast(self, src, S, name, ts):
        if src.dtype == self.cdt:
            return src
        buf = S.get(name, ts)
        np.copyto(buf, src, casting="unsafe")
        return buf

    def _load(self, idx, S):
        """The tile's logits and operands in the compute dtype, or None if a value is bad."""
        xs = self.X[idx]
        ts = xs.shape
        xs = self._cast(xs, S, "cx", ts)
        ys = self._cast(self.Y[idx], S, "cy", ts)
        if self.full["targets"] and not unit_interval_ok(ys):
            return None
        ws = pws = None
        if self.has_weight:
            ws = self._cast(self.W[idx], S, "cw", ts)
            if self.full["weight"] and not nonnegative_finite_ok(ws):
                return None
        if self.has_pos_weight:
            pws = self._cast(self.PW[idx], S, "cpw", ts)
            if self.full["pos_weight"] and not nonnegative_finite_ok(pws):
                return None
        return xs, ys, ws, pws

    def body(self, i, S):
        # inf - inf (infinite logits) is caught by the tile's non-finite loss below; a loss
        # beyond the dtype's range (pos_weight 3, x = -3.4e38 in float32) is inf, its
        # correct rounding
        with np.errstate(invalid="ignore", over="ignore"):
            self._tile(i, S)

    def _tile(self, i, S):
        idx = self.tiles[i]
        loaded = self._load(idx, S)
        if loaded is None:
            self.bad[i] = True
            return
        xs, ys, ws, pws = loaded
        ts = xs.shape
        r, a, b = self._loss(S, ts, xs, ys, ws, pws)
        part = float(np.sum(r, dtype=np.float64))
        if not math.isfinite(part):
            if not _plain_tile(self.plain, xs, ys, ws, pws, idx, self.G, self.LO,
                               self.partial, i, self.scale):
                self.bad[i] = True
            return
        self.partial[i] = part
        if self.LO is not None:
            np.copyto(self.LO[idx], r, casting="unsafe")
        self._grad(S, ts, idx, ys, ws, pws, a, b)

    def _loss(self, S, ts, xs, ys, ws, pws):
        """Per-element loss into scratch ``r``; returns ``(r, a, b)`` (``b`` set later
        without pos_weight) and leaves ``e``, ``w1 = 1 + e`` and ``h = [x >= 0]``."""
        e, L, w1, c = (S.get(n, ts) for n in ("e", "L", "w1", "c"))
        r, sp, h = S.get("r", ts), S.get("sp", ts), S.get("h", ts)
        np.abs(xs, out=e)
        np.subtract(0, e, out=e)                     # -|x| (not np.negative: see
                                                     # the note in ._softmax_sweep)
        np.exp(e, out=e)                             # e = exp(-|x|) in (0, 1]
        _blocks.log1p_nonneg(e, L, w1, c)            # L = log1p(e); w1 = 1 + e (kept)
        np.greater_equal(xs, 0, out=h, casting="unsafe")  # h = [x >= 0] as 0.0 / 1.0
        # (masked where/copyto are slow on random masks; products by 0/1 and maxima are not)
        b = c
        if pws is None:
            # a = y, b = 1 - y: a max(-x, 0) + b max(x, 0) = x (h - y) exactly (one of the
            # two terms is 0), and (a + b) log1p(e) = log1p(e); all terms >= 0.
            a = ys
            np.subtract(h, ys, out=r)
            np.multiply(xs, r, out=r)
            np.add(L, r, out=r)                      # loss
        else:
            np.multiply(xs, h, out=r)                # max(x, 0)
            np.add(r, L, out=sp)                     # softplus(x)
            np.subtract(r, xs, out=r)                # max(-x, 0), exact
            np.add(r, L, out=r)                      # softplus(-x)
            a = L
            np.multiply(pws, ys, out=a)              # a = pw y
            np.subtract(self.one, ys, out=b)         # b = 1 - y
            np.multiply(a, r, out=r)
            np.multiply(b, sp, out=sp)
            np.add(r, sp, out=r)                     # a softplus(-x) + b softplus(x)
        if ws is not None:
            np.multiply(ws, r, out=r)
        return r, a, b

    def _grad(self, S, ts, idx, ys, ws, pws, a, b):
        """Gradient ``b sigma(x) - a sigma(-x) = (b P - a Q) / (1 + e)`` with
        ``P = max(e, [x >= 0])`` (= 1 for x >= 0, e otherwise) and ``Q = max(e, [x <= 0])``."""
        e, w1, sp, h = S.get("e", ts), S.get("w1", ts), S.get("sp", ts), S.get("h", ts)
        if pws is None:
            np.subtract(self.one, ys, out=b)         # b = 1 - y
        np.maximum(e, h, out=sp)                     # P
        np.multiply(b, sp, out=sp)                   # b P
        np.subtract(self.one, h, out=h)              # [x < 0]; Q differs only at x = 0,
        np.maximum(e, h, out=h)                      # where e = 1 makes it 1 anyway
        np.multiply(a, h, out=h)                     # a Q
        np.subtract(sp, h, out=sp)
        np.divide(sp, w1, out=sp)
        if ws is not None:
            np.multiply(ws, sp, out=sp)
        if self.G.dtype == self.cdt:
            np.multiply(sp, self.scale, out=self.G[idx])
        else:
            np.multiply(sp, self.scale, out=sp)
            np.copyto(self.G[idx], sp, casting="unsafe")


def _plain_tile(plain, xs, ys, ws, pws, idx, G, LO, partial, i, scale):
    """Recompute one tile with the loss's plain formulas (infinite logits); False on NaN."""
    if np.isnan(xs).any():
        return False
    loss, g = plain(xs, ys, ws, pws)
    partial[i] = float(np.sum(loss, dtype=np.float64))
    if LO is not None:
        np.copyto(LO[idx], loss, casting="unsafe")
    np.copyto(G[idx], g * scale, casting="unsafe")
    return True
