"""broker.publish: the annotated alert on the wire is the original packet plus `nightjar`.

Any Avro client (here plain fastavro) must read it without a registry; the annotations record
must round-trip through schemas/nightjar/annotations.avsc.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import fastavro
import pytest

from broker import __version__
from broker.decode import Decoder
from broker.publish import (
    ANNOTATIONS_FIELD,
    Publisher,
    annotations_record,
    load_annotations_schema,
)
from broker.records import AlertResult, Annotation, ModelSkip
from broker.settings import SchemaSettings
from broker.tools.simulate import iter_alerts
from tests.pipeline_helpers import same_value

RESULT = AlertResult(
    candid=1,
    annotations=(
        Annotation("braai", "d6_m9", 0.25),
        Annotation("tails", "v1", 0.75, {"x": 31.5, "y": 12.0}),
    ),
    skipped=(ModelSkip("acai_h", "missing feature drb"),),
)
NOW_MS = 1_700_000_000_123


@pytest.fixture(scope="module")
def decoder() -> Decoder:
    return Decoder(SchemaSettings(), 4 << 20)


@pytest.fixture(scope="module")
def publisher(decoder: Decoder) -> Iterator[Publisher]:
    # Nothing is produced: the producer never needs to reach its (unused) address.
    publisher = Publisher(
        {"bootstrap.servers": "127.0.0.1:9", "log_level": 0},
        decoder.writer_schemas,
        "out.{survey}",
        "dead",
    )
    yield publisher
    publisher.close()


def read_one(data: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    reader = fastavro.reader(io.BytesIO(data))
    records = list(reader)
    assert len(records) == 1
    record, schema = records[0], reader.writer_schema
    assert isinstance(record, dict) and isinstance(schema, dict)
    return record, schema


@pytest.mark.parametrize("survey", ["ztf", "lsst"])
def test_encoded_alert_is_the_original_packet_plus_annotations(
    publisher: Publisher, decoder: Decoder, survey: str
) -> None:
    for raw in iter_alerts(survey, 3, seed=4):
        alert = decoder.decode(raw)
        record, schema = read_one(publisher.encode(alert, RESULT, NOW_MS))
        annotations = record.pop(ANNOTATIONS_FIELD)
        assert same_value(record, dict(alert.packet))
        assert schema["name"] == decoder.writer_schema(alert.schema_key)["name"]
        assert schema["fields"][-1]["name"] == ANNOTATIONS_FIELD
        assert annotations == {
            "broker": f"nightjar {__version__}",
            "annotated_at": datetime.fromtimestamp(NOW_MS / 1000, UTC),
            "scores": [
                {"model": "braai", "version": "d6_m9", "score": 0.25, "extra": {}},
                {"model": "tails", "version": "v1", "score": 0.75, "extra": {"x": 31.5, "y": 12.0}},
            ],
            "skipped": [{"model": "acai_h", "reason": "missing feature drb"}],
        }


def test_an_alert_without_scores_still_carries_the_record(
    publisher: Publisher, decoder: Decoder
) -> None:
    alert = decoder.decode(next(iter_alerts("ztf", 1, seed=8)))
    record, _ = read_one(publisher.encode(alert, AlertResult(alert.candid), NOW_MS))
    assert record[ANNOTATIONS_FIELD]["scores"] == [] == record[ANNOTATIONS_FIELD]["skipped"]
    assert record["candid"] == alert.candid and record["objectId"] == alert.object_id


def test_republished_message_decodes_again_as_an_alert(
    publisher: Publisher, decoder: Decoder
) -> None:
    """A downstream Nightjar (or a replay of the output topic) reads its own output."""
    alert = decoder.decode(next(iter_alerts("lsst", 1, seed=8)))
    again = decoder.decode(publisher.encode(alert, RESULT, NOW_MS))
    assert (again.survey, again.candid, again.object_id) == ("lsst", alert.candid, alert.object_id)
    assert again.cutouts == alert.cutouts


def test_annotations_record_round_trips_through_its_schema() -> None:
    schema = fastavro.parse_schema(load_annotations_schema())
    record = annotations_record(RESULT, NOW_MS)
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, schema, record)
    buffer.seek(0)
    back = fastavro.schemaless_reader(buffer, schema)
    assert isinstance(back, dict)
    assert back["scores"] == record["scores"] and back["skipped"] == record["skipped"]
    assert back["broker"] == record["broker"] == f"nightjar {__version__}"
    assert back["annotated_at"] == datetime.fromtimestamp(NOW_MS / 1000, UTC)
    assert buffer.tell() == len(buffer.getvalue())


def test_annotations_schema_is_a_named_record_with_defaults_for_extra() -> None:
    schema = load_annotations_schema()
    assert (schema["namespace"], schema["name"]) == ("nightjar", "annotations")
    score = schema["fields"][2]["type"]["items"]
    assert {f["name"]: f.get("default") for f in score["fields"]}["extra"] == {}


def test_a_dead_letter_summary_round_trips_through_its_schema() -> None:
    from broker.publish import (
        CONTENT_HEADER,
        dead_letter_summary,
        load_summary_schema,
        read_summary,
        summary_record,
    )
    from broker.records import HEAD_BYTES, Origin, Rejection

    raw = bytes(range(256)) * 40
    rejection = Rejection("oversized", "9 MiB", raw, Origin("ztf_1", 2, 345), "ztf")
    value, headers = dead_letter_summary(rejection, "MSG_SIZE_TOO_LARGE")
    record = read_summary(value)
    assert record == summary_record(rejection, "MSG_SIZE_TOO_LARGE")
    assert record["head"] == raw[:HEAD_BYTES] and record["size"] == len(raw)
    assert (record["topic"], record["partition"], record["offset"]) == ("ztf_1", 2, 345)
    assert record["sha256"] == rejection.sha256()
    assert dict(headers)[CONTENT_HEADER] == b"summary"
    assert dict(headers)["nightjar-reason"] == b"oversized"
    # What a reader of the schema file (not fastavro's parsed copy) gets.
    reader = fastavro.parse_schema(load_summary_schema())
    assert next(fastavro.reader(io.BytesIO(value), reader_schema=reader)) == record


def test_the_summary_schema_lists_every_reject_reason() -> None:
    from broker.publish import load_summary_schema
    from broker.records import RejectReason

    doc = load_summary_schema()["doc"]
    listed = set(
        doc.split("Reason codes (broker.records.RejectReason): ")[1].rstrip(".").split(", ")
    )
    assert listed == RejectReason.codes()
    assert "poison" in listed
