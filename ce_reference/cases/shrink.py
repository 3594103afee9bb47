"""The one shrinker: a failing case reduced greedily to a smallest case that still fails.

:func:`shrink` tries simpler variants of a :class:`~.case.Case`, most
aggressive first, and keeps the first one that is strictly simpler (see
:func:`complexity`) and for which ``still(candidate)`` is truthy; then it
starts over from that one, until nothing simpler fails or the budget of
``still`` calls is spent.  The variants, in order:

1. fewer rows -- along every axis but the class axis: keep the first or the
   second half, keep one row, drop one row (targets, ``v``, ``kink`` and the
   array keywords that line up with that axis follow);
2. fewer classes -- a class is dropped only where its target mass is 0 (no
   index target equals it, or its column of target rows is 0); index targets
   above it are renumbered (never the ignore sentinel), class weights lose
   its entry, and probability rows of ``x`` keep their mass (the remaining
   entries are rescaled); a case whose ``class_multiple`` is ``k > 1`` (a
   function that splits the classes into ``k`` equal shards) loses ``k``
   such classes at a time and keeps at least ``k``; for a linear case
   (``Case.linear``) the class is a row of the linear weight, dropped with
   its entries of the ``"classes"`` arrays (bias, class weights) -- and then
   fewer features: columns of ``x`` dropped with the same columns of the
   weight;
3. fewer options -- each keyword that is not ``fixed`` (nor the linear
   weight): an array dropped or
   set to ones, ``reduction`` to ``"sum"``, any other option dropped (back to
   its default; the ignore sentinel only while no target equals it);
4. simpler values -- whole arrays first (logits to 0 or rounded, probability
   rows to uniform rows, target rows to one-hot rows, soft targets rounded to
   0.1, weights rounded), then element by element: ``x`` (0, an integer, one
   significant digit; 0 or 1/2 for probabilities), the weight arrays (0, 1,
   an integer, one significant digit), elementwise soft targets (0, one
   significant digit).  Probability and log-probability rows are never edited
   entry by entry.

``still`` is the caller's test: it must be falsy for a candidate the
reference rejects (an invalid input), so only valid inputs are kept.  The
shrinker is deterministic and never evaluates the same candidate twice.
"""

from __future__ import annotations

import math

import numpy as np

from .case import Case

#: Default number of ``still`` calls per shrink.
SHRINK_BUDGET = 400


def shrink(case: Case, still, *, budget: int = SHRINK_BUDGET, info=None):
    """Greedy shrink of ``case`` while ``still(candidate)`` holds.

    Returns ``(smallest case, info)`` where ``info`` is what ``still``
    returned for that case (``info`` as given when nothing simpler fails).
    """
    best, best_info = case, info
    seen = {_key(case)}
    spent = 0
    improved = True
    while improved and spent < budget:
        improved = False
        cost = complexity(best)
        for cand in candidates(best):
            if spent >= budget:
                break
            if complexity(cand) >= cost:
                continue
            key = _key(cand)
            if key in seen:
                continue
            seen.add(key)
            spent += 1
            got = still(cand)
            if got:
                best, best_info = cand, got
                improved = True
                break
    return best, best_info


def complexity(case: Case) -> tuple:
    """``(elements of x and of the linear weight, options not at their simplest, digits of
    the numbers)``."""
    digits = sum(_digits(a) for a in [case.x, case.targets] +
                 [v for v in case.kwargs.values() if isinstance(v, np.ndarray)])
    nopts = 0
    for k, v in case.kwargs.items():
        if k in case.fixed:
            continue
        if k == "reduction":
            nopts += v not in ("sum", "none")
        else:
            nopts += 1
    size = case.x.size
    if case.linear is not None:
        size += int(np.size(case.kwargs[case.linear]))
    return (size, nopts, digits)


def _digits(a) -> int:
    a = np.asarray(a)
    if a.dtype.kind not in "fc":
        return 0
    return sum(0 if v in (0.0, 1.0) else len(repr(v)) for v in a.astype(np.float64).ravel().tolist())


def _key(case: Case):
    parts = [case.x.dtype.str, case.x.shape, case.x.tobytes(), case.targets.dtype.str,
             case.targets.shape, case.targets.tobytes()]
    for k, v in case.kwargs.items():
        parts.append(k)
        parts.append((v.dtype.str, v.shape, v.tobytes()) if isinstance(v, np.ndarray) else repr(v))
    return hash(tuple(parts))


def candidates(case: Case):
    """Simpler variants of ``case``, most aggressive first (see the module doc)."""
    yield from _fewer_rows(case)
    if case.linear is not None:
        yield from _fewer_linear_classes(case)
        yield from _fewer_features(case)
    elif case.axis is not None:
        yield from _fewer_classes(case)
    yield from _fewer_options(case)
    yield from _simpler_values(case)


# --------------------------------------------------------------------------- rows

def _right_aligned_axis(a, ndim, k, n):
    """The axis of ``a`` (broadcast right-aligned against ``ndim`` dims) that is axis ``k``
    of length ``n``, or None when ``a`` broadcasts along it."""
    off = ndim - a.ndim
    j = k - off
    return j if 0 <= j < a.ndim and a.shape[j] == n else None


def _batch_axis(case, k):
    return k if case.axis is None or k < case.axis else k - 1


def _take(a, sel, axis):
    return None if a is None else np.take(a, sel, axis=axis)


def _fewer_rows(case: Case):
    x, t = case.x, case.targets
    for k in range(x.ndim):
        n = x.shape[k]
        if k == case.axis or n <= 1:
            continue
        subsets = [np.arange(n // 2), np.arange(n // 2, n)]
        subsets += [np.array([j]) for j in range(n)]
        subsets += [np.delete(np.arange(n), j) for j in range(n)] if n > 2 else []
        for sel in subsets:
            if sel.size == 0 or sel.size == n:
                continue
            kb = _batch_axis(case, k)
            if case.index_targets:
                nt = np.take(t, sel, axis=kb) if t.ndim > kb and t.shape[kb] == n else t
            else:
                j = _right_aligned_axis(t, x.ndim, k, n)
                nt = t if j is None else np.take(t, sel, axis=j)
            kw = dict(case.kwargs)
            for name, kind in case.arrays.items():
                w = kw.get(name)
                if not isinstance(w, np.ndarray):
                    continue
                if kind == "batch":
                    if w.ndim > kb and w.shape[kb] == n:
                        kw[name] = np.take(w, sel, axis=kb)
                elif kind == "last":
                    if k == x.ndim - 1 and w.ndim and w.shape[-1] == n:
                        kw[name] = np.take(w, sel, axis=-1)
                elif kind != "classes":
                    j = _right_aligned_axis(w, x.ndim, k, n)
                    if j is not None:
                        kw[name] = np.take(w, sel, axis=j)
            yield case.replace(x=np.take(x, sel, axis=k), targets=nt, kwargs=kw,
                               v=_take(case.v, sel, k), kink=_take(case.kink, sel, k))


# --------------------------------------------------------------------------- classes

def _fewer_classes(case: Case):
    k = max(1, int(case.class_multiple))
    if k == 1:
        for c in range(case.x.shape[case.axis] - 1, -1, -1):
            smaller = _drop_class(case, c)
            if smaller is not None:
                yield smaller
        return
    # classes in multiples of k: drop k droppable classes at once (highest first), keep >= k
    if case.x.shape[case.axis] < 2 * k:
        return
    for first in range(case.x.shape[case.axis] - 1, k - 2, -1):
        smaller, c = case, first
        for _ in range(k):
            while c >= 0:
                nxt = _drop_class(smaller, c)
                c -= 1
                if nxt is not None:
                    smaller = nxt
                    break
            else:
                smaller = None
                break
        if smaller is not None:
            yield smaller


def _drop_class(case: Case, c: int):
    """``case`` without class ``c``, or None when ``c`` carries target mass (or would move
    the ignore sentinel, or empty a probability row)."""
    ax = case.axis
    x = case.x
    C = x.shape[ax]
    if C <= 1:
        return None
    nt = _targets_without(case, c, C)
    if nt is None:
        return None
    nx = np.delete(x, c, axis=ax)
    if case.x_rows:
        nx = _keep_row_mass(case, x, nx)
        if nx is None:
            return None
    kw = dict(case.kwargs)
    for name, kind in case.arrays.items():
        w = kw.get(name)
        if not isinstance(w, np.ndarray):
            continue
        if kind == "classes" and w.ndim == 1 and w.shape[0] == C:
            kw[name] = np.delete(w, c)
        elif kind == "last" and ax == x.ndim - 1 and w.ndim and w.shape[-1] == C:
            kw[name] = np.delete(w, c, axis=-1)
        elif kind == "input":
            j = _right_aligned_axis(w, x.ndim, ax, C)
            if j is not None:
                kw[name] = np.delete(w, c, axis=j)
    return case.replace(
        x=nx, targets=nt, kwargs=kw,
        v=None if case.v is None else np.delete(case.v, c, axis=ax),
        kink=None if case.kink is None else np.delete(case.kink, c, axis=ax))


def _targets_without(case, c, C):
    """The targets with class ``c`` (of ``C``) removed, or None when it carries target mass
    (or renumbering would move the ignore sentinel)."""
    t = case.targets
    if case.index_targets:
        sentinel = case.kwargs.get(case.ignore) if case.ignore else None
        valid = (t >= 0) & (t < C)
        if sentinel is not None:
            valid &= t != sentinel
            if 0 <= sentinel < C and c <= sentinel:
                return None                     # renumbering would move the sentinel
        if np.any(valid & (t == c)):
            return None                         # a target uses this class
        return np.where(valid & (t > c), t - 1, t).astype(t.dtype)
    zero = -np.inf if case.target_kind == "log_soft" else 0
    if np.any(np.take(t, c, axis=case.axis) != zero):
        return None                             # the class carries target mass
    return np.delete(t, c, axis=case.axis)


def _fewer_linear_classes(case: Case):
    """Rows of the linear weight dropped (with their bias and class-weight entries)."""
    W = case.kwargs[case.linear]
    C = W.shape[0]
    if C <= 1:
        return
    for c in range(C - 1, -1, -1):
        nt = _targets_without(case, c, C)
        if nt is None:
            continue
        kw = dict(case.kwargs)
        kw[case.linear] = np.delete(W, c, axis=0)
        for name, kind in case.arrays.items():
            w = kw.get(name)
            if kind == "classes" and name != case.linear and isinstance(w, np.ndarray) \
                    and w.ndim and w.shape[0] == C:
                kw[name] = np.delete(w, c, axis=0)
        yield case.replace(targets=nt, kwargs=kw)


def _fewer_features(case: Case):
    """Feature columns of ``x`` dropped together with the same columns of the linear weight."""
    x, W = case.x, case.kwargs[case.linear]
    H = x.shape[-1]
    if H <= 1:
        return
    subsets = [np.arange(H // 2), np.arange(H // 2, H)]
    subsets += [np.delete(np.arange(H), j) for j in range(H - 1, -1, -1)]
    for sel in subsets:
        if sel.size == 0 or sel.size == H:
            continue
        yield case.replace(x=np.take(x, sel, axis=-1),
                           kwargs={**case.kwargs, case.linear: np.take(W, sel, axis=1)})


def _keep_row_mass(case, x, nx):
    """Rescale probability rows after a class was dropped so that each keeps its mass."""
    ax = case.axis
    x64, n64 = x.astype(np.float64), nx.astype(np.float64)
    with np.errstate(all="ignore"):
        if case.domain == "probs":
            before = np.sum(x64, axis=ax, keepdims=True)
            after = np.sum(n64, axis=ax, keepdims=True)
            if np.any((after == 0) & (before > 0)):
                return None
            out = np.where(after > 0, n64 * (before / np.where(after > 0, after, 1)), n64)
        else:
            before = _logsumexp(x64, ax)
            after = _logsumexp(n64, ax)
            if np.any(np.isneginf(after) & np.isfinite(before)):
                return None
            out = np.where(np.isfinite(after), n64 + (before - after), n64)
    if not np.all(np.isfinite(out) | np.isneginf(out)):
        return None
    return out.astype(x.dtype)


def _logsumexp(a, ax):
    m = np.max(a, axis=ax, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    return m + np.log(np.sum(np.exp(a - m), axis=ax, keepdims=True))


# --------------------------------------------------------------------------- options

def _fewer_options(case: Case):
    for name, value in case.kwargs.items():
        if name in case.fixed or name == case.linear:
            continue
        if name == "reduction":
            if value not in ("sum", "none"):
                yield case.replace(kwargs={**case.kwargs, name: "sum"})
            continue
        if name == case.ignore and np.any(case.targets == value):
            continue                            # dropping it would un-ignore rows
        yield case.replace(kwargs={k: v for k, v in case.kwargs.items() if k != name})
        if isinstance(value, np.ndarray):
            yield case.replace(kwargs={**case.kwargs, name: np.ones_like(value)})


# --------------------------------------------------------------------------- values

def _one_digit(v: float) -> float:
    return float(f"{v:.1g}") if math.isfinite(v) else v


def _simpler_values(case: Case):
    x, t, dt = case.x, case.targets, case.x.dtype
    probs = case.domain == "probs"
    # whole arrays
    if case.x_rows:
        yield case.replace(x=_uniform_rows(case))
    elif probs:
        yield case.replace(x=np.full_like(x, 0.5))
        yield case.replace(x=np.clip(np.round(x, 1), 0.1, 0.9).astype(dt))
    else:
        yield case.replace(x=np.zeros_like(x))
        with np.errstate(invalid="ignore"):
            yield case.replace(x=np.round(x).astype(dt))
    if t.dtype.kind == "f" and not case.index_targets:
        if case.row_targets and case.target_kind != "log_soft":
            yield case.replace(targets=_one_hot_rows(case))
        elif not case.row_targets:
            yield case.replace(targets=np.round(t, 1).astype(t.dtype))
    for name, value in case.kwargs.items():
        if isinstance(value, np.ndarray) and name not in case.fixed and value.dtype.kind == "f":
            yield case.replace(kwargs={**case.kwargs,
                                       name: np.maximum(np.round(value), 1).astype(value.dtype)})
    # element by element
    if not case.x_rows:
        flat = x.reshape(-1)
        for i in range(flat.size):
            v = float(flat[i])
            alts = [0.0, 0.5, _one_digit(v)] if probs else [0.0, float(np.round(v)), _one_digit(v)]
            for alt in dict.fromkeys(alts):
                if alt != v and not (probs and not 0 <= alt <= 1):
                    nx = flat.copy()
                    nx[i] = alt
                    yield case.replace(x=nx.reshape(x.shape))
    for name, value in case.kwargs.items():
        if not isinstance(value, np.ndarray) or name in case.fixed or value.dtype.kind != "f":
            continue
        flat = value.reshape(-1)
        for i in range(flat.size):
            v = float(flat[i])
            for alt in dict.fromkeys([0.0, 1.0, float(np.round(v)), _one_digit(v)]):
                if alt != v:
                    nw = flat.copy()
                    nw[i] = alt
                    yield case.replace(kwargs={**case.kwargs, name: nw.reshape(value.shape)})
    if t.dtype.kind == "f" and not case.index_targets and not case.row_targets:
        flat = t.reshape(-1)
        for i in range(flat.size):
            v = float(flat[i])
            for alt in dict.fromkeys([0.0, _one_digit(v)]):
                if alt != v:
                    nt = flat.copy()
                    nt[i] = alt
                    yield case.replace(targets=nt.reshape(t.shape))


def _uniform_rows(case):
    """Each probability (or log-probability) row replaced by a uniform row of the same mass."""
    x, ax = case.x.astype(np.float64), case.axis
    C = x.shape[ax]
    with np.errstate(all="ignore"):
        if case.domain == "probs":
            out = np.broadcast_to(np.sum(x, axis=ax, keepdims=True) / C, x.shape)
        else:
            out = np.broadcast_to(_logsumexp(x, ax) - np.log(C), x.shape)
    return np.ascontiguousarray(out).astype(case.x.dtype)


def _one_hot_rows(case):
    """Target rows replaced by one-hot rows at their largest entry (mass kept; a mass within
    1e-5 of 1 becomes exactly 1; all-zero rows stay 0)."""
    t, ax = case.targets, case.axis
    mass = np.sum(t.astype(np.float64), axis=ax, keepdims=True)
    mass = np.where(np.abs(mass - 1) <= 1e-5, 1.0, mass)
    top = np.argmax(t, axis=ax)
    hot = np.moveaxis(np.eye(t.shape[ax])[top], -1, ax)
    return (hot * mass).astype(t.dtype)
