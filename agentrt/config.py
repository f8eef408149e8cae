"""Configuration: one pydantic-settings model.

Sources, highest priority first: explicit arguments, ``AGENTRT_*`` environment variables
(nested with ``__``, e.g. ``AGENTRT_ENGINE__THREADS=4``), a TOML file (``$AGENTRT_CONFIG`` or
``<data dir>/config.toml``), then the defaults below.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

__all__ = ["EngineSettings", "MemorySettings", "Settings", "default_data_dir", "get_settings"]

#: Name the local engine serves the embedded model under (OpenAI ``model`` field).
LOCAL_MODEL_NAME = "qwen2.5-coder-1.5b-instruct-q4_k_m"


def default_data_dir() -> Path:
    """``$AGENTRT_HOME`` if set, else ``$XDG_DATA_HOME/agentrt`` or ``~/.local/share/agentrt``."""
    home = os.environ.get("AGENTRT_HOME")
    if home:
        return Path(home).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "agentrt"


class EngineSettings(BaseModel):
    """Settings of the embedded local engine (llama.cpp through xllamacpp)."""

    host: str = Field("127.0.0.1", description="Loopback address the engine listens on.")
    port: int = Field(8765, ge=0, le=65535, description="TCP port; 0 picks a free one.")
    threads: int = Field(default_factory=lambda: max(1, os.cpu_count() or 1), ge=1,
                         description="CPU threads for decoding and prompt processing.")
    context: int = Field(8192, ge=512, description="Total context in tokens, shared by all slots.")
    parallel: int = Field(4, ge=1, le=64, description="Parallel slots (concurrent requests).")
    startup_timeout: float = Field(120.0, gt=0, description="Seconds to wait for health.")


class MemorySettings(BaseModel):
    """Settings of the episodic memory store (``agentrt.memory_store``)."""

    path: Path | None = Field(None, description="SQLite file; None means <data dir>/memory/memory.db.")
    durability: str = Field("process", pattern="^(process|power)$",
                            description="process: survives a crash of the process (WAL, synchronous=NORMAL); "
                                        "power: survives power loss (synchronous=FULL, group commit).")
    embedder: str = Field("minilm", pattern="^(minilm|openai|hashing)$",
                          description="minilm: offline all-MiniLM-L6-v2 int8 ONNX; openai: an OpenAI-compatible "
                                      "/embeddings endpoint; hashing: feature hashing (no model, weak).")
    embed_base_url: str | None = Field(None, description="Endpoint for embedder=openai (``.../v1``).")
    embed_api_key: str | None = None
    embed_model: str = Field("text-embedding-3-small", description="Model name for embedder=openai.")
    embed_dim: int = Field(384, ge=8, description="Vector dimension (must match the embedder).")
    embed_threads: int = Field(1, ge=1, description="onnxruntime intra-op threads (1 when an LLM shares the CPU).")


class Settings(BaseSettings):
    """Everything agentrt can be configured with.

    Attributes:
        data_dir: where models, traces and memory live.
        base_url: OpenAI-compatible endpoint (``.../v1``); ``None`` means the embedded local engine.
        api_key: bearer key for ``base_url``; not needed for the local engine.
        model: model name sent to the endpoint.
        request_timeout: seconds without progress before a model call fails (per read; a
            call that is not streamed shows no progress until it ends).
        max_retries: retries on 429, 5xx and connection errors, with exponential backoff.
        engine: local engine settings.
        memory: episodic memory store settings.
        default_memory, default_cpu, default_pids, default_timeout: the default resource
            intent of a tool that declares none (bytes, cores, processes, seconds).
        docker_host: Docker Engine API URL of the container backend (``AGENTRT_DOCKER_HOST``).
        admission_memory_fraction, admission_memory_budget: the memory budget (fraction of
            MemAvailable, or bytes) that admission control reserves sandboxed calls' intents against.
    """

    model_config = SettingsConfigDict(
        env_prefix="AGENTRT_", env_nested_delimiter="__", extra="ignore"
    )

    data_dir: Path = Field(default_factory=default_data_dir)
    base_url: str | None = None
    api_key: str | None = None
    model: str = LOCAL_MODEL_NAME
    request_timeout: float = Field(300.0, gt=0)
    max_retries: int = Field(3, ge=0)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    memory: MemorySettings = Field(default_factory=MemorySettings)
    default_memory: int = Field(512 * 1024 * 1024, gt=0)
    default_cpu: float = Field(1.0, gt=0)
    default_pids: int = Field(64, ge=1)
    default_timeout: float = Field(60.0, gt=0)
    trace_path: Path | None = Field(None, description="Trace store (SQLite); None means <data dir>/traces.sqlite.")
    docker_host: str | None = Field(None, description="Docker Engine API URL for the container sandbox "
                                    "backend (unix:///... or tcp://...); None: $DOCKER_HOST, else the podman "
                                    "socket scripts/podman-service starts under <data dir>/podman/.")
    admission_memory_fraction: float = Field(0.8, gt=0, le=1, description="Share of MemAvailable (at start) "
                                             "that sandboxed tool calls may reserve at once (admission control).")
    admission_memory_budget: int | None = Field(None, gt=0, description="Explicit admission budget in bytes; "
                                                "overrides admission_memory_fraction.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = Path(os.environ.get("AGENTRT_CONFIG", default_data_dir() / "config.toml"))
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_path.is_file():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_path))
        return tuple(sources)

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def uses_local_engine(self) -> bool:
        return self.base_url is None


def get_settings(**overrides: Any) -> Settings:
    """Build the settings, with ``overrides`` taking precedence over every other source.

    Raises:
        ConfigError: a source holds an invalid value (the message names the field).
    """
    from pydantic import ValidationError

    from agentrt.errors import ConfigError

    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise ConfigError(f"invalid agentrt configuration: {exc}") from exc
    except ValueError as exc:  # a malformed TOML file (tomllib.TOMLDecodeError)
        path = os.environ.get("AGENTRT_CONFIG", default_data_dir() / "config.toml")
        raise ConfigError(f"cannot read the configuration file {path}: {exc}") from exc
