r"""Audit of Megatron-LM's vocab-parallel cross-entropy (megatron-core) against the reference.

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
process holding ``V / tp`` classes of every row, in float32.

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
per-token losses, i.e. ``grad_output = 1``), on the concatenated logits.  Errors are in
float32 machine epsilons, normwise, relative to the larger of the reference result and
the operand scale (:func:`ce_reference.frameworks._core.compare`, tolerance
``TOL_EPS`` = 256 eps); every rank's loss is compared (they must all equal the
reference), and the results of ``tp = 2, 4`` are compared with ``tp = 1``.

Network
-------
Every process group is initialised from a *file* store (``init_method="file://..."``;
PyTorch's TCPStore listens on all interfaces whatever ``MASTER_ADDR`` says) with
``GLOO_SOCKET_IFNAME=lo``, so gloo's pairs bind to 127.0.0.1; a
:class:`ce_reference._loopback.LoopbackMonitor` samples ``ss`` while the workers live,
kills them at the first socket outside loopback, and its evidence is in the report.

Run ``python -m ce_reference.frameworks._megatron [--quick] [--json P] [--markdown P]``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

from ._core import TOL_EPS, Result, compare

#: The audited release; pinned in pyproject.toml (extras ``frameworks`` and ``megatron``).
MEGATRON_CORE_VERSION = "0.16.1"
TP_SIZES = (1, 2, 4)
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_megatron_worker.py")


def load() -> str:
    """The installed megatron-core version (ImportError when it is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    import torch  # noqa: F401
    try:
        return version("megatron-core")
    except PackageNotFoundError as exc:  # pragma: no cover
        raise ImportError("megatron-core is not installed") from exc


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

    def __exit__(self, *exc):
        self.close()
        return False


# --------------------------------------------------------------------------- reference

def reference(x, y, label_smoothing=0.0, smoothing="others"):
    """Per-token loss and the gradient of their sum, single device, Megatron's convention."""
    from ..parallel import reference_cross_entropy
    return reference_cross_entropy(np.asarray(x, np.float32), np.asarray(y),
                                   label_smoothing=label_smoothing, smoothing=smoothing,
                                   reduction="none")


def _scales(x):
    fin = np.abs(x[np.isfinite(x)]).astype(np.float64)
    return {"value": max(1.0, float(fin.max())) if fin.size else 1.0, "grad": 1.0}


def compare_output(out: Output, x, y, label_smoothing, smoothing="others"):
    """Worst comparison of every rank's loss and the gradient with the reference."""
    rv, rg = reference(x, y, label_smoothing, smoothing)
    ref = Result({"value": rv, "grad": rg})
    worst = None
    for loss in out.losses:
        o = compare(Result({"value": loss, "grad": out.grad}), ref, "float32", _scales(x))
        if worst is None or (not o.ok and worst.ok) or \
                max(o.errors.values(), default=0) > max(worst.errors.values(), default=0):
            worst = o
    return worst


def compare_tp(a: Output, b: Output, x):
    """``b`` (tp > 1) against ``a`` (tp = 1): every rank's loss and the gradient."""
    ref = Result({"value": a.losses[0], "grad": a.grad})
    outs = [compare(Result({"value": loss, "grad": b.grad}), ref, "float32", _scales(x))
            for loss in b.losses]
    return max(outs, key=lambda o: max(o.errors.values(), default=0))


# --------------------------------------------------------------------------- inputs

REGIONS = ("normal s=1", "normal s=10", "confident", "+-1e4", "all equal", "-inf masked",
           "rank slice -inf", "max in last rank", "tied max", "spread 110")
SMOOTHINGS = (0.0, 0.1, 0.5)


def make_input(rng, region, V=16, shape=(2, 3)):
    """Float32 logits ``shape + (V,)`` and targets for one region (``V`` divisible by 4)."""
    n = int(np.prod(shape))
    x = rng.normal(size=(n, V))
    w = V // 4
    if region == "normal s=10":
        x *= 10
    elif region == "confident":
        x[np.arange(n), rng.integers(0, V, n)] = 40.0
    elif region == "+-1e4":
        x = rng.choice([-1e4, 0.0, 1e4], size=(n, V))
    elif region == "all equal":
        x[:] = 3.0
    elif region == "-inf masked":
        x[:, 1::3] = -np.inf
    elif region == "rank slice -inf":
        x[:, w:2 * w] = -np.inf               # one rank's whole slice (tp=4), half of one (tp=2)
    elif region == "max in last rank":
        x[:, -1] = 12.0
    elif region == "tied max":
        x[:, 0] = x[:, -1] = 6.0
    elif region == "spread 110":
        x[:, 0] = 110.0                         # exp(x - max) underflows in float32 for the rest
    y = rng.integers(0, V, n)
    fin = np.where(np.isfinite(x), x, -np.inf)
    y[::2] = np.argmax(fin, axis=-1)[::2]
    bad = np.isneginf(x[np.arange(n), y])
    y[bad] = 0
    x[bad, 0] = 0.5
    return x.reshape(shape + (V,)).astype(np.float32), y.reshape(shape)


# --------------------------------------------------------------------------- the catalogue

@dataclass
class Finding:
    id: str
    klass: str                  # "defect", "convention", "match"
    title: str
    function: str
    explanation: str
    refs: str = ""
    tp: int = 1
    probe: dict = field(default_factory=dict)   # x, y, label_smoothing, impl, dtype
    seen: int = 0
    reproduced: bool | None = None
    result: dict = field(default_factory=dict)


def catalogue():
    """The findings, each with a hand-minimised probe input."""
    f32 = np.float32
    return [
        Finding("megatron-smoothing-others", "convention",
                "label smoothing puts 1 - alpha on the target and alpha/(V-1) on every other "
                "class (PyTorch: alpha/V on every class)",
                "vocab_parallel_cross_entropy",
                "Stated in the source comment (from NeMo).  At tp=1 the loss and gradient equal "
                "the reference with smoothing='others' and differ from smoothing='uniform'.",
                tp=1, probe=dict(x=np.array([[1.0, 0.0, 0.0, 0.0]], f32), y=np.array([0]),
                                 label_smoothing=0.1)),
        Finding("megatron-smoothing-tp", "defect",
                "label smoothing with tp > 1 uses the rank's own vocabulary size and the mean "
                "log-probability of its own slice: every rank returns a different loss, and the "
                "gradient puts alpha/(V/tp - 1) instead of alpha/(V-1) on the other classes",
                "vocab_parallel_cross_entropy",
                "vocab_size = exp_logits.size(-1) is the partition size and "
                "log_probs.mean(dim=-1) is not all-reduced; the result depends on tp.",
                refs="NVIDIA/Megatron-LM#737, #7464 (open); PR #5522 (closed), #7466 (open)",
                tp=2, probe=dict(x=np.array([[1.0, 0.0, 0.0, 2.0]], f32), y=np.array([0]),
                                 label_smoothing=0.1)),
        Finding("megatron-smoothing-tp-width1", "defect",
                "label smoothing with one class per rank (V = tp) raises ZeroDivisionError",
                "vocab_parallel_cross_entropy",
                "The smoothing coefficient divides by (V/tp - 1) = 0; a valid input (the "
                "reference is finite) is refused.  Same root cause as megatron-smoothing-tp.",
                refs="NVIDIA/Megatron-LM#7464 (same cause)",
                tp=2, probe=dict(x=np.array([[1.0, 0.0]], f32), y=np.array([0]),
                                 label_smoothing=0.1)),
        Finding("megatron-smoothing-underflow", "defect",
                "label smoothing: an infinite loss when a probability underflows in float32 "
                "(a logit more than ~104 below the row maximum), where the loss is finite",
                "vocab_parallel_cross_entropy",
                "mean_log_probs = log(softmax).mean() takes log(0) = -inf after exp underflows; "
                "the gradient stays finite, so the step silently trains on an inf loss (or a "
                "loss scaler skips it).",
                refs="pointed out in NVIDIA/Megatron-LM PR #5522 and PR #7466 (unmerged)",
                tp=1, probe=dict(x=np.array([[0.0, -110.0]], f32), y=np.array([0]),
                                 label_smoothing=0.1)),
        Finding("megatron-inplace-float32", "defect",
                "a float32 input is overwritten with the softmax (its slice, in place)",
                "vocab_parallel_cross_entropy, fused_vocab_parallel_cross_entropy",
                ".float() returns the float32 tensor itself; '-= logits_max' and "
                "torch.exp(out=) then write into the caller's logits ('In-place subtraction "
                "reduces memory pressure').  Not in the docstring; bf16/fp16 inputs are "
                "copied by .float() and left intact (verified: the bf16 probe of this finding "
                "keeps its input).",
                refs="NVIDIA/Megatron-LM PR #1594 (open)",
                tp=1, probe=dict(x=np.array([[0.0, 0.0]], f32), y=np.array([0]))),
        Finding("megatron-target-range", "defect",
                "a target outside [0, V) (e.g. PyTorch's ignore value -100, or V) is silently "
                "accepted: loss log(sum exp(x - max)), gradient softmax (as if no class were "
                "the target)",
                "vocab_parallel_cross_entropy",
                "Every rank masks it as 'not mine', so the SUM of the target logit is 0.  No "
                "error, a finite loss and gradient: the batch trains on garbage unless the "
                "caller's loss_mask zeroes that token.",
                tp=2, probe=dict(x=np.array([[0.0, 0.0]], f32), y=np.array([-100]))),
        Finding("megatron-negative-smoothing", "defect",
                "a negative label_smoothing is silently ignored (treated as 0)",
                "vocab_parallel_cross_entropy",
                "Documented range [0, 1); 'if label_smoothing > 0' skips the check "
                "(assert 1 > alpha > 0) that rejects alpha >= 1.",
                tp=1, probe=dict(x=np.array([[1.0, 0.0]], f32), y=np.array([0]),
                                 label_smoothing=-0.5)),
        Finding("megatron-smoothing-one", "match",
                "label_smoothing >= 1 is rejected (AssertionError)", "vocab_parallel_cross_entropy",
                "An assert, so it is skipped under python -O.",
                tp=1, probe=dict(x=np.array([[1.0, 0.0]], f32), y=np.array([0]),
                                 label_smoothing=1.0)),
        Finding("megatron-tiny-loss", "match",
                "a confident token's loss is computed as log(sum exp) - (x_y - max): accurate "
                "to the operands (a match), but a loss below float32 eps is returned as 0",
                "vocab_parallel_cross_entropy",
                "log(1 + 2e-9) rounds to 0 in float32; the reference keeps it with "
                "log1p (split log-sum-exp).  torch.nn.functional.cross_entropy does the same "
                "as Megatron; absolute error 2e-9, within 1 eps of the logits' size.",
                tp=1, probe=dict(x=np.array([[0.0, -20.0]], f32), y=np.array([0]))),
        Finding("megatron-fused-bf16-grad", "defect",
                "fused (native) variant: the gradient is rounded to bfloat16 whatever the input "
                "dtype, so float32 logits get a gradient with 8 significant bits",
                "fused_vocab_parallel_cross_entropy",
                "calculate_gradients ends with grad_input.to(torch.bfloat16); autograd casts it "
                "back to float32.  Used by GPTModel with cross_entropy_loss_fusion=True and "
                "cross_entropy_fusion_impl='native'.  Intended for bf16 training, undocumented.",
                tp=2, probe=dict(x=np.array([[1.0, 0.0, 0.0, 0.3]], f32), y=np.array([0]),
                                 impl="fused")),
    ]


def _check_probe(f: Finding, out: Output, g: MegatronGroup):
    """Whether the probe reproduces the finding; fills ``f.result``."""
    p = f.probe
    x, y, ls = p["x"], p["y"], p.get("label_smoothing", 0.0)
    res = f.result
    res["input"] = (f"x={_fmt(x)}, y={_fmt(y)}"
                    + (f", label_smoothing={ls}" if "label_smoothing" in p else "")
                    + (", fused" if p.get("impl") == "fused" else "") + f", tp={f.tp}")
    if out.error:
        res["framework"] = f"raises {out.error}"
    else:
        res["framework"] = (f"loss per rank={_fmt(out.losses)}; grad={_fmt(out.grad)}"
                            + (f"; input after the call={_fmt(out.x_after)}"
                               if f.id.startswith("megatron-inplace") else ""))
    if f.id in ("megatron-target-range", "megatron-negative-smoothing"):
        finite = not out.error and np.all(np.isfinite(out.losses)) and np.all(
            np.isfinite(out.grad))
        if f.id == "megatron-negative-smoothing":
            plain = g.run(x, y, 0.0)
            same = np.array_equal(plain.losses, out.losses) and np.array_equal(plain.grad, out.grad)
            res["framework"] += "; identical to label_smoothing=0" if same else ""
            return bool(finite and same)
        return bool(finite)
    if f.id == "megatron-smoothing-one":
        return bool(out.error)
    if f.id == "megatron-smoothing-tp-width1":
        rv, rg = reference(x, y, ls)
        res["reference"] = f"loss={_fmt(rv)}; grad={_fmt(rg)}"
        return "ZeroDivisionError" in out.error
    if f.id == "megatron-inplace-float32":
        rv, rg = reference(x, y)
        changed = not np.array_equal(out.x_after, x)
        soft = np.exp(x - x.max(-1, keepdims=True))
        soft /= soft.sum(-1, keepdims=True)
        res["framework"] += " (the softmax)" if np.allclose(out.x_after, soft) else ""
        bf = g.run(x, y, 0.0, dtype="bfloat16")
        res["bfloat16 input after the call"] = (
            _fmt(bf.x_after) + (" (shown as float32: unchanged)" if np.array_equal(bf.x_after, x)
                                else " (shown as float32: CHANGED)"))
        return bool(changed and np.array_equal(bf.x_after, x))
    if out.error:
        return False
    if f.id == "megatron-smoothing-others":
        o = compare_output(out, x, y, ls, "others")
        u = compare_output(out, x, y, ls, "uniform")
        rv, rg = reference(x, y, ls, "others")
        uv, ug = reference(x, y, ls, "uniform")
        res["reference"] = f"others: loss={_fmt(rv)}; grad={_fmt(rg)}"
        res["uniform (PyTorch)"] = f"loss={_fmt(uv)}; grad={_fmt(ug)}"
        res["errors_eps"] = {"others": o.errors, "uniform": u.errors}
        return bool(o.ok and not u.ok)
    rv, rg = reference(x, y, ls)
    res["reference"] = f"loss={_fmt(rv)}; grad={_fmt(rg)}"
    o = compare_output(out, x, y, ls)
    res["errors_eps"] = o.errors
    if f.id == "megatron-fused-bf16-grad":
        bf = out.grad.astype(np.float32)
        rounded = np.array_equal(bf, _round_bf16(bf))
        res["framework"] += f" (every entry a bfloat16 value: {rounded})"
        return bool(rounded and not o.ok and o.errors.get("value", 0) <= TOL_EPS)
    if f.id == "megatron-smoothing-underflow":
        return bool(np.any(np.isinf(out.losses)) and np.all(np.isfinite(rv)))
    if f.id == "megatron-tiny-loss":
        res["framework"] += f" (relative error of the loss: {abs(float(out.losses.ravel()[0]) / float(rv.ravel()[0]) - 1):.3g})"
        return bool(o.ok and out.losses.ravel()[0] != rv.ravel()[0])
    return not o.ok


def _round_bf16(a):
    b = np.asarray(a, np.float32).view(np.uint32)
    r = ((b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)
    return r.view(np.float32)


def _fmt(a):
    a = np.asarray(a)
    with np.printoptions(floatmode="unique", threshold=40, linewidth=10_000):
        s = np.array2string(a, separator=", ").replace("\n", "")
    return f"{s} ({a.dtype})" if a.dtype.kind == "f" else s


# --------------------------------------------------------------------------- the sweep

def _classify(x, ls, impl, tp, out: Output, o):
    """The catalogued finding that explains a deviation of the sweep, or None."""
    if out.error:
        if ls > 0 and tp == x.shape[-1]:
            return "megatron-smoothing-tp-width1"
        return None
    if impl == "fused" and o.kind == "grad" and o.errors.get("value", 0) <= TOL_EPS:
        return "megatron-fused-bf16-grad"
    if ls > 0:
        if np.any(np.isinf(out.losses)) and o.kind == "value":
            return "megatron-smoothing-underflow"
        if tp > 1:
            return "megatron-smoothing-tp"
    return None


def run_audit(*, seed=0, quick=False, tp_sizes=TP_SIZES, fused=True, progress=None,
              workdir=None) -> dict:
    """Run the audit; returns the report (a JSON-serialisable dict).

    ``quick``: fewer regions and one shape per call (the probes all run; the fused
    variant only at tp = 2).  ``progress(msg)`` is called as the audit proceeds.
    """
    from .._loopback import LoopbackMonitor

    t0 = time.monotonic()
    rep = {"framework": "megatron-core", "seed": seed, "quick": quick, "tolerance_eps": TOL_EPS,
           "tp_sizes": list(tp_sizes)}
    try:
        rep["version"] = load()
        import torch
        rep["torch"] = torch.__version__
    except ImportError as exc:
        rep.update(status="skipped", reason=f"not available: {exc}", ok=True, exit_code=0)
        return rep
    rep["status"] = "ran"
    regions = REGIONS[::3] + ("rank slice -inf", "spread 110") if quick else REGIONS
    smoothings = (0.0, 0.1) if quick else SMOOTHINGS
    cat = catalogue()
    by_id = {f.id: f for f in cat}
    rows, unclassified, outputs, groups = [], [], {}, []
    own_tmp = workdir is None
    tmp = workdir or tempfile.mkdtemp(prefix="ce-megatron-")
    groups_ref = []

    def stop_all(line):
        for g in groups_ref:
            g.kill()

    mon = LoopbackMonitor(interval=0.1, on_violation=stop_all)
    with mon:
        for tp in tp_sizes:
            if progress:
                progress(f"megatron: starting {tp} process(es)")
            with MegatronGroup(tp, tmp, mon) as g:
                groups_ref.append(g)
                groups.append({"tp": tp, "start_seconds": round(g.start_seconds, 1)})
                t_calls, n_calls, t_first_fused = 0.0, 0, None
                impls = ["plain"] + (["fused"] if fused and (not quick or tp == 2) else [])
                for impl in impls:
                    for ri, region in enumerate(regions):
                        for ls in (smoothings if impl == "plain" else (0.0,)):
                            rng = np.random.default_rng([seed, ri, int(ls * 100)])
                            x, y = make_input(rng, region)
                            t1 = time.monotonic()
                            out = g.run(x, y, ls, impl)
                            dt_call = time.monotonic() - t1
                            if impl == "plain":
                                t_calls += dt_call
                                n_calls += 1
                            elif t_first_fused is None:
                                t_first_fused = dt_call      # torch.compile
                            outputs[(impl, region, ls, tp)] = (x, y, out)
                            row = {"tp": tp, "impl": impl, "region": region,
                                   "label_smoothing": ls}
                            if out.error:
                                o = None
                                row.update(ok=False, errors={}, detail=out.error)
                            else:
                                o = compare_output(out, x, y, ls)
                                row.update(ok=o.ok, errors=o.errors, detail=o.detail)
                            if not row["ok"]:
                                fid = _classify(x, ls, impl, tp, out, o)
                                row["finding"] = fid
                                if fid:
                                    by_id[fid].seen += 1
                                else:
                                    unclassified.append(row)
                            rows.append(row)
                groups[-1]["calls"] = n_calls
                groups[-1]["ms_per_call"] = round(1000 * t_calls / max(1, n_calls), 1)
                groups[-1]["fused_first_call_seconds"] = (None if t_first_fused is None
                                                          else round(t_first_fused, 1))
                for f in cat:
                    if f.tp == tp and (f.probe.get("impl") != "fused" or "fused" in impls):
                        if progress:
                            progress(f"megatron: probe {f.id}")
                        p = f.probe
                        out = g.run(p["x"], p["y"], p.get("label_smoothing", 0.0),
                                    p.get("impl", "plain"))
                        f.reproduced = _check_probe(f, out, g)
                groups_ref.remove(g)
    # invariance across tensor-parallel sizes: every rank's loss and the gradient vs tp = 1
    inv = []
    for (impl, region, ls, tp), (x, y, out) in outputs.items():
        base = outputs.get((impl, region, ls, tp_sizes[0]))
        if tp == tp_sizes[0] or base is None or out.error or base[2].error:
            continue
        o = compare_tp(base[2], out, x)
        inv.append({"impl": impl, "region": region, "label_smoothing": ls, "tp": tp,
                    "ok": o.ok, "errors": o.errors})
    rep["invariance"] = inv
    rep["rows"] = rows
    rep["groups"] = groups
    rep["unclassified"] = unclassified
    rep["findings"] = []
    for f in cat:
        klass = f.klass if f.reproduced or f.seen else "not reproduced"
        rep["findings"].append({"id": f.id, "class": klass, "title": f.title,
                                "function": f.function, "explanation": f.explanation,
                                "refs": f.refs, "tp": f.tp, "sweep_cases": f.seen,
                                "reproduced": f.reproduced, "probe": f.result})
    rep["defects"] = sorted(f["id"] for f in rep["findings"] if f["class"] == "defect")
    rep["loopback"] = {"ok": mon.ok, "samples": mon.samples, "sockets": len(mon.sockets),
                       "listening": len(mon.listeners), "violations": mon.violations,
                       "listening_addresses": sorted({s.split()[4].rpartition(":")[0]
                                                      for s in mon.listeners})}
    rep["ok"] = not unclassified and mon.ok
    rep["exit_code"] = 0 if rep["ok"] else 1
    rep["seconds"] = round(time.monotonic() - t0, 1)
    if own_tmp:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    return rep


def worst_errors(rep):
    """Worst error (eps) of the matching sweep cases per (impl, tp, label_smoothing)."""
    out = {}
    for r in rep["rows"]:
        if not r["ok"]:
            continue
        k = (r["impl"], r["tp"], r["label_smoothing"])
        for name, v in r["errors"].items():
            out.setdefault(k, {}).setdefault(name, 0.0)
            out[k][name] = max(out[k][name], v)
    return out


def markdown(rep) -> str:
    """The audit as a Markdown section (for docs/audit.md / docs/audit_megatron.md)."""
    if rep.get("status") != "ran":
        return f"## megatron-core\n\nSkipped: {rep.get('reason')}\n"
    L = [f"## megatron-core {rep['version']} (torch {rep['torch']})", "",
         "<!-- generated by `python -m ce_reference.frameworks._megatron --markdown PATH` -->", "",
         f"`tensor_parallel.vocab_parallel_cross_entropy` (option: `label_smoothing`) and the fused "
         f"`fusions.fused_cross_entropy.fused_vocab_parallel_cross_entropy`, float32, on "
         f"torch.distributed/gloo in {', '.join(str(t) for t in rep['tp_sizes'])} process(es) "
         f"(`initialize_model_parallel(tensor_model_parallel_size=tp)`), against "
         "`ce_reference.parallel.reference_cross_entropy(..., smoothing=\"others\", "
         "reduction=\"none\")` -- Megatron's stated convention: per-token float32 loss, "
         "smoothing 1 - alpha on the target and alpha/(V-1) elsewhere.  Every rank's loss is "
         f"compared.  Tolerance {rep['tolerance_eps']:g} float32 eps relative to the operands.  "
         f"Seed {rep['seed']}{', quick sweep' if rep['quick'] else ''}; {rep['seconds']} s.", ""]
    L += ["| tp | processes' start (s) | calls (plain) | ms per call (plain, incl. IPC) "
          "| fused: first call, torch.compile (s) |", "|---:|---:|---:|---:|---:|"]
    for g in rep["groups"]:
        fc = g.get("fused_first_call_seconds")
        L.append(f"| {g['tp']} | {g['start_seconds']} | {g['calls']} | {g['ms_per_call']} | "
                 f"{'-' if fc is None else fc} |")
    lb = rep["loopback"]
    L += ["", f"Sockets: {lb['samples']} samples of `ss -H -tuanp` while the workers lived; "
              f"{lb['sockets']} distinct sockets of the workers, {lb['listening']} listening, on "
              f"{', '.join(lb['listening_addresses']) or '-'}; "
              f"{len(lb['violations'])} outside loopback.", ""]
    L += ["### Sweep", "", "| variant | tp | label_smoothing | cases | matches | worst value eps "
          "| worst grad eps | findings |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    groups = {}
    for r in rep["rows"]:
        groups.setdefault((r["impl"], r["tp"], r["label_smoothing"]), []).append(r)
    for (impl, tp, ls), rs in sorted(groups.items()):
        m = [r for r in rs if r["ok"]]
        wv = max((r["errors"].get("value", 0) for r in m), default=float("nan"))
        wg = max((r["errors"].get("grad", 0) for r in m), default=float("nan"))
        fs = sorted({r.get("finding") or "UNCLASSIFIED" for r in rs if not r["ok"]})
        L.append(f"| {impl} | {tp} | {ls} | {len(rs)} | {len(m)} | {wv:.3g} | {wg:.3g} | "
                 f"{', '.join(fs) or '-'} |")
    L += ["", "### Invariance across tensor-parallel sizes (against tp = 1)", "",
          "| variant | label_smoothing | tp | cases | equal within tolerance | worst value eps "
          "| worst grad eps |", "|---|---:|---:|---:|---:|---:|---:|"]
    ig = {}
    for r in rep["invariance"]:
        ig.setdefault((r["impl"], r["label_smoothing"], r["tp"]), []).append(r)
    for (impl, ls, tp), rs in sorted(ig.items()):
        wv = max(r["errors"].get("value", 0) for r in rs)
        wg = max(r["errors"].get("grad", 0) for r in rs)
        L.append(f"| {impl} | {ls} | {tp} | {len(rs)} | {sum(r['ok'] for r in rs)} | "
                 f"{_e(wv)} | {_e(wg)} |")
    L += ["", "### Findings", ""]
    order = {"defect": 0, "convention": 1, "match": 2, "not reproduced": 3}
    for f in sorted(rep["findings"], key=lambda f: order.get(f["class"], 9)):
        L += [f"#### `{f['id']}` ({f['class']}): {f['title']}", "",
              f"- function: `{f['function']}`" + (f"; see {f['refs']}" if f["refs"] else ""),
              f"- {f['explanation']}"]
        p = f["probe"]
        if p:
            L.append(f"- smallest input: `{p.get('input', '')}`")
            for k in ("framework", "reference", "uniform (PyTorch)",
                      "bfloat16 input after the call"):
                if k in p:
                    L.append(f"- {k}: `{p[k]}`")
        if f["sweep_cases"]:
            L.append(f"- seen in {f['sweep_cases']} sweep case(s)")
        L.append("")
    if rep["unclassified"]:
        L += ["### Unclassified deviations", ""]
        for u in rep["unclassified"][:10]:
            L.append(f"- tp={u['tp']} {u['impl']} {u['region']} label_smoothing="
                     f"{u['label_smoothing']}: {u['detail']}")
    return "\n".join(L) + "\n"


def _e(v):
    return "inf" if math.isinf(v) else f"{v:.3g}"


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m ce_reference.frameworks._megatron",
                                 description="Audit megatron-core's vocab-parallel cross-entropy "
                                             "(1, 2 and 4 gloo processes, loopback only).")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-fused", action="store_true", help="skip the torch.compile-d variant")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--markdown", metavar="PATH")
    a = ap.parse_args(argv)
    rep = run_audit(seed=a.seed, quick=a.quick, fused=not a.no_fused,
                    progress=lambda m: print(f"  {m}", file=sys.stderr, flush=True))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(rep, fh, indent=1, default=_json_default)
    md = markdown(rep)
    if a.markdown:
        with open(a.markdown, "w") as fh:
            fh.write(md)
    print(md)
    return rep.get("exit_code", 0)


def _json_default(v):
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (np.floating, np.integer, np.bool_)):
        return v.item()
    if dataclasses.is_dataclass(v):
        return dataclasses.asdict(v)
    return str(v)


if __name__ == "__main__":
    sys.exit(main())
