"""The data owner's settings: environment variables ``DATA_OWNER_<FIELD>`` (dicts and lists as JSON)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import SettingsConfigDict

from common.methods import METHOD_NAMES
from common.web.settings import ServesModelOwners


class BudgetLimit(BaseModel):
    """One model owner's budget override in DATA_OWNER_BUDGETS; an omitted limit keeps the default."""

    model_config = ConfigDict(extra="forbid")

    sessions: int | None = Field(default=None, ge=0)
    candidates: int | None = Field(default=None, ge=0)


class DataOwnerSettings(ServesModelOwners):
    """Environment variables ``DATA_OWNER_<FIELD>`` (dicts and lists as JSON)."""

    model_config = SettingsConfigDict(env_prefix="DATA_OWNER_")

    port: int = 8001
    state_dir: Path = Path("state/data_owner")
    data_dir: Path = Path("data")
    label_encoding: str = "integer"
    # policy
    allowed_model_owners: list[str] | None = None  # default: every model owner with a token
    allowed_methods: list[str] = Field(default_factory=lambda: list(METHOD_NAMES))
    allowed_dealers: list[str] | None = None  # dealer URLs; default: any
    max_sessions_per_day: int = 100  # per model owner, sessions that cost the budget something
    budget_sessions: int = Field(default=100, ge=0)  # per model owner, lifetime, charged sessions
    budget_candidates: int = Field(default=1000, ge=0)  # candidates charged to those sessions
    budgets: dict[str, BudgetLimit] = Field(default_factory=dict)  # per model owner overrides
    allow_insecure_tfp: bool = False  # accept provider TFP (the model owner can read the data)
    require_reveal_to_both: bool = False  # refuse sessions whose results this side would not see
    max_noise_epsilon: float | None = Field(default=None, gt=0)  # require noise with ε ≤ this
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

    def budget(self, model_owner: str) -> tuple[int, int]:
        """(sessions, candidates): a model owner's lifetime budget here."""
        own = self.budgets.get(model_owner, BudgetLimit())
        return (
            self.budget_sessions if own.sessions is None else own.sessions,
            self.budget_candidates if own.candidates is None else own.candidates,
        )


def get_settings() -> DataOwnerSettings:
    return DataOwnerSettings()
