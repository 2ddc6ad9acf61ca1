"""Apache Kafka 3.9.1 as a single-node KRaft broker, run natively from Maven Central jars.

Input: services/kafka/pom.xml (the pinned jars) and the port variables; output: the jars
in the cache, server.properties + log4j.properties + formatted storage in the data
folder, and the `java ... kafka.Kafka` command line.
"""

from __future__ import annotations

import base64
import logging
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from broker.tools.services import build
from broker.tools.services.base import HOST, SOURCES, Layout, Port, Reporter, Service, port_from_env

log = logging.getLogger(__name__)

KAFKA_VERSION = "3.9.1"
POM = SOURCES / "kafka" / "pom.xml"
PORT_ENV = "NIGHTJAR_SERVICES_KAFKA_PORT"
CONTROLLER_PORT_ENV = "NIGHTJAR_SERVICES_KAFKA_CONTROLLER_PORT"
# Above ZTF's largest alerts with cutouts (a few MiB) and kafka.max_message_bytes.
MESSAGE_MAX_BYTES = 10 * 1024 * 1024

LOG4J_PROPERTIES = """\
log4j.rootLogger=WARN, stdout
log4j.logger.kafka.server.KafkaServer=INFO
log4j.logger.kafka.server.BrokerServer=INFO
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
"""


def server_properties(port: int, controller_port: int, log_dir: Path) -> str:
    """The broker configuration: one node that is both broker and KRaft controller."""
    settings: dict[str, str | int] = {
        "process.roles": "broker,controller",
        "node.id": 1,
        "controller.quorum.voters": f"1@{HOST}:{controller_port}",
        "listeners": f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{port}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(log_dir),
        "num.partitions": 1,
        # One node: every internal topic can only have one replica.
        "offsets.topic.replication.factor": 1,
        "transaction.state.log.replication.factor": 1,
        "transaction.state.log.min.isr": 1,
        # 50 partitions (the default) make the first consumer group wait on a small machine.
        "offsets.topic.num.partitions": 8,
        # Tests join fresh consumer groups all the time; don't wait 3 s for each.
        "group.initial.rebalance.delay.ms": 0,
        "auto.create.topics.enable": "true",
        "delete.topic.enable": "true",
        "message.max.bytes": MESSAGE_MAX_BYTES,
        "replica.fetch.max.bytes": MESSAGE_MAX_BYTES,
        # The 128 MiB default would take a quarter of the 512 MiB heap for a dev broker.
        "log.cleaner.dedupe.buffer.size": 16 * 1024 * 1024,
        "num.network.threads": 2,
        "num.io.threads": 4,
    }
    lines = ["# Written by `nightjar services up`; edits are overwritten at the next start."]
    lines += [f"{key}={value}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


def new_cluster_id() -> str:
    """A cluster id as `kafka-storage random-uuid` makes it (URL-safe base64 of 16 bytes).

    Made here rather than by a second JVM start; like Kafka, ids starting with '-' are
    avoided because the storage tool would read them as an option.
    """
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


class KafkaService(Service):
    name = "kafka"
    title = f"Apache Kafka {KAFKA_VERSION} (KRaft, single node)"
    start_timeout = 120.0  # a cold JVM on two busy cores takes a while
    stop_timeout = 30.0

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        super().__init__(env)
        self.port = port_from_env(self.env, PORT_ENV, 9092, "Kafka client port")
        self.controller_port = port_from_env(
            self.env, CONTROLLER_PORT_ENV, 9093, "Kafka controller port"
        )

    def ports(self) -> list[Port]:
        return [self.port, self.controller_port]

    def libs(self, layout: Layout) -> Path:
        return layout.cache / "kafka" / f"{KAFKA_VERSION}-{build.source_digest([POM])}" / "libs"

    def build(self, layout: Layout, report: Reporter) -> None:
        build.require(build.JAVA, "Kafka")
        libs = self.libs(layout)
        if libs.is_dir():
            return
        mvn = build.require(build.MAVEN, "Gathering the Kafka jars")
        build_log = layout.cache / "kafka" / "build.log"
        report(
            f"kafka: gathering the Kafka {KAFKA_VERSION} jars from Maven Central into "
            f"{libs.parent} (first run only, about a minute; log {build_log})"
        )

        def gather(folder: Path) -> None:
            argv = [mvn, "-B", "-q", "-Dstyle.color=never", "-f", str(POM)]
            argv += ["dependency:copy-dependencies"]
            argv += [f"-DoutputDirectory={folder / 'libs'}", "-DincludeScope=runtime"]
            build.run_step(argv, what="Maven", cwd=POM.parent, log_path=build_log, timeout=1800)

        began = time.monotonic()
        build.build_once(libs.parent, gather)
        report(f"kafka: jars ready ({time.monotonic() - began:.0f} s)")

    def prepare(self, layout: Layout) -> list[str]:
        java = build.require(build.JAVA, "Kafka")
        workdir = layout.workdir(self.name)
        data = workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        properties = workdir / "server.properties"
        properties.write_text(
            server_properties(self.port.number, self.controller_port.number, data)
        )
        log4j = workdir / "log4j.properties"
        log4j.write_text(LOG4J_PROPERTIES)
        jvm = [java, "-Xmx512m", "-Xms128m", "-Djava.awt.headless=true"]
        jvm += [f"-Dlog4j.configuration=file:{log4j}", "-cp", f"{self.libs(layout)}/*"]
        if not (data / "meta.properties").exists():
            self._format(jvm, properties, layout)
        return [*jvm, "kafka.Kafka", str(properties)]

    def _format(self, jvm: list[str], properties: Path, layout: Layout) -> None:
        """Format KRaft storage once; afterwards the data folder carries its cluster id."""
        cluster_id = new_cluster_id()
        log.info("formatting Kafka storage with cluster id %s", cluster_id)
        build.run_step(
            [*jvm, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(properties)],
            what="Formatting Kafka storage",
            cwd=properties.parent,
            log_path=layout.log_path(self.name),
            timeout=120,
        )

    def probe(self) -> str | None:
        config: dict[str, Any] = {
            "bootstrap.servers": self.address(),
            "socket.timeout.ms": 2000,
            # Refused connections while the JVM starts are expected: keep them quiet.
            "logger": _QuietLog(),
        }
        admin = AdminClient(config)
        try:
            metadata = admin.list_topics(timeout=2)
        except KafkaException as exc:
            error = exc.args[0]
            detail = error.str() if isinstance(error, KafkaError) else str(error)
            return f"no metadata from {self.address()}: {detail}"
        if not metadata.brokers:
            return f"{self.address()} answered without any broker"
        return None

    def address(self) -> str:
        return f"{HOST}:{self.port.number}"

    def exports(self) -> dict[str, str]:
        return {"NIGHTJAR_KAFKA__BOOTSTRAP_SERVERS": self.address()}


class _QuietLog:
    """A librdkafka logger that sends everything to DEBUG (probes fail on purpose)."""

    def log(self, level: int, message: str, *args: object) -> None:
        log.debug(message, *args)
