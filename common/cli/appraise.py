"""``data-appraisal appraise`` (a session on running services) and ``demo`` (all on loopback)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import Progress

from common.cli.options import (
    BatchOpt,
    DirectionOpt,
    JsonOpt,
    LrOpt,
    MethodChoice,
    MethodOpt,
    NoiseOpt,
    RevealChoice,
    RevealOpt,
    RevealToOpt,
    StepsOpt,
    ThresholdOpt,
    value,
)
from common.cli.output import err_console, fail, progress_bar, results_table
from common.errors import AppraisalError

TOKEN_VARS = ("DATA_APPRAISAL_TOKEN", "MODEL_OWNER_API_TOKEN")


def _token() -> str:
    for var in TOKEN_VARS:
        if os.environ.get(var):
            return os.environ[var]
    fail(
        "set DATA_APPRAISAL_TOKEN (or MODEL_OWNER_API_TOKEN) to the model owner's API token; it "
        "is never a command-line option"
    )


def _session_progress(total: int, show: bool) -> tuple[Progress, Callable[[Any], None]]:
    progress = progress_bar(show=show)
    task = progress.add_task("negotiating", total=total)

    def update(view: Any) -> None:
        progress.update(task, completed=view.progress.done, description=view.state.value)

    return progress, update


def appraise(
    model_owner: Annotated[str, typer.Option(help="The model owner service's URL.")],
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
    json_output: JsonOpt = False,
    tls_ca: Annotated[
        Path | None,
        typer.Option(
            help="CA that the model owner's certificate must chain to (default: the system's).",
            envvar="DATA_APPRAISAL_TLS_CA",
        ),
    ] = None,
    tls_cert: Annotated[
        Path | None,
        typer.Option(
            help="Client certificate, for a model owner that requires mutual TLS.",
            envvar="DATA_APPRAISAL_TLS_CERT",
        ),
    ] = None,
    tls_key: Annotated[
        Path | None,
        typer.Option(help="The client certificate's key file.", envvar="DATA_APPRAISAL_TLS_KEY"),
    ] = None,
) -> None:
    """Open an appraisal session on a model owner service and follow it to its result.

    The model owner's API token comes from DATA_APPRAISAL_TOKEN (else MODEL_OWNER_API_TOKEN); it is
    sent over plain HTTP only to this machine (or with DATA_APPRAISAL_INSECURE_HTTP=1). The table
    and --json show the model owner's worker's view: its score or bit, and the bytes it sent and
    received.
    """
    from common.client import INSECURE_HTTP_VAR, ModelOwnerClient
    from common.web.tls import client_context

    token = _token()
    insecure = os.environ.get(INSECURE_HTTP_VAR, "").lower() in ("1", "true", "yes")
    progress, update = _session_progress(len(dataset), not json_output and err_console.is_terminal)
    try:
        verify = client_context(
            tls_ca, tls_cert, tls_key, names=("--tls-ca", "--tls-cert", "--tls-key")
        )
        with (
            progress,
            ModelOwnerClient(model_owner, token, tls=verify, insecure_http=insecure) as mo,
        ):
            results = mo.appraise(
                data_owner=data_owner,
                datasets=dataset,
                method=method.value,
                reveal=reveal.value,
                threshold=threshold,
                params={"steps": steps, "lr": lr, "batch_size": batch_size},
                direction=value(direction),
                reveal_to=value(reveal_to),
                noise_epsilon=noise_epsilon,
                on_progress=update,
            )
    except AppraisalError as exc:
        fail(str(exc))
    if json_output:
        sys.stdout.write(json.dumps([r.to_json() for r in results]) + "\n")
        return
    results_table(f"{method.value} appraisal ({reveal.value} reveal)", results)


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
    from common.client import ModelOwnerClient
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
            progress, update = _session_progress(len(ids), show)
            mo = services.model_owner
            with progress, ModelOwnerClient(mo.url, mo.token, tls=mo.tls) as client:
                results = client.appraise(
                    data_owner=services.data_owner.url,
                    datasets=ids,
                    method=method.value,
                    on_progress=update,
                )
        except AppraisalError as exc:
            fail(str(exc))
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
