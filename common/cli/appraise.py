"""``data-appraisal appraise`` (a session on running services) and ``demo`` (all on loopback)."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Annotated, NoReturn

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
from common.cli.output import err_console, fail, results_table
from common.cli.remote import ModelOwnerOpt, TlsCaOpt, TlsCertOpt, TlsKeyOpt, connect
from common.cli.sessions import announce, follow_session, print_outcome
from common.client import ModelOwnerClient, session_request
from common.errors import AppraisalError
from common.web.schemas import SessionState


def appraise(
    model_owner: ModelOwnerOpt,
    data_owner: Annotated[str, typer.Option(help="The data owner service's URL.")],
    dataset: Annotated[
        list[str], typer.Option(help="A data owner's dataset id; repeat for several.")
    ],
    method: MethodOpt = MethodChoice.influence,  # type: ignore[attr-defined]
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
    json_output: JsonOpt = False,
    cancel_on_interrupt: Annotated[
        bool,
        typer.Option(
            "--cancel-on-interrupt",
            help="On Ctrl-C cancel the session without asking (else it asks on a terminal, and "
            "leaves the session running, saying how to follow or cancel it, elsewhere).",
        ),
    ] = False,
    tls_ca: TlsCaOpt = None,
    tls_cert: TlsCertOpt = None,
    tls_key: TlsKeyOpt = None,
) -> None:
    """Open an appraisal session on a model owner service and follow it to its result.

    The model owner's API token comes from DATA_APPRAISAL_TOKEN (else MODEL_OWNER_API_TOKEN); it is
    sent over plain HTTP only to this machine (or with DATA_APPRAISAL_INSECURE_HTTP=1). The table
    and --json show the model owner's worker's view: its score or bit, and the bytes it sent and
    received.
    """
    body = session_request(
        data_owner=data_owner,
        datasets=dataset,
        method=method.value,
        reveal=reveal.value,
        threshold=threshold,
        params={"steps": steps, "lr": lr, "batch_size": batch_size},
        direction=value(direction),
        reveal_to=value(reveal_to),
        noise_epsilon=noise_epsilon,
        chunk_rows=chunk_rows,
        softmax_chunks=softmax_chunks,
        openings=openings,
    )
    show = not json_output and err_console.is_terminal
    with connect(model_owner, tls_ca, tls_cert, tls_key) as client:
        try:
            view = client.open_session(body)
        except KeyboardInterrupt:
            err_console.print(
                "interrupted while the model owner negotiated; `data-appraisal sessions list` "
                "shows whether it opened a session"
            )
            raise typer.Exit(130) from None
        announce(view)
        try:
            view = follow_session(client, view, show=show)
        except KeyboardInterrupt:
            _interrupted(client, view.id, cancel=cancel_on_interrupt)
    print_outcome(view, json_output=json_output)


def _interrupted(client: ModelOwnerClient, session_id: str, *, cancel: bool) -> NoReturn:
    """Ctrl-C while following: cancel (asked on a terminal), or say how to find the session."""
    if not cancel and sys.stdin.isatty():
        try:
            cancel = typer.confirm(f"\ncancel session {session_id}?", default=True, err=True)
        except (typer.Abort, KeyboardInterrupt, EOFError):
            cancel = False
    if cancel:
        try:
            view = client.cancel(session_id, "cancelled by the operator (interrupted)")
        except AppraisalError as exc:
            fail(f"cancelling session {session_id} failed: {exc}")
        err_console.print(f"session {session_id} {view.state.value}", highlight=False)
    else:
        err_console.print(
            f"session {session_id} goes on: follow it with `data-appraisal sessions follow "
            f"{session_id}`, cancel it with `data-appraisal sessions cancel {session_id}`",
            highlight=False,
            soft_wrap=True,
        )
    raise typer.Exit(130)


def demo(
    method: MethodOpt = MethodChoice.influence,  # type: ignore[attr-defined]
    json_output: Annotated[
        bool, typer.Option("--json", help="Print only a JSON list, best candidate first.")
    ] = False,
    workdir: Annotated[
        Path | None,
        typer.Option(help="Keep the data, state and service logs here (default: a temp dir)."),
    ] = None,
) -> None:
    """Start the dealer, the data owner and the model owner on loopback and appraise every candidate.

    Uses the bundled digits split (no download): the data owner holds ten candidates, candidate p
    with the labels 1 and 7 swapped with probability p/10. Prints the candidates ranked best first.
    """
    import tempfile

    from common.cli.stack import local_stack
    from common.methods import METHODS
    from common.ml.examples import write_example_data

    with contextlib.ExitStack() as stack:
        root = workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="da-demo-")))
        show = not json_output and err_console.is_terminal
        try:
            split = write_example_data(root / "data", seed=0, overwrite=True)
            if show:
                err_console.print("starting the dealer, the data owner and the model owner ...")
            services = stack.enter_context(
                local_stack(
                    root / "services",
                    train=split.train,
                    test=split.test,
                    data_dir=split.directory / "data_owner",
                )
            )
            ids = [Path(c).stem for c in split.candidates]
            mo = services.model_owner
            with ModelOwnerClient(mo.url, mo.token, tls=mo.tls) as client:
                body = session_request(
                    data_owner=services.data_owner.url, datasets=ids, method=method.value
                )
                view = follow_session(client, client.open_session(body), show=show)
        except AppraisalError as exc:
            fail(str(exc))
    if view.state is not SessionState.COMPLETED:
        print_outcome(view, json_output=json_output)  # the reason, and exit status 1
    results = view.results
    higher = METHODS[method.value].better == "higher"
    ranked = sorted(results, key=lambda r: -(r.score or 0.0) if higher else (r.score or 0.0))
    noise = {
        Path(c).stem: f"{p:.1f}"
        for c, p in zip(split.candidates, split.flip_probabilities, strict=True)
    }
    if json_output:
        rows = [{**r.to_json(), "label_noise": float(noise[r.candidate])} for r in ranked]
        sys.stdout.write(json.dumps(rows) + "\n")
        return
    results_table(
        f"{method.value}: the data owner's candidates, best first (appraised under MPC)",
        ranked,
        ranked=True,
        extra={"label noise p": noise},
    )
