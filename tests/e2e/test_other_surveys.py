"""Every real WINTER, PGIR, TURBO and DECam sample alert through `nightjar run` on the real
Kafka and MongoDB-compatible server: stored, published on its survey's output topic, matched
by a filter written against the common fields only; replaying them adds nothing."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from pymongo.database import Database

from broker.decode import Decoder
from broker.publish import ANNOTATIONS_FIELD
from broker.records import Alert
from broker.settings import SchemaSettings
from broker.store import object_key
from broker.tools.replay import default_producer_config, replay_paths
from tests.pipeline_helpers import (
    Rig,
    committed,
    create_topics,
    output_record,
    read_topic,
    same_value,
)

OTHERS = ("winter", "pgir", "turbo", "decam")
# Common fields only: no survey spelling (objectId, candidate.*) in the query.
COMMON = {"ra": {"$gte": 0, "$lt": 360}, "dec": {"$gte": -90}, "jd": {"$gt": 2450000}}
FILTER = "everywhere"

Db = Database[dict[str, Any]]


@pytest.fixture
def rig(make_rig: Any, kafka_admin: AdminClient) -> Iterator[Rig]:
    rig: Rig = make_rig("other-surveys")
    template = f"nightjar-filter-{uuid.uuid4().hex[:10]}-{{filter}}"
    topic = template.format(filter=FILTER)
    create_topics(kafka_admin, [topic])
    definition = {"name": FILTER, "query": COMMON, "fritz_filter_id": 7, "group_ids": [1]}
    rig.settings.update(
        NIGHTJAR_FILTERS__TOPIC_TEMPLATE=template,
        NIGHTJAR_FILTERS__DEFINITIONS=json.dumps([definition]),
    )
    yield rig
    for future in kafka_admin.delete_topics([topic], operation_timeout=10).values():
        with suppress(KafkaException):
            future.result(timeout=15)


def sample_alerts(shared_dir: Path) -> tuple[list[Path], dict[str, Alert]]:
    folders = [shared_dir / "other" / survey for survey in OTHERS]
    if not all(folder.is_dir() for folder in folders):
        pytest.skip(f"{shared_dir / 'other'} lacks one of {', '.join(OTHERS)}")
    decoder = Decoder(SchemaSettings(), max_message_bytes=4 * 1024 * 1024)
    alerts = [decoder.decode(p.read_bytes()) for f in folders for p in sorted(f.glob("*.avro"))]
    return folders, {alert.key: alert for alert in alerts}


def replay(rig: Rig, folders: list[Path], count: int) -> None:
    decoder = Decoder(SchemaSettings(), max_message_bytes=4 * 1024 * 1024)
    config = default_producer_config(rig.bootstrap)
    stats = replay_paths(folders, rig.topics[0], config, decoder=decoder)
    assert stats.ok and stats.messages == count, stats


def test_other_surveys_are_stored_published_and_filtered_once(
    rig: Rig, mongo_db: Db, shared_dir: Path, kafka_admin: AdminClient
) -> None:
    folders, alerts = sample_alerts(shared_dir)
    assert Counter(a.survey for a in alerts.values()) == {
        "winter": 5, "pgir": 8, "turbo": 5, "decam": 1,
    }  # fmt: skip
    replay(rig, folders, len(alerts))
    rig.run()

    docs = {doc["_id"]: doc for doc in mongo_db["alerts"].find({}, {"cutouts": 0})}
    assert sorted(docs) == sorted(alerts)
    assert mongo_db["rejected"].count_documents({}) == 0
    for key, alert in alerts.items():
        doc = docs[key]
        assert (doc["survey"], doc["candid"], doc["objectId"]) == (
            alert.survey, alert.candid, alert.object_id,
        )  # fmt: skip
        assert (doc["ra"], doc["dec"], doc["jd"]) == (alert.ra, alert.dec, alert.jd)
        assert doc["schema_version"] == alert.schema_version
    assert docs["pgir:114297926"]["annotations"]["pgir_drb"]["version"] == "modela4.json"
    assert docs["decam:65346"]["annotations"]["decam_reliability"]["version"] is None
    check_objects(mongo_db, alerts)
    check_published(rig, alerts)
    matched = read_topic(rig.bootstrap, rig_filter_topic(rig))
    assert len(matched) == len(alerts)
    jobs = list(mongo_db["outbox"].find({}, {"alert_id": 1, "filter": 1}))
    assert sorted(job["alert_id"] for job in jobs) == sorted(alerts)
    assert committed(kafka_admin, rig.group_id, rig.topics[0], 1) == {0: len(alerts)}

    before = snapshot(mongo_db)
    replay(rig, folders, len(alerts))
    rig.run()
    assert snapshot(mongo_db) == before
    assert committed(kafka_admin, rig.group_id, rig.topics[0], 1) == {0: 2 * len(alerts)}


def rig_filter_topic(rig: Rig) -> str:
    return str(rig.env()["NIGHTJAR_FILTERS__TOPIC_TEMPLATE"]).format(filter=FILTER)


def check_objects(db: Db, alerts: dict[str, Alert]) -> None:
    """One object per survey and object id, first and last alert times from its alerts."""
    expected: dict[str, list[Alert]] = {}
    for alert in alerts.values():
        expected.setdefault(object_key(alert.survey, alert.object_id), []).append(alert)
    objects = {doc["_id"]: doc for doc in db["objects"].find()}
    assert sorted(objects) == sorted(expected)
    assert len(objects["pgir:PGIR21aeiljk"]["lightcurve"]) > 90  # three alerts merged
    for key, group in expected.items():
        assert objects[key]["first_alert_jd"] == min(a.jd for a in group)
        assert objects[key]["lightcurve"], key


def check_published(rig: Rig, alerts: dict[str, Alert]) -> None:
    """Each alert once on its own survey's topic: the packet as sent, plus `nightjar`."""
    published: dict[str, dict[str, Any]] = {}
    for survey in OTHERS:
        for message in read_topic(rig.bootstrap, rig.output_topic(survey)):
            record = output_record(message.value)
            annotations = record.pop(ANNOTATIONS_FIELD)
            key = f"{survey}:{record['candid']}"
            assert key not in published and key in alerts, key
            assert same_value(record, dict(alerts[key].packet)), f"{key}: packet changed"
            assert message.key == alerts[key].object_id.encode()
            published[key] = annotations
    assert sorted(published) == sorted(alerts)


def snapshot(db: Db) -> dict[str, Any]:
    return {
        "alerts": sorted(doc["_id"] for doc in db["alerts"].find({}, {"_id": 1})),
        "objects": {d["_id"]: d["lightcurve"] for d in db["objects"].find()},
        "outbox": sorted(doc["_id"] for doc in db["outbox"].find({}, {"_id": 1})),
        "rejected": db["rejected"].count_documents({}),
    }
