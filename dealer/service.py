"""The dealer service: for each session, a worker that serves Beaver triples and holds no input.

The two-party MPC needs a third process that generates every multiplication triple (the job's
provider "TTP"; our dealer, common/secure_mpc.py, stands in for CrypTen's). Whoever generates the
triples can unmask the opened values, so neither owner may run the dealer: it is a separate service
that both owners trust not to collude with the other (see docs/threat-model.md). A model owner asks it to join a session's
rendezvous; the dealer sees the public job and nothing else. The job carries the dealer's
pre-shared keys of its two MPC links (to each owner's worker); they go only into its worker's
configuration and are never stored, logged or returned.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends
from pydantic_settings import SettingsConfigDict

from common.errors import ConfigError
from common.schemas import API_PREFIX, DealerJob, SessionState, SessionView
from common.service import (
    ERROR_RESPONSES,
    OPERATOR,
    Forbidden,
    ServesModelOwners,
    SessionManager,
    bearer_auth,
    build_app,
)
from common.worker import SessionKeys


class DealerSettings(ServesModelOwners):
    """Environment variables ``DEALER_<FIELD>`` (dicts as JSON)."""

    model_config = SettingsConfigDict(env_prefix="DEALER_")

    port: int = 8002
    state_dir: Path = Path("state/dealer")
    max_concurrent_sessions: int = 16


def create_app(settings: DealerSettings | None = None) -> Any:
    settings = settings or DealerSettings()
    manager = SessionManager(settings, role="dealer")

    caller = bearer_auth(settings.identities)
    router = APIRouter(prefix=API_PREFIX, responses=ERROR_RESPONSES)

    @router.post(
        "/sessions",
        response_model=SessionView,
        status_code=201,
        tags=["sessions"],
        summary="Serve Beaver triples for a session (model owners only)",
    )
    async def join(body: DealerJob, who: str = Depends(caller)) -> SessionView:
        if who == OPERATOR:
            raise Forbidden("a session is requested with a model owner's token")
        if body.job.provider != "TTP":
            raise Forbidden("the dealer serves TTP sessions only")
        if body.job.transport != "secure":
            raise Forbidden(
                f"the dealer serves the secure MPC transport only; the job asks for "
                f"{body.job.transport!r}"
            )
        missing = SessionKeys.missing(body.keys, "dealer")
        if missing:
            raise ConfigError(
                f"the dealer job carries no pre-shared key for the MPC link(s) {', '.join(missing)}"
            )
        if len(manager.running()) >= settings.max_concurrent_sessions:
            raise Forbidden(
                f"the dealer already serves {settings.max_concurrent_sessions} sessions "
                "(DEALER_MAX_CONCURRENT_SESSIONS); retry later"
            )
        view = manager.store.create(
            SessionView(
                id=body.session_id,
                role="dealer",
                state=SessionState.ACCEPTED,
                counterpart=who,
                method=body.job.method,
                datasets=[c.name for c in body.job.candidates],
                reveal=body.job.reveal,
                reveal_to=body.job.reveal_to,
                params={"provider": body.job.provider, "transport": body.job.transport},
                rendezvous=body.rendezvous,
            )
        )
        assert body.keys is not None
        manager.start(
            view.id,
            body.job,
            body.rendezvous,
            body.deadlines,
            reports_progress=False,
            keys=body.keys.for_role("dealer"),
        )
        manager.store.update(view.id, state=SessionState.RUNNING)
        return manager.store.get(view.id)

    return build_app(
        title="data-appraisal dealer",
        description="Serves Beaver triples to both owners' workers (provider TTP). "
        "Holds no inputs; neither owner may run it for both.",
        settings=settings,
        manager=manager,
        caller=caller,
        routers=[router],
    )
