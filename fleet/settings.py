"""One settings tree for the whole fleet (pydantic-settings).

Sources, strongest first: explicit arguments, ``FLEET_*`` environment variables
(nested with ``__``, e.g. ``FLEET_REDIS__URL``, ``FLEET_QUEUES__EMBED__MAX_BATCH``),
then the YAML file given by ``--config`` / ``FLEET_CONFIG``. Unknown keys are
errors. Settings are built once at the entry point and passed down.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from fleet import keys
from fleet.errors import ConfigError

_STRICT = ConfigDict(extra="forbid", frozen=True)


class RedisSettings(BaseModel):
    model_config = _STRICT

    url: str | None = Field(
        None,
        description="redis://, rediss:// or unix:// URL; unset: `fleet up` starts a private redis-server",
    )
    username: str | None = Field(None, description="ACL user name")
    password: SecretStr | None = Field(None, description="AUTH password (or use password_file)")
    password_file: Path | None = Field(None, description="file whose first line is the password")
    tls_ca_file: Path | None = Field(None, description="CA bundle to verify the server (rediss://)")
    tls_cert_file: Path | None = Field(None, description="client certificate for mutual TLS")
    tls_key_file: Path | None = Field(None, description="client key for mutual TLS")
    connect_timeout_s: float = Field(5.0, gt=0, le=300)
    socket_timeout_s: float = Field(10.0, gt=0, le=3600)

    @field_validator("url")
    @classmethod
    def _scheme(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return url

    def resolved_password(self) -> str | None:
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is not None:
            try:
                return self.password_file.read_text().splitlines()[0].strip()
            except (OSError, IndexError) as exc:
                raise ConfigError(f"redis.password_file: cannot read a password: {exc}") from exc
        return None


class QueueSettings(BaseModel):
    """One queue: the model handler that serves it and how it is batched and kept."""

    model_config = _STRICT

    handler: str = Field(description="registered handler name (built-in or entry point)")
    handler_options: dict[str, Any] = Field(default_factory=dict)
    max_batch: int = Field(64, ge=1, le=65536, description="jobs per handler call")
    max_delay_ms: int = Field(5, ge=0, le=60_000, description="wait to fill a batch")
    workers: int = Field(1, ge=0, le=1024, description="workers `fleet up` starts")
    min_workers: int = Field(1, ge=0, le=1024)
    max_workers: int = Field(64, ge=1, le=4096)
    device: str = Field("auto", description="auto | cpu | nvidia | amd | sim:N")
    max_workers_per_device: int = Field(4, ge=1, le=256)
    visibility_timeout_ms: int = Field(60_000, ge=100, le=86_400_000)
    max_deliveries: int = Field(5, ge=1, le=1000)
    retry_backoff_ms: int = Field(500, ge=0, le=3_600_000)
    job_timeout_s: float = Field(300.0, gt=0, le=86_400)
    result_ttl_s: int = Field(3600, ge=1, le=30 * 86_400)
    max_payload_bytes: int = Field(1 << 20, ge=16, le=512 << 20)
    max_backlog: int = Field(1_000_000, ge=1)
    block_ms: int = Field(5000, ge=1, le=600_000, description="XREADGROUP BLOCK")
    backlog_per_worker: int = Field(5000, ge=1)
    max_wait_s: float = Field(30.0, gt=0)
    stabilization_s: float = Field(60.0, ge=0)
    scale_up_cooldown_s: float = Field(5.0, ge=0)
    memory_max_bytes: int | None = Field(None, ge=1 << 20, description="cgroup memory.max")
    cpu_max_cores: float | None = Field(None, gt=0, description="cgroup cpu.max in cores")


class WorkerSettings(BaseModel):
    model_config = _STRICT

    heartbeat_interval_s: float = Field(1.0, gt=0, le=60)
    drain_timeout_s: float = Field(30.0, gt=0, le=3600)
    reply_ttl_s: int = Field(86_400, ge=1)
    dlq_max_len: int = Field(100_000, ge=1)


class ScalerSettings(BaseModel):
    model_config = _STRICT

    tick_s: float = Field(1.0, gt=0, le=300)
    autoscale: bool = Field(True, description="False: keep each queue at its `workers` count")
    stop_workers_on_exit: bool = True
    cgroup_root: Path | None = Field(None, description="override the cgroup2 mount (tests)")
    use_cgroups: bool = True
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(0, ge=0, le=65535, description="0 = no metrics endpoint")


class FleetSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FLEET_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    redis: RedisSettings = Field(default_factory=RedisSettings)  # type: ignore[arg-type]
    queues: dict[str, QueueSettings] = Field(default_factory=dict)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)  # type: ignore[arg-type]
    scaler: ScalerSettings = Field(default_factory=ScalerSettings)  # type: ignore[arg-type]
    state_dir: Path = Field(Path(".fleet"), description="private redis-server data, logs")
    log_json: bool = False
    log_level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")

    @field_validator("queues")
    @classmethod
    def _queue_names(cls, queues: dict[str, QueueSettings]) -> dict[str, QueueSettings]:
        for name in queues:
            if not keys.valid_queue_name(name):
                raise ValueError(
                    f"queue name {name!r} must be 1-64 of A-Z a-z 0-9 _ . - (no braces or colons)"
                )
        return queues

    def queue(self, name: str) -> QueueSettings:
        try:
            return self.queues[name]
        except KeyError:
            known = ", ".join(sorted(self.queues)) or "none"
            raise ConfigError(f"queue {name!r} is not in the config (known: {known})") from None


class _YamlSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], data: Mapping[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = dict(data)

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return self._data


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        value = err.get("input")
        shown = "" if isinstance(value, dict) else f" = {value!r}"[:120]
        lines.append(f"  {where}{shown}: {err['msg']}")
    return "\n".join(lines)


def load_settings(path: Path | None = None, **overrides: Any) -> FleetSettings:
    """Build the settings once: overrides > FLEET_* env > YAML file > defaults."""
    data = read_yaml(path) if path is not None else {}

    class _Loaded(FleetSettings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (init_settings, env_settings, _YamlSource(settings_cls, data))

    try:
        loaded = _Loaded(**overrides)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path or "environment"))) from None
    return FleetSettings.model_validate(loaded.model_dump())
