"""Single messages that used to stop a partition for good: oversized input beyond what the
dead-letter topic takes, and a message that kills the broker process every time it is read.

Input: simulated ZTF alerts with 1.5x, 2x and 3x `kafka.max_message_bytes` messages in the
middle (the input topic accepts them: max.message.bytes raised on it); then a message holding
the test-only crash marker (NIGHTJAR_TEST_CRASH_MARKER), the broker restarted in a bounded
loop as a supervisor would; then an alert that kills the Dask worker scoring it (the
test-only NIGHTJAR_TEST_WORKER_CRASH_MARKER in its objectId) on a LocalCluster of worker
processes. Every valid alert is stored once and committed; the bad messages are
dead-lettered (a summary where the raw bytes cannot go), the killers as `poison`.
"""

from __future__ import annotations

import io
import random
from collections.abc import Iterator
from typing import Any

import fastavro
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource
from pymongo.database import Database

from broker.decode import Decoder
from broker.publish import CONTENT_HEADER, read_summary
from broker.records import HEAD_BYTES, Origin
from broker.settings import SchemaSettings
from broker.tools.simulate import simulate
from tests.pipeline_helpers import Rig, committed, produce, read_topic

LIMIT = 1024 * 1024  # kafka.max_message_bytes under test
MARKER = "nightjar-test-crash-7d1f"
Db = Database[dict[str, Any]]


def produce_large(bootstrap: str, topic: str, values: list[bytes]) -> None:
    """In order, to one partition, with the producer's own limit raised above them."""
    producer = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 8 * LIMIT})
    errors: list[str] = []
    for value in values:
        producer.produce(
            topic, value, partition=0, on_delivery=lambda e, _m: e and errors.append(e.str())
        )
        producer.flush(60)
    assert not errors, errors


def limit_topic(admin: AdminClient, topic: str, max_bytes: int) -> None:
    entry = ConfigEntry(
        "max.message.bytes", str(max_bytes), incremental_operation=AlterConfigOpType.SET
    )
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[entry])
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=30)


@pytest.fixture
def rig(make_rig: Any) -> Iterator[Rig]:
    # The input topic takes messages up to 8 MiB (the Kafka broker's default is 1 MiB).
    rig: Rig = make_rig("poison", config={"max.message.bytes": str(8 * LIMIT)})
    rig.settings.update(
        NIGHTJAR_KAFKA__MAX_MESSAGE_BYTES=str(LIMIT),
        NIGHTJAR_DISPATCH__BATCH_SIZE="8",
        NIGHTJAR_DISPATCH__BATCH_SECONDS="0.2",
        NIGHTJAR_DISPATCH__LOCAL_PROCESSES="false",  # restarts in seconds
    )
    yield rig


def test_oversized_messages_are_dead_lettered_and_the_stream_goes_on(
    rig: Rig, mongo_db: Db, kafka_admin: AdminClient
) -> None:
    alerts = [alert.data for alert in simulate("ztf", 40, seed=5)]
    rng = random.Random(5)
    big = [alerts[0] + rng.randbytes(int(factor * LIMIT)) for factor in (1.5, 2, 3)]
    stream = alerts[:20] + big + alerts[20:]
    produce_large(rig.bootstrap, rig.topics[0], stream)
    # The dead-letter topic takes 1.1x: the producer sends a 1.5x message (under its own
    # 2x limit) and the topic refuses it on delivery.
    limit_topic(kafka_admin, rig.dead_letter_topic, int(1.1 * LIMIT))

    finished = rig.run(timeout=180)
    assert "Traceback" not in finished.log

    assert mongo_db["alerts"].count_documents({}) == len(alerts)
    assert committed(kafka_admin, rig.group_id, rig.topics[0], 1) == {0: len(stream)}
    # One each; the 1.5x one's summary goes once its raw copy is refused, after the others.
    dead = {
        m.headers["nightjar-offset"]: m for m in read_topic(rig.bootstrap, rig.dead_letter_topic)
    }
    assert sorted(dead) == [b"20", b"21", b"22"]
    for offset, raw in zip(range(20, 23), big, strict=True):
        message = dead[str(offset).encode()]
        # Summaries: 2x and 3x exceed the producer's limit, 1.5x the topic's.
        assert message.headers[CONTENT_HEADER] == b"summary"
        assert message.headers["nightjar-reason"] == b"oversized"
        summary = read_summary(message.value)
        assert (summary["topic"], summary["partition"], summary["offset"]) == (
            rig.topics[0],
            0,
            offset,
        )
        assert summary["size"] == len(raw) and summary["head"] == raw[:HEAD_BYTES]
        doc = mongo_db["rejected"].find_one({"_id": str(Origin(rig.topics[0], 0, offset))})
        assert doc is not None and doc["reason"] == "oversized"
        assert doc["raw"] == raw and doc["size"] == len(raw)  # under MongoDB's 16 MiB


def test_a_message_that_kills_the_broker_is_dead_lettered_as_poison(
    rig: Rig, mongo_db: Db, kafka_admin: AdminClient
) -> None:
    alerts = [alert.data for alert in simulate("ztf", 40, seed=6)]
    killer = b"not an alert " + MARKER.encode()
    stream = [*alerts[:21], killer, *alerts[21:]]
    produce(rig.bootstrap, rig.topics[0], stream, partition=0)

    deaths, finished = 0, None
    for _ in range(14):  # a supervisor restarting it, bounded
        finished = rig.start(4.0, NIGHTJAR_TEST_CRASH_MARKER=MARKER).wait(180)
        if finished.returncode != 137:
            break
        deaths += 1
    assert finished is not None and finished.returncode == 0, finished and finished.log
    print(f"deaths before the poison message was isolated and dead-lettered: {deaths}")
    # K = 3 at the same offsets (a commit in between starts the count again), then one per
    # half that holds it: log2 of the messages in flight at most.
    assert 3 <= deaths <= 11

    assert mongo_db["alerts"].count_documents({}) == len(alerts)
    assert committed(kafka_admin, rig.group_id, rig.topics[0], 1) == {0: len(stream)}
    (dead,) = read_topic(rig.bootstrap, rig.dead_letter_topic)
    assert dead.value == killer and dead.headers["nightjar-reason"] == b"poison"
    assert dead.headers["nightjar-offset"] == b"21"
    doc = mongo_db["rejected"].find_one({"_id": str(Origin(rig.topics[0], 0, 21))})
    assert doc is not None and (doc["reason"], doc["raw"]) == ("poison", killer)
    assert mongo_db["crashloop"].count_documents({}) == 0  # cleared at the last commit


def with_object_id(raw: bytes, object_id: str) -> bytes:
    """The same ZTF alert under another objectId (the field the worker crash hook reads)."""
    decoder = Decoder(SchemaSettings(), 4 * LIMIT)
    _, records = decoder.read(raw)
    buffer = io.BytesIO()
    packet = records[0] | {"objectId": object_id}
    fastavro.writer(buffer, decoder.schema_of(raw).parsed, [packet])
    return buffer.getvalue()


def test_an_alert_that_kills_its_dask_worker_is_dead_lettered_as_poison(
    rig: Rig, mongo_db: Db, kafka_admin: AdminClient
) -> None:
    alerts = [alert.data for alert in simulate("ztf", 40, seed=7)]
    killer = with_object_id(alerts[17], f"ZTF26{MARKER}")
    stream = [*alerts[:17], killer, *alerts[18:]]
    produce(rig.bootstrap, rig.topics[0], stream, partition=0)

    finished = rig.run(
        timeout=240,
        NIGHTJAR_DISPATCH__LOCAL_PROCESSES="true",  # a worker that dies, not the broker
        NIGHTJAR_DISPATCH__LOCAL_WORKERS="2",
        NIGHTJAR_TEST_WORKER_CRASH_MARKER=MARKER,
    )
    print(f"broker run with a worker-killing alert: {finished.seconds:.1f} s")
    assert finished.lines("scoring its alerts one at a time"), finished.log
    stored = mongo_db["alerts"]
    assert stored.count_documents({}) == len(alerts) - 1
    assert stored.count_documents({"annotations": {"$in": [{}, None]}}) == 0  # all scored
    assert committed(kafka_admin, rig.group_id, rig.topics[0], 1) == {0: len(stream)}
    (dead,) = read_topic(rig.bootstrap, rig.dead_letter_topic)
    assert dead.value == killer and dead.headers["nightjar-reason"] == b"poison"
    assert dead.headers["nightjar-offset"] == b"17"
    doc = mongo_db["rejected"].find_one({"_id": str(Origin(rig.topics[0], 0, 17))})
    assert doc is not None and (doc["reason"], doc["raw"]) == ("poison", killer)
    assert "a Dask worker died 4 times scoring it alone" in doc["detail"], doc["detail"]
