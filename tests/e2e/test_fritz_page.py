"""Alerts -> filter -> outbox -> sender -> Fritz-like service -> candidates page in Chromium.

The screenshot is kept as artifacts/fritz_page.png for people to look at.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastavro
import pytest
import requests
from pymongo import MongoClient
from pymongo.database import Database

from broker.cli.fritz import fritz_server
from broker.filters import FilterStage
from broker.post.outbox import Outbox
from broker.post.sender import Sender
from broker.settings import Settings
from tests.helpers import poll_until

TOKEN = "page-test-token"
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(autouse=True)
def _own_fritz_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Exports of `nightjar services up` (NIGHTJAR_FRITZ__URL, ...) must not steer these tests."""
    for name in list(os.environ):
        if name.startswith(("NIGHTJAR_FRITZ__", "NIGHTJAR_FILTERS__")):
            monkeypatch.delenv(name)


def stored_alert(record: dict[str, Any]) -> dict[str, Any]:
    candidate = record["candidate"]
    return {
        "_id": f"ztf:{record['candid']}",
        "survey": "ztf",
        "candid": record["candid"],
        "objectId": record["objectId"],
        "ra": candidate["ra"],
        "dec": candidate["dec"],
        "jd": candidate["jd"],
        "candidate": candidate,
        "prv_candidates": record["prv_candidates"] or [],
        "cutouts": {
            kind: record[f"cutout{kind.capitalize()}"]["stampData"]
            for kind in ("science", "template", "difference")
        },
        "annotations": {
            "btsbot": {"score": 0.5 + (record["candid"] % 50) / 100, "version": "v1.0.1"},
            "braai": {"score": candidate["drb"], "version": "d6_m9"},
        },
    }


@pytest.fixture
def fritz_db(
    mongo_client: MongoClient[dict[str, object]], mongo_db: Database[dict[str, Any]]
) -> Iterator[Database[dict[str, Any]]]:
    database = mongo_client[f"{mongo_db.name}_fritz"]
    yield database
    mongo_client.drop_database(database.name)


def settings(mongo_uri: str, db: str, fritz_db: str, port: int) -> Settings:
    bts = {"name": "bts", "fritz_filter_id": 1, "group_ids": [1],
           "query": {"annotations.btsbot.score": {"$gte": 0.5}}}  # fmt: skip
    fritz = {"url": f"http://127.0.0.1:{port}", "token": TOKEN, "poll_seconds": 0.05,
             "server": {"port": port, "database": fritz_db, "tokens": [TOKEN]}}  # fmt: skip
    return Settings.model_validate(
        {
            "mongo": {"uri": mongo_uri, "database": db},
            "fritz": fritz,
            "filters": {"definitions": [bts]},
        }
    )


def test_candidates_page_in_chromium(
    shared_dir: Path,
    mongo_uri: str,
    mongo_db: Database[dict[str, Any]],
    fritz_db: Database[dict[str, Any]],
    tmp_path: Path,
) -> None:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium)")
    paths = sorted((shared_dir / "ztf" / "alerts" / "night-20200202").glob("*.avro"))[:5]
    docs = []
    for path in paths:
        with path.open("rb") as handle:
            record: Any = next(iter(fastavro.reader(handle)))
        docs.append(stored_alert(record))
    mongo_db["alerts"].insert_many(docs)

    server = fritz_server(settings(mongo_uri, mongo_db.name, fritz_db.name, 0)).start()
    port = int(server.url.rsplit(":", 1)[1])
    config = settings(mongo_uri, mongo_db.name, fritz_db.name, port)
    stop = threading.Event()
    try:
        assert len(FilterStage.from_settings(config, mongo_db).run(docs)) == 5
        sender = threading.Thread(target=Sender.from_settings(config).run, args=(stop,))
        sender.start()
        poll_until(
            lambda: Outbox(mongo_db).counts() == {"done": 5}, timeout=60, message="5 posts done"
        )
        html = requests.Session().get(f"{server.url}/?token={TOKEN}&hours=24", timeout=10).text
        objects = {d["objectId"] for d in docs}
        assert all(obj in html for obj in objects)
        assert html.count("<img src='/static/thumbnails/") == 3 * len(objects)
        assert html.count("<svg") == len(objects) and "<circle" in html and "<path d=" in html
        assert "btsbot" in html and "braai" in html
        screenshot = shoot(f"{server.url}/?token={TOKEN}&hours=24", tmp_path)
    finally:
        stop.set()
        server.stop()
    ARTIFACTS.mkdir(exist_ok=True)
    kept = ARTIFACTS / "fritz_page.png"
    shutil.copyfile(screenshot, kept)
    assert_rendered(kept)


def shoot(url: str, tmp_path: Path) -> Path:
    assert CHROMIUM is not None
    target = tmp_path / "page.png"
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={target}", "--window-size=1400,1000", url,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    assert target.is_file(), (
        f"chromium wrote no screenshot (rc {result.returncode}): {result.stderr[-2000:]}"
    )
    return target


def assert_rendered(png: Path) -> None:
    image_module = pytest.importorskip("PIL.Image")
    with image_module.open(png) as image:
        assert image.size == (1400, 1000)
        gray = image.convert("L")
        histogram = gray.histogram()
    # Not a blank or error page: many grey levels (thumbnails) and some dark text.
    assert sum(1 for count in histogram if count > 50) > 60
    assert sum(histogram[:64]) > 2000
    assert re.match(r".*\.png$", png.name)
