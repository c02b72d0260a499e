"""Wire schemas of the three services' REST APIs (``/v1``).

Everything here is public to both owners: metadata, the agreed job (:class:`~common.protocol.JobSpec`),
session states and the revealed results. Secrets never appear in a response model: the model
owner's threshold τ is only in :class:`SessionCreate` (client → model owner) and from there only in
the model owner's own worker configuration; a session's pre-shared MPC link keys
(:class:`~common.protocol.SessionKeys`) are only in the request bodies :class:`Invitation` and
:class:`DealerJob`, go only into the receiving worker's 0600 configuration, and are never stored in
a session record, logged or returned. Request bodies are strict: an unknown field is a 422.
"""

from __future__ import annotations

import enum
import time
from typing import Literal

from pydantic import BaseModel, Field, HttpUrl, model_validator

from common.methods import DEFAULT_METHOD, Direction
from common.protocol import (
    MAX_CANDIDATES,
    MAX_CHUNK_ROWS,
    MAX_LR,
    MAX_SOFTMAX_CHUNKS,
    MAX_STEPS,
    CandidateResult,
    DatasetId,
    JobSpec,
    MethodName,
    Openings,
    Provider,
    Rendezvous,
    Reveal,
    RevealTo,
    SessionId,
    SessionKeys,
    Strict,
    request_problem,
    threshold_presence_problem,
)

API_PREFIX = "/v1"


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

    def mismatch(
        self, *, n_features: int, n_classes: int, label_encoding: str | None = None
    ) -> str | None:
        """Why this data set cannot be appraised by a model of these sizes, or None (both owners
        check it: the model owner against its model, the data owner against the job)."""
        if self.n_features != n_features:
            return f"dataset {self.id!r} has {self.n_features} features, the model {n_features}"
        if self.n_classes > n_classes:
            return (
                f"dataset {self.id!r} has labels up to {self.n_classes - 1}, the model only "
                f"{n_classes} classes"
            )
        if label_encoding is not None and self.label_encoding != label_encoding:
            return (
                f"dataset {self.id!r} uses label encoding {self.label_encoding!r}, the model "
                f"{label_encoding!r}"
            )
        return None


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
    lr: float = Field(default=0.1, gt=0, le=MAX_LR, allow_inf_nan=False)
    batch_size: int | None = Field(default=None, ge=1)


class SessionCreate(Strict):
    """Client → model owner: open an appraisal session with a data owner."""

    data_owner_url: HttpUrl = Field(examples=["https://data-owner.example.org:8001"])
    datasets: list[DatasetId] = Field(
        min_length=1, max_length=MAX_CANDIDATES, examples=[["candidate_01"]]
    )
    method: MethodName = DEFAULT_METHOD
    params: MethodParams = Field(default_factory=MethodParams)
    reveal: Reveal = "score"
    threshold: float | None = Field(
        default=None,
        allow_inf_nan=False,
        description="τ for reveal=threshold: the model owner's secret, never sent to anyone",
    )
    direction: Direction | None = Field(
        default=None,
        description="reveal=threshold only: which scores pass (default: lower for influence and "
        "finetune, higher for gradient-norm)",
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
        "score (or bit) so that it is (ε, δ)-differentially private for one sample of the candidate; "
        "the job then carries v_bound, this model owner's public power-of-two bound on max_j "
        "‖v_j‖₂. Default: no noise",
    )
    chunk_rows: int | None = Field(
        default=None,
        ge=1,
        le=MAX_CHUNK_ROWS,
        description="rows of each candidate per MPC chunk (public): each chunk is masked and sent "
        "on its own, so each party's memory is bounded by one chunk; rounds grow with the chunk "
        "count ⌈n / chunk_rows⌉. The data owner refuses more than its DATA_OWNER_MAX_CHUNK_ROWS. "
        "Default: 8192",
    )
    openings: Openings | None = Field(
        default=None,
        description="the width of the softmax's openings (public): narrow (default) sends the "
        "fewest bytes between the owners and more from the dealer; full sends 64 bits each and "
        "the fewest bytes in all (for a dealer whose link is as slow as the owners')",
    )
    softmax_chunks: int | None = Field(
        default=None,
        ge=1,
        le=MAX_SOFTMAX_CHUNKS,
        description="chunks per softmax (public): the softmax, whose rounds do not depend on its "
        "rows, runs once per group of this many chunks, which saves rounds across a WAN; the "
        "group's masked chunks wait on each party's disk (about softmax_chunks × chunk_rows × "
        "(features + 1) × 16 bytes at the data owner). Default: 1",
    )

    @model_validator(mode="after")
    def _consistent(self) -> SessionCreate:
        problem = threshold_presence_problem(self.reveal, self.threshold) or request_problem(
            method=self.method,
            reveal=self.reveal,
            direction=self.direction,
            noise_epsilon=self.noise_epsilon,
        )
        if problem is not None:
            raise ValueError(problem)
        if len(set(self.datasets)) != len(self.datasets):
            raise ValueError(f"datasets: a data set is listed twice ({self.datasets})")
        return self


class Deadlines(Strict):
    rendezvous_seconds: float = Field(gt=0, le=3600)
    compute_seconds: float = Field(gt=0, le=7 * 86400)

    def tightest(self, other: Deadlines | None) -> Deadlines:
        """The smaller of each deadline (a service never waits longer than its own settings)."""
        if other is None:
            return self
        return Deadlines(
            rendezvous_seconds=min(self.rendezvous_seconds, other.rendezvous_seconds),
            compute_seconds=min(self.compute_seconds, other.compute_seconds),
        )


class Invitation(Strict):
    """Model owner → data owner: the proposed computation (public to both)."""

    session_id: SessionId
    model_owner: str
    label_encoding: str
    job: JobSpec
    rendezvous: Rendezvous
    dealer_url: str = Field(
        description="the dealer the model owner asked; the data owner must have it configured "
        "(DATA_OWNER_DEALERS), and calls it itself"
    )
    callback_token: str | None = Field(
        default=None,
        description="a one-session token the data owner presents when it reports the session's "
        "end, at the callback URL it has configured for this model owner (not one the invitation "
        "names)",
    )
    keys: SessionKeys | None = Field(
        default=None,
        description="the owners' link's pre-shared MPC key (mo_do) for this session; required by "
        "the secure transport, never stored. The data owner ↔ dealer key is not the model owner's "
        "to give: the data owner sends its own to the dealer",
    )
    deadlines: Deadlines

    @property
    def datasets(self) -> list[str]:
        return [c.name for c in self.job.candidates]


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
        description="the model owner ↔ dealer link's pre-shared MPC key (mo_dealer) for this "
        "session; required by the secure transport, never stored",
    )
    deadlines: Deadlines


class DataOwnerKey(Strict):
    """Data owner → dealer: the key of their link for one session, and the job it agreed to."""

    job_digest: str = Field(
        pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the job the data owner accepted"
    )
    key: str = Field(pattern=r"^[0-9a-f]{64}$", description="32 random bytes (hex); never stored")

    def __repr__(self) -> str:
        return f"DataOwnerKey(job_digest={self.job_digest[:12]}...)"

    __str__ = __repr__


class CancelRequest(Strict):
    reason: str = Field(default="cancelled by request", max_length=2000)
    outcome: Literal["cancelled", "failed", "expired"] = Field(
        default="cancelled",
        description="'failed' or 'expired' when a peer reports how its side of the session ended",
    )


class SessionState(enum.StrEnum):
    """A session's life; :func:`common.web.store.check_transition` owns the moves between them."""

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


class Progress(BaseModel):
    done: int = Field(default=0, description="candidates finished")
    total: int = Field(default=0, description="candidates in the session")
    step: int = Field(
        default=0, description="steps done within the candidate under way (fine-tuning, chunks)"
    )
    steps: int = Field(
        default=0, description="steps the candidate under way takes (0: the method reports none)"
    )


class SessionView(BaseModel):
    """A session as one party records it: what was asked, what was agreed, how it went."""

    id: str
    role: Literal["model_owner", "data_owner", "dealer"]
    state: SessionState
    counterpart: str = Field(description="the other owner (its name or URL)")
    method: str = Field(description="the appraisal function asked for")
    datasets: list[str] = Field(description="the candidates asked for, in order")
    job: JobSpec | None = Field(
        default=None,
        description="the agreed computation (null while, or if never, agreed: a session rejected "
        "before the metadata was known)",
    )
    rendezvous: str | None = None
    reason: str | None = Field(default=None, description="why it was rejected, failed, ...")
    progress: Progress = Field(default_factory=Progress)
    results: list[CandidateResult] = Field(
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

    @model_validator(mode="after")
    def _job_is_what_was_asked(self) -> SessionView:
        if self.job is not None:
            names = [c.name for c in self.job.candidates]
            if self.job.method != self.method or names != self.datasets:
                raise ValueError(
                    f"the job ({self.job.method} on {names}) is not the session's "
                    f"({self.method} on {self.datasets})"
                )
        return self


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
        description="Σ noise_epsilon × charged candidates over the sessions that had noise (basic "
        "composition; an upper bound on any one sample's privacy loss)"
    )
    candidates_without_noise: int = Field(
        description="charged candidates of sessions without noise (no ε bound applies)"
    )
