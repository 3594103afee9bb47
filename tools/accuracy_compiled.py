"""Worst errors of the compiled kernels and of today's NumPy fused kernels, side by side.

``python tools/accuracy_compiled.py``.  float32 inputs are measured against the
float64 plain functions on the same inputs (their own error, ~1e-16, is far below
a float32 ULP); float64 inputs against mpmath (60 digits) on smaller arrays.
Units: the loss in eps of the loss (plus, with the soft-cap, of the capped
logits it is made of), each gradient entry in eps times its operands (the
README's unit: ``p S (1 + |x - m|) + A``), the maximum over every option
combination and layout of ``tests/test_compiled.py``.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import sys
import zlib

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("tc", os.path.join(HERE, "..", "tests",
                                                                 "test_compiled.py"))
tc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tc)

import ce_reference as ce  # noqa: E402
from ce_reference.compiled import _softmax as K  # noqa: E402


def errors(x, t, axis, w, ign, ls, z, cap, dt, g, rows, zr, rrows, rz, rg, scale, zscale, y, p):
    eps = float(np.finfo(dt).eps)
    lop = np.abs(rrows)
    if cap:
        ymax = np.max(np.where(np.isneginf(y), 0, np.abs(y)), axis=axis % x.ndim).reshape(-1)
        lop = lop + 4 * ymax * (1 + ls) * (1 if w is None else float(np.max(w)) + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        el = np.where(rows == rrows, 0.0, np.abs(rows - rrows) / (eps * lop))
    s2 = None
    if cap:
        xd = x.astype(np.float64)
        s2 = np.where(np.isinf(xd), 0.0, 1 / np.cosh(xd / cap) ** 2)
    op = tc.grad_operand(y, p, t, axis, w, ls, z, scale, zscale, s2)
    tiny = float(np.finfo(dt).smallest_subnormal)
    with np.errstate(invalid="ignore", divide="ignore"):
        eg = np.where(np.abs(g - rg) <= tiny, 0.0, np.abs(g - rg) / (eps * op))
    return float(np.nanmax(el, initial=0)), float(np.nanmax(eg, initial=0))


def softmax_f32():
    worst = {}
    for name, (shape, axis) in tc.LAYOUTS.items():
        if name == "chunked":
            K.ROW_MAX, K.CHUNK = 64, 37
        for opt, extreme in itertools.product(tc.OPTIONS, [False, True]):
            rng = np.random.default_rng(zlib.crc32(repr((shape, opt, extreme)).encode()))
            x, t, w = tc.make_softmax_case(rng, shape, axis, np.float32, opt["prob"],
                                           opt["weighted"], opt["ignore"], extreme=extreme)
            if opt["prob"] and extreme:
                continue
            ign, ls, z, cap = opt["ignore"], opt["ls"], opt["z"], opt["cap"]
            ref = tc.softmax_reference(x, t, axis, w, ign, ls, z, cap)
            fl, rows, zr, g = tc.run_softmax(x, t, axis, w, ign, ls, z, cap)
            key = ("compiled" + (" (z_loss / softcap)" if (z or cap) else ""), name)
            e = errors(x, t, axis, w, ign, ls, z, cap, np.float32, g, rows, zr, *ref)
            worst[key] = tuple(max(a, b) for a, b in zip(worst.get(key, (0, 0)), e))
            if not z and not cap:
                kw = dict(axis=axis, weight=w, label_smoothing=ls)
                if not opt["prob"]:
                    kw["ignore_index"] = ign
                rn = ce.softmax_cross_entropy(x, t, reduction="none", **kw).reshape(-1)
                _, gn = ce.softmax_cross_entropy_value_and_grad(x, t, **kw)
                key = ("numpy fused", name)
                e = errors(x, t, axis, w, ign, ls, z, cap, np.float32, gn, rn, None, *ref)
                worst[key] = tuple(max(a, b) for a, b in zip(worst.get(key, (0, 0)), e))
        K.ROW_MAX, K.CHUNK = 1 << 18, 1 << 15
    return worst


def softmax_f64_mpmath():
    """float64, index targets, no weights: compiled and NumPy fused against mpmath."""
    import mpmath as mp
    from ce_reference import compiled as cp
    rng = np.random.default_rng(1)
    worst = {}
    eps = float(np.finfo(np.float64).eps)
    for ls, z, cap in itertools.product([0.0, 0.1], [0.0, 1e-3], [None, 30.0]):
        x = rng.standard_normal((24, 12)) * 6
        x[0, :3] = [700.0, -700.0, 709.0]
        x[1, :] = 0.0
        x[2, 1] = 1e4
        x[3, 2] = -1e4
        y = rng.integers(0, 12, 24)
        out = np.empty_like(x)
        fl, r, zr = cp.softmax_cross_entropy(x, out, y, label_smoothing=ls, z_loss=z,
                                             softcap=cap, workers=1)
        impls = {"compiled": (r + (zr if z else 0), out)}
        if not z and not cap:
            rn = ce.softmax_cross_entropy(x, y, label_smoothing=ls, reduction="none")
            _, gn = ce.softmax_cross_entropy_value_and_grad(x, y, label_smoothing=ls,
                                                            reduction="sum")
            impls["numpy fused"] = (rn, gn)
        for i in range(x.shape[0]):
            loss, zl, grad, opnd, m = tc._mp_softmax_row(x[i], int(y[i]), ls, z, cap)
            total = loss + zl
            lop = abs(total) + (4 * (abs(m) + cap) if cap else 0) + (
                2 * z * abs(mp.sqrt(zl / z)) * (abs(m) + 1) if z else 0)
            for name, (rr, gg) in impls.items():
                el = float(abs(mp.mpf(float(rr[i])) - total) / (eps * lop))
                # an exact value below the smallest subnormal underflows: not an error
                eg = max(float(max(abs(mp.mpf(float(gg[i, c])) - grad[c]) - 5e-324, 0)
                               / (eps * opnd[c])) if opnd[c] else 0.0
                         for c in range(x.shape[1]))
                k = (name, f"ls={ls} z={z} cap={cap}")
                worst[k] = tuple(max(a, b) for a, b in zip(worst.get(k, (0, 0)), (el, eg)))
    return worst


def bce_f32():
    """BCE with logits / on probabilities, float32, against the float64 plain functions."""
    from ce_reference import compiled as cp
    rng = np.random.default_rng(3)
    n = 200_000
    x = (rng.standard_normal(n) * 10).astype(np.float32)
    x[:4] = [np.inf, -np.inf, 1e4, -1e4]
    y = rng.random(n).astype(np.float32)
    y[::7] = 0.0
    y[1::7] = 1.0
    p = rng.random(n).astype(np.float32)
    p[:4] = [0.0, 1.0, 1e-30, 1 - 6e-8]
    eps = float(np.finfo(np.float32).eps)
    res = {}
    for pwk in (None, np.float32(2.5)):
        rl, rg = ce.binary_cross_entropy_with_logits_value_and_grad(
            x.astype(float), y.astype(float), pos_weight=pwk, reduction="none")
        xd = x.astype(float)
        with np.errstate(over="ignore"):
            sp, sn = 1 / (1 + np.exp(-xd)), 1 / (1 + np.exp(xd))
        op = np.abs((1 - y) * sp) + np.abs((1.0 if pwk is None else 2.5) * y * sn)
        out = np.empty_like(x)
        lo = np.empty_like(x)
        cp.binary_cross_entropy_with_logits(x, out, y, pos_weight=pwk, loss_out=lo, workers=1)
        nl, ng = ce.binary_cross_entropy_with_logits_value_and_grad(x, y, pos_weight=pwk,
                                                                    reduction="none")
        for name, (l, g) in {"compiled": (lo, out), "numpy fused": (nl, ng)}.items():
            with np.errstate(invalid="ignore", divide="ignore"):
                el = np.nanmax(np.where(l == rl, 0, np.abs(l - rl) / (eps * np.abs(rl))))
                eg = np.nanmax(np.where(g == rg, 0, np.abs(g - rg) / (eps * op)))
            res[(f"BCE with logits{'' if pwk is None else ', pos_weight'}", name)] = (el, eg)
    for e in (None, 1e-4):
        # the float64 reference on the float32-clipped probabilities (the clip bounds are
        # eps and 1 - eps in float32, as the plain float32 function computes them)
        if e is None:
            pc = p.astype(float)
            inside = np.ones(n, bool)
        else:
            lo_, hi_ = np.float32(e), np.float32(1) - np.float32(e)
            pc = np.clip(p, lo_, hi_).astype(float)
            inside = (p >= lo_) & (p <= hi_)
        rl, rg = ce.binary_cross_entropy_value_and_grad(pc, y.astype(float), reduction="none")
        rg = np.where(inside, rg, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            op = np.abs((1 - y) / (1 - pc)) + np.abs(y / pc)
        out = np.empty_like(p)
        lo = np.empty_like(p)
        cp.binary_cross_entropy(p, out, y, eps=e, loss_out=lo, workers=1)
        nl, ng = ce.binary_cross_entropy_value_and_grad(p, y, eps=e, reduction="none")
        for name, (l, g) in {"compiled": (lo, out), "numpy fused": (nl, ng)}.items():
            with np.errstate(invalid="ignore", divide="ignore"):
                el = np.nanmax(np.where(l == rl, 0, np.abs(l - rl) / (eps * np.abs(rl))))
                eg = np.nanmax(np.where(g == rg, 0, np.abs(g - rg) / (eps * op)))
            res[(f"BCE on probabilities{'' if e is None else ', eps=1e-4'}", name)] = (el, eg)
    return res


def main():
    print("softmax CE, float32 inputs, every option combination (the NumPy kernels of this "
          "checkout have no z_loss/softcap)")
    print("| implementation | layout | worst loss error (eps) | worst gradient error (eps x operand) |")
    print("|---|---|---:|---:|")
    for (impl, layout), (el, eg) in sorted(softmax_f32().items()):
        print(f"| {impl} | {layout} | {el:.2f} | {eg:.2f} |")
    print()
    print("softmax CE, float64 inputs (24 x 12 rows incl. +-1e4, 700/709 logits, ties), vs mpmath")
    print("| implementation | options | worst loss error (eps x operand) | worst gradient error |")
    print("|---|---|---:|---:|")
    for (impl, o), (el, eg) in sorted(softmax_f64_mpmath().items()):
        print(f"| {impl} | {o} | {el:.2f} | {eg:.2f} |")
    print()
    print("BCE, float32 inputs (2e5 elements incl. +-inf, +-1e4 logits; p = 0, 1, 1e-30), "
          "against float64")
    print("| loss | implementation | worst loss error (eps) | worst gradient error (eps x operand) |")
    print("|---|---|---:|---:|")
    for (loss, impl), (el, eg) in sorted(bce_f32().items()):
        print(f"| {loss} | {impl} | {el:.2f} | {eg:.2f} |")


if __name__ == "__main__":
    sys.exit(main())
