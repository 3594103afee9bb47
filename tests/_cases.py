"""Seeded input builders for the core tests, driven by the loss registry."""

from __future__ import annotations

import itertools

import numpy as np

from ce_reference.registry import LOSSES


def make_case(spec, rng, *, shape=(6, 5), axis=-1, target_kind="index", dtype=np.float64,
              scale=3.0, **opts):
    """Return ``(x, targets, kwargs)`` for ``spec`` with the options asked for.

    ``opts`` may hold weight=True, pos_weight=True, ignore_index=<int>,
    label_smoothing=<float>, eps=<float>, reduction=<str>.
    """
    kw = {}
    if axis != -1 and len(shape) < 3:
        shape = (4, shape[-1], 3)  # a class axis that is not the last one
    if spec.structure == "elementwise":
        if spec.input == "logits":
            x = rng.normal(size=shape) * scale
        else:
            x = rng.uniform(0.02, 0.98, size=shape)
        t = rng.uniform(size=shape) if target_kind == "soft" else rng.integers(0, 2, shape) * 1.0
        if opts.get("weight"):
            kw["weight"] = rng.uniform(0.1, 2.0, size=shape)
        if opts.get("pos_weight"):
            kw["pos_weight"] = rng.uniform(0.1, 3.0, size=shape[-1:])
    else:
        ax = axis % len(shape)
        C = shape[ax]
        batch = shape[:ax] + shape[ax + 1:]
        if spec.input == "logits":
            x = rng.normal(size=shape) * scale
        else:
            x = np.moveaxis(rng.dirichlet(np.ones(C), size=batch), -1, ax)
        if target_kind == "index":
            t = rng.integers(0, C, size=batch)
            if opts.get("ignore_index") is not None:
                t.ravel()[::3] = opts["ignore_index"]
                kw["ignore_index"] = opts["ignore_index"]
        else:
            t = np.moveaxis(rng.dirichlet(np.ones(C) * 0.5, size=batch), -1, ax)
        if opts.get("weight"):
            kw["weight"] = rng.uniform(0.1, 2.0, size=C)
        if axis != -1:
            kw["axis"] = axis
        if opts.get("label_smoothing"):
            kw["label_smoothing"] = opts["label_smoothing"]
    if opts.get("eps") is not None:
        kw["eps"] = opts["eps"]
    if "reduction" in opts:
        kw["reduction"] = opts["reduction"]
    return x.astype(dtype), t, kw


def option_grid(spec):
    """Every combination of the options ``spec`` accepts (small values of each)."""
    o = spec.option_names
    grid = {
        "reduction": ["mean", "sum", "none"],
        "weight": [False, True] if "weight" in o else [False],
        "pos_weight": [False, True] if "pos_weight" in o else [False],
        "ignore_index": [None, -100, 1] if "ignore_index" in o else [None],
        "label_smoothing": [0.0, 0.1, 1.0] if "label_smoothing" in o else [0.0],
        "eps": [None, 1e-7] if "eps" in o else [None],
        "target_kind": (["index", "probs"] if spec.structure == "classes" else ["hard", "soft"]),
        "axis": [-1, 1] if "axis" in o else [-1],
    }
    keys = list(grid)
    for values in itertools.product(*grid.values()):
        combo = dict(zip(keys, values))
        if combo["target_kind"] == "probs" and combo["ignore_index"] is not None:
            continue  # ignore_index applies to index targets only
        yield combo


def case_id(combo):
    return ",".join(f"{k}={v}" for k, v in combo.items() if v not in (None, False, 0.0, -1))


#: The losses called as ``loss(x, targets, ...)``: every one but linear cross-entropy
#: (features and a weight matrix), which the contract tests, the verifier and
#: tests/test_linear_cross_entropy.py cover.
X_TARGET_LOSSES = {name: spec for name, spec in LOSSES.items()
                   if spec.positional == ("input", "targets")}

ALL = [(name, combo) for name, spec in X_TARGET_LOSSES.items() for combo in option_grid(spec)]
