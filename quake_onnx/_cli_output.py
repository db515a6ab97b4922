"""What `quake-onnx optimize` and `inspect` print."""

from __future__ import annotations

from collections import Counter
from typing import Optional

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .rewrite.report import Report


def make_console(stderr: bool = False, *, wide: bool = False) -> Console:
    """Every command's rich console. Emoji codes off: ':a:' in a --dim or
    ':smile:' in a model's name is the user's text. `wide`: where the output
    is not a terminal (a CI log or a file), 160 columns so tables do not fold."""
    console = Console(stderr=stderr, emoji=False)
    return console if not wide or console.is_terminal else Console(stderr=stderr, width=160, emoji=False)


def summary_table(report: Report, dry_run: bool = False) -> Table:
    """Per rule: how many candidates were replaced and how many kept."""
    replaced = Counter(d.rule for d in report.replaced)
    kept = Counter(d.rule for d in report.skipped)
    table = Table()
    table.add_column("rule")
    table.add_column("would replace" if dry_run else "replaced", justify="right")
    table.add_column("would keep" if dry_run else "kept", justify="right")
    for rule in sorted(set(replaced) | set(kept)):
        table.add_row(escape(rule), str(replaced[rule]), str(kept[rule]))
    table.add_section()
    table.add_row("total", str(len(report.replaced)), str(len(report.skipped)), style="bold")
    return table


def explain(console: Console, report: Report, dry_run: bool = False) -> None:
    """One line per candidate: plain enough to grep, never cut by the terminal width."""
    if not report.decisions:
        console.print("no candidate nodes")
        return
    yes, no = ("would replace", "would keep   ") if dry_run else ("replaced", "kept    ")
    for d in report.decisions:
        mark = f"[green]{yes}[/]" if d.replaced else f"[yellow]{no}[/]"
        where = "" if d.graph == "main" else f" in {escape(d.graph)}"
        console.print(
            f"{mark} {escape(d.node)} ({escape(d.op_type)}, rule {escape(d.rule)}){where}: {escape(d.reason)}",
            soft_wrap=True,
            highlight=False,
        )


def show(
    console: Console,
    err: Console,
    report: Report,
    *,
    title: str,
    explain_nodes: bool,
    written: Optional[str] = None,
    dry_run: bool = False,
) -> None:
    if explain_nodes:
        explain(console, report, dry_run)
    console.print(title, soft_wrap=True, highlight=False, markup=False)
    console.print(summary_table(report, dry_run))
    for w in report.warnings:
        err.print(f"warning: {escape(w)}", soft_wrap=True, highlight=False)
    if written:
        console.print(f"wrote {escape(written)}", soft_wrap=True, highlight=False)
