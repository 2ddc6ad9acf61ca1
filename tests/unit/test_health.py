"""broker.health: the probes compose and Kubernetes ask, on a real HTTP port."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from broker.health import Health, serve


@pytest.fixture
def probe() -> Iterator[tuple[Health, str]]:
    health = Health(stall_seconds=0.2)
    server = serve(health, "127.0.0.1", 0)
    try:
        yield health, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_ready_only_once_running_and_while_nothing_blocks(probe: tuple[Health, str]) -> None:
    health, base = probe
    status, body = _get(base + "/readyz")
    assert status == 503 and json.loads(body)["running"] is False
    health.tick()
    assert _get(base + "/readyz")[0] == 200
    health.block("mongodb", "connection refused")
    status, body = _get(base + "/readyz")
    assert status == 503
    (blocked,) = json.loads(body)["blocked"]
    assert blocked["dependency"] == "mongodb" and blocked["reason"] == "connection refused"
    assert REGISTRY.get_sample_value("nightjar_dependency_blocked", {"dependency": "mongodb"}) == 1
    assert health.unblock("mongodb") is not None
    assert _get(base + "/readyz")[0] == 200
    assert REGISTRY.get_sample_value("nightjar_dependency_blocked", {"dependency": "mongodb"}) == 0


def test_a_second_block_keeps_the_first_time(probe: tuple[Health, str]) -> None:
    health, _ = probe
    first = health.block("kafka", "all brokers down")
    assert health.block("kafka", "still down") is first
    assert health.unblock("kafka") is first and health.unblock("kafka") is None


def test_live_fails_when_the_loop_stalls(probe: tuple[Health, str]) -> None:
    health, base = probe
    health.tick()
    assert _get(base + "/livez")[0] == 200
    time.sleep(0.3)
    status, body = _get(base + "/livez")
    assert status == 503 and json.loads(body)["seconds_since_loop"] >= 0.2


def test_metrics_beside_the_probes(probe: tuple[Health, str]) -> None:
    _, base = probe
    status, body = _get(base + "/metrics")
    assert status == 200 and b"nightjar_consume_messages_total" in body
    assert _get(base + "/nope")[0] == 404
