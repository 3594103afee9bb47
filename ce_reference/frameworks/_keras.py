"""Keras 3 adapter (JAX backend): BinaryCrossentropy, CategoricalCrossentropy,
SparseCategoricalCrossentropy, BinaryFocalCrossentropy and
CategoricalFocalCrossentropy (``from_logits=True``), KLDivergence.

Backend selection without leaking into the user's process: Keras reads
``KERAS_BACKEND`` once, when it is first imported.  :func:`load` sets
``KERAS_BACKEND=jax`` only around that import and restores the variable (and
``TF_FORCE_GPU_ALLOW_GROWTH``, which Keras sets on import) afterwards.  If
Keras is already imported with another backend, the Keras audit is reported
as *skipped* (run it in a fresh process); the process' Keras is never
re-imported.  Keras itself writes ``~/.keras/keras.json`` on its first import
if that file does not exist.

Each loss object is built with ``dtype`` equal to the case's dtype (Keras
otherwise computes in ``floatx``, float32); values and ``jax.grad`` of the sum
of the output run inside ``jax.enable_x64(True)``.  ``eps`` is read from
``keras.config.epsilon()`` (1e-7 unless the user's keras.json changes it) and
reported.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from .. import conventions as conv
from ..cases import Case, regions
from ._core import TOL_EPS, Known, Result, Target, nan_with_neginf, operand_scales

NAME = "keras"
_keras = _jax = _jnp = None


def load() -> str:
    global _keras, _jax, _jnp
    mod = sys.modules.get("keras")
    if mod is not None:
        backend = mod.config.backend()
        if backend != "jax":
            raise ImportError(f"keras is already imported with the {backend!r} backend; the "
                              "audit needs the JAX backend (run it in a fresh process)")
        keras = mod
    else:
        saved = {k: os.environ.get(k) for k in ("KERAS_BACKEND", "TF_FORCE_GPU_ALLOW_GROWTH")}
        os.environ["KERAS_BACKEND"] = "jax"
        try:
            import keras
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        if keras.config.backend() != "jax":
            raise ImportError(f"keras uses the {keras.config.backend()!r} backend")
    import jax
    import jax.numpy as jnp
    _keras, _jax, _jnp = keras, jax, jnp
    return f"{keras.__version__} (JAX backend, jax {jax.__version__}, epsilon {eps()})"


def eps() -> float:
    return float(_keras.config.epsilon())


_LOSS_CACHE: dict = {}


def _loss(cls_name, dtype, **kw):
    key = (cls_name, dtype, tuple(sorted(kw.items())))
    if key not in _LOSS_CACHE:
        _LOSS_CACHE[key] = getattr(_keras.losses, cls_name)(dtype=dtype, **kw)
    return _LOSS_CACHE[key]


_CTOR = ("from_logits", "label_smoothing", "reduction", "ignore_class", "axis",
         "apply_class_balancing", "alpha", "gamma")
#: The case flag that runs the loss under ``jax.disable_jit()``.
EAGER = "run eagerly"


_JIT: dict = {}


def _compiled(loss, with_sw):
    """``jax.jit`` of (value, grad of the sum of the output) for one loss object.

    Jitted as ``model.fit`` runs it; a case flagged ``"run eagerly"`` runs the same
    function under ``jax.disable_jit()``.
    """
    key = (id(loss), with_sw)
    if key not in _JIT:
        def vg(x, y, sw):
            def f(z):
                return loss(y, z, sample_weight=sw if with_sw else None)
            return f(x), _jax.grad(lambda z: _jnp.sum(f(z)))(x)
        _JIT[key] = _jax.jit(vg)
    return _JIT[key]


def _run(cls_name):
    def run(case: Case) -> Result:
        kw = {k: v for k, v in case.kwargs.items() if k in _CTOR}
        loss = _loss(cls_name, case.dtype.name, **kw)
        sw = case.kwargs.get("sample_weight")
        fn = _compiled(loss, sw is not None)
        with _jax.enable_x64(True):
            args = (_jnp.asarray(case.x), _jnp.asarray(case.targets),
                    None if sw is None else _jnp.asarray(sw))
            if EAGER in case.flags:
                with _jax.disable_jit():
                    v, g = fn(*args)
            else:
                v, g = fn(*args)
        return Result({"value": np.asarray(v), "grad": np.asarray(g)})
    return run


def _reduce(case, rows, grads, keep=None):
    red = case.kwargs.get("reduction", "sum_over_batch_size")
    sw = case.kwargs.get("sample_weight")
    if red in ("sum_over_batch_size", "mean"):
        kw = dict(reduction="mean", denominator="count", zero_division="zero")
    elif red == "mean_with_sample_weight":
        kw = dict(reduction="mean", denominator="weights", zero_division="zero")
    else:
        kw = dict(reduction=red)
    v, g = conv.weighted_reduction(rows, grads, sample_weight=sw, keep=keep, **kw)
    return Result({"value": v, "grad": g})


def _class_last(case):
    """(x, y, back) with the class axis moved last (``axis`` option)."""
    ax = case.kwargs.get("axis", -1)
    if ax in (-1, case.x.ndim - 1):
        return case.x, case.targets, lambda g: g
    x = np.moveaxis(case.x, ax, -1)
    y = np.moveaxis(case.targets, ax, -1) if case.targets.shape == case.x.shape else case.targets
    return x, y, lambda g: np.moveaxis(g, -1, ax)


def _bce_ref(case):
    y = case.targets
    ls = case.kwargs.get("label_smoothing", 0.0)
    if ls:
        y = conv.smooth_labels(y, ls, scheme="binary").astype(case.x.dtype)
    if case.kwargs.get("from_logits"):
        e, ge = conv.sigmoid_cross_entropy_elements(case.x, y)
    else:
        e, ge = conv.clipped_binary_cross_entropy_elements(case.x, y, eps=eps())
    K = case.x.shape[-1]
    rows = np.mean(e.astype(np.float64), axis=-1)          # Keras: mean over the last axis
    return _reduce(case, rows, ge / K)


def _cce_ref(case):
    x, y, back = _class_last(case)
    ls = case.kwargs.get("label_smoothing", 0.0)
    if ls:
        y = conv.smooth_labels(y, ls, scheme="uniform").astype(x.dtype)
    if case.kwargs.get("from_logits"):
        rows, g = conv.softmax_cross_entropy_rows(x, y)
    else:
        rows, g = conv.clipped_categorical_cross_entropy_rows(x, y, eps=eps(), renormalize=True)
    r = _reduce(case, rows, g)
    r.arrays["grad"] = back(r.arrays["grad"])
    return r


def _scce_ref(case):
    y = np.asarray(case.targets)
    keep = None
    if "ignore_class" in case.kwargs:
        keep = y != case.kwargs["ignore_class"]
        y = np.where(keep, y, 0)
    if case.kwargs.get("from_logits"):
        rows, g = conv.softmax_cross_entropy_rows(case.x, y)
    else:
        rows, g = conv.clipped_categorical_cross_entropy_rows(case.x, y, eps=eps(),
                                                              renormalize=True)
    if keep is not None:
        rows = np.where(keep, rows, 0.0)
        g = np.where(keep[:, None], g, 0.0)
    return _reduce(case, rows, g, keep)


def _bfocal_ref(case, sigmoid=None):
    kw = case.kwargs
    alpha = kw.get("alpha", 0.25) if kw.get("apply_class_balancing") else None
    e, ge = conv.keras_binary_focal_elements(case.x, case.targets, gamma=kw.get("gamma", 2.0),
                                             alpha=alpha, eps=eps(), sigmoid=sigmoid)
    K = case.x.shape[-1]
    return _reduce(case, np.mean(e, axis=-1), ge / K)   # Keras: mean over the last axis


def _cfocal_ref(case):
    kw = case.kwargs
    rows, g = conv.keras_categorical_focal_rows(case.x, case.targets, gamma=kw.get("gamma", 2.0),
                                                alpha=kw.get("alpha", 0.25), eps=eps())
    return _reduce(case, rows, g)


def _kl_ref(case):
    rows, g = conv.keras_kl_divergence_rows(case.x, case.targets, eps=eps())
    return _reduce(case, rows, g)


BCE = "BinaryCrossentropy"
CCE = "CategoricalCrossentropy"
SCCE = "SparseCategoricalCrossentropy"
BFOCAL = "BinaryFocalCrossentropy (from_logits)"
CFOCAL = "CategoricalFocalCrossentropy (from_logits)"
KLD = "KLDivergence"

_REDUCTIONS = [{}, {"reduction": "sum"}, {"reduction": "none", "sample_weight": "random"},
               {"sample_weight": "random"},
               {"reduction": "mean_with_sample_weight", "sample_weight": "random"}]


def targets() -> list[Target]:
    T = []
    prob_regions = ("scale 1", "scale 3") + regions.PROB_REGIONS
    logit_regions = ("scale 1", "scale 10", "dominant right", "±1e4", "near overflow",
                     "-inf, zero target")
    for from_logits in (False, True):
        tag = " (from_logits)" if from_logits else " (probabilities)"
        fl = {"from_logits": True} if from_logits else {}
        for tk in ("hard", "soft"):
            sets = [dict(fl, **r) for r in _REDUCTIONS] + [dict(fl, label_smoothing=0.1)]
            T.append(Target(
                BCE + tag + (" hard targets" if tk == "hard" else ""),
                ("sigmoid_cross_entropy_elements" if from_logits else
                 "clipped_binary_cross_entropy_elements (keras-clip)")
                + ", smoothing-binary, mean over the last axis, keras-sum-over-batch-size",
                _run(BCE), _bce_ref,
                regions.binary("logits" if from_logits else "probs", tk),
                sets if tk == "soft" else sets[:2],
                regions.BINARY_LOGIT_REGIONS[:6] if from_logits else regions.BINARY_PROB_REGIONS,
                operand_scales(_bce_ref)))
        for tk in ("onehot", "soft"):
            sets = [dict(fl, **r) for r in _REDUCTIONS] + [dict(fl, label_smoothing=0.1)]
            T.append(Target(
                CCE + tag + (" one-hot" if tk == "onehot" else ""),
                ("softmax_cross_entropy_rows" if from_logits else
                 "clipped_categorical_cross_entropy_rows (keras-clip)")
                + ", smoothing-uniform, keras-sum-over-batch-size",
                _run(CCE), _cce_ref,
                regions.categorical("logits" if from_logits else "probs", tk),
                sets if tk == "soft" else sets[:2],
                logit_regions if from_logits else prob_regions,
                operand_scales(_cce_ref)))
        sets = [dict(fl, **r) for r in _REDUCTIONS] + [dict(fl, ignore_class=-1),
                                                      dict(fl, ignore_class=-1,
                                                           sample_weight="random")]
        T.append(Target(
            SCCE + tag,
            ("softmax_cross_entropy_rows" if from_logits else
             "clipped_categorical_cross_entropy_rows (keras-clip)")
            + ", keras-sum-over-batch-size (ignore_class: divide by kept rows)",
            _run(SCCE), _scce_ref,
            regions.categorical("logits" if from_logits else "probs", "index"), sets,
            (logit_regions + ("all ignored",)) if from_logits else prob_regions + (
                "all ignored",),
            operand_scales(_scce_ref)))
    fl = {"from_logits": True}
    for tk in ("hard", "soft"):
        T.append(Target(
            BFOCAL + (" hard targets" if tk == "hard" else ""),
            "conventions.keras_binary_focal_elements (keras-clip of sigmoid(x), alpha only with "
            "apply_class_balancing), mean over the last axis, keras-sum-over-batch-size",
            _run("BinaryFocalCrossentropy"), _bfocal_ref, regions.binary("logits", tk),
            [dict(fl), dict(fl, apply_class_balancing=True), dict(fl, gamma=0.5),
             dict(fl, gamma=0.0), dict(fl, apply_class_balancing=True, alpha=0.5, gamma=1.0),
             dict(fl, reduction="sum")],
            regions.BINARY_LOGIT_REGIONS, operand_scales(_bfocal_ref)))
    for tk in ("onehot", "soft"):
        T.append(Target(
            CFOCAL + (" one-hot" if tk == "onehot" else ""),
            "conventions.keras_categorical_focal_rows (keras-clip of softmax(x), alpha a "
            "multiplier), keras-sum-over-batch-size",
            _run("CategoricalFocalCrossentropy"), _cfocal_ref,
            regions.categorical("logits", tk),
            [dict(fl), dict(fl, gamma=0.5), dict(fl, alpha=1.0, gamma=0.0),
             dict(fl, reduction="sum")],
            logit_regions, operand_scales(_cfocal_ref)))
        T.append(Target(
            KLD + (" one-hot" if tk == "onehot" else ""),
            "conventions.keras_kl_divergence_rows (probabilities, both clipped to [1e-7, 1]), "
            "keras-sum-over-batch-size",
            _run("KLDivergence"), _kl_ref, regions.categorical("probs", tk),
            [{}, {"reduction": "sum"}, {"sample_weight": "random"}], prob_regions,
            operand_scales(_kl_ref)))
    return T


def _c(x, y, flags=(), **opts):
    """A catalogue probe (its structure comes from the target's generator)."""
    return lambda: Case(x=np.asarray(x), targets=np.asarray(y), kwargs=dict(opts),
                        region="probe", flags=tuple(flags))


def _float32_accurate(case, o):
    """A float64 deviation that would pass at float32 precision (float32 arithmetic)."""
    if case.dtype != np.float64 or not o.errors:
        return False
    ratio = np.finfo(np.float64).eps / np.finfo(np.float32).eps
    return all(np.isfinite(e) and e * ratio <= TOL_EPS for e in o.errors.values())


def _at_clip_boundary(case, o):
    """A gradient deviation at a probability on the clip boundary: exactly, or -- for rows
    that Keras renormalises, summing in its own order -- within 4 ULP after the division."""
    if o.kind != "grad":
        return False
    dt = case.x.dtype.type
    x = case.x
    ulps = 0
    if case.x_rows:
        x = x / np.sum(x, axis=-1, keepdims=True)
        ulps = 4
    x = x.astype(np.float64)
    return any(bool(np.any(np.abs(x - float(b)) <= ulps * float(np.spacing(b))))
               for b in (dt(eps()), dt(1 - eps())))


def _exact_cce(case):
    from ..losses.categorical_cross_entropy import categorical_cross_entropy_value_and_grad
    v, g = categorical_cross_entropy_value_and_grad(case.x, case.targets)
    return Result({"value": v, "grad": g})


def _weights_mean(case):
    rows, g = conv.softmax_cross_entropy_rows(case.x, case.targets)
    v, G = conv.weighted_reduction(rows, g, sample_weight=case.kwargs.get("sample_weight"))
    return Result({"value": v, "grad": G})


def _nan_mean(case):
    return Result({"value": np.float64(np.nan), "grad": np.zeros(case.x.shape)})


def _off_class_binary(case):
    y = conv.smooth_labels(np.stack([case.targets, 1 - case.targets], -1), case.kwargs["label_smoothing"],
                           scheme="off_class")[..., 0]
    e, ge = conv.sigmoid_cross_entropy_elements(case.x, y)
    return Result({"value": np.mean(e), "grad": ge / case.x.size})


def _focal_nan_grad(case, o):
    """gamma < 1: the framework's gradient is NaN where the reference's is finite."""
    if case.kwargs.get("gamma", 2.0) >= 1 or o.framework is None:
        return False
    return bool(o.nonfinite.get("grad", False)) and not o.nonfinite.get("value", False)


def _probability_space(case, o):
    """The framework matches the convention evaluated at its own sigmoid(x) in the dtype (what
    its probability-space computation sees; JAX's float32 sigmoid is within an ulp or so of
    the rounded value), on finite results."""
    if o.framework is None or any(o.nonfinite.values()):
        return False
    with _jax.enable_x64(True):
        p = np.asarray(_jax.nn.sigmoid(_jnp.asarray(case.x)))
    ref = _bfocal_ref(case, sigmoid=p)
    names = [k for k in o.errors if o.errors[k] > o.limit]
    fw = Result({k: o.framework.arrays[k] for k in names})
    return _core_compare(fw, Result({k: ref.arrays[k] for k in names}), case)


def _core_compare(fw, ref, case):
    from ._core import compare
    return compare(fw, ref, case.dtype, operand_scales(_bfocal_ref)(case)).ok


def _exact_sigmoid_focal(case, alpha=None):
    from ..losses.sigmoid_focal_loss import sigmoid_focal_loss_value_and_grad
    v, g = sigmoid_focal_loss_value_and_grad(case.x, case.targets, alpha=alpha,
                                             gamma=case.kwargs.get("gamma", 2.0))
    return Result({"value": v, "grad": g})


def _exact_softmax_focal(case, alpha=1.0):
    from ..losses.softmax_focal_loss import softmax_focal_loss_value_and_grad
    rows, g = softmax_focal_loss_value_and_grad(case.x, case.targets,
                                                gamma=case.kwargs.get("gamma", 2.0),
                                                reduction="none")
    N = case.x.shape[0]
    return Result({"value": alpha * np.mean(rows), "grad": alpha * g / N})


def _exact_kl(case):
    from ..losses.kl_divergence import kl_divergence_value_and_grad
    with np.errstate(divide="ignore"):
        logp = np.log(case.x.astype(np.float64))
    rows, g = kl_divergence_value_and_grad(logp, case.targets.astype(np.float64),
                                           reduction="none")
    N = case.x.shape[0]
    return Result({"value": np.mean(rows), "grad": g / case.x / N})


def known() -> list[Known]:
    lg = " (from_logits)"
    pr = " (probabilities)"
    return [
        Known("keras-scce-neginf", "defect",
              "SparseCategoricalCrossentropy(from_logits=True), run eagerly (not under "
              "jax.jit): NaN loss when any non-target logit is -inf (one_hot(y) * "
              "log_softmax evaluates 0 * -inf; XLA rewrites it away under jit)",
              SCCE + lg, "same mechanism as optax#896",
              "The loss log-sum-exp(x) - x_y is finite; the gradient is correct.  The sweep "
              "runs jitted (as model.fit does), so only the eager probe shows it.",
              applies=nan_with_neginf, probe=_c(np.array([[0.0, -np.inf]]), np.array([0]),
                                                from_logits=True, flags=(EAGER,))),
        Known("keras-cce-neginf", "defect",
              "CategoricalCrossentropy(from_logits=True): NaN loss when a logit is -inf and "
              "its target is 0 (0 * -inf)", CCE + lg, "same as optax#896",
              applies=nan_with_neginf, probe=_c(np.array([[0.0, -np.inf]]), np.array([[1.0, 0.0]]),
                                        from_logits=True)),
        Known("keras-23451", "defect",
              "CategoricalCrossentropy(label_smoothing, axis != -1) takes C from the last "
              "axis instead of the class axis", CCE + lg, "keras-team/keras#23451",
              probe=_c(np.zeros((2, 3)), np.array([[1.0, 0, 1], [0, 1, 0]]), from_logits=True,
                       label_smoothing=0.5, axis=0)),
        Known("keras-mean-float32", "defect",
              "BinaryCrossentropy(dtype='float64') is only float32-accurate: keras.ops.mean "
              "on the JAX backend computes in result_type(float64, 'float32'), which Keras "
              "maps to float32 (BIT64_TO_BIT32_DTYPE), then casts back",
              BCE, "keras/src/backend/jax/numpy.py mean, keras/src/backend/common/dtypes.py",
              "The loss's dtype argument is documented as the dtype of its computations; "
              "other Keras losses reduce with ops.sum and are float64-exact.  "
              "BinaryFocalCrossentropy reduces with ops.mean too.",
              applies=_float32_accurate, scope=(BFOCAL,),
              probe=_c(np.zeros((1, 2)), np.zeros((1, 2)), from_logits=True)),
        Known("keras-bfocal-nan-grad", "defect",
              "BinaryFocalCrossentropy(from_logits=True), gamma < 1 (0 included): NaN gradient "
              "with a finite loss at a saturated correct logit, where sigmoid(x) rounds to 1 "
              "(to 0 for target 0): power(1 - p_t, gamma)' = gamma 0^(gamma-1) = inf times "
              "sigmoid'(x) = 0", BFOCAL, "keras/src/losses/losses.py binary_focal_crossentropy",
              "The exact derivative gamma sigma(x) (1 - sigma(x))^gamma (times the clipped "
              "BCE) tends to 0; the first NaN is at x = 36.73680056967711 (float64), "
              "16.635532 (float32) for y = 1.",
              applies=_focal_nan_grad,
              probe=_c(np.array([[37.0]]), np.array([[1.0]]), from_logits=True, gamma=0.0)),
        Known("keras-bfocal-probability-space", "defect",
              "BinaryFocalCrossentropy(from_logits=True) computes sigmoid(x) and then "
              "log(1 - p): the rounding of p to the dtype (spacing eps near 1) moves "
              "-log(1 - p), the loss of a wrong-side logit, by up to ~eps/(1 - p) -- 0.16 at "
              "x = 15 in float32 (14.84 instead of 15.00), ~1e-9 in float64",
              BFOCAL, "keras/src/losses/losses.py binary_focal_crossentropy",
              "from_logits=True documents logits as the input; BinaryCrossentropy(from_logits"
              "=True) uses log_sigmoid and is accurate.  The framework matches the convention "
              "evaluated at sigmoid(x) rounded to the dtype (the mechanism, checked on every "
              "case it explains); the exact convention uses log sigma(-x) = -softplus(x).",
              applies=_probability_space,
              probe=_c(np.array([[15.0]], np.float32), np.array([[0.0]], np.float32),
                       from_logits=True),
              check=lambda c, o: (not o.ok) and _probability_space(c, o)),
        Known("keras-bfocal-clip", "convention",
              "BinaryFocalCrossentropy(from_logits=True) clips sigmoid(x) to [1e-7, 1-1e-7]: "
              "beyond |x| ~ 16.1 the BCE factor is capped at -log(1e-7) = 16.12 and its "
              "derivative is 0", BFOCAL, "keras/src/backend/jax/nn.py binary_crossentropy",
              "The exact loss (the library's sigmoid_focal_loss, alpha=None) grows like |x|.",
              probe=_c(np.array([[-20.0]], np.float32), np.array([[1.0]], np.float32),
                       from_logits=True),
              exact=lambda c: _exact_sigmoid_focal(c)),
        Known("keras-bfocal-class-balancing", "convention",
              "BinaryFocalCrossentropy applies alpha only with apply_class_balancing=True "
              "(default False: no alpha), where torchvision and the library weight by "
              "alpha = 0.25 by default", BFOCAL, "keras/src/losses/losses.py",
              probe=_c(np.array([[0.5]], np.float32), np.array([[1.0]], np.float32),
                       from_logits=True),
              exact=lambda c: _exact_sigmoid_focal(c, alpha=0.25)),
        Known("keras-cfocal-alpha-multiplier", "convention",
              "CategoricalFocalCrossentropy: alpha (default 0.25) is a plain multiplier of "
              "every class's term -- a scalar scales the whole loss -- not a class balance",
              CFOCAL, "keras/src/losses/losses.py categorical_focal_crossentropy",
              "The library's softmax_focal_loss has no alpha (a per-class list is its "
              "weight).",
              probe=_c(np.array([[1.0, 0.0]]), np.array([[1.0, 0.0]]), from_logits=True),
              exact=lambda c: _exact_softmax_focal(c)),
        Known("keras-cfocal-clip", "convention",
              "CategoricalFocalCrossentropy(from_logits=True) clips softmax(x) to "
              "[1e-7, 1-1e-7]: a target class below 1e-7 costs at most alpha -log(1e-7) and "
              "gets gradient 0 from its log", CFOCAL,
              "keras/src/losses/losses.py categorical_focal_crossentropy",
              "Exact: alpha times the library's softmax_focal_loss.",
              probe=_c(np.array([[0.0, 20.0]]), np.array([[1.0, 0.0]]), from_logits=True),
              exact=lambda c: _exact_softmax_focal(c, alpha=c.kwargs.get("alpha", 0.25))),
        Known("keras-kl-clip", "convention",
              "KLDivergence takes probabilities (not log-probabilities) and clips y_true and "
              "y_pred to [1e-7, 1]: a zero target contributes 1e-7 log(1e-7 / p), not 0, and "
              "a zero prediction costs t log(t / 1e-7), not inf", KLD,
              "keras/src/losses/losses.py kl_divergence",
              "Exact: the library's kl_divergence at log(y_pred) (0 log 0 = 0).",
              probe=_c(np.array([[0.5, 0.5]]), np.array([[1.0, 0.0]])),
              exact=_exact_kl),
        Known("keras-clip-boundary-derivative", "convention",
              "at a probability exactly on the clip boundary (1e-7 or 1-1e-7 in the dtype) "
              "the gradient is halved: jnp.clip = min(max(.)) splits the derivative at a tie; "
              "PyTorch's clamp and the reference pass it through", BCE,
              "the derivative is undefined at the kink; both one-sided values are valid",
              applies=_at_clip_boundary,
              probe=_c(np.array([[1 - 1e-7]], np.float32), np.array([[0.0]], np.float32)),
              check=lambda c, o: (not o.ok) and _at_clip_boundary(c, o),
              exact=lambda c: _bce_ref(c)),
        Known("keras-cce-clip-boundary-derivative", "convention",
              "CategoricalCrossentropy(from_logits=False): at a (renormalised) probability on "
              "the clip boundary the gradient is halved, as in keras-clip-boundary-derivative",
              CCE + pr, "the derivative is undefined at the kink; both one-sided values are "
              "valid", applies=_at_clip_boundary,
              probe=_c(np.array([[1e-7, 1 - 1e-7]]), np.array([[1.0, 0.0]])),
              check=lambda c, o: (not o.ok) and _at_clip_boundary(c, o),
              exact=lambda c: _cce_ref(c)),
        Known("keras-scce-clip-boundary-derivative", "convention",
              "SparseCategoricalCrossentropy(from_logits=False): at a (renormalised) "
              "probability on the clip boundary the gradient is halved, as in "
              "keras-clip-boundary-derivative", SCCE + pr,
              "the derivative is undefined at the kink; both one-sided values are valid",
              applies=_at_clip_boundary,
              probe=_c(np.array([[1e-7, 1 - 1e-7]]), np.array([0])),
              check=lambda c, o: (not o.ok) and _at_clip_boundary(c, o),
              exact=lambda c: _scce_ref(c)),
        Known("keras-scce-label-range", "validation",
              "SparseCategoricalCrossentropy accepts a class index >= C: the one-hot row is "
              "all zeros and the loss is silently 0", SCCE + lg, "",
              probe=_c(np.array([[0.0, 1.0]]), np.array([2]), from_logits=True)),
        Known("keras-scce-label-negative", "validation",
              "SparseCategoricalCrossentropy accepts a negative class index (loss 0)",
              SCCE + lg, "", probe=_c(np.array([[0.0, 1.0]]), np.array([-1]),
                                      from_logits=True)),
        Known("keras-bce-prob-range", "validation",
              "BinaryCrossentropy(from_logits=False) accepts y_pred outside [0, 1] (clipped "
              "silently)", BCE + pr, "", probe=_c(np.array([[1.5]]), np.array([[1.0]]))),
        Known("keras-clip", "convention",
              "from_logits=False renormalises the probabilities and clips them to "
              "[1e-7, 1-1e-7]: the loss is capped at -log(1e-7) = 16.12 and the gradient is 0 "
              "outside the clip range", CCE + pr, "keras/src/backend/jax/nn.py",
              probe=_c(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])), exact=_exact_cce),
        Known("keras-sum-over-batch-size", "convention",
              "default reduction sum_over_batch_size divides the sample-weighted sum by the "
              "number of examples, not by the sum of sample weights", SCCE + lg,
              "keras/src/losses/loss.py",
              probe=_c(np.zeros((2, 2)), np.array([0, 1]), from_logits=True,
                       sample_weight=np.array([1.0, 3.0])),
              exact=_weights_mean),
        Known("keras-all-masked-zero", "convention",
              "with ignore_class, a batch whose rows are all ignored has loss 0 (divide_no_nan), "
              "where PyTorch returns NaN", SCCE + lg, "keras/src/losses/loss.py apply_mask",
              probe=_c(np.zeros((2, 2)), np.array([-1, -1]), from_logits=True, ignore_class=-1),
              exact=_nan_mean),
        Known("keras-smoothing-binary", "convention",
              "BinaryCrossentropy label_smoothing moves each target to (1-eps) y + eps/2",
              BCE + lg, "keras/src/losses/losses.py",
              probe=_c(np.array([[2.0, -1.0]], np.float32), np.array([[1.0, 0.0]], np.float32),
                       from_logits=True, label_smoothing=0.4),
              exact=_off_class_binary),
    ]
