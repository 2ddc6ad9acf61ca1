"""Survey adapters: one decoded Avro record (packet) -> `broker.records.Alert`.

`broker.decode` picks the adapter whose `matches` accepts the record schema's full name.
Each adapter module (ztf.py, lsst.py) has the same three functions (`SurveyAdapter`); a new
survey adds a module and its name to `ADAPTER_MODULES`, not a branch in the decoder.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping
from functools import cache
from typing import Any, Protocol, cast

from broker.errors import BadAlert
from broker.records import Alert, Cutouts, Origin, RejectReason

ADAPTER_MODULES = ("broker.surveys.ztf", "broker.surveys.lsst")


class SurveyAdapter(Protocol):
    """What every module in `ADAPTER_MODULES` provides."""

    def matches(self, record_name: str) -> bool:
        """True for the full record names this survey writes (e.g. 'ztf.alert')."""
        ...

    def schema_version(self, schema: Mapping[str, Any]) -> str:
        """The schema version ('3.3', '7.1') from the plain JSON writer schema."""
        ...

    def to_alert(
        self,
        packet: dict[str, Any],
        *,
        schema_version: str,
        schema_key: str,
        raw: bytes,
        origin: Origin | None,
    ) -> Alert:
        """Normalise a decoded packet; raise BadAlert for missing fields or stamps."""
        ...


@cache
def _adapters() -> tuple[SurveyAdapter, ...]:
    # Imported lazily: the adapters import helpers from this package.
    return tuple(cast(SurveyAdapter, importlib.import_module(name)) for name in ADAPTER_MODULES)


def adapter_for(record_name: str) -> SurveyAdapter | None:
    """The adapter owning records named `record_name`, or None for an unknown survey."""
    for adapter in _adapters():
        if adapter.matches(record_name):
            return adapter
    return None


def cutouts(science: Any, template: Any, difference: Any) -> Cutouts:
    """The three stamps as they arrived, b"" for an absent one. Never a rejection: the
    workers check format and pixels, and an alert whose stamps cannot be scored is stored
    and published with its image models skipped (workers.annotate)."""
    stamps = (science, template, difference)
    return Cutouts(*(data if isinstance(data, bytes) else b"" for data in stamps))


def required_number(record: Mapping[str, Any], key: str, where: str) -> float:
    """A finite number from `record[key]`, else BadAlert(missing_field) naming it."""
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadAlert(RejectReason.MISSING_FIELD, f"{where}.{key} is {value!r}, not a number")
    return float(value)


def required_id(value: Any, what: str) -> int:
    """An integer id (candid, diaSourceId), else BadAlert(missing_field)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadAlert(RejectReason.MISSING_FIELD, f"{what} is {value!r}, not an integer")
    return value


def sorted_by(records: list[Mapping[str, Any]], time_key: str) -> tuple[Mapping[str, Any], ...]:
    """Records oldest first by `time_key` (records without a time go first)."""
    return tuple(sorted(records, key=lambda record: record.get(time_key) or 0.0))
