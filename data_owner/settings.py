"""The data owner's settings: environment variables ``DATA_OWNER_<FIELD>`` (dicts and lists as JSON)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from common.methods import METHOD_NAMES
from common.protocol import MAX_CHUNK_ROWS
from common.web.settings import OPERATOR, Credential, ServiceSettings

MIN_NOISE_EPSILON = 1e-3
"""The default smallest ε a data owner accepts: with less, the noise's scale Δ/ε exceeds a
thousand times the largest change one sample can make, so every score is noise."""


class ModelOwnerPeer(Credential):
    """A model owner this data owner serves (DATA_OWNER_MODEL_OWNERS, by its name)."""

    callback_url: str | None = Field(
        default=None,
        description="its service's base URL: where this data owner reports a session that ended "
        "early (nothing in an invitation chooses where it POSTs); unset: no reports",
    )
    rendezvous_hosts: list[str] = Field(
        default_factory=list,
        description="the only hosts this data owner's worker connects to for its sessions "
        "(default: the host of callback_url)",
    )

    @model_validator(mode="after")
    def _default_rendezvous_host(self) -> ModelOwnerPeer:
        if not self.rendezvous_hosts and self.callback_url:
            host = urlsplit(self.callback_url).hostname
            if host:
                self.rendezvous_hosts = [host]
        return self


class DealerPeer(BaseModel):
    """A dealer this data owner trusts (DATA_OWNER_DEALERS, by name)."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="the dealer service's base URL")
    token: SecretStr = Field(description="the token this data owner presents to it (its own)")


class BudgetLimit(BaseModel):
    """One model owner's budget override in DATA_OWNER_BUDGETS; an omitted limit keeps the default."""

    model_config = ConfigDict(extra="forbid")

    sessions: int | None = Field(default=None, ge=0)
    candidates: int | None = Field(default=None, ge=0)


class DataOwnerSettings(ServiceSettings):
    """Environment variables ``DATA_OWNER_<FIELD>`` (dicts and lists as JSON)."""

    model_config = SettingsConfigDict(env_prefix="DATA_OWNER_")
    secret_fields: ClassVar[tuple[str, ...]] = ("api_token", "model_owners", "dealers")

    port: int = 8001
    state_dir: Path = Path("state/data_owner")
    data_dir: Path = Path("data")
    label_encoding: str = "integer"
    # the model owners it serves and the dealers it trusts, by name: nobody else
    model_owners: dict[str, ModelOwnerPeer] = Field(default_factory=dict)
    dealers: dict[str, DealerPeer] = Field(default_factory=dict)
    # policy
    allowed_methods: list[str] = Field(default_factory=lambda: list(METHOD_NAMES))
    max_sessions_per_day: int = 100  # per model owner, sessions that cost the budget something
    budget_sessions: int = Field(default=100, ge=0)  # per model owner, lifetime, charged sessions
    budget_candidates: int = Field(default=1000, ge=0)  # candidates charged to those sessions
    budgets: dict[str, BudgetLimit] = Field(default_factory=dict)  # per model owner overrides
    allow_insecure_tfp: bool = False  # accept provider TFP (the model owner can read the data)
    require_reveal_to_both: bool = False  # refuse sessions whose results this side would not see
    max_noise_epsilon: float | None = Field(default=None, gt=0)  # require noise with ε ≤ this
    # refuse noise with ε below this: the noise would drown every score, and an extreme ε is how a
    # model owner once made the noise overflow (the contract refuses what could leave the ring)
    min_noise_epsilon: float = Field(default=MIN_NOISE_EPSILON, gt=0, allow_inf_nan=False)
    # refuse jobs whose MPC chunks are larger: a worker holds one chunk of its candidate at a time
    max_chunk_rows: int = Field(default=MAX_CHUNK_ROWS, ge=1, le=MAX_CHUNK_ROWS)
    max_upload_bytes: int = 200_000_000

    @field_validator("allowed_methods")
    @classmethod
    def _known_methods(cls, value: list[str]) -> list[str]:
        unknown = [m for m in value if m not in METHOD_NAMES]
        if unknown:
            raise ValueError(
                f"unknown methods {unknown}; the methods are {', '.join(METHOD_NAMES)}"
            )
        return value

    @model_validator(mode="after")
    def _noise_range(self) -> DataOwnerSettings:
        if self.max_noise_epsilon is not None and self.max_noise_epsilon < self.min_noise_epsilon:
            raise ValueError(
                f"max_noise_epsilon {self.max_noise_epsilon:g} is below min_noise_epsilon "
                f"{self.min_noise_epsilon:g}: no ε would be accepted"
            )
        return self

    def identities(self) -> dict[str, Credential]:
        return {OPERATOR: Credential(token=self.api_token), **self.model_owners}

    def dealer(self, url: str) -> tuple[str, DealerPeer] | None:
        """The configured dealer at ``url``, if any."""
        wanted = url.rstrip("/")
        for name, peer in self.dealers.items():
            if peer.url.rstrip("/") == wanted:
                return name, peer
        return None

    def budget(self, model_owner: str) -> tuple[int, int]:
        """(sessions, candidates): a model owner's lifetime budget here."""
        own = self.budgets.get(model_owner, BudgetLimit())
        return (
            self.budget_sessions if own.sessions is None else own.sessions,
            self.budget_candidates if own.candidates is None else own.candidates,
        )


def get_settings() -> DataOwnerSettings:
    return DataOwnerSettings()
