"""The service's own configuration: the `fritz.server`, `mongo` and `filters` sections.

Input: a YAML file laid out as Nightjar's config/nightjar.yaml (other sections are ignored),
then NIGHTJAR_FRITZ__SERVER__<KEY>, NIGHTJAR_MONGO__<KEY> and NIGHTJAR_FILTERS__DEFINITIONS
from the environment, then command-line options. Output: a validated FritzConfig, or
ConfigError naming the field, so a deployment keeps the variables it already sets.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

# Read when no --config / NIGHTJAR_CONFIG is given (the repository root, or /app in the image).
DEFAULT_CONFIG = Path("config") / "nightjar.yaml"
ENV_PREFIX = "NIGHTJAR_"
# Environment values of these keys are JSON, as the broker's settings read them.
_JSON_KEYS = frozenset({"tokens", "groups", "streams", "definitions"})
_SECTIONS = (("fritz", "server"), ("mongo",), ("filters",))


class ConfigError(Exception):
    """Invalid or missing configuration; the message names the field. Exit status 2."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class ServerSection(BaseModel):
    """fritz.server: where the service listens and whom it answers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=5000, ge=0, le=65535)
    database: str = Field(default="fritz", min_length=1)
    tokens: list[SecretStr] = Field(default_factory=list)
    tokens_file: Path | None = None
    groups: dict[int, str] = Field(default_factory=lambda: {1: "Nightjar"})
    streams: dict[int, str] = Field(
        default_factory=lambda: {
            1: "ZTF Public", 2: "LSST Public", 3: "WINTER", 4: "PGIR", 5: "TURBO", 6: "DECam DESIRT"
        }
    )  # fmt: skip
    # Test-only: POST /_test/faults makes the API answer errors or stall (never in production).
    faults_enabled: bool = False


class FritzSection(_Section):
    server: ServerSection = ServerSection()


class MongoSection(_Section):
    uri: SecretStr = SecretStr("mongodb://127.0.0.1:27017")
    uri_file: Path | None = None
    timeout_ms: int = Field(default=10_000, gt=0)


class FilterEntry(_Section):
    """Only what the service shows: the SkyPortal filter id and the filter's name."""

    name: str = Field(min_length=1)
    fritz_filter_id: int = Field(gt=0)


class FiltersSection(_Section):
    definitions: list[FilterEntry] = Field(default_factory=list)


class FritzConfig(_Section):
    """Everything the service needs; shaped like the YAML so errors name its keys."""

    fritz: FritzSection = FritzSection()
    mongo: MongoSection = MongoSection()
    filters: FiltersSection = FiltersSection()

    @property
    def server(self) -> ServerSection:
        return self.fritz.server

    def filter_names(self) -> dict[int, str]:
        return {entry.fritz_filter_id: entry.name for entry in self.filters.definitions}

    def mongo_uri(self) -> str:
        if self.mongo.uri_file is None:
            return self.mongo.uri.get_secret_value()
        return _read("mongo.uri_file", self.mongo.uri_file).strip()

    def accepted_tokens(self) -> list[str]:
        """The configured tokens plus the tokens file's lines; ConfigError when none."""
        tokens = [token.get_secret_value() for token in self.server.tokens]
        if self.server.tokens_file is not None:
            lines = _read("fritz.server.tokens_file", self.server.tokens_file).splitlines()
            tokens.extend(line.strip() for line in lines if line.strip())
        if not tokens:
            raise ConfigError(
                "fritz.server.tokens is empty: set NIGHTJAR_FRITZ__SERVER__TOKENS='[\"<token>\"]' "
                "or fritz.server.tokens_file"
            )
        return tokens


def config_from(data: Mapping[str, Any], source: str = "") -> FritzConfig:
    """Validate nested sections ({"fritz": {"server": ...}, "mongo": ..., "filters": ...})."""
    try:
        return FritzConfig.model_validate(data)
    except ValidationError as exc:
        lines = [f"invalid configuration{source}:"]
        for err in exc.errors():
            lines.append(f"  {'.'.join(str(part) for part in err['loc'])}: {err['msg']}")
        raise ConfigError("\n".join(lines)) from exc


def load_config(
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> FritzConfig:
    """The file (or NIGHTJAR_CONFIG, or ./config/nightjar.yaml), the environment, then options.

    `overrides` are dotted keys (e.g. {"fritz.server.port": 5001}); None values are skipped.
    A mongo.uri given there wins over mongo.uri_file, as it does for `nightjar fritz serve`.
    """
    env = os.environ if env is None else env
    path = path or (Path(env["NIGHTJAR_CONFIG"]) if env.get("NIGHTJAR_CONFIG") else None)
    if path is None and DEFAULT_CONFIG.is_file():
        path = DEFAULT_CONFIG
    data = _read_yaml(path) if path is not None else {}
    for dotted, value in [*_environment(env).items(), *(overrides or {}).items()]:
        if value is not None:
            _set(data, dotted.split("."), value)
    if (overrides or {}).get("mongo.uri") is not None:
        data["mongo"].pop("uri_file", None)
    where = f" (file {path}, or {ENV_PREFIX}<SECTION>__<KEY> in the environment)" if path else ""
    config = config_from(data, where)
    if config.mongo.uri_file is not None and not config.mongo.uri_file.is_file():
        raise ConfigError(f"mongo.uri_file: {config.mongo.uri_file} does not exist")
    return config


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections")
    return {key: loaded[key] for key in ("fritz", "mongo", "filters") if key in loaded}


def _environment(env: Mapping[str, str]) -> dict[str, Any]:
    """NIGHTJAR_<SECTION>__<KEY> variables of the three sections, as dotted keys."""
    found: dict[str, Any] = {}
    for name, raw in env.items():
        parts = name.removeprefix(ENV_PREFIX).lower().split("__")
        if not name.startswith(ENV_PREFIX) or tuple(parts[:-1]) not in _SECTIONS:
            continue
        value: Any = raw
        if parts[-1] in _JSON_KEYS:
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{name}: not valid JSON ({exc.msg}): {raw!r}") from exc
        found[".".join(parts)] = value
    return found


def _set(data: dict[str, Any], keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        child = data.get(key)
        if not isinstance(child, dict):
            child = data[key] = {}
        data = child
    data[keys[-1]] = value


def _read(field: str, path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise ConfigError(f"{field}: cannot read it: {exc}") from exc
