"""Render a verification :class:`~.runner.Report` as a terminal table, JSON or Markdown.

Every error cell reads ``worst (median)`` over the row's cases, in the units
of :mod:`.tolerances` (``min(ULP, error / (eps * operand))``; ``check_grad``:
``||g - fd|| / ||g||``).  ``-`` means the oracle does not apply (finite
differences in float32, complex step on probability losses, a loss
without a Hessian-vector product).  The terminal table uses rich when it is installed,
plain text otherwise.
"""

from __future__ import annotations

import json
import math

from .._format import clean_json  # noqa: F401 - re-exported for report readers
from .runner import MEASURES

HEADERS = ("loss", "option set", "dtype", "region", "n") + MEASURES + ("ok",)


def fmt(x) -> str:
    if x is None:
        return "-"
    if math.isinf(x):
        return "inf"
    if x == 0:
        return "0"
    if 1e-2 <= abs(x) < 1e4:
        return f"{x:.3g}"
    return f"{x:.2e}"


def _cell(stat):
    if stat is None:
        return "-"
    return f"{fmt(stat['worst'])} ({fmt(stat['median'])})"


def table_rows(report, short=True):
    out = []
    for r in report.rows:
        name = r.label if short else r.loss
        out.append([name, r.option_set, r.dtype, r.region, str(r.n)]
                   + [_cell(r.stats.get(m)) for m in MEASURES] + ["ok" if r.ok else "FAIL"])
    return out


def tolerance_line(report) -> str:
    from .runner import GATES

    parts = []
    for m, table in GATES.items():
        parts.append(f"{m} " + "/".join(f"{fmt(v)} ({d.name})" for d, v in table.items()))
    return "tolerances: " + "; ".join(parts) + "; grad ULP: information only"


def summary_lines(report) -> list[str]:
    lines = []
    worst = report.worst()
    if worst:
        lines.append("worst per oracle: " + ", ".join(f"{k} {fmt(v)}" for k, v in
                                                        sorted(worst.items())))
    lines.extend(f"note: {n}" for n in report.notes)
    status = "PASS" if report.ok else "FAIL"
    nfail = sum(not r.ok for r in report.rows)
    lines.append(f"{status}: {len(report.rows) - nfail}/{len(report.rows)} rows pass, "
                 f"{report.cases} cases, seed {report.seed}, {report.elapsed:.1f} s")
    return lines


def failure_lines(report) -> list[str]:
    lines = []
    for r in report.rows:
        if r.ok:
            continue
        lines.append(f"FAIL {r.loss} | {r.option_set} | {r.dtype} | {r.region}")
        for f in r.failures:
            tol = (r.stats.get(f["measure"]) or {}).get("tol")
            tol_s = "" if tol is None else f" (tolerance {fmt(tol)})"
            lines.append(f"  {f['measure']}: error {fmt(f['error'])}{tol_s}")
            lines.append(f"    input: {f['case']}")
            if f["detail"]:
                lines.append(f"    {f['detail']}")
    return lines


def print_report(report, console=None) -> None:
    """Print the table, the failing rows' worst inputs and the summary."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover - rich is optional
        print(plain_table(report))
        for line in failure_lines(report) + [tolerance_line(report)] + summary_lines(report):
            print(line)
        return
    if console is None:
        console = Console()
        if not console.is_terminal:          # a file or a pipe: do not wrap at 80 columns
            console = Console(width=200)
    table = Table(title="ce_reference verify: worst (median) error per oracle", show_lines=False)
    for h in HEADERS:
        table.add_column(h, justify="right" if h not in ("loss", "option set", "region") else
                         "left", overflow="fold")
    for row, r in zip(table_rows(report), report.rows):
        style = None if r.ok else "bold red"
        table.add_row(*row, style=style)
    console.print(table)
    labels = {r.label: r.loss for r in report.rows if r.label != r.loss}
    if labels:
        console.print("loss: " + ", ".join(f"{k} = {v}" for k, v in labels.items()),
                      highlight=False)
    for line in failure_lines(report):
        console.print(line, highlight=False, markup=False)
    console.print(tolerance_line(report), highlight=False, markup=False)
    for line in summary_lines(report):
        console.print(line, highlight=False, markup=False,
                      style=None if report.ok or not line.startswith("FAIL") else "bold red")


def plain_table(report) -> str:
    rows = [list(HEADERS)] + table_rows(report)
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADERS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)


def to_json(report, path) -> None:
    """Write ``report.to_dict()`` as strict JSON (infinite errors become ``"inf"``)."""
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(clean_json(report.to_dict()), fh, indent=1, allow_nan=False)
        fh.write("\n")


def to_markdown(report, path) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(markdown(report))


def markdown(report) -> str:
    out = ["# ce_reference verification report", ""]
    out.append("Each cell: worst (median) over the row's cases. Units: "
               "`min(ULP, error / (eps * operand))`; check_grad: `||g - fd|| / ||g||`.")
    out.append("")
    out.append("| " + " | ".join(HEADERS) + " |")
    out.append("|" + "|".join("---" for _ in HEADERS) + "|")
    for row in table_rows(report, short=False):
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
    out.append("")
    fails = failure_lines(report)
    if fails:
        out += ["## Failing rows", "", "```"] + fails + ["```", ""]
    out.append(tolerance_line(report))
    out.append("")
    out += [f"- {line}" for line in summary_lines(report)]
    env = ", ".join(f"{k} {v}" for k, v in report.environment.items())
    out += ["", f"Environment: {env}", ""]
    return "\n".join(out)
