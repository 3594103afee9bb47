"""Batches of a verification sweep: the unit of work that a process or a cluster worker runs.

A sweep's plan (rows ``(spec, option set, dtype, region, n)``, :func:`.runner.plan`) is
cut into batches of at most ``batch_cases`` consecutive cases of one row
(:func:`split`).  The cut depends only on the plan and ``batch_cases``, never on the
executor, so a checkpoint written by one executor resumes on another.

A worker runs :func:`run_batch` on a :class:`BatchTask` -- plain picklable data: the
loss spec travels as its ``LossSpec.ref`` when that names this very spec, pickled
otherwise (:func:`ship_spec`) -- and returns a :class:`BatchResult`: per measure the
error of every case (a row's median needs them all), the worst failing cases and the
cases with problems, their inputs as text.  :func:`run_batch` fixes everything a
result could depend on in the worker's state (warning filters, NumPy's error state,
BLAS threads, JAX's float64 mode, one batch at a time per process) and never raises:
a failure comes back as ``BatchResult.error``.

The parent merges a row's results in case order (:class:`RowTally`), whatever order
they arrived in, with the same rules as a single serial pass, so the report is bitwise
the same for any executor.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import math
import pickle
import platform
import threading
import time
import traceback
import warnings
import zlib
from dataclasses import dataclass, field

import numpy as np

from ..cases import make_case
from ..spec import load
from .checks import GATES, MEASURES, WORST_SHOWN, Row, environment, evaluate

#: Cases per batch.  A case takes ~10-500 ms (JAX compiles each new shape once per
#: process), so a batch is seconds of work: the scheduler's per-task overhead (a few
#: ms, docs/distributed.md) stays under 1%, and a lost worker costs at most one batch.
BATCH_CASES = 64
#: Cases with contract problems kept per batch (and per row): the report shows at most
#: this many failures per row.
PROBLEMS_KEPT = 4 * WORST_SHOWN
#: Threads of a batch's calls (BLAS, and the kernels' default ``workers``): the
#: parallelism of a sweep is across batches, and a fixed count keeps results from
#: depending on the machine (``linear_cross_entropy``'s GEMMs change with the BLAS
#: thread count).
BATCH_THREADS = 1
#: NumPy's error state inside a batch: NumPy's own defaults, set explicitly so that a
#: worker's earlier ``np.seterr`` cannot change what the loss warns about.
NUMPY_ERRSTATE = {"divide": "warn", "over": "warn", "under": "ignore", "invalid": "warn"}
#: Characters of a worker's traceback kept in a failed batch's error.
TRACEBACK_CHARS = 2000


# --------------------------------------------------------------------------- the plan

@dataclass(frozen=True)
class BatchTask:
    """Everything a worker needs to run cases ``start .. stop - 1`` of one row.

    ``index`` is the batch's position in the plan, ``row`` its row's; ``spec`` and
    ``hvp`` are what :func:`ship_spec` / :func:`ship_hvp` made of them.
    """

    index: int
    row: int
    loss: str
    spec: tuple
    option_set: str
    dtype: str
    region: str
    start: int
    stop: int
    seed: int
    hvp: object = None

    @property
    def n(self) -> int:
        return self.stop - self.start


def split(n_cases: int, batch_cases: int) -> list:
    """``[(start, stop)]``: ``n_cases`` cut into the fewest batches of at most
    ``batch_cases``, of sizes differing by at most one."""
    count = max(1, math.ceil(n_cases / batch_cases))
    bounds = [n_cases * k // count for k in range(count + 1)]
    return [(bounds[k], bounds[k + 1]) for k in range(count)]


def named_by_ref(spec) -> bool:
    """Whether importing ``spec.ref`` gives this very spec.  A spec derived from a
    registered one (``dataclasses.replace``: the planted bugs) keeps the original's
    ``ref``, which then names another loss."""
    if not spec.ref:
        return False
    try:
        return load(spec.ref) == spec
    except Exception:  # noqa: BLE001 -- not importable here
        return False


def ship_spec(spec) -> tuple:
    """How ``spec`` travels to another process: ``("ref", "module:attribute")`` when its
    ``ref`` names it (:func:`named_by_ref`), else ``("pickle", bytes)``.  Raises
    ``TypeError`` when it can be neither imported nor pickled (nor cloudpickled, when
    cloudpickle is installed)."""
    if named_by_ref(spec):
        return ("ref", spec.ref)
    return ("pickle", _dumps(spec, f"loss {spec.name!r}"))


def ship_hvp(spec, hvp_fn):
    """None (no second-order oracles), ``"spec"`` (``spec.hvp``) or the function pickled."""
    if hvp_fn is None:
        return None
    if hvp_fn is spec.hvp:
        return "spec"
    return ("pickle", _dumps(hvp_fn, f"the Hessian-vector product given for {spec.name!r}"))


def in_process(spec, hvp_fn) -> tuple:
    """``(spec, hvp)`` handles for batches run in this process: the objects themselves."""
    return ("object", spec), None if hvp_fn is None else ("object", hvp_fn)


def _dumps(obj, what) -> bytes:
    try:
        return pickle.dumps(obj)
    except Exception as exc:  # noqa: BLE001 -- lambdas, closures: try cloudpickle
        first = exc
    try:
        import cloudpickle
    except ImportError:
        raise TypeError(
            f"{what} cannot be sent to worker processes: it is not importable by its "
            f"LossSpec.ref and pickling it failed ({first}); define it at module level "
            "with ref='module:attribute', or install cloudpickle (ce_reference[dask])"
        ) from None
    try:
        return cloudpickle.dumps(obj)
    except Exception as exc:  # noqa: BLE001
        raise TypeError(f"{what} cannot be sent to worker processes: neither pickle nor "
                        f"cloudpickle can serialise it ({exc}); define it at module level "
                        "with ref='module:attribute'") from None


# --------------------------------------------------------------------------- in the worker

#: One batch at a time per process: warning filters, NumPy's error state, BLAS threads
#: and mpmath's precision are process-wide, so batches in two threads of one worker
#: would disturb each other.
_BATCH_LOCK = threading.Lock()
#: Pickled specs and HVP functions kept unpickled per process: each is rebuilt once, not
#: once per batch (a sweep ships one pickle per loss; a long-lived worker sees a few sweeps).
SHIPPED_KEPT = 32


def run_batch(task: BatchTask, on_case=None) -> "BatchResult":
    """Run the batch's cases through :func:`.checks.evaluate`; never raises.

    ``on_case(i)`` is called after case ``i`` (the serial progress display).
    """
    started = time.perf_counter()
    with _BATCH_LOCK:
        try:
            with _fixed_state():
                spec, opt, hvp_fn = _unship(task)
                summary = _Summary(task)
                for i in range(task.start, task.stop):
                    case = make_case(spec, opt, task.dtype, task.region, i, task.seed)
                    summary.add(i, evaluate(spec, case, hvp_fn))
                    if on_case is not None:
                        on_case(i)
        except Exception as exc:  # noqa: BLE001 -- reported, retried, never lost
            text = traceback.format_exc()[-TRACEBACK_CHARS:]
            return BatchResult.failure(task, f"{type(exc).__name__}: {exc}\n{text}")
    return summary.result(time.perf_counter() - started)


@contextlib.contextmanager
def _fixed_state():
    """The process state a result may depend on, set explicitly for one batch.

    Warnings are ignored outside :func:`.checks.evaluate`'s own recording of the
    loss's calls (which sets its filters itself): a warning from an oracle changes no
    number, and the outcome must not depend on the caller's filters (pytest's
    ``error``).  ``jax_enable_x64`` is the oracles' mode (they also set it).
    """
    from threadpoolctl import threadpool_limits

    from ..kernels._blocks import pinned_cores

    with warnings.catch_warnings(), np.errstate(**NUMPY_ERRSTATE), \
            threadpool_limits(limits=BATCH_THREADS), pinned_cores(BATCH_THREADS):
        warnings.simplefilter("ignore")
        import jax

        jax.config.update("jax_enable_x64", True)
        yield


def _unship(task):
    spec = _unshipped(task.spec)
    opt = next((o for o in spec.option_sets if o.name == task.option_set), None)
    if opt is None:
        raise LookupError(f"loss {spec.name!r} has no option set {task.option_set!r} in "
                          "this worker (a different ce_reference or loss version?)")
    hvp_fn = spec.hvp if task.hvp == "spec" else _unshipped(task.hvp)
    return spec, opt, hvp_fn


def _unshipped(handle):
    if handle is None:
        return None
    kind, value = handle
    if kind == "object":
        return value
    return load(value) if kind == "ref" else _unpickled(value)


@functools.lru_cache(maxsize=SHIPPED_KEPT)
def _unpickled(blob: bytes):
    return pickle.loads(blob)


def environment_digest() -> str:
    """What the numbers of a case depend on besides its inputs: the versions of the
    libraries, the machine and the SIMD extensions NumPy dispatches to."""
    if "digest" not in _ENVIRONMENT:
        env = {k: v for k, v in environment().items() if k != "platform"}
        env["machine"] = platform.machine()
        env["ce_reference"] = _package_version()
        features = getattr(getattr(np, "_core", None), "_multiarray_umath", None)
        features = getattr(features, "__cpu_features__", {})
        env["simd"] = ",".join(sorted(k for k, on in features.items() if on))
        text = repr(sorted(env.items()))
        _ENVIRONMENT["digest"] = hashlib.sha256(text.encode()).hexdigest()[:16]
    return _ENVIRONMENT["digest"]


_ENVIRONMENT: dict = {}


def _package_version() -> str:
    from .. import __version__

    return __version__


# --------------------------------------------------------------------------- the results

def failing(error, tol) -> bool:
    """Whether a case's error fails its gate (NaN fails, as in a row's verdict)."""
    return tol is not None and error is not None and not error <= tol


def _rank(error, index):
    """Sort key of failing cases: worst first (NaN worst of all), then case order."""
    return (-math.inf if math.isnan(error) else -error, index)


@dataclass
class BatchResult:
    """What a batch found, compact and picklable (see the module docstring).

    ``errors``: ``{measure: (values, present)}``, float64 errors of every case and
    whether the measure applied; ``worst``: ``{measure: [(error, i, input, detail)]}``,
    its failing cases, worst first (at most ``WORST_SHOWN``); ``problems``:
    ``[(i, input, detail)]``, the first cases with contract problems (at most
    ``PROBLEMS_KEPT``) out of ``n_problems``; ``error``: why the batch failed (None
    when it ran); ``environment``: :func:`environment_digest` of the process that ran
    it; ``seconds``: its run time there (information only).
    """

    index: int
    start: int
    stop: int
    errors: dict = field(default_factory=dict)
    worst: dict = field(default_factory=dict)
    problems: list = field(default_factory=list)
    n_problems: int = 0
    error: str | None = None
    environment: str = ""
    seconds: float = 0.0

    @property
    def failing(self) -> bool:
        return bool(self.worst or self.n_problems)

    @classmethod
    def failure(cls, task, error):
        return cls(task.index, task.start, task.stop, error=error,
                   environment=environment_digest())

    def to_json(self) -> dict:
        """A JSON object (floats exact: ``repr``; NaN / inf as JSON's extensions)."""
        return {"batch": self.index, "start": self.start, "stop": self.stop,
                "errors": {m: [_encode(v), _encode(np.packbits(p))]
                           for m, (v, p) in self.errors.items()},
                "worst": {m: [list(w) for w in ws] for m, ws in self.worst.items()},
                "problems": [list(p) for p in self.problems], "n_problems": self.n_problems,
                "environment": self.environment, "seconds": self.seconds}

    @classmethod
    def from_json(cls, obj: dict) -> "BatchResult":
        n = obj["stop"] - obj["start"]
        errors = {m: (np.frombuffer(_decode(v), "<f8").astype(np.float64),
                      np.unpackbits(np.frombuffer(_decode(p), np.uint8), count=n).astype(bool))
                  for m, (v, p) in obj["errors"].items()}
        return cls(obj["batch"], obj["start"], obj["stop"], errors,
                   {m: [tuple(w) for w in ws] for m, ws in obj["worst"].items()},
                   [tuple(p) for p in obj["problems"]], obj["n_problems"], None,
                   obj["environment"], obj["seconds"])


def _encode(array) -> str:
    return base64.b64encode(zlib.compress(np.ascontiguousarray(array).tobytes(), 1)).decode()


def _decode(text) -> bytes:
    return zlib.decompress(base64.b64decode(text))


class _Summary:
    """Accumulates a batch's :class:`~.checks.CaseResult` s into a :class:`BatchResult`."""

    def __init__(self, task):
        self.task = task
        self.values = {m: np.zeros(task.n) for m in MEASURES}
        self.present = {m: np.zeros(task.n, bool) for m in MEASURES}
        self.found = BatchResult(task.index, task.start, task.stop,
                                 environment=environment_digest())
        self.dtype = np.dtype(task.dtype)

    def add(self, i, res):
        out, k = self.found, i - self.task.start
        for m in MEASURES:
            err = res.errors[m]
            if err is None:
                continue
            self.values[m][k], self.present[m][k] = err, True
            tol = _gate(m, self.dtype)
            if failing(err, tol):
                kept = out.worst.setdefault(m, [])
                kept.append((float(err), i, res.case.describe(), res.details.get(m, "")))
                kept.sort(key=lambda w: _rank(w[0], w[1]))
                del kept[WORST_SHOWN:]
        if res.problems:
            out.n_problems += 1
            if len(out.problems) < PROBLEMS_KEPT:
                out.problems.append((i, res.case.describe(), "; ".join(res.problems)))

    def result(self, seconds):
        out = self.found
        out.errors = {m: (self.values[m], self.present[m]) for m in MEASURES
                      if self.present[m].any()}
        out.seconds = seconds
        return out


def _gate(measure, dtype):
    gate = GATES.get(measure)
    return None if gate is None else gate.get(dtype)


# --------------------------------------------------------------------------- in the parent

class RowTally:
    """The results of one row's batches, merged in case order into a :class:`~.checks.Row`.

    The statistics are those of a single pass over the row's cases: worst and median
    of every case's error per measure, the ``WORST_SHOWN`` worst failing cases per
    measure, then the cases with contract problems, at most ``4 * WORST_SHOWN``
    failures in all.
    """

    def __init__(self, spec, opt, dtype, region, n, batches):
        self.key = (spec.name, spec.label, opt.name, np.dtype(dtype), region, n)
        self.expected = batches
        self.results: dict = {}
        self.failing = False

    def add(self, result: BatchResult) -> None:
        self.results[result.start] = result
        self.failing = self.failing or result.failing

    @property
    def complete(self) -> bool:
        return len(self.results) == self.expected

    def row(self) -> Row:
        name, label, opt_name, dtype, region, n = self.key
        ordered = [self.results[s] for s in sorted(self.results)]
        stats, failures, ok = {}, [], True
        for m in MEASURES:
            vals = np.concatenate([r.errors[m][0][r.errors[m][1]] for r in ordered
                                   if m in r.errors] or [np.zeros(0)])
            tol = _gate(m, dtype)
            if not vals.size or (GATES.get(m) is not None and tol is None):
                stats[m] = None
                continue
            worst = float(np.max(vals))
            stats[m] = {"worst": worst, "median": float(np.median(vals)), "n": int(vals.size),
                        "tol": tol}
            if tol is not None and not worst <= tol:
                ok = False
                kept = sorted((w for r in ordered for w in r.worst.get(m, ())),
                              key=lambda w: _rank(w[0], w[1]))
                failures += [{"measure": m, "error": w[0], "case": w[2], "detail": w[3]}
                             for w in kept[:WORST_SHOWN]]
        problems = [p for r in ordered for p in r.problems]
        if any(r.n_problems for r in ordered):
            ok = False
        failures += [{"measure": "contract", "error": math.inf, "case": text, "detail": detail}
                     for _, text, detail in problems]
        return Row(name, label, opt_name, dtype.name, region, n, stats, ok,
                   failures[:PROBLEMS_KEPT])
