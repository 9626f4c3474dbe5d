"""Registry settings: which registries may be plain HTTP, their credentials, and the
largest artifact taken. A YAML file (docs/artifacts.md, "Registries")::

    max_artifact_mb: 512
    registries:
      registry.example.com:
        username: ci
        password_file: /run/secrets/registry   # or password: ... (file mode 0600)
      10.0.0.5:5000:
        insecure: true                          # plain HTTP (Docker's rule)
      ghcr.io:
        token: ...                              # a bearer token sent as is

Found at ``--registries FILE``, else ``EDGEPLANE_REGISTRIES``, else
``DATA_DIR/registries.yaml`` when it exists. Credentials are :class:`SecretStr`: they
never show in a repr, a log line or an error.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from edgeplane.errors import Invalid

DEFAULT_MAX_ARTIFACT_MB = 512
FILE_NAME = "registries.yaml"
ENV_FILE = "EDGEPLANE_REGISTRIES"


class Credentials(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    username: str | None = Field(default=None, max_length=256)
    password: SecretStr | None = Field(default=None, max_length=4096)
    #: read at load time, so the secret need not sit in the YAML
    password_file: Path | None = None
    #: a bearer token sent as is (registries that hand out long-lived tokens)
    token: SecretStr | None = Field(default=None, max_length=16384)
    insecure: bool = False

    @model_validator(mode="after")
    def _password_file(self) -> Credentials:
        if self.password_file is not None:
            try:
                secret = self.password_file.read_text().strip()
            except OSError as exc:
                raise ValueError(f"cannot read password_file: {exc.strerror}") from None
            object.__setattr__(self, "password", SecretStr(secret))
        if self.password is not None and not self.username:
            raise ValueError("a password needs a username")
        return self

    @property
    def basic(self) -> tuple[str, str] | None:
        if self.username and self.password is not None:
            return self.username, self.password.get_secret_value()
        return None


class RegistryConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    registries: dict[str, Credentials] = Field(default_factory=dict)
    max_artifact_mb: float = Field(default=DEFAULT_MAX_ARTIFACT_MB, gt=0, le=1 << 20)

    @property
    def max_bytes(self) -> int:
        return int(self.max_artifact_mb * 1024 * 1024)

    @property
    def insecure(self) -> list[str]:
        return [name for name, entry in self.registries.items() if entry.insecure]

    def credentials(self, registry: str) -> Credentials:
        """The entry for ``HOST:PORT``, else for ``HOST``, else none."""
        host = registry.rpartition(":")[0] if registry.count(":") == 1 else registry
        return self.registries.get(registry) or self.registries.get(host) or Credentials()

    def with_credentials(self, registry: str, credentials: Credentials) -> RegistryConfig:
        """A copy in which ``registry`` uses ``credentials`` (flags win over the file);
        the file's insecure mark stays."""
        merged = credentials.model_copy(
            update={"insecure": credentials.insecure or self.credentials(registry).insecure}
        )
        return self.model_copy(update={"registries": {**self.registries, registry: merged}})


def default_file(data_dir: Path | None = None) -> Path | None:
    """The file to read when none is named: ``EDGEPLANE_REGISTRIES``, else
    ``DATA_DIR/registries.yaml`` if it exists."""
    if env := os.environ.get(ENV_FILE):
        return Path(env)
    directory = data_dir or Path(os.environ.get("EDGEPLANE_DATA_DIR") or Path.home() / ".edgeplane")
    path = directory / FILE_NAME
    return path if path.exists() else None


def load(path: Path | None) -> RegistryConfig:
    """The configuration in ``path`` (None: the defaults); :class:`Invalid` naming the
    field on a bad file, without echoing any value (it may be a secret)."""
    if path is None:
        return RegistryConfig()
    from edgeplane import safeyaml

    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise Invalid(f"cannot read registry config {path}: {exc}", field="registries") from None
    data: Any = safeyaml.load(text, str(path)) or {}
    if not isinstance(data, dict):
        raise Invalid(f"{path} must hold a mapping", field="registries")
    try:
        return RegistryConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_input=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        raise Invalid(f"{path}: {where}: {first['msg']}", field="registries") from None
