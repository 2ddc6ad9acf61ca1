"""Survey adapters: one decoded Avro record (packet) -> `broker.records.Alert`, and the
survey's tables every later stage reads (light-curve points, photometry, packet histories).

`broker.decode` picks the adapter whose `matches` accepts the record schema's full name;
history, store and post look a survey's `SurveyTables` up with `tables(survey)`. Each
adapter module (ztf.py, lsst.py) has the same three functions and a TABLES record
(`SurveyAdapter`); a new survey adds a module and its name to `ADAPTER_MODULES`, not a
branch in any stage. Surveys whose packets are laid out like ZTF's (an object id, a
`candidate`, a history array and three stamp fields) describe that layout with a
`PacketLayout`; a `LayoutAdapter` of it gives their matches, schema_version and to_alert.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol, cast

from broker.errors import BadAlert
from broker.records import Alert, Cutouts, Origin, PhotPoint, RejectReason, Survey

ADAPTER_MODULES = (
    "broker.surveys.ztf",
    "broker.surveys.lsst",
    "broker.surveys.winter",
    "broker.surveys.pgir",
    "broker.surveys.turbo",
    "broker.surveys.decam",
)


ZERO_POINT = 23.9  # AB magnitude of 1 microjansky: SkyPortal photometry is in microjansky
JD_MJD_OFFSET = 2400000.5


@dataclass(frozen=True, slots=True)
class SurveyTables:
    """A survey's field names and conversions, in its own spelling, for the later stages."""

    name: str  # Alert.survey
    # Fields kept per light-curve point, in this order (broker.history); the detection id,
    # the time and the band identify a point (id first; time and band for upper limits).
    point_fields: tuple[str, ...]
    id_field: str
    time_field: str
    band_field: str
    # Top-level packet fields that are histories: kept as light-curve points on the object,
    # not copied into every alert document (broker.store).
    history_fields: frozenset[str]
    # One candidate / history / light-curve row -> SkyPortal photometry (None: unusable).
    photometry: Callable[[Mapping[str, Any]], PhotPoint | None]


class SurveyAdapter(Protocol):
    """What every module in `ADAPTER_MODULES` provides."""

    TABLES: SurveyTables

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


@cache
def tables(survey: str) -> SurveyTables:
    """The tables of the survey named `survey` ('ztf'); ValueError for an unknown one."""
    for adapter in _adapters():
        if adapter.TABLES.name == survey:
            return adapter.TABLES
    known = ", ".join(adapter.TABLES.name for adapter in _adapters())
    raise ValueError(f"no survey adapter for survey {survey!r} (known: {known})")


def surveys() -> tuple[str, ...]:
    """Every survey with an adapter, in `ADAPTER_MODULES` order ('ztf', 'lsst', ...)."""
    return tuple(adapter.TABLES.name for adapter in _adapters())


def mag_to_flux(mag: float, zero_point: float = ZERO_POINT) -> float:
    return float(10 ** (-0.4 * (mag - zero_point)))


def limit_fluxerr(limiting_mag: float, nsigma: float = 5.0) -> float:
    """The 1-sigma flux error of an n-sigma limiting magnitude (diffmaglim is 5 sigma)."""
    return mag_to_flux(limiting_mag) / nsigma


def finite(value: Any) -> float | None:
    """A finite float from a packet value, else None (bools, strings, NaN are not numbers)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


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


_POSITIVE = frozenset({"t", "T", "1", "y", "Y", "true", "True"})


def is_positive(isdiffpos: Any) -> bool:
    """isdiffpos: 't'/'1' (strings), true, or 1 / 1.0 mean science minus reference > 0."""
    if isinstance(isdiffpos, bool):
        return isdiffpos
    if isinstance(isdiffpos, int | float):
        return isdiffpos == 1
    return str(isdiffpos) in _POSITIVE


def magnitude_point(
    row: Mapping[str, Any], mjd: float, band: str, ab_offset: float = 0.0
) -> PhotPoint | None:
    """A ZTF-style row (magpsf, sigmapsf, diffmaglim, isdiffpos) in SkyPortal's flux convention.

    A row without magpsf is an upper limit at its 5-sigma diffmaglim; `ab_offset` turns the
    survey's magnitudes into AB ones (e.g. Vega J + 0.91). None when the row is unusable.
    """
    mag, sigma = finite(row.get("magpsf")), finite(row.get("sigmapsf"))
    if mag is None:
        limit = finite(row.get("diffmaglim"))
        if limit is None or limit <= 0:
            return None
        return PhotPoint(mjd=mjd, filter=band, flux=None, fluxerr=limit_fluxerr(limit + ab_offset))
    if sigma is None:
        return None
    flux = mag_to_flux(mag + ab_offset) * (1.0 if is_positive(row.get("isdiffpos")) else -1.0)
    return PhotPoint(
        mjd=mjd,
        filter=band,
        flux=flux,
        fluxerr=abs(sigma * flux * math.log(10) / 2.5),
        ra=finite(row.get("ra")),
        dec=finite(row.get("dec")),
    )


@dataclass(frozen=True, slots=True)
class PacketLayout:
    """Where a ZTF-like packet keeps what the common Alert needs, in the survey's spelling."""

    survey: Survey
    label: str  # the survey's name in messages ('WINTER')
    object_field: str  # top-level object id ('objectId'; WINTER: 'objectid')
    history_field: str  # earlier detections and limits ('prv_candidates'; DECam: 'fp_hists')
    time_field: str  # candidate and history time ('jd'; DECam: 'mjd')
    time_to_jd: float  # added to the time to get a JD (0 for JD, 2400000.5 for MJD)
    cutout_fields: tuple[str, str, str]  # science, template, difference: plain bytes fields


def packet_alert(
    layout: PacketLayout,
    packet: dict[str, Any],
    *,
    schema_version: str,
    schema_key: str,
    raw: bytes,
    origin: Origin | None,
) -> Alert:
    """The Alert of a ZTF-like packet; BadAlert(missing_field / cutouts) naming what is wrong.

    candid is the packet's top-level one (an alert's id), else the candidate's.
    """
    object_id = packet.get(layout.object_field)
    if not isinstance(object_id, str) or not object_id:
        raise BadAlert(
            RejectReason.MISSING_FIELD, f"no {layout.object_field} in {layout.label} packet"
        )
    candidate = packet.get("candidate")
    if not isinstance(candidate, dict):
        raise BadAlert(RejectReason.MISSING_FIELD, f"{object_id}: no candidate record")
    candid = required_id(packet.get("candid", candidate.get("candid")), f"{object_id}: candid")
    where = f"{layout.label} {object_id} candid {candid}: candidate"
    time = required_number(candidate, layout.time_field, where)
    science, template, difference = (packet.get(name) for name in layout.cutout_fields)
    return Alert(
        survey=layout.survey,
        candid=candid,
        object_id=object_id,
        ra=required_number(candidate, "ra", where),
        dec=required_number(candidate, "dec", where),
        jd=time + layout.time_to_jd,
        candidate=candidate,
        history=sorted_by(packet.get(layout.history_field) or [], layout.time_field),
        cutouts=cutouts(science, template, difference),
        schema_version=str(packet.get("schemavsn") or schema_version),
        schema_key=schema_key,
        packet=packet,
        raw=raw,
        origin=origin,
    )


def declared_version(schema: Mapping[str, Any]) -> str:
    """A schema's version: its top-level "version", else its `schemavsn` field's default."""
    if schema.get("version"):
        return str(schema["version"])
    for field in schema.get("fields") or ():
        if isinstance(field, Mapping) and field.get("name") == "schemavsn":
            return str(field.get("default") or "unknown")
    return "unknown"


@dataclass(frozen=True, slots=True)
class LayoutAdapter:
    """`matches`, `schema_version` and `to_alert` of a ZTF-like survey with one record name."""

    record_name: str
    layout: PacketLayout

    def matches(self, record_name: str) -> bool:
        return record_name == self.record_name

    def schema_version(self, schema: Mapping[str, Any]) -> str:
        return declared_version(schema)

    def to_alert(
        self,
        packet: dict[str, Any],
        *,
        schema_version: str,
        schema_key: str,
        raw: bytes,
        origin: Origin | None,
    ) -> Alert:
        return packet_alert(
            self.layout,
            packet,
            schema_version=schema_version,
            schema_key=schema_key,
            raw=raw,
            origin=origin,
        )
