"""Light-curve points: the compact per-detection records kept on the object document.

A detection appears first as an alert's candidate and later in other alerts' history;
points are built with the same fields in the same order so that MongoDB's $addToSet
deduplicates them, and `merge` joins stored points with a packet's history for scoring.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from broker.records import Alert
from broker.surveys import tables


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
