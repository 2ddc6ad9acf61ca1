"""The outbox on the real MongoDB-compatible server: claims, leases, progress, filters."""

from __future__ import annotations

import os
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY
from pymongo.database import Database

from broker.filters import FilterStage
from broker.post.outbox import Outbox, utcnow
from broker.records import FilterMatch
from broker.settings import DEFAULT_CONFIG, load_settings
from tests.helpers import poll_until


@pytest.fixture(autouse=True)
def _own_fritz_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Exports of `nightjar services up` (NIGHTJAR_FRITZ__URL, ...) must not steer these tests."""
    for name in list(os.environ):
        if name.startswith(("NIGHTJAR_FRITZ__", "NIGHTJAR_FILTERS__")):
            monkeypatch.delenv(name)


def matches(count: int, filter_name: str = "bts") -> list[FilterMatch]:
    return [
        FilterMatch(filter_name, f"ztf:{100 + i}", 100 + i, f"ZTF20obj{i}", "ztf", 1, (1,))
        for i in range(count)
    ]


def test_enqueue_is_idempotent_and_counted(mongo_db: Database[dict[str, Any]]) -> None:
    outbox = Outbox(mongo_db)
    outbox.ensure_indexes()
    assert outbox.enqueue(matches(5)) == 5
    assert outbox.enqueue(matches(7)) == 2  # a replayed, larger batch adds only what is new
    assert outbox.enqueue([]) == 0
    assert outbox.counts() == {"pending": 7}
    job = mongo_db["outbox"].find_one({"_id": "ztf:100:bts"})
    assert job is not None and job["status"] == "pending" and job["group_ids"] == [1]
    # Candids are unique within a survey only: the same candid of another survey is its own job.
    turbo = FilterMatch("bts", "turbo:100", 100, "TURBO1", "turbo", 1, (1,))
    assert outbox.enqueue([turbo]) == 1
    assert outbox.counts() == {"pending": 8}
    oldest = outbox.oldest_pending()
    assert oldest is not None and utcnow() - oldest < timedelta(minutes=1)


def test_concurrent_claims_are_exclusive(mongo_db: Database[dict[str, Any]]) -> None:
    # FerretDB's findAndModify reads then writes: without the claim tokens, six threads
    # double-claim most of these jobs.
    outbox = Outbox(mongo_db)
    outbox.enqueue(matches(40))
    claimed: list[str] = []
    lock = threading.Lock()

    def claimer(name: str) -> None:
        misses = 0
        while misses < 5:
            claim = outbox.claim(name, lease_seconds=60)
            if claim is None:
                misses += 1
                continue
            with lock:
                claimed.append(claim.job_id)

    threads = [threading.Thread(target=claimer, args=(f"sender{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert Counter(claimed) == Counter({f"ztf:{100 + i}:bts": 1 for i in range(40)})


def test_lease_expiry_hands_the_job_to_the_next_sender(mongo_db: Database[dict[str, Any]]) -> None:
    outbox = Outbox(mongo_db)
    outbox.enqueue(matches(1))
    first = outbox.claim("crashed", lease_seconds=0.5)
    assert first is not None and first.generation == 1
    assert outbox.claim("other", lease_seconds=10) is None  # held
    second = poll_until(
        lambda: outbox.claim("other", lease_seconds=10), timeout=10, message="lease expiry"
    )
    assert second is not None
    assert second.job_id == first.job_id and second.generation == 2
    outbox.record_step(first, "candidate", {"ids": [1]})
    outbox.record_step(second, "candidate", {"ids": [2]})  # already recorded: kept as is
    assert outbox.steps_done(first.job_id)["candidate"]["result"] == {"ids": [1]}
    outbox.complete(second)
    job = mongo_db["outbox"].find_one({"_id": first.job_id})
    assert job is not None and job["status"] == "done" and set(job["progress"]) == {"candidate"}


def test_overwritten_attempts_counter_skips_dead_generations(
    mongo_db: Database[dict[str, Any]],
) -> None:
    outbox = Outbox(mongo_db)
    outbox.enqueue(matches(1))
    past = datetime.now(UTC) - timedelta(minutes=5)
    mongo_db["outbox_claims"].insert_one(
        {"_id": "ztf:100:bts#1", "job": "ztf:100:bts", "expires_at": past}
    )
    claim = outbox.claim("sender", lease_seconds=30)
    assert claim is not None and claim.generation == 2
    job = mongo_db["outbox"].find_one({"_id": "ztf:100:bts"})
    assert job is not None and job["attempts"] == 2


def test_live_token_means_someone_else_holds_the_job(mongo_db: Database[dict[str, Any]]) -> None:
    outbox = Outbox(mongo_db)
    outbox.enqueue(matches(1))
    future = datetime.now(UTC) + timedelta(minutes=5)
    mongo_db["outbox_claims"].insert_one(
        {"_id": "ztf:100:bts#1", "job": "ztf:100:bts", "expires_at": future}
    )
    assert outbox.claim("sender", lease_seconds=30) is None


def test_retry_later_fail_and_retry_failed(mongo_db: Database[dict[str, Any]]) -> None:
    outbox = Outbox(mongo_db)
    outbox.enqueue(matches(2))
    first = outbox.claim("s", lease_seconds=30)
    assert first is not None
    outbox.retry_later(first, "HTTP 503", delay_seconds=60)
    second = outbox.claim("s", lease_seconds=30)
    assert second is not None and second.job_id != first.job_id
    assert outbox.claim("s", lease_seconds=30) is None  # the first is not due for a minute
    outbox.fail(second, "HTTP 401: bad token")
    assert outbox.counts() == {"pending": 1, "failed": 1}
    retried = mongo_db["outbox"].find_one({"_id": first.job_id})
    assert retried is not None and retried["failures"] == 1 and retried["last_error"] == "HTTP 503"
    assert outbox.retry_failed() == 1
    again = outbox.claim("s", lease_seconds=30)
    assert again is not None and again.job_id == second.job_id and again.generation == 2


def test_give_back_makes_the_job_due_at_once(mongo_db: Database[dict[str, Any]]) -> None:
    outbox = Outbox(mongo_db)
    outbox.enqueue(matches(1))
    claim = outbox.claim("stopping", lease_seconds=30)
    assert claim is not None
    outbox.give_back(claim)
    again = outbox.claim("next", lease_seconds=30)
    assert again is not None and again.generation == 2


def test_shipped_filters_select_the_right_alerts(mongo_db: Database[dict[str, Any]]) -> None:
    def alert(candid: int, **candidate: Any) -> dict[str, Any]:
        base = {"magpsf": 18.0, "isdiffpos": "t", "sgscore1": 0.1, "distpsnr1": 0.5}
        return {
            "_id": f"ztf:{candid}", "candid": candid, "objectId": f"ZTF{candid}", "survey": "ztf",
            "candidate": {**base, **candidate},
            "annotations": {"btsbot": {"score": 0.9}, "tails": {"score": 0.1}},
        }  # fmt: skip

    docs = [
        alert(1),  # passes BTS
        alert(2, magpsf=19.5),  # too faint
        alert(3, isdiffpos="f"),  # negative subtraction
        alert(4, sgscore1=0.99, distpsnr1=0.3),  # a PS1 star
        alert(5, sgscore1=0.99, distpsnr1=5.0),  # star-like, but far away: passes
        alert(6, isdiffpos="1"),  # old packets spell positive '1'
        {**alert(7), "annotations": {"btsbot": {"score": 0.2}, "tails": {"score": 0.93}}},
        {**alert(8), "annotations": {"tails": {"score": 0.95}}},  # BTSbot skipped it
        alert(9, magpsf=None),  # a NaN magnitude, stored as null
    ]
    stage = FilterStage.from_settings(load_settings(DEFAULT_CONFIG), mongo_db)
    found = stage.run(docs)  # matched in-process: nothing is read from `alerts`
    by_filter = {name: sorted(m.candid for m in found if m.filter == name) for name in stage.names}
    assert by_filter == {"bts": [1, 5, 6], "comets": [7, 8]}
    assert {m.fritz_filter_id for m in found if m.filter == "comets"} == {2}
    match = next(m for m in found if m.candid == 5)
    assert (match.alert_id, match.object_id, match.survey, match.group_ids) == (
        "ztf:5",
        "ZTF5",
        "ztf",
        (1,),
    )
    jobs = {job["_id"]: job for job in mongo_db["outbox"].find()}
    assert set(jobs) == {"ztf:1:bts", "ztf:5:bts", "ztf:6:bts", "ztf:7:comets", "ztf:8:comets"}
    assert (
        jobs["ztf:7:comets"]["alert_id"] == "ztf:7" and jobs["ztf:7:comets"]["status"] == "pending"
    )
    assert len(stage.run(docs)) == 5 and Outbox(mongo_db).counts() == {"pending": 5}  # replay
    assert stage.run([]) == []


def test_a_filter_failing_on_a_batch_loses_only_that_batch(
    mongo_db: Database[dict[str, Any]],
) -> None:
    stage = FilterStage.from_settings(load_settings(DEFAULT_CONFIG), mongo_db)
    errors = REGISTRY.get_sample_value("nightjar_filter_errors_total", {"filter": "comets"}) or 0
    broken = {"_id": "ztf:1", "annotations": {"tails": {"score": 0.9}}}  # no candid, objectId
    assert stage.run([broken]) == []
    after = REGISTRY.get_sample_value("nightjar_filter_errors_total", {"filter": "comets"})
    assert after == errors + 1
    assert Outbox(mongo_db).counts() == {}
