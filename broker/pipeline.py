"""The main loop: poll -> decode -> history -> dispatch -> store -> filter -> publish -> commit.

Batches are scored on Dask while the next ones are read, and stored and published by one
writer thread while later ones are scored and read: the main thread never waits on
MongoDB. Batches go to the writer, and have their offsets committed (by the main thread,
which owns the consumer), strictly in the order they were read, so a commit never skips
an unfinished batch. At most `dispatch.max_in_flight` batches are out (scoring or being
written); beyond that the partitions are paused.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from confluent_kafka import Message

from broker import history
from broker.consume import AlertConsumer, Offsets
from broker.decode import Decoder
from broker.dispatch import Dispatcher
from broker.errors import BadAlert, TransientError
from broker.health import Health
from broker.metrics import (
    ANNOTATIONS,
    BATCH_SIZE,
    IN_FLIGHT,
    MODEL_SKIPS,
    REJECTED,
    SCORES,
    STAGE_SECONDS,
    STORED,
)
from broker.publish import Publisher
from broker.records import Alert, AlertResult, Origin, Rejection, ScoringInput
from broker.store import AlertDocument, Store, object_key

log = logging.getLogger(__name__)

WORKER_ATTEMPTS = 3
RETRY_BACKOFF_MAX = 30.0


class FilterRunner(Protocol):
    def run(self, docs: Sequence[Mapping[str, Any]]) -> Sequence[Any]: ...


@dataclass
class Batch:
    """Messages read together, finished together, committed together."""

    alerts: list[Alert] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    source_ts: list[int | None] = field(default_factory=list)
    offsets: Offsets = field(default_factory=dict)
    stored_history: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    inputs: list[ScoringInput] = field(default_factory=list)
    future: Any = None
    attempts: int = 0
    read_at: float = field(default_factory=time.monotonic)
    # Points stored up to this number were in MongoDB when this batch read its history.
    history_seq: int = 0
    # Set once the batch is with the writer: resolves to what it stored and rejected.
    written: Future[Written] | None = None

    @property
    def size(self) -> int:
        return len(self.alerts) + len(self.rejections)


@dataclass(frozen=True, slots=True)
class Written:
    """What the writer stored and published for one batch (counted at commit)."""

    alerts: list[Alert]
    results: list[AlertResult]
    rejections: list[Rejection]


class AddedPoints:
    """Light-curve points stored by each finished batch, numbered, for batches in flight.

    A batch records the number reached before it reads its history; when it is stored,
    the points stored since then (by batches that were in flight with it) are added to
    what it read. Thread-safe: the writer adds, the main thread records and trims.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seq = 0
        self._log: deque[tuple[int, Mapping[str, list[dict[str, Any]]]]] = deque()

    def mark(self) -> int:
        with self._lock:
            return self._seq

    def add(self, added: Mapping[str, list[dict[str, Any]]]) -> None:
        with self._lock:
            self._seq += 1
            if added:
                self._log.append((self._seq, added))

    def since(self, seq: int, keys: set[str]) -> dict[str, list[dict[str, Any]]]:
        """Points of `keys` stored after mark `seq`."""
        found: dict[str, list[dict[str, Any]]] = {}
        with self._lock:
            entries = [added for number, added in self._log if number > seq]
        for added in entries:
            for key in keys & added.keys():
                found.setdefault(key, []).extend(added[key])
        return found

    def trim(self, oldest_seq: int | None) -> None:
        """Forget entries no batch still needs (marks below the oldest one in flight)."""
        with self._lock:
            while self._log and (oldest_seq is None or self._log[0][0] <= oldest_seq):
                self._log.popleft()


@dataclass
class RunStats:
    messages: int = 0
    stored: int = 0
    rejected: int = 0
    batches: int = 0
    stage_seconds: dict[str, float] = field(default_factory=dict)


class Pipeline:
    def __init__(
        self,
        decoder: Decoder,
        consumer_factory: Any,
        dispatcher: Dispatcher,
        store: Store,
        publisher: Publisher,
        batch_size: int,
        batch_seconds: float,
        max_in_flight: int,
        filters: FilterRunner | None = None,
        filter_topic: Any = None,
        health: Health | None = None,
    ) -> None:
        self.decoder = decoder
        self.dispatcher = dispatcher
        self.store = store
        self.publisher = publisher
        self.batch_size = batch_size
        self.batch_seconds = batch_seconds
        self.max_in_flight = max_in_flight
        self.filters = filters
        self.filter_topic = filter_topic
        self.health = health or Health()
        self.in_flight: deque[Batch] = deque()
        self.stats = RunStats()
        self.added = AddedPoints()
        self._stats_lock = threading.Lock()
        # One thread: batches are stored and published in the order they were read.
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nightjar-writer")
        self.consumer: AlertConsumer = consumer_factory(self._on_revoke)

    def run(self, stop: threading.Event, exit_when_idle: float | None = None) -> RunStats:
        """Process until `stop` is set, or the topics stay empty for `exit_when_idle` s."""
        last_message = time.monotonic()
        try:
            while not stop.is_set():
                self.health.tick()
                self._finish_ready()
                if len(self.in_flight) >= self.max_in_flight:
                    self.consumer.pause()
                    self._finish_oldest(timeout=self.batch_seconds)
                    continue
                self.consumer.resume()
                batch = self._read()
                if batch.size:
                    last_message = time.monotonic()
                    self._submit(batch)
                elif not self.in_flight and _idle(last_message, exit_when_idle):
                    log.info("no message for %.0f s: exiting", exit_when_idle)
                    break
            self.drain()
        finally:
            # After an error, batches still with the writer finish (uncommitted: a restart
            # reads them again, and every write is idempotent).
            self.writer.shutdown(wait=True)
            self.consumer.close()
        return self.stats

    def drain(self) -> None:
        """Finish every batch in flight (shutdown, or partitions being revoked)."""
        while self.in_flight:
            self._finish_oldest(timeout=None)

    # -- reading --------------------------------------------------------------

    def _read(self) -> Batch:
        started = time.perf_counter()
        messages = self.consumer.poll_batch(self.batch_size, self.batch_seconds)
        batch = Batch()
        for message in messages:
            self._decode_into(batch, message)
        if batch.size:
            self._timed("decode", started)
            BATCH_SIZE.observe(batch.size)
            self.stats.messages += batch.size
        return batch

    def _decode_into(self, batch: Batch, message: Message) -> None:
        origin = Origin(message.topic() or "", message.partition() or 0, message.offset() or 0)
        batch.offsets[(origin.topic, origin.partition)] = origin.offset + 1
        raw = message.value() or b""
        try:
            alert = self.decoder.decode(raw, origin)
        except BadAlert as exc:
            batch.rejections.append(Rejection(exc.reason, exc.detail, raw, origin))
            return
        ts_type, ts = message.timestamp()
        batch.alerts.append(alert)
        batch.source_ts.append(ts if ts_type else None)
        log.debug("read %s %s at %s", alert.candid, alert.object_id, origin)

    # -- scoring --------------------------------------------------------------

    def _submit(self, batch: Batch) -> None:
        started = time.perf_counter()
        batch.history_seq = self.added.mark()
        batch.stored_history = self._retrying("history", self.store.read_history, batch.alerts)
        self._timed("history", started)
        batch.inputs = [scoring_input(a, batch.stored_history) for a in batch.alerts]
        if batch.inputs:
            batch.future = self.dispatcher.submit(batch.inputs)
        self.in_flight.append(batch)
        IN_FLIGHT.set(len(self.in_flight))

    def _finish_ready(self) -> None:
        """Hand scored batches to the writer and commit written ones, without waiting."""
        for batch in self.in_flight:
            # Done: fetching its results takes no timeout (Dask's result(timeout=0) gives
            # up before the data arrives). A failed batch is resubmitted, and a stand-in
            # for the workers may fail again at once.
            while batch.written is None and _done(batch):
                self._hand_to_writer(batch, timeout=None)
            if batch.written is None:
                break  # still scoring: later batches wait for it
        while self.in_flight and _written(self.in_flight[0]):
            self._commit_oldest()

    def _finish_oldest(self, timeout: float | None) -> None:
        """Move the oldest batch on: wait (up to `timeout`) for its scores, then its write."""
        batch = self.in_flight[0]
        if batch.written is None:
            self._hand_to_writer(batch, timeout)
            if batch.written is None:
                return  # not scored within timeout, or resubmitted
        assert batch.written is not None
        try:
            batch.written.result(timeout=timeout)
        except TimeoutError:
            return
        self._commit_oldest()

    def _hand_to_writer(self, batch: Batch, timeout: float | None) -> None:
        results = self._results(batch, timeout)
        if results is not None:
            batch.written = self.writer.submit(self._write, batch, results)

    def _commit_oldest(self) -> None:
        """Commit the oldest batch's offsets once written: only the main thread commits."""
        batch = self.in_flight[0]
        assert batch.written is not None
        written = batch.written.result()  # re-raises what the writer could not handle
        started = time.perf_counter()
        self._retrying("commit", self.consumer.commit, batch.offsets)
        self._timed("commit", started)
        self._count(written.alerts, written.results, written.rejections)
        STAGE_SECONDS.labels("batch").observe(time.monotonic() - batch.read_at)
        log.info(
            "batch: %d messages, %d stored, %d rejected, %.2f s since read",
            batch.size, len(written.alerts), len(written.rejections),
            time.monotonic() - batch.read_at,
        )  # fmt: skip
        self.in_flight.popleft()
        self.added.trim(self.in_flight[0].history_seq if self.in_flight else None)
        IN_FLIGHT.set(len(self.in_flight))

    def _results(self, batch: Batch, timeout: float | None) -> list[AlertResult] | None:
        if batch.future is None:
            return []
        try:
            results: list[AlertResult] = batch.future.result(timeout=timeout)
        except TimeoutError:
            return None
        except Exception as exc:  # a worker died or the task raised: retry, then pass through
            batch.attempts += 1
            if batch.attempts < WORKER_ATTEMPTS:
                log.warning(
                    "batch of %d failed on the workers (%s): retrying", len(batch.inputs), exc
                )
                batch.future = self.dispatcher.submit(batch.inputs)
                return None
            log.error(
                "batch of %d failed %d times on the workers (%s): stored without scores",
                len(batch.inputs),
                batch.attempts,
                exc,
            )
            return [AlertResult(i.candid, skipped=(), rejected=None) for i in batch.inputs]
        return results

    # -- finishing ------------------------------------------------------------

    def _write(self, batch: Batch, results: list[AlertResult]) -> Written:
        """On the writer thread: store, filter and publish; the main thread then commits."""
        alerts, kept, source_ts, rejections = split_results(batch, results)
        started = time.perf_counter()
        docs: list[AlertDocument] = self._retrying(
            "store", self._store, alerts, kept, batch, rejections
        )
        self._timed("store", started)
        started = time.perf_counter()
        self._retrying("publish", self._publish, alerts, kept, source_ts, rejections, docs)
        self._timed("publish", started)
        return Written(alerts, kept, rejections)

    def _store(
        self,
        alerts: list[Alert],
        results: list[AlertResult],
        batch: Batch,
        rejections: list[Rejection],
    ) -> list[AlertDocument]:
        # What was stored when the batch read its history, plus what the batches stored
        # since then added: no second read. A detection's candidate and history points
        # differ, so $addToSet alone would keep both.
        keys = {object_key(a.survey, a.object_id) for a in alerts}
        stored = dict(batch.stored_history)  # the batch's own copy stays as read (retries)
        for key, points in self.added.since(batch.history_seq, keys).items():
            stored[key] = [*stored.get(key, ()), *points]
        docs = self.store.write(alerts, results, stored)
        for stage, seconds in self.store.timings.items():
            self._add(stage, seconds)
        self.added.add(self.store.added)
        self.store.write_rejections(rejections)
        return docs

    def _publish(
        self,
        alerts: list[Alert],
        results: list[AlertResult],
        source_ts: list[int | None],
        rejections: list[Rejection],
        docs: list[AlertDocument],
    ) -> None:
        encoded = self.publisher.publish(alerts, results, source_ts)
        if self.filters is not None and docs:
            # The documents just stored, matched in-process: no read back from MongoDB.
            for match in self.filters.run(docs):
                self.publisher.send_to(
                    self.filter_topic(match.filter),
                    encoded[match.alert_id],
                    match.object_id.encode(),
                )
        self.publisher.dead_letter(rejections)
        self.publisher.flush()

    def _count(
        self, alerts: list[Alert], results: list[AlertResult], rejections: list[Rejection]
    ) -> None:
        self.stats.batches += 1
        self.stats.stored += len(alerts)
        self.stats.rejected += len(rejections)
        for alert, result in zip(alerts, results, strict=True):
            STORED.labels(alert.survey).inc()
            for annotation in result.annotations:
                ANNOTATIONS.labels(annotation.model).inc()
                SCORES.labels(annotation.model).observe(annotation.score)
            for skip in result.skipped:
                MODEL_SKIPS.labels(skip.model, skip.reason[:40]).inc()
        for rejection in rejections:
            REJECTED.labels(rejection.survey or "unknown", rejection.reason).inc()

    def _retrying(self, stage: str, func: Any, *args: Any) -> Any:
        """Retry a stage on TransientError with capped backoff; the batch stays uncommitted."""
        delay = 0.5
        while True:
            try:
                return func(*args)
            except TransientError as exc:
                log.warning("%s failed (%s): retrying in %.1f s", stage, exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, RETRY_BACKOFF_MAX)

    def _timed(self, stage: str, started: float) -> None:
        self._add(stage, time.perf_counter() - started)

    def _add(self, stage: str, elapsed: float) -> None:
        STAGE_SECONDS.labels(stage).observe(elapsed)
        with self._stats_lock:  # the main thread and the writer both add
            self.stats.stage_seconds[stage] = self.stats.stage_seconds.get(stage, 0.0) + elapsed

    def _on_revoke(self, partitions: list[tuple[str, int]]) -> None:
        if self.in_flight:
            log.info("partitions revoked: finishing %d batches in flight", len(self.in_flight))
            self.drain()


def scoring_input(alert: Alert, stored: dict[str, list[dict[str, Any]]]) -> ScoringInput:
    """What the workers need: the packet's history merged with the stored light curve."""
    merged = history.merge(
        alert.survey,
        alert.history,
        stored.get(object_key(alert.survey, alert.object_id), ()),
        exclude_id=alert.candid,
    )
    return ScoringInput(
        survey=alert.survey,
        candid=alert.candid,
        object_id=alert.object_id,
        ra=alert.ra,
        dec=alert.dec,
        jd=alert.jd,
        candidate=alert.candidate,
        history=merged,
        cutouts=alert.cutouts,
        schema_version=alert.schema_version,
    )


def split_results(
    batch: Batch, results: list[AlertResult]
) -> tuple[list[Alert], list[AlertResult], list[int | None], list[Rejection]]:
    """Alerts to store with their results and source timestamps, and every rejection."""
    if len(results) != len(batch.alerts):
        raise RuntimeError(f"workers returned {len(results)} results for {len(batch.alerts)}")
    alerts: list[Alert] = []
    kept: list[AlertResult] = []
    source_ts: list[int | None] = []
    rejections = list(batch.rejections)
    for alert, result, ts in zip(batch.alerts, results, batch.source_ts, strict=True):
        if result.rejected is None:
            alerts.append(alert)
            kept.append(result)
            source_ts.append(ts)
            continue
        reason, detail = result.rejected
        rejections.append(
            Rejection(reason, detail, alert.raw, alert.origin, alert.survey, alert.candid,
                      alert.object_id)
        )  # fmt: skip
    return alerts, kept, source_ts, rejections


def _done(batch: Batch) -> bool:
    return batch.future is None or batch.future.done()


def _written(batch: Batch) -> bool:
    return batch.written is not None and batch.written.done()


def _idle(last_message: float, exit_when_idle: float | None) -> bool:
    return exit_when_idle is not None and time.monotonic() - last_message >= exit_when_idle
