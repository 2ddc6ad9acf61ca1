"""Consume stage: Kafka in, in a consumer group, offsets committed by the pipeline only.

Input: topic names and ^patterns (new matching topics are picked up on metadata refresh,
without a restart). Output: batches of raw messages. Offsets are committed explicitly,
and only for batches already stored and published (at-least-once end to end).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from broker.errors import TransientError
from broker.metrics import COMMITTED, CONSUMED, CONSUMER_LAG, PAUSED, PAUSES

log = logging.getLogger(__name__)

# Commit failures that only mean the partition moved to another member: its next owner
# re-reads from the last committed offset (at-least-once), so they are not errors.
_REBALANCE_ERRORS = frozenset(
    {
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError.REBALANCE_IN_PROGRESS,
        KafkaError._ASSIGNMENT_LOST,
        KafkaError._NO_OFFSET,
        KafkaError._STATE,
    }
)

Offsets = dict[tuple[str, int], int]


def consumer_config(client: Mapping[str, Any], group_id: str, offset_reset: str) -> dict[str, Any]:
    config = dict(client)
    config.setdefault("group.id", group_id)
    config.setdefault("enable.auto.commit", False)
    config.setdefault("enable.auto.offset.store", False)
    config.setdefault("auto.offset.reset", offset_reset)
    config.setdefault("enable.partition.eof", False)
    # Regex subscriptions see new topics (one per ZTF night) at each metadata refresh.
    config.setdefault("topic.metadata.refresh.interval.ms", 10_000)
    config.setdefault("statistics.interval.ms", 5_000)
    config.setdefault("partition.assignment.strategy", "cooperative-sticky")
    return config


class AlertConsumer:
    """A confluent-kafka consumer that hands out batches and commits what it is told."""

    def __init__(
        self,
        config: Mapping[str, Any],
        topics: list[str],
        on_revoke: Callable[[list[tuple[str, int]]], None],
    ) -> None:
        config = dict(config)
        config["stats_cb"] = _record_lag
        config["error_cb"] = _log_error
        self._consumer = Consumer(config)
        self._on_revoke = on_revoke
        self.assignment: set[tuple[str, int]] = set()
        self.paused = False
        self._consumer.subscribe(
            topics, on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._revoked
        )
        log.info("subscribed to %s as group %s", ", ".join(topics), config.get("group.id"))

    def poll_batch(self, max_messages: int, timeout: float) -> list[Message]:
        """Up to `max_messages` messages, waiting at most `timeout` seconds."""
        messages = self._consumer.consume(max_messages, timeout)
        good = []
        for message in messages:
            error = message.error()
            if error is None:
                CONSUMED.labels(message.topic()).inc()
                good.append(message)
            elif error.fatal():
                raise KafkaException(error)
            else:
                log.warning("consumer: %s", error.str())
        return good

    def pause(self) -> None:
        """Stop fetching (back-pressure) while staying in the group."""
        if not self.paused and self.assignment:
            self._consumer.pause(_partitions(self.assignment))
            self.paused = True
            PAUSED.set(1)
            PAUSES.inc()

    def resume(self) -> None:
        if self.paused:
            self._consumer.resume(_partitions(self.assignment))
            self.paused = False
            PAUSED.set(0)

    def commit(self, offsets: Offsets) -> None:
        """Commit next-offsets synchronously, for partitions this member still owns."""
        owned = {tp: offset for tp, offset in offsets.items() if tp in self.assignment}
        if not owned:
            return
        partitions = [TopicPartition(t, p, offset) for (t, p), offset in owned.items()]
        try:
            self._consumer.commit(offsets=partitions, asynchronous=False)
        except KafkaException as exc:
            error = exc.args[0]
            if isinstance(error, KafkaError) and error.code() in _REBALANCE_ERRORS:
                COMMITTED.labels("rebalanced").inc()
                log.warning("commit skipped after a rebalance: %s", error.str())
                return
            COMMITTED.labels("failed").inc()
            raise TransientError(f"offset commit failed: {exc}") from exc
        COMMITTED.labels("ok").inc()

    def close(self) -> None:
        self._consumer.close()

    def _assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        added = {(tp.topic, tp.partition) for tp in partitions}
        self.assignment |= added
        if self.paused:
            consumer.pause(partitions)
        log.info("assigned %s", _describe(added))

    def _revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        removed = [(tp.topic, tp.partition) for tp in partitions]
        # Finish (store, publish, commit) what was read from them before giving them up.
        self._on_revoke(removed)
        self.assignment -= set(removed)
        log.info("revoked %s", _describe(set(removed)))


def _partitions(keys: set[tuple[str, int]]) -> list[TopicPartition]:
    return [TopicPartition(t, p) for t, p in sorted(keys)]


def _describe(keys: set[tuple[str, int]]) -> str:
    return ", ".join(f"{t}[{p}]" for t, p in sorted(keys)) or "nothing"


def _record_lag(stats_json: str) -> None:
    try:
        stats = json.loads(stats_json)
    except ValueError:
        return
    for topic, info in stats.get("topics", {}).items():
        for partition, pstats in info.get("partitions", {}).items():
            lag = pstats.get("consumer_lag", -1)
            if partition != "-1" and lag >= 0:
                CONSUMER_LAG.labels(topic, partition).set(lag)


def _log_error(error: KafkaError) -> None:
    level = logging.ERROR if error.fatal() else logging.WARNING
    log.log(level, "kafka: %s", error.str())
