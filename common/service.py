"""What the three services share: settings, bearer auth, the error shape, and worker supervision.

Each service (model owner, data owner, dealer) is a FastAPI app built by :func:`build_app`, which
adds the health route, the session routes (list, get, cancel), one error shape for every failure and
a request-size limit. A :class:`SessionManager` records sessions in SQLite and runs each session's
worker process under a supervisor task: it starts the worker (a new process session, its secrets in a
0600 file named in its environment), follows its progress, enforces the rendezvous and compute
deadlines, stops it with SIGTERM then SIGKILL on cancel or shutdown, and stores the outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import httpx
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.errors import AppraisalError, ConfigError
from common.launcher import Party, WorkerProgress, party_config, start_party, stop_parties
from common.schemas import (
    API_PREFIX,
    CancelRequest,
    CandidateOutcome,
    Deadlines,
    ErrorBody,
    Health,
    Progress,
    SessionState,
    SessionView,
)
from common.sessions import Conflict, NotFound, SessionStore
from common.worker import JobSpec, PartyConfig

VERSION = "0.1.0"
PLACEHOLDER = "change-me"
OPERATOR = "operator"  # the identity of a service's own API token
log = logging.getLogger("data_appraisal.service")


class Unauthorized(AppraisalError):
    status_code = 401


class Forbidden(AppraisalError):
    status_code = 403


class PayloadTooLarge(AppraisalError):
    status_code = 413


_KIND = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    413: "PayloadTooLarge",
    415: "UnsupportedMediaType",
    422: "ValidationError",
}

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing or wrong bearer token"},
    403: {"model": ErrorBody, "description": "a valid token, but not one allowed on this route"},
    404: {"model": ErrorBody, "description": "no such session or dataset"},
    409: {"model": ErrorBody, "description": "the session is already finished"},
    413: {"model": ErrorBody, "description": "the request body is larger than the limit"},
    422: {"model": ErrorBody, "description": "a malformed or out-of-range request"},
}


class ServiceSettings(BaseSettings):
    """Settings every service has. Each service subclasses this with its own environment prefix."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_token: SecretStr = SecretStr(PLACEHOLDER)
    state_dir: Path = Path("state")
    database: Path | None = None  # default: <state_dir>/sessions.db
    demo: bool = False  # allow placeholder secrets (the local demo only)
    rendezvous_timeout: float = 60.0  # seconds for all parties to meet; also each network wait
    compute_timeout: float = 3600.0  # seconds for the whole computation once the parties met
    negotiation_timeout: float = 10.0  # seconds for each REST call to a peer
    max_request_bytes: int = 1_000_000
    # TLS (common/tls.py): this service's certificate and key (PEM; served, and presented to peers
    # for mutual TLS), and the CA that peers' and clients' certificates must chain to
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None  # unset: peers are verified against the system's trust store
    tls_client_auth: Literal["required", "none"] = "required"  # mutual TLS, or bearer over TLS
    insecure_http: bool = False  # allow plain HTTP off loopback (serving and calling peers)

    @field_validator("tls_cert", "tls_key", "tls_ca", mode="before")
    @classmethod
    def _unset_if_empty(cls, value: Any) -> Any:
        return None if value == "" else value  # an empty variable means unset, not the cwd

    @model_validator(mode="after")
    def _absolute_paths(self) -> ServiceSettings:
        """Every path setting is resolved against the directory the service was started in,
        once, here: the workers run elsewhere and must never see a relative path."""
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, Path):
                object.__setattr__(self, name, value.expanduser().resolve())
        return self

    secret_fields: ClassVar[tuple[str, ...]] = ("api_token",)

    @property
    def database_path(self) -> Path:
        return self.database or self.state_dir / "sessions.db"

    def deadlines(self) -> Deadlines:
        return Deadlines(
            rendezvous_seconds=self.rendezvous_timeout, compute_seconds=self.compute_timeout
        )

    def check_secrets(self) -> None:
        """Refuse to run on a placeholder secret unless this is the local demo."""
        if self.demo:
            return
        for name in self.secret_fields:
            value = getattr(self, name)
            values = value.values() if isinstance(value, dict) else [value]
            if any(v.get_secret_value() in (PLACEHOLDER, "") for v in values):
                env = f"{self.model_config.get('env_prefix', '')}{name.upper()}"
                raise ConfigError(
                    f"{env} is unset or the placeholder {PLACEHOLDER!r}: set a real secret (e.g. "
                    "python -c 'import secrets; print(secrets.token_urlsafe(32))'), or pass --demo "
                    "for a local demo"
                )

    def identities(self) -> dict[str, SecretStr]:
        """Each identity this service accepts, with its bearer token."""
        return {OPERATOR: self.api_token}

    def peer_client(self) -> httpx.AsyncClient:
        """The client this service calls its peers with: TLS verified against ``tls_ca``, this
        service's certificate presented, no bearer token sent in clear (see common/tls.py)."""
        from common.tls import peer_client

        return peer_client(self)


class ServesModelOwners(ServiceSettings):
    """A service that model owners call with their own tokens (the data owner, the dealer)."""

    secret_fields: ClassVar[tuple[str, ...]] = ("api_token", "model_owner_tokens")

    # the model owners this service knows, by name, with the token each presents
    model_owner_tokens: dict[str, SecretStr] = Field(
        default_factory=lambda: {"model-owner": SecretStr(PLACEHOLDER)}
    )

    def identities(self) -> dict[str, SecretStr]:
        return {OPERATOR: self.api_token, **self.model_owner_tokens}


def same_secret(given: str, expected: SecretStr) -> bool:
    return secrets.compare_digest(given.encode(), expected.get_secret_value().encode())


_bearer = HTTPBearer(auto_error=False, description="the service's API token")


def bearer_auth(
    tokens: Callable[[], dict[str, SecretStr]],
) -> Callable[..., Awaitable[str]]:
    """A dependency that returns the caller's identity, or answers 401.

    ``tokens()`` maps each identity (``operator``, a model owner's name, ...) to its secret.
    """

    async def caller(
        credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),
    ) -> str:
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise Unauthorized("send the API token as 'Authorization: Bearer <token>'")
        for identity, secret in tokens().items():
            if same_secret(credentials.credentials, secret):
                return identity
        raise Unauthorized("the bearer token is not valid for this service")

    return caller


class BodyLimit:
    """Reject request bodies over a size limit with 413, whether or not they declare a length."""

    def __init__(self, app: ASGIApp, limit: int, overrides: dict[str, int] | None = None) -> None:
        self.app = app
        self.limit = limit
        self.overrides = overrides or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.overrides.get(scope["path"], self.limit)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            response = _error_response(
                413,
                "PayloadTooLarge",
                f"the request body has {int(declared)} bytes; the limit is {limit}",
            )
            await response(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise PayloadTooLarge(
                        f"the request body is larger than the limit of {limit} bytes"
                    )
            return message

        await self.app(scope, limited, send)


def _error_response(status: int, kind: str, detail: str) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(
        ErrorBody(error=kind, detail=detail).model_dump(), status_code=status, headers=headers
    )


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AppraisalError)
    async def appraisal_error(request: Request, exc: AppraisalError) -> JSONResponse:
        return _error_response(exc.status_code, type(exc).__name__, str(exc))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error_response(422, "ValidationError", _validation_detail(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error_response(
            exc.status_code, _KIND.get(exc.status_code, "HTTPError"), str(exc.detail)
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _error_response(
            500, "InternalError", "an unexpected error; the service's log has the details"
        )


class PortPool:
    """Rendezvous ports taken from a configured range, never two sessions on one port."""

    def __init__(self, spec: str, host: str = "0.0.0.0") -> None:
        try:
            low, high = (int(p) for p in spec.split("-"))
        except ValueError:
            raise ConfigError(
                f"a port range is 'LOW-HIGH', e.g. 29500-29599; got {spec!r}"
            ) from None
        if not 1024 <= low <= high <= 65535:
            raise ConfigError(f"the port range {spec!r} must lie within 1024-65535, low <= high")
        self.ports = range(low, high + 1)
        self.host = host
        self._taken: set[int] = set()

    def acquire(self) -> int:
        for port in self.ports:
            if port in self._taken:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind((self.host, port))
                except OSError:
                    continue
            self._taken.add(port)
            return port
        raise Conflict(
            f"every rendezvous port in {self.ports.start}-{self.ports.stop - 1} is in use; wait for "
            "a session to finish or widen the range"
        )

    def release(self, port: int) -> None:
        self._taken.discard(port)


@dataclass
class _Run:
    task: asyncio.Task[None] | None = None
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    end_state: SessionState = SessionState.CANCELLED
    reason: str = ""
    stopping: bool = False  # a stop() is under way: its state and reason stand
    notified: bool = False  # the peers were told of the end before the worker was stopped


OnEnd = Callable[[SessionView], Awaitable[None]]


class SessionManager:
    """Session records plus the supervisor task of each live session's worker."""

    POLL_SECONDS = 0.1

    def __init__(self, settings: ServiceSettings, role: str) -> None:
        settings.check_secrets()
        self.settings = settings
        self.role = role
        self.store = SessionStore(settings.database_path)
        self.workroot = settings.state_dir / "work"
        self.on_end: OnEnd | None = None
        self._runs: dict[str, _Run] = {}
        recovered = self.store.recover()
        if recovered:
            log.warning("marked %d interrupted sessions as failed: %s", len(recovered), recovered)
        shutil.rmtree(self.workroot, ignore_errors=True)  # worker files of a previous process

    def new_workdir(self, session_id: str) -> Path:
        path = self.workroot / session_id
        path.mkdir(parents=True, exist_ok=False, mode=0o700)
        os.chmod(self.workroot, 0o700)
        return path

    def start(
        self,
        session_id: str,
        job: JobSpec,
        rendezvous: str,
        proposed: Deadlines | None = None,
        *,
        reports_progress: bool = True,
        release: Callable[[], None] | None = None,
        **inputs: Any,
    ) -> None:
        """Start this side's worker for a session and supervise it in a task of the event loop.

        The deadlines are the smaller of this service's own and the ``proposed`` ones; ``inputs``
        are the worker's own files (and, for the model owner, τ), written to its 0600 config.
        """
        own = self.settings.deadlines()
        deadlines = (
            own
            if proposed is None
            else Deadlines(
                rendezvous_seconds=min(proposed.rendezvous_seconds, own.rendezvous_seconds),
                compute_seconds=min(proposed.compute_seconds, own.compute_seconds),
            )
        )
        workdir = self.new_workdir(session_id)
        config = party_config(
            self.role,
            job=job,
            rendezvous=rendezvous,
            workdir=workdir,
            timeout=deadlines.rendezvous_seconds,
            session_id=session_id,
            **inputs,
        )
        run = _Run()
        self._runs[session_id] = run
        run.task = asyncio.get_running_loop().create_task(
            self._supervise(session_id, config, workdir, deadlines, reports_progress, release, run)
        )

    def running(self) -> list[str]:
        return list(self._runs)

    async def _supervise(
        self,
        session_id: str,
        config: PartyConfig,
        workdir: Path,
        deadlines: Deadlines,
        reports_progress: bool,
        release: Callable[[], None] | None,
        run: _Run,
    ) -> None:
        party: Party | None = None
        state, reason = SessionState.FAILED, ""
        results: list[CandidateOutcome] = []
        try:
            party = await asyncio.to_thread(start_party, config, workdir)
            # the worker has its link keys (its 0600 config file): keep no copy in this process
            party.config = config = config.model_copy(update={"keys": None})
            state, reason, results = await self._follow(
                session_id, party, deadlines, reports_progress, run
            )
        except Exception as exc:  # the supervisor itself must never leave a session live
            log.exception("supervising session %s failed", session_id)
            state, reason = (
                SessionState.FAILED,
                f"the supervisor failed: {type(exc).__name__}: {exc}",
            )
        finally:
            if party is not None:
                await asyncio.to_thread(stop_parties, [party])
                if state is not SessionState.COMPLETED:
                    log.warning(
                        "session %s %s: %s\n%s", session_id, state.value, reason, party.log_tail()
                    )
            if release is not None:
                release()
            fields: dict[str, Any] = {"state": state, "reason": reason or None}
            final = None if party is None or not reports_progress else party.progress()
            if final is not None:  # what the worker reported after the supervisor's last look
                fields["charged"] = final.started
                if not results and final.results:
                    results = self._outcomes(party, final.results)  # type: ignore[arg-type]
            if state is SessionState.COMPLETED:  # every candidate was revealed
                fields["charged"] = len(config.job.candidates)
            shutil.rmtree(workdir, ignore_errors=True)
            if results:
                fields["results"] = results
            view = self.store.update(session_id, **fields)
            self._runs.pop(session_id, None)
        if self.on_end is not None and not run.notified:
            try:
                await self.on_end(view)
            except Exception:
                log.exception("reporting the end of session %s to its peers failed", session_id)

    async def _follow(
        self,
        session_id: str,
        party: Party,
        deadlines: Deadlines,
        reports_progress: bool,
        run: _Run,
    ) -> tuple[SessionState, str, list[CandidateOutcome]]:
        assert party.process is not None
        role = party.role.replace("_", " ")
        start = time.monotonic()
        # the worker enforces the rendezvous deadline itself; the supervisor allows a little more
        join_by = start + deadlines.rendezvous_seconds + 10.0
        finish_by: float | None = None if reports_progress else join_by + deadlines.compute_seconds
        last: WorkerProgress | None = None
        while True:
            code = party.process.poll()
            progress = party.progress() if reports_progress else None
            if progress is not None and progress != last:
                fields: dict[str, Any] = {
                    "progress": Progress(done=progress.done, total=progress.total),
                    "charged": progress.started,
                }
                if len(progress.results) != (0 if last is None else len(last.results)):
                    fields["results"] = self._outcomes(party, progress.results)
                if last is None:  # the worker has joined the rendezvous
                    finish_by = time.monotonic() + deadlines.compute_seconds
                    fields["state"] = SessionState.RUNNING
                last = progress
                self.store.update(session_id, **fields)
            if code == 0:
                return (
                    SessionState.COMPLETED,
                    "",
                    self._outcomes(party, party.result().get("results", [])),
                )
            if code is not None:
                if run.stopping:  # it broke because the stop under way stopped a peer first
                    return run.end_state, run.reason, []
                err = party.error()
                joined = last is not None or not reports_progress
                expired = err is not None and err["type"] == "PeerTimeout" and not joined
                what = f"the {role} worker failed: {party.failure()}"
                return (SessionState.EXPIRED if expired else SessionState.FAILED), what, []
            if run.cancel.is_set():
                return run.end_state, run.reason, []
            now = time.monotonic()
            if finish_by is None and now > join_by:
                return (
                    SessionState.EXPIRED,
                    f"the parties did not meet at the rendezvous within "
                    f"{deadlines.rendezvous_seconds:g} s",
                    [],
                )
            if finish_by is not None and now > finish_by:
                return (
                    SessionState.FAILED,
                    f"the computation did not finish within its deadline of "
                    f"{deadlines.compute_seconds:g} s",
                    [],
                )
            await asyncio.sleep(self.POLL_SECONDS)

    @staticmethod
    def _outcomes(party: Party, results: Sequence[dict[str, Any]]) -> list[CandidateOutcome]:
        return [
            CandidateOutcome(
                candidate=r["candidate"],
                method=party.config.job.method,
                score=r["score"],
                accept=r["accept"],
                seconds=r["seconds"],
                bytes=r["bytes_written"],
                rounds=r["rounds"],
                peak_rss_mb=r["peak_rss_mb"],
            )
            for r in results
        ]

    async def stop(
        self,
        session_id: str,
        reason: str,
        state: SessionState = SessionState.CANCELLED,
        *,
        notify_first: bool = False,
    ) -> SessionView:
        """Cancel (or fail) a session: stop its worker if it has one, and record why.

        With ``notify_first`` (an operator's own cancel) the peers are told before this side's
        worker stops, so that they record the cancellation rather than the broken connection the
        stop would cause. A second stop while one is under way (the peer being told answers with
        its own report) returns at once and changes nothing. Raises :class:`Conflict` if the
        session has already finished.
        """
        view = self.store.get(session_id)
        if view.state.terminal:
            raise Conflict(
                f"session {session_id} is already {view.state.value}"
                + (f" ({view.reason})" if view.reason else "")
            )
        run = self._runs.get(session_id)
        if run is None or run.task is None:
            return self.store.update(session_id, state=state, reason=reason)
        if run.stopping:
            return view
        run.stopping = True
        run.end_state, run.reason = state, reason
        if notify_first and self.on_end is not None:
            run.notified = True
            try:
                await self.on_end(view.model_copy(update={"state": state, "reason": reason}))
            except Exception:
                log.exception("telling the peers that session %s ends failed", session_id)
        run.cancel.set()
        await asyncio.shield(run.task)
        return self.store.get(session_id)

    async def shutdown(self) -> None:
        """Stop every live worker (the service is going away); their sessions fail."""
        for session_id in list(self._runs):
            with contextlib.suppress(Conflict, NotFound):
                await self.stop(session_id, "the service shut down", SessionState.FAILED)
        self.store.close()


class PeerUnreachable(AppraisalError):
    """The other service did not answer (connection refused, timeout, DNS)."""

    status_code = 504


async def peer_call(
    http: httpx.AsyncClient, method: str, url: str, token: SecretStr | str, body: Any = None
) -> httpx.Response:
    """One REST call to another service, with transport failures turned into PeerUnreachable."""
    secret = token.get_secret_value() if isinstance(token, SecretStr) else token
    try:
        return await http.request(
            method, url, json=body, headers={"Authorization": f"Bearer {secret}"}
        )
    except httpx.HTTPError as exc:
        raise PeerUnreachable(f"{url} did not answer: {type(exc).__name__}: {exc}") from None


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
    except PeerUnreachable as exc:
        log.warning("could not tell the peer that session %s ended: %s", view.id, exc)
        return
    if response.status_code == 401 and view.role == "data_owner":
        # the model owner's one-session callback token ends with its session: it ended first
        log.info("the model owner had already ended session %s", view.id)
    elif response.status_code not in (200, 404, 409):  # 409: the peer had finished already
        log.warning("the peer refused the end of session %s: %s", view.id, peer_detail(response))


def may_see(who: str, view: SessionView) -> bool:
    """The operator sees every session; a peer only the sessions it is party to."""
    return who in (OPERATOR, view.counterpart, f"session:{view.id}")


def session_router(manager: SessionManager, caller: Callable[..., Awaitable[str]]) -> APIRouter:
    """``GET /v1/sessions``, ``GET /v1/sessions/{id}`` and ``POST /v1/sessions/{id}/cancel``."""
    router = APIRouter(
        prefix=f"{API_PREFIX}/sessions", tags=["sessions"], responses=ERROR_RESPONSES
    )

    def visible(session_id: str, who: str) -> SessionView:
        view = manager.store.get(session_id)
        if not may_see(who, view):  # as if it did not exist: ids are not probed
            raise NotFound(f"no session {session_id!r}; GET /v1/sessions lists them")
        return view

    @router.get("", response_model=list[SessionView], summary="List sessions, newest first")
    async def list_sessions(
        state: SessionState | None = None, limit: int = 100, who: str = Depends(caller)
    ) -> list[SessionView]:
        views = manager.store.all(limit=max(1, min(limit, 1000)), state=state)
        return [v for v in views if may_see(who, v)]

    @router.get("/{session_id}", response_model=SessionView, summary="A session and its progress")
    async def get_session(session_id: str, who: str = Depends(caller)) -> SessionView:
        return visible(session_id, who)

    @router.post(
        "/{session_id}/cancel",
        response_model=SessionView,
        summary="Cancel a session; stops this party's worker and tells the peers",
    )
    async def cancel_session(
        session_id: str, body: CancelRequest | None = None, who: str = Depends(caller)
    ) -> SessionView:
        visible(session_id, who)
        body = body or CancelRequest()
        return await manager.stop(
            session_id,
            f"{body.reason} (reported by {who})",
            SessionState(body.outcome),
            notify_first=who == OPERATOR,
        )

    return router


def openapi_schema(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document, with the bearer scheme and the error shape on every route."""
    from fastapi.openapi.utils import get_openapi

    if app.openapi_schema is None:
        app.openapi_schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
    return app.openapi_schema


def build_app(
    *,
    title: str,
    description: str,
    settings: ServiceSettings,
    manager: SessionManager,
    caller: Callable[..., Awaitable[str]],
    routers: list[APIRouter],
    upload_limits: dict[str, int] | None = None,
    http: httpx.AsyncClient | None = None,
) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await manager.shutdown()
        if http is not None:
            await http.aclose()

    # the schema is served behind the token like every route but health (no public /docs)
    app = FastAPI(
        title=title,
        description=description,
        version=VERSION,
        lifespan=lifespan,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    install_error_handlers(app)
    app.add_middleware(BodyLimit, limit=settings.max_request_bytes, overrides=upload_limits)

    @app.get(f"{API_PREFIX}/health", response_model=Health, tags=["health"], summary="Liveness")
    async def health() -> Health:
        return Health(service=title, version=VERSION)

    @app.get(
        f"{API_PREFIX}/openapi.json",
        tags=["health"],
        summary="This API's OpenAPI schema",
        responses={401: ERROR_RESPONSES[401]},
    )
    async def openapi(who: str = Depends(caller)) -> dict[str, Any]:
        return openapi_schema(app)

    app.include_router(session_router(manager, caller))
    for router in routers:
        app.include_router(router)
    app.state.manager = manager
    app.state.settings = settings
    return app
