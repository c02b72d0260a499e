"""Who is calling: bearer tokens mapped to identities, as FastAPI dependencies.

Each service object on ``app.state.service`` says which identities it accepts
(``identities()``: identity → token) and may narrow an identity to the request
(``authorize(request, identity)``, e.g. a one-session token valid on one session's routes only).
Routes take the caller as a typed dependency: ``who: Caller`` or, for operator-only routes,
``who: Operator``.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from common.errors import Forbidden, Unauthorized
from common.web.settings import OPERATOR

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
    for identity, secret in service.identities().items():
        if same_secret(credentials.credentials, secret):
            authorize = getattr(service, "authorize", None)
            return identity if authorize is None else str(authorize(request, identity))
    raise Unauthorized("the bearer token is not valid for this service")


Caller = Annotated[str, Depends(authenticate)]


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
