"""The data owner's service: registers candidate data sets, answers invitations, runs its worker.

It serves only public metadata. The rows stay in ``data_dir`` and are read by this service's own
worker process, which secret-shares them with the model owner's worker over TCP.

Every invitation is checked against the data sets' metadata and this data owner's policy (see
:func:`review`), including a lifetime leakage budget per model owner: each revealed score tells
the model owner a little about the data, so each model owner may run only so many sessions and
appraise only so many candidates here. The session's MPC link keys arrive in the invitation and go
only into this side's worker configuration: never stored, logged or returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import httpx
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import SettingsConfigDict

from common.data import load_dataset
from common.errors import AppraisalError, ConfigError, DataError
from common.model import feature_bound
from common.schemas import (
    API_PREFIX,
    MAX_LR,
    MAX_STEPS,
    BudgetUse,
    BudgetView,
    DatasetId,
    DatasetMeta,
    Invitation,
    InvitationReply,
    Method,
    SessionState,
    SessionView,
)
from common.service import (
    ERROR_RESPONSES,
    OPERATOR,
    Forbidden,
    ServesModelOwners,
    SessionManager,
    bearer_auth,
    build_app,
    notify_peer,
)
from common.sessions import Conflict, NotFound
from common.worker import SessionKeys

log = logging.getLogger("data_appraisal.data_owner")
UPLOAD_PATH = f"{API_PREFIX}/datasets"


class BudgetLimit(BaseModel):
    """One model owner's budget override in DATA_OWNER_BUDGETS; an omitted limit keeps the default."""

    model_config = ConfigDict(extra="forbid")

    sessions: int | None = Field(default=None, ge=0)
    candidates: int | None = Field(default=None, ge=0)


class DataOwnerSettings(ServesModelOwners):
    """Environment variables ``DATA_OWNER_<FIELD>`` (dicts and lists as JSON)."""

    model_config = SettingsConfigDict(env_prefix="DATA_OWNER_")

    port: int = 8001
    state_dir: Path = Path("state/data_owner")
    data_dir: Path = Path("data")
    label_encoding: str = "integer"
    # policy
    allowed_model_owners: list[str] | None = None  # default: every model owner with a token
    allowed_methods: list[Method] = Field(default_factory=lambda: list(get_args(Method)))
    allowed_dealers: list[str] | None = None  # dealer URLs; default: any
    max_sessions_per_day: int = 100  # per model owner, sessions that cost the budget something
    budget_sessions: int = Field(default=100, ge=0)  # per model owner, lifetime, charged sessions
    budget_candidates: int = Field(default=1000, ge=0)  # candidates in those sessions
    budgets: dict[str, BudgetLimit] = Field(default_factory=dict)  # per model owner overrides
    allow_insecure_tfp: bool = False  # accept provider TFP (the model owner can read the data)
    require_reveal_to_both: bool = False  # refuse sessions whose results this side would not see
    max_noise_epsilon: float | None = Field(default=None, gt=0)  # require noise with ε ≤ this
    max_upload_bytes: int = 200_000_000

    def budget(self, model_owner: str) -> tuple[int, int]:
        """(sessions, candidates): a model owner's lifetime budget here."""
        own = self.budgets.get(model_owner, BudgetLimit())
        return (
            self.budget_sessions if own.sessions is None else own.sessions,
            self.budget_candidates if own.candidates is None else own.candidates,
        )


class Registry:
    """The candidate data sets: every .npz/.csv file in ``data_dir``, with its metadata."""

    def __init__(self, settings: DataOwnerSettings) -> None:
        self.settings = settings
        self.dir = settings.data_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.meta: dict[str, DatasetMeta] = {}
        self.paths: dict[str, Path] = {}
        for path in sorted(self.dir.iterdir()):
            if path.suffix in (".npz", ".csv") and path.is_file():
                try:
                    self._register(path.stem, path)
                except (AppraisalError, ValueError) as exc:
                    log.warning("skipping %s: %s", path, exc)

    def _register(self, dataset_id: str, path: Path) -> DatasetMeta:
        ds = load_dataset(path)
        bound = feature_bound(ds.X)
        meta = DatasetMeta(
            id=dataset_id,
            name=path.name,
            n_samples=ds.n_samples,
            n_features=ds.n_features,
            n_classes=int(ds.y.max()) + 1,
            label_encoding=self.settings.label_encoding,
            feature_bound=bound,
            feature_encoding=f"float features, |x| <= {bound:g}; in MPC divided by the session's "
            "agreed bound and fixed-point encoded with 16 fractional bits",
        )
        self.meta[dataset_id], self.paths[dataset_id] = meta, path
        return meta

    def get(self, dataset_id: str) -> DatasetMeta:
        if dataset_id not in self.meta:
            known = ", ".join(sorted(self.meta)[:20]) or "none"
            raise NotFound(f"no dataset {dataset_id!r} (this data owner has: {known})")
        return self.meta[dataset_id]

    async def add(self, dataset_id: str, suffix: str, body: AsyncIterator[bytes]) -> DatasetMeta:
        """Stream an upload to a temporary file, validate it, then move it into ``data_dir``.

        Nothing is registered or left behind unless the whole file arrived and is valid. (The size
        limit is the app's: its BodyLimit middleware stops an oversized body mid-stream.)
        """
        if dataset_id in self.meta or any(
            (self.dir / f"{dataset_id}{s}").exists() for s in (".npz", ".csv")
        ):
            raise Conflict(f"a dataset {dataset_id!r} already exists; choose another id")
        fd, tmp = tempfile.mkstemp(suffix=suffix, dir=self.dir, prefix=".upload-")
        try:
            size = 0
            with os.fdopen(fd, "wb") as f:
                async for chunk in body:
                    size += len(chunk)
                    f.write(chunk)
            if size == 0:
                raise DataError(
                    "the upload is empty: send the .npz or .csv file as the request body"
                )
            await asyncio.to_thread(load_dataset, tmp)  # raises DataError naming what is wrong
            final = self.dir / f"{dataset_id}{suffix}"
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return await asyncio.to_thread(self._register, dataset_id, final)


def review(
    inv: Invitation,
    who: str,
    settings: DataOwnerSettings,
    registry: Registry,
    manager: SessionManager,
) -> str | None:
    """Why this invitation must be refused, or None to accept it."""
    allowed = settings.allowed_model_owners
    if inv.model_owner != who:
        return f"the invitation names model owner {inv.model_owner!r}, but its token is {who!r}'s"
    if allowed is not None and who not in allowed:
        return f"the data owner's policy does not allow model owner {who!r}"
    if inv.job.method not in settings.allowed_methods:
        return (
            f"the data owner's policy does not allow the method {inv.job.method!r} "
            f"(allowed: {', '.join(settings.allowed_methods)})"
        )
    job = inv.job
    if job.transport != "secure":
        return (
            f"the data owner requires the secure MPC transport; the job asks for {job.transport!r}, "
            "which neither authenticates nor encrypts the MPC traffic"
        )
    if job.provider == "TFP" and not settings.allow_insecure_tfp:
        return (
            "the data owner refuses provider TFP: with TFP the model owner's worker generates every "
            "Beaver triple and can therefore read this data owner's data; use a dealer (provider "
            "TTP), or set DATA_OWNER_ALLOW_INSECURE_TFP=true for testing only"
        )
    if (
        job.provider == "TTP"
        and settings.allowed_dealers is not None
        and inv.dealer_url.rstrip("/") not in [d.rstrip("/") for d in settings.allowed_dealers]
    ):
        return f"the data owner does not trust the dealer at {inv.dealer_url}"
    if settings.require_reveal_to_both and job.reveal_to != "both":
        return (
            "the data owner's policy requires to see every revealed result (reveal_to 'both'), so "
            f"that it can audit what is revealed about its data; the job has {job.reveal_to!r}"
        )
    if settings.max_noise_epsilon is not None:
        required = (
            f"the data owner's policy requires calibrated noise with ε ≤ "
            f"{settings.max_noise_epsilon:g} on every released result (DATA_OWNER_MAX_NOISE_EPSILON; "
            "noise is available for method 'influence' only)"
        )
        if job.noise_epsilon is None:
            return f"{required}; the job has no noise"
        if job.noise_epsilon > settings.max_noise_epsilon:
            return f"{required}; the job has ε = {job.noise_epsilon:g}"
    if job.noise_epsilon is not None and not (
        math.isfinite(job.noise_epsilon) and job.v_bound is not None and math.isfinite(job.v_bound)
    ):  # JobSpec already refuses a missing v_bound
        return (
            f"the job's noise is not calibrated: ε {job.noise_epsilon:g} and v_bound "
            f"{job.v_bound} must both be finite"
        )
    missing = SessionKeys.missing(inv.keys, "data_owner", job.provider)
    if missing:
        return (
            f"the invitation carries no pre-shared key for the MPC link(s) {', '.join(missing)}; "
            "the secure transport needs them"
        )
    today = manager.store.count_since(who, time.time() - 86400)
    if today >= settings.max_sessions_per_day:
        return (
            f"model owner {who!r} has used its {settings.max_sessions_per_day} sessions for the "
            "last 24 hours"
        )
    budget_sessions, budget_candidates = settings.budget(who)
    used_sessions, used_candidates = manager.store.usage(who)
    if used_sessions + 1 > budget_sessions:
        return (
            f"model owner {who!r} has used its session budget at this data owner: "
            f"{used_sessions} of {budget_sessions} sessions (a lifetime limit on how much the "
            "revealed scores may tell about the data; GET /v1/budget shows it)"
        )
    if used_candidates + len(inv.datasets) > budget_candidates:
        return (
            f"the {len(inv.datasets)} candidates of this session would exceed model owner {who!r}'s "
            f"candidate budget at this data owner: {used_candidates} of {budget_candidates} "
            "candidates used (a lifetime limit on how much the revealed scores may tell about the "
            "data; GET /v1/budget shows it)"
        )
    if len(set(inv.datasets)) != len(inv.datasets):
        return "a dataset is listed twice"
    names = [c.name for c in inv.job.candidates]
    if names != inv.datasets:
        return f"the job's candidates {names} are not the invited datasets {inv.datasets}"
    if inv.label_encoding != settings.label_encoding:
        return (
            f"label encodings differ: the model owner uses {inv.label_encoding!r}, this data owner "
            f"{settings.label_encoding!r}"
        )
    if job.steps > MAX_STEPS or job.lr > MAX_LR:
        return (
            f"the job's fine-tuning parameters are out of range: steps {job.steps} (at most "
            f"{MAX_STEPS}), lr {job.lr:g} (at most {MAX_LR:g})"
        )
    if not math.isfinite(job.feature_bound) or math.log2(job.feature_bound) % 1 != 0:
        return f"the job's feature bound {job.feature_bound:g} is not a power of two"
    for cand in inv.job.candidates:
        if cand.name not in registry.meta:
            return f"unknown dataset {cand.name!r}; GET /v1/datasets lists this data owner's"
        meta = registry.meta[cand.name]
        if meta.n_features != inv.job.n_features:
            return (
                f"dataset {cand.name!r} has {meta.n_features} features, the model owner's model "
                f"{inv.job.n_features}"
            )
        if meta.n_classes > inv.job.n_classes:
            return (
                f"dataset {cand.name!r} has labels up to {meta.n_classes - 1}, the model owner's "
                f"model only {inv.job.n_classes} classes"
            )
        if meta.n_samples != cand.n_samples:
            return (
                f"dataset {cand.name!r} has {meta.n_samples} samples, the job says {cand.n_samples}"
            )
        if meta.feature_bound > inv.job.feature_bound:
            return (
                f"dataset {cand.name!r} has features up to {meta.feature_bound:g}, above the job's "
                f"feature bound {inv.job.feature_bound:g}"
            )
    return None


def create_app(
    settings: DataOwnerSettings | None = None, client: httpx.AsyncClient | None = None
) -> Any:
    settings = settings or DataOwnerSettings()
    unknown = sorted(set(settings.budgets) - set(settings.model_owner_tokens))
    if unknown:
        log.warning("DATA_OWNER_BUDGETS names model owners without a token: %s", unknown)
    registry = Registry(settings)
    manager = SessionManager(settings, role="data_owner")
    http = client or settings.peer_client()
    callbacks: dict[str, tuple[str, str]] = {}  # session id -> (model owner URL, one-time token)

    caller = bearer_auth(settings.identities)
    router = APIRouter(prefix=API_PREFIX, responses=ERROR_RESPONSES)

    @router.get(
        "/datasets", response_model=list[DatasetMeta], tags=["datasets"], summary="Public metadata"
    )
    async def list_datasets(who: str = Depends(caller)) -> list[DatasetMeta]:
        return list(registry.meta.values())

    @router.get(
        "/datasets/{dataset_id}",
        response_model=DatasetMeta,
        tags=["datasets"],
        summary="One data set",
    )
    async def get_dataset(dataset_id: str, who: str = Depends(caller)) -> DatasetMeta:
        return registry.get(dataset_id)

    @router.post(
        "/datasets",
        response_model=DatasetMeta,
        status_code=201,
        tags=["datasets"],
        summary="Upload a candidate data set (operator only)",
        description="The body is the file itself (`.npz` with arrays X and y, or `.csv` with the "
        "label in the last column); its size is limited by DATA_OWNER_MAX_UPLOAD_BYTES.",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
                },
            }
        },
    )
    async def upload_dataset(
        request: Request,
        id: Annotated[DatasetId, Query(description="the new dataset's id")],
        format: Annotated[Literal["npz", "csv"], Query(description="the file's format")] = "npz",
        who: str = Depends(caller),
    ) -> DatasetMeta:
        if who != OPERATOR:
            raise Forbidden("only the data owner's operator token may upload data sets")
        return await registry.add(id, f".{format}", request.stream())

    @router.post(
        "/invitations",
        response_model=InvitationReply,
        tags=["sessions"],
        summary="A model owner proposes a session (model owners only)",
    )
    async def invite(inv: Invitation, who: str = Depends(caller)) -> InvitationReply:
        if who == OPERATOR:
            raise Forbidden("invitations come from a model owner's token, not the operator's")
        reason = review(inv, who, settings, registry, manager)
        view = manager.store.create(
            SessionView(
                id=inv.session_id,
                role="data_owner",
                state=SessionState.REJECTED if reason else SessionState.ACCEPTED,
                counterpart=who,
                method=inv.job.method,
                datasets=inv.datasets,
                reveal=inv.job.reveal,
                reveal_to=inv.job.reveal_to,
                noise_epsilon=inv.job.noise_epsilon,
                params=_params(inv),
                rendezvous=inv.rendezvous,
                reason=reason,
            )
        )
        if reason is not None:
            log.info("rejected session %s from %s: %s", view.id, who, reason)
            return InvitationReply(accepted=False, reason=reason)
        if inv.callback_url and inv.callback_token:
            callbacks[view.id] = (inv.callback_url, inv.callback_token)
        assert inv.keys is not None  # review() refuses an invitation without them
        manager.start(
            view.id,
            inv.job,
            inv.rendezvous,
            inv.deadlines,
            candidates=[str(registry.paths[d]) for d in inv.datasets],
            keys=inv.keys.for_role("data_owner"),  # only this side's links, whatever was sent
            allow_insecure_tfp=inv.job.provider == "TFP",  # review() refused it unless allowed
        )
        return InvitationReply(accepted=True)

    @router.get(
        "/budget",
        response_model=BudgetView,
        tags=["policy"],
        summary="A model owner's remaining leakage budget (its own; the operator names one)",
    )
    async def budget(
        model_owner: Annotated[
            str | None, Query(description="operator only: whose budget (a model owner's name)")
        ] = None,
        who: str = Depends(caller),
    ) -> BudgetView:
        if who == OPERATOR:
            if model_owner is None:
                raise ConfigError("the operator names the model owner: ?model_owner=NAME")
            name = model_owner
        elif model_owner not in (None, who):
            raise Forbidden("a model owner may read only its own budget")
        else:
            name = who
        if name not in settings.model_owner_tokens:
            raise NotFound(f"no model owner {name!r} is known to this data owner")
        sessions, candidates = settings.budget(name)
        used_sessions, used_candidates = manager.store.usage(name)
        today = manager.store.count_since(name, time.time() - 86400)
        epsilon_spent, without_noise = manager.store.noise_usage(name)

        def use(used: int, limit: int) -> BudgetUse:
            return BudgetUse(used=used, limit=limit, remaining=max(0, limit - used))

        return BudgetView(
            model_owner=name,
            sessions=use(used_sessions, sessions),
            candidates=use(used_candidates, candidates),
            sessions_last_24h=use(today, settings.max_sessions_per_day),
            epsilon_spent=epsilon_spent,
            candidates_without_noise=without_noise,
        )

    async def on_end(view: SessionView) -> None:
        target = callbacks.pop(view.id, None)
        if view.state is SessionState.COMPLETED or target is None:
            return
        url, token = target
        await notify_peer(http, url, token, view, "the data owner")

    manager.on_end = on_end
    app = build_app(
        title="data-appraisal data owner",
        description="Registers candidate data sets and serves their public metadata; accepts or "
        "refuses appraisal sessions by policy; runs its side of each session's MPC.",
        settings=settings,
        manager=manager,
        caller=caller,
        routers=[router],
        upload_limits={UPLOAD_PATH: settings.max_upload_bytes},
        http=http,
    )
    app.state.registry = registry
    return app


def _params(inv: Invitation) -> dict[str, Any]:
    job = inv.job
    return {
        "l2": job.l2,
        "steps": job.steps,
        "lr": job.lr,
        "batch_size": job.batch_size,
        "direction": job.direction,
        "feature_bound": job.feature_bound,
        "n_features": job.n_features,
        "n_classes": job.n_classes,
        "provider": job.provider,
        "transport": job.transport,
        "v_bound": job.v_bound,
    }
