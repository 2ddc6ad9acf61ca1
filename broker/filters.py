"""Filter stage: named MongoDB queries over a batch of stored alerts -> outbox jobs.

Input: the alert documents the store just wrote, matched in-process (`broker.query`, with
MongoDB's semantics) rather than queried back. Output: `FilterMatch` records (the publisher
sends each to its filter's topic) and one outbox job per (candid, filter), written in one bulk
insert per batch. Never speaks HTTP: `broker.post.sender` drains the outbox on its own thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pymongo.errors import ConnectionFailure

from broker.errors import ConfigError, QueryError, TransientError
from broker.metrics import FILTER_ERRORS, FILTER_MATCHES
from broker.post.outbox import Outbox
from broker.query import Matcher, compile_query
from broker.records import ALERT_FIELDS, FilterMatch
from broker.settings import FilterDefinition, Settings

if TYPE_CHECKING:
    from pymongo.database import Database

log = logging.getLogger(__name__)


class FilterStage:
    """Runs every enabled filter over a batch in-process, then writes the outbox once."""

    def __init__(self, definitions: Sequence[FilterDefinition], db: Database[Any]) -> None:
        self._filters: list[tuple[FilterDefinition, Matcher]] = []
        for definition in definitions:
            try:
                matcher = compile_query(definition.query, name=definition.name, fields=ALERT_FIELDS)
            except QueryError as exc:
                raise ConfigError(f"filters.definitions: {exc}") from exc
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
