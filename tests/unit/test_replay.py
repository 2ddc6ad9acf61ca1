"""broker.tools.replay without Kafka: file discovery, archive streaming, wire-format conversion."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import fastavro
import pytest

from broker.__main__ import main
from broker.decode import Decoder
from broker.errors import TransientError
from broker.settings import SchemaSettings
from broker.tools.replay import (
    default_producer_config,
    discover,
    iter_alert_files,
    replay_paths,
    to_messages,
)
from broker.tools.simulate import iter_alerts


@pytest.fixture(scope="module")
def decoder() -> Decoder:
    return Decoder(SchemaSettings(), max_message_bytes=4 * 1024 * 1024)


def _tree(root: Path) -> dict[str, bytes]:
    """b/2.avro, a/1.avro, a/z/3.avro, notes.txt, a/readme.md: four alert-ish files."""
    alerts = list(iter_alerts("ztf", 3, seed=8))
    files = {
        "b/2.avro": alerts[1],
        "a/1.avro": alerts[0],
        "a/z/3.avro": alerts[2],
        "notes.txt": b"not an alert",
        "a/readme.md": b"# not an alert",
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


def _archive(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_discover_walks_folders_sorted(tmp_path: Path) -> None:
    _tree(tmp_path)
    found = [path.relative_to(tmp_path).as_posix() for path in discover([tmp_path])]
    assert found == ["a/1.avro", "a/z/3.avro", "b/2.avro"]


def test_discover_keeps_explicit_files_and_order(tmp_path: Path) -> None:
    _tree(tmp_path)
    paths = [tmp_path / "notes.txt", tmp_path / "b", tmp_path / "a" / "1.avro"]
    found = [path.relative_to(tmp_path).as_posix() for path in discover(paths)]
    assert found == ["notes.txt", "b/2.avro", "a/1.avro"]
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list(discover([tmp_path / "nowhere"]))


def test_archives_stream_their_alert_members(tmp_path: Path) -> None:
    alerts = list(iter_alerts("ztf", 3, seed=9))
    members = {
        "ztf_public_20250101/0.avro": alerts[0],
        "ztf_public_20250101/README": b"readme",
        "ztf_public_20250101/1.avro": alerts[1],
        "ztf_public_20250101/2.avro": alerts[2],
    }
    archive = _archive(tmp_path / "nightly" / "ztf_public_20250101.tar.gz", members)
    (tmp_path / "nightly" / "loose.avro").write_bytes(alerts[0])
    found = list(iter_alert_files([tmp_path / "nightly"]))
    names = [name.rsplit("/", 1)[-1] for name, _ in found]
    assert names == ["loose.avro", "0.avro", "1.avro", "2.avro"]
    assert [data for _, data in found] == [alerts[0], *alerts]
    assert found[1][0] == f"{archive}:ztf_public_20250101/0.avro"


def test_ztf_and_framed_messages_go_as_they_are(decoder: Decoder) -> None:
    for raw in [*iter_alerts("ztf", 2, seed=1), *iter_alerts("lsst", 2, seed=1)]:
        assert to_messages(raw, decoder) == [raw]
    assert to_messages(b"garbage", decoder) == [b"garbage"]  # the broker dead-letters it


def test_lsst_containers_are_reframed(decoder: Decoder) -> None:
    framed = list(iter_alerts("lsst", 3, seed=2))
    schema, _ = decoder.read(framed[0])
    records = [decoder.read(raw)[1][0] for raw in framed]
    buffer = io.BytesIO()
    fastavro.writer(buffer, schema.parsed, records)
    messages = to_messages(buffer.getvalue(), decoder, "three.avro")
    assert messages == framed  # byte for byte what Rubin would have sent
    assert [decoder.decode(message).candid for message in messages] == [
        record["diaSourceId"] for record in records
    ]


@pytest.mark.shared
def test_rubin_fake_alerts_are_reframed_with_their_version(reference: Path) -> None:
    schemas = SchemaSettings(lsst_schema_dir=reference / "lsst" / "schema")
    shared = Decoder(schemas, max_message_bytes=1 << 22)
    for version in ("7.1", "9.0", "11.0"):
        major, minor = version.split(".")
        path = reference / "lsst" / "schema" / major / minor / "sample_data" / "fakeAlert.avro"
        (message,) = to_messages(path.read_bytes(), shared, path.name)
        assert message[:5] == b"\x00" + (int(major) * 100 + int(minor)).to_bytes(4, "big")
        # The samples carry no cutouts: they decode, and the workers skip image models.
        assert shared.decode(message).cutouts.science == b""


def test_producer_config_is_idempotent() -> None:
    config = default_producer_config("h:1", "none", {"linger.ms": 5})
    assert config["enable.idempotence"] is True
    assert config["compression.type"] == "none" and config["linger.ms"] == 5


def test_missing_paths_fail_before_producing(tmp_path: Path) -> None:
    config = default_producer_config("127.0.0.1:1")
    with pytest.raises(FileNotFoundError, match="absent"):
        replay_paths([tmp_path, tmp_path / "absent"], "topic", config)
    code = main(["replay", str(tmp_path / "absent"), "--topic", "t", "--bootstrap", "127.0.0.1:1"])
    assert code == 1


def test_unreachable_kafka_fails_fast(tmp_path: Path) -> None:
    (tmp_path / "one.avro").write_bytes(next(iter_alerts("ztf", 1)))
    config = default_producer_config("127.0.0.1:1")  # nothing listens on port 1
    with pytest.raises(TransientError, match=r"cannot reach Kafka at 127\.0\.0\.1:1 "):
        replay_paths([tmp_path], "topic", config, connect_timeout_s=1.0)
