"""SkyPortal poster: outbox jobs -> the calls Kowalski makes for each new candidate.

Input: jobs claimed from broker.post.outbox. Output, per job: POST /api/candidates, PUT
/api/photometry, three POST /api/thumbnail and POST (or PUT) /api/sources/{id}/annotations,
each recorded in the outbox as it succeeds so no call is repeated. Runs as `nightjar post`,
or in a thread of `nightjar run`: `Sender.from_settings(settings).run(stop)`. One thread
claims; `fritz.concurrency` threads post, each job's calls in order on one thread, and jobs
of one object one after another in the order they were claimed.
"""

from __future__ import annotations

import base64
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pymongo
from pymongo.errors import PyMongoError

from broker.errors import ConfigError, TransientError
from broker.health import Health, Outage
from broker.metrics import POST_JOBS, POST_OLDEST, POST_QUEUE, POST_SECONDS
from broker.post.outbox import JOB_STEPS, Claim, JobDoc, Outbox, new_owner_id, utcnow
from broker.post.photometry import light_curve, photometry_payload
from broker.post.skyportal import (
    BadJob,
    RateLimited,
    Rejected,
    SkyPortalClient,
    TimedOut,
    annotation_payload,
    candidate_payload,
)
from broker.post.thumbnails import TTYPES, CutoutKind, RenderedThumbnails

if TYPE_CHECKING:
    from pymongo.database import Database

    from broker.settings import FritzSettings, Settings

log = logging.getLogger(__name__)

STEPS = JOB_STEPS
_THUMBNAIL_STEPS: dict[str, CutoutKind] = {f"thumbnail_{t}": kind for kind, t in TTYPES.items()}
_CALLS_PER_STEP = {"candidate": 3, "annotations": 4}  # e.g. HEAD + GET + POST
_GAUGE_PERIOD_SECONDS = 10.0
_SLOT_WAIT_SECONDS = 0.2  # how often a claimer waiting for a free thread checks `stop`


@dataclass(slots=True)
class JobData:
    """What one job's requests are built from: the job, its stored alert and light curve."""

    job: JobDoc
    alert: Mapping[str, Any]
    stored_light_curve: list[Mapping[str, Any]] = field(default_factory=list)


class Sender:
    """Claims outbox jobs and makes their outstanding SkyPortal calls, `fritz.concurrency`
    jobs at a time (post_next: one job, on the calling thread)."""

    def __init__(self, db: Database[Any], client: SkyPortalClient, fritz: FritzSettings) -> None:
        self.outbox = Outbox(db)
        self.outbox.ensure_indexes()
        self._alerts = db["alerts"]
        self._objects = db["objects"]
        self.client = client
        self.fritz = fritz
        self.owner = new_owner_id()
        self._auth_reported = False
        self._gauges_at = 0.0
        self._outcomes: Counter[str] = Counter()  # since the last INFO summary
        self._outcomes_lock = threading.Lock()
        self._on_close: list[Callable[[], None]] = [client.close]
        self._thumbnails = RenderedThumbnails(capacity=8 * fritz.concurrency)
        # Claimer thread only: a free posting thread per slot, the last job of each object
        # in flight (the next one of that object waits for it), no claims before this time.
        self._slots = threading.Semaphore(fritz.concurrency)
        self._last_of_object: dict[str, Future[None]] = {}
        self._paused_until = 0.0
        self._watch(Health())

    @classmethod
    def from_settings(cls, settings: Settings) -> Sender:
        """A sender with its own MongoDB client and HTTP session; ConfigError without a token."""
        try:
            token = settings.fritz.api_token()
        except OSError as exc:
            raise ConfigError(f"fritz.token_file: cannot read it: {exc}") from exc
        if not token:
            raise ConfigError(
                "fritz.token is not set: export NIGHTJAR_FRITZ__TOKEN=<SkyPortal API token> "
                "or set fritz.token_file"
            )
        mongo: pymongo.MongoClient[Any] = pymongo.MongoClient(
            settings.mongo_uri(), serverSelectionTimeoutMS=settings.mongo.timeout_ms, tz_aware=True
        )
        client = SkyPortalClient(
            settings.fritz.url,
            token,
            settings.fritz.timeout_seconds,
            pool_size=settings.fritz.concurrency,
        )
        sender = cls(mongo[settings.mongo.database], client, settings.fritz)
        sender._on_close.append(mongo.close)
        return sender

    def run(
        self,
        stop: threading.Event,
        exit_when_idle: float | None = None,
        health: Health | None = None,
    ) -> None:
        """Post until `stop` is set (or nothing was due for `exit_when_idle` seconds)."""
        if health is not None:
            self._watch(health)
        log.info(
            "sender %s posting outbox jobs to %s, %d at a time",
            self.owner,
            self.fritz.url,
            self.fritz.concurrency,
        )
        idle_since = time.monotonic()
        pool = ThreadPoolExecutor(self.fritz.concurrency, thread_name_prefix="nightjar-post")
        try:
            while not stop.is_set():
                if health is not None:
                    health.tick()
                if self._loop_once(stop, pool):
                    idle_since = time.monotonic()
                    continue
                if exit_when_idle is not None and time.monotonic() - idle_since >= exit_when_idle:
                    log.info("sender %s: nothing due for %g s; exiting", self.owner, exit_when_idle)
                    return
                stop.wait(self.fritz.poll_seconds)
        finally:
            pool.shutdown(wait=True)  # jobs in flight hand back at their next step when stopping
            self._summarise()
            self.close()

    def _watch(self, health: Health) -> None:
        """Outages of MongoDB and of Fritz are reported (one WARN when the wait starts, one
        every 30 s, one on recovery) and drive `health` (/readyz, the blocked gauge)."""
        self._mongo_outage = Outage("mongodb", health, self.outbox_pending)
        self._fritz_outage = Outage("fritz", health, self.outbox_pending)

    def outbox_pending(self) -> int:
        """Jobs waiting, for the outage reports (-1 while MongoDB cannot say)."""
        try:
            return self.outbox.counts().get("pending", 0)
        except PyMongoError:
            return -1

    def _loop_once(self, stop: threading.Event, pool: ThreadPoolExecutor) -> bool:
        try:
            self._refresh_gauges()
            dispatched = self._dispatch_next(stop, pool)
            self._mongo_outage.recovered()
            return dispatched
        except PyMongoError as exc:
            self._mongo_outage.failed(exc)
            log.debug("sender: MongoDB error, retrying in %g s: %s", self.fritz.poll_seconds, exc)
        except Exception:  # the top of the loop: one bad job must not stop the sender
            log.exception("sender: unexpected error; continuing")
        return False

    def _dispatch_next(self, stop: threading.Event, pool: ThreadPoolExecutor) -> bool:
        """Wait for a free posting thread, claim one due job and hand it over; False when
        none was due (or stopping, or Fritz asked to slow down)."""
        if time.monotonic() < self._paused_until:
            return False
        while not self._slots.acquire(timeout=_SLOT_WAIT_SECONDS):
            if stop.is_set():
                return False
        try:
            claim = self.outbox.claim(self.owner, self.fritz.lease_seconds)
        except BaseException:
            self._slots.release()
            raise
        if claim is None:
            self._slots.release()
            return False
        object_id = claim.job["object_id"]
        before = self._last_of_object.get(object_id)
        future = pool.submit(self._post_in_turn, claim, before, stop)
        self._last_of_object[object_id] = future
        if len(self._last_of_object) > 4 * self.fritz.concurrency:
            self._last_of_object = {k: f for k, f in self._last_of_object.items() if not f.done()}
        return True

    def _post_in_turn(
        self, claim: Claim, before: Future[None] | None, stop: threading.Event
    ) -> None:
        """A posting thread's task: after the object's previous job (so a later alert's
        annotation is the one left on SkyPortal), post this one; never raises."""
        try:
            if before is not None:
                wait_for([before])
            self.post_claimed(claim, stop)
            self._mongo_outage.recovered()
        except PyMongoError as exc:
            # The lease runs out and the job is claimed again, resuming from its steps.
            self._mongo_outage.failed(exc)
            log.debug("job %s: MongoDB error; left to its lease: %s", claim.job_id, exc)
        except Exception:  # the top of a posting thread: one bad job must not stop the sender
            log.exception("job %s: unexpected error; left to its lease", claim.job_id)
        finally:
            self._slots.release()

    def post_next(self, stop: threading.Event | None = None) -> bool:
        """Claim one due job and make its outstanding calls here; False when none was due."""
        claim = self.outbox.claim(self.owner, self.fritz.lease_seconds)
        if claim is None:
            return False
        self.post_claimed(claim, stop)
        return True

    def post_claimed(self, claim: Claim, stop: threading.Event | None = None) -> None:
        """Make a claimed job's outstanding calls, then complete, retry or fail it."""
        started = time.monotonic()
        try:
            self._post(claim, stop)
            self._fritz_outage.recovered()
        except RateLimited as exc:
            self._fritz_outage.recovered()  # it answered: busy, but reachable
            self._slow_down(exc.retry_after)
            self._retry_later(claim, str(exc), timed_out=False, at_least=exc.retry_after)
        except TransientError as exc:
            self._fritz_outage.failed(exc)
            self._retry_later(claim, str(exc), timed_out=isinstance(exc, TimedOut))
        except Rejected as exc:
            self._fritz_outage.recovered()  # it answered: refused, but reachable
            self._reject(claim, exc)
        except BadJob as exc:
            log.error("job %s cannot be posted: %s (kept as failed)", claim.job_id, exc)
            self._count("failed")
            self.outbox.fail(claim, str(exc))
        POST_SECONDS.observe(time.monotonic() - started)

    def close(self) -> None:
        for close in self._on_close:
            close()
        self._on_close = []

    def _post(self, claim: Claim, stop: threading.Event | None) -> None:
        data = self._load(claim.job)
        done = self.outbox.steps_done(claim.job_id)
        for step in STEPS:
            if step in done:
                continue
            needed = self.fritz.timeout_seconds * (_CALLS_PER_STEP.get(step, 1) + 1)
            if (stop is not None and stop.is_set()) or claim.seconds_left() < needed:
                log.info(
                    "job %s: handing back before %s (stopping or lease short)", claim.job_id, step
                )
                self.outbox.give_back(claim)
                return
            result = self._run_step(step, data, in_doubt=claim.generation > 1)
            self.outbox.record_step(claim, step, result)
        self.outbox.complete(claim)
        self._count("done")
        log.debug(
            "job %s posted (%s, filter %s)",
            claim.job_id,
            claim.job["object_id"],
            claim.job["filter"],
        )

    def _load(self, job: JobDoc) -> JobData:
        alert = self._alerts.find_one({"_id": job["alert_id"]})
        if alert is None:
            raise BadJob(f"alert {job['alert_id']} is not in the alerts collection")
        obj = self._objects.find_one(
            {"_id": f"{job['survey']}:{job['object_id']}"}, {"lightcurve": 1}
        )
        stored = list((obj or {}).get("lightcurve") or [])
        return JobData(job=job, alert=alert, stored_light_curve=stored)

    def _run_step(self, step: str, data: JobData, *, in_doubt: bool) -> dict[str, Any]:
        if step == "candidate":
            return self._post_candidate(data, in_doubt=in_doubt)
        if step == "photometry":
            return self._put_photometry(data)
        if step in _THUMBNAIL_STEPS:
            return self._post_thumbnail(data, _THUMBNAIL_STEPS[step])
        return self._post_annotations(data)

    def _post_candidate(self, data: JobData, *, in_doubt: bool) -> dict[str, Any]:
        job = data.job
        obj_id = job["object_id"]
        if in_doubt and self._candidate_exists(job):
            # An earlier attempt reached SkyPortal but its success was never recorded.
            return {"already_posted": True}
        payload = candidate_payload(job, data.alert, self.fritz.origin)
        try:
            _, result = self.client.call("candidates", "POST", "/api/candidates", payload=payload)
        except Rejected as exc:
            # SkyPortal refuses a second (object, filter, alert) candidate: if this very alert
            # is the one on record (a re-run, or an earlier attempt's lost answer), it landed.
            if exc.status == 400 and self._candidate_exists(job):
                return {"already_posted": True}
            raise
        log.debug("candidate %s posted for filter %s", obj_id, job["fritz_filter_id"])
        return {"ids": (result or {}).get("ids")}

    def _candidate_exists(self, job: JobDoc) -> bool:
        path = f"/api/candidates/{job['object_id']}"
        status, _ = self.client.call("candidates_head", "HEAD", path, ok=(200, 404))
        if status == 404:
            return False
        _, candidate = self.client.call("candidates_get", "GET", path)
        passing = (candidate or {}).get("passing_alerts") or []
        return any(
            row.get("filter_id") == job["fritz_filter_id"]
            and row.get("passing_alert_id") == job["candid"]
            for row in passing
        )

    def _put_photometry(self, data: JobData) -> dict[str, Any]:
        job = data.job
        instrument_id = self.fritz.instrument_ids.get(job["survey"])
        if instrument_id is None:
            raise BadJob(f"fritz.instrument_ids has no entry for survey {job['survey']!r}")
        try:
            points = light_curve(job["survey"], data.alert, data.stored_light_curve)
        except ValueError as exc:
            raise BadJob(f"photometry: {exc}") from exc
        if not points:
            return {"skipped": "no usable photometry"}
        payload = photometry_payload(
            job["object_id"],
            points,
            instrument_id=instrument_id,
            stream_ids=self.fritz.streams_for(job["survey"]),
            group_ids=job["group_ids"],
        )
        _, result = self.client.call("photometry", "PUT", "/api/photometry", payload=payload)
        return {"points": len(points), "ids": len((result or {}).get("ids") or [])}

    def _post_thumbnail(self, data: JobData, kind: CutoutKind) -> dict[str, Any]:
        stamp = (data.alert.get("cutouts") or {}).get(kind)
        ttype = TTYPES[kind]
        if not stamp:
            log.warning("job %s: no %s cutout; thumbnail skipped", data.job["_id"], kind)
            return {"skipped": f"no {kind} cutout"}
        try:
            png = self._thumbnails.png(data.job["alert_id"], kind, bytes(stamp))
        except ValueError as exc:
            log.warning("job %s: %s thumbnail skipped: %s", data.job["_id"], kind, exc)
            return {"skipped": str(exc)}
        payload = {
            "obj_id": data.job["object_id"],
            "data": base64.b64encode(png).decode("ascii"),
            "ttype": ttype,
        }
        _, result = self.client.call("thumbnail", "POST", "/api/thumbnail", payload=payload)
        return {"id": (result or {}).get("id"), "ttype": ttype}

    def _post_annotations(self, data: JobData) -> dict[str, Any]:
        job = data.job
        path = f"/api/sources/{job['object_id']}/annotations"
        payload = annotation_payload(job, data.alert)
        annotation_id = self._annotation_id(path, payload["origin"])
        if annotation_id is None:
            try:
                _, result = self.client.call("annotations", "POST", path, payload=payload)
                return {"annotation_id": (result or {}).get("annotation_id")}
            except Rejected:
                # Another job of this object (another sender) posted it meanwhile?
                annotation_id = self._annotation_id(path, payload["origin"])
                if annotation_id is None:
                    raise
        # One annotation per origin on SkyPortal: a later alert (or an unrecorded earlier
        # attempt) updates it instead of being refused.
        self.client.call("annotations", "PUT", f"{path}/{annotation_id}", payload=payload)
        return {"annotation_id": annotation_id, "updated": True}

    def _annotation_id(self, path: str, origin: str) -> int | None:
        _, existing = self.client.call("annotations_get", "GET", path)
        same = [a["id"] for a in existing or [] if a.get("origin") == origin]
        return int(same[0]) if same else None

    def _slow_down(self, seconds: float) -> None:
        """Fritz answered 429: claim nothing new for Retry-After seconds (every thread's
        jobs in flight finish their current call and meet the same answer)."""
        log.warning("Fritz asks to slow down (HTTP 429): no new job for %.1f s", seconds)
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)

    def _retry_later(
        self, claim: Claim, error: str, *, timed_out: bool, at_least: float = 0.0
    ) -> None:
        failures = int(claim.job.get("failures", 0))
        delay = min(self.fritz.backoff_max_seconds, self.fritz.backoff_seconds * 2**failures)
        delay *= random.uniform(0.8, 1.0)  # spread retries of many jobs after an outage
        delay = max(delay, at_least)
        if timed_out:
            # Give a slow server time to finish the request we gave up on, so the retry's
            # HEAD/GET check sees its result instead of racing it.
            delay = max(delay, 2 * self.fritz.timeout_seconds)
        log.warning("job %s: %s; retry in %.1f s", claim.job_id, error, delay)
        self._count("retry")
        self.outbox.retry_later(claim, error, delay)

    def _count(self, status: str) -> None:
        POST_JOBS.labels(status=status).inc()
        with self._outcomes_lock:
            self._outcomes[status] += 1

    def _reject(self, claim: Claim, exc: Rejected) -> None:
        self._count("failed")
        self.outbox.fail(claim, str(exc))
        if exc.status not in (401, 403):
            log.error(
                "job %s refused by SkyPortal (%s); kept as failed, `nightjar post --retry-failed` "
                "resends it",
                claim.job_id,
                exc,
            )
        elif self._first_auth_refusal():
            log.error(
                "SkyPortal at %s refused fritz.token (HTTP %d: %s): set NIGHTJAR_FRITZ__TOKEN or "
                "fritz.token_file to a valid token, then run `nightjar post --retry-failed`; "
                "jobs are kept in the outbox as failed",
                self.fritz.url,
                exc.status,
                exc.message,
            )
        else:
            log.debug("job %s: token refused again (HTTP %d)", claim.job_id, exc.status)

    def _first_auth_refusal(self) -> bool:
        """True once: several posting threads meet a bad token at the same moment."""
        with self._outcomes_lock:
            first, self._auth_reported = not self._auth_reported, True
        return first

    def _refresh_gauges(self) -> None:
        if time.monotonic() - self._gauges_at < _GAUGE_PERIOD_SECONDS:
            return
        self._gauges_at = time.monotonic()
        pending = self.outbox.counts().get("pending", 0)
        POST_QUEUE.set(pending)
        oldest = self.outbox.oldest_pending()
        POST_OLDEST.set((utcnow() - oldest).total_seconds() if oldest else 0.0)
        self._summarise(pending)

    def _summarise(self, pending: int | None = None) -> None:
        with self._outcomes_lock:
            outcomes = dict(self._outcomes)
            self._outcomes.clear()
        if outcomes:
            summary = ", ".join(f"{n} {status}" for status, n in sorted(outcomes.items()))
            left = "" if pending is None else f"; {pending} job(s) pending"
            log.info("sender: %s%s", summary, left)
