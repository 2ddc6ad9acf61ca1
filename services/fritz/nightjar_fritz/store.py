"""Storage of the Fritz-like service: its own MongoDB database (default `fritz`).

Input: validated requests from nightjar_fritz.api. Output: SkyPortal-shaped records.
Collections: objs, candidates, photometry, thumbnails, annotations, and api_log (one
document per accepted write, so operators and tests can see every post that landed).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from bson import Binary
from pymongo import ASCENDING, DESCENDING, UpdateOne
from pymongo.database import Database
from pymongo.errors import BulkWriteError, DuplicateKeyError

from nightjar_fritz.payloads import (
    PHOT_SYS,
    PHOT_ZP,
    AnnotationPost,
    AnnotationPut,
    ApiError,
    CandidatePost,
    PhotometryRow,
)

# FerretDB 1.24 holds one SQLite connection (of a pool of 100) per statement of an update
# command until the command ends: 100 updates in one bulk_write stall the whole server, and
# so do concurrent commands that together pass 100 (the build `nightjar services` runs is
# patched against it: services/ferretdb/patches/msg_update.go).
UPDATES_PER_COMMAND = 50
_COLLECTIONS_WITH_IDS = ("candidates", "photometry", "thumbnails", "annotations")
_DUPLICATE_KEY = 11000


def utcnow() -> datetime:
    return datetime.now(UTC)


class FritzStore:
    """MongoDB access for the service; integer ids are handed out like SkyPortal's."""

    def __init__(self, db: Database[Any]) -> None:
        self.db = db
        self._lock = threading.Lock()
        self._ids = {name: self._counter(name) for name in _COLLECTIONS_WITH_IDS}

    def _counter(self, name: str) -> itertools.count[int]:
        # One service process owns the database, so a counter seeded from the largest id
        # is enough (FerretDB has no atomic $inc-and-return).
        last = self.db[name].find_one({}, {"id": 1}, sort=[("id", DESCENDING)])
        return itertools.count(int(last["id"]) + 1 if last else 1)

    def _next_id(self, name: str) -> int:
        with self._lock:
            return next(self._ids[name])

    def ensure_indexes(self) -> None:
        for name in ("candidates", "photometry", "thumbnails", "annotations"):
            self.db[name].create_index([("obj_id", ASCENDING)], name="obj_id")
        self.db["candidates"].create_index([("passed_at", DESCENDING)], name="passed_at")
        self.db["api_log"].create_index([("at", ASCENDING)], name="at")

    def log_write(self, method: str, path: str, summary: Mapping[str, Any]) -> None:
        self.db["api_log"].insert_one(
            {"at": utcnow(), "method": method, "path": path, **dict(summary)}
        )

    def obj(self, obj_id: str) -> dict[str, Any] | None:
        return self.db["objs"].find_one({"_id": obj_id}, {"_id": 0})

    def require_obj(self, obj_id: str, field: str = "obj_id") -> dict[str, Any]:
        obj = self.obj(obj_id)
        if obj is None:
            raise ApiError(400, f"{field}: no object {obj_id!r}; POST /api/candidates first")
        return obj

    def upsert_obj(self, post: CandidatePost) -> None:
        if self.obj(post.id) is not None:
            return
        if post.ra is None or post.dec is None:
            raise ApiError(400, "ra, dec: required when the object is new")
        doc = {
            "_id": post.id,
            "id": post.id,
            "ra": post.ra,
            "dec": post.dec,
            "origin": post.origin,
            "score": post.score,
            "created_at": utcnow(),
        }
        with contextlib.suppress(DuplicateKeyError):  # a concurrent request created it
            self.db["objs"].insert_one(doc)

    def add_candidates(self, post: CandidatePost) -> list[int]:
        alert = post.passing_alert_id if post.passing_alert_id is not None else post.passed_at
        ids = []
        for filter_id in post.filter_ids:
            candidate_id = self._next_id("candidates")
            row = {
                "_id": f"{post.id}|{filter_id}|{alert}",
                "id": candidate_id,
                "obj_id": post.id,
                "filter_id": filter_id,
                "passing_alert_id": post.passing_alert_id,
                "passed_at": post.passed_at,
                "created_at": utcnow(),
            }
            try:
                self.db["candidates"].insert_one(row)
            except DuplicateKeyError as exc:
                raise ApiError(
                    400,
                    f"candidate {post.id} already passed filter {filter_id} with alert {alert}",
                ) from exc
            ids.append(candidate_id)
        return ids

    def has_candidate(self, obj_id: str) -> bool:
        return self.db["candidates"].find_one({"obj_id": obj_id}, {"_id": 1}) is not None

    def passing_alerts(self, obj_id: str) -> list[dict[str, Any]]:
        rows = self.db["candidates"].find({"obj_id": obj_id}, sort=[("passed_at", ASCENDING)])
        return [
            {
                "filter_id": row["filter_id"],
                "passing_alert_id": row["passing_alert_id"],
                "passed_at": row["passed_at"],
            }
            for row in rows
        ]

    def candidate_objs(
        self, filter_ids: list[int] | None, start: datetime | None, end: datetime | None
    ) -> list[str]:
        """Object ids with a candidate in the selection, most recently passed first."""
        query: dict[str, Any] = {}
        if filter_ids:
            query["filter_id"] = {"$in": filter_ids}
        window = {op: t for op, t in (("$gte", start), ("$lte", end)) if t is not None}
        if window:
            query["passed_at"] = window
        rows = self.db["candidates"].find(
            query, {"obj_id": 1}, sort=[("passed_at", DESCENDING), ("id", DESCENDING)]
        )
        return list(dict.fromkeys(row["obj_id"] for row in rows))

    def put_photometry(self, rows: Iterable[PhotometryRow]) -> list[int]:
        """Create or update points; a point is the same if (obj, instrument, filter, mjd) are."""
        keyed = {f"{r.obj_id}|{r.instrument_id}|{r.filter}|{r.mjd:.8f}": r for r in rows}
        existing = {
            doc["_id"]: int(doc["id"])
            for doc in self.db["photometry"].find({"_id": {"$in": list(keyed)}}, {"id": 1})
        }
        ids, requests = [], []
        for key, row in keyed.items():
            point_id = existing.get(key) or self._next_id("photometry")
            ids.append(point_id)
            doc = {**row.model_dump(), "id": point_id, "zp": PHOT_ZP, "magsys": PHOT_SYS}
            requests.append(UpdateOne({"_id": key}, {"$set": doc}, upsert=True))
        # In chunks: FerretDB 1.24 stalls on update commands of 100 statements or more.
        photometry = self.db["photometry"]
        for start in range(0, len(requests), UPDATES_PER_COMMAND):
            chunk = requests[start : start + UPDATES_PER_COMMAND]
            _upsert(functools.partial(photometry.bulk_write, chunk, ordered=False))
        return ids

    def photometry(self, obj_id: str) -> list[dict[str, Any]]:
        return list(
            self.db["photometry"].find({"obj_id": obj_id}, {"_id": 0}, sort=[("mjd", ASCENDING)])
        )

    def put_thumbnail(self, obj_id: str, ttype: str, png: bytes) -> int:
        """One thumbnail per (object, type): a newer alert's stamp replaces the older one."""
        key = f"{obj_id}|{ttype}"
        old = self.db["thumbnails"].find_one({"_id": key}, {"id": 1})
        thumbnail_id = int(old["id"]) if old else self._next_id("thumbnails")
        doc = {"id": thumbnail_id, "obj_id": obj_id, "type": ttype, "png": Binary(png)}
        update = {"$set": {**doc, "modified": utcnow()}}
        _upsert(lambda: self.db["thumbnails"].update_one({"_id": key}, update, upsert=True))
        return thumbnail_id

    def thumbnail_png(self, obj_id: str, ttype: str) -> bytes | None:
        doc = self.db["thumbnails"].find_one({"_id": f"{obj_id}|{ttype}"}, {"png": 1})
        return bytes(doc["png"]) if doc else None

    def thumbnails(self, obj_id: str) -> list[dict[str, Any]]:
        docs = self.db["thumbnails"].find({"obj_id": obj_id}, {"png": 0, "_id": 0})
        return [
            {**doc, "public_url": f"/static/thumbnails/{obj_id}_{doc['type']}.png"} for doc in docs
        ]

    def annotations(self, obj_id: str) -> list[dict[str, Any]]:
        docs = self.db["annotations"].find({"obj_id": obj_id}, {"_id": 0})
        return sorted(docs, key=lambda doc: doc["origin"])

    def add_annotation(self, obj_id: str, post: AnnotationPost, group_ids: list[int]) -> int:
        now = utcnow()
        annotation_id = self._next_id("annotations")
        doc = {
            "_id": f"{obj_id}|{post.origin}",
            "id": annotation_id,
            "obj_id": obj_id,
            "origin": post.origin,
            "data": post.data,
            "group_ids": group_ids,
            "created_at": now,
            "modified": now,
        }
        try:
            self.db["annotations"].insert_one(doc)
        except DuplicateKeyError as exc:
            raise ApiError(
                400,
                f"origin: {obj_id} already has an annotation from {post.origin!r}; "
                "update it with PUT /api/sources/<obj_id>/annotations/<annotation_id>",
            ) from exc
        return annotation_id

    def update_annotation(self, obj_id: str, annotation_id: int, put: AnnotationPut) -> None:
        current = self.db["annotations"].find_one({"id": annotation_id})
        if current is None or current["obj_id"] != obj_id:
            raise ApiError(404, f"annotation_id: no annotation {annotation_id} on {obj_id}")
        if put.origin is not None and put.origin != current["origin"]:
            raise ApiError(400, "origin: an annotation's origin cannot be changed")
        changes: dict[str, Any] = {"modified": utcnow()}
        if put.data is not None:
            changes["data"] = put.data
        if put.group_ids is not None:
            changes["group_ids"] = put.group_ids
        self.db["annotations"].update_one({"_id": current["_id"]}, {"$set": changes})


def _upsert(write: Callable[[], object]) -> None:
    """Run an upsert; once more if a concurrent request inserted the same _id first.

    FerretDB (and MongoDB without a retry) can report a duplicate key when two upserts
    race; the second run finds the document and updates it.
    """
    try:
        write()
    except DuplicateKeyError:
        write()
    except BulkWriteError as exc:
        if any(e["code"] != _DUPLICATE_KEY for e in exc.details["writeErrors"]):
            raise
        write()
