"""Settings every service has; each party's settings subclass these with its own prefix.

Every setting is an environment variable ``<PREFIX><FIELD>`` (pydantic-settings), built by a
factory when the service starts, never at import time. Paths are resolved once, against the
directory the service was started in. Secrets are ``SecretStr``; a service refuses to start on a
placeholder secret unless it runs the local demo.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings

from common.errors import ConfigError

PLACEHOLDER = "change-me"
OPERATOR = "operator"  # the identity of a service's own API token


class ServiceSettings(BaseSettings):
    """Settings every service has."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_token: SecretStr = SecretStr(PLACEHOLDER)
    state_dir: Path = Path("state")
    database: Path | None = None  # default: <state_dir>/sessions.db
    demo: bool = False  # allow placeholder secrets (the local demo only)
    rendezvous_timeout: float = Field(
        default=60.0, gt=0, le=3600
    )  # seconds for the parties to meet
    compute_timeout: float = Field(default=3600.0, gt=0, le=7 * 86400)  # the whole computation
    negotiation_timeout: float = Field(default=10.0, gt=0)  # seconds for each REST call to a peer
    max_request_bytes: int = Field(default=1_000_000, gt=0)
    # TLS (common/web/tls.py): this service's certificate and key (PEM; served, and presented to
    # peers for mutual TLS), and the CA that peers' and clients' certificates must chain to
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None  # unset: peers are verified against the system's trust store
    tls_client_auth: Literal["required", "none"] = "required"  # mutual TLS, or bearer over TLS
    insecure_http: bool = False  # allow plain HTTP off loopback (serving and calling peers)

    secret_fields: ClassVar[tuple[str, ...]] = ("api_token",)

    @field_validator("tls_cert", "tls_key", "tls_ca", mode="before")
    @classmethod
    def _unset_if_empty(cls, value: Any) -> Any:
        return None if value == "" else value  # an empty variable means unset, not the cwd

    @model_validator(mode="after")
    def _absolute_paths(self) -> ServiceSettings:
        """Every path setting is resolved against the directory the service was started in,
        once, here: the workers run elsewhere and must never see a relative path."""
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, Path):
                object.__setattr__(self, name, value.expanduser().resolve())
        return self

    @property
    def database_path(self) -> Path:
        return self.database or self.state_dir / "sessions.db"

    def env_name(self, field: str) -> str:
        """The environment variable of a setting, e.g. ``DATA_OWNER_DATA_DIR``."""
        return f"{self.model_config.get('env_prefix', '')}{field.upper()}"

    def check_secrets(self) -> None:
        """Refuse to run on a placeholder secret unless this is the local demo."""
        if self.demo:
            return
        for name in self.secret_fields:
            value = getattr(self, name)
            values = value.values() if isinstance(value, dict) else [value]
            if any(v.get_secret_value() in (PLACEHOLDER, "") for v in values):
                raise ConfigError(
                    f"{self.env_name(name)} is unset or the placeholder {PLACEHOLDER!r}: set a real "
                    "secret (e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'), or "
                    "pass --demo for a local demo"
                )

    def identities(self) -> dict[str, SecretStr]:
        """Each identity this service accepts, with its bearer token."""
        return {OPERATOR: self.api_token}


class ServesModelOwners(ServiceSettings):
    """A service that model owners call with their own tokens (the data owner, the dealer)."""

    secret_fields: ClassVar[tuple[str, ...]] = ("api_token", "model_owner_tokens")

    # the model owners this service knows, by name, with the token each presents
    model_owner_tokens: dict[str, SecretStr] = Field(
        default_factory=lambda: {"model-owner": SecretStr(PLACEHOLDER)}
    )

    def identities(self) -> dict[str, SecretStr]:
        return {OPERATOR: self.api_token, **self.model_owner_tokens}
