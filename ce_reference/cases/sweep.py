"""The verifier's rows: seeded, reproducible cases of a loss, drawn from its spec.

A *row* of the report is ``loss x option set x dtype x region``; case ``i`` of
a row is drawn from ``numpy.random.default_rng([seed, crc32(row key), i])``,
so any single case can be regenerated from its row and number alone
(:func:`make_case`).  The user audit (:func:`ce_reference.audit`) draws the same
rows.  Nothing here knows a loss by name: a case is built from
the loss's spec -- its structure (elementwise or over a class axis), the
domain of its input (logits, probabilities, log-probabilities), the target
kind of the option set, and the samplers of its options
(:mod:`ce_reference.options`) -- in a fixed order: targets (and the options
that mark them, ``ignore_index``), the input, the other options in signature
order, the direction ``v``.

Shapes come from a small fixed list of :class:`Layout` s (shape, class axis,
reduction) per loss structure: scalars to ``(N, C)`` and ``(N, C, d)`` with a
non-last class axis, ``C`` from 1 to 1000.  Keeping the list short keeps the
number of distinct JAX compilations (about 0.3 s each) small.  Values:

* logits, ``random``: ``N(0, s)`` with ``s`` cycling through 1, 3, 10, 30;
* logits, ``extreme``: rows with one dominant logit (right or wrong class,
  +-L for L in :data:`DOMINANT`), all-equal rows, +-1e4, values near exp's
  overflow thresholds (88.72 in float32, 709.78 in float64) and tiny spreads;
* probabilities, ``random``: uniform / Dirichlet rows;
* probabilities, ``near 0/1``: 1e-300 .. nextafter(1, 0) (per dtype);
* probabilities, ``clip``: exactly at, just inside and outside ``[eps, 1-eps]``,
  and 0 and 1 (option sets with ``eps`` only);
* log-probabilities: the logs of the probability rows, and ``log_softmax`` of
  the extreme logit rows (``-inf`` for a masked class).  Points on a clip boundary
  are flagged in :attr:`Case.kink`: finite differences check them one-sided.

Targets: hard 0/1 or soft (binary); class indices, one-hot or Dirichlet soft
rows, including all-zero rows (categorical).  Options: weights drawn from
{0, 1e-3, U(0.5, 2), 1e3}, ``pos_weight``, ``ignore_index`` (a negative
sentinel or a valid class), ``label_smoothing`` in {0.1, 0.5, 1}, every
reduction, float32 and float64.
"""

from __future__ import annotations

import zlib

import numpy as np

from ..options import Draw
from ..spec import LossSpec, OptionSet
from . import values as V
from .case import Case, Layout

DTYPES = (np.dtype(np.float64), np.dtype(np.float32))
LOGIT_SCALES = V.LOGIT_SCALES

_L = Layout
ELEMENTWISE_LAYOUTS = {
    "random": (_L((), None, "sum"), _L((7,), None, "mean"), _L((4, 3), None, "none"),
               _L((2, 3, 4), None, "mean"), _L((300,), None, "sum")),
    "extreme": (_L((7,), None, "mean"), _L((4, 3), None, "none"), _L((2, 3, 4), None, "mean")),
}
ELEMENTWISE_LAYOUTS["near 0/1"] = ELEMENTWISE_LAYOUTS["extreme"]
ELEMENTWISE_LAYOUTS["clip"] = ELEMENTWISE_LAYOUTS["extreme"]

CLASS_LAYOUTS = {
    "random": (_L((5,), -1, "sum"), _L((6, 4), -1, "mean"), _L((3, 4, 2), 1, "none"),
               _L((4, 6), 0, "mean"), _L((2, 1000), -1, "mean"), _L((5, 1), -1, "sum")),
    "extreme": (_L((6, 4), -1, "mean"), _L((3, 4, 2), 1, "none"), _L((5,), -1, "sum")),
}
CLASS_LAYOUTS["near 0/1"] = CLASS_LAYOUTS["extreme"]
CLASS_LAYOUTS["clip"] = CLASS_LAYOUTS["extreme"]

# Linear: features (..., H) and V classes.  Small enough for the mpmath oracle (its cost is
# N V H products); in ``extreme`` the rows are at most H (see _linear_extreme).
LINEAR_LAYOUTS = {
    "random": (_L((4, 6), -1, "mean", 5), _L((2, 3, 8), -1, "none", 7), _L((5,), -1, "sum", 9),
               _L((4, 6), -1, "mean", 200), _L((3, 4), -1, "sum", 1)),
    "extreme": (_L((4, 6), -1, "mean", 5), _L((3, 8), -1, "none", 12),
                _L((2, 2, 4), -1, "sum", 6)),
}
#: The keywords of the linear structure (PyTorch's names): the weight and bias of the head.
LINEAR_WEIGHT, LINEAR_BIAS = "linear_weight", "linear_bias"


def batch_shape(spec: LossSpec, case: Case) -> tuple:
    """Shape of the per-example losses of ``case``."""
    if spec.structure == "elementwise":
        return case.x.shape
    if spec.structure == "linear":
        return case.x.shape[:-1]
    ax = case.kwargs.get("axis", -1) % case.x.ndim
    return case.x.shape[:ax] + case.x.shape[ax + 1:]


def rows(specs, dtypes=DTYPES):
    """All ``(spec, option_set, dtype, region)`` rows of the given losses."""
    out = []
    for spec in specs:
        for opt in spec.option_sets:
            for dtype in dtypes:
                for region in opt.regions:
                    out.append((spec, opt, np.dtype(dtype), region))
    return out


def _rng(seed, key, i):
    return np.random.default_rng([seed, zlib.crc32("|".join(map(str, key)).encode()), i])


def layouts(spec: LossSpec, region: str):
    table = {"elementwise": ELEMENTWISE_LAYOUTS, "classes": CLASS_LAYOUTS,
             "linear": LINEAR_LAYOUTS}[spec.structure]
    return table[region]


def make_case(spec: LossSpec, opt: OptionSet, dtype, region: str, i: int, seed: int = 0,
              layout: Layout | None = None) -> Case:
    """Case ``i`` of a row (deterministic in ``seed``, the row and ``i``)."""
    dtype = np.dtype(dtype)
    key = (spec.name, opt.name, dtype.name, region)
    rng = _rng(seed, key, i)
    choices = layouts(spec, region)
    k = i % len(choices)
    if layout is None:
        layout = choices[k]
    build = {"elementwise": _elementwise, "classes": _classes, "linear": _linear}[spec.structure]
    x, t, kw, kink = build(spec, opt, dtype, region, layout, rng, i, k)
    kw["reduction"] = _reduction(spec, layout, i)
    v = rng.standard_normal(x.shape).astype(dtype)
    axis = layout.axis % len(layout.shape) if spec.structure == "classes" else None
    ignore = next((o.name for o in spec.options if o.targets and o.name in kw), None)
    arrays = {o.name: o.shape for o in spec.options if o.array}
    linear = None
    if spec.structure == "linear":
        linear, arrays = LINEAR_WEIGHT, {LINEAR_WEIGHT: "classes", **arrays}
    return Case(spec.name, opt.name, dtype, region, i, seed, x, t, kw, v, kink, layout,
                axis=axis, domain=spec.input, target_kind=opt.targets, arrays=arrays,
                fixed=frozenset({"axis"} & kw.keys()), ignore=ignore, linear=linear)


def _reduction(spec, layout, i):
    """The layout's reduction; a loss's own further reductions (``batchmean``) take every
    other ``mean`` case; a reduction the loss lacks becomes its default."""
    extra = [r for r in spec.reductions if r not in ("mean", "sum", "none")]
    if layout.reduction == "mean" and extra and i % 2 == 1:
        return extra[(i // 2) % len(extra)]
    return layout.reduction if layout.reduction in spec.reductions else spec.reductions[0]

def _sample_options(spec, opt, rng, draw, kw, targets_stage):
    """Draw the options of the set in signature order (``targets_stage``: only those
    marking the targets, else only the others) into ``kw``."""
    for o in spec.options:
        if o.name in opt.options and o.sample is not None and o.targets == targets_stage:
            kw[o.name] = o.sample(rng, draw)


def _ordered(spec, kw):
    """kwargs in the loss's signature order."""
    return {name: kw[name] for name in spec.option_names if name in kw}


# --------------------------------------------------------------------------- elementwise

def _elementwise(spec, opt, dtype, region, layout, rng, i, k):
    shape = layout.shape
    if opt.targets == "hard":
        t = rng.integers(0, 2, shape).astype(dtype)
    else:
        t = rng.uniform(0, 1, shape)
        pick = rng.integers(0, 5, shape)
        t = np.where(pick == 0, 0.0, np.where(pick == 1, 1.0, np.where(pick == 2, 0.5, t)))
        t = t.astype(dtype)
    if spec.input == "logits":
        if region == "random":
            x = V.normal(rng, shape, LOGIT_SCALES[i % len(LOGIT_SCALES)])
        else:
            x = rng.choice(V.ELEMENT_EXTREME, size=shape) * rng.choice([-1.0, 1.0], size=shape)
            noise = rng.integers(0, 4, shape) == 0
            x = np.where(noise, rng.normal(0, 3, shape), x)
        x = np.asarray(x, dtype=dtype)
    else:
        if region == "random":
            x = V.uniform_probs(rng, shape, dtype)
        elif region == "near 0/1":
            x = rng.choice(V.near_01_pool(dtype), size=shape)
            x = np.where(rng.integers(0, 4, shape) == 0, V.uniform_probs(rng, shape, dtype), x)
        else:  # clip
            x = rng.choice(V.clip_pool(dtype), size=shape)
        x = np.asarray(x, dtype=dtype)
        if "eps" not in opt.options:
            x = V.clip_open(x, dtype)
        if spec.input == "log_probs":
            x = V.log(x).astype(dtype)
    kw = {}
    draw = Draw(dtype, shape, shape, None, k, i, opt.targets, kwargs=kw)
    _sample_options(spec, opt, rng, draw, kw, targets_stage=False)
    kink = V.kink_mask(x, dtype) if "eps" in kw else None
    return x, t, _ordered(spec, kw), kink


# --------------------------------------------------------------------------- class axis

def _classes(spec, opt, dtype, region, layout, rng, i, k):
    shape, axis = layout.shape, layout.axis
    ax = axis % len(shape)
    C = shape[ax]
    # Work with the class axis last, move it back at the end.
    mshape = shape[:ax] + shape[ax + 1:] + (C,)
    batch = mshape[:-1]
    nrows = int(np.prod(batch, dtype=np.int64))
    kw = {"axis": axis} if "axis" in spec.option_names else {}
    draw = Draw(dtype, shape, batch, C, k, i, opt.targets, index=rng.integers(0, C, batch),
                kwargs=kw)
    _sample_options(spec, opt, rng, draw, kw, targets_stage=True)
    t, right = _class_targets(opt.targets, draw.index, kw.get("ignore_index"), rng, mshape,
                              nrows, C, i, dtype)
    x, kink = _class_input(spec, opt, region, rng, mshape, nrows, C, i, right, dtype)
    _sample_options(spec, opt, rng, draw, kw, targets_stage=False)
    if "eps" in kw:
        kink = V.kink_mask(x, dtype)
    x = np.ascontiguousarray(np.moveaxis(x, -1, ax))
    if opt.targets != "index":
        t = np.ascontiguousarray(np.moveaxis(t, -1, ax))
    if kink is not None:
        kink = np.moveaxis(kink, -1, ax)
    return x, t, _ordered(spec, kw), kink


def _class_targets(kind, idx, ignore, rng, mshape, nrows, C, i, dtype):
    """Targets of a kind (class axis last) and the "right" class of each row."""
    if kind == "index":
        t = np.asarray(idx, dtype=np.int64)
        return t, np.where(t == (ignore if ignore is not None else -10**9), 0, t)
    if kind == "onehot":
        q = np.zeros(mshape)
        np.put_along_axis(q, idx[..., None], 1.0, axis=-1)
        return q.astype(dtype), idx
    q = V.soft_rows(rng, mshape, nrows, C, i)
    right = np.argmax(q, axis=-1)
    if kind == "log_soft":
        return V.log(q).astype(dtype), right
    return q.astype(dtype), right


def _class_input(spec, opt, region, rng, mshape, nrows, C, i, right, dtype):
    """The first argument (class axis last) for the spec's input domain."""
    if spec.input in ("logits", "log_probs") and region in ("random", "extreme"):
        if region == "random":
            z = V.normal(rng, mshape, LOGIT_SCALES[i % len(LOGIT_SCALES)])
        else:
            z = V.extreme_rows(rng, mshape, right)
        return (z if spec.input == "logits" else V.log_softmax(z)).astype(dtype), None
    if region == "random":
        alpha = (0.3, 1.0, 3.0)[i % 3]
        x = rng.dirichlet(np.full(C, alpha), size=nrows).reshape(mshape) if C > 1 else \
            rng.uniform(0.1, 1.0, mshape)
    elif region == "near 0/1":
        x = rng.choice(V.near_01_pool(dtype), size=mshape).astype(np.float64)
    else:
        x = rng.choice(V.clip_pool(dtype), size=mshape).astype(np.float64)
    x = x.astype(dtype)
    if "eps" not in opt.options:
        x = V.clip_open(x, dtype)
    return x, None


# --------------------------------------------------------------------------- linear

def _linear(spec, opt, dtype, region, layout, rng, i, k):
    """Features ``x`` ``(..., H)``, the head ``linear_weight`` ``(C, H)`` (and
    ``linear_bias`` when the option set has it) and targets over its ``C`` classes.

    ``random``: ``x ~ N(0, 1)``, ``W ~ N(0, s / sqrt(H))`` (logits of scale ``s``,
    cycling through :data:`LOGIT_SCALES`), ``b ~ N(0, s)``.  ``extreme``: the
    logits are the class-axis extreme rows, made exactly (before the cast) by
    orthogonal features (see :func:`_linear_extreme`); with a bias, classes no
    index target names are masked by a ``-inf`` bias entry.
    """
    H, C = layout.shape[-1], layout.classes
    batch = layout.shape[:-1]
    nrows = int(np.prod(batch, dtype=np.int64))
    kw = {}
    draw = Draw(dtype, batch + (C,), batch, C, k, i, opt.targets,
                index=rng.integers(0, C, batch), kwargs=kw)
    _sample_options(spec, opt, rng, draw, kw, targets_stage=True)
    t, right = _class_targets(opt.targets, draw.index, kw.get("ignore_index"), rng,
                              batch + (C,), nrows, C, i, dtype)
    with_bias = LINEAR_BIAS in opt.options
    if region == "random":
        s = LOGIT_SCALES[i % len(LOGIT_SCALES)]
        x = rng.normal(0.0, 1.0, (nrows, H))
        W = rng.normal(0.0, s / np.sqrt(H), (C, H))
        b = rng.normal(0.0, s, C) if with_bias else None
    else:
        x, W, b = _linear_extreme(rng, nrows, H, C, right, with_bias, opt.targets, t,
                                  "label_smoothing" in opt.options)
    _sample_options(spec, opt, rng, draw, kw, targets_stage=False)
    kw[LINEAR_WEIGHT] = W.astype(dtype)
    if b is not None:
        kw[LINEAR_BIAS] = b.astype(dtype)
    ordered = {LINEAR_WEIGHT: kw.pop(LINEAR_WEIGHT), **_ordered(spec, kw)}
    return x.reshape(batch + (H,)).astype(dtype), t, ordered, None


def _linear_extreme(rng, nrows, H, C, right, with_bias, target_kind, targets, smoothing):
    """``(x, W, b)`` whose logits ``x W^T + b`` are extreme rows ``z``.

    Orthogonal feature rows of norm ``sqrt(H)`` (``x x^T = H I``, so ``nrows <= H``)
    and ``W = (z - b)^T x / H`` give ``x W^T + b = z`` exactly in real arithmetic.
    """
    z = V.extreme_rows(rng, (nrows, C), right)
    b = None
    if with_bias:
        b = rng.normal(0.0, 1.0, C)
        # smoothing puts mass on every class: a masked one would make the loss infinite
        if target_kind == "index" and not smoothing:
            named = np.unique(np.asarray(targets).reshape(-1))
            masked = np.setdiff1d(np.arange(C), named)
            b[masked[rng.uniform(size=masked.size) < 0.5]] = -np.inf
        z = z - np.where(np.isfinite(b), b, 0.0)
    q, _ = np.linalg.qr(rng.normal(size=(H, nrows)))
    x = q.T * np.sqrt(H)
    return x, z.T @ x / H, b
