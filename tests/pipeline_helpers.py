"""Test plumbing for the streaming core: `nightjar run` as a real subprocess, topics in and out.

Input: a fresh input topic, consumer group and database (tests/conftest.py fixtures).
Output: `Rig` turns them into NIGHTJAR_* overrides and runs the broker; `produce`,
`read_topic` and `committed` talk to the real Kafka; `expected_outcome` says what the
broker should do with a message (store it, or reject it with which reason).
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import fastavro
import requests
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
)
from confluent_kafka import TopicPartition as KafkaPartition
from confluent_kafka.admin import AdminClient, NewTopic
from pymongo.database import Database

from broker import history
from broker.decode import Decoder
from broker.errors import BadAlert
from broker.records import Alert
from broker.settings import SchemaSettings
from broker.surveys import surveys
from tests.helpers import poll_until

REPO = Path(__file__).resolve().parent.parent
NIGHTJAR = Path(sys.executable).parent / "nightjar"
CONFIG = REPO / "config" / "nightjar.yaml"
REFERENCE = REPO.parent / "shared" / "reference"
SURVEYS = surveys()  # an output topic for each, created per rig
# Long enough to cover a consumer-group join on a loaded 2-core CI machine.
EXIT_WHEN_IDLE_S = 4.0


@dataclass
class Finished:
    """A broker run that ended: exit status, its log (stderr) and how long it ran."""

    returncode: int
    log: str
    seconds: float

    def lines(self, text: str) -> list[str]:
        return [line for line in self.log.splitlines() if text in line]


class BrokerProcess:
    """One `nightjar run` subprocess in its own process group (Dask workers included)."""

    def __init__(self, env: Mapping[str, str], log_path: Path, args: Sequence[str]) -> None:
        self.log_path = log_path
        self.started = time.monotonic()
        self.started_at = time.time()  # wall clock, to compare with the log's timestamps
        with log_path.open("wb") as log:
            self.popen = subprocess.Popen(
                [str(NIGHTJAR), "--config", str(CONFIG), "run", *args],
                cwd=REPO,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a SIGKILL of the group takes its workers with it
            )

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def running(self) -> bool:
        return self.popen.poll() is None

    def wait(self, timeout: float) -> Finished:
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"nightjar run still running after {timeout:.0f} s; {self.stacks_and_kill()}"
            ) from None
        return Finished(self.popen.returncode, self.log, time.monotonic() - self.started)

    def stacks_and_kill(self) -> str:
        """For a broker that hangs: its threads' stacks (faulthandler on SIGABRT), then
        SIGKILL; returns the end of its log, stacks included."""
        with suppress(ProcessLookupError):
            self.popen.send_signal(signal.SIGABRT)
        with suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)
        self.kill()
        return f"log (ends with the stacks of every thread):\n{self.log[-12000:]}"

    @contextmanager
    def diagnosed(self) -> Iterator[None]:
        """An AssertionError inside (a deadline missed) also reports where the broker was."""
        try:
            yield
        except AssertionError as exc:
            if not self.running():
                raise
            raise AssertionError(f"{exc}\n{self.stacks_and_kill()}") from None

    def terminate(self, timeout: float = 60.0) -> Finished:
        """SIGTERM: the broker finishes its batches in flight and exits."""
        self.popen.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill_after(self, seconds: float) -> bool:
        """SIGKILL it unless it exits by itself within `seconds`; True when it was killed."""
        try:
            self.popen.wait(seconds)
        except subprocess.TimeoutExpired:
            self.kill()
            return True
        return False

    def kill(self) -> None:
        """SIGKILL the broker and every process it started (a crash, no clean-up)."""
        with suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(30)


@dataclass
class Rig:
    """Names and settings of one broker under test, and the processes it has run."""

    bootstrap: str
    mongo_uri: str
    database: str
    topics: list[str]
    group_id: str
    output_template: str
    dead_letter_topic: str
    workdir: Path
    settings: dict[str, str] = field(default_factory=dict)
    processes: list[BrokerProcess] = field(default_factory=list)

    def output_topic(self, survey: str) -> str:
        return self.output_template.format(survey=survey)

    def env(self, **overrides: str) -> dict[str, str]:
        """The subprocess environment: ours only, none of the caller's NIGHTJAR_* settings."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("NIGHTJAR_")}
        env.update(
            NIGHTJAR_KAFKA__BOOTSTRAP_SERVERS=self.bootstrap,
            NIGHTJAR_KAFKA__TOPICS=json.dumps(self.topics),
            NIGHTJAR_KAFKA__GROUP_ID=self.group_id,
            NIGHTJAR_KAFKA__OUTPUT_TOPIC=self.output_template,
            NIGHTJAR_KAFKA__DEAD_LETTER_TOPIC=self.dead_letter_topic,
            NIGHTJAR_MONGO__URI=self.mongo_uri,
            NIGHTJAR_MONGO__DATABASE=self.database,
            NIGHTJAR_METRICS__ENABLED="false",
            NIGHTJAR_MODELS__DIR=str(self.workdir / "no-models"),  # empty: pass-through scorer
            NIGHTJAR_MODELS__PROVIDER="cpu",
            NIGHTJAR_FILTERS__DEFINITIONS="[]",
            PYTHONFAULTHANDLER="1",  # SIGABRT prints every thread's stack (hangs)
        )
        env.update(self.settings)
        env.update(overrides)
        return env

    def start(self, exit_when_idle: float | None = None, **overrides: str) -> BrokerProcess:
        args = [] if exit_when_idle is None else ["--exit-when-idle", str(exit_when_idle)]
        log_path = self.workdir / f"broker-{len(self.processes) + 1}.log"
        process = BrokerProcess(self.env(**overrides), log_path, args)
        self.processes.append(process)
        return process

    def run(
        self, exit_when_idle: float = EXIT_WHEN_IDLE_S, timeout: float = 120.0, **overrides: str
    ) -> Finished:
        """Run the broker until the topics stay idle; fail with its log if it exits non-zero."""
        finished = self.start(exit_when_idle, **overrides).wait(timeout)
        assert finished.returncode == 0, (
            f"nightjar run exited {finished.returncode}:\n{finished.log}"
        )
        return finished

    def stop_all(self) -> None:
        for process in self.processes:
            if process.running():
                process.kill()


@contextmanager
def open_rig(
    admin: AdminClient,
    bootstrap: str,
    mongo_uri: str,
    database: str,
    group_id: str,
    workdir: Path,
    topics: list[str],
) -> Iterator[Rig]:
    """A Rig with its own output and dead-letter topics, deleted (and processes killed) after."""
    base = f"nightjar-out-{uuid.uuid4().hex[:12]}"
    rig = Rig(
        bootstrap,
        mongo_uri,
        database,
        topics,
        group_id,
        base + "-{survey}",
        base + "-dead",
        workdir,
    )
    (workdir / "no-models").mkdir(exist_ok=True)
    created = [rig.output_topic(survey) for survey in SURVEYS] + [rig.dead_letter_topic]
    create_topics(admin, created)
    try:
        yield rig
    finally:
        rig.stop_all()
        for future in admin.delete_topics(created, operation_timeout=10).values():
            with suppress(KafkaException):  # best effort: unique leftovers harm no one
                future.result(timeout=15)


def create_topics(admin: AdminClient, names: Iterable[str], partitions: int = 1) -> None:
    """Create topics and wait until every partition has a leader."""
    names = list(names)
    futures = admin.create_topics([NewTopic(n, partitions, 1) for n in names])
    for future in futures.values():
        future.result(timeout=30)
    for name in names:
        ready = partial(_has_leaders, admin, name, partitions)
        poll_until(ready, 30, message=f"leaders of {name}")


def _has_leaders(admin: AdminClient, name: str, partitions: int) -> bool:
    topic = admin.list_topics(topic=name, timeout=5).topics.get(name)
    if topic is None or topic.error is not None or len(topic.partitions) != partitions:
        return False
    return all(p.leader >= 0 for p in topic.partitions.values())


def unique_name(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def probe(port: int, dependency: str) -> tuple[bool, float | None]:
    """(the broker's /readyz says ready, its nightjar_dependency_blocked{dependency})."""
    ready = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
    metrics = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    gauge = f'nightjar_dependency_blocked{{dependency="{dependency}"}}'
    found = re.search(re.escape(gauge) + r" (\S+)", metrics)
    return ready, float(found.group(1)) if found else None


# -- Kafka in and out ------------------------------------------------------------------


def produce(
    bootstrap: str,
    topic: str,
    values: Iterable[bytes],
    partition: int | None = None,
    spread: int = 0,
) -> list[tuple[int, int]]:
    """Produce in order (idempotent producer); (partition, offset) of each value, in order.

    `spread=N` sends value i to partition i % N. Left to the client, keyless messages
    produced before the topic's metadata arrives all land in one partition (librdkafka's
    sticky partitioner assigns the whole queued backlog at once), so a test that needs
    every partition used must say so.
    """
    producer = Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 20}
    )
    positions: dict[int, tuple[int, int]] = {}
    errors: list[str] = []

    def delivered(index: int) -> Any:
        def callback(error: KafkaError | None, message: Message) -> None:
            if error is not None:
                errors.append(error.str())
            else:
                positions[index] = _position(message)

        return callback

    count = 0
    for index, value in enumerate(values):
        kwargs: dict[str, Any] = {} if partition is None else {"partition": partition}
        if spread:
            kwargs["partition"] = index % spread
        while True:
            try:
                producer.produce(topic, value, on_delivery=delivered(index), **kwargs)
                break
            except BufferError:
                producer.poll(0.2)
        producer.poll(0)
        count = index + 1
    remaining = producer.flush(60)
    assert not remaining and not errors, f"{remaining} undelivered, errors: {errors[:3]}"
    return [positions[index] for index in range(count)]


@dataclass(frozen=True)
class Record:
    """A message read back from a topic."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]
    timestamp: int


def read_topic(bootstrap: str, topic: str, timeout: float = 60.0) -> list[Record]:
    """Every message in `topic` now (up to each partition's high watermark), in offset order."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": unique_name("nightjar-test-reader-"),
            "enable.auto.commit": False,
            "fetch.max.bytes": 64 * 1024 * 1024,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics[topic]
        assert metadata.error is None, f"topic {topic}: {metadata.error}"
        ends: dict[int, int] = {}
        for partition in metadata.partitions:
            _, high = consumer.get_watermark_offsets(KafkaPartition(topic, partition), timeout=10)
            ends[partition] = high
        consumer.assign([KafkaPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        return _read_until(consumer, ends, timeout, topic)
    finally:
        consumer.close()


def _read_until(
    consumer: Consumer, ends: dict[int, int], timeout: float, topic: str
) -> list[Record]:
    records: list[Record] = []
    next_offset = {partition: 0 for partition in ends}
    deadline = time.monotonic() + timeout
    while any(next_offset[p] < end for p, end in ends.items()):
        assert time.monotonic() < deadline, f"{topic}: read {len(records)}, wanted up to {ends}"
        for message in consumer.consume(500, 1.0):
            if message.error() is not None:
                continue
            partition, offset = _position(message)
            next_offset[partition] = offset + 1
            if offset < ends[partition]:
                records.append(_record(message))
    return sorted(records, key=lambda r: (r.partition, r.offset))


def _position(message: Message) -> tuple[int, int]:
    partition, offset = message.partition(), message.offset()
    assert partition is not None and offset is not None, "a message without a position"
    return partition, offset


def _record(message: Message) -> Record:
    headers = {str(name): _bytes(value) for name, value in list(message.headers() or [])}
    key = message.key()
    return Record(
        *_position(message),
        None if key is None else _bytes(key),
        _bytes(message.value()),
        headers,
        message.timestamp()[1],
    )


def _bytes(value: str | bytes | None) -> bytes:
    return value.encode() if isinstance(value, str) else value or b""


def committed(admin: AdminClient, group_id: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed next-offset per partition (partitions never committed: absent)."""
    from confluent_kafka import ConsumerGroupTopicPartitions

    request = ConsumerGroupTopicPartitions(
        group_id, [KafkaPartition(topic, p) for p in range(partitions)]
    )
    result = admin.list_consumer_group_offsets([request])[group_id].result(timeout=15)
    return {tp.partition: tp.offset for tp in result.topic_partitions if tp.offset >= 0}


def output_record(value: bytes) -> dict[str, Any]:
    """An annotated alert as any Avro client reads it: the one record of a container file."""
    records = list(fastavro.reader(io.BytesIO(value)))
    assert len(records) == 1, f"output message holds {len(records)} records"
    record = records[0]
    assert isinstance(record, dict)
    return record


# -- what the broker should do -----------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    """The broker's expected verdict on one message: store `alert`, or reject with `reason`."""

    alert: Alert | None = None
    reason: str | None = None

    @property
    def key(self) -> str | None:
        return None if self.alert is None else self.alert.key


def expected_outcome(decoder: Decoder, raw: bytes) -> Expected:
    """Decoded by `Decoder`: stored (stamps that cannot be scored only skip image models)."""
    try:
        return Expected(decoder.decode(raw))
    except BadAlert as exc:
        return Expected(reason=exc.reason)


def decoder_for(lsst_schema_dir: Path | None = None, max_message_bytes: int = 4 << 20) -> Decoder:
    return Decoder(SchemaSettings(lsst_schema_dir=lsst_schema_dir), max_message_bytes)


def same_value(left: Any, right: Any) -> bool:
    """Deep equality in which NaN equals NaN (decoded packets hold many)."""
    if isinstance(left, float) and isinstance(right, float):
        return left == right or (math.isnan(left) and math.isnan(right))
    if isinstance(left, Mapping) and isinstance(right, Mapping):
        return left.keys() == right.keys() and all(same_value(left[k], right[k]) for k in left)
    if isinstance(left, list | tuple) and isinstance(right, list | tuple):
        return len(left) == len(right) and all(map(same_value, left, right))
    return bool(left == right)


def light_curve_duplicates(db: Database[Any]) -> dict[str, int]:
    """Objects whose light curve holds a detection or limit more than once, with the excess."""
    return {key: sum(len(held) - 1 for held in repeated)
            for key, repeated in repeated_points(db).items()}  # fmt: skip


def repeated_points(db: Database[Any]) -> dict[str, list[list[dict[str, Any]]]]:
    """Per object, the points its light curve holds more than once: every form of each."""
    found = {}
    for doc in db["objects"].find({}, {"survey": 1, "lightcurve": 1}):
        forms: dict[Any, list[dict[str, Any]]] = {}
        for point in doc["lightcurve"]:
            forms.setdefault(history.point_key(doc["survey"], point), []).append(point)
        repeated = [held for held in forms.values() if len(held) > 1]
        if repeated:
            found[doc["_id"]] = repeated
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
