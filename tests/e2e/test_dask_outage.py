"""The external Dask scheduler not up yet when the broker starts, then killed while the
stream runs: the broker says so, holds its batches, and goes on once the scheduler is
back, losing and duplicating nothing.

An external `dask scheduler` and `dask worker` on 127.0.0.1, started by the test. The
scheduler is SIGKILLed for ~30 s (its worker exits with it, as Dask workers do), then
both are started again on the same port, as a supervisor would. During the outage /readyz
answers 503 and nightjar_dependency_blocked{dependency="dask"} is 1; the log holds one WARN
when the wait starts and one at recovery; every alert is stored once with its scores,
published once, and committed.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient
from pymongo.database import Database

from broker.tools.bench.cluster import Cluster
from broker.tools.simulate import simulate
from tests.helpers import poll_until
from tests.pipeline_helpers import (
    Rig,
    committed,
    free_port,
    output_record,
    probe,
    produce,
    read_topic,
)

OUTAGE_S = 30
Db = Database[dict[str, Any]]


@pytest.fixture
def clusters(tmp_path: Path) -> Iterator[list[Cluster]]:
    """Every cluster the test starts, stopped at the end whatever happens."""
    started: list[Cluster] = []
    try:
        yield started
    finally:
        for cluster in started:
            cluster.stop()


def start_cluster(rig: Rig, folder: Path, port: int) -> Cluster:
    folder.mkdir(parents=True)
    cluster = Cluster(folder, rig.env(), port)
    cluster.start(workers=1, threads=1)
    return cluster


def test_a_dask_scheduler_outage_is_visible_and_costs_nothing(
    make_rig: Any,
    clusters: list[Cluster],
    tmp_path: Path,
    mongo_db: Db,
    kafka_admin: AdminClient,
) -> None:
    rig: Rig = make_rig("daskout")
    port = free_port()
    rig.settings.update(
        NIGHTJAR_METRICS__ENABLED="true",
        NIGHTJAR_METRICS__PORT=str(port),
        NIGHTJAR_DISPATCH__BATCH_SIZE="20",
        NIGHTJAR_DISPATCH__BATCH_SECONDS="0.2",
    )
    dask_port = free_port()
    alerts = list(simulate("ztf", 200, seed=21))
    produce(rig.bootstrap, rig.topics[0], [a.data for a in alerts[:100]])
    # Started before its scheduler: it waits (and says so) instead of exiting.
    process = rig.start(NIGHTJAR_DISPATCH__SCHEDULER_ADDRESS=f"tcp://127.0.0.1:{dask_port}")
    stored = mongo_db["alerts"]
    with process.diagnosed():
        poll_until(
            lambda: process.log.count("dask unreachable: waiting") == 1, 90, 0.5, "start WARN"
        )
        assert probe(port, "dask") == (False, 1.0) and process.running()
        clusters.append(start_cluster(rig, tmp_path / "cluster-1", dask_port))
        first = clusters[0]
        poll_until(lambda: stored.count_documents({}) == 100, 120, 0.5, "first 100 stored")
        poll_until(lambda: probe(port, "dask")[0], 30, 0.5, "ready before the outage")

        assert first.scheduler is not None
        first.scheduler.kill()  # SIGKILL; its worker leaves by itself
        for worker in first.workers:
            worker.stop(timeout=30)
        produce(rig.bootstrap, rig.topics[0], [a.data for a in alerts[100:]])
        poll_until(
            lambda: probe(port, "dask") == (False, 1.0), 60, 0.5, "blocked once Dask is gone"
        )
        began = time.monotonic()
        while time.monotonic() - began < OUTAGE_S:
            assert probe(port, "dask") == (False, 1.0)
            assert stored.count_documents({}) < 200  # nothing stored unscored meanwhile
            time.sleep(1)
        clusters.append(start_cluster(rig, tmp_path / "cluster-2", dask_port))
        poll_until(lambda: stored.count_documents({}) == 200, 120, 0.5, "all stored after")
        poll_until(lambda: probe(port, "dask") == (True, 0.0), 60, 0.5, "ready again, gauge at 0")
    finished = process.terminate()
    assert finished.returncode == 0, finished.log

    warned = finished.lines("WARNING broker.health: dask")
    # Two waits: the scheduler not up yet at start, then killed mid-stream.
    starts = [i for i, w in enumerate(warned) if "unreachable: waiting" in w]
    ends = [i for i, w in enumerate(warned) if "reachable again" in w]
    assert len(starts) == len(ends) == 2 and starts[0] == 0 and ends[-1] == len(warned) - 1
    assert starts[0] < ends[0] < starts[1] < ends[1], warned
    assert all("still unreachable since" in warned[i] for i in range(starts[1] + 1, ends[1]))
    assert len(warned) - 4 >= OUTAGE_S // 30, warned  # at least every 30 s
    held = re.search(r"(\d+) batches held go on", warned[-1])
    assert held is not None and int(held.group(1)) > 0, warned  # read, held, sent again
    candids = sorted(a.candid for a in alerts)
    assert sorted(stored.distinct("candid")) == candids
    assert stored.count_documents({"annotations": {"$in": [{}, None]}}) == 0  # all scored
    published = [
        output_record(m.value)["candid"] for m in read_topic(rig.bootstrap, rig.output_topic("ztf"))
    ]
    assert sorted(published) == candids  # 0 lost, 0 duplicates
    assert committed(kafka_admin, rig.group_id, rig.topics[0], 1) == {0: 200}
