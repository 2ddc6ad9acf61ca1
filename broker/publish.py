"""Publish stage: annotated alerts to output topics, rejected messages to the dead-letter topic.

Input: alerts with their worker results, rejections, filter matches. Output: Kafka
messages, delivered (flush) before the caller commits offsets. Annotated alerts are the
original packet plus a `nightjar` annotations record (schemas/nightjar/annotations.avsc),
keyed by object id, from an idempotent producer. Rejected messages go as received; one the
producer or the topic refuses (too large, or any other per-message error) goes instead as a
`DeadLetterSummary` (schemas/nightjar/deadletter.avsc): reason, size, sha256, origin and first
bytes, so that no single message can stop the stream.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import fastavro
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from broker import __version__
from broker.avro.container import ContainerWriter, clean_schema
from broker.decode import record_body
from broker.errors import TransientError
from broker.metrics import DEAD_LETTER_SUMMARIES, OUTPUT_LATENCY, PUBLISHED
from broker.records import Alert, AlertResult, Rejection
from broker.schema_registry import WriterSchemas

log = logging.getLogger(__name__)

ANNOTATIONS_SCHEMA_PATH = (
    Path(__file__).resolve().parent.parent / "schemas" / "nightjar" / "annotations.avsc"
)
ANNOTATIONS_FIELD = "nightjar"
# Header carrying the input message's timestamp (ms), for end-to-end latency.
SOURCE_TS_HEADER = "nightjar-source-ts"
Headers = list[tuple[str, str | bytes | None]]


def load_annotations_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(ANNOTATIONS_SCHEMA_PATH.read_text())
    return schema


def annotations_record(result: AlertResult, now_ms: int) -> dict[str, Any]:
    """The `nightjar` record appended to a republished packet."""
    return {
        "broker": f"nightjar {__version__}",
        "annotated_at": now_ms,
        "scores": [
            {"model": a.model, "version": a.version, "score": a.score, "extra": dict(a.extra)}
            for a in result.annotations
        ],
        "skipped": [{"model": s.model, "reason": s.reason} for s in result.skipped],
    }


SUMMARY_SCHEMA_PATH = (
    Path(__file__).resolve().parent.parent / "schemas" / "nightjar" / "deadletter.avsc"
)
CONTENT_HEADER = "nightjar-content"
# Room for the key, headers and record framing beside the value, below message.max.bytes.
PRODUCE_OVERHEAD = 16 * 1024
# Delivery errors that concern the one message (its size or content), not the cluster:
# producing it again would fail again, so its summary is produced instead.
PER_MESSAGE_ERRORS = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.INVALID_MSG_SIZE,
        KafkaError.INVALID_MSG,
        KafkaError.INVALID_RECORD,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.POLICY_VIOLATION,
        KafkaError._INVALID_ARG,
    }
)


def load_summary_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(SUMMARY_SCHEMA_PATH.read_text())
    return schema


_PARSED = fastavro.parse_schema(load_summary_schema())


def dead_letter_headers(rejection: Rejection) -> Headers:
    """Reason and origin, on the raw message and its summary alike."""
    found: Headers = [
        ("nightjar-reason", rejection.reason.encode()),
        ("nightjar-detail", rejection.detail[:1000].encode()),
    ]
    if rejection.origin is not None:
        found += [
            ("nightjar-topic", rejection.origin.topic.encode()),
            ("nightjar-partition", str(rejection.origin.partition).encode()),
            ("nightjar-offset", str(rejection.origin.offset).encode()),
        ]
    if rejection.survey:
        found.append(("nightjar-survey", rejection.survey.encode()))
    return found


def summary_record(rejection: Rejection, error: str) -> dict[str, Any]:
    origin = rejection.origin
    return {
        "reason": rejection.reason,
        "detail": rejection.detail[:1000],
        "error": error[:1000],
        "size": rejection.size,
        "sha256": rejection.sha256(),
        "topic": origin.topic if origin else None,
        "partition": origin.partition if origin else None,
        "offset": origin.offset if origin else None,
        "survey": rejection.survey,
        "head": rejection.head,
    }


def dead_letter_summary(rejection: Rejection, error: str) -> tuple[bytes, Headers]:
    """The summary's value (a one-record Avro container file) and headers."""
    out = io.BytesIO()
    fastavro.writer(out, _PARSED, [summary_record(rejection, error)])
    extra: Headers = [
        (CONTENT_HEADER, b"summary"),
        ("nightjar-size", str(rejection.size).encode()),
        ("nightjar-sha256", rejection.sha256().encode()),
    ]
    return out.getvalue(), dead_letter_headers(rejection) + extra


def read_summary(value: bytes) -> dict[str, Any]:
    """A summary as a consumer reads it (tests, tools)."""
    records = list(fastavro.reader(io.BytesIO(value)))
    if len(records) != 1 or not isinstance(records[0], dict):
        raise ValueError(f"a dead-letter summary holds one record, not {len(records)}")
    return records[0]


def fits_whole(rejection: Rejection, max_message_bytes: int) -> bool:
    """Whether the raw bytes can go within the producer's message.max.bytes."""
    return rejection.size + PRODUCE_OVERHEAD <= max_message_bytes


class Publisher:
    """Produces to output and dead-letter topics; `flush()` confirms every delivery."""

    def __init__(
        self,
        producer_config: Mapping[str, Any],
        writer_schemas: WriterSchemas,
        output_topic: str,
        dead_letter_topic: str,
    ) -> None:
        self._producer = Producer(dict(producer_config))
        self._max_bytes = int(producer_config.get("message.max.bytes", 1_000_000))
        self._writer_schemas = writer_schemas  # filled by the decoder of the same broker
        self._output_topic = output_topic  # a template with {survey}
        self._dead_letter_topic = dead_letter_topic
        self._annotations_schema = load_annotations_schema()
        self._writers: dict[str, ContainerWriter] = {}
        self._failures: list[str] = []
        # Dead-letter messages refused for their own sake: their summaries go at flush().
        self._refused: list[tuple[Rejection, str]] = []

    def publish(
        self,
        alerts: Sequence[Alert],
        results: Sequence[AlertResult],
        source_ts: Sequence[int | None] | None = None,
    ) -> dict[str, bytes]:
        """Produce each annotated alert; returns the encoded values by alert key."""
        now_ms = int(time.time() * 1000)
        stamps = source_ts or [None] * len(alerts)
        encoded: dict[str, bytes] = {}
        for alert, result, ts in zip(alerts, results, stamps, strict=True):
            value = encoded[alert.key] = self.encode(alert, result, now_ms)
            headers: list[tuple[str, str | bytes | None]] | None = (
                [(SOURCE_TS_HEADER, str(ts).encode())] if ts is not None else None
            )
            if ts is not None:  # clocks a little apart must not make it negative
                OUTPUT_LATENCY.observe(max(0.0, (now_ms - ts) / 1000))
            self._produce(
                self._output_topic.format(survey=alert.survey),
                value,
                alert.object_id.encode(),
                headers,
            )
        return encoded

    def encode(self, alert: Alert, result: AlertResult, now_ms: int) -> bytes:
        """The annotated packet as a one-record Avro container file."""
        writer = self._writers.get(alert.schema_key)
        if writer is None:
            writer = ContainerWriter(
                clean_schema(self._writer_schemas.parsed(alert.schema_key)),
                ANNOTATIONS_FIELD,
                self._annotations_schema,
            )
            self._writers[alert.schema_key] = writer
        return writer.encode(record_body(alert.raw), annotations_record(result, now_ms))

    def send_to(self, topic: str, value: bytes, key: bytes | None) -> None:
        """Any other message that must be delivered with the batch (e.g. filter topics)."""
        self._produce(topic, value, key, None)

    def dead_letter(self, rejections: Sequence[Rejection]) -> None:
        """The raw bytes as received, with reason and origin in headers; a summary instead
        when the bytes cannot be produced whole."""
        for rejection in rejections:
            key = str(rejection.origin).encode() if rejection.origin else None
            if not fits_whole(rejection, self._max_bytes):
                error = f"{rejection.size} bytes: above message.max.bytes ({self._max_bytes})"
                self._dead_letter_summary(rejection, error)
                continue
            try:
                self._produce(
                    self._dead_letter_topic,
                    rejection.raw,
                    key,
                    dead_letter_headers(rejection),
                    self._dead_letter_delivered(rejection),
                )
            except KafkaException as exc:  # refused at once (e.g. MSG_SIZE_TOO_LARGE)
                self._dead_letter_summary(rejection, str(exc))

    def _dead_letter_summary(self, rejection: Rejection, error: str) -> None:
        value, headers = dead_letter_summary(rejection, error)
        DEAD_LETTER_SUMMARIES.labels(rejection.reason).inc()
        log.warning(
            "dead letter %s (%s, %d bytes) sent as a summary: %s",
            rejection.origin, rejection.reason, rejection.size, error,
        )  # fmt: skip
        key = str(rejection.origin).encode() if rejection.origin else None
        self._produce(self._dead_letter_topic, value, key, headers)

    def _dead_letter_delivered(self, rejection: Rejection) -> Any:
        def delivered(error: KafkaError | None, message: Message) -> None:
            if error is not None and error.code() in PER_MESSAGE_ERRORS:
                self._refused.append((rejection, error.str()))
            else:
                self._delivered(error, message)

        return delivered

    def flush(self, timeout: float = 30.0) -> None:
        """Wait for every produced message; raise TransientError if any was not delivered."""
        remaining = self._producer.flush(timeout)
        # Raw dead letters the topic refused (too large for the broker's limit): their
        # summaries, confirmed in the same flush.
        refused, self._refused = self._refused, []
        for rejection, error in refused:
            self._dead_letter_summary(rejection, error)
        if refused:
            remaining = self._producer.flush(timeout)
        failures, self._failures = self._failures, []
        if remaining:
            raise TransientError(f"{remaining} messages not delivered within {timeout:.0f} s")
        if failures:
            raise TransientError(f"{len(failures)} deliveries failed, first: {failures[0]}")

    def _produce(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        headers: list[tuple[str, str | bytes | None]] | None,
        on_delivery: Any = None,
    ) -> None:
        while True:
            try:
                self._producer.produce(
                    topic, value, key, headers=headers, on_delivery=on_delivery or self._delivered
                )
                return
            except BufferError:
                # Local queue full: serve delivery reports until there is room.
                self._producer.poll(0.1)

    def _delivered(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self._failures.append(f"{message.topic()}: {error.str()}")
        else:
            PUBLISHED.labels(message.topic()).inc()

    def close(self) -> None:
        self._producer.flush(10)
