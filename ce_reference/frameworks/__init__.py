"""Audit PyTorch, optax, Keras 3, scikit-learn, megatron-core and the GPU linear CE kernels.

Each framework's cross-entropy functions are run (values, and gradients
through the framework's own autograd; scikit-learn's ``_loss`` gives its own
gradient and Hessian) on seeded random and extreme inputs in float64 and
float32, and compared with :mod:`ce_reference` under the framework's own
documented convention (:mod:`ce_reference.conventions`).  Every finding is
classified as

* ``match``: agrees within the tolerance (:data:`~ce_reference.auditing.TOL_EPS`
  = 256 machine epsilons of the operands, the tolerance of every audit), or
  rejects an invalid input;
* ``convention``: a named, documented convention difference, verified by
  running a witness input on which the framework follows its convention and
  differs from the exact formula;
* ``defect``: a value or gradient wrong for the framework's own documented
  definition, NaN where the mathematics is finite, or silent acceptance of an
  input outside the documented domain; with the smallest input found (shrunk
  from the sweep, or a hand-minimised probe) and the framework's version.

megatron-core's vocab-parallel cross-entropy runs on ``torch.distributed``
(gloo) in 1, 2 and 4 worker processes of this machine, every socket checked to
stay on loopback (:mod:`._megatron`).

The kernel audits (:data:`KERNELS`) run the fused linear cross-entropy
kernels of LLM training on the CPU against the exact float64 reference
(:func:`ce_reference.linear_cross_entropy` at the input's values):
``torch-linear`` (PyTorch 2.13's ``F.linear_cross_entropy``, reference and
chunked paths), ``liger`` (Liger Kernel's Triton cross-entropy and fused
linear cross-entropy under Triton's interpreter, :mod:`._triton_interp`) and
``cce`` (Apple's cut-cross-entropy, ``impl="cce"`` under the interpreter and
``impl="torch_compile"`` as shipped).  They sweep float32 (eps of the
operands) and float16 (the low-precision criterion against the same-dtype
PyTorch composition, :func:`._core.compare_low_precision`) and are classified
as above, plus **precision** (a float16 result that fails that criterion by
a stated ratio and a checked mechanism, without a wrong formula).  Their
packages are the ``kernels`` extra (``pip install -e ".[kernels]"``).

Run it with ``ce-reference audit NAME|all`` (``NAME`` one of :data:`AUDITS`;
``all`` runs every one) or ``python -m ce_reference.frameworks NAME``, or from
Python with :func:`run_framework_audit`.  A framework that is not installed is
reported as skipped ("not installed"), not failed.

Exit status of :func:`run_framework_audit` (and of the command line)
--------------------------------------------------------------------
* ``0``: the audit ran (or the framework is not installed and was skipped) and
  every deviation is explained by a catalogued finding -- a named convention
  or a known, documented defect.  Known defects are *reported*, they do not
  fail the run, so the command can gate CI on *new* behaviour.
* ``1``: some deviation is not explained by the catalogue (a new defect, or a
  changed behaviour in a new framework version); with ``strict=True`` also
  when any defect is found.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import platform
import time

import numpy as np

from .._format import check_writable, fmt_eps
from ._core import (MAX_SHRINK, TOL_EPS, covers, evaluate, explains, probe_known, run_target,
                    shrink)

FRAMEWORKS = ("torch", "optax", "keras", "sklearn", "megatron")
#: The GPU linear cross-entropy kernels, audited on the CPU (extra ``kernels``).
KERNELS = ("torch-linear", "liger", "cce")
#: Every audit ``ce-reference audit NAME`` knows; ``all`` runs them in this order.
AUDITS = FRAMEWORKS + KERNELS

__all__ = ["AUDITS", "FRAMEWORKS", "KERNELS", "audit_framework", "run_framework_audit"]


def _adapter(name):
    if name not in AUDITS:
        raise ValueError(f"unknown framework {name!r}; expected one of {AUDITS} or 'all'")
    return importlib.import_module(f"ce_reference.frameworks._{name.replace('-', '_')}")


def audit_framework(name: str, *, seed: int = 0, quick: bool = False, progress=None) -> dict:
    """Audit one framework; returns the report as a JSON-serialisable dict.

    ``quick`` sweeps a subset (every third input region, the first two option
    sets of each function): the catalogue probes still all run.  ``progress``,
    if given, is called with a short status string as the audit proceeds.

    An adapter may define ``session(seed=, quick=, progress=)``, a context
    manager that holds what its targets need for the whole audit (Megatron's
    worker processes and their loopback monitor); the sweep, the probes and the
    shrinking run inside it, and afterwards its ``finish(report)`` adds its
    evidence to the report: further keys, ``"sections"`` (Markdown lines),
    ``"notes"`` (console lines) and ``"failed"`` (a reason that makes the audit
    fail, exit status 1, whatever the classification).
    """
    mod = _adapter(name)
    t0 = time.perf_counter()
    report = {"framework": name, "seed": seed, "quick": quick, "tolerance_eps": TOL_EPS,
              "python": platform.python_version(), "numpy": np.__version__}
    about = getattr(mod, "about", None)
    try:
        version = mod.load()
    except ImportError as exc:
        report.update(status="skipped", reason=f"not available: {exc}", version=None,
                      rows=[], findings=[], unclassified=[], exit_code=0, ok=True)
        if about is not None:
            report["about"] = about()
        return report
    report.update(status="ran", version=version)
    if about is not None:
        report["about"] = about()
    hook = getattr(mod, "session", None)
    ctx = hook(seed=seed, quick=quick, progress=progress) if hook else contextlib.nullcontext()
    with ctx as sess:
        rows, findings, unclassified = _sweep_and_probe(mod, name, report, seed, quick, progress)
    if sess is not None:
        sess.finish(report)
    failed = report.pop("failed", None)
    report["defects"] = sorted(f["id"] for f in findings if f["class"] == "defect")
    report["exit_code"] = 1 if unclassified or failed else 0
    report["ok"] = not unclassified and not failed
    report["worst_match_eps"] = max((v for r in rows if r.unit == "eps"
                                     for v in r.worst.values()), default=0.0)
    ratios = [v for r in rows if r.unit == "ratio" for v in r.worst.values()]
    if ratios:
        report["worst_match_ratio"] = max(ratios)
    calls = [s for r in rows for s in r.seconds]
    if calls:
        report["median_call_seconds"] = float(np.median(calls))
    report["verdict"] = _verdict(report, findings, unclassified)
    if failed:
        report["verdict"] = f"FAILED: {failed}; {report['verdict']}"
    report["seconds"] = round(time.perf_counter() - t0, 1)
    return report


def _sweep_and_probe(mod, name, report, seed, quick, progress):
    """The sweep of every target, the catalogue probes and the shrunk witnesses."""
    targets = mod.targets()
    if quick:
        targets = [_quick(t) for t in targets]
    by_name = {t.name: t for t in targets}
    known = mod.known()
    rows, attributed, unclassified = [], {}, []
    for t in targets:
        if progress:
            progress(f"{name}: {t.name}")
        r, a, u = run_target(t, known, seed)
        rows += r
        for k, v in a.items():
            if k not in attributed:
                attributed[k] = v + [t]
            else:
                attributed[k][0] += v[0]
        unclassified += [(t, c, o) for c, o in u]
    findings = []
    for k in known:
        target = by_name.get(k.target) or next(t for t in targets if covers(k.target, t.name))
        f = {"id": k.id, "kind": k.kind, "title": k.title, "target": k.target,
             "refs": k.refs, "explanation": k.explanation}
        f["probe"] = probe_known(k, target)
        f["class"] = f["probe"]["class"]
        if k.id in attributed:
            count, case, o, t = attributed[k.id]
            f["sweep_cases"] = count
            small = shrink(t, case, lambda c, o, k=k, t=t: explains(k, t, c, o))
            f["sweep_witness"] = {"target": t.name, "region": case.region,
                                  "input": small.arguments(), "detail": _detail(t, small)}
            if f["class"] in ("not reproduced", "not exercised"):   # the sweep shows it
                f["class"] = k.kind if k.kind in ("defect", "convention", "precision") \
                    else "defect"
        else:
            f["sweep_cases"] = 0
        findings.append(f)
    report["findings"] = findings
    report["rows"] = [r.to_json() for r in rows]
    # shrink a few unclassified deviations (one per target and kind)
    seen, uncl = set(), []
    for t, c, o in unclassified:
        key = (t.name, o.kind)
        entry = {"target": t.name, "dtype": c.dtype.name, "region": c.region, "kind": o.kind,
                 "detail": o.detail, "unit": o.unit,
                 "worst_eps" if o.unit == "eps" else "worst_ratio":
                     max(o.errors.values(), default=float("inf"))}
        if key not in seen and len(seen) < MAX_SHRINK * 4:
            seen.add(key)
            small = shrink(t, c, lambda c2, o2, kind=o.kind: o2.kind == kind)
            entry["input"] = small.arguments()
            entry["detail"] = _detail(t, small)
            uncl.append(entry)
        elif key not in seen:
            uncl.append(entry)
    report["unclassified"] = uncl
    report["unclassified_cases"] = len(unclassified)
    return rows, findings, unclassified


def _verdict(report, findings, unclassified):
    """One line with the worst errors in eps: of the matching cases, and of the unclassified
    deviations if any."""
    tol = f"tolerance {fmt_eps(TOL_EPS)} eps"
    n = {k: sum(f["class"] == k for f in findings) for k in ("defect", "convention", "precision")}
    known = f"{n['defect']} catalogued defect(s), {n['convention']} convention(s)"
    if n["precision"]:
        known += f", {n['precision']} precision finding(s)"
    head = f"worst matching case {fmt_eps(report['worst_match_eps'])} eps ({tol})"
    if "worst_match_ratio" in report:
        head += (f", low precision: worst ratio {fmt_eps(report['worst_match_ratio'])} "
                 "(criterion at most 1)")
    if unclassified:
        worst = max((max(o.errors.values(), default=float("inf")) for _, _, o in unclassified),
                    default=float("inf"))
        return (f"UNCLASSIFIED: {len(unclassified)} deviation(s) not in the catalogue, worst "
                f"{fmt_eps(worst)} eps; {head}; {known}")
    return f"ALL CLASSIFIED: {head}; {known}"


def _detail(target, case):
    return evaluate(target, case).detail


def _quick(t):
    import dataclasses
    regions = t.quick_regions if t.quick_regions is not None else t.regions[::3] + tuple(
        r for r in t.regions if "-inf" in r and r not in t.regions[::3])
    sets = t.quick_option_sets if t.quick_option_sets is not None else t.option_sets[:2]
    return dataclasses.replace(t, regions=tuple(regions), option_sets=list(sets), repeats=1)


def run_framework_audit(name, json_path=None, markdown_path=None, seed=0, *, quick=False,
                        strict=False, console=True, progress=True) -> int:
    """Audit ``name`` (one of :data:`AUDITS`, or ``"all"``: every one); return the exit status.

    Prints a summary table (``console=True``), writes the JSON report
    (``json_path``: top-level ``"ok"``, ``"exit_code"`` and one entry per
    framework under ``"frameworks"``) and the Markdown document
    (``markdown_path``).  Returns 0 when every deviation is a catalogued
    finding (known defects are reported, not failed), 1 when a deviation is
    not explained by the catalogue -- or, with ``strict=True``, when any defect
    is found.  A framework that is not installed is reported as skipped
    (status 0).  ``progress`` prints one status line per audited function to
    stderr (with ``console``).  The names, the seed and the output paths are
    checked before any work (``ValueError``).
    """
    from . import _report
    names = AUDITS if name == "all" else (name,)
    for n in names:
        _adapter(n)                       # validate the names before any work
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    for path, what in ((json_path, "json_path"), (markdown_path, "markdown_path")):
        if path:
            check_writable(path, what)
    reports = []
    for n in names:
        show = _report.progress_printer() if console and progress else None
        reports.append(audit_framework(n, seed=seed, quick=quick, progress=show))
        if console:
            _report.print_console(reports[-1])
    code = 0
    for r in reports:
        code = max(code, r["exit_code"])
        if strict and r.get("defects"):
            code = 1
    doc = {"ok": code == 0, "exit_code": code, "seed": seed, "strict": strict,
           "frameworks": reports}
    if json_path:
        with open(json_path, "w") as fh:
            json.dump(doc, fh, indent=1, default=str)
    if markdown_path:
        with open(markdown_path, "w") as fh:
            fh.write(_report.markdown(doc))
    return code

