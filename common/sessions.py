"""Durable session records: one SQLite file per service.

Each write is its own transaction (WAL journal, synchronous=FULL), so a crash loses nothing that a
response already reported. At start-up, :meth:`SessionStore.recover` marks every session that was
still proposed, accepted or running as failed, with the cause: its worker died with the service.

A record holds only what :class:`~common.schemas.SessionView` shows: never a token, τ or a session's
MPC link keys.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from common.errors import AppraisalError
from common.schemas import TERMINAL, CandidateOutcome, Progress, SessionState, SessionView


class NotFound(AppraisalError):
    status_code = 404


class Conflict(AppraisalError):
    status_code = 409


_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    state TEXT NOT NULL,
    counterpart TEXT NOT NULL,
    method TEXT NOT NULL,
    datasets TEXT NOT NULL,
    reveal TEXT NOT NULL,
    reveal_to TEXT NOT NULL DEFAULT 'both',
    noise_epsilon REAL,
    params TEXT NOT NULL,
    rendezvous TEXT,
    reason TEXT,
    progress TEXT NOT NULL,
    results TEXT NOT NULL,
    charged INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_counterpart ON sessions (counterpart, created_at);
"""


_TERMINAL_SQL = ", ".join(f"'{s.value}'" for s in TERMINAL)  # fixed enum values, not input
# columns added after the first release: (name, definition), added to older files at start-up
_ADDED_COLUMNS = (
    ("reveal_to", "TEXT NOT NULL DEFAULT 'both'"),
    ("noise_epsilon", "REAL"),
    ("charged", "INTEGER NOT NULL DEFAULT 0"),
)
_COLUMNS = (
    "id",
    "role",
    "state",
    "counterpart",
    "method",
    "datasets",
    "reveal",
    "reveal_to",
    "noise_epsilon",
    "params",
    "rendezvous",
    "reason",
    "progress",
    "results",
    "charged",
    "created_at",
    "updated_at",
)


class SessionStore:
    """Thread-safe CRUD over the ``sessions`` table."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        have = {row["name"] for row in self._db.execute("PRAGMA table_info(sessions)")}
        for name, definition in _ADDED_COLUMNS:
            if name not in have:  # fixed names and definitions, not input
                self._db.execute(f"ALTER TABLE sessions ADD COLUMN {name} {definition}")
        if "charged" not in have:
            # sessions recorded before per-candidate charging: each may have revealed all of its
            # candidates (a rejected one revealed none)
            self._db.execute(
                "UPDATE sessions SET charged = json_array_length(datasets) "
                "WHERE state != 'rejected'"
            )

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
            reveal=row["reveal"],
            reveal_to=row["reveal_to"],
            noise_epsilon=row["noise_epsilon"],
            params=json.loads(row["params"]),
            rendezvous=row["rendezvous"],
            reason=row["reason"],
            progress=Progress.model_validate_json(row["progress"]),
            results=[CandidateOutcome.model_validate(r) for r in json.loads(row["results"])],
            charged=row["charged"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )

    def create(self, view: SessionView) -> SessionView:
        with self._lock:
            try:
                self._db.execute(
                    f"INSERT INTO sessions ({', '.join(_COLUMNS)}) "
                    f"VALUES ({', '.join('?' for _ in _COLUMNS)})",
                    (
                        view.id,
                        view.role,
                        view.state.value,
                        view.counterpart,
                        view.method,
                        json.dumps(view.datasets),
                        view.reveal,
                        view.reveal_to,
                        view.noise_epsilon,
                        json.dumps(view.params),
                        view.rendezvous,
                        view.reason,
                        view.progress.model_dump_json(),
                        json.dumps([r.model_dump() for r in view.results]),
                        view.charged,
                        view.created_at,
                        view.updated_at,
                    ),
                )
            except sqlite3.IntegrityError:
                raise Conflict(f"a session with id {view.id} already exists") from None
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
            f"SELECT COUNT(*) FROM sessions WHERE counterpart = ? AND created_at >= ? "
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

    def update(self, session_id: str, **fields: Any) -> SessionView:
        """Set fields of a live session. A terminal session is never changed again.

        Returns the record as stored afterwards (unchanged if it was already terminal).
        """
        encoded: dict[str, Any] = {}
        for key, value in fields.items():
            if key == "state":
                encoded[key] = SessionState(value).value
            elif key == "progress":
                encoded[key] = Progress.model_validate(value).model_dump_json()
            elif key == "results":
                encoded[key] = json.dumps(
                    [CandidateOutcome.model_validate(r).model_dump() for r in value]
                )
            elif key == "charged":
                encoded[key] = int(value)
            elif key in ("reason", "rendezvous"):
                encoded[key] = value
            else:
                raise ValueError(f"cannot update session field {key!r}")
        encoded["updated_at"] = time.time()
        assignments = ", ".join(f"{k} = ?" for k in encoded)
        with self._lock:
            self._db.execute(
                f"UPDATE sessions SET {assignments} WHERE id = ? AND state NOT IN ({_TERMINAL_SQL})",
                (*encoded.values(), session_id),
            )
        return self.get(session_id)

    def recover(self) -> list[str]:
        """Mark every session left live by a previous process as failed; return their ids."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT id FROM sessions WHERE state NOT IN ({_TERMINAL_SQL})"
            ).fetchall()
        live = [row["id"] for row in rows]
        for session_id in live:
            self.update(
                session_id,
                state=SessionState.FAILED,
                reason="the service stopped while this session was live; its worker stopped with it",
            )
        return live
