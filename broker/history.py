"""Light-curve points: the compact per-detection records kept on the object document.

A detection appears first as an alert's candidate and later in other alerts' history;
points are built with the same fields in the same order so that MongoDB's $addToSet
deduplicates them, and `merge` joins stored points with a packet's history for scoring.
`repair` makes light curves that several brokers wrote at once hold each point once.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pymongo

from broker.records import Alert
from broker.surveys import tables

log = logging.getLogger(__name__)


def clean_value(value: Any) -> Any:
    """NaN and infinities become None: FerretDB (and JSON) cannot hold them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def clean(value: Any) -> Any:
    """A decoded Avro value with every NaN/infinity (at any depth) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value


def point(survey: str, entry: Mapping[str, Any]) -> dict[str, Any]:
    """The compact light-curve point of one detection or upper limit: the survey's fields
    that have a value (null, NaN and infinities are left out), in `point_fields` order.

    An upper limit has no magnitude, position or scores; stored as nulls they would still
    cost their space in every update of the object (FerretDB keeps a type entry beside each
    field of each point, and re-encodes the whole light curve per update). Readers use
    .get(): a missing field reads as None, and a MongoDB query on it behaves as on null.
    """
    values = ((name, clean_value(entry.get(name))) for name in tables(survey).point_fields)
    return {name: value for name, value in values if value is not None}


def alert_points(alert: Alert) -> list[dict[str, Any]]:
    """Points contributed by an alert: its own candidate and its packet history."""
    entries: Iterable[Mapping[str, Any]] = (*alert.history, alert.candidate)
    return [point(alert.survey, entry) for entry in entries]


def point_key(survey: str, entry: Mapping[str, Any]) -> tuple[Any, ...]:
    """Identity of a point: its detection id, else (time, band) for upper limits."""
    fields = tables(survey)
    ident = entry.get(fields.id_field)
    if ident is not None:
        return ("id", ident)
    return ("t", entry.get(fields.time_field), entry.get(fields.band_field))


def merge(
    survey: str,
    packet_history: Sequence[Mapping[str, Any]],
    stored: Sequence[Mapping[str, Any]],
    exclude_id: Any = None,
) -> tuple[Mapping[str, Any], ...]:
    """Packet history plus earlier stored points, deduplicated, oldest first.

    Packet entries win over stored points of the same detection (they carry every
    field). `exclude_id` drops the alert's own detection so history stays "before".
    """
    merged: dict[tuple[Any, ...], Mapping[str, Any]] = {}
    for entry in (*stored, *packet_history):
        merged[point_key(survey, entry)] = entry
    if exclude_id is not None:
        merged.pop(("id", exclude_id), None)
    time_field = tables(survey).time_field
    return tuple(sorted(merged.values(), key=lambda e: _time(e.get(time_field))))


def _time(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and value == value else math.inf


# -- Light curves shared by several brokers ----------------------------------------
# Input: the `objects` collection and the points a batch's updates meant to add, per object
# key. Output: the same collection, repaired; the number of objects that needed it.
#
# A broker stores an object's new points with one `$addToSet` upsert, knowing the points it
# read before scoring (and what its own earlier batches added since). Brokers in one consumer
# group do not know each other's batches, and the same object can reach two of them at once:
# - each may add its own form of one detection (an alert's candidate carries fields, such as
#   ZTF's drb, that the same detection in a later alert's history lacks), so $addToSet keeps
#   both;
# - FerretDB 1.x runs an update as read, change, write of the whole document, with no lock in
#   between: an update that read the object before another's write undoes that write.
# So, after its updates, a batch reads its objects back (one query) and repairs them with
# per-point idempotent updates that MongoDB and FerretDB both run, no transaction: a missing
# point is added again ($addToSet), a detection held in several forms keeps the fullest one
# ($pullAll of the others: exact matches only). Any broker may repair any object, in any
# order, any number of times: they all converge on the same light curve.
#
# A write that undoes ours after our read-back (another broker's update that read the object
# before our write and lands after our check) is in flight while we check: one more read,
# SETTLE_SECONDS after the last clean one, catches it (the e2e and store tests found such
# writes in about one run in three without it). What remains is a write that takes longer
# than that; the next alert of that object carries the lost detection in its history and
# adds it again.

Points = Mapping[str, Sequence[Mapping[str, Any]]]

# Read-back rounds: a repair can itself be undone by a concurrent write, so check again.
ROUNDS = 3
# Longer than one update statement takes on FerretDB (a few ms; tens under load): the wait
# before the last read-back. It delays the writer thread only where several brokers share
# a database (mongo.repair_light_curves).
SETTLE_SECONDS = 0.05


def repair(objects: Any, wanted: Points, chunk: int) -> int:
    """Re-read the objects of `wanted` and fix them until none needs it; objects repaired.

    `objects` is the pymongo collection; `chunk` the most updates sent in one command.
    """
    repaired: set[str] = set()
    pending = dict(wanted)
    settled = False
    for _ in range(ROUNDS + 1):
        stored = _light_curves(objects, sorted(pending))
        fixes = {key: fix for key in pending if (fix := object_fix(key, pending[key], stored))}
        if not fixes:
            if settled or not pending:
                break
            # Clean now; a write that read before ours may still land: look once more, at
            # every object (one that was clean at the first look may be the one undone).
            settled = True
            time.sleep(SETTLE_SECONDS)
            pending = dict(wanted)
            continue
        ops = [op for key in sorted(fixes) for op in fixes[key]]
        for start in range(0, len(ops), chunk):
            objects.bulk_write(ops[start : start + chunk], ordered=True)
        repaired |= fixes.keys()
        pending = {key: pending[key] for key in fixes}
        settled = False
    if repaired:
        log.info(
            "repaired the light curves of %d objects written by another broker too", len(repaired)
        )
    return len(repaired)


def object_fix(
    key: str, wanted: Sequence[Mapping[str, Any]], stored: Mapping[str, list[dict[str, Any]]]
) -> list[pymongo.UpdateOne]:
    """The updates that make object `key` hold every `wanted` point once; [] if it does."""
    survey = key.split(":", 1)[0]
    curve = stored.get(key, [])
    forms: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for point in curve:
        forms.setdefault(point_key(survey, point), []).append(point)
    missing = [p for p in wanted if point_key(survey, p) not in forms]
    extra = [p for ident, held in forms.items() for p in surplus_forms(ident, held)]
    ops = []
    if extra:
        ops.append(pymongo.UpdateOne({"_id": key}, {"$pullAll": {"lightcurve": extra}}))
    if missing:
        # No upsert: the batch's own upsert created the object; if it is gone, so be it.
        ops.append(
            pymongo.UpdateOne({"_id": key}, {"$addToSet": {"lightcurve": {"$each": missing}}})
        )
    return ops


def surplus_forms(ident: tuple[Any, ...], held: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The forms of one detection to remove: all but the fullest (the same on every broker).

    Upper limits have no id: their points are identical wherever they come from. Identical
    copies cannot be told apart by $pullAll (it would remove every one), so none is pulled.
    """
    if ident[0] != "id" or len(held) < 2:
        return []
    keep = max(held, key=lambda p: (len(p), sorted(map(repr, p.items()))))
    return [p for p in held if p != keep]


def _light_curves(objects: Any, keys: list[str]) -> dict[str, list[dict[str, Any]]]:
    if not keys:
        return {}
    # `_id` $in: an index lookup on MongoDB and on Nightjar's FerretDB (see history_filter).
    cursor = objects.find({"_id": {"$in": keys}}, {"lightcurve": 1})
    return {doc["_id"]: list(doc.get("lightcurve") or []) for doc in cursor}
