"""The one settings model: YAML file, then NIGHTJAR_<SECTION>__<KEY> environment overrides.

Validated once at start-up (`load_settings`); a bad value raises ConfigError naming the
field. Secrets (`SecretStr`) come from the environment or from `*_file` paths and are
masked wherever settings are shown.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from broker.errors import ConfigError
from broker.query import compile_query
from broker.records import ALERT_FIELDS

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "nightjar.yaml"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# kafka.max_decode_bytes when unset: this many times kafka.max_message_bytes. Real alerts
# take at most ~3x their size in Python objects (~5x for their non-stamp bytes).
DECODE_BYTES_FACTOR = 8


class KafkaSettings(Section):
    bootstrap_servers: str = "127.0.0.1:9092"
    group_id: str = "nightjar"
    # Names, or regular expressions starting with '^' (new matching topics are picked
    # up without a restart; librdkafka regexes: no \d, no {n}).
    topics: list[str] = Field(default_factory=lambda: [r"^ztf_[0-9]+_programid[0-9]+$"])
    # Output topic per survey; {survey} is replaced ('nightjar.ztf.annotated').
    output_topic: str = "nightjar.{survey}.annotated"
    dead_letter_topic: str = "nightjar.deadletter"
    max_message_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    # The most memory decoding one message may take (its Python objects); unset: 8 x
    # max_message_bytes. Messages that would need more are dead-lettered as oversized.
    max_decode_bytes: int | None = Field(default=None, gt=0)
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    # Static group membership (librdkafka group.instance.id): a restarted broker takes its
    # partitions back at once. Unique per running broker: several brokers on one host need
    # explicit names (the Helm chart uses the pod name); "" turns static membership off.
    instance_name: str = Field(default_factory=socket.gethostname, max_length=249)
    # Crash-loop protection: after this many consecutive deaths at the same uncommitted
    # offsets the broker bisects that range and dead-letters the message that kills it.
    poison_after_deaths: int = Field(default=3, ge=1, le=100)
    security_protocol: str | None = None
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    sasl_password_file: Path | None = None
    # Passed verbatim to librdkafka (consumer and producer), e.g. {"fetch.max.bytes": ...}.
    extra: dict[str, str | int | float | bool] = Field(default_factory=dict)

    @field_validator("topics")
    @classmethod
    def _valid_topics(cls, topics: list[str]) -> list[str]:
        if not topics:
            raise ValueError("at least one topic name or ^pattern is required")
        for topic in topics:
            if topic.startswith("^"):
                try:
                    re.compile(topic)
                except re.error as exc:
                    raise ValueError(f"{topic!r} is not a valid regular expression: {exc}") from exc
        return topics

    @field_validator("output_topic")
    @classmethod
    def _valid_output(cls, template: str) -> str:
        try:
            template.format(survey="ztf")
        except (KeyError, IndexError) as exc:
            raise ValueError(f"only {{survey}} may be used in the template: {exc}") from exc
        return template

    @model_validator(mode="after")
    def _valid_decode_bound(self) -> KafkaSettings:
        if self.max_decode_bytes is not None and self.max_decode_bytes < self.max_message_bytes:
            raise ValueError(
                f"max_decode_bytes ({self.max_decode_bytes}) must be at least max_message_bytes "
                f"({self.max_message_bytes}): a decoded message takes more memory than its bytes"
            )
        return self

    @property
    def decode_bytes(self) -> int:
        """kafka.max_decode_bytes, or its default (8 x max_message_bytes)."""
        return self.max_decode_bytes or DECODE_BYTES_FACTOR * self.max_message_bytes

    def output_topic_for(self, survey: str) -> str:
        return self.output_topic.format(survey=survey)


class MongoSettings(Section):
    uri: SecretStr = SecretStr("mongodb://127.0.0.1:27017")
    uri_file: Path | None = None
    database: str = "nightjar"
    timeout_ms: int = Field(default=10_000, gt=0)
    # Several brokers in one group store alerts of the same objects at once: re-read each
    # batch's objects and repair their light curves (broker.history.repair). It costs a
    # light-curve read per batch (store of objects 2.9 -> 4.5 ms per alert on FerretDB), so a
    # lone broker leaves it off; the Helm chart turns it on with more than one broker.
    repair_light_curves: bool = False


class SchemaSettings(Section):
    # Rubin schemas: a Confluent-compatible registry URL (preferred when set), else files.
    lsst_registry_url: str | None = None
    lsst_schema_dir: Path | None = None


class DispatchSettings(Section):
    batch_size: int = Field(default=500, gt=0, le=100_000)
    batch_seconds: float = Field(default=0.5, gt=0)
    max_in_flight: int = Field(default=4, gt=0)
    # None: start a LocalCluster in-process; else "tcp://host:8786".
    scheduler_address: str | None = None
    local_workers: int = Field(default=1, gt=0)
    local_threads_per_worker: int = Field(default=2, gt=0)
    local_processes: bool = True


class ModelSettings(Section):
    # Where `nightjar models fetch` installs converted ONNX models.
    dir: Path = Path(".nightjar/models")
    registry: Path = Path(__file__).resolve().parent.parent / "config" / "models.yaml"
    # Model names to run; empty means every installed model of the registry.
    enabled: list[str] = Field(default_factory=list)
    provider: Literal["auto", "cpu", "cuda"] = "auto"
    intra_op_threads: int = Field(default=1, gt=0)
    # Alerts per ONNX Runtime call: a worker's batch is run in slices of this many. On CPU,
    # slices of ~128 keep activations in cache (ACAI 2.5x, braai 1.4x faster per alert than
    # one call over 500, make bench); on a GPU, larger slices fill the device better.
    inference_batch: int = Field(default=128, gt=0)
    # BTSbot's `new_drb`: "braai" (d6_m9 on this triplet, the training semantics) or
    # "packet" (the alert's own drb, as Kowalski feeds it in production).
    btsbot_drb: Literal["braai", "packet"] = "braai"


class MetricsSettings(Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=9108, ge=0, le=65535)


class LoggingSettings(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class FilterDefinition(Section):
    # Lower-case name: it becomes the outbox key, the annotation origin and the topic name.
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    # MongoDB query language over the stored alert document (broker.query lists the operators).
    query: dict[str, Any]
    # The SkyPortal filter and groups the candidates are posted to.
    fritz_filter_id: int = Field(gt=0)
    group_ids: list[int] = Field(default_factory=list)
    enabled: bool = True

    @model_validator(mode="after")
    def _valid_query(self) -> FilterDefinition:
        # QueryError is a ValueError naming the filter: pydantic reports it under this field.
        compile_query(self.query, name=self.name, fields=ALERT_FIELDS)
        return self


class FilterSettings(Section):
    # Alerts passing a filter are also produced to this topic; {filter} is the filter's name.
    topic_template: str = "nightjar.filter.{filter}"
    definitions: list[FilterDefinition] = Field(default_factory=list)

    @field_validator("topic_template")
    @classmethod
    def _valid_template(cls, template: str) -> str:
        try:
            template.format(filter="bts")
        except (KeyError, IndexError) as exc:
            raise ValueError(f"only {{filter}} may be used in the template: {exc}") from exc
        return template

    @field_validator("definitions")
    @classmethod
    def _unique_names(cls, definitions: list[FilterDefinition]) -> list[FilterDefinition]:
        names = [definition.name for definition in definitions]
        duplicated = sorted({name for name in names if names.count(name) > 1})
        if duplicated:
            raise ValueError(f"filter names must be unique; repeated: {', '.join(duplicated)}")
        return definitions

    def topic_for(self, name: str) -> str:
        return self.topic_template.format(filter=name)


class FritzServerSettings(Section):
    """The SkyPortal-compatible service of `nightjar fritz serve`."""

    host: str = "127.0.0.1"
    port: int = Field(default=5000, ge=0, le=65535)
    database: str = "fritz"
    # Accepted API tokens: NIGHTJAR_FRITZ__SERVER__TOKENS='["..."]' or a file, one per line.
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


class FritzSettings(Section):
    """Where and how `nightjar post` sends filter matches (a SkyPortal/Fritz instance)."""

    url: str = "http://127.0.0.1:5000"
    # Secret: NIGHTJAR_FRITZ__TOKEN in the environment, or fritz.token_file.
    token: SecretStr | None = None
    token_file: Path | None = None
    # SkyPortal instrument id per survey, and streams the photometry is shared with: one
    # list for every survey, or a list per survey ({ztf: [1], winter: [3]}; others: none).
    instrument_ids: dict[str, int] = Field(
        default_factory=lambda: {
            "ztf": 1, "lsst": 2, "winter": 3, "pgir": 4, "turbo": 5, "decam": 6
        }
    )  # fmt: skip
    stream_ids: list[int] | dict[str, list[int]] = Field(default_factory=list)
    origin: str = "Nightjar"
    timeout_seconds: float = Field(default=10.0, gt=0)
    # A claimed job is held this long; a crashed sender's jobs are picked up after it.
    lease_seconds: float = Field(default=120.0, gt=0)
    backoff_seconds: float = Field(default=2.0, gt=0)
    backoff_max_seconds: float = Field(default=300.0, gt=0)
    poll_seconds: float = Field(default=1.0, gt=0)
    # Jobs posted at once (threads, and kept-alive connections to Fritz); each job's calls
    # stay in order. 8 keeps a busy night's matches posted (README "Posting to SkyPortal").
    concurrency: int = Field(default=8, ge=1, le=64)
    server: FritzServerSettings = FritzServerSettings()

    @field_validator("url")
    @classmethod
    def _valid_url(cls, url: str) -> str:
        if not re.match(r"^https?://[^/\s]+", url):
            raise ValueError(f"{url!r} is not an http:// or https:// URL")
        return url.rstrip("/")

    @model_validator(mode="after")
    def _lease_covers_calls(self) -> FritzSettings:
        # A sender starts a step (up to 3 calls) only while its lease outlasts it with a
        # call to spare (broker.post.sender), so a fresh lease must cover that with room left.
        if self.lease_seconds < 8 * self.timeout_seconds:
            raise ValueError(
                f"lease_seconds ({self.lease_seconds}) must be at least 8 x timeout_seconds "
                f"({self.timeout_seconds})"
            )
        return self

    def streams_for(self, survey: str) -> list[int]:
        """The stream ids the photometry of `survey` is shared with."""
        if isinstance(self.stream_ids, dict):
            return list(self.stream_ids.get(survey, []))
        return list(self.stream_ids)

    def api_token(self) -> str | None:
        """The poster's token (file first), or None when neither is set."""
        return _secret_from(self.token, self.token_file)

    def server_tokens(self) -> list[str]:
        """Tokens the Fritz-like service accepts: the configured list plus the file's lines."""
        tokens = [token.get_secret_value() for token in self.server.tokens]
        if self.server.tokens_file is not None:
            lines = self.server.tokens_file.read_text().splitlines()
            tokens.extend(line.strip() for line in lines if line.strip())
        return tokens


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="NIGHTJAR_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    kafka: KafkaSettings = KafkaSettings()
    mongo: MongoSettings = MongoSettings()
    schemas: SchemaSettings = SchemaSettings()
    dispatch: DispatchSettings = DispatchSettings()
    models: ModelSettings = ModelSettings()
    metrics: MetricsSettings = MetricsSettings()
    logging: LoggingSettings = LoggingSettings()
    fritz: FritzSettings = FritzSettings()
    filters: FilterSettings = FilterSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # init holds the YAML file's content; the environment overrides it.
        return (env_settings, init_settings)

    def mongo_uri(self) -> str:
        return _secret_from(self.mongo.uri, self.mongo.uri_file) or ""

    def kafka_password(self) -> str | None:
        return _secret_from(self.kafka.sasl_password, self.kafka.sasl_password_file)


def _secret_from(value: SecretStr | None, path: Path | None) -> str | None:
    if path is not None:
        return path.read_text().strip()
    return value.get_secret_value() if value is not None else None


def load_settings(path: Path | None = None) -> Settings:
    """Read and validate the configuration; raise ConfigError naming the bad field."""
    path = path or _default_path()
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections")
        data = loaded
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from exc
    for name, secret_file in (
        ("mongo.uri_file", settings.mongo.uri_file),
        ("kafka.sasl_password_file", settings.kafka.sasl_password_file),
    ):
        if secret_file is not None and not secret_file.is_file():
            raise ConfigError(f"{name}: {secret_file} does not exist")
    return settings


def _default_path() -> Path | None:
    env = os.environ.get("NIGHTJAR_CONFIG")
    if env:
        return Path(env)
    return DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None


def _describe(exc: ValidationError, path: Path | None) -> str:
    where = f" (file {path}, or NIGHTJAR_<SECTION>__<KEY> in the environment)" if path else ""
    lines = [f"invalid configuration{where}:"]
    for err in exc.errors():
        field_name = ".".join(str(part) for part in err["loc"])
        lines.append(f"  {field_name}: {err['msg']}")
    return "\n".join(lines)


def masked(settings: Settings) -> dict[str, Any]:
    """Settings as plain data with secrets and URI passwords masked (for logs and `config show`)."""
    data = settings.model_dump(mode="json")
    data["mongo"]["uri"] = _mask_uri(settings.mongo_uri())
    for section in data.values():
        for key, value in section.items():
            if value == "**********":
                section[key] = "***"
    return data


def _mask_uri(uri: str) -> str:
    return re.sub(r"(//[^:/@]+:)[^@]+@", r"\1***@", uri)
