"""The dealer's settings: environment variables ``DEALER_<FIELD>`` (dicts as JSON)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from common.web.settings import ServesModelOwners


class DealerSettings(ServesModelOwners):
    """Environment variables ``DEALER_<FIELD>`` (dicts as JSON)."""

    model_config = SettingsConfigDict(env_prefix="DEALER_")

    port: int = 8002
    state_dir: Path = Path("state/dealer")
    max_concurrent_sessions: int = Field(default=16, ge=1)


def get_settings() -> DealerSettings:
    return DealerSettings()
