"""Settings every service has; each party's settings subclass these with its own prefix.

Every setting is an environment variable ``<PREFIX><FIELD>`` (pydantic-settings), built by a
factory when the service starts, never at import time. Paths are resolved once, against the
directory the service was started in. Secrets are ``SecretStr``; a service refuses to start on a
placeholder secret unless it runs the local demo.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings

from common.errors import ConfigError

PLACEHOLDER = "change-me"
OPERATOR = "operator"  # the identity of a service's own API token
MIN_TOKEN_BYTES = 32  # a bearer token is at least this long (e.g. secrets.token_urlsafe(32))


class Credential(BaseModel):
    """How one peer proves who it is to this service: the bearer token it presents, and (when set)
    the name its client certificate must carry, so that a token is bound to one key the CA signed."""

    model_config = ConfigDict(extra="forbid")

    token: SecretStr
    certificate: str | None = Field(
        default=None,
        description="a DNS name (or IP) the peer's client certificate must carry; unset: any "
        "certificate from the deployment's CA (with mutual TLS) goes with the token",
    )


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
    # the server's limits (common/web/server.py)
    max_connections: int = Field(default=100, ge=1)  # at once; beyond, 503
    max_concurrent_sessions: int = Field(default=8, ge=1)  # live sessions at once; beyond, 503
    header_timeout: float = Field(default=10.0, gt=0)  # seconds for a request's headers to arrive
    tls_handshake_timeout: float = Field(default=10.0, gt=0)
    keep_alive_timeout: float = Field(default=5.0, gt=0)  # an idle connection is closed after it
    shutdown_timeout: float = Field(default=5.0, gt=0)  # at most this long for requests in flight
    # TLS (common/web/tls.py): this service's certificate and key (PEM; served, and presented to
    # peers for mutual TLS), and the CA that peers' and clients' certificates must chain to
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None  # unset: peers are verified against the system's trust store
    tls_client_auth: Literal["required", "none"] = "required"  # mutual TLS, or bearer over TLS
    insecure_http: bool = False  # allow plain HTTP off loopback (serving and calling peers)
    # operations (common/web/logs.py, common/web/metrics.py, common/web/docs.py)
    log_format: Literal["json", "text"] = "json"  # one JSON object per line, or text
    access_log: Literal["changes", "all", "off"] = "changes"  # "changes": no line per poll
    docs: Literal["token", "public", "off"] = "token"  # /v1/docs: the schema behind the token

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

    def _secrets(self) -> dict[str, SecretStr]:
        """Every secret of these settings, by the environment variable (and key) it comes from."""
        found: dict[str, SecretStr] = {}
        for name in self.secret_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                found[self.env_name(name)] = value
            elif isinstance(value, dict):
                for key, item in value.items():
                    secret = item if isinstance(item, SecretStr) else item.token
                    found[f"{self.env_name(name)}[{key!r}].token"] = secret
        return found

    def check_secrets(self) -> None:
        """Refuse to run on a placeholder secret unless this is the local demo, and on a token
        shorter than MIN_TOKEN_BYTES or used for two relationships in any case."""
        seen: dict[str, str] = {}
        for where, secret in self._secrets().items():
            value = secret.get_secret_value()
            if value in (PLACEHOLDER, ""):
                if self.demo:
                    continue
                raise ConfigError(
                    f"{where} is unset or the placeholder {PLACEHOLDER!r}: set a real secret (e.g. "
                    "python -c 'import secrets; print(secrets.token_urlsafe(32))'), or pass --demo "
                    "for a local demo"
                )
            if len(value.encode()) < MIN_TOKEN_BYTES:
                raise ConfigError(
                    f"{where} is {len(value.encode())} bytes long: a token must have at least "
                    f"{MIN_TOKEN_BYTES} (e.g. python -c 'import secrets; "
                    "print(secrets.token_urlsafe(32))')"
                )
            if value in seen:
                raise ConfigError(
                    f"{where} and {seen[value]} are the same token: every relationship needs its "
                    "own, so that one peer cannot present itself as another"
                )
            seen[value] = where

    def identities(self) -> dict[str, Credential]:
        """Each identity this service accepts, with its credential."""
        return {OPERATOR: Credential(token=self.api_token)}
