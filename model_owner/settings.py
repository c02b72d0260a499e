"""The model owner's settings: environment variables ``MODEL_OWNER_<FIELD>``."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import SecretStr
from pydantic_settings import SettingsConfigDict

from common.protocol import RevealTo
from common.web.settings import PLACEHOLDER, ServiceSettings


class ModelOwnerSettings(ServiceSettings):
    """Environment variables ``MODEL_OWNER_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="MODEL_OWNER_")
    secret_fields: ClassVar[tuple[str, ...]] = ("api_token", "data_owner_token", "dealer_token")

    port: int = 8000
    state_dir: Path = Path("state/model_owner")
    name: str = "model-owner"  # this model owner's name at the data owners
    public_url: str = "http://127.0.0.1:8000"  # where data owners report a cancellation
    train: Path = Path("data/train.npz")
    test: Path = Path("data/test.npz")
    l2: float = 1.0
    n_classes: int | None = None  # default: largest label in train/test + 1
    label_encoding: str = "integer"
    data_owner_token: SecretStr = SecretStr(PLACEHOLDER)  # presented to data owners
    dealer_url: str = "http://127.0.0.1:8002"
    dealer_token: SecretStr = SecretStr(PLACEHOLDER)
    advertise_host: str = "127.0.0.1"  # the rendezvous address the other parties connect to
    # the local address the workers bind for the rendezvous (default: advertise_host); set it when
    # the advertised address is not one of this host's (NAT, a load balancer)
    rendezvous_bind: str | None = None
    rendezvous_ports: str = "29500-29599"
    reveal_to: RevealTo = "both"  # default of a session's reveal_to
    allow_insecure_tfp: bool = False  # allow sessions with provider TFP (testing only)


def get_settings() -> ModelOwnerSettings:
    return ModelOwnerSettings()
