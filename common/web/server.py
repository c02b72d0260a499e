"""The HTTP server every service runs: uvicorn, with the limits a service on a network needs.

* A TLS handshake must finish within ``tls_handshake_timeout`` seconds, and a request's headers
  must arrive within ``header_timeout`` seconds of the connection (or of the previous response):
  a client that opens connections and sends nothing, or its headers a byte at a time, is cut off.
* At most ``max_connections`` connections at once; beyond, uvicorn answers 503.
* Idle keep-alive connections close after ``keep_alive_timeout`` seconds, and a shutdown waits at
  most ``shutdown_timeout`` seconds for requests in flight, whatever peers keep open.
* The names of the verified client certificate (mutual TLS) reach the app in the request's state
  (``request.state.tls_client_names``), so that a token can be bound to one certificate
  (:func:`common.web.security.check_certificate`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from common.web.settings import ServiceSettings

log = logging.getLogger("data_appraisal.web")


def certificate_names(transport: asyncio.BaseTransport) -> list[str]:
    """The DNS names and IP addresses of the peer's verified certificate (none without one)."""
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return []
    certificate = ssl_object.getpeercert() or {}
    names = [
        str(value)
        for kind, value in certificate.get("subjectAltName", ())
        if kind in ("DNS", "IP Address")
    ]
    for rdn in certificate.get("subject", ()):
        names += [str(value) for key, value in rdn if key == "commonName" and value not in names]
    return names


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on request headers and the client's certificate
    names in each request's state."""

    header_timeout = 10.0  # set per server by serve()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        names = certificate_names(transport)
        self.app_state = {**self.app_state, "tls_client_names": names}
        self._arm_header_deadline()

    def _arm_header_deadline(self) -> None:
        self._header_deadline = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _headers_too_slow(self) -> None:
        waiting = self.cycle is None or self.cycle.response_complete
        if waiting and not self.transport.is_closing():
            log.info(
                "closing a connection from %s: no request within %g s",
                self.client,
                self.header_timeout,
            )
            self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._header_deadline.cancel()
            self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._header_deadline.cancel()
        super().connection_lost(exc)


class Server(uvicorn.Server):
    """uvicorn's server with a deadline on TLS handshakes."""

    tls_handshake_timeout = 10.0

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        loop = asyncio.get_running_loop()
        original = loop.create_server
        timeout = self.tls_handshake_timeout

        async def create_server(*args: Any, **kwargs: Any) -> Any:
            if kwargs.get("ssl") is not None:
                kwargs.setdefault("ssl_handshake_timeout", timeout)
            return await original(*args, **kwargs)

        loop.create_server = create_server  # type: ignore[method-assign]
        try:
            await super().startup(sockets)
        finally:
            del loop.create_server  # the loop's own method again


def serve(app: Any, settings: ServiceSettings, tls: dict[str, Any], *, log_level: str) -> None:
    """Run ``app`` with the service's limits (see the module docstring); ``tls``: uvicorn's TLS
    arguments (:func:`common.web.tls.uvicorn_ssl_kwargs`)."""
    protocol = type(
        "ServiceH11Protocol", (GuardedH11Protocol,), {"header_timeout": settings.header_timeout}
    )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level.lower(),
        log_config=None,  # the logging common.web.logs.configure set up
        access_log=settings.access_log != "off",
        http=protocol,
        loop="asyncio",
        limit_concurrency=settings.max_connections,
        timeout_keep_alive=int(settings.keep_alive_timeout),
        timeout_graceful_shutdown=int(settings.shutdown_timeout),
        **tls,
    )
    server = Server(config)
    server.tls_handshake_timeout = settings.tls_handshake_timeout
    server.run()
