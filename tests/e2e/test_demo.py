"""`nightjar demo`'s core on the real Kafka and MongoDB-compatible server, small N.

What a newcomer checks after `make demo`: alert documents in MongoDB, annotated messages on
the output topic, the summary table, the gallery PNG, and the candidates posted to the
Fritz-like API (an in-process one here, with its own database).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastavro
import pytest
import requests
from confluent_kafka import Consumer, TopicPartition
from pymongo import MongoClient

from broker.cli.fritz import fritz_server
from broker.post.outbox import Outbox
from broker.post.thumbnails import PNG_SIGNATURE, png_size
from broker.settings import Settings
from broker.surveys import surveys
from broker.tools.demo.main import DemoOptions, DemoResult, forget, run_demo
from broker.tools.demo.report import format_report
from broker.tools.demo.where import where_to_look
from broker.tools.models.inventory import model_inventory
from broker.tools.simulate import simulate

REPO = Path(__file__).resolve().parents[2]
REFERENCE = REPO.parent / "shared" / "reference"
TOKEN = "demo-test-token"
ZTF, LSST = 40, 20
RUBIN_SAMPLE = 25409136044802067  # ../shared/reference/lsst/alerts, schema 7.1
BRIGHT = 17.2  # the test filter: a handful of simulated alerts (and real ones) pass it


@pytest.fixture(autouse=True)
def _own_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Exports of `nightjar services up` or a developer's shell must not steer this test."""
    for name in list(os.environ):
        if name.startswith("NIGHTJAR_") and not name.startswith("NIGHTJAR_TEST_"):
            monkeypatch.delenv(name)


def demo_config(kafka: str, mongo: str, fritz_db: str, port: int) -> Settings:
    bright = {"name": "bright", "fritz_filter_id": 1, "group_ids": [1],
              "query": {"candidate.magpsf": {"$lt": BRIGHT}}}  # fmt: skip
    return Settings.model_validate(
        {
            "kafka": {"bootstrap_servers": kafka},
            "mongo": {"uri": mongo},
            "models": {"dir": str(REPO / ".nightjar" / "models"), "provider": "cpu"},
            "schemas": {"lsst_schema_dir": str(REPO / "schemas" / "lsst")},
            "metrics": {"enabled": False},
            "filters": {"definitions": [bright]},
            "fritz": {
                "url": f"http://127.0.0.1:{port}",
                "token": TOKEN,
                "poll_seconds": 0.05,
                "server": {"port": port, "database": fritz_db, "tokens": [TOKEN]},
            },
        }
    )


@pytest.fixture
def demo_run(
    kafka_bootstrap: str,
    mongo_uri: str,
    mongo_client: MongoClient[dict[str, Any]],
    tmp_path: Path,
) -> Iterator[tuple[DemoResult, str]]:
    fritz_db = f"nightjar_demo_test_fritz_{os.getpid()}_{tmp_path.name[-8:]}".replace("-", "_")
    server = fritz_server(demo_config(kafka_bootstrap, mongo_uri, fritz_db, 0)).start()
    port = int(server.url.rsplit(":", 1)[1])
    settings = demo_config(kafka_bootstrap, mongo_uri, fritz_db, port)
    options = DemoOptions(
        ztf=ZTF,
        lsst=LSST,
        reference=REFERENCE if REFERENCE.is_dir() else None,
        state_dir=tmp_path / "demo",
        start_services=False,
        fetch_models=False,
        serve_metrics=False,
        progress=False,
        post_timeout_s=180,
    )
    result: DemoResult | None = None
    try:
        result = run_demo(settings, options, say=lambda line: None)
        yield result, server.url
    finally:
        server.stop()
        mongo_client.drop_database(fritz_db)
        if result is not None:
            forget(result.settings, result.names)


def test_demo_fills_mongodb_kafka_the_table_the_gallery_and_fritz(
    demo_run: tuple[DemoResult, str], mongo_client: MongoClient[dict[str, Any]]
) -> None:
    result, fritz_url = demo_run
    names, report = result.names, result.report
    db = mongo_client[names.database]
    real = REFERENCE.is_dir()

    # MongoDB: every replayed message is stored or rejected, and the table says the same.
    stored = {s: db["alerts"].count_documents({"survey": s}) for s in surveys()}
    rejected = db["rejected"].count_documents({})
    assert sum(result.produced.values()) == sum(stored.values()) + rejected
    # A few of each other survey (simulated, plus the real samples): all stored, all shown.
    for survey in ("winter", "pgir", "turbo", "decam"):
        assert stored[survey] == result.produced[names.input_topic(survey)] >= 5, survey
    simulated = [alert.candid for alert in simulate("ztf", ZTF, seed=0)]
    assert db["alerts"].count_documents({"candid": {"$in": simulated}}) == ZTF
    simulated_lsst = [alert.candid for alert in simulate("lsst", LSST, seed=0)]
    assert db["alerts"].count_documents({"candid": {"$in": simulated_lsst}}) == LSST
    rows = {row.survey: row for row in report.surveys}
    assert {s: rows[s].stored for s in rows} == stored
    assert rows["ztf"].read == result.produced[names.ztf_topic]
    assert rows["lsst"].read == result.produced[names.lsst_topic]
    assert sum(sum(row.rejected.values()) for row in report.surveys) == rejected
    if real:  # the schema 1.x samples have no objectId: rejected with a reason, not crashed
        assert rows["ztf"].rejected.get("missing_field", 0) >= 1
        # The real Rubin alert (schema 7.1) is read with the reference folder's schemas.
        rubin = db["alerts"].find_one({"survey": "lsst", "candid": RUBIN_SAMPLE})
        assert rubin is not None and rubin["schema_version"] == "7.1"
        assert rubin["annotations"]["reliability"]["score"] == pytest.approx(0.8079, abs=1e-4)

    # Kafka: one annotated message per stored alert on the output topic, readable as Avro.
    assert rows["ztf"].published == stored["ztf"] and rows["lsst"].published == stored["lsst"]
    assert all(rows[s].published == rows[s].read == stored[s] for s in ("winter", "decam"))
    record = first_record(result.settings, names.output_topic("ztf"))
    doc = db["alerts"].find_one({"_id": f"ztf:{record['candid']}"})
    assert doc is not None and doc["objectId"] == record["objectId"]
    scored = {entry["model"]: entry["score"] for entry in record["nightjar"]["scores"]}
    for model, annotation in doc["annotations"].items():
        assert scored[model] == pytest.approx(annotation["score"], abs=1e-6)

    # Models: installed ones scored the ZTF alerts; the table names any that are missing.
    installed, missing = model_inventory(result.settings)
    text = format_report(report)
    for model in installed:  # every simulated alert has every installed model's score
        query = {"candid": {"$in": simulated}, f"annotations.{model}": {"$exists": True}}
        assert db["alerts"].count_documents(query) == ZTF, model
    for model in missing:
        assert f"{model}" in text and "not installed" in text
    if "btsbot" in installed:
        assert report.ranked_by == "btsbot" and len(report.top) == 5
        assert len({c.object_id for c in report.top}) == 5  # best alert of five objects
        best = db["alerts"].find({"survey": "ztf", "annotations.btsbot.score": {"$gte": 0}})
        assert report.top[0].scores["btsbot"] == max(
            d["annotations"]["btsbot"]["score"] for d in best
        )
        assert "Top 5 ZTF candidates by btsbot score" in text
        assert report.top[0].object_id in text and str(report.top[0].candid) in text

    # Filter -> filter topic and outbox -> posted to the Fritz-like API.
    bright = db["alerts"].count_documents({"candidate.magpsf": {"$lt": BRIGHT}})
    assert bright >= 1
    assert report.filter_matches == {"bright": bright}
    assert report.outbox == {"bright": {"done": bright}}  # 0 unposted: none pending or failed
    assert Outbox(db).counts() == {"done": bright}
    listed = requests.get(
        f"{fritz_url}/api/candidates",
        params={"numPerPage": 100},
        headers={"Authorization": f"token {TOKEN}"},
        timeout=10,
    ).json()["data"]
    bright_objects = {
        d["objectId"] for d in db["alerts"].find({"candidate.magpsf": {"$lt": BRIGHT}})
    }
    assert {c["id"] for c in listed["candidates"]} == bright_objects

    # The gallery PNG and the pointers printed last.
    assert result.gallery is not None
    data = result.gallery.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    width, height = png_size(data)
    assert width == 1300 and height == 280 * max(1, len(report.top))
    where = where_to_look(result)
    assert names.database in where and names.output_topic("ztf") in where
    assert "nightjar services down" in where and fritz_url in where


def first_record(settings: Settings, topic: str) -> dict[str, Any]:
    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap_servers,
                         "group.id": f"{topic}-check", "enable.auto.commit": False})  # fmt: skip
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        message = None
        for _ in range(30):
            message = consumer.poll(1.0)
            if message is not None and message.error() is None:
                break
        assert message is not None and message.error() is None, f"no message on {topic}"
        record = next(iter(fastavro.reader(io.BytesIO(message.value() or b""))))
        assert isinstance(record, dict)
        return record
    finally:
        consumer.close()
