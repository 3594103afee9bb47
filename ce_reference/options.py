"""The keyword options the losses share, each with its validator and its verifier sampler.

A loss lists its options in its spec (:class:`ce_reference.spec.LossSpec`);
the common ones are defined here once, so that ``weight`` means the same thing,
is validated by the same code and is sampled the same way by the verifier for
every loss that has it.  A loss with an option of its own defines that
:class:`~ce_reference.spec.Option` in its module.

Samplers take ``(rng, draw)``: a seeded ``numpy.random.Generator`` and the
:class:`Draw` of the case being built (its dtype, shape, class axis, targets,
index within the row), and return the option's value.  A sampler marked
``targets=True`` (``ignore_index``) also rewrites ``draw.index``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from . import _validation as V
from .spec import Option

#: Label smoothing values the verifier cycles through.
LABEL_SMOOTHING_SAMPLES = (0.1, 0.5, 1.0)
#: A clipping ``eps`` valid in float32 and float64 (``1 - 1e-7 != 1`` in both).
CLIP_EPS = 1e-7
#: PyTorch's default ``ignore_index``: the negative sentinel the verifier uses.
IGNORE_SENTINEL = -100
#: Focusing exponents the verifier cycles through (case by case): 0 < gamma < 1, where the
#: textbook gradient has ``(1 - p)^(gamma - 1)``, first, so that the first case of every row
#: (the contract's) has it; 0 (the plain cross-entropy) and the usual 1, 2, 5.
GAMMA_SAMPLES = (0.5, 2.0, 0.0, 1.0, 5.0)


@dataclass
class Draw:
    """What a sampler may look at while one verifier case is being built.

    ``shape`` is the input's shape; ``batch`` the per-example shape (class-last
    order for class-axis losses) and ``C`` the number of classes (None for
    elementwise losses); ``index`` the class ids of the rows (class-axis losses,
    before targets of other kinds are built from them); ``k`` the layout's
    position in its list and ``i`` the case number within its row; ``region``
    the row's input region (``"random"``, ``"extreme"``, ``"masked"``, ...).
    """

    dtype: np.dtype
    shape: tuple
    batch: tuple
    C: int | None
    k: int
    i: int
    target_kind: str
    index: np.ndarray | None = None
    kwargs: dict = field(default_factory=dict)
    region: str | None = None


def mixed_weights(rng, shape, dtype):
    """Non-negative weights mixing 0, 1e-3, uniform(0.5, 2) and 1e3 (1 in 8 each of the
    special values)."""
    choice = rng.integers(0, 8, shape)
    w = rng.uniform(0.5, 2.0, shape)
    w = np.where(choice == 0, 0.0, w)
    w = np.where(choice == 1, 1e-3, w)
    w = np.where(choice == 2, 1e3, w)
    return w.astype(dtype)


def _sample_class_weight(rng, draw):
    w = mixed_weights(rng, (draw.C,), draw.dtype)
    if draw.target_kind == "index":
        kept = draw.index.reshape(-1)
        ignore = draw.kwargs.get("ignore_index")
        if ignore is not None:
            kept = kept[kept != ignore]
        if not (w[kept] > 0).any():       # a mean needs a positive denominator
            w[kept[0]] = 1
    return w


def _sample_element_weight(rng, draw):
    return mixed_weights(rng, draw.shape, draw.dtype)


def _sample_pos_weight(rng, draw):
    shape = draw.shape[-1:] if len(draw.shape) else ()
    return np.asarray(rng.choice([0.5, 1.0, 2.0, 3.0, 1e-3, 1e3], size=shape), draw.dtype)


def _sample_ignore_index(rng, draw):
    """A negative sentinel or a valid class; about 30% of the rows dropped, one kept."""
    ignore = IGNORE_SENTINEL if (draw.C == 1 or draw.k % 2 == 0) else 0
    drop = rng.uniform(size=draw.batch) < 0.3
    idx = np.where(drop, 0 if ignore == 0 else ignore, draw.index)
    flat = idx.reshape(-1)
    if not (flat != ignore).any():        # keep at least one row
        flat[0] = 1 if ignore == 0 else 0
        idx = flat.reshape(draw.batch)
    draw.index = idx
    return ignore


def _sample_label_smoothing(rng, draw):
    return LABEL_SMOOTHING_SAMPLES[draw.k % len(LABEL_SMOOTHING_SAMPLES)]


def _sample_eps(rng, draw):
    return CLIP_EPS


def _sample_gamma(rng, draw):
    return GAMMA_SAMPLES[draw.i % len(GAMMA_SAMPLES)]


def check_gamma(gamma) -> float:
    """The focusing exponent of the focal losses: a finite real ``>= 0``."""
    return V.check_float("gamma", gamma, 0.0, math.inf, hi_open=True)


def _negative(x):
    return -np.ones(np.shape(x))


AXIS = Option("axis", -1, validate=V.normalize_axis,
              invalid=((0.5, TypeError), (lambda x: np.ndim(x), ValueError)))
CLASS_WEIGHT = Option("weight", None, array=True, shape="classes", validate=V.class_weight,
                      sample=_sample_class_weight,
                      invalid=((lambda x: np.ones(np.shape(x)[-1] + 1), ValueError),
                               (lambda x: -np.ones(np.shape(x)[-1]), ValueError)))
ELEMENT_WEIGHT = Option("weight", None, array=True, shape="input",
                        validate=V.check_nonnegative_finite, sample=_sample_element_weight,
                        invalid=((_negative, ValueError),
                                 (lambda x: np.ones(np.size(x) + 1), ValueError)))
POS_WEIGHT = Option("pos_weight", None, array=True, shape="last",
                    validate=V.check_nonnegative_finite, sample=_sample_pos_weight,
                    invalid=((_negative, ValueError),))
IGNORE_INDEX = Option("ignore_index", None, validate=V.check_ignore_index,
                      sample=_sample_ignore_index, targets=True,
                      invalid=((1.5, TypeError), (True, TypeError)))
LABEL_SMOOTHING = Option("label_smoothing", 0.0, validate=V.check_label_smoothing,
                         sample=_sample_label_smoothing,
                         invalid=((1.5, ValueError), (-0.1, ValueError), ("x", TypeError)))
EPS = Option("eps", None, validate=V.check_eps, sample=_sample_eps,
             invalid=((0.7, ValueError), ("small", TypeError), (1e-300, ValueError)))

# The focusing exponent of the focal losses (sigmoid and softmax): (1 - p_t)^gamma.
GAMMA = Option("gamma", 2.0, validate=check_gamma, sample=_sample_gamma,
               invalid=((-1.0, ValueError), (float("inf"), ValueError), (float("nan"), ValueError),
                        (True, TypeError), ("2", TypeError), (None, TypeError)))
