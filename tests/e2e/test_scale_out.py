"""Two brokers in one consumer group on one external Dask cluster; one killed and restarted.

Input: simulated ZTF alerts in a three-partition topic; an external `dask scheduler` and two
`dask worker` processes on 127.0.0.1 (the brokers register the annotator plugin on them, as
`dispatch.scheduler_address` does in production). One broker is SIGKILLed mid-stream (its
own process group only: the workers live on) and started again. At the end every alert is
stored once, every candid is on the output topic, both brokers had partitions, and the
light curves (objects seen by both brokers) hold each point once.
"""

from __future__ import annotations

import os
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
    BrokerProcess,
    Rig,
    committed,
    light_curve_duplicates,
    output_record,
    produce,
    read_topic,
    repeated_points,
)

ALERTS = 1500
PARTITIONS = 3
Db = Database[dict[str, Any]]


@pytest.fixture
def rig(make_rig: Any) -> Iterator[Rig]:
    rig: Rig = make_rig("scale", partitions=PARTITIONS)
    rig.settings.update(
        NIGHTJAR_DISPATCH__BATCH_SIZE="100",
        NIGHTJAR_DISPATCH__BATCH_SECONDS="0.2",
        NIGHTJAR_DISPATCH__MAX_IN_FLIGHT="2",
    )
    yield rig


@pytest.fixture
def cluster(rig: Rig, tmp_path: Path) -> Iterator[Cluster]:
    logs = tmp_path / "cluster"
    logs.mkdir()
    cluster = Cluster(logs, rig.env())
    try:
        cluster.start(workers=2, threads=1)
        yield cluster
    finally:
        cluster.stop()


def test_two_brokers_share_the_partitions_and_survive_one_killed(
    rig: Rig, cluster: Cluster, mongo_db: Db, kafka_admin: AdminClient
) -> None:
    alerts = list(simulate("ztf", ALERTS, seed=13))
    candids = {alert.candid for alert in alerts}
    produce(rig.bootstrap, rig.topics[0], (a.data for a in alerts), spread=PARTITIONS)

    def broker(index: int) -> BrokerProcess:
        # Static membership (as the chart's StatefulSet runs it): a restarted member takes
        # its partitions back at once instead of waiting out the dead one's session.
        return rig.start(
            NIGHTJAR_DISPATCH__SCHEDULER_ADDRESS=cluster.address,
            NIGHTJAR_MONGO__REPAIR_LIGHT_CURVES="true",  # several brokers, one database
            NIGHTJAR_KAFKA__EXTRA=f'{{"group.instance.id": "{rig.group_id}-{index}"}}',
        )

    def done() -> int:
        return sum(committed(kafka_admin, rig.group_id, rig.topics[0], PARTITIONS).values())

    first, second = broker(0), broker(1)
    with first.diagnosed(), second.diagnosed():
        poll_until(
            lambda: assigned(first) and assigned(second) and done() > 0,
            timeout=240,
            interval=0.2,
            message="both brokers assigned partitions, and a first commit",
        )
    assert done() < ALERTS, "the stream ended before the kill: nothing was tested"
    first.kill()  # the broker's process group only
    assert all(worker.running() for worker in cluster.workers), "a worker died with the broker"
    restarted = broker(0)
    with restarted.diagnosed(), second.diagnosed():
        poll_until(lambda: done() >= ALERTS, timeout=400, interval=0.5, message="every commit")
    for process in (restarted, second):
        assert process.terminate().returncode == 0, process.log
    assert assigned(restarted), restarted.log

    stored = mongo_db["alerts"]
    assert stored.count_documents({}) == ALERTS
    assert set(stored.distinct("candid")) == candids
    published = [
        output_record(m.value)["candid"] for m in read_topic(rig.bootstrap, rig.output_topic("ztf"))
    ]
    assert set(published) == candids  # at least once
    assert light_curve_duplicates(mongo_db) == {}, describe(repeated_points(mongo_db))
    assert all(worker.running() for worker in cluster.workers)
    assert os.getpgid(cluster.workers[0].popen.pid) != os.getpgid(os.getpid())


def assigned(process: BrokerProcess) -> bool:
    """The broker's log says it was given at least one partition."""
    return any("assigned" in line and "nothing" not in line for line in process.log.splitlines())


def describe(repeated: dict[str, list[list[dict[str, Any]]]]) -> str:
    """Each repeated point's forms: equal as documents?, and which fields differ."""
    lines = []
    for key, groups in repeated.items():
        for forms in groups:
            first = forms[0]
            for other in forms[1:]:
                differ = sorted(
                    k for k in first.keys() | other.keys() if first.get(k) != other.get(k)
                )
                lines.append(
                    f"{key}: equal={first == other} order_same={list(first) == list(other)} "
                    f"len={len(first)}/{len(other)} differ={differ}"
                )
    return "\n".join(lines)
