"""The dealer's service: for each session, a worker that serves Beaver triples and holds no input.

The two-party MPC needs a third process that generates every multiplication triple (the job's
provider "TTP"; our dealer, :mod:`common.mpc.dealer`, stands in for CrypTen's). Whoever generates
the triples can unmask the opened values, so neither owner may run the dealer: it is a separate
service that both owners trust not to collude with the other (see docs/threat-model.md). A model
owner asks it to join a session's rendezvous; the dealer sees the public job and nothing else. The
job carries the dealer's pre-shared keys of its two MPC links; they go only into its worker's
configuration and are never stored, logged or returned. No HTTP here (:mod:`dealer.routes`).
"""

from __future__ import annotations

from pydantic import SecretStr

from common.errors import ConfigError, Forbidden, Unavailable
from common.web.schemas import DealerJob, SessionState, SessionView
from common.web.sessions import SessionManager
from dealer.settings import DealerSettings


class Dealer:
    def __init__(self, settings: DealerSettings) -> None:
        self.settings = settings
        self.sessions = SessionManager(settings, role="dealer")

    def identities(self) -> dict[str, SecretStr]:
        return self.settings.identities()

    def join(self, body: DealerJob, who: str) -> SessionView:
        """Record the session and start this side's worker; refuse what it does not serve."""
        if body.job.provider != "TTP":
            raise Forbidden("the dealer serves TTP sessions only")
        missing = body.keys.missing("dealer") if body.keys else ["mo-dealer", "do-dealer"]
        if missing:
            raise ConfigError(
                f"the dealer job carries no pre-shared key for the MPC link(s) {', '.join(missing)}"
            )
        if len(self.sessions.running()) >= self.settings.max_concurrent_sessions:
            raise Unavailable(
                f"the dealer already serves {self.settings.max_concurrent_sessions} sessions "
                "(DEALER_MAX_CONCURRENT_SESSIONS); retry later"
            )
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
        assert body.keys is not None
        self.sessions.start(
            view, body.rendezvous, body.deadlines, keys=body.keys.for_role("dealer")
        )
        return view
