"""Liger Kernel adapter: its Triton cross-entropy and fused linear cross-entropy, on the CPU.

Audited (liger-kernel 0.8.5): ``liger_cross_entropy`` and
``LigerCrossEntropyLoss`` (logits; the module goes through Liger's backend
dispatch, which on a CPU picks the Triton implementation after failing to
import the CuTe-DSL and Ascend ones), ``liger_fused_linear_cross_entropy``
and ``LigerFusedLinearCrossEntropyLoss`` (input, weight, bias): every
cross-entropy option of the linear cross-entropy audits -- ``ignore_index``, ``label_smoothing``, ``lse_square_scale``
(the z-loss), ``softcap``, class weights (``weight`` / ``ce_weight``),
``reduction`` none / sum / mean, ``return_z_loss`` -- in float32 and float16.

The Triton kernels run under Triton's interpreter with the two documented
patches of :mod:`._triton_interp` (enabled by :func:`load`, before triton
is imported).  Values and gradients come from Liger itself: the loss from its
forward, the gradients from ``loss.backward(grad_output)`` through its own
autograd ``Function`` (Liger computes them in the forward pass and scales
them in the backward); ``grad_output`` is 1 unless the case gives one per row
(``reduction="none"``, Liger #1298).  Liger writes the logits gradient into
the logits buffer it is given: the runners hand it a fresh tensor.

The reference is the exact float64 result of the library
(:func:`ce_reference.linear_cross_entropy`, or softmax cross-entropy for
logits; :mod:`._kernels`), which follows PyTorch's conventions as Liger does:
class weights in the mean's denominator, smoothing ``eps / V`` weighted per
class, the z-loss over the kept rows unweighted (Liger's
``# TODO: Implement weighted z_loss``).  Float16 is judged by the
low-precision criterion against the same-dtype PyTorch composition.
"""

from __future__ import annotations

import itertools

import numpy as np

from ..cases import Case, regions
from . import _kernels as K
from ._core import Known, Result, Target

NAME = "liger"
CE = "liger_cross_entropy"
CE_MODULE = "liger_cross_entropy (LigerCrossEntropyLoss)"
FLCE = "liger_fused_linear_cross_entropy"
FLCE_MODULE = "liger_fused_linear_cross_entropy (LigerFusedLinearCrossEntropyLoss)"


def load() -> str:
    """Enable the interpreter, import Liger; return its version (ImportError when missing)."""
    v = K.require("torch", "triton", "liger-kernel")
    from . import _triton_interp
    _triton_interp.enable()
    import liger_kernel.transformers.functional  # noqa: F401
    return f"{v['liger-kernel']} (triton {v['triton']} interpreter, torch {v['torch']})"


# --------------------------------------------------------------------------- runners

def _args(kw) -> dict:
    return dict(ignore_index=kw.get("ignore_index", -100),
                lse_square_scale=float(kw.get("z_loss", 0.0)),
                label_smoothing=float(kw.get("label_smoothing", 0.0)),
                reduction=kw.get("reduction", "mean"), softcap=kw.get("softcap"),
                return_z_loss=bool(kw.get("return_z_loss", False)))


def _finish(out, args, go, named) -> Result:
    """Liger's loss (and z-loss), then its gradients by ``backward(grad_output)``."""
    loss = out.loss if args["return_z_loss"] else out
    arrays = {"value": K.numpy(loss)}                 # before backward: buffers are reused
    if args["return_z_loss"]:
        arrays["z_loss"] = K.numpy(out.z_loss)
    loss.backward(K.upstream(loss, go))
    for name, t in named.items():
        if t is not None:
            arrays[name] = K.numpy(t.grad)
    return Result(arrays)


def run_cross_entropy(case: Case, form: str = "functional") -> Result:
    """Liger's cross-entropy on the logits ``case.x`` (N, V)."""
    import torch
    from liger_kernel.transformers.cross_entropy import LigerCrossEntropyLoss
    from liger_kernel.transformers.functional import liger_cross_entropy
    kw = case.kwargs
    x = K.tensor(case.x, requires_grad=True)
    y = torch.as_tensor(np.asarray(case.targets, np.int64))
    w = None if kw.get("weight") is None else K.tensor(kw["weight"])
    args = _args(kw)
    with np.errstate(all="ignore"):     # the interpreter evaluates masked lanes too
        if form == "functional":
            out = liger_cross_entropy(x, y, weight=w, **args)
        else:
            out = LigerCrossEntropyLoss(weight=w, **args)(x, y)
        return _finish(out, args, kw.get("grad_output"), {"grad": x})


def run_fused_linear(case: Case, form: str = "functional") -> Result:
    """Liger's fused linear cross-entropy: ``input`` ``case.x``, ``weight`` and ``bias`` from
    ``linear_weight`` / ``linear_bias``, ``ce_weight`` the class weights."""
    import torch
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
    from liger_kernel.transformers.fused_linear_cross_entropy import \
        LigerFusedLinearCrossEntropyLoss
    kw = case.kwargs
    X = K.tensor(case.x, requires_grad=True)
    W = K.tensor(kw["linear_weight"], requires_grad=True)
    b = None if kw.get("linear_bias") is None else K.tensor(kw["linear_bias"], True)
    y = torch.as_tensor(np.asarray(case.targets, np.int64))
    cw = None if kw.get("weight") is None else K.tensor(kw["weight"])
    args = _args(kw)
    with np.errstate(all="ignore"):
        if form == "functional":
            out = liger_fused_linear_cross_entropy(X, W, y, bias=b, ce_weight=cw, **args)
        else:
            out = LigerFusedLinearCrossEntropyLoss(ce_weight=cw, **args)(W, X, y, b)
        return _finish(out, args, kw.get("grad_output"),
                       {"grad input": X, "grad weight": W, "grad bias": b})


# --------------------------------------------------------------------------- targets

R3 = ("mean", "sum", "none")
W, I, LS, Z, SC = ({"weight": "random"}, {"ignore_index": -100}, {"label_smoothing": 0.1},
                   {"z_loss": 1e-2}, {"softcap": 30.0})
ALL = {**W, **I, **LS, **Z, **SC}


def _product(base, reductions=R3):
    return [dict(b, reduction=r) for b, r in itertools.product(base, reductions)]


#: The logits regions of the cross-entropy targets (C = 5, and 200 in "many classes":
#: Liger's block is the next power of two of C, so padded lanes are always exercised).
CE_REGIONS = regions.LOGIT_REGIONS
LINEAR_REGIONS = regions.LINEAR_REGIONS


def targets() -> list[Target]:
    lin = regions.linear()
    ce_gen = regions.categorical("logits", "index")
    lin_sets = (_product([{}, W, I, LS, Z, SC, ALL, {"linear_bias": "random"}])
                + [{"reduction": "none", "grad_output": "random"},           # Liger #1298
                   {**Z, "return_z_loss": True, "reduction": "mean"},
                   {**Z, **I, "return_z_loss": True, "reduction": "none"}])
    ce_sets = (_product([{}, W, I, LS, Z, SC, ALL])
               + [{**Z, "return_z_loss": True, "reduction": "sum"}])
    mod_sets = _product([{}]) + [dict(ALL, reduction="mean")]
    common = dict(dtypes=("float32", "float16"), baseline=K.composition)
    return [
        Target(CE, "exact softmax cross-entropy (PyTorch's conventions; z-loss unweighted "
                   "over the kept rows)",
               lambda c: run_cross_entropy(c), K.exact_logits, ce_gen, ce_sets, CE_REGIONS,
               K.linear_scales, quick_regions=("scale 3", "dominant right", "many classes",
                                               "all ignored", "-inf, zero target"),
               quick_option_sets=[dict(ALL, reduction="mean"), dict(SC, reduction="sum")],
               **common),
        Target(CE_MODULE, "as liger_cross_entropy", lambda c: run_cross_entropy(c, "module"),
               K.exact_logits, ce_gen, mod_sets, CE_REGIONS[::2] + ("all ignored",),
               K.linear_scales, quick_regions=("scale 1",), quick_option_sets=mod_sets[-1:],
               **common),
        Target(FLCE, "exact linear cross-entropy (ce_reference.linear_cross_entropy)",
               lambda c: run_fused_linear(c), K.exact_linear, lin, lin_sets, LINEAR_REGIONS,
               K.linear_scales, quick_regions=("scale 3", "dominant right", "many classes",
                                               "all ignored"),
               quick_option_sets=[dict(ALL, linear_bias="random", reduction="mean"),
                                  {"reduction": "none", "grad_output": "random"}],
               **common),
        Target(FLCE_MODULE, "as liger_fused_linear_cross_entropy",
               lambda c: run_fused_linear(c, "module"), K.exact_linear, lin,
               _product([{}]) + [dict(ALL, linear_bias="random", reduction="mean")],
               LINEAR_REGIONS[::2] + ("all ignored",), K.linear_scales,
               quick_regions=("scale 1",),
               quick_option_sets=[dict(ALL, linear_bias="random", reduction="mean")], **common),
    ]


# --------------------------------------------------------------------------- catalogue

def _all_ignored_mean(case: Case, o) -> bool:
    kw = case.kwargs
    return (kw.get("reduction", "mean") == "mean" and "ignore_index" in kw
            and bool(np.all(case.targets == kw["ignore_index"])))


def _zero_and_zero(case, o) -> bool:
    """Liger's all-ignored mean: loss 0 and every gradient 0."""
    if o.framework is None:
        return False
    return all(np.all(np.asarray(v, np.float64) == 0) for v in o.framework.arrays.values())



def _zero_weight_mean(case: Case, o) -> bool:
    """A weighted mean whose kept rows all have class weight 0 (the mean is 0/0)."""
    kw = case.kwargs
    w = kw.get("weight")
    if w is None or kw.get("reduction", "mean") != "mean":
        return False
    y = np.asarray(K.shifted(case)[1]).reshape(-1)
    kept = y[y != kw.get("ignore_index", -100)]
    return kept.size > 0 and float(np.sum(np.asarray(w, np.float64)[kept])) == 0.0 and \
        o.framework is not None and not all(
            np.all(np.isfinite(np.asarray(v, np.float64))) for v in o.framework.arrays.values())


def _softcap_neginf(case: Case, o) -> bool:
    return case.kwargs.get("softcap") is not None and bool(np.any(np.isneginf(case.x)))


def _softcap_limit_reference(case: Case) -> Result:
    """Liger's convention: a -inf logit is capped to -softcap (the limit of s tanh(x/s))."""
    x = np.where(np.isneginf(case.x), -np.finfo(np.float64).max, case.x.astype(np.float64))
    return K.exact_logits(case.replace(x=x))


def _follows_softcap_limit(case, o):
    from ._core import compare
    if o.framework is None:
        return False
    return compare(o.framework, _softcap_limit_reference(case), case.dtype,
                   K.linear_scales(case)).ok


def _liger_logits(case: Case) -> np.ndarray:
    """The logits as Liger forms them: ``x @ W.T`` rounded to the input dtype (as F.linear),
    then ``+ bias`` rounded again (F.linear rounds once)."""
    return K.rounded_logits(case, bias_separately=True)


_tanh_derivative_float32 = K.tanh_derivative_float32
_explained_by = K.explained_by


def _double_rounding_reference(case: Case):
    if case.linear is None or case.kwargs.get("linear_bias") is None:
        return None
    deriv = _liger_tanh_derivative(case) if case.kwargs.get("softcap") is not None else None
    return K.exact_at(case, _liger_logits(case), deriv)


def _liger_tanh_derivative(case: Case):
    """Liger's soft-cap derivative: ``1 - t*t`` in float32 with ``t = tanh(x / s)``, except on
    the true class, where ``t = (s * tanh(x / s)) / s`` is recovered from the capped logit
    (cross_entropy.py: ``t_y = ori_X_y / softcap``)."""
    y = np.asarray(K.shifted(case)[1]).reshape(-1)

    def deriv(z, s):
        d = _tanh_derivative_float32(z, s)
        f32 = np.float32
        rows = np.flatnonzero((y >= 0) & (y < z.shape[1]))
        zy = z[rows, y[rows]].astype(f32)
        ty = (f32(s) * np.tanh(zy / f32(s))).astype(f32) / f32(s)
        d[rows, y[rows]] = (f32(1) - ty * ty).astype(np.float64)
        return d
    return deriv


def _tanh_derivative_reference(case: Case):
    if case.kwargs.get("softcap") is None:
        return None
    z = _liger_logits(case) if case.linear is not None else K.logits_of(case)[0]
    return K.exact_at(case, z, _liger_tanh_derivative(case))


def _probe(x, y, **kw):
    return lambda: Case(x=np.asarray(x), targets=np.asarray(y), kwargs=dict(kw), region="probe")


def known() -> list[Known]:
    f32, f16 = np.float32, np.float16
    X = np.array([[1.0, 0.0], [0.0, 1.0]], f32)
    Wl = np.array([[1.0, 0.0], [0.0, 2.0], [0.5, 0.5]], f32)
    x1329 = np.zeros((1, 8), f16)
    x1329[0, 0] = 9.0
    return [
        Known("liger-all-ignored-zero", "convention",
              "mean over a batch whose rows are all ignored is 0 with gradient 0 (PyTorch and "
              "the reference: NaN, gradient 0)", CE,
              "PyTorch #64572 (NaN, deliberate); Keras also gives 0",
              "The kernels skip ignored rows and divide by max(count, 1): no 0/0.",
              applies=_all_ignored_mean,
              probe=_probe(np.zeros((2, 3), f32), [-100, -100], ignore_index=-100),
              check=_zero_and_zero, exact=K.exact_logits, scope=(FLCE,)),
        Known("liger-softcap-neginf", "convention",
              "softcap: a -inf logit (a masked class) becomes -softcap, the limit of "
              "s*tanh(x/s), and so gets probability; the reference keeps it masked", CE, "",
              "Liger caps every logit; tanh(-inf) = -1.  Only logits (not the fused linear "
              "path, whose logits are finite) can be -inf.",
              applies=_softcap_neginf,
              probe=_probe(np.array([[0.0, -np.inf]], f32), [0], softcap=1.0, reduction="sum"),
              check=_follows_softcap_limit, exact=K.exact_logits),
        Known("liger-zero-weight-mean", "convention",
              "weighted mean whose kept rows all have class weight 0 (0/0): Liger returns a "
              "non-finite loss (inf with label smoothing, NaN without) and NaN gradients; "
              "PyTorch NaN and NaN gradients; the reference NaN with zero gradients", CE, "",
              "The mean is undefined; only the reference's rule (a NaN value never comes "
              "with a non-zero gradient) differs.",
              applies=_zero_weight_mean,
              probe=_probe(np.zeros((1, 2), f32), [0], weight=np.array([0.0, 1.0], f32),
                           label_smoothing=0.1),
              check=lambda c, o: o.framework is not None and not np.isfinite(
                  float(o.framework.arrays["value"])),
              exact=K.exact_logits, scope=(FLCE,)),
        Known("liger-f16-bias-double-rounding", "precision",
              "fused linear cross-entropy in float16 with a bias: the logits are rounded to "
              "float16 twice, after x @ W.T and again after + bias (F.linear rounds once), "
              "so the loss and gradients can be less accurate than the float16 composition",
              FLCE, "no upstream issue found",
              "fused_linear_cross_entropy.py: logits_chunk = _input_chunk @ weight.t(); "
              "logits_chunk = logits_chunk + bias.  Checked: the framework agrees with the "
              "exact result computed from the twice-rounded logits (on the probe to 4e-6, the "
              "composition's single rounding gives 0.8613).",
              applies=_explained_by(_double_rounding_reference),
              probe=_probe(np.array([[0.897]], f16), [1],
                           linear_weight=np.array([[101.0], [101.0]], f16),
                           linear_bias=np.array([-0.1599, -0.4531], f16), reduction="sum"),
              check=lambda c, o: (not o.ok) and _explained_by(_double_rounding_reference)(c, o),
              scope=(FLCE_MODULE,)),
        Known("liger-softcap-derivative-float32", "precision",
              "softcap: the derivative sech^2(x/s) is computed as 1 - tanh^2(x/s) in float32, "
              "which cancels for |x/s| >~ 6 (multiples of 1.2e-7, then 0 beyond |x/s| ~ 8.7) "
              "where the exact value is ~4 exp(-2|x|/s): in float16 the gradients of capped "
              "logits can be less accurate than the composition's", FLCE, "",
              "cross_entropy.py: X_block = X_block * (1 - intermediate * intermediate).  "
              "Checked: the framework agrees with the exact result computed with that "
              "derivative (and Liger's logits).  In float32 the errors stay within 256 eps of "
              "the operands.",
              applies=_explained_by(_tanh_derivative_reference),
              probe=_probe(np.array([[-1.0, 2.0]], f16), [0],
                           linear_weight=np.array([[53.0, 176.0]], f16), z_loss=0.01,
                           softcap=30.0, reduction="sum"),
              check=lambda c, o: (not o.ok) and _explained_by(_tanh_derivative_reference)(c, o),
              scope=(CE,)),
        K.below_operand_rounding("liger-f16-below-operand-rounding", FLCE, scope=(CE,),
                                 mechanisms=(_double_rounding_reference,
                                             _tanh_derivative_reference)),
        K.float16_overflow("liger-f16-overflow", FLCE, scope=(CE,)),
        Known("liger-1298", "defect",
              "fused linear cross-entropy, reduction='none': the weight gradient used "
              "grad_output[0] for every row", FLCE, "linkedin/Liger-Kernel#1298",
              "Checked with a per-row upstream gradient [1, 3] (and in the sweep's "
              "reduction='none', grad_output option set).",
              probe=_probe(X, [0, 1], linear_weight=Wl, reduction="none",
                           grad_output=np.array([1.0, 3.0], f32))),
        Known("liger-243", "defect",
              "LigerFusedLinearCrossEntropyLoss ignored label_smoothing", FLCE_MODULE,
              "linkedin/Liger-Kernel#243", "",
              probe=_probe(X, [0, 1], linear_weight=Wl, label_smoothing=0.3)),
        Known("liger-1329-float16", "defect",
              "the true-class gradient of a confident row (p >= 0.99) 20-100% off in bfloat16; "
              "bfloat16 cannot be run under the interpreter, so its float16 analogue is "
              "probed (p_y = 0.99914) by the low-precision criterion", CE,
              "linkedin/Liger-Kernel#1329",
              "Liger folds -(1 - eps) into the true-class gradient in float32 before rounding "
              "to the input dtype.",
              probe=_probe(x1329, [0], reduction="sum")),
    ]


# --------------------------------------------------------------------------- what the report says

def about() -> dict:
    from . import _triton_interp
    return {
        "versions": K.versions(),
        "patches": [{"what": w, "why": y} for w, y in _triton_interp.PATCHES],
        "exercised": [
            "liger_cross_entropy and LigerCrossEntropyLoss on logits (C = 5, 3 and 200: "
            "Liger's block is the next power of two of C, so padded lanes are exercised), "
            "every logits region (scales 1-30, dominant, all equal, +-1e4, near overflow, "
            "-inf logits, all ignored)",
            "liger_fused_linear_cross_entropy and LigerFusedLinearCrossEntropyLoss (V = 37, "
            "256 and 300; H = 8; 4 rows), with and without bias",
            "options: ignore_index, label_smoothing 0.1, lse_square_scale (z-loss) 1e-2, "
            "softcap 30, class weights (ce_weight) with zero entries, reduction none/sum/mean, "
            "a per-row upstream gradient for none (#1298), return_z_loss",
            "float32 (eps of the operands) and float16 (the low-precision criterion)",
        ],
        "not_exercised": [
            {"what": "bfloat16", "why": dict(_triton_interp.UNPATCHED)["bfloat16"]},
            {"what": "accum_dtype, use_token_scaling, return_token_accuracy, "
                     "return_predicted_tokens", "why": "not cross-entropy options"},
            {"what": "the CuTe-DSL and Ascend backends", "why": "need their GPU / NPU"},
            {"what": "large shapes", "why": "the interpreter runs one program instance "
                                            "after another in Python"},
        ],
    }
