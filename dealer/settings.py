"""The dealer's settings: environment variables ``DEALER_<FIELD>`` (dicts as JSON)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from common.web.settings import OPERATOR, Credential, ServiceSettings

DATA_OWNER = "data_owner:"  # the identity prefix of a data owner (model owners have none)


class DealerSettings(ServiceSettings):
    """Environment variables ``DEALER_<FIELD>`` (dicts as JSON)."""

    model_config = SettingsConfigDict(env_prefix="DEALER_")
    secret_fields: ClassVar[tuple[str, ...]] = ("api_token", "model_owners", "data_owners")

    # the parties it serves, by name, each with its own credential
    model_owners: dict[str, Credential] = Field(default_factory=dict)
    data_owners: dict[str, Credential] = Field(default_factory=dict)

    port: int = 8002
    state_dir: Path = Path("state/dealer")
    max_concurrent_sessions: int = Field(default=16, ge=1)  # it serves sessions of many owners

    def identities(self) -> dict[str, Credential]:
        data_owners = {f"{DATA_OWNER}{name}": c for name, c in self.data_owners.items()}
        return {OPERATOR: Credential(token=self.api_token), **self.model_owners, **data_owners}


def get_settings() -> DealerSettings:
    return DealerSettings()
