"""The dealer's service: for each session, a worker that serves Beaver triples and holds no input.

The two-party MPC needs a third process that generates every multiplication triple (the job's
provider "TTP"; our dealer, :mod:`common.mpc.dealer`, stands in for CrypTen's). Whoever generates
the triples can unmask the opened values, so neither owner may run the dealer: it is a separate
service that both owners trust not to collude with the other (see docs/threat-model.md).

Each of the dealer's two links has a key from its own party: the data owner registers the key of
their link for a session first (:meth:`Dealer.register_data_owner`, with the digest of the job it
accepted), then the model owner asks the dealer to serve the session (:meth:`Dealer.join`, with the
key of their link). The dealer starts its worker only when both agree on the job; neither owner
ever holds the other's key. Keys go only into the worker's configuration: never stored, logged or
returned. No HTTP here (:mod:`dealer.routes`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from common.errors import ConfigError, Conflict, Forbidden
from common.protocol import SessionKeys
from common.web.schemas import DataOwnerKey, DealerJob, SessionState, SessionView
from common.web.sessions import SessionManager
from common.web.settings import Credential
from dealer.settings import DATA_OWNER, DealerSettings


@dataclass(frozen=True)
class _Pending:
    data_owner: str
    job_digest: str
    key: str
    expires: float


class Dealer:
    def __init__(self, settings: DealerSettings) -> None:
        self.settings = settings
        self.sessions = SessionManager(settings, role="dealer")
        self._pending: dict[str, _Pending] = {}  # session id → the data owner's key, until used

    def identities(self) -> dict[str, Credential]:
        return self.settings.identities()

    def _expire(self) -> None:
        now = time.monotonic()
        for session_id in [s for s, p in self._pending.items() if p.expires < now]:
            del self._pending[session_id]

    def register_data_owner(self, session_id: str, body: DataOwnerKey, who: str) -> None:
        """A data owner's key of its link with the dealer for one session (first come: a second
        registration for the session is refused, so nobody can replace the data owner's key)."""
        if not who.startswith(DATA_OWNER):
            raise Forbidden("only a data owner registers the data owner ↔ dealer key")
        self._expire()
        if session_id in self._pending or self._known(session_id):
            raise Conflict(f"session {session_id} already has a data owner's key")
        self._pending[session_id] = _Pending(
            data_owner=who.removeprefix(DATA_OWNER),
            job_digest=body.job_digest,
            key=body.key,
            expires=time.monotonic() + self.settings.rendezvous_timeout,
        )

    def _known(self, session_id: str) -> bool:
        try:
            self.sessions.store.get(session_id)
        except Exception:
            return False
        return True

    def join(self, body: DealerJob, who: str) -> SessionView:
        """Record the session and start this side's worker; refuse what it does not serve."""
        if who.startswith(DATA_OWNER):
            raise Forbidden("a session is requested with a model owner's token")
        if body.job.provider != "TTP":
            raise Forbidden("the dealer serves TTP sessions only")
        keys = body.keys or SessionKeys()
        if keys.mo_dealer is None:
            raise ConfigError(
                "the dealer job carries no pre-shared key for the MPC link mo-dealer", field="keys"
            )
        if keys.do_dealer is not None:
            raise ConfigError(
                "the dealer job carries a key for the data owner ↔ dealer link: only the data "
                "owner gives that one",
                field="keys",
            )
        self.sessions.admit()
        self._expire()
        pending = self._pending.get(body.session_id)
        if pending is None:
            raise Conflict(
                f"no data owner has registered its key for session {body.session_id} (it does so "
                "when it accepts the invitation); the dealer serves only sessions both owners joined"
            )
        if pending.job_digest != body.job.digest().hex():
            raise Conflict(
                f"the data owner accepted another job for session {body.session_id} than the one "
                "the model owner sends: the dealer serves neither"
            )
        del self._pending[body.session_id]
        view = self.sessions.store.create(
            SessionView(
                id=body.session_id,
                role="dealer",
                state=SessionState.ACCEPTED,
                counterpart=who,
                method=body.job.method,
                datasets=[c.name for c in body.job.candidates],
                job=body.job,
                rendezvous=body.rendezvous,
            )
        )
        self.sessions.start(
            view,
            body.rendezvous,
            body.deadlines,
            keys=SessionKeys(mo_dealer=keys.mo_dealer, do_dealer=pending.key),
        )
        return view
