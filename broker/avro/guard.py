"""Decode stage guard: writer schemas checked before use, and each message's decode bounded.

Input: a writer schema as plain JSON (ZTF embeds one in every message) and the survey's reader
schema where Nightjar ships one (`READER_SCHEMA` of a `broker.surveys` module); then, per
message, the record bytes. Output: a `Shape`, or BadAlert(bad_schema) for records without
fields, recursive or absurd schemas (depth, size, names), array items that take no bytes (the
decode bomb: a huge count of nothing) or fields typed otherwise than the reader's;
`Shape.check` raises BadAlert before fastavro reads a record whose counts and lengths exceed
the bytes that remain (undecodable) or whose objects would exceed kafka.max_decode_bytes
(oversized). fastavro allocates whatever the bytes claim: this is why a 69 KB message cannot
take the host's memory.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from fastavro.schema import load_schema_ordered

from broker.errors import BadAlert
from broker.records import RejectReason
from broker.schema_registry import SCHEMA_ROOT

# Far above any survey's schema (ZTF 4.02: depth 6, ~230 fields; Rubin 11.0: ~600 fields).
MAX_DEPTH = 32
MAX_NODES = 20_000
MAX_FIELDS = 2_000
MAX_BRANCHES = 64
MAX_NAME = 256
MAX_FIXED = 1 << 20
NAME_PART = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
# Avro's promotions: what a writer type may be read as (besides itself).
PROMOTIONS = {
    "int": {"long", "float", "double"},
    "long": {"float", "double"},
    "float": {"double"},
    "string": {"bytes"},
    "bytes": {"string"},
}


# Upper bounds of CPython's object sizes (64-bit) for what fastavro returns.
OBJECT_COST = {"null": 0, "boolean": 0, "int": 32, "long": 36, "float": 24, "double": 24}
STR_COST, BYTES_COST, LIST_COST, LIST_SLOT, MAP_ENTRY, LOGICAL_COST = 80, 40, 64, 9, 112, 64
# Decoded strings take at most 4 bytes (UCS-4) per encoded byte.
CONTENT_RATIO = 4


def read_long(data: bytes, pos: int) -> tuple[int, int]:
    """Avro zig-zag varint at `pos` -> (value, next position)."""
    result = shift = 0
    while True:
        if pos >= len(data):
            raise BadAlert(
                RejectReason.UNDECODABLE,
                f"truncated at byte {pos} (inside a variable-length integer)",
            )
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7
        if shift > 63:
            raise BadAlert(
                RejectReason.UNDECODABLE, f"variable-length integer longer than 10 bytes at {pos}"
            )


def dict_cost(keys: int) -> int:
    """What a dict of `keys` entries built one insert at a time takes (CPython, exact)."""
    grown: dict[int, None] = {}
    for key in range(keys):
        grown[key] = None
    return sys.getsizeof(grown)


class Node:
    """One type of a checked schema: `kind`, children, and its decode bounds.

    `min_size`: the fewest bytes its encoding takes; `cost`: the most memory its decoded
    value takes, not counting array items, map entries and string contents (each bounded
    per byte by `Shape.ratio`).
    """

    __slots__ = ("children", "cost", "fields", "kind", "min_size", "name", "size", "symbols")

    def __init__(
        self, kind: str, children: tuple[Node, ...] = (), size: int = 0, logical: bool = False
    ) -> None:
        self.kind = kind
        self.children = children
        self.size = size  # fixed: bytes; enum: symbols
        self.min_size, self.cost = _bounds(kind, children, size)
        # Named types: full name; records: (field name, has a default); enums: symbols.
        self.name = ""
        self.fields: tuple[tuple[str, bool], ...] = ()
        self.symbols: frozenset[str] = frozenset()
        if logical:  # fastavro returns datetime, Decimal, UUID... objects
            self.cost += LOGICAL_COST


def _bounds(kind: str, children: tuple[Node, ...], size: int) -> tuple[int, int]:
    if kind in OBJECT_COST:
        width = {"null": 0, "float": 4, "double": 8}.get(kind, 1)
        return width, OBJECT_COST[kind]
    if kind == "record":
        fields = sum(child.cost for child in children)
        return sum(child.min_size for child in children), dict_cost(len(children)) + fields
    if kind == "union":
        return 1, max(child.cost for child in children)
    if kind == "fixed":
        return size, BYTES_COST + size
    if kind == "enum":
        return 1, 0  # fastavro returns the schema's own symbol strings
    cost = {"string": STR_COST, "bytes": BYTES_COST, "array": LIST_COST, "map": LIST_COST}
    return 1, cost[kind]


@dataclass(frozen=True, slots=True)
class Shape:
    """A checked writer schema: its root `Node` and the worst decoded bytes per input byte."""

    root: Node
    ratio: float

    def check(self, data: bytes, start: int, end: int, count: int, limit: int) -> None:
        """BadAlert unless `count` records in data[start:end] decode within `limit` bytes.

        The bound from the schema alone (`ratio`) clears ordinary alerts at no cost; only a
        message that could exceed `limit` is scanned, every count checked against the
        bytes that remain before fastavro would allocate for it.
        """
        if self.root.cost * count + self.ratio * (end - start) <= limit:
            return
        scan = _Scan(data, end, limit)
        pos = start
        for _ in range(count):
            pos = scan.value(self.root, pos)


def shape_of(root: Node) -> Shape:
    """`root` with its worst decoded bytes per encoded byte, over every repeated item."""
    ratio: float = CONTENT_RATIO
    seen: set[int] = set()
    pending = [root]
    while pending:
        node = pending.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        pending.extend(node.children)
        if node.kind == "array":
            (item,) = node.children  # min_size >= 1: zero-size items are a bad schema
            ratio = max(ratio, (item.cost + LIST_SLOT) / item.min_size)
        elif node.kind == "map":
            (value,) = node.children
            ratio = max(ratio, (MAP_ENTRY + STR_COST + value.cost) / (1 + value.min_size))
    return Shape(root, ratio)


class _Scan:
    """Walks encoded records without building them, adding up what decoding would cost."""

    def __init__(self, data: bytes, end: int, limit: int) -> None:
        self.data, self.end, self.limit, self.cost = data, end, limit, 0

    def value(self, node: Node, pos: int) -> int:
        self._add(node.cost)
        kind = node.kind
        if kind in ("string", "bytes"):
            size, pos = self._size(pos, kind)
            text = self.data[pos : pos + size]
            ascii_only = kind == "bytes" or text.isascii()
            self._add(size if ascii_only else CONTENT_RATIO * size)
            return pos + size
        if kind == "record":
            for child in node.children:
                pos = self.value(child, pos)
            return pos
        if kind == "union":
            index, pos = read_long(self.data, pos)
            if not 0 <= index < len(node.children):
                raise _corrupt(f"union branch {index} of {len(node.children)} at byte {pos}")
            return self.value(node.children[index], pos)
        if kind in ("array", "map"):
            return self._blocks(node, pos)
        return self._fixed_width(node, pos)

    def _fixed_width(self, node: Node, pos: int) -> int:
        if node.kind in ("int", "long", "enum"):
            _, pos = read_long(self.data, pos)
            return pos
        if node.kind == "boolean":
            pos += 1
        else:  # null, float, double, fixed
            pos += node.min_size
        if pos > self.end:
            raise _corrupt(f"{node.kind} value runs past the record's end ({self.end})")
        return pos

    def _blocks(self, node: Node, pos: int) -> int:
        (item,) = node.children
        while True:
            count, pos = read_long(self.data, pos)
            if count == 0:
                return pos
            if count < 0:  # a negative count is followed by the block's size in bytes
                count = -count
                _, pos = read_long(self.data, pos)
            step = item.min_size + (1 if node.kind == "map" else 0)
            if count * step > self.end - pos:
                raise _corrupt(
                    f"{node.kind} block at byte {pos} claims {count} items, more than the "
                    f"{self.end - pos} bytes left can hold"
                )
            self._add(count * (LIST_SLOT if node.kind == "array" else MAP_ENTRY))
            for _ in range(count):
                if node.kind == "map":
                    pos = self.value(_STRING, pos)
                pos = self.value(item, pos)

    def _size(self, pos: int, what: str) -> tuple[int, int]:
        size, pos = read_long(self.data, pos)
        if size < 0 or size > self.end - pos:
            raise _corrupt(f"{what} at byte {pos} claims {size} bytes, {self.end - pos} remain")
        return size, pos

    def _add(self, cost: int) -> None:
        self.cost += cost
        if self.cost > self.limit:
            raise BadAlert(
                RejectReason.OVERSIZED,
                f"decoding would take more than kafka.max_decode_bytes = {self.limit} bytes",
            )


def _corrupt(detail: str) -> BadAlert:
    return BadAlert(RejectReason.UNDECODABLE, f"corrupt record: {detail}")


_STRING = Node("string")


def bad_schema(detail: str) -> BadAlert:
    return BadAlert(RejectReason.BAD_SCHEMA, detail)


def checked_shape(plain: Mapping[str, Any], reader: Node | None) -> Shape:
    """The writer schema's decode `Shape`; BadAlert(bad_schema) naming what is wrong."""
    root = _Compiler().node(plain, "", 0)
    if reader is not None:
        _Resolver().match(root, reader, str(plain.get("name")))
    return shape_of(root)


@cache
def reader_root(spec: tuple[str, tuple[str, ...]]) -> Node:
    """A survey's reader schema, from its schemas/<folder>/<name>.avsc files (named types
    first), checked like any writer schema."""
    folder, names = spec
    files = [str(SCHEMA_ROOT / folder / f"{name}.avsc") for name in names]
    return _Compiler().node(load_schema_ordered(files, _write_hint=False), "", 0)


class _Compiler:
    """Plain JSON schema -> `Node`s, checking everything fastavro would take on trust."""

    def __init__(self) -> None:
        self.named: dict[str, Node | None] = {}  # None: still being defined (recursion)
        self.count = 0

    def node(self, schema: Any, namespace: str, depth: int) -> Node:
        self.count += 1
        if depth > MAX_DEPTH or self.count > MAX_NODES:
            raise bad_schema(f"schema deeper than {MAX_DEPTH} or larger than {MAX_NODES} types")
        if isinstance(schema, str):
            return Node(schema) if schema in PRIMITIVES else self._reference(schema, namespace)
        if isinstance(schema, list):
            return self._union(schema, namespace, depth)
        if not isinstance(schema, Mapping):
            raise bad_schema(f"{schema!r} is not an Avro type")
        kind = schema.get("type")
        if kind in PRIMITIVES:
            return Node(str(kind), logical="logicalType" in schema)
        if kind in ("record", "error"):
            return self._record(schema, namespace, depth)
        if kind in ("enum", "fixed"):
            return self._enum_or_fixed(schema, namespace)
        if kind == "array":
            return self._array(schema, namespace, depth)
        if kind == "map":
            return Node("map", (self.node(schema.get("values"), namespace, depth + 1),))
        if isinstance(kind, str | list | Mapping):
            return self.node(kind, namespace, depth + 1)
        raise bad_schema(f"type {kind!r} is not an Avro type")

    def _reference(self, name: str, namespace: str) -> Node:
        full = name if "." in name or not namespace else f"{namespace}.{name}"
        for candidate in (full, name):
            if candidate in self.named:
                found = self.named[candidate]
                if found is None:
                    raise bad_schema(f"type {candidate} contains itself (recursive schema)")
                return found
        raise bad_schema(f"type {name!r} is neither an Avro type nor defined before its use")

    def _define(self, schema: Mapping[str, Any], namespace: str) -> tuple[str, str]:
        """(full name, its namespace) of a named type, registered as being defined."""
        name = schema.get("name")
        if not isinstance(name, str):
            raise bad_schema(f"named type without a name: {str(schema)[:80]}")
        own = schema.get("namespace")
        if "." not in name and isinstance(own, str) and own:
            namespace = own
        full = name if "." in name or not namespace else f"{namespace}.{name}"
        _check_name(full)
        if full in self.named:
            raise bad_schema(f"type {full} is defined twice")
        self.named[full] = None
        return full, full.rpartition(".")[0]

    def _record(self, schema: Mapping[str, Any], namespace: str, depth: int) -> Node:
        full, inner = self._define(schema, namespace)
        fields = schema.get("fields")
        if not isinstance(fields, list) or not fields:
            raise bad_schema(f"record {full} has no fields (a record of nothing)")
        if len(fields) > MAX_FIELDS:
            raise bad_schema(f"record {full} has {len(fields)} fields (more than {MAX_FIELDS})")
        children, names = [], []
        for field in fields:
            if not isinstance(field, Mapping) or "type" not in field:
                raise bad_schema(f"record {full}: field {str(field)[:80]} has no type")
            name = field.get("name")
            if not isinstance(name, str) or not NAME_PART.fullmatch(name) or name in names:
                raise bad_schema(f"record {full}: bad or repeated field name {name!r}")
            names.append(name)
            children.append(self.node(field["type"], inner, depth + 1))
        node = Node("record", tuple(children))
        node.name = full
        node.fields = tuple((n, "default" in f) for n, f in zip(names, fields, strict=True))
        self.named[full] = node
        return node

    def _enum_or_fixed(self, schema: Mapping[str, Any], namespace: str) -> Node:
        full, _ = self._define(schema, namespace)
        if schema["type"] == "fixed":
            size = schema.get("size")
            if not isinstance(size, int) or not 0 <= size <= MAX_FIXED:
                raise bad_schema(f"fixed {full} has size {size!r}")
            node = Node("fixed", size=size)
        else:
            symbols = schema.get("symbols")
            if not isinstance(symbols, list) or not symbols:
                raise bad_schema(f"enum {full} has no symbols")
            if not all(isinstance(s, str) and NAME_PART.fullmatch(s) for s in symbols):
                raise bad_schema(f"enum {full} has a symbol that is not an Avro name")
            node = Node("enum", size=len(symbols))
            node.symbols = frozenset(symbols)
            node.fields = (("", "default" in schema),)
        node.name = full
        self.named[full] = node
        return node

    def _union(self, branches: list[Any], namespace: str, depth: int) -> Node:
        if not branches or len(branches) > MAX_BRANCHES:
            raise bad_schema(f"union of {len(branches)} types")
        if any(isinstance(branch, list) for branch in branches):
            raise bad_schema("union directly inside a union")
        return Node("union", tuple(self.node(b, namespace, depth + 1) for b in branches))

    def _array(self, schema: Mapping[str, Any], namespace: str, depth: int) -> Node:
        item = self.node(schema.get("items"), namespace, depth + 1)
        if item.min_size == 0:
            raise bad_schema(
                f"array of {item.name or item.kind} items that take no bytes: any count of "
                "them decodes from nothing (a decode bomb)"
            )
        return Node("array", (item,))


def _check_name(full: str) -> None:
    if len(full) > MAX_NAME or not all(NAME_PART.fullmatch(p) for p in full.split(".")):
        raise bad_schema(f"{full[:80]!r} is not an Avro name")


class _Resolver:
    """Avro schema resolution, decided from the two schemas alone (no data)."""

    def __init__(self) -> None:
        self.done: set[tuple[int, int]] = set()

    def match(self, writer: Node, reader: Node, path: str) -> None:
        if not self.matches(writer, reader, path):
            raise bad_schema(
                f"{path}: the writer's {_describe(writer)} cannot be read as the survey's "
                f"{_describe(reader)} (schemas/ holds the survey's schema)"
            )

    def matches(self, writer: Node, reader: Node, path: str) -> bool:
        if writer.kind == "union":
            # Only the branches a value can take need a reader type; null always may.
            return all(
                branch.kind == "null" or self.matches(branch, reader, path)
                for branch in writer.children
            )
        if reader.kind == "union":
            return any(self._same(writer, branch, path) for branch in reader.children)
        return self._same(writer, reader, path)

    def _same(self, writer: Node, reader: Node, path: str) -> bool:
        if writer.kind != reader.kind:
            return reader.kind in PROMOTIONS.get(writer.kind, ())
        if writer.kind in ("array", "map"):
            self.match(writer.children[0], reader.children[0], f"{path}[]")
            return True
        if writer.kind not in ("record", "enum", "fixed"):
            return True
        if writer.name.rpartition(".")[2] != reader.name.rpartition(".")[2]:
            return False
        if writer.kind == "fixed":
            return writer.size == reader.size
        if writer.kind == "enum":
            return writer.symbols <= reader.symbols or reader.fields[0][1]
        if (id(writer), id(reader)) not in self.done:
            self.done.add((id(writer), id(reader)))
            self._fields(writer, reader, path)
        return True

    def _fields(self, writer: Node, reader: Node, path: str) -> None:
        """Fields of both must resolve. Unlike Avro's rule, a reader field the writer lacks
        is no error: each ZTF version adds required fields (nmatches in 3.0, drbversion in
        3.3) and real alerts of older versions must still flow; a packet missing what the
        broker needs is the survey adapter's to reject (missing_field)."""
        written = dict(_named_children(writer))
        shared = [(name, child) for name, child in _named_children(reader) if name in written]
        if not shared:
            raise bad_schema(f"{path}: record {writer.name} has none of the survey's fields")
        for name, child in shared:
            self.match(written[name], child, f"{path}.{name}")


def _named_children(record: Node) -> list[tuple[str, Node]]:
    return [(name, child) for (name, _), child in zip(record.fields, record.children, strict=True)]


def _describe(node: Node) -> str:
    if node.kind == "union":
        return "union [" + ", ".join(_describe(child) for child in node.children) + "]"
    return f"{node.kind} {node.name}" if node.name else node.kind
