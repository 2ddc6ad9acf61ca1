"""Filter matches reach the Fritz-like service exactly once, whatever goes wrong in between.

Real FerretDB/MongoDB and the real service (with its test-only fault injection); real ZTF
alerts from ../shared. Each scenario checks the service's write log and state: one candidate
per (alert, filter), one photometry PUT, three thumbnails and one annotation per job.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from nightjar_fritz.server import FritzServer
from pymongo import MongoClient
from pymongo.database import Database

from broker.cli.fritz import fritz_server
from broker.decode import Decoder
from broker.errors import ConfigError
from broker.filters import FilterStage
from broker.post.outbox import JOB_STEPS, Outbox
from broker.post.sender import Sender
from broker.post.skyportal import SkyPortalClient, candidate_payload
from broker.records import Alert, AlertResult, Annotation
from broker.settings import SchemaSettings, Settings
from broker.store import AlertDocument, Store
from tests.helpers import poll_until

TOKEN = "post-test-token"
ALERTS = 6  # the first six of night-20200202: five pass the filter, two share an object
NOT_PASSING = 1105522281015015000
EXTRA_JD = 2458870.5  # a stored light-curve point that is in no packet


@pytest.fixture(autouse=True)
def _own_fritz_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Exports of `nightjar services up` (NIGHTJAR_FRITZ__URL, ...) must not steer these tests."""
    for name in list(os.environ):
        if name.startswith(("NIGHTJAR_FRITZ__", "NIGHTJAR_FILTERS__")):
            monkeypatch.delenv(name)


def annotated(alert: Alert) -> AlertResult:
    btsbot = 0.2 if alert.candid == NOT_PASSING else 0.9
    return AlertResult(
        alert.candid,
        annotations=(
            Annotation("btsbot", "v1.0.1", btsbot),
            Annotation("braai", "d6_m9", float(alert.candidate["drb"])),
        ),
    )


@pytest.fixture
def alert_docs(shared_dir: Path, mongo_db: Database[dict[str, Any]]) -> list[AlertDocument]:
    """Real alerts written by the pipeline's store stage: alert documents and light curves."""
    paths = sorted((shared_dir / "ztf" / "alerts" / "night-20200202").glob("*.avro"))[:ALERTS]
    decoder = Decoder(SchemaSettings(), max_message_bytes=2**26)
    alerts = [decoder.decode(path.read_bytes()) for path in paths]
    docs = Store(mongo_db).write(alerts, [annotated(alert) for alert in alerts], {}).docs
    extra = {"jd": EXTRA_JD, "fid": 1, "magpsf": None, "diffmaglim": 20.1, "candid": None}
    mongo_db["objects"].update_one({"_id": "ztf:ZTF20aajcdad"}, {"$push": {"lightcurve": extra}})
    return docs


@pytest.fixture
def fritz_db(
    mongo_client: MongoClient[dict[str, object]], mongo_db: Database[dict[str, Any]]
) -> Iterator[Database[dict[str, Any]]]:
    database = mongo_client[f"{mongo_db.name}_fritz"]
    yield database
    mongo_client.drop_database(database.name)


@dataclass
class Stack:
    """The service, the broker database and the settings a sender needs."""

    mongo_uri: str
    db: Database[dict[str, Any]]
    fritz_db: Database[dict[str, Any]]
    port: int = 0
    # Generous by default: on a loaded 2-core CI machine a healthy call can take over a
    # second, and a spurious timeout re-sends an (idempotent) PUT the tests count.
    timeout: float = 3.0
    concurrency: int = 4  # jobs in flight per sender (every test runs them concurrently)
    server: FritzServer | None = None
    senders: list[tuple[threading.Thread, threading.Event]] = field(default_factory=list)

    def settings(self, token: str = TOKEN) -> Settings:
        server = {"port": self.port, "database": self.fritz_db.name, "tokens": [TOKEN],
                  "faults_enabled": True}  # fmt: skip
        fritz = {"url": f"http://127.0.0.1:{self.port}", "token": token,
                 "timeout_seconds": self.timeout, "lease_seconds": 8 * self.timeout,
                 "backoff_seconds": 0.05, "backoff_max_seconds": 0.2,
                 "poll_seconds": 0.05, "concurrency": self.concurrency,
                 "server": server}  # fmt: skip
        bts = {"name": "bts", "fritz_filter_id": 1, "group_ids": [1],
               "query": {"annotations.btsbot.score": {"$gte": 0.5}}}  # fmt: skip
        return Settings.model_validate(
            {
                "mongo": {"uri": self.mongo_uri, "database": self.db.name},
                "fritz": fritz,
                "filters": {"definitions": [bts]},
            }
        )

    def start_server(self) -> None:
        self.server = fritz_server(self.settings(), host="127.0.0.1", port=self.port).start()
        self.port = int(self.server.url.rsplit(":", 1)[1])

    def stop_server(self) -> None:
        assert self.server is not None
        self.server.stop()
        self.server = None

    def faults(self, **plan: Any) -> None:
        response = requests.post(
            f"http://127.0.0.1:{self.port}/_test/faults",
            json=plan,
            headers={"Authorization": f"token {TOKEN}"},
            timeout=5,
        )
        response.raise_for_status()

    def filter_batch(self, docs: Sequence[Mapping[str, Any]]) -> int:
        return len(FilterStage.from_settings(self.settings(), self.db).run(docs))

    def start_sender(self, token: str = TOKEN) -> threading.Event:
        stop = threading.Event()
        sender = Sender.from_settings(self.settings(token))
        thread = threading.Thread(target=sender.run, args=(stop,), daemon=True)
        thread.start()
        self.senders.append((thread, stop))
        return stop

    def stop_senders(self) -> None:
        for thread, stop in self.senders:
            stop.set()
            thread.join(timeout=30)
            assert not thread.is_alive(), "sender did not stop"
        self.senders.clear()

    def counts(self) -> dict[str, int]:
        return Outbox(self.db).counts()

    def wait_all(self, status: str, jobs: int, timeout: float = 60) -> None:
        poll_until(
            lambda: self.counts().get(status, 0) == jobs,
            timeout=timeout,
            message=f"{jobs} outbox jobs {status}",
        )

    def writes(self) -> list[dict[str, Any]]:
        return list(self.fritz_db["api_log"].find())


@pytest.fixture
def stack(
    mongo_uri: str, mongo_db: Database[dict[str, Any]], fritz_db: Database[dict[str, Any]]
) -> Iterator[Stack]:
    stack = Stack(mongo_uri, mongo_db, fritz_db)
    stack.start_server()
    yield stack
    stack.stop_senders()
    if stack.server is not None:
        stack.stop_server()


def assert_landed_once(
    stack: Stack, *, annotation_puts_allowed: int = 0, upserts_resent_allowed: int = 0
) -> None:
    """Every post landed once. `upserts_resent_allowed`: photometry/thumbnail calls cut off by
    a stopped service have an unknown outcome and are re-sent by design (they are upserts);
    assert_object_state still requires exactly one stored copy of each."""
    jobs = list(stack.db["outbox"].find())
    assert jobs and all(job["status"] == "done" for job in jobs), [j["last_error"] for j in jobs]
    writes = stack.writes()

    def count(method: str, path: str) -> Counter[Any]:
        return Counter(w.get("key") for w in writes if w["method"] == method and path in w["path"])

    assert count("POST", "/api/candidates") == Counter({job["candid"]: 1 for job in jobs})
    retries = [(job["_id"], job["failures"], job["last_error"]) for job in jobs if job["failures"]]
    photometry_puts = sum(count("PUT", "/api/photometry").values())
    assert len(jobs) <= photometry_puts <= len(jobs) + upserts_resent_allowed, retries
    thumbnails = count("POST", "/api/thumbnail")
    assert set(thumbnails) == {"new", "ref", "sub"}
    assert all(n >= len(jobs) for n in thumbnails.values()), thumbnails
    assert sum(thumbnails.values()) - 3 * len(jobs) <= upserts_resent_allowed, thumbnails
    by_object = Counter(job["object_id"] for job in jobs)
    posts = [w["obj_id"] for w in writes if w["method"] == "POST" and "/annotations" in w["path"]]
    assert Counter(posts) == Counter(dict.fromkeys(by_object, 1)), "one annotation per origin"
    puts = [w for w in writes if w["method"] == "PUT" and "/annotations" in w["path"]]
    assert len(puts) - (len(jobs) - len(by_object)) <= annotation_puts_allowed
    for job in jobs:
        assert len(Outbox(stack.db).steps_done(job["_id"])) == 6
        assert_object_state(stack, job["object_id"], job["candid"])


def assert_object_state(stack: Stack, object_id: str, candid: int) -> None:
    headers = {"Authorization": f"token {TOKEN}"}
    url = f"http://127.0.0.1:{stack.port}/api/candidates/{object_id}?includePhotometry=true"
    data = requests.get(url, headers=headers, timeout=10).json()["data"]
    assert (1, candid) in {(p["filter_id"], p["passing_alert_id"]) for p in data["passing_alerts"]}
    assert sorted(t["type"] for t in data["thumbnails"]) == ["new", "ref", "sub"]
    (annotation,) = data["annotations"]
    assert annotation["origin"] == "nightjar:bts" and annotation["data"]["btsbot"] == 0.9
    mjds = [p["mjd"] for p in data["photometry"]]
    assert len(mjds) == len(set(mjds)) > 1
    if object_id == "ZTF20aajcdad":
        assert EXTRA_JD - 2400000.5 in mjds, "the stored light curve is posted too"


def test_matches_are_posted_once_and_batches_replay_safely(
    stack: Stack, alert_docs: list[AlertDocument]
) -> None:
    assert stack.filter_batch(alert_docs) == ALERTS - 1
    assert stack.filter_batch(alert_docs) == ALERTS - 1  # a replayed batch: same matches
    assert stack.counts() == {"pending": ALERTS - 1}  # ... and no second job
    stack.start_sender()
    stack.wait_all("done", ALERTS - 1)
    assert_landed_once(stack)


def test_server_errors_are_retried(stack: Stack, alert_docs: list[AlertDocument]) -> None:
    stack.filter_batch(alert_docs)
    stack.faults(mode="error", status=500, count=7)
    stack.start_sender()
    stack.wait_all("done", ALERTS - 1)
    assert_landed_once(stack)
    assert sum(job["failures"] for job in stack.db["outbox"].find()) >= 7


def test_stalled_requests_time_out_and_still_land_once(
    stack: Stack, alert_docs: list[AlertDocument]
) -> None:
    # The service answers after the sender gave up (1 s) but still stores the post: the
    # retry must find it (HEAD/GET) rather than post it again.
    stack.timeout = 1.0
    stack.filter_batch(alert_docs)
    stack.faults(
        mode="stall", seconds=2.5, count=2, methods=["POST"], path_prefix="/api/candidates"
    )
    stack.start_sender()
    poll_until(lambda: stack.counts().get("done", 0) >= 2, timeout=60, message="two jobs done")
    stack.faults(mode="stall", seconds=2.5, count=1, methods=["POST"], path_prefix="/api/sources")
    stack.wait_all("done", ALERTS - 1)
    assert_landed_once(stack, annotation_puts_allowed=1)
    assert sum(job["failures"] for job in stack.db["outbox"].find()) == 3  # the three stalls
    results = [step["result"] for step in stack.db["outbox_steps"].find({"step": "candidate"})]
    assert sum(result == {"already_posted": True} for result in results) == 2


def test_service_stopped_and_restarted(
    stack: Stack, alert_docs: list[AlertDocument], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="broker.health")
    # One job at a time, each thumbnail slowed: all five jobs take seconds, so the service
    # is stopped with work left (at full speed they can finish before it goes down).
    stack.concurrency = 1
    stack.filter_batch(alert_docs)
    stack.faults(mode="stall", seconds=0.3, count=15, path_prefix="/api/thumbnail")
    stack.start_sender()
    poll_until(lambda: len(stack.writes()) >= 8, timeout=30, message="some posts landed")
    stack.stop_server()
    poll_until(
        lambda: any("cannot connect" in (j["last_error"] or "") for j in stack.db["outbox"].find()),
        timeout=30,
        message="the sender noticed the service is down",
    )
    stack.start_server()
    stack.wait_all("done", ALERTS - 1)
    assert_landed_once(stack, upserts_resent_allowed=1)
    # The outage is told once when it starts and once when it ends (broker.health.Outage).
    said = [r.getMessage() for r in caplog.records if r.name == "broker.health"]
    assert sum(m.startswith("fritz unreachable") for m in said) == 1, said
    assert sum(m.startswith("fritz reachable again") for m in said) == 1, said


def test_sender_restarted_mid_queue(stack: Stack, alert_docs: list[AlertDocument]) -> None:
    stack.filter_batch(alert_docs)
    stack.start_sender()
    poll_until(lambda: len(stack.writes()) >= 9, timeout=30, message="some posts landed")
    stack.stop_senders()
    assert stack.counts().get("pending", 0) >= 1, "stopped with work left"
    stack.start_sender()
    stack.wait_all("done", ALERTS - 1)
    assert_landed_once(stack)


def test_two_senders_share_the_queue(stack: Stack, alert_docs: list[AlertDocument]) -> None:
    # FerretDB's findAndModify is not atomic: both senders often "claim" the same job; the
    # claim tokens must let only one of them post it.
    stack.filter_batch(alert_docs)
    stack.start_sender()
    stack.start_sender()
    stack.wait_all("done", ALERTS - 1)
    assert_landed_once(stack)


def test_concurrent_senders_post_each_job_in_order_once(
    stack: Stack, alert_docs: list[AlertDocument]
) -> None:
    # Three senders of four posting threads each race for five jobs (two of one object).
    stack.filter_batch(alert_docs)
    for _ in range(3):
        stack.start_sender()
    stack.wait_all("done", ALERTS - 1)
    assert_landed_once(stack)
    for job in stack.db["outbox"].find():
        steps = {d["step"]: d["at"] for d in stack.db["outbox_steps"].find({"job": job["_id"]})}
        assert [steps[step] for step in JOB_STEPS] == sorted(steps.values()), job["_id"]
    # SkyPortal needs the candidate (which creates the object) before anything else of it.
    first: dict[tuple[str, str], Any] = {}
    for write in sorted(stack.writes(), key=lambda w: w["at"]):
        kind = "candidate" if write["path"] == "/api/candidates" else "other"
        first.setdefault((write["obj_id"], kind), write["at"])
    for (obj_id, kind), at in first.items():
        if kind == "other":
            assert first[(obj_id, "candidate")] <= at, obj_id


def test_posting_threads_reuse_their_connections(
    stack: Stack, alert_docs: list[AlertDocument]
) -> None:
    stack.concurrency = 2
    stack.filter_batch(alert_docs)
    sender = Sender.from_settings(stack.settings())
    stop = threading.Event()
    thread = threading.Thread(target=sender.run, args=(stop,), daemon=True)
    thread.start()
    try:
        stack.wait_all("done", ALERTS - 1)
        pools = sender.client.session.get_adapter(sender.fritz.url).poolmanager.pools
        # urllib3 refuses to iterate its pool container itself: .keys() is the way in.
        (pool,) = [pools[key] for key in pools.keys()]  # noqa: SIM118 (one host: one pool)
        assert len(stack.writes()) >= 6 * (ALERTS - 1)  # and the HEAD/GET calls besides
        # Every connection opened is kept alive and reused: no more than the threads.
        assert 1 <= pool.num_connections <= 2, f"{pool.num_connections} connections"
    finally:
        stop.set()
        thread.join(timeout=30)
    assert_landed_once(stack)


def test_crashed_sender_job_is_resumed_after_its_lease(
    stack: Stack, alert_docs: list[AlertDocument]
) -> None:
    first, rest = alert_docs[1:2], alert_docs[2:]
    stack.filter_batch(first)
    outbox = Outbox(stack.db)
    crashed = outbox.claim("crashed-sender", lease_seconds=2.0)
    assert crashed is not None
    # It made the candidate call, then died before recording it.
    alert = stack.db["alerts"].find_one({"_id": crashed.job["alert_id"]})
    assert alert is not None
    client = SkyPortalClient(f"http://127.0.0.1:{stack.port}", TOKEN, 5.0)
    client.call(
        "candidates", "POST", "/api/candidates", payload=candidate_payload(crashed.job, alert, "x")
    )
    client.close()
    stack.filter_batch(rest)
    stack.start_sender()
    stack.wait_all("done", ALERTS - 1)
    assert_landed_once(stack)
    resumed = stack.db["outbox"].find_one({"_id": crashed.job_id})
    assert resumed is not None and resumed["attempts"] >= 2
    step = stack.db["outbox_steps"].find_one({"_id": f"{crashed.job_id}|candidate"})
    assert step is not None and step["result"] == {"already_posted": True}


@pytest.mark.parametrize(("token", "status"), [("wrong-token", 403), ("two words", 401)])
def test_bad_token_keeps_jobs_and_says_so_once(
    stack: Stack,
    alert_docs: list[AlertDocument],
    caplog: pytest.LogCaptureFixture,
    token: str,
    status: int,
) -> None:
    stack.filter_batch(alert_docs)
    with caplog.at_level(logging.INFO, logger="broker.post.sender"):
        stack.start_sender(token=token)
        stack.wait_all("failed", ALERTS - 1)
        stack.stop_senders()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert "fritz.token" in errors[0].getMessage() and f"HTTP {status}" in errors[0].getMessage()
    assert "--retry-failed" in errors[0].getMessage()
    assert stack.writes() == []
    assert all(f"HTTP {status}" in j["last_error"] for j in stack.db["outbox"].find())
    assert Outbox(stack.db).retry_failed() == ALERTS - 1
    stack.start_sender()
    stack.wait_all("done", ALERTS - 1)
    assert_landed_once(stack)


def test_sender_refuses_to_start_without_a_token(stack: Stack) -> None:
    settings = stack.settings()
    no_token = settings.model_copy(
        update={"fritz": settings.fritz.model_copy(update={"token": None})}
    )
    with pytest.raises(ConfigError, match="NIGHTJAR_FRITZ__TOKEN"):
        Sender.from_settings(no_token)
