"""MongoDB unreachable while the stream runs: the broker says so, stays in its group, loses
nothing and duplicates nothing.

A private FerretDB (its own port and SQLite folder; the shared one is never touched) is
killed for 60 s, and for 30 s with max.poll.interval.ms lowered to 20 s (a main thread
sleeping in retries would be thrown out of the group). During the outage /readyz answers
503 and nightjar_dependency_blocked{dependency="mongodb"} is 1; the log holds one WARN when
the wait starts, one at least every 30 s and one at recovery; the group keeps its member.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient
from pymongo import MongoClient

from broker.tools.simulate import simulate
from tests.helpers import poll_until
from tests.pipeline_helpers import (
    Rig,
    committed,
    free_port,
    light_curve_duplicates,
    output_record,
    probe,
    produce,
    read_topic,
)

FERRETDB = sorted(Path.home().glob(".cache/nightjar/ferretdb/*/ferretdb"))


class PrivateFerretDB:
    """A FerretDB process of this test alone, stopped and started on one port and folder."""

    def __init__(self, binary: Path, folder: Path) -> None:
        self.binary, self.folder, self.port = binary, folder, free_port()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                str(self.binary),
                f"--listen-addr=127.0.0.1:{self.port}",
                "--handler=sqlite",
                f"--sqlite-url={self.folder.as_uri()}/",
                "--log-level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client: MongoClient[dict[str, Any]] = MongoClient(self.uri, serverSelectionTimeoutMS=500)
        try:
            poll_until(lambda: _pings(client), timeout=30, message="private FerretDB up")
        finally:
            client.close()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def _pings(client: MongoClient[dict[str, Any]]) -> bool:
    try:
        client.admin.command("ping")
    except Exception:
        return False
    return True


@pytest.fixture
def ferretdb(tmp_path: Path) -> Iterator[PrivateFerretDB]:
    if not FERRETDB:
        pytest.skip("no FerretDB binary under ~/.cache/nightjar/ferretdb (nightjar services up)")
    server = PrivateFerretDB(FERRETDB[-1], tmp_path / "ferretdb")
    server.start()
    yield server
    server.kill()


@pytest.mark.parametrize(
    ("outage_s", "extra"),
    [
        (60, {}),
        # Longer than max.poll.interval.ms (which may not be under session.timeout.ms).
        (30, {"max.poll.interval.ms": 20000, "session.timeout.ms": 10000}),
    ],
    ids=["60s", "30s-over-poll-interval"],
)
def test_mongodb_outage_is_visible_and_costs_nothing(
    make_rig: Any,
    ferretdb: PrivateFerretDB,
    kafka_admin: AdminClient,
    outage_s: int,
    extra: dict[str, int],
) -> None:
    rig: Rig = make_rig("outage")
    port = free_port()
    rig.mongo_uri = ferretdb.uri
    rig.settings.update(
        NIGHTJAR_METRICS__ENABLED="true",
        NIGHTJAR_METRICS__PORT=str(port),
        NIGHTJAR_MONGO__TIMEOUT_MS="2000",
        NIGHTJAR_DISPATCH__BATCH_SIZE="20",
        NIGHTJAR_DISPATCH__LOCAL_PROCESSES="false",
        NIGHTJAR_KAFKA__EXTRA=str(extra).replace("'", '"'),
    )
    alerts = list(simulate("ztf", 200, seed=8))
    db: Any = MongoClient(ferretdb.uri)[rig.database]
    produce(rig.bootstrap, rig.topics[0], [a.data for a in alerts[:100]])
    process = rig.start()
    with process.diagnosed():
        poll_until(lambda: db["alerts"].count_documents({}) == 100, 120, 0.5, "first 100 stored")
        poll_until(lambda: probe(port, "mongodb")[0], 30, 0.5, "ready before the outage")
        members = _members(kafka_admin, rig.group_id)

        ferretdb.kill()
        produce(rig.bootstrap, rig.topics[0], [a.data for a in alerts[100:]])
        poll_until(lambda: not probe(port, "mongodb")[0], 60, 0.5, "not ready once MongoDB is gone")
        began = time.monotonic()
        while time.monotonic() - began < outage_s:
            ready, blocked = probe(port, "mongodb")
            assert not ready and blocked == 1.0, (ready, blocked)
            time.sleep(1)
        ferretdb.start()
        poll_until(lambda: _count(db) == 200, 120, 0.5, "every alert stored after the outage")
        poll_until(
            lambda: probe(port, "mongodb") == (True, 0.0), 60, 0.5, "ready again, gauge at 0"
        )
        assert _members(kafka_admin, rig.group_id) == members  # never left the group
    finished = process.terminate()
    assert finished.returncode == 0, finished.log

    warned = finished.lines("WARNING broker.health: mongodb")
    assert "unreachable: waiting" in warned[0] and "reachable again" in warned[-1], warned
    assert all("still unreachable since" in w for w in warned[1:-1]), warned
    assert len(warned) - 2 >= outage_s // 30 - 1, warned
    stamps = [_stamp(line) for line in warned]
    assert max(b - a for a, b in pairwise(stamps)) <= 31, warned
    # In the group all along: one assignment, no revocation before the SIGTERM.
    before_stop = finished.log.split("signal 15")[0]
    assert "revoked" not in before_stop and len(finished.lines(" assigned ")) == 1
    assert sorted(db["alerts"].distinct("candid")) == sorted(a.candid for a in alerts)
    assert light_curve_duplicates(db) == {}
    published = [
        output_record(m.value)["candid"] for m in read_topic(rig.bootstrap, rig.output_topic("ztf"))
    ]
    assert sorted(published) == sorted(a.candid for a in alerts)  # 0 lost, 0 duplicates
    assert committed(kafka_admin, rig.group_id, rig.topics[0], 1) == {0: 200}


def _stamp(line: str) -> float:
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _count(db: Any) -> int:
    try:
        return int(db["alerts"].count_documents({}))
    except Exception:
        return -1


def _members(admin: AdminClient, group: str) -> list[tuple[str, str | None]]:
    """(member id, instance id) of each member: a rebalance or a rejoin changes the id."""
    description = admin.describe_consumer_groups([group])[group].result(timeout=15)
    return sorted((m.member_id, m.group_instance_id) for m in description.members)
