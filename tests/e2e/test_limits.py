"""The services' limits against a slow or idle client, on the real uvicorn servers: a connection
that never starts its TLS handshake, or sends its headers too slowly, is closed at its deadline
(the shared stack sets both to 4 s); a request without a token is answered 401 before its body is
read."""

from __future__ import annotations

import socket
import ssl
import time

import pytest

from common.cli.stack import Stack

pytestmark = pytest.mark.mpc
DEADLINE = 4.0  # HEADER_TIMEOUT and TLS_HANDSHAKE_TIMEOUT in common/cli/stack.py
SLACK = 6.0


def _address(stack: Stack) -> tuple[str, int]:
    host, port = stack.data_owner.url.removeprefix("https://").split(":")
    return host, int(port)


def _closed_within(sock: socket.socket, seconds: float) -> float:
    """Seconds until the server closed ``sock`` (reading returns nothing or the TLS layer ends)."""
    sock.settimeout(seconds)
    start = time.monotonic()
    try:
        while sock.recv(4096):
            pass
    except (ConnectionResetError, ssl.SSLError, ssl.SSLEOFError):
        pass
    except TimeoutError:
        pytest.fail(f"the server kept an idle connection open for more than {seconds:g} s")
    return time.monotonic() - start


def test_a_connection_without_a_tls_hello_is_closed(service_stack: Stack) -> None:
    with socket.create_connection(_address(service_stack), timeout=5) as raw:
        assert _closed_within(raw, DEADLINE + SLACK) >= DEADLINE - 1  # not at once, not never


def test_slow_headers_are_cut_off(service_stack: Stack) -> None:
    tls = service_stack.data_owner.tls
    assert tls is not None
    context = tls.context()
    host, port = _address(service_stack)
    with (
        socket.create_connection((host, port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=host) as sock,
    ):
        sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        assert _closed_within(sock, DEADLINE + SLACK) >= DEADLINE - 1


def test_a_complete_request_on_a_kept_connection_still_works(service_stack: Stack) -> None:
    """The header deadline re-arms after each response: a keep-alive client is not cut off."""
    with service_stack.data_owner.client() as client:
        for _ in range(3):
            assert client.get("/v1/health").status_code == 200
            time.sleep(1)
        assert client.get("/v1/datasets").status_code == 200


def test_a_stranger_gets_401_before_its_body_is_read(service_stack: Stack) -> None:
    """No token, or a wrong one: 401, however malformed or large the body."""
    with service_stack.model_owner.client() as client:
        for headers in ({}, {"Authorization": "Bearer wrong-token-of-sufficient-length-000"}):
            response = client.post(
                "/v1/sessions",
                content=b"{not json" * 100,
                headers={**headers, "Authorization": headers.get("Authorization", "")},
            )
            assert response.status_code == 401, response.text
            assert response.json()["error"] == "Unauthorized"
