"""megatron-core adapter: Megatron-LM's vocab-parallel cross-entropy on gloo, 1, 2 and 4 processes.

What is audited
---------------
``megatron.core.tensor_parallel.vocab_parallel_cross_entropy(vocab_parallel_logits,
target, label_smoothing=0.0)`` -- its only option is ``label_smoothing`` -- and the
fused variant that ``GPTModel`` uses with ``cross_entropy_loss_fusion=True,
cross_entropy_fusion_impl="native"``:
``megatron.core.fusions.fused_cross_entropy.fused_vocab_parallel_cross_entropy(logits,
target, tp_group)`` (no options; ``torch.compile``-d, which works on CPU).  Each
runs on ``torch.distributed`` with the gloo backend in 1, 2 and 4 processes
(``parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp)``), each
process holding ``V / tp`` classes of every row, in float32.  One target per function
and tensor-parallel size (``vocab_parallel_cross_entropy tp=2``, ...); the sizes of one
function draw the same cases (``Target.seed_key``), so the audit also compares every
``tp > 1`` result with ``tp = 1`` (the invariance the users need).

Megatron's stated convention (megatron-core 0.16.1, ``tensor_parallel/cross_entropy.py``)
-----------------------------------------------------------------------------------------
* The logits are cast to float32 (``.float()``: a copy for bf16/fp16, *the tensor
  itself* for float32) and the rest is computed in float32: all-reduce MAX of the
  row maxima, SUM of the target logit minus the maximum (0 on ranks that do not own
  the target), SUM of ``exp(x - max)``; per token ``loss = log(sum_exp) - (x_y - max)``.
* The result is the **per-token loss** (float32, the target's shape ``[s, b]``), no
  reduction, no ``ignore_index`` (masking is the caller's ``loss_mask``).  Its backward
  is ``softmax - onehot`` times ``grad_output``.
* Label smoothing, as its comment states (from NeMo): mass ``1 - alpha`` on the target
  and ``alpha / (K - 1)`` on every other class -- the ``others`` / ``off_class``
  convention of :mod:`ce_reference.parallel` and :mod:`ce_reference.conventions` -- as
  ``loss = (1 - s) * nll - s * mean_c log p_c`` with ``s = alpha K / (K - 1)``, backward
  ``softmax - (1 - s) onehot - s / K``.  ``label_smoothing`` must be in [0, 1)
  (an ``assert`` rejects >= 1).

The reference is therefore :func:`ce_reference.parallel.reference_cross_entropy` with
``smoothing="others"`` and ``reduction="none"`` (the gradient of the sum of the
per-token losses, i.e. ``grad_output = 1``), on the concatenated logits; every rank's
loss is compared (the ``value`` array is ``(tp, *batch)``: they must all equal the
reference).  Cases, regions (the logit regions and :data:`~ce_reference.cases.regions.SHARD_REGIONS`,
with a number of classes divisible by 4), the shrinker (which keeps the classes a
multiple of ``tp``), the tolerance (256 float32 eps of the operands) and the
classification are those of every framework audit (:mod:`._core`).

Network
-------
Every process group is initialised from a *file* store (``init_method="file://..."``;
PyTorch's TCPStore listens on all interfaces whatever ``MASTER_ADDR`` says) with
``GLOO_SOCKET_IFNAME=lo``, so gloo's pairs bind to 127.0.0.1; a
:class:`ce_reference._loopback.LoopbackMonitor` samples ``ss`` while the workers live,
kills them at the first socket outside loopback, and its evidence is in the report (a
socket outside loopback fails the audit, exit status 1).  Without ``ss`` the audit is
skipped.

Run ``ce-reference audit megatron [--quick] [--json P] [--markdown P]``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from ..auditing.tolerance import TOL_EPS
from ..cases import Case, regions
from ._core import Known, Result, Target, compare, operand_scales

NAME = "megatron"
#: The audited release; pinned in pyproject.toml (extras ``frameworks`` and ``megatron``).
MEGATRON_CORE_VERSION = "0.16.1"
TP_SIZES = (1, 2, 4)
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_megatron_worker.py")
PLAIN = "vocab_parallel_cross_entropy"
FUSED = "fused_vocab_parallel_cross_entropy"
#: Input regions: the logit regions of every framework audit and those of a split class axis.
REGIONS = regions.LOGIT_REGIONS + regions.SHARD_REGIONS
#: Every case has a number of classes divisible by this (the largest tp), so that the same
#: case runs at every tensor-parallel size.
CLASS_MULTIPLE = 4

_SESSION = None


def load() -> str:
    """The installed megatron-core version, with torch's (ImportError when megatron-core or
    torch is not installed, or when ``ss`` is missing: the loopback check needs it)."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    from .._loopback import ss_available
    try:
        v = version("megatron-core")
    except PackageNotFoundError as exc:
        raise ImportError("megatron-core is not installed (extra 'megatron')") from exc
    if not ss_available():
        raise ImportError("`ss` (iproute2) is not installed: the audit cannot check that every "
                          "gloo socket stays on loopback, so it is left out")
    return f"{v} (torch {torch.__version__})"


def _name(fn, tp):
    return f"{fn} tp={tp}"


# --------------------------------------------------------------------------- the process group

@dataclass
class Output:
    """One call of Megatron's loss on ``tp`` ranks, reassembled."""

    losses: np.ndarray | None      # (tp, *batch): the loss each rank returned
    grad: np.ndarray | None        # the full gradient (rank shards concatenated)
    x_after: np.ndarray | None     # the full input tensor after the call
    error: str = ""
    loss_dtype: str = ""
    grad_dtype: str = ""


class MegatronGroup:
    """``tp`` worker processes forming one tensor-parallel group, serving calls.

    Use as a context manager; :meth:`run` sends one input (split into ``tp``
    equal shards along the last axis) and returns an :class:`Output`.
    """

    def __init__(self, tp, workdir, monitor=None, timeout=600):
        self.tp, self.dir, self.monitor, self.timeout = tp, workdir, monitor, timeout
        self.procs = []
        self.start_seconds = None
        self.calls = 0

    def __enter__(self):
        t0 = time.monotonic()
        init = os.path.join(self.dir, f"init-tp{self.tp}")
        if os.path.exists(init):
            os.remove(init)
        env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1",
                   MASTER_ADDR="127.0.0.1")
        env.pop("MASTER_PORT", None)
        self.logs = []
        for r in range(self.tp):
            # stderr to a file: a full pipe would block a chatty worker (torch.compile logs)
            log = open(os.path.join(self.dir, f"worker-tp{self.tp}-rank{r}.log"), "w")
            self.logs.append(log)
            p = subprocess.Popen([sys.executable, WORKER, str(r), str(self.tp), init],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=log, text=True, env=env)
            self.procs.append(p)
            if self.monitor is not None:
                self.monitor.add_pid(p.pid)
        for p in self.procs:
            line = p.stdout.readline()
            if not line:
                self.kill()
                self.close()
                err = self._log_tail()
                raise RuntimeError(f"a Megatron worker failed to start:\n{err}")
            json.loads(line)
        self.start_seconds = time.monotonic() - t0
        return self

    def run(self, x, y, label_smoothing=0.0, impl="plain", dtype="float32") -> Output:
        x = np.asarray(x, np.float32)
        V = x.shape[-1]
        if V % self.tp:
            raise ValueError(f"V={V} is not divisible by tp={self.tp}")
        self.calls += 1
        tag = os.path.join(self.dir, f"call{self.calls}-tp{self.tp}")
        shards = np.split(x, self.tp, axis=-1)
        np.savez(tag + ".in.npz", y=np.asarray(y, np.int64), label_smoothing=label_smoothing,
                 impl=impl, dtype=dtype, **{f"x{r}": s for r, s in enumerate(shards)})
        msg = json.dumps({"cmd": "run", "in": tag + ".in.npz", "out": tag + ".out"}) + "\n"
        for p in self.procs:
            p.stdin.write(msg)
            p.stdin.flush()
        for p in self.procs:
            if not p.stdout.readline():
                self.kill()
                self.close()
                raise RuntimeError("a Megatron worker died:\n" + self._log_tail())
        outs = []
        for r in range(self.tp):
            with np.load(f"{tag}.out.{r}.npz") as z:
                outs.append({k: z[k] for k in z.files})
        errs = sorted({str(o["error"]) for o in outs if str(o["error"])})
        for f in [tag + ".in.npz"] + [f"{tag}.out.{r}.npz" for r in range(self.tp)]:
            os.remove(f)
        if errs:
            return Output(None, None, None, "; ".join(errs))
        return Output(np.stack([o["loss"] for o in outs]),
                      np.concatenate([o["grad"] for o in outs], axis=-1),
                      np.concatenate([o["x_after"] for o in outs], axis=-1), "",
                      str(outs[0]["loss_dtype"]), str(outs[0]["grad_dtype"]))

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                try:
                    p.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                    p.stdin.flush()
                except (BrokenPipeError, OSError):
                    pass
        for p in self.procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            for fh in (p.stdin, p.stdout):
                try:
                    fh.close()
                except (BrokenPipeError, OSError):
                    pass
        for log in getattr(self, "logs", ()):
            log.close()

    def _log_tail(self):
        out = []
        for log in getattr(self, "logs", ()):
            try:
                with open(log.name) as fh:
                    out.append(fh.read()[-1500:])
            except OSError:
                pass
        return "\n".join(out)

    def kill(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()                        # reaped: no zombie, no "still running" warning

    def __exit__(self, *exc):
        self.close()
        return False


# --------------------------------------------------------------------------- the session

class Session:
    """The worker groups of one audit (started on first use, one per tp, kept until the end),
    the loopback monitor watching them, and what the report adds: process start times, time
    per call, the comparison across tensor-parallel sizes, the socket evidence."""

    def __init__(self, workdir=None, progress=None):
        from .._loopback import LoopbackMonitor

        self.own_dir = workdir is None
        self.dir = workdir
        self.progress = progress
        self.groups: dict = {}
        self.stats: dict = {}
        self.seen: dict = {}           # (impl, ls, region, x, y) -> {tp: (case, Output)}
        self.monitor = LoopbackMonitor(interval=0.1, on_violation=self._stop_all)

    def _stop_all(self, line):
        for g in list(self.groups.values()):
            g.kill()

    def __enter__(self):
        if self.dir is None:
            self.dir = tempfile.mkdtemp(prefix="ce-megatron-")
        self.monitor.start()
        return self

    def __exit__(self, *exc):
        for g in self.groups.values():
            g.close()
        self.monitor.stop()
        if self.own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
        return False

    def group(self, tp):
        if tp not in self.groups:
            if self.monitor.violations:
                raise RuntimeError("a socket left loopback; no further process is started")
            if self.progress:
                self.progress(f"megatron: starting {tp} process(es)")
            g = MegatronGroup(tp, self.dir, self.monitor).__enter__()
            self.groups[tp] = g
            self.stats[tp] = {"tp": tp, "start_seconds": round(g.start_seconds, 1), "calls": 0,
                              "seconds": 0.0, "fused_first_call_seconds": None}
        return self.groups[tp]

    def call(self, case: Case, impl: str, tp: int, dtype="float32") -> Output:
        g = self.group(tp)
        ls = float(case.kwargs.get("label_smoothing", 0.0))
        t0 = time.monotonic()
        out = g.run(case.x, case.targets, ls, impl, dtype)
        dt = time.monotonic() - t0
        st = self.stats[tp]
        if impl == "fused" and st["fused_first_call_seconds"] is None:
            st["fused_first_call_seconds"] = round(dt, 1)        # torch.compile
        elif impl == "plain":
            st["calls"] += 1
            st["seconds"] += dt
        if case.region in REGIONS and dtype == "float32":
            key = (impl, ls, case.region, case.x.shape, case.x.tobytes(), case.targets.tobytes())
            self.seen.setdefault(key, {}).setdefault(tp, (case, out))
        return out

    def invariance(self) -> list:
        """Every case run at tp = 1 and at a larger tp: the larger tp's every rank loss and
        gradient against tp = 1's, in the one tolerance scheme."""
        rows = []
        for (impl, ls, region, *_), by_tp in self.seen.items():
            if 1 not in by_tp:
                continue
            case1, base = by_tp[1]
            for tp, (case, out) in sorted(by_tp.items()):
                if tp == 1 or out.error or base.error:
                    continue
                ref = Result({"value": np.broadcast_to(base.losses[0], out.losses.shape),
                              "grad": base.grad})
                o = compare(Result({"value": out.losses, "grad": out.grad}), ref, "float32",
                            operand_scales(_reference)(case))
                rows.append({"impl": impl, "label_smoothing": ls, "tp": tp, "region": region,
                             "ok": o.ok, "errors": o.errors})
        return rows

    def finish(self, report: dict) -> None:
        """Add the session's evidence to the audit's report (after the workers are gone)."""
        mon = self.monitor
        groups = []
        for tp in sorted(self.stats):
            st = dict(self.stats[tp])
            st["ms_per_call"] = round(1000 * st.pop("seconds") / max(1, st["calls"]), 1)
            groups.append(st)
        report["groups"] = groups
        report["loopback"] = {
            "ok": mon.ok, "samples": mon.samples, "sockets": len(mon.sockets),
            "listening": len(mon.listeners), "violations": list(mon.violations),
            "listening_addresses": sorted({s.split()[4].rpartition(":")[0]
                                           for s in mon.listeners})}
        report["invariance"] = inv = self.invariance()
        if not mon.ok:
            report["failed"] = f"{len(mon.violations)} socket(s) outside loopback"
        report["sections"] = _sections(groups, report["loopback"], inv)
        lb = report["loopback"]
        report["notes"] = [
            f"sockets: {lb['samples']} samples of `ss`, {lb['sockets']} sockets of the workers, "
            f"{lb['listening']} listening on {', '.join(lb['listening_addresses']) or '-'}, "
            f"{len(lb['violations'])} outside loopback",
            f"tp invariance: {sum(r['ok'] for r in inv)} of {len(inv)} (case, tp > 1) equal to "
            "tp = 1 within the tolerance"]


@contextlib.contextmanager
def session(*, seed=0, quick=False, progress=None, workdir=None):
    """The audit's session (see :class:`Session`): the targets' calls go to its workers."""
    global _SESSION
    s = Session(workdir, progress)
    with s:
        prev, _SESSION = _SESSION, s
        try:
            yield s
        finally:
            _SESSION = prev


def _session() -> Session:
    if _SESSION is None:
        raise RuntimeError("the Megatron targets run inside ce_reference.frameworks._megatron."
                           "session() (audit_framework opens it)")
    return _SESSION


class MegatronError(RuntimeError):
    """Megatron raised on the workers (the message is its exception, as ``Type: text``)."""


# --------------------------------------------------------------------------- targets

def _reference(case: Case) -> Result:
    """Per-token loss (every rank's: shape ``(tp, *batch)``) and the gradient of their sum,
    single device, in Megatron's convention (``smoothing="others"``)."""
    from ..parallel import reference_cross_entropy
    tp = int(case.kwargs.get("tp", 1))
    if case.x.shape[-1] % tp:
        raise ValueError(f"V={case.x.shape[-1]} is not divisible by tp={tp}")
    v, g = reference_cross_entropy(case.x, case.targets,
                                   label_smoothing=case.kwargs.get("label_smoothing", 0.0),
                                   smoothing="others", reduction="none")
    return Result({"value": np.broadcast_to(v, (tp,) + np.shape(v)).copy(), "grad": g})


def _uniform_reference(case: Case) -> Result:
    """The same with PyTorch's smoothing (eps/V on every class): the convention-free formula."""
    from ..parallel import reference_cross_entropy
    tp = int(case.kwargs.get("tp", 1))
    v, g = reference_cross_entropy(case.x, case.targets,
                                   label_smoothing=case.kwargs.get("label_smoothing", 0.0),
                                   smoothing="uniform", reduction="none")
    return Result({"value": np.broadcast_to(v, (tp,) + np.shape(v)).copy(), "grad": g})


def _runner(impl, tp):
    def run(case: Case) -> Result:
        out = _session().call(case, impl, tp)
        if out.error:
            raise MegatronError(out.error)
        return Result({"value": out.losses, "grad": out.grad, "input after": out.x_after})
    return run


@dataclass(frozen=True)
class _TpGenerator:
    """The shared generator (classes a multiple of 4: the same case at every tp), with the
    tensor-parallel size as a fixed keyword ``tp`` and the shrinker keeping the classes a
    multiple of it."""

    base: regions.Generator
    tp: int

    def case(self, x, targets, kwargs=None, region="probe", flags=()) -> Case:
        c = self.base.case(np.asarray(x, np.float32), targets, {**(kwargs or {}), "tp": self.tp},
                           region, flags)
        return c.replace(class_multiple=self.tp)

    def __call__(self, rng, dtype, options, region):
        c = self.base(rng, dtype, {**options, "tp": self.tp}, region)
        return None if c is None else c.replace(class_multiple=self.tp)


def targets() -> list[Target]:
    gen = regions.categorical("logits", "index", class_multiple=CLASS_MULTIPLE)
    smoothing = [{}, {"label_smoothing": 0.1}, {"label_smoothing": 0.5}]
    conv = ("parallel.reference_cross_entropy(smoothing='others', reduction='none'): per-token "
            "float32 loss on every rank; smoothing 1 - alpha on the target, alpha/(V-1) elsewhere")
    T = []
    for impl, fn, sets in (("plain", PLAIN, smoothing), ("fused", FUSED, [{}])):
        for tp in TP_SIZES:
            T.append(Target(_name(fn, tp), conv, _runner(impl, tp), _reference,
                            _TpGenerator(gen, tp), sets, REGIONS, operand_scales(_reference),
                            dtypes=("float32",), seed_key=fn))
    return T


# --------------------------------------------------------------------------- the catalogue

def _c(x, y, **opts):
    """A catalogue probe (float32; its structure and ``tp`` come from the target)."""
    return lambda: Case(x=np.asarray(x, np.float32), targets=np.asarray(y), kwargs=dict(opts),
                        region="probe")


def _ls(case):
    return float(case.kwargs.get("label_smoothing", 0.0))


def _tp(case):
    return int(case.kwargs.get("tp", 1))


def _inf_where_finite(o) -> bool:
    if o.framework is None or "value" not in o.framework.arrays or o.reference is None:
        return False
    a = np.asarray(o.framework.arrays["value"], np.float64)
    r = np.broadcast_to(np.asarray(o.reference.arrays["value"], np.float64), a.shape)
    return bool(np.any(np.isinf(a) & np.isfinite(r)))


def _underflow(case, o) -> bool:
    """Smoothing, an infinite loss where the reference's is finite, the gradient right."""
    return (_ls(case) > 0 and _inf_where_finite(o)
            and o.errors.get("grad", 0.0) <= TOL_EPS)


def _tp_smoothing(case, o) -> bool:
    """Smoothing at tp > 1: a finite deviation (the local V and local mean)."""
    return (_ls(case) > 0 and _tp(case) > 1 and o.framework is not None
            and not _inf_where_finite(o))


def _ranks_differ(case, o):
    v = np.asarray(o.framework.arrays["value"]) if o.framework else None
    differ = v is not None and len(v) > 1 and not np.all(v == v[:1])
    return bool(not o.ok and differ), "the ranks return different losses" if differ else ""


def _zero_division(case, o) -> bool:
    return (o.kind == "exception" and "ZeroDivisionError" in o.detail and _ls(case) > 0
            and case.x.shape[-1] == _tp(case))


def _round_bf16(a):
    b = np.asarray(a, np.float32).view(np.uint32)
    r = ((b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)
    return r.view(np.float32)


def _bf16_grad(case, o) -> bool:
    """The value right, the gradient wrong, and every gradient entry a bfloat16 number."""
    if o.framework is None or "grad" not in o.framework.arrays:
        return False
    g = np.asarray(o.framework.arrays["grad"], np.float32)
    return (o.errors.get("value", 0.0) <= TOL_EPS and o.errors.get("grad", 0.0) > TOL_EPS
            and bool(np.array_equal(g, _round_bf16(g))))


def _bf16_probe(case, o):
    ok = _bf16_grad(case, o)
    return ok, "every gradient entry is a bfloat16 number" if ok else ""


def _softmax(x):
    e = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


def _inplace(case, o):
    """The float32 input is overwritten with its softmax; a bfloat16 input is left alone."""
    if o.framework is None:
        return False, ""
    after = np.asarray(o.framework.arrays["input after"], np.float32)
    changed = not np.array_equal(after, case.x)
    soft = changed and np.allclose(after, _softmax(case.x.astype(np.float64)))
    bf = _session().call(case, "plain", _tp(case), dtype="bfloat16")
    kept = bf.x_after is not None and np.array_equal(bf.x_after, case.x)
    note = (f"float32 input after the call: {after.tolist()}"
            + (" (its softmax)" if soft else "")
            + f"; a bfloat16 input after the call: "
            + ("unchanged" if kept else f"CHANGED to {bf.x_after}"))
    return bool(changed and kept), note


def _same_as_no_smoothing(case, o):
    """A negative label_smoothing gives exactly the numbers of label_smoothing=0."""
    plain = _session().call(case.replace(kwargs={**case.kwargs, "label_smoothing": 0.0}),
                            "plain", _tp(case))
    fw = o.framework.arrays
    same = (not plain.error and np.array_equal(plain.losses, fw["value"])
            and np.array_equal(plain.grad, fw["grad"]))
    return bool(same), "identical to label_smoothing=0" if same else ""


def _tiny_loss(case, o):
    """Within the tolerance, but a loss below float32 eps is returned as 0."""
    if o.framework is None:
        return False, ""
    v = float(np.asarray(o.framework.arrays["value"]).ravel()[0])
    r = float(np.asarray(o.reference.arrays["value"]).ravel()[0])
    rel = abs(v / r - 1) if r else 0.0
    return bool(o.ok and v != r), f"relative error of the loss: {rel:.3g}"


def known() -> list[Known]:
    T1, T2, F2 = _name(PLAIN, 1), _name(PLAIN, 2), _name(FUSED, 2)
    plain = tuple(_name(PLAIN, tp) for tp in TP_SIZES)
    fused = tuple(_name(FUSED, tp) for tp in TP_SIZES)
    return [
        Known("megatron-smoothing-others", "convention",
              "label smoothing puts 1 - alpha on the target and alpha/(V-1) on every other "
              "class (PyTorch: alpha/V on every class)", T1,
              "stated in the source comment (from NeMo)",
              "At tp=1 the loss and gradient equal the reference with smoothing='others' and "
              "differ from smoothing='uniform' (the 'without the convention' line).",
              probe=_c([[1.0, 0.0, 0.0, 0.0]], [0], label_smoothing=0.1),
              exact=_uniform_reference),
        Known("megatron-smoothing-tp", "defect",
              "label smoothing with tp > 1 uses the rank's own vocabulary size and the mean "
              "log-probability of its own slice: every rank returns a different loss, and the "
              "gradient puts alpha/(V/tp - 1) instead of alpha/(V-1) on the other classes", T2,
              "NVIDIA/Megatron-LM#737, #7464 (open); PR #5522 (closed), #7466 (open)",
              "vocab_size = exp_logits.size(-1) is the partition size and "
              "log_probs.mean(dim=-1) is not all-reduced; the result depends on tp.",
              applies=_tp_smoothing, probe=_c([[1.0, 0.0, 0.0, 2.0]], [0], label_smoothing=0.1),
              check=_ranks_differ, scope=plain),
        Known("megatron-smoothing-tp-width1", "defect",
              "label smoothing with one class per rank (V = tp) raises ZeroDivisionError", T2,
              "NVIDIA/Megatron-LM#7464 (same cause)",
              "The smoothing coefficient divides by (V/tp - 1) = 0; a valid input (the "
              "reference is finite) is refused.  Same root cause as megatron-smoothing-tp.",
              applies=_zero_division, probe=_c([[1.0, 0.0]], [0], label_smoothing=0.1),
              check=_zero_division, scope=plain),
        Known("megatron-smoothing-underflow", "defect",
              "label smoothing: an infinite loss when a probability underflows in float32 "
              "(a logit more than ~104 below the row maximum), where the loss is finite", T1,
              "pointed out in NVIDIA/Megatron-LM PR #5522 and PR #7466 (unmerged)",
              "mean_log_probs = log(softmax).mean() takes log(0) = -inf after exp underflows; "
              "the gradient stays finite, so the step silently trains on an inf loss (or a "
              "loss scaler skips it).",
              applies=_underflow, probe=_c([[0.0, -110.0]], [0], label_smoothing=0.1),
              check=lambda c, o: _underflow(c, o) and not o.ok, scope=plain),
        Known("megatron-inplace-float32", "defect",
              "a float32 input is overwritten with the softmax (its slice, in place), by both "
              "vocab_parallel_cross_entropy and fused_vocab_parallel_cross_entropy", T1,
              "NVIDIA/Megatron-LM PR #1594 (open)",
              ".float() returns the float32 tensor itself; '-= logits_max' and "
              "torch.exp(out=) then write into the caller's logits ('In-place subtraction "
              "reduces memory pressure').  Not in the docstring; bf16/fp16 inputs are copied "
              "by .float() and left intact (the probe runs a bfloat16 copy too).",
              probe=_c([[0.0, 0.0]], [0]), check=_inplace),
        Known("megatron-target-range", "validation",
              "a target outside [0, V) (e.g. PyTorch's ignore value -100, or V) is silently "
              "accepted: loss log(sum exp(x - max)), gradient softmax (as if no class were "
              "the target)", T2, "",
              "Every rank masks it as 'not mine', so the SUM of the target logit is 0.  No "
              "error, a finite loss and gradient: the batch trains on garbage unless the "
              "caller's loss_mask zeroes that token.",
              probe=_c([[0.0, 0.0]], [-100])),
        Known("megatron-negative-smoothing", "validation",
              "a negative label_smoothing is silently ignored (treated as 0)", T1, "",
              "Documented range [0, 1); 'if label_smoothing > 0' skips the check "
              "(assert 1 > alpha > 0) that rejects alpha >= 1.",
              probe=_c([[1.0, 0.0]], [0], label_smoothing=-0.5), check=_same_as_no_smoothing),
        Known("megatron-smoothing-one", "validation",
              "label_smoothing >= 1 is rejected (AssertionError)", T1, "",
              "An assert, so it is skipped under python -O.",
              probe=_c([[1.0, 0.0]], [0], label_smoothing=1.0)),
        Known("megatron-tiny-loss", "match",
              "a confident token's loss is computed as log(sum exp) - (x_y - max): accurate "
              "to the operands (a match), but a loss below float32 eps is returned as 0", T1, "",
              "log(1 + 2e-9) rounds to 0 in float32; the reference keeps it with log1p (split "
              "log-sum-exp).  torch.nn.functional.cross_entropy does the same as Megatron; "
              "absolute error 2e-9, within 1 eps of the logits' size.",
              probe=_c([[0.0, -20.0]], [0]), check=_tiny_loss),
        Known("megatron-fused-bf16-grad", "defect",
              "fused (native) variant: the gradient is rounded to bfloat16 whatever the input "
              "dtype, so float32 logits get a gradient with 8 significant bits", F2, "",
              "calculate_gradients ends with grad_input.to(torch.bfloat16); autograd casts it "
              "back to float32.  Used by GPTModel with cross_entropy_loss_fusion=True and "
              "cross_entropy_fusion_impl='native'.  Intended for bf16 training, undocumented.",
              applies=_bf16_grad, probe=_c([[1.0, 0.0, 0.0, 0.3]], [0]), check=_bf16_probe,
              scope=fused),
    ]


# --------------------------------------------------------------------------- report sections

def _e(v):
    return "inf" if v == float("inf") else f"{v:.2g}"


def _sections(groups, lb, inv) -> list:
    """Markdown lines the report adds to Megatron's section: processes, sockets, tp invariance."""
    L = ["### Processes and sockets", "",
         "Each tensor-parallel size is one gloo process group on this machine (file store, "
         "`GLOO_SOCKET_IFNAME=lo`), started once and kept for the audit.", "",
         "| tp | processes' start (s) | calls (plain) | ms per call (plain, incl. IPC) "
         "| fused: first call, torch.compile (s) |", "|---:|---:|---:|---:|---:|"]
    for g in groups:
        fc = g.get("fused_first_call_seconds")
        L.append(f"| {g['tp']} | {g['start_seconds']} | {g['calls']} | {g['ms_per_call']} | "
                 f"{'-' if fc is None else fc} |")
    L += ["", f"Sockets: {lb['samples']} samples of `ss -H -tuanp` while the workers lived; "
              f"{lb['sockets']} distinct sockets of the workers, {lb['listening']} listening, on "
              f"{', '.join(lb['listening_addresses']) or '-'}; "
              f"{len(lb['violations'])} outside loopback.", ""]
    L += ["### Invariance across tensor-parallel sizes (against tp = 1)", "",
          "The same sweep cases at tp = 2 and 4 against tp = 1 (every rank's loss and the "
          "gradient), in eps of the operands.", "",
          "| function | label_smoothing | tp | cases | equal within tolerance "
          "| worst value eps | worst grad eps |", "|---|---:|---:|---:|---:|---:|---:|"]
    by = {}
    for r in inv:
        by.setdefault((r["impl"], r["label_smoothing"], r["tp"]), []).append(r)
    for (impl, ls, tp), rs in sorted(by.items()):
        wv = max(r["errors"].get("value", 0.0) for r in rs)
        wg = max(r["errors"].get("grad", 0.0) for r in rs)
        L.append(f"| {PLAIN if impl == 'plain' else FUSED} | {ls} | {tp} | {len(rs)} | "
                 f"{sum(r['ok'] for r in rs)} | {_e(wv)} | {_e(wg)} |")
    L.append("")
    return L
