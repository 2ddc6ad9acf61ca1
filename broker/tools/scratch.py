"""Scratch Kafka topics and MongoDB databases, for `nightjar bench`, `nightjar demo` and tests.

Input: settings and fresh names. Output: a one-line verdict on whether the services answer,
topics created (leaders ready) and deleted, databases dropped, message counts per topic.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import pymongo
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from pymongo.errors import PyMongoError

from broker.errors import TransientError
from broker.kafka_config import client_config
from broker.settings import Settings

log = logging.getLogger(__name__)

HOW_TO_START = "start them with `nightjar services up`"
PROBE_TIMEOUT_S = 5.0
TOPIC_READY_TIMEOUT_S = 30.0


def fresh_id() -> str:
    """A short random suffix for topic, group and database names."""
    return uuid.uuid4().hex[:10]


def unreachable(settings: Settings, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when Kafka and MongoDB both answer; else one line naming the one that does not."""
    kafka = settings.kafka.bootstrap_servers
    # log_level 0: librdkafka would print a line per failed connection; one line says it all.
    probe = {"socket.timeout.ms": int(timeout * 1000), "log_level": 0}
    admin = AdminClient({**client_config(settings), **probe})
    try:
        metadata = admin.list_topics(timeout=timeout)
        if not metadata.brokers:
            return f"Kafka at {kafka} answered without any broker; {HOW_TO_START}"
    except KafkaException as exc:
        error = exc.args[0] if exc.args else exc
        detail = error.str() if isinstance(error, KafkaError) else str(error)
        return f"Kafka at {kafka} is not reachable ({detail}); {HOW_TO_START}"
    client: pymongo.MongoClient[Any] = pymongo.MongoClient(
        settings.mongo_uri(), serverSelectionTimeoutMS=int(timeout * 1000)
    )
    try:
        client.admin.command("ping")
    except PyMongoError as exc:
        detail = str(exc).split(" (configured timeouts")[0]  # not the topology dump
        where = _host_of(settings.mongo_uri())
        return f"MongoDB at {where} is not reachable ({detail}); {HOW_TO_START}"
    finally:
        client.close()
    return None


def admin_client(settings: Settings) -> AdminClient:
    return AdminClient(client_config(settings))


def create_topics(admin: AdminClient, names: Sequence[str], partitions: int = 1) -> None:
    """Create the topics and wait until every partition has a leader (producing may start)."""
    topics = [NewTopic(name, num_partitions=partitions, replication_factor=1) for name in names]
    for name, future in admin.create_topics(topics).items():
        try:
            future.result(timeout=TOPIC_READY_TIMEOUT_S)
        except KafkaException as exc:
            raise TransientError(f"cannot create Kafka topic {name}: {exc}") from exc
    deadline = time.monotonic() + TOPIC_READY_TIMEOUT_S
    waiting = list(names)
    while waiting:
        waiting = [name for name in waiting if not _has_leaders(admin, name, partitions)]
        if waiting and time.monotonic() > deadline:
            raise TransientError(f"topics {', '.join(waiting)} got no partition leader in time")
        if waiting:
            time.sleep(0.1)


def delete_topics(admin: AdminClient, names: Iterable[str]) -> None:
    """Best effort: a leftover, uniquely named topic harms nobody, so failures only warn."""
    names = [name for name in names if name]
    if not names:
        return
    for name, future in admin.delete_topics(names, operation_timeout=10).items():
        try:
            future.result(timeout=15)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else exc
            if isinstance(error, KafkaError) and error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                continue
            log.warning("could not delete topic %s: %s", name, exc)


def drop_database(settings: Settings, name: str) -> None:
    client: pymongo.MongoClient[Any] = pymongo.MongoClient(
        settings.mongo_uri(), serverSelectionTimeoutMS=settings.mongo.timeout_ms
    )
    try:
        client.drop_database(name)
    except PyMongoError as exc:
        log.warning("could not drop database %s: %s", name, exc)
    finally:
        client.close()


def topic_counts(settings: Settings, topics: Iterable[str]) -> dict[str, int]:
    """Messages held by each topic (sum of high - low watermarks); 0 for a missing topic."""
    consumer = Consumer({**client_config(settings), "group.id": f"nightjar-count-{fresh_id()}"})
    try:
        return {topic: _count(consumer, topic) for topic in topics}
    finally:
        consumer.close()


def _count(consumer: Consumer, topic: str) -> int:
    metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
    if metadata is None or metadata.error is not None:
        return 0
    total = 0
    for partition in metadata.partitions:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        total += max(0, high - low)
    return total


def _has_leaders(admin: AdminClient, name: str, partitions: int) -> bool:
    topic = admin.list_topics(topic=name, timeout=5).topics.get(name)
    if topic is None or topic.error is not None or len(topic.partitions) != partitions:
        return False
    return all(partition.leader >= 0 for partition in topic.partitions.values())


def _host_of(uri: str) -> str:
    """The URI without credentials, for messages."""
    return uri.split("@", 1)[-1] if "@" in uri else uri
