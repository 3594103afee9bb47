"""Module-level functions to audit (a spawned audit worker imports them by name)."""

from __future__ import annotations

import time

import numpy as np

import ce_reference


def stable_softmax_ce(logits, targets, *, reduction="mean"):
    """Correct for class-index targets only (probability targets raise IndexError)."""
    z = logits - logits.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=-1))
    nll = lse - np.take_along_axis(z, targets[..., None], axis=-1)[..., 0]
    return {"mean": nll.mean(), "sum": nll.sum(), "none": nll}[reduction]


def one_and_a_half_times(logits, targets, **kw):
    return 1.5 * ce_reference.softmax_cross_entropy(logits, targets, **kw)


def off_by_1e9(logits, targets, **kw):
    """The reference times (1 + 1e-9): 4.5e6 eps in float64."""
    return ce_reference.softmax_cross_entropy(logits, targets, **kw) * (1 + 1e-9)


def hangs_on_large_logits(logits, targets, **kw):
    """Correct, except that it never returns when a logit exceeds 50 in magnitude."""
    if np.max(np.abs(logits), initial=0.0) > 50:
        time.sleep(3600)
    return ce_reference.softmax_cross_entropy(logits, targets, **kw)


def hangs_always(logits, targets, **kw):
    time.sleep(3600)
