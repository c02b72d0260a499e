"""What the commands print: one-line errors, progress bars and result tables."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from common.protocol import CandidateResult

err_console = Console(stderr=True)
DEBUG_VAR = "DATA_APPRAISAL_DEBUG"


# The option of each job or configuration field a command sets, for messages in the command's terms.
OPTIONS = {
    "threshold": "--threshold",
    "direction": "--direction",
    "reveal": "--reveal",
    "reveal_to": "--reveal-to",
    "noise_epsilon": "--noise-epsilon",
    "steps": "--steps",
    "lr": "--lr",
    "l2": "--l2",
    "batch_size": "--batch-size",
    "chunk_rows": "--chunk-rows",
    "softmax_chunks": "--softmax-chunks",
    "openings": "--openings",
    "method": "--method",
    "shards": "--shards",
}


def fail_with(exc: Exception) -> NoReturn:
    """fail() for an error of the library: a field it names is shown as the command's option."""
    message = str(exc)
    field = getattr(exc, "field", None)
    if field in OPTIONS:
        message = f"{OPTIONS[field]}: {message.rsplit(f'{field}: ', 1)[-1]}"
    fail(message, getattr(exc, "report", None))


def fail(message: str, report: str | None = None) -> NoReturn:
    """One line on stderr and exit status 1 (every party's traceback first, when debugging)."""
    if report and os.environ.get(DEBUG_VAR):
        err_console.print(report, highlight=False, markup=False)
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=1)


def progress_bar(*, show: bool) -> Progress:
    """A transient bar of finished candidates on stderr (hidden when not a terminal or --json)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        disable=not show,
        transient=True,
    )


def results_table(
    title: str,
    results: Sequence[CandidateResult],
    *,
    ranked: bool = False,
    extra: dict[str, dict[str, str]] | None = None,
) -> None:
    """One row per candidate: its score (or bit), then what it cost this party.

    ``extra`` adds columns: {column title: {candidate: text}}."""
    reveal_bit = any(r.accept is not None for r in results)
    table = Table(title=title)
    if ranked:
        table.add_column("rank", justify="right")
    table.add_column("candidate")
    for column in extra or {}:
        table.add_column(column, justify="right")
    table.add_column("accept" if reveal_bit else "score", justify="right")
    for column in ("seconds", "MB sent", "MB received", "rounds"):
        table.add_column(column, justify="right")
    for rank, r in enumerate(results, 1):
        row = [str(rank)] if ranked else []
        row.append(r.candidate)
        row += [values.get(r.candidate, "") for values in (extra or {}).values()]
        row += [
            str(r.accept) if r.score is None else f"{r.score:.6g}",
            f"{r.seconds:.2f}",
            f"{r.bytes_sent / 1e6:.1f}",
            f"{r.bytes_received / 1e6:.1f}",
            str(r.rounds),
        ]
        table.add_row(*row)
    out = Console()
    if not out.is_terminal:
        out = Console(width=120)  # no terminal to measure: wide enough for every column
    out.print(table)
