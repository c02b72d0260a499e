"""Calls from one service to another: one request helper, one error detail, one end notice."""

from __future__ import annotations

import logging
from typing import Any

import httpx
from pydantic import SecretStr

from common.errors import PeerUnavailable
from common.web.schemas import API_PREFIX, SessionState, SessionView
from common.web.tls import explain_peer_error

log = logging.getLogger("data_appraisal.web")


async def peer_call(
    http: httpx.AsyncClient, method: str, url: str, token: SecretStr | str, body: Any = None
) -> httpx.Response:
    """One REST call to another service; a transport failure (refused, timed out, TLS) is
    :class:`PeerUnavailable`. A refusal to send the token in clear (PlainHTTPRefused, raised by
    the client's own guard) is not a transport failure and passes through."""
    secret = token.get_secret_value() if isinstance(token, SecretStr) else token
    try:
        return await http.request(
            method, url, json=body, headers={"Authorization": f"Bearer {secret}"}
        )
    except httpx.HTTPError as exc:
        detail = await explain_peer_error(http, exc, url)
        raise PeerUnavailable(f"{url} did not answer: {detail}") from None


def peer_detail(response: httpx.Response) -> str:
    """The peer's error detail (its ErrorBody), or the status line if it sent none."""
    try:
        body = response.json()
        return f"{body['error']}: {body['detail']}"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}"


async def notify_peer(
    http: httpx.AsyncClient, base_url: str, token: SecretStr | str, view: SessionView, me: str
) -> None:
    """Tell a peer that this side of a session ended without completing (best effort)."""
    outcome = (
        view.state if view.state in (SessionState.FAILED, SessionState.EXPIRED) else "cancelled"
    )
    body = {"reason": f"{me}'s side {view.state.value}: {view.reason}"[:2000], "outcome": outcome}
    url = f"{base_url.rstrip('/')}{API_PREFIX}/sessions/{view.id}/cancel"
    try:
        response = await peer_call(http, "POST", url, token, body)
    except PeerUnavailable as exc:
        log.warning("could not tell the peer that session %s ended: %s", view.id, exc)
        return
    if response.status_code == 401 and view.role == "data_owner":
        # the model owner's one-session callback token ends with its session: it ended first
        log.info("the model owner had already ended session %s", view.id)
    elif response.status_code not in (200, 404, 409):  # 409: the peer had finished already
        log.warning("the peer refused the end of session %s: %s", view.id, peer_detail(response))
