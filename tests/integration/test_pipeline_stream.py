"""`nightjar run` on simulated ZTF and Rubin streams: pipelined batches, back-pressure, and a
database that cannot be reached; real Kafka and MongoDB-compatible server.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from confluent_kafka.admin import AdminClient
from pymongo.database import Database

from broker.tools.simulate import simulate
from tests.helpers import poll_until
from tests.pipeline_helpers import (
    Rig,
    committed,
    free_port,
    light_curve_duplicates,
    output_record,
    produce,
    read_topic,
)

Db = Database[dict[str, Any]]


@pytest.fixture
def rig(make_rig: Any) -> Iterator[Rig]:
    rig: Rig = make_rig("pipeline", partitions=2)
    yield rig


def test_mixed_surveys_in_pipelined_batches(
    rig: Rig, mongo_db: Db, kafka_admin: AdminClient
) -> None:
    ztf = list(simulate("ztf", 150, seed=31))
    lsst = list(simulate("lsst", 60, seed=31))
    mixed = [*ztf, *lsst]
    mixed.sort(key=lambda alert: alert.candid % 7)  # interleaved, deterministically
    produce(rig.bootstrap, rig.topics[0], (alert.data for alert in mixed), spread=2)
    # Small batches, several in flight: each reads its history before the previous is stored.
    finished = rig.run(NIGHTJAR_DISPATCH__BATCH_SIZE="20", NIGHTJAR_DISPATCH__MAX_IN_FLIGHT="4")
    assert len(finished.lines("broker.pipeline: batch:")) >= 10

    assert mongo_db["alerts"].count_documents({}) == len(mixed)
    for survey, alerts in (("ztf", ztf), ("lsst", lsst)):
        stored = mongo_db["alerts"].distinct("candid", {"survey": survey})
        assert sorted(stored) == sorted(alert.candid for alert in alerts)
        published = [
            output_record(m.value) for m in read_topic(rig.bootstrap, rig.output_topic(survey))
        ]
        assert len(published) == len(alerts)
        assert all(record["nightjar"]["broker"].startswith("nightjar ") for record in published)
    assert read_topic(rig.bootstrap, rig.dead_letter_topic) == []
    assert mongo_db["rejected"].count_documents({}) == 0
    assert sum(committed(kafka_admin, rig.group_id, rig.topics[0], 2).values()) == len(mixed)
    assert_light_curves_have_no_duplicate_point(mongo_db)


def assert_light_curves_have_no_duplicate_point(db: Db) -> None:
    assert light_curve_duplicates(db) == {}
    spans = [(d["first_alert_jd"], d["last_alert_jd"]) for d in db["objects"].find()]
    assert sum(first < last for first, last in spans) >= 5  # several alerts merged


def test_back_pressure_pauses_reading_and_loses_nothing(rig: Rig, mongo_db: Db) -> None:
    alerts = list(simulate("ztf", 60, seed=32))
    produce(rig.bootstrap, rig.topics[0], (alert.data for alert in alerts))
    port = free_port()
    process = rig.start(
        exit_when_idle=4.0,
        NIGHTJAR_DISPATCH__MAX_IN_FLIGHT="1",
        NIGHTJAR_DISPATCH__BATCH_SIZE="5",
        NIGHTJAR_DISPATCH__BATCH_SECONDS="0.1",
        NIGHTJAR_METRICS__ENABLED="true",
        NIGHTJAR_METRICS__PORT=str(port),
    )
    seen: dict[str, set[float]] = {"paused": set(), "in_flight": set()}

    def paused_seen() -> bool:
        text = scrape(f"http://127.0.0.1:{port}/metrics")
        for name, metric in (("paused", "nightjar_consume_paused"),
                             ("in_flight", "nightjar_dispatch_in_flight_batches")):  # fmt: skip
            found = re.search(rf"^{metric} (\S+)$", text, re.MULTILINE)
            if found:
                seen[name].add(float(found.group(1)))
        return 1.0 in seen["paused"] or not process.running()

    poll_until(paused_seen, timeout=60, interval=0.02, message="the consumer paused")
    assert 1.0 in seen["paused"], f"never paused; log:\n{process.log}"
    assert max(seen["in_flight"]) <= 1.0
    finished = process.wait(120)
    assert finished.returncode == 0, finished.log
    assert len(finished.lines("broker.pipeline: batch:")) >= 12
    assert sorted(mongo_db["alerts"].distinct("candid")) == sorted(a.candid for a in alerts)


def scrape(url: str) -> str:
    try:
        return requests.get(url, timeout=1).text
    except requests.RequestException:
        return ""  # not listening yet


def test_unreachable_database_stops_the_broker_with_an_actionable_error(rig: Rig) -> None:
    process = rig.start(
        exit_when_idle=1.0,
        NIGHTJAR_MONGO__URI="mongodb://127.0.0.1:9",
        NIGHTJAR_MONGO__TIMEOUT_MS="500",
    )
    finished = process.wait(60)
    assert finished.returncode == 1, finished.log
    assert "nightjar: MongoDB at 127.0.0.1:9 is not usable" in finished.log
    assert "Traceback" not in finished.log
