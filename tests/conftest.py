"""Shared fixtures: the real Kafka and MongoDB-compatible server, fresh names per test.

Addresses come from NIGHTJAR_TEST_KAFKA / NIGHTJAR_TEST_MONGO (defaults: what
`nightjar services up` starts). Unreachable services skip the tests that need them, or
fail them when NIGHTJAR_REQUIRE_SERVICES=1 (as `make test` and CI set).
"""

from __future__ import annotations

import contextlib
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic
from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import PyMongoError

TESTS = Path(__file__).resolve().parent
# Tests import `tests.helpers`; that needs the repository root on sys.path however
# pytest was started (`pytest`, `python -m pytest`, from any folder).
if str(TESTS.parent) not in sys.path:
    sys.path.insert(0, str(TESTS.parent))

from tests.helpers import poll_until  # noqa: E402

REFERENCE = TESTS.parent.parent / "shared" / "reference"
SERVICE_SUITES = (TESTS / "integration", TESTS / "e2e")
HOW_TO_START = "start them with `nightjar services up`"

TopicFactory = Callable[..., str]


def pytest_configure(config: pytest.Config) -> None:
    # Also in pyproject.toml; repeated here so the marks are known from any rootdir.
    config.addinivalue_line(
        "markers", "services: needs the real Kafka and MongoDB-compatible server"
    )
    config.addinivalue_line("markers", "shared: needs ../shared reference data")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if any(item.path.is_relative_to(suite) for suite in SERVICE_SUITES):
            item.add_marker(pytest.mark.services)


def _unavailable(what: str) -> NoReturn:
    message = f"{what}; {HOW_TO_START}"
    if os.environ.get("NIGHTJAR_REQUIRE_SERVICES") == "1":
        pytest.fail(f"NIGHTJAR_REQUIRE_SERVICES=1 but {message}", pytrace=False)
    pytest.skip(message)


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    bootstrap = os.environ.get("NIGHTJAR_TEST_KAFKA", "127.0.0.1:9092")
    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 3000})
    try:
        metadata = admin.list_topics(timeout=5)
    except KafkaException as exc:
        error = exc.args[0]
        detail = error.str() if isinstance(error, KafkaError) else str(error)
        _unavailable(f"Kafka at {bootstrap} is unreachable ({detail})")
    if not metadata.brokers:
        _unavailable(f"Kafka at {bootstrap} answered without any broker")
    return bootstrap


@pytest.fixture(scope="session")
def mongo_uri() -> str:
    uri = os.environ.get("NIGHTJAR_TEST_MONGO", "mongodb://127.0.0.1:27017")
    client: MongoClient[dict[str, object]] = MongoClient(uri, serverSelectionTimeoutMS=3000)
    try:
        client.admin.command("ping")
    except PyMongoError as exc:
        detail = str(exc).split(" (configured timeouts")[0]  # not the topology dump
        _unavailable(f"the MongoDB-compatible server at {uri} is unreachable ({detail})")
    finally:
        client.close()
    return uri


@pytest.fixture(scope="session")
def kafka_admin(kafka_bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": kafka_bootstrap})


@pytest.fixture
def topic_factory(kafka_admin: AdminClient) -> Iterator[TopicFactory]:
    """`topic_factory(partitions=1, prefix="test", config=None)` -> a new topic's name."""
    created: list[str] = []

    def create(
        partitions: int = 1, prefix: str = "test", config: dict[str, str] | None = None
    ) -> str:
        name = _unique(f"nightjar-{prefix}")
        topic = NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})
        kafka_admin.create_topics([topic])[name].result(timeout=30)
        created.append(name)
        # Creation returns before every partition has a leader; producing too early fails.
        poll_until(
            lambda: _has_leaders(kafka_admin, name, partitions),
            timeout=30,
            message=f"leaders for all {partitions} partitions of {name}",
        )
        return name

    yield create
    if created:
        for future in kafka_admin.delete_topics(created, operation_timeout=10).values():
            # Best effort: a leftover, uniquely named topic harms no other test.
            with contextlib.suppress(KafkaException):
                future.result(timeout=15)


def _has_leaders(admin: AdminClient, name: str, partitions: int) -> bool:
    topic = admin.list_topics(topic=name, timeout=5).topics.get(name)
    if topic is None or topic.error is not None or len(topic.partitions) != partitions:
        return False
    return all(partition.leader >= 0 for partition in topic.partitions.values())


@pytest.fixture
def group_id() -> str:
    return _unique("nightjar-test-group")


@pytest.fixture(scope="session")
def mongo_client(mongo_uri: str) -> Iterator[MongoClient[dict[str, object]]]:
    client: MongoClient[dict[str, object]] = MongoClient(mongo_uri)
    yield client
    client.close()


@pytest.fixture
def mongo_db(mongo_client: MongoClient[dict[str, object]]) -> Iterator[Database[dict[str, object]]]:
    """A fresh, empty database (its name: `mongo_db.name`), dropped afterwards."""
    database = mongo_client[_unique("nightjar_test").replace("-", "_")]
    yield database
    mongo_client.drop_database(database.name)


@pytest.fixture
def shared_dir(request: pytest.FixtureRequest) -> Path:
    """../shared/reference beside the repository (real alerts, models, published scores)."""
    request.node.add_marker(pytest.mark.shared)
    if not REFERENCE.is_dir():
        pytest.skip("../shared/reference is absent: reference data not available")
    return REFERENCE


@pytest.fixture
def make_rig(
    kafka_admin: AdminClient,
    kafka_bootstrap: str,
    mongo_uri: str,
    mongo_db: Database,
    group_id: str,
    topic_factory: TopicFactory,
    tmp_path: Path,
) -> Iterator[Callable[..., object]]:
    """`make_rig(prefix, partitions=1, config=None)`: a broker rig (pipeline_helpers.Rig) on a fresh
    input topic, this test's group and database; everything it made is removed after."""
    from tests.pipeline_helpers import open_rig

    with contextlib.ExitStack() as stack:

        def make(prefix: str, partitions: int = 1, config: dict[str, str] | None = None) -> object:
            topic = topic_factory(partitions=partitions, prefix=prefix, config=config)
            return stack.enter_context(
                open_rig(
                    kafka_admin,
                    kafka_bootstrap,
                    mongo_uri,
                    mongo_db.name,
                    group_id,
                    tmp_path,
                    [topic],
                )
            )

        yield make
