"""Who is calling: bearer tokens mapped to identities, as FastAPI dependencies.

Each service object on ``app.state.service`` says which identities it accepts (``identities()``:
identity → :class:`Credential`, its token and, optionally, the name its client certificate must
carry) and may narrow an identity to the request (``authorize(request, identity)``, e.g. a
one-session token valid on one session's routes only). Routes take the caller as a typed
dependency: ``who: Caller``, or ``who: Operator`` / ``who: Peer`` for routes of one kind of caller.
The names in the client's certificate come from the server (:mod:`common.web.server` puts them in
the request's state).
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from common.errors import Forbidden, Unauthorized
from common.web.settings import OPERATOR, Credential

_bearer = HTTPBearer(auto_error=False, description="the service's API token")


def same_secret(given: str, expected: SecretStr) -> bool:
    return secrets.compare_digest(given.encode(), expected.get_secret_value().encode())


async def authenticate(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The caller's identity (``operator``, a model owner's name, ...), or 401."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("send the API token as 'Authorization: Bearer <token>'")
    service = request.app.state.service
    identity = identify(service.identities(), credentials.credentials)
    if identity is None:
        raise Unauthorized("the bearer token is not valid for this service")
    check_certificate(request, identity, service.identities()[identity])
    authorize = getattr(service, "authorize", None)
    return identity if authorize is None else str(authorize(request, identity))


def identify(identities: dict[str, Credential], token: str) -> str | None:
    """The identity whose token this is (compared in constant time), or None."""
    found = None
    for identity, credential in identities.items():
        if same_secret(token, credential.token):
            found = identity
    return found


def client_certificate_names(request: Request) -> list[str]:
    """The DNS names (and IP addresses) of the verified client certificate of this connection."""
    return list(getattr(request.state, "tls_client_names", []) or [])


def check_certificate(request: Request, identity: str, credential: Credential) -> None:
    """An identity bound to a certificate name must come with a client certificate of that name:
    a token copied to another party's machine is useless there."""
    if credential.certificate is None:
        return
    names = client_certificate_names(request)
    if credential.certificate not in names:
        shown = ", ".join(names) if names else "no client certificate"
        raise Forbidden(
            f"{identity!r} must present a client certificate for {credential.certificate!r}; this "
            f"connection has {shown}"
        )


Caller = Annotated[str, Depends(authenticate)]


async def schema_reader(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """Who may read the API's description: anyone when the service's docs are public (its
    ``DOCS=public`` setting), else any caller with a valid token."""
    if request.app.state.service.settings.docs == "public":
        return "public"
    return await authenticate(request, credentials)


SchemaReader = Annotated[str, Depends(schema_reader)]


async def operator(who: Caller) -> str:
    if who != OPERATOR:
        raise Forbidden("only this service's operator token may do this")
    return who


async def peer(who: Caller) -> str:
    if who == OPERATOR:
        raise Forbidden("this route is for a model owner's token, not the operator's")
    return who


Operator = Annotated[str, Depends(operator)]
Peer = Annotated[str, Depends(peer)]
