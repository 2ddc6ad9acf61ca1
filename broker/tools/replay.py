"""Replay: alert files -> a Kafka topic, in the survey's wire format.

Input: .avro files, folders of them (recursive, sorted) and ZTF nightly .tar.gz archives
(members streamed, never extracted). Output: one Kafka message per alert: ZTF container
files as they are, LSST container files re-framed (Confluent, schema id from the record).
"""

from __future__ import annotations

import io
import logging
import re
import tarfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from fastavro import schemaless_writer
from tqdm import tqdm

from broker.decode import CONTAINER_MAGIC, Decoder
from broker.errors import BadAlert, TransientError
from broker.settings import SchemaSettings
from broker.surveys import lsst

log = logging.getLogger(__name__)
kafka_log = logging.getLogger(f"{__name__}.librdkafka")

ALERT_SUFFIX = ".avro"
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
FLUSH_TIMEOUT_S = 60.0
CONNECT_TIMEOUT_S = 10.0
MAX_ERRORS_KEPT = 5


@dataclass(slots=True)
class ReplayStats:
    files: int = 0  # alert files read (archive members included)
    messages: int = 0  # messages handed to the producer
    bytes: int = 0
    delivered: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)  # the first few delivery errors

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.delivered == self.messages


def default_producer_config(
    bootstrap: str, compression: str = "lz4", extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """An idempotent producer's librdkafka settings (`extra` wins)."""
    return {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "compression.type": compression,
        "linger.ms": 20,
        **(extra or {}),
    }


def discover(paths: Iterable[Path]) -> Iterator[Path]:
    """Alert files and archives: files as given, folders searched recursively in sorted order."""
    for path in paths:
        if path.is_dir():
            for found in sorted(path.rglob("*")):
                if found.is_file() and _wanted(found.name):
                    yield found
        elif path.is_file():
            yield path
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")


def iter_alert_files(paths: Iterable[Path]) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every alert file, streaming archive members one by one."""
    for path in discover(paths):
        if path.name.endswith(ARCHIVE_SUFFIXES):
            yield from _archive_members(path)
        else:
            yield str(path), path.read_bytes()


def _wanted(name: str) -> bool:
    return name.endswith(ALERT_SUFFIX) or name.endswith(ARCHIVE_SUFFIXES)


def _archive_members(path: Path) -> Iterator[tuple[str, bytes]]:
    # 'r|*' reads the archive as a stream: nothing is extracted, members come in order.
    with tarfile.open(path, mode="r|*") as archive:
        for member in archive:
            if not (member.isfile() and member.name.endswith(ALERT_SUFFIX)):
                continue
            handle = archive.extractfile(member)
            if handle is not None:
                yield f"{path}:{member.name}", handle.read()


def to_messages(raw: bytes, decoder: Decoder, name: str = "") -> list[bytes]:
    """The Kafka message(s) for one alert file.

    LSST container files become one Confluent-framed message per record; everything else
    goes as it is (ZTF container files, framed files, and files the broker will reject:
    replaying a bad file is how its dead-letter path gets exercised).
    """
    if not raw.startswith(CONTAINER_MAGIC):
        if raw[:1] != b"\x00":
            log.warning("%s is neither an Avro container nor Confluent-framed; sent as is", name)
        return [raw]
    try:
        schema = decoder.schema_of(raw)
        schema_id = lsst.schema_id(schema.name)
        if schema_id is None:
            return [raw]
        _, records = decoder.read(raw)
    except BadAlert as exc:
        log.warning("%s: %s; sent as is", name, exc)
        return [raw]
    frame = b"\x00" + schema_id.to_bytes(4, "big")
    messages = []
    for record in records:
        buffer = io.BytesIO()
        buffer.write(frame)
        schemaless_writer(buffer, schema.parsed, record)
        messages.append(buffer.getvalue())
    return messages


def produce_messages(
    messages: Iterable[bytes],
    topic: str,
    config: Mapping[str, Any],
    *,
    progress: bool = False,
    stats: ReplayStats | None = None,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
) -> ReplayStats:
    """Produce every message to `topic`, flush, and count deliveries and failures.

    Raises TransientError when Kafka cannot be reached at all, before producing anything.
    """
    stats = stats or ReplayStats()
    producer = Producer({"logger": kafka_log, **config})
    try:
        producer.list_topics(timeout=connect_timeout_s)
    except KafkaException as exc:
        producer.poll(0)  # serves the queued librdkafka logs: they say why
        raise TransientError(
            f"cannot reach Kafka at {config.get('bootstrap.servers')} within "
            f"{connect_timeout_s:.0f} s: {exc.args[0] if exc.args else exc}"
        ) from None

    def delivered(error: KafkaError | None, _message: Message) -> None:
        if error is None:
            stats.delivered += 1
            return
        stats.failed += 1
        if len(stats.errors) < MAX_ERRORS_KEPT:
            stats.errors.append(str(error))

    with tqdm(messages, unit="alert", disable=not progress, desc=f"-> {topic}") as bar:
        for message in bar:
            _produce(producer, topic, message, delivered)
            stats.messages += 1
            stats.bytes += len(message)
    remaining = producer.flush(FLUSH_TIMEOUT_S)
    if remaining:
        stats.failed += remaining
        stats.errors.append(f"{remaining} messages still queued after {FLUSH_TIMEOUT_S:.0f} s")
    return stats


class _OncePerMessage(logging.Filter):
    """librdkafka repeats a failing connection's error every few milliseconds: show each
    message once (numbers ignored), up to a bound."""

    def __init__(self, limit: int = 1000) -> None:
        super().__init__()
        self._seen: set[str] = set()
        self._limit = limit

    def filter(self, record: logging.LogRecord) -> bool:
        key = re.sub(r"\d+", "#", record.getMessage())
        if key in self._seen or len(self._seen) >= self._limit:
            return False
        self._seen.add(key)
        return True


kafka_log.addFilter(_OncePerMessage())


def _produce(producer: Producer, topic: str, message: bytes, callback: Any) -> None:
    while True:
        try:
            producer.produce(topic, value=message, on_delivery=callback)
        except BufferError:
            # The local queue is full: serve delivery reports until there is room.
            producer.poll(0.5)
            continue
        producer.poll(0)
        return


def replay_paths(
    paths: Iterable[Path | str],
    topic: str,
    producer_config: Mapping[str, Any],
    *,
    decoder: Decoder | None = None,
    progress: bool = False,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
) -> ReplayStats:
    """Replay alert files, folders and archives into `topic`; see the module docstring."""
    decoder = decoder or Decoder(SchemaSettings(), max_message_bytes=2**31)
    stats = ReplayStats()
    resolved = [Path(path) for path in paths]
    missing = [str(path) for path in resolved if not path.exists()]
    if missing:
        raise FileNotFoundError(f"no such file or folder: {', '.join(missing)}")

    def messages() -> Iterator[bytes]:
        for name, raw in iter_alert_files(resolved):
            stats.files += 1
            yield from to_messages(raw, decoder, name)

    produce_messages(
        messages(),
        topic,
        producer_config,
        progress=progress,
        stats=stats,
        connect_timeout_s=connect_timeout_s,
    )
    log.info(
        "replayed %d files as %d messages (%d bytes) to %s: %d delivered, %d failed",
        stats.files,
        stats.messages,
        stats.bytes,
        topic,
        stats.delivered,
        stats.failed,
    )
    return stats
