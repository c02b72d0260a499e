"""The ``data-appraisal`` command line."""

from __future__ import annotations

import enum
import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from common.errors import AppraisalError

app = typer.Typer(
    help=(
        "Appraise a data owner's candidate datasets for a model owner's logistic-regression model "
        "under two-party secure computation (CrypTen), revealing only the score or an "
        "accept/reject bit."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True)


class MethodChoice(enum.StrEnum):
    influence = "influence"
    gradient_norm = "gradient-norm"
    finetune = "finetune"


class RevealChoice(enum.StrEnum):
    score = "score"
    threshold = "threshold"


class DirectionChoice(enum.StrEnum):
    LOWER = "lower"
    HIGHER = "higher"


def _fail(message: str, report: str | None = None) -> None:
    if report and os.environ.get("DATA_APPRAISAL_DEBUG"):
        err_console.print(report, highlight=False, markup=False)
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=1)


@app.command()
def local(
    train: Annotated[Path, typer.Option(help="Model owner's training set (.npz or .csv).")],
    test: Annotated[Path, typer.Option(help="Model owner's test set (.npz or .csv).")],
    candidate: Annotated[
        list[Path], typer.Option(help="A data owner's candidate set; repeat for several.")
    ],
    method: Annotated[MethodChoice, typer.Option(help="Appraisal function.")] = (
        MethodChoice.influence
    ),
    l2: Annotated[float, typer.Option(help="λ of the objective Σ L + λ‖θ‖².", min=0.0)] = 1.0,
    steps: Annotated[int, typer.Option(help="Fine-tuning: gradient steps T.", min=1)] = 16,
    lr: Annotated[float, typer.Option(help="Fine-tuning: learning rate η.", min=0.0)] = 0.1,
    batch_size: Annotated[
        int | None, typer.Option(help="Fine-tuning: minibatch size (default: full batch).", min=1)
    ] = None,
    reveal: Annotated[
        RevealChoice,
        typer.Option(
            help="'score' reveals the score; 'threshold' only the bit score-better-than-τ."
        ),
    ] = RevealChoice.score,
    threshold: Annotated[
        float | None,
        typer.Option(help="τ for --reveal threshold (stays the model owner's secret)."),
    ] = None,
    direction: Annotated[
        DirectionChoice | None,
        typer.Option(
            help="Which scores are better (default: lower for influence and finetune, higher for "
            "gradient-norm)."
        ),
    ] = None,
    insecure_tfp: Annotated[
        bool,
        typer.Option(
            "--insecure-tfp",
            help="Let the model owner's worker generate the Beaver triples instead of a dealer. "
            "INSECURE: that party can then read the data owner's secrets.",
        ),
    ] = False,
    check: Annotated[
        bool,
        typer.Option("--check", help="Also compute the plaintext twin and show the difference."),
    ] = False,
    label_column: Annotated[
        str | None, typer.Option(help="CSV label column (default: the last column).")
    ] = None,
    timeout: Annotated[
        float, typer.Option(help="Seconds any single network step may wait for a peer.", min=1)
    ] = 120.0,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print only a JSON list, one object per candidate.")
    ] = False,
) -> None:
    """Run the model owner, the data owner and the dealer as separate processes on loopback."""
    from common.local import appraise_local

    if insecure_tfp:
        err_console.print(
            "[bold yellow]warning:[/] --insecure-tfp: the model owner's worker generates every "
            "Beaver triple and can read the data owner's data. Use it only for testing."
        )
    show_progress = not json_output and err_console.is_terminal
    progress = Progress(
        TextColumn("appraising"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        disable=not show_progress,
        transient=True,
    )
    try:
        with progress:
            task = progress.add_task("appraising", total=len(candidate))
            results = appraise_local(
                method=method.value,
                train=train,
                test=test,
                candidates=candidate,
                l2=l2,
                steps=steps,
                lr=lr,
                batch_size=batch_size,
                reveal=reveal.value,
                threshold=threshold,
                direction=None if direction is None else direction.value,
                insecure_tfp=insecure_tfp,
                check=check,
                label_column=label_column,
                timeout=timeout,
                on_progress=lambda done, total: progress.update(task, completed=done),
            )
    except AppraisalError as exc:
        _fail(str(exc), getattr(exc, "report", None))
        return
    if json_output:
        sys.stdout.write(json.dumps([r.to_json() for r in results]) + "\n")
        return
    table = Table(title=f"{method.value} appraisal ({reveal.value} reveal)")
    table.add_column("candidate")
    table.add_column("accept" if reveal is RevealChoice.threshold else "score", justify="right")
    if check:
        table.add_column("plaintext", justify="right")
        table.add_column("|diff|", justify="right")
    table.add_column("seconds", justify="right")
    table.add_column("MB sent", justify="right")
    table.add_column("rounds", justify="right")
    for r in results:
        row = [r.candidate, str(r.accept) if r.score is None else f"{r.score:.6g}"]
        if check:
            row.append("" if r.plaintext is None else f"{r.plaintext:.6g}")
            row.append(
                ""
                if r.score is None or r.plaintext is None
                else f"{abs(r.score - r.plaintext):.2g}"
            )
        row += [f"{r.seconds:.2f}", f"{r.bytes / 1e6:.1f}", str(r.rounds)]
        table.add_row(*row)
    out = Console()
    if not out.is_terminal:
        out = Console(width=120)  # no terminal to measure: wide enough for every column
    out.print(table)


@app.command("example-data")
def example_data(
    directory: Annotated[Path, typer.Argument(help="Where to write the split.")],
    seed: Annotated[int, typer.Option(help="Random seed of the split and the label noise.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace files of an earlier split.")] = False,
) -> None:
    """Write a model-owner/data-owner split of scikit-learn's bundled digits (no download).

    The model owner gets model_owner/train.npz and model_owner/test.npz; the data owner gets ten
    candidates data_owner/candidate_01..10.npz, where candidate p has the labels 1 and 7 swapped
    with probability p/10.
    """
    from common.data import write_example_data

    try:
        split = write_example_data(directory, seed=seed, overwrite=overwrite)
    except AppraisalError as exc:
        _fail(str(exc))
        return
    err_console.print(
        f"wrote {split.train}, {split.test} and {len(split.candidates)} candidates in "
        f"{split.directory / 'data_owner'} (see {split.readme})"
    )


def main() -> None:
    """Console-script entry point: errors end in one line on stderr, never a traceback.

    Set DATA_APPRAISAL_DEBUG=1 to see the traceback of an unexpected error (and every MPC party's).
    """
    debug = bool(os.environ.get("DATA_APPRAISAL_DEBUG"))
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("[bold red]error:[/] interrupted")
        sys.exit(130)
    except Exception as exc:
        if debug:
            raise
        err_console.print(
            f"[bold red]error:[/] unexpected {type(exc).__name__}: {exc} "
            "(set DATA_APPRAISAL_DEBUG=1 for the traceback)",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
