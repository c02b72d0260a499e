"""A service's sessions: their records, and the supervision of each live session's worker.

:class:`SessionManager` records sessions in SQLite (:mod:`common.web.store`, whose state machine
every change goes through) and runs this side's worker of each accepted session under the one
supervisor (:func:`common.runtime.supervisor.supervise`) in a task of the event loop: it starts the
worker (its secrets in a 0600 file named in its environment), records its progress and each
finished candidate's result as they come, enforces the rendezvous and compute deadlines, stops it
with SIGTERM then SIGKILL on cancel or shutdown, and records how it ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.errors import Conflict, NotFound, Unavailable
from common.protocol import CandidateResult
from common.runtime.config import PartyConfig
from common.runtime.supervisor import (
    Cancel,
    Party,
    WorkerProgress,
    party_config,
    start_party,
    supervise,
)
from common.web.schemas import Deadlines, Progress, SessionState, SessionView
from common.web.settings import ServiceSettings
from common.web.store import SessionStore

log = logging.getLogger("data_appraisal.web")

OnEnd = Callable[[SessionView], Awaitable[None]]
_OUTCOMES = {
    "completed": SessionState.COMPLETED,
    "failed": SessionState.FAILED,
    "expired": SessionState.EXPIRED,
    "cancelled": SessionState.CANCELLED,
}


@dataclass
class _Run:
    cancel: Cancel = field(default_factory=Cancel)
    task: asyncio.Task[None] | None = None
    notified: bool = False  # the peers were told of the end before the worker was stopped


def _results(rows: Sequence[dict[str, Any]]) -> list[CandidateResult]:
    return [CandidateResult.model_validate(r) for r in rows]


class SessionManager:
    """Session records plus the supervisor task of each live session's worker."""

    def __init__(self, settings: ServiceSettings, role: str) -> None:
        settings.check_secrets()
        self.settings = settings
        self.role = role
        self.store = SessionStore(settings.database_path)
        self.workroot = settings.state_dir / "work"
        self.on_end: OnEnd | None = None  # tells the peers how a session ended (set by the service)
        self._runs: dict[str, _Run] = {}
        recovered = self.store.recover()
        if recovered:
            log.warning("marked %d interrupted sessions as failed: %s", len(recovered), recovered)
        shutil.rmtree(self.workroot, ignore_errors=True)  # worker files of a previous process

    def deadlines(self) -> Deadlines:
        return Deadlines(
            rendezvous_seconds=self.settings.rendezvous_timeout,
            compute_seconds=self.settings.compute_timeout,
        )

    def new_workdir(self, session_id: str) -> Path:
        path = self.workroot / session_id
        path.mkdir(parents=True, exist_ok=False, mode=0o700)
        os.chmod(self.workroot, 0o700)
        return path

    def running(self) -> list[str]:
        return list(self._runs)

    def admit(self, pending: int = 0) -> None:
        """Refuse one more session (503, retry later) when this service already supervises
        ``*_MAX_CONCURRENT_SESSIONS`` (plus ``pending`` being negotiated)."""
        limit = self.settings.max_concurrent_sessions
        if len(self._runs) + pending >= limit:
            raise Unavailable(
                f"this {self.role.replace('_', ' ')} already runs {limit} sessions "
                f"({self.settings.env_name('max_concurrent_sessions')}); retry later"
            )

    def start(
        self,
        view: SessionView,
        rendezvous: str,
        proposed: Deadlines | None = None,
        *,
        release: Callable[[], None] | None = None,
        **inputs: Any,
    ) -> None:
        """Start this side's worker for an accepted session and supervise it in a task.

        The deadlines are the smaller of this service's own and the ``proposed`` ones; ``inputs``
        are the worker's own files (and, for the model owner, τ), written to its 0600 config.
        """
        assert view.job is not None, "a session starts with its agreed job"
        deadlines = self.deadlines().tightest(proposed)
        workdir = self.new_workdir(view.id)
        config = party_config(
            self.role,
            job=view.job,
            rendezvous=rendezvous,
            workdir=workdir,
            timeout=deadlines.rendezvous_seconds,
            session_id=view.id,
            **inputs,
        )
        run = _Run()
        self._runs[view.id] = run
        run.task = asyncio.get_running_loop().create_task(
            self._supervise(view.id, config, workdir, deadlines, release, run)
        )

    def _progressed(self, session_id: str, last: list[WorkerProgress]) -> Callable[..., None]:
        def record(role: str, progress: WorkerProgress) -> None:
            fields: dict[str, Any] = {
                "progress": Progress(
                    done=progress.done,
                    total=progress.total,
                    step=progress.step,
                    steps=progress.steps,
                ),
                "charged": progress.started,
            }
            if not last or len(progress.results) != len(last[0].results):
                fields["results"] = _results(progress.results)
            if not last:  # the worker has joined the rendezvous
                self.store.advance(session_id, SessionState.RUNNING, **fields)
            else:
                self.store.record(session_id, **fields)
            last[:] = [progress]

        return record

    async def _supervise(
        self,
        session_id: str,
        config: PartyConfig,
        workdir: Path,
        deadlines: Deadlines,
        release: Callable[[], None] | None,
        run: _Run,
    ) -> None:
        party: Party | None = None
        state, reason = SessionState.FAILED, ""
        fields: dict[str, Any] = {}
        last: list[WorkerProgress] = []
        try:
            party = await asyncio.to_thread(start_party, config, workdir)
            # the worker has its link keys (its 0600 config file): keep no copy in this process
            party.config = config = config.model_copy(update={"keys": None})
            report = await supervise(
                [party],
                rendezvous_seconds=deadlines.rendezvous_seconds,
                compute_seconds=deadlines.compute_seconds,
                cancel=run.cancel,
                on_progress=self._progressed(session_id, last),
            )
            state, reason = _OUTCOMES[report.outcome], report.reason
            final = report.progress.get(config.role)
            if final is not None:
                fields["charged"] = final.started
                fields["results"] = _results(final.results)
            if state is SessionState.COMPLETED:
                payload = report.results.get(config.role, {})
                fields["results"] = _results(payload.get("results", []))
                fields["charged"] = len(config.job.candidates)  # every candidate was revealed
                if not last:  # it finished before the supervisor saw it join
                    self.store.advance(session_id, SessionState.RUNNING)
        except Exception as exc:  # the supervisor itself must never leave a session live
            log.exception("supervising session %s failed", session_id)
            state, reason = (
                SessionState.FAILED,
                f"the supervisor failed: {type(exc).__name__}: {exc}",
            )
        finally:
            if party is not None and state is not SessionState.COMPLETED:
                log.warning(
                    "session %s %s: %s\n%s", session_id, state.value, reason, party.log_tail()
                )
            if release is not None:
                release()
            shutil.rmtree(workdir, ignore_errors=True)
            view = self.store.advance(session_id, state, reason=reason or None, **fields)
            self._runs.pop(session_id, None)
        if self.on_end is not None and not run.notified:
            try:
                await self.on_end(view)
            except Exception:
                log.exception("reporting the end of session %s to its peers failed", session_id)

    async def stop(
        self,
        session_id: str,
        reason: str,
        state: SessionState = SessionState.CANCELLED,
        *,
        notify_first: bool = False,
    ) -> SessionView:
        """Cancel (or fail) a session: stop its worker if it has one, and record why.

        With ``notify_first`` (every cancel through the API: an operator's, or a peer's report) the
        peers are told before this side's
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
            return self.store.advance(session_id, state, reason=reason)
        if run.cancel.stopping:
            return view
        run.cancel.stopping = True
        run.cancel.outcome, run.cancel.reason = state.value, reason  # type: ignore[assignment]
        if notify_first and self.on_end is not None:
            run.notified = True
            try:
                await self.on_end(view.model_copy(update={"state": state, "reason": reason}))
            except Exception:
                log.exception("telling the peers that session %s ends failed", session_id)
        run.cancel.event.set()
        await asyncio.shield(run.task)
        return self.store.get(session_id)

    async def shutdown(self) -> None:
        """Stop every live worker (the service is going away); their sessions fail."""
        for session_id in list(self._runs):
            with contextlib.suppress(Conflict, NotFound):
                await self.stop(session_id, "the service shut down", SessionState.FAILED)
        self.store.close()
