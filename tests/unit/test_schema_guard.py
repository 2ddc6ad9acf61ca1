"""broker.avro.guard: writer schemas checked before use, bounded decoding, oversized first."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

import broker.decode
from broker.decode import Decoder
from broker.errors import BadAlert
from broker.records import RejectReason
from broker.settings import KafkaSettings, SchemaSettings
from broker.tools.fuzz_corpus import fp_hists_bomb, hostile_corpus, with_fp_hists
from broker.tools.simulate import iter_alerts

REPO = Path(__file__).resolve().parents[2]
REAL_ZTF = REPO.parent / "shared/reference/ztf/alerts/night-20200202/1105522281015015000.avro"
MAX_BYTES = 1 << 20


@pytest.fixture(scope="module")
def decoder() -> Decoder:
    return Decoder(SchemaSettings(), MAX_BYTES)


@pytest.fixture(scope="module")
def ztf_raw() -> bytes:
    return next(iter_alerts("ztf", 1, seed=3))


@pytest.fixture(scope="module")
def lsst_raw() -> bytes:
    return next(iter_alerts("lsst", 1, seed=3))


def _reason(decoder: Decoder, raw: bytes) -> str:
    with pytest.raises(BadAlert) as caught:
        decoder.decode(raw)
    assert caught.value.detail
    return caught.value.reason


def test_oversized_is_refused_before_any_decoding(
    monkeypatch: pytest.MonkeyPatch, decoder: Decoder, ztf_raw: bytes, lsst_raw: bytes
) -> None:
    def never(*_args: object) -> None:
        raise AssertionError("an oversized message reached the decoder")

    monkeypatch.setattr(broker.decode, "parse_container", never)
    monkeypatch.setattr(decoder.registry, "get", never)
    for raw in (ztf_raw + bytes(2 * MAX_BYTES), lsst_raw + bytes(3 * MAX_BYTES)):
        assert _reason(decoder, raw) == RejectReason.OVERSIZED


def test_every_hostile_case_is_a_bad_alert(
    decoder: Decoder, ztf_raw: bytes, lsst_raw: bytes
) -> None:
    cases = hostile_corpus(ztf_raw, lsst_raw, decoder, damaged=20)
    reasons: dict[str, str] = {}
    for case in cases:
        try:
            decoder.decode(case.data)
        except BadAlert as exc:
            reasons[case.name] = exc.reason
    schema_cases = [name for name in reasons if name.startswith("schema_")]
    assert len(schema_cases) == 8 and "fp_hists_bomb" in reasons
    assert reasons["schema_not_json"] == RejectReason.UNDECODABLE
    for name in [*schema_cases, "fp_hists_bomb"]:
        if name != "schema_not_json":
            assert reasons[name] == RejectReason.BAD_SCHEMA, name
    for name in ("bytes_length_huge", "array_count_huge", "lsst_array_count_huge"):
        assert reasons[name] == RejectReason.UNDECODABLE, name
    assert reasons["oversized_x1.5"] == reasons["oversized_x2.5"] == RejectReason.OVERSIZED
    assert reasons["unknown_schema_id"] == RejectReason.UNKNOWN_SCHEMA
    assert reasons["wrong_magic_byte"] == RejectReason.UNDECODABLE


def test_the_schema_names_what_is_wrong(decoder: Decoder, ztf_raw: bytes) -> None:
    bomb = fp_hists_bomb(with_fp_hists(ztf_raw, decoder))
    with pytest.raises(BadAlert) as caught:
        decoder.decode(bomb)
    assert "ztf.alert.fp_hist has no fields" in caught.value.detail
    assert "4.02" in caught.value.detail  # the writer schema's version


BOMB_SCRIPT = """
import resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
from broker.decode import Decoder
from broker.errors import BadAlert
from broker.settings import SchemaSettings
from broker.tools.fuzz_corpus import fp_hists_bomb, with_fp_hists
decoder = Decoder(SchemaSettings(), 4 << 20)
bomb = fp_hists_bomb(with_fp_hists(open(sys.argv[1], "rb").read(), decoder))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
try:
    decoder.decode(bomb)
    reason = "decoded"
except BadAlert as exc:
    reason = exc.reason
took = time.perf_counter() - started
print(reason, took, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


def test_the_fp_hists_bomb_is_refused_fast_in_bounded_memory(
    tmp_path: Path, ztf_raw: bytes
) -> None:
    """The issue's bomb: before, ~50 s and the host's memory; now bad_schema at once."""
    source = REAL_ZTF if REAL_ZTF.is_file() else tmp_path / "ztf.avro"
    if not REAL_ZTF.is_file():
        source.write_bytes(ztf_raw)
    done = subprocess.run(
        [sys.executable, "-c", BOMB_SCRIPT, str(source)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    reason, seconds, grown_kib = done.stdout.split()
    assert reason == RejectReason.BAD_SCHEMA
    assert float(seconds) < 2.0  # milliseconds unloaded; slack for a busy CI machine
    assert int(grown_kib) < 64 * 1024


def test_decoding_stays_within_max_decode_bytes(ztf_raw: bytes, lsst_raw: bytes) -> None:
    for raw in (ztf_raw, lsst_raw):
        expected = Decoder(SchemaSettings(), MAX_BYTES).decode(raw)
        # Over the schema's worst case but above what the alert needs: scanned, then decoded.
        scanned = Decoder(SchemaSettings(), MAX_BYTES, max_decode_bytes=10 * len(raw))
        assert scanned.decode(raw).packet == expected.packet
        tight = Decoder(SchemaSettings(), MAX_BYTES, max_decode_bytes=len(raw))
        assert _reason(tight, raw) == RejectReason.OVERSIZED


def test_max_decode_bytes_is_validated() -> None:
    assert KafkaSettings().decode_bytes == 8 * KafkaSettings().max_message_bytes
    with pytest.raises(ValidationError, match="max_decode_bytes"):
        KafkaSettings(max_message_bytes=1000, max_decode_bytes=999)
