"""Publish stage: annotated alerts to output topics, rejected messages to the dead-letter topic.

Input: alerts with their worker results, rejections, filter matches. Output: Kafka
messages, delivered (flush) before the caller commits offsets. Annotated alerts are the
original packet plus a `nightjar` annotations record (schemas/nightjar/annotations.avsc),
keyed by object id, from an idempotent producer.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from broker import __version__
from broker.avro.container import ContainerWriter, clean_schema
from broker.decode import record_body
from broker.errors import TransientError
from broker.metrics import OUTPUT_LATENCY, PUBLISHED
from broker.records import Alert, AlertResult, Rejection
from broker.schema_registry import WriterSchemas

log = logging.getLogger(__name__)

ANNOTATIONS_SCHEMA_PATH = (
    Path(__file__).resolve().parent.parent / "schemas" / "nightjar" / "annotations.avsc"
)
ANNOTATIONS_FIELD = "nightjar"
# Header carrying the input message's timestamp (ms), for end-to-end latency.
SOURCE_TS_HEADER = "nightjar-source-ts"


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
        self._writer_schemas = writer_schemas  # filled by the decoder of the same broker
        self._output_topic = output_topic  # a template with {survey}
        self._dead_letter_topic = dead_letter_topic
        self._annotations_schema = load_annotations_schema()
        self._writers: dict[str, ContainerWriter] = {}
        self._failures: list[str] = []
        self._pending = 0

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
        """The raw bytes as received, with reason and origin in headers."""
        for rejection in rejections:
            headers: list[tuple[str, str | bytes | None]] = [
                ("nightjar-reason", rejection.reason.encode()),
                ("nightjar-detail", rejection.detail[:1000].encode()),
            ]
            if rejection.origin is not None:
                headers += [
                    ("nightjar-topic", rejection.origin.topic.encode()),
                    ("nightjar-partition", str(rejection.origin.partition).encode()),
                    ("nightjar-offset", str(rejection.origin.offset).encode()),
                ]
            if rejection.survey:
                headers.append(("nightjar-survey", rejection.survey.encode()))
            key = str(rejection.origin).encode() if rejection.origin else None
            self._produce(self._dead_letter_topic, rejection.raw, key, headers)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait for every produced message; raise TransientError if any was not delivered."""
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
    ) -> None:
        while True:
            try:
                self._producer.produce(
                    topic, value, key, headers=headers, on_delivery=self._delivered
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
