"""broker.query: MongoDB's matching semantics, operator by operator, without a database.

Each case is (query, document, expected) as MongoDB answers it; the differential test in
tests/integration/test_query_differential.py checks the same machinery against the server.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from bson import Int64

from broker.query import compile_query
from broker.settings import DEFAULT_CONFIG, load_settings

NAN = float("nan")
T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)

Case = tuple[dict[str, Any], dict[str, Any], bool]

EQUALITY: list[Case] = [
    ({"a": 1}, {"a": 1}, True),
    ({"a": 1}, {"a": 1.0}, True),  # numbers compare across int/float
    ({"a": 1}, {"a": Int64(1)}, True),
    ({"a": 1}, {"a": True}, False),  # bool is its own BSON type
    ({"a": True}, {"a": 1}, False),
    ({"a": 1}, {"a": "1"}, False),
    ({"a": 1}, {"a": [3, 1]}, True),  # any element
    ({"a": 1}, {"a": [[1]]}, False),  # nested arrays are not flattened
    ({"a": 1}, {}, False),
    ({"a": [1, 2]}, {"a": [1, 2]}, True),  # the whole array
    ({"a": [1, 2]}, {"a": [1.0, 2]}, True),
    ({"a": [1, 2]}, {"a": [2, 1]}, False),
    ({"a": [1, 2]}, {"a": [[1, 2], 3]}, True),  # ... or an element that is that array
    ({"a": [1, 2]}, {"a": [1, 2, 3]}, False),
    ({"a": []}, {"a": []}, True),
    ({"a": "x"}, {"a": "x"}, True),
    ({"a": "x"}, {"a": "X"}, False),
    ({"a": {"$eq": 2}}, {"a": [1, 2]}, True),
    ({"a": T0}, {"a": T0 + timedelta(microseconds=999)}, True),  # BSON dates are milliseconds
    ({"a": T0}, {"a": T0 + timedelta(milliseconds=1)}, False),
    ({"a": T0}, {"a": T0.replace(tzinfo=None)}, True),  # naive datetimes are UTC
    ({"a": T0}, {"a": T0.astimezone(timezone(timedelta(hours=2)))}, True),
]
NULLS: list[Case] = [
    ({"a": None}, {}, True),
    ({"a": None}, {"a": None}, True),
    ({"a": None}, {"a": 0}, False),
    ({"a": None}, {"a": []}, False),
    ({"a": None}, {"a": [1, None]}, True),
    ({"a.b": None}, {"a": 5}, True),  # a scalar where the path goes on: missing
    ({"a.b": None}, {"a": {"c": 1}}, True),
    ({"a.b": None}, {"a": [{"c": 1}]}, True),  # an element without b
    ({"a.b": None}, {"a": [1, 2]}, False),  # scalars in a traversed array yield nothing
    ({"a.b": None}, {"a": []}, False),
    ({"a": {"$ne": None}}, {}, False),
    ({"a": {"$ne": None}}, {"a": 0}, True),
    ({"a": {"$ne": None}}, {"a": [1, None]}, False),
    ({"a": {"$in": [None, 5]}}, {}, True),
    ({"a": {"$in": [5]}}, {}, False),
    ({"a": {"$nin": [None]}}, {}, False),
    ({"a": {"$nin": [5]}}, {}, True),
]
PATHS: list[Case] = [
    ({"a.b.c": 1}, {"a": {"b": {"c": 1}}}, True),
    ({"a.b": 1}, {"a": [{"b": 2}, {"b": 1}]}, True),
    ({"a.b": 1}, {"a": [{"b": [0, 1]}]}, True),  # arrays at every level
    ({"a.b": 1}, {"a": [[{"b": 1}]]}, False),  # ... but not arrays directly in arrays
    ({"a.b.c": 1}, {"a": [{"b": [{"c": 1}]}]}, True),
    ({"a.0": 5}, {"a": [5, 6]}, True),  # a numeric component indexes arrays
    ({"a.0": 5}, {"a": [6, 5]}, False),
    ({"a.0": 5}, {"a": {"0": 5}}, True),  # ... and names fields of documents
    ({"a.0": 5}, {"a": [[5]]}, False),  # an explicit offset yields the element as it is
    ({"a.1.b": 2}, {"a": [{"b": 1}, {"b": 2}]}, True),
    ({"a.1.b": 2}, {"a": [{"b": 2}, {"b": 1}]}, False),
    ({"a.0.0": 7}, {"a": [[7, 8]]}, True),
    ({"a.01": 5}, {"a": [1, 5]}, False),  # "01" is not an offset
]
COMPARISONS: list[Case] = [
    ({"a": {"$gt": 5}}, {"a": 6}, True),
    ({"a": {"$gt": 5}}, {"a": 5}, False),
    ({"a": {"$gte": 5}}, {"a": 5.0}, True),
    ({"a": {"$gt": 5}}, {"a": 5.5}, True),
    ({"a": {"$gt": 5}}, {"a": "6"}, False),  # a string never compares to a number
    ({"a": {"$gt": 0}}, {"a": True}, False),
    ({"a": {"$gt": 5}}, {"a": [1, 7]}, True),
    ({"a": {"$gt": 5}}, {"a": [1, 2]}, False),
    ({"a": {"$lt": 5}}, {"a": None}, False),
    ({"a": {"$lt": 5}}, {}, False),
    ({"a": {"$lt": 5}}, {"a": NAN}, False),  # NaN compares false to everything
    ({"a": {"$gt": 5}}, {"a": NAN}, False),
    ({"a": {"$lt": 2**53 + 1}}, {"a": float(2**53)}, True),  # exact int/float comparison
    ({"a": {"$lt": "m"}}, {"a": "apple"}, True),
    ({"a": {"$lt": "m"}}, {"a": "zebra"}, False),
    ({"a": {"$lt": "m"}}, {"a": 1}, False),
    ({"a": {"$lt": "b"}}, {"a": "B"}, True),  # binary order: upper case first
    ({"a": {"$gte": T0}}, {"a": T0 + timedelta(days=1)}, True),
    ({"a": {"$gte": T0}}, {"a": T0 - timedelta(microseconds=1)}, False),
    ({"a": {"$gte": T0}}, {"a": 1e20}, False),
    ({"a": {"$gt": 1, "$lt": 5}}, {"a": [0, 10]}, True),  # each bound on any element
    ({"a": {"$gt": 1, "$lt": 5}}, {"a": 10}, False),
]
NEGATIONS: list[Case] = [
    ({"a": {"$ne": 1}}, {}, True),
    ({"a": {"$ne": 1}}, {"a": 2}, True),
    ({"a": {"$ne": 1}}, {"a": 1.0}, False),
    ({"a": {"$ne": 1}}, {"a": [1, 2]}, False),  # no element may equal it
    ({"a": {"$ne": 1}}, {"a": [2, 3]}, True),
    ({"a": {"$ne": 1}}, {"a": True}, True),
    ({"a": {"$not": {"$gt": 5}}}, {"a": 3}, True),
    ({"a": {"$not": {"$gt": 5}}}, {"a": 6}, False),
    ({"a": {"$not": {"$gt": 5}}}, {}, True),
    ({"a": {"$not": {"$gt": 5}}}, {"a": "x"}, True),
    ({"a": {"$not": {"$gt": 5}}}, {"a": [1, 6]}, False),
    ({"a": {"$not": {"$gt": 1, "$lt": 5}}}, {"a": 7}, True),
    ({"a": {"$not": {"$regex": "^Z"}}}, {"a": "ZTF"}, False),
    ({"a": {"$not": {"$regex": "^z", "$options": "i"}}}, {"a": "ZTF"}, False),
    ({"a": {"$not": {"$regex": "^Z"}}}, {"a": 5}, True),
]
SETS: list[Case] = [
    ({"a": {"$in": [1, "x"]}}, {"a": 1.0}, True),
    ({"a": {"$in": [1, "x"]}}, {"a": True}, False),
    ({"a": {"$in": [True]}}, {"a": 1}, False),
    ({"a": {"$in": [1, "x"]}}, {"a": [2, "x"]}, True),
    ({"a": {"$in": [1, "x"]}}, {"a": [2]}, False),
    ({"a": {"$in": [[1, 2]]}}, {"a": [1, 2]}, True),
    ({"a": {"$in": [[1, 2]]}}, {"a": [[1, 2], 3]}, True),
    ({"a": {"$in": [[1, 2]]}}, {"a": 1}, False),
    ({"a": {"$in": [T0]}}, {"a": T0}, True),
    ({"a": {"$in": []}}, {"a": 1}, False),
    ({"a": {"$nin": [1, 2]}}, {"a": [3, 2]}, False),
    ({"a": {"$nin": [1, 2]}}, {"a": [3, 4]}, True),
    ({"a": {"$nin": []}}, {}, True),
    ({"a": {"$all": [1, 2]}}, {"a": [2, 3, 1]}, True),
    ({"a": {"$all": [1, 2]}}, {"a": [1]}, False),
    ({"a": {"$all": [1]}}, {"a": 1}, True),
    ({"a": {"$all": [[1, 2]]}}, {"a": [1, 2]}, True),
    ({"a": {"$all": []}}, {"a": [1]}, False),
    ({"a.b": {"$all": [1, 2]}}, {"a": [{"b": 1}, {"b": 2}]}, True),
]
ELEMENT: list[Case] = [
    ({"a.b": {"$exists": True}}, {"a": {"b": None}}, True),
    ({"a.b": {"$exists": True}}, {"a": [{"b": 1}]}, True),
    ({"a.b": {"$exists": True}}, {"a": [1]}, False),
    ({"a.b": {"$exists": False}}, {"a": [1]}, True),
    ({"a.b": {"$exists": False}}, {"a": 5}, True),
    ({"a.b": {"$exists": False}}, {"a": [{"b": 1}, {}]}, False),
    ({"a": {"$type": "string"}}, {"a": ["x", 1]}, True),
    ({"a": {"$type": "array"}}, {"a": []}, True),
    ({"a": {"$type": "array"}}, {"a": [[1]]}, True),
    ({"a": {"$type": "array"}}, {"a": {}}, False),
    ({"a": {"$type": "object"}}, {"a": {}}, True),
    ({"a": {"$type": "number"}}, {"a": 1.5}, True),
    ({"a": {"$type": "number"}}, {"a": True}, False),
    ({"a": {"$type": "int"}}, {"a": 7}, True),
    ({"a": {"$type": "int"}}, {"a": 2**40}, False),  # pymongo writes it as an int64
    ({"a": {"$type": "long"}}, {"a": 2**40}, True),
    ({"a": {"$type": "long"}}, {"a": Int64(1)}, True),
    ({"a": {"$type": "double"}}, {"a": 1.0}, True),
    ({"a": {"$type": "double"}}, {"a": 1}, False),
    ({"a": {"$type": "null"}}, {"a": None}, True),
    ({"a": {"$type": "null"}}, {}, False),
    ({"a": {"$type": "bool"}}, {"a": False}, True),
    ({"a": {"$type": "date"}}, {"a": T0}, True),
    ({"a": {"$type": "binData"}}, {"a": b"\x00"}, True),
    ({"a": {"$type": 2}}, {"a": "x"}, True),
    ({"a": {"$size": 2}}, {"a": [1, 2]}, True),
    ({"a": {"$size": 2}}, {"a": [[1, 2]]}, False),  # the array itself, not its elements
    ({"a": {"$size": 0}}, {"a": []}, True),
    ({"a": {"$size": 0}}, {}, False),
    ({"a": {"$size": 1}}, {"a": "x"}, False),
    ({"a.b": {"$size": 1}}, {"a": [{"b": [1]}, {"b": 2}]}, True),
    ({"a": {"$mod": [4, 1]}}, {"a": 5}, True),
    ({"a": {"$mod": [4, 1]}}, {"a": 5.9}, True),  # doubles are truncated
    ({"a": {"$mod": [4, 1]}}, {"a": -7}, False),
    ({"a": {"$mod": [4, -3]}}, {"a": -7}, True),  # the remainder's sign follows the dividend
    ({"a": {"$mod": [4, 1]}}, {"a": "5"}, False),
    ({"a": {"$mod": [4, 1]}}, {"a": True}, False),
    ({"a": {"$mod": [4, 1]}}, {"a": float("inf")}, False),
    ({"a": {"$mod": [4, 1]}}, {"a": [2, 9]}, True),
]
REGEX: list[Case] = [
    ({"s": {"$regex": "^ZTF2"}}, {"s": "ZTF20abc"}, True),
    ({"s": {"$regex": "^ZTF2"}}, {"s": "ztf20abc"}, False),
    ({"s": {"$regex": "^ZTF2", "$options": "i"}}, {"s": "ztf20abc"}, True),
    ({"s": {"$regex": "20"}}, {"s": "ZTF20"}, True),  # a search, not a full match
    ({"s": {"$regex": "^b"}}, {"s": "a\nb"}, False),
    ({"s": {"$regex": "^b", "$options": "m"}}, {"s": "a\nb"}, True),
    ({"s": {"$regex": "a.b"}}, {"s": "a\nb"}, False),
    ({"s": {"$regex": "a.b", "$options": "s"}}, {"s": "a\nb"}, True),
    ({"s": {"$regex": "Z T F", "$options": "x"}}, {"s": "ZTF"}, True),
    ({"s": {"$regex": "^Z"}}, {"s": ["a", "ZTF"]}, True),
    ({"s": {"$regex": "5"}}, {"s": 5}, False),  # strings only
    ({"s": {"$regex": "^$"}}, {}, False),
]
ELEM_MATCH: list[Case] = [
    ({"a": {"$elemMatch": {"$gt": 1, "$lt": 5}}}, {"a": [0, 10]}, False),
    ({"a": {"$elemMatch": {"$gt": 1, "$lt": 5}}}, {"a": [0, 3]}, True),
    ({"a": {"$elemMatch": {"$gt": 1}}}, {"a": 3}, False),  # not an array
    ({"a": {"$elemMatch": {"$gt": 1}}}, {"a": [[3]]}, False),
    ({"a": {"$elemMatch": {"$ne": 1}}}, {"a": [1, 2]}, True),  # per element
    ({"a": {"$elemMatch": {"$not": {"$gt": 5}}}}, {"a": [9, 3]}, True),
    ({"a": {"$elemMatch": {"$size": 1}}}, {"a": [[3]]}, True),
    ({"a": {"$elemMatch": {"$in": [None]}}}, {"a": [None]}, True),
    ({"a": {"$elemMatch": {"$exists": False}}}, {"a": [1]}, False),
    ({"a": {"$elemMatch": {"b": 1, "c": {"$gt": 1}}}}, {"a": [{"b": 1, "c": 2}]}, True),
    ({"a": {"$elemMatch": {"b": 1, "c": {"$gt": 1}}}}, {"a": [{"b": 1}, {"c": 2}]}, False),
    ({"a": {"$elemMatch": {"b": None}}}, {"a": [{"c": 1}]}, True),
    ({"a": {"$elemMatch": {"b": None}}}, {"a": [1]}, False),  # scalars are not documents
    ({"a": {"$elemMatch": {"$or": [{"b": 1}, {"c": 1}]}}}, {"a": [{"c": 1}]}, True),
    ({"a": {"$elemMatch": {"0": 1}}}, {"a": [[1, 2]]}, True),  # a nested array as a document
    ({"a.b": {"$elemMatch": {"$gte": 2}}}, {"a": [{"b": [1]}, {"b": [2]}]}, True),
]
LOGICAL: list[Case] = [
    ({"a": 1, "b": 2}, {"a": 1, "b": 2}, True),
    ({"a": 1, "b": 2}, {"a": 1}, False),
    ({"$and": [{"a": 1}, {"a": 2}]}, {"a": [1, 2]}, True),
    ({"$or": [{"a": 1}, {"b": 1}]}, {"b": 1}, True),
    ({"$or": [{"a": 1}, {"b": 1}]}, {}, False),
    ({"$nor": [{"a": 1}, {"b": 1}]}, {}, True),
    ({"$nor": [{"a": 1}, {"b": 1}]}, {"a": [1]}, False),
    ({"$or": [{"a": {"$gt": 3}}], "b": {"$exists": False}}, {"a": 4}, True),
]


def _ids(cases: list[Case]) -> list[str]:
    return [f"{query}~{doc}" for query, doc, _ in cases]


@pytest.mark.parametrize(
    ("query", "doc", "expected"),
    EQUALITY + NULLS + PATHS + COMPARISONS + NEGATIONS + SETS + ELEMENT + REGEX + ELEM_MATCH
    + LOGICAL,
    ids=_ids(
        EQUALITY + NULLS + PATHS + COMPARISONS + NEGATIONS + SETS + ELEMENT + REGEX + ELEM_MATCH
        + LOGICAL
    ),
)  # fmt: skip
def test_mongodb_semantics(query: dict[str, Any], doc: dict[str, Any], expected: bool) -> None:
    assert compile_query(query).matches(doc) is expected


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ({"a": {"$where": "1"}}, "operator $where is not supported"),
        ({"$text": {"$search": "x"}}, "operator $text is not supported here"),
        ({"a": {"$gt": True}}, "$gt needs a number, string or date"),
        ({"a": {"$lt": NAN}}, "$lt needs a number"),
        ({"a": {"$eq": NAN}}, "is not a finite number"),
        ({"a": {"$type": "float"}}, "unsupported type 'float'"),
        ({"a": {"$type": 6}}, "unsupported type 6"),  # 'undefined': deprecated, never stored
        ({"a": {"$regex": "("}}, "not a valid regular expression"),
        ({"a": {"$regex": "a\0"}}, "without NUL bytes"),
        ({"a": {"$options": "i"}}, "$options needs a $regex"),
        ({"a": {"$regex": "x", "$options": "g"}}, "must be letters of 'imsx'"),
        ({"a": {"b": 1}}, "matching a whole sub-document is not supported"),
        ({"a": {"$in": [{"b": 1}]}}, "matching a whole sub-document is not supported"),
        ({"a": {"$size": -1}}, "$size needs a non-negative integer"),
        ({"a": {"$size": 1.5}}, "$size needs a non-negative integer"),
        ({"a": {"$mod": [0, 1]}}, "divisor != 0"),
        ({"a": {"$mod": [2]}}, "[divisor, remainder]"),
        ({"a": {"$in": 1}}, "$in needs a list"),
        ({"a": {"$all": "x"}}, "$all needs a list"),
        ({"a": {"$exists": "yes"}}, "$exists needs true or false"),
        ({"a": {"$not": 1}}, "$not needs a mapping of operators"),
        ({"a": {"$elemMatch": {}}}, "$elemMatch needs a mapping of conditions"),
        ({"a": {"$gt": 1, "b": 2}}, "do not mix operators and field names"),
        ({"a..b": 1}, "not a valid field path"),
        ({"a.$b": 1}, "not a valid field path"),
        ({"$or": []}, "$or must be a non-empty list"),
        ({"$and": [{"a": 1}, "x"]}, "query.$and[1] must be a non-empty mapping"),
        ({}, "query must be a non-empty mapping"),
        ({"a": {"$eq": object()}}, "unsupported value"),
    ],
)
def test_refuses_what_it_cannot_evaluate(query: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValueError) as caught:
        compile_query(query)
    assert reason in str(caught.value)


def test_shipped_filters_on_alert_shaped_documents() -> None:
    definitions = {d.name: d for d in load_settings(DEFAULT_CONFIG).filters.definitions}
    bts, comets = (
        compile_query(definitions["bts"].query),
        compile_query(definitions["comets"].query),
    )

    def doc(btsbot: float | None = 0.9, tails: float = 0.1, **candidate: Any) -> dict[str, Any]:
        base = {"magpsf": 18.0, "isdiffpos": "t", "sgscore1": 0.1, "distpsnr1": 0.5}
        annotations: dict[str, Any] = {"tails": {"score": tails, "version": "v1"}}
        if btsbot is not None:
            annotations["btsbot"] = {"score": btsbot, "version": "v1.0.1"}
        return {"candidate": {**base, **candidate}, "annotations": annotations}

    assert bts.matches(doc())
    assert bts.matches(doc(isdiffpos="1"))
    assert bts.matches(doc(sgscore1=0.99, distpsnr1=5.0))  # star-like but far from it
    assert not bts.matches(doc(sgscore1=0.99, distpsnr1=0.3))  # a PS1 star
    assert not bts.matches(doc(magpsf=19.5))
    assert not bts.matches(doc(isdiffpos="f"))
    assert not bts.matches(doc(btsbot=0.2))
    assert not bts.matches(doc(btsbot=None))  # BTSbot skipped this alert
    assert not bts.matches(doc(magpsf=None))  # NaN magnitudes are stored as null
    assert comets.matches(doc(tails=0.93)) and not comets.matches(doc())


def test_matching_costs_microseconds() -> None:
    # The filter stage runs every filter on every alert; the broker's budget is milliseconds
    # per batch of hundreds. A generous bound: measured ~2-3 us on one core.
    query = load_settings(DEFAULT_CONFIG).filters.definitions[0].query
    matcher = compile_query(query)
    candidate: dict[str, Any] = {f"field{i}": float(i) for i in range(100)}
    candidate.update(magpsf=18.0, isdiffpos="t", sgscore1=0.9, distpsnr1=3.0)
    doc = {"candidate": candidate, "annotations": {"btsbot": {"score": 0.8}}}
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(2000):
            matcher.matches(doc)
        best = min(best, (time.perf_counter() - started) / 2000)
    assert matcher.matches(doc)
    assert best < 50e-6, f"{best * 1e6:.1f} us per document"
