"""broker.decode: wire formats, reject reasons, schema caching, and the schema registry."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import fastavro
import pytest
from fastavro.schema import load_schema

import broker.decode
from broker.decode import Decoder
from broker.errors import BadAlert, TransientError
from broker.records import Origin, RejectReason
from broker.schema_registry import (
    RUBIN_PACKAGE,
    SCHEMA_ROOT,
    SchemaRegistry,
    lsst_schema_file,
    packaged_schema_root,
)
from broker.settings import SchemaSettings
from broker.tools.simulate import iter_alerts
from workers.cutouts import BadStamp, read_stamps

MAX_BYTES = 4 * 1024 * 1024


@pytest.fixture(scope="module")
def decoder() -> Decoder:
    return Decoder(SchemaSettings(), MAX_BYTES)


@pytest.fixture(scope="module")
def ztf_raw() -> bytes:
    return next(iter_alerts("ztf", 1, seed=5))


@pytest.fixture(scope="module")
def lsst_raw() -> bytes:
    return next(iter_alerts("lsst", 1, seed=5))


def _reframe(decoder: Decoder, raw: bytes, change: dict[str, Any]) -> bytes:
    """An LSST message with top-level fields of its packet replaced."""
    schema, records = decoder.read(raw)
    buffer = io.BytesIO()
    buffer.write(raw[:5])
    fastavro.schemaless_writer(buffer, schema.parsed, records[0] | change)
    return buffer.getvalue()


def _container(decoder: Decoder, raw: bytes, records: list[dict[str, Any]], codec: str) -> bytes:
    schema = decoder.schema_of(raw)
    buffer = io.BytesIO()
    fastavro.writer(buffer, schema.parsed, records, codec=codec)
    return buffer.getvalue()


def _reason(decoder: Decoder, raw: bytes) -> str:
    with pytest.raises(BadAlert) as caught:
        decoder.decode(raw)
    assert caught.value.detail  # always something a person can act on
    return caught.value.reason


def test_ztf_container_decodes(decoder: Decoder, ztf_raw: bytes) -> None:
    origin = Origin("ztf_20250101_programid1", 3, 42)
    alert = decoder.decode(ztf_raw, origin)
    assert alert.survey == "ztf" and alert.origin == origin
    assert alert.schema_version == "4.02"
    assert alert.object_id == alert.packet["objectId"]
    assert alert.cutouts.difference == alert.packet["cutoutDifference"]["stampData"]
    assert alert.key == f"ztf:{alert.candid}"


def test_lsst_framed_decodes(decoder: Decoder, lsst_raw: bytes) -> None:
    assert lsst_raw[:5] == b"\x00\x00\x00\x04\x4c"  # magic byte, schema id 1100
    alert = decoder.decode(lsst_raw)
    assert alert.survey == "lsst" and alert.schema_version == "11.0"
    assert alert.candid == alert.packet["diaSourceId"] == alert.candidate["diaSourceId"]
    assert alert.object_id == str(alert.candidate["diaObjectId"])
    assert alert.jd == pytest.approx(alert.candidate["midpointMjdTai"] + 2400000.5)
    assert alert.cutouts.science.startswith(b"SIMPLE")


@pytest.mark.parametrize("codec", ["null", "deflate"])
def test_lsst_and_deflate_containers_decode(decoder: Decoder, lsst_raw: bytes, codec: str) -> None:
    _, records = decoder.read(lsst_raw)
    alert = decoder.decode(_container(decoder, lsst_raw, records, codec))
    assert alert.candid == records[0]["diaSourceId"]


def test_container_of_two_alerts_is_rejected(decoder: Decoder, lsst_raw: bytes) -> None:
    _, records = decoder.read(lsst_raw)
    raw = _container(decoder, lsst_raw, records * 2, "null")
    assert _reason(decoder, raw) == RejectReason.UNDECODABLE
    assert len(decoder.read(raw)[1]) == 2  # replay still reads them all


def test_oversized_is_checked_first() -> None:
    small = Decoder(SchemaSettings(), max_message_bytes=100)
    assert _reason(small, b"garbage" * 100) == RejectReason.OVERSIZED


@pytest.mark.parametrize("raw", [b"", b"hello world", b"Obj\x01", b"\x00\x00\x00"])
def test_not_avro_is_undecodable(decoder: Decoder, raw: bytes) -> None:
    assert _reason(decoder, raw) == RejectReason.UNDECODABLE


def test_trailing_garbage_is_undecodable(decoder: Decoder, ztf_raw: bytes, lsst_raw: bytes) -> None:
    assert _reason(decoder, ztf_raw + b"\x00") == RejectReason.UNDECODABLE
    assert _reason(decoder, lsst_raw + b"\x00") == RejectReason.UNDECODABLE


def test_unknown_schema_id(decoder: Decoder, lsst_raw: bytes) -> None:
    raw = b"\x00" + (9999).to_bytes(4, "big") + lsst_raw[5:]
    assert _reason(decoder, raw) == RejectReason.UNKNOWN_SCHEMA


def test_unknown_survey_is_unknown_schema(decoder: Decoder) -> None:
    schema = {"type": "record", "name": "alert", "namespace": "other", "fields": []}
    buffer = io.BytesIO()
    fastavro.writer(buffer, schema, [{}])
    assert _reason(decoder, buffer.getvalue()) == RejectReason.UNKNOWN_SCHEMA


@pytest.mark.parametrize(
    ("stamp", "reason"),
    [
        (None, RejectReason.MISSING_CUTOUTS),
        (b"", RejectReason.MISSING_CUTOUTS),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", RejectReason.JPEG_CUTOUTS),
        (b"PNG or something", RejectReason.BAD_CUTOUTS),
    ],
)
def test_cutout_reasons(decoder: Decoder, lsst_raw: bytes, stamp: Any, reason: str) -> None:
    """Stamps that cannot be scored never reject the alert: the workers skip its image
    models with the reason."""
    raw = _reframe(decoder, lsst_raw, {"cutoutTemplate": stamp})
    alert = decoder.decode(raw)
    assert alert.cutouts.template == (stamp or b"")
    with pytest.raises(BadStamp) as caught:
        read_stamps(alert.cutouts)
    assert caught.value.reason == reason


def test_lsst_object_id_falls_back_to_solar_system(decoder: Decoder, lsst_raw: bytes) -> None:
    _, records = decoder.read(lsst_raw)
    source = records[0]["diaSource"] | {"diaObjectId": None, "ssObjectId": 0}
    no_object = _reframe(decoder, lsst_raw, {"diaSource": source, "diaObject": None})
    assert _reason(decoder, no_object) == RejectReason.MISSING_FIELD
    moving = _reframe(
        decoder, lsst_raw, {"diaSource": source | {"ssObjectId": 42}, "diaObject": None}
    )
    assert decoder.decode(moving).object_id == "42"


def test_ztf_missing_fields(decoder: Decoder, ztf_raw: bytes) -> None:
    _, records = decoder.read(ztf_raw)
    packet = records[0]
    no_id = _container(decoder, ztf_raw, [packet | {"objectId": ""}], "null")
    assert _reason(decoder, no_id) == RejectReason.MISSING_FIELD
    nan_ra = packet | {"candidate": packet["candidate"] | {"ra": float("nan")}}
    assert _reason(decoder, _container(decoder, ztf_raw, [nan_ra], "null")) == "missing_field"
    no_stamp = _container(decoder, ztf_raw, [packet | {"cutoutScience": None}], "null")
    assert decoder.decode(no_stamp).cutouts.science == b""  # stored, image models skipped


def test_writer_schema_round_trips_the_packet(decoder: Decoder, ztf_raw: bytes) -> None:
    alert = decoder.decode(ztf_raw)
    schema = decoder.writer_schema(alert.schema_key)
    buffer = io.BytesIO()
    fastavro.writer(buffer, schema, [dict(alert.packet)])
    assert decoder.decode(buffer.getvalue()).packet == alert.packet
    with pytest.raises(KeyError, match="not seen"):
        decoder.writer_schema("ztf.alert@0000")


def test_schema_key_is_stable_across_decoders(ztf_raw: bytes, lsst_raw: bytes) -> None:
    first, second = Decoder(SchemaSettings(), MAX_BYTES), Decoder(SchemaSettings(), MAX_BYTES)
    for raw in (ztf_raw, lsst_raw):
        assert first.decode(raw).schema_key == second.decode(raw).schema_key


def test_writer_schema_is_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    parse = broker.decode.parse_schema

    def counting(schema: Any, **kwargs: Any) -> Any:
        calls.append(schema["name"])
        return parse(schema, **kwargs)

    monkeypatch.setattr(broker.decode, "parse_schema", counting)
    fresh = Decoder(SchemaSettings(), MAX_BYTES)
    for raw in [*iter_alerts("ztf", 20, seed=2), *iter_alerts("lsst", 20, seed=2)]:
        fresh.decode(raw)
    assert sorted(calls) == ["lsst.v11_0.alert", "ztf.alert"]


class _Registry(BaseHTTPRequestHandler):
    """A Confluent-compatible registry answering ids it holds; fails first when told to."""

    schemas: dict[int, str] = {}
    failures_left = 0
    requests: list[str] = []

    def do_GET(self) -> None:
        type(self).requests.append(self.path)
        if type(self).failures_left > 0:
            type(self).failures_left -= 1
            self._answer(503, {"message": "try again"})
            return
        schema_id = int(self.path.rsplit("/", 1)[-1])
        if schema_id in self.schemas:
            self._answer(200, {"schema": self.schemas[schema_id]})
        else:
            self._answer(404, {"error_code": 40403, "message": "Schema not found"})

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def registry_url() -> Iterator[str]:
    plain = load_schema(str(lsst_schema_file(SCHEMA_ROOT / "lsst", 1100)), _write_hint=False)
    _Registry.schemas = {1100: json.dumps(plain)}
    _Registry.failures_left = 0
    _Registry.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Registry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_registry_schemas_are_fetched_once(registry_url: str) -> None:
    _Registry.failures_left = 1  # one 503 first: retried
    registry = SchemaRegistry(registry_url, backoff_s=0.0)
    fresh = Decoder(SchemaSettings(lsst_registry_url=registry_url), MAX_BYTES, registry)
    alerts = [fresh.decode(raw) for raw in iter_alerts("lsst", 5, seed=3)]
    assert {alert.schema_version for alert in alerts} == {"11.0"}
    assert _Registry.requests == ["/schemas/ids/1100"] * 2


def test_registry_unknown_id_is_a_bad_alert(registry_url: str, lsst_raw: bytes) -> None:
    fresh = Decoder(SchemaSettings(lsst_registry_url=registry_url), MAX_BYTES)
    raw = b"\x00" + (702).to_bytes(4, "big") + lsst_raw[5:]
    assert _reason(fresh, raw) == RejectReason.UNKNOWN_SCHEMA
    assert _reason(fresh, raw) == RejectReason.UNKNOWN_SCHEMA
    assert _Registry.requests == ["/schemas/ids/702"]  # the miss is remembered


def test_registry_down_is_transient(registry_url: str, lsst_raw: bytes) -> None:
    _Registry.failures_left = 10
    registry = SchemaRegistry(registry_url, retries=3, backoff_s=0.0)
    fresh = Decoder(SchemaSettings(), MAX_BYTES, registry)
    with pytest.raises(TransientError, match="3 attempts"):
        fresh.decode(lsst_raw)
    assert len(_Registry.requests) == 3


def test_relative_schema_dir_resolves_from_the_repository(lsst_raw: bytes) -> None:
    from pathlib import Path

    fresh = Decoder(SchemaSettings(lsst_schema_dir=Path("schemas/lsst")), MAX_BYTES)
    assert fresh.decode(lsst_raw).schema_version == "11.0"


# -- Every schema Rubin has released, from its lsst-alert-packet package ----------------------


def _released_samples() -> list[tuple[int, Any]]:
    """(schema id, fakeAlert.avro path) of every version lsst-alert-packet ships, 7.0 on (the
    versions Rubin's live stream has used; earlier ones were pre-operations drafts)."""
    root = packaged_schema_root()
    if root is None:
        return []
    found = []
    for sample in sorted(root.glob("*/*/sample_data/fakeAlert.avro")):
        major, minor = int(sample.parents[2].name), int(sample.parents[1].name)
        if major >= 7:
            found.append((100 * major + minor, sample))
    return found


def test_every_released_rubin_schema_decodes_offline(lsst_raw: bytes) -> None:
    samples = _released_samples()
    if not samples:
        pytest.skip(f"{RUBIN_PACKAGE} is not installed (`make venv` installs it)")
    # Only the repository's own folder is configured (11.0): the rest come from the package.
    decoder = Decoder(SchemaSettings(), MAX_BYTES)
    stamps = {k: v for k, v in decoder.read(lsst_raw)[1][0].items() if k.startswith("cutout")}
    assert {sid for sid, _ in samples} >= {700, 701, 800, 900, 1000, 1100}
    for schema_id, sample in samples:
        with sample.open("rb") as handle:
            reader = fastavro.reader(handle)
            schema, record = reader.writer_schema, next(iter(reader))
        buffer = io.BytesIO()
        buffer.write(b"\x00" + schema_id.to_bytes(4, "big"))
        # Rubin's sample alerts carry no cutouts: give them real FITS stamps.
        fastavro.schemaless_writer(buffer, schema, record | stamps)
        alert = decoder.decode(buffer.getvalue())
        assert alert.survey == "lsst", schema_id
        assert alert.candid == record["diaSource"]["diaSourceId"], schema_id
        assert alert.schema_version == f"{schema_id // 100}.{schema_id % 100}", schema_id


def test_an_id_neither_the_folder_nor_the_package_knows_says_where_it_looked(
    decoder: Decoder, lsst_raw: bytes
) -> None:
    raw = b"\x00" + (9999).to_bytes(4, "big") + lsst_raw[5:]
    with pytest.raises(BadAlert) as caught:
        decoder.decode(raw)
    assert "v99.99" in caught.value.detail and "schemas/lsst" in caught.value.detail
    if packaged_schema_root() is not None:
        assert RUBIN_PACKAGE in caught.value.detail
