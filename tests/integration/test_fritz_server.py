"""The Fritz-like service on the real MongoDB-compatible server: auth, shapes, validation."""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
import requests
from nightjar_fritz.server import FritzServer
from pymongo import MongoClient
from pymongo.database import Database

from broker.cli.fritz import fritz_server
from broker.errors import ConfigError
from broker.post.thumbnails import encode_png
from broker.settings import Settings

TOKEN = "fritz-test-token"
OBJ = "ZTF20aahgyet"


@pytest.fixture(autouse=True)
def _own_fritz_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Exports of `nightjar services up` (NIGHTJAR_FRITZ__URL, ...) must not steer these tests."""
    for name in list(os.environ):
        if name.startswith(("NIGHTJAR_FRITZ__", "NIGHTJAR_FILTERS__")):
            monkeypatch.delenv(name)


def service_settings(mongo_uri: str, fritz_db: str, *, faults: bool = True) -> Settings:
    server = {"port": 0, "database": fritz_db, "tokens": [TOKEN], "faults_enabled": faults,
              "groups": {1: "Nightjar", 2: "Comets"}}  # fmt: skip
    definitions = [
        {"name": "bts", "fritz_filter_id": 1, "group_ids": [1], "query": {"survey": "ztf"}},
        {"name": "comets", "fritz_filter_id": 2, "group_ids": [2], "query": {"survey": "ztf"}},
    ]
    return Settings.model_validate(
        {
            "mongo": {"uri": mongo_uri, "database": fritz_db},
            "fritz": {"server": server},
            "filters": {"definitions": definitions},
        }
    )


@pytest.fixture
def fritz_db(
    mongo_client: MongoClient[dict[str, object]], mongo_db: Database[dict[str, object]]
) -> Iterator[Database[dict[str, object]]]:
    database = mongo_client[f"{mongo_db.name}_fritz"]
    yield database
    mongo_client.drop_database(database.name)


@pytest.fixture
def server(mongo_uri: str, fritz_db: Database[dict[str, object]]) -> Iterator[FritzServer]:
    service = fritz_server(service_settings(mongo_uri, fritz_db.name)).start()
    yield service
    service.stop()


def call(
    server: FritzServer, method: str, path: str, body: Any = None, token: str | None = TOKEN
) -> requests.Response:
    headers = {"Authorization": f"token {token}"} if token else {}
    return requests.request(method, server.url + path, json=body, headers=headers, timeout=10)


def candidate(
    obj: str = OBJ, filter_ids: list[int] | None = None, alert: int = 1
) -> dict[str, Any]:
    return {
        "id": obj,
        "ra": 151.25,
        "dec": 22.5,
        "filter_ids": filter_ids or [1],
        "passing_alert_id": alert,
        "passed_at": datetime.now(UTC).isoformat(),
        "origin": "test",
    }


def png(side: int = 63) -> str:
    image = np.tile(np.arange(side, dtype=np.uint8), (side, 1))
    return base64.b64encode(encode_png(image)).decode()


@pytest.mark.parametrize(
    ("headers", "status", "message"),
    [
        ({}, 401, "missing Authorization header"),
        ({"Authorization": f"Bearer {TOKEN}"}, 401, "malformed Authorization header"),
        ({"Authorization": "token two words"}, 401, "malformed Authorization header"),
        ({"Authorization": "token"}, 401, "malformed Authorization header"),
        ({"Authorization": "token not-the-token"}, 403, "unknown token"),
    ],
)
def test_token_authentication(
    server: FritzServer, headers: dict[str, str], status: int, message: str
) -> None:
    response = requests.get(server.url + "/api/sysinfo", headers=headers, timeout=10)
    assert response.status_code == status
    assert response.json()["status"] == "error"
    assert message in response.json()["message"]
    assert call(server, "GET", "/api/sysinfo").json()["status"] == "success"


def test_service_needs_tokens(mongo_uri: str, fritz_db: Database[dict[str, object]]) -> None:
    settings = service_settings(mongo_uri, fritz_db.name)
    no_tokens = settings.model_copy(
        update={"fritz": settings.fritz.model_copy(
            update={"server": settings.fritz.server.model_copy(update={"tokens": []})})}
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"fritz\.server\.tokens is empty"):
        fritz_server(no_tokens)


def test_sysinfo_streams_groups(server: FritzServer) -> None:
    info = call(server, "GET", "/api/sysinfo").json()["data"]
    assert "POST ^/api/candidates$" in info["skyportal_api_subset"]
    streams = call(server, "GET", "/api/streams").json()["data"]
    assert {"id": 1, "name": "ZTF Public"} in streams
    group = call(server, "GET", "/api/groups/2").json()["data"]
    assert group["id"] == 2 and group["name"] == "Comets"
    missing = call(server, "GET", "/api/groups/99")
    assert missing.status_code == 404 and "no group 99" in missing.json()["message"]


def test_candidate_lifecycle(server: FritzServer) -> None:
    assert call(server, "HEAD", f"/api/candidates/{OBJ}").status_code == 404
    posted = call(server, "POST", "/api/candidates", candidate(filter_ids=[1, 2], alert=11))
    assert posted.status_code == 200, posted.text
    assert len(posted.json()["data"]["ids"]) == 2
    head = call(server, "HEAD", f"/api/candidates/{OBJ}")
    assert head.status_code == 200 and head.content == b""
    data = call(server, "GET", f"/api/candidates/{OBJ}").json()["data"]
    assert data["id"] == OBJ and data["ra"] == 151.25 and data["filter_ids"] == [1, 2]
    assert {(p["filter_id"], p["passing_alert_id"]) for p in data["passing_alerts"]} == {
        (1, 11),
        (2, 11),
    }
    again = call(server, "POST", "/api/candidates", candidate(alert=11))
    assert again.status_code == 400 and "already passed filter 1 with alert 11" in again.text
    later = call(server, "POST", "/api/candidates", {**candidate(alert=12), "ra": None})
    assert later.status_code == 200  # known object: no position needed


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"id": OBJ, "ra": 1.0, "dec": 2.0}, "filter_ids: Field required"),
        ({**candidate(), "filter_ids": [9]}, "filter_ids: unknown filter id(s) [9]"),
        ({**candidate(), "ra": 361}, "ra: Input should be less than 360"),
        ({**candidate(), "passed_at": "yesterday"}, "passed_at:"),
        ({**candidate(), "ra": None}, "ra, dec: required when the object is new"),
        ([1, 2], "request body must be a JSON object"),
    ],
)
def test_candidate_validation(server: FritzServer, body: Any, message: str) -> None:
    response = call(server, "POST", "/api/candidates", body)
    assert response.status_code == 400
    assert message in response.json()["message"]


def test_candidate_list_selects_by_filter_and_time(server: FritzServer) -> None:
    now = datetime.now(UTC)
    for index, (filter_id, hours_ago) in enumerate([(1, 1), (2, 2), (1, 30)]):
        body = candidate(f"ZTF20list{index}", [filter_id], alert=index)
        body["passed_at"] = (now - timedelta(hours=hours_ago)).isoformat()
        assert call(server, "POST", "/api/candidates", body).status_code == 200
    since = (now - timedelta(hours=24)).isoformat()

    def listed(query: str) -> list[str]:
        data = call(server, "GET", f"/api/candidates?{query}").json()["data"]
        return [c["id"] for c in data["candidates"]]

    assert listed("") == ["ZTF20list0", "ZTF20list1", "ZTF20list2"]  # newest first
    assert listed("filterIDs=1") == ["ZTF20list0", "ZTF20list2"]
    assert listed(f"filterIDs=1&startDate={since.replace('+', '%2B')}") == ["ZTF20list0"]
    page = call(server, "GET", "/api/candidates?numPerPage=2&pageNumber=2").json()["data"]
    assert page["totalMatches"] == 3 and [c["id"] for c in page["candidates"]] == ["ZTF20list2"]
    bad = call(server, "GET", "/api/candidates?startDate=last-week")
    assert bad.status_code == 400 and "startDate" in bad.json()["message"]


def test_photometry_put_is_idempotent(server: FritzServer) -> None:
    call(server, "POST", "/api/candidates", candidate())
    body = {
        "obj_id": OBJ, "instrument_id": 1, "mjd": [58880.0, 58881.0], "flux": [None, 100.0],
        "fluxerr": [2.0, 5.0], "zp": 23.9, "magsys": "ab", "filter": ["ztfg", "ztfr"],
    }  # fmt: skip
    first = call(server, "PUT", "/api/photometry", body)
    assert first.status_code == 200, first.text
    second = call(server, "PUT", "/api/photometry", body)
    assert second.json()["data"]["ids"] == first.json()["data"]["ids"]
    points = call(server, "GET", f"/api/sources/{OBJ}/photometry").json()["data"]
    assert [(p["filter"], p["flux"]) for p in points] == [("ztfg", None), ("ztfr", 100.0)]
    unknown = call(server, "PUT", "/api/photometry", {**body, "obj_id": "ZTF99nothere"})
    assert unknown.status_code == 400 and "POST /api/candidates first" in unknown.text


def test_thumbnails(server: FritzServer) -> None:
    call(server, "POST", "/api/candidates", candidate())
    posted = call(server, "POST", "/api/thumbnail", {"obj_id": OBJ, "data": png(), "ttype": "new"})
    assert posted.status_code == 200 and isinstance(posted.json()["data"]["id"], int)
    replaced = call(
        server, "POST", "/api/thumbnail", {"obj_id": OBJ, "data": png(), "ttype": "new"}
    )
    assert replaced.json()["data"]["id"] == posted.json()["data"]["id"]
    for data, message in [
        (png(8), "8x8 px"),
        (base64.b64encode(b"GIF89a").decode(), "not a base64"),
    ]:
        bad = call(server, "POST", "/api/thumbnail", {"obj_id": OBJ, "data": data, "ttype": "ref"})
        assert bad.status_code == 400 and message in bad.json()["message"]
    thumbs = call(server, "GET", f"/api/sources/{OBJ}").json()["data"]["thumbnails"]
    assert [(t["type"], t["public_url"]) for t in thumbs] == [
        ("new", f"/static/thumbnails/{OBJ}_new.png")
    ]


def test_annotations(server: FritzServer) -> None:
    call(server, "POST", "/api/candidates", candidate())
    path = f"/api/sources/{OBJ}/annotations"
    body = {"origin": "nightjar:bts", "data": {"btsbot": 0.9}, "group_ids": [1]}
    posted = call(server, "POST", path, body)
    assert posted.status_code == 200
    annotation_id = posted.json()["data"]["annotation_id"]
    duplicate = call(server, "POST", path, body)
    assert duplicate.status_code == 400 and "already has an annotation" in duplicate.text
    updated = call(server, "PUT", f"{path}/{annotation_id}", {"data": {"btsbot": 0.95}})
    assert updated.status_code == 200
    (annotation,) = call(server, "GET", path).json()["data"]
    assert annotation["data"] == {"btsbot": 0.95} and annotation["group_ids"] == [1]
    unknown_group = call(server, "POST", path, {**body, "origin": "other", "group_ids": [42]})
    assert unknown_group.status_code == 400 and "group_ids" in unknown_group.text


def test_page_needs_the_token_once(server: FritzServer) -> None:
    assert requests.get(server.url + "/", timeout=10).status_code == 401
    session = requests.Session()
    signed_in = session.get(server.url + "/?token=" + TOKEN + "&hours=6", timeout=10)
    assert signed_in.status_code == 200 and "Nightjar candidates" in signed_in.text
    assert signed_in.history[0].status_code == 303
    assert "token=" not in signed_in.url
    assert (
        session.get(server.url + "/static/thumbnails/nothing_new.png", timeout=10).status_code
        == 404
    )


def test_unknown_endpoint_and_method(server: FritzServer) -> None:
    assert call(server, "GET", "/api/nothing").status_code == 404
    wrong = call(server, "DELETE", "/api/candidates")
    assert wrong.status_code == 405 and "GET, POST" in wrong.json()["message"]


def test_fault_injection(server: FritzServer) -> None:
    plan = {"mode": "error", "status": 503, "count": 2, "methods": ["GET"]}
    assert call(server, "POST", "/_test/faults", plan).status_code == 200
    statuses = [call(server, "GET", "/api/streams").status_code for _ in range(3)]
    assert statuses == [503, 503, 200]
    stall = {"mode": "stall", "seconds": 0.5, "count": 1}
    call(server, "POST", "/_test/faults", stall)
    began = time.monotonic()
    assert call(server, "GET", "/api/streams").status_code == 200
    assert time.monotonic() - began >= 0.5
    assert call(server, "GET", "/_test/faults").json()["data"]["injected"] == 3


def test_fault_injection_is_off_by_default(
    mongo_uri: str, fritz_db: Database[dict[str, object]]
) -> None:
    service = fritz_server(service_settings(mongo_uri, fritz_db.name, faults=False)).start()
    try:
        response = call(service, "POST", "/_test/faults", {"count": 5})
        assert response.status_code == 404
    finally:
        service.stop()
