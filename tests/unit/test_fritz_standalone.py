"""The Fritz-like service on its own: its entry point without the broker, its configuration,
and the client mistakes it catches because it checks SkyPortal's contract with its own code."""

from __future__ import annotations

import base64
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from nightjar_fritz.config import ConfigError, load_config
from nightjar_fritz.payloads import ApiError, ThumbnailPost, parse, photometry_rows
from nightjar_fritz.plot import flux_to_mag as service_mag

from broker.post.photometry import light_curve, photometry_payload
from broker.post.thumbnails import encode_png, png_size
from broker.settings import load_settings

REPO = Path(__file__).resolve().parents[2]
SERVICE = REPO / "services" / "fritz"
# Imports of broker/workers fail in the child: the venv may hold them (editable), the
# service must not need them.
_NO_BROKER = "import sys; sys.modules.update(broker=None, workers=None); "


def run_service(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> Any:
    script = (
        _NO_BROKER + "import runpy; sys.argv = ['nightjar-fritz', *sys.argv[1:]]; "
        "runpy.run_module('nightjar_fritz', run_name='__main__')"
    )
    child_env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(SERVICE), **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=cwd, env=child_env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_help_runs_with_only_services_fritz_on_the_path(tmp_path: Path) -> None:
    top = run_service(["--help"], tmp_path)
    assert top.returncode == 0, top.stderr
    assert "serve" in top.stdout
    serve = run_service(["serve", "--help"], tmp_path)
    assert serve.returncode == 0, serve.stderr
    for option in ("--config", "--host", "--port", "--tokens-file", "--mongo-uri"):
        assert option in serve.stdout


def test_python_dash_m_help_from_elsewhere(tmp_path: Path) -> None:
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(SERVICE)}
    result = subprocess.run(
        [sys.executable, "-m", "nightjar_fritz", "--help"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: nightjar-fritz")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"NIGHTJAR_FRITZ__SERVER__TOKENS": '["t"]', "NIGHTJAR_FRITZ__SERVER__PORT": "70000"},
         "fritz.server.port: Input should be less than or equal to 65535"),
        ({}, "fritz.server.tokens is empty: set NIGHTJAR_FRITZ__SERVER__TOKENS"),
        ({"NIGHTJAR_FRITZ__SERVER__TOKENS": "t"}, "NIGHTJAR_FRITZ__SERVER__TOKENS: not valid JSON"),
    ],
)  # fmt: skip
def test_bad_configuration_exits_2_naming_the_field(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    result = run_service(["serve"], tmp_path, env)
    assert result.returncode == 2, result.stderr
    assert "nightjar-fritz: configuration error" in result.stderr
    assert message in result.stderr


def test_a_missing_tokens_file_is_named(tmp_path: Path) -> None:
    result = run_service(["serve", "--tokens-file", str(tmp_path / "nope")], tmp_path)
    assert result.returncode == 2
    assert f"--tokens-file: {tmp_path / 'nope'} does not exist" in result.stderr


def test_config_reads_its_sections_then_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "nightjar.yaml"
    tokens = tmp_path / "tokens"
    tokens.write_text("from-file\n\n")
    path.write_text(
        "kafka: {bootstrap_servers: elsewhere:9092}\n"
        "mongo: {uri: 'mongodb://db:27017', database: nightjar}\n"
        f"fritz:\n  url: http://x\n  server: {{port: 5100, tokens_file: {tokens}}}\n"
        "filters:\n  definitions:\n    - {name: bts, fritz_filter_id: 7, query: {a: 1}}\n"
    )
    env = {"NIGHTJAR_FRITZ__SERVER__DATABASE": "fritz_b", "NIGHTJAR_FRITZ__URL": "ignored",
           "NIGHTJAR_FRITZ__SERVER__TOKENS": '["from-env"]'}  # fmt: skip
    config = load_config(path, env, {"fritz.server.port": 5200, "mongo.uri": None})
    assert config.server.port == 5200 and config.server.database == "fritz_b"
    assert config.mongo_uri() == "mongodb://db:27017"
    assert config.filter_names() == {7: "bts"}
    assert config.accepted_tokens() == ["from-env", "from-file"]


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "nightjar.yaml"
    path.write_text("fritz: {server: {prot: 5000}}\n")
    with pytest.raises(ConfigError, match=r"fritz\.server\.prot: Extra inputs are not permitted"):
        load_config(path, {})


def test_the_repository_config_gives_the_service_the_brokers_filters() -> None:
    config = load_config(REPO / "config" / "nightjar.yaml", {})
    settings = load_settings(REPO / "config" / "nightjar.yaml")
    expected = {d.fritz_filter_id: d.name for d in settings.filters.definitions}
    assert expected and config.filter_names() == expected
    assert config.server.groups == settings.fritz.server.groups


def thumbnail(png: bytes) -> ThumbnailPost:
    return parse(ThumbnailPost, {"obj_id": "Z", "data": base64.b64encode(png).decode(),
                                 "ttype": "new"})  # fmt: skip


def test_a_png_with_a_broken_header_is_refused_though_the_posters_reader_takes_it() -> None:
    """A client encoder bug (a wrong IHDR CRC): the poster's own reader cannot see it."""
    good = encode_png(np.zeros((63, 63), dtype=np.uint8))
    broken = good[:29] + struct.pack(">I", 0xDEADBEEF) + good[33:]
    assert png_size(broken) == (63, 63)  # the poster's check passes
    assert thumbnail(good).png() == good
    with pytest.raises(ApiError) as caught:
        thumbnail(broken).png()
    assert caught.value.status == 400
    assert "data: not a base64-encoded PNG image (IHDR chunk CRC" in caught.value.message


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (b"\xff\xd8\xff\xe0" + bytes(40), "no PNG signature"),
        (encode_png(np.zeros((10, 40), dtype=np.uint8)), "image is 40x10 px; 16-500 px a side"),
        (encode_png(np.zeros((20, 501), dtype=np.uint8)), "image is 501x20 px"),
    ],
)
def test_thumbnails_outside_skyportals_contract_are_refused(image: bytes, message: str) -> None:
    with pytest.raises(ApiError) as caught:
        thumbnail(image).png()
    assert caught.value.status == 400 and message in caught.value.message


DETECTION: dict[str, Any] = {"jd": 2458881.5, "fid": 2, "magpsf": 18.25, "sigmapsf": 0.1,
                             "diffmaglim": 20.5, "isdiffpos": "t"}  # fmt: skip
LIMIT: dict[str, Any] = {"jd": 2458880.5, "fid": 1, "magpsf": None, "diffmaglim": 20.75}


def magnitudes_as_the_service_reads_them(payload: dict[str, Any]) -> list[float]:
    """Each point's AB magnitude from the stored flux (a limit: its 5-sigma flux)."""
    rows = photometry_rows(payload)
    return [service_mag(r.flux if r.flux is not None else 5 * r.fluxerr) for r in rows]


def test_the_posters_fluxes_give_back_the_alerts_magnitudes() -> None:
    """Flux and zero point checked against the magnitudes the alert states, by SkyPortal's
    formula in the service's own code: a poster using a wrong zero point shows up here."""
    points = light_curve("ztf", {"candidate": DETECTION, "prv_candidates": [LIMIT]})
    payload = photometry_payload("ZTF20aaaaaaa", points, instrument_id=1)
    stated = [LIMIT["diffmaglim"], DETECTION["magpsf"]]
    assert magnitudes_as_the_service_reads_them(payload) == pytest.approx(stated, abs=1e-9)
    # The same check on a client that computed its fluxes at zero point 25 but says 23.9.
    wrong = {**payload, "flux": [None, 10 ** (-0.4 * (DETECTION["magpsf"] - 25.0))]}
    off = magnitudes_as_the_service_reads_them(wrong)[1] - DETECTION["magpsf"]
    assert off == pytest.approx(-1.1)
