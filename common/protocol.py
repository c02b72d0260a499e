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
Openings = Literal["narrow", "full"]

MAX_CANDIDATES = 100  # candidates in one session
MAX_STEPS = 10_000  # fine-tuning steps
# Rows of the candidate per chunk of the MPC (public): each chunk is masked, sent and consumed on
# its own, so a party's memory is bounded by the chunk, not by n. 8,192 rows keep an MNIST-sized
# candidate (6,000 rows) in one chunk; rounds grow with the number of chunks, ⌈n / chunk_rows⌉.
DEFAULT_CHUNK_ROWS = 8192
MAX_CHUNK_ROWS = 1 << 20
# Chunks per softmax (public): the softmax, whose rounds do not depend on its rows, runs once per
# group of this many chunks, the group's masked chunks waiting in each party's private spill
# directory. 1: each chunk on its own, nothing spilled (influence and gradient norm).
DEFAULT_SOFTMAX_CHUNKS = 1
MAX_SOFTMAX_CHUNKS = 1024
MAX_LR = 1e6
MAX_POWER = 64  # the feature bound and v_bound are powers of two in [2⁻⁶⁴, 2⁶⁴]

# -- fixed-point ranges (docs/threat-model.md, "Ranges") ------------------------------------------
# CrypTen encodes a real x as the int64 round(x·2¹⁶): the ring holds |x| < 2⁴⁷ real units.
RING_LIMIT = 2.0**47
# The largest |statistic| that may be opened or compared, and the largest |τ| mapped to the
# statistic: a comparison subtracts two such values (and the noise, below), so everything stays
# below 2⁴² ≪ 2⁴⁷.
MAX_STATISTIC = 2.0**40
# The largest |value| of a product of two shared values before its truncation: a Beaver product
# carries 32 fractional bits, so it wraps at 2⁶³/2³² = 2³¹ real units. Bounds derived from the
# public metadata must stay 16 times below that.
MAX_PRODUCT = 2.0**27
# The data owner's Laplace draw η ~ Laplace(b) is clamped at ±NOISE_CLAMP·b, and that clamp must
# stay below MAX_NOISE real units: statistic + noise then cannot leave the ring, and no float→int
# cast can saturate. P(|η| > 32·b) = e⁻³² ≈ 1.3e-14 is the clamp's mass (δ below).
NOISE_CLAMP = 32.0
MAX_NOISE = 2.0**40

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
    return (
        math.isfinite(value) and value > 0 and math.log2(value) % 1 == 0
    ) and -MAX_POWER <= math.log2(value) <= MAX_POWER


def row_norm_bound(n_features: int, feature_bound: float) -> float:
    """max ‖x̃‖₂ over rows x̃ = [x, 1] with every |x_i| ≤ B: √(d·B² + 1)."""
    return math.sqrt(n_features * feature_bound**2 + 1.0)


def influence_term_bound(n_features: int, feature_bound: float, v_norm: float) -> float:
    """max |∇L_aᵀ v| over one candidate sample, for max_j ‖v_j‖₂ ≤ ``v_norm``:
    |Σ_j (p_aj − y_aj)(x̃_a · v_j)| ≤ ‖p_a − y_a‖₁ · max_j |x̃_a · v_j| ≤ 2 · ‖x̃_a‖₂ · v_norm."""
    return 2.0 * row_norm_bound(n_features, feature_bound) * v_norm


def influence_sensitivity(n_features: int, feature_bound: float, v_bound: float) -> float:
    """Δ: how much S = Σ_a ∇L_aᵀ v can change when one candidate sample is replaced by any other
    (one term removed, one added: twice the term bound), Δ = 4·√(d·B² + 1)·V."""
    return 2.0 * influence_term_bound(n_features, feature_bound, v_bound)


def noise_delta(epsilon: float) -> float:
    """δ of one noisy release: clamping the Laplace draw at ±NOISE_CLAMP·b moves probability
    e^(−NOISE_CLAMP) (its total-variation distance from the unclamped mechanism), so an ε-DP
    Laplace release becomes (ε, (1 + e^ε)·e^(−NOISE_CLAMP))-DP."""
    return (1.0 + math.exp(min(epsilon, 700.0))) * math.exp(-NOISE_CLAMP)


class JobSpec(Strict):
    """What the parties agreed to compute: public to all three."""

    method: MethodName = DEFAULT_METHOD
    n_features: int = Field(gt=0, le=1_000_000)
    n_classes: int = Field(ge=2, le=10_000)
    candidates: list[CandidateMeta] = Field(min_length=1, max_length=MAX_CANDIDATES)
    n_train: int = Field(default=0, ge=0)
    n_test: int = Field(default=0, ge=0)
    feature_bound: float = Field(
        default=1.0, description="the agreed bound on every |x|, a power of two in [2⁻⁶⁴, 2⁶⁴]"
    )
    l2: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    steps: int = Field(default=16, ge=1, le=MAX_STEPS)
    lr: float = Field(default=0.1, gt=0, le=MAX_LR, allow_inf_nan=False)
    batch_size: int | None = Field(default=None, ge=1)
    chunk_rows: int = Field(
        default=DEFAULT_CHUNK_ROWS,
        ge=1,
        le=MAX_CHUNK_ROWS,
        description="rows of the candidate per MPC chunk: each is masked and sent on its own, "
        "so memory is bounded by the chunk; rounds grow with the chunk count",
    )
    softmax_chunks: int = Field(
        default=DEFAULT_SOFTMAX_CHUNKS,
        ge=1,
        le=MAX_SOFTMAX_CHUNKS,
        description="chunks per softmax: the softmax and its rounds run once per group of this "
        "many chunks (rounds ≈ ⌈chunks / softmax_chunks⌉ softmaxes), the group's masked chunks "
        "kept on each party's disk meanwhile",
    )
    openings: Openings = Field(
        default="narrow",
        description="narrow: the softmax's values cross on the low bits their range needs (fewer "
        "bytes between the owners, more from the dealer); full: 64 bits each (fewer bytes in all: "
        "for a dealer whose link is as slow as the owners')",
    )
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
        "statistic so that each release is (ε, δ)-differentially private for one candidate "
        "sample (δ from clamping the noise, docs/threat-model.md); an ε so small that the noise "
        "could leave the fixed-point range is refused",
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
            raise ValueError(
                f"the feature bound must be a power of two between 2⁻⁶⁴ and 2⁶⁴, got {value!r}"
            )
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
            raise ValueError(
                f"v_bound must be a power of two between 2⁻⁶⁴ and 2⁶⁴, got {self.v_bound!r}"
            )
        problem = noise_problem(self) or range_problem(self, self.v_bound)
        if problem is not None:
            raise ValueError(problem)
        return self

    def noise_sensitivity(self) -> float | None:
        """Δ of the influence statistic from the public metadata (None: the job has no noise)."""
        if self.noise_epsilon is None or self.v_bound is None:
            return None
        return influence_sensitivity(self.n_features, self.feature_bound, self.v_bound)

    def noise_scale(self) -> float | None:
        """b = Δ/ε, the scale of the data owner's Laplace draw (None: the job has no noise)."""
        sensitivity = self.noise_sensitivity()
        if sensitivity is None or self.noise_epsilon is None:
            return None
        return sensitivity / self.noise_epsilon

    def min_noise_epsilon(self) -> float | None:
        """The smallest ε whose clamped noise, NOISE_CLAMP·Δ/ε, stays below MAX_NOISE."""
        sensitivity = self.noise_sensitivity()
        return None if sensitivity is None else NOISE_CLAMP * sensitivity / MAX_NOISE

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


def noise_problem(job: JobSpec) -> str | None:
    """Why the job's noise could leave the fixed-point range (None: it cannot, or there is none).

    The noise b = Δ/ε is clamped at ±NOISE_CLAMP·b, which must stay below MAX_NOISE = 2⁴⁰ real
    units: so ε ≥ NOISE_CLAMP·Δ/2⁴⁰. A smaller ε once overflowed int64 when encoded, and the
    constant it saturated to could be subtracted from the released score (the noise was gone).
    """
    minimum = job.min_noise_epsilon()
    if minimum is None or job.noise_epsilon is None or job.noise_epsilon >= minimum:
        return None
    sensitivity = job.noise_sensitivity()
    return (
        f"noise_epsilon: ε = {job.noise_epsilon:g} is below the smallest ε this job can add "
        f"noise for, {minimum:.3g}: the Laplace scale Δ/ε (Δ = {sensitivity:.4g} from "
        f"n_features {job.n_features}, feature_bound {job.feature_bound:g} and v_bound "
        f"{job.v_bound:g}), clamped at {NOISE_CLAMP:g} scales, must stay below 2⁴⁰ so that the "
        "statistic plus noise stays inside the fixed-point ring (|x| < 2⁴⁷)"
    )


def _batch_sizes(n: int, batch_size: int | None) -> tuple[int, int]:
    """(largest, smallest) batch of :func:`common.ml.model.minibatches` over ``n`` rows."""
    if batch_size is None or batch_size >= n:
        return n, n
    return batch_size, (n % batch_size) or batch_size


def range_problem(job: JobSpec, v_norm: float | None = None) -> str | None:
    """Why a value of the job's MPC computation could leave the fixed-point range, from the public
    metadata alone (None: it cannot). Checked before any MPC starts, by every party.

    ``v_norm`` bounds max_j ‖v_j‖₂ (influence): the public v_bound when the job has one, else the
    model owner's own max_j ‖v_j‖₂ (its worker checks it before the rendezvous). Each bound below
    is a worst case over every input the metadata allows (every |x| at the feature bound, every
    residual aligned); :data:`MAX_PRODUCT` is 2³¹/16, :data:`MAX_STATISTIC` 2⁴⁰.
    """
    d, B = job.n_features, job.feature_bound
    rows = row_norm_bound(d, B)
    for candidate in job.candidates:
        n = candidate.n_samples
        where = f"candidate {candidate.name!r} (n = {n}, n_features = {d}, feature_bound = {B:g}"
        if job.method == "influence" and v_norm is not None:
            # S = Σ_a ∇L_aᵀ v is the scaled sum S/c (terms ≤ 8, fixed point) times the model
            # owner's private integer scale c, an integer product without truncation: |S| is
            # bounded by the statistic's own limit, MAX_STATISTIC.
            bound = n * influence_term_bound(d, B, v_norm)
            if bound > MAX_STATISTIC:
                return (
                    f"candidates: the influence statistic S = Σ ∇Lᵀv of {where}, "
                    f"max‖v_j‖ ≤ {v_norm:g}) can reach n·2·√(d·B²+1)·max‖v_j‖ = {bound:.3g}, "
                    f"above 2⁴⁰ (the largest statistic the fixed-point ring opens or compares); "
                    "appraise a smaller candidate, or scale the features down"
                )
        elif job.method == "gradient-norm":
            # entries of X'ᵀR (normalised rows) and of the squares of X'ᵀR/s are at most n;
            # q = ‖Σ∇L‖²/s² ≤ 2n·(d·B² + 1), and before the B² rescaling ≤ 2n·(d + 1)
            bound = 2.0 * n * max(rows**2, d + 1.0)
            if n > MAX_PRODUCT or bound > MAX_STATISTIC:
                return (
                    f"candidates: the gradient-norm statistic of {where}) can reach "
                    f"2n·(d·B²+1) = {bound:.3g} (limit 2⁴⁰), and its products n = {n} "
                    "(limit 2²⁷ = 2³¹/16); appraise a smaller candidate"
                )
        elif job.method == "finetune":
            problem = _finetune_problem(job, n, where)
            if problem is not None:
                return problem
    return None


def _finetune_problem(job: JobSpec, n_candidate: int, where: str) -> str | None:
    n = job.n_train + n_candidate
    largest, smallest = _batch_sizes(n, job.batch_size)
    d, B = job.n_features, job.feature_bound
    if largest > MAX_PRODUCT or job.n_test > MAX_PRODUCT:
        return (
            f"candidates: fine-tuning with {where}) sums {largest} rows of a batch and "
            f"{job.n_test} test rows in one product; the limit is 2²⁷ (16 times below 2³¹, "
            "where a product under MPC wraps)"
        )
    if job.lr * job.l2 > smallest:
        return (
            f"lr: the weight decay multiplies θ by 1 − 2·lr·l2/|batch| each step; with lr = "
            f"{job.lr:g}, l2 = {job.l2:g} and a batch of {smallest} rows that factor is below −1, "
            "so θ grows without bound and leaves the fixed-point range; keep lr·l2 ≤ the "
            "smallest batch"
        )
    # each step moves every normalised feature weight by ≤ lr·B² and the bias by ≤ lr, so a
    # logit of a row within the feature bound by ≤ lr·(d·B² + 1)
    drift = job.steps * job.lr * (d * B * B + 1.0)
    if drift > MAX_PRODUCT:
        return (
            f"steps: {job.steps} fine-tuning steps with lr = {job.lr:g} can move a logit of a "
            f"row of {where}) by steps·lr·(d·B²+1) = {drift:.3g}, above 2²⁷ (16 times below "
            "2³¹, where its products under MPC wrap); use fewer steps or a smaller lr"
        )
    return None


def model_owner_problem(job: JobSpec, v_norm: float) -> str | None:
    """The model owner's own check of its private v against the job, before any MPC starts:
    v within the public v_bound (else the noise would be too small for the promised ε), and the
    influence statistic inside the fixed-point range for its actual max_j ‖v_j‖₂ = ``v_norm``."""
    if job.v_bound is not None and v_norm > job.v_bound:
        return (
            f"the model's max_j ‖v_j‖ is {v_norm:g}, above the agreed bound v_bound "
            f"{job.v_bound:g}: the noise would be too small for the promised ε"
        )
    return range_problem(job, v_norm) if job.method == "influence" else None


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
    method = METHODS[job.method]
    for index, candidate in enumerate(job.candidates):
        sizes = job.sizes(index)
        statistic = method.to_statistic(threshold, sizes)
        if not abs(statistic) < MAX_STATISTIC:  # inf and nan too
            lo, hi = sorted(
                (method.to_score(-MAX_STATISTIC, sizes), method.to_score(MAX_STATISTIC, sizes))
            )
            allowed = f"at most {hi:.6g}" if threshold > hi else f"at least {lo:.6g}"
            return (
                f"threshold: τ = {threshold:g} is outside the range the fixed-point comparison "
                f"represents for candidate {candidate.name!r} (n = {candidate.n_samples}): its "
                f"statistic must stay within ±2⁴⁰, so τ must be {allowed}; no score of this "
                "method can be that far out"
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
