"""Render a verification :class:`~.runner.Report` as a terminal table, JSON or Markdown.

Two tables.  The *compact* one (the terminal default, 80-100 columns) has one
table per loss and, per row, the largest ratio of an oracle's worst error to
its tolerance (``worst/gate``: at most 1 passes) and the oracle it belongs
to.  The *full* one (``--wide`` on the terminal; always in Markdown) has
every oracle: each cell reads ``worst (median)`` over the row's cases, in the
units of :mod:`.tolerances` (``min(ULP, error / (eps * operand))``;
``check_grad``: ``||g - fd|| / ||operands||`` with central differences).
``-`` means the oracle does not apply (finite differences in float32,
complex step on probability losses, a loss without a Hessian-vector
product); ``grad ULP`` is information only (it gates nothing: it is large
wherever ``p - y`` cancels).  JSON holds every number.  The terminal tables
use rich when it is installed, plain text otherwise.
"""

from __future__ import annotations

import json
import math

from .._format import clean_json  # noqa: F401 - re-exported for report readers
from .checks import MEASURES

#: Measures that gate nothing (shown, marked as information).
INFO_ONLY = ("grad ULP",)
HEADERS = ("loss", "option set", "dtype", "region", "n") + tuple(
    f"{m} (info)" if m in INFO_ONLY else m for m in MEASURES) + ("ok",)
COMPACT_HEADERS = ("option set", "dtype", "region", "n", "worst/gate", "oracle", "ok")
#: Console width of the compact table when the output is not a terminal.
COMPACT_WIDTH = 100
#: ... and of the full table.
WIDE_WIDTH = 250
CHECK_GRAD_UNITS = ("check_grad: `||g - fd|| / ||operands||`, fd the central differences of "
                    "the per-row losses (scipy.optimize.approx_fprime with steps +h and -h)")


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


def margin(row):
    """``(worst / tolerance, measure)``: the row's largest ratio over its gated oracles."""
    best = (None, "")
    for m in MEASURES:
        st = row.stats.get(m)
        if st is None or st.get("tol") is None:
            continue
        ratio = math.inf if st["tol"] == 0 and st["worst"] else (
            0.0 if st["worst"] == 0 else st["worst"] / st["tol"])
        if best[0] is None or ratio > best[0]:
            best = (ratio, m)
    return best


def compact_rows(rows):
    out = []
    for r in rows:
        ratio, m = margin(r)
        out.append([r.option_set, r.dtype, r.region, str(r.n), fmt(ratio), m,
                    "ok" if r.ok else "FAIL"])
    return out


def _by_loss(report):
    groups = {}
    for r in report.rows:
        groups.setdefault((r.loss, r.label), []).append(r)
    return groups


def tolerance_line(report) -> str:
    from .checks import GATES

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


def print_report(report, console=None, wide=False) -> None:
    """Print the tables, the failing rows' worst inputs and the summary.

    The compact table by default (one per loss, fits 80-100 columns); ``wide``:
    one table with every oracle's ``worst (median)``.
    """
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover - rich is optional
        print(plain_table(report, wide=wide))
        for line in _tail(report, wide):
            print(line)
        return
    if console is None:
        console = Console()
        if not console.is_terminal:          # a file or a pipe: a fixed width
            console = Console(width=WIDE_WIDTH if wide else COMPACT_WIDTH)
    if wide:
        table = Table(title="ce_reference verify: worst (median) error per oracle")
        for h in HEADERS:
            table.add_column(h, justify="left" if h in ("loss", "option set", "region")
                             else "right", overflow="fold")
        for row, r in zip(table_rows(report), report.rows):
            table.add_row(*row, style=None if r.ok else "bold red")
        console.print(table)
    else:
        for (loss, label), rows in _by_loss(report).items():
            title = loss if label == loss else f"{loss} ({label})"
            table = Table(title=title, title_justify="left")
            for h in COMPACT_HEADERS:
                table.add_column(h, justify="left" if h in ("option set", "region", "oracle")
                                 else "right", overflow="fold")
            for row, r in zip(compact_rows(rows), rows):
                table.add_row(*row, style=None if r.ok else "bold red")
            console.print(table)
    for line in _tail(report, wide):
        console.print(line, highlight=False, markup=False,
                      style=None if report.ok or not line.startswith("FAIL") else "bold red")


def _tail(report, wide):
    lines = []
    if not wide:
        lines.append("worst/gate: the row's largest worst error / tolerance over its oracles "
                     "(<= 1 passes); --wide shows every oracle, --json / --markdown every "
                     "number")
    else:
        labels = {r.label: r.loss for r in report.rows if r.label != r.loss}
        if labels:
            lines.append("loss: " + ", ".join(f"{k} = {v}" for k, v in labels.items()))
        lines.append("grad ULP is information only (it gates nothing); "
                     + CHECK_GRAD_UNITS.replace("`", ""))
    return lines + failure_lines(report) + [tolerance_line(report)] + summary_lines(report)


def plain_table(report, wide=True) -> str:
    if wide:
        return _plain([list(HEADERS)] + table_rows(report))
    parts = []
    for (loss, label), rows in _by_loss(report).items():
        parts.append(loss if label == loss else f"{loss} ({label})")
        parts.append(_plain([list(COMPACT_HEADERS)] + compact_rows(rows)))
    return "\n".join(parts)


def _plain(rows) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


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
               f"`min(ULP, error / (eps * operand))`; {CHECK_GRAD_UNITS}. "
               "`grad ULP` is information only: it gates nothing.")
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
