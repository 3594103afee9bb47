"""scikit-learn adapter: ``metrics.log_loss`` and ``sklearn._loss``'s
``HalfBinomialLoss`` / ``HalfMultinomialLoss``.

``log_loss`` is a metric (value only).  The ``_loss`` classes compute their own
gradient and Hessian (``gradient``, ``gradient_hessian``) with respect to the
raw prediction (logits); the audit compares the loss, the gradient, the
Hessian diagonal and the weighted mean ``__call__`` with
:func:`ce_reference.conventions.half_binomial` /
:func:`~ce_reference.conventions.half_multinomial`.  ``sklearn._loss`` is a
private module: scikit-learn's estimators validate ``y`` before calling it.
Warnings raised by scikit-learn (e.g. "y_prob values do not sum to one") are
recorded, never turned into errors.
"""

from __future__ import annotations

import warnings

import numpy as np

from .. import conventions as conv
from ..cases import Case, regions
from ._core import Known, Result, Target, operand_scales

NAME = "sklearn"
_log_loss = _HB = _HM = None


def load() -> str:
    global _log_loss, _HB, _HM
    import sklearn
    from sklearn._loss.loss import HalfBinomialLoss, HalfMultinomialLoss
    from sklearn.metrics import log_loss
    _log_loss, _HB, _HM = log_loss, HalfBinomialLoss, HalfMultinomialLoss
    return sklearn.__version__


def _quiet(fn):
    def run(case):
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            r = fn(case)
        r.warnings = tuple(sorted({str(m.message) for m in w}))
        return r
    return run


def _ll_kw(case):
    kw = {}
    if "sample_weight" in case.kwargs:
        kw["sample_weight"] = case.kwargs["sample_weight"]
    if "normalize" in case.kwargs:
        kw["normalize"] = case.kwargs["normalize"]
    return kw


@_quiet
def _ll_run(case):
    C = case.x.shape[1]
    return Result({"value": np.float64(_log_loss(case.targets, case.x, labels=np.arange(C),
                                                 **_ll_kw(case)))})


def _ll_ref(case):
    rows, _ = conv.clipped_categorical_cross_entropy_rows(
        case.x, case.targets, eps=float(np.finfo(case.x.dtype).eps), renormalize=False)
    red = "mean" if case.kwargs.get("normalize", True) else "sum"
    v, _ = conv.weighted_reduction(rows, None, sample_weight=case.kwargs.get("sample_weight"),
                                   reduction=red)
    return Result({"value": v})


@_quiet
def _ll_bin_run(case):
    y = case.targets.astype(np.int64)
    return Result({"value": np.float64(_log_loss(y, case.x, labels=[0, 1], **_ll_kw(case)))})


def _ll_bin_ref(case):
    p = case.x
    P = np.stack([1 - p, p], axis=1)          # scikit-learn forms 1 - p in the input dtype
    return _ll_ref(case.replace(x=P, targets=case.targets.astype(np.int64)))


def _half(case, loss):
    sw = case.kwargs.get("sample_weight")
    x = np.ascontiguousarray(case.x)
    y = np.ascontiguousarray(case.targets.astype(x.dtype))
    kw = dict(y_true=y, raw_prediction=x, sample_weight=sw)
    value = loss.loss(**kw)
    grad = loss.gradient(**kw)
    g2, hess = loss.gradient_hessian(**kw)
    l3, g3 = loss.loss_gradient(**kw)
    mean = loss(y, x, sample_weight=sw)
    return Result({"value": value, "grad": grad, "hess": hess, "mean": np.float64(mean),
                   "grad (gradient_hessian)": g2, "value (loss_gradient)": l3,
                   "grad (loss_gradient)": g3})


@_quiet
def _hb_run(case):
    return _half(case, _HB())


@_quiet
def _hm_run(case):
    return _half(case, _HM(n_classes=case.x.shape[1]))


def _half_ref(fn, case):
    sw = case.kwargs.get("sample_weight")
    loss, grad, hess = fn(case.x, case.targets)
    mean, _ = conv.weighted_reduction(loss, None, sample_weight=sw)
    if sw is not None:
        s = np.asarray(sw, np.float64).reshape((-1,) + (1,) * (grad.ndim - 1))
        loss, grad, hess = sw * loss, s * grad, s * hess
    return Result({"value": loss, "grad": grad, "hess": hess, "mean": mean,
                   "grad (gradient_hessian)": grad, "value (loss_gradient)": loss,
                   "grad (loss_gradient)": grad})


def _hb_ref(case):
    return _half_ref(conv.half_binomial, case)


def _hm_ref(case):
    return _half_ref(conv.half_multinomial, case.replace(targets=case.targets.astype(np.int64)))


def _scales(ref):
    base = operand_scales(ref)

    def scales(case):
        s = base(case)
        s["mean"] = s["value (loss_gradient)"] = s["value"]
        s["grad (gradient_hessian)"] = s["grad (loss_gradient)"] = s.get("grad", 0.0)
        return s
    return scales


LOG_LOSS = "metrics.log_loss"
LOG_LOSS_BIN = "metrics.log_loss (binary, 1-D y_proba)"
HB = "HalfBinomialLoss"
HM = "HalfMultinomialLoss"


def targets() -> list[Target]:
    SW = {"sample_weight": "random"}
    sets = [{}, SW, {"normalize": False}, {**SW, "normalize": False}]
    prob_regions = ("scale 1", "scale 3") + regions.PROB_REGIONS
    return [
        Target(LOG_LOSS, "clipped_categorical_cross_entropy_rows(eps=finfo.eps, "
                         "renormalize=False) (sklearn-clip), sample-weight-mean",
               _ll_run, _ll_ref, regions.categorical("probs", "index"), sets, prob_regions,
               operand_scales(_ll_ref)),
        Target(LOG_LOSS_BIN, "the same on [1 - p, p]", _ll_bin_run, _ll_bin_ref,
               regions.binary("probs", "hard", shape=(regions.N_ROWS,)), sets,
               regions.BINARY_PROB_REGIONS, operand_scales(_ll_bin_ref)),
        Target(HB, "conventions.half_binomial (loss, gradient, Hessian; np.average)",
               _hb_run, _hb_ref, regions.binary("logits", "soft", shape=(8,)), [{}, SW],
               regions.BINARY_LOGIT_REGIONS, _scales(_hb_ref), repeats=2),
        Target(HM, "conventions.half_multinomial (loss, gradient, Hessian diagonal)",
               _hm_run, _hm_ref, regions.categorical("logits", "index", float_labels=True),
               [{}, SW], regions.LOGIT_REGIONS[:-1], _scales(_hm_ref), repeats=2),
    ]


def _c(x, y, **opts):
    """A catalogue probe (its structure comes from the target's generator)."""
    return lambda: Case(x=np.asarray(x), targets=np.asarray(y), kwargs=dict(opts), region="probe")


def _exact_ll(case):
    from ..losses.categorical_cross_entropy import categorical_cross_entropy
    return Result({"value": categorical_cross_entropy(case.x, case.targets)})


def known() -> list[Known]:
    return [
        Known("sklearn-half-binomial-709", "defect",
              "HalfBinomialLoss gradient/Hessian NaN for raw_prediction < -709 with y = 1 "
              "(exp(-x) overflows)", HB, "expected from reading _loss.pyx.tp "
              "(semantics.md b5)",
              probe=_c(np.array([-800.0]), np.array([1.0]))),
        Known("sklearn-multinomial-label-range", "validation",
              "HalfMultinomialLoss accepts a label >= n_classes and reads the next row's "
              "memory (here: a negative loss)", HM,
              "private API: estimators validate y; the kernel does not",
              probe=_c(np.array([[0.0, 1.0, 2.0], [5.0, 6.0, 7.0]]), np.array([3.0, 0.0]))),
        Known("sklearn-log-loss-range", "validation",
              "log_loss rejects probabilities outside [0, 1]", LOG_LOSS, "",
              probe=_c(np.array([[1.5, -0.5]]), np.array([0]))),
        Known("sklearn-clip", "convention",
              "log_loss clips probabilities to [eps, 1-eps] with eps = finfo(dtype).eps: a "
              "certain wrong prediction costs -log(eps) = 36.04 (float64), not inf",
              LOG_LOSS, "scikit-learn PRs #24354, #25299, #28851",
              probe=_c(np.array([[1.0, 0.0]]), np.array([1])), exact=_exact_ll),
    ]
