"""Writer stage: store -> filter -> publish of one scored batch, on one thread.

Input: a batch the main loop read and the workers scored (alerts, rejections, the history
it read), with its worker results. Output: `Written` (what was stored and rejected), which
the main loop counts when it commits the batch's offsets; nothing here commits.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from broker.errors import WaitReport, retry_transient
from broker.publish import Publisher
from broker.records import Alert, AlertResult, Rejection
from broker.store import AlertDocument, Store, object_key

log = logging.getLogger(__name__)

T = TypeVar("T")


class FilterRunner(Protocol):
    def run(self, docs: Sequence[Mapping[str, Any]]) -> Sequence[Any]: ...


class Scored(Protocol):
    """What the writer reads of the main loop's batch."""

    alerts: list[Alert]
    rejections: list[Rejection]
    source_ts: list[int | None]
    stored_history: dict[str, list[dict[str, Any]]]
    history_seq: int


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


class Writer:
    """Stores, filters and publishes batches one at a time, in the order they are submitted.

    One thread: a batch is written only after every batch submitted before it, so the main
    loop can commit offsets in read order without skipping an unfinished batch.
    """

    def __init__(
        self,
        store: Store,
        publisher: Publisher,
        timed: Callable[[str, float], None],
        filters: FilterRunner | None = None,
        filter_topic: Callable[[str], str] | None = None,
        outages: Mapping[str, WaitReport] | None = None,
    ) -> None:
        self.store = store
        self.publisher = publisher
        self.filters = filters
        self.filter_topic = filter_topic
        self.added = AddedPoints()
        self._outages = dict(outages or {})  # stage -> where its waits are reported
        # Set by the main loop when it runs: a stage failing after that is not retried.
        self.stop = threading.Event()
        self._timed = timed  # seconds per stage, into the run's figures and metrics
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nightjar-writer")

    def submit(self, batch: Scored, results: list[AlertResult]) -> Future[Written]:
        return self._thread.submit(self.write, batch, results)

    def shutdown(self) -> None:
        """Wait for the batches already submitted (uncommitted ones are read again later)."""
        self._thread.shutdown(wait=True)

    def write(self, batch: Scored, results: list[AlertResult]) -> Written:
        """On the writer thread: store, filter and publish; the main thread then commits."""
        alerts, kept, source_ts, rejections = split_results(batch, results)
        started = time.perf_counter()
        docs = self._retrying("store", lambda: self._store(alerts, kept, batch, rejections))
        self._timed("store", time.perf_counter() - started)
        started = time.perf_counter()
        matches = self._retrying("filter", lambda: self._filter(docs))
        self._retrying(
            "publish", lambda: self._publish(alerts, kept, source_ts, rejections, matches)
        )
        # Filter matching is counted in the publish stage, as it always was (one metric label).
        self._timed("publish", time.perf_counter() - started)
        return Written(alerts, kept, rejections)

    def _retrying(self, stage: str, call: Callable[[], T]) -> T:
        # Until it works, or the broker stops: the batch stays uncommitted either way. At
        # most 5 s between tries: the stream resumes soon after the service is back.
        return retry_transient(
            call, what=stage, stop=self.stop, max_delay=5.0, outage=self._outages.get(stage)
        )

    def _store(
        self,
        alerts: list[Alert],
        results: list[AlertResult],
        batch: Scored,
        rejections: list[Rejection],
    ) -> list[AlertDocument]:
        # What was stored when the batch read its history, plus what the batches stored
        # since then added: no second read. A detection's candidate and history points
        # differ, so $addToSet alone would keep both.
        keys = {object_key(a.survey, a.object_id) for a in alerts}
        stored = dict(batch.stored_history)  # the batch's own copy stays as read (retries)
        for key, points in self.added.since(batch.history_seq, keys).items():
            stored[key] = [*stored.get(key, ()), *points]
        written = self.store.write(alerts, results, stored)
        for stage, seconds in written.timings.items():
            self._timed(stage, seconds)
        self.added.add(written.added)
        self.store.write_rejections(rejections)
        return written.docs

    def _filter(self, docs: list[AlertDocument]) -> Sequence[Any]:
        """The documents just stored, matched in-process: no read back from MongoDB."""
        if self.filters is None or not docs:
            return []
        return self.filters.run(docs)

    def _publish(
        self,
        alerts: list[Alert],
        results: list[AlertResult],
        source_ts: list[int | None],
        rejections: list[Rejection],
        matches: Sequence[Any],
    ) -> None:
        encoded = self.publisher.publish(alerts, results, source_ts)
        for match in matches:
            assert self.filter_topic is not None, "filters given without filter_topic"
            self.publisher.send_to(
                self.filter_topic(match.filter), encoded[match.alert_id], match.object_id.encode()
            )
        self.publisher.dead_letter(rejections)
        self.publisher.flush()


def split_results(
    batch: Scored, results: list[AlertResult]
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
