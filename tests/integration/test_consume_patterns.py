"""A ^pattern subscription picks up a topic created while the broker runs (a new ZTF night).

librdkafka's regular expressions have no \\d and no {n}: patterns use [0-9]+.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient
from pymongo.database import Database

from broker.tools.simulate import simulate
from tests.helpers import poll_until
from tests.pipeline_helpers import Rig, create_topics, open_rig, produce, unique_name

Db = Database[dict[str, Any]]


@pytest.fixture
def prefix() -> str:
    return unique_name("njtest")


@pytest.fixture
def night_topics(kafka_admin: AdminClient, prefix: str) -> Iterator[list[str]]:
    """Names of this test's nightly topics; whichever were created are deleted afterwards."""
    names = [
        f"{prefix}_20250101_programid1",
        f"{prefix}_20250102_programid1",
        f"{prefix}_20250102_programidX",
    ]
    yield names
    existing = set(kafka_admin.list_topics(timeout=10).topics)
    created = [name for name in names if name in existing]
    if created:
        for future in kafka_admin.delete_topics(created, operation_timeout=10).values():
            future.result(timeout=15)


@pytest.fixture
def rig(
    kafka_admin: AdminClient,
    kafka_bootstrap: str,
    mongo_uri: str,
    mongo_db: Db,
    group_id: str,
    tmp_path: Path,
    prefix: str,
) -> Iterator[Rig]:
    pattern = f"^{prefix}_[0-9]+_programid[0-9]+$"
    with open_rig(
        kafka_admin, kafka_bootstrap, mongo_uri, mongo_db.name, group_id, tmp_path, [pattern]
    ) as rig:
        yield rig


def test_a_topic_created_after_start_is_consumed_without_restart(
    rig: Rig, mongo_db: Db, kafka_admin: AdminClient, night_topics: list[str]
) -> None:
    first_night, second_night, not_matching = night_topics
    alerts = list(simulate("ztf", 30, seed=41))
    create_topics(kafka_admin, [first_night])
    produce(rig.bootstrap, first_night, (a.data for a in alerts[:10]))
    process = rig.start(exit_when_idle=120)

    def stored() -> int:
        return mongo_db["alerts"].count_documents({})

    poll_until(lambda: stored() >= 10 or not process.running(), 60, 0.2, "the first night stored")
    assert process.running(), process.log

    create_topics(kafka_admin, [second_night, not_matching])
    produce(rig.bootstrap, not_matching, (a.data for a in alerts[20:]))
    produce(rig.bootstrap, second_night, (a.data for a in alerts[10:20]))
    # Topic metadata is refreshed every 10 s (broker.consume): allow a few refreshes.
    poll_until(lambda: stored() >= 20 or not process.running(), 60, 0.2, "the new night stored")
    finished = process.terminate()

    assert finished.returncode == 0, finished.log
    assert sorted(mongo_db["alerts"].distinct("candid")) == sorted(a.candid for a in alerts[:20])
    origins = mongo_db["alerts"].distinct("origin.topic")
    assert sorted(origins) == [first_night, second_night]
    assert finished.lines(f"assigned {second_night}[0]"), finished.log
