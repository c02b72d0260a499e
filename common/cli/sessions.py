"""``data-appraisal sessions list | show | follow | cancel``: the model owner's sessions.

Every command speaks to the model owner service (``--model-owner`` or DATA_APPRAISAL_MODEL_OWNER)
with the operator's token from DATA_APPRAISAL_TOKEN. ``--json`` prints the API's own session
views (docs/api.md), for scripts.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from common.cli.output import err_console, fail, results_table
from common.cli.remote import ModelOwnerOpt, TlsCaOpt, TlsCertOpt, TlsKeyOpt, connect
from common.client import ModelOwnerClient
from common.web.schemas import SessionState, SessionView

app = typer.Typer(
    help="List, show, follow and cancel the model owner's appraisal sessions.",
    no_args_is_help=True,
)
IdArg = Annotated[str, typer.Argument(help="The session's id (as `sessions list` shows it).")]
ViewsJsonOpt = Annotated[
    bool, typer.Option("--json", help="Print the API's session views (JSON) instead of a table.")
]
ResultsJsonOpt = Annotated[
    bool, typer.Option("--json", help="Print only a JSON list, one object per candidate.")
]


def _console() -> Console:
    out = Console()
    return out if out.is_terminal else Console(width=160)


def _ago(seconds: float) -> str:
    age = max(0.0, time.time() - seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if age >= size:
            return f"{age / size:.0f} {unit} ago"
    return f"{age:.0f} s ago"


def describe_progress(view: SessionView) -> str:
    """``'1/2 candidates, step 7/16'``: how far a session is."""
    p = view.progress
    text = f"{p.done}/{p.total or len(view.datasets)} candidates"
    if p.steps and not view.state.terminal and p.done < p.total:
        text += f", step {p.step}/{p.steps}"
    return text


def sessions_table(views: Sequence[SessionView]) -> Table:
    table = Table(title="sessions at the model owner, newest first")
    for column in ("id", "state", "method", "data owner", "candidates", "progress", "updated"):
        table.add_column(column)
    for v in views:
        table.add_row(
            v.id,
            v.state.value,
            v.method,
            v.counterpart,
            ", ".join(v.datasets),
            describe_progress(v),
            _ago(v.updated_at),
        )
    return table


class Follower:
    """A progress bar for one session: candidates finished plus the share of the current one
    (its steps, where the method has them), with the time elapsed and an estimate of what is
    left. Hidden when stderr is not a terminal."""

    def __init__(self, total: int, *, show: bool) -> None:
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=err_console,
            disable=not show,
            transient=True,
        )
        self.task: TaskID = self.bar.add_task("negotiating", total=total, detail="")

    def __enter__(self) -> Follower:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def update(self, view: SessionView) -> None:
        p = view.progress
        share = p.step / p.steps if p.steps and p.done < p.total else 0.0
        self.bar.update(
            self.task,
            completed=p.done + share,
            total=p.total or len(view.datasets),
            description=view.state.value,
            detail=describe_progress(view),
        )


def announce(view: SessionView) -> None:
    """The session id, first of all (on stderr, so that --json output stays one document)."""
    err_console.print(
        f"session [bold]{view.id}[/] {view.state.value} "
        f"(follow: data-appraisal sessions follow {view.id})",
        highlight=False,
        soft_wrap=True,
    )


def print_outcome(view: SessionView, *, json_output: bool) -> None:
    """The results of an ended session on stdout; exit status 1, with the reason, if it failed."""
    if json_output:
        sys.stdout.write(json.dumps([r.to_json() for r in view.results]) + "\n")
    elif view.results:
        reveal = view.job.reveal if view.job is not None else "score"
        results_table(f"{view.method} appraisal ({reveal} reveal)", view.results)
    if view.state is not SessionState.COMPLETED:
        kept = f"; {len(view.results)} result(s) revealed before it ended" if view.results else ""
        fail(f"session {view.id} {view.state.value}: {view.reason or 'no reason given'}{kept}")


def follow_session(
    client: ModelOwnerClient, view: SessionView, *, show: bool, poll_seconds: float = 0.5
) -> SessionView:
    """Follow ``view`` to its end with a progress bar; Ctrl-C stops following, not the session."""
    if view.state.terminal:
        return view
    with Follower(len(view.datasets), show=show) as bar:
        return client.follow(view.id, on_progress=bar.update, poll_seconds=poll_seconds)


@app.command("list")
def list_sessions(
    model_owner: ModelOwnerOpt,
    state: Annotated[
        SessionState | None, typer.Option(help="Only sessions in this state.", show_default=False)
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many.")] = 50,
    json_output: ViewsJsonOpt = False,
    tls_ca: TlsCaOpt = None,
    tls_cert: TlsCertOpt = None,
    tls_key: TlsKeyOpt = None,
) -> None:
    """The model owner's sessions, newest first."""
    with connect(model_owner, tls_ca, tls_cert, tls_key) as client:
        views = client.sessions(state=state.value if state else None, limit=limit)
    if json_output:
        sys.stdout.write(json.dumps([v.model_dump(mode="json") for v in views]) + "\n")
    elif not views:
        err_console.print("no sessions" + (f" in state {state.value}" if state else ""))
    else:
        _console().print(sessions_table(views))


@app.command()
def show(
    session_id: IdArg,
    model_owner: ModelOwnerOpt,
    json_output: ViewsJsonOpt = False,
    tls_ca: TlsCaOpt = None,
    tls_cert: TlsCertOpt = None,
    tls_key: TlsKeyOpt = None,
) -> None:
    """One session: what was asked and agreed, its state and reason, its results so far."""
    with connect(model_owner, tls_ca, tls_cert, tls_key) as client:
        view = client.session(session_id)
    if json_output:
        sys.stdout.write(view.model_dump_json() + "\n")
        return
    out = _console()
    job = view.job
    rows = {
        "session": view.id,
        "state": view.state.value + (f": {view.reason}" if view.reason else ""),
        "data owner": view.counterpart,
        "method": view.method
        + (
            f" ({job.steps} steps, lr {job.lr:g})"
            if job is not None and job.method == "finetune"
            else ""
        ),
        "reveal": (f"{job.reveal} to {job.reveal_to}" if job is not None else "(not agreed)"),
        "candidates": ", ".join(view.datasets),
        "progress": describe_progress(view),
        "charged": f"{view.charged} candidate(s) against the leakage budget",
        "updated": _ago(view.updated_at),
    }
    width = max(map(len, rows))
    for name, text in rows.items():
        out.print(f"{name:>{width}}  {text}", highlight=False, soft_wrap=True)
    if view.results:
        results_table("results so far" if not view.state.terminal else "results", view.results)


@app.command()
def follow(
    session_id: IdArg,
    model_owner: ModelOwnerOpt,
    json_output: ResultsJsonOpt = False,
    tls_ca: TlsCaOpt = None,
    tls_cert: TlsCertOpt = None,
    tls_key: TlsKeyOpt = None,
) -> None:
    """Follow a session to its end, then print its results (exit status 1 if it did not complete).

    Ctrl-C stops following; the session goes on (cancel it with `sessions cancel`).
    """
    show_bar = not json_output and err_console.is_terminal
    with connect(model_owner, tls_ca, tls_cert, tls_key) as client:
        try:
            view = follow_session(client, client.session(session_id), show=show_bar)
        except KeyboardInterrupt:
            err_console.print(
                f"stopped following; session {session_id} goes on "
                f"(cancel: data-appraisal sessions cancel {session_id})",
                highlight=False,
            )
            raise typer.Exit(130) from None
    print_outcome(view, json_output=json_output)


@app.command()
def cancel(
    session_id: IdArg,
    model_owner: ModelOwnerOpt,
    reason: Annotated[
        str, typer.Option(help="Recorded at both owners and the dealer.")
    ] = "cancelled by the operator",
    tls_ca: TlsCaOpt = None,
    tls_cert: TlsCertOpt = None,
    tls_key: TlsKeyOpt = None,
) -> None:
    """Cancel a live session: its workers stop and both peers record the reason."""
    with connect(model_owner, tls_ca, tls_cert, tls_key) as client:
        view = client.cancel(session_id, reason)
    err_console.print(f"session {view.id} {view.state.value}", highlight=False)
