"""The audit machinery shared by the four framework adapters.

A *target* is one framework function under one convention: it runs a
:class:`Case` through the framework (value and gradient through the
framework's own autograd) and through the reference of the matching
convention (:mod:`ce_reference.conventions`, or the core functions where the
framework follows PyTorch's definition).  :func:`run_target` sweeps a target
over seeded random and extreme inputs and classifies every case:

* ``match``: value and gradient agree within :data:`TOL_ULPS`;
* a known finding (a named convention difference, or a catalogued defect)
  whose ``applies`` predicate explains the deviation;
* otherwise an *unclassified* deviation: a defect that is not in the
  catalogue (this is what makes the audit exit with status 1).

Errors are measured normwise in units of the dtype's machine epsilon,
relative to the larger of the reference result and the size of the operands
that the computation cancels (see :func:`compare`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

#: Largest accepted error, in units of the dtype's eps relative to the operand
#: scale.  A framework evaluates log-softmax / log-sigmoid unfused in its own
#: dtype: a handful of roundings per element, plus a float32 sum over at most
#: ~100 terms (<= 100 eps relative to the sum of |terms|, usually ~10).  256 eps
#: leaves head-room for that and for libm differences, yet is 4e3 times smaller
#: in float64 (3e1 times in float32) than the smallest convention difference
#: the audit must tell apart (label smoothing eps/C vs eps/(C-1) with eps=0.1,
#: C <= 11 changes a loss by >= 1e-3 of its size).
TOL_ULPS = 256.0

#: Mismatches of a target that are shrunk to a smallest input (each shrink
#: re-runs the framework a few dozen times).
MAX_SHRINK = 3


@dataclass
class Case:
    """One input to a loss: arrays with the class axis last, plus options.

    ``x`` is the first argument (logits, log-probabilities or probabilities),
    ``y`` the targets; ``opts`` holds concrete option values (``weight``
    arrays, ``reduction`` strings, ...).  ``region`` names the input region it
    was drawn from.
    """

    x: np.ndarray
    y: np.ndarray
    opts: dict = field(default_factory=dict)
    region: str = ""

    @property
    def dtype(self) -> str:
        return str(self.x.dtype)

    def replace(self, **kw) -> "Case":
        return dataclasses.replace(self, **kw)

    def to_json(self) -> dict:
        def conv(v):
            if isinstance(v, np.ndarray):
                return {"dtype": str(v.dtype), "data": _jsonable(v.tolist())}
            if isinstance(v, (np.floating, float)):
                return _jsonable(float(v))
            return v
        return {"x": conv(self.x), "y": conv(self.y),
                "opts": {k: conv(v) for k, v in self.opts.items()}, "region": self.region}

    def describe(self) -> str:
        """A short Python-like rendering of the case (used in the report)."""
        parts = [f"x={_fmt_array(self.x)}", f"y={_fmt_array(self.y)}"]
        parts += [f"{k}={_fmt_array(v) if isinstance(v, np.ndarray) else repr(v)}"
                  for k, v in self.opts.items() if not k.startswith("_")]
        if self.opts.get("_eager"):
            parts.append("(run eagerly)")
        return ", ".join(parts)


def _jsonable(v):
    if isinstance(v, list):
        return [_jsonable(e) for e in v]
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


def _fmt_array(a) -> str:
    a = np.asarray(a)
    # floatmode="unique": the shortest repr that round-trips, so a printed input is exact
    with np.printoptions(floatmode="unique", threshold=40, linewidth=10_000):
        s = np.array2string(a, separator=", ").replace("\n", "")
    return f"{s} ({a.dtype})" if a.dtype.kind == "f" else s


@dataclass
class Result:
    """Named output arrays of one evaluation (``value``, ``grad``, maybe ``hess``)."""

    arrays: dict
    warnings: tuple = ()


@dataclass
class Outcome:
    """The comparison of a framework result with the reference on one case."""

    ok: bool
    kind: str                       # "match", "value", "grad", "hess", "exception", ...
    errors: dict                    # name -> error in eps units (inf for NaN/inf mismatch)
    detail: str = ""
    framework: Result | None = None
    reference: Result | None = None

    @property
    def nonfinite(self) -> dict:
        """name -> True where the framework is NaN/inf and the reference is not."""
        out = {}
        if self.framework is None or self.reference is None:
            return out
        for k, r in self.reference.arrays.items():
            a = self.framework.arrays.get(k)
            if a is None:
                continue
            a, r = np.asarray(a, np.float64), np.asarray(r, np.float64)
            if a.shape != r.shape:
                continue
            out[k] = bool(np.any(~np.isfinite(a) & np.isfinite(r)))
        return out


def compare(fw: Result, ref: Result, dtype, scales: dict) -> Outcome:
    r"""Compare named arrays; errors in units of ``eps(dtype)``, normwise.

    For each name, with :math:`a` the framework's array and :math:`r` the
    reference's:

    * where :math:`r` is NaN, :math:`a` must be NaN; where :math:`r` is
      :math:`\pm\infty`, :math:`a` must equal it; where :math:`r` is finite,
      :math:`a` must be finite (else the error is ``inf``);
    * on the finite entries, ``err = max|a - r| / (eps * S)`` with
      ``S = max(max|r|, scales[name])``: relative to the largest reference entry
      or the operand scale, whichever is larger (a confident row's
      ``p - y`` cancels by design, so its absolute error is measured against
      the size of the operands, not the tiny result).
    """
    eps = float(np.finfo(np.dtype(dtype)).eps)
    errors, worst_kind, detail = {}, None, []
    for k, r in ref.arrays.items():
        if k not in fw.arrays:
            continue
        r = np.asarray(r, np.float64)
        a = np.asarray(fw.arrays[k], np.float64)
        if a.shape != r.shape:
            if a.size == r.size:
                a = a.reshape(r.shape)
            else:
                errors[k] = math.inf
                detail.append(f"{k}: shape {a.shape} != reference {r.shape}")
                worst_kind = worst_kind or k
                continue
        rn, an = np.isnan(r), np.isnan(a)
        rinf = np.isinf(r)
        bad = (rn != an) | (rinf & (a != r)) | (np.isfinite(r) & ~np.isfinite(a))
        if bad.any():
            errors[k] = math.inf
            i = _index(np.argmax(bad), bad.shape)
            detail.append(f"{k}{list(i) if i else ''}: framework {float(a[i])!r} vs reference "
                          f"{float(r[i])!r}")
            worst_kind = worst_kind or k
            continue
        fin = np.isfinite(r)
        if not fin.any():
            errors[k] = 0.0
            continue
        S = max(float(np.max(np.abs(r[fin]))), float(scales.get(k, 0.0)), np.finfo(np.float64).tiny)
        err = float(np.max(np.abs(a[fin] - r[fin]))) / (eps * S)
        errors[k] = err
        if err > TOL_ULPS:
            worst_kind = worst_kind or k
            d = np.where(fin, np.abs(a - r), 0)
            i = _index(np.argmax(d), d.shape)
            detail.append(f"{k}{list(i) if i else ''}: framework {float(a[i])!r} vs reference "
                          f"{float(r[i])!r} ({err:.3g} eps)")
    ok = worst_kind is None
    return Outcome(ok, "match" if ok else worst_kind, errors, "; ".join(detail), fw, ref)


def _index(flat, shape) -> tuple:
    return tuple(int(j) for j in np.unravel_index(flat, shape)) if shape else ()


@dataclass
class Known:
    """A catalogued finding: a named convention difference or a known defect.

    ``applies(case, outcome)`` says whether a sweep deviation is explained by
    this finding.  ``probe`` is a hand-picked smallest input (``Case``) for the
    target named ``target``; ``check(case, outcome)`` says whether the probe
    reproduces the finding (default: the framework deviates from the
    reference).  For conventions, ``exact`` is the convention-free reference
    (the core library's exact formula): a convention difference is *verified*
    when the framework matches its convention's reference and differs from
    ``exact`` on the probe.
    """

    id: str
    kind: str                       # "defect" or "convention"
    title: str
    target: str
    refs: str = ""
    explanation: str = ""
    applies: Callable | None = None
    probe: Callable[[], Case] | None = None
    check: Callable | None = None
    exact: Callable | None = None
    fields: tuple | None = None      # compare only these arrays when verifying a convention


def nan_with_neginf(case: Case, o: Outcome) -> bool:
    """The framework's value is NaN where the reference's is not, on an input with -inf logits."""
    if o.framework is None or "value" not in o.framework.arrays:
        return False
    a = np.asarray(o.framework.arrays["value"], np.float64)
    r = np.asarray(o.reference.arrays["value"], np.float64)
    return bool(np.any(np.isneginf(case.x))) and bool(np.any(np.isnan(a) & ~np.isnan(r)))


@dataclass
class Target:
    """One framework function under one convention.

    ``run(case) -> Result`` calls the framework; ``reference(case) -> Result``
    evaluates :mod:`ce_reference` under the framework's convention;
    ``gen(rng, dtype, opts, region) -> Case`` builds inputs; ``option_sets`` are
    the option dicts swept; ``regions`` the input regions; ``scales(case)``
    the operand scales used by :func:`compare`.
    """

    name: str
    convention: str
    run: Callable[[Case], Result]
    reference: Callable[[Case], Result]
    gen: Callable
    option_sets: list
    regions: tuple
    scales: Callable[[Case], dict]
    dtypes: tuple = ("float64", "float32")
    repeats: int = 1


def evaluate(target: Target, case: Case) -> Outcome:
    """Run the framework and the reference on ``case`` and compare them."""
    ref = target.reference(case)
    try:
        fw = target.run(case)
    except Exception as exc:  # the framework refused a valid input
        return Outcome(False, "exception", {}, f"{type(exc).__name__}: {exc}".splitlines()[0],
                       None, ref)
    return compare(fw, ref, case.dtype, target.scales(case))


def _row_count(case: Case) -> int:
    return case.x.shape[0] if case.x.ndim else 1


def shrink(target: Target, case: Case, still: Callable[[Case, Outcome], bool],
           budget: int = 150) -> Case:
    """Greedy shrink of ``case`` while ``still(case, outcome)`` holds.

    Tries, in order: dropping rows, dropping options (back to defaults),
    dropping classes/columns, and simplifying values (to 0, to round numbers).
    Candidates stay inside the documented domain: probability rows are never
    edited entry by entry, a class column is dropped only where its target
    mass is 0, and only candidates that the reference accepts count.
    Deterministic.
    """
    calls = [0]

    def holds(c: Case) -> bool:
        if calls[0] >= budget:
            return False
        calls[0] += 1
        try:
            o = evaluate(target, c)
        except (ValueError, TypeError, IndexError):  # the reference rejects the candidate
            return False
        return (not o.ok) and still(c, o)

    cur = case
    changed = True
    while changed and calls[0] < budget:
        changed = False
        # 1. drop rows
        n = _row_count(cur)
        i = 0
        while n > 1 and i < n:
            cand = _drop_row(cur, i)
            if cand is not None and holds(cand):
                cur, n, changed = cand, n - 1, True
            else:
                i += 1
        # 2. drop optional arrays / simplify options
        for k in list(cur.opts):
            v = cur.opts[k]
            for alt in _option_alternatives(k, v):
                opts = dict(cur.opts)
                if alt is _DROP:
                    opts.pop(k)
                else:
                    opts[k] = alt
                cand = cur.replace(opts=opts)
                if holds(cand):
                    cur, changed = cand, True
                    break
        # 3. drop columns (classes)
        if cur.x.ndim == 2:
            j = 0
            while cur.x.shape[1] > 2 and j < cur.x.shape[1]:
                cand = _drop_col(cur, j)
                if cand is not None and holds(cand):
                    cur, changed = cand, True
                else:
                    j += 1
        # 4. simplify values of x, then y
        for attr in ("x", "y"):
            arr = getattr(cur, attr)
            if arr.dtype.kind != "f":
                continue
            if attr == "y" and arr.ndim == 2 and arr.shape == cur.x.shape:
                continue                 # probability rows: changing one entry breaks the row
            for idx in np.ndindex(arr.shape):
                v = arr[idx]
                for alt in _simpler_values(v):
                    new = arr.copy()
                    new[idx] = alt
                    if attr == "x" and cur.opts.get("_rows_sum_to_one"):
                        continue
                    cand = cur.replace(**{attr: new})
                    if holds(cand):
                        cur, arr, changed = cand, new, True
                        break
    return cur


_DROP = object()


def _option_alternatives(k, v):
    if k.startswith("_"):
        return []
    if k == "reduction":
        return [] if v in ("sum", "none") else ["sum"]
    if isinstance(v, np.ndarray):
        return [_DROP, np.ones_like(v)]
    if k in ("label_smoothing",) and v:
        return [_DROP]
    return []


def _simpler_values(v):
    v = float(v)
    if not math.isfinite(v) or v == 0:
        return []
    out = [0.0]
    r = float(f"{v:.1g}")
    if r != v:
        out.append(r)
    return out


def _drop_row(c: Case, i: int):
    if c.x.ndim == 0:
        return None
    x = np.delete(c.x, i, axis=0)
    y = np.delete(c.y, i, axis=0) if c.y.ndim else c.y
    opts = dict(c.opts)
    for k in ("sample_weight",):
        if isinstance(opts.get(k), np.ndarray) and opts[k].shape[:1] == c.x.shape[:1]:
            opts[k] = np.delete(opts[k], i, axis=0)
    return c.replace(x=x, y=y, opts=opts)


def _drop_col(c: Case, j: int):
    x = np.delete(c.x, j, axis=1)
    y = c.y
    if y.ndim == 2 and y.shape == c.x.shape:
        if np.any(y[:, j] != 0):        # keep target rows summing to what they summed to
            return None
        y = np.delete(y, j, axis=1)
    elif y.ndim == 1 and y.dtype.kind in "iu":
        valid = (y >= 0) & (y < c.x.shape[1])
        if np.any(valid & (y == j)):
            return None
        y = np.where(valid & (y > j), y - 1, y)
    elif y.ndim == 1 and y.dtype.kind == "f" and c.x.ndim == 2:
        if np.any(y == j):
            return None
        y = np.where(y > j, y - 1, y)
    if c.opts.get("_rows_sum_to_one"):
        return None
    opts = dict(c.opts)
    for k in ("weight", "pos_weight"):
        if isinstance(opts.get(k), np.ndarray) and opts[k].shape == (c.x.shape[1],):
            opts[k] = np.delete(opts[k], j)
    return c.replace(x=x, y=y, opts=opts)


# --------------------------------------------------------------------------- sweeping

@dataclass
class RowStats:
    """Summary of one target x option set x dtype."""

    target: str
    options: str
    dtype: str
    cases: int = 0
    matches: int = 0
    worst: dict = field(default_factory=dict)      # name -> worst error over matches
    findings: dict = field(default_factory=dict)   # finding id -> count

    def to_json(self):
        return {"target": self.target, "options": self.options, "dtype": self.dtype,
                "cases": self.cases, "matches": self.matches,
                "worst_eps": {k: _jsonable(v) for k, v in self.worst.items()},
                "findings": self.findings}


def options_label(opts: dict) -> str:
    parts = []
    for k, v in opts.items():
        if k.startswith("_"):
            continue
        parts.append(f"{k}={v}" if not isinstance(v, np.ndarray) else k)
    return ", ".join(parts) or "defaults"


def run_target(target: Target, known: list, seed: int, progress=None):
    """Sweep one target; returns ``(rows, attributed, unclassified)``.

    ``attributed`` maps a known finding id to ``[count, first_case, first_outcome]``;
    ``unclassified`` is a list of ``(case, outcome)``.
    """
    rows, attributed, unclassified = [], {}, []
    relevant = [k for k in known if k.applies is not None and covers(k.target, target.name)]
    for oi, spec in enumerate(target.option_sets):
        for dtype in target.dtypes:
            st = RowStats(target.name, options_label(spec), dtype)
            for ri, region in enumerate(target.regions):
                for rep in range(target.repeats):
                    rng = np.random.default_rng([seed, _stable(target.name), oi, ri, rep,
                                                 0 if dtype == "float64" else 1])
                    case = target.gen(rng, dtype, spec, region)
                    if case is None:
                        continue
                    st.cases += 1
                    o = evaluate(target, case)
                    if o.ok:
                        st.matches += 1
                        for k, v in o.errors.items():
                            st.worst[k] = max(st.worst.get(k, 0.0), v)
                        continue
                    for k in relevant:
                        if k.applies(case, o):
                            a = attributed.setdefault(k.id, [0, case, o])
                            a[0] += 1
                            st.findings[k.id] = st.findings.get(k.id, 0) + 1
                            break
                    else:
                        unclassified.append((case, o))
                        st.findings["unclassified"] = st.findings.get("unclassified", 0) + 1
                    if progress is not None:
                        progress()
            rows.append(st)
    return rows, attributed, unclassified


def covers(known_target: str, target_name: str) -> bool:
    """A finding about ``F.x`` also explains deviations of the variants ``F.x <suffix>``."""
    return target_name == known_target or target_name.startswith(known_target + " ")


def _stable(name: str) -> int:
    import zlib
    return zlib.crc32(name.encode())


def probe_known(k: Known, target: Target) -> dict:
    """Run a catalogued finding's probe and classify what it shows.

    * ``defect``: reproduced when the framework deviates from the reference (or
      ``k.check`` holds); otherwise ``not reproduced``.
    * ``convention``: verified when the framework matches its convention's
      reference (or ``k.check`` holds) *and* differs from ``k.exact``.
    * ``validation`` (an input outside the documented domain): ``match`` when
      the framework raises, ``defect`` when it returns finite numbers
      (silent acceptance), ``convention`` when it returns NaN/inf (the
      documented JAX out-of-bounds behaviour, for instance).
    """
    case = k.probe()
    out = {"input": case.describe(), "dtype": case.dtype}
    if k.kind == "validation":
        try:
            r = target.run(case)
        except Exception as exc:  # rejecting the input is the right answer
            out.update({"class": "match", "reproduced": True,
                        "framework": f"raises {type(exc).__name__}: "
                                     f"{str(exc).splitlines()[0][:160]}"})
            return out
        finite = all(np.all(np.isfinite(np.asarray(v, np.float64))) for v in r.arrays.values())
        out.update({"class": "defect" if finite else "convention", "reproduced": True,
                    "framework": ("returns " if finite else "returns non-finite ")
                    + _fmt_result(r)})
        return out
    o = evaluate(target, case)
    out["framework"] = _fmt_result(o.framework) if o.framework else o.detail
    out["reference"] = _fmt_result(o.reference) if o.reference else ""
    out["detail"] = o.detail
    if k.kind == "convention":
        if k.fields is not None and o.framework is not None:
            sub = lambda r: Result({n: v for n, v in r.arrays.items() if n in k.fields})
            o = compare(sub(o.framework), sub(o.reference), case.dtype, target.scales(case))
        follows = o.ok if k.check is None else bool(k.check(case, o))
        differs = False
        if k.exact is not None and o.framework is not None:
            ex = k.exact(case)
            out["exact"] = _fmt_result(ex)
            differs = not compare(o.framework, ex, case.dtype, target.scales(case)).ok
        out["reproduced"] = bool(follows and differs)
        out["class"] = "convention" if out["reproduced"] else "not reproduced"
        return out
    reproduced = (not o.ok) if k.check is None else bool(k.check(case, o))
    out["reproduced"] = reproduced
    out["class"] = "defect" if reproduced else "not reproduced"
    return out


def _fmt_result(r: Result) -> str:
    return "; ".join(f"{k}={_fmt_array(np.asarray(v))}" for k, v in r.arrays.items())


def operand_scales(inputs: str, reference: Callable[[Case], Result]):
    """``scales(case)`` for :func:`compare`: the size of the operands.

    * ``value``: ``W * max(1, max|x|)`` for logits / log-probabilities (the
      terms of ``logsumexp(x) - x_y`` have the size of the logits), ``W`` for
      probabilities, times the number of terms for a ``sum``; ``W`` is the
      product of the largest entries (at least 1) of the weight arrays.
    * ``grad``: the largest reference gradient entry at the neutral input
      (logits 0, uniform probabilities), i.e. the size of ``p`` and ``q`` in
      ``p - q`` after weighting and the reduction's scale.
    * ``hess``: ``W / 4`` (the largest value of ``p (1 - p)``).
    """
    from ._cases import neutral_input

    def scales(case: Case) -> dict:
        W = 1.0
        for k in ("weight", "sample_weight", "pos_weight"):
            v = case.opts.get(k)
            if isinstance(v, np.ndarray) and v.size:
                W *= max(1.0, float(np.max(v)))
        xs = 1.0
        if inputs in ("logits", "binary-logits", "logprobs"):
            xf = np.abs(case.x[np.isfinite(case.x)]).astype(np.float64)
            xs = max(1.0, float(xf.max())) if xf.size else 1.0
        nsum = case.x.size if (case.opts.get("reduction") == "sum"
                               or case.opts.get("normalize") is False) else 1
        out = {"value": W * xs * nsum, "hess": W / 4}
        try:
            g = reference(case.replace(x=neutral_input(case, inputs))).arrays.get("grad")
        except (ValueError, TypeError):
            g = None
        if g is not None:
            g = np.asarray(g, np.float64)
            g = g[np.isfinite(g)]
            out["grad"] = float(np.max(np.abs(g))) if g.size else 0.0
        return out

    return scales
