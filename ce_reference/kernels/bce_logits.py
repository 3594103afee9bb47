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

from . import _blocks
from .._validation import nonnegative_finite_ok, unit_interval_ok


class _Scratch:
    """Per-thread tile buffers, allocated on first use (the cast buffers only if needed)."""

    def __init__(self, n, dtype):
        self.n, self.dtype, self.bufs = n, dtype, {}

    def get(self, name, ts):
        if name not in self.bufs:
            self.bufs[name] = np.empty(self.n, self.dtype)
        return self.bufs[name][:math.prod(ts)].reshape(ts)


def value_and_grad(problem, plain, out=None, workers=None):
    """Loss and gradient of BCE with logits for a validated problem, tile by tile.

    ``problem`` is an :class:`~ce_reference._problem.ElementwiseProblem` built
    with ``check_values=False`` (operands ``targets``, ``weight``,
    ``pos_weight``); ``plain(x, y, w, pw) -> (loss, gradient of the sum)`` are
    the loss's plain elementwise formulas, used for a tile whose loss is not
    finite (infinite logits; NaN makes the tile bad).
    """
    problem.check_broadcast_values()
    nworkers = _blocks.resolve_workers(workers)
    out, _ = _blocks.check_out(out, problem.shape, problem.rdt, problem.raw,
                               tuple(problem.given.items()))
    cdt, rdt, x0 = problem.cdt, problem.rdt, problem.raw
    x = x0 if x0.flags.c_contiguous else x0.copy(order="C")  # 0-d stays 0-d
    grad = out if out is not None else np.empty(x.shape, rdt)
    loss_out = np.empty(x.shape, rdt) if problem.reduction == "none" else None

    names = ("targets", "weight", "pos_weight")
    arrays = [x] + [np.broadcast_to(problem.ops[n], x.shape) if problem.ops[n] is not None
                    else x for n in names] + [grad]
    if loss_out is not None:
        arrays.append(loss_out)
    shp, views = _blocks.coalesce(x.shape, arrays)
    X, Y, Wv, PWv, G = views[:5]
    LO = views[5] if loss_out is not None else None
    has_w, has_pw = problem.ops["weight"] is not None, problem.ops["pos_weight"] is not None
    full = {n: problem.is_full(n) for n in names}
    tile_list = _blocks.tiles(shp, max(1, _blocks.TILE_BYTES // cdt.itemsize))
    n_tile = max(X[tile_list[0]].size, 1)  # the first tile is the largest
    partial = np.zeros(len(tile_list), np.float64)
    bad = np.zeros(len(tile_list), bool)
    scale = cdt.type(problem.scale)
    one = cdt.type(1)

    def cast(src, S, name, ts):
        if src.dtype == cdt:
            return src
        buf = S.get(name, ts)
        np.copyto(buf, src, casting="unsafe")
        return buf

    def body(i, S):
        # inf - inf (infinite logits) is caught by the tile's non-finite loss below
        with np.errstate(invalid="ignore"):
            _body(i, S)

    def _body(i, S):
        idx = tile_list[i]
        xs = X[idx]
        ts = xs.shape
        xs = cast(xs, S, "cx", ts)
        ys = cast(Y[idx], S, "cy", ts)
        if full["targets"] and not unit_interval_ok(ys):
            bad[i] = True
            return
        ws = pws = None
        if has_w:
            ws = cast(Wv[idx], S, "cw", ts)
            if full["weight"] and not nonnegative_finite_ok(ws):
                bad[i] = True
                return
        if has_pw:
            pws = cast(PWv[idx], S, "cpw", ts)
            if full["pos_weight"] and not nonnegative_finite_ok(pws):
                bad[i] = True
                return
        e, L, w1, c = (S.get(n, ts) for n in ("e", "L", "w1", "c"))
        r, sp, h = S.get("r", ts), S.get("sp", ts), S.get("h", ts)
        # ---- loss
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
            np.subtract(one, ys, out=b)              # b = 1 - y
            np.multiply(a, r, out=r)
            np.multiply(b, sp, out=sp)
            np.add(r, sp, out=r)                     # a softplus(-x) + b softplus(x)
        if ws is not None:
            np.multiply(ws, r, out=r)
        part = float(np.sum(r, dtype=np.float64))
        if not math.isfinite(part):
            if not _plain_tile(plain, xs, ys, ws, pws, idx, G, LO, partial, i, scale):
                bad[i] = True
            return
        partial[i] = part
        if LO is not None:
            np.copyto(LO[idx], r, casting="unsafe")
        # ---- gradient: b sigma(x) - a sigma(-x) = (b P - a Q) / (1 + e) with
        # P = max(e, [x >= 0]) (= 1 for x >= 0, e otherwise) and Q = max(e, [x <= 0]).
        if pws is None:
            np.subtract(one, ys, out=b)              # b = 1 - y
        np.maximum(e, h, out=sp)                     # P
        np.multiply(b, sp, out=sp)                   # b P
        np.subtract(one, h, out=h)                   # [x < 0]; Q differs only at x = 0,
        np.maximum(e, h, out=h)                      # where e = 1 makes it 1 anyway
        np.multiply(a, h, out=h)                     # a Q
        np.subtract(sp, h, out=sp)
        np.divide(sp, w1, out=sp)
        if ws is not None:
            np.multiply(ws, sp, out=sp)
        if G.dtype == cdt:
            np.multiply(sp, scale, out=G[idx])
        else:
            np.multiply(sp, scale, out=sp)
            np.copyto(G[idx], sp, casting="unsafe")

    n_scratch = 7 + sum(a.dtype != cdt for a in (x, Y, Wv, PWv))   # buffers per thread
    if x.size:
        _blocks.run_blocks(len(tile_list), body, lambda: _Scratch(n_tile, cdt), nworkers,
                           x.size, scratch_bytes=n_scratch * n_tile * cdt.itemsize)
    if bad.any():
        _blocks.raise_invalid(problem)
    return problem.reduce(loss_out if loss_out is not None else partial), grad


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
