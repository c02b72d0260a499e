"""The model owner's settings: environment variables ``MODEL_OWNER_<FIELD>``."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from common.protocol import RevealTo
from common.web.settings import PLACEHOLDER, ServiceSettings


class DataOwnerPeer(BaseModel):
    """A data owner this model owner works with (MODEL_OWNER_DATA_OWNERS, by name)."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="its service's base URL, e.g. https://data.example.org:8001")
    token: SecretStr = Field(description="the token this model owner presents to it (its own)")


class ModelOwnerSettings(ServiceSettings):
    """Environment variables ``MODEL_OWNER_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="MODEL_OWNER_")
    secret_fields: ClassVar[tuple[str, ...]] = ("api_token", "data_owners", "dealer_token")

    port: int = 8000
    state_dir: Path = Path("state/model_owner")
    name: str = "model-owner"  # this model owner's name at the data owners
    train: Path = Path("data/train.npz")
    test: Path = Path("data/test.npz")
    l2: float = 1.0
    n_classes: int | None = None  # default: largest label in train/test + 1
    label_encoding: str = "integer"
    # the data owners it may open sessions with, each with its own token (never one shared)
    data_owners: dict[str, DataOwnerPeer] = Field(default_factory=dict)
    dealer_url: str = "http://127.0.0.1:8002"
    dealer_token: SecretStr = SecretStr(PLACEHOLDER)
    advertise_host: str = "127.0.0.1"  # the rendezvous address the other parties connect to
    # the local address the workers bind for the rendezvous (default: advertise_host); set it when
    # the advertised address is not one of this host's (NAT, a load balancer)
    rendezvous_bind: str | None = None
    rendezvous_ports: str = "29500-29599"
    reveal_to: RevealTo = "both"  # default of a session's reveal_to
    allow_insecure_tfp: bool = False  # allow sessions with provider TFP (testing only)

    def data_owner(self, url: str) -> tuple[str, DataOwnerPeer]:
        """The configured data owner at ``url``; a ConfigError lists the ones there are."""
        wanted = url.rstrip("/")
        for name, peer in self.data_owners.items():
            if peer.url.rstrip("/") == wanted:
                return name, peer
        known = ", ".join(f"{n} ({p.url})" for n, p in self.data_owners.items()) or "none"
        from common.errors import ConfigError

        raise ConfigError(
            f"no data owner is configured at {url} (MODEL_OWNER_DATA_OWNERS has: {known}); a model "
            "owner opens sessions only with data owners it has a token of its own for",
            field="data_owner_url",
        )


def get_settings() -> ModelOwnerSettings:
    return ModelOwnerSettings()
