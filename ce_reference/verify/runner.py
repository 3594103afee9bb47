"""Run the verification protocol: the rows of every loss, option set, dtype and
input region, their cases cut into batches (:mod:`.batches`) and run serially, on
local processes or on any executor (:mod:`.sweep`), each case through every
applicable oracle (:mod:`.checks`, whose docstring lists the columns), merged into
a :class:`Report`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from .. import backends, registry
from ..cases import DTYPES, layouts, rows as case_rows
from . import batches, sweep
from .checks import MEASURES, _NUMBA, _compiled_runs, environment


# Default sweep: total cases, spread evenly over the rows (each row gets at
# least one case per layout).  Chosen so the default run stays well under two
# minutes on two cores; see docs/verification.md for the measurement.
DEFAULT_CASES = 600


@dataclass
class Report:
    rows: list
    seed: int
    cases: int
    elapsed: float
    environment: dict
    notes: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    def worst(self) -> dict:
        """Worst error per measure over all rows, split by dtype."""
        out = {}
        for r in self.rows:
            for m, s in r.stats.items():
                if s is None:
                    continue
                key = f"{m} [{r.dtype}]"
                out[key] = max(out.get(key, 0.0), s["worst"])
        return out

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "seed": self.seed,
            "cases": self.cases,
            "elapsed_seconds": round(self.elapsed, 2),
            "environment": self.environment,
            "notes": self.notes,
            "measures": {m: _measure_doc(m) for m in MEASURES},
            "worst": self.worst(),
            "rows": [
                {"loss": r.loss, "label": r.label, "option_set": r.option_set,
                 "dtype": r.dtype,
                 "region": r.region, "n": r.n, "ok": r.ok, "stats": r.stats,
                 "failures": r.failures}
                for r in self.rows
            ],
        }


def _measure_doc(m):
    return {
        "mpmath": "max over value and gradient elements of min(ULP, error/(eps*operand)) vs mpmath",
        "fused": "as mpmath, for the fused kernels of NAME_value_and_grad",
        "compiled": "as mpmath, for NAME_value_and_grad(backend='numba') (the compiled "
                    "kernels)",
        "grad ULP": "max gradient error in ULP vs mpmath (information only, gates nothing: "
                    "large where p - y cancels)",
        "jax": "as mpmath, against the JAX twin and jax.grad in float64",
        "check_grad": "||g - fd|| / ||operands||, fd the central differences of the per-row "
                      "losses (scipy.optimize.approx_fprime with steps +h and -h), over "
                      "the resolvable elements; kink points checked one-sided; float64 only",
        "complex step": "as mpmath, against Im f(x + ih)/h (analytic losses)",
        "hvp": "as mpmath, NAME_hvp against the exact (mpmath) H v",
        "hvp jax": "as jax, NAME_hvp against jax.jvp(jax.grad); jax.hessian @ v checked "
                   "normwise on small inputs (a failure is a contract failure)",
    }[m]


def resolve_specs(losses=None, specs=None):
    """Specs to verify: ``specs`` as given, else the named (or all) registered losses."""
    if specs is not None:
        return list(specs)
    if losses is None:
        return list(registry.LOSSES.values())
    names = [losses] if isinstance(losses, str) else list(losses)
    return [registry.get(n) for n in names]


def plan(specs, cases=DEFAULT_CASES, dtypes=DTYPES, option_sets=None, regions=None):
    """``[(spec, option_set, dtype, region, n_cases)]`` for a sweep of about ``cases`` cases.

    Each row gets ``ceil(cases / rows)`` cases, and at least one per shape layout
    of its region, so the total is at least ``cases`` and at least the number of
    layouts over all rows (``plan(specs, 1)``).
    """
    rows = [r for r in case_rows(specs, dtypes)
            if (option_sets is None or r[1].name in option_sets)
            and (regions is None or r[3] in regions)]
    per_row = math.ceil(cases / max(len(rows), 1))
    out = []
    for spec, opt, dtype, region in rows:
        n = max(per_row, len(layouts(spec, region)))
        out.append((spec, opt, dtype, region, n))
    return out


def verify(losses=None, *, cases: int = DEFAULT_CASES, seed: int = 0, specs=None,
           dtypes=DTYPES, hvp=True, progress=None, option_sets=None,
           regions=None, workers=None, executor=None, checkpoint=None, resume=False,
           batch_cases=None, status=None) -> Report:
    """Run the protocol on ``losses`` (names; default all) and return a :class:`Report`.

    ``specs`` replaces the registry (the sensitivity tests plant bugs this
    way); ``hvp`` is True (use ``spec.hvp`` where it exists), False, or a dict
    ``{loss name: hvp function}``; ``progress(done, total, row_label)`` is
    called after every case (after every batch on an executor); ``status`` is
    called likewise with a :class:`~.sweep.SweepStatus` (rate, ETA, failing rows);
    ``option_sets`` / ``regions`` (names) restrict the rows.

    The cases run in batches of ``batch_cases`` (default
    :data:`~.batches.BATCH_CASES`) consecutive cases of a row: in this process, on
    a pool of ``workers`` local processes, or on ``executor`` (any
    ``concurrent.futures.Executor``, e.g. a Dask cluster's
    ``distributed.Client(address).get_executor()``).  The rows are bitwise the same
    for all of them.  ``checkpoint`` (a path) records every finished batch;
    ``resume=True`` continues the sweep it holds (see :mod:`.sweep`).
    """
    if isinstance(cases, bool) or not isinstance(cases, int) or cases < 1:
        raise ValueError(f"cases must be a positive int, got {cases!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    batch_cases = batches.BATCH_CASES if batch_cases is None else batch_cases
    _check_execution(workers, executor, checkpoint, resume, batch_cases)
    specs = resolve_specs(losses, specs)
    work = plan(specs, cases, dtypes, option_sets, regions)
    total = sum(n for *_, n in work)
    start = time.perf_counter()
    notes = []
    hvp_missing = [s.name for s in specs if s.hvp is None]
    if hvp is True and hvp_missing:
        notes.append("no Hessian-vector product (second-order oracles not run) for: "
                     + ", ".join(hvp_missing))
    compiled_skipped = [s.name for s in specs if _NUMBA in s.backends and not _compiled_runs(s)]
    if compiled_skipped:
        notes.append("compiled column not run (numba is not installed: "
                     f"{backends.INSTALL_HINT}) for: " + ", ".join(compiled_skipped))
    header = {"cases": cases, "seed": seed, "losses": [s.name for s in specs],
              "dtypes": [np.dtype(d).name for d in dtypes],
              "option_sets": None if option_sets is None else sorted(option_sets),
              "regions": None if regions is None else sorted(regions),
              "hvp": hvp if isinstance(hvp, bool) else sorted(hvp)}
    rows, sweep_notes, sweep_env = sweep.run_sweep(
        work, seed=seed, hvp=lambda spec: _hvp_function(hvp, spec), header_extra=header,
        batch_cases=batch_cases, workers=workers, executor=executor, checkpoint=checkpoint,
        resume=resume, progress=progress, status=status)
    return Report(rows, seed, total, time.perf_counter() - start,
                  {**environment(), **sweep_env}, notes + sweep_notes)


def _hvp_function(hvp, spec):
    if isinstance(hvp, dict):
        return hvp.get(spec.name)
    return spec.hvp if hvp else None


def _check_execution(workers, executor, checkpoint, resume, batch_cases):
    """The arguments of :func:`verify` that say how it runs (before any work)."""
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or workers < 1):
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    if workers is not None and executor is not None:
        raise ValueError("give workers (a local process pool) or executor, not both")
    if executor is not None and not callable(getattr(executor, "submit", None)):
        raise TypeError(f"executor must be a concurrent.futures.Executor, got "
                        f"{type(executor).__name__}")
    if isinstance(batch_cases, bool) or not isinstance(batch_cases, int) or batch_cases < 1:
        raise ValueError(f"batch_cases must be a positive int, got {batch_cases!r}")
    if resume and checkpoint is None:
        raise ValueError("resume=True needs the checkpoint to resume (checkpoint=PATH)")
