"""PyTorch adapter: ``torch.nn.functional`` cross-entropy losses.

Values and gradients come from PyTorch itself (``loss.sum().backward()``; the
gradient of the reduced loss, or of the sum for ``reduction="none"``).  The
reference is the core library (which follows ``F.cross_entropy`` and
``F.binary_cross_entropy_with_logits``) or :mod:`ce_reference.conventions`
(``nll_loss``, and ``binary_cross_entropy``'s clamp at -100).
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np

from ..losses.binary_cross_entropy import binary_cross_entropy_value_and_grad
from ..losses.binary_cross_entropy_with_logits import (
    binary_cross_entropy_with_logits_value_and_grad)
from ..losses.kl_divergence import kl_divergence_value_and_grad
from ..losses.nll_loss import nll_loss_value_and_grad
from ..losses.softmax_cross_entropy import softmax_cross_entropy_value_and_grad
from .. import conventions as conv
from ..cases import Case, regions
from ._core import Known, Result, Target, nan_with_neginf, operand_scales

NAME = "torch"
_torch = None
_F = None


def load() -> str:
    """Import PyTorch; return its version (ImportError when missing)."""
    global _torch, _F
    import torch
    import torch.nn.functional as F
    _torch, _F = torch, F
    return torch.__version__


def _t(a):
    return _torch.tensor(np.asarray(a))


def _run(fn, case: Case, **kw) -> Result:
    x = _torch.tensor(case.x, requires_grad=True)
    out = fn(x, _t(case.targets), **kw)
    out.sum().backward()
    return Result({"value": out.detach().numpy(), "grad": x.grad.numpy()})


def _kw(case: Case, *names, tensors=("weight", "pos_weight")) -> dict:
    kw = {}
    for k in names:
        if k in case.kwargs:
            v = case.kwargs[k]
            kw[k] = _t(v) if k in tensors else v
    return kw


def _vg(value, grad) -> Result:
    return Result({"value": np.asarray(value, np.float64), "grad": np.asarray(grad, np.float64)})


def _product(base, reductions=("mean", "sum", "none")):
    return [dict(b, reduction=r) for b, r in itertools.product(base, reductions)]


# --------------------------------------------------------------------------- targets

def _ce_run(case):
    return _run(_F.cross_entropy, case,
                **_kw(case, "weight", "ignore_index", "label_smoothing", "reduction"))


def _ce_ref(case):
    kw = {k: case.kwargs[k] for k in ("weight", "ignore_index", "label_smoothing", "reduction")
          if k in case.kwargs}
    return _vg(*softmax_cross_entropy_value_and_grad(case.x, case.targets, **kw))


def _nll_run(case):
    return _run(_F.nll_loss, case, **_kw(case, "weight", "ignore_index", "reduction"))


def _nll_ref(case):
    kw = {k: case.kwargs[k] for k in ("weight", "ignore_index", "reduction") if k in case.kwargs}
    return _vg(*nll_loss_value_and_grad(case.x, case.targets, **kw))


def _kl_targets(case):
    """The targets as passed: probabilities, or their logs for ``log_target=True``."""
    t = np.asarray(case.targets)
    if not case.kwargs.get("log_target"):
        return t
    with np.errstate(divide="ignore"):
        return np.log(t)


def _kl_elements_run(case):
    """``F.kl_div`` as PyTorch returns it (``reduction="none"``: every element)."""
    x = _torch.tensor(case.x, requires_grad=True)
    with warnings.catch_warnings():       # 'mean' warns that it is not the KL (a convention)
        warnings.simplefilter("ignore", UserWarning)
        out = _F.kl_div(x, _t(_kl_targets(case)), **_kw(case, "reduction", "log_target"))
    out.sum().backward()
    return Result({"value": out.detach().numpy(), "grad": x.grad.numpy()})


def _kl_run(case):
    """``F.kl_div``; its ``reduction="none"`` elements summed over the class axis (one KL
    per row, the library's ``none``; the gradient of the sum is unchanged)."""
    r = _kl_elements_run(case)
    if case.kwargs.get("reduction") == "none":
        r.arrays["value"] = np.sum(r.arrays["value"].astype(np.float64), axis=-1).astype(
            case.x.dtype)
    return r


def _kl_ref(case):
    kw = {k: case.kwargs[k] for k in ("reduction", "log_target") if k in case.kwargs}
    return _vg(*kl_divergence_value_and_grad(case.x, _kl_targets(case), **kw))


def _kl_elements_ref(case):
    """PyTorch's elementwise KL, ``t (log t - x)`` with ``0 log 0 = 0`` (the convention
    ``torch-kl-none-elements``); its gradient is ``-t``."""
    x = case.x.astype(np.float64)
    t = np.asarray(case.targets, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_t = np.where(t > 0, np.log(np.where(t > 0, t, 1.0)), 0.0)
        value = np.where(t > 0, t * (log_t - x), 0.0)
    return _vg(value, -t)


def _bce_run(case):
    return _run(_F.binary_cross_entropy, case, **_kw(case, "weight", "reduction"))


def _bce_ref(case):
    kw = {k: case.kwargs[k] for k in ("weight", "reduction") if k in case.kwargs}
    return _vg(*conv.clamped_binary_cross_entropy(case.x, case.targets, **kw))


def _bcel_run(case):
    return _run(_F.binary_cross_entropy_with_logits, case,
                **_kw(case, "weight", "pos_weight", "reduction"))


def _bcel_ref(case):
    kw = {k: case.kwargs[k] for k in ("weight", "pos_weight", "reduction") if k in case.kwargs}
    return _vg(*binary_cross_entropy_with_logits_value_and_grad(case.x, case.targets, **kw))


CE_INDEX = "F.cross_entropy (class indices)"
CE_PROBS = "F.cross_entropy (probability targets)"
NLL = "F.nll_loss"
KL = "F.kl_div"
KL_LOG = "F.kl_div (log_target=True)"
KL_ELEMENTS = "F.kl_div (reduction='none', elements)"
BCE = "F.binary_cross_entropy"
BCEL = "F.binary_cross_entropy_with_logits"


def targets() -> list[Target]:
    W, I, LS = {"weight": "random"}, {"ignore_index": -100}, {"label_smoothing": 0.1}
    T = []
    T.append(Target(
        CE_INDEX, "core softmax_cross_entropy (PyTorch's definition: mean-target-weight, "
                  "smoothing-uniform)",
        _ce_run, _ce_ref, regions.categorical("logits", "index"),
        _product([{}, W, I, LS, {**W, **I, **LS}]), regions.LOGIT_REGIONS,
        operand_scales(_ce_ref)))
    for tk in ("onehot", "soft"):
        T.append(Target(
            CE_PROBS + ("" if tk == "soft" else " one-hot"),
            "core softmax_cross_entropy, probability targets (mean-rows, smoothing-uniform)",
            _ce_run, _ce_ref, regions.categorical("logits", tk),
            _product([{}, W, LS, {**W, **LS}]), regions.LOGIT_REGIONS[:-1],
            operand_scales(_ce_ref)))
    T.append(Target(
        NLL, "core nll_loss (PyTorch's definition: mean-target-weight)",
        _nll_run, _nll_ref, regions.categorical("log_probs", "index"),
        _product([{}, W, I, {**W, **I}]), regions.LOGIT_REGIONS,
        operand_scales(_nll_ref)))
    kl_reductions = ("batchmean", "sum", "mean", "none")
    for name, lt in ((KL, False), (KL_LOG, True)):
        for tk in ("soft", "onehot"):
            T.append(Target(
                name + ("" if tk == "soft" else " one-hot"),
                "core kl_divergence (PyTorch's definition; reduction='none': PyTorch's "
                "elements summed over the class axis, torch-kl-none-elements)",
                _kl_run, _kl_ref, regions.categorical("log_probs", tk, fixed=("log_target",)),
                _product([{"log_target": lt}], kl_reductions), regions.LOGIT_REGIONS[:-1],
                operand_scales(_kl_ref),
                quick_option_sets=_product([{"log_target": lt}], ("batchmean", "none"))))
    T.append(Target(
        KL_ELEMENTS, "PyTorch's elements t (log t - x), 0 log 0 = 0 (torch-kl-none-elements)",
        _kl_elements_run, _kl_elements_ref,
        regions.categorical("log_probs", "soft", fixed=("log_target",)),
        [{"log_target": False, "reduction": "none"}], regions.LOGIT_REGIONS[:4],
        operand_scales(_kl_elements_ref)))
    for tk in ("hard", "soft"):
        T.append(Target(
            BCE + ("" if tk == "soft" else " hard targets"),
            "conventions.clamped_binary_cross_entropy (torch-log-clamp, mean-rows)",
            _bce_run, _bce_ref, regions.binary("probs", tk),
            _product([{}, W]), regions.BINARY_PROB_REGIONS,
            operand_scales(_bce_ref)))
        T.append(Target(
            BCEL + ("" if tk == "soft" else " hard targets"),
            "core binary_cross_entropy_with_logits (mean-rows)",
            _bcel_run, _bcel_ref, regions.binary("logits", tk),
            _product([{}, W, {"pos_weight": "random"}, {**W, "pos_weight": "random"}]),
            regions.BINARY_LOGIT_REGIONS, operand_scales(_bcel_ref)))
    return T


# --------------------------------------------------------------------------- catalogue

def _bce_small_denominator(case: Case, o) -> bool:
    """PyTorch's BCE backward divides by max(p(1-p), 1e-12) and ignores the clamp."""
    p = case.x.astype(np.float64)
    return o.kind == "grad" and bool(np.any(p * (1 - p) < 1e-12))


def _c(x, y, **opts):
    """A catalogue probe (its structure comes from the target's generator)."""
    return lambda: Case(x=np.asarray(x), targets=np.asarray(y), kwargs=dict(opts), region="probe")


def _all_ignored_check(case, o):
    v = np.asarray(o.framework.arrays["value"]) if o.framework else None
    g = np.asarray(o.framework.arrays["grad"]) if o.framework else None
    return v is not None and bool(np.isnan(v)) and bool(np.all(g == 0))


def _zero_mean(case):
    return Result({"value": np.float64(0.0), "grad": np.zeros(case.x.shape)})


def _index_path(case):
    y = np.argmax(case.targets, axis=-1)
    return _ce_ref(case.replace(targets=y))


def _off_class_ref(case):
    q = conv.smooth_labels(case.targets, case.kwargs["label_smoothing"], num_classes=case.x.shape[-1],
                           scheme="off_class")
    rows, g = conv.softmax_cross_entropy_rows(case.x, q)
    return _vg(*conv.weighted_reduction(rows, g, reduction=case.kwargs.get("reduction", "mean"),
                                        denominator="count"))


def _nan_at_zero_target(log_target):
    """``applies`` of a KL NaN finding: the framework's value is NaN where the reference's is
    finite, for the ``log_target`` setting given, on an input with a zero target (a -inf
    log-target) -- beside a -inf input when ``log_target`` is False."""
    def applies(case, o):
        if bool(case.kwargs.get("log_target")) != log_target:
            return False
        if not np.any(np.asarray(case.targets) == 0):
            return False
        if not log_target:
            return nan_with_neginf(case, o)
        if o.framework is None or "value" not in o.framework.arrays:
            return False
        a = np.asarray(o.framework.arrays["value"], np.float64)
        r = np.asarray(o.reference.arrays["value"], np.float64)
        return bool(np.any(np.isnan(a) & np.isfinite(r)))
    return applies


def _kl_batchmean(case):
    return _kl_ref(case.replace(kwargs={**case.kwargs, "reduction": "batchmean"}))


def _kl_rows(case):
    return _vg(*kl_divergence_value_and_grad(case.x, case.targets, reduction="none"))


def known() -> list[Known]:
    f64 = np.float64
    half = np.log(np.array([[0.5, 0.5]]))
    return [
        Known("torch-bce-backward", "defect",
              "binary_cross_entropy: backward divides by max(p(1-p), 1e-12) and ignores the "
              "-100 clamp, so the gradient is wrong wherever p(1-p) < 1e-12",
              BCE, "pytorch/pytorch#103316",
              "Forward is -[y max(log p, -100) + (1-y) max(log(1-p), -100)]; its derivative is "
              "-y/p (0 where the clamp is active).  PyTorch returns (p-y)/max(p(1-p), 1e-12): "
              "at p=1e-20, y=1 that is -1e12 instead of -1e20; chained through sigmoid at "
              "x=-50 it gives ~-2e-10 instead of -1.",
              applies=_bce_small_denominator, probe=_c(np.array([1e-20]), np.array([1.0]))),
        Known("torch-ce-prob-neginf", "defect",
              "cross_entropy with probability targets: NaN loss when a logit is -inf and its "
              "target probability (times its class weight) is 0: 0 * log 0 is evaluated as "
              "0 * -inf",
              CE_PROBS, "no PyTorch issue found; optax#896 is the same bug in optax",
              "The loss is finite (0 log 0 = 0), or +inf when label smoothing puts mass on "
              "the -inf class; PyTorch returns NaN either way.  Its gradient is correct.",
              applies=nan_with_neginf,
              probe=_c(np.array([[0.0, -np.inf]]), np.array([[1.0, 0.0]]))),
        Known("torch-ce-smoothing-neginf", "defect",
              "cross_entropy with class indices and label_smoothing: NaN loss when a logit is "
              "-inf and that class's weight is 0 (the smoothing term evaluates 0 * -inf)",
              CE_INDEX, "no PyTorch issue found",
              "With weight w_c = 0 the class carries no target mass, so the loss is finite.",
              applies=nan_with_neginf,
              probe=_c(np.array([[-np.inf, 0.0]]), np.array([1]), weight=np.array([0.0, 1.0]),
                       label_smoothing=0.1)),
        Known("torch-nll-zero-weight-neginf", "defect",
              "nll_loss: NaN loss (finite gradient) when a target's log-probability is -inf "
              "and its class weight is 0: the row's loss -w_y x_y evaluates 0 * -inf",
              NLL, "",
              "A class of weight 0 contributes nothing: the loss is finite (0 here).  The "
              "gradient -w_y / D is finite, so the NaN loss trains silently.",
              applies=nan_with_neginf,
              probe=_c(np.array([[-np.inf, 0.0]]), np.array([0]), weight=np.array([0.0, 1.0]),
                       reduction="sum")),
        Known("torch-kl-zero-target-neginf", "defect",
              "kl_div(log_target=False): NaN loss (finite gradient -t) when a target is 0 "
              "and its input log-probability is -inf: xlogy(t, t) - t * x evaluates 0 * -inf",
              KL, "aten/src/ATen/native/Loss.cpp kl_div (xlogy form)",
              "The term t (log t - x) is 0 for t = 0 (0 log 0 = 0, and a zero target carries "
              "no mass); the older form where(target > 0, ...) returned 0.",
              applies=_nan_at_zero_target(False),
              probe=_c(np.array([[-np.inf, 0.0]]), np.array([[0.0, 1.0]]),
                       log_target=False, reduction="sum")),
        Known("torch-kl-log-target-neginf", "defect",
              "kl_div(log_target=True): NaN loss (finite gradient -exp(lt)) at any -inf "
              "log-target: exp(lt) * (lt - x) evaluates 0 * -inf",
              KL_LOG, "aten/src/ATen/native/Loss.cpp kl_div",
              "A -inf log-target is a zero probability (a masked class): its term is 0.  "
              "Every one-hot target written in log space is NaN.",
              applies=_nan_at_zero_target(True),
              probe=_c(np.array([[-1.0, -0.5]]), np.array([[0.0, 1.0]]),
                       log_target=True, reduction="sum")),
        Known("torch-kl-mean-elements", "convention",
              "kl_div(reduction='mean') divides the sum by the number of elements N*C, not "
              "by the batch size: not the KL (documented, and warned at run time); "
              "'batchmean' is the KL", KL, "documented in the kl_div docstring",
              "The library's 'mean' is the same elementwise mean; the exact KL is "
              "'batchmean'.",
              probe=_c(half, np.array([[0.25, 0.75]]), log_target=False, reduction="mean"),
              exact=_kl_batchmean),
        Known("torch-kl-none-elements", "convention",
              "kl_div(reduction='none') returns every element t (log t - x); the library's "
              "'none' is one KL per row (the elements summed over the class axis)",
              KL_ELEMENTS, "documented: 'none' keeps the input's shape",
              "The swept F.kl_div targets compare PyTorch's elements summed over the class "
              "axis with the library's per-row KL.",
              probe=_c(half, np.array([[0.25, 0.75]]), log_target=False, reduction="none"),
              exact=_kl_rows),
        Known("torch-bcel-target-range", "validation",
              "binary_cross_entropy_with_logits accepts targets outside [0, 1] "
              "(binary_cross_entropy rejects them)", BCEL, "",
              "Documented: target values between 0 and 1.",
              probe=_c(np.array([0.0]), np.array([1.5]))),
        Known("torch-ce-prob-target-range", "validation",
              "cross_entropy accepts probability targets outside [0, 1]", CE_PROBS, "",
              "Documented: each value should be between [0, 1].",
              probe=_c(np.zeros((1, 2)), np.array([[1.5, -0.5]]))),
        Known("torch-ce-index-range", "validation",
              "cross_entropy rejects a class index >= C", CE_INDEX, "",
              probe=_c(np.zeros((1, 2)), np.array([2]))),
        Known("torch-bce-prob-range", "validation",
              "binary_cross_entropy rejects a probability outside [0, 1]", BCE, "",
              probe=_c(np.array([1.5]), np.array([1.0]))),
        Known("torch-all-ignored-nan", "convention",
              "mean over rows that are all ignored is NaN (0/0), gradient 0",
              CE_INDEX, "pytorch/pytorch#64572 (deliberate); Keras returns 0",
              "The reference follows PyTorch (weighted_reduction zero_division='nan').",
              probe=_c(np.zeros((2, 3)), np.array([-100, -100]), ignore_index=-100),
              check=_all_ignored_check, exact=_zero_mean),
        Known("torch-mean-rows", "convention",
              "weighted mean of probability targets divides by the number of rows, not the "
              "sum of target weights (one-hot and index targets give different means)",
              CE_PROBS + " one-hot", "pytorch/pytorch#107680",
              probe=_c(np.zeros((2, 2)), np.eye(2), weight=np.array([1.0, 3.0])),
              exact=_index_path),
        Known("torch-log-clamp", "convention",
              "binary_cross_entropy clamps each log at -100: a certain wrong prediction "
              "costs 100, not inf", BCE, "documented in the BCELoss docs",
              probe=_c(np.array([0.0, 0.5]), np.array([1.0, 1.0])), fields=("value",),
              exact=lambda c: _vg(*binary_cross_entropy_value_and_grad(c.x, c.targets))),
        Known("torch-smoothing-uniform", "convention",
              "label_smoothing spreads eps/C over all classes (true class 1-eps+eps/C), not "
              "eps/(C-1) over the other classes (Megatron-LM, t5x)", CE_INDEX, "",
              probe=_c(np.array([[2.0, 0.0, -1.0]], f64), np.array([0]), label_smoothing=0.3),
              exact=_off_class_ref),
    ]

