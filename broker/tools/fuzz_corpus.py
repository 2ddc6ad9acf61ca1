"""Hostile messages built from good ones: what a broken or malicious stream can send.

Input: good messages (simulated alerts, or real ones from ../shared/reference) and a seed.
Output: `Case`s, each a message and a name saying what was done to it: writer schemas
corrupted (a record without fields: the fp_hists decode bomb; recursion; zero-size array
items; types the survey never writes), huge declared lengths and counts, oversized
messages, wrong magic bytes and unknown schema ids, truncations and bit flips. Replayed
through Kafka by tests/e2e/test_hostile_corpus.py and used to seed the fuzzer.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import fastavro

from broker.avro.container import MAGIC, zigzag_long
from broker.decode import CONFLUENT_HEADER, Decoder, parse_container

SYNC = bytes(range(16))


@dataclass(frozen=True, slots=True)
class Case:
    """One hostile message and what was done to make it."""

    name: str
    data: bytes


def container(schema_text: bytes, body: bytes, count: int = 1) -> bytes:
    """An Avro container file of one block, whatever `schema_text` says (valid or not)."""
    metadata = b"".join(
        zigzag_long(len(value)) + value
        for value in (b"avro.schema", schema_text, b"avro.codec", b"null")
    )
    header = MAGIC + zigzag_long(2) + metadata + zigzag_long(0) + SYNC
    return header + zigzag_long(count) + zigzag_long(len(body)) + body + SYNC


def schema_and_body(raw: bytes) -> tuple[dict[str, Any], bytes]:
    """A one-record, uncompressed container's schema (plain JSON) and record bytes."""
    parsed = parse_container(raw)
    if parsed.codec != b"null" or len(parsed.blocks) != 1:
        raise ValueError("expected one uncompressed block")
    block = parsed.blocks[0]
    return json.loads(parsed.schema_text), raw[block.start : block.end]


def with_fp_hists(raw: bytes, decoder: Decoder) -> bytes:
    """A ZTF alert as ZTF 4.x sends it: `fp_hists` (forced photometry) added after
    prv_candidates, one entry per previous detection. Real older samples have none."""
    schema, records = decoder.read(raw)
    plain = json.loads(json.dumps(schema.plain))
    names = [field["name"] for field in plain["fields"]]
    if "fp_hists" not in names:  # schemas before 4.0
        plain["fields"].insert(names.index("prv_candidates") + 1, _FP_HISTS_FIELD)
    packet = dict(records[0])
    packet["fp_hists"] = [_fp_hist(prv, packet["candidate"]) for prv in packet["prv_candidates"]]
    buffer = io.BytesIO()
    fastavro.writer(buffer, fastavro.parse_schema(plain, named_schemas={}), [packet])
    return buffer.getvalue()


def fp_hists_bomb(raw: bytes) -> bytes:
    """The issue's decode bomb: the nested fp_hist record's "fields" flipped to "fialds", so
    each array item takes no bytes and the next byte is read as a huge item count."""
    at = raw.index(b'"fields"', raw.index(b'fp_hist"'))
    return raw[:at] + b'"fialds"' + raw[at + len(b'"fields"') :]


_FP_HISTS_FIELD = {
    "name": "fp_hists",
    "default": None,
    "type": [
        "null",
        {
            "type": "array",
            "items": {
                "type": "record",
                "name": "fp_hist",
                "namespace": "ztf.alert",
                "fields": [
                    {"name": "field", "type": ["null", "int"], "default": None},
                    {"name": "rcid", "type": ["null", "int"], "default": None},
                    {"name": "fid", "type": "int"},
                    {"name": "pid", "type": "long"},
                    {"name": "rfid", "type": "long"},
                    {"name": "programid", "type": "int"},
                    {"name": "jd", "type": "double"},
                    {"name": "forcediffimflux", "type": ["null", "float"], "default": None},
                    {"name": "forcediffimfluxunc", "type": ["null", "float"], "default": None},
                    {"name": "ranr", "type": "double"},
                    {"name": "decnr", "type": "double"},
                ],
            },
        },
    ],
}


def _fp_hist(prv: dict[str, Any], candidate: dict[str, Any]) -> dict[str, Any]:
    return {
        "field": prv.get("field"),
        "rcid": prv.get("rcid"),
        "fid": prv["fid"],
        "pid": prv["pid"],
        "rfid": candidate.get("rfid") or 0,
        "programid": prv.get("programid") or 1,
        "jd": prv["jd"],
        "forcediffimflux": prv.get("magpsf"),
        "forcediffimfluxunc": prv.get("sigmapsf"),
        "ranr": candidate.get("ra") or 0.0,
        "decnr": candidate.get("dec") or 0.0,
    }


# -- schema corruption (ZTF container files) ----------------------------------------------


def _schema_cases(raw: bytes) -> Iterator[Case]:
    schema, body = schema_and_body(raw)
    text = json.dumps(schema).encode()
    item = _first_array_item(schema)
    corruptions: dict[str, Callable[[dict[str, Any]], None]] = {
        "record_without_fields": lambda s: item.update(fields=[]),
        "null_array_items": lambda s: _first_array(s).update(items="null"),
        "recursive_record": lambda s: item["fields"].append({"name": "me", "type": item["name"]}),
        "candidate_types_changed": lambda s: _retype(s, "candidate", "string"),
        "deep_nesting": lambda s: s["fields"].append(_deep(200)),
        "huge_record": lambda s: s["fields"].extend(
            {"name": f"f{i}", "type": "null", "default": None} for i in range(3_000)
        ),
        "bad_names": lambda s: s["fields"].append({"name": "a-b c", "type": "int"}),
    }
    for name, corrupt in corruptions.items():
        changed = json.loads(text)
        item = _first_array_item(changed)
        corrupt(changed)
        yield Case(f"schema_{name}", container(json.dumps(changed).encode(), body))
    yield Case("schema_not_json", container(text[:-3], body))
    yield Case("record_count_huge", container(text, body, count=1 << 62))


def _first_array(schema: dict[str, Any]) -> dict[str, Any]:
    for field in schema["fields"]:
        branches = field["type"] if isinstance(field["type"], list) else [field["type"]]
        for branch in branches:
            if isinstance(branch, dict) and branch.get("type") == "array":
                return branch
    raise ValueError("no array field")


def _first_array_item(schema: dict[str, Any]) -> dict[str, Any]:
    item = _first_array(schema)["items"]
    if not isinstance(item, dict):
        raise ValueError("array items are not an inline record")
    return item


def _retype(schema: dict[str, Any], record_field: str, to: str) -> None:
    for field in schema["fields"]:
        if field["name"] == record_field:
            for inner in field["type"]["fields"]:
                inner["type"] = to


def _deep(levels: int) -> dict[str, Any]:
    node: Any = "int"
    for _ in range(levels):
        node = {"type": "array", "items": node}
    return {"name": "deep", "type": node}


# -- byte-level damage ----------------------------------------------------------------------


def _length_cases(raw: bytes) -> Iterator[Case]:
    """Huge declared lengths: a stamp's bytes length and an array count set to ~2^62."""
    schema, body = schema_and_body(raw)
    text = json.dumps(schema).encode()
    stamp = body.rfind(b"\x1f\x8b")
    if stamp > 0:
        length_at = _varint_start(body, stamp)
        huge = body[:length_at] + zigzag_long(1 << 62) + body[stamp:]
        yield Case("bytes_length_huge", container(text, huge))
    yield Case("array_count_huge", container(text, body[:-1] + b"\x02" + zigzag_long(1 << 62)))


def _varint_start(data: bytes, end: int) -> int:
    start = end - 1
    while start > 0 and data[start - 1] & 0x80:
        start -= 1
    return start


def _framing_cases(rng: random.Random, lsst: bytes, max_message_bytes: int) -> Iterator[Case]:
    body = lsst[CONFLUENT_HEADER:]
    yield Case("wrong_magic_byte", b"\x01" + lsst[1:])
    yield Case("unknown_schema_id", b"\x00" + rng.randint(9000, 99_999).to_bytes(4, "big") + body)
    yield Case("lsst_array_count_huge", lsst[:-1] + b"\x02" + zigzag_long(1 << 62))
    for factor in (1.5, 2.5):
        yield Case(f"oversized_x{factor}", lsst + bytes(int(max_message_bytes * factor)))


def _damage_cases(rng: random.Random, raw: bytes, count: int) -> Iterator[Case]:
    for index in range(count):
        yield Case(f"truncated_{index}", raw[: rng.randrange(1, len(raw))])
        flipped = bytearray(raw)
        for _ in range(rng.randint(1, 8)):
            flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
        yield Case(f"bit_flipped_{index}", bytes(flipped))


def hostile_corpus(
    ztf: bytes, lsst: bytes, decoder: Decoder, seed: int = 0, damaged: int = 10
) -> list[Case]:
    """Every kind of hostile message, built from one good ZTF (container) and one good
    LSST (Confluent-framed) message; `damaged` truncations and bit flips of each."""
    rng = random.Random(seed)
    ztf4 = with_fp_hists(ztf, decoder)
    cases = [Case("fp_hists_bomb", fp_hists_bomb(ztf4))]
    cases += [*_schema_cases(ztf), *_length_cases(ztf)]
    cases += _framing_cases(rng, lsst, decoder.max_message_bytes)
    cases += [*_damage_cases(rng, ztf4, damaged), *_damage_cases(rng, lsst, damaged)]
    return cases
