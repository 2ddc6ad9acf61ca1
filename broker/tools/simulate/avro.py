"""Avro encoding for the simulators: a packet written field by field, history items cached.

Input: a plain (expanded) alert schema and packets. Output: the packet's schemaless Avro
bytes, the same as fastavro writes them. An alert's history repeats the previous alerts'
entries, so `encode_item` lets each entry be encoded once and spliced in as bytes.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

from fastavro import parse_schema, schemaless_writer

from broker.avro.container import zigzag_long

NULL_BRANCH = b"\x00"  # union index 0 ("null" comes first in every nullable field)
VALUE_BRANCH = b"\x02"  # union index 1


class PacketEncoder:
    """Encodes records of `schema`; `spliced` fields take pre-encoded array items."""

    def __init__(self, schema: Mapping[str, Any], spliced: Sequence[str]) -> None:
        named: dict[str, Any] = {}
        self._fields: list[tuple[str, Any]] = []
        self._item_schemas: dict[str, Any] = {}
        for field in schema["fields"]:
            wrapper = {
                "type": "record",
                "name": f"nightjar_field_{field['name']}",
                "fields": [field],
            }
            # One named-type table for all fields: later fields refer to types by name.
            parsed = parse_schema(wrapper, named_schemas=named)
            self._fields.append((field["name"], parsed))
            if field["name"] in spliced:
                branches = field["type"]
                if not (isinstance(branches, list) and branches[0] == "null"):
                    raise ValueError(f"{field['name']} must be a nullable array to be spliced")
                items = branches[1]["items"]
                item = named[items if isinstance(items, str) else _full_name(items)]
                # Parsed on its own once, so that encode_item does not re-parse it each time.
                self._item_schemas[field["name"]] = parse_schema(item, named_schemas={})

    def encode_item(self, field: str, record: dict[str, Any]) -> bytes:
        """One array item of `field`, for `encode(..., spliced={field: [bytes, ...]})`."""
        buffer = io.BytesIO()
        schemaless_writer(buffer, self._item_schemas[field], record)
        return buffer.getvalue()

    def encode(self, packet: Mapping[str, Any], spliced: Mapping[str, list[bytes]]) -> bytes:
        buffer = io.BytesIO()
        for name, parsed in self._fields:
            if name in spliced:
                buffer.write(_array(spliced[name]))
            else:
                schemaless_writer(buffer, parsed, {name: packet.get(name)})
        return buffer.getvalue()


def _array(items: list[bytes]) -> bytes:
    if not items:
        return NULL_BRANCH
    return b"".join((VALUE_BRANCH, zigzag_long(len(items)), *items, zigzag_long(0)))


def _full_name(record: Mapping[str, Any]) -> str:
    name = str(record["name"])
    namespace = record.get("namespace")
    return f"{namespace}.{name}" if namespace and "." not in name else name
