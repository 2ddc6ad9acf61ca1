"""Outbox: the durable queue between the filter stage and the SkyPortal poster.

Input: filter matches (one bulk insert per batch). Output: jobs claimed under a lease, and
per-call progress that survives restarts, so each call to SkyPortal succeeds exactly once.

FerretDB 1.x runs `findAndModify` and `update` as read-then-write of the whole document (two
senders can both "claim" a job, and a late write can undo another's). So the truth lives in
insert-only documents, whose unique `_id` the database enforces atomically:
`outbox_claims` (`<job>#<generation>`: one holder per generation) and `outbox_steps`
(`<job>|<step>`: one record per successful call). The job document itself only schedules.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from pymongo import ASCENDING, InsertOne, ReturnDocument
from pymongo.errors import BulkWriteError, DuplicateKeyError

from broker.records import FilterMatch

if TYPE_CHECKING:
    from pymongo.collection import Collection
    from pymongo.database import Database

log = logging.getLogger(__name__)

JOBS = "outbox"
CLAIMS = "outbox_claims"
STEPS = "outbox_steps"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DUPLICATE_KEY = 11000
_MAX_SKIPPED_GENERATIONS = 16
# The calls of a job, in the order they are made (broker.post.sender makes them).
JOB_STEPS = (
    "candidate",
    "photometry",
    "thumbnail_new",
    "thumbnail_ref",
    "thumbnail_sub",
    "annotations",
)
_CLAIM_TRIES = 3

JobStatus = Literal["pending", "done", "failed"]


class JobDoc(TypedDict):
    """One post to SkyPortal: an alert that passed a filter (`_id` = "<candid>:<filter>")."""

    _id: str
    candid: int
    filter: str
    alert_id: str
    object_id: str
    survey: str
    fritz_filter_id: int
    group_ids: list[int]
    passed_at: datetime
    created_at: datetime
    status: JobStatus
    attempts: int  # claims so far (each claim is a new generation)
    failures: int  # transient failures so far (sets the backoff)
    next_attempt_at: datetime
    lease_owner: str | None
    lease_expires_at: datetime
    last_error: str | None
    progress: dict[str, datetime]
    done_at: datetime | None


@dataclass(frozen=True, slots=True)
class Claim:
    """A job held by one sender until `expires_at` (generation = the job's attempt number)."""

    job: JobDoc
    generation: int
    owner: str
    expires_at: datetime

    @property
    def job_id(self) -> str:
        return self.job["_id"]

    def seconds_left(self, now: datetime | None = None) -> float:
        return (self.expires_at - (now or utcnow())).total_seconds()


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """MongoDB returns naive UTC datetimes unless the client is tz_aware."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def new_owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def job_id_for(survey: str, candid: int, filter_name: str) -> str:
    """One job per (survey, candid, filter): candids are unique within a survey only (TURBO's
    run 0-10), so a key without the survey would silently drop another survey's match."""
    return f"{survey}:{candid}:{filter_name}"


class Outbox:
    """The `outbox` collections of one database."""

    def __init__(self, db: Database[Any]) -> None:
        self.jobs: Collection[Any] = db[JOBS]
        self.claims: Collection[Any] = db[CLAIMS]
        self.steps: Collection[Any] = db[STEPS]

    def ensure_indexes(self) -> None:
        self.jobs.create_index(
            [("status", ASCENDING), ("next_attempt_at", ASCENDING)], name="status_next"
        )
        self.steps.create_index([("job", ASCENDING)], name="job")

    def enqueue(self, matches: Iterable[FilterMatch], now: datetime | None = None) -> int:
        """Insert one pending job per match in one bulk write; existing jobs are kept as is."""
        now = now or utcnow()
        requests = [InsertOne(new_job(match, now)) for match in matches]
        if not requests:
            return 0
        try:
            return self.jobs.bulk_write(requests, ordered=False).inserted_count
        except BulkWriteError as exc:
            # A batch replayed after a restart: its jobs exist already, which is the point.
            others = [e for e in exc.details["writeErrors"] if e["code"] != _DUPLICATE_KEY]
            if others:
                raise
            return int(exc.details["nInserted"])

    def claim(self, owner: str, lease_seconds: float, now: datetime | None = None) -> Claim | None:
        """Take the next due job under a lease, or None when none is due."""
        for _ in range(_CLAIM_TRIES):
            claim, raced = self._claim_once(owner, lease_seconds, now or utcnow())
            if not raced:
                return claim
        return None

    def _claim_once(
        self, owner: str, lease_seconds: float, now: datetime
    ) -> tuple[Claim | None, bool]:
        """(the claim, or None; whether another sender took the job we found first). A lost
        race is tried again at once: the next due job is free, and waiting a poll would idle
        every posting thread while jobs are due."""
        expires = now + timedelta(seconds=lease_seconds)
        doc = self.jobs.find_one_and_update(
            {
                "status": "pending",
                "next_attempt_at": {"$lte": now},
                "lease_expires_at": {"$lt": now},
            },
            {"$set": {"lease_owner": owner, "lease_expires_at": expires}, "$inc": {"attempts": 1}},
            sort=[("next_attempt_at", ASCENDING)],
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:
            return None, False
        generation = self._take_generation(doc["_id"], int(doc["attempts"]), owner, now, expires)
        if generation is None:
            return None, True
        if generation != doc["attempts"]:
            self.jobs.update_one({"_id": doc["_id"]}, {"$set": {"attempts": generation}})
        claim = Claim(job=_normalise(doc), generation=generation, owner=owner, expires_at=expires)
        return claim, False

    def _take_generation(
        self, job_id: str, generation: int, owner: str, now: datetime, expires: datetime
    ) -> int | None:
        # Only one sender can insert a given generation's token. A taken generation whose
        # lease has run out (the attempts counter was overwritten by a racing claim) is
        # skipped; a live one means another sender holds the job.
        for candidate in range(generation, generation + _MAX_SKIPPED_GENERATIONS):
            token = {"_id": f"{job_id}#{candidate}", "job": job_id, "owner": owner}
            try:
                self.claims.insert_one({**token, "claimed_at": now, "expires_at": expires})
                return candidate
            except DuplicateKeyError:
                held = self.claims.find_one({"_id": token["_id"]}, {"expires_at": 1})
                if held is None or as_utc(held["expires_at"]) > now:
                    log.debug("job %s generation %d is held by another sender", job_id, candidate)
                    return None
        return None

    def steps_done(self, job_id: str) -> dict[str, Mapping[str, Any]]:
        """The calls of this job that already succeeded: step name -> recorded result.

        Looked up by `_id`: FerretDB (SQLite) filters only `_id` in the database and scans
        the collection for any other field, index or not (measured on 5,000 step records:
        1.1 ms by `_id`, 167 ms by `job`), and this collection grows with every post."""
        ids = [f"{job_id}|{step}" for step in JOB_STEPS]
        return {doc["step"]: doc for doc in self.steps.find({"_id": {"$in": ids}})}

    def record_step(self, claim: Claim, step: str, result: Mapping[str, Any]) -> None:
        """Remember that one call succeeded (insert-only: a retry never repeats it)."""
        doc = {
            "_id": f"{claim.job_id}|{step}",
            "job": claim.job_id,
            "step": step,
            "generation": claim.generation,
            "at": utcnow(),
            "result": dict(result),
        }
        try:
            self.steps.insert_one(doc)
        except DuplicateKeyError:
            log.warning("job %s: step %s was already recorded", claim.job_id, step)

    def complete(self, claim: Claim) -> None:
        now = utcnow()
        self._release(claim, {"status": "done", "done_at": now, "last_error": None})

    def retry_later(self, claim: Claim, error: str, delay_seconds: float) -> None:
        due = utcnow() + timedelta(seconds=delay_seconds)
        failures = int(claim.job.get("failures", 0)) + 1
        self._release(claim, {"next_attempt_at": due, "last_error": error, "failures": failures})

    def fail(self, claim: Claim, reason: str) -> None:
        """Park the job (kept, not lost): `nightjar post --retry-failed` queues it again."""
        self._release(claim, {"status": "failed", "last_error": reason})

    def give_back(self, claim: Claim) -> None:
        """Release the lease now (shutdown, or too little lease left for the next call)."""
        self._release(claim, {})

    def _release(self, claim: Claim, fields: dict[str, Any]) -> None:
        if claim.seconds_left() <= 0:
            # Another sender may hold the job now; the next claim resumes from the steps.
            log.warning("job %s: lease expired before release; leaving it", claim.job_id)
            return
        progress = {step: doc["at"] for step, doc in self.steps_done(claim.job_id).items()}
        update = {**fields, "lease_owner": None, "lease_expires_at": EPOCH, "progress": progress}
        self.jobs.update_one({"_id": claim.job_id}, {"$set": update})

    def retry_failed(self, now: datetime | None = None) -> int:
        """Queue every failed job again (after fixing a token or a payload problem)."""
        now = now or utcnow()
        result = self.jobs.update_many(
            {"status": "failed"},
            {
                "$set": {
                    "status": "pending",
                    "failures": 0,
                    "next_attempt_at": now,
                    "lease_expires_at": EPOCH,
                }
            },
        )
        return int(result.modified_count)

    def counts(self) -> dict[str, int]:
        rows = self.jobs.aggregate([{"$group": {"_id": "$status", "n": {"$sum": 1}}}])
        return {str(row["_id"]): int(row["n"]) for row in rows}

    def oldest_pending(self) -> datetime | None:
        doc = self.jobs.find_one(
            {"status": "pending"}, {"created_at": 1}, sort=[("created_at", ASCENDING)]
        )
        return as_utc(doc["created_at"]) if doc else None


def new_job(match: FilterMatch, now: datetime) -> JobDoc:
    return JobDoc(
        _id=job_id_for(match.survey, match.candid, match.filter),
        candid=match.candid,
        filter=match.filter,
        alert_id=match.alert_id,
        object_id=match.object_id,
        survey=match.survey,
        fritz_filter_id=match.fritz_filter_id,
        group_ids=list(match.group_ids),
        passed_at=now,
        created_at=now,
        status="pending",
        attempts=0,
        failures=0,
        next_attempt_at=now,
        lease_owner=None,
        lease_expires_at=EPOCH,
        last_error=None,
        progress={},
        done_at=None,
    )


def _normalise(doc: Mapping[str, Any]) -> JobDoc:
    job: dict[str, Any] = dict(doc)
    for key in ("passed_at", "created_at", "next_attempt_at", "lease_expires_at"):
        if isinstance(job.get(key), datetime):
            job[key] = as_utc(job[key])
    return JobDoc(**job)  # type: ignore[typeddict-item]
