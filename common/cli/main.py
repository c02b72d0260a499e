"""The root of the ``data-appraisal`` command line; each command lives in its own module."""

from __future__ import annotations

import os
import sys

import typer

from common.cli import appraise, files, health, local, serve, sessions
from common.cli.output import DEBUG_VAR, err_console
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
app.command()(local.local)
app.command()(appraise.appraise)
app.command()(appraise.demo)
app.add_typer(sessions.app, name="sessions")
app.command("example-data")(files.example_data)
app.add_typer(files.certs_app, name="certs")
for _name in serve.SERVICES:
    app.add_typer(serve.serve_command(_name), name=_name)
app.command()(health.health)
app.add_typer(experiment_app, name="experiment")


def main() -> None:
    """Console-script entry point: errors end in one line on stderr, never a traceback.

    Set DATA_APPRAISAL_DEBUG=1 to see the traceback of an unexpected error (and every MPC party's).
    """
    debug = bool(os.environ.get(DEBUG_VAR))
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
