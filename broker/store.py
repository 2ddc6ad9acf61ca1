"""Store stage: annotated alerts, object light curves and rejections into MongoDB.

Input: alerts with their worker results, and rejections. Output: documents in `alerts`
(one per alert, _id "<survey>:<candid>"), `objects` (light curve per object) and `rejected`
(raw bytes up to MongoDB's document limit; size, sha256 and first bytes always).
Every write is idempotent, so replaying a topic or re-running a batch after a crash adds
no duplicate; the history of a batch is read with one query.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypedDict

import pymongo
from pymongo.database import Database
from pymongo.errors import BulkWriteError, ConnectionFailure, PyMongoError

from broker import __version__, history
from broker.errors import TransientError
from broker.records import Alert, AlertResult, Rejection
from broker.settings import Settings
from broker.surveys import tables

log = logging.getLogger(__name__)

DUPLICATE_KEY = 11000
# FerretDB 1.24 keeps one SQLite connection (of a pool of 100) per statement of an update
# command until the command ends: 100 updates in one bulk_write never finish and stall the
# whole server. Smaller commands cost nothing on MongoDB. (The FerretDB `nightjar services`
# builds is patched, services/ferretdb/patches/msg_update.go; this keeps stock FerretDB going.)
UPDATES_PER_COMMAND = 50
# MongoDB's document limit (16 MiB) less room for the other fields (detail, origin, head):
# larger raw bytes are not kept; their size, sha256 and first bytes are.
MAX_STORED_RAW = 16 * 1024 * 1024 - 64 * 1024


class AlertDocument(TypedDict):
    _id: str
    survey: str
    candid: int
    objectId: str
    ra: float
    dec: float
    jd: float
    schema_version: str
    candidate: dict[str, Any]
    packet: dict[str, Any]
    cutouts: dict[str, bytes]
    annotations: dict[str, dict[str, Any]]
    skipped: dict[str, str]
    broker: str
    ingested_at: datetime
    origin: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class StoreResult:
    """What one `Store.write` did: its documents, the points it added, its seconds per step.

    `docs` are in the order of the alerts written (the filter stage matches them in-process
    instead of reading them back); `added` holds the light-curve points stored by this write,
    per object key (batches still in flight read their history before it, and add these);
    `timings` the seconds spent on each collection ("store_alerts", "store_objects").
    A write with nothing to store reports nothing.
    """

    docs: list[AlertDocument] = field(default_factory=list)
    added: Mapping[str, list[dict[str, Any]]] = field(default_factory=dict)
    timings: Mapping[str, float] = field(default_factory=dict)


class RejectedDocument(TypedDict):
    _id: str
    reason: str
    detail: str
    raw: bytes | None  # None above MAX_STORED_RAW: `head` holds the first bytes
    head: bytes
    size: int
    sha256: str
    survey: str | None
    candid: int | None
    objectId: str | None
    origin: dict[str, Any] | None
    rejected_at: datetime


def connect(settings: Settings) -> Database[Any]:
    """The configured database (connection checked lazily by the first command)."""
    client: pymongo.MongoClient[Any] = pymongo.MongoClient(
        settings.mongo_uri(),
        serverSelectionTimeoutMS=settings.mongo.timeout_ms,
        connectTimeoutMS=settings.mongo.timeout_ms,
        # A stalled server becomes an error (and a retried batch), never a silent hang.
        socketTimeoutMS=max(60_000, 6 * settings.mongo.timeout_ms),
        appname=f"nightjar {__version__}",
    )
    return client[settings.mongo.database]


class Store:
    """MongoDB reads and writes of the pipeline; MongoDB and FerretDB alike."""

    def __init__(self, db: Database[Any], repair_light_curves: bool = False) -> None:
        self.db = db
        self.repair_light_curves = repair_light_curves
        self.alerts = db["alerts"]
        self.objects = db["objects"]
        self.rejected = db["rejected"]
        # Crash-loop records (broker.consume.CrashGuard): one per group, topic and partition.
        self.crashloop = db["crashloop"]
        self._objects_writer = ThreadPoolExecutor(1, thread_name_prefix="nightjar-objects")

    def ensure_indexes(self) -> None:
        try:
            self.alerts.create_index(
                [("survey", 1), ("candid", 1)], unique=True, name="survey_candid"
            )
            self.alerts.create_index([("objectId", 1)], name="object")
        except PyMongoError as exc:
            raise TransientError(f"MongoDB at {self._where()} is not usable: {exc}") from exc

    def read_history(self, alerts: Sequence[Alert]) -> dict[str, list[dict[str, Any]]]:
        """Stored light-curve points of every object in the batch, in one query."""
        keys = sorted({object_key(a.survey, a.object_id) for a in alerts})
        if not keys:
            return {}
        with _transient("read history"):
            cursor = self.objects.find(history_filter(keys), {"lightcurve": 1})
            return {doc["_id"]: list(doc.get("lightcurve") or []) for doc in cursor}

    def write(
        self,
        alerts: Sequence[Alert],
        results: Sequence[AlertResult],
        stored_history: Mapping[str, Sequence[Mapping[str, Any]]],
    ) -> StoreResult:
        """Insert alert documents (existing ones are kept) and extend object light curves."""
        if not alerts:
            return StoreResult()
        updates, added = object_updates(alerts, stored_history)
        # The read-back checks every object this write touched, not only those it added
        # points to: on FerretDB an update that adds nothing ($set, $min, $max) still
        # rewrites the whole document from its own read, and can bring back a form another
        # broker had just removed; a batch replayed after a crash finds its points stored
        # and adds none, yet its first run may have died between its write and its check.
        checked = {key: added.get(key, []) for key in _object_keys(alerts)}
        # Light curves on a second connection while the alert documents are inserted: the
        # server overlaps its decoding and encoding of the two (FerretDB: 1.70 -> 1.22 ms
        # per alert, measured). Each part is idempotent; a failure of either retries both.
        objects = self._objects_writer.submit(self._update_objects, updates, checked)
        started = time.perf_counter()
        now = datetime.now(UTC)
        docs = [alert_document(a, r, now) for a, r in zip(alerts, results, strict=True)]
        try:
            with _transient("store alerts"):
                _insert_ignoring_duplicates(self.alerts, docs)
            alerts_seconds = time.perf_counter() - started
        finally:
            wait([objects])  # never leave it running into a retry
        timings = {"store_alerts": alerts_seconds, "store_objects": objects.result()}
        return StoreResult(docs, added, timings)

    def _update_objects(
        self, updates: Sequence[pymongo.UpdateOne], checked: history.Points
    ) -> float:
        started = time.perf_counter()
        with _transient("update objects"):
            for start in range(0, len(updates), UPDATES_PER_COMMAND):
                _upsert(self.objects, updates[start : start + UPDATES_PER_COMMAND])
            if self.repair_light_curves:
                # Other brokers may have written the same objects meanwhile (history.repair).
                history.repair(self.objects, checked, UPDATES_PER_COMMAND)
        return time.perf_counter() - started

    def write_rejections(self, rejections: Sequence[Rejection]) -> None:
        if not rejections:
            return
        now = datetime.now(UTC)
        with _transient("store rejections"):
            _insert_ignoring_duplicates(
                self.rejected, [rejected_document(r, now) for r in rejections]
            )

    def _where(self) -> str:
        # Not `client.address`: it waits for a server and raises when none answers.
        servers = self.db.client.topology_description.server_descriptions()
        return ", ".join(f"{host}:{port}" for host, port in servers) or "(no server)"


def object_key(survey: str, object_id: str) -> str:
    return f"{survey}:{object_id}"


def history_filter(keys: Sequence[str]) -> dict[str, Any]:
    # `_id` alone: an index lookup on MongoDB, and on FerretDB too with Nightjar's patch
    # (services/ferretdb/patches/collection.go); any other shape scans every object there.
    return {"_id": {"$in": list(keys)}}


def alert_document(alert: Alert, result: AlertResult, now: datetime) -> AlertDocument:
    # The survey's histories are kept as light-curve points on the object, not copied into
    # every alert document (they repeat from one alert to the next).
    histories = tables(alert.survey).history_fields
    packet = {
        name: history.clean(value)
        for name, value in alert.packet.items()
        if name not in histories and not _is_cutout(value) and value is not alert.candidate
    }
    return AlertDocument(
        _id=alert.key,
        survey=alert.survey,
        candid=alert.candid,
        objectId=alert.object_id,
        ra=alert.ra,
        dec=alert.dec,
        jd=alert.jd,
        schema_version=alert.schema_version,
        candidate=history.clean(dict(alert.candidate)),
        packet=packet,
        cutouts={
            "science": alert.cutouts.science,
            "template": alert.cutouts.template,
            "difference": alert.cutouts.difference,
        },
        annotations={
            a.model: {"score": history.clean_value(a.score), "version": a.version, **a.extra}
            for a in result.annotations
        },
        skipped={s.model: s.reason for s in result.skipped},
        broker=f"nightjar {__version__}",
        ingested_at=now,
        origin=_origin(alert.origin),
    )


def _object_keys(alerts: Iterable[Alert]) -> list[str]:
    return sorted({object_key(alert.survey, alert.object_id) for alert in alerts})


def object_updates(
    alerts: Iterable[Alert], stored_history: Mapping[str, Sequence[Mapping[str, Any]]]
) -> tuple[list[pymongo.UpdateOne], dict[str, list[dict[str, Any]]]]:
    """One upsert per object adding only the points not stored yet; and those points."""
    new_points: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = {}
    times: dict[str, list[float]] = {}
    latest: dict[str, Alert] = {}
    for alert in alerts:
        key = object_key(alert.survey, alert.object_id)
        known = {history.point_key(alert.survey, p) for p in stored_history.get(key, ())}
        bucket = new_points.setdefault(key, {})
        for point in history.alert_points(alert):
            point_id = history.point_key(alert.survey, point)
            if point_id not in known:
                bucket[point_id] = point
        times.setdefault(key, []).append(alert.jd)
        if key not in latest or alert.jd >= latest[key].jd:
            latest[key] = alert
    updates = []
    for key, points in new_points.items():
        alert = latest[key]
        # An alert with no new point (one older than those stored, from a lagging
        # partition) still moves first_alert_jd / last_alert_jd.
        update: dict[str, Any] = {
            "$setOnInsert": {"survey": alert.survey, "objectId": alert.object_id},
            "$set": {"ra": alert.ra, "dec": alert.dec},
            "$min": {"first_alert_jd": min(times[key])},
            "$max": {"last_alert_jd": max(times[key])},
        }
        if points:
            update["$addToSet"] = {"lightcurve": {"$each": list(points.values())}}
        updates.append(pymongo.UpdateOne({"_id": key}, update, upsert=True))
    added = {key: list(points.values()) for key, points in new_points.items() if points}
    return updates, added


def rejected_document(rejection: Rejection, now: datetime) -> RejectedDocument:
    # Keyed by where the message was read, so a replayed bad message is stored once.
    ident = str(rejection.origin) if rejection.origin else f"raw:{hash(rejection.raw):x}"
    return RejectedDocument(
        _id=ident,
        reason=rejection.reason,
        detail=rejection.detail,
        raw=rejection.raw if rejection.size <= MAX_STORED_RAW else None,
        head=rejection.head,
        size=rejection.size,
        sha256=rejection.sha256(),
        survey=rejection.survey,
        candid=rejection.candid,
        objectId=rejection.object_id,
        origin=_origin(rejection.origin),
        rejected_at=now,
    )


def _origin(origin: Any) -> dict[str, Any] | None:
    if origin is None:
        return None
    return {"topic": origin.topic, "partition": origin.partition, "offset": origin.offset}


def _is_cutout(value: Any) -> bool:
    if isinstance(value, bytes):
        return True
    return isinstance(value, Mapping) and any(isinstance(v, bytes) for v in value.values())


def _upsert(collection: Any, updates: Sequence[pymongo.UpdateOne]) -> None:
    """Upserts, once more where two writers created the same new object at once.

    The loser of that race gets a duplicate-key error (FerretDB always, MongoDB in some
    cases); run again, its update finds the object and applies to it (idempotent).
    """
    try:
        collection.bulk_write(updates, ordered=False)
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        if not errors or any(e.get("code") != DUPLICATE_KEY for e in errors):
            raise  # not that race: as before, for the caller to see
        collection.bulk_write([updates[e["index"]] for e in errors], ordered=False)
    except KeyError as exc:
        # FerretDB 1.24 answers an update command in which an upsert lost that race with
        # write errors but no nModified, which pymongo reads as KeyError('nModified'). Object
        # updates are idempotent ($set, $addToSet; no $inc): send them again, the object
        # exists now.
        if exc.args != ("nModified",):
            raise
        log.info("objects created by another broker meanwhile: %d updates sent again", len(updates))
        collection.bulk_write(updates, ordered=False)


def _insert_ignoring_duplicates(collection: Any, docs: Sequence[Mapping[str, Any]]) -> None:
    try:
        collection.insert_many(docs, ordered=False)
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        others = [e for e in errors if e.get("code") != DUPLICATE_KEY]
        if others:
            raise TransientError(f"{len(others)} writes failed, first: {others[0]}") from exc


class _transient:
    """Turns connection-level MongoDB failures into TransientError (the batch is retried)."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        if isinstance(exc, ConnectionFailure):
            raise TransientError(f"{self.what}: MongoDB unreachable: {exc}") from exc
