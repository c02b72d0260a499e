"""The model owner's sessions: negotiate with a data owner and the dealer, then run this side.

Opening a session (:meth:`ModelOwner.open_session`) fetches the candidates' public metadata from
the data owner, checks it against the model, builds the job, proposes it with a rendezvous, asks
the dealer to serve the session's Beaver triples, then starts this side's worker. No HTTP here:
the routes (:mod:`model_owner.routes`) call this object.

Each session gets fresh pre-shared keys for this side's two MPC links (:class:`SessionKeys`): the
data owner receives the owners' link's key in the invitation, the dealer the model owner ↔ dealer
key in the dealer job, this side's worker both in its configuration. The data owner ↔ dealer key is
not this side's: the data owner's service sends it to the dealer itself. Keys are never stored,
logged or returned, and this service keeps no reference to them once the workers are started.

Each data owner is configured by name (MODEL_OWNER_DATA_OWNERS) with its URL and the token this
model owner presents to it alone: a data owner never sees a token that works at another. The threshold τ of a threshold session goes
only into this side's 0600 worker configuration: never stored, logged or sent.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import uuid

import httpx
import numpy as np
from fastapi import Request
from pydantic import SecretStr, ValidationError

from common.errors import (
    ConfigError,
    Conflict,
    Forbidden,
    NotFound,
    PeerUnavailable,
    Unauthorized,
    Unavailable,
)
from common.ml.model import v_bound
from common.protocol import (
    DEFAULT_CHUNK_ROWS,
    DEFAULT_SOFTMAX_CHUNKS,
    CandidateMeta,
    JobSpec,
    SessionKeys,
    model_owner_problem,
    threshold_problem,
)
from common.web.peers import notify_peer, peer_call, peer_detail
from common.web.ports import PortPool
from common.web.schemas import (
    API_PREFIX,
    DatasetMeta,
    DealerJob,
    Invitation,
    InvitationReply,
    ModelInfo,
    SessionCreate,
    SessionState,
    SessionView,
)
from common.web.sessions import SessionManager
from common.web.settings import Credential
from common.web.tls import peer_client
from model_owner.model import Model, incompatibility
from model_owner.settings import DataOwnerPeer, ModelOwnerSettings

log = logging.getLogger("data_appraisal.model_owner")
SESSION_TOKEN = "session:"  # the identity prefix of a data owner's one-session callback token


class ModelOwner:
    """The model owner's service: its model, its sessions and the peers it calls."""

    def __init__(self, settings: ModelOwnerSettings, client: httpx.AsyncClient | None = None):
        if settings.advertise_host.strip("[]") in ("", "0.0.0.0", "::"):
            raise ConfigError(
                f"MODEL_OWNER_ADVERTISE_HOST={settings.advertise_host!r} is a wildcard: it must be "
                "the address the other workers connect to (the workers bind it, or "
                "MODEL_OWNER_RENDEZVOUS_BIND, and only it, for the rendezvous)"
            )
        if (settings.rendezvous_bind or "x").strip("[]") in ("", "0.0.0.0", "::"):
            raise ConfigError(
                f"MODEL_OWNER_RENDEZVOUS_BIND={settings.rendezvous_bind!r} is a wildcard: name the "
                "one local address the rendezvous listens on"
            )
        if settings.host not in ("127.0.0.1", "localhost", "::1") and settings.advertise_host in (
            "127.0.0.1",
            "localhost",
        ):
            log.warning(
                "MODEL_OWNER_HOST=%s serves other machines, but MODEL_OWNER_ADVERTISE_HOST=%s "
                "tells their workers to meet at a loopback address: sessions with remote data "
                "owners will expire at the rendezvous; set it to this host's name on their network",
                settings.host,
                settings.advertise_host,
            )
        self.settings = settings
        self.sessions = SessionManager(settings, role="model_owner")
        self.model = Model.load(settings)
        self.ports = PortPool(settings.rendezvous_ports)
        self.http = client or peer_client(settings)
        self._callback_tokens: dict[str, SecretStr] = {}  # session id → the data owner's token
        self._held: set[int] = set()  # rendezvous ports handed to a supervisor, which releases them
        self._negotiating = 0  # sessions being negotiated (they count against the session limit)
        self.sessions.on_end = self._on_end

    async def aclose(self) -> None:
        await self.http.aclose()

    # -- who may call -------------------------------------------------------------------------------

    def identities(self) -> dict[str, Credential]:
        live = {
            f"{SESSION_TOKEN}{sid}": Credential(token=tok)
            for sid, tok in self._callback_tokens.items()
        }
        return {**self.settings.identities(), **live}

    def authorize(self, request: Request, who: str) -> str:
        """A data owner's one-session token works only on the routes of that one session (403
        elsewhere), and only while it is live (401 once it has ended)."""
        if not who.startswith(SESSION_TOKEN):
            return who
        session_id = who.removeprefix(SESSION_TOKEN)
        try:
            live = not self.sessions.store.get(session_id).state.terminal
        except NotFound:
            live = False
        if not live:
            self._callback_tokens.pop(session_id, None)
            raise Unauthorized(f"this one-session token expired: session {session_id} has ended")
        if request.path_params.get("session_id") != session_id:
            raise Forbidden(f"this one-session token is valid for session {session_id} only")
        return who

    # -- the model ----------------------------------------------------------------------------------

    @property
    def info(self) -> ModelInfo:
        return self.model.info

    async def retrain(self) -> ModelInfo:
        if self.sessions.running():
            raise Conflict("sessions are running on the current θ̂; retrain when they finish")
        self.model = await asyncio.to_thread(Model.load, self.settings, True)
        return self.model.info

    # -- sessions -----------------------------------------------------------------------------------

    async def open_session(self, body: SessionCreate) -> SessionView:
        """Negotiate synchronously and start this side's worker; the session that results."""
        settings = self.settings
        if body.provider == "TFP" and not settings.allow_insecure_tfp:
            raise ConfigError(
                "provider 'TFP' lets this model owner's worker generate every Beaver triple and so "
                "read the data owner's data: it is refused unless MODEL_OWNER_ALLOW_INSECURE_TFP "
                "is true (testing only); use the dealer (provider 'TTP')"
            )
        do_name, _ = settings.data_owner(str(body.data_owner_url))
        self.sessions.admit(pending=self._negotiating)
        self._negotiating += 1
        try:
            return await self._open(body, do_name)
        finally:
            self._negotiating -= 1

    async def _open(self, body: SessionCreate, do_name: str) -> SessionView:
        draft = SessionView(
            id=uuid.uuid4().hex,
            role="model_owner",
            state=SessionState.PROPOSED,
            counterpart=do_name,
            method=body.method,
            datasets=body.datasets,
        )
        try:
            metas = await self._metadata(do_name, body.datasets)
        except PeerUnavailable as exc:
            return self._refused(draft, SessionState.EXPIRED, str(exc))
        except Conflict as exc:  # the data owner refused to describe a data set
            return self._refused(draft, SessionState.REJECTED, str(exc))
        except ConfigError as exc:  # this side refused to call (a token in clear, ...)
            return self._refused(draft, SessionState.FAILED, str(exc))
        try:
            job = self._job(body, metas)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "job"
            return self._refused(
                draft, SessionState.REJECTED, f"the job is invalid: {where}: {first['msg']}"
            )
        problem = threshold_problem(job, body.threshold)  # τ against the candidates' sizes
        if problem is not None:
            raise ConfigError(problem, field="threshold")
        # this side's own v against the job (the worker checks it again): refused before inviting
        v_norm = float(np.linalg.norm(self.model.state.v, axis=0).max())
        problem = model_owner_problem(job, v_norm)
        if problem is not None:
            raise ConfigError(problem, field="datasets")
        try:
            port = self.ports.acquire()
        except Unavailable as exc:
            return self._refused(
                draft.model_copy(update={"job": job}), SessionState.FAILED, str(exc)
            )
        try:
            return await self._propose(draft, job, port, body.threshold, metas)
        finally:
            if port not in self._held:
                self.ports.release(port)

    def _data_owner(self, name: str) -> DataOwnerPeer:
        return self.settings.data_owners[name]

    async def _metadata(self, do_name: str, datasets: list[str]) -> list[DatasetMeta]:
        peer = self._data_owner(do_name)
        metas = []
        for dataset in datasets:
            url = f"{peer.url.rstrip('/')}{API_PREFIX}/datasets/{dataset}"
            response = await peer_call(self.http, "GET", url, peer.token)
            if response.status_code != 200:
                raise Conflict(f"the data owner: {peer_detail(response)}")
            metas.append(DatasetMeta.model_validate(response.json()))
        return metas

    def _job(self, body: SessionCreate, metas: list[DatasetMeta]) -> JobSpec:
        info = self.model.info
        # the noise's scale needs a public bound on v; a power of two tells the size of v only to
        # within a factor of two
        bound = None if body.noise_epsilon is None else v_bound(self.model.state.v)
        return JobSpec(
            method=body.method,
            n_features=info.n_features,
            n_classes=info.n_classes,
            candidates=[CandidateMeta(name=m.id, n_samples=m.n_samples) for m in metas],
            n_train=info.n_train,
            n_test=info.n_test,
            feature_bound=max([info.feature_bound, *(m.feature_bound for m in metas)]),
            l2=self.settings.l2,
            steps=body.params.steps,
            lr=body.params.lr,
            batch_size=body.params.batch_size,
            chunk_rows=DEFAULT_CHUNK_ROWS if body.chunk_rows is None else body.chunk_rows,
            softmax_chunks=(
                DEFAULT_SOFTMAX_CHUNKS if body.softmax_chunks is None else body.softmax_chunks
            ),
            openings=body.openings or "narrow",
            reveal=body.reveal,
            direction=body.direction,
            provider=body.provider,
            reveal_to=body.reveal_to or self.settings.reveal_to,
            noise_epsilon=body.noise_epsilon,
            v_bound=bound,
        )

    async def _propose(
        self,
        draft: SessionView,
        job: JobSpec,
        port: int,
        threshold: float | None,
        metas: list[DatasetMeta],
    ) -> SessionView:
        settings, store = self.settings, self.sessions.store
        rendezvous = f"tcp://{settings.advertise_host}:{port}"
        view = store.create(draft.model_copy(update={"job": job, "rendezvous": rendezvous}))
        # fresh keys for this side's two links, for this session only
        keys = SessionKeys.new().for_role("model_owner", job.provider)
        token = SecretStr(secrets.token_urlsafe(32))
        self._callback_tokens[view.id] = token
        invitation = Invitation(
            session_id=view.id,
            model_owner=settings.name,
            label_encoding=self.model.info.label_encoding,
            job=job,
            rendezvous=rendezvous,
            dealer_url=settings.dealer_url,
            callback_token=token.get_secret_value(),
            keys=SessionKeys(mo_do=keys.mo_do),
            deadlines=self.sessions.deadlines(),
        )
        # the proposal goes out even on a mismatch, so that both sides record the rejection
        mismatch = next(
            (r for r in (incompatibility(m, self.model.info) for m in metas) if r), None
        )
        try:
            response = await peer_call(
                self.http,
                "POST",
                f"{self._data_owner(view.counterpart).url.rstrip('/')}{API_PREFIX}/invitations",
                self._data_owner(view.counterpart).token,
                invitation.model_dump(mode="json"),
            )
            if response.status_code != 200:
                return self._end(
                    view.id, SessionState.REJECTED, f"the data owner: {peer_detail(response)}"
                )
            reply = InvitationReply.model_validate(response.json())
            if mismatch is not None or not reply.accepted:
                reason = mismatch or f"the data owner refused: {reply.reason}"
                if reply.accepted:  # it accepted what this side rejects
                    await self._withdraw(view, reason)
                return self._end(view.id, SessionState.REJECTED, reason)
            if job.provider == "TTP":  # with TFP this side's worker generates the triples
                refused = await self._ask_dealer(view, job, rendezvous, keys)
                if refused is not None:
                    await self._withdraw(view, refused)
                    return self._end(view.id, SessionState.FAILED, refused)
        except PeerUnavailable as exc:
            return self._end(view.id, SessionState.EXPIRED, str(exc))
        except ConfigError as exc:  # e.g. a token would have crossed the network in clear
            return self._end(view.id, SessionState.FAILED, str(exc))
        now = store.get(view.id)
        if now.state.terminal:  # a peer failed or someone cancelled while this side negotiated
            self._callback_tokens.pop(view.id, None)
            await self._on_end(now)
            return now
        store.advance(view.id, SessionState.ACCEPTED)
        self._held.add(port)

        def release() -> None:
            self._held.discard(port)
            self.ports.release(port)

        self.sessions.start(
            store.get(view.id),
            rendezvous,
            release=release,
            train=str(settings.train),
            test=str(settings.test),
            state=str(self.model.state_path),
            threshold=threshold,
            listen_host=settings.rendezvous_bind,
            keys=keys,
            allow_insecure_tfp=job.provider == "TFP",
        )
        return store.get(view.id)

    async def _ask_dealer(
        self, view: SessionView, job: JobSpec, rendezvous: str, keys: SessionKeys
    ) -> str | None:
        """Ask the dealer to serve the session; why it refused, or None."""
        dealer = DealerJob(
            session_id=view.id,
            job=job,
            rendezvous=rendezvous,
            keys=SessionKeys(mo_dealer=keys.mo_dealer),
            deadlines=self.sessions.deadlines(),
        )
        response = await peer_call(
            self.http,
            "POST",
            f"{self.settings.dealer_url.rstrip('/')}{API_PREFIX}/sessions",
            self.settings.dealer_token,
            dealer.model_dump(mode="json"),
        )
        if response.status_code != 201:
            return f"the dealer refused the session: {peer_detail(response)}"
        return None

    async def _withdraw(self, view: SessionView, reason: str) -> None:
        """Tell the data owner, which had accepted, that this side ended the session."""
        cancelled = view.model_copy(update={"state": SessionState.CANCELLED, "reason": reason})
        peer = self._data_owner(view.counterpart)
        await notify_peer(self.http, peer.url, peer.token, cancelled, "the model owner")

    def _refused(self, draft: SessionView, state: SessionState, reason: str) -> SessionView:
        """Record a session that ended before it was proposed."""
        log.info("session %s %s: %s", draft.id, state.value, reason)
        return self.sessions.store.create(
            draft.model_copy(update={"state": state, "reason": reason})
        )

    def _end(self, session_id: str, state: SessionState, reason: str) -> SessionView:
        self._callback_tokens.pop(session_id, None)
        log.info("session %s %s: %s", session_id, state.value, reason)
        return self.sessions.store.advance(session_id, state, reason=reason)

    async def _on_end(self, view: SessionView) -> None:
        """A session ended (its data owner had accepted): tell the peers unless it completed."""
        self._callback_tokens.pop(view.id, None)
        if view.state is SessionState.COMPLETED:
            return
        peer = self.settings.data_owners.get(view.counterpart)
        if peer is not None:
            await notify_peer(self.http, peer.url, peer.token, view, "the model owner")
        if view.job is None or view.job.provider == "TTP":
            await notify_peer(
                self.http,
                self.settings.dealer_url,
                self.settings.dealer_token,
                view,
                "the model owner",
            )
