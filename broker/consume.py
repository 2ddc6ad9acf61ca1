"""Consume stage: Kafka in, in a consumer group, offsets committed by the pipeline only.

Input: topic names and ^patterns (new matching topics are picked up on metadata refresh,
without a restart). Output: batches of raw messages. Offsets are committed explicitly,
and only for batches already stored and published (at-least-once end to end).

Crash-loop protection (`CrashGuard`): before a batch is decoded, each partition's
uncommitted offsets are recorded in the `crashloop` collection (first uncommitted offset,
last offset read, how many processes started there); a commit clears them. A process that
dies (crash, OOM kill, SIGKILL) leaves its record; after `kafka.poison_after_deaths` deaths
at the same offsets the range is bisected, one half per attempt, until the message that
kills the broker is alone: it is then dead-lettered as `poison` without being decoded.
Plain upserts and deletes: MongoDB and FerretDB alike.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import pymongo
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from pymongo.collection import Collection
from pymongo.errors import PyMongoError

from broker.errors import FencedError, TransientError
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

# A newer member started with this one's group.instance.id took its place.
_FENCED_ERRORS = frozenset({KafkaError._FENCED, KafkaError.FENCED_INSTANCE_ID})

Offsets = dict[tuple[str, int], int]
Partition = tuple[str, int]


def consumer_config(
    client: Mapping[str, Any], group_id: str, offset_reset: str, instance_name: str = ""
) -> dict[str, Any]:
    config = dict(client)
    config.setdefault("group.id", group_id)
    if instance_name:
        # Static membership: a restarted broker gets its partitions back at once instead
        # of after the dead member's session.timeout.ms (no rebalance either).
        config.setdefault("group.instance.id", instance_name)
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
        config["error_cb"] = self._on_error
        self._group = str(config.get("group.id"))
        self._instance = config.get("group.instance.id")
        self._fenced: KafkaError | None = None
        self._consumer = Consumer(config)
        self._on_revoke = on_revoke
        self.assignment: set[Partition] = set()
        # When partitions were last assigned (monotonic; None before the first assignment).
        self.assigned_at: float | None = None
        self.paused = False
        # Partitions held back (crash-loop isolation) until their batch is committed.
        self.held: set[Partition] = set()
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
            elif error.fatal() or error.code() == KafkaError._FATAL:
                # librdkafka reports its fatal state (e.g. fenced) on messages as _FATAL,
                # with fatal() False there.
                self._raise_fatal(error)
            else:
                log.warning("consumer: %s", error.str())
        self._raise_if_fenced()
        return good

    def keep_alive(self) -> None:
        """Poll with every partition paused: the member stays in its group (it must poll
        within max.poll.interval.ms) while the loop waits on a dependency or its workers."""
        self.pause()
        for message in self.poll_batch(100, 0.0):
            # Only from a partition assigned since the pause: read it again later.
            self.rewind(message.topic() or "", message.partition() or 0, message.offset() or 0)

    def rewind(self, topic: str, partition: int, offset: int) -> None:
        """Read `topic[partition]` again from `offset` (messages fetched but not taken)."""
        self._consumer.seek(TopicPartition(topic, partition, offset))

    def hold(self, key: Partition, next_offset: int) -> None:
        """Read nothing more of one partition, from `next_offset` on, until `release`."""
        self.held.add(key)
        self._consumer.pause([TopicPartition(*key)])
        self.rewind(*key, next_offset)

    def release(self, key: Partition) -> None:
        if key in self.held:
            self.held.discard(key)
            if not self.paused and key in self.assignment:
                self._consumer.resume([TopicPartition(*key)])

    def pause(self) -> None:
        """Stop fetching (back-pressure) while staying in the group."""
        if not self.paused and self.assignment:
            self._consumer.pause(_partitions(self.assignment))
            self.paused = True
            PAUSED.set(1)
            PAUSES.inc()

    def resume(self) -> None:
        if self.paused:
            self._consumer.resume(_partitions(self.assignment - self.held))
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
            if isinstance(error, KafkaError) and error.code() in _FENCED_ERRORS:
                self._fenced = error
                self._raise_if_fenced()
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
        self.assigned_at = time.monotonic()
        if self.paused:
            consumer.pause(partitions)
        log.info("assigned %s", _describe(added))

    def _revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        removed = [(tp.topic, tp.partition) for tp in partitions]
        # Finish (store, publish, commit) what was read from them before giving them up.
        self._on_revoke(removed)
        self.assignment -= set(removed)
        self.held -= set(removed)
        log.info("revoked %s", _describe(set(removed)))

    def _on_error(self, error: KafkaError) -> None:
        if error.code() in _FENCED_ERRORS or (error.fatal() and "fenced" in error.str().lower()):
            self._fenced = error  # raised on the main thread, at its next poll
        level = logging.ERROR if error.fatal() else logging.WARNING
        log.log(level, "kafka: %s", error.str())

    def _raise_fatal(self, error: KafkaError) -> None:
        if error.code() in _FENCED_ERRORS or "fenced" in error.str().lower():
            self._fenced = error
        self._raise_if_fenced()
        raise KafkaException(error)

    def _raise_if_fenced(self) -> None:
        if self._fenced is None:
            return
        raise FencedError(
            f"kafka: {self._fenced.str()}. Another broker joined group {self._group!r} with "
            f"this one's kafka.instance_name ({self._instance!r}) and took its partitions. Give "
            "each broker its own NIGHTJAR_KAFKA__INSTANCE_NAME (the Helm chart uses the pod "
            "name; several brokers on one host need explicit names), or set it to '' to turn "
            "static membership off."
        )


# MongoDB may be down when a batch is read: the record is skipped (the batch is then
# unprotected) rather than holding the main loop, which must keep polling Kafka.
WRITE_TIMEOUT_S = 2.0
# Test-only: a message holding these bytes makes the broker process exit at once, as a
# crash would (os._exit(137), like an OOM kill). Never set in production.
TEST_CRASH_ENV = "NIGHTJAR_TEST_CRASH_MARKER"


@dataclass
class Attempt:
    """Processing of one partition from `start` (its first uncommitted offset) to `end`.

    `attempts` counts the processes that started at `start` (this one included): while the
    document stays, all but the last died there. Isolating, the culprit is known to lie in
    [start, suspect_end] and this attempt reads no further than `end`; `tried` is False for
    a range left by a half that passed (not run yet, so a lone offset is not condemned).
    """

    start: int
    end: int
    attempts: int = 1
    suspect_end: int | None = None
    tried: bool = True

    @property
    def isolating(self) -> bool:
        return self.suspect_end is not None


@dataclass
class Plan:
    """Offsets a batch dead-letters as poison undecoded, with the deaths each one caused."""

    poison: dict[Partition, int] = field(default_factory=dict)
    deaths: dict[Partition, int] = field(default_factory=dict)


class CrashGuard:
    """Writes an attempt record before each batch is decoded, and clears it at commit."""

    def __init__(self, collection: Collection[Any], group: str, deaths_limit: int) -> None:
        self._collection = collection
        self._group = group
        self._deaths_limit = deaths_limit
        self._prior: dict[Partition, Attempt] = {}  # left by processes before this one
        self._active: dict[Partition, Attempt] = {}

    def load(self) -> None:
        """The records earlier processes of this group left (each one is a death)."""
        for doc in self._collection.find({"group": self._group}):
            key = (doc["topic"], doc["partition"])
            self._prior[key] = Attempt(
                doc["start"], doc["end"], doc["attempts"], doc.get("suspect_end"), doc["tried"]
            )
        if self._prior:
            log.warning("crash-loop records left by a process that died: %s", self._prior)

    def begin(self, ranges: dict[Partition, tuple[int, int]]) -> Plan:
        """Before decoding: record each partition's (first, last) offset; what to read."""
        plan = Plan()
        changed = []
        for key, (first, last) in ranges.items():
            active = self._active.get(key)
            if active is None:
                active = self._active[key] = self._resume(key, first, last, plan)
            elif active.isolating or last <= active.end:
                continue
            else:
                active.end = last
            changed.append(key)
        self._write(changed)
        return plan

    def limit(self, key: Partition) -> int | None:
        """The last offset of `key` this attempt may read (None: no limit, not isolating)."""
        active = self._active.get(key)
        return active.end if active is not None and active.isolating else None

    def committed(self, key: Partition, next_offset: int) -> None:
        """Offsets below `next_offset` are committed: the attempt moves on, or ends."""
        active = self._active.get(key)
        if active is None:
            return
        if active.suspect_end is not None and next_offset <= active.suspect_end:
            # A half passed: the rest of the suspect range is next, one half at a time.
            self._prior[key] = Attempt(
                next_offset, active.suspect_end, 0, active.suspect_end, tried=False
            )
            del self._active[key]
            self._write([key], self._prior)
        elif active.isolating or next_offset > active.end:
            del self._active[key]
            self._delete(key)
        else:
            active.start, active.attempts = next_offset, 1
            self._write([key])

    def _resume(self, key: Partition, first: int, last: int, plan: Plan) -> Attempt:
        prior = self._prior.pop(key, None)
        if prior is None or prior.start != first:
            return Attempt(first, last)
        deaths = prior.attempts if prior.tried else 0
        if prior.tried:
            log.warning(
                "%s[%d]: a broker died %d time(s) at offsets %d-%d",
                *key, prior.attempts, prior.start, prior.end,
            )  # fmt: skip
        if not prior.isolating and deaths < self._deaths_limit:
            return Attempt(first, last, prior.attempts + 1)
        suspect_end = prior.end if prior.tried else prior.suspect_end
        assert suspect_end is not None
        plan.deaths[key] = deaths
        if prior.tried and first == suspect_end:
            plan.poison[key] = first
            return Attempt(first, first, prior.attempts + 1, suspect_end)
        half = first + (suspect_end - first) // 2
        log.warning(
            "%s[%d]: isolating the message that kills the broker in offsets %d-%d: trying %d-%d",
            *key, first, suspect_end, first, half,
        )  # fmt: skip
        return Attempt(first, half, prior.attempts + 1, suspect_end)

    def _write(self, keys: list[Partition], source: dict[Partition, Attempt] | None = None) -> None:
        records = source if source is not None else self._active
        try:
            with pymongo.timeout(WRITE_TIMEOUT_S):
                for key in keys:
                    self._collection.replace_one(
                        {"_id": self._id(key)}, self._document(key, records[key]), upsert=True
                    )
        except PyMongoError as exc:
            log.warning("crash-loop record not written (%s): this batch is unprotected", exc)

    def _delete(self, key: Partition) -> None:
        try:
            with pymongo.timeout(WRITE_TIMEOUT_S):
                self._collection.delete_one({"_id": self._id(key)})
        except PyMongoError as exc:
            # Left behind, it is stale: the next process starts past its offsets.
            log.warning("crash-loop record not cleared (%s)", exc)

    def _id(self, key: Partition) -> str:
        return f"{self._group}|{key[0]}|{key[1]}"

    def _document(self, key: Partition, attempt: Attempt) -> dict[str, Any]:
        return {
            "group": self._group, "topic": key[0], "partition": key[1], **asdict(attempt),
            "updated_at": datetime.now(UTC),
        }  # fmt: skip


def crash_marker_from_env() -> bytes | None:
    """The test-only crash marker (TEST_CRASH_ENV), or None: production never sets it."""
    marker = os.environ.get(TEST_CRASH_ENV)
    return marker.encode() if marker else None


def crash_if_marked(raw: bytes, marker: bytes | None) -> None:
    """Test-only: die as an OOM kill would, on a message that holds the marker."""
    if marker is not None and marker in raw:
        log.error("test crash marker found: exiting with status 137 (%s)", TEST_CRASH_ENV)
        logging.shutdown()
        os._exit(137)


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
