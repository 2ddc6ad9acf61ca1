"""Fuzz broker.decode: truncations, bit flips and random bytes give an Alert or BadAlert, never
anything else (no other exception type, no hang)."""

from __future__ import annotations

import io
import random

import fastavro
import pytest

from broker.decode import Decoder
from broker.errors import BadAlert
from broker.records import Alert, RejectReason
from broker.settings import SchemaSettings
from broker.tools.simulate import iter_alerts

TINY_GZIP = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03tiny"
TINY_FITS = b"SIMPLE  =                    T"
LSST_FRAME = b"\x00" + (1100).to_bytes(4, "big")


@pytest.fixture(scope="module")
def decoder() -> Decoder:
    return Decoder(SchemaSettings(), max_message_bytes=4 * 1024 * 1024)


@pytest.fixture(scope="module")
def small_ztf(decoder: Decoder) -> bytes:
    """A valid ZTF container file with no history and tiny stamps (header ~25 kB)."""
    raw = next(iter_alerts("ztf", 1, seed=11))
    schema, records = decoder.read(raw)
    stamp = {"fileName": "x.fits.gz", "stampData": TINY_GZIP}
    packet = records[0] | {
        "prv_candidates": None,
        **{key: stamp for key in ("cutoutScience", "cutoutTemplate", "cutoutDifference")},
    }
    buffer = io.BytesIO()
    fastavro.writer(buffer, schema.parsed, [packet], sync_marker=b"S" * 16)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def small_lsst(decoder: Decoder) -> bytes:
    """A valid Confluent-framed LSST alert with no history and tiny stamps (~1 kB)."""
    raw = next(iter_alerts("lsst", 1, seed=11))
    schema, records = decoder.read(raw)
    stamps = dict.fromkeys(("cutoutScience", "cutoutTemplate", "cutoutDifference"), TINY_FITS)
    packet = records[0] | {"prvDiaSources": None, "prvDiaForcedSources": None, **stamps}
    buffer = io.BytesIO()
    buffer.write(LSST_FRAME)
    fastavro.schemaless_writer(buffer, schema.parsed, packet)
    return buffer.getvalue()


def _outcome(decoder: Decoder, raw: bytes) -> Alert | BadAlert:
    """The decoder's answer; any exception but BadAlert fails the test with the input."""
    try:
        return decoder.decode(raw)
    except BadAlert as exc:
        assert exc.detail, f"empty detail for {raw[:40]!r}"
        return exc
    except Exception as exc:
        pytest.fail(f"{type(exc).__name__} escaped decode() for {len(raw)} bytes: {exc}")


def _flip(raw: bytes, position: int, bit: int) -> bytes:
    data = bytearray(raw)
    data[position] ^= 1 << bit
    return bytes(data)


@pytest.mark.parametrize("which", ["small_ztf", "small_lsst"])
def test_every_truncation_is_a_bad_alert(
    decoder: Decoder, which: str, request: pytest.FixtureRequest
) -> None:
    raw: bytes = request.getfixturevalue(which)
    assert isinstance(_outcome(decoder, raw), Alert)
    for length in range(len(raw)):
        outcome = _outcome(decoder, raw[:length])
        assert isinstance(outcome, BadAlert), f"truncated to {length} bytes decoded"
        assert outcome.reason == RejectReason.UNDECODABLE, (length, outcome)


def test_every_bit_flip_of_a_framed_alert(decoder: Decoder, small_lsst: bytes) -> None:
    reasons: dict[str, int] = {}
    for position in range(len(small_lsst)):
        for bit in range(8):
            outcome = _outcome(decoder, _flip(small_lsst, position, bit))
            name = outcome.reason if isinstance(outcome, BadAlert) else "decoded"
            reasons[name] = reasons.get(name, 0) + 1
    # Flips in float fields still decode; flips in lengths and ids do not.
    assert reasons["decoded"] > 0 and reasons[RejectReason.UNDECODABLE] > 0
    assert reasons[RejectReason.UNKNOWN_SCHEMA] > 0  # flips in the schema id


def test_random_bit_flips_of_a_container(decoder: Decoder, small_ztf: bytes) -> None:
    rng = random.Random(7)
    header = small_ztf.rfind(b"S" * 16, 0, len(small_ztf) - 16)  # end of the header
    body_start = header + 16
    positions = [rng.randrange(len(small_ztf)) for _ in range(300)]
    positions += [rng.randrange(body_start, len(small_ztf)) for _ in range(1500)]
    outcomes = [_outcome(decoder, _flip(small_ztf, p, rng.randrange(8))) for p in positions]
    assert any(isinstance(outcome, BadAlert) for outcome in outcomes)
    assert any(isinstance(outcome, Alert) for outcome in outcomes)


@pytest.mark.parametrize("prefix", [b"", b"Obj\x01", LSST_FRAME, b"\x00\x00\x00\x02\xbd"])
def test_random_bytes_are_bad_alerts(decoder: Decoder, prefix: bytes) -> None:
    rng = random.Random(len(prefix))
    for _ in range(400):
        noise = rng.randbytes(rng.choice((0, 1, 5, 17, 100, 2000)))
        assert isinstance(_outcome(decoder, prefix + noise), BadAlert)


def test_valid_header_with_random_records(decoder: Decoder, small_ztf: bytes) -> None:
    """The schema is fine, the record bytes are noise: fastavro's errors become BadAlert."""
    rng = random.Random(3)
    header_end = small_ztf.rfind(b"S" * 16, 0, len(small_ztf) - 16) + 16
    header, sync = small_ztf[:header_end], small_ztf[-16:]
    for _ in range(300):
        body = rng.randbytes(rng.randrange(1, 3000))
        block = _long(1) + _long(len(body)) + body + sync
        outcome = _outcome(decoder, header + block)
        assert isinstance(outcome, BadAlert)


def _long(value: int) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, "long", value)
    return buffer.getvalue()
