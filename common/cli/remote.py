"""Reaching a model owner service from the command line: its URL, the operator's token, TLS.

Shared by ``appraise`` and ``sessions``: the token comes only from the environment (never an
option, so it stays out of shell history and ``ps``); the URL and TLS files from options or their
environment variables.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from common.cli.output import fail
from common.client import INSECURE_HTTP_VAR, ModelOwnerClient
from common.errors import AppraisalError
from common.web.tls import client_context

TOKEN_VARS = ("DATA_APPRAISAL_TOKEN", "MODEL_OWNER_API_TOKEN")

ModelOwnerOpt = Annotated[
    str,
    typer.Option(
        help="The model owner service's URL.",
        envvar="DATA_APPRAISAL_MODEL_OWNER",
        show_envvar=True,
    ),
]
TlsCaOpt = Annotated[
    Path | None,
    typer.Option(
        help="CA that the model owner's certificate must chain to (default: the system's).",
        envvar="DATA_APPRAISAL_TLS_CA",
    ),
]
TlsCertOpt = Annotated[
    Path | None,
    typer.Option(
        help="Client certificate, for a model owner that requires mutual TLS.",
        envvar="DATA_APPRAISAL_TLS_CERT",
    ),
]
TlsKeyOpt = Annotated[
    Path | None,
    typer.Option(help="The client certificate's key file.", envvar="DATA_APPRAISAL_TLS_KEY"),
]


def token() -> str:
    """The operator's API token, from DATA_APPRAISAL_TOKEN (else MODEL_OWNER_API_TOKEN)."""
    for var in TOKEN_VARS:
        if os.environ.get(var):
            return os.environ[var]
    fail(
        "set DATA_APPRAISAL_TOKEN (or MODEL_OWNER_API_TOKEN) to the model owner's API token; it "
        "is never a command-line option"
    )


@contextlib.contextmanager
def connect(
    url: str, tls_ca: Path | None, tls_cert: Path | None, tls_key: Path | None
) -> Iterator[ModelOwnerClient]:
    """A client of the model owner at ``url``; a configuration error, or an AppraisalError that
    the body raises, ends the command with its message."""
    secret = token()
    insecure = os.environ.get(INSECURE_HTTP_VAR, "").lower() in ("1", "true", "yes")
    try:
        verify = client_context(
            tls_ca, tls_cert, tls_key, names=("--tls-ca", "--tls-cert", "--tls-key")
        )
        client = ModelOwnerClient(url, secret, tls=verify, insecure_http=insecure)
    except AppraisalError as exc:
        fail(str(exc))
    with client:
        try:
            yield client
        except AppraisalError as exc:
            fail(str(exc))
