"""broker.avro.container: one-record container files built from a record's existing bytes."""

from __future__ import annotations

import io
from typing import Any

import fastavro
import pytest

from broker.avro.container import MAGIC, ContainerWriter, clean_schema, zigzag_long
from broker.decode import parse_container

POINT = {
    "type": "record",
    "name": "point",
    "namespace": "test",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "label", "type": ["null", "string"]},
        {"name": "flux", "type": {"type": "array", "items": "double"}},
    ],
}
EXTRA = {"type": "record", "name": "extra", "fields": [{"name": "score", "type": "double"}]}


def encoded(schema: Any, record: Any) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(schema), record)
    return buffer.getvalue()


@pytest.mark.parametrize("value", [0, 1, -1, 63, -64, 64, 300, -300, 2**31, -(2**63), 2**63 - 1])
def test_zigzag_long_matches_avro(value: int) -> None:
    assert zigzag_long(value) == encoded("long", value)


def test_written_container_reads_back_with_the_extra_field() -> None:
    writer = ContainerWriter(POINT, "nightjar", EXTRA)
    records: list[dict[str, Any]] = [
        {"id": 7, "label": "a", "flux": [1.5, -2.0]},
        {"id": -3, "label": None, "flux": []},
    ]
    for record in records:
        data = writer.encode(encoded(POINT, record), {"score": 0.5})
        assert data.startswith(MAGIC)
        reader = fastavro.reader(io.BytesIO(data))
        assert list(reader) == [{**record, "nightjar": {"score": 0.5}}]
        schema = reader.writer_schema
        assert isinstance(schema, dict)
        assert [f["name"] for f in schema["fields"]] == ["id", "label", "flux", "nightjar"]
        container = parse_container(data)  # the broker's own framing check agrees
        assert container.record_count == 1 and container.codec == b"null"


def test_writer_does_not_change_the_schema_it_was_given() -> None:
    before = repr(POINT)
    ContainerWriter(POINT, "nightjar", EXTRA)
    assert repr(POINT) == before


def test_clean_schema_removes_fastavro_private_keys_at_any_depth() -> None:
    parsed = fastavro.parse_schema(POINT, named_schemas={})
    assert any(str(key).startswith("__") for key in parsed)
    plain = clean_schema(parsed)
    assert "__" not in repr({k: v for k, v in plain.items() if k != "fields"})
    assert not any(str(k).startswith("__") for f in plain["fields"] for k in f)
    assert plain["fields"][0] == {"name": "id", "type": "long"}
    # What is left is a schema fastavro accepts again.
    fastavro.parse_schema(plain, named_schemas={})
