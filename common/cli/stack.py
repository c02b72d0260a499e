"""The three services on loopback, each its own process: the demo's and the end-to-end tests'.

:func:`local_stack` starts the dealer, the data owner and the model owner as separate uvicorn
processes (``python -m common.cli <service> serve``) with fresh random tokens passed in their
environment, waits until each answers its health check, and stops all three afterwards (SIGTERM,
then SIGKILL after a grace period); each service stops its own workers when it shuts down. By default
the stack issues a private CA and a certificate per service into ``<workdir>/tls`` and every REST
call, the services' own and the operator's, is HTTPS with mutual TLS (the demo's self-signed path).
The client that talks to them is :mod:`common.client`.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from common.errors import AppraisalError, PeerTimeout
from common.runtime.supervisor import free_port
from common.web.schemas import API_PREFIX
from common.web.tls import ClientTLS, Pki, write_demo_pki

GRACE_SECONDS = 10.0
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Service:
    name: str
    url: str
    token: str  # the operator token
    process: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str] = field(repr=False)
    tls: ClientTLS | None = field(default=None, repr=False)  # the operator's client, for https

    def verify(self) -> ssl.SSLContext | bool:
        """httpx's ``verify`` for this service: the stack's CA and the operator's certificate."""
        return True if self.tls is None else self.tls.context()

    def client_env(self) -> dict[str, str]:
        """The variables with which ``data-appraisal appraise`` reaches this service."""
        if self.tls is None:
            return {}
        pairs = {"CA": self.tls.ca, "CERT": self.tls.cert, "KEY": self.tls.key}
        return {f"DATA_APPRAISAL_TLS_{k}": str(v) for k, v in pairs.items() if v is not None}

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def client(self, timeout: float = 30.0) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=timeout,
            verify=self.verify(),
        )


@dataclass
class Stack:
    model_owner: Service
    data_owner: Service
    dealer: Service
    workdir: Path
    pki: Pki | None = None  # the stack's private CA and certificates (None: plain HTTP)

    @property
    def services(self) -> list[Service]:
        return [self.dealer, self.data_owner, self.model_owner]


def operator_tls(name: str, env: dict[str, str]) -> ClientTLS | None:
    """The operator's client TLS for a service started with ``env`` (None: it serves plain HTTP).

    The operator's certificate is the one :func:`local_stack` issues beside the CA (``operator``).
    """
    prefix = PREFIXES[name]
    if not env.get(f"{prefix}TLS_CERT"):
        return None
    ca = env.get(f"{prefix}TLS_CA")
    if ca is None:
        return ClientTLS()
    pki = Pki(Path(ca).parent, (), written=False)
    return pki.client("operator") if pki.cert("operator").exists() else ClientTLS(ca=Path(ca))


def _pythonpath() -> str:
    """This checkout first, so that a service started in its own directory imports this code."""
    return os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))


def start_service(
    name: str,
    port: int,
    env: dict[str, str],
    workdir: Path,
    token: str,
    tls: ClientTLS | None = None,
) -> Service:
    """Start ``data-appraisal <name> serve`` as its own process; secrets only in its environment.

    It serves HTTPS if ``env`` sets its certificate; ``tls`` (default: :func:`operator_tls`) is how
    the operator's client reaches it.
    """
    log_path = workdir / f"{name}.log"
    tls = tls or operator_tls(name, env)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "common.cli", name, "serve", "--port", str(port)],
            env={**os.environ, **env, "PYTHONPATH": _pythonpath()},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=str(workdir),
        )
    scheme = "http" if tls is None else "https"
    return Service(name, f"{scheme}://127.0.0.1:{port}", token, process, log_path, env, tls)


def wait_healthy(
    service: Service, deadline_seconds: float = 90.0, *, verify: ssl.SSLContext | None = None
) -> None:
    """Wait until ``service`` answers its health check (checked with ``verify``, else the
    operator's :meth:`Service.verify`)."""
    end = time.monotonic() + deadline_seconds
    checked: ssl.SSLContext | bool = service.verify() if verify is None else verify
    last: Exception | None = None
    while time.monotonic() < end:
        if service.process.poll() is not None:
            raise AppraisalError(
                f"the {service.name} service exited with status {service.process.returncode}:\n"
                f"{service.log_tail()}"
            )
        try:
            health = httpx.get(f"{service.url}{API_PREFIX}/health", timeout=2, verify=checked)
            if health.status_code == 200:
                return
        except httpx.HTTPError as exc:
            last = exc
            if isinstance(exc, httpx.ConnectError) and "CERTIFICATE" in str(exc).upper():
                raise AppraisalError(
                    f"the {service.name} service's TLS certificate was refused: {exc}"
                ) from exc
        time.sleep(0.2)
    raise PeerTimeout(
        f"the {service.name} service did not answer within {deadline_seconds:g} s"
        + ("" if last is None else f" (last error: {last})")
    )


def stop_service(service: Service, grace: float = GRACE_SECONDS) -> None:
    """SIGTERM (uvicorn shuts down and the service stops its workers), SIGKILL after ``grace``."""
    if service.process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(service.process.pid, signal.SIGTERM)
        try:
            service.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(service.process.pid, signal.SIGKILL)
            service.process.wait()


def stack_env(
    workdir: Path,
    *,
    train: Path,
    test: Path,
    data_dir: Path,
    ports: dict[str, int],
    pki: Pki | None = None,
) -> dict[str, dict[str, str]]:
    """Each service's environment: fresh random tokens (one per relationship), its own state
    directory, loopback URLs; with ``pki``, its certificate, key and the CA (mutual TLS), https
    URLs, and each peer's token bound to its certificate's name."""
    token = lambda: secrets.token_urlsafe(32)  # noqa: E731 - 43 characters, 32 random bytes
    mo_api, do_api, dealer_api = token(), token(), token()
    mo_at_do, mo_at_dealer, do_at_dealer = token(), token(), token()
    base = random.randrange(20000, 29000, 100)  # rendezvous range; the pool skips ports in use
    common = {
        "RENDEZVOUS_TIMEOUT": "60",
        "COMPUTE_TIMEOUT": "1800",
        "HEADER_TIMEOUT": "4",  # loopback clients send their headers at once
        "TLS_HANDSHAKE_TIMEOUT": "4",
    }
    scheme = "http" if pki is None else "https"
    url = {name: f"{scheme}://127.0.0.1:{port}" for name, port in ports.items()}

    def tls(name: str) -> dict[str, str]:
        if pki is None:
            return {}
        files = {"TLS_CERT": pki.cert(name), "TLS_KEY": pki.key(name), "TLS_CA": pki.ca}
        return {f"{PREFIXES[name]}{k}": str(v) for k, v in files.items()}

    def peer(secret: str, certificate: str, **more: object) -> dict[str, object]:
        bound = {} if pki is None else {"certificate": certificate}
        return {"token": secret, **bound, **more}

    envs = {
        "dealer": {
            "DEALER_API_TOKEN": dealer_api,
            "DEALER_MODEL_OWNERS": json.dumps({"model-owner": peer(mo_at_dealer, "model-owner")}),
            "DEALER_DATA_OWNERS": json.dumps({"data-owner": peer(do_at_dealer, "data-owner")}),
            "DEALER_STATE_DIR": str(workdir / "dealer"),
            **{f"DEALER_{k}": v for k, v in common.items()},
        },
        "data-owner": {
            "DATA_OWNER_API_TOKEN": do_api,
            "DATA_OWNER_MODEL_OWNERS": json.dumps(
                {
                    "model-owner": peer(
                        mo_at_do,
                        "model-owner",
                        callback_url=url["model-owner"],
                        rendezvous_hosts=["127.0.0.1"],
                    )
                }
            ),
            "DATA_OWNER_DEALERS": json.dumps(
                {"dealer": {"url": url["dealer"], "token": do_at_dealer}}
            ),
            "DATA_OWNER_STATE_DIR": str(workdir / "data_owner"),
            "DATA_OWNER_DATA_DIR": str(data_dir),
            **{f"DATA_OWNER_{k}": v for k, v in common.items()},
        },
        "model-owner": {
            "MODEL_OWNER_API_TOKEN": mo_api,
            "MODEL_OWNER_DATA_OWNERS": json.dumps(
                {"data-owner": {"url": url["data-owner"], "token": mo_at_do}}
            ),
            "MODEL_OWNER_DEALER_TOKEN": mo_at_dealer,
            "MODEL_OWNER_DEALER_URL": url["dealer"],
            "MODEL_OWNER_STATE_DIR": str(workdir / "model_owner"),
            "MODEL_OWNER_TRAIN": str(train),
            "MODEL_OWNER_TEST": str(test),
            "MODEL_OWNER_RENDEZVOUS_PORTS": f"{base}-{base + 99}",
            **{f"MODEL_OWNER_{k}": v for k, v in common.items()},
        },
    }
    return {name: {**env, **tls(name)} for name, env in envs.items()}


PREFIXES = {"dealer": "DEALER_", "data-owner": "DATA_OWNER_", "model-owner": "MODEL_OWNER_"}
TOKEN_VARS = {name: f"{prefix}API_TOKEN" for name, prefix in PREFIXES.items()}


@contextlib.contextmanager
def local_stack(
    workdir: Path, *, train: Path, test: Path, data_dir: Path, tls: bool = True
) -> Iterator[Stack]:
    """The dealer, the data owner and the model owner, each its own process, on loopback.

    With ``tls`` (the default) a fresh private CA and certificates for the three services and the
    operator are written to ``<workdir>/tls``, and every call is HTTPS with mutual TLS.
    """
    # the services run in their own directory: every path they are given is absolute
    workdir, train, test, data_dir = (
        p.expanduser().resolve() for p in (workdir, train, test, data_dir)
    )
    workdir.mkdir(parents=True, exist_ok=True)
    ports = {name: free_port() for name in TOKEN_VARS}
    pki = write_demo_pki(workdir / "tls", overwrite=True) if tls else None
    envs = stack_env(workdir, train=train, test=test, data_dir=data_dir, ports=ports, pki=pki)
    started: dict[str, Service] = {}
    stack: Stack | None = None
    try:
        for name in ("dealer", "data-owner", "model-owner"):
            env = envs[name]
            started[name] = start_service(name, ports[name], env, workdir, env[TOKEN_VARS[name]])
        for service in started.values():
            wait_healthy(service)
        stack = Stack(
            started["model-owner"], started["data-owner"], started["dealer"], workdir, pki
        )
        yield stack
    finally:
        # a caller may have restarted a service: stop what the stack holds now, and what it started
        current = [] if stack is None else list(reversed(stack.services))
        for service in [*current, *reversed(list(started.values()))]:
            stop_service(service)
