"""Filter stage: named MongoDB queries over a batch of stored alerts -> outbox jobs.

Input: the alert documents the store just wrote, matched in-process (`broker.query`, with
MongoDB's semantics) rather than queried back. Output: `FilterMatch` records (the publisher
sends each to its filter's topic) and one outbox job per (candid, filter), written in one bulk
insert per batch. Never speaks HTTP: `broker.post.sender` drains the outbox on its own thread.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pymongo.errors import ConnectionFailure

from broker.errors import ConfigError, TransientError
from broker.metrics import FILTER_ERRORS, FILTER_MATCHES
from broker.post.outbox import Outbox
from broker.query import Matcher, compile_query
from broker.records import FilterMatch

if TYPE_CHECKING:
    from pymongo.database import Database

    from broker.settings import FilterDefinition, Settings

log = logging.getLogger(__name__)

# Query operators broker.query evaluates with MongoDB's semantics ($expr, $where, $text and
# the geo operators are not wanted in config; FerretDB 1.24 lacks most of them too).
LOGICAL_OPERATORS = frozenset({"$and", "$or", "$nor"})
FIELD_OPERATORS = frozenset(
    {
        "$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$all", "$exists",
        "$type", "$size", "$mod", "$regex", "$options", "$not", "$elemMatch",
    }
)  # fmt: skip
# Top-level fields of the stored alert document (broker.store.AlertDocument). The light
# curve is not one of them: it lives in `objects.lightcurve`.
ALERT_FIELDS = frozenset(
    {
        "_id", "survey", "candid", "objectId", "ra", "dec", "jd", "schema_version",
        "candidate", "packet", "cutouts", "annotations", "skipped", "broker", "ingested_at",
        "origin",
    }
)  # fmt: skip
_BSON_TYPES = frozenset(
    {
        "double", "string", "object", "array", "binData", "objectId", "bool", "date", "null",
        "regex", "int", "timestamp", "long", "decimal", "number",
    }
)  # fmt: skip


class FilterStage:
    """Runs every enabled filter over a batch in-process, then writes the outbox once."""

    def __init__(self, definitions: Sequence[FilterDefinition], db: Database[Any]) -> None:
        self._filters: list[tuple[FilterDefinition, Matcher]] = []
        for definition in definitions:
            try:
                matcher = check_query(definition.query)
            except ValueError as exc:
                raise ConfigError(
                    f"filters.definitions: filter {definition.name!r}: {exc}"
                ) from exc
            if definition.enabled:
                self._filters.append((definition, matcher))
        self._outbox = Outbox(db)
        self._outbox.ensure_indexes()

    @classmethod
    def from_settings(cls, settings: Settings, db: Database[Any]) -> FilterStage:
        return cls(settings.filters.definitions, db)

    @property
    def names(self) -> list[str]:
        return [definition.name for definition, _ in self._filters]

    def run(self, docs: Sequence[Mapping[str, Any]]) -> list[FilterMatch]:
        """Match the stored documents against every filter; queue a post per match."""
        if not docs or not self._filters:
            return []
        started = time.monotonic()
        matches: list[FilterMatch] = []
        for definition, matcher in self._filters:
            matches.extend(_matches(definition, matcher, docs))
        matched = time.monotonic()
        try:
            queued = self._outbox.enqueue(matches)
        except ConnectionFailure as exc:
            raise TransientError(f"cannot write outbox jobs: {exc}") from exc
        log.debug(
            "filters: %d alerts x %d filters matched in %.4f s: %d matches, %d new outbox jobs",
            len(docs),
            len(self._filters),
            matched - started,
            len(matches),
            queued,
        )
        return matches


def _matches(
    definition: FilterDefinition, matcher: Matcher, docs: Sequence[Mapping[str, Any]]
) -> list[FilterMatch]:
    try:
        found = [
            FilterMatch(
                filter=definition.name,
                alert_id=str(doc["_id"]),
                candid=int(doc["candid"]),
                object_id=str(doc["objectId"]),
                survey=str(doc["survey"]),
                fritz_filter_id=definition.fritz_filter_id,
                group_ids=tuple(definition.group_ids),
            )
            for doc in docs
            if matcher.matches(doc)
        ]
    except (KeyError, TypeError, ValueError) as exc:
        # The matcher takes any BSON-like document; a document without candid or objectId is
        # a bug upstream. Like a failing model: this filter loses this batch, the stream goes on.
        FILTER_ERRORS.labels(filter=definition.name).inc()
        log.warning("filter %r failed on %d alerts: %r", definition.name, len(docs), exc)
        return []
    FILTER_MATCHES.labels(filter=definition.name).inc(len(found))
    return found


def check_query(query: Any) -> Matcher:
    """The compiled query; ValueError names the first operator, path or value refused."""
    _check_document(query, "query", relative=False)
    return compile_query(query)


def _check_document(doc: Any, where: str, *, relative: bool) -> None:
    if not isinstance(doc, Mapping) or not doc:
        raise ValueError(f"{where} must be a non-empty mapping of field paths to conditions")
    for key, value in doc.items():
        if not isinstance(key, str):
            raise ValueError(f"{where}: key {key!r} is not a string")
        if key.startswith("$"):
            _check_logical(key, value, where, relative=relative)
        else:
            _check_path(key, where, relative=relative)
            _check_condition(value, f"{where}.{key}")


def _check_logical(operator: str, value: Any, where: str, *, relative: bool) -> None:
    if operator not in LOGICAL_OPERATORS:
        allowed = ", ".join(sorted(LOGICAL_OPERATORS))
        raise ValueError(f"{where}: operator {operator} is not allowed here (allowed: {allowed})")
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}.{operator} must be a non-empty list of conditions")
    for index, sub in enumerate(value):
        _check_document(sub, f"{where}.{operator}[{index}]", relative=relative)


def _check_path(path: str, where: str, *, relative: bool) -> None:
    parts = path.split(".")
    if any(not part or part.startswith("$") for part in parts):
        raise ValueError(f"{where}: {path!r} is not a valid field path")
    if not relative and parts[0] not in ALERT_FIELDS:
        known = ", ".join(sorted(ALERT_FIELDS))
        raise ValueError(f"{where}: {path!r} is not a field of the alert document ({known})")


def _check_condition(value: Any, where: str) -> None:
    if isinstance(value, Mapping) and any(str(key).startswith("$") for key in value):
        if not all(str(key).startswith("$") for key in value):
            raise ValueError(f"{where}: do not mix operators and field names in one mapping")
        for operator, argument in value.items():
            _check_operator(operator, argument, value, where)
    else:
        _check_literal(value, where)


def _check_operator(op: str, arg: Any, siblings: Mapping[str, Any], where: str) -> None:
    if op not in FIELD_OPERATORS:
        allowed = ", ".join(sorted(FIELD_OPERATORS))
        raise ValueError(f"{where}: operator {op} is not supported (allowed: {allowed})")
    here = f"{where}.{op}"
    if op in ("$eq", "$ne"):
        _check_literal(arg, here)
    elif op in ("$gt", "$gte", "$lt", "$lte"):
        if not _is_ordered(arg):
            raise ValueError(f"{here} needs a number, string or date, not {arg!r}")
    elif op in ("$in", "$nin", "$all"):
        if not isinstance(arg, list):
            raise ValueError(f"{here} needs a list, not {arg!r}")
        for index, item in enumerate(arg):
            _check_literal(item, f"{here}[{index}]")
    else:
        _check_special(op, arg, siblings, here)


def _check_special(op: str, arg: Any, siblings: Mapping[str, Any], here: str) -> None:
    if op == "$exists" and not isinstance(arg, bool):
        raise ValueError(f"{here} needs true or false, not {arg!r}")
    if op == "$size" and (not _is_int(arg) or arg < 0):
        raise ValueError(f"{here} needs a non-negative integer, not {arg!r}")
    if op == "$mod" and not (
        isinstance(arg, list) and len(arg) == 2 and all(_is_int(x) for x in arg) and arg[0] != 0
    ):
        raise ValueError(f"{here} needs [divisor, remainder] integers with divisor != 0")
    if op == "$type" and not ((isinstance(arg, str) and arg in _BSON_TYPES) or _is_int(arg)):
        raise ValueError(f"{here}: unknown type {arg!r} (one of {', '.join(sorted(_BSON_TYPES))})")
    if op == "$regex":
        _check_regex(arg, here)
    if op == "$options" and (
        "$regex" not in siblings or not isinstance(arg, str) or set(arg) - set("imsx")
    ):
        raise ValueError(f"{here} must be letters of 'imsx' next to a $regex")
    if op == "$not":
        if not isinstance(arg, Mapping) or not arg or not all(str(k).startswith("$") for k in arg):
            raise ValueError(f"{here} needs a mapping of operators, e.g. {{$gte: 0.5}}")
        _check_condition(arg, here)
    if op == "$elemMatch":
        if not isinstance(arg, Mapping) or not arg:
            raise ValueError(f"{here} needs a mapping of conditions")
        if all(str(key).startswith("$") for key in arg) and not set(arg) & LOGICAL_OPERATORS:
            _check_condition(arg, here)
        else:
            _check_document(arg, here, relative=True)


def _check_regex(arg: Any, here: str) -> None:
    if not isinstance(arg, str):
        raise ValueError(f"{here} needs a string pattern, not {arg!r}")
    try:
        re.compile(arg)
    except re.error as exc:
        raise ValueError(f"{here}: {arg!r} is not a valid regular expression: {exc}") from exc


def _check_literal(value: Any, where: str) -> None:
    if isinstance(value, list):
        for index, item in enumerate(value):
            _check_literal(item, f"{where}[{index}]")
    elif isinstance(value, Mapping):
        raise ValueError(
            f"{where}: matching a whole sub-document is not supported; use dotted paths "
            "(e.g. candidate.magpsf) with operators"
        )
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where}: {value!r} is not a finite number")
    elif value is not None and not isinstance(value, str | int | float | bool | datetime):
        raise ValueError(f"{where}: unsupported value {value!r} ({type(value).__name__})")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_ordered(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, int | str | datetime)
