"""Durable session records (one SQLite file per service) and the session state machine.

Each write is its own transaction (WAL journal, synchronous=FULL), so a crash loses nothing that a
response already reported. :func:`check_transition` is the one place that says which state may
follow which; :meth:`SessionStore.advance` is the only way a state changes, and a terminal session
never changes again. At start-up, :meth:`SessionStore.recover` fails every session that was still
live: its worker died with the service.

A record holds only what :class:`~common.web.schemas.SessionView` shows: never a token, τ or a
session's MPC link keys. The file's schema has a version (``PRAGMA user_version``); older files are
migrated when opened. The standard library's sqlite3 rather than an ORM: one table, a handful of
queries, and the durability settings in plain sight.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import Conflict, NotFound
from common.protocol import CandidateResult, JobSpec
from common.web.schemas import TERMINAL, Progress, SessionState, SessionView

S = SessionState
# Which state may follow which. A proposal is answered (accepted or rejected) or ends before an
# answer; an accepted session starts running when its workers met, or ends before; a running one
# ends. Terminal states have no successor.
TRANSITIONS: dict[SessionState, frozenset[SessionState]] = {
    S.PROPOSED: frozenset({S.ACCEPTED, S.REJECTED, S.FAILED, S.EXPIRED, S.CANCELLED}),
    S.ACCEPTED: frozenset({S.RUNNING, S.FAILED, S.EXPIRED, S.CANCELLED}),
    S.RUNNING: frozenset({S.COMPLETED, S.FAILED, S.EXPIRED, S.CANCELLED}),
    **{state: frozenset() for state in TERMINAL},
}


def check_transition(current: SessionState, new: SessionState) -> None:
    """Raise ValueError unless a session in state ``current`` may move to ``new``."""
    if new not in TRANSITIONS[current]:
        article = "an" if current.value[0] in "aeiou" else "a"
        raise ValueError(f"{article} {current.value} session cannot become {new.value}")


SCHEMA_VERSION = 2
log = logging.getLogger("data_appraisal.sessions")


@dataclass(frozen=True)
class StoreTotals:
    """What :meth:`SessionStore.totals` counts."""

    sessions: dict[SessionState, int]  # every state, zero included
    results: int  # candidate results stored (revealed)
    mpc_seconds: float  # their MPC seconds, summed
    bytes_sent: int  # by this party's workers
    bytes_received: int


_UNHAPPY = frozenset({SessionState.FAILED, SessionState.EXPIRED})  # logged as warnings

_TABLE = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    state TEXT NOT NULL,
    counterpart TEXT NOT NULL,
    method TEXT NOT NULL,
    datasets TEXT NOT NULL,
    job TEXT,
    noise_epsilon REAL,
    rendezvous TEXT,
    reason TEXT,
    progress TEXT NOT NULL,
    results TEXT NOT NULL,
    charged INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
)
"""
_INDEX = "CREATE INDEX IF NOT EXISTS sessions_counterpart ON sessions (counterpart, created_at)"
_COLUMNS = (
    "id",
    "role",
    "state",
    "counterpart",
    "method",
    "datasets",
    "job",
    "noise_epsilon",
    "rendezvous",
    "reason",
    "progress",
    "results",
    "charged",
    "created_at",
    "updated_at",
)
_TERMINAL_SQL = ", ".join(f"'{s.value}'" for s in TERMINAL)  # fixed enum values, not input


def _results_json(results: list[CandidateResult]) -> str:
    return json.dumps([r.model_dump() for r in results])


class SessionStore:
    """Thread-safe records of one service's sessions."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._migrate()

    def _migrate(self) -> None:
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        exists = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sessions'"
        ).fetchone()
        if exists and version < 2:
            self._migrate_to_2()
        self._db.execute(_TABLE)
        self._db.execute(_INDEX)
        self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _migrate_to_2(self) -> None:
        """Files of 0.1 copied the job's fields into columns and had no per-candidate charge.

        The table is rebuilt: each row keeps its identity, state, reason, progress and results;
        its job is unknown (null); a session that was not rejected is charged every candidate it
        listed, since any of them may have been revealed."""
        have = {row["name"] for row in self._db.execute("PRAGMA table_info(sessions)")}
        epsilon = "noise_epsilon" if "noise_epsilon" in have else "NULL"
        charged = (
            "charged"
            if "charged" in have
            else "CASE WHEN state = 'rejected' THEN 0 ELSE json_array_length(datasets) END"
        )
        self._db.execute("BEGIN")
        try:
            self._db.execute("DROP INDEX IF EXISTS sessions_counterpart")
            self._db.execute("ALTER TABLE sessions RENAME TO sessions_v1")
            self._db.execute(_TABLE)
            self._db.execute(
                f"INSERT INTO sessions ({', '.join(_COLUMNS)}) SELECT id, role, state, "
                f"counterpart, method, datasets, NULL, {epsilon}, rendezvous, reason, progress, "
                f"results, {charged}, created_at, updated_at FROM sessions_v1"
            )
            self._db.execute("DROP TABLE sessions_v1")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @staticmethod
    def _view(row: sqlite3.Row) -> SessionView:
        return SessionView(
            id=row["id"],
            role=row["role"],
            state=SessionState(row["state"]),
            counterpart=row["counterpart"],
            method=row["method"],
            datasets=json.loads(row["datasets"]),
            job=None if row["job"] is None else JobSpec.model_validate_json(row["job"]),
            rendezvous=row["rendezvous"],
            reason=row["reason"],
            progress=Progress.model_validate_json(row["progress"]),
            results=[CandidateResult.model_validate(r) for r in json.loads(row["results"])],
            charged=row["charged"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )

    def create(self, view: SessionView) -> SessionView:
        values = (
            view.id,
            view.role,
            view.state.value,
            view.counterpart,
            view.method,
            json.dumps(view.datasets),
            None if view.job is None else view.job.model_dump_json(),
            None if view.job is None else view.job.noise_epsilon,
            view.rendezvous,
            view.reason,
            view.progress.model_dump_json(),
            _results_json(view.results),
            view.charged,
            view.created_at,
            view.updated_at,
        )
        with self._lock:
            try:
                self._db.execute(
                    f"INSERT INTO sessions ({', '.join(_COLUMNS)}) "
                    f"VALUES ({', '.join('?' for _ in _COLUMNS)})",
                    values,
                )
            except sqlite3.IntegrityError:
                raise Conflict(f"a session with id {view.id} already exists") from None
        log.info(
            "session %s %s (%s on %d candidates, with %s)",
            view.id,
            view.state.value,
            view.method,
            len(view.datasets),
            view.counterpart,
            extra={"session": view.id, "role": view.role, "state": view.state.value},
        )
        return view

    def get(self, session_id: str) -> SessionView:
        with self._lock:
            row = self._db.execute("SELECT * FROM sessions WHERE id = ?", (session_id,)).fetchone()
        if row is None:
            raise NotFound(f"no session {session_id!r}; GET /v1/sessions lists them")
        return self._view(row)

    def all(self, limit: int = 100, state: SessionState | None = None) -> list[SessionView]:
        query, args = "SELECT * FROM sessions", []
        if state is not None:
            query, args = query + " WHERE state = ?", [state.value]
        with self._lock:
            rows = self._db.execute(
                query + " ORDER BY created_at DESC LIMIT ?", (*args, limit)
            ).fetchall()
        return [self._view(r) for r in rows]

    def totals(self) -> StoreTotals:
        """Sessions by state, and what their results cost (for ``/metrics``): one query, over
        every session this store keeps."""
        with self._lock:
            states = self._db.execute(
                "SELECT state, COUNT(*) AS n FROM sessions GROUP BY state"
            ).fetchall()
            row = self._db.execute(
                "SELECT COUNT(r.value) AS n, "
                "TOTAL(json_extract(r.value, '$.seconds')) AS seconds, "
                "TOTAL(json_extract(r.value, '$.bytes_sent')) AS sent, "
                "TOTAL(json_extract(r.value, '$.bytes_received')) AS received "
                "FROM sessions, json_each(sessions.results) AS r"
            ).fetchone()
        by_state = {state: 0 for state in SessionState}
        by_state.update({SessionState(r["state"]): int(r["n"]) for r in states})
        return StoreTotals(
            sessions=by_state,
            results=int(row["n"]),
            mpc_seconds=float(row["seconds"]),
            bytes_sent=int(row["sent"]),
            bytes_received=int(row["received"]),
        )

    def advance(self, session_id: str, state: SessionState, **data: Any) -> SessionView:
        """Move a session to ``state`` (see :data:`TRANSITIONS`), with ``reason`` and any data
        fields of :meth:`record`. A session that already ended is left as it is (whoever ended it
        first stated why); an illegal move between live states is a programming error."""
        with self._lock:
            row = self._db.execute(
                "SELECT state FROM sessions WHERE id = ?", (session_id,)
            ).fetchone()
            if row is None:
                raise NotFound(f"no session {session_id!r}; GET /v1/sessions lists them")
            current = SessionState(row["state"])
            moved = not current.terminal
            if moved:
                check_transition(current, state)
                self._write(session_id, {"state": state.value, **self._encode(data)})
        view = self.get(session_id)
        if moved and state is not current:  # one line per transition, successes included
            _log_transition(view, current)
        return view

    def record(self, session_id: str, **data: Any) -> SessionView:
        """Store a live session's data: ``progress``, ``results``, ``charged``, ``rendezvous``,
        ``job``, ``reason``. An ended session's record is final and is left as it is."""
        with self._lock:
            self._write(session_id, self._encode(data))
        return self.get(session_id)

    @staticmethod
    def _encode(data: dict[str, Any]) -> dict[str, Any]:
        encoded: dict[str, Any] = {}
        for key, value in data.items():
            if key == "progress":
                encoded[key] = Progress.model_validate(value).model_dump_json()
            elif key == "results":
                encoded[key] = _results_json([CandidateResult.model_validate(r) for r in value])
            elif key == "charged":
                encoded[key] = int(value)
            elif key == "job":
                job = value if isinstance(value, JobSpec) else JobSpec.model_validate(value)
                encoded["job"], encoded["noise_epsilon"] = job.model_dump_json(), job.noise_epsilon
            elif key in ("reason", "rendezvous"):
                encoded[key] = value
            else:
                raise ValueError(f"cannot update session field {key!r}")
        return encoded

    def _write(self, session_id: str, encoded: dict[str, Any]) -> None:
        encoded["updated_at"] = time.time()
        assignments = ", ".join(f"{k} = ?" for k in encoded)
        self._db.execute(
            f"UPDATE sessions SET {assignments} WHERE id = ? AND state NOT IN ({_TERMINAL_SQL})",
            (*encoded.values(), session_id),
        )

    # What a counterpart's session costs its budget: a live session reserves every candidate it
    # lists (each may yet be revealed); an ended one is charged the candidates that entered the
    # MPC (``charged``: each may have revealed its value). A session that ended before any
    # candidate entered the MPC (rejected, expired at the rendezvous, failed to start) costs nothing.
    _COST = (
        f"CASE WHEN state IN ({_TERMINAL_SQL}) THEN charged ELSE json_array_length(datasets) END"
    )

    def count_since(self, counterpart: str, since: float) -> int:
        """Sessions of a counterpart created since ``since`` that cost its budget something."""
        query = (
            "SELECT COUNT(*) FROM sessions WHERE counterpart = ? AND created_at >= ? "
            f"AND ({self._COST}) > 0"
        )
        with self._lock:
            return int(self._db.execute(query, (counterpart, since)).fetchone()[0])

    def usage(self, counterpart: str) -> tuple[int, int]:
        """Lifetime (sessions, candidates) charged to a counterpart (see ``_COST``)."""
        query = (
            f"SELECT COALESCE(SUM(({self._COST}) > 0), 0), COALESCE(SUM({self._COST}), 0) "
            "FROM sessions WHERE counterpart = ?"
        )
        with self._lock:
            sessions, candidates = self._db.execute(query, (counterpart,)).fetchone()
        return int(sessions), int(candidates)

    def noise_usage(self, counterpart: str) -> tuple[float, int]:
        """Over a counterpart's charged candidates: (Σ noise_epsilon × candidates of the sessions
        with noise, candidates of the sessions without)."""
        query = (
            f"SELECT COALESCE(SUM(noise_epsilon * ({self._COST})), 0.0), "
            f"COALESCE(SUM(CASE WHEN noise_epsilon IS NULL THEN {self._COST} ELSE 0 END), 0) "
            "FROM sessions WHERE counterpart = ?"
        )
        with self._lock:
            epsilon, plain = self._db.execute(query, (counterpart,)).fetchone()
        return float(epsilon), int(plain)

    def recover(self) -> list[str]:
        """Fail every session left live by a previous process; return their ids."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT id FROM sessions WHERE state NOT IN ({_TERMINAL_SQL})"
            ).fetchall()
        live = [row["id"] for row in rows]
        for session_id in live:
            self.advance(
                session_id,
                SessionState.FAILED,
                reason="the service stopped while this session was live; its worker stopped with it",
            )
        return live


def _log_transition(view: SessionView, previous: SessionState) -> None:
    extra: dict[str, Any] = {
        "session": view.id,
        "role": view.role,
        "state": view.state.value,
        "previous": previous.value,
    }
    text = f"session {view.id} {previous.value} -> {view.state.value}"
    if view.state.terminal:
        extra["results"], extra["charged"] = len(view.results), view.charged
        extra["mpc_seconds"] = round(sum(r.seconds for r in view.results), 3)
        text += f" ({len(view.results)}/{len(view.datasets)} results)"
    if view.reason and view.state is not SessionState.COMPLETED:
        extra["reason"] = view.reason
        text += f": {view.reason}"
    level = logging.WARNING if view.state in _UNHAPPY else logging.INFO
    log.log(level, text, extra=extra)
