"""optax adapter: the softmax and sigmoid cross-entropies of ``optax.losses``.

optax returns per-example losses (no reduction); gradients are
``jax.grad`` of their sum, computed inside ``jax.enable_x64(True)`` so that
float64 cases run in float64 without switching 64-bit mode on for the rest of
the process.  The reference is :func:`ce_reference.conventions.softmax_cross_entropy_rows`
/ :func:`~ce_reference.conventions.sigmoid_cross_entropy_elements` (the exact
formulas with 0 log 0 = 0).
"""

from __future__ import annotations

import numpy as np

from .. import conventions as conv
from ..cases import Case, regions
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


SCE = "softmax_cross_entropy"
SCE_INT = "softmax_cross_entropy_with_integer_labels"
SAFE = "safe_softmax_cross_entropy"
SAFE_JVP = "safe_softmax_cross_entropy (forward mode, jax.jvp)"
SIG = "sigmoid_binary_cross_entropy"
SMOOTH = "smooth_labels + softmax_cross_entropy"


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
    return T


def _c(x, y, **opts):
    """A catalogue probe (its structure comes from the target's generator)."""
    return lambda: Case(x=np.asarray(x), targets=np.asarray(y), kwargs=dict(opts), region="probe")


def _neginf_zero_label(case, o):
    return bool(np.any(np.isneginf(case.x) & (case.targets == 0))) and (
        o.nonfinite.get("value", False) or o.nonfinite.get("jvp", False))


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
