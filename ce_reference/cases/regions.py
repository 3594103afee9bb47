"""Named input regions: seeded random and extreme cases for the framework audits.

A generator is ``gen(rng, dtype, options, region) -> Case | None``: ``rng`` is
a seeded ``numpy.random.Generator`` (the sweep derives it from the audit
seed, the function, the option set, the region and the dtype, so every case
is reproducible on its own), ``options`` the option set (``"random"``
placeholders become weight arrays here), ``region`` one of the names below
(None: the region does not apply to this generator).  Values are drawn in
float64 from the helpers of :mod:`.values` (the ones the verifier's rows use)
and then cast, so a float32 case is the float32 rounding of a float64 draw;
the reference evaluates the *cast* input.

Regions
-------
logits (class axis): ``scale 1/3/10/30`` (normal), ``dominant right`` /
``dominant wrong`` (one logit set to a magnitude from
:data:`~.values.DOMINANT`, 20 to 1e4, on / off the target), ``all equal``,
``±1e4``, ``near overflow`` (±log(finfo.max) ± 3), ``-inf, zero target``
(``-inf`` where the target is 0), ``many classes`` (C = 200), ``all ignored``.
logits split along the class axis (:data:`SHARD_REGIONS`, for vocab-parallel
functions; "shard" = a quarter of the classes, the slice of one of 4 ranks):
``shard slice -inf`` (the second quarter of every row is ``-inf``: a rank
whose whole slice is masked), ``max in last shard`` (the row maximum in the
last class), ``tied max across shards`` (the maximum in the first and the
last class), ``spread 110`` (one logit 110 above the others: their
``exp(x - max)`` underflows in float32).
probabilities: ``dirichlet``, ``peaked``, ``near 0 and 1`` (rows of entries
down to 1e-300 / the smallest subnormals), ``target below clip`` (the
target's probability ~1e-20), ``zeros`` (exact 0 and 1).
binary logits: ``scale 1/3/10/30``, ``±1e4``, ``near overflow``,
``beyond overflow`` (|x| up to 1.5 log(finfo.max)).
binary probabilities: ``uniform``, ``near 0 and 1`` (1e-300 .. nextafter(1, 0)),
``sigmoid(±50)``, ``exact 0 and 1``, ``clip boundary`` (at, just inside and
just outside [1e-7, 1 - 1e-7], and 0, 1/4, 1/2, 1).
linear (features ``x`` of a linear cross-entropy, :func:`linear`; the logits
``x @ linear_weight.T + linear_bias`` are made to be the logits of the named
region): ``scale 1/3/10/30``, ``dominant right`` / ``dominant wrong``,
``all equal``, ``±1e4``, ``near overflow``, ``many classes`` (V = 300),
``vocab 256`` (V a multiple of 128 and a power of two: no padded block in a
Triton kernel), ``all ignored``.
Weights (class ``weight``, ``sample_weight``, ``pos_weight``) come from
:func:`~.values.weights`: 0, 1e-3, uniform(0.5, 2) and 1e3 entries, never all 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import values as V
from .case import Case

LOGIT_REGIONS = ("scale 1", "scale 3", "scale 10", "scale 30", "dominant right",
                 "dominant wrong", "all equal", "±1e4", "near overflow",
                 "-inf, zero target", "many classes", "all ignored")
PROB_REGIONS = ("dirichlet", "peaked", "near 0 and 1", "target below clip", "zeros")
BINARY_LOGIT_REGIONS = ("scale 1", "scale 3", "scale 10", "scale 30", "±1e4",
                        "near overflow", "beyond overflow")
#: Regions for a loss whose class axis is split into shards (vocab-parallel).
SHARD_REGIONS = ("shard slice -inf", "max in last shard", "tied max across shards",
                 "spread 110")
BINARY_PROB_REGIONS = ("uniform", "near 0 and 1", "sigmoid(±50)", "exact 0 and 1",
                       "clip boundary")
LINEAR_REGIONS = ("scale 1", "scale 3", "scale 10", "scale 30", "dominant right",
                  "dominant wrong", "all equal", "±1e4", "near overflow", "many classes",
                  "vocab 256", "all ignored")

N_ROWS = 6
N_CLASSES = 5
#: Keywords the shrinker may simplify (besides the weight arrays); every other keyword
#: of an option set is part of the convention under audit and stays as it is.
FREE = ("label_smoothing", "reduction")
#: Keywords holding the sentinel of ignored index targets.
IGNORE_KEYS = ("ignore_index", "ignore_class")
#: How each weight keyword lines up with the input.
_CLASS_ARRAYS = {"weight": "classes", "pos_weight": "classes", "sample_weight": "batch"}
_BINARY_ARRAYS = {"weight": "last", "pos_weight": "last", "sample_weight": "batch"}


@dataclass(frozen=True)
class Generator:
    """Cases of one input domain and target kind (class axis last for ``classes``)."""

    structure: str                # "classes" or "elementwise"
    domain: str                   # "logits", "probs" or "log_probs"
    target_kind: str              # "index", "onehot", "soft", "hard"
    shape: tuple = (N_ROWS, 3)    # elementwise: the input's shape
    float_labels: bool = False    # index targets as floats (scikit-learn's _loss)
    fixed: tuple = ()             # keywords the shrinker must leave alone besides the defaults
    class_multiple: int = 1       # draw (and keep, when shrinking) C a multiple of this

    @property
    def arrays(self) -> dict:
        return _CLASS_ARRAYS if self.structure == "classes" else _BINARY_ARRAYS

    def case(self, x, targets, kwargs=None, region="probe", flags=()) -> Case:
        """A case of this generator's structure (a catalogue probe, for instance)."""
        x = np.asarray(x)
        kwargs = dict(kwargs or {})
        ignore = next((k for k in IGNORE_KEYS if k in kwargs), None)
        fixed = {k for k, v in kwargs.items() if not isinstance(v, np.ndarray) and k not in FREE
                 and k != ignore} | (set(self.fixed) & kwargs.keys())
        axis = None
        if self.structure == "classes" and x.ndim:
            axis = int(kwargs.get("axis", -1)) % x.ndim
        return Case(x=x, targets=targets, kwargs=kwargs, region=region, axis=axis,
                    domain=self.domain, target_kind=self.target_kind,
                    arrays={k: v for k, v in self.arrays.items() if k in kwargs},
                    fixed=frozenset(fixed), ignore=ignore, flags=tuple(flags),
                    class_multiple=self.class_multiple)

    def __call__(self, rng, dtype, options, region):
        dtype = np.dtype(dtype)
        if self.structure == "classes":
            return _categorical(self, rng, dtype, options, region)
        return _binary(self, rng, dtype, options, region)


def categorical(domain: str, targets: str, *, float_labels: bool = False,
                fixed=(), class_multiple: int = 1) -> Generator:
    """Categorical cases: ``domain`` in {"logits", "log_probs", "probs"}, ``targets`` in
    {"index", "onehot", "soft"} (index targets are int64, or floats with ``float_labels``);
    ``fixed`` names keywords the shrinker must not change besides the convention flags;
    ``class_multiple``: the number of classes is rounded up to a multiple of it (a function
    that splits the classes into that many equal shards), here and in the shrinker."""
    return Generator("classes", domain, targets, float_labels=float_labels, fixed=tuple(fixed),
                     class_multiple=int(class_multiple))


def binary(domain: str, targets: str, shape=(N_ROWS, 3)) -> Generator:
    """Elementwise binary cases: ``domain`` in {"logits", "probs"}, ``targets`` in
    {"hard", "soft"}; ``x`` has ``shape`` (1-D shapes for scikit-learn's raw predictions)."""
    return Generator("elementwise", domain, targets, shape=tuple(shape))


def _weights(rng, options, n_rows, n_cls, dtype):
    """Concrete option values: ``"random"`` weight placeholders become weight arrays."""
    out = {}
    for k, v in options.items():
        if v == "random" and k in ("weight", "pos_weight"):
            out[k] = V.weights(rng, (n_cls,), dtype)
        elif v == "random" and k == "sample_weight":
            out[k] = V.weights(rng, (n_rows,), dtype)
        else:
            out[k] = v
    return out


# --------------------------------------------------------------------------- categorical

def _categorical(gen, rng, dtype, options, region):
    ik = next((k for k in IGNORE_KEYS if k in options), None)
    if region == "all ignored" and (ik is None or gen.target_kind != "index"):
        return None
    if gen.domain == "probs" and region in LOGIT_REGIONS and region not in (
            "scale 1", "scale 3"):
        return None
    if gen.domain != "probs" and region in PROB_REGIONS:
        return None
    if gen.domain != "logits" and region in SHARD_REGIONS:
        return None
    N, C = N_ROWS, N_CLASSES
    if region == "many classes":
        N, C = 3, 200
    elif region in ("all equal", "dominant wrong"):
        C = 3
    elif region in SHARD_REGIONS:
        C = 8
    k = gen.class_multiple
    C = -(-C // k) * k                                   # a multiple of the shard count
    y_idx = rng.integers(0, C, N)
    if gen.target_kind in ("index", "onehot"):
        q = np.eye(C)[y_idx]
    else:
        q = V.dirichlet_rows(rng, N, C, 0.7)
        if region == "-inf, zero target":
            drop = (rng.random((N, C)) < 0.5) & (np.arange(C) != y_idx[:, None])
            q = np.where(drop, 0.0, q)
            q /= q.sum(axis=1, keepdims=True)
        y_idx = np.argmax(q, axis=1)
    x = _class_input(rng, gen.domain, region, N, C, y_idx, q, dtype)
    if gen.target_kind == "index":
        y = y_idx.astype(np.int64)
        if ik is not None:
            drop = rng.random(N) < 0.34
            if region == "all ignored":
                drop[:] = True
            y = np.where(drop, options[ik], y).astype(np.int64)
        if gen.float_labels:
            y = y.astype(dtype)
    else:
        y = q.astype(dtype)
    return gen.case(x.astype(dtype), y, _weights(rng, options, N, C, dtype), region)


def _class_input(rng, domain, region, N, C, y_idx, q, dtype):
    if region.startswith("scale "):
        z = V.normal(rng, (N, C), float(region.split()[1]))
    elif region in ("dominant right", "dominant wrong", "all equal", "±1e4"):
        z = V.extreme_rows(rng, (N, C), y_idx, pattern=region)
    elif region == "near overflow":
        z = V.near_overflow(rng, (N, C), dtype)
    elif region == "-inf, zero target":
        z = V.normal(rng, (N, C), 3.0)
        drop = (q == 0) & (rng.random((N, C)) < 0.6)
        z = np.where(drop, -np.inf, z)
    elif region in ("many classes", "all ignored"):
        z = V.normal(rng, (N, C), 3.0)
    elif region in SHARD_REGIONS:
        z = _shard_rows(rng, region, N, C, y_idx)
    elif region in PROB_REGIONS:
        return _prob_rows(rng, region, N, C, y_idx, dtype)
    else:
        raise ValueError(f"unknown region {region!r}")
    if domain == "logits":
        return z
    logp = V.log_softmax(z)
    return logp if domain == "log_probs" else np.exp(logp)


def _shard_rows(rng, region, N, C, y_idx):
    """Logits for a class axis split into shards (a quarter of the classes per shard).
    Index targets (``y_idx``, edited in place) are the row's arg-max on every other row and
    never a masked class."""
    z = V.normal(rng, (N, C), 1.0)
    w = max(1, C // 4)
    if region == "shard slice -inf":
        z[:, w:2 * w] = -np.inf
        y_idx[(y_idx >= w) & (y_idx < 2 * w)] = 0      # the target stays finite
    elif region == "max in last shard":
        z[:, -1] = 12.0
    elif region == "tied max across shards":
        z[:, 0] = z[:, -1] = 6.0
    elif region == "spread 110":
        z[:, 0] = 110.0
    y_idx[::2] = np.argmax(z, axis=1)[::2]             # half the rows: the arg-max is the target
    return z


def _prob_rows(rng, region, N, C, y_idx, dtype):
    tiny = float(np.finfo(dtype).smallest_subnormal)
    if region == "dirichlet":
        return V.dirichlet_rows(rng, N, C, 1.0)
    if region == "peaked":
        return np.exp(V.log_softmax(V.normal(rng, (N, C), 10.0)))
    if region == "near 0 and 1":
        pool = V.near_01_pool(dtype).astype(np.float64)
        small = rng.choice(np.append(pool[pool < 1e-6], tiny * 8), (N, C))
        top = rng.integers(0, C, N)
        p = small.copy()
        p[np.arange(N), top] = 1.0 - (small.sum(axis=1) - small[np.arange(N), top])
        return p
    if region == "target below clip":
        p = V.dirichlet_rows(rng, N, C, 1.0)
        p[np.arange(N), y_idx] = 1e-20
        return p / p.sum(axis=1, keepdims=True)
    if region == "zeros":
        top = rng.integers(0, C, N)
        p = np.eye(C)[top]
        half = rng.random(N) < 0.5                       # half the rows: spread mass
        n = int(half.sum())
        p[half] = V.dirichlet_rows(rng, n, C, 1.0) * (rng.random((n, C)) < 0.6)
        p[half, top[half]] += 1e-3
        return p / p.sum(axis=1, keepdims=True)
    raise ValueError(f"unknown region {region!r}")


# --------------------------------------------------------------------------- binary

def _binary(gen, rng, dtype, options, region):
    shape = gen.shape
    if gen.domain == "logits" and region not in BINARY_LOGIT_REGIONS:
        return None
    if gen.domain == "probs" and region not in BINARY_PROB_REGIONS:
        return None
    big = V.exp_overflow(dtype)
    if region.startswith("scale "):
        x = V.normal(rng, shape, float(region.split()[1]))
    elif region == "±1e4":
        x = rng.choice([-1e4, 1e4], shape) + rng.normal(0, 1, shape)
    elif region == "near overflow":
        x = V.near_overflow(rng, shape, dtype)
    elif region == "beyond overflow":
        x = rng.choice([-1.0, 1.0], shape) * rng.uniform(1.01, 1.5, shape) * big
    elif region == "uniform":
        x = rng.random(shape)
    elif region == "near 0 and 1":
        x = rng.choice(V.near_01_pool(dtype), shape)
    elif region == "sigmoid(±50)":
        x = 1 / (1 + np.exp(-rng.choice([-50.0, 50.0], shape) + rng.normal(0, 1, shape)))
    elif region == "exact 0 and 1":
        x = rng.choice([0.0, 1.0, 0.5], shape)
    elif region == "clip boundary":
        x = rng.choice(V.clip_pool(dtype), shape)
    else:
        raise ValueError(f"unknown region {region!r}")
    x = x.astype(dtype)
    if gen.domain == "probs":
        x = np.clip(x, 0, 1).astype(dtype)
    if gen.target_kind == "hard":
        y = rng.integers(0, 2, shape).astype(dtype)
    else:
        y = rng.random(shape).astype(dtype)
    n_rows = shape[0]
    n_cls = shape[-1] if len(shape) > 1 else 1
    opts = _weights(rng, options, n_rows, n_cls, dtype)
    if "pos_weight" in opts and len(shape) == 1:
        opts["pos_weight"] = opts["pos_weight"][:1]
    return gen.case(x, y, opts, region)


def neutral_input(case: Case) -> np.ndarray:
    """The input at which a loss's gradient has the size of its operands.

    Logits -> 0; probabilities -> uniform rows (0.5 elementwise);
    log-probabilities -> log(1/C) (log 0.5 elementwise).
    """
    x = case.x
    if case.domain == "logits":
        return np.zeros_like(x)
    n = 2 if case.axis is None else x.shape[case.axis]
    if case.domain == "probs":
        return np.full_like(x, 1.0 / n)
    return np.full_like(x, -np.log(n))


# --------------------------------------------------------------------------- linear

#: Keywords of a linear cross-entropy case the shrinker may simplify (besides the arrays).
LINEAR_FREE = ("label_smoothing", "reduction", "z_loss", "softcap")
#: How each array keyword of a linear case lines up: the weight, the bias and the class
#: weights have one row / entry per class, the upstream gradient one entry per row.
_LINEAR_ARRAYS = {"linear_weight": "classes", "linear_bias": "classes", "weight": "classes",
                  "grad_output": "batch"}


@dataclass(frozen=True)
class LinearGenerator:
    """Cases of a linear cross-entropy: features ``x`` ``(rows, hidden)``, the linear
    layer ``linear_weight`` ``(vocab, hidden)`` and ``linear_bias`` in the keywords, class
    index targets (see :func:`linear`)."""

    rows: int = 4
    hidden: int = 8
    vocab: int = 37
    many: int = 300
    fixed: tuple = ()

    def case(self, x, targets, kwargs=None, region="probe", flags=()) -> Case:
        """A linear case (a catalogue probe, for instance): ``kwargs`` holds
        ``linear_weight`` (required) and the options."""
        x = np.asarray(x)
        kwargs = dict(kwargs or {})
        ignore = "ignore_index" if "ignore_index" in kwargs else None
        fixed = {k for k, v in kwargs.items() if not isinstance(v, np.ndarray)
                 and k not in LINEAR_FREE and k != ignore} | (set(self.fixed) & kwargs.keys())
        arrays = {k: v for k, v in _LINEAR_ARRAYS.items() if k in kwargs}
        if kwargs.get("shift"):       # one upstream gradient per shifted row: not x's rows
            arrays.pop("grad_output", None)
        return Case(x=x, targets=np.asarray(targets), kwargs=kwargs, region=region,
                    domain="features", target_kind="index", linear="linear_weight",
                    arrays=arrays,
                    fixed=frozenset(fixed), ignore=ignore, flags=tuple(flags))

    def __call__(self, rng, dtype, options, region):
        dtype = np.dtype(dtype)
        options = dict(options)
        ik = "ignore_index" if "ignore_index" in options else None
        if region == "all ignored" and ik is None:
            return None
        if region not in LINEAR_REGIONS:
            return None
        C = {"many classes": self.many, "vocab 256": 256}.get(region, self.vocab)
        H = self.hidden
        bshape = (2, max(2, self.rows // 2 + 1)) if options.get("shift") else (self.rows,)
        N = int(np.prod(bshape))
        if N > H:
            raise ValueError(f"rows ({N}) must not exceed hidden ({H}): the logits are "
                             "made exactly from orthogonal features")
        y = rng.integers(0, C, N)
        logit_region = {"many classes": "scale 3", "vocab 256": "scale 3",
                        "all ignored": "scale 3"}.get(region, region)
        z = _class_input(rng, "logits", logit_region, N, C, y, np.eye(C)[y], dtype)
        b = None
        if options.get("linear_bias") == "random":
            b = rng.normal(0.0, 0.5, C)
            z = z - b
        # features with orthogonal rows of norm sqrt(H): x x^T = H I, so that with
        # W = z^T x / H the logits x W^T (+ b) are the region's logits (before the cast)
        q, _ = np.linalg.qr(rng.normal(size=(H, N)))
        x = q.T * np.sqrt(H)
        W = z.T @ x / H
        kw = {"linear_weight": W.astype(dtype)}
        if b is not None:
            kw["linear_bias"] = b.astype(dtype)
        for k, v in options.items():
            if k in ("linear_bias",):
                continue
            if k == "weight" and v == "random":
                kw[k] = V.weights(rng, (C,), dtype)
            elif k == "grad_output" and v == "random":
                gshape = (bshape[0], bshape[1] - 1) if options.get("shift") else bshape
                kw[k] = rng.uniform(0.5, 3.0, gshape).round(2).astype(dtype)
            else:
                kw[k] = v
        if ik is not None:
            drop = rng.random(N) < 0.34
            if region == "all ignored":
                drop[:] = True
            y = np.where(drop, options[ik], y)
        return self.case(x.reshape(bshape + (H,)).astype(dtype), y.reshape(bshape).astype(np.int64),
                         kw, region)


def linear(rows: int = 4, hidden: int = 8, vocab: int = 37, many: int = 300,
           fixed=()) -> LinearGenerator:
    """Linear cross-entropy cases (class index targets): ``rows`` rows of ``hidden``
    features (``rows <= hidden``; with the option ``shift`` a ``(2, rows // 2 + 1)``
    batch), ``vocab`` classes (``many`` in the region ``many classes``, 256 in
    ``vocab 256``).  Option placeholders: ``linear_bias="random"`` (a bias of
    N(0, 0.5) entries, folded into the region's logits), ``weight="random"``
    (:func:`~.values.weights`), ``grad_output="random"`` (one upstream gradient per
    row in [0.5, 3]); ``ignore_index`` ignores about a third of the rows (every row in
    ``all ignored``)."""
    return LinearGenerator(rows, hidden, vocab, many, tuple(fixed))
