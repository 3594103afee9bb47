r"""Fused, blocked, multithreaded binary cross-entropy (on logits and on probabilities).

Elementwise losses: the arguments (broadcast to the input's shape) are cut into a
fixed list of tiles of about :data:`._fused.TILE_BYTES`; each tile is computed
with ``out=`` into per-thread scratch and its loss summed (float64) into its own
slot, and the slots are summed in tile order at the end (the plain functions'
:func:`._reduction.reduce_loss`), so the result does not depend on ``workers``.

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
formulas, which also detect NaN.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import as_strided

from . import _fused
from . import _validation as V
from ._reduction import grad_scale, reduce_loss


class _Invalid(ValueError):
    def __init__(self):
        super().__init__("invalid arguments (the plain function's validation did not "
                         "say which; please report this)")


# --------------------------------------------------------------------------- tiling

def coalesce(shape, arrays):
    """Views of ``arrays`` (all of ``shape``) with adjacent axes merged where possible.

    Axes ``k-1`` and ``k`` merge when, for every array, stepping once along
    ``k-1`` equals stepping ``shape[k]`` times along ``k``.  Returns the merged
    shape and the views (at least 1-d).
    """
    shp = list(shape) or [1]
    strides = [list(a.strides) or [0] for a in arrays]
    for k in range(len(shp) - 1, 0, -1):
        n1, n2 = shp[k - 1], shp[k]
        if n2 == 1:
            merged = [st[k - 1] for st in strides]
        elif n1 == 1 or all(st[k - 1] == st[k] * n2 for st in strides):
            merged = [st[k] for st in strides]
        else:
            continue
        for st, v in zip(strides, merged):
            st[k - 1] = v
            del st[k]
        shp[k - 1] = n1 * n2
        del shp[k]
    views = [as_strided(a, shape=tuple(shp), strides=tuple(st), writeable=a.flags.writeable)
             for a, st in zip(arrays, strides)]
    return tuple(shp), views


def tiles(shape, max_elems):
    """A fixed C-order list of index tuples covering ``shape`` in tiles of <= ``max_elems``."""
    inner = 1
    k = len(shape) - 1
    while k > 0 and inner * shape[k] <= max_elems:
        inner *= shape[k]
        k -= 1
    if inner * shape[k] <= max_elems:
        return [tuple(slice(None) for _ in shape)]
    step = max(1, max_elems // inner)
    out = []
    for prefix in np.ndindex(*shape[:k]):
        for j0 in range(0, shape[k], step):
            out.append(prefix + (slice(j0, min(shape[k], j0 + step)),))
    return out


def _prepare_operands(x0, cdt, named):
    """Check the broadcast structure of the extra arguments; value-check small ones.

    ``named``: ``(name, value, kind)`` with kind ``"unit"`` (values in [0, 1]) or
    ``"weight"`` (non-negative, finite).  Returns ``{name: (array, full)}``:
    arguments of the input's full shape are value-checked tile by tile later
    (``full=True``); smaller ones are cast and checked here, by the same helpers.
    """
    ops = {}
    for name, value, kind in named:
        if value is None:
            ops[name] = (None, False)
            continue
        arr = V.as_numeric_array(name, value)
        V.broadcast_to_input(name, arr, x0.shape, arr.dtype)  # shape check only, a view
        if arr.shape == x0.shape:
            ops[name] = (arr, True)
            continue
        arr = arr.astype(cdt, copy=False)
        if kind == "unit":
            V.check_unit_interval(name, arr, "binary targets" if name == "targets" else
                                  "probabilities")
        else:
            V.check_nonnegative_finite(name, arr)
        ops[name] = (arr, False)
    return ops


def _unit_ok(a):
    lo, hi = np.min(a), np.max(a)
    return bool(lo >= 0) and bool(hi <= 1)      # False for NaN / inf, as check_unit_interval


def _weight_ok(a):
    lo, hi = np.min(a), np.max(a)
    return bool(lo >= 0) and bool(hi < math.inf)  # False for NaN / inf / negative


class _Scratch:
    """Per-thread tile buffers, allocated on first use (the cast buffers only if needed)."""

    def __init__(self, n, dtype, names):
        self.n, self.dtype, self.bufs = n, dtype, {}

    def get(self, name, ts):
        if name not in self.bufs:
            self.bufs[name] = np.empty(self.n, self.dtype)
        return self.bufs[name][:math.prod(ts)].reshape(ts)


# --------------------------------------------------------------------------- BCE with logits

def bce_logits_value_and_grad(logits, targets, weight, pos_weight, reduction, out, workers):
    from . import binary as _bin  # late import: binary imports this module

    def reference_check():
        _bin._bce_logits_prepare(logits, targets, weight, pos_weight, reduction)

    try:
        x0 = V.as_numeric_array("logits", logits)
        cdt, rdt = V.compute_dtypes(x0.dtype)
        if x0.size == 0:
            raise _Empty()
        ops = _prepare_operands(x0, cdt, (("targets", targets, "unit"),
                                          ("weight", weight, "weight"),
                                          ("pos_weight", pos_weight, "weight")))
        reduction = V.check_reduction(reduction)
    except _Empty:
        return _empty(lambda: _bin._bce_logits(logits, targets, weight, pos_weight, reduction,
                                                True, True), out, workers, x0, rdt)
    except (TypeError, ValueError):
        reference_check()
        raise
    nworkers = _fused.resolve_workers(workers)
    out, _ = _fused.check_out(out, x0.shape, rdt, x0, [(n, v[0]) for n, v in ops.items()])
    x = x0 if x0.flags.c_contiguous else x0.copy(order="C")  # 0-d stays 0-d
    grad = out if out is not None else np.empty(x.shape, rdt)
    loss_out = np.empty(x.shape, rdt) if reduction == "none" else None

    arrays = [x] + [np.broadcast_to(ops[n][0], x.shape) if ops[n][0] is not None else x
                    for n in ("targets", "weight", "pos_weight")] + [grad]
    if loss_out is not None:
        arrays.append(loss_out)
    shp, views = coalesce(x.shape, arrays)
    X, Y, Wv, PWv, G = views[:5]
    LO = views[5] if loss_out is not None else None
    has_w, has_pw = weight is not None, pos_weight is not None
    full = {"y": ops["targets"][1], "w": ops["weight"][1], "pw": ops["pos_weight"][1]}
    tile_list = tiles(shp, max(1, _fused.TILE_BYTES // cdt.itemsize))
    n_tile = max(X[tile_list[0]].size, 1)  # the first tile is the largest
    partial = np.zeros(len(tile_list), np.float64)
    bad = np.zeros(len(tile_list), bool)
    scale = cdt.type(grad_scale(reduction, x.size))
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
        if full["y"] and not _unit_ok(ys):
            bad[i] = True
            return
        ws = pws = None
        if has_w:
            ws = cast(Wv[idx], S, "cw", ts)
            if full["w"] and not _weight_ok(ws):
                bad[i] = True
                return
        if has_pw:
            pws = cast(PWv[idx], S, "cpw", ts)
            if full["pw"] and not _weight_ok(pws):
                bad[i] = True
                return
        e, L, w1, c = (S.get(n, ts) for n in ("e", "L", "w1", "c"))
        r, sp, h = S.get("r", ts), S.get("sp", ts), S.get("h", ts)
        # ---- loss
        np.abs(xs, out=e)
        np.subtract(0, e, out=e)                     # -|x| (not np.negative: see
                                                     # _kernels_softmax's module docstring)
        np.exp(e, out=e)                             # e = exp(-|x|) in (0, 1]
        _fused.log1p_nonneg(e, L, w1, c)             # L = log1p(e); w1 = 1 + e (kept)
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
            if not _slow_tile(xs, ys, ws, pws, idx, G, LO, partial, i, scale, rdt):
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

    names = ("cx", "cy", "cw", "cpw", "e", "L", "w1", "c", "r", "sp", "h")
    n_scratch = 7 + sum(a.dtype != cdt for a in (x, Y, Wv, PWv))   # buffers per thread
    _fused.run_blocks(len(tile_list), body, lambda: _Scratch(n_tile, cdt, names), nworkers,
                      x.size, scratch_bytes=n_scratch * n_tile * cdt.itemsize)
    if bad.any():
        reference_check()
        raise _Invalid()
    if reduction == "none":
        value = reduce_loss(loss_out, reduction, x.size, rdt)
    else:
        value = reduce_loss(partial, reduction, x.size, rdt)
    return value, grad


def _slow_tile(xs, ys, ws, pws, idx, G, LO, partial, i, scale, rdt):
    """Recompute one tile with the plain function's formulas (infinite / NaN logits)."""
    from . import binary as _bin
    from ._special import sigmoid
    if np.isnan(xs).any():
        return False
    a = ys if pws is None else pws * ys
    b = 1 - ys
    loss = _bin._bce_logits_elementwise(xs, a, b, ws)
    partial[i] = float(np.sum(loss, dtype=np.float64))
    if LO is not None:
        np.copyto(LO[idx], loss, casting="unsafe")
    g = b * sigmoid(xs) - a * sigmoid(-xs)
    if ws is not None:
        g = ws * g
    np.copyto(G[idx], g * scale, casting="unsafe")
    return True


class _Empty(Exception):
    pass


def _empty(compute, out, workers, x0, rdt):
    """Empty input: the plain function (validation included) is already instantaneous."""
    value, grad = compute()
    _fused.resolve_workers(workers)
    if out is not None:
        out, _ = _fused.check_out(out, x0.shape, rdt, x0)
        np.copyto(out, grad)
        grad = out
    return value, grad


# --------------------------------------------------------------------------- BCE on probabilities

def bce_probs_value_and_grad(probs, targets, weight, eps, reduction, out, workers):
    """Blockwise ``_bce_probs``: each tile runs the plain function's own formulas.

    The tile math is the plain function's (so the numbers are bitwise equal);
    what this adds is one cache-blocked, multithreaded sweep with no input-sized
    temporary, and validation deferred to the tiles.
    """
    from . import binary as _bin

    def reference(want_value=True, want_grad=True):
        return _bin._bce_probs(probs, targets, weight, eps, reduction, want_value, want_grad)

    try:
        p0 = V.as_numeric_array("probs", probs)
        cdt, rdt = V.compute_dtypes(p0.dtype)
        if p0.size == 0:
            raise _Empty()
        ops = _prepare_operands(p0, cdt, (("targets", targets, "unit"),
                                          ("weight", weight, "weight")))
        reduction = V.check_reduction(reduction)
        eps_c = V.check_eps(eps, rdt, cdt)
    except _Empty:
        return _empty(reference, out, workers, p0, rdt)
    except (TypeError, ValueError):
        reference(True, False)
        raise
    nworkers = _fused.resolve_workers(workers)
    out, _ = _fused.check_out(out, p0.shape, rdt, p0, [(n, v[0]) for n, v in ops.items()])
    p = p0 if p0.flags.c_contiguous else p0.copy(order="C")
    grad = out if out is not None else np.empty(p.shape, rdt)
    loss_out = np.empty(p.shape, rdt) if reduction == "none" else None
    arrays = [p, np.broadcast_to(ops["targets"][0], p.shape),
              np.broadcast_to(ops["weight"][0], p.shape) if weight is not None else p, grad]
    if loss_out is not None:
        arrays.append(loss_out)
    shp, views = coalesce(p.shape, arrays)
    P, Y, Wv, G = views[:4]
    LO = views[4] if loss_out is not None else None
    tile_list = tiles(shp, max(1, _fused.TILE_BYTES // cdt.itemsize))
    partial = np.zeros(len(tile_list), np.float64)
    bad = np.zeros(len(tile_list), bool)
    scale = cdt.type(grad_scale(reduction, p.size))

    def body(i, S):
        idx = tile_list[i]
        pt = P[idx].astype(cdt, copy=False)
        yt = Y[idx].astype(cdt, copy=False)
        wt = None if weight is None else Wv[idx].astype(cdt, copy=False)
        if not _unit_ok(pt) or not _unit_ok(yt) or (wt is not None and not _weight_ok(wt)):
            bad[i] = True
            return
        # the plain function on the tile, reduction "none", with the whole array's scale
        loss, g = _bin._bce_probs(pt, yt, wt, eps_c, "none", True, True, scale=scale)
        partial[i] = float(np.sum(loss, dtype=np.float64))
        if LO is not None:
            np.copyto(LO[idx], loss, casting="unsafe")
        np.copyto(G[idx], g, casting="unsafe")

    _fused.run_blocks(len(tile_list), body, lambda: None, nworkers, p.size)
    if bad.any():
        reference(True, False)
        raise _Invalid()
    value = reduce_loss(loss_out if reduction == "none" else partial, reduction, p.size, rdt)
    return value, grad
