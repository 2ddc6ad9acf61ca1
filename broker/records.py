"""Typed records that cross module boundaries.

Alerts come out of `decode`, go through `dispatch` to the workers as `ScoringInput`,
come back as `AlertResult`, and are stored/published together. Survey field names
(`objectId`, `candid`, `diaSourceId`) live only inside `candidate`/`history`/`packet`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

# Every survey with an adapter in broker/surveys (checked equal in a test).
Survey = Literal["ztf", "lsst", "winter", "pgir", "turbo", "decam"]


class RejectReason:
    """Stable reason codes for rejected alerts (metric label, dead-letter header)."""

    UNDECODABLE = "undecodable"  # not Avro, truncated, corrupt
    UNKNOWN_SCHEMA = "unknown_schema"  # no survey adapter, or LSST schema id not in the registry
    BAD_SCHEMA = "bad_schema"  # writer schema malformed, absurd, or not the survey's
    OVERSIZED = "oversized"  # above kafka.max_message_bytes, or kafka.max_decode_bytes decoded
    MISSING_FIELD = "missing_field"  # no objectId / candid / position
    # Stamps that cannot be scored: the alert is stored and published, its image models
    # skipped with one of these reasons (never a dead letter).
    MISSING_CUTOUTS = "missing_cutouts"
    JPEG_CUTOUTS = "jpeg_cutouts"  # schema 1.x stamps, not scoreable
    BAD_CUTOUTS = "bad_cutouts"  # unreadable FITS, or all-NaN / zero- or inf-norm stamp
    # Killed the broker kafka.poison_after_deaths times (broker.consume.CrashGuard), or a
    # Dask worker scoring it alone (broker.dispatch.Dispatcher.isolate).
    POISON = "poison"

    @classmethod
    def codes(cls) -> frozenset[str]:
        return frozenset(
            value for name, value in vars(cls).items() if name.isupper() and isinstance(value, str)
        )


# The first bytes of a message kept where the whole message cannot be (dead-letter summary,
# `rejected` documents above MongoDB's size limit).
HEAD_BYTES = 4096


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a message was read: topic[partition]@offset."""

    topic: str
    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass(frozen=True, slots=True)
class Cutouts:
    """The three image stamps as they arrived (gzip FITS for most surveys, FITS for LSST)."""

    science: bytes
    template: bytes
    difference: bytes


@dataclass(frozen=True, slots=True)
class Alert:
    """One decoded alert packet, survey-independent at the top level.

    `candidate` is the triggering detection (ZTF `candidate`, LSST `diaSource`) with
    survey field names; `history` the packet's earlier detections and limits
    (ZTF `prv_candidates`, LSST `prvDiaSources` + `prvDiaForcedSources`, DECam `fp_hists`),
    oldest first.
    `packet` is the whole decoded record (cutouts included, the same bytes objects);
    `schema_key` names the writer schema in `broker.schema_registry.WriterSchemas`.
    """

    survey: Survey
    candid: int
    object_id: str
    ra: float
    dec: float
    jd: float
    candidate: Mapping[str, Any]
    history: tuple[Mapping[str, Any], ...]
    cutouts: Cutouts
    schema_version: str
    schema_key: str
    packet: Mapping[str, Any]
    raw: bytes
    origin: Origin | None = None

    @property
    def key(self) -> str:
        """The alert's unique id across surveys (MongoDB `_id`)."""
        return f"{self.survey}:{self.candid}"


@dataclass(frozen=True, slots=True)
class Rejection:
    """A message that will not be stored: goes to the dead-letter topic and `rejected`."""

    reason: str
    detail: str
    raw: bytes
    origin: Origin | None = None
    survey: str | None = None
    candid: int | None = None
    object_id: str | None = None

    @property
    def size(self) -> int:
        return len(self.raw)

    @property
    def head(self) -> bytes:
        return self.raw[:HEAD_BYTES]

    def sha256(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()


@dataclass(frozen=True, slots=True)
class ScoringInput:
    """What a worker needs to annotate one alert; no Kafka, no MongoDB, no raw packet.

    `history` merges the packet's history with earlier stored detections of the object
    (survey field names, sorted by time, deduplicated).
    """

    survey: Survey
    candid: int
    object_id: str
    ra: float
    dec: float
    jd: float
    candidate: Mapping[str, Any]
    history: tuple[Mapping[str, Any], ...]
    cutouts: Cutouts
    schema_version: str = ""


@dataclass(frozen=True, slots=True)
class Annotation:
    """One model's verdict on one alert.

    `version` is the model's version; None when a score carried from the packet does not
    say which model made it (never the packet's schema version, which the alert records).
    """

    model: str
    version: str | None
    score: float
    extra: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ModelSkip:
    """A model that produced no score for an alert, and why (failure or not applicable)."""

    model: str
    reason: str


@dataclass(frozen=True, slots=True)
class AlertResult:
    """A worker's output for one alert: annotations, or a rejection reason.

    `rejected` is set when the alert itself is unusable; the pipeline then dead-letters it
    instead of storing it. Stamps that cannot be scored are not that: the workers record
    the image models as `skipped` with the reason, and the alert flows.
    """

    candid: int
    annotations: tuple[Annotation, ...] = ()
    skipped: tuple[ModelSkip, ...] = ()
    rejected: tuple[str, str] | None = None  # (reason code, detail)


@dataclass(frozen=True, slots=True)
class PhotPoint:
    """One photometry row in SkyPortal's flux convention (microjansky, AB zero point 23.9)."""

    mjd: float
    filter: str
    flux: float | None  # None: a non-detection (upper limit)
    fluxerr: float
    ra: float | None = None
    dec: float | None = None


@dataclass(frozen=True, slots=True)
class FilterMatch:
    """One stored alert that passed one filter: sent to the filter's topic, posted to Fritz."""

    filter: str
    alert_id: str
    candid: int
    object_id: str
    survey: str
    fritz_filter_id: int
    group_ids: tuple[int, ...]


# Top-level fields of the stored alert document (broker.store.AlertDocument, checked equal
# in a test): the fields a filter query may name. The light curve is not one of them: it
# lives in `objects.lightcurve`.
ALERT_FIELDS = frozenset(
    {
        "_id", "survey", "candid", "objectId", "ra", "dec", "jd", "schema_version",
        "candidate", "packet", "cutouts", "annotations", "skipped", "broker", "ingested_at",
        "origin",
    }
)  # fmt: skip
