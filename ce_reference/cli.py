"""Command line: ``ce-reference verify`` and ``ce-reference audit``.

Exit status: 0 when everything passes / matches, 1 when anything fails /
mismatches, 2 for usage errors (bad arguments, a function that cannot be
imported, a framework audit that is not installed).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .registry import LOSSES

FRAMEWORKS = ("torch", "optax", "keras", "sklearn")


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _int(text):
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    from .verify.runner import DEFAULT_CASES
    from .auditing import DEFAULT_CASES as AUDIT_CASES

    parser = argparse.ArgumentParser(
        prog="ce-reference",
        description="Verified reference cross-entropy: check it, or audit another implementation.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{verify,audit}")

    v = sub.add_parser(
        "verify", help="check every loss and gradient against independent oracles",
        description="Run every loss x option set x dtype x input region through the oracles "
                    "(mpmath, jax.grad, finite differences, complex step, Hessian-vector "
                    "products) and print one row per combination. Exit 0 if all pass, 1 if any "
                    "fails, 2 on usage errors.")
    v.add_argument("--loss", action="append", choices=sorted(LOSSES), metavar="NAME",
                   help="restrict to this loss (repeatable); one of: " + ", ".join(sorted(LOSSES)))
    v.add_argument("--cases", type=_positive_int, default=DEFAULT_CASES, metavar="N",
                   help=f"total number of cases, spread over the rows (default {DEFAULT_CASES})")
    v.add_argument("--seed", type=_int, default=0, metavar="S", help="seed (default 0)")
    v.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    v.add_argument("--markdown", metavar="PATH", help="also write the report as Markdown")
    v.add_argument("--no-progress", action="store_true", help="no progress display")

    a = sub.add_parser(
        "audit", help="compare another implementation with the reference",
        description="Audit MODULE:FUNCTION (which takes NumPy arrays with the reference's "
                    "signature and returns the loss) against the reference loss NAME, or run "
                    "the built-in audit of a framework (torch, optax, keras, sklearn). Exit 0 "
                    "if it matches, 1 if not, 2 on usage errors.")
    a.add_argument("target", metavar="MODULE:FUNCTION|" + "|".join(FRAMEWORKS))
    a.add_argument("--loss", choices=sorted(LOSSES), metavar="NAME",
                   help="reference loss to compare with (required for MODULE:FUNCTION)")
    a.add_argument("--grad", metavar="MODULE:FUNCTION",
                   help="gradient of the loss with respect to its first argument")
    a.add_argument("--cases", type=_positive_int, default=AUDIT_CASES, metavar="N",
                   help=f"number of inputs (default {AUDIT_CASES})")
    a.add_argument("--seed", type=_int, default=0, metavar="S", help="seed (default 0)")
    a.add_argument("--json", metavar="PATH", help="also write the result as JSON")
    a.add_argument("--markdown", metavar="PATH",
                   help="also write the result as Markdown (framework audits, and functions)")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "verify":
        return _verify(args)
    return _audit(parser, args)


# --------------------------------------------------------------------------- verify

def _verify(args) -> int:
    from .verify import report as R
    from .verify.runner import verify

    progress, finish = _progress(not args.no_progress)
    try:
        rep = verify(args.loss, cases=args.cases, seed=args.seed, progress=progress)
    finally:
        finish()
    R.print_report(rep)
    if args.json:
        R.to_json(rep, args.json)
    if args.markdown:
        R.to_markdown(rep, args.markdown)
    return 0 if rep.ok else 1


def _progress(enabled):
    """A ``progress(done, total, label)`` callback (rich on a terminal) and its finaliser."""
    if not enabled:
        return None, lambda: None
    try:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
        from rich.console import Console
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


def _audit(parser, args) -> int:
    if args.target in FRAMEWORKS:
        return _framework(args)
    if args.loss is None:
        parser.error("audit MODULE:FUNCTION needs --loss NAME")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")          # MODULE may live in the current directory
    fn = _load(parser, args.target, "the audited function")
    grad = _load(parser, args.grad, "--grad") if args.grad else None

    from .auditing import audit

    result = audit(fn, loss=args.loss, grad=grad, cases=args.cases, seed=args.seed)
    print(result)
    if args.json:
        import json

        from .verify.report import clean_json

        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(clean_json(result.to_dict()), fh, indent=1, allow_nan=False)
            fh.write("\n")
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as fh:
            fh.write(f"# Audit of `{result.function}`\n\n```\n{result}\n```\n")
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
                   seed=args.seed))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
