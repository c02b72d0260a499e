"""``data-appraisal {model-owner,data-owner,dealer} serve``: run one party's service (uvicorn)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import typer

from common.cli.output import fail
from common.errors import AppraisalError


@dataclass(frozen=True)
class ServiceCommand:
    """One service's command: its settings' prefix and default port, and how to build it."""

    prefix: str
    port: int
    build: Callable[[dict[str, Any]], tuple[Any, Any]]  # overrides → (settings, app)


def _model_owner(overrides: dict[str, Any]) -> tuple[Any, Any]:
    from model_owner.app import create_app
    from model_owner.settings import ModelOwnerSettings

    settings = ModelOwnerSettings(**overrides)
    return settings, lambda: create_app(settings)


def _data_owner(overrides: dict[str, Any]) -> tuple[Any, Any]:
    from data_owner.app import create_app
    from data_owner.settings import DataOwnerSettings

    settings = DataOwnerSettings(**overrides)
    return settings, lambda: create_app(settings)


def _dealer(overrides: dict[str, Any]) -> tuple[Any, Any]:
    from dealer.app import create_app
    from dealer.settings import DealerSettings

    settings = DealerSettings(**overrides)
    return settings, lambda: create_app(settings)


SERVICES: dict[str, ServiceCommand] = {
    "model-owner": ServiceCommand("MODEL_OWNER_", 8000, _model_owner),
    "data-owner": ServiceCommand("DATA_OWNER_", 8001, _data_owner),
    "dealer": ServiceCommand("DEALER_", 8002, _dealer),
}


def serve(name: str, host: str | None, port: int | None, demo: bool, log_level: str) -> None:
    from common.web import logs, server
    from common.web.tls import uvicorn_ssl_kwargs

    overrides: dict[str, object] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    if demo:
        overrides["demo"] = True
    try:
        settings, build = SERVICES[name].build(overrides)
        logs.configure(
            name, level=log_level, fmt=settings.log_format, access_log=settings.access_log
        )
        tls = uvicorn_ssl_kwargs(settings)  # TLS files and the plain-HTTP policy, before training
        app = build()
    except AppraisalError as exc:
        fail(f"{name} service: {exc}")
    except ValueError as exc:  # pydantic's ValidationError of a malformed environment variable
        fail(f"{name} service: invalid settings: {exc}")
    # only paths reach uvicorn: the key stays in its 0600 file, the tokens in the environment
    server.serve(app, settings, tls, log_level=log_level)


def serve_command(name: str) -> typer.Typer:
    command = SERVICES[name]
    prefix = command.prefix
    sub = typer.Typer(help=f"The {name.replace('-', ' ')} service.", no_args_is_help=True)

    @sub.command(
        "serve",
        help=f"Run the {name.replace('-', ' ')} service (uvicorn). Every setting is an environment "
        f"variable {prefix}<SETTING>, listed in the README; tokens are never command-line options. "
        f"It serves HTTPS (mutual TLS) with {prefix}TLS_CERT, {prefix}TLS_KEY and {prefix}TLS_CA, "
        f"and plain HTTP only on loopback unless {prefix}INSECURE_HTTP=true.",
    )
    # plain defaults, not Annotated: the help texts depend on this service's name and prefix
    def serve_(
        host: str | None = typer.Option(
            None, help=f"Interface to bind (env {prefix}HOST; default 127.0.0.1)."
        ),
        port: int | None = typer.Option(
            None, help=f"Port (env {prefix}PORT; default {command.port})."
        ),
        demo: bool = typer.Option(
            False, "--demo", help=f"Allow placeholder tokens, local demo only (env {prefix}DEMO)."
        ),
        log_level: str = typer.Option(
            "info", help="debug, info, warning or error.", show_default=True
        ),
    ) -> None:
        serve(name, host, port, demo, log_level)

    return sub
