"""``data-appraisal local``: the three parties as processes on this machine, no services."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from common.cli.options import (
    BatchOpt,
    ChunkRowsOpt,
    DirectionOpt,
    JsonOpt,
    LrOpt,
    MethodChoice,
    MethodOpt,
    NoiseOpt,
    OpeningsOpt,
    RevealChoice,
    RevealOpt,
    RevealToOpt,
    SoftmaxChunksOpt,
    StepsOpt,
    ThresholdOpt,
    value,
)
from common.cli.output import err_console, fail_with, progress_bar, results_table
from common.errors import AppraisalError
from common.protocol import DEFAULT_CHUNK_ROWS, DEFAULT_SOFTMAX_CHUNKS


def local(
    train: Annotated[Path, typer.Option(help="Model owner's training set (.npz or .csv).")],
    test: Annotated[Path, typer.Option(help="Model owner's test set (.npz or .csv).")],
    candidate: Annotated[
        list[Path], typer.Option(help="A data owner's candidate set; repeat for several.")
    ],
    method: MethodOpt = MethodChoice.influence,  # type: ignore[attr-defined]
    l2: Annotated[float, typer.Option(help="λ of the objective Σ L + λ‖θ‖².", min=0.0)] = 1.0,
    steps: StepsOpt = 16,
    lr: LrOpt = 0.1,
    batch_size: BatchOpt = None,
    reveal: RevealOpt = RevealChoice.score,
    threshold: ThresholdOpt = None,
    direction: DirectionOpt = None,
    reveal_to: RevealToOpt = None,
    noise_epsilon: NoiseOpt = None,
    chunk_rows: ChunkRowsOpt = None,
    softmax_chunks: SoftmaxChunksOpt = None,
    openings: OpeningsOpt = None,
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
    shards: Annotated[
        int,
        typer.Option(
            help="Worker triples that share each candidate's chunks (influence and "
            "gradient-norm; at most one per chunk).",
            min=1,
        ),
    ] = 1,
    json_output: JsonOpt = False,
) -> None:
    """Run the model owner, the data owner and the dealer as separate processes on loopback.

    Paths are relative to the current directory. The table and --json show the model owner's
    worker's view: its score or bit, and the bytes it sent and received (all of the session's
    traffic passes through it).
    """
    from common.runtime.local import run_local

    if insecure_tfp:
        err_console.print(
            "[bold yellow]warning:[/] --insecure-tfp: the model owner's worker generates every "
            "Beaver triple and can read the data owner's data. Use it only for testing."
        )
    progress = progress_bar(show=not json_output and err_console.is_terminal)
    try:
        with progress:
            task = progress.add_task("appraising", total=len(candidate))
            run = run_local(
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
                direction=value(direction),
                insecure_tfp=insecure_tfp,
                reveal_to=value(reveal_to) or "both",
                noise_epsilon=noise_epsilon,
                chunk_rows=DEFAULT_CHUNK_ROWS if chunk_rows is None else chunk_rows,
                softmax_chunks=DEFAULT_SOFTMAX_CHUNKS if softmax_chunks is None else softmax_chunks,
                openings=openings or "narrow",
                check=check,
                label_column=label_column,
                timeout=timeout,
                shards=shards,
                on_progress=lambda done, total: progress.update(task, completed=done),
            )
    except AppraisalError as exc:
        fail_with(exc)
    if json_output:
        sys.stdout.write(json.dumps(run.to_json()) + "\n")
        return
    extra = None
    if run.plaintext is not None:
        plain = dict(zip((r.candidate for r in run.results), run.plaintext, strict=True))
        extra = {
            "plaintext": {c: f"{p:.6g}" for c, p in plain.items()},
            "|diff|": {
                r.candidate: f"{abs(r.score - plain[r.candidate]):.2g}"
                for r in run.results
                if r.score is not None
            },
        }
    results_table(f"{method.value} appraisal ({reveal.value} reveal)", run.results, extra=extra)
