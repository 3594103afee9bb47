"""optax adapter: the softmax and sigmoid cross-entropies of ``optax.losses``.

optax returns per-example losses (no reduction); gradients are
``jax.grad`` of their sum, computed inside ``jax.enable_x64(True)`` so that
float64 cases run in float64 without switching 64-bit mode on for the rest of
the process.  The reference is :func:`ce_reference.conventions.softmax_cross_entropy_rows`
/ :func:`~ce_reference.conventions.sigmoid_cross_entropy_elements` (the exact
formulas with 0 log 0 = 0), or the core library's loss evaluated with
``reduction="none"`` (``sigmoid_focal_loss``, ``poly1_cross_entropy``,
``kl_divergence``: the same per-element / per-row values optax returns).
``kl_divergence_with_log_targets`` cases hold probability targets ``t``; optax
and the reference get ``log t`` (``-inf`` where ``t = 0``).
"""

from __future__ import annotations

import numpy as np

from .. import conventions as conv
from ..cases import Case, regions
from ..losses.sigmoid_focal_loss import sigmoid_focal_loss_value_and_grad
from ..losses.kl_divergence import kl_divergence_value_and_grad
from ..losses.poly1_cross_entropy import poly1_cross_entropy_value_and_grad
from ._core import Known, Result, Target, operand_scales

NAME = "optax"
_optax = _jax = _jnp = None


def load() -> str:
    global _optax, _jax, _jnp
    import jax
    import jax.numpy as jnp
    import optax
    _optax, _jax, _jnp = optax, jax, jnp
    return f"{optax.__version__} (jax {jax.__version__})"


_JIT: dict = {}


def _compiled(fn, tangent):
    """``jax.jit`` of (value, grad of the sum) -- or (value, jvp) -- of ``fn(x, y)``.

    Jitted as users run it; compiled once per function, shape and dtype.
    """
    key = (fn, tangent)
    if key not in _JIT:
        if tangent:
            def vt(x, y, t):
                return _jax.jvp(lambda z: fn(z, y), (x,), (t,))
            _JIT[key] = _jax.jit(vt)
        else:
            def vg(x, y):
                return fn(x, y), _jax.grad(lambda z: _jnp.sum(fn(z, y)))(x)
            _JIT[key] = _jax.jit(vg)
    return _JIT[key]


def _run(fn, case: Case, tangent=False) -> Result:
    with _jax.enable_x64(True):
        x, y = _jnp.asarray(case.x), _jnp.asarray(case.targets)
        if tangent:
            v, t = _compiled(fn, True)(x, y, _jnp.asarray(_tangent(case)))
            return Result({"value": np.asarray(v), "jvp": np.asarray(t)})
        v, g = _compiled(fn, False)(x, y)
        return Result({"value": np.asarray(v), "grad": np.asarray(g)})


def _tangent(case):
    """A fixed tangent direction for forward mode: (k + 1) / C along the class axis."""
    C = case.x.shape[-1]
    return np.broadcast_to((np.arange(C) + 1.0) / C, case.x.shape).astype(case.x.dtype)


def _rows_ref(case):
    rows, g = conv.softmax_cross_entropy_rows(case.x, case.targets)
    return Result({"value": rows, "grad": g})


def _jvp_ref(case):
    rows, g = conv.softmax_cross_entropy_rows(case.x, case.targets)
    return Result({"value": rows, "jvp": np.sum(g * _tangent(case), axis=-1)})


def _jvp_scales(case):
    s = operand_scales(_rows_ref)(case)
    q = np.asarray(case.targets, np.float64)
    s["jvp"] = float(np.max(np.sum(np.abs(q), axis=-1))) if q.size else 0.0
    return s


def _sig_ref(case):
    loss, g = conv.sigmoid_cross_entropy_elements(case.x, case.targets)
    return Result({"value": loss, "grad": g})


_SMOOTHED: dict = {}


def _smooth_run(case):
    a = case.kwargs["label_smoothing"]
    if a not in _SMOOTHED:
        _SMOOTHED[a] = lambda x, y: _optax.softmax_cross_entropy(x, _optax.smooth_labels(y, a))
    return _run(_SMOOTHED[a], case)


def _smooth_ref(case):
    q = conv.smooth_labels(case.targets, case.kwargs["label_smoothing"], scheme="uniform")
    rows, g = conv.softmax_cross_entropy_rows(case.x, q)
    return Result({"value": rows, "grad": g})


_BOUND: dict = {}


def _bound(name, case, keys, targets=None):
    """``optax.losses.<name>`` with the case's options ``keys`` bound (one function object
    per option values, so each is compiled once); ``targets`` maps the case's targets to the
    argument optax takes."""
    opts = tuple((k, case.kwargs[k]) for k in keys if k in case.kwargs)
    key = (name, opts, targets)
    if key not in _BOUND:
        fn = getattr(_optax.losses, name)
        kw = dict(opts)
        if targets == "log":
            _BOUND[key] = lambda x, y: fn(x, _jnp.log(y), **kw)
        else:
            _BOUND[key] = lambda x, y: fn(x, y, **kw)
    return _BOUND[key]


def _focal_run(case):
    return _run(_bound("sigmoid_focal_loss", case, ("alpha", "gamma")), case)


def _focal_ref(case):
    v, g = sigmoid_focal_loss_value_and_grad(case.x, case.targets,
                                             alpha=case.kwargs.get("alpha"),
                                             gamma=case.kwargs.get("gamma", 2.0),
                                             reduction="none")
    return Result({"value": v, "grad": g})


def _poly_run(case):
    return _run(_bound("poly_loss_cross_entropy", case, ("epsilon",)), case)


def _poly_ref(case):
    v, g = poly1_cross_entropy_value_and_grad(case.x, case.targets,
                                              epsilon=case.kwargs.get("epsilon", 2.0),
                                              reduction="none")
    return Result({"value": v, "grad": g})


def _kl_run(case):
    return _run(_bound("kl_divergence", case, ()), case)


def _kl_ref(case):
    v, g = kl_divergence_value_and_grad(case.x, case.targets, reduction="none")
    return Result({"value": v, "grad": g})


def _kl_log_run(case):
    return _run(_bound("kl_divergence_with_log_targets", case, (), targets="log"), case)


def _kl_log_ref(case):
    with np.errstate(divide="ignore"):
        log_t = np.log(np.asarray(case.targets))
    v, g = kl_divergence_value_and_grad(case.x, log_t, log_target=True, reduction="none")
    return Result({"value": v, "grad": g})


SCE = "softmax_cross_entropy"
SCE_INT = "softmax_cross_entropy_with_integer_labels"
SAFE = "safe_softmax_cross_entropy"
SAFE_JVP = "safe_softmax_cross_entropy (forward mode, jax.jvp)"
SIG = "sigmoid_binary_cross_entropy"
SMOOTH = "smooth_labels + softmax_cross_entropy"
FOCAL = "sigmoid_focal_loss"
POLY = "poly_loss_cross_entropy"
KL = "kl_divergence"
KL_LOG = "kl_divergence_with_log_targets"


def targets() -> list[Target]:
    logit_regions = regions.LOGIT_REGIONS[:-1]
    T = []
    for name in (SCE, SAFE):
        for tk in ("onehot", "soft"):
            fn = getattr(_optax, name)
            T.append(Target(f"{name}" + (" one-hot" if tk == "onehot" else ""),
                            "conventions.softmax_cross_entropy_rows (no-reduction)",
                            lambda c, fn=fn: _run(fn, c), _rows_ref,
                            regions.categorical("logits", tk), [{}], logit_regions,
                            operand_scales(_rows_ref), repeats=2))
    T.append(Target(SAFE_JVP, "directional derivative of softmax_cross_entropy_rows",
                    lambda c: _run(_optax.safe_softmax_cross_entropy, c, tangent=True),
                    _jvp_ref, regions.categorical("logits", "soft"), [{}], logit_regions,
                    _jvp_scales))
    T.append(Target(SCE_INT, "conventions.softmax_cross_entropy_rows, index targets "
                             "(no-reduction)",
                    lambda c: _run(_optax.softmax_cross_entropy_with_integer_labels, c),
                    _rows_ref, regions.categorical("logits", "index"), [{}], logit_regions,
                    operand_scales(_rows_ref), repeats=2))
    T.append(Target(SMOOTH, "smooth_labels(scheme='uniform') + softmax_cross_entropy_rows",
                    _smooth_run, _smooth_ref,
                    regions.categorical("logits", "onehot", fixed=("label_smoothing",)),
                    [{"label_smoothing": 0.1}, {"label_smoothing": 0.7}], logit_regions[:6],
                    operand_scales(_smooth_ref)))
    for tk in ("hard", "soft"):
        T.append(Target(SIG + (" hard targets" if tk == "hard" else ""),
                        "conventions.sigmoid_cross_entropy_elements (no-reduction)",
                        lambda c: _run(_optax.sigmoid_binary_cross_entropy, c), _sig_ref,
                        regions.binary("logits", tk), [{}], regions.BINARY_LOGIT_REGIONS,
                        operand_scales(_sig_ref), repeats=2))
    for tk in ("hard", "soft"):
        T.append(Target(FOCAL + (" hard targets" if tk == "hard" else ""),
                        "core sigmoid_focal_loss, reduction='none' (optax's default alpha=None: "
                        "no class balancing)",
                        _focal_run, _focal_ref, regions.binary("logits", tk),
                        [{}, {"alpha": 0.25}, {"gamma": 0.5}, {"gamma": 0.0},
                         {"alpha": 0.25, "gamma": 1.0}],
                        regions.BINARY_LOGIT_REGIONS, operand_scales(_focal_ref)))
    for tk in ("onehot", "soft"):
        T.append(Target(POLY + (" one-hot" if tk == "onehot" else ""),
                        "core poly1_cross_entropy, reduction='none' (per row, no weights)",
                        _poly_run, _poly_ref, regions.categorical("logits", tk),
                        [{}, {"epsilon": -1.0}], logit_regions, operand_scales(_poly_ref)))
        T.append(Target(KL + (" one-hot" if tk == "onehot" else ""),
                        "core kl_divergence, reduction='none' (per row); arguments "
                        "(log_predictions, targets)",
                        _kl_run, _kl_ref, regions.categorical("log_probs", tk), [{}],
                        logit_regions, operand_scales(_kl_ref)))
        T.append(Target(KL_LOG + (" one-hot" if tk == "onehot" else ""),
                        "core kl_divergence(log_target=True), reduction='none' (per row); "
                        "the targets passed as log t",
                        _kl_log_run, _kl_log_ref, regions.categorical("log_probs", tk), [{}],
                        logit_regions, operand_scales(_kl_log_ref)))
    return T


def _c(x, y, **opts):
    """A catalogue probe (its structure comes from the target's generator)."""
    return lambda: Case(x=np.asarray(x), targets=np.asarray(y), kwargs=dict(opts), region="probe")


def _neginf_zero_label(case, o):
    return bool(np.any(np.isneginf(case.x) & (case.targets == 0))) and (
        o.nonfinite.get("value", False) or o.nonfinite.get("jvp", False))


def _nan_at_zero_log_target(case, o):
    """A NaN value where the reference's is finite, on a case with a zero target (a -inf
    log-target)."""
    if o.framework is None or "value" not in o.framework.arrays:
        return False
    a = np.asarray(o.framework.arrays["value"], np.float64)
    r = np.asarray(o.reference.arrays["value"], np.float64)
    return bool(np.any(np.asarray(case.targets) == 0)) and bool(np.any(np.isnan(a)
                                                                         & np.isfinite(r)))


def _off_class_ref(case):
    q = conv.smooth_labels(case.targets, case.kwargs["label_smoothing"], scheme="off_class")
    rows, g = conv.softmax_cross_entropy_rows(case.x, q)
    return Result({"value": rows, "grad": g})


def known() -> list[Known]:
    return [
        Known("optax-896", "defect",
              "softmax_cross_entropy: NaN loss when a logit is -inf and its label is 0 "
              "(0 * -inf); the separate safe_softmax_cross_entropy was added instead of a fix",
              SCE, "google-deepmind/optax#896, PR #898",
              "The loss is finite (0 log 0 = 0); the reverse-mode gradient is correct.",
              applies=_neginf_zero_label,
              probe=_c(np.array([[0.0, -np.inf]]), np.array([[1.0, 0.0]]))),
        Known("optax-1762", "defect",
              "safe_softmax_cross_entropy: its custom JVP gives a NaN tangent when a logit "
              "is -inf (forward mode only; jax.grad is fine)",
              SAFE_JVP, "google-deepmind/optax PR #1762 (open)",
              "The directional derivative sum_k (p_k sum(q) - q_k) t_k is finite.",
              applies=_neginf_zero_label,
              probe=_c(np.array([[0.0, -np.inf]]), np.array([[1.0, 0.0]]))),
        Known("optax-poly-neginf", "defect",
              "poly_loss_cross_entropy: NaN loss (finite gradient) when a logit is -inf and "
              "its label is 0 (a masked class): its softmax_cross_entropy term evaluates "
              "0 * -inf, as in optax-896",
              POLY, "optax/losses/_classification.py poly_loss_cross_entropy",
              "The loss is CE + eps sum q (1 - p): finite (0 log 0 = 0); the gradient "
              "p - q + eps (p sum(q p) - q p) is finite, so the NaN loss trains silently.",
              applies=_neginf_zero_label,
              probe=_c(np.array([[0.0, -np.inf]]), np.array([[1.0, 0.0]]))),
        Known("optax-kl-zero-target-neginf", "defect",
              "kl_divergence: NaN loss (finite gradient -t) when a target is 0 and its "
              "log-prediction is -inf: targets * (0 - log_predictions) evaluates 0 * inf",
              KL, "optax/losses/_classification.py kl_divergence",
              "The where(targets == 0, 0, log(targets)) guard covers log 0 but not the "
              "-log_predictions factor; the term is 0 (a zero target carries no mass).",
              applies=_neginf_zero_label,
              probe=_c(np.array([[-np.inf, 0.0]]), np.array([[0.0, 1.0]]))),
        Known("optax-kl-log-target-neginf", "defect",
              "kl_divergence_with_log_targets: NaN loss (finite gradient -exp(lt)) at any "
              "-inf log-target: exp(lt) * (lt - log_predictions) evaluates 0 * -inf",
              KL_LOG, "optax/losses/_classification.py kl_divergence_with_log_targets",
              "A -inf log-target is a zero probability: its term is 0.  Every one-hot target "
              "written in log space is NaN.",
              applies=_nan_at_zero_log_target,
              probe=_c(np.array([[-1.0, -0.5]]), np.array([[0.0, 1.0]]))),
        Known("optax-int-label-negative", "validation",
              "softmax_cross_entropy_with_integer_labels accepts a negative label: -1 wraps "
              "to the last class (NumPy indexing) and a finite loss is returned",
              SCE_INT, "JAX take_along_axis semantics",
              probe=_c(np.array([[0.0, 1.0]]), np.array([-1]))),
        Known("optax-int-label-range", "defect",
              "softmax_cross_entropy_with_integer_labels: a label >= C gives a NaN loss "
              "(JAX out-of-bounds 'fill') with the finite gradient softmax(x), not an error: "
              "the batch trains silently on garbage",
              SCE_INT, "JAX take_along_axis mode='fill'",
              probe=_c(np.array([[0.0, 1.0]]), np.array([2]))),
        Known("optax-label-range", "validation",
              "softmax_cross_entropy accepts labels outside [0, 1] (documented: valid "
              "probability distributions)", SCE + " one-hot", "",
              probe=_c(np.array([[0.0, 1.0]]), np.array([[1.5, -0.5]]))),
        Known("optax-smoothing-uniform", "convention",
              "smooth_labels spreads alpha/C over all classes (true class 1-alpha+alpha/C), "
              "not alpha/(C-1) over the others (Megatron-LM, t5x)",
              SMOOTH, "optax/losses/_smoothing.py",
              probe=_c(np.array([[2.0, 0.0, -1.0]]), np.array([[1.0, 0.0, 0.0]]),
                       label_smoothing=0.3),
              exact=_off_class_ref),
    ]
