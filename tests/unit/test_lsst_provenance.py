"""LSST provenance: the `reliability` annotation's version is the model's, from the packet
(Rubin schema 11.1's diaSource.reliabilityVersion), or none; never the schema version, which
the alert records on its own (`schema_version`)."""

from __future__ import annotations

import io
from pathlib import Path

import fastavro
import pytest

from broker.decode import Decoder
from broker.records import Alert, Annotation, ScoringInput
from broker.schema_registry import packaged_schema_root
from broker.settings import ModelSettings, SchemaSettings
from workers.annotate import Annotator

REPO = Path(__file__).resolve().parents[2]
REAL_71 = "25409136044802067.avro"
MODEL_VERSION = "reliability-2025.11"


def annotate(alert: Alert) -> Annotation:
    annotator = Annotator.from_settings(ModelSettings(dir=REPO / "no-such-models-dir"))
    item = ScoringInput(
        alert.survey, alert.candid, alert.object_id, alert.ra, alert.dec, alert.jd,
        alert.candidate, alert.history, alert.cutouts, alert.schema_version,
    )  # fmt: skip
    (result,) = annotator.annotate([item])
    (annotation,) = result.annotations
    return annotation


@pytest.fixture(scope="module")
def real_71(reference: Path) -> Alert:
    schemas = SchemaSettings(lsst_schema_dir=reference / "lsst" / "schema")
    decoder = Decoder(schemas, max_message_bytes=4 * 1024 * 1024)
    return decoder.decode((reference / "lsst" / "alerts" / REAL_71).read_bytes())


def test_schema_71_alert_has_no_model_version(real_71: Alert) -> None:
    annotation = annotate(real_71)
    assert annotation.model == "reliability"
    assert annotation.score == pytest.approx(0.8079, abs=1e-4)
    assert annotation.version is None  # 7.1 names no model; "7.1" is the schema's
    assert real_71.schema_version == "7.1"


def test_schema_111_alert_carries_the_packets_model_version(real_71: Alert) -> None:
    """Rubin's 11.1 sample (lsst-alert-packet) with a reliability and its model version
    filled in (the sample leaves both null) and the real alert's stamps, sent as Rubin
    sends it: Confluent framing with schema id 1101, resolved from Rubin's package."""
    root = packaged_schema_root()
    if root is None or not (root / "11" / "1").is_dir():
        pytest.skip("lsst-alert-packet with schema 11.1 is not installed")
    decoder = Decoder(SchemaSettings(), max_message_bytes=4 * 1024 * 1024)
    sample = (root / "11" / "1" / "sample_data" / "fakeAlert.avro").read_bytes()
    schema, (packet,) = decoder.read(sample)
    assert schema.name == "lsst.v11_1.alert"
    assert packet["diaSource"]["reliabilityVersion"] is None
    packet["diaSource"].update(reliability=0.91, reliabilityVersion=MODEL_VERSION)
    for name in ("cutoutScience", "cutoutTemplate", "cutoutDifference"):
        packet[name] = real_71.packet[name]
    body = io.BytesIO()
    fastavro.schemaless_writer(body, schema.parsed, packet)
    alert = decoder.decode(b"\x00" + (1101).to_bytes(4, "big") + body.getvalue())

    annotation = annotate(alert)
    assert alert.schema_version == "11.1"
    assert (annotation.version, annotation.score) == (MODEL_VERSION, pytest.approx(0.91))
