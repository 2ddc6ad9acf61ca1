"""Local services without running them: configuration, ports, build steps, error messages."""

from __future__ import annotations

import base64
import socket
from pathlib import Path

import pytest

from broker.errors import ConfigError, ServiceError
from broker.tools.services import REGISTRY, create
from broker.tools.services import build as build_steps
from broker.tools.services.base import Layout, port_from_env, port_in_use
from broker.tools.services.ferretdb import (
    PATCHES,
    SOURCE,
    SOURCE_FILES,
    FerretDBService,
    check_go,
    parse_go_version,
)
from broker.tools.services.kafka import KafkaService, new_cluster_id, server_properties


def _properties(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {key: value for key, value in pairs}


def test_server_properties_single_node_kraft_on_localhost(tmp_path: Path) -> None:
    props = _properties(server_properties(29092, 29093, tmp_path / "data"))

    assert props["process.roles"] == "broker,controller"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:29093"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:29092,CONTROLLER://127.0.0.1:29093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:29092"
    assert props["log.dirs"] == str(tmp_path / "data")
    assert props["auto.create.topics.enable"] == "true"
    assert int(props["message.max.bytes"]) >= 8 * 1024 * 1024
    for key in ("offsets.topic.replication.factor", "transaction.state.log.replication.factor"):
        assert props[key] == "1"
    assert "0.0.0.0" not in server_properties(29092, 29093, tmp_path)


def test_cluster_id_is_what_the_storage_tool_accepts() -> None:
    ids = {new_cluster_id() for _ in range(200)}

    assert len(ids) == 200
    for cluster_id in ids:
        assert len(cluster_id) == 22 and not cluster_id.startswith("-")
        assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16


def test_ports_come_from_the_environment_with_defaults() -> None:
    kafka = KafkaService({"NIGHTJAR_SERVICES_KAFKA_PORT": "19999"})
    ferret = FerretDBService({})

    assert [port.number for port in kafka.ports()] == [19999, 9093]
    assert kafka.exports() == {"NIGHTJAR_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:19999"}
    assert ferret.exports() == {"NIGHTJAR_MONGO__URI": "mongodb://127.0.0.1:27017"}


@pytest.mark.parametrize("raw", ["abc", "0", "65536", "-1", "90.5"])
def test_bad_port_is_a_config_error_naming_the_variable(raw: str) -> None:
    with pytest.raises(ConfigError, match=r"NIGHTJAR_SERVICES_FERRETDB_PORT .*1 to 65535"):
        port_from_env(
            {"NIGHTJAR_SERVICES_FERRETDB_PORT": raw}, "NIGHTJAR_SERVICES_FERRETDB_PORT", 1, "x"
        )


def test_port_in_use_sees_a_listener() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert port_in_use(port)
    assert not port_in_use(port)


def test_layout_defaults_and_overrides(tmp_path: Path) -> None:
    default = Layout.from_env({}, tmp_path)
    moved = Layout.from_env(
        {"NIGHTJAR_CACHE": str(tmp_path / "c"), "NIGHTJAR_SERVICES_DIR": str(tmp_path / "d")},
        Path("/elsewhere"),
    )

    assert default.data == tmp_path / ".nightjar" / "services"
    assert default.cache == Path.home() / ".cache" / "nightjar"
    assert moved.cache == tmp_path / "c"
    assert moved.log_path("kafka") == tmp_path / "d" / "kafka" / "kafka.log"


def test_registry_selection() -> None:
    assert [service.name for service in create()] == list(REGISTRY)
    assert [service.name for service in create(["ferretdb"], env={})] == ["ferretdb"]
    with pytest.raises(
        ConfigError, match="unknown service mongo; choose from kafka, ferretdb, fritz"
    ):
        create(["mongo"])


def test_missing_tool_names_the_debian_package(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))

    with pytest.raises(ServiceError, match=r"`mvn` \(Apache Maven\).*apt-get install maven"):
        build_steps.require(build_steps.MAVEN, "Gathering the Kafka jars")
    with pytest.raises(ServiceError, match="apt-get install default-jre-headless"):
        KafkaService({}).build(Layout(tmp_path / "cache", tmp_path / "data"), print)
    with pytest.raises(ServiceError, match=r"needs `go` \(Go 1.24 or newer\)"):
        FerretDBService({}).build(Layout(tmp_path / "cache", tmp_path / "data"), print)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("go1.26.8\n", (1, 26)), ("go1.24rc1", (1, 24)), ("devel go1.27-abc", (1, 27)), ("", None)],
)
def test_parse_go_version(text: str, expected: tuple[int, int] | None) -> None:
    assert parse_go_version(text) == expected


def test_old_go_is_refused_with_a_way_out(tmp_path: Path) -> None:
    fake_go = tmp_path / "go"
    fake_go.write_text("#!/bin/sh\necho go1.19.8\n")
    fake_go.chmod(0o755)

    with pytest.raises(
        ServiceError, match=r"needs Go 1.24 or newer, but .* is go1.19.8: .*go.dev/dl"
    ):
        check_go(str(fake_go))


def test_build_once_publishes_only_complete_builds(tmp_path: Path) -> None:
    target = tmp_path / "cache" / "thing-123"
    calls: list[Path] = []

    def failing(folder: Path) -> None:
        (folder / "half").write_text("x")
        raise ServiceError("compiler crashed")

    with pytest.raises(ServiceError, match="compiler crashed"):
        build_steps.build_once(target, failing)
    assert list((tmp_path / "cache").iterdir()) == []

    def working(folder: Path) -> None:
        calls.append(folder)
        (folder / "out").write_text("done")

    assert build_steps.build_once(target, working) == target
    assert build_steps.build_once(target, working) == target
    assert len(calls) == 1
    assert (target / "out").read_text() == "done"


def test_failed_step_reports_exit_status_and_log_tail(tmp_path: Path) -> None:
    log_path = tmp_path / "build.log"

    with pytest.raises(ServiceError) as caught:
        build_steps.run_step(
            ["sh", "-c", "echo resolving; echo 'artifact not found' >&2; exit 3"],
            what="Maven",
            cwd=tmp_path,
            log_path=log_path,
            timeout=30,
        )

    message = str(caught.value)
    assert "Maven failed (exit status 3)" in message
    assert str(log_path) in message
    assert "artifact not found" in message


def test_source_digest_follows_content(tmp_path: Path) -> None:
    pom = tmp_path / "pom.xml"
    pom.write_text("<version>3.9.1</version>")
    before = build_steps.source_digest([pom])
    pom.write_text("<version>3.9.2</version>")

    assert build_steps.source_digest([pom]) != before
    with pytest.raises(ServiceError, match="runs from a checkout"):
        build_steps.source_digest([tmp_path / "missing.xml"])


def test_tail_keeps_the_last_lines(tmp_path: Path) -> None:
    path = tmp_path / "service.log"
    path.write_text("".join(f"line {n}\n" for n in range(100)))

    assert build_steps.tail(path, lines=3) == "line 97\nline 98\nline 99"
    assert build_steps.tail(tmp_path / "absent.log") == ""


def test_ferretdb_runs_sqlite_in_wal_with_normal_sync_and_its_patches(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "cache", tmp_path / "data")
    argv = FerretDBService({"NIGHTJAR_SERVICES_FERRETDB_PORT": "27999"}).prepare(layout)
    url = next(arg for arg in argv if arg.startswith("--sqlite-url="))
    # A committed write survives a crash of FerretDB or the broker (WAL); FULL would fsync
    # every light-curve upsert.
    assert url.endswith("/?_pragma=synchronous(normal)")
    assert "--listen-addr=127.0.0.1:27999" in argv
    # The patched files are part of the build's identity: a changed patch rebuilds.
    patches = {"patches/metadata.go", "patches/collection.go", "patches/fsql_tx.go",
               "patches/fsql_db.go", "patches/msg_createindexes.go",
               "patches/msg_update.go"}  # fmt: skip
    assert patches <= set(SOURCE_FILES) and set(PATCHES) == patches
    for patch in patches:
        assert (SOURCE / patch).is_file(), patch


def test_ferretdb_formats_no_debug_log_unless_debug_is_on() -> None:
    """Upstream formats every SQL statement's arguments (whole documents, quoted) for a debug
    line even at log level warn: a quarter of FerretDB's CPU under the broker's load."""
    for name in ("patches/fsql_tx.go", "patches/fsql_db.go"):
        text = (SOURCE / name).read_text()
        calls = text.count("l.With(fields...).DebugContext")
        assert calls == 6 and text.count("l.Enabled(ctx, slog.LevelDebug) {") == calls, name
