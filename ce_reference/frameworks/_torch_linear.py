"""PyTorch's ``F.linear_cross_entropy`` (new in 2.13): the reference path and the chunked path.

``torch.nn.functional.linear_cross_entropy(input, linear_weight, target, *,
linear_bias, weight, reduction, ignore_index, label_smoothing, options)``:
``options=None`` is its reference path (``linear`` then ``cross_entropy``);
``options=torch.nn.LinearCrossEntropyOptions(batch_chunk_size=...,
chunking_method=..., acc_policy=...)`` its chunked path, which processes the
rows in chunks and never holds the whole logits.  The chunked path takes
``reduction`` mean / sum / none, int64 targets and no label smoothing; other
configurations fall back to the reference path with a warning.  Values and
gradients come from PyTorch (``loss.backward(grad_output)``).

The reference is the exact float64 result of
:func:`ce_reference.linear_cross_entropy` (PyTorch's conventions:
``ignore_index`` -100 for class indices, class weights in the mean's
denominator, smoothing ``eps / V``); float16 is judged by the low-precision
criterion against the same-dtype composition ``F.linear`` +
``F.cross_entropy`` (:func:`._kernels.composition`).
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np

from ..cases import Case, regions
from . import _kernels as K
from ._core import Known, Result, Target

NAME = "torch-linear"
REF = "F.linear_cross_entropy"
CHUNKED = "F.linear_cross_entropy chunked"
#: The warnings of the last call (the chunked path's fallback warns).
LAST_WARNINGS: list = []


def load() -> str:
    """Import PyTorch; its version (ImportError when missing or without the function)."""
    K.require("torch")
    import torch
    if not hasattr(torch.nn.functional, "linear_cross_entropy"):
        raise ImportError(f"torch {torch.__version__} has no F.linear_cross_entropy (new in 2.13)")
    return torch.__version__


def run(case: Case) -> Result:
    """``F.linear_cross_entropy`` on ``case`` (``options``: None, a dict of
    ``LinearCrossEntropyOptions`` fields, absent = reference path)."""
    import torch
    import torch.nn.functional as F
    kw = case.kwargs
    X = K.tensor(case.x, requires_grad=True)
    W = K.tensor(kw["linear_weight"], requires_grad=True)
    b = None if kw.get("linear_bias") is None else K.tensor(kw["linear_bias"], True)
    y = torch.as_tensor(np.asarray(case.targets, np.int64))
    cw = None if kw.get("weight") is None else K.tensor(kw["weight"])
    options = kw.get("options")
    if isinstance(options, dict):
        options = torch.nn.LinearCrossEntropyOptions(**options)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        loss = F.linear_cross_entropy(X, W, y, linear_bias=b, weight=cw,
                                      reduction=kw.get("reduction", "mean"),
                                      ignore_index=kw.get("ignore_index"),
                                      label_smoothing=float(kw.get("label_smoothing", 0.0)),
                                      options=options)
        value = K.numpy(loss)
        loss.backward(K.upstream(loss, kw.get("grad_output")))
    LAST_WARNINGS[:] = [str(w.message) for w in rec]
    arrays = {"value": value, "grad input": K.numpy(X.grad), "grad weight": K.numpy(W.grad)}
    if b is not None:
        arrays["grad bias"] = K.numpy(b.grad)
    return Result(arrays)


R3 = ("mean", "sum", "none")
W, I, LS, B = ({"weight": "random"}, {"ignore_index": -100}, {"label_smoothing": 0.1},
               {"linear_bias": "random"})
#: The chunked path's options swept (LinearCrossEntropyOptions fields, torch 2.13).
CHUNK_OPTIONS = ({}, {"batch_chunk_size": 2, "chunking_method": None, "acc_policy": "accurate"},
                 {"chunking_method": "aspect_ratio:2", "acc_policy": "balanced"},
                 {"batch_chunk_size": 3, "chunking_method": None, "acc_policy": "compact"})


def _product(base, reductions=R3):
    return [dict(b, reduction=r) for b, r in itertools.product(base, reductions)]


def targets() -> list[Target]:
    lin = regions.linear(fixed=("options",))
    common = dict(dtypes=("float32", "float16"), baseline=K.composition)
    ref_sets = _product([{}, {**W, **I, **B}, {**LS, **W}]) + \
        [{"reduction": "none", "grad_output": "random"}]
    chunk_sets = [dict(b, reduction=r, options=op) for op in CHUNK_OPTIONS
                  for b in ({}, {**W, **I, **B}) for r in R3]
    chunk_sets += [{**LS, "reduction": "mean", "options": {}},
                   {"reduction": "none", "grad_output": "random", "options": CHUNK_OPTIONS[1]}]
    return [
        Target(REF, "exact linear cross-entropy (PyTorch's conventions)", run, K.exact_linear,
               lin, ref_sets, regions.LINEAR_REGIONS, K.linear_scales,
               quick_regions=("scale 3", "dominant right", "all ignored"),
               quick_option_sets=[dict(W, **I, **B, reduction="mean"),
                                  dict(LS, **W, reduction="sum")], **common),
        Target(CHUNKED, "as F.linear_cross_entropy", run, K.exact_linear, lin, chunk_sets,
               regions.LINEAR_REGIONS, K.linear_scales,
               quick_regions=("scale 3", "dominant right", "all ignored"),
               quick_option_sets=[dict(W, **I, **B, reduction="mean", options={}),
                                  dict(I, reduction="none", options=CHUNK_OPTIONS[3])],
               **common),
    ]


# --------------------------------------------------------------------------- catalogue

def _all_ignored_mean(case: Case, o) -> bool:
    kw = case.kwargs
    return (kw.get("reduction", "mean") == "mean" and "ignore_index" in kw
            and bool(np.all(case.targets == kw["ignore_index"])))


def _nan_gradients(case: Case, o) -> bool:
    """All-ignored mean: loss NaN (as the reference) and NaN gradients (reference: 0)."""
    if o.framework is None or not _all_ignored_mean(case, o):
        return False
    a = o.framework.arrays
    return bool(np.isnan(a["value"])) and all(
        np.all(np.isnan(a[k])) for k in a if k.startswith("grad"))


def _zero_weight_mean(case: Case, o) -> bool:
    kw = case.kwargs
    w = kw.get("weight")
    if w is None or kw.get("reduction", "mean") != "mean" or o.framework is None:
        return False
    y = np.asarray(case.targets).reshape(-1)
    kept = y[y != kw.get("ignore_index", -100)]
    return kept.size > 0 and float(np.sum(np.asarray(w, np.float64)[kept])) == 0.0 and \
        bool(np.isnan(o.framework.arrays["value"]))


def _overflow_where_finite(case: Case, o) -> bool:
    """float16: a gradient entry is non-finite where the exact gradient (rounded to float16)
    and the same-dtype composition are finite."""
    if case.dtype != np.float16 or o.framework is None or o.baseline is None:
        return False
    for k, a in o.framework.arrays.items():
        if not k.startswith("grad") or k not in o.reference.arrays or k not in o.baseline.arrays:
            continue
        a = np.asarray(a, np.float64)
        with np.errstate(over="ignore"):
            r = np.asarray(o.reference.arrays[k], np.float64).astype(np.float16)
        b = np.asarray(o.baseline.arrays[k], np.float64)
        if a.shape == r.shape == b.shape and np.any(~np.isfinite(a) & np.isfinite(r)
                                                     & np.isfinite(b)):
            return True
    return False


def _probe(x, y, **kw):
    return lambda: Case(x=np.asarray(x), targets=np.asarray(y), kwargs=dict(kw), region="probe")


def known() -> list[Known]:
    f32, f16 = np.float32, np.float16
    one = np.ones((2, 2), f32)
    return [
        Known("torch-chunked-all-ignored-nan-grad", "defect",
              "chunked path, mean over rows that are all ignored: the gradients are NaN "
              "(the reference path, like F.cross_entropy and the reference, gives a NaN loss "
              "and zero gradients)", CHUNKED, "no PyTorch issue found",
              "Every acc_policy, float32 and float16: the chunk gradients are scaled by "
              "1 / (number of kept rows) = 1/0 before the GEMMs.",
              applies=_nan_gradients,
              probe=_probe(one, [-100, -100], linear_weight=np.ones((3, 2), f32),
                           ignore_index=-100, options={})),
        Known("torch-chunked-f16-bias-double-rounding", "precision",
              "chunked path in float16 with a bias: the logits are rounded to float16 twice, "
              "after input @ weight.T and again after + bias (the reference path's F.linear "
              "rounds once), so the loss and gradients can be less accurate than the float16 "
              "composition", CHUNKED, "no PyTorch issue found",
              "Checked: the framework agrees with the exact result computed from the "
              "twice-rounded logits (on the probe exactly: 1762 where single rounding gives "
              "1764 and the exact loss is 1764.08).",
              applies=K.explained_by(K.double_rounding_reference),
              probe=_probe(np.array([[-1.0, -0.851]], f16), [1],
                           linear_weight=np.array([[-2238.0, -2072.0], [-2238.0, 1.0]], f16),
                           linear_bias=np.array([0.8, 1.0], f16), reduction="sum",
                           options=dict(CHUNK_OPTIONS[1])),
              check=lambda c, o: (not o.ok) and K.explained_by(K.double_rounding_reference)(c, o)),
        K.below_operand_rounding("torch-linear-f16-below-operand-rounding", REF,
                                 scope=(CHUNKED,), mechanisms=(K.double_rounding_reference,)),
        Known("torch-chunked-f16-target-term-overflow", "defect",
              "chunked path in float16 with class weights: the input gradient is -inf where "
              "the exact gradient is finite (on the probe 0: one class, so the gradient "
              "vanishes identically) and the reference path is finite: the target term "
              "w_y * W_y of p w W - w_y W_y is formed in float16 and overflows (1000 * 1884 > "
              "65504) before it cancels; below the overflow the same subtraction leaves the "
              "float16 rounding of w_y W_y (0.244 for w_y = 0.8853, W = -2268, exact 0)", CHUNKED,
              "no PyTorch issue found",
              "Every acc_policy (accurate, balanced, compact).  The reference path (options=None) "
              "returns 0.",
              applies=_overflow_where_finite,
              probe=_probe(np.array([[0.0]], f16), [0], linear_weight=np.array([[1884.0]], f16),
                           weight=np.array([1000.0], f16), reduction="sum",
                           options=dict(CHUNK_OPTIONS[1]))),
        K.float16_overflow("torch-linear-f16-overflow", REF, scope=(CHUNKED,)),
        Known("torch-zero-weight-mean", "convention",
              "weighted mean whose kept rows all have class weight 0 (0/0): NaN loss and NaN "
              "gradients; the reference gives NaN with zero gradients", REF,
              "as F.cross_entropy (pytorch/pytorch#64572 for the all-ignored case)",
              "The mean is undefined; only the reference's rule (a NaN value never comes "
              "with a non-zero gradient) differs.",
              applies=_zero_weight_mean,
              probe=_probe(np.array([[1.0]], f32), [0], linear_weight=np.array([[1.0], [0.0]], f32),
                           weight=np.array([0.0, 1.0], f32)),
              check=lambda c, o: o.framework is not None and bool(
                  np.isnan(o.framework.arrays["value"])), exact=K.exact_linear, scope=(CHUNKED,)),
    ]


def about() -> dict:
    return {
        "versions": {k: v for k, v in K.versions().items() if k in ("torch", "numpy")},
        "patches": [],
        "exercised": [
            "F.linear_cross_entropy with options=None (the reference path) and with "
            "LinearCrossEntropyOptions: defaults (acc_policy/chunking_method 'auto'), "
            "batch_chunk_size 2 / 'accurate', 'aspect_ratio:2' / 'balanced', "
            "batch_chunk_size 3 / 'compact'",
            "options: class weights (with zero entries), ignore_index -100, linear_bias, "
            "label_smoothing 0.1 (the chunked path falls back to the reference path with a "
            "warning: checked), reduction none/sum/mean, a per-row upstream gradient for none",
            "V = 37, 256, 300; H = 8; 4 rows; float32 (eps of the operands) and float16 "
            "(the low-precision criterion)",
        ],
        "not_exercised": [
            {"what": "bfloat16", "why": "the low-precision criterion is run in float16 only "
                                        "(the Triton audits cannot run bfloat16; one "
                                        "low-precision dtype for all three audits)"},
            {"what": "probability targets, K-dimensional inputs", "why": "the chunked path "
             "takes class indices of a (N, H) input only; the reference path is "
             "F.cross_entropy, audited by the torch audit"},
        ],
    }
