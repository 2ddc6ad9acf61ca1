"""The broker SIGKILLed mid-stream and restarted: every alert stored once and published.

Input: 2,000 simulated ZTF alerts in a three-partition topic. The broker (Dask workers
included) is killed at random moments after it has committed something, then restarted on
the same consumer group; at the end every candid is in MongoDB once and on the output topic
at least once (offsets are committed only after the store and the publish). The restarted
broker (static membership: the same kafka.instance_name) has its partitions back within
10 s, and the last one, run with --exit-when-idle, finishes the uncommitted work first. Two
brokers given one instance name: the older is fenced and exits non-zero saying why.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient
from pymongo.database import Database

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
)

ALERTS = 2000
PARTITIONS = 3
KILLS = 3
TAKEOVER_S = 10.0
Db = Database[dict[str, Any]]


@pytest.fixture
def rig(make_rig: Any, group_id: str) -> Iterator[Rig]:
    rig: Rig = make_rig("crash", partitions=PARTITIONS)
    rig.settings.update(
        # Batches of 200: kills land between commits with a batch in flight, and the
        # object upserts (slow on FerretDB) are shared by more alerts than in small ones.
        NIGHTJAR_DISPATCH__BATCH_SIZE="200",
        NIGHTJAR_DISPATCH__BATCH_SECONDS="0.2",
        NIGHTJAR_DISPATCH__MAX_IN_FLIGHT="2",
        # A restarted member takes its partitions over at once (static membership, as a
        # StatefulSet would run it) instead of waiting out the dead member's session.
        NIGHTJAR_KAFKA__INSTANCE_NAME=f"{group_id}-0",
    )
    yield rig


def test_killed_and_restarted_broker_stores_each_alert_once(
    rig: Rig, mongo_db: Db, kafka_admin: AdminClient
) -> None:
    alerts = list(simulate("ztf", ALERTS, seed=11))
    candids = {alert.candid for alert in alerts}
    assert len(candids) == ALERTS
    positions = produce(
        rig.bootstrap, rig.topics[0], (alert.data for alert in alerts), spread=PARTITIONS
    )
    assert {partition for partition, _ in positions} == set(range(PARTITIONS))

    rng = random.Random(20200202)
    progress = [kill_after_progress(rig, kafka_admin, rng) for _ in range(KILLS)]
    takeovers = [seconds_to_assignment(process) for process in rig.processes[1:]]
    print(f"takeover after SIGKILL (start -> partitions assigned): {takeovers}")
    assert all(seconds <= TAKEOVER_S for seconds in takeovers), takeovers
    # Each restart resumed where the last one was cut, and crashes hit mid-stream.
    assert progress == sorted(progress) and len(set(progress)) == KILLS, progress
    assert progress[-2] < ALERTS, progress

    finished = rig.run(timeout=400)
    assert "done:" in finished.log
    # --exit-when-idle counted from the assignment, after the uncommitted batches.
    assert finished.log.index(" assigned ") < finished.log.index("no message for")
    alerts_collection = mongo_db["alerts"]
    assert alerts_collection.count_documents({}) == ALERTS
    assert set(alerts_collection.distinct("candid")) == candids
    index = alerts_collection.index_information()["survey_candid"]
    assert index["unique"] and index["key"] == [("survey", 1), ("candid", 1)]
    assert sum(committed(kafka_admin, rig.group_id, rig.topics[0], PARTITIONS).values()) == ALERTS

    published = [
        output_record(m.value)["candid"] for m in read_topic(rig.bootstrap, rig.output_topic("ztf"))
    ]
    assert set(published) == candids  # at least once; a killed batch may go out twice
    assert len(published) >= ALERTS
    assert light_curve_duplicates(mongo_db) == {}


def kill_after_progress(rig: Rig, admin: AdminClient, rng: random.Random) -> int:
    """Start the broker, wait for its first commit, then SIGKILL it (workers included) at a
    random moment: up to as long again as that took, so any step of a batch may be cut.
    Returns the committed total after the kill."""
    before = total_committed(rig, admin)
    process = rig.start()
    started = time.monotonic()
    with process.diagnosed():
        poll_until(
            lambda: total_committed(rig, admin) > before or not process.running(),
            timeout=300,
            interval=0.2,
            message="a commit by the restarted broker",
        )
    assert process.running(), f"broker exited early:\n{process.log}"
    assert process.kill_after(rng.uniform(0.0, time.monotonic() - started)), process.log
    return total_committed(rig, admin)


def total_committed(rig: Rig, admin: AdminClient) -> int:
    return sum(committed(admin, rig.group_id, rig.topics[0], PARTITIONS).values())


def seconds_to_assignment(process: BrokerProcess) -> float:
    """From the process's start to its log line saying its partitions were assigned."""
    found = re.search(r"^(\S+ \S+) INFO broker.consume: assigned ", process.log, re.M)
    assert found, f"no assignment logged:\n{process.log[-3000:]}"
    stamp = datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return round(stamp - process.started_at, 1)


def test_two_brokers_with_one_instance_name(rig: Rig) -> None:
    """The newer one takes the partitions; the fenced one exits 1 naming the setting."""
    produce(rig.bootstrap, rig.topics[0], [a.data for a in simulate("ztf", 30, seed=3)])
    first = rig.start()
    with first.diagnosed():
        poll_until(lambda: " assigned " in first.log, 120, 0.5, "first broker assigned")
    second = rig.start()
    with second.diagnosed():
        poll_until(lambda: " assigned " in second.log, 120, 0.5, "second broker assigned")
    fenced = first.wait(120)
    assert fenced.returncode == 1, fenced.log
    assert "NIGHTJAR_KAFKA__INSTANCE_NAME" in fenced.log and "Traceback" not in fenced.log
    assert second.running(), second.log
    assert second.terminate().returncode == 0
