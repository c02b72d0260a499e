"""Wire schemas of the three services' REST APIs (``/v1``).

Everything here is public to both owners: metadata, the agreed computation, session states and the
revealed outcome. Secrets never appear in a response model: the model owner's threshold τ is only in
:class:`SessionCreate` (client → model owner) and never leaves the model owner's process; a
session's pre-shared MPC link keys (:class:`~common.worker.SessionKeys`) are only in the request
bodies :class:`Invitation` and :class:`DealerJob`, go only into the receiving worker's 0600
configuration, and are never stored in a session record, logged or returned.
"""

from __future__ import annotations

import enum
import re
import time
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, HttpUrl

from common.worker import JobSpec, SessionKeys

API_PREFIX = "/v1"
Method = Literal["influence", "gradient-norm", "finetune"]
Reveal = Literal["score", "threshold"]
RevealTo = Literal["both", "model_owner"]
Provider = Literal["TTP", "TFP"]
MAX_STEPS = 10_000  # fine-tuning steps; the data owner refuses a job beyond the same limits
MAX_LR = 1e6
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
SessionId = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
Rendezvous = Annotated[str, Field(pattern=r"^tcp://[^\s/:]+:\d{1,5}$")]


def _check_id(value: str) -> str:
    if not _ID.match(value):
        raise ValueError(
            "an id is 1-128 characters of letters, digits, '_', '.' or '-', starting with a "
            f"letter or digit; got {value!r}"
        )
    return value


DatasetId = Annotated[str, AfterValidator(_check_id)]


class Strict(BaseModel):
    """Request bodies reject unknown fields: a typo must not silently fall back to a default."""

    model_config = ConfigDict(extra="forbid")


class ErrorBody(BaseModel):
    """The one error shape of every route."""

    error: str = Field(examples=["NotFound"])
    detail: str = Field(examples=["no dataset 'candidate_42'; GET /v1/datasets lists them"])


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    service: str
    version: str


class DatasetMeta(BaseModel):
    """A candidate data set's public metadata; the rows never leave the data owner."""

    id: str = Field(examples=["candidate_01"])
    name: str = Field(examples=["candidate_01.npz"])
    n_samples: int
    n_features: int
    n_classes: int = Field(description="largest label + 1: labels are integers 0..n_classes-1")
    label_encoding: str = Field(examples=["integer"])
    feature_bound: float = Field(
        description="a power of 2 bounding every |x|; features are fixed-point encoded after "
        "division by the session's agreed bound"
    )
    feature_encoding: str = Field(
        examples=["float features, |x| <= 16; fixed-point with 16 fractional bits in MPC"]
    )


class ModelInfo(BaseModel):
    """The model owner's public metadata (never θ̂, v or the data)."""

    n_features: int
    n_classes: int
    label_encoding: str
    n_train: int
    n_test: int
    l2: float
    feature_bound: float
    trained_at: float | None


class MethodParams(Strict):
    """Fine-tuning parameters (ignored by influence and gradient norm)."""

    steps: int = Field(default=16, ge=1, le=MAX_STEPS)
    lr: float = Field(default=0.1, gt=0, le=MAX_LR)
    batch_size: int | None = Field(default=None, ge=1)


class SessionCreate(Strict):
    """Client → model owner: open an appraisal session with a data owner."""

    data_owner_url: HttpUrl = Field(examples=["http://127.0.0.1:8001"])
    datasets: list[DatasetId] = Field(min_length=1, max_length=100, examples=[["candidate_01"]])
    method: Method = "influence"
    params: MethodParams = Field(default_factory=MethodParams)
    reveal: Reveal = "score"
    threshold: float | None = Field(
        default=None,
        allow_inf_nan=False,
        description="τ for reveal=threshold: the model owner's secret, never sent to anyone",
    )
    direction: Literal["lower", "higher"] | None = Field(
        default=None,
        description="which scores are better (default: lower for influence and finetune, higher "
        "for gradient-norm)",
    )
    reveal_to: RevealTo | None = Field(
        default=None,
        description="who learns each score or bit: 'both' owners, or 'model_owner' only (the data "
        "owner's results then carry score and accept null). Default: MODEL_OWNER_REVEAL_TO (both)",
    )
    provider: Provider = Field(
        default="TTP",
        description="TTP: the dealer serves the Beaver triples. TFP: this model owner's worker "
        "generates them and could read the data owner's data; needs "
        "MODEL_OWNER_ALLOW_INSECURE_TFP and the data owner's DATA_OWNER_ALLOW_INSECURE_TFP "
        "(testing only)",
    )
    noise_epsilon: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="influence only: the data owner's worker adds Laplace noise to each released "
        "score (or bit) so that it is ε-differentially private for one sample of the candidate; "
        "the job then carries v_bound, this model owner's public power-of-two bound on max_j "
        "‖v_j‖₂. Default: no noise",
    )


class Deadlines(Strict):
    rendezvous_seconds: float = Field(gt=0, le=3600)
    compute_seconds: float = Field(gt=0, le=7 * 86400)


class Invitation(Strict):
    """Model owner → data owner: the proposed computation (public to both)."""

    session_id: SessionId
    model_owner: str
    datasets: list[DatasetId] = Field(min_length=1, max_length=100)
    label_encoding: str
    job: JobSpec
    rendezvous: Rendezvous
    dealer_url: str
    callback_url: str | None = Field(
        default=None, description="where the data owner reports a cancellation or failure"
    )
    callback_token: str | None = Field(
        default=None, description="a one-session token the data owner presents on callbacks"
    )
    keys: SessionKeys | None = Field(
        default=None,
        description="the data owner's pre-shared MPC link keys (mo_do, do_dealer) for this session; "
        "required by the secure transport, never stored",
    )
    deadlines: Deadlines


class InvitationReply(BaseModel):
    accepted: bool
    reason: str | None = None


class DealerJob(Strict):
    """Model owner → dealer: join this session's rendezvous and serve Beaver triples."""

    session_id: SessionId
    job: JobSpec
    rendezvous: Rendezvous
    keys: SessionKeys | None = Field(
        default=None,
        description="the dealer's pre-shared MPC link keys (mo_dealer, do_dealer) for this "
        "session; required by the secure transport, never stored",
    )
    deadlines: Deadlines


class CancelRequest(Strict):
    reason: str = Field(default="cancelled by request", max_length=2000)
    outcome: Literal["cancelled", "failed", "expired"] = Field(
        default="cancelled",
        description="'failed' or 'expired' when a peer reports how its side of the session ended",
    )


class SessionState(enum.StrEnum):
    """A session's life: see docs/api.md for every transition."""

    PROPOSED = "proposed"  # the model owner is negotiating
    ACCEPTED = "accepted"  # both agreed; the workers are starting and meeting at the rendezvous
    RUNNING = "running"  # the workers met and are computing
    COMPLETED = "completed"  # results stored
    FAILED = "failed"  # a worker or a peer failed, a deadline passed, or the service restarted
    REJECTED = "rejected"  # negotiation found an incompatibility or a policy refusal
    CANCELLED = "cancelled"  # either side cancelled
    EXPIRED = "expired"  # a peer did not answer or join before its deadline

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset(
    {
        SessionState.COMPLETED,
        SessionState.FAILED,
        SessionState.REJECTED,
        SessionState.CANCELLED,
        SessionState.EXPIRED,
    }
)


class CandidateOutcome(BaseModel):
    """One candidate's revealed outcome: the score or the bit, and what it cost this party.

    Both ``score`` and ``accept`` are null at a party the result was not revealed to (the data
    owner, in a session with ``reveal_to`` = ``model_owner``).
    """

    candidate: str
    method: Method
    score: float | None = Field(
        default=None, description="null in threshold mode or if not revealed"
    )
    accept: bool | None = Field(default=None, description="null in score mode or if not revealed")
    seconds: float
    bytes: int = Field(description="bytes this party wrote to its sockets for this candidate")
    rounds: int
    peak_rss_mb: float

    def to_json(self) -> dict[str, Any]:
        """The same per-candidate shape as ``data-appraisal local --json``."""
        return outcome_json(self)


def outcome_json(o: Any) -> dict[str, Any]:
    """One candidate's JSON in every command's ``--json`` output: the score or the bit, and cost."""
    out: dict[str, Any] = {"candidate": o.candidate, "method": o.method}
    if o.accept is None:
        out["score"] = o.score
    else:
        out["accept"] = o.accept
    out.update(
        seconds=round(o.seconds, 4),
        bytes=o.bytes,
        rounds=o.rounds,
        peak_rss_mb=round(o.peak_rss_mb, 1),
    )
    return out


class Progress(BaseModel):
    done: int = 0
    total: int = 0


class SessionView(BaseModel):
    """A session as one party records it."""

    id: str
    role: Literal["model_owner", "data_owner", "dealer"]
    state: SessionState
    counterpart: str = Field(description="the other owner (its name or URL)")
    method: Method
    datasets: list[str]
    reveal: Reveal
    reveal_to: RevealTo = Field(
        default="both",
        description="who learns the results; with 'model_owner' the data owner's results carry "
        "score and accept null (it learns only the cost of each candidate)",
    )
    noise_epsilon: float | None = Field(
        default=None,
        description="ε of the Laplace noise added to each released score or bit (influence only); "
        "null: no noise",
    )
    params: dict[str, Any] = Field(default_factory=dict)
    rendezvous: str | None = None
    reason: str | None = Field(default=None, description="why it was rejected, failed, ...")
    progress: Progress = Field(default_factory=Progress)
    results: list[CandidateOutcome] = Field(
        default_factory=list,
        description="the candidates finished so far, in order (kept when a session fails later)",
    )
    charged: int = Field(
        default=0,
        description="candidates that entered the MPC, each of which may have revealed its value: "
        "what an ended session costs the model owner's leakage budget at the data owner",
    )
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)


class BudgetUse(BaseModel):
    used: int
    limit: int
    remaining: int


class BudgetView(BaseModel):
    """A model owner's leakage budget at a data owner: lifetime totals of what its sessions were
    charged (a live session reserves all of its candidates, an ended one is charged those that
    entered the MPC), and the rolling 24-hour session limit."""

    model_owner: str
    sessions: BudgetUse = Field(description="sessions charged so far, ever (live ones included)")
    candidates: BudgetUse = Field(description="candidates (appraised data sets) in those sessions")
    sessions_last_24h: BudgetUse = Field(
        description="charged sessions created in the last 24 hours"
    )
    epsilon_spent: float = Field(
        description="Σ noise_epsilon × candidates over those sessions that had noise (basic "
        "composition; an upper bound on any one sample's privacy loss)"
    )
    candidates_without_noise: int = Field(
        description="candidates of those sessions released without noise (no ε bound applies)"
    )
