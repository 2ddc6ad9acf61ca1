"""librdkafka settings shared by every Kafka client of the project (consumer, producers).

Bootstrap servers, SASL/TLS and the operator's `kafka.extra` pass-through, in one place.
"""

from __future__ import annotations

from typing import Any

from broker.settings import Settings


def client_config(settings: Settings, bootstrap: str | None = None) -> dict[str, Any]:
    kafka = settings.kafka
    config: dict[str, Any] = {"bootstrap.servers": bootstrap or kafka.bootstrap_servers}
    if kafka.security_protocol:
        config["security.protocol"] = kafka.security_protocol
    if kafka.sasl_mechanism:
        config["sasl.mechanism"] = kafka.sasl_mechanism
    if kafka.sasl_username:
        config["sasl.username"] = kafka.sasl_username
    password = settings.kafka_password()
    if password:
        config["sasl.password"] = password
    config.update(kafka.extra)
    return config


def producer_config(settings: Settings, bootstrap: str | None = None) -> dict[str, Any]:
    """An idempotent producer: retries never duplicate or reorder within a partition."""
    config = client_config(settings, bootstrap)
    config.setdefault("enable.idempotence", True)
    config.setdefault("acks", "all")
    config.setdefault("linger.ms", 5)
    config.setdefault("compression.type", "lz4")
    config.setdefault("message.max.bytes", max(settings.kafka.max_message_bytes * 2, 1_000_000))
    return config
