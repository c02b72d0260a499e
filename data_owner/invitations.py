"""The data owner's service: its data sets, the invitations it accepts, and its worker's sessions.

It serves only public metadata; the rows stay in ``data_dir`` and are read by this side's own
worker process, which secret-shares them with the model owner's worker over TCP. Every invitation
is checked against this data owner's policy (:mod:`data_owner.policy`), including a lifetime
leakage budget per model owner. The session's MPC link keys arrive in the invitation and go only
into this side's worker configuration: never stored, logged or returned. No HTTP here: the routes
(:mod:`data_owner.routes`) call this object.
"""

from __future__ import annotations

import logging
import secrets
import time

import httpx

from common.errors import ConfigError, Forbidden, NotFound, PeerUnavailable
from common.protocol import SessionKeys
from common.web.peers import notify_peer, peer_call, peer_detail
from common.web.schemas import (
    API_PREFIX,
    BudgetUse,
    BudgetView,
    DataOwnerKey,
    Invitation,
    InvitationReply,
    SessionState,
    SessionView,
)
from common.web.sessions import SessionManager
from common.web.settings import OPERATOR, Credential
from common.web.tls import peer_client
from data_owner.policy import Review, refusal
from data_owner.registry import Registry
from data_owner.settings import DataOwnerSettings

log = logging.getLogger("data_appraisal.data_owner")


class DataOwner:
    def __init__(self, settings: DataOwnerSettings, client: httpx.AsyncClient | None = None):
        unknown = sorted(set(settings.budgets) - set(settings.model_owners))
        if unknown:
            log.warning("DATA_OWNER_BUDGETS names model owners without a token: %s", unknown)
        self.settings = settings
        self.registry = Registry(settings)
        self.sessions = SessionManager(settings, role="data_owner")
        self.http = client or peer_client(settings)
        self._callbacks: dict[str, tuple[str, str]] = {}  # session id → (model owner URL, token)
        self.sessions.on_end = self._on_end

    def identities(self) -> dict[str, Credential]:
        return self.settings.identities()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def invite(self, inv: Invitation, who: str) -> InvitationReply:
        """Accept (and start this side's worker) or refuse; both are recorded. Accepting a session
        with a dealer first gives the dealer this side's own key of their link."""
        self.sessions.admit()  # 503 before anything is recorded or charged
        reason = refusal(Review(inv, who, self.settings, self.registry, self.sessions.store))
        keys: SessionKeys | None = None
        if reason is None:
            assert inv.keys is not None  # the policy refuses an invitation without them
            keys = SessionKeys(mo_do=inv.keys.mo_do)
            if inv.job.provider == "TTP":
                keys.do_dealer, reason = await self._register_with_dealer(inv)
        view = self.sessions.store.create(
            SessionView(
                id=inv.session_id,
                role="data_owner",
                state=SessionState.REJECTED if reason else SessionState.ACCEPTED,
                counterpart=who,
                method=inv.job.method,
                datasets=inv.datasets,
                job=inv.job,
                rendezvous=inv.rendezvous,
                reason=reason,
            )
        )
        if reason is not None:
            log.info("rejected session %s from %s: %s", view.id, who, reason)
            return InvitationReply(accepted=False, reason=reason)
        callback = self.settings.model_owners[who].callback_url
        if callback and inv.callback_token:
            self._callbacks[view.id] = (callback, inv.callback_token)
        assert keys is not None
        self.sessions.start(
            view,
            inv.rendezvous,
            inv.deadlines,
            candidates=[str(self.registry.paths[d]) for d in inv.datasets],
            keys=keys,
            allow_insecure_tfp=inv.job.provider == "TFP",  # the policy refused it unless allowed
        )
        return InvitationReply(accepted=True)

    async def _register_with_dealer(self, inv: Invitation) -> tuple[str | None, str | None]:
        """Give the dealer (one this data owner configured: the policy checked) a fresh key of
        their link for this session, with the digest of the job accepted; (key, None), or
        (None, why the dealer refused)."""
        found = self.settings.dealer(inv.dealer_url)
        assert found is not None
        name, dealer = found
        key = secrets.token_hex(32)
        body = DataOwnerKey(job_digest=inv.job.digest().hex(), key=key)
        url = f"{dealer.url.rstrip('/')}{API_PREFIX}/sessions/{inv.session_id}/data-owner"
        try:
            response = await peer_call(self.http, "POST", url, dealer.token, body.model_dump())
        except (PeerUnavailable, ConfigError) as exc:
            return None, f"the data owner could not give dealer {name!r} its key: {exc}"
        if response.status_code != 201:
            return None, f"dealer {name!r} refused the data owner's key: {peer_detail(response)}"
        return key, None

    def budget(self, who: str, model_owner: str | None) -> BudgetView:
        """A model owner's leakage budget here: its own, or any one's for the operator."""
        if who == OPERATOR:
            if model_owner is None:
                raise ConfigError("the operator names the model owner: ?model_owner=NAME")
            name = model_owner
        elif model_owner not in (None, who):
            raise Forbidden("a model owner may read only its own budget")
        else:
            name = who
        if name not in self.settings.model_owners:
            raise NotFound(f"no model owner {name!r} is known to this data owner")
        store = self.sessions.store
        sessions, candidates = self.settings.budget(name)
        used_sessions, used_candidates = store.usage(name)
        today = store.count_since(name, time.time() - 86400)
        epsilon_spent, without_noise = store.noise_usage(name)

        def use(used: int, limit: int) -> BudgetUse:
            return BudgetUse(used=used, limit=limit, remaining=max(0, limit - used))

        return BudgetView(
            model_owner=name,
            sessions=use(used_sessions, sessions),
            candidates=use(used_candidates, candidates),
            sessions_last_24h=use(today, self.settings.max_sessions_per_day),
            epsilon_spent=epsilon_spent,
            candidates_without_noise=without_noise,
        )

    async def _on_end(self, view: SessionView) -> None:
        target = self._callbacks.pop(view.id, None)
        if view.state is SessionState.COMPLETED or target is None:
            return
        url, token = target
        await notify_peer(self.http, url, token, view, "the data owner")
