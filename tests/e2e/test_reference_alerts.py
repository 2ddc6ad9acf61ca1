"""Every reference alert through `nightjar run`, on the real Kafka and MongoDB-compatible server.

ZTF schemas 1.7-3.5 (the night-20200202 set included) and a real Rubin 7.1 alert: each usable
alert is stored once and republished with its annotations, each unusable one dead-lettered with
its reason; replaying adds no alert; with the converted models the stored scores are those of
`nightjar score`, and each model is loaded once per worker.
"""

from __future__ import annotations

import json
import math
import subprocess
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient
from pymongo.database import Database

from broker import __version__, history
from broker.publish import ANNOTATIONS_FIELD, SOURCE_TS_HEADER
from broker.records import Alert, Origin
from broker.store import object_key
from broker.tools.models.fetch import fetch
from broker.tools.replay import default_producer_config, replay_paths
from tests.pipeline_helpers import (
    CONFIG,
    NIGHTJAR,
    REFERENCE,
    REPO,
    Expected,
    Record,
    Rig,
    committed,
    decoder_for,
    expected_outcome,
    output_record,
    read_topic,
    same_value,
)
from workers.models.registry import load_registry

# 34 ZTF files (6 schema 1.x without objectId, 3 of them 1.0 whose schema types isdiffpos
# as an int) + 1 Rubin alert. The one whose template overflows the float32 norm is stored,
# its image models skipped: images never reject an alert.
MESSAGES, STORED = 35, 29
UNSCOREABLE = "ztf:472263571115090000"
MODELS = ("braai", "btsbot", "acai_h", "acai_v", "acai_o", "acai_n", "acai_b")
SCORE_ATOL = 1e-5

Db = Database[dict[str, Any]]


@pytest.fixture
def rig(make_rig: Any, shared_dir: Path) -> Iterator[Rig]:
    rig: Rig = make_rig("reference")
    rig.settings["NIGHTJAR_SCHEMAS__LSST_SCHEMA_DIR"] = str(shared_dir / "lsst" / "schema")
    yield rig


def alert_paths(shared_dir: Path) -> list[Path]:
    return [shared_dir / "ztf" / "alerts", shared_dir / "lsst" / "alerts"]


def replay(rig: Rig, shared_dir: Path) -> None:
    decoder = decoder_for(shared_dir / "lsst" / "schema")
    config = default_producer_config(rig.bootstrap)
    stats = replay_paths(alert_paths(shared_dir), rig.topics[0], config, decoder=decoder)
    assert stats.ok and stats.messages == MESSAGES, stats


def verdicts(rig: Rig, shared_dir: Path) -> list[tuple[Record, Expected]]:
    """Each message of the input topic with what the broker should have done with it."""
    decoder = decoder_for(shared_dir / "lsst" / "schema")
    return [
        (r, expected_outcome(decoder, r.value)) for r in read_topic(rig.bootstrap, rig.topics[0])
    ]


def test_reference_alerts_are_stored_published_or_dead_lettered(
    rig: Rig, mongo_db: Db, shared_dir: Path, kafka_admin: AdminClient
) -> None:
    replay(rig, shared_dir)
    rig.run()
    seen = verdicts(rig, shared_dir)
    good = {e.alert.key: e.alert for _, e in seen if e.alert is not None}
    bad = [(record, e.reason) for record, e in seen if e.alert is None]
    assert len(seen) == MESSAGES and len(good) == STORED
    assert Counter(reason for _, reason in bad) == {"missing_field": 3, "bad_schema": 3}
    assert UNSCOREABLE in good

    check_alert_documents(mongo_db, good, rig.topics[0])
    check_published(rig, mongo_db, good, seen)
    check_dead_letters(rig, mongo_db, bad)
    check_objects(mongo_db, good.values())
    assert committed(kafka_admin, rig.group_id, rig.topics[0], 1) == {0: MESSAGES}

    before = snapshot(mongo_db)
    replay(rig, shared_dir)
    rig.run()
    after = snapshot(mongo_db)
    assert after["alerts"] == before["alerts"]
    assert after["objects"] == before["objects"]
    # The replayed bad messages are new messages (new offsets): each is dead-lettered once.
    assert after["rejected"] == before["rejected"] + len(bad)
    assert committed(kafka_admin, rig.group_id, rig.topics[0], 1) == {0: 2 * MESSAGES}


def check_alert_documents(db: Db, good: dict[str, Alert], topic: str) -> None:
    docs = {doc["_id"]: doc for doc in db["alerts"].find({}, {"cutouts": 0, "packet": 0})}
    assert sorted(docs) == sorted(good)
    assert db["alerts"].count_documents({}) == len(good)
    for key, alert in good.items():
        doc = docs[key]
        assert (doc["survey"], doc["candid"], doc["objectId"]) == (
            alert.survey,
            alert.candid,
            alert.object_id,
        )
        assert doc["origin"]["topic"] == topic
        assert scores_of(doc["annotations"]) == packet_scores(alert), key
    lsst = docs["lsst:25409136044802067"]
    # Schema 7.1 names no reliability model: no version (the schema's is recorded apart).
    assert lsst["annotations"]["reliability"]["version"] is None
    assert lsst["schema_version"] == "7.1"
    assert math.isclose(lsst["annotations"]["reliability"]["score"], 0.8079, abs_tol=1e-4)


def packet_scores(alert: Alert) -> dict[str, float]:
    """The pass-through scorer carries the survey's own score: ZTF drb, Rubin reliability."""
    field = "drb" if alert.survey == "ztf" else "reliability"
    value = alert.candidate.get(field)
    return {field: value} if isinstance(value, float) and math.isfinite(value) else {}


def scores_of(annotations: dict[str, dict[str, Any]]) -> dict[str, float]:
    return {model: annotation["score"] for model, annotation in annotations.items()}


def check_published(
    rig: Rig, db: Db, good: dict[str, Alert], seen: list[tuple[Record, Expected]]
) -> None:
    """Each stored alert once on its survey's topic: the packet as sent, plus `nightjar`."""
    source_ts = {e.key: record.timestamp for record, e in seen if e.key}
    published: dict[str, dict[str, Any]] = {}
    for survey in ("ztf", "lsst"):
        for message in read_topic(rig.bootstrap, rig.output_topic(survey)):
            record = output_record(message.value)
            annotations = record.pop(ANNOTATIONS_FIELD)
            key = f"{survey}:{candid_of(survey, record)}"
            assert key not in published, f"{key} published twice in one run"
            alert = good[key]
            assert same_value(record, dict(alert.packet)), f"{key}: packet changed"
            assert message.key == alert.object_id.encode()
            assert message.headers[SOURCE_TS_HEADER] == str(source_ts[key]).encode()
            published[key] = annotations
    assert sorted(published) == sorted(good)
    for doc in db["alerts"].find({}, {"annotations": 1, "skipped": 1}):
        annotations = published[doc["_id"]]
        assert annotations["broker"] == f"nightjar {__version__}"
        assert {s["model"]: (s["score"], s["version"]) for s in annotations["scores"]} == {
            model: (a["score"], a["version"]) for model, a in doc["annotations"].items()
        }
        assert {s["model"]: s["reason"] for s in annotations["skipped"]} == doc["skipped"]


def candid_of(survey: str, record: dict[str, Any]) -> int:
    value = record["candid"] if survey == "ztf" else record["diaSource"]["diaSourceId"]
    assert isinstance(value, int)
    return value


def check_dead_letters(rig: Rig, db: Db, bad: list[tuple[Record, str | None]]) -> None:
    """Each unusable message as received, with reason and origin, on the topic and in Mongo."""
    dead = {
        m.headers["nightjar-offset"]: m for m in read_topic(rig.bootstrap, rig.dead_letter_topic)
    }
    assert len(dead) == len(bad)
    rejected = {doc["_id"]: doc for doc in db["rejected"].find()}
    assert len(rejected) == len(bad)
    for record, reason in bad:
        message = dead[str(record.offset).encode()]
        assert message.value == record.value
        assert message.headers["nightjar-reason"] == str(reason).encode()
        assert message.headers["nightjar-topic"] == rig.topics[0].encode()
        assert message.headers["nightjar-partition"] == str(record.partition).encode()
        assert message.headers["nightjar-detail"]
        doc = rejected[str(Origin(rig.topics[0], record.partition, record.offset))]
        assert (doc["reason"], doc["raw"]) == (reason, record.value)
        assert doc["detail"]


def check_objects(db: Db, alerts: Iterable[Alert]) -> None:
    """One object per objectId, its light curve every point of its alerts, each once."""
    by_object: dict[str, list[Alert]] = {}
    for alert in alerts:
        by_object.setdefault(object_key(alert.survey, alert.object_id), []).append(alert)
    docs = {doc["_id"]: doc for doc in db["objects"].find()}
    assert sorted(docs) == sorted(by_object)
    assert max(len(group) for group in by_object.values()) == 2  # merged across alerts
    for key, group in by_object.items():
        survey = group[0].survey
        points = [history.point_key(survey, p) for p in docs[key]["lightcurve"]]
        assert len(points) == len(set(points)), f"{key}: duplicate light-curve points"
        expected = {history.point_key(survey, p) for a in group for p in history.alert_points(a)}
        assert set(points) == expected, key
        assert docs[key]["first_alert_jd"] == min(a.jd for a in group)
        assert docs[key]["last_alert_jd"] == max(a.jd for a in group)


def snapshot(db: Db) -> dict[str, Any]:
    return {
        "alerts": sorted(doc["_id"] for doc in db["alerts"].find({}, {"_id": 1})),
        "objects": {d["_id"]: d["lightcurve"] for d in db["objects"].find()},
        "rejected": db["rejected"].count_documents({}),
    }


# -- with the real models ----------------------------------------------------------------


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """braai, BTSbot and ACAI converted once from the reference mirror (TensorFlow -> ONNX)."""
    if not (REFERENCE / "models").is_dir():
        pytest.skip(f"{REFERENCE / 'models'} is absent: no published model files to convert")
    from broker.errors import ConfigError
    from broker.tools.models.convert import import_tensorflow

    try:
        import_tensorflow()
    except ConfigError as exc:
        pytest.skip(f"cannot convert the published models: {exc}")
    target = tmp_path_factory.mktemp("models")
    registry = load_registry(REPO / "config" / "models.yaml")
    for name in MODELS:
        fetch(registry.get(name), target, mirror=REFERENCE / "models", progress=False)
    return target


def test_stored_scores_match_nightjar_score_and_models_load_once_per_worker(
    rig: Rig, mongo_db: Db, shared_dir: Path, models_dir: Path
) -> None:
    # Three copies in three batches of one copy each: the first batch is scored with no
    # stored history (as `nightjar score` does), the copies are duplicates (kept once).
    for _ in range(3):
        replay(rig, shared_dir)
    finished = rig.run(
        NIGHTJAR_MODELS__DIR=str(models_dir),
        NIGHTJAR_DISPATCH__BATCH_SIZE=str(MESSAGES),
        NIGHTJAR_DISPATCH__BATCH_SECONDS="5",
        # Workers as threads of the broker process: their log lines reach its log.
        NIGHTJAR_DISPATCH__LOCAL_PROCESSES="false",
        NIGHTJAR_DISPATCH__LOCAL_WORKERS="2",
        NIGHTJAR_DISPATCH__LOCAL_THREADS_PER_WORKER="1",
    )
    batches = finished.lines("broker.pipeline: batch:")
    assert len(batches) == 3 and f"batch: {MESSAGES} messages" in batches[0], batches
    for name in MODELS:
        assert len(finished.lines(f"model {name} runs on")) == 2, f"{name} not loaded once/worker"
    assert len(finished.lines("loaded models:")) == 2

    expected = offline_results(rig, shared_dir, models_dir)
    docs = list(mongo_db["alerts"].find({}, {"annotations": 1, "skipped": 1}))
    assert sorted(doc["_id"] for doc in docs) == sorted(expected)
    for doc in docs:
        stored = scores_of(doc["annotations"])
        offline, skipped = expected[doc["_id"]]
        assert stored.keys() == offline.keys() and doc["skipped"] == skipped, doc["_id"]
        for model, score in offline.items():
            assert math.isclose(stored[model], score, abs_tol=SCORE_ATOL), (doc["_id"], model)
    ztf = [scores_of(doc["annotations"]) for doc in docs if doc["_id"].startswith("ztf:")]
    unscoreable = {
        doc["_id"]: doc
        for doc in docs
        if doc["_id"].startswith("ztf:") and "braai" not in doc["annotations"]
    }
    assert list(unscoreable) == [UNSCOREABLE]
    skipped = unscoreable[UNSCOREABLE]["skipped"]
    assert all(skipped[name].startswith("bad_cutouts: template") for name in MODELS)
    assert sum("braai" in scores and "btsbot" in scores for scores in ztf) == len(ztf) - 1
    # ACAI needs the packet's drb (schema 3.3+).
    assert sum("acai_h" in scores for scores in ztf) == sum("drb" in scores for scores in ztf) > 10


def offline_results(
    rig: Rig, shared_dir: Path, models_dir: Path
) -> dict[str, tuple[dict[str, float], dict[str, str]]]:
    """`nightjar score` of the same files: {alert key: ({model: score}, {model: skip reason})}."""
    command = [str(NIGHTJAR), "--config", str(CONFIG), "score", "--models-dir", str(models_dir)]
    done = subprocess.run(
        [*command, *map(str, alert_paths(shared_dir))],
        cwd=REPO,
        env=rig.env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    results = {}
    for line in done.stdout.splitlines():
        doc = json.loads(line)
        if "annotations" in doc:
            scores = {model: a["score"] for model, a in doc["annotations"].items()}
            results[f"{doc['survey']}:{doc['candid']}"] = (scores, doc.get("skipped", {}))
    return results
