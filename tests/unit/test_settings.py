"""broker.settings: YAML, NIGHTJAR_<SECTION>__<KEY> overrides, errors naming the field, masking."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from broker.__main__ import main
from broker.errors import ConfigError
from broker.settings import DEFAULT_CONFIG, load_settings


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """`make test` and `nightjar services up` export NIGHTJAR_* addresses: not for these tests."""
    for name in list(os.environ):
        if name.startswith("NIGHTJAR_"):
            monkeypatch.delenv(name)


def write_config(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "nightjar.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_shipped_config_is_valid_and_read_by_default() -> None:
    settings = load_settings()
    assert settings == load_settings(DEFAULT_CONFIG)
    assert settings.kafka.topics[0] == "^ztf_[0-9]+_programid[0-9]+$"
    assert settings.kafka.output_topic_for("lsst") == "nightjar.lsst.annotated"


def test_environment_overrides_file_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_config(tmp_path, {"kafka": {"group_id": "from-file", "dead_letter_topic": "dl"}})
    monkeypatch.setenv("NIGHTJAR_KAFKA__GROUP_ID", "from-env")
    monkeypatch.setenv("NIGHTJAR_KAFKA__TOPICS", '["alerts", "^lsst-.*$"]')
    monkeypatch.setenv("NIGHTJAR_DISPATCH__BATCH_SIZE", "7")
    monkeypatch.setenv("NIGHTJAR_DISPATCH__LOCAL_PROCESSES", "false")
    monkeypatch.setenv("NIGHTJAR_KAFKA__EXTRA", '{"session.timeout.ms": 6000}')
    settings = load_settings(path)
    assert settings.kafka.group_id == "from-env"
    assert settings.kafka.dead_letter_topic == "dl"  # not overridden: the file's value
    assert settings.kafka.topics == ["alerts", "^lsst-.*$"]
    assert settings.dispatch.batch_size == 7 and settings.dispatch.local_processes is False
    assert settings.kafka.extra == {"session.timeout.ms": 6000}


def test_nested_sections_are_overridden_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIGHTJAR_FRITZ__SERVER__PORT", "5123")
    assert load_settings(DEFAULT_CONFIG).fritz.server.port == 5123


@pytest.mark.parametrize(
    ("name", "value", "field"),
    [
        ("NIGHTJAR_DISPATCH__BATCH_SIZE", "0", "dispatch.batch_size"),
        ("NIGHTJAR_DISPATCH__BATCH_SECONDS", "soon", "dispatch.batch_seconds"),
        ("NIGHTJAR_KAFKA__TOPICS", "[]", "kafka.topics"),
        ("NIGHTJAR_KAFKA__TOPICS", '["^ztf_(unclosed$"]', "kafka.topics"),
        ("NIGHTJAR_KAFKA__OUTPUT_TOPIC", "out.{night}", "kafka.output_topic"),
        ("NIGHTJAR_KAFKA__AUTO_OFFSET_RESET", "middle", "kafka.auto_offset_reset"),
        ("NIGHTJAR_MODELS__PROVIDER", "tpu", "models.provider"),
        ("NIGHTJAR_METRICS__PORT", "70000", "metrics.port"),
        ("NIGHTJAR_FRITZ__CONCURRENCY", "0", "fritz.concurrency"),
    ],
)
def test_a_bad_environment_value_names_the_field(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, field: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings(DEFAULT_CONFIG)
    assert f"  {field}" in str(caught.value)
    assert "NIGHTJAR_<SECTION>__<KEY>" in str(caught.value)  # says where values come from


def test_a_misspelled_key_in_the_file_names_it(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"kafka": {"bootstrap_server": "broker:9092"}})
    with pytest.raises(ConfigError, match=r"kafka\.bootstrap_server") as caught:
        load_settings(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [("kafka: [unclosed", "not valid YAML"), ("- a\n- b\n", "must hold a mapping")],
)
def test_an_unreadable_file_says_so(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings(path)


def test_missing_config_or_secret_file_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "absent.yaml")
    monkeypatch.setenv("NIGHTJAR_MONGO__URI_FILE", str(tmp_path / "no-uri"))
    with pytest.raises(ConfigError, match=r"mongo\.uri_file"):
        load_settings(DEFAULT_CONFIG)


def test_secret_files_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "uri").write_text("mongodb://u:from-file@db:27017\n")
    monkeypatch.setenv("NIGHTJAR_MONGO__URI_FILE", str(tmp_path / "uri"))
    assert load_settings(DEFAULT_CONFIG).mongo_uri() == "mongodb://u:from-file@db:27017"


def test_config_show_masks_every_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    secrets = {
        "NIGHTJAR_MONGO__URI": "mongodb://alice:mongo-pass-1@db.example:27017/nightjar",
        "NIGHTJAR_KAFKA__SASL_PASSWORD": "kafka-pass-2",
        "NIGHTJAR_FRITZ__TOKEN": "fritz-token-3",
        "NIGHTJAR_FRITZ__SERVER__TOKENS": '["server-token-4"]',
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    assert main(["config", "show"]) == 0
    out = capsys.readouterr().out
    for leaked in ("mongo-pass-1", "kafka-pass-2", "fritz-token-3", "server-token-4"):
        assert leaked not in out
    shown = json.loads(out)
    assert shown["mongo"]["uri"] == "mongodb://alice:***@db.example:27017/nightjar"
    assert shown["kafka"]["sasl_password"] == "***"
    assert shown["fritz"]["token"] == "***"
    assert shown["kafka"]["bootstrap_servers"] == "127.0.0.1:9092"  # the rest as configured


def test_cli_exits_2_naming_the_field(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NIGHTJAR_DISPATCH__MAX_IN_FLIGHT", "-1")
    assert main(["config", "show"]) == 2
    err = capsys.readouterr().err
    assert "configuration error" in err and "dispatch.max_in_flight" in err


def test_static_membership_from_the_instance_name(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from broker.consume import consumer_config
    from broker.settings import Settings

    assert Settings().kafka.instance_name == socket.gethostname()
    config = consumer_config({}, "g", "earliest", "nightjar-broker-0")
    assert config["group.instance.id"] == "nightjar-broker-0"
    assert "group.instance.id" not in consumer_config({}, "g", "earliest", "")  # turned off
    monkeypatch.setenv("NIGHTJAR_KAFKA__INSTANCE_NAME", "pod-3")
    assert load_settings(None).kafka.instance_name == "pod-3"
