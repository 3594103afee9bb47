"""cut-cross-entropy adapter: Apple's ``linear_cross_entropy``, both implementations, on the CPU.

``cut_cross_entropy.linear_cross_entropy(e, c, targets, ignore_index=-100,
softcap=None, reduction="mean", shift=False, filter_eps="high", impl=...)``
(cut-cross-entropy 25.1.1, the current PyPI release):

* ``impl="cce"``: the Triton kernels (log-sum-exp forward over vocabulary
  blocks of ``BLOCK_V = 128``, indexed dot, fused backward with gradient
  filtering) under Triton's interpreter with the documented patches of
  :mod:`._triton_interp`.  Its backward asserts ``e.dtype in (float16,
  bfloat16)`` ("Backwards requires embeddings to be bf16 or fp16"): float32
  runs forward only (the loss is audited, the gradients are not exercised);
  float16 runs forward and backward.  Each call interprets 128 x 128 (and
  256 x 128) tiles in NumPy, so the sizes are small and few.
* ``impl="torch_compile"``: ``e @ c.T``, soft-cap, ``F.cross_entropy`` under
  ``torch.compile`` (inductor with the system C++ compiler), as shipped;
  forward and backward in every dtype.  It recompiles for every new shape
  and option, so it runs on one shape.

Options: ``ignore_index``, ``softcap``, ``reduction`` (none / sum / mean),
``shift`` (position ``t`` predicts ``targets[..., t + 1]``), ``filter_eps``
(``impl="cce"``; None turns the gradient filter off), V = 37 (one padded
vocabulary block), 256 (two full blocks) and 300 (three, the last padded).
25.1.1 has no ``bias`` argument (so cut-cross-entropy #52 cannot be
exercised) and no label smoothing, z-loss or class weights.

The reference is the exact float64 result of
:func:`ce_reference.linear_cross_entropy` (``mean`` over the kept rows, as
cut-cross-entropy defines it); float16 is judged by the low-precision
criterion against the same-dtype PyTorch composition.
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np

from ..cases import Case, regions
from . import _kernels as K
from ._core import Known, Result, Target

NAME = "cce"
CCE = "linear_cross_entropy impl='cce'"
COMPILE = "linear_cross_entropy impl='torch_compile'"
#: cut-cross-entropy's vocabulary block in the log-sum-exp forward (25.1.1, no autotune).
BLOCK_V = 128
#: torch._dynamo's recompile limit while auditing impl='torch_compile' (default 8): the audit
#: calls the compiled function with more shapes, dtypes and options than a training run, and
#: each recompiles; with the default limit the ninth fails with FailOnRecompileLimitHit
#: (fullgraph=True), a fact of the audit's many calls, not of the implementation.
RECOMPILE_LIMIT = 64


def load() -> str:
    """Enable the interpreter, import cut-cross-entropy; its version (ImportError if missing)."""
    v = K.require("torch", "triton", "cut-cross-entropy")
    from . import _triton_interp
    _triton_interp.enable()
    import cut_cross_entropy  # noqa: F401
    import torch._dynamo.config as dynamo
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo, name):
            setattr(dynamo, name, max(getattr(dynamo, name), RECOMPILE_LIMIT))
    return (f"{v['cut-cross-entropy']} (impl='cce' under the triton {v['triton']} "
            f"interpreter; impl='torch_compile' with torch {v['torch']})")


def has_bias() -> bool:
    import inspect

    from cut_cross_entropy import linear_cross_entropy
    return "bias" in inspect.signature(linear_cross_entropy).parameters


def run(case: Case, impl: str) -> Result:
    """``linear_cross_entropy(e, c, targets, ...)`` on ``case``; with ``impl="cce"`` a float32
    input runs forward only (the package's backward refuses it)."""
    import torch
    from cut_cross_entropy import linear_cross_entropy
    kw = case.kwargs
    grads = not (impl == "cce" and case.x.dtype == np.float32)
    e = K.tensor(case.x, requires_grad=grads)
    c = K.tensor(kw["linear_weight"], requires_grad=grads)
    y = torch.as_tensor(np.asarray(case.targets, np.int64))
    args = dict(ignore_index=kw.get("ignore_index", -100), softcap=kw.get("softcap"),
                reduction=kw.get("reduction", "mean"), shift=bool(kw.get("shift", False)),
                impl=impl)
    if impl == "cce" and "filter_eps" in kw:
        args["filter_eps"] = kw["filter_eps"]
    if kw.get("linear_bias") is not None:
        if not has_bias():
            raise NotImplementedError("this cut-cross-entropy has no bias argument")
        args["bias"] = K.tensor(kw["linear_bias"], requires_grad=grads)
    # torch.compile (sort_logit_avg, softcapping, the torch_compile impl) warns about its own
    # internals on the first compilation; the interpreter evaluates masked lanes too
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss = linear_cross_entropy(e, c, y, **args)
        arrays = {"value": K.numpy(loss)}
        if grads:
            loss.backward(K.upstream(loss, kw.get("grad_output")))
            arrays["grad input"] = K.numpy(e.grad)
            arrays["grad weight"] = K.numpy(c.grad)
    return Result(arrays)


# --------------------------------------------------------------------------- targets

R3 = ("mean", "sum", "none")
I, SC = {"ignore_index": -100}, {"softcap": 30.0}


def _product(base, reductions=R3):
    return [dict(b, reduction=r) for b, r in itertools.product(base, reductions)]


#: impl='cce': V = 37 (one padded block), 300 (three, the last padded), 256 (two full).
CCE_REGIONS = ("scale 3", "dominant right", "scale 30", "many classes", "vocab 256",
               "all ignored")
#: impl='torch_compile' recompiles per shape and option: one shape, few options.
COMPILE_REGIONS = ("scale 3", "dominant right", "scale 30", "all ignored")


def targets() -> list[Target]:
    gen = regions.linear(rows=4, hidden=8)
    cce_sets = (_product([{}, SC, I]) + [dict(SC, shift=True, reduction="mean"),
                                         {"shift": True, **I, "reduction": "none"},
                                         {"filter_eps": None, "reduction": "sum"},
                                         {"reduction": "none", "grad_output": "random"}])
    compile_sets = [{"reduction": "mean"}, dict(SC, **I, reduction="sum"),
                    {"shift": True, "reduction": "none"}]
    common = dict(dtypes=("float32", "float16"), baseline=K.composition)
    return [
        Target(CCE, "exact linear cross-entropy (mean over the kept rows)",
               lambda c: run(c, "cce"), K.exact_linear, gen, cce_sets, CCE_REGIONS,
               K.linear_scales, quick_regions=("scale 3",),
               quick_option_sets=[dict(SC, reduction="sum"), dict(I, reduction="mean")],
               shrink_budget=40, **common),
        Target(COMPILE, "exact linear cross-entropy (mean over the kept rows)",
               lambda c: run(c, "torch_compile"), K.exact_linear, gen, compile_sets,
               COMPILE_REGIONS, K.linear_scales, quick_regions=("scale 3",),
               quick_option_sets=compile_sets[1:2], shrink_budget=12, **common),
    ]


# --------------------------------------------------------------------------- catalogue

def _softcap_padding(case: Case, o) -> bool:
    """``impl='cce'`` with a softcap and V not a multiple of BLOCK_V."""
    return (case.kwargs.get("softcap") is not None
            and case.kwargs["linear_weight"].shape[0] % BLOCK_V != 0)


def _all_ignored_mean(case: Case, o) -> bool:
    kw = case.kwargs
    y = K.shifted(case)[1]
    return (kw.get("reduction", "mean") == "mean"
            and bool(np.all(y == kw.get("ignore_index", -100))))


def _zero_division(case: Case, o) -> bool:
    return _all_ignored_mean(case, o) and o.kind == "exception" and "ZeroDivision" in o.detail


def _indexed_dot_reference(case: Case):
    """The exact result with the target logit as cut-cross-entropy's indexed dot forms it:
    ``sum(float16(e_i * c_i))`` -- each product rounded to the input dtype, then summed in
    float32 (``dot = (e * c).to(tl.float32)`` in indexed_dot.py) -- while the log-sum-exp
    uses ``tl.dot`` (exact products, float32 accumulation).  Only the loss changes; the
    backward recomputes the logits with ``tl.dot``."""
    kw = case.kwargs
    x, y = K.shifted(case)
    X = np.asarray(x).reshape(-1, x.shape[-1])
    W = np.asarray(kw["linear_weight"])
    yr = np.asarray(y).reshape(-1)
    kept = yr != kw.get("ignore_index", -100)
    if not kept.any():
        return None
    z = X.astype(np.float64) @ W.astype(np.float64).T
    zy = z[np.arange(yr.size), np.where(kept, yr, 0)]
    hat = np.array([np.sum((X[n] * W[yr[n]]).astype(np.float64)) if kept[n] else 0.0
                    for n in range(yr.size)])
    s = kw.get("softcap")
    if s is not None:
        zy, hat = s * np.tanh(zy / s), s * np.tanh(hat / s)
    corr = np.where(kept, zy - hat, 0.0)            # loss = lse - target logit
    ref = K.exact_linear(case)
    value = np.asarray(ref.arrays["value"], np.float64)
    reduction = kw.get("reduction", "mean")
    if reduction == "none":
        value = value + corr.reshape(value.shape)
    elif reduction == "sum":
        value = value + corr.sum()
    else:
        value = value + corr.sum() / kept.sum()
    return Result({**ref.arrays, "value": value})


def _probe(x, y, **kw):
    return lambda: Case(x=np.asarray(x), targets=np.asarray(y), kwargs=dict(kw), region="probe")


def _seeded_float16(**kw):
    """A float16 linear case (4 rows of 8 features, V = 37) with the options ``kw``."""
    def make():
        c = regions.linear()(np.random.default_rng(14), "float16", kw, "scale 3")
        return Case(x=c.x, targets=c.targets, kwargs=c.kwargs, region="probe")
    return make


def known() -> list[Known]:
    f32, f16 = np.float32, np.float16
    return [
        Known("cce-softcap-padding", "defect",
              "impl='cce' with softcap: the log-sum-exp forward masks the vocabulary padding of "
              "the last block with -inf *before* soft-capping, and tanh(-inf) = -1 turns every "
              "padded column into a logit -softcap: the log-sum-exp -- so the loss, and the "
              "gradients through it -- counts (-V mod 128) phantom classes whenever V is not a "
              "multiple of BLOCK_V = 128", CCE,
              "no upstream issue found; the same order of tl.where and tl_softcapping is in "
              "apple/ml-cross-entropy master (cce_lse_forward.py)",
              "cce_lse_forward.py: logits = tl.where(v_mask, accum, -inf); logits = "
              "tl_softcapping(logits, softcap).  With one class the loss must be 0; "
              "cut-cross-entropy returns log(1 + 127/e) = 3.865.  CUDA's libdevice tanhf(-inf) "
              "is -1 as NumPy's: not an artefact of the interpreter.  V a multiple of 128: "
              "exact.  With Gemma 2's softcap 30 and logits of order 10 the bias is about "
              "pad * e^-40 per row, which is why it goes unnoticed.",
              applies=_softcap_padding,
              probe=_probe(np.zeros((1, 1), f32), [0], linear_weight=np.zeros((1, 1), f32),
                           softcap=1.0, reduction="sum")),
        Known("cce-all-ignored-zero-division", "defect",
              "impl='cce', reduction='mean' over a batch whose rows are all ignored: the "
              "backward raises ZeroDivisionError (grad_scale = 1 / lse.numel() with no kept "
              "row); the forward gives NaN, as the reference and impl='torch_compile' (NaN "
              "loss, zero gradients)", CCE, "no upstream issue found",
              "cce.py LinearCrossEntropyFunction.backward.  A float32 input runs forward only "
              "(NaN, matching), so the defect shows in float16.",
              applies=_zero_division,
              probe=_probe(np.ones((2, 2), f16), [-100, -100],
                           linear_weight=np.ones((3, 2), f16), ignore_index=-100)),
        Known("cce-indexed-dot-float16-products", "precision",
              "impl='cce' in float16: the target logit of the loss is a sum of products each "
              "rounded to float16 (indexed_dot.py: dot = (e * c).to(tl.float32)), while the "
              "log-sum-exp takes exact products (tl.dot, float32 accumulation): the loss "
              "lse - z_y carries the rounding of every product of z_y (a single class gives a "
              "non-zero loss); the gradients are not affected", CCE, "no upstream issue found",
              "Checked: the framework agrees with the exact result whose target logit is "
              "sum(float16(e_i c_i)).  On a GPU e * c in float16 rounds the same way.",
              applies=K.explained_by(_indexed_dot_reference),
              probe=_probe(np.array([[-0.5483, -1.088]], f16), [0],
                           linear_weight=np.array([[-6.223, -11.95]], f16), reduction="mean"),
              check=lambda c, o: (not o.ok) and K.explained_by(_indexed_dot_reference)(c, o)),
        K.below_operand_rounding("cce-f16-below-operand-rounding", CCE, scope=(COMPILE,),
                                 mechanisms=(_indexed_dot_reference,)),
        K.float16_overflow("cce-f16-overflow", CCE, scope=(COMPILE,)),
        Known("cce-14-float16", "defect",
              "the classifier gradient far from PyTorch's (reported in bfloat16 with shift, "
              "impl='torch_compile'); bfloat16 cannot be compared here, so its float16 "
              "analogue is probed by the low-precision criterion (and every float16 sweep row "
              "of both implementations checks grad weight the same way)", COMPILE,
              "apple/ml-cross-entropy#14 (open)", "",
              probe=_seeded_float16(shift=True, reduction="mean")),
        Known("cce-52", "defect",
              "the bias was added multiple times to the correct logit", CCE,
              "apple/ml-cross-entropy#52 (fixed by #53)",
              unavailable="cut-cross-entropy 25.1.1 (the current PyPI release) has no bias "
                          "argument; the bias arrived after it, with the bug and its fix"),
    ]


def about() -> dict:
    from . import _triton_interp
    return {
        "versions": K.versions(),
        "patches": [{"what": w, "why": y} for w, y in _triton_interp.PATCHES],
        "exercised": [
            "impl='cce' under the interpreter: float32 forward (the loss), float16 forward "
            "and backward (float16 classifier), V = 37 (one padded block of 128), 256 (two "
            "full blocks) and 300 (three, the last padded); H = 8; 4 rows (a (2, 3) batch "
            "with shift)",
            "impl='torch_compile' as shipped (inductor on the CPU), float32 and float16, "
            "forward and backward, one shape (V = 37)",
            "options: ignore_index, softcap 30, reduction none/sum/mean, shift, filter_eps "
            "None (the gradient filter off; the default 'high' elsewhere), a per-row upstream "
            "gradient for none",
        ],
        "not_exercised": [
            {"what": "impl='cce' float32 backward", "why": "refused by the package: assert "
             "e.dtype in (float16, bfloat16), 'Backwards requires embeddings to be bf16 or "
             "fp16' (25.1.1; enabled for Triton >= 3.2 only in unreleased upstream code)"},
            {"what": "bfloat16", "why": dict(_triton_interp.UNPATCHED)["bfloat16"]},
            {"what": "bias (and so #52)", "why": "25.1.1 has no bias argument"},
            {"what": "label smoothing, z-loss, class weights", "why": "not options of 25.1.1"},
            {"what": "kahan summation, vocabulary parallelism", "why": "not in 25.1.1"},
            {"what": "CCE_AUTOTUNE=1 (autotuned block sizes)", "why": "the default fixed "
             "configs (forward BLOCK_B 256 x BLOCK_V 128, backward 128 x 128) are audited"},
            {"what": "more shapes for impl='torch_compile'", "why": "each new shape or option "
             "recompiles (seconds per compile on this CPU)"},
        ],
    }
