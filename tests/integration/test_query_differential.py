"""broker.query against the real MongoDB-compatible server: the same query, the same answer.

Documents are inserted once per module (synthetic ones: nested, arrays, nulls, missing fields,
mixed types; realistic ones: real ZTF/LSST alerts as broker.store builds them). For hand-written
and seeded random queries, the _ids the server returns must equal the _ids the in-process
matcher accepts, on the documents as built and as read back.

FerretDB 1.24 deviates from MongoDB in a few places; the generator steers clear of them (each
named where it is avoided), and tests/unit/test_query.py pins MongoDB's answer for those cases.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.errors import OperationFailure

from broker.decode import Decoder
from broker.errors import BadAlert
from broker.query import compile_query
from broker.records import ALERT_FIELDS, AlertResult, Annotation, ModelSkip
from broker.settings import DEFAULT_CONFIG, SchemaSettings, load_settings
from broker.store import alert_document

SEED = 20240501
SYNTHETIC = 160
RANDOM_QUERIES = 250
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)

# Scalars of every type the broker stores. No NaN or infinity: FerretDB 1.24 refuses
# infinities and drops the connection on NaN (the store writes both as null anyway).
NUMBERS = [0, 1, 2, 5, 7, 18, 19, -3, 0.5, 18.0, 18.25, 19.5, -1.5, 2**40, -(2**35)]
STRINGS = ["t", "f", "1", "true", "ZTF20abc", "ztf21xyz", "", "apple", "Zebra", "b", "é-ñ"]
DATES = [T0, T0 + timedelta(days=1, microseconds=1500), T0 - timedelta(hours=5)]
SCALARS: list[Any] = [*NUMBERS, *STRINGS, *DATES, True, False, None]
# Paths of the synthetic documents. Only `candidate.hist` holds arrays of sub-documents and
# only `candidate.tags` arrays of scalars: some FerretDB deviations depend on where arrays are.
SCALAR_PATHS = [
    "survey", "candid", "jd", "candidate.magpsf", "candidate.fid", "candidate.isdiffpos",
    "annotations.btsbot.score", "annotations.tails.score", "packet.schemavsn", "origin",
]  # fmt: skip
LEAF_ARRAY_PATHS = ["candidate.tags"]
OFFSET_PATHS = ["candidate.tags.0", "candidate.tags.1"]
CROSSING_PATHS = ["candidate.hist.b", "candidate.hist.c", "candidate.hist.0.b", "candidate.hist"]
PATHS = {
    "scalar": SCALAR_PATHS,
    "leaf_array": LEAF_ARRAY_PATHS,
    "offset": OFFSET_PATHS,
    "crossing": CROSSING_PATHS,
}
HAND_WRITTEN: list[dict[str, Any]] = [
    {"candidate.magpsf": {"$lt": 19}},
    {"candidate.magpsf": 18},
    {"candidate.magpsf": {"$gte": "b"}},
    {"candidate.magpsf": None},
    {"candidate.magpsf": {"$ne": None}},
    {"candidate.magpsf": {"$exists": False}},
    {"candidate.magpsf": {"$type": "number"}},
    {"candidate.magpsf": {"$type": "long"}},
    {"candidate.magpsf": {"$type": "int"}},
    {"candidate.fid": {"$mod": [2, 1]}},
    {"candidate.fid": {"$mod": [3, -1]}},
    {"candidate.isdiffpos": {"$in": ["t", "1", "true", True, 1]}},
    {"candidate.isdiffpos": {"$nin": ["f", None]}},
    {"candidate.isdiffpos": {"$regex": "^T", "$options": "i"}},
    {"candidate.isdiffpos": {"$not": {"$regex": "^t"}}},
    {"candidate.tags": "apple"},
    {"candidate.tags": ["apple", 5]},
    {"candidate.tags": []},
    {"candidate.tags": {"$size": 2}},
    {"candidate.tags": {"$all": ["apple", 5]}},
    {"candidate.tags": {"$elemMatch": {"$gt": 4}}},
    {"candidate.tags": {"$type": "array"}},
    {"candidate.tags.1": {"$gte": 5}},
    {"candidate.tags": {"$gt": 1, "$lt": 5}},
    {"candidate.hist.b": 5},
    {"candidate.hist.b": {"$gt": 2}},
    {"candidate.hist.b": {"$exists": False}},
    {"candidate.hist.0.b": {"$lte": 5}},
    {"candidate.hist": {"$size": 1}},
    {"candidate.hist.c": {"$in": [1, "t"]}},
    {"ingested_at": {"$gte": T0 + timedelta(days=1, milliseconds=1)}},
    {"ingested_at": DATES[1]},  # stored to the millisecond: 1.5 ms becomes 1 ms
    {"annotations.btsbot.score": {"$gte": 0.5}, "annotations.btsbot.version": "v1.0.1"},
    {"$or": [{"candidate.magpsf": {"$lt": 18}}, {"candidate.fid": 2}]},
    {"$nor": [{"candidate.magpsf": {"$lt": 18}}, {"candidate.fid": None}]},
    {"$and": [{"candidate.fid": {"$exists": True}}, {"candidate.fid": {"$ne": 1}}]},
]


@dataclass
class Stored:
    """Documents as built in Python, their collection, and the same documents read back."""

    docs: list[dict[str, Any]]
    collection: Collection[dict[str, Any]]
    read_back: list[dict[str, Any]]

    def check(self, query: dict[str, Any]) -> None:
        # Everything compared here is a query the broker accepts as a filter.
        compile_query(query, fields=ALERT_FIELDS)
        try:
            expected = {doc["_id"] for doc in self.collection.find(query, {"_id": 1})}
        except OperationFailure as exc:
            pytest.fail(f"the server refused {query}: {exc}")
        matcher = compile_query(query)
        built = {doc["_id"] for doc in self.docs if matcher.matches(doc)}
        stored = {doc["_id"] for doc in self.read_back if matcher.matches(doc)}
        assert built == expected, _explain(query, built, expected, self.docs)
        assert stored == expected, _explain(query, stored, expected, self.read_back)


def _explain(
    query: dict[str, Any], ours: set[Any], server: set[Any], docs: list[dict[str, Any]]
) -> str:
    by_id = {doc["_id"]: doc for doc in docs}
    extra = [by_id[i] for i in sorted(ours - server, key=str)[:3]]
    missed = [by_id[i] for i in sorted(server - ours, key=str)[:3]]
    return f"{query}: matched only in-process: {extra}; only by the server: {missed}"


def _store(database: Any, name: str, docs: list[dict[str, Any]]) -> Stored:
    collection = database[name]
    collection.insert_many([dict(doc) for doc in docs])  # insert_many adds nothing to copies
    return Stored(docs, collection, list(collection.find()))


@pytest.fixture(scope="module")
def database(mongo_client: MongoClient[dict[str, Any]]) -> Iterator[Any]:
    name = f"nightjar_test_query_{uuid.uuid4().hex[:12]}"
    yield mongo_client[name]
    mongo_client.drop_database(name)


@pytest.fixture(scope="module")
def synthetic(database: Any) -> Stored:
    rng = random.Random(SEED)
    return _store(database, "synthetic", [synthetic_doc(rng, i) for i in range(SYNTHETIC)])


@pytest.fixture(scope="module")
def realistic(database: Any, shared_alerts: list[Path]) -> Stored:
    return _store(database, "alerts", realistic_docs(shared_alerts))


@pytest.fixture(scope="module")
def shared_alerts() -> list[Path]:
    reference = Path(__file__).resolve().parents[3] / "shared" / "reference"
    if not reference.is_dir():
        pytest.skip("../shared/reference is absent: real alerts not available")
    ztf = sorted((reference / "ztf" / "alerts").rglob("*.avro"))
    return [*ztf, reference / "lsst" / "alerts" / "25409136044802067.avro"]


# -- documents ---------------------------------------------------------------------------


def synthetic_doc(rng: random.Random, index: int) -> dict[str, Any]:
    doc: dict[str, Any] = {"_id": index}
    for path in SCALAR_PATHS:
        if rng.random() < 0.85:
            _put(doc, path, _scalar_or_subdoc(rng))
    if rng.random() < 0.7:
        _put(doc, "candidate.tags", [rng.choice(SCALARS) for _ in range(rng.randrange(4))])
    elif rng.random() < 0.5:
        _put(doc, "candidate.tags", rng.choice(SCALARS))
    if rng.random() < 0.7:
        # Never empty and never scalars: FerretDB matches {"a.b": null} on an array without
        # sub-documents ([] or [1, 2]), released MongoDB (<= 8.x) does not.
        hist = [_hist_entry(rng) for _ in range(rng.randrange(1, 4))]
        _put(doc, "candidate.hist", hist)
    elif rng.random() < 0.5:
        _put(doc, "candidate.hist", _hist_entry(rng) if rng.random() < 0.5 else 5)
    if rng.random() < 0.5:
        _put(doc, "annotations.btsbot.version", rng.choice(["v1.0.1", "v1.0.0"]))
    if rng.random() < 0.5:
        doc["ingested_at"] = rng.choice(DATES)
    return doc


def _scalar_or_subdoc(rng: random.Random) -> Any:
    if rng.random() < 0.1:
        return {"b": rng.choice(SCALARS)}
    return rng.choice(SCALARS)


def _hist_entry(rng: random.Random) -> dict[str, Any]:
    entry: dict[str, Any] = {}
    for key in ("b", "c"):
        if rng.random() < 0.8:
            entry[key] = rng.choice(SCALARS)
    return entry


def _put(doc: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        doc = doc.setdefault(part, {})
    doc[last] = value


def realistic_docs(paths: list[Path]) -> list[dict[str, Any]]:
    """Real alerts as broker.store builds them, each with three sets of model outputs."""
    decoder = Decoder(SchemaSettings(lsst_schema_dir=paths[-1].parents[1] / "schema"), 2**26)
    rng = random.Random(SEED)
    docs: list[dict[str, Any]] = []
    for path in paths:
        try:
            alert = decoder.decode(path.read_bytes())
        except BadAlert:
            continue  # schema 1.x samples without objectId: the broker rejects them too
        for variant in range(3):
            result = AlertResult(
                alert.candid,
                annotations=tuple(
                    Annotation(name, "v1.0.1", round(rng.random(), 3), {"rank": float(variant)})
                    for name in ("btsbot", "tails", "braai")
                    if rng.random() < 0.8
                ),
                skipped=(ModelSkip("acai_h", "not applicable"),) if variant == 2 else (),
            )
            doc: dict[str, Any] = dict(alert_document(alert, result, datetime.now(UTC)))
            doc["_id"] = f"{doc['_id']}#{variant}"
            docs.append(doc)
    return docs


# -- random queries ----------------------------------------------------------------------


def random_query(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    if depth < 2 and rng.random() < 0.25:
        op = rng.choice(["$and", "$or", "$nor"])
        return {op: [random_query(rng, depth + 1) for _ in range(rng.randrange(1, 4))]}
    query: dict[str, Any] = {}
    for _ in range(rng.randrange(1, 3)):
        kind = rng.choice(["scalar", "scalar", "leaf_array", "offset", "crossing"])
        path = rng.choice(PATHS[kind])
        query[path] = random_condition(rng, kind)
    return query


def random_condition(rng: random.Random, kind: str) -> Any:
    ops = ["literal", "$eq", "$gt", "$gte", "$lt", "$lte", "$in", "$exists", "$type", "$size",
           "$regex", "$all", "$elemMatch"]  # fmt: skip
    if kind != "crossing":
        # Through an array of sub-documents FerretDB 1.24 applies a whole condition to one
        # element at a time: it negates $ne/$nin/$not per element (MongoDB: no element may
        # match) and wants both bounds of a range from the same element (MongoDB: any).
        ops += ["$ne", "$nin", "$not", "range"]
    if kind == "scalar":
        ops.append("$mod")  # FerretDB 1.24 does not traverse arrays for $mod
    op = rng.choice(ops)
    if op == "literal":
        return _literal(rng, kind)
    if op == "range":
        low = rng.choice([*NUMBERS, *STRINGS[:4]])
        return {"$gt": low, "$lte": _bound(rng, low)}
    if op == "$not":
        inner = rng.choice(["$gt", "$lte", "$regex", "$in", "$type"])
        return {"$not": _operator(rng, inner, kind)}
    return _operator(rng, op, kind)


def _operator(rng: random.Random, op: str, kind: str) -> dict[str, Any]:
    if op in ("$eq", "$ne"):
        return {op: _literal(rng, kind)}
    if op in ("$gt", "$gte", "$lt", "$lte"):
        return {op: rng.choice([*NUMBERS, *STRINGS, *DATES])}
    if op in ("$in", "$nin"):
        return {op: [_literal(rng, kind) for _ in range(rng.randrange(4))]}
    if op == "$all":
        # FerretDB 1.24 wants every $all value from the same element on paths that cross
        # an array; MongoDB takes them from any elements.
        size = rng.randrange(2 if kind == "crossing" else 3)
        return {op: [rng.choice(SCALARS[:-1]) for _ in range(size)]}
    if op == "$exists":
        return {op: rng.random() < 0.5}
    if op == "$type":
        names = ["double", "string", "object", "array", "bool", "date", "null", "int", "long",
                 "number", 1, 2, 16, 18]  # fmt: skip
        return {op: rng.choice(names)}
    if op == "$size":
        return {op: rng.randrange(4)}
    if op == "$mod":
        return {op: [rng.choice([2, 3, 5, -4]), rng.randrange(-2, 3)]}
    if op == "$regex":
        # No "x": FerretDB 1.24 does not implement that option.
        pattern = rng.choice(["^t", "^Z", "z", "TF2", "^$", "e$", "^[a-f]", "1", "."])
        options = rng.choice(["", "", "i", "m", "s", "im"])
        return {op: pattern, "$options": options} if options else {op: pattern}
    # Single-operator value form only: FerretDB 1.24 rejects $elemMatch on sub-documents and
    # mismatches several operators on one element.
    inner = rng.choice(["$gt", "$lte", "$in", "$eq", "$type", "$regex"])
    return {op: _operator(rng, inner, "leaf_array")}


def _literal(rng: random.Random, kind: str) -> Any:
    if rng.random() < 0.15:
        return [rng.choice(SCALARS[:-1]) for _ in range(rng.randrange(3))]
    # No null on paths that go on past an array: FerretDB 1.24 does not match {"a.b": null}
    # on [{}, {b: 1}] (an element without b) as MongoDB does, and matches {"a.0": null} on []
    # (released MongoDB, up to 8.x, does not).
    return rng.choice(SCALARS if kind in ("scalar", "leaf_array") else SCALARS[:-1])


def _bound(rng: random.Random, low: Any) -> Any:
    if isinstance(low, str):
        return rng.choice(STRINGS)
    return low + rng.choice([0, 1, 5, 20])


# -- tests -------------------------------------------------------------------------------


@pytest.mark.parametrize("query", HAND_WRITTEN, ids=[str(q) for q in HAND_WRITTEN])
def test_hand_written_queries(synthetic: Stored, query: dict[str, Any]) -> None:
    synthetic.check(query)


def test_random_queries(synthetic: Stored) -> None:
    rng = random.Random(SEED)
    matched = 0
    for _ in range(RANDOM_QUERIES):
        query = random_query(rng)
        synthetic.check(query)
        matched += any(compile_query(query).matches(doc) for doc in synthetic.docs)
    # The comparison means something only if queries select some documents, not none.
    assert matched > RANDOM_QUERIES // 4


def test_shipped_filters_on_real_alerts(realistic: Stored) -> None:
    definitions = load_settings(DEFAULT_CONFIG).filters.definitions
    assert {d.name for d in definitions} >= {"bts", "comets"}
    for definition in definitions:
        realistic.check(definition.query)
    bts = compile_query(next(d.query for d in definitions if d.name == "bts"))
    passing = [doc for doc in realistic.docs if bts.matches(doc)]
    assert 0 < len(passing) < len(realistic.docs)


@pytest.mark.parametrize(
    "query",
    [
        {"candidate.drb": {"$gte": 0.9}, "candidate.isdiffpos": {"$in": ["t", "1"]}},
        {"candidate.ssnamenr": {"$exists": True, "$ne": None}},
        {"candidate.ssdistnr": {"$gte": 0, "$lt": 10}},
        {"candidate.magpsf": {"$not": {"$gt": 18}}, "candidate.fid": {"$mod": [2, 0]}},
        {"objectId": {"$regex": "^ztf20a", "$options": "i"}},
        {"survey": "lsst", "candidate.reliability": {"$gt": 0.5}},
        {"candidate.band": {"$in": ["g", "r"]}, "candidate.psfFlux": {"$type": "double"}},
        {"candid": {"$type": "long"}, "candidate.nid": {"$type": "int"}},
        {"annotations.tails": {"$exists": False}},
        {"skipped.acai_h": {"$regex": "applicable"}},
        {"packet.diaObject.nDiaSources": {"$gte": 1}},
        {"schema_version": {"$gte": "3.3"}, "cutouts.science": {"$type": "binData"}},
        {"ingested_at": {"$lt": datetime.now(UTC) + timedelta(days=1)}},
        {"$or": [{"annotations.braai.score": {"$lt": 0.2}}, {"candidate.rb": {"$lt": 0.3}}]},
        {"annotations.btsbot.rank": 2.0},
    ],
)
def test_queries_on_real_alerts(realistic: Stored, query: dict[str, Any]) -> None:
    realistic.check(query)
