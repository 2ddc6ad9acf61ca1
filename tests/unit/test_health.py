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
from tests.helpers import poll_until


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


def test_an_outage_warns_when_it_starts_while_it_lasts_and_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from broker.errors import TransientError, retry_transient
    from broker.health import Outage

    health = Health()
    health.tick()
    outage = Outage("mongodb", health, held=lambda: 3, every=3600)
    calls = iter([TransientError("down"), TransientError("down"), TransientError("down"), "ok"])

    def call() -> str:
        result = next(calls)
        if isinstance(result, Exception):
            raise result
        return result

    with caplog.at_level("WARNING"):
        assert retry_transient(call, what="store", first_delay=0.01, outage=outage) == "ok"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    # Three failures within `every`: one WARN for the start, one for the recovery, no more.
    assert len(warnings) == 2, warnings
    assert warnings[0] == "mongodb unreachable: waiting for it (3 batches held): down"
    assert warnings[1].startswith("mongodb reachable again after ")
    assert (
        health.ready()[0]
        and REGISTRY.get_sample_value("nightjar_dependency_blocked", {"dependency": "mongodb"}) == 0
    )


def test_a_long_outage_warns_again_and_blocks_readiness(caplog: pytest.LogCaptureFixture) -> None:
    from broker.errors import TransientError
    from broker.health import Outage

    health = Health()
    health.tick()
    outage = Outage("kafka", health, every=0.05)
    with caplog.at_level("WARNING"):
        outage.failed(TransientError("broker down"))
        outage.failed(TransientError("broker down"))
        # Repeated by the timer, without another failure.
        poll_until(
            lambda: sum("still unreachable" in r.getMessage() for r in caplog.records) >= 2,
            message="two repeated WARNs",
        )
    ready, body = health.ready()
    assert not ready and body["blocked"][0]["dependency"] == "kafka"
    assert REGISTRY.get_sample_value("nightjar_dependency_blocked", {"dependency": "kafka"}) == 1
    assert "kafka still unreachable since " in caplog.records[-1].getMessage()
    assert "batches held: broker down" in caplog.records[-1].getMessage()
    outage.recovered()
    outage.recovered()  # a second success reports nothing
    assert health.ready()[0]
    assert sum("reachable again" in r.getMessage() for r in caplog.records) == 1
