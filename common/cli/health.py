"""``data-appraisal health``: is this host's service answering? (the image's HEALTHCHECK)

It asks the service's own ``/v1/health`` on this host, with the service's own settings: its port,
and under TLS its CA and its own certificate as the client certificate (mutual TLS). Which service
is the one named on the command line, or else the one PID 1 serves (``data-appraisal <service>
serve`` in a container); a container that serves nothing (``appraise``, ``certs``) has nothing to
check and is healthy.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from common.cli.output import fail
from common.cli.serve import SERVICES
from common.errors import AppraisalError

API_HEALTH = "/v1/health"
WILDCARDS = {"", "0.0.0.0", "::", "[::]"}


def served_by(argv: Sequence[str]) -> tuple[str, int | None] | None:
    """The service and ``--port`` of a ``data-appraisal <service> serve`` command line, if it is one."""
    args = list(argv)
    for i, word in enumerate(args[:-1]):
        if word in SERVICES and args[i + 1] == "serve":
            port = None
            rest = args[i + 2 :]
            for j, option in enumerate(rest):
                if option == "--port" and j + 1 < len(rest):
                    port = int(rest[j + 1])
                elif option.startswith("--port="):
                    port = int(option.split("=", 1)[1])
            return word, port
    return None


def _pid1() -> list[str]:
    try:
        raw = Path("/proc/1/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def check(name: str, port: int | None = None, timeout: float = 5.0) -> str:
    """GET the service's health on this host; what it answered, or raise AppraisalError."""
    import httpx

    from common.web.tls import client_context

    overrides: dict[str, Any] = {"demo": True}  # only reads settings: placeholders are fine here
    if port is not None:
        overrides["port"] = port
    settings, _ = SERVICES[name].build(overrides)
    host = "127.0.0.1" if settings.host in WILDCARDS else settings.host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    verify: Any = False
    scheme = "http"
    if settings.tls_cert is not None:
        scheme = "https"
        prefix = SERVICES[name].prefix
        verify = client_context(
            settings.tls_ca,
            settings.tls_cert,
            settings.tls_key,
            names=(f"{prefix}TLS_CA", f"{prefix}TLS_CERT", f"{prefix}TLS_KEY"),
        )
        # its own certificate names the host the others reach it at, not necessarily this address
        verify.check_hostname = False
    url = f"{scheme}://{host}:{settings.port}{API_HEALTH}"
    try:
        response = httpx.get(url, verify=verify, timeout=timeout)
    except httpx.HTTPError as exc:
        raise AppraisalError(f"{name} at {url}: no answer ({type(exc).__name__}: {exc})") from None
    if response.status_code != 200:
        raise AppraisalError(f"{name} at {url}: HTTP {response.status_code}: {response.text[:200]}")
    return f"{name} at {url}: {response.text.strip()}"


def health(
    service: Annotated[
        str | None,
        typer.Argument(
            help="model-owner, data-owner or dealer (default: the one this container's PID 1 "
            "serves)",
            show_default=False,
        ),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(help="its port (default: its PORT setting, or PID 1's --port)"),
    ] = None,
) -> None:
    """Check that this host's service answers its health route (exit 1 if not)."""
    if service is None:
        found = served_by(_pid1())
        if found is None:
            typer.echo("nothing to check: PID 1 serves no data-appraisal service")
            return
        service, served_port = found
        port = port if port is not None else served_port
    if service not in SERVICES:
        fail(f"unknown service {service!r}; the services are {', '.join(SERVICES)}")
    try:
        typer.echo(check(service, port))
    except AppraisalError as exc:
        fail(str(exc))
    except ValueError as exc:  # a malformed setting in the environment
        fail(f"{service} service: invalid settings: {exc}")
