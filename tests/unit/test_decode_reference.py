"""Decode every real alert of ../shared/reference: ZTF 1.x-3.5, Rubin 7.1, fakeAlerts 7.0-11.0."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

import broker.schema_registry
from broker.decode import Decoder
from broker.errors import BadAlert
from broker.records import Cutouts, RejectReason
from broker.schema_registry import RUBIN_PACKAGE, packaged_schema_root
from broker.settings import SchemaSettings

REPO = Path(__file__).resolve().parents[2]
REFERENCE = REPO.parent / "shared" / "reference"
# Schema 1.x samples: JPEG stamps and no objectId.
SCHEMA_1X = ("1726958725155", "87704463155")
REAL_LSST = "25409136044802067.avro"
FAKE_ALERT_VERSIONS = ("7.0", "7.1", "7.2", "7.3", "7.4", "8.0", "9.0", "10.0", "11.0")
FITS_MAGIC = b"SIMPLE"
GZIP_MAGIC = b"\x1f\x8b"

pytestmark = pytest.mark.shared


def _ztf_files() -> list[Path]:
    return sorted((REFERENCE / "ztf" / "alerts").rglob("*.avro"))


def _ztf_params() -> list[object]:
    files = _ztf_files()
    if files:
        return [pytest.param(path, id=path.name) for path in files]
    reason = f"reference data not found at {REFERENCE} (../shared/reference)"
    return [pytest.param(None, marks=pytest.mark.skip(reason=reason), id="no-reference")]


@pytest.fixture(scope="module")
def decoder(reference: Path) -> Decoder:
    schemas = SchemaSettings(lsst_schema_dir=reference / "lsst" / "schema")
    return Decoder(schemas, max_message_bytes=4 * 1024 * 1024)


@pytest.mark.parametrize("path", _ztf_params())
def test_ztf_reference_alert(decoder: Decoder, path: Path) -> None:
    raw = path.read_bytes()
    if path.name.startswith(SCHEMA_1X):
        with pytest.raises(BadAlert) as caught:
            decoder.decode(raw)
        # No objectId, and schema 1.0 types isdiffpos as an int (no resolution with 4.02).
        assert caught.value.reason in (RejectReason.MISSING_FIELD, RejectReason.BAD_SCHEMA)
        assert "1." in caught.value.detail  # names the schema version
        return
    alert = decoder.decode(raw)
    assert alert.survey == "ztf"
    assert alert.object_id.startswith("ZTF") and len(alert.object_id) == 12
    assert alert.candid == alert.packet["candid"] == alert.candidate["candid"]
    assert path.stem.endswith(str(alert.candid))
    assert alert.jd == alert.candidate["jd"] > 2458000
    assert (alert.ra, alert.dec) == (alert.candidate["ra"], alert.candidate["dec"])
    assert alert.raw is raw
    for stamp in (alert.cutouts.science, alert.cutouts.template, alert.cutouts.difference):
        assert stamp.startswith(GZIP_MAGIC)
    assert alert.cutouts.science == alert.packet["cutoutScience"]["stampData"]
    jds = [entry["jd"] for entry in alert.history]
    assert jds == sorted(jds) and len(jds) == len(alert.packet["prv_candidates"] or [])
    assert alert.schema_version == (alert.packet.get("schemavsn") or alert.schema_version)
    assert alert.schema_version[0] in "123"
    assert decoder.writer_schema(alert.schema_key)["name"] == "ztf.alert"


def test_every_ztf_reference_alert_is_covered(reference: Path) -> None:
    files = _ztf_files()
    assert len(files) == 34
    assert sum(path.name.startswith(SCHEMA_1X) for path in files) == 6


def test_real_lsst_alert(decoder: Decoder, reference: Path) -> None:
    raw = (reference / "lsst" / "alerts" / REAL_LSST).read_bytes()
    alert = decoder.decode(raw)
    assert alert.survey == "lsst"
    assert alert.schema_version == "7.1"
    assert alert.candid == 25409136044802067 == alert.candidate["diaSourceId"]
    assert alert.object_id == "25401295582003262"
    assert math.isclose(alert.candidate["reliability"], 0.8079, abs_tol=1e-4)
    assert math.isclose(alert.jd, alert.candidate["midpointMjdTai"] + 2400000.5)
    assert len(alert.history) == 5  # 2 prvDiaSources + 3 prvDiaForcedSources
    times = [entry["midpointMjdTai"] for entry in alert.history]
    assert times == sorted(times)
    for stamp in (alert.cutouts.science, alert.cutouts.template, alert.cutouts.difference):
        assert stamp.startswith(FITS_MAGIC)
    assert alert.schema_key.startswith("lsst.v7_1.alert@")


def test_real_lsst_alert_decodes_with_rubins_packaged_schemas(reference: Path) -> None:
    """The repository ships only v11.0; v7.1 comes from lsst-alert-packet (`make venv`)."""
    if packaged_schema_root() is None:
        pytest.skip(f"{RUBIN_PACKAGE} is not installed (`make venv` installs it)")
    raw = (reference / "lsst" / "alerts" / REAL_LSST).read_bytes()
    alert = Decoder(SchemaSettings(), max_message_bytes=1 << 22).decode(raw)
    assert alert.schema_version == "7.1"
    assert alert.packet["diaSource"]["reliability"] == pytest.approx(0.8079, abs=1e-4)


def test_real_lsst_alert_without_its_schema_is_unknown(
    reference: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Neither the folder nor Rubin's package: schema id 701 is reported, not a crash."""
    monkeypatch.setattr(broker.schema_registry, "packaged_schema_root", lambda: None)
    raw = (reference / "lsst" / "alerts" / REAL_LSST).read_bytes()
    with pytest.raises(BadAlert) as caught:
        Decoder(SchemaSettings(), max_message_bytes=1 << 22).decode(raw)
    assert caught.value.reason == RejectReason.UNKNOWN_SCHEMA
    assert "701" in caught.value.detail and "v7.1" in caught.value.detail
    assert "make venv" in caught.value.detail


@pytest.mark.parametrize("version", FAKE_ALERT_VERSIONS)
def test_lsst_fake_alert_decodes_but_has_no_cutouts(
    decoder: Decoder, reference: Path, version: str
) -> None:
    major, minor = version.split(".")
    raw = reference / "lsst" / "schema" / major / minor / "sample_data" / "fakeAlert.avro"
    data = raw.read_bytes()
    # No stamps is no rejection: the alert flows and the workers skip its image models.
    assert decoder.decode(data).cutouts == Cutouts(b"", b"", b"")
    # With stamps added, the same packet normalises: the object id comes from diaObject
    # because these samples leave diaSource.diaObjectId null.
    schema, records = decoder.read(data)
    packet = dict(records[0])
    stamp = b"SIMPLE  =                    T"
    packet |= {"cutoutScience": stamp, "cutoutTemplate": stamp, "cutoutDifference": stamp}
    alert = schema.adapter.to_alert(
        packet, schema_version=schema.version, schema_key=schema.key, raw=data, origin=None
    )
    assert schema.version == version
    assert alert.survey == "lsst"
    assert alert.object_id == str(packet["diaObject"]["diaObjectId"])
    assert alert.candid == packet["diaSource"]["diaSourceId"]
    assert alert.jd == packet["diaSource"]["midpointMjdTai"] + 2400000.5
    assert len(alert.history) == len(packet["prvDiaSources"] or [])
