"""Run a sweep's batches serially, on a local process pool or on any executor, resumably.

:func:`run_sweep` cuts the plan into batches (:mod:`.batches`), skips those a
checkpoint already holds, runs the rest -- in this process, on a process pool it
makes (``workers``) or on a given ``concurrent.futures.Executor`` (a Dask cluster's
``Client.get_executor()``) -- and merges every row in case order, so the rows are
the same for any executor.

Failures:

* a batch whose cases raise where :func:`.checks.evaluate` does not catch it comes
  back with ``BatchResult.error`` and is run again; after ``MAX_ATTEMPTS`` it is
  reported as failed, its inputs in its row's failures (the row and the verdict fail);
* a worker process that dies breaks a process pool: the batches that were running
  are run again one at a time, so that a batch that kills its worker is identified;
  one that does it ``MAX_ATTEMPTS`` times is reported as failed (a pool this sweep
  made is restarted; a given executor cannot be, and the sweep stops);
* Dask moves the batches of a lost worker to the others by itself (up to its
  ``distributed.scheduler.allowed-failures``); a batch it gives up on
  (``KilledWorker``) is reported as failed;
* anything else the executor raises (a lost scheduler, a worker that cannot import
  ce_reference) stops the sweep with :class:`SweepInterrupted`, as does Ctrl-C: the
  finished batches are in the checkpoint, and ``resume`` runs only the others.

The checkpoint (:class:`Checkpoint`) is JSON lines: a header identifying the sweep,
then one line per finished batch, each appended whole and fsynced; a torn last line
(the process died while writing it) is dropped on resume.  Failed batches are not
recorded, so a resumed sweep tries them again.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import hashlib
import json
import multiprocessing
import os
import signal
import time
from dataclasses import dataclass

from ..cases import make_case
from .checks import environment
from .batches import (PROBLEMS_KEPT, BatchResult, BatchTask, RowTally, environment_digest,
                      in_process, named_by_ref, run_batch, ship_hvp, ship_spec, split)

#: Attempts of a batch before it is reported as failed (a retry survives a transient
#: fault -- a worker out of memory, a node going down -- without hiding a real one).
MAX_ATTEMPTS = 2
#: Batches in flight per worker thread: one running and one queued behind it, so a
#: worker never waits for the parent to hand it the next batch.
IN_FLIGHT_PER_WORKER = 2
#: Seconds between two looks at a cluster's size (workers may join or leave).
CAPACITY_REFRESH_SECONDS = 5.0
CHECKPOINT_FORMAT = "ce_reference verify checkpoint"
CHECKPOINT_FORMAT_VERSION = 1
#: Header fields that must agree for a checkpoint to be resumed (the numbers of a
#: batch depend on all of them).
HEADER_FIELDS = ("format", "format_version", "ce_reference", "cases", "seed", "losses",
                 "specs", "dtypes", "option_sets", "regions", "hvp", "batch_cases",
                 "batches", "plan", "environment")


class SweepInterrupted(RuntimeError):
    """The executor could not go on, or Ctrl-C (``by_user``); the checkpoint holds what
    finished."""

    def __init__(self, message, by_user=False):
        super().__init__(message)
        self.by_user = by_user


class CheckpointError(ValueError):
    """A checkpoint that cannot be started or resumed (raised before any work)."""


@dataclass(frozen=True)
class SweepStatus:
    """Where a sweep stands: cases ``done`` of ``total`` (resumed ones included),
    ``rate`` (cases per second run by this session, None before the first), ``eta``
    (seconds, None while unknown), rows with a failing case so far, batches."""

    done: int
    total: int
    label: str
    failing_rows: int
    rate: float | None
    eta: float | None
    batches_done: int
    batches_total: int


# --------------------------------------------------------------------------- the sweep

def run_sweep(work, *, seed, hvp, header_extra, batch_cases, workers=None, executor=None,
              checkpoint=None, resume=False, progress=None, status=None):
    """``(rows, notes, environment)`` of the sweep over the plan ``work``.

    ``hvp`` maps a spec to its HVP function (or None); ``header_extra`` the sweep's
    options for the checkpoint header (cases, losses, dtypes, ...).
    """
    here = executor is None and (workers or 1) == 1
    tasks, tallies = _tasks(work, seed, hvp, batch_cases, in_process if here else _shipped)
    specs = [_identity(spec) for spec in {id(row[0]): row[0] for row in work}.values()]
    header = _header(tasks, {**header_extra, "specs": specs}, batch_cases)
    store = _open_checkpoint(checkpoint, resume, header, tasks)
    run = _Progress(work, tasks, tallies, progress, status)
    failed, foreign = [], set()
    own = environment_digest()

    def merge(task, result):
        if result.environment != own:
            foreign.add(result.environment)
        tallies[task.row].add(result)
        run.batch_done(task, result)

    def record(task, result):
        """A final result of this session: checkpointed (a failure is not: a resumed
        sweep tries it again) and merged."""
        if result.error is not None:
            failed.append((task, result.error))
            result = _failed_result(task, work[task.row], result.error)
        elif store is not None:
            store.record(result)
        merge(task, result)

    try:
        for result in (store.results.values() if store is not None else ()):
            merge(tasks[result.index], result)
        todo = [t for t in tasks if store is None or t.index not in store.results]
        run.start()
        description = _execute(todo, record, run.case_done, workers, executor)
    except KeyboardInterrupt:
        raise SweepInterrupted(_interrupted("Ctrl-C", store, run), by_user=True) from None
    except SweepInterrupted as exc:
        raise SweepInterrupted(_interrupted(str(exc), store, run)) from exc
    finally:
        if store is not None:
            store.close()
    env = {"executor": description, "batches": len(tasks), "batch_cases": batch_cases,
           "batches_resumed": len(tasks) - len(todo)}
    return [t.row() for t in tallies], _notes(work, failed, foreign), env


def _open_checkpoint(path, resume, header, tasks):
    if path is None:
        return None
    return Checkpoint.resume(path, header, tasks) if resume else Checkpoint.start(path, header)


def _notes(work, failed, foreign):
    notes = [_failed_note(work[t.row], t, error) for t, error in failed]
    if foreign:
        notes.append(f"batches ran in {len(foreign)} environment(s) other than this "
                     "process's (library versions, machine or SIMD extensions differ): the "
                     "numbers may differ in the last bits from a run on this machine")
    return notes


def _shipped(spec, hvp_fn):
    return ship_spec(spec), ship_hvp(spec, hvp_fn)


def _identity(spec):
    """A spec in the checkpoint's header: its ``ref`` when that names it."""
    return spec.ref if named_by_ref(spec) else f"{spec.name} (not importable by its ref)"


def _tasks(work, seed, hvp, batch_cases, ship):
    """The batches and a tally per row; ``ship(spec, hvp_fn)`` gives the handles a batch
    carries (:func:`.batches.ship_spec` for other processes, the objects for this one)."""
    shipped, tasks, tallies = {}, [], []
    for row, (spec, opt, dtype, region, n) in enumerate(work):
        if id(spec) not in shipped:
            shipped[id(spec)] = ship(spec, hvp(spec))
        spec_handle, hvp_handle = shipped[id(spec)]
        bounds = split(n, batch_cases)
        for start, stop in bounds:
            tasks.append(BatchTask(len(tasks), row, spec.name, spec_handle, opt.name,
                                   dtype.name, region, start, stop, seed, hvp_handle))
        tallies.append(RowTally(spec, opt, dtype, region, n, len(bounds)))
    return tasks, tallies


def _header(tasks, extra, batch_cases):
    from .batches import _package_version

    plan = hashlib.sha256(repr([(t.loss, t.option_set, t.dtype, t.region, t.start, t.stop)
                                for t in tasks]).encode()).hexdigest()
    env = {k: v for k, v in environment().items() if k != "platform"}
    header = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_FORMAT_VERSION,
              "ce_reference": _package_version(), **extra, "batch_cases": batch_cases,
              "batches": len(tasks), "plan": plan, "environment": env}
    return json.loads(json.dumps(header))        # as read back from the file (lists, not tuples)


def _failed_result(task, row, error):
    """A failed batch as its row sees it: every case a contract failure, the first
    ``PROBLEMS_KEPT`` with their inputs."""
    spec, opt, dtype, region, _ = row
    detail = f"batch {task.index} (cases {task.start}-{task.stop - 1}) failed: {_brief(error)}"
    problems = [(i, make_case(spec, opt, dtype, region, i, task.seed).describe(), detail)
                for i in range(task.start, min(task.stop, task.start + PROBLEMS_KEPT))]
    return BatchResult(task.index, task.start, task.stop, problems=problems,
                       n_problems=task.n, error=error, environment=environment_digest())


def _failed_note(row, task, error):
    spec, opt, dtype, region, _ = row
    return (f"batch {task.index} ({spec.name} | {opt.name} | {dtype.name} | {region}, cases "
            f"{task.start}-{task.stop - 1}) failed {MAX_ATTEMPTS} attempts and is reported "
            f"as failing: {_brief(error)}")


def _brief(error):
    """The exception line of a batch's error, and where it was raised (the innermost frame
    of its traceback, when it has one)."""
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
    if not lines:
        return "no error message"
    frames = [line for line in lines if line.startswith("File ")]
    return lines[0] + (f" ({frames[-1]})" if frames else "")


def _interrupted(reason, store, run):
    saved = ("" if store is None else
             f"; {len(store.results)} of {len(run.tasks)} batches are saved in {store.path}: "
             f"continue with --resume {store.path}")
    return f"sweep stopped ({reason}) after {run.done} of {run.total} cases{saved}"


class _Progress:
    """Counts cases and batches, and tells ``progress(done, total, label)`` and
    ``status(SweepStatus)``."""

    def __init__(self, work, tasks, tallies, progress, status):
        self.work, self.tasks, self.tallies = work, tasks, tallies
        self.progress, self.status = progress, status
        self.total = sum(n for *_, n in work)
        self.done = self.batches = self.resumed_cases = 0
        self.started = None

    def start(self):
        self.resumed_cases = self.done
        self.started = time.perf_counter()
        self._tell(self._label(self.tasks[0]) if self.tasks else "")

    def case_done(self, task, i):
        self._tell(self._label(task), self.done + (i - task.start + 1))

    def batch_done(self, task, result):
        self.done += task.n
        self.batches += 1
        if self.started is not None:
            self._tell(self._label(task))

    def _label(self, task):
        spec, opt, dtype, region, _ = self.work[task.row]
        return f"{spec.name} | {opt.name} | {dtype.name} | {region}"

    def _tell(self, label, done=None):
        done = self.done if done is None else done
        if self.progress is not None:
            self.progress(done, self.total, label)
        if self.status is None:
            return
        elapsed = time.perf_counter() - self.started
        ran = done - self.resumed_cases
        rate = ran / elapsed if ran > 0 and elapsed > 0 else None
        eta = (self.total - done) / rate if rate else None
        self.status(SweepStatus(done, self.total, label, sum(t.failing for t in self.tallies),
                                rate, eta, self.batches, len(self.tasks)))


# --------------------------------------------------------------------------- executors

def _execute(tasks, record, case_done, workers, executor) -> str:
    """Run ``tasks``, calling ``record(task, result)`` with each final result; returns a
    description of the executor."""
    if executor is None and (workers or 1) == 1:       # as in run_sweep's ``here``
        _serial(tasks, record, case_done)
        return "serial (this process)"
    pool = _OwnPool(workers) if executor is None else _GivenExecutor(executor)
    finished = False
    try:
        _on_executor(tasks, pool, record)
        finished = True
    finally:
        pool.close(finished)
    return pool.description


def _serial(tasks, record, case_done):
    for task in tasks:
        for attempt in range(MAX_ATTEMPTS):
            result = run_batch(task, lambda i, task=task: case_done(task, i))
            if result.error is None:
                break
        record(task, result)


def _worker_init():
    """Pool workers leave Ctrl-C to the parent, which stops the pool cleanly."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _OwnPool:
    """A process pool made for this sweep (spawned: forking a process that has started
    JAX's threads is unsafe); restarted when one of its processes dies."""

    def __init__(self, workers):
        self.workers = workers
        self.description = f"local process pool ({workers} workers)"
        self.executor = self._new()

    def _new(self):
        return cf.ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                      initializer=_worker_init)

    def renew(self):
        _terminate(self.executor)
        self.executor = self._new()

    def window(self):
        """Batches in flight: one per process (the pool queues nothing more that a
        dying process would take down with it)."""
        return self.workers

    def close(self, finished):
        if finished:
            self.executor.shutdown(wait=True)
        else:                       # Ctrl-C or an error: do not wait for running batches
            _terminate(self.executor)


def _terminate(executor):
    """Stop a process pool now, its running batches included (they are not recorded)."""
    processes = list((getattr(executor, "_processes", None) or {}).values())
    executor.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(timeout=10)


class _GivenExecutor:
    """The caller's executor: used, never shut down nor restarted."""

    def __init__(self, executor):
        self.executor = executor
        self.client = getattr(executor, "_client", None)   # distributed's ClientExecutor
        self.description = type(executor).__name__
        if self.client is not None:
            address = getattr(getattr(self.client, "scheduler", None), "address", "?")
            self.description = f"Dask cluster at {address}"
        self._capacity, self._checked = None, 0.0

    def renew(self):
        raise SweepInterrupted("a worker process of the executor died and broke it (a "
                               "process pool cannot be restarted from here)")

    def window(self):
        """Batches in flight: ``IN_FLIGHT_PER_WORKER`` per worker thread."""
        now = time.monotonic()
        if self._capacity is None or now - self._checked > CAPACITY_REFRESH_SECONDS:
            self._capacity, self._checked = self._measure(), now
        return IN_FLIGHT_PER_WORKER * self._capacity

    def _measure(self):
        if self.client is not None:
            try:
                return max(1, sum(self.client.nthreads().values()))
            except Exception:  # noqa: BLE001 -- a scheduler going away: keep the last size
                return self._capacity or 1
        return getattr(self.executor, "_max_workers", None) or os.cpu_count() or 1

    def close(self, finished):
        pass


_LOST = object()      # a future of a pool that broke: its process died


def _on_executor(tasks, pool, record):
    attempts = collections.Counter()
    pending = collections.deque(tasks)          # plan order
    suspects = collections.deque()              # running when a worker died: run alone
    running = {}

    def settle(task, outcome, queue=pending):
        """Record a result; a failure is run again (from ``queue``) until its last attempt."""
        if outcome.error is None:
            record(task, outcome)
            return
        attempts[task.index] += 1
        if attempts[task.index] >= MAX_ATTEMPTS:
            record(task, outcome)
        else:
            queue.appendleft(task)

    def collect(fut, lost):
        task = running.pop(fut)
        outcome, final = _outcome(fut, task)
        if outcome is _LOST:
            lost.append(task)
        elif final:
            record(task, outcome)
        else:
            settle(task, outcome)

    try:
        while pending or suspects or running:
            if not _submit(pool, pending, suspects, running) and not running:
                pool.renew()                    # broke between two batches
                continue
            done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            lost = []
            for fut in done:
                collect(fut, lost)
            if lost:
                rest, _ = cf.wait(running)     # a broken pool fails every future it holds
                for fut in rest:
                    collect(fut, lost)
                lost.sort(key=lambda t: t.index)
                if len(lost) == 1:             # it ran alone: it killed its process
                    settle(lost[0], BatchResult.failure(lost[0], "its worker process died"),
                           suspects)
                else:                          # each runs again alone to find the culprit
                    suspects.extend(lost)
                pool.renew()
    except BaseException:
        for fut in running:
            fut.cancel()
        raise


def _submit(pool, pending, suspects, running) -> bool:
    """Keep the window full (suspects: one at a time, alone); False if the pool broke."""
    limit = pool.window()
    while len(running) < limit and (pending or suspects):
        if suspects and running:
            return True
        queue = suspects if suspects else pending
        task = queue.popleft()
        try:
            running[pool.executor.submit(run_batch, task)] = task
        except cf.BrokenExecutor:
            queue.appendleft(task)
            return False
        if queue is suspects:
            return True
    return True


def _outcome(fut, task):
    """``(outcome, final)``: the batch's result (:func:`.batches.run_batch` never
    raises), ``_LOST`` if its pool's process died, or a final failure if Dask gave up on
    it (``KilledWorker``: Dask already ran it again after losing a worker with it, up to
    its ``allowed-failures``); anything else the executor raises stops the sweep."""
    try:
        return fut.result(), False
    except cf.BrokenExecutor:
        return _LOST, False
    except Exception as exc:  # noqa: BLE001 -- classified below
        if type(exc).__name__ == "KilledWorker":
            return BatchResult.failure(task, f"KilledWorker: {exc}"), True
        raise SweepInterrupted(f"batch {task.index} could not run on the executor: "
                               f"{type(exc).__name__}: {exc}") from exc


# --------------------------------------------------------------------------- checkpoint

class Checkpoint:
    """A sweep's JSON-lines checkpoint: the header, then one line per finished batch."""

    def __init__(self, path, fd, results):
        self.path, self.fd, self.results = path, fd, results

    @classmethod
    def start(cls, path, header):
        """A new checkpoint; :class:`CheckpointError` if ``path`` exists (never overwritten)."""
        path = os.fspath(path)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        except FileExistsError:
            raise CheckpointError(f"checkpoint {path!r} already exists: continue it with --resume "
                             f"{path}, or remove it") from None
        except OSError as exc:
            raise CheckpointError(f"cannot create checkpoint {path!r}: {exc.strerror}") from None
        store = cls(path, fd, {})
        store._append({"header": header})
        return store

    @classmethod
    def resume(cls, path, header, tasks):
        """The checkpoint at ``path``, checked against this sweep's ``header`` (a
        :class:`CheckpointError` naming every field that differs); a torn last line is cut
        off."""
        path = os.fspath(path)
        results, good_end = cls.read(path, header, tasks)
        os.truncate(path, good_end)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        return cls(path, fd, results)

    @staticmethod
    def read(path, header, tasks):
        """``({batch index: BatchResult}, bytes of complete lines)``; see :meth:`resume`."""
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise CheckpointError(f"cannot read checkpoint {path!r}: {exc.strerror}") from None
        lines = data.split(b"\n")
        complete, good_end = lines[:-1], len(data) - len(lines[-1])   # lines[-1]: torn or b""
        first = _json_line(complete[0]) if complete else None
        if not isinstance(first, dict) or not isinstance(first.get("header"), dict) \
                or first["header"].get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{path!r} is not a ce_reference verify checkpoint")
        _check_header(path, first["header"], header)
        results = {}
        for number, line in enumerate(complete[1:], start=2):
            obj = _json_line(line)
            if obj is None and number == len(complete):      # the last one, torn
                good_end -= len(line) + 1
                break
            result = _batch_line(obj, tasks)
            if result is None:
                raise CheckpointError(f"line {number} of checkpoint {path!r} is not a batch of "
                                 "this sweep (the file is damaged)")
            results.setdefault(result.index, result)
        return results, good_end

    def record(self, result):
        self._append({"result": result.to_json()})
        self.results[result.index] = result

    def _append(self, obj):
        line = (json.dumps(obj, separators=(",", ":")) + "\n").encode()
        view = memoryview(line)
        while view:
            view = view[os.write(self.fd, view):]
        os.fsync(self.fd)

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _json_line(line):
    try:
        return json.loads(line)
    except ValueError:
        return None


def _batch_line(obj, tasks):
    try:
        result = BatchResult.from_json(obj["result"])
        task = tasks[result.index]
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    return result if (task.start, task.stop) == (result.start, result.stop) else None


def _check_header(path, found, expected):
    diffs = [f"{k}: checkpoint {found.get(k)!r}, this sweep {expected.get(k)!r}"
             for k in HEADER_FIELDS if found.get(k) != expected.get(k)]
    if diffs:
        raise CheckpointError(f"checkpoint {path!r} belongs to a different sweep, refusing to "
                         "resume it (" + "; ".join(diffs) + ")")

