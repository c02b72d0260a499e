"""The contract between the parties: who they are, what they agree to compute, its keys, its results.

Everything here is public to both owners and the dealer, except :class:`SessionKeys` (each party
holds only the keys of its own links). A :class:`JobSpec` is validated once, here, whoever builds
it: the model owner's service, ``data-appraisal local``, a worker reading its configuration or the
data owner reading an invitation; every inconsistent or out-of-range combination is refused with a
message that names the field. Strict models (unknown fields are errors) are used at every process
and network boundary.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from common.methods import DEFAULT_METHOD, METHOD_NAMES, METHODS, Direction, Sizes

Role = Literal["model_owner", "data_owner", "dealer"]
ROLES: tuple[Role, ...] = ("model_owner", "data_owner", "dealer")
RANKS: dict[str, int] = {"model_owner": 0, "data_owner": 1, "dealer": 2}  # CrypTen's ranks
Reveal = Literal["score", "threshold"]
RevealTo = Literal["both", "model_owner"]
Provider = Literal["TTP", "TFP"]

MAX_CANDIDATES = 100  # candidates in one session
MAX_STEPS = 10_000  # fine-tuning steps
MAX_LR = 1e6
# The largest |statistic| a threshold may map to. CrypTen's int64 ring with 16 fractional bits holds
# |x| < 2⁴⁷; a comparison subtracts two such values, so both stay below 2⁴⁰ with room to spare.
MAX_STATISTIC = 2.0**40

_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"


def _check_id(value: str) -> str:
    import re

    if not re.match(_ID_PATTERN, value):
        raise ValueError(
            "an id is 1-128 characters of letters, digits, '_', '.' or '-', starting with a "
            f"letter or digit; got {value!r}"
        )
    return value


DatasetId = Annotated[str, AfterValidator(_check_id)]


def _known_method(value: str) -> str:
    if value not in METHODS:
        raise ValueError(f"unknown method {value!r}; choose one of: {', '.join(METHOD_NAMES)}")
    return value


# a registered method's name (common.methods): a new method needs no change here
MethodName = Annotated[
    str,
    AfterValidator(_known_method),
    Field(
        description=f"the appraisal function: {', '.join(METHOD_NAMES)}",
        json_schema_extra={"enum": list(METHOD_NAMES)},
    ),
]
SessionId = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$|^local-[0-9a-f]{16}$")]
# where the model owner's worker listens for the other workers
Rendezvous = Annotated[str, Field(pattern=r"^tcp://[^\s/:]+:\d{1,5}$")]


class Strict(BaseModel):
    """A boundary model: an unknown field is an error, never silently dropped (a typo such as
    ``threshhold`` must not fall back to a default)."""

    model_config = ConfigDict(extra="forbid")


# -- links and their keys --------------------------------------------------------------------------

# Each link's name (bound into its handshake) and the SessionKeys field that holds its key.
LINKS: dict[str, tuple[Role, Role]] = {
    "mo-do": ("model_owner", "data_owner"),
    "mo-dealer": ("model_owner", "dealer"),
    "do-dealer": ("data_owner", "dealer"),
}


def link_name(a: str, b: str) -> str:
    """The name of the link between roles ``a`` and ``b`` (in either order)."""
    for name, ends in LINKS.items():
        if set(ends) == {a, b}:
            return name
    raise ValueError(f"no MPC link between {a} and {b}")


def key_field(link: str) -> str:
    return link.replace("-", "_")


def _key() -> str:
    return secrets.token_hex(32)


Key = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class SessionKeys(Strict):
    """Pre-shared keys of one session, 32 random bytes each (hex), agreed over authenticated REST.

    A key only authenticates its link's handshake; the traffic keys come from an ephemeral X25519
    exchange inside it, so a party that knows another link's pre-shared key, but does not tamper
    with traffic, still cannot read that link. Never stored, logged or returned.
    """

    mo_do: Key | None = None
    mo_dealer: Key | None = None
    do_dealer: Key | None = None

    @classmethod
    def new(cls) -> SessionKeys:
        return cls(mo_do=_key(), mo_dealer=_key(), do_dealer=_key())

    @staticmethod
    def links(role: str, provider: str = "TTP") -> tuple[str, ...]:
        """The links ``role``'s worker has; without a dealer (TFP) only the owners' link."""
        if provider != "TTP":
            return () if role == "dealer" else ("mo-do",)
        return tuple(name for name, ends in LINKS.items() if role in ends)

    def for_role(self, role: str, provider: str = "TTP") -> SessionKeys:
        """Only the keys of ``role``'s own links."""
        fields = [key_field(link) for link in self.links(role, provider)]
        return SessionKeys(**{f: getattr(self, f) for f in fields})

    def key(self, link: str) -> bytes | None:
        value = getattr(self, key_field(link))
        return None if value is None else bytes.fromhex(value)

    def missing(self, role: str, provider: str = "TTP") -> list[str]:
        """The links of ``role`` for which these keys hold nothing."""
        return [link for link in self.links(role, provider) if self.key(link) is None]

    def __repr__(self) -> str:  # never print a key
        held = [k for k, v in self.__dict__.items() if v]
        return f"SessionKeys({', '.join(held)})"

    __str__ = __repr__


# -- the job ---------------------------------------------------------------------------------------


class CandidateMeta(Strict):
    """Public metadata of one candidate data set."""

    name: DatasetId
    n_samples: int = Field(gt=0, le=2**40)


def _power_of_two(value: float) -> bool:
    return math.isfinite(value) and value > 0 and math.log2(value) % 1 == 0


class JobSpec(Strict):
    """What the parties agreed to compute: public to all three."""

    method: MethodName = DEFAULT_METHOD
    n_features: int = Field(gt=0, le=1_000_000)
    n_classes: int = Field(ge=2, le=10_000)
    candidates: list[CandidateMeta] = Field(min_length=1, max_length=MAX_CANDIDATES)
    n_train: int = Field(default=0, ge=0)
    n_test: int = Field(default=0, ge=0)
    feature_bound: float = Field(
        default=1.0, description="the agreed bound on every |x|, a power of two"
    )
    l2: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    steps: int = Field(default=16, ge=1, le=MAX_STEPS)
    lr: float = Field(default=0.1, gt=0, le=MAX_LR, allow_inf_nan=False)
    batch_size: int | None = Field(default=None, ge=1)
    reveal: Reveal = "score"
    direction: Direction | None = Field(
        default=None,
        description="threshold only: which scores pass (default: the method's better direction)",
    )
    provider: Provider = "TTP"
    reveal_to: RevealTo = Field(
        default="both",
        description="who learns the score or bit: both owners, or the model owner only",
    )
    noise_epsilon: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="influence only: the data owner adds Laplace noise to each released "
        "statistic so that each release is ε-differentially private for one candidate sample",
    )
    v_bound: float | None = Field(
        default=None,
        description="public power-of-two bound on max_j ‖v_j‖₂ (from the model owner), which "
        "calibrates the noise",
    )

    @field_validator("feature_bound")
    @classmethod
    def _bound_is_a_power_of_two(cls, value: float) -> float:
        if not _power_of_two(value):
            raise ValueError(f"the feature bound must be a power of two, got {value!r}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> JobSpec:
        method = METHODS[self.method]
        names = [c.name for c in self.candidates]
        if len(set(names)) != len(names):
            raise ValueError(f"candidates: a data set is listed twice ({names})")
        if method.needs_test_set and self.n_test < 1:
            raise ValueError(f"n_test: method {self.method!r} needs the model owner's test set")
        if method.needs_training_set and self.n_train < 1:
            raise ValueError(
                f"n_train: method {self.method!r} needs the model owner's training set"
            )
        problem = request_problem(
            method=self.method,
            reveal=self.reveal,
            direction=self.direction,
            noise_epsilon=self.noise_epsilon,
        )
        if problem is not None:
            raise ValueError(problem)
        if self.noise_epsilon is not None and self.v_bound is None:
            raise ValueError("v_bound: noise_epsilon needs the model owner's public bound")
        if self.v_bound is not None and not _power_of_two(self.v_bound):
            raise ValueError(f"v_bound must be a power of two, got {self.v_bound!r}")
        return self

    def digest(self) -> bytes:
        """SHA-256 of the job: every MPC link's handshake binds it (a tampered or mismatched job
        fails it), and the data owner tells the dealer which job it accepted with it."""
        return hashlib.sha256(self.model_dump_json().encode()).digest()

    def sizes(self, index: int) -> Sizes:
        """The public sizes of candidate ``index``."""
        return Sizes(n_candidate=self.candidates[index].n_samples, n_test=self.n_test)


def request_problem(
    *, method: str, reveal: str, direction: str | None, noise_epsilon: float | None
) -> str | None:
    """The rules a session request and a job share: a direction says which scores pass a
    threshold, and noise is calibrated only for methods that sum one bounded term per sample."""
    if direction is not None and reveal != "threshold":
        return "direction: it says which scores pass a threshold; reveal is 'score'"
    if noise_epsilon is not None and not METHODS[method].noise:
        calibrated = ", ".join(repr(m.name) for m in METHODS.values() if m.noise)
        return (
            f"noise_epsilon: noise is calibrated for {calibrated} only, not {method!r}: its "
            "sensitivity bound needs a statistic that sums one bounded term per candidate sample"
        )
    return None


def threshold_presence_problem(reveal: str, threshold: float | None) -> str | None:
    """τ is needed exactly in threshold mode."""
    if reveal == "threshold" and threshold is None:
        return "threshold: reveal 'threshold' needs the model owner's secret threshold τ"
    if reveal != "threshold" and threshold is not None:
        return "threshold: τ is only used with reveal 'threshold'"
    return None


def threshold_problem(job: JobSpec, threshold: float | None) -> str | None:
    """Why ``threshold`` cannot go with ``job`` (None: it can): τ is needed exactly in threshold
    mode, and must map to a statistic the fixed-point ring represents for every candidate."""
    problem = threshold_presence_problem(job.reveal, threshold)
    if problem is not None or threshold is None:
        return problem
    if not math.isfinite(threshold):
        return f"threshold: τ must be a finite number, got {threshold!r}"
    transform = METHODS[job.method].to_statistic
    for index, candidate in enumerate(job.candidates):
        statistic = transform(threshold, job.sizes(index))
        if abs(statistic) >= MAX_STATISTIC:
            return (
                f"threshold: τ = {threshold:g} maps to the statistic {statistic:.3g} for candidate "
                f"{candidate.name!r}, beyond what the fixed-point comparison represents "
                f"(|statistic| < 2⁴⁰); no score of this method can be that far out"
            )
    return None


def config_error(exc: Any, what: str = "parameters") -> Any:
    """A pydantic ValidationError as a one-line ConfigError naming the field at fault."""
    from common.errors import ConfigError

    first = exc.errors()[0]
    message = str(first["msg"]).removeprefix("Value error, ")
    loc = [str(p) for p in first["loc"]]
    field, _, rest = message.partition(": ")
    if rest and " " not in field:  # a validator's "field: why"
        loc.append(field)
        message = rest
    name = loc[-1] if loc else None
    return ConfigError(f"invalid {what}: {'.'.join(loc) or what}: {message}", field=name)


# -- results ---------------------------------------------------------------------------------------


class CandidateResult(BaseModel):
    """One candidate's outcome as one party saw it: the revealed score or bit, and what it cost.

    The one result shape: workers write it, services store and return it, ``local`` and the client
    return it, ``--json`` prints :meth:`to_json`. ``score`` and ``accept`` are both null at a party
    the result was not revealed to (the data owner, with ``reveal_to`` = ``model_owner``).
    """

    candidate: str
    method: str
    score: float | None = Field(
        default=None, description="null in threshold mode or if not revealed"
    )
    accept: bool | None = Field(default=None, description="null in score mode or if not revealed")
    seconds: float = Field(
        description="this party's MPC time for the candidate, after the rendezvous"
    )
    bytes_sent: int = Field(description="bytes this party's worker sent on its MPC links")
    bytes_received: int = Field(description="bytes this party's worker received on its MPC links")
    rounds: int = Field(
        description="communication rounds between the owners, as CrypTen counts them"
    )
    peak_rss_mb: float = Field(description="this party's worker's peak resident memory so far")

    @model_validator(mode="before")
    @classmethod
    def _stored_before_bytes_were_split(cls, data: Any) -> Any:
        """Records written before 0.2 have one ``bytes`` figure: what the party sent."""
        if isinstance(data, dict) and "bytes" in data and "bytes_sent" not in data:
            data = {**data, "bytes_sent": data["bytes"], "bytes_received": 0}
            data.pop("bytes")
        return data

    def to_json(self) -> dict[str, Any]:
        """The per-candidate object of every ``--json`` output: the score or the bit, and cost."""
        out: dict[str, Any] = {"candidate": self.candidate, "method": self.method}
        if self.accept is None:
            out["score"] = self.score
        else:
            out["accept"] = self.accept
        out.update(
            seconds=round(self.seconds, 4),
            bytes_sent=self.bytes_sent,
            bytes_received=self.bytes_received,
            rounds=self.rounds,
            peak_rss_mb=round(self.peak_rss_mb, 1),
        )
        return out
