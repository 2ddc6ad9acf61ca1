"""Workloads of the scale-out scenarios: a large visit from a small simulated set, objects
that already hold long light curves, and a backlog spread over every partition.

Input: simulated ZTF alerts (Avro container bytes). Output: more alerts with unique candids,
pre-seeded `objects` documents, messages in a topic.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import fastavro
from confluent_kafka import Producer

from broker import history
from broker.errors import TransientError
from broker.store import object_key

# A cycled copy's candid: the original's plus this times the copy number (ZTF candids are
# < 1e19; the simulator's stay far below, so copies never meet the originals).
CANDID_STRIDE = 10**12
# Pre-seeded detections' candids: above any simulated or cycled one.
SEEDED_CANDIDS = 9 * 10**17


def cycled(messages: Sequence[bytes], count: int) -> list[bytes]:
    """`count` alerts made of `messages` repeated, each repeat with new candids (same
    objects, so their light curves grow as a real visit's would)."""
    out = list(messages[:count])
    copy = 1
    while len(out) < count:
        for raw in messages[: count - len(out)]:
            out.append(with_candid_offset(raw, copy * CANDID_STRIDE))
        copy += 1
    return out


def with_candid_offset(raw: bytes, offset: int) -> bytes:
    """A ZTF alert container with its candid (top level and candidate) moved by `offset`."""
    reader = fastavro.reader(io.BytesIO(raw))
    schema = reader.writer_schema
    record: Any = next(iter(reader))
    record["candid"] += offset
    record["candidate"]["candid"] += offset
    out = io.BytesIO()
    fastavro.writer(out, schema, [record])
    return out.getvalue()


def long_history_objects(alerts: Sequence[Any], points: int) -> list[dict[str, Any]]:
    """`objects` documents holding `points` older detections for each alert's object, as
    years-old ZTF objects do (what the broker would have stored from earlier alerts)."""
    docs: dict[str, dict[str, Any]] = {}
    for alert in alerts:
        key = object_key(alert.survey, alert.object_id)
        if key in docs:
            continue
        first = alert.jd - 3 * points  # one detection every three nights, before this alert
        base = SEEDED_CANDIDS + 1000 * len(docs)
        entries = (
            {**alert.candidate, "candid": base + i, "jd": first + 3 * i, "fid": 1 + i % 2}
            for i in range(points)
        )
        curve = [history.point(alert.survey, entry) for entry in entries]
        docs[key] = {
            "_id": key,
            "survey": alert.survey,
            "objectId": alert.object_id,
            "ra": alert.ra,
            "dec": alert.dec,
            "first_alert_jd": first,
            "last_alert_jd": first + 3 * (points - 1),
            "lightcurve": curve,
        }
    return list(docs.values())


def produce_spread(bootstrap: str, topic: str, messages: Sequence[bytes], partitions: int) -> None:
    """Message i to partition i % partitions (a keyless backlog would land in one)."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 50, "message.max.bytes": 8 << 20}
    )
    errors: list[str] = []

    def delivered(error: Any, _message: Any) -> None:
        if error is not None:
            errors.append(str(error))

    for index, value in enumerate(messages):
        while True:
            try:
                producer.produce(topic, value, partition=index % partitions, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    if producer.flush(120) or errors:
        raise TransientError(f"producing to {topic} failed: {errors[:3]}")
