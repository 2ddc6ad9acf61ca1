"""broker.store on the real MongoDB-compatible server: idempotent writes, light curves, rejects."""

from __future__ import annotations

import contextlib
import math
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError, PyMongoError

from broker import __version__, history
from broker.decode import Decoder
from broker.errors import TransientError
from broker.records import Alert, AlertResult, Annotation, ModelSkip, Origin, Rejection
from broker.settings import SchemaSettings
from broker.store import Store, history_filter, object_key
from broker.surveys import tables
from broker.tools.simulate import simulate

Db = Database[dict[str, Any]]


@pytest.fixture(scope="module")
def alerts() -> list[Alert]:
    decoder = Decoder(SchemaSettings(), 4 << 20)
    return [
        decoder.decode(sim.data, Origin("in", 0, i))
        for survey in ("ztf", "lsst")
        for i, sim in enumerate(simulate(survey, 90, seed=21))
    ]


@pytest.fixture
def store(mongo_db: Db) -> Store:
    store = Store(mongo_db)
    store.ensure_indexes()
    return store


def results_for(alerts: Sequence[Alert]) -> list[AlertResult]:
    return [
        AlertResult(
            a.candid,
            annotations=(Annotation("braai", "d6_m9", 0.5), Annotation("odd", "v1", math.nan)),
            skipped=(ModelSkip("acai_h", "missing feature drb"),),
        )
        for a in alerts
    ]


def write_in_batches(store: Store, alerts: Sequence[Alert], size: int) -> None:
    """As the pipeline does: each batch with the history stored before it."""
    for start in range(0, len(alerts), size):
        batch = alerts[start : start + size]
        store.write(batch, results_for(batch), store.read_history(batch))


def test_alert_documents_are_written_once_with_what_users_read(
    store: Store, mongo_db: Db, alerts: list[Alert]
) -> None:
    some = alerts[:10] + alerts[-10:]
    write_in_batches(store, some, len(some))
    write_in_batches(store, some, 7)  # a replay: nothing added, nothing changed
    assert mongo_db["alerts"].count_documents({}) == len(some)
    for alert in (some[0], some[-1]):
        doc = mongo_db["alerts"].find_one({"_id": alert.key})
        assert doc is not None
        assert (doc["survey"], doc["candid"], doc["objectId"]) == (
            alert.survey,
            alert.candid,
            alert.object_id,
        )
        assert doc["candidate"] == history.clean(dict(alert.candidate))
        assert not tables(doc["survey"]).history_fields & set(doc["packet"])
        assert "candidate" not in doc["packet"] and "cutoutScience" not in doc["packet"]
        assert doc["cutouts"]["science"] == alert.cutouts.science
        assert doc["annotations"] == {
            "braai": {"score": 0.5, "version": "d6_m9"},
            "odd": {"score": None, "version": "v1"},  # NaN cannot be stored: None
        }
        assert doc["skipped"] == {"acai_h": "missing feature drb"}
        assert doc["broker"] == f"nightjar {__version__}"
        assert doc["origin"] == {"topic": "in", "partition": 0, "offset": alert.origin.offset}  # type: ignore[union-attr]


def test_light_curves_merge_across_batches_in_any_order(
    store: Store, mongo_db: Db, alerts: list[Alert]
) -> None:
    ztf = [a for a in alerts if a.survey == "ztf"]
    # Newest first in small batches, as a lagging partition may deliver them.
    write_in_batches(store, ztf[::-1], 15)
    by_object: dict[str, list[Alert]] = {}
    for alert in ztf:
        by_object.setdefault(object_key("ztf", alert.object_id), []).append(alert)
    assert max(len(group) for group in by_object.values()) >= 3
    docs = {doc["_id"]: doc for doc in mongo_db["objects"].find()}
    assert sorted(docs) == sorted(by_object)
    for key, group in by_object.items():
        keys = [history.point_key("ztf", point) for point in docs[key]["lightcurve"]]
        assert len(keys) == len(set(keys)), f"{key}: a point twice"
        expected = {history.point_key("ztf", p) for a in group for p in history.alert_points(a)}
        assert set(keys) == expected
        assert docs[key]["first_alert_jd"] == min(a.jd for a in group)
        assert docs[key]["last_alert_jd"] == max(a.jd for a in group)
        assert docs[key]["objectId"] == group[0].object_id


def test_a_batch_of_more_than_100_objects_is_stored(mongo_uri: str, mongo_db: Db) -> None:
    """FerretDB 1.24 stalls on an update command of 100 statements that match documents:
    the store splits them. The second write updates the 100+ objects the first created."""
    decoder = Decoder(SchemaSettings(), 4 << 20)
    first_of_each: dict[str, Alert] = {}
    for sim in simulate("lsst", 300, seed=21):
        first_of_each.setdefault(sim.object_id, decoder.decode(sim.data))
    batch = list(first_of_each.values())
    assert len(batch) > 100
    # A stalled server fails this test in 60 s instead of hanging it.
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_uri, socketTimeoutMS=60_000)
    try:
        store = Store(client[mongo_db.name])
        store.write(batch, results_for(batch), {})
        store.write(batch, results_for(batch), {})
    finally:
        client.close()
    assert mongo_db["objects"].count_documents({}) == len(batch)
    assert mongo_db["alerts"].count_documents({}) == len(batch)


def test_read_history_returns_the_stored_points_of_the_batch_objects(
    store: Store, alerts: list[Alert]
) -> None:
    lsst = [a for a in alerts if a.survey == "lsst"]
    assert store.read_history(lsst) == {}
    write_in_batches(store, lsst[:20], 20)
    found = store.read_history(lsst)
    assert set(found) == {object_key("lsst", a.object_id) for a in lsst[:20]}
    first = lsst[0]
    keys = {history.point_key("lsst", p) for p in found[object_key("lsst", first.object_id)]}
    assert ("id", first.candid) in keys


def test_history_reads_use_the_id_index_not_a_scan(store: Store, alerts: list[Alert]) -> None:
    # A scan per batch grows with every object ever stored: months of survey data would
    # make each batch slower than the last. FerretDB needs Nightjar's patch for this.
    ztf = [a for a in alerts if a.survey == "ztf"]
    write_in_batches(store, ztf, 30)
    keys = sorted({object_key("ztf", a.object_id) for a in ztf[:10]})
    plan = store.db.command("explain", {"find": "objects", "filter": history_filter(keys)})
    if "filterPushdown" in plan:  # FerretDB: its SQLite plan, and whether it filtered
        assert plan["filterPushdown"] is True, plan
        assert "USING INDEX" in str(plan["queryPlanner"]), plan
    else:  # MongoDB
        assert "COLLSCAN" not in str(plan["queryPlanner"]["winningPlan"]), plan
    assert set(store.read_history(ztf[:10])) == set(keys)


def test_the_unique_index_refuses_a_second_document_for_one_candid(
    store: Store, mongo_db: Db, alerts: list[Alert]
) -> None:
    write_in_batches(store, alerts[:1], 1)
    index = mongo_db["alerts"].index_information()["survey_candid"]
    assert index["unique"]
    with pytest.raises(DuplicateKeyError):
        mongo_db["alerts"].insert_one(
            {"_id": "other", "survey": alerts[0].survey, "candid": alerts[0].candid}
        )


def test_an_index_as_mongorestore_sends_it_is_created(mongo_db: Db) -> None:
    """mongorestore (README "Back up MongoDB") names the legacy option "ns" in every index it
    restores; MongoDB ignores it, and so does Nightjar's FerretDB (its msg_createindexes patch)."""
    spec = {"key": {"survey": 1, "candid": 1}, "name": "survey_candid", "unique": True}
    spec["ns"] = f"{mongo_db.name}.alerts"
    mongo_db.command("createIndexes", "alerts", indexes=[spec], ignoreUnknownIndexOptions=True)
    indexes = {index["name"]: index for index in mongo_db["alerts"].list_indexes()}
    assert indexes["survey_candid"].get("unique") is True, indexes


def test_rejections_are_stored_once_per_origin(store: Store, mongo_db: Db) -> None:
    rejections = [
        Rejection("undecodable", "truncated", b"\x00\x01", Origin("in", 2, 40)),
        Rejection("bad_cutouts", "all NaN", b"Obj\x01", Origin("in", 2, 41), "ztf", 5, "ZTF1"),
    ]
    store.write_rejections(rejections)
    store.write_rejections(rejections)  # the same messages read again after a crash
    docs = {doc["_id"]: doc for doc in mongo_db["rejected"].find()}
    assert sorted(docs) == ["in[2]@40", "in[2]@41"]
    assert docs["in[2]@40"]["raw"] == b"\x00\x01" and docs["in[2]@40"]["reason"] == "undecodable"
    assert (docs["in[2]@41"]["candid"], docs["in[2]@41"]["objectId"]) == (5, "ZTF1")


def test_an_unreachable_server_is_a_transient_error(alerts: list[Alert]) -> None:
    client: MongoClient[dict[str, Any]] = MongoClient(
        "mongodb://127.0.0.1:9", serverSelectionTimeoutMS=300, connectTimeoutMS=300
    )
    store = Store(client["nowhere"])
    try:
        with pytest.raises(TransientError, match="not usable"):
            store.ensure_indexes()
        with pytest.raises(TransientError, match="unreachable"):
            store.read_history(alerts[:2])
        with pytest.raises(TransientError, match="unreachable"):
            store.write(alerts[:2], results_for(alerts[:2]), {})
    finally:
        client.close()


def test_a_write_reports_only_its_own_points_and_timings(store: Store, alerts: list[Alert]) -> None:
    batch = [a for a in alerts if a.survey == "ztf"][:5]
    first = store.write(batch, results_for(batch), {})
    assert set(first.added) == {object_key("ztf", a.object_id) for a in batch}
    assert set(first.timings) == {"store_alerts", "store_objects"}
    replay = store.write(batch, results_for(batch), store.read_history(batch))  # adds nothing
    assert replay.added == {}
    empty = store.write([], [], {})  # every alert of a batch rejected
    assert empty.added == {} and empty.timings == {}


def two_brokers(mongo_uri: str, database: str) -> tuple[Store, Store, list[MongoClient[Any]]]:
    """Two stores on their own connections, as two brokers of one consumer group have."""
    clients: list[MongoClient[Any]] = [MongoClient(mongo_uri, socketTimeoutMS=60_000) for _ in "ab"]
    first, second = (Store(client[database], repair_light_curves=True) for client in clients)
    return first, second, clients


def assert_each_point_once(mongo_db: Db, alerts: Sequence[Alert], fullest: bool = True) -> None:
    """Every point of every alert on its object once (`fullest`: in its fullest form).

    The form a detection is kept in is the first stored when it was known to the writer
    (a broker's own batches, or what it read); only brokers that did not know are merged."""
    expected: dict[str, dict[Any, dict[str, Any]]] = {}
    for alert in alerts:
        points = expected.setdefault(object_key("ztf", alert.object_id), {})
        for point in history.alert_points(alert):
            ident = history.point_key("ztf", point)
            if len(point) > len(points.get(ident, {})):
                points[ident] = point
    docs = {doc["_id"]: doc for doc in mongo_db["objects"].find()}
    assert sorted(docs) == sorted(expected)
    for key, points in expected.items():
        stored = docs[key]["lightcurve"]
        idents = [history.point_key("ztf", point) for point in stored]
        assert len(idents) == len(set(idents)), f"{key}: a point twice"
        assert set(idents) == set(points), f"{key}: points lost"
        forms = {history.point_key("ztf", p): p for p in stored}
        assert not fullest or forms == points, f"{key}: a detection kept in a poorer form"


def test_two_brokers_writing_interleaved_batches_of_one_object_keep_each_point_once(
    mongo_uri: str, mongo_db: Db, alerts: list[Alert]
) -> None:
    """Both read the object's history before either writes (they do not know each other's
    batches): each would add its own form of the detections they share."""
    ztf = [a for a in alerts if a.survey == "ztf"]
    by_object: dict[str, list[Alert]] = {}
    for alert in ztf:
        by_object.setdefault(alert.object_id, []).append(alert)
    busiest = sorted(max(by_object.values(), key=len), key=lambda a: a.jd)
    assert len(busiest) >= 3
    first, second, clients = two_brokers(mongo_uri, mongo_db.name)
    try:
        for start in range(0, len(busiest), 2):
            mine, theirs = busiest[start : start + 1], busiest[start + 1 : start + 2]
            read_mine, read_theirs = first.read_history(mine), second.read_history(theirs)
            first.write(mine, results_for(mine), read_mine)
            if theirs:
                second.write(theirs, results_for(theirs), read_theirs)
    finally:
        for client in clients:
            client.close()
    assert_each_point_once(mongo_db, busiest)


def test_two_brokers_writing_the_same_objects_at_once_lose_no_point(
    mongo_uri: str, mongo_db: Db, alerts: list[Alert]
) -> None:
    """Concurrent updates of one object: FerretDB 1.x reads and rewrites the whole document,
    so without the read-back repair one broker's points are undone by the other's write."""
    ztf = sorted((a for a in alerts if a.survey == "ztf"), key=lambda a: a.jd)
    first, second, clients = two_brokers(mongo_uri, mongo_db.name)

    def broker(store: Store, share: Sequence[Alert]) -> None:
        for start in range(0, len(share), 3):
            batch = list(share[start : start + 3])
            store.write(batch, results_for(batch), store.read_history(batch))

    try:
        with ThreadPoolExecutor(2) as pool:
            done = [pool.submit(broker, first, ztf[0::2]), pool.submit(broker, second, ztf[1::2])]
            for future in done:
                future.result(timeout=120)
    finally:
        for client in clients:
            client.close()
    assert_each_point_once(mongo_db, ztf, fullest=False)


def test_concurrent_update_commands_of_many_statements_all_finish(mongo_uri: str) -> None:
    """Several clients at once each sending update commands of UPDATES_PER_COMMAND upserts
    (brokers storing objects, the Fritz-like service storing photometry): every command
    finishes. Unpatched FerretDB 1.24 held one SQLite connection per statement until the
    command ended; commands needing more than its pool of 100 together waited on each other
    and the database stopped answering for good (services/ferretdb/patches/msg_update.go)."""
    from pymongo import UpdateOne

    from broker.store import UPDATES_PER_COMMAND

    name = f"nightjar_test_updates_{uuid.uuid4().hex[:8]}"
    # A hang fails the test (socket timeout) instead of blocking the run.
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_uri, socketTimeoutMS=30_000)
    collection = client[name]["points"]
    # Statements that match a stored document are the ones that kept their connection (an
    # empty match released it), as when a light curve or its photometry is stored again.
    ids = [f"{worker}:{i}" for worker in range(8) for i in range(UPDATES_PER_COMMAND)]
    collection.insert_many([{"_id": key, "round": -1} for key in ids])

    def client_commands(worker: int) -> int:
        done = 0
        for round_ in range(4):
            updates = [
                UpdateOne({"_id": f"{worker}:{i}"}, {"$set": {"round": round_}}, upsert=True)
                for i in range(UPDATES_PER_COMMAND)
            ]
            done += collection.bulk_write(updates, ordered=False).modified_count
        return done

    try:
        with ThreadPoolExecutor(8) as pool:
            counts = list(pool.map(client_commands, range(8)))
        assert counts == [4 * UPDATES_PER_COMMAND] * 8
        assert collection.count_documents({"round": 3}) == len(ids)
    finally:
        with contextlib.suppress(PyMongoError):
            client.drop_database(name)
        client.close()
