"""Seeded random and extreme inputs for the framework audits.

Every generator is ``gen(rng, dtype, spec, region) -> Case | None``: ``rng`` is a
seeded ``numpy.random.Generator`` (the sweep derives it from the audit seed,
the target, the option set, the region and the dtype, so every case is
reproducible on its own), ``spec`` the option set (``"random"`` placeholders
become concrete arrays here), ``region`` one of the region names below.
Inputs are drawn in float64 and then cast, so a float32 case is the float32
rounding of a float64 draw; the reference evaluates the *cast* input.

Regions
-------
logits (class axis): ``scale 1/3/10/30`` (normal), ``dominant right`` /
``dominant wrong`` (one logit +60 on / off the target), ``all equal``,
``±1e4``, ``near overflow`` (±log(finfo.max) ± 3), ``-inf, zero target``
(``-inf`` where the target is 0), ``many classes`` (C = 200), ``all ignored``.
probabilities: ``dirichlet``, ``peaked``, ``near 0 and 1`` (entries down to
1e-300 / the smallest subnormals), ``target below clip`` (the target's
probability ~1e-20), ``zeros`` (exact 0 and 1).
binary logits: ``scale 1/3/10/30``, ``±1e4``, ``near overflow``,
``beyond overflow`` (|x| up to 1e3 in float64, 1e2 in float32).
binary probabilities: ``uniform``, ``near 0 and 1``, ``sigmoid(±50)``,
``exact 0 and 1``, ``clip boundary`` (within 1% of 1e-7 and 1 - 1e-7).
Weights (class ``weight``, ``sample_weight``, ``pos_weight``) mix 0, 1e-3,
uniform(0.5, 2) and 1e3 entries.
"""

from __future__ import annotations

import numpy as np

from .._special import log_softmax_parts

LOGIT_REGIONS = ("scale 1", "scale 3", "scale 10", "scale 30", "dominant right",
                 "dominant wrong", "all equal", "±1e4", "near overflow",
                 "-inf, zero target", "many classes", "all ignored")
PROB_REGIONS = ("dirichlet", "peaked", "near 0 and 1", "target below clip", "zeros")
BINARY_LOGIT_REGIONS = ("scale 1", "scale 3", "scale 10", "scale 30", "±1e4",
                        "near overflow", "beyond overflow")
BINARY_PROB_REGIONS = ("uniform", "near 0 and 1", "sigmoid(±50)", "exact 0 and 1",
                       "clip boundary")

N_ROWS = 6
N_CLASSES = 5


def mixed_weights(rng, n) -> np.ndarray:
    """Non-negative weights mixing 0, 1e-3, uniform(0.5, 2) and 1e3 (never all 0)."""
    w = rng.uniform(0.5, 2.0, n)
    u = rng.random(n)
    w = np.where(u < 0.15, 0.0, np.where(u < 0.3, 1e-3, np.where(u < 0.45, 1e3, w)))
    if n and not w.any():
        w[rng.integers(n)] = 1.0
    return w


def _concretize(rng, spec, n_rows, n_cls, dtype):
    opts = {}
    for k, v in spec.items():
        if v == "random" and k in ("weight", "pos_weight"):
            opts[k] = mixed_weights(rng, n_cls).astype(dtype)
        elif v == "random" and k == "sample_weight":
            opts[k] = mixed_weights(rng, n_rows).astype(dtype)
        else:
            opts[k] = v
    return opts


def _ignore_key(spec):
    for k in ("ignore_index", "ignore_class"):
        if k in spec:
            return k, spec[k]
    return None, None


def categorical(inputs: str, targets: str):
    """Generator of categorical cases: ``inputs`` in {"logits", "logprobs", "probs"},
    ``targets`` in {"index", "onehot", "soft"} (index targets are int64)."""

    def gen(rng, dtype, spec, region):
        ik, iv = _ignore_key(spec)
        if region == "all ignored" and (ik is None or targets != "index"):
            return None
        if inputs == "probs" and region in LOGIT_REGIONS and region not in (
                "scale 1", "scale 3"):
            return None
        if inputs != "probs" and region in PROB_REGIONS:
            return None
        N, C = N_ROWS, N_CLASSES
        if region == "many classes":
            N, C = 3, 200
        elif region in ("all equal", "dominant wrong"):
            C = 3
        y_idx = rng.integers(0, C, N)
        if targets == "index":
            q = np.eye(C)[y_idx]
        elif targets == "onehot":
            q = np.eye(C)[y_idx]
        else:
            q = rng.dirichlet(np.full(C, 0.7), N)
            if region == "-inf, zero target":
                drop = (rng.random((N, C)) < 0.5) & (np.arange(C) != y_idx[:, None])
                q = np.where(drop, 0.0, q)
                q /= q.sum(axis=1, keepdims=True)
            y_idx = np.argmax(q, axis=1)
        x = _draw_x(rng, inputs, region, N, C, y_idx, q, dtype)
        if x is None:
            return None
        if targets == "index":
            y = y_idx.astype(np.int64)
            if ik is not None:
                drop = rng.random(N) < 0.34
                if region == "all ignored":
                    drop[:] = True
                y = np.where(drop, iv, y).astype(np.int64)
        else:
            y = q.astype(dtype)
        opts = _concretize(rng, spec, N, C, dtype)
        if inputs == "probs":
            opts["_rows_sum_to_one"] = True
        return _case(x.astype(dtype), y, opts, region)

    gen.inputs = inputs
    return gen


def _case(x, y, opts, region):
    from ._core import Case
    return Case(x=x, y=y, opts=opts, region=region)


def _draw_x(rng, inputs, region, N, C, y_idx, q, dtype):
    big = float(np.log(np.finfo(dtype).max))            # exp overflow threshold
    if region.startswith("scale "):
        z = rng.normal(0, float(region.split()[1]), (N, C))
    elif region == "dominant right":
        z = rng.normal(0, 1, (N, C))
        z[np.arange(N), y_idx] += 60
    elif region == "dominant wrong":
        z = rng.normal(0, 1, (N, C))
        z[np.arange(N), (y_idx + 1) % C] += 60
    elif region == "all equal":
        z = np.full((N, C), 5.0)
    elif region == "±1e4":
        z = rng.choice([-1e4, 0.0, 1e4], (N, C))
    elif region == "near overflow":
        z = rng.choice([-1.0, 1.0], (N, C)) * big + rng.uniform(-3, 3, (N, C))
    elif region == "-inf, zero target":
        z = rng.normal(0, 3, (N, C))
        drop = (q == 0) & (rng.random((N, C)) < 0.6)
        z = np.where(drop, -np.inf, z)
    elif region == "many classes":
        z = rng.normal(0, 3, (N, C))
    elif region == "all ignored":
        z = rng.normal(0, 3, (N, C))
    elif region in PROB_REGIONS:
        return _draw_probs(rng, region, N, C, y_idx, dtype)
    else:
        raise ValueError(f"unknown region {region!r}")
    if inputs == "logits":
        return z
    neg_logp, p = log_softmax_parts(z)
    if inputs == "logprobs":
        return -neg_logp
    return p


def _draw_probs(rng, region, N, C, y_idx, dtype):
    tiny = float(np.finfo(dtype).smallest_subnormal)
    if region == "dirichlet":
        return rng.dirichlet(np.ones(C), N)
    if region == "peaked":
        _, p = log_softmax_parts(rng.normal(0, 10, (N, C)))
        return p
    if region == "near 0 and 1":
        small = rng.choice([1e-300, 1e-40, 1e-20, 1e-12, tiny * 8], (N, C))
        small = np.maximum(small, tiny)
        top = rng.integers(0, C, N)
        p = small.copy()
        p[np.arange(N), top] = 1.0 - (small.sum(axis=1) - small[np.arange(N), top])
        return p
    if region == "target below clip":
        p = rng.dirichlet(np.ones(C), N)
        p[np.arange(N), y_idx] = 1e-20
        return p / p.sum(axis=1, keepdims=True)
    if region == "zeros":
        top = rng.integers(0, C, N)
        p = np.eye(C)[top]
        half = rng.random(N) < 0.5                       # half the rows: spread mass
        p[half] = rng.dirichlet(np.ones(C), int(half.sum())) * (rng.random((int(half.sum()), C))
                                                                 < 0.6)
        p[half, top[half]] += 1e-3
        return p / p.sum(axis=1, keepdims=True)
    raise ValueError(region)


def binary(inputs: str, targets: str, shape=(N_ROWS, 3)):
    """Generator of elementwise binary cases: ``inputs`` in {"logits", "probs"},
    ``targets`` in {"hard", "soft"}; ``x`` has ``shape`` (1-D shapes for
    scikit-learn's raw predictions)."""

    def gen(rng, dtype, spec, region):
        if inputs == "logits" and region not in BINARY_LOGIT_REGIONS:
            return None
        if inputs == "probs" and region not in BINARY_PROB_REGIONS:
            return None
        big = float(np.log(np.finfo(dtype).max))
        if region.startswith("scale "):
            x = rng.normal(0, float(region.split()[1]), shape)
        elif region == "±1e4":
            x = rng.choice([-1e4, 1e4], shape) + rng.normal(0, 1, shape)
        elif region == "near overflow":
            x = rng.choice([-1.0, 1.0], shape) * big + rng.uniform(-3, 3, shape)
        elif region == "beyond overflow":
            x = rng.choice([-1.0, 1.0], shape) * rng.uniform(1.01, 1.5, shape) * big
        elif region == "uniform":
            x = rng.random(shape)
        elif region == "near 0 and 1":
            x = rng.choice([1e-300, 1e-50, 1e-20, 1e-8, 0.5, 1 - 1e-8, 1 - 1e-15], shape)
        elif region == "sigmoid(±50)":
            x = 1 / (1 + np.exp(-rng.choice([-50.0, 50.0], shape) + rng.normal(0, 1, shape)))
        elif region == "exact 0 and 1":
            x = rng.choice([0.0, 1.0, 0.5], shape)
        elif region == "clip boundary":
            e = 1e-7 * rng.uniform(0.99, 1.01, shape)
            x = np.where(rng.random(shape) < 0.5, e, 1 - e)
        else:
            raise ValueError(region)
        x = x.astype(dtype)
        if inputs == "probs" and dtype == "float32":
            x = np.clip(x, 0, 1).astype(dtype)
        if targets == "hard":
            y = rng.integers(0, 2, shape).astype(dtype)
        else:
            y = rng.random(shape).astype(dtype)
        n_rows = shape[0]
        n_cls = shape[-1] if len(shape) > 1 else 1
        opts = _concretize(rng, spec, n_rows, n_cls, dtype)
        if "pos_weight" in opts and len(shape) == 1:
            opts["pos_weight"] = opts["pos_weight"][:1]
        return _case(x, y, opts, region)

    gen.inputs = "binary-" + inputs
    return gen


def neutral_input(case, inputs: str) -> np.ndarray:
    """The input at which a loss's gradient has the size of its operands.

    Logits -> 0; probabilities -> uniform rows (0.5 for binary);
    log-probabilities -> log(1/C).  Used for the gradient's operand scale.
    """
    x = case.x
    if inputs in ("logits", "binary-logits"):
        return np.zeros_like(x)
    if inputs == "binary-probs":
        return np.full_like(x, 0.5)
    C = x.shape[-1]
    if inputs == "probs":
        return np.full_like(x, 1.0 / C)
    if inputs == "logprobs":
        return np.full_like(x, -np.log(C))
    raise ValueError(inputs)
