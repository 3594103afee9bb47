r"""What the kernel audits (``torch-linear``, ``liger``, ``cce``) share.

The audited kernels compute the linear cross-entropy of an LLM's output head,
``softmax_cross_entropy(x @ linear_weight.T + linear_bias, targets, ...)``,
or the cross-entropy of given logits (Liger's ``LigerCrossEntropyLoss``).  A
case is a :class:`ce_reference.cases.Case` from
:func:`ce_reference.cases.regions.linear` (or ``regions.categorical`` for
logits), its keywords named as :func:`ce_reference.linear_cross_entropy`
names them: ``linear_weight``, ``linear_bias``, ``weight`` (class weights),
``ignore_index``, ``label_smoothing``, ``z_loss``, ``softcap``,
``reduction``; besides them ``grad_output`` (the upstream gradient: one per
row for ``reduction="none"``, as Liger #1298 needs), ``shift``
(cut-cross-entropy: position ``t`` predicts ``targets[..., t + 1]``) and
keywords only one framework has (``options``, ``filter_eps``,
``return_z_loss``), which the reference ignores.

* :func:`exact_linear` / :func:`exact_logits`: the reference -- the
  library's :func:`~ce_reference.linear_cross_entropy_value_and_grad` (and
  :func:`~ce_reference.softmax_cross_entropy_value_and_grad` for logits) on
  the float64 values of the inputs, so a float16 or float32 input is judged
  against its exact result.  Output arrays: ``value``, ``grad input``,
  ``grad weight``, ``grad bias`` (linear) or ``grad`` (logits), and
  ``z_loss`` (the z-loss term alone) where the framework returns it.
* :func:`linear_scales`: the operand scale of each output for the eps
  comparison of float32 (:func:`ce_reference.frameworks._core.compare`).
* :func:`composition`: the same computation composed of plain PyTorch
  operations in the input's dtype (``F.linear``, soft-cap
  ``s * tanh(x / s)``, ``F.cross_entropy``, the z-loss term, autograd) -- the
  baseline of the low-precision criterion for float16
  (:func:`ce_reference.auditing.tolerance.low_precision`).
"""

from __future__ import annotations

import importlib.util
import warnings
from importlib import metadata

import numpy as np

from .._format import fmt_array
from ..cases import Case
from ..losses.softmax_cross_entropy import (softmax_cross_entropy_grad,
                                            softmax_cross_entropy_value_and_grad)
from ._core import Result

#: Options every kernel target may see, with the reference's defaults.
REFERENCE_OPTIONS = ("weight", "ignore_index", "label_smoothing", "z_loss", "softcap",
                     "reduction")
#: The packages of the ``kernels`` extra, by the distribution name pip knows.
KERNEL_PACKAGES = ("torch", "triton", "liger-kernel", "cut-cross-entropy", "ml_dtypes")
INSTALL_HINT = "pip install -e \".[kernels]\" (torch==2.13.0, triton==3.9.0, " \
               "liger-kernel==0.8.5, cut-cross-entropy==25.1.1)"


def require(*dists: str) -> dict:
    """The versions of the distributions ``dists``; ``ImportError`` ("not installed: ...",
    with the install command) when one is missing."""
    out, missing = {}, []
    for d in dists:
        module = {"liger-kernel": "liger_kernel", "cut-cross-entropy": "cut_cross_entropy"}.get(d, d)
        try:
            out[d] = metadata.version(d)
        except metadata.PackageNotFoundError:
            missing.append(d)
            continue
        if importlib.util.find_spec(module) is None:      # pragma: no cover - broken install
            missing.append(d)
    if missing:
        raise ImportError(f"not installed: {', '.join(missing)}; {INSTALL_HINT}")
    return out


def versions() -> dict:
    """Versions of the kernel audits' packages (None when missing)."""
    out = {}
    for name in KERNEL_PACKAGES + ("numpy",):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


# --------------------------------------------------------------------------- the reference

def _reference_functions():
    """The library's linear cross-entropy, the exact reference of every kernel audit."""
    import ce_reference
    return ce_reference.linear_cross_entropy_value_and_grad


def _f64(a):
    return None if a is None else np.asarray(a).astype(np.float64)


def _options(kw) -> dict:
    out = {k: kw[k] for k in REFERENCE_OPTIONS if k in kw}
    if "weight" in out:
        out["weight"] = _f64(out["weight"])
    return out


def shifted(case: Case):
    """``(x, targets)`` of the rows that have a target: with ``shift``, position ``t``
    predicts ``targets[..., t + 1]`` (cut-cross-entropy's ``shift``)."""
    if case.kwargs.get("shift"):
        return case.x[..., :-1, :], case.targets[..., 1:]
    return case.x, case.targets


def exact_linear(case: Case) -> Result:
    """The exact result of a linear case: :func:`ce_reference.linear_cross_entropy_value_and_grad`
    on the float64 values (float16 / float32 are exact in float64)."""
    vg = _reference_functions()
    kw = case.kwargs
    x, y = shifted(case)
    x = _f64(x)
    W, b = _f64(kw["linear_weight"]), _f64(kw.get("linear_bias"))
    opts = _options(kw)
    reduction = opts.get("reduction", "mean")
    go = kw.get("grad_output")
    if go is not None and reduction == "none" and np.ndim(go):
        # the gradient of sum_n g_n loss_n: row by row (each row's loss depends on its row)
        g = _f64(go).reshape(y.shape)
        value = vg(x, W, y, linear_bias=b, **opts)[0]
        dx, dW = np.zeros_like(x), np.zeros_like(W)
        db = None if b is None else np.zeros_like(b)
        one = dict(opts, reduction="sum")
        for idx in np.ndindex(y.shape):
            _, (dxi, dWi, dbi) = vg(x[idx][None], W, y[idx][None], linear_bias=b, **one)
            dx[idx] = g[idx] * dxi[0]
            dW += g[idx] * dWi
            if db is not None:
                db += g[idx] * dbi
    else:
        value, (dx, dW, db) = vg(x, W, y, linear_bias=b, **opts)
        if go is not None:
            s = float(np.asarray(go, np.float64))
            dx, dW = dx * s, dW * s
            db = None if db is None else db * s
    if kw.get("shift"):
        full = np.zeros(case.x.shape)
        full[..., :-1, :] = dx
        dx = full
    arrays = {"value": np.asarray(value, np.float64), "grad input": dx, "grad weight": dW}
    if b is not None:
        arrays["grad bias"] = db
    if kw.get("return_z_loss"):
        arrays["z_loss"] = z_term(case)
    return Result(arrays)


def exact_logits(case: Case) -> Result:
    """The exact result of a cross-entropy on logits (class axis last): the library's
    softmax cross-entropy on the float64 values."""
    kw = case.kwargs
    opts = _options(kw)
    value, g = softmax_cross_entropy_value_and_grad(_f64(case.x), case.targets, **opts)
    go = kw.get("grad_output")
    if go is not None:
        g = g * (_f64(go)[..., None] if np.ndim(go) else float(go))
    arrays = {"value": np.asarray(value, np.float64), "grad": np.asarray(g, np.float64)}
    if kw.get("return_z_loss"):
        arrays["z_loss"] = z_term(case)
    return Result(arrays)


def exact_at(case: Case, z, softcap_derivative=None) -> Result:
    """The result of ``case`` computed exactly from the logits ``z`` on (float64 ``(rows, V)``,
    e.g. the logits as a kernel rounds them), chained through the case's input and weight.

    ``softcap_derivative(z, s)`` replaces the derivative ``sech(z / s)**2`` of the soft-cap
    (e.g. by ``1 - tanh(z / s)**2`` as a kernel computes it).  With these two substitutions
    a mechanism that explains a low-precision deviation can be checked: the framework then
    agrees with this result.
    """
    kw = case.kwargs
    opts = _options(kw)
    s = opts.pop("softcap", None)
    x, y = shifted(case)
    yr = np.asarray(y).reshape(-1)
    z = np.asarray(z, np.float64)
    if s is not None:
        with np.errstate(all="ignore"):
            u = np.where(np.isneginf(z), -np.inf, s * np.tanh(z / s))
            d = 1.0 / np.cosh(z / s) ** 2 if softcap_derivative is None \
                else np.asarray(softcap_derivative(z, s), np.float64)
        d = np.where(np.isneginf(z), 0.0, d)
    else:
        u, d = z, 1.0
    value, G = softmax_cross_entropy_value_and_grad(u, yr, **opts)
    G = np.asarray(G, np.float64) * d
    go = kw.get("grad_output")
    if go is not None:
        G = G * (_f64(go).reshape(-1)[:, None] if np.ndim(go) else float(go))
    value = np.asarray(value, np.float64)
    if opts.get("reduction", "mean") == "none":
        value = value.reshape(np.shape(y))
    arrays = {"value": value}
    if case.linear is None:
        arrays["grad"] = G.reshape(case.x.shape)
        return Result(arrays)
    X = _f64(x).reshape(-1, x.shape[-1])
    W = _f64(kw[case.linear])
    dx = (G @ W).reshape(x.shape)
    if kw.get("shift"):
        full = np.zeros(case.x.shape)
        full[..., :-1, :] = dx
        dx = full
    arrays["grad input"] = dx
    arrays["grad weight"] = G.T @ X
    if kw.get("linear_bias") is not None:
        arrays["grad bias"] = G.sum(axis=0)
    return Result(arrays)


def explained_by(reference):
    """``applies`` of a low-precision mechanism (a :class:`~._core.Known` of kind
    ``precision``): the float16 deviation disappears when the exact result is computed with
    the mechanism, ``reference(case)`` (None: the mechanism does not apply to the case)."""
    def applies(case: Case, o) -> bool:
        if o.unit != "ratio" or o.framework is None or case.dtype != np.float16:
            return False
        try:
            ref = reference(case)
        except (ValueError, TypeError, KeyError):
            return False
        if ref is None:
            return False
        from ._core import compare_low_precision
        return compare_low_precision(o.framework, ref, o.baseline, case.dtype).ok
    return applies


def below_operand_rounding(fid: str, target: str, scope=(), mechanisms=()):
    """The catalogue entry (kind ``precision``) of float16 deviations that are smaller than
    one float16 rounding of the operands: the criterion's slack is ``1 eps * max|exact|``, and
    where every row is confident the exact output is far below its operands (``p - 1`` of a
    confident row, the soft-cap derivative of a large logit) -- the float16 composition may
    then land on it by rounding to 0 while a kernel that computes in float32 inside keeps a
    float32 rounding error of the operands.  The ratio is reported; no formula is wrong.
    ``mechanisms`` are further references (``reference(case) -> Result`` or None, e.g.
    :func:`double_rounding_reference`): an error is measured from the closest of them."""
    from ._core import Known

    def applies(case: Case, o) -> bool:
        if o.unit != "ratio" or o.framework is None or case.dtype != np.float16:
            return False
        scales = linear_scales(case)
        eps = float(np.finfo(np.float16).eps)
        refs = [o.reference]
        for mech in mechanisms:
            try:
                m = mech(case)
            except (ValueError, TypeError, KeyError):
                m = None
            if m is not None:
                refs.append(m)
        for k, ratio in o.errors.items():
            if ratio <= 1:
                continue
            a = np.asarray(o.framework.arrays.get(k), np.float64)
            best = np.inf
            for ref in refs:
                if k not in ref.arrays:
                    continue
                r = np.asarray(ref.arrays[k], np.float64)
                if a.shape != r.shape or not np.all(np.isfinite(a) == np.isfinite(r)):
                    continue
                fin = np.isfinite(r)
                best = min(best, float(np.max(np.abs(a[fin] - r[fin]), initial=0.0)))
            if not best <= eps * scales.get(k, scales.get("grad", 0.0)):
                return False
        return True

    return Known(fid, "precision",
                 "float16 deviations smaller than one float16 rounding of the operands, where the "
                 "exact output is far below them (confident rows, capped large logits): the "
                 "low-precision criterion fails because its slack is 1 eps * max|exact|, the "
                 "float16 composition happening to be closer by rounding to 0",
                 target, "", "Every deviating output's largest error is at most 1 float16 eps of "
                 "its operand scale (the eps scheme's operands)"
                 + (" -- measured from the exact result or from the catalogued mechanisms "
                    "(bias double rounding, the float32 soft-cap derivative), whichever is "
                    "closer" if mechanisms else "")
                 + "; the ratio is reported in the sweep.", applies=applies, scope=tuple(scope))


def double_rounding_reference(case: Case, softcap_derivative=None):
    """The exact result at the logits rounded twice, ``x @ W.T`` to the input dtype and
    again after ``+ bias`` (None without a bias)."""
    if case.linear is None or case.kwargs.get("linear_bias") is None:
        return None
    return exact_at(case, rounded_logits(case, bias_separately=True), softcap_derivative)


def float16_overflow(fid: str, target: str, scope=()):
    """The catalogue entry (kind ``precision``) of float16 deviations in overflow: every
    deviating output has exact entries beyond float16's range (65504), or the same-dtype
    composition itself overflows where the exact value is finite -- the products and partial
    sums of the gradient GEMMs overflow, and which infinities (or wrong finite values) an
    implementation returns depends on its order of operations."""
    from ._core import Known
    big = float(np.finfo(np.float16).max)

    def applies(case: Case, o) -> bool:
        if o.unit != "ratio" or o.framework is None or case.dtype != np.float16:
            return False
        for k, ratio in o.errors.items():
            if ratio <= 1:
                continue
            r = np.asarray(o.reference.arrays.get(k), np.float64)
            over = bool(np.any(np.isfinite(r) & (np.abs(r) > big)))
            b = None if o.baseline is None else o.baseline.arrays.get(k)
            if b is not None:
                b = np.asarray(b, np.float64)
                if b.shape == r.shape:
                    with np.errstate(over="ignore"):
                        rr = r.astype(np.float16)
                    over = over or bool(np.any(~np.isfinite(b) & np.isfinite(rr)))
            if not over:
                return False
        return True

    return Known(fid, "precision",
                 "float16 in overflow (logits ~1e4 with class weights ~1e3): exact gradient "
                 "entries beyond float16's range, or the float16 composition itself overflowing "
                 "where the exact value is finite; the implementation's infinities and "
                 "overflowed partial sums differ from the rounded exact values (an infinity "
                 "of the wrong sign included)", target, "",
                 "Every deviating output is in that regime; the ratio is reported in the sweep.",
                 applies=applies, scope=tuple(scope))


def rounded_logits(case: Case, bias_separately=False) -> np.ndarray:
    """The logits as a float16 kernel holds them: ``x @ W.T (+ b)`` rounded once to the input
    dtype (as ``F.linear``), or, with ``bias_separately``, ``x @ W.T`` rounded and then
    ``+ b`` rounded again."""
    kw = case.kwargs
    dt = case.x.dtype
    b = kw.get("linear_bias")
    if case.linear is None:
        return logits_of(case)[0]
    if bias_separately and b is not None:
        z, _ = logits_of(case.replace(kwargs={k: v for k, v in kw.items() if k != "linear_bias"}))
        z = z.astype(dt).astype(np.float64)
        return (z + _f64(b)).astype(dt).astype(np.float64)
    return logits_of(case)[0].astype(dt).astype(np.float64)


def tanh_derivative_float32(z, s):
    """The soft-cap derivative as float32 kernels compute it: ``1 - t*t`` with
    ``t = tanh(z / s)`` in float32 (it cancels for ``|z / s| >~ 6``)."""
    t = np.tanh((np.asarray(z).astype(np.float32) / np.float32(s)).astype(np.float32))
    return (np.float32(1) - t * t).astype(np.float64)


def logits_of(case: Case) -> tuple:
    """The float64 logits of ``case`` and its targets (the rows that have one)."""
    x, y = shifted(case)
    x = _f64(x)
    if case.linear is None:
        return x.reshape(-1, x.shape[-1]), y.reshape(-1)
    z = x.reshape(-1, x.shape[-1]) @ _f64(case.kwargs[case.linear]).T
    b = case.kwargs.get("linear_bias")
    if b is not None:
        z = z + _f64(b)
    return z, y.reshape(-1)


def z_term(case: Case) -> np.ndarray:
    """The z-loss term alone, ``z_loss * lse(u)**2`` per kept row (``u`` the soft-capped
    logits), reduced as the loss: ``mean`` over the kept rows (unweighted)."""
    from scipy.special import logsumexp
    kw = case.kwargs
    z, y = logits_of(case)
    s = kw.get("softcap")
    if s is not None:
        with np.errstate(invalid="ignore"):
            z = np.where(np.isneginf(z), -np.inf, s * np.tanh(z / s))
    kept = np.ones(y.shape, bool) if kw.get("ignore_index") is None else y != kw["ignore_index"]
    rows = np.where(kept, float(kw.get("z_loss", 0.0)) * logsumexp(z, axis=-1) ** 2, 0.0)
    reduction = kw.get("reduction", "mean")
    if reduction == "none":
        return rows.reshape(shifted(case)[1].shape)
    if reduction == "sum":
        return np.float64(rows.sum())
    return np.float64(rows.sum() / kept.sum()) if kept.any() else np.float64(np.nan)


# --------------------------------------------------------------------------- operand scales

def linear_scales(case: Case) -> dict:
    r"""The operand scale of each output of a linear (or logits) case, for the eps comparison.

    With :math:`L` the logit scale (the largest :math:`\sum_h |x_h||w_h| + |b|`, at least
    1: a logit rounded in the working precision is off by about :math:`\varepsilon L`,
    which moves every :math:`p` by :math:`p\,\varepsilon L`), :math:`D` the exact gradient
    of the loss with respect to the logits and :math:`m_n` the size of the operands of
    row :math:`n`'s gradient (its largest entry at logits 0, where the true-class entry
    :math:`p_y - 1` has the size of its operands however small its value):

    * ``value``: :math:`w\,g\,L\,n\,(1 + zL)` (largest class weight and upstream gradient,
      at least 1; ``n`` the rows for ``sum``, ``z`` the z-loss);
    * ``grad`` (logits): :math:`\max(|D|, m)\,L`;
    * ``grad input``: :math:`\max_n (|D||W| + m_n \max_c |W_c|)\,L`;
    * ``grad weight``: :math:`\max (|D|^{\mathsf T}|X| + m^{\mathsf T}|X|)\,L`;
    * ``grad bias``: :math:`\max (\sum_n |D_n| + \sum_n m_n)\,L`; ``z_loss``: as ``value``.
    """
    kw = case.kwargs
    z, y = logits_of(case)
    x, _ = shifted(case)
    X = np.abs(_f64(x)).reshape(-1, x.shape[-1])
    if case.linear is not None:
        Wa = np.abs(_f64(kw[case.linear]))
        L = X @ Wa.T
        if kw.get("linear_bias") is not None:
            L = L + np.abs(_f64(kw["linear_bias"]))
    else:
        L = X
    L = L[np.isfinite(L)]
    Ls = max(1.0, float(L.max())) if L.size else 1.0
    w = kw.get("weight")
    wmax = 1.0 if w is None else max(1.0, float(np.max(_f64(w))))
    go = kw.get("grad_output")
    gmax = 1.0 if go is None else max(1.0, float(np.max(np.abs(_f64(go)))))
    reduction = kw.get("reduction", "mean")
    n = y.size if reduction == "sum" else 1
    zl = float(kw.get("z_loss", 0.0))
    out = {"value": wmax * gmax * Ls * n * (1 + zl * Ls)}
    out["z_loss"] = out["value"]
    opts = _options(kw)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            D = np.abs(np.nan_to_num(softmax_cross_entropy_grad(z, y, **opts)))
            m = np.max(np.abs(np.nan_to_num(
                softmax_cross_entropy_grad(np.zeros_like(z), y, **opts))), axis=1)
        except (ValueError, TypeError):
            return out
    # the one-hot operand of p - q (w_y (1 - eps) / denominator): at logits 0 a single class
    # has p = q and a zero gradient, yet its operands have that size
    kept = np.ones(y.shape, bool) if kw.get("ignore_index") is None else y != kw["ignore_index"]
    wy = np.ones(y.shape) if w is None else np.where(kept, _f64(w)[np.where(kept, y, 0)], 0.0)
    den = 1.0
    if reduction == "mean":
        den = float(np.sum(wy[kept])) if w is not None else float(kept.sum())
    q = np.where(kept, wy * (1 - float(kw.get("label_smoothing", 0.0))), 0.0) / (den or 1.0)
    m = np.maximum(m, q)
    if go is not None and np.ndim(go):
        gr = np.abs(_f64(go)).reshape(-1)
        D, m = D * gr[:, None], m * gr
    elif go is not None:
        D, m = D * abs(float(go)), m * abs(float(go))
    out["grad"] = max(float(D.max(initial=0.0)), float(m.max(initial=0.0))) * Ls
    if case.linear is not None:
        out["grad input"] = float(((D @ Wa) + m[:, None] * Wa.max(axis=0)).max(initial=0.0)) * Ls
        out["grad weight"] = float(((D.T @ X) + (m @ X)[None, :]).max(initial=0.0)) * Ls
        out["grad bias"] = float((D.sum(axis=0) + m.sum()).max(initial=0.0)) * Ls
    return out


# --------------------------------------------------------------------------- the baseline

def composition(case: Case) -> Result:
    """The same computation composed of plain PyTorch operations in the input's dtype.

    ``F.linear`` (linear cases), soft-cap ``s * tanh(u / s)``, ``F.cross_entropy`` (with
    the class weights, ``ignore_index``, label smoothing and the reduction), the z-loss
    term ``z * logsumexp(u)**2`` per kept row (``mean`` over the kept rows), and the
    gradients by autograd with the upstream gradient ``grad_output`` -- every operation
    in the input's dtype, as a model in that dtype would compute it.
    """
    import torch
    import torch.nn.functional as F
    kw = case.kwargs
    X = torch.tensor(np.array(case.x, copy=True), requires_grad=True)
    W = b = None
    if case.linear is not None:
        W = torch.tensor(np.array(kw[case.linear], copy=True), requires_grad=True)
        if kw.get("linear_bias") is not None:
            b = torch.tensor(np.array(kw["linear_bias"], copy=True), requires_grad=True)
    y = torch.as_tensor(np.asarray(case.targets, np.int64))
    u = F.linear(X, W, b) if W is not None else X
    if kw.get("shift"):
        u, y = u[..., :-1, :], y[..., 1:]
    u = u.reshape(-1, u.shape[-1])
    batch = y.shape
    y = y.reshape(-1)
    s = kw.get("softcap")
    if s is not None:
        u = s * torch.tanh(u / s)
    cw = kw.get("weight")
    ii = kw.get("ignore_index")
    reduction = kw.get("reduction", "mean")
    loss = F.cross_entropy(u, y, weight=None if cw is None else torch.tensor(np.array(cw)),
                           ignore_index=-100 if ii is None else int(ii),
                           label_smoothing=float(kw.get("label_smoothing", 0.0)),
                           reduction=reduction)
    zl = float(kw.get("z_loss", 0.0))
    zterm = None
    if zl:
        kept = (y != (-100 if ii is None else int(ii))).to(u.dtype)
        rows = zl * torch.logsumexp(u, dim=-1) ** 2 * kept
        if reduction == "none":
            zterm = rows
        elif reduction == "sum":
            zterm = rows.sum()
        else:
            zterm = rows.sum() / kept.sum()
        loss = loss + zterm
    if reduction == "none":
        loss = loss.reshape(batch)
    go = kw.get("grad_output")
    g = torch.ones_like(loss) if go is None else \
        torch.as_tensor(np.asarray(go), dtype=loss.dtype).reshape(loss.shape)
    value = loss.detach().numpy().copy()
    loss.backward(g)
    arrays = {"value": value}
    if kw.get("return_z_loss"):
        z = np.zeros(value.shape, value.dtype) if zterm is None else zterm.detach().numpy()
        arrays["z_loss"] = z.reshape(value.shape).copy()
    if W is None:
        arrays["grad"] = X.grad.numpy().copy()
    else:
        arrays["grad input"] = X.grad.numpy().copy()
        arrays["grad weight"] = W.grad.numpy().copy()
        if b is not None:
            arrays["grad bias"] = b.grad.numpy().copy()
    return Result(arrays)


# --------------------------------------------------------------------------- helpers

def upstream(loss, go):
    """The upstream gradient tensor for ``loss.backward``: ``grad_output`` or ones."""
    import torch
    if go is None:
        return torch.ones_like(loss)
    return torch.as_tensor(np.asarray(go), dtype=loss.dtype).reshape(loss.shape)


def tensor(a, requires_grad=False):
    """A fresh tensor (the caller's array is never shared with the framework)."""
    import torch
    t = torch.tensor(np.array(a, copy=True))
    return t.requires_grad_(True) if requires_grad else t


def numpy(t):
    return None if t is None else t.detach().cpu().numpy().copy()


def fmt(a) -> str:
    return fmt_array(np.asarray(a))
