"""The ``data-appraisal`` command line."""

from __future__ import annotations

import contextlib
import enum
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from common.errors import AppraisalError
from common.experiments.cli import app as experiment_app

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
app.add_typer(experiment_app, name="experiment")
err_console = Console(stderr=True)


class MethodChoice(enum.StrEnum):
    influence = "influence"
    gradient_norm = "gradient-norm"
    finetune = "finetune"


class RevealChoice(enum.StrEnum):
    score = "score"
    threshold = "threshold"


class RevealToChoice(enum.StrEnum):
    both = "both"
    model_owner = "model_owner"


class DirectionChoice(enum.StrEnum):
    LOWER = "lower"
    HIGHER = "higher"


# Options shared by `local`, `appraise` and `demo`.
MethodOpt = Annotated[MethodChoice, typer.Option(help="Appraisal function.")]
StepsOpt = Annotated[int, typer.Option(help="Fine-tuning: gradient steps T.", min=1)]
LrOpt = Annotated[float, typer.Option(help="Fine-tuning: learning rate η.", min=0.0)]
BatchOpt = Annotated[
    int | None, typer.Option(help="Fine-tuning: minibatch size (default: full batch).", min=1)
]
RevealOpt = Annotated[
    RevealChoice,
    typer.Option(help="'score' reveals the score; 'threshold' only the bit score-better-than-τ."),
]
ThresholdOpt = Annotated[
    float | None, typer.Option(help="τ for --reveal threshold (stays the model owner's secret).")
]
DirectionOpt = Annotated[
    DirectionChoice | None,
    typer.Option(
        help="Which scores are better (default: lower for influence and finetune, higher for "
        "gradient-norm)."
    ),
]
RevealToOpt = Annotated[
    RevealToChoice | None,
    typer.Option(
        help="Who learns the score or bit: both owners, or the model owner only (the data owner's "
        "results are then empty)."
    ),
]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print only a JSON list, one object per candidate.")
]


def _progress_bar(*, show: bool) -> Progress:
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
    method: MethodOpt = MethodChoice.influence,
    l2: Annotated[float, typer.Option(help="λ of the objective Σ L + λ‖θ‖².", min=0.0)] = 1.0,
    steps: StepsOpt = 16,
    lr: LrOpt = 0.1,
    batch_size: BatchOpt = None,
    reveal: RevealOpt = RevealChoice.score,
    threshold: ThresholdOpt = None,
    direction: DirectionOpt = None,
    reveal_to: RevealToOpt = None,
    noise_epsilon: Annotated[
        float | None,
        typer.Option(
            help="influence only: the data owner adds Laplace noise so that each released score is "
            "ε-differentially private for one candidate sample (see docs/threat-model.md).",
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
    json_output: JsonOpt = False,
) -> None:
    """Run the model owner, the data owner and the dealer as separate processes on loopback."""
    from common.local import appraise_local

    if insecure_tfp:
        err_console.print(
            "[bold yellow]warning:[/] --insecure-tfp: the model owner's worker generates every "
            "Beaver triple and can read the data owner's data. Use it only for testing."
        )
    progress = _progress_bar(show=not json_output and err_console.is_terminal)
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
                reveal_to="both" if reveal_to is None else reveal_to.value,
                noise_epsilon=noise_epsilon,
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

    if not overwrite and directory.is_dir() and any(directory.iterdir()):
        _fail(
            f"{directory}: directory is not empty (pass --overwrite to write over it, or choose "
            "an empty or new directory)"
        )
    try:
        split = write_example_data(directory, seed=seed, overwrite=overwrite)
    except AppraisalError as exc:
        _fail(str(exc))
        return
    err_console.print(
        f"wrote {split.train}, {split.test} and {len(split.candidates)} candidates in "
        f"{split.directory / 'data_owner'} (see {split.readme})"
    )


# --------------------------------------------------------------------------------------------
# Services
# --------------------------------------------------------------------------------------------

SERVICES = {
    # command name: (module, settings class, environment prefix, default port)
    "model-owner": ("model_owner.service", "ModelOwnerSettings", "MODEL_OWNER_", 8000),
    "data-owner": ("data_owner.service", "DataOwnerSettings", "DATA_OWNER_", 8001),
    "dealer": ("dealer.service", "DealerSettings", "DEALER_", 8002),
}


def _serve(name: str, host: str | None, port: int | None, demo: bool, log_level: str) -> None:
    import importlib
    import logging

    import uvicorn

    from common.tls import uvicorn_ssl_kwargs

    module_name, settings_name, _, _ = SERVICES[name]
    module = importlib.import_module(module_name)
    overrides: dict[str, object] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    if demo:
        overrides["demo"] = True
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    try:
        settings = getattr(module, settings_name)(**overrides)
        tls = uvicorn_ssl_kwargs(settings)  # TLS files and the plain-HTTP policy, before training
        app = module.create_app(settings)
    except AppraisalError as exc:
        _fail(f"{name} service: {exc}")
        return
    except ValueError as exc:  # pydantic's ValidationError of a malformed environment variable
        _fail(f"{name} service: invalid settings: {exc}")
        return
    # only paths reach uvicorn: the key stays in its 0600 file, the tokens in the environment
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=log_level.lower(), **tls)


def _serve_command(name: str) -> typer.Typer:
    _, _, prefix, default_port = SERVICES[name]
    sub = typer.Typer(help=f"The {name.replace('-', ' ')} service.", no_args_is_help=True)

    @sub.command(
        "serve",
        help=f"Run the {name.replace('-', ' ')} service (uvicorn). Every setting is an environment "
        f"variable {prefix}<SETTING>, listed in the README; tokens are never command-line options. "
        f"It serves HTTPS (mutual TLS) with {prefix}TLS_CERT, {prefix}TLS_KEY and {prefix}TLS_CA, "
        f"and plain HTTP only on loopback unless {prefix}INSECURE_HTTP=true.",
    )
    # plain defaults, not Annotated: the help texts depend on this service's name and prefix
    def serve(
        host: str | None = typer.Option(
            None, help=f"Interface to bind [env {prefix}HOST, default 127.0.0.1]."
        ),
        port: int | None = typer.Option(
            None, help=f"Port [env {prefix}PORT, default {default_port}]."
        ),
        demo: bool = typer.Option(
            False, "--demo", help=f"Allow placeholder tokens (local demo only) [env {prefix}DEMO]."
        ),
        log_level: str = typer.Option("info", help="debug, info, warning or error."),
    ) -> None:
        _serve(name, host, port, demo, log_level)

    return sub


for _name in SERVICES:
    app.add_typer(_serve_command(_name), name=_name)


@app.command()
def certs(
    out: Annotated[
        Path, typer.Option(help="Directory for ca.pem, <name>.pem (0644) and <name>.key (0600).")
    ],
    name: Annotated[
        list[str] | None,
        typer.Option(
            help="A certificate to issue, named by the DNS name its holder is reached at; repeat "
            "for several (default: model-owner, data-owner, dealer, operator)."
        ),
    ] = None,
    days: Annotated[int, typer.Option(help="Validity in days.", min=1)] = 365,
    overwrite: Annotated[
        bool,
        typer.Option(help="Replace a set already in --out (then restart every service)."),
    ] = False,
    ca_key: Annotated[
        Path | None,
        typer.Option(
            help="Keep the CA's private key in this file (0600), outside --out; by default it is "
            "discarded once the certificates are issued."
        ),
    ] = None,
) -> None:
    """Write a private demo CA and a certificate and key per name, for TLS between the services.

    Every certificate is valid for its name, localhost, 127.0.0.1 and ::1, as a server and as a
    client (mutual TLS). A complete, valid set already in --out is kept, so this may run at every
    start (docker compose does). Point each service's *_TLS_CERT, *_TLS_KEY and *_TLS_CA at its files.
    """
    from common.tls import DEFAULT_NAMES, write_demo_pki

    names = tuple(name or DEFAULT_NAMES)
    try:
        pki = write_demo_pki(out, names, days=days, overwrite=overwrite, ca_key=ca_key)
    except AppraisalError as exc:
        _fail(str(exc))
        return
    if not pki.written:
        extra = f"; {ca_key} was not written" if ca_key is not None else ""
        err_console.print(
            f"kept the valid CA and certificates of {', '.join(names)} in {out} (--overwrite "
            f"issues a fresh set){extra}",
            highlight=False,
        )
        return
    err_console.print(
        f"wrote {pki.ca} and a certificate and key for {', '.join(names)} in {out}"
        + (f"; the CA's key is in {ca_key}" if ca_key is not None else ""),
        highlight=False,
    )


def _session_progress(total: int, show: bool) -> tuple[Progress, Callable[[Any], None]]:
    progress = _progress_bar(show=show)
    task = progress.add_task("negotiating", total=total)

    def update(view: Any) -> None:
        progress.update(task, completed=view.progress.done, description=view.state.value)

    return progress, update


def _outcome_table(title: str, outcomes: list[Any], extra: dict[str, str] | None = None) -> None:
    reveal_bit = any(o.accept is not None for o in outcomes)
    table = Table(title=title)
    table.add_column("rank", justify="right")
    table.add_column("candidate")
    if extra:
        table.add_column("label noise p", justify="right")
    table.add_column("accept" if reveal_bit else "score", justify="right")
    table.add_column("seconds", justify="right")
    table.add_column("MB sent", justify="right")
    table.add_column("rounds", justify="right")
    for rank, o in enumerate(outcomes, 1):
        row = [str(rank), o.candidate]
        if extra:
            row.append(extra.get(o.candidate, ""))
        row += [
            str(o.accept) if o.score is None else f"{o.score:.6g}",
            f"{o.seconds:.2f}",
            f"{o.bytes / 1e6:.1f}",
            str(o.rounds),
        ]
        table.add_row(*row)
    out = Console()
    if not out.is_terminal:
        out = Console(width=120)
    out.print(table)


def _token() -> str:
    for var in ("DATA_APPRAISAL_TOKEN", "MODEL_OWNER_API_TOKEN"):
        if os.environ.get(var):
            return os.environ[var]
    _fail(
        "set DATA_APPRAISAL_TOKEN (or MODEL_OWNER_API_TOKEN) to the model owner's API token; it "
        "is never a command-line option"
    )
    return ""


@app.command()
def appraise(
    model_owner: Annotated[str, typer.Option(help="The model owner service's URL.")],
    data_owner: Annotated[str, typer.Option(help="The data owner service's URL.")],
    dataset: Annotated[
        list[str], typer.Option(help="A data owner's dataset id; repeat for several.")
    ],
    method: MethodOpt = MethodChoice.influence,
    steps: StepsOpt = 16,
    lr: LrOpt = 0.1,
    batch_size: BatchOpt = None,
    reveal: RevealOpt = RevealChoice.score,
    threshold: ThresholdOpt = None,
    direction: DirectionOpt = None,
    reveal_to: RevealToOpt = None,
    noise_epsilon: Annotated[
        float | None,
        typer.Option(
            help="influence only: ask the data owner to add Laplace noise so that each released "
            "score is ε-differentially private for one candidate sample (see docs/api.md); "
            "ε > 0.",
        ),
    ] = None,
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
    sent over plain HTTP only to this machine (or with DATA_APPRAISAL_INSECURE_HTTP=1).
    """
    from common.stack import INSECURE_HTTP_VAR
    from common.stack import appraise as run
    from common.tls import client_context

    token = _token()
    try:
        verify = client_context(
            tls_ca, tls_cert, tls_key, names=("--tls-ca", "--tls-cert", "--tls-key")
        )
    except AppraisalError as exc:
        _fail(str(exc))
        return
    insecure = os.environ.get(INSECURE_HTTP_VAR, "").lower() in ("1", "true", "yes")
    progress, update = _session_progress(len(dataset), not json_output and err_console.is_terminal)
    try:
        with progress:
            outcomes = run(
                model_owner,
                token,
                data_owner=data_owner,
                datasets=dataset,
                method=method.value,
                reveal=reveal.value,
                threshold=threshold,
                params={"steps": steps, "lr": lr, "batch_size": batch_size},
                direction=None if direction is None else direction.value,
                reveal_to=None if reveal_to is None else reveal_to.value,
                noise_epsilon=noise_epsilon,
                on_progress=update,
                verify=verify,
                insecure_http=insecure,
            )
    except AppraisalError as exc:
        _fail(str(exc))
        return
    if json_output:
        sys.stdout.write(json.dumps([o.to_json() for o in outcomes]) + "\n")
        return
    _outcome_table(f"{method.value} appraisal ({reveal.value} reveal)", outcomes)


@app.command()
def demo(
    method: MethodOpt = MethodChoice.influence,
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

    from common.data import write_example_data
    from common.stack import appraise as run
    from common.stack import local_stack

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
            with progress:
                outcomes = run(
                    services.model_owner.url,
                    services.model_owner.token,
                    data_owner=services.data_owner.url,
                    datasets=ids,
                    method=method.value,
                    on_progress=update,
                    verify=services.model_owner.verify(),
                )
        except AppraisalError as exc:
            _fail(str(exc))
            return
    higher = method is MethodChoice.gradient_norm
    ranked = sorted(outcomes, key=lambda o: -(o.score or 0.0) if higher else (o.score or 0.0))
    noise = {
        Path(c).stem: f"{p:.1f}"
        for c, p in zip(split.candidates, split.flip_probabilities, strict=True)
    }
    if json_output:
        rows = [{**o.to_json(), "label_noise": float(noise[o.candidate])} for o in ranked]
        sys.stdout.write(json.dumps(rows) + "\n")
        return
    _outcome_table(
        f"{method.value}: the data owner's candidates, best first (appraised under MPC)",
        ranked,
        noise,
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
