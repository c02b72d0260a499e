"""A failed TLS connection names its cause: no client certificate, the wrong CA, a name mismatch.

Against real uvicorn services on 127.0.0.1: the shared stack (mutual TLS, its private CA) and one
more dealer of another CA, made with ``certs ca``/``certs request``/``certs sign``, whose
certificate names only ``dealer.example.org``. The causes are checked where an operator or a
service meets them: ``appraise`` (the typed client), a service's call to a peer, and a session's
reason.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from common.cli import app
from common.cli.stack import Service, Stack, start_service, stop_service, wait_healthy
from common.client import ModelOwnerClient
from common.errors import PeerUnavailable
from common.runtime.supervisor import free_port
from common.web.peers import peer_call
from common.web.tls import (
    CertificateAuthority,
    ClientTLS,
    Pki,
    peer_client,
    sign_request,
    write_ca,
    write_request,
)
from model_owner.settings import ModelOwnerSettings


@dataclass(frozen=True)
class Named:
    service: Service
    ca: CertificateAuthority
    operator: ClientTLS  # a client certificate of that CA


@pytest.fixture(scope="module")
def named(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Named]:
    """A dealer whose certificate (from a deployment CA of its own) names dealer.example.org."""
    work = tmp_path_factory.mktemp("named-dealer")
    ca = write_ca(work / "ca")
    keys: dict[str, Path] = {}
    certs: dict[str, Path] = {}
    for name in ("dealer.example.org", "operator"):
        made = write_request(work / name, name)
        signed = sign_request(made.request, ca_cert=ca.cert, ca_key=ca.key, out=work / "signed")
        keys[name], certs[name] = made.key, signed.cert
    token = secrets.token_urlsafe(32)
    env = {
        "DEALER_API_TOKEN": token,
        "DEALER_MODEL_OWNERS": json.dumps({"model-owner": {"token": secrets.token_urlsafe(32)}}),
        "DEALER_STATE_DIR": str(work / "state"),
        "DEALER_TLS_CERT": str(certs["dealer.example.org"]),
        "DEALER_TLS_KEY": str(keys["dealer.example.org"]),
        "DEALER_TLS_CA": str(ca.cert),
    }
    operator = ClientTLS(ca=ca.cert, cert=certs["operator"], key=keys["operator"])
    service = start_service("dealer", free_port(), env, work, token, tls=operator)
    try:
        unnamed = operator.context()
        unnamed.check_hostname = False  # it answers at 127.0.0.1, which its certificate omits
        wait_healthy(service, verify=unnamed)
        yield Named(service, ca, operator)
    finally:
        stop_service(service)


def client_error(url: str, token: str, tls: ClientTLS | ssl.SSLContext) -> str:
    with (
        ModelOwnerClient(url, token, tls=tls) as client,
        pytest.raises(PeerUnavailable) as failed,
    ):
        client.sessions()
    return str(failed.value)


# --------------------------------------------------------------------------------------------
# The operator's client
# --------------------------------------------------------------------------------------------


def test_the_client_names_a_missing_client_certificate(stack: Stack, pki: Pki) -> None:
    mo = stack.model_owner
    message = client_error(mo.url, mo.token, ClientTLS(ca=pki.ca))
    assert message.startswith(f"the model owner at {mo.url} did not answer: no client certificate")
    assert "requires one (mutual TLS) and this side presented none" in message
    # what used to be all there was to read is still there, after the cause
    assert "Server disconnected without sending a response" in message


def test_the_client_names_a_client_certificate_of_another_ca(
    stack: Stack, pki: Pki, rogue: Pki
) -> None:
    mo = stack.model_owner
    tls = ClientTLS(ca=pki.ca, cert=rogue.cert("operator"), key=rogue.key("operator"))
    message = client_error(mo.url, mo.token, tls)
    assert "wrong CA" in message and "refused this side's client certificate" in message
    assert f"not by the CA={pki.ca}" in message, message


def test_the_client_names_a_server_of_another_ca(stack: Stack, pki: Pki, rogue: Pki) -> None:
    mo = stack.model_owner
    operator = pki.client("operator")
    tls = ClientTLS(ca=rogue.ca, cert=operator.cert, key=operator.key)
    message = client_error(mo.url, mo.token, tls)
    assert "wrong CA: the certificate of 127.0.0.1:" in message
    assert f"was not issued by the CA this side trusts (the CA={rogue.ca})" in message
    assert "CERTIFICATE_VERIFY_FAILED" in message


def test_the_client_names_a_name_mismatch_and_the_names_the_certificate_has(
    named: Named,
) -> None:
    service = named.service
    message = client_error(service.url, service.token, named.operator)
    assert "name mismatch: the certificate of 127.0.0.1:" in message
    assert "does not name 127.0.0.1 (it is valid for dealer.example.org)" in message, message


def test_appraise_names_the_cause_and_its_own_options(stack: Stack, pki: Pki) -> None:
    """What `appraise` prints without --tls-cert against a model owner that requires one."""
    args = ["appraise", "--model-owner", stack.model_owner.url]
    args += ["--data-owner", stack.data_owner.url, "--dataset", "candidate_01"]
    args += ["--tls-ca", str(pki.ca)]
    result = CliRunner().invoke(app, args, env={"DATA_APPRAISAL_TOKEN": stack.model_owner.token})
    assert result.exit_code == 1, result.output
    assert "no client certificate" in result.stderr
    assert "set --tls-cert and --tls-key" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------------------------
# A service's calls to its peers
# --------------------------------------------------------------------------------------------


def peer_error(settings: ModelOwnerSettings, url: str, token: str) -> str:
    async def call() -> None:
        async with peer_client(settings) as http:
            await peer_call(http, "GET", url, SecretStr(token))

    with pytest.raises(PeerUnavailable) as failed:
        asyncio.run(call())
    return str(failed.value)


def test_a_peer_call_names_the_settings_to_fix(
    stack: Stack, pki: Pki, rogue: Pki, tmp_path: Path
) -> None:
    url = f"{stack.dealer.url}/v1/sessions"
    token = stack.dealer.token
    anonymous = ModelOwnerSettings(state_dir=tmp_path, tls_ca=pki.ca)
    message = peer_error(anonymous, url, token)
    assert f"{url} did not answer: no client certificate" in message
    assert "set MODEL_OWNER_TLS_CERT and MODEL_OWNER_TLS_KEY" in message
    impostor = ModelOwnerSettings(
        state_dir=tmp_path,
        tls_ca=pki.ca,
        tls_cert=rogue.cert("model-owner"),
        tls_key=rogue.key("model-owner"),
    )
    message = peer_error(impostor, url, token)
    assert f"client certificate MODEL_OWNER_TLS_CERT={rogue.cert('model-owner')}" in message
    assert f"not by MODEL_OWNER_TLS_CA={pki.ca}" in message
    # a peer that is simply not there is not a TLS problem, and is not called one
    message = peer_error(anonymous, f"https://127.0.0.1:{free_port()}/v1/sessions", token)
    assert "ConnectError" in message and "certificate" not in message


def test_a_session_refused_by_tls_says_why_in_its_reason(
    stack: Stack, named: Named, tmp_path: Path
) -> None:
    """A model owner configured with a 'data owner' whose certificate is of another CA cannot
    describe its data sets: the session ends at once, and its reason names the cause and the
    model owner's CA setting."""
    env = {
        **stack.model_owner.env,
        "MODEL_OWNER_DATA_OWNERS": json.dumps(
            {"other-ca": {"url": named.service.url, "token": secrets.token_urlsafe(32)}}
        ),
        "MODEL_OWNER_STATE_DIR": str(tmp_path / "state"),
    }
    port = free_port()
    mo = start_service("model-owner", port, env, tmp_path, stack.model_owner.token)
    try:
        wait_healthy(mo)
        body = {"data_owner_url": named.service.url, "datasets": ["candidate_01"]}
        with mo.client() as c:
            response = c.post("/v1/sessions", json=body)
    finally:
        stop_service(mo)
    assert response.status_code == 201, response.text
    view = response.json()
    assert view["state"] == "expired", view
    assert "wrong CA: the certificate of 127.0.0.1:" in view["reason"], view["reason"]
    assert "MODEL_OWNER_TLS_CA=" in view["reason"]
