"""The compiled (numba) kernels against the plain NumPy functions and mpmath.

* every option combination, both dtypes, every layout (class axis last with
  whole rows, small C (transposed blocks), long rows (chunked), class axis in
  the middle), against the plain functions (``z_loss`` / ``softcap`` against
  a float64 composition of the plain functions: capped logits, then CE, plus
  ``z lse^2``), errors in units of the kernel dtype's eps times the operands;
* results bitwise identical for ``workers`` 1, 2, 3 and in place;
* invalid data detected by the kernel pass (error bits), flagged blocks left
  unwritten;
* extreme logits against mpmath;
* small and empty inputs, the cache guard and ``warmup``.
"""

import itertools
import math
import zlib

import numpy as np
import pytest

numba = pytest.importorskip("numba")

from scipy.special import logsumexp  # noqa: E402

import ce_reference as ce  # noqa: E402
from ce_reference import compiled as cp  # noqa: E402
from ce_reference.compiled import _api_other, _driver, _jit  # noqa: E402
from ce_reference.compiled import _softmax as K  # noqa: E402

DTYPES = (np.float32, np.float64)
# operand-relative error bounds, in eps of the kernel's dtype (the verifier gates at 8)
TOL_LOSS = {np.float32: 4.0, np.float64: 8.0}
TOL_GRAD = {np.float32: 4.0, np.float64: 8.0}


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    """Many blocks even for small inputs, threads for every call."""
    monkeypatch.setattr(K, "BLOCK", 256)
    monkeypatch.setattr(_api_other, "BCE_BLOCK", 64)
    monkeypatch.setattr(_api_other, "CCE_BLOCK", 64)
    monkeypatch.setattr(_driver, "PARALLEL_MIN", 0)


# =========================================================================== softmax reference

def softmax_reference(x, targets, axis, weight, ignore_index, ls, z, cap, reduction="mean"):
    """float64 composition of the plain functions: ``(rows, z_rows, grad, scale, z_scale)``.

    rows / z_rows per row of the batch (C order), grad of the reduced loss with respect
    to the logits, scales as the kernel takes them.
    """
    xd = np.asarray(x, np.float64)
    ax = axis % xd.ndim
    prob = targets.dtype.kind == "f"
    if cap:
        with np.errstate(invalid="ignore"):
            y = np.where(np.isneginf(xd), -np.inf, cap * np.tanh(xd / cap))
            s2 = np.where(np.isinf(xd), 0.0, 1.0 / np.cosh(xd / cap) ** 2)
    else:
        y, s2 = xd, 1.0
    kw = dict(axis=ax, weight=None if weight is None else np.asarray(weight, np.float64),
              label_smoothing=ls)
    t = np.asarray(targets, np.float64) if prob else targets
    if not prob:
        kw["ignore_index"] = ignore_index
    rows = ce.softmax_cross_entropy(y, t, reduction="none", **kw).reshape(-1)
    g_sum = ce.softmax_cross_entropy_grad(y, t, reduction="sum", **kw)
    lse = logsumexp(y, axis=ax)
    if prob:
        keep = np.ones(lse.shape, bool)
        denom = float(keep.size)
    else:
        keep = np.ones(targets.shape, bool) if ignore_index is None else targets != ignore_index
        wy = np.ones(targets.shape) if weight is None else np.asarray(weight, np.float64)[
            np.where(keep, targets, 0)]
        denom = float(np.sum(wy * keep))
    n_keep = float(np.count_nonzero(keep))
    if reduction == "mean":
        scale = 0.0 if denom == 0 else 1.0 / denom
        zscale = 0.0 if n_keep == 0 else 1.0 / n_keep
    else:
        scale = zscale = 1.0
    z_rows = np.where(keep, z * lse ** 2, 0.0).reshape(-1)
    p = np.exp(y - np.expand_dims(lse, ax))
    zg = np.expand_dims(np.where(keep, zscale * 2 * z * lse, 0.0), ax) * p
    grad = (scale * g_sum + zg) * s2
    return rows, z_rows, grad, scale, zscale, y, p


def grad_operand(y, p, targets, axis, weight, ls, z, scale, zscale, s2_cap):
    """Size of the terms each exact gradient entry is made of (the README's unit)."""
    ax = axis % y.ndim
    C = y.shape[ax]
    m = np.max(y, axis=ax, keepdims=True)
    with np.errstate(invalid="ignore"):
        d = np.abs(np.where(np.isneginf(y), 0.0, y - m))
    lse = logsumexp(y, axis=ax, keepdims=True)
    factor = 1 + d
    if s2_cap is not None:
        factor = factor + np.where(np.isneginf(y), 0.0, np.abs(y)) + np.abs(m)
    w = np.ones(C) if weight is None else np.asarray(weight, np.float64)
    shp = [1] * y.ndim
    shp[ax] = C
    wb = w.reshape(shp)
    if targets.dtype.kind == "f":
        A = wb * ((1 - ls) * np.asarray(targets, np.float64) + ls / C)
        total = np.sum(A, axis=ax, keepdims=True)
    else:
        A = wb * (ls / C)
        total = np.expand_dims(w[np.clip(targets, 0, C - 1)], ax) * (1 - ls) + ls / C * w.sum()
        total = total + 0 * A
        onehot = np.moveaxis(np.eye(C)[np.clip(targets, 0, C - 1)], -1, ax)
        A = A + onehot * np.expand_dims(w[np.clip(targets, 0, C - 1)], ax) * (1 - ls)
    op = p * (scale * total + zscale * 2 * z * np.abs(lse)) * factor + scale * A
    if s2_cap is not None:
        op = op * s2_cap
    return op


def make_softmax_case(rng, shape, axis, dt, prob, weighted, ignore, extreme=False):
    ax = axis % len(shape)
    C = shape[ax]
    x = rng.standard_normal(shape) * 4
    if extreme:
        flat = np.moveaxis(x, ax, -1).reshape(-1, C)
        flat[0, :] = -np.inf
        flat[0, 0] = 3.0                       # one finite class
        flat[1, 1] = 1e4                       # confident
        flat[2, :] = 0.0                       # ties
        if C > 2:
            flat[3, 2] = -np.inf               # masked class
        x = np.moveaxis(flat.reshape(np.moveaxis(x, ax, -1).shape), -1, ax)
    x = np.ascontiguousarray(x, dtype=dt)
    bshape = tuple(s for i, s in enumerate(shape) if i != ax)
    if prob:
        q = rng.dirichlet(np.ones(C), int(np.prod(bshape))).reshape(bshape + (C,))
        q[..., 0] = np.where(rng.random(bshape) < 0.3, 0.0, q[..., 0])   # exact zeros
        t = np.ascontiguousarray(np.moveaxis(q, -1, ax)).astype(dt)
    else:
        t = rng.integers(0, C, bshape).astype(np.int64)
        if ignore is not None:
            t.reshape(-1)[::3] = ignore
        if extreme and t.size > 3:
            t.reshape(-1)[0] = 0               # the finite class of the -inf row
    w = rng.uniform(0.0, 2.0, C).astype(dt) if weighted else None
    if w is not None:
        w[-1] = 0.0
    return x, t, w


def run_softmax(x, t, axis, w, ign, ls, z, cap, workers=2, inplace=False, reduction="mean"):
    """Kernel call with the reference's mean scales: ``(flags, rows, z_rows, grad)``."""
    ax = axis % x.ndim
    C = x.shape[ax]
    prob = t.dtype.kind == "f"
    N = int(np.prod([s for i, s in enumerate(x.shape) if i != ax]))
    if reduction == "mean":
        if prob:
            scale = zscale = (1.0 / N) if N else 0.0
        else:
            wsum, n_keep, bad = cp.index_target_stats(t, C, w, ign)
            scale = 1.0 / wsum if wsum else 0.0
            zscale = 1.0 / n_keep if n_keep else 0.0
    else:
        scale = zscale = 1.0
    out = x.copy() if inplace else np.empty_like(x)
    xin = out if inplace else x
    fl, rows, zr = cp.softmax_cross_entropy(xin, out, t, axis=axis, weight=w, ignore_index=ign,
                                            label_smoothing=ls, z_loss=z, softcap=cap,
                                            scale=scale, z_scale=zscale, workers=workers)
    return fl, rows, zr, out


LAYOUTS = {
    "rows": ((37, 70), -1),
    "small": ((53, 7), -1),
    "cols": ((3, 9, 23), 1),
    "chunked": ((5, 300), -1),
}


@pytest.fixture
def layout(request, monkeypatch):
    name = request.param
    if name == "chunked":
        monkeypatch.setattr(K, "ROW_MAX", 64)
        monkeypatch.setattr(K, "CHUNK", 37)
    return LAYOUTS[name]


OPTIONS = [dict(prob=prob, weighted=wt, ignore=ig, ls=ls, z=z, cap=cap)
           for prob, wt, ig, ls, z, cap in itertools.product(
               [False, True], [False, True], [None, 2], [0.0, 0.2], [0.0, 1e-3], [None, 3.0])
           if not (prob and ig is not None)]


def _check_softmax(x, t, axis, w, ign, ls, z, cap, dt, reduction="mean"):
    fl, rows, zr, g = run_softmax(x, t, axis, w, ign, ls, z, cap, reduction=reduction)
    assert fl == 0
    rrows, rz, rg, scale, zscale, y, p = softmax_reference(x, t, axis, w, ign, ls, z, cap,
                                                           reduction)
    eps = float(np.finfo(dt).eps)
    # loss rows: relative, plus the effect of the capped logits' own rounding
    lop = np.abs(rrows)
    if cap:
        ymax = np.max(np.where(np.isneginf(y), 0, np.abs(y)), axis=axis % x.ndim).reshape(-1)
        lop = lop + 4 * ymax * (1 + ls) * (1 if w is None else float(np.max(w)) + 1)
    with np.errstate(invalid="ignore"):
        el = np.where(rows == rrows, 0.0, np.abs(rows - rrows) / (eps * lop))
    assert np.nanmax(el, initial=0) <= TOL_LOSS[dt], np.nanmax(el)
    if z:
        lse_r = np.sqrt(rz / z)
        mrow = np.max(np.where(np.isneginf(y), -np.inf, y), axis=axis % x.ndim).reshape(-1)
        zop = 2 * z * lse_r * (np.abs(mrow) + lse_r + np.abs(lse_r - mrow)) * (
            1 + (4 * ymax if cap else 0))
        with np.errstate(invalid="ignore"):
            ez = np.where(zr == rz, 0.0, np.abs(zr - rz) / (eps * zop))
        assert np.nanmax(ez, initial=0) <= TOL_LOSS[dt], np.nanmax(ez)
    s2 = None
    if cap:
        xd = x.astype(np.float64)
        s2 = np.where(np.isinf(xd), 0.0, 1 / np.cosh(xd / cap) ** 2)
    op = grad_operand(y, p, t, axis, w, ls, z, scale, zscale, s2)
    tiny = float(np.finfo(dt).smallest_subnormal)          # exact values below it underflow
    with np.errstate(invalid="ignore", divide="ignore"):
        eg = np.where(np.abs(g - rg) <= tiny, 0.0, np.abs(g - rg) / (eps * op))
    assert np.nanmax(eg, initial=0) <= TOL_GRAD[dt], (np.nanmax(eg), np.unravel_index(
        np.nanargmax(eg), eg.shape))
    return np.nanmax(el, initial=0), np.nanmax(eg, initial=0)


@pytest.mark.parametrize("dt", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("layout", list(LAYOUTS), indirect=True)
@pytest.mark.parametrize("opt", OPTIONS, ids=[
    "{}{}{}{}{}{}".format("prob" if o["prob"] else "idx", "-w" if o["weighted"] else "",
                          "-ign" if o["ignore"] is not None else "", "-ls" if o["ls"] else "",
                          "-z" if o["z"] else "", "-cap" if o["cap"] else "") for o in OPTIONS])
def test_softmax_matches_reference(dt, layout, opt):
    shape, axis = layout
    rng = np.random.default_rng(zlib.crc32(repr((str(dt), shape, opt)).encode()))
    x, t, w = make_softmax_case(rng, shape, axis, dt, opt["prob"], opt["weighted"],
                                opt["ignore"])
    _check_softmax(x, t, axis, w, opt["ignore"], opt["ls"], opt["z"], opt["cap"], dt)


@pytest.mark.parametrize("dt", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("layout", list(LAYOUTS), indirect=True)
@pytest.mark.parametrize("prob", [False, True])
@pytest.mark.parametrize("cap", [None, 30.0])
def test_softmax_extreme_rows(dt, layout, prob, cap):
    """-inf masked classes, a row with one finite class, 1e4 logits, ties."""
    shape, axis = layout
    rng = np.random.default_rng(5)
    x, t, w = make_softmax_case(rng, shape, axis, dt, prob, True, None, extreme=True)
    if prob:   # a masked class must carry no target mass (else the loss is inf)
        xm = np.moveaxis(x, axis % x.ndim, -1)
        tm = np.moveaxis(t, axis % x.ndim, -1).copy()
        tm[np.isneginf(xm)] = 0
        empty = tm.sum(axis=-1) == 0
        tm[empty, np.argmax(xm[empty], axis=-1)] = 1
        tm /= tm.sum(axis=-1, keepdims=True)
        t = np.ascontiguousarray(np.moveaxis(tm, -1, axis % x.ndim)).astype(dt)
    _check_softmax(x, t, axis, w, None, 0.1, 1e-4, cap, dt)


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_softmax_sum_scale(reduction):
    rng = np.random.default_rng(3)
    x, t, w = make_softmax_case(rng, (20, 40), -1, np.float64, False, True, None)
    _check_softmax(x, t, -1, w, None, 0.1, 1e-3, None, np.float64, reduction=reduction)


# =========================================================================== determinism

@pytest.mark.parametrize("dt", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("layout", list(LAYOUTS), indirect=True)
@pytest.mark.parametrize("prob", [False, True])
def test_softmax_workers_and_inplace_bitwise(dt, layout, prob):
    shape, axis = layout
    rng = np.random.default_rng(7)
    x, t, w = make_softmax_case(rng, shape, axis, dt, prob, True, None if prob else 1)
    ign = None if prob else 1
    results = []
    for workers, inplace in [(1, False), (2, False), (3, False), (1, True), (3, True)]:
        fl, rows, zr, g = run_softmax(x, t, axis, w, ign, 0.1, 1e-3, 5.0, workers=workers,
                                      inplace=inplace)
        assert fl == 0
        results.append((rows.tobytes(), zr.tobytes(), g.tobytes()))
    assert all(r == results[0] for r in results[1:])


@pytest.mark.parametrize("kind", ["bce_logits", "bce", "cce_idx", "cce_prob", "cce_cols"])
def test_other_workers_and_inplace_bitwise(kind):
    res = []
    for workers, inplace in [(1, False), (2, False), (3, False), (2, True)]:
        if kind == "bce_logits":
            x = np.random.default_rng(0).standard_normal((40, 33)).astype(np.float32) * 5
            y = np.random.default_rng(1).random((40, 33)).astype(np.float32)
            out = x.copy() if inplace else np.empty_like(x)
            lo = np.empty_like(x)
            fl, s = cp.binary_cross_entropy_with_logits(out if inplace else x, out, y,
                                                        pos_weight=np.full(33, 2, np.float32),
                                                        loss_out=lo, workers=workers)
            res.append((fl, s, out.tobytes(), lo.tobytes()))
        elif kind == "bce":
            p = np.random.default_rng(2).random((40, 33))
            y = np.random.default_rng(1).random((40, 33))
            out = p.copy() if inplace else np.empty_like(p)
            fl, s = cp.binary_cross_entropy(out if inplace else p, out, y, eps=1e-6,
                                            workers=workers)
            res.append((fl, s, out.tobytes()))
        else:
            rr = np.random.default_rng(3)
            shape, axis = ((30, 5, 9), 1) if kind == "cce_cols" else ((60, 17), -1)
            ax = axis % len(shape)
            C = shape[ax]
            bshape = tuple(s for i, s in enumerate(shape) if i != ax)
            P = rr.dirichlet(np.ones(C), int(np.prod(bshape))).reshape(bshape + (C,))
            p = np.ascontiguousarray(np.moveaxis(P, -1, ax))
            t = rr.integers(0, C, bshape) if kind != "cce_prob" else np.ascontiguousarray(p[::-1])
            out = p.copy() if inplace else np.empty_like(p)
            fl, rows = cp.categorical_cross_entropy(out if inplace else p, out, t, axis=axis,
                                                    eps=1e-4, workers=workers)
            res.append((fl, rows.tobytes(), out.tobytes()))
    assert all(r == res[0] for r in res[1:])


# =========================================================================== error detection

@pytest.mark.parametrize("layout", list(LAYOUTS), indirect=True)
@pytest.mark.parametrize("bad", ["nan", "posinf", "allneginf", "target", "probs", "probs_nan"])
def test_softmax_flags(layout, bad):
    shape, axis = layout
    ax = axis % len(shape)
    rng = np.random.default_rng(9)
    prob = bad.startswith("probs")
    x, t, w = make_softmax_case(rng, shape, axis, np.float32, prob, False, None)
    xm = np.moveaxis(x, ax, -1)
    r = xm.reshape(-1, shape[ax]).shape[0] // 2
    row = np.unravel_index(r, xm.shape[:-1])
    if bad == "nan":
        xm[row + (1,)] = np.nan
        want = cp.SOFTMAX_BAD_LOGITS
    elif bad == "posinf":
        xm[row + (1,)] = np.inf
        want = cp.SOFTMAX_BAD_LOGITS
    elif bad == "allneginf":
        xm[row] = -np.inf
        want = cp.SOFTMAX_BAD_LOGITS
    elif bad == "target":
        t[row] = shape[ax]
        want = cp.SOFTMAX_BAD_TARGET
    else:
        tm = np.moveaxis(t, ax, -1)
        tm[row + (0,)] = 1.5 if bad == "probs" else np.nan
        want = cp.SOFTMAX_BAD_PROBS
    for cap in (None, 2.0):
        before = x.copy()
        out = x                                              # in place
        if bad == "target":                                  # index check precedes the pass
            out = np.empty_like(x)
        fl, rows, zr = cp.softmax_cross_entropy(x, out, t, axis=axis, softcap=cap, workers=2)
        assert fl & want, (fl, want)
        # the offending row is left unwritten (in place: the evidence stays), its loss NaN
        assert np.array_equal(np.moveaxis(out, ax, -1)[row], np.moveaxis(before, ax, -1)[row],
                              equal_nan=True) or bad == "target"
        assert np.isnan(rows.reshape(xm.shape[:-1])[row])
        x = before


def test_ignore_index_out_of_range_is_not_an_error():
    x = np.zeros((4, 5), np.float32)
    t = np.array([0, -100, 4, -100], np.int64)
    fl, rows, _ = cp.softmax_cross_entropy(x, np.empty_like(x), t, ignore_index=-100)
    assert fl == 0 and rows[1] == 0 and rows[3] == 0
    assert cp.index_target_stats(t, 5, None, -100) == (2.0, 2, False)
    assert cp.index_target_stats(t, 5)[2] is True


def test_bce_and_cce_flags():
    x = np.zeros((6, 5), np.float32)
    y = np.full((6, 5), 0.5, np.float32)
    x[2, 3] = np.nan
    assert cp.binary_cross_entropy_with_logits(x, np.empty_like(x), y)[0] == cp.BCE_BAD_INPUT
    x[2, 3] = np.inf                                          # allowed: the limit
    fl, s = cp.binary_cross_entropy_with_logits(x, np.empty_like(x), y)
    assert fl == 0 and s == np.inf
    y[1, 1] = 1.5
    assert cp.binary_cross_entropy_with_logits(x, np.empty_like(x), y)[0] == cp.BCE_BAD_TARGET
    y[1, 1] = 0.5
    fl, _ = cp.binary_cross_entropy_with_logits(x, np.empty_like(x), y,
                                                weight=np.full(5, -1.0, np.float32))
    assert fl == cp.BCE_BAD_WEIGHT
    fl, _ = cp.binary_cross_entropy_with_logits(x, np.empty_like(x), y,
                                                pos_weight=np.array([np.inf], np.float32))
    assert fl == cp.BCE_BAD_POS_WEIGHT
    p = np.full((6, 5), 0.2)
    p[4, 4] = 1.2
    assert cp.binary_cross_entropy(p, np.empty_like(p), np.zeros((6, 5)))[0] == cp.BCE_BAD_INPUT
    p[4, 4] = 0.2
    for shape, axis in [((6, 5), -1), ((2, 5, 3), 1)]:
        P = np.full(shape, 0.2)
        bs = tuple(s for i, s in enumerate(shape) if i != axis % len(shape))
        t = np.zeros(bs, np.int64)
        t.reshape(-1)[1] = 5
        assert cp.categorical_cross_entropy(P, np.empty_like(P), t, axis=axis)[0] == \
            cp.CCE_BAD_TARGET
        P.reshape(-1)[7] = np.nan
        fl, rows = cp.categorical_cross_entropy(P, np.empty_like(P), np.zeros(bs, np.int64),
                                                axis=axis)
        assert fl == cp.CCE_BAD_PROBS and np.isnan(rows).any()
        P.reshape(-1)[7] = 0.2
        q = np.full(shape, 0.2)
        q.reshape(-1)[3] = -0.1
        assert cp.categorical_cross_entropy(P, np.empty_like(P), q, axis=axis)[0] == \
            cp.CCE_BAD_TARGET_PROBS


# =========================================================================== mpmath extremes

def _mp_softmax_row(xrow, y, eps_ls, z, cap):
    """Loss, z-loss, gradient and the gradient's operand sizes of one row, mpmath 60 digits."""
    import mpmath as mp
    mp.mp.dps = 60
    C = len(xrow)
    X = [mp.mpf(float(v)) for v in xrow]
    Y = [(-mp.inf if v == -mp.inf else (cap * mp.tanh(v / cap) if cap else v)) for v in X]
    m = max(Y)
    lse = m + mp.log(mp.fsum(mp.exp(v - m) for v in Y if v != -mp.inf))
    nlp = [(lse - v) if v != -mp.inf else mp.inf for v in Y]
    loss = (1 - eps_ls) * nlp[y] + ((eps_ls / C) * mp.fsum(nlp) if eps_ls else 0)
    grad, opnd = [], []
    for c in range(C):
        pc = mp.exp(Y[c] - lse) if Y[c] != -mp.inf else mp.mpf(0)
        q = (1 - eps_ls) * (1 if c == y else 0) + eps_ls / C
        s2 = (mp.sech(X[c] / cap) ** 2 if X[c] != -mp.inf else 0) if cap else 1
        grad.append((pc * (1 + 2 * z * lse) - q) * s2)
        spread = 1 + (abs(Y[c] - m) if Y[c] != -mp.inf else 0)
        if cap:
            spread += (abs(Y[c]) if Y[c] != -mp.inf else 0) + abs(m)
        opnd.append((pc * (1 + 2 * z * abs(lse)) * spread + q) * s2)
    return loss, z * lse ** 2, grad, opnd, m


@pytest.mark.parametrize("dt", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("cap", [None, 30.0])
@pytest.mark.parametrize("ls,z", [(0.0, 0.0), (0.1, 1e-4)])
def test_softmax_extremes_vs_mpmath(dt, cap, ls, z):
    import mpmath as mp
    thr = 88.72 if dt == np.float32 else 709.78
    x = np.array([
        [1e4, 0.0, -1e4, 5.0],
        [-1e4, -1e4 + 1, -1e4 + 2, -1e4 + 3],
        [thr, 0.0, -thr, thr - 1],
        [-thr, -thr - 30, 0.0, -np.inf],
        [40.0, 0.0, -10.0, -np.inf],
        [3.0, 3.0, 3.0, 3.0],
        [-np.inf, -np.inf, 7.0, -np.inf],
        [30.0, -30.0, 29.0, 1e-30],
    ], dt)
    ys = np.array([0, 3, 1, 0, 0, 2, 2, 3], np.int64)
    if ls:
        x[np.isneginf(x)] = -1e3          # smoothing puts mass on every class
    out = np.empty_like(x)
    fl, r, zr = cp.softmax_cross_entropy(x, out, ys, label_smoothing=ls, z_loss=z, softcap=cap,
                                         workers=1)
    assert fl == 0
    eps = float(np.finfo(dt).eps)
    for i in range(len(x)):
        loss, zl, grad, opnd, m = _mp_softmax_row(x[i], int(ys[i]), ls, z, cap)
        # the loss is a sum of non-negative terms: relative error, widened by the capped
        # logits' own rounding (|y| eps each) when soft-capping
        lop = abs(loss) + (4 * (abs(m) + cap) if cap else 0)
        assert abs(r[i] - float(loss)) <= 4 * eps * float(lop), (i, r[i], loss)
        if z:
            lse = mp.sqrt(zl / z)
            zop = 2 * z * lse * (abs(m) + lse + abs(lse - m)) * (1 + (abs(m) if cap else 0))
            assert abs(zr[i] - float(zl)) <= 4 * eps * float(zop)
        for c in range(x.shape[1]):
            err = abs(mp.mpf(float(out[i, c])) - grad[c])
            tiny = float(np.finfo(dt).smallest_subnormal)       # results below it underflow
            assert err <= 4 * eps * opnd[c] + tiny, (i, c, out[i, c], grad[c])


def test_confident_row_keeps_tiny_loss():
    """t far below eps: loss = log1p(t) ~ t, gradient p_y - 1 = -t/(1+t), no cancellation."""
    for dt, big in [(np.float32, 60.0), (np.float64, 300.0)]:
        x = np.array([[big, 0.0, 0.0]], dt)
        out = np.empty_like(x)
        fl, r, _ = cp.softmax_cross_entropy(x, out, np.array([0]), workers=1)
        t = 2 * math.exp(-float(big))
        assert r[0] == pytest.approx(t, rel=4 * float(np.finfo(dt).eps))
        assert out[0, 0] == pytest.approx(-t, rel=4 * float(np.finfo(dt).eps))


# =========================================================================== BCE / CCE vs plain

def _bce_operands(rng, shape, dt, wk, pwk):
    w = None if wk is None else (rng.uniform(0, 2, shape) if wk == "full"
                                 else rng.uniform(0, 2, shape[-1:])).astype(dt)
    pw = None if pwk is None else (rng.uniform(0, 3, shape[-1:]) if pwk == "row"
                                   else np.array(2.5)).astype(dt)
    return w, pw


@pytest.mark.parametrize("dt", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("shape,wk,pwk", [
    (shape, wk, pwk)
    for shape in [(7, 5), (3, 4, 6), (5000,), (), (200, 1)]
    for wk, pwk in itertools.product([None, "full", "row"], [None, "row", "scalar"])
    if shape or "row" not in (wk, pwk)])            # a scalar has no last axis
def test_bce_logits_matches_plain(dt, shape, wk, pwk):
    rng = np.random.default_rng(21)
    x = (rng.standard_normal(shape) * 8).astype(dt)
    if x.size > 3:
        x.reshape(-1)[:3] = [np.inf, -np.inf, 1e4]
    y = rng.random(shape).astype(dt)
    if y.size > 3:
        y.reshape(-1)[:3] = [1.0, 0.0, 0.0]
    w, pw = _bce_operands(rng, shape, dt, wk, pwk)
    out = np.empty_like(x)
    lo = np.empty_like(x)
    fl, tot = cp.binary_cross_entropy_with_logits(x, out, y, weight=w, pos_weight=pw,
                                                  loss_out=lo, scale=0.5, workers=2)
    assert fl == 0
    rl, rg = ce.binary_cross_entropy_with_logits_value_and_grad(x, y, weight=w, pos_weight=pw,
                                                                reduction="none")
    eps = float(np.finfo(dt).eps)
    with np.errstate(invalid="ignore", over="ignore"):
        el = np.where(lo == rl, 0, np.abs(lo - rl) / (eps * np.abs(rl.astype(float))))
        xd = x.astype(float)
        sp, sn = 1 / (1 + np.exp(-xd)), 1 / (1 + np.exp(xd))
        pwd = 1.0 if pw is None else np.broadcast_to(pw, shape).astype(float)
        wd = 1.0 if w is None else np.broadcast_to(w, shape).astype(float)
        opnd = (np.abs((1 - y) * sp) + np.abs(pwd * y * sn)) * wd * 0.5
        eg = np.where(out == 0.5 * rg, 0, np.abs(out - 0.5 * rg) / (eps * opnd))
    assert np.max(el, initial=0) <= 4 and np.max(eg, initial=0) <= 4
    rs = float(np.sum(rl, dtype=np.float64))
    assert tot == rs or abs(tot - rs) <= 4 * eps * abs(rs)


@pytest.mark.parametrize("dt", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("shape,wk", [(shape, wk) for shape in [(7, 5), (3, 4, 6), (5000,), ()]
                                       for wk in [None, "full", "row"]
                                       if shape or wk != "row"])   # a scalar has no last axis
@pytest.mark.parametrize("eps_clip", [None, 1e-3])
def test_bce_probs_matches_plain(dt, shape, wk, eps_clip):
    rng = np.random.default_rng(22)
    p = rng.random(shape).astype(dt)
    y = rng.random(shape).astype(dt)
    if p.size > 6:
        p.reshape(-1)[:6] = [0.0, 1.0, 1e-30, 1 - 1e-7, 5e-4, 0.9995]
        y.reshape(-1)[:6] = [0.0, 1.0, 0.5, 1.0, 0.3, 0.7]
    w = None if wk is None else (rng.uniform(0, 2, shape) if wk == "full"
                                 else rng.uniform(0, 2, shape[-1:])).astype(dt)
    out = np.empty_like(p)
    lo = np.empty_like(p)
    fl, tot = cp.binary_cross_entropy(p, out, y, weight=w, eps=eps_clip, loss_out=lo, workers=2)
    assert fl == 0
    rl, rg = ce.binary_cross_entropy_value_and_grad(p, y, weight=w, eps=eps_clip, reduction="none")
    eps = float(np.finfo(dt).eps)
    with np.errstate(invalid="ignore"):
        el = np.where(lo == rl, 0, np.abs(lo - rl) / (eps * np.abs(rl.astype(float))))
        pc = p.astype(float) if eps_clip is None else np.clip(p.astype(float), eps_clip,
                                                               1 - eps_clip)
        wd = 1.0 if w is None else np.broadcast_to(w, shape).astype(float)
        opnd = (np.abs((1 - y) / (1 - pc)) + np.abs(y / pc)) * wd
        eg = np.where(out == rg, 0, np.abs(out - rg) / (eps * opnd))
    assert np.max(el, initial=0) <= 4 and np.max(eg, initial=0) <= 4


@pytest.mark.parametrize("dt", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("shape,axis", [((30, 6), -1), ((4, 5, 7), 1), ((3, 200), -1)])
@pytest.mark.parametrize("tk", ["idx", "prob"])
@pytest.mark.parametrize("wk", [False, True])
@pytest.mark.parametrize("eps_clip", [None, 1e-4])
def test_cce_matches_plain(dt, shape, axis, tk, wk, eps_clip):
    rng = np.random.default_rng(23)
    ax = axis % len(shape)
    C = shape[ax]
    bshape = tuple(s for i, s in enumerate(shape) if i != ax)
    N = int(np.prod(bshape))
    P = rng.dirichlet(np.ones(C) * 0.3, N).reshape(bshape + (C,))
    P.reshape(-1, C)[0, :] = 0.0
    P.reshape(-1, C)[0, 0] = 1.0
    P = np.ascontiguousarray(np.moveaxis(P, -1, ax)).astype(dt)
    if tk == "idx":
        t = rng.integers(0, C, bshape)
    else:
        t = np.ascontiguousarray(np.moveaxis(rng.dirichlet(np.ones(C), N).reshape(bshape + (C,)),
                                             -1, ax)).astype(dt)
    w = rng.uniform(0, 2, C).astype(dt) if wk else None
    out = np.empty_like(P)
    fl, rows = cp.categorical_cross_entropy(P, out, t, axis=axis, weight=w, eps=eps_clip,
                                            workers=2)
    assert fl == 0
    rl = ce.categorical_cross_entropy(P, t, axis=axis, weight=w, eps=eps_clip, reduction="none")
    rg = ce.categorical_cross_entropy_grad(P, t, axis=axis, weight=w, eps=eps_clip,
                                           reduction="sum")
    eps = float(np.finfo(dt).eps)
    with np.errstate(invalid="ignore"):
        el = np.where(rows.reshape(rl.shape) == rl, 0,
                      np.abs(rows.reshape(rl.shape) - rl) / (eps * np.abs(rl.astype(float))))
    assert np.max(el) <= 4
    assert np.array_equal(out, rg)           # same operations, same order: bitwise


# =========================================================================== small / empty

def test_empty_inputs():
    x = np.zeros((0, 5), np.float32)
    assert cp.softmax_cross_entropy(x, np.empty_like(x), np.zeros(0, np.int64))[0] == 0
    x3 = np.zeros((2, 5, 0), np.float64)
    fl, rows, _ = cp.softmax_cross_entropy(x3, np.empty_like(x3), np.zeros((2, 0), np.int64),
                                           axis=1)
    assert fl == 0 and rows.size == 0
    e = np.zeros(0, np.float32)
    assert cp.binary_cross_entropy_with_logits(e, np.empty_like(e), e) == (0, 0.0)
    assert cp.binary_cross_entropy(e, np.empty_like(e), e) == (0, 0.0)
    P = np.zeros((0, 3))
    assert cp.categorical_cross_entropy(P, np.empty_like(P), np.zeros(0, np.int64))[0] == 0


@pytest.mark.parametrize("dt", DTYPES, ids=["f32", "f64"])
def test_small_inputs(dt):
    for shape in [(1, 1), (1, 2), (2, 1), (1, 3)]:
        x = np.arange(np.prod(shape), dtype=dt).reshape(shape)
        t = np.zeros(shape[0], np.int64)
        _check_softmax(x, t, -1, None, None, 0.0, 0.0, None, dt)
        _check_softmax(x, t, -1, None, None, 0.3, 1e-2, 2.0, dt)


# =========================================================================== cache guard, warmup

def test_cache_guard_no_writable_dir(monkeypatch, tmp_path):
    """No writable location: the kernel decorator must still work (no caching)."""
    assert _jit._writable_dir_from(["/proc/ce_reference_not_writable/x"]) is None
    monkeypatch.setattr(_jit, "CACHE_DIR", None)

    def f(a):
        return a + 1

    k = _jit.kernel(f)
    assert k(1) == 2
    _jit.KERNELS.remove(k)


def test_cache_dir_override(monkeypatch, tmp_path):
    monkeypatch.setenv("CE_REFERENCE_CACHE_DIR", str(tmp_path / "c"))
    assert _jit._writable_dir_from(_jit._candidate_dirs()) == str(tmp_path / "c")


def test_warmup_reports():
    info = cp.warmup()
    assert info["compiled"] + info["loaded"] >= 20
    assert info["seconds"] >= 0


def test_non_contiguous_input_and_out():
    rng = np.random.default_rng(4)
    big = rng.standard_normal((30, 80)).astype(np.float32)
    x = big[:, ::2]                                      # not contiguous: copied
    t = rng.integers(0, 40, 30)
    out = np.empty((30, 40), np.float32)
    fl, rows, _ = cp.softmax_cross_entropy(x, out, t, workers=1)
    fl2, rows2, _ = cp.softmax_cross_entropy(np.ascontiguousarray(x), out2 := np.empty_like(out),
                                             t, workers=1)
    assert fl == fl2 == 0 and np.array_equal(rows, rows2) and np.array_equal(out, out2)
    with pytest.raises(ValueError, match="C-contiguous"):
        cp.softmax_cross_entropy(x, np.empty((30, 80), np.float32)[:, ::2], t)
    with pytest.raises(ValueError, match="C-contiguous"):
        cp.binary_cross_entropy_with_logits(x, np.empty((30, 80), np.float32)[:, ::2], x)


def test_concurrent_callers_share_the_pool():
    """Several Python threads, different ``workers``: same results as one serial call."""
    from concurrent.futures import ThreadPoolExecutor
    rng = np.random.default_rng(12)
    x = rng.standard_normal((300, 90)).astype(np.float32)
    t = rng.integers(0, 90, 300)
    ref = run_softmax(x, t, -1, None, None, 0.1, 1e-3, 4.0, workers=1)

    def call(k):
        return run_softmax(x, t, -1, None, None, 0.1, 1e-3, 4.0, workers=1 + k % 4)

    with ThreadPoolExecutor(6) as ex:
        for res in ex.map(call, range(24)):
            assert res[0] == 0 and np.array_equal(res[1], ref[1]) and np.array_equal(res[3], ref[3])


def test_module_main_warmup(capsys):
    from ce_reference.compiled.__main__ import main
    assert main([]) == 0
    assert "compiled kernels ready" in capsys.readouterr().out
    assert main(["nonsense"]) == 2


@pytest.mark.parametrize("layout", list(LAYOUTS), indirect=True)
def test_keep_mask_equals_ignore_index(layout):
    """A kept-rows mask (ignored rows' indices set to 0) gives the ignore_index results."""
    shape, axis = layout
    rng = np.random.default_rng(13)
    x, t, w = make_softmax_case(rng, shape, axis, np.float32, False, True, -100)
    keep = t != -100
    index = np.where(keep, t, 0)
    a = cp.softmax_cross_entropy(x, ga := np.empty_like(x), t, axis=axis, weight=w,
                                 ignore_index=-100, label_smoothing=0.1, z_loss=1e-3, softcap=3.0,
                                 workers=2)
    b = cp.softmax_cross_entropy(x, gb := np.empty_like(x), index, axis=axis, weight=w, keep=keep,
                                 label_smoothing=0.1, z_loss=1e-3, softcap=3.0, workers=2)
    assert a[0] == b[0] == 0
    assert np.array_equal(a[1], b[1]) and np.array_equal(a[2], b[2]) and np.array_equal(ga, gb)
    assert cp.index_target_stats(t, x.shape[axis], w, -100) == \
        cp.index_target_stats(index, x.shape[axis], w, keep=keep)


def _library_has_z_loss():
    import inspect
    return "z_loss" in inspect.signature(ce.softmax_cross_entropy).parameters


@pytest.mark.skipif(not _library_has_z_loss(), reason="this checkout's softmax_cross_entropy "
                    "has no z_loss / softcap; the float64 composition above checks "
                    "them")
@pytest.mark.parametrize("dt", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("prob", [False, True])
def test_matches_library_z_loss_softcap(dt, reduction, prob):
    """Against the library's own NumPy z_loss / softcap (same semantics, same denominators)."""
    rng = np.random.default_rng(17)
    for shape, axis in [((40, 50), -1), ((30, 7), -1), ((4, 9, 11), 1)]:
        ax = axis % len(shape)
        C = shape[ax]
        x, t, w = make_softmax_case(rng, shape, axis, dt, prob, True, None if prob else 3)
        ign = None if prob else 3
        kw = dict(axis=axis, weight=w, label_smoothing=0.2, z_loss=1e-3, softcap=3.0)
        if not prob:
            kw["ignore_index"] = ign
        L, G = ce.softmax_cross_entropy_value_and_grad(x, t, reduction=reduction, **kw)
        fl, rows, zr, g = run_softmax(x, t, axis, w, ign, 0.2, 1e-3, 3.0, reduction=reduction)
        assert fl == 0
        bshape = tuple(s for i, s in enumerate(shape) if i != ax)
        if reduction == "none":
            val = (rows + zr).reshape(bshape)
        else:
            rr, rz, _, scale, zscale, _, _ = softmax_reference(x, t, axis, w, ign, 0.2, 1e-3, 3.0,
                                                               reduction)
            val = rows.sum() * scale + zr.sum() * zscale
        eps = float(np.finfo(dt).eps)
        Lf = np.asarray(L, float)
        assert np.all(np.abs(np.asarray(val) - Lf) <= 8 * eps * np.abs(Lf) + 1e-300)
        assert np.max(np.abs(g.astype(float) - G)) <= 8 * eps * np.max(np.abs(G))
