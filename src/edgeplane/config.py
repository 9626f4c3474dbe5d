"""All settings in one pydantic-settings model: flags > env (``EDGEPLANE_*``) > file > defaults."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from edgeplane.errors import Invalid

SchedulerName = Literal["round-robin", "priority", "resource-fit"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EDGEPLANE_", extra="ignore")

    data_dir: Path = Field(default_factory=lambda: Path.home() / ".edgeplane")
    domain: str = "edgeplane"
    cluster_id: str = "local"
    #: ``mqtt://host:port``; empty means "start an embedded broker" (``edgeplane up``).
    broker: str = ""
    #: ``sqlite:///path``, ``postgresql://host/db?schema=s`` or ``memory://``;
    #: empty means SQLite in data_dir.
    store: str = ""
    host: str = "127.0.0.1"
    port: int = Field(default=7070, ge=0, le=65535)
    workers: int = Field(default=2, ge=0)
    heartbeat_s: float = Field(default=5.0, gt=0)
    missed_beats: int = Field(default=3, ge=1)
    scheduler: SchedulerName = "round-robin"
    pack: bool = Field(default=False, description="resource-fit: bin-pack instead of spread")
    admin_token: str | None = None
    allow_host: bool = False
    slots: int = Field(default=0, ge=0, description="concurrent tasks per worker; 0 = auto")
    max_body_mb: float = Field(default=64.0, gt=0)
    retry_backoff_s: float = Field(default=0.5, ge=0)
    max_workflow_tasks: int = Field(default=10_000, ge=1, description="per job or workflow")
    log_level: str = "info"
    # --- the hierarchy (root → clusters → workers) ---
    #: ``mqtt://host:port`` of the root's broker: a manager given one registers there
    root: str = ""
    cluster_name: str = ""
    #: cluster metadata sent to the root: labels and ``lat,lon``
    labels: dict[str, str] = Field(default_factory=dict)
    location: str = ""
    aggregate_interval_s: float = Field(default=5.0, gt=0)
    #: root: clusters tried in a row before a task waits for capacity to change
    placement_attempts: int = Field(default=3, ge=1)
    #: ``up``: run a root over this many clusters (0: one cluster, no root)
    clusters: int = Field(default=0, ge=0, le=16)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # init (flags) first, then env; the config file is merged in by ``load``.
        return (init_settings, env_settings)

    @property
    def store_url(self) -> str:
        return self.store or f"sqlite:///{self.data_dir / 'edgeplane.db'}"


def load(flags: dict[str, Any], config_file: Path | None = None) -> Settings:
    """Build settings from CLI flags (None = not given), env and an optional YAML file."""
    given = {k: v for k, v in flags.items() if v is not None}
    file_values: dict[str, Any] = {}
    if config_file is not None:
        import yaml  # only with --config: it costs every process 0.7 MB of RSS otherwise

        try:
            loaded = yaml.safe_load(config_file.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise Invalid(f"cannot read config file: {exc}", field="config") from None
        if not isinstance(loaded, dict):
            raise Invalid("config file must hold a mapping", field="config")
        file_values = {str(k).replace("-", "_"): v for k, v in loaded.items()}
    env_only = Settings.model_validate({})  # env + defaults
    env_set = {name for name in Settings.model_fields if f"EDGEPLANE_{name.upper()}" in os.environ}
    merged: dict[str, Any] = {}
    merged.update({k: v for k, v in file_values.items() if k not in env_set})
    merged.update({k: getattr(env_only, k) for k in env_set})
    merged.update(given)
    return Settings(**merged)
