"""TLS between the services: real uvicorn processes on 127.0.0.1 with the stack's private CA.

One stack (dealer, data owner, model owner; mutual TLS) serves every test of this module; no MPC
worker is started: the only session opened is refused during negotiation.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import ssl
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from common.cli.stack import ROOT, Service, Stack, start_service, stop_service, wait_healthy
from common.errors import AppraisalError, ConfigError, PeerUnavailable, PlainHTTPRefused
from common.runtime.supervisor import free_port
from common.web.peers import peer_call
from common.web.tls import (
    ClientTLS,
    Pki,
    check_transport,
    client_context,
    peer_client,
    uvicorn_ssl_kwargs,
)
from dealer.settings import DealerSettings
from model_owner.settings import ModelOwnerSettings

HEALTH = "/v1/health"


def get(service: Service, verify: ssl.SSLContext | bool, path: str = HEALTH, **kw: str) -> int:
    headers = {"Authorization": f"Bearer {kw['token']}"} if "token" in kw else {}
    url = kw.get("url", service.url)
    return httpx.get(f"{url}{path}", verify=verify, headers=headers, timeout=10).status_code


# --------------------------------------------------------------------------------------------
# Inbound: what each service accepts
# --------------------------------------------------------------------------------------------


def test_every_service_serves_https_with_mutual_tls(stack: Stack, pki: Pki) -> None:
    operator = pki.client("operator").context()
    for service in stack.services:
        assert service.url.startswith("https://127.0.0.1:"), service.url
        assert get(service, operator) == 200
        assert get(service, operator, "/v1/sessions", token=service.token) == 200
        # the certificate is valid for localhost too
        port = service.url.rsplit(":", 1)[1]
        assert get(service, operator, url=f"https://localhost:{port}") == 200
        # a certificate is not a token: the bearer token is still required
        assert get(service, operator, "/v1/sessions") == 401


def test_plain_http_to_a_tls_service_fails(stack: Stack) -> None:
    for service in stack.services:
        with pytest.raises(httpx.TransportError):
            httpx.get(service.url.replace("https://", "http://") + HEALTH, timeout=10)


def test_a_client_that_does_not_trust_the_ca_fails_verification(
    stack: Stack, pki: Pki, rogue: Pki
) -> None:
    operator = pki.client("operator")
    system_store = ClientTLS(ca=None, cert=operator.cert, key=operator.key).context()
    other_ca = ClientTLS(ca=rogue.ca, cert=operator.cert, key=operator.key).context()
    for verify in (system_store, other_ca):
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            get(stack.dealer, verify)


@pytest.mark.parametrize("client", ["no certificate", "another CA's certificate"])
def test_mutual_tls_refuses_a_client_without_a_certificate_of_the_ca(
    stack: Stack, pki: Pki, rogue: Pki, client: str
) -> None:
    if client == "no certificate":
        verify = client_context(pki.ca)
    else:  # trusts the right CA, presents a certificate with the right name from the wrong one
        verify = client_context(pki.ca, rogue.cert("operator"), rogue.key("operator"))
    operator = pki.client("operator").context()
    for service in stack.services:
        with pytest.raises(httpx.TransportError):  # the server ends the handshake
            get(service, verify, "/v1/sessions", token=service.token)
        assert get(service, operator, "/v1/sessions", token=service.token) == 200  # the control


def test_a_token_bound_to_a_certificate_name_is_refused_with_another_certificate(
    stack: Stack, pki: Pki
) -> None:
    """The model owner's token at the data owner is bound to the name "model-owner": presented
    with the data owner's own (valid, same-CA) certificate, as a party that copied the token
    would, it is refused (403, naming both names); with the model owner's certificate it works."""
    (peer,) = json.loads(stack.model_owner.env["MODEL_OWNER_DATA_OWNERS"]).values()
    token = peer["token"]
    for holder, expected in (("data-owner", 403), ("operator", 403), ("model-owner", 200)):
        verify = client_context(pki.ca, pki.cert(holder), pki.key(holder))
        url = f"{stack.data_owner.url}/v1/datasets"
        response = httpx.get(
            url, verify=verify, headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        assert response.status_code == expected, (holder, response.text)
        if expected == 403:
            detail = response.json()["detail"]
            assert "must present a client certificate for 'model-owner'" in detail, detail
            assert f"this connection has {holder}" in detail, detail


# --------------------------------------------------------------------------------------------
# Outbound: how a service calls its peers
# --------------------------------------------------------------------------------------------


def peer_settings(pki: Pki, tmp: Path, **tls: object) -> ModelOwnerSettings:
    base: dict[str, object] = {
        "state_dir": tmp,
        "tls_cert": pki.cert("model-owner"),
        "tls_key": pki.key("model-owner"),
        "tls_ca": pki.ca,
    }
    return ModelOwnerSettings(**{**base, **tls})


async def peer_get(settings: ModelOwnerSettings, url: str, token: str) -> int:
    async with peer_client(settings) as http:
        return (await peer_call(http, "GET", url, SecretStr(token))).status_code


def open_refused_session(stack: Stack) -> None:
    body = {"data_owner_url": stack.data_owner.url, "datasets": ["candidate_99"]}
    with stack.model_owner.client() as c:
        response = c.post("/v1/sessions", json=body)
    assert response.status_code == 201, response.text
    view = response.json()
    assert view["state"] == "rejected", view
    assert "NotFound" in view["reason"] and "candidate_99" in view["reason"], view["reason"]


def test_the_services_negotiate_over_mutual_tls(stack: Stack) -> None:
    """The model owner asks the data owner for a data set's metadata over mutual TLS: the refusal
    comes from the data owner itself, not from a failed connection."""
    open_refused_session(stack)


def test_a_service_verifies_its_peers_against_its_ca(
    stack: Stack, pki: Pki, rogue: Pki, tmp_path: Path
) -> None:
    dealer = stack.dealer
    token = dealer.env["DEALER_API_TOKEN"]
    url = f"{dealer.url}/v1/sessions"
    ok = peer_settings(pki, tmp_path)
    assert asyncio.run(peer_get(ok, url, token)) == 200
    # a peer whose certificate this service's CA did not issue is not called
    wrong_ca = peer_settings(pki, tmp_path, tls_ca=rogue.ca)
    with pytest.raises(PeerUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
        asyncio.run(peer_get(wrong_ca, url, token))
    # without its own certificate the service is refused by a peer that requires mutual TLS
    anonymous = peer_settings(pki, tmp_path, tls_cert=None, tls_key=None)
    with pytest.raises(PeerUnavailable):
        asyncio.run(peer_get(anonymous, url, token))


def test_a_service_never_sends_a_token_over_plain_http_to_another_machine(tmp_path: Path) -> None:
    settings = ModelOwnerSettings(state_dir=tmp_path)
    # this side's own refusal, named as such (not "the peer did not answer")
    with pytest.raises(PlainHTTPRefused, match="refusing to send a bearer token over plain HTTP"):
        asyncio.run(peer_get(settings, "http://dealer.invalid:8002/v1/health", "secret-token"))
    with pytest.raises(PlainHTTPRefused) as refused:
        asyncio.run(peer_get(settings, "http://dealer.invalid:8002/v1/health", "secret-token"))
    assert "secret-token" not in str(refused.value)
    assert not isinstance(refused.value, PeerUnavailable)
    # to this machine it may (the loopback path); nothing listens there, so the call fails later
    with pytest.raises(PeerUnavailable) as failed:
        asyncio.run(peer_get(settings, f"http://127.0.0.1:{free_port()}/v1/health", "t"))
    assert "plain HTTP" not in str(failed.value)


# --------------------------------------------------------------------------------------------
# Settings: the plain-HTTP policy and start-up errors
# --------------------------------------------------------------------------------------------


def test_no_plain_http_to_the_network_without_consent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    check_transport(DealerSettings(state_dir=tmp_path))  # loopback: plain HTTP is fine
    for demo in (False, True):  # --demo does not change it
        exposed = DealerSettings(state_dir=tmp_path, host="0.0.0.0", demo=demo)
        with pytest.raises(ConfigError, match="DEALER_TLS_CERT") as refused:
            check_transport(exposed)
        assert "DEALER_INSECURE_HTTP" in str(refused.value)
    with caplog.at_level(logging.WARNING, logger="data_appraisal.tls"):
        check_transport(DealerSettings(state_dir=tmp_path, host="0.0.0.0", insecure_http=True))
    assert "PLAIN HTTP" in caplog.text


def test_tls_settings_must_be_complete(tmp_path: Path, pki: Pki) -> None:
    cert, key = pki.cert("dealer"), pki.key("dealer")
    with pytest.raises(ConfigError, match="DEALER_TLS_KEY is unset"):
        check_transport(DealerSettings(state_dir=tmp_path, tls_cert=cert))
    no_ca = DealerSettings(state_dir=tmp_path, host="0.0.0.0", tls_cert=cert, tls_key=key)
    with pytest.raises(ConfigError, match="DEALER_TLS_CA"):
        check_transport(no_ca)
    bearer_only = no_ca.model_copy(update={"tls_client_auth": "none"})
    kwargs = uvicorn_ssl_kwargs(bearer_only)
    assert kwargs["ssl_cert_reqs"] == ssl.CERT_NONE and "ssl_ca_certs" not in kwargs
    mutual = no_ca.model_copy(update={"tls_ca": pki.ca})
    assert uvicorn_ssl_kwargs(mutual)["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    wrong_key = mutual.model_copy(update={"tls_key": pki.key("operator")})
    with pytest.raises(ConfigError, match="is not the key of DEALER_TLS_CERT"):
        uvicorn_ssl_kwargs(wrong_key)


def test_a_missing_key_file_fails_at_start_up_naming_it(stack: Stack, tmp_path: Path) -> None:
    env = {**stack.dealer.env, "DEALER_STATE_DIR": str(tmp_path / "state")}
    missing = tmp_path / "nowhere" / "dealer.key"
    env["DEALER_TLS_KEY"] = str(missing)
    service = start_service("dealer", free_port(), env, tmp_path, stack.dealer.token)
    try:
        assert service.process.wait(timeout=60) == 1
    finally:
        stop_service(service)
    log = service.log_path.read_text()
    assert f"DEALER_TLS_KEY: no such file {missing}" in log, log
    assert "Traceback" not in log


# --------------------------------------------------------------------------------------------
# Secrets: never on a command line, never in a log
# --------------------------------------------------------------------------------------------


def secrets_of(service: Service) -> list[str]:
    """Every token in the service's environment (JSON maps of tokens included)."""
    out = []
    for var, value in service.env.items():
        if not var.endswith(("_TOKEN", "_TOKENS")):
            continue
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        out += list(parsed.values()) if isinstance(parsed, dict) else [value]
    assert out, f"no token in the {service.name}'s environment"
    return out


def test_tokens_and_keys_never_appear_on_argv_or_in_the_logs(stack: Stack, pki: Pki) -> None:
    # calls that carry every kind of token: the operator's, the model owner's at its peers (the
    # negotiation), and wrong ones
    open_refused_session(stack)
    for service in stack.services:
        with service.client() as c:
            assert c.get("/v1/sessions").status_code == 200
            wrong = c.get("/v1/sessions", headers={"Authorization": "Bearer wrong-token"})
            assert wrong.status_code == 401
    time.sleep(0.3)  # the access log lines of the last requests
    for service in stack.services:
        cmdline = Path(f"/proc/{service.process.pid}/cmdline").read_bytes().decode()
        log = service.log_path.read_text()
        assert "https://127.0.0.1:" in log  # the log is the service's own
        key = pki.key(service.name).read_text().strip().splitlines()[1]
        for secret in [*secrets_of(service), key]:
            assert secret not in cmdline, f"{service.name}: a secret on its command line"
            assert secret not in log, f"{service.name}: a secret in its log"
        assert "wrong-token" not in log


# --------------------------------------------------------------------------------------------
# The demo CA and `data-appraisal certs`
# --------------------------------------------------------------------------------------------


def test_certs_command_writes_a_ca_and_keeps_a_valid_set(tmp_path: Path) -> None:
    out = tmp_path / "tls"

    def certs(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "common.cli", "certs", "--out", str(out), *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )

    first = certs("--name", "dealer", "--name", "operator")
    assert first.returncode == 0, first.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "ca.pem",
        "dealer.key",
        "dealer.pem",
        "operator.key",
        "operator.pem",
    ]
    for path in out.iterdir():
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o600 if path.suffix == ".key" else 0o644), (path, oct(mode))
    ca = (out / "ca.pem").read_bytes()
    again = certs("--name", "dealer", "--name", "operator")
    assert again.returncode == 0 and "kept" in again.stderr, again.stderr
    assert (out / "ca.pem").read_bytes() == ca  # a restart keeps the certificates
    partial = certs("--name", "dealer", "--name", "data-owner")
    assert partial.returncode == 1 and "--overwrite" in partial.stderr
    fresh = certs("--name", "dealer", "--overwrite", "--ca-key", str(tmp_path / "ca.key"))
    assert fresh.returncode == 0, fresh.stderr
    assert (out / "ca.pem").read_bytes() != ca
    assert stat.S_IMODE((tmp_path / "ca.key").stat().st_mode) == 0o600
    assert not list(out.glob("ca*.key")), "the CA's key must not be in the services' directory"
    # the set verifies: a server context of the dealer, a client context of the CA
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(out / "dealer.pem", out / "dealer.key")
    client_context(out / "ca.pem", out / "dealer.pem", out / "dealer.key")


def test_appraise_command_verifies_the_model_owner(stack: Stack) -> None:
    """`appraise` reaches the model owner with the CA and client certificate from its
    environment; without them it fails verification, with one error line."""
    env = {**os.environ, "DATA_APPRAISAL_TOKEN": stack.model_owner.token}
    command = [sys.executable, "-m", "common.cli", "appraise"]
    command += ["--model-owner", stack.model_owner.url, "--data-owner", stack.data_owner.url]
    command += ["--dataset", "candidate_99"]

    def run(extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            command,
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )

    refused = run(stack.model_owner.client_env())  # verified, then refused by the data owner
    assert refused.returncode == 1 and "candidate_99" in refused.stderr, refused.stderr
    untrusted = run({})
    assert untrusted.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr
    assert "Traceback" not in untrusted.stderr


def test_waiting_for_a_service_names_a_refused_certificate(
    stack: Stack, pki: Pki, rogue: Pki
) -> None:
    """A stack whose client does not trust the service fails at once, naming TLS, not after 90 s."""
    operator = pki.client("operator")
    untrusting = dataclasses.replace(
        stack.dealer, tls=ClientTLS(ca=rogue.ca, cert=operator.cert, key=operator.key)
    )
    start = time.monotonic()
    with pytest.raises(AppraisalError, match="TLS certificate was refused"):
        wait_healthy(untrusting, deadline_seconds=30)
    assert time.monotonic() - start < 10
