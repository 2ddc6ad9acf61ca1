"""The main loop: poll -> decode -> history -> dispatch -> store -> filter -> publish -> commit.

Batches are scored on Dask while the next ones are read, and stored and published by one
writer thread (broker.writer) while later ones are scored and read: the main thread never waits on
MongoDB. Batches go to the writer, and have their offsets committed (by the main thread,
which owns the consumer), strictly in the order they were read, so a commit never skips
an unfinished batch. At most `dispatch.max_in_flight` batches are out (scoring or being
written); beyond that the partitions are paused.

The main thread never sleeps in retries: while MongoDB is down (or the writer or workers
are behind) it keeps polling Kafka with its partitions paused, so the broker stays in its
consumer group however long the outage lasts (broker.health.Outage reports it). Before a
batch is decoded its offsets are recorded (broker.consume.CrashGuard), so a message that
kills the process is isolated and dead-lettered as `poison` after
`kafka.poison_after_deaths` deaths; one that kills a Dask worker is found by scoring its
batch one alert at a time (Dispatcher.isolate) and dead-lettered as `poison` too. While an
external Dask scheduler is gone, batches are held (not retried as failures) and submitted
again once it is back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Message

from broker import history
from broker.consume import AlertConsumer, CrashGuard, Offsets, Partition, Plan, crash_if_marked
from broker.decode import Decoder
from broker.dispatch import Dispatcher
from broker.errors import BadAlert, SchedulerLost, TransientError, retry_transient
from broker.health import Health, Outage
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
from broker.records import Alert, AlertResult, Origin, Rejection, RejectReason, ScoringInput
from broker.store import Store, object_key
from broker.writer import FilterRunner, Writer, Written

log = logging.getLogger(__name__)

WORKER_ATTEMPTS = 3
# Seconds between history reads while MongoDB is down (the loop polls Kafka meanwhile).
HISTORY_RETRY_S = (0.5, 5.0)
# ... and between tries to join the Dask scheduler again while it is gone.
DASK_RETRY_S = (1.0, 5.0)


class Backoff:
    """When to try a dependency again: a doubling delay, capped; reset on success."""

    def __init__(self, delays: tuple[float, float]) -> None:
        self.first, self.most = delays
        self.delay, self.at = self.first, 0.0

    def due(self) -> bool:
        return time.monotonic() >= self.at

    def failed(self) -> None:
        self.at = time.monotonic() + self.delay
        self.delay = min(self.delay * 2, self.most)

    def reset(self) -> None:
        self.delay, self.at = self.first, 0.0


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
    # Waiting for the Dask scheduler to come back (no future): submitted again then.
    held: bool = False
    read_at: float = field(default_factory=time.monotonic)
    # Points stored up to this number were in MongoDB when this batch read its history.
    history_seq: int = 0
    # Set once the batch is with the writer: resolves to what it stored and rejected.
    written: Future[Written] | None = None

    @property
    def size(self) -> int:
        return len(self.alerts) + len(self.rejections)


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
        filter_topic: Callable[[str], str] | None = None,
        health: Health | None = None,
        guard: CrashGuard | None = None,
        crash_marker: bytes | None = None,
    ) -> None:
        self.decoder = decoder
        self.dispatcher = dispatcher
        self.store = store
        self.batch_size = batch_size
        self.batch_seconds = batch_seconds
        self.max_in_flight = max_in_flight
        self.health = health or Health()
        self.guard = guard
        self.crash_marker = crash_marker  # test-only (broker.consume.TEST_CRASH_ENV)
        self.in_flight: deque[Batch] = deque()
        # A batch read while MongoDB is down: its history is read again until it works.
        self.pending: Batch | None = None
        self._history_retry = Backoff(HISTORY_RETRY_S)
        self._dask_retry = Backoff(DASK_RETRY_S)
        self._revoking = False  # inside the consumer's revoke callback: no poll there
        self.stats = RunStats()
        self._stats_lock = threading.Lock()
        self._stop = threading.Event()  # run()'s: a stage failing once it is set is not retried
        self.outages = {
            name: Outage(name, self.health, held=self._held)
            for name in ("mongodb", "kafka", "dask")
        }
        # One thread: batches are stored and published in the order they were read.
        self.writer = Writer(
            store, publisher, self._add, filters, filter_topic,
            outages={"store": self.outages["mongodb"], "filter": self.outages["mongodb"],
                     "publish": self.outages["kafka"]},
        )  # fmt: skip
        self.consumer: AlertConsumer = consumer_factory(self._on_revoke)

    def run(self, stop: threading.Event, exit_when_idle: float | None = None) -> RunStats:
        """Process until `stop` is set, or the topics stay empty for `exit_when_idle` s
        (counted from when partitions are assigned, with no batch left uncommitted)."""
        last_message = time.monotonic()
        self.writer.stop = self._stop = stop
        try:
            while not stop.is_set():
                self.health.tick()
                self._finish_ready()
                # The scheduler gone: tried again now and then; batches read meanwhile are
                # held (up to max_in_flight), as a batch read while MongoDB is down is.
                self._dask_ready()
                if self._full():
                    self._wait_paused()
                    continue
                self.consumer.resume()
                batch = self._read()
                if batch.size:
                    last_message = time.monotonic()
                    self._submit(batch)
                elif self._idle(last_message, exit_when_idle):
                    log.info("no message for %.0f s: exiting", exit_when_idle)
                    break
            self.drain()
        finally:
            # After an error, batches still with the writer finish (uncommitted: a restart
            # reads them again, and every write is idempotent).
            self.writer.shutdown()
            self.consumer.close()
        return self.stats

    def _full(self) -> bool:
        return self.pending is not None or len(self.in_flight) >= self.max_in_flight

    def _wait_paused(self) -> None:
        """Partitions paused, still polling (group membership): a pending batch's history
        is read again, or the oldest batch is waited on for up to a batch interval."""
        self.consumer.keep_alive()
        if self.pending is not None:
            if self._history_ready(self.pending):
                batch, self.pending = self.pending, None
                self._dispatch(batch)
            else:
                self._stop.wait(0.2)
        elif self.in_flight and not self.in_flight[0].held:
            self._finish_oldest(timeout=self.batch_seconds)
        else:
            self._stop.wait(0.2)  # the Dask scheduler is gone: _dask_ready tries again

    def _idle(self, last_message: float, exit_when_idle: float | None) -> bool:
        assigned_at = self.consumer.assigned_at
        if exit_when_idle is None or assigned_at is None or self.in_flight:
            return False
        return time.monotonic() - max(last_message, assigned_at) >= exit_when_idle

    def _held(self) -> int:
        return len(self.in_flight) + (self.pending is not None)

    def drain(self) -> None:
        """Finish every batch in flight (shutdown, or partitions being revoked)."""
        while self.in_flight:
            if self.in_flight[0].held and not self._wait_for_dask():
                # Stopping while the scheduler is gone: nothing of these was committed, so
                # they are read again after a restart (or by the partitions' next owner).
                log.warning(
                    "stopping with %d batches held for the Dask scheduler: left uncommitted",
                    len(self.in_flight),
                )
                self.in_flight.clear()
                IN_FLIGHT.set(0)
                return
            self._finish_oldest(timeout=None)

    # -- reading --------------------------------------------------------------

    def _read(self) -> Batch:
        started = time.perf_counter()
        messages = self.consumer.poll_batch(self.batch_size, self.batch_seconds)
        batch = Batch()
        # Recorded before decoding: a message that kills the process is found after it.
        plan = self.guard.begin(_ranges(messages)) if self.guard and messages else Plan()
        for message in messages:
            self._take(batch, message, plan)
        self._hold_isolated(batch)
        if batch.size:
            self._timed("decode", started)
            BATCH_SIZE.observe(batch.size)
            self.stats.messages += batch.size
        return batch

    def _take(self, batch: Batch, message: Message, plan: Plan) -> None:
        key = (message.topic() or "", message.partition() or 0)
        offset = message.offset() or 0
        limit = self.guard.limit(key) if self.guard else None
        if limit is not None and offset > limit:
            return  # isolating: read again once the half before it is committed
        if plan.poison.get(key) != offset:
            self._decode_into(batch, message)
            return
        origin = Origin(*key, offset)
        batch.offsets[key] = offset + 1
        detail = (
            f"the broker died {plan.deaths[key]} times at offsets including it; isolated by "
            "bisection (kafka.poison_after_deaths) and not decoded"
        )
        log.error("poison message at %s: %s", origin, detail)
        batch.rejections.append(
            Rejection(RejectReason.POISON, detail, message.value() or b"", origin)
        )

    def _hold_isolated(self, batch: Batch) -> None:
        """Isolating partitions read nothing more until this batch is committed."""
        if self.guard is None:
            return
        for key, next_offset in batch.offsets.items():
            if self.guard.limit(key) is not None:
                self.consumer.hold(key, next_offset)

    def _decode_into(self, batch: Batch, message: Message) -> None:
        origin = Origin(message.topic() or "", message.partition() or 0, message.offset() or 0)
        batch.offsets[(origin.topic, origin.partition)] = origin.offset + 1
        raw = message.value() or b""
        crash_if_marked(raw, self.crash_marker)
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
        self.pending = batch  # until its history is read: the loop keeps polling meanwhile
        if self._history_ready(batch):
            self.pending = None
            self._dispatch(batch)

    def _history_ready(self, batch: Batch) -> bool:
        """One attempt at the batch's history read (MongoDB down: False, retried later)."""
        if not self._history_retry.due():
            return False
        started = time.perf_counter()
        batch.history_seq = self.writer.added.mark()
        outage = self.outages["mongodb"]
        try:
            batch.stored_history = self.store.read_history(batch.alerts)
        except TransientError as exc:
            outage.failed(exc)
            self._history_retry.failed()
            return False
        outage.recovered()
        self._history_retry.reset()
        self._timed("history", started)
        return True

    def _dispatch(self, batch: Batch) -> None:
        batch.inputs = [scoring_input(a, batch.stored_history) for a in batch.alerts]
        self.in_flight.append(batch)
        IN_FLIGHT.set(len(self.in_flight))
        if batch.inputs:
            self._score(batch)

    def _score(self, batch: Batch) -> None:
        try:
            batch.future = self.dispatcher.submit(batch.inputs)
        except SchedulerLost as exc:
            self._lose_scheduler(exc)  # holds this batch too

    # -- the Dask scheduler gone and back -------------------------------------

    def _dask_ready(self, force: bool = False) -> bool:
        """False while the Dask scheduler cannot be reached (reported as an outage): its
        batches are held, and submitted again in read order once it is back."""
        outage = self.outages["dask"]
        if not outage.waiting:
            if self.dispatcher.connected():
                return True
            self._lose_scheduler(SchedulerLost("not connected to the Dask scheduler"))
        if not (force or self._dask_retry.due()):
            return False
        try:
            self.dispatcher.reconnect()  # registers the worker plugin again
            for batch in self.in_flight:
                if batch.held:
                    batch.future, batch.held = self.dispatcher.submit(batch.inputs), False
        except SchedulerLost as exc:
            self._lose_scheduler(exc)
            self._dask_retry.failed()
            return False
        self._dask_retry.reset()
        outage.recovered()
        return True

    def _lose_scheduler(self, error: BaseException) -> None:
        """Every future of a client that lost its scheduler is cancelled: each batch not
        yet with the writer waits for it. Not a worker attempt: nothing is wrong with them."""
        self.outages["dask"].failed(error)
        for batch in self.in_flight:
            if batch.written is None and batch.inputs:
                batch.future, batch.held = None, True

    def _wait_for_dask(self) -> bool:
        """Draining with batches held: True once the scheduler is back, False if the broker
        stops first. Partitions being revoked wait for it (their batches cannot finish)."""
        while not self._dask_ready(force=True):
            self.health.tick()
            if self._stop.wait(1.0):
                return False
        return True

    def _keep_alive(self) -> None:
        """While one batch is isolated: the loop still ticks and the member still polls."""
        self.health.tick()
        if not self._revoking:
            self.consumer.keep_alive()

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
            batch.written = self.writer.submit(batch, results)

    def _commit_oldest(self) -> None:
        """Commit the oldest batch's offsets once written: only the main thread commits."""
        batch = self.in_flight[0]
        assert batch.written is not None
        written = batch.written.result()  # re-raises what the writer could not handle
        started = time.perf_counter()
        retry_transient(
            lambda: self.consumer.commit(batch.offsets),
            what="commit", stop=self._stop, outage=self.outages["kafka"],
        )  # fmt: skip
        self._timed("commit", started)
        self._committed(batch.offsets)
        self._count(written.alerts, written.results, written.rejections)
        STAGE_SECONDS.labels("batch").observe(time.monotonic() - batch.read_at)
        log.info(
            "batch: %d messages, %d stored, %d rejected, %.2f s since read",
            batch.size, len(written.alerts), len(written.rejections),
            time.monotonic() - batch.read_at,
        )  # fmt: skip
        self.in_flight.popleft()
        self.writer.added.trim(self.in_flight[0].history_seq if self.in_flight else None)
        IN_FLIGHT.set(len(self.in_flight))

    def _committed(self, offsets: Offsets) -> None:
        """The crash-loop records move on; isolated partitions are read again."""
        if self.guard is None:
            return
        for key, next_offset in offsets.items():
            self.guard.committed(key, next_offset)
            self.consumer.release(key)

    def _results(self, batch: Batch, timeout: float | None) -> list[AlertResult] | None:
        if batch.held:
            return None
        if batch.future is None:
            return []
        try:
            results: list[AlertResult] = batch.future.result(timeout=timeout)
        except TimeoutError:
            return None
        except Exception as exc:
            return self._failed(batch, exc)
        return results

    def _failed(self, batch: Batch, exc: Exception) -> list[AlertResult] | None:
        """The scheduler gone: held. A worker died: the alert responsible is isolated. The
        task raised (a bug, not a crash): retried, then stored without scores."""
        if self.dispatcher.lost(exc):
            self._lose_scheduler(exc)
            return None
        if self.dispatcher.worker_died(exc):
            try:
                return self.dispatcher.isolate(batch.inputs, self._keep_alive)
            except SchedulerLost as lost:
                self._lose_scheduler(lost)
                return None
        batch.attempts += 1
        if batch.attempts < WORKER_ATTEMPTS:
            log.warning("batch of %d failed on the workers (%s): retrying", len(batch.inputs), exc)
            self._score(batch)
            return None
        log.error(
            "batch of %d failed %d times on the workers (%s): stored without scores",
            len(batch.inputs), batch.attempts, exc,
        )  # fmt: skip
        return [AlertResult(i.candid, skipped=(), rejected=None) for i in batch.inputs]

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

    def _timed(self, stage: str, started: float) -> None:
        self._add(stage, time.perf_counter() - started)

    def _add(self, stage: str, elapsed: float) -> None:
        STAGE_SECONDS.labels(stage).observe(elapsed)
        with self._stats_lock:  # the main thread and the writer both add
            self.stats.stage_seconds[stage] = self.stats.stage_seconds.get(stage, 0.0) + elapsed

    def _on_revoke(self, partitions: list[tuple[str, int]]) -> None:
        if self.in_flight:
            log.info("partitions revoked: finishing %d batches in flight", len(self.in_flight))
            self._revoking = True
            try:
                self.drain()
            finally:
                self._revoking = False


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


def _done(batch: Batch) -> bool:
    return not batch.held and (batch.future is None or batch.future.done())


def _written(batch: Batch) -> bool:
    return batch.written is not None and batch.written.done()


def _ranges(messages: list[Message]) -> dict[Partition, tuple[int, int]]:
    """First and last offset read of each partition."""
    ranges: dict[Partition, tuple[int, int]] = {}
    for message in messages:
        key = (message.topic() or "", message.partition() or 0)
        offset = message.offset() or 0
        first, last = ranges.get(key, (offset, offset))
        ranges[key] = (min(first, offset), max(last, offset))
    return ranges
