"""The bench's own Kafka traffic: alerts produced at a steady rate, and an output topic read
back with each message's timestamp and the source timestamp the publisher copied over.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from broker.errors import TransientError
from broker.kafka_config import client_config
from broker.publish import SOURCE_TS_HEADER
from broker.settings import Settings
from broker.tools.scratch import fresh_id

log = logging.getLogger(__name__)


def read_timestamps(
    settings: Settings, topic: str, timeout: float = 60.0
) -> list[tuple[int, int | None]]:
    """(message timestamp ms, `nightjar-source-ts` header or None) of every message on `topic`."""
    consumer = Consumer(
        {
            **client_config(settings),
            "group.id": f"nightjar-read-{fresh_id()}",  # assign() only: nothing is committed
            "enable.auto.commit": False,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if metadata is None or metadata.error is not None:
            return []
        ends: dict[int, int] = {}
        starts = []
        for partition in metadata.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            if high > low:
                ends[partition] = high
                starts.append(TopicPartition(topic, partition, low))
        consumer.assign(starts)
        return _read_until(consumer, ends, timeout)
    finally:
        consumer.close()


def _read_until(
    consumer: Consumer, ends: dict[int, int], timeout: float
) -> list[tuple[int, int | None]]:
    found: list[tuple[int, int | None]] = []
    remaining = dict(ends)
    deadline = time.monotonic() + timeout
    while remaining and time.monotonic() < deadline:
        for message in consumer.consume(1000, 1.0):
            partition, offset = message.partition(), message.offset()
            if message.error() is not None or partition is None or offset is None:
                continue
            found.append((message.timestamp()[1], source_timestamp(message.headers())))
            if offset + 1 >= remaining.get(partition, 0):
                remaining.pop(partition, None)
    if remaining:
        log.warning(
            "stopped reading after %.0f s with partitions %s unfinished", timeout, remaining
        )
    return found


def source_timestamp(headers: Any) -> int | None:
    """The input message's timestamp (ms) the publisher copied into a header, if any."""
    items = headers.items() if isinstance(headers, dict) else headers or ()
    for name, value in items:
        if name == SOURCE_TS_HEADER and value:
            text = value.decode() if isinstance(value, bytes) else str(value)
            with contextlib.suppress(ValueError):
                return int(text)
    return None


def produce_paced(
    messages: Sequence[bytes],
    topic: str,
    config: dict[str, Any],
    rate: float,
    stop: threading.Event,
) -> int:
    """Produce message i at start + i / rate (a steady stream); returns how many were sent."""
    if rate <= 0:
        raise ValueError(f"rate must be > 0, not {rate}")
    producer = Producer(config)
    started = time.monotonic()
    sent = 0
    while sent < len(messages) and not stop.is_set():
        due = min(len(messages), int((time.monotonic() - started) * rate) + 1)
        while sent < due:
            try:
                producer.produce(topic, messages[sent])
            except BufferError:
                producer.poll(0.05)  # local queue full: let deliveries drain
                continue
            sent += 1
        producer.poll(0)
        next_due = started + sent / rate
        stop.wait(max(0.0, min(next_due - time.monotonic(), 0.01)))
    remaining = producer.flush(30)
    if remaining:
        raise TransientError(f"{remaining} paced messages to {topic} were not delivered")
    return sent
