"""Command line: ``ce-reference verify``, ``ce-reference audit`` and ``ce-reference warmup``.

``ce-reference warmup`` compiles (or loads from the disk cache) every kernel of
the compiled backend, so that the first call of a training job does not pay for
it (exit 1, with the install command, when numba is not installed).

``ce-reference audit`` is the one entry point of every audit: ``MODULE:FUNCTION``
(a function against a reference loss, :func:`ce_reference.audit`;
``MODULE:FUNCTION --vocab-parallel``, a sharded cross-entropy through
:func:`ce_reference.parallel.audit_vocab_parallel`, which runs
:func:`~ce_reference.parallel.check_invariance` on every input region) or a
framework (``torch``, ``optax``, ``keras``, ``sklearn``, ``megatron``), a GPU
linear cross-entropy kernel audited on the CPU (``torch-linear``, ``liger``,
``cce``) or ``all`` (:mod:`ce_reference.frameworks`; ``python -m
ce_reference.frameworks`` runs this same command).  Every argument is checked before any work starts, output paths
included; an option that does not apply to the kind of audit asked for is a
usage error.

Exit status: 0 when everything passes / matches (framework audits: every
deviation is a catalogued finding), 1 when anything fails, mismatches or is
inconclusive (framework audits: a deviation not in the catalogue, or any
defect with ``--strict``), 2 for usage errors (bad arguments, an output path
that cannot be written, a function that cannot be imported, an unknown
framework, or the framework audits missing from the installation).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from ._format import check_writable
from .registry import LOSSES

FRAMEWORKS = ("torch", "optax", "keras", "sklearn", "megatron")
#: The kernel audits (``ce_reference.frameworks.KERNELS``): same flags as the frameworks.
KERNELS = ("torch-linear", "liger", "cce")
#: Options of ``audit`` by the kind of audit they apply to (``dest`` names).
FUNCTION_ONLY = {"loss": "--loss", "grad": "--grad", "targets": "--targets",
                 "dtypes": "--dtypes", "rtol": "--rtol", "cases": "--cases",
                 "timeout": "--timeout", "no_shrink": "--no-shrink"}
FRAMEWORK_ONLY = {"quick": "--quick", "strict": "--strict"}
#: Options of ``audit MODULE:FUNCTION --vocab-parallel`` only.
VOCAB_ONLY = {"splits": "--splits", "even": "--even"}
#: Options of ``audit MODULE:FUNCTION --loss NAME`` that the vocab-parallel audit does not take.
LOSS_ONLY = {"loss": "--loss", "grad": "--grad", "targets": "--targets", "rtol": "--rtol",
             "cases": "--cases", "timeout": "--timeout"}
#: Seconds per call of an audited function, by default (0: no timeout, in-process).
DEFAULT_TIMEOUT = 60.0
#: Seconds to wait for a Dask scheduler (``verify --scheduler``) before calling it
#: unreachable: a live scheduler answers in milliseconds, even across a data centre.
SCHEDULER_TIMEOUT = 10.0
#: Exit status of a sweep stopped by Ctrl-C (the shell's 128 + SIGINT).
EXIT_INTERRUPTED = 130


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _seed(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def _nonneg_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):       # rejects NaN, inf and negatives
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def _splits(text):
    """``1,2,4`` -> ``(1, 2, 4)``: positive shard counts."""
    try:
        out = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected positive integers separated by commas, got {text!r}") from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(
            f"expected positive integers separated by commas, got {text!r}")
    return out


def _names(text):
    """``a,b`` -> ``["a", "b"]`` (the options are also repeatable)."""
    return [t.strip() for t in text.split(",") if t.strip()]


def _min_verify_cases():
    from .verify.runner import plan

    return sum(n for *_, n in plan(list(LOSSES.values()), 1))


def build_parser() -> argparse.ArgumentParser:
    from .auditing import DEFAULT_CASES as AUDIT_CASES
    from .auditing.tolerance import TOL_EPS
    from .verify.batches import BATCH_CASES
    from .verify.runner import DEFAULT_CASES

    parser = argparse.ArgumentParser(
        prog="ce-reference",
        description="Verified reference cross-entropy: check it, or audit another implementation.")
    sub = parser.add_subparsers(dest="command", required=True,
                                metavar="{verify,audit,warmup}")

    v = sub.add_parser(
        "verify", help="check every loss and gradient against independent oracles",
        description="Run every loss x option set x dtype x input region (a row) through the "
                    "oracles (mpmath, jax.grad, finite differences, complex step, "
                    "Hessian-vector products). The terminal shows one compact table per loss "
                    "(per row the largest worst-error / tolerance ratio over its oracles); "
                    "--wide shows every oracle, --json and --markdown write every number. "
                    "Exit 0 if all pass, 1 if any fails, 2 on usage errors.")
    v.add_argument("--loss", action="append", choices=sorted(LOSSES), metavar="NAME",
                   help="restrict to this loss (repeatable); one of: " + ", ".join(sorted(LOSSES)))
    v.add_argument("--cases", type=_positive_int, default=DEFAULT_CASES, metavar="N",
                   help=f"target total number of cases (default {DEFAULT_CASES}), spread evenly "
                        "over the rows: each row runs ceil(N / rows) cases and at least one per "
                        "shape layout of its region, so the total can exceed N (with every "
                        f"registered loss, --cases 1 runs {_min_verify_cases()}); the summary "
                        "states the number run")
    v.add_argument("--seed", type=_seed, default=0, metavar="S",
                   help="non-negative seed of the inputs (default 0)")
    v.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    v.add_argument("--markdown", metavar="PATH", help="also write the report as Markdown")
    v.add_argument("--wide", action="store_true",
                   help="the full table: every oracle's worst (median) error per row")
    v.add_argument("--no-progress", action="store_true", help="no progress display")
    run = v.add_argument_group(
        "running a sweep elsewhere",
        "The cases run in batches; the report is bitwise the same for a serial run, "
        "--workers N and a Dask cluster of any size (same --cases and --seed).")
    where = run.add_mutually_exclusive_group()
    where.add_argument("--workers", type=_positive_int, metavar="N",
                       help="run the batches on N local processes (default 1: in this "
                            "process)")
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="run the batches on the Dask cluster whose scheduler is at "
                            "ADDRESS (tcp://host:port; needs ce_reference[dask] here and "
                            "ce_reference on the workers)")
    saved = run.add_mutually_exclusive_group()
    saved.add_argument("--checkpoint", metavar="FILE",
                       help="record every finished batch in FILE (JSON lines; must not "
                            "exist), to continue an interrupted sweep with --resume FILE")
    saved.add_argument("--resume", metavar="FILE",
                       help="continue the sweep recorded in FILE (same options as when it "
                            "was started; refused otherwise), running only the batches it "
                            "does not hold, and keep recording there")
    run.add_argument("--batch-cases", type=_positive_int, metavar="N",
                     help=f"cases per batch (default {BATCH_CASES}); part of a checkpoint's "
                          "identity")

    a = sub.add_parser(
        "audit", help="compare another implementation, or a framework, with the reference",
        usage="%(prog)s MODULE:FUNCTION --loss NAME [function options] [common options]\n"
              "       %(prog)s MODULE:FUNCTION --vocab-parallel [vocab-parallel options] "
              "[--dtypes D] [--no-shrink] [common options]\n"
              "       %(prog)s {" + ",".join(FRAMEWORKS + KERNELS) + ",all} "
              "[framework options] [common options]",
        description="Audit MODULE:FUNCTION (NumPy arrays in, with the reference's signature; "
                    "the loss out) against the reference loss NAME; or, with --vocab-parallel, "
                    "audit a sharded cross-entropy MODULE:FUNCTION(shards, targets, **options) "
                    "-> (loss, [per-shard gradients]) for split invariance and against the "
                    "single-device reference (ce_reference.parallel.check_invariance on every "
                    "input region); or run the built-in audit of a framework (megatron: "
                    "megatron-core's vocab-parallel cross-entropy on 1, 2 and 4 gloo processes "
                    "of this machine, loopback only; torch-linear, liger, cce: the GPU linear "
                    "cross-entropy kernels on the CPU, the 'kernels' extra). Every argument is "
                    "checked before the "
                    "audit starts; an option that does not apply to the kind of audit is a "
                    "usage error. Exit 0 on a match (framework audits: every deviation "
                    "catalogued), 1 on a mismatch or an inconclusive audit (framework audits: "
                    "a deviation not in the catalogue, or any defect with --strict), 2 on "
                    "usage errors.")
    a.add_argument("target", metavar="MODULE:FUNCTION|" + "|".join(FRAMEWORKS + KERNELS) + "|all")
    fa = a.add_argument_group("function audits (MODULE:FUNCTION)")
    fa.add_argument("--loss", choices=sorted(LOSSES), metavar="NAME",
                    help="reference loss to compare with (required); one of: "
                         + ", ".join(sorted(LOSSES)))
    fa.add_argument("--grad", metavar="MODULE:FUNCTION",
                    help="gradient of the loss with respect to its first argument")
    fa.add_argument("--targets", action="append", type=_names, metavar="KIND[,KIND]",
                    help="target kinds to audit (repeatable), some of the loss's kinds ("
                         + "; ".join(f"{n}: {', '.join(s.targets)}"
                                     for n, s in sorted(LOSSES.items()))
                         + "); default all of them. A named kind that ends with no case "
                         "makes the audit INCONCLUSIVE (exit 1)")
    fa.add_argument("--dtypes", action="append", type=_names, metavar="DTYPE[,DTYPE]",
                    help="input dtypes: float64 and/or float32 (default float64)")
    fa.add_argument("--rtol", type=_nonneg_float, metavar="R",
                    help="tolerance relative to the operands, unitless: |got - expected| <= "
                         f"R * operand per element (default {TOL_EPS:g} eps of the dtype: "
                         "5.7e-14 in float64, 3.1e-5 in float32)")
    fa.add_argument("--cases", type=_positive_int, metavar="N",
                    help=f"target number of inputs (default {AUDIT_CASES}), spread evenly over "
                         "the rows (option set x dtype x region) the function can be audited "
                         "on; every row gets at least one, so the total can exceed N")
    fa.add_argument("--timeout", type=_nonneg_float, metavar="SECONDS",
                    help="seconds per call of the function, which runs in a separate (spawned) "
                         "process; a call that takes longer is abandoned and reported as a "
                         f"mismatch with its input (default {DEFAULT_TIMEOUT:g}; 0: no "
                         "timeout, the function runs in this process)")
    fa.add_argument("--no-shrink", action="store_true",
                    help="report mismatches with the first failing input, not shrunk")
    vp = a.add_argument_group("vocab-parallel audits (MODULE:FUNCTION --vocab-parallel)")
    vp.add_argument("--vocab-parallel", action="store_true",
                    help="MODULE:FUNCTION is a sharded cross-entropy taking the logits split "
                         "along the class axis (a list of arrays) and global targets, with "
                         "some of the options label_smoothing, smoothing, z_loss, "
                         "ignore_index, reduction (its signature decides which are audited), "
                         "returning (loss, [per-shard gradients]); every split must give the "
                         "single-device result (eps of the operands, tolerance "
                         f"{TOL_EPS:g} eps). --dtypes and --no-shrink apply")
    vp.add_argument("--splits", type=_splits, metavar="N[,N...]",
                    help="shard counts to run (default 1,2,4,8; uneven splits where N does "
                         "not divide the classes)")
    vp.add_argument("--even", action="store_true",
                    help="the function needs equal shards (as Megatron-LM's): the number of "
                         "classes is kept a multiple of every split")
    fw = a.add_argument_group("framework and kernel audits ("
                              + ", ".join(FRAMEWORKS + KERNELS) + ", all)")
    fw.add_argument("--quick", action="store_true",
                    help="sweep a subset of regions and option sets (the probes all run)")
    fw.add_argument("--strict", action="store_true",
                    help="exit 1 when any defect is found, catalogued or not")
    co = a.add_argument_group("common options")
    co.add_argument("--seed", type=_seed, default=0, metavar="S",
                    help="non-negative seed of the inputs (default 0)")
    co.add_argument("--json", metavar="PATH", help="also write the result as JSON")
    co.add_argument("--markdown", metavar="PATH", help="also write the result as Markdown")
    co.add_argument("--no-progress", action="store_true", help="no progress display")
    w = sub.add_parser(
        "warmup", help="compile the compiled (numba) backend's kernels ahead of the first call",
        description="Compile every kernel of the compiled backend (float32 and float64), or "
                    "load it from the disk cache, and report the time and the cache "
                    "directory ($CE_REFERENCE_CACHE_DIR, else the first writable default). "
                    "Exit 0 when the kernels are ready, 1 when numba is not installed.")
    parser.commands = {"verify": v, "audit": a, "warmup": w}
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    sub = parser.commands[args.command]      # usage errors print the subcommand's usage
    for flag in ("json", "markdown"):
        _check_output(sub, getattr(args, flag, None), "--" + flag)
    if args.command == "verify":
        return _verify(sub, args)
    if args.command == "warmup":
        return _warmup()
    return _audit(sub, args)


def _warmup() -> int:
    from . import backends

    if not backends.compiled_available():
        print("ce-reference warmup: the compiled backend needs numba, which is not installed "
              f"({backends.INSTALL_HINT}); the NumPy backend needs no warm-up", file=sys.stderr)
        return 1
    from . import compiled

    info = compiled.warmup()
    cache = info["cache_dir"] or "no writable cache directory: compiled again in every process"
    print(f"compiled kernels ready in {info['seconds']:.2f} s ({info['compiled']} signatures "
          f"compiled, {info['loaded']} loaded from the cache; cache: {cache})")
    return 0


def _check_output(parser, path, flag):
    """A usage error, before any work, when ``path`` cannot be written."""
    if path is None:
        return
    try:
        check_writable(path, flag)
    except ValueError as exc:
        parser.error(str(exc))


# --------------------------------------------------------------------------- verify

def _verify(parser, args) -> int:
    from .verify import report as R
    from .verify.runner import verify
    from .verify.sweep import CheckpointError, SweepInterrupted

    checkpoint = args.resume or args.checkpoint
    if args.resume is not None and not os.path.isfile(args.resume):
        parser.error(f"--resume {args.resume}: no such checkpoint file")
    if args.checkpoint is not None:
        _check_output(parser, args.checkpoint, "--checkpoint")
        if os.path.exists(args.checkpoint):
            parser.error(f"--checkpoint {args.checkpoint} already exists: continue it with "
                         f"--resume {args.checkpoint}, or remove it")
    client, executor = _dask_executor(parser, args.scheduler) if args.scheduler else (None, None)
    status, finish = _sweep_progress(not args.no_progress)
    try:
        rep = verify(args.loss, cases=args.cases, seed=args.seed, workers=args.workers,
                     executor=executor, checkpoint=checkpoint, resume=args.resume is not None,
                     batch_cases=args.batch_cases, status=status)
    except CheckpointError as exc:
        finish()
        parser.error(str(exc))
    except SweepInterrupted as exc:
        finish()
        print(f"ce-reference verify: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED if exc.by_user else 1
    finally:
        finish()
        if client is not None:
            client.close(timeout=SCHEDULER_TIMEOUT)
    R.print_report(rep, wide=args.wide)
    if args.json:
        R.to_json(rep, args.json)
    if args.markdown:
        R.to_markdown(rep, args.markdown)
    return 0 if rep.ok else 1


def _dask_executor(parser, address):
    """``(client, executor)`` of the Dask cluster at ``address``; a usage error when
    Dask is not installed or the scheduler does not answer."""
    try:
        from distributed import Client
    except ImportError:
        parser.error("--scheduler needs Dask's distributed: pip install 'ce_reference[dask]'")
    try:
        client = Client(address, timeout=SCHEDULER_TIMEOUT, set_as_default=False)
    except Exception as exc:  # noqa: BLE001 -- OSError, TimeoutError, ValueError (address)
        parser.error(f"--scheduler {address}: no Dask scheduler answered there within "
                     f"{SCHEDULER_TIMEOUT:g} s ({type(exc).__name__}: {exc})")
    if not client.nthreads():
        print(f"ce-reference verify: the cluster at {address} has no workers yet; the sweep "
              "starts when they join", file=sys.stderr)
    # pure=False: a batch run again after a failure must be a new task, not the old result
    return client, client.get_executor(pure=False)


def _sweep_progress(enabled):
    """A ``status(SweepStatus)`` callback and its finaliser: cases done / total, rate,
    ETA and failing rows so far -- the same display for local and cluster runs (rich on a
    terminal; a plain line at most every ``PLAIN_PROGRESS_SECONDS`` otherwise)."""
    if not enabled:
        return None, lambda: None
    try:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn
    except ImportError:  # pragma: no cover - plain fallback
        return _plain_sweep_progress(), lambda: None
    console = Console(stderr=True)
    if not console.is_terminal:
        return _plain_sweep_progress(), lambda: None
    bar = Progress(TextColumn("{task.description}"), BarColumn(),
                   TextColumn("{task.completed}/{task.total} cases"),
                   TextColumn("{task.fields[rate]}"), TextColumn("ETA {task.fields[eta]}"),
                   TextColumn("{task.fields[failing]}"), console=console, transient=True)
    state = {}

    def update(st):
        fields = _status_fields(st)
        if "task" not in state:
            bar.start()
            state["task"] = bar.add_task(st.label, total=st.total, **fields)
        bar.update(state["task"], completed=st.done, description=st.label, **fields)

    def finish():
        if "task" in state:
            bar.stop()
            state.clear()

    return update, finish


#: Seconds between two progress lines when stderr is not a terminal (a log file).
PLAIN_PROGRESS_SECONDS = 30.0


def _status_fields(st):
    rate = "-" if st.rate is None else f"{st.rate:.1f} cases/s"
    failing = ("no failing rows" if not st.failing_rows else
               f"[bold red]{st.failing_rows} failing row{'s' * (st.failing_rows != 1)}[/]")
    return {"rate": rate, "eta": _duration(st.eta), "failing": failing}


def _duration(seconds):
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _plain_sweep_progress():
    import time

    last = {"at": None}

    def update(st):
        now = time.monotonic()
        if last["at"] is not None and now - last["at"] < PLAIN_PROGRESS_SECONDS \
                and st.done < st.total:
            return
        last["at"] = now
        rate = "-" if st.rate is None else f"{st.rate:.1f}"
        print(f"[{st.done}/{st.total} cases, {rate} cases/s, ETA {_duration(st.eta)}, "
              f"{st.failing_rows} failing rows] {st.label}", file=sys.stderr, flush=True)

    return update


def _progress(enabled):
    """A ``progress(done, total, label)`` callback (rich on a terminal) and its finaliser."""
    if not enabled:
        return None, lambda: None
    try:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    except ImportError:  # pragma: no cover - plain fallback
        return _plain_progress()
    console = Console(stderr=True)
    if not console.is_terminal:
        return _plain_progress()
    bar = Progress(TextColumn("{task.description}"), BarColumn(),
                   TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                   console=console, transient=True)
    state = {}

    def update(done, total, label):
        if "task" not in state:
            bar.start()
            state["task"] = bar.add_task(label, total=total)
        bar.update(state["task"], completed=done, description=label)

    return update, bar.stop


def _plain_progress():
    last = {"label": None}

    def update(done, total, label):
        if label != last["label"]:
            last["label"] = label
            print(f"[{done}/{total}] {label}", file=sys.stderr, flush=True)

    return update, lambda: None


# --------------------------------------------------------------------------- audit

def _load(parser, spec, what):
    if ":" not in spec:
        parser.error(f"{what} must be MODULE:FUNCTION, got {spec!r}")
    mod_name, _, attr = spec.partition(":")
    try:
        obj = importlib.import_module(mod_name)
    except ImportError as exc:
        parser.error(f"cannot import module {mod_name!r} for {what}: {exc}")
    try:
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        parser.error(f"module {mod_name!r} has no attribute {attr!r} ({what})")
    if not callable(obj):
        parser.error(f"{what} {spec!r} is not callable")
    return obj


def _given(args, dests):
    """The flags among ``dests`` that were given on the command line."""
    out = []
    for dest, flag in dests.items():
        value = getattr(args, dest)
        if value not in (None, False):
            out.append(flag)
    return out


def _audit(parser, args) -> int:
    frameworks = FRAMEWORKS + KERNELS + ("all",)
    if args.target in frameworks:
        extra = _given(args, {**FUNCTION_ONLY, "vocab_parallel": "--vocab-parallel",
                              **VOCAB_ONLY})
        if extra:
            parser.error(f"{', '.join(extra)}: only for MODULE:FUNCTION audits, not for the "
                         f"framework audit {args.target!r}")
        return _framework(args)
    if ":" not in args.target:
        parser.error(f"unknown audit target {args.target!r}: expected MODULE:FUNCTION or a "
                     f"framework, one of {', '.join(frameworks)}")
    extra = _given(args, FRAMEWORK_ONLY)
    if extra:
        parser.error(f"{', '.join(extra)}: only for the framework audits "
                     f"({', '.join(frameworks)}), not for MODULE:FUNCTION")
    if args.vocab_parallel:
        return _vocab_parallel(parser, args)
    extra = _given(args, VOCAB_ONLY)
    if extra:
        parser.error(f"{', '.join(extra)}: only with --vocab-parallel")
    if args.loss is None:
        parser.error("audit MODULE:FUNCTION needs --loss NAME")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")          # MODULE may live in the current directory
    fn = _load(parser, args.target, "the audited function")
    grad = _load(parser, args.grad, "--grad") if args.grad else None

    from .auditing import DEFAULT_CASES, audit, check_arguments

    targets = None if args.targets is None else [k for group in args.targets for k in group]
    dtypes = ("float64",) if args.dtypes is None else [d for group in args.dtypes for d in group]
    timeout = DEFAULT_TIMEOUT if args.timeout is None else (args.timeout or None)
    options = dict(cases=args.cases or DEFAULT_CASES, seed=args.seed, dtypes=dtypes,
                   rtol=args.rtol, targets=targets, timeout=timeout)
    try:
        check_arguments(fn, args.loss, grad, **options)
    except (ValueError, TypeError) as exc:
        msg = str(exc)
        for name in ("targets", "dtypes", "rtol", "cases", "seed", "timeout"):
            if msg.startswith(name):                 # the Python argument's flag
                msg = "--" + msg
        parser.error(msg)
    progress, finish = _progress(not args.no_progress)
    try:
        result = audit(fn, loss=args.loss, grad=grad, shrink=not args.no_shrink,
                       progress=progress, **options)
    finally:
        finish()
    print(result)
    if args.json:
        import json

        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result.to_dict(), fh, indent=1, allow_nan=False)
            fh.write("\n")
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as fh:
            fh.write(f"# Audit of `{result.function}`\n\n{result.verdict()}\n\n```\n{result}\n"
                     "```\n")
    return 0 if result.ok else 1


def _vocab_parallel(parser, args) -> int:
    extra = _given(args, LOSS_ONLY)
    if extra:
        parser.error(f"{', '.join(extra)}: not for --vocab-parallel audits (the reference is "
                     "the single-device softmax cross-entropy; the function runs in-process)")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")          # MODULE may live in the current directory
    fn = _load(parser, args.target, "the audited function")
    from .parallel import AUDIT_SPLITS, audit_vocab_parallel

    dtypes = (("float64", "float32") if args.dtypes is None
              else [d for group in args.dtypes for d in group])
    for d in dtypes:
        if d not in ("float64", "float32"):
            parser.error(f"--dtypes must be float64 and/or float32, got {d!r}")
    splits = args.splits or AUDIT_SPLITS
    progress, finish = _progress(not args.no_progress)
    try:
        result = audit_vocab_parallel(fn, splits=splits, dtypes=dtypes, seed=args.seed,
                                      even=args.even, shrink=not args.no_shrink,
                                      progress=progress, name=args.target)
    finally:
        finish()
    print(result)
    if args.json:
        import json

        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result.to_dict(), fh, indent=1, allow_nan=False)
            fh.write("\n")
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as fh:
            fh.write(result.markdown())
    return 0 if result.ok else 1


def _framework(args) -> int:
    try:
        frameworks = importlib.import_module("ce_reference.frameworks")
    except ModuleNotFoundError as exc:
        if exc.name not in ("ce_reference.frameworks",):
            raise
        print("ce-reference audit " + args.target + ": the framework audits "
              "(ce_reference.frameworks) are not available in this installation",
              file=sys.stderr)
        return 2
    run = getattr(frameworks, "run_framework_audit", None)
    if run is None:
        print("ce_reference.frameworks has no run_framework_audit()", file=sys.stderr)
        return 2
    return int(run(args.target, json_path=args.json, markdown_path=args.markdown,
                   seed=args.seed, quick=args.quick, strict=args.strict,
                   console=True, progress=not args.no_progress))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
