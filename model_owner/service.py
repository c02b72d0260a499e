"""The model owner's service: holds θ̂ and the test set, opens appraisal sessions with data owners.

Opening a session negotiates over REST: fetch the candidates' public metadata from the data owner,
check it against the model, propose the computation and a rendezvous, ask the dealer to serve the
session's Beaver triples, then start this side's worker. The threshold τ of a threshold session is
written only to this side's 0600 worker configuration: never stored, logged or sent.

Each session gets fresh pre-shared keys for its three MPC links (:class:`SessionKeys`): the data
owner receives its two in the invitation, the dealer its two in the dealer job, this side's worker
its own two in its configuration. They are never stored, logged or returned, and this service keeps
no reference to them once the workers are started.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import httpx
import numpy as np
from fastapi import APIRouter, Depends, Request
from pydantic import SecretStr
from pydantic_settings import SettingsConfigDict

from common.data import load_dataset
from common.errors import ConfigError
from common.model import ModelOwnerState, feature_bound, prepare_model_owner, v_bound
from common.schemas import (
    API_PREFIX,
    DatasetMeta,
    DealerJob,
    Invitation,
    InvitationReply,
    ModelInfo,
    RevealTo,
    SessionCreate,
    SessionState,
    SessionView,
)
from common.service import (
    ERROR_RESPONSES,
    OPERATOR,
    Forbidden,
    PeerUnreachable,
    PortPool,
    ServiceSettings,
    SessionManager,
    Unauthorized,
    bearer_auth,
    build_app,
    notify_peer,
    peer_call,
    peer_detail,
)
from common.sessions import Conflict, NotFound
from common.worker import CandidateMeta, JobSpec, SessionKeys

log = logging.getLogger("data_appraisal.model_owner")


class ModelOwnerSettings(ServiceSettings):
    """Environment variables ``MODEL_OWNER_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="MODEL_OWNER_")
    secret_fields: ClassVar[tuple[str, ...]] = ("api_token", "data_owner_token", "dealer_token")

    port: int = 8000
    state_dir: Path = Path("state/model_owner")
    name: str = "model-owner"  # this model owner's name at the data owners
    public_url: str = "http://127.0.0.1:8000"  # where data owners report a cancellation
    train: Path = Path("data/train.npz")
    test: Path = Path("data/test.npz")
    l2: float = 1.0
    n_classes: int | None = None  # default: largest label in train/test + 1
    label_encoding: str = "integer"
    data_owner_token: SecretStr = SecretStr("change-me")  # presented to data owners
    dealer_url: str = "http://127.0.0.1:8002"
    dealer_token: SecretStr = SecretStr("change-me")
    advertise_host: str = "127.0.0.1"  # the rendezvous address the other parties connect to
    rendezvous_ports: str = "29500-29599"
    reveal_to: RevealTo = "both"  # default of a session's reveal_to
    allow_insecure_tfp: bool = False  # allow sessions with provider TFP (testing only)


@dataclass
class Model:
    """θ̂ and v, trained from the configured files and cached on disk, and the public metadata."""

    state: ModelOwnerState
    state_path: Path
    info: ModelInfo

    @classmethod
    def load(cls, settings: ModelOwnerSettings, retrain: bool = False) -> Model:
        train = load_dataset(settings.train)
        test = load_dataset(settings.test, n_features=train.n_features)
        n_classes = settings.n_classes or int(max(train.y.max(), test.y.max())) + 1
        if n_classes < 2 or max(train.y.max(), test.y.max()) >= n_classes:
            raise ConfigError(
                f"MODEL_OWNER_N_CLASSES={n_classes} does not cover the labels of the train and "
                "test sets"
            )
        digest = hashlib.sha256()
        for path in (settings.train, settings.test):
            digest.update(Path(path).read_bytes())
        digest.update(f"{settings.l2!r} {n_classes}".encode())
        key = digest.hexdigest()
        path = settings.state_dir / "model.npz"

        def model(state: ModelOwnerState, trained_at: float) -> Model:
            info = ModelInfo(
                n_features=train.n_features,
                n_classes=n_classes,
                label_encoding=settings.label_encoding,
                n_train=train.n_samples,
                n_test=test.n_samples,
                l2=settings.l2,
                feature_bound=feature_bound(train.X, test.X),
                trained_at=trained_at,
            )
            return cls(state, path, info)

        if not retrain and path.exists():
            with np.load(path) as f:
                if str(f["key"]) == key:
                    state = ModelOwnerState(
                        theta=f["theta"], v=f["v"], test_loss=float(f["test_loss"]), l2=settings.l2
                    )
                    return model(state, float(f["trained_at"]))
        state = prepare_model_owner(
            train.X, train.y, test.X, test.y, n_classes=n_classes, l2=settings.l2
        )
        trained_at = time.time()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(".model.tmp.npz")
        np.savez(
            tmp,
            theta=state.theta,
            v=state.v,
            test_loss=state.test_loss,
            key=key,
            trained_at=trained_at,
        )
        tmp.replace(path)
        log.info("trained θ̂ on %d samples (test loss %.4f)", train.n_samples, state.test_loss)
        return model(state, trained_at)


def incompatibility(meta: DatasetMeta, info: ModelInfo) -> str | None:
    """Why a candidate cannot be appraised for this model, or None."""
    if meta.n_features != info.n_features:
        return f"dataset {meta.id!r} has {meta.n_features} features, the model {info.n_features}"
    if meta.n_classes > info.n_classes:
        return (
            f"dataset {meta.id!r} has labels up to {meta.n_classes - 1}, the model only "
            f"{info.n_classes} classes"
        )
    if meta.label_encoding != info.label_encoding:
        return (
            f"dataset {meta.id!r} uses label encoding {meta.label_encoding!r}, the model "
            f"{info.label_encoding!r}"
        )
    return None


def create_app(
    settings: ModelOwnerSettings | None = None, client: httpx.AsyncClient | None = None
) -> Any:
    settings = settings or ModelOwnerSettings()
    if settings.advertise_host.strip("[]") in ("", "0.0.0.0", "::"):
        raise ConfigError(
            f"MODEL_OWNER_ADVERTISE_HOST={settings.advertise_host!r} is a wildcard: it must be the "
            "address the other workers connect to, which this side's worker binds (and only it) "
            "for the rendezvous"
        )
    if settings.host not in ("127.0.0.1", "localhost", "::1") and settings.advertise_host in (
        "127.0.0.1",
        "localhost",
    ):
        log.warning(
            "MODEL_OWNER_HOST=%s serves other machines, but MODEL_OWNER_ADVERTISE_HOST=%s tells "
            "their workers to meet at a loopback address: sessions with remote data owners will "
            "expire at the rendezvous; set it to this host's name on their network",
            settings.host,
            settings.advertise_host,
        )
    manager = SessionManager(settings, role="model_owner")
    model = Model.load(settings)
    ports = PortPool(settings.rendezvous_ports)
    http = client or settings.peer_client()
    callback_tokens: dict[str, SecretStr] = {}  # session id -> the data owner's one-time token

    def tokens() -> dict[str, SecretStr]:
        sessions = {f"session:{sid}": tok for sid, tok in callback_tokens.items()}
        return {**settings.identities(), **sessions}

    authenticate = bearer_auth(tokens)

    async def caller(request: Request, who: str = Depends(authenticate)) -> str:
        """The caller's identity. A data owner's one-session token works only on the routes of
        that one session (403 elsewhere), and only while it is live (401 once it has ended)."""
        if not who.startswith("session:"):
            return who
        session_id = who.removeprefix("session:")
        try:
            live = not manager.store.get(session_id).state.terminal
        except NotFound:
            live = False
        if not live:
            callback_tokens.pop(session_id, None)
            raise Unauthorized(f"this one-session token expired: session {session_id} has ended")
        if request.path_params.get("session_id") != session_id:
            raise Forbidden(f"this one-session token is valid for session {session_id} only")
        return who

    router = APIRouter(prefix=API_PREFIX, responses=ERROR_RESPONSES)

    def operator_only(who: str) -> None:
        if who != OPERATOR:
            raise Forbidden("only the model owner's operator token may do this")

    @router.get("/model", response_model=ModelInfo, tags=["model"], summary="Public model metadata")
    async def model_info(who: str = Depends(caller)) -> ModelInfo:
        operator_only(who)
        return model.info

    @router.post(
        "/model/train", response_model=ModelInfo, tags=["model"], summary="Retrain θ̂ from the files"
    )
    async def retrain(who: str = Depends(caller)) -> ModelInfo:
        nonlocal model
        operator_only(who)
        if manager.running():
            raise Conflict("sessions are running on the current θ̂; retrain when they finish")
        model = await asyncio.to_thread(Model.load, settings, True)
        return model.info

    @router.post(
        "/sessions",
        response_model=SessionView,
        status_code=201,
        tags=["sessions"],
        summary="Open an appraisal session with a data owner",
        description="Negotiates synchronously (metadata, proposal, dealer) and starts the MPC. The "
        "returned session is `accepted` (follow it with GET /v1/sessions/{id}), or `rejected`, "
        "`failed` or `expired` with a reason.",
    )
    async def open_session(body: SessionCreate, who: str = Depends(caller)) -> SessionView:
        operator_only(who)
        if body.reveal == "threshold" and body.threshold is None:
            raise ConfigError("reveal 'threshold' needs the secret 'threshold' τ")
        if body.reveal == "score" and body.threshold is not None:
            raise ConfigError("'threshold' is only used with reveal 'threshold'")
        if body.provider == "TFP" and not settings.allow_insecure_tfp:
            raise ConfigError(
                "provider 'TFP' lets this model owner's worker generate every Beaver triple and so "
                "read the data owner's data: it is refused unless MODEL_OWNER_ALLOW_INSECURE_TFP is "
                "true (testing only); use the dealer (provider 'TTP')"
            )
        if body.noise_epsilon is not None and body.method != "influence":
            raise ConfigError(
                f"'noise_epsilon' is calibrated for method 'influence' only, not {body.method!r}: "
                "its sensitivity bound needs a statistic that sums one bounded term per candidate "
                "sample; drop 'noise_epsilon' or use method 'influence'"
            )
        return await negotiate(body)

    async def negotiate(body: SessionCreate) -> SessionView:
        do_url = str(body.data_owner_url).rstrip("/")
        info = model.info
        reveal_to = body.reveal_to or settings.reveal_to
        # the noise's scale needs a public bound on v; a power of two tells the size of v only to
        # within a factor of two
        bound = None if body.noise_epsilon is None else v_bound(model.state.v)

        async def withdraw(reason: str) -> None:
            """Tell the data owner, which had accepted, that this side ended the session."""
            cancelled = view.model_copy(update={"state": SessionState.CANCELLED, "reason": reason})
            await notify_peer(http, do_url, settings.data_owner_token, cancelled, "the model owner")

        view = manager.store.create(
            SessionView(
                id=uuid.uuid4().hex,
                role="model_owner",
                state=SessionState.PROPOSED,
                counterpart=do_url,
                method=body.method,
                datasets=body.datasets,
                reveal=body.reveal,
                reveal_to=reveal_to,
                noise_epsilon=body.noise_epsilon,
                params={
                    **body.params.model_dump(),
                    "l2": settings.l2,
                    "direction": body.direction,
                    "provider": body.provider,
                    "v_bound": bound,
                },
            )
        )
        port: int | None = None
        try:
            metas = []
            for dataset in body.datasets:
                url = f"{do_url}{API_PREFIX}/datasets/{dataset}"
                response = await peer_call(http, "GET", url, settings.data_owner_token)
                if response.status_code != 200:
                    return end(
                        view.id, SessionState.REJECTED, f"the data owner: {peer_detail(response)}"
                    )
                metas.append(DatasetMeta.model_validate(response.json()))
            mismatch = next((r for r in (incompatibility(m, info) for m in metas) if r), None)
            port = ports.acquire()
            rendezvous = f"tcp://{settings.advertise_host}:{port}"
            job = JobSpec(
                method=body.method,
                n_features=info.n_features,
                n_classes=info.n_classes,
                candidates=[CandidateMeta(name=m.id, n_samples=m.n_samples) for m in metas],
                n_train=info.n_train,
                n_test=info.n_test,
                feature_bound=max([info.feature_bound, *(m.feature_bound for m in metas)]),
                l2=settings.l2,
                steps=body.params.steps,
                lr=body.params.lr,
                batch_size=body.params.batch_size,
                reveal=body.reveal,
                direction=body.direction,
                provider=body.provider,
                reveal_to=reveal_to,
                noise_epsilon=body.noise_epsilon,
                v_bound=bound,
                transport="secure",
            )
            manager.store.update(view.id, rendezvous=rendezvous)
            # fresh link keys for this session only; each party gets the keys of its own links
            keys = SessionKeys.new()
            token = SecretStr(secrets.token_urlsafe(32))
            invitation = Invitation(
                session_id=view.id,
                model_owner=settings.name,
                datasets=body.datasets,
                label_encoding=info.label_encoding,
                job=job,
                rendezvous=rendezvous,
                dealer_url=settings.dealer_url,
                callback_url=settings.public_url,
                callback_token=token.get_secret_value(),
                keys=keys.for_role("data_owner"),
                deadlines=settings.deadlines(),
            )
            # the proposal goes out even on a mismatch, so that both sides record the rejection
            callback_tokens[view.id] = token
            response = await peer_call(
                http,
                "POST",
                f"{do_url}{API_PREFIX}/invitations",
                settings.data_owner_token,
                invitation.model_dump(mode="json"),
            )
            if response.status_code != 200:
                return end(
                    view.id, SessionState.REJECTED, f"the data owner: {peer_detail(response)}"
                )
            reply = InvitationReply.model_validate(response.json())
            if mismatch is not None or not reply.accepted:
                reason = mismatch or f"the data owner refused: {reply.reason}"
                if reply.accepted:  # it accepted what this side rejects
                    await withdraw(reason)
                return end(view.id, SessionState.REJECTED, reason)
            if job.provider == "TTP":  # with TFP this side's worker generates the triples
                dealer = DealerJob(
                    session_id=view.id,
                    job=job,
                    rendezvous=rendezvous,
                    keys=keys.for_role("dealer"),
                    deadlines=settings.deadlines(),
                )
                response = await peer_call(
                    http,
                    "POST",
                    f"{settings.dealer_url.rstrip('/')}{API_PREFIX}/sessions",
                    settings.dealer_token,
                    dealer.model_dump(mode="json"),
                )
                if response.status_code != 201:
                    reason = f"the dealer refused the session: {peer_detail(response)}"
                    await withdraw(reason)
                    return end(view.id, SessionState.FAILED, reason)
            now = manager.store.get(view.id)
            if now.state.terminal:  # a peer failed or someone cancelled while this side negotiated
                callback_tokens.pop(view.id, None)
                await on_end(now)
                return now
            manager.store.update(view.id, state=SessionState.ACCEPTED)
            held, port = port, None  # the supervisor releases it
            manager.start(
                view.id,
                job,
                rendezvous,
                release=lambda: ports.release(held),
                train=str(settings.train),
                test=str(settings.test),
                state=str(model.state_path),
                threshold=body.threshold,
                keys=keys.for_role("model_owner"),
                allow_insecure_tfp=job.provider == "TFP",
            )
            return manager.store.get(view.id)
        except PeerUnreachable as exc:
            return end(view.id, SessionState.EXPIRED, str(exc))
        except Conflict as exc:  # no free rendezvous port
            return end(view.id, SessionState.FAILED, str(exc))
        finally:
            if port is not None:
                ports.release(port)

    def end(session_id: str, state: SessionState, reason: str) -> SessionView:
        callback_tokens.pop(session_id, None)
        log.info("session %s %s: %s", session_id, state.value, reason)
        return manager.store.update(session_id, state=state, reason=reason)

    async def on_end(view: SessionView) -> None:
        """A worker's session ended (its data owner had accepted): tell the peers unless done."""
        callback_tokens.pop(view.id, None)
        if view.state is SessionState.COMPLETED:
            return
        await notify_peer(
            http, view.counterpart, settings.data_owner_token, view, "the model owner"
        )
        if view.params.get("provider", "TTP") == "TTP":
            await notify_peer(
                http, settings.dealer_url, settings.dealer_token, view, "the model owner"
            )

    manager.on_end = on_end
    app = build_app(
        title="data-appraisal model owner",
        description="Holds the model θ̂ and the test set; opens appraisal sessions with data "
        "owners and runs its side of each session's MPC. Only the score or the accept bit of each "
        "candidate is revealed.",
        settings=settings,
        manager=manager,
        caller=caller,
        routers=[router],
        http=http,
    )
    app.state.ports = ports
    return app
