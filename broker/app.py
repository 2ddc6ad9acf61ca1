"""Assembles the pipeline's stages from validated settings (used by run, demo and bench).

Wiring only: each stage is built by its own module; this decides the order of start-up
and shut-down, and checks the services before the stream starts.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from broker.consume import AlertConsumer, CrashGuard, consumer_config, crash_marker_from_env
from broker.decode import Decoder
from broker.dispatch import Dispatcher
from broker.health import Health
from broker.kafka_config import client_config, producer_config
from broker.pipeline import Pipeline, RunStats
from broker.publish import Publisher
from broker.schema_registry import WriterSchemas
from broker.settings import Settings, masked
from broker.store import Store, connect

log = logging.getLogger(__name__)


@dataclass
class Broker:
    pipeline: Pipeline
    resources: ExitStack
    sender_thread: threading.Thread | None = None

    def run(self, stop: threading.Event, exit_when_idle: float | None = None) -> RunStats:
        try:
            return self.pipeline.run(stop, exit_when_idle)
        finally:
            stop.set()  # also stops the Fritz sender thread
            if self.sender_thread is not None:
                self.sender_thread.join(timeout=30)
            self.resources.close()


def build(
    settings: Settings,
    stop: threading.Event,
    start_sender: bool = True,
    health: Health | None = None,
) -> Broker:
    """Everything `nightjar run` needs, started and checked; raises with an actionable error."""
    log.info("configuration: %s", masked(settings))
    resources = ExitStack()
    try:
        db = connect(settings)
        store = Store(db, settings.mongo.repair_light_curves)
        store.ensure_indexes()
        resources.callback(db.client.close)
        # Decode fills it with each writer schema it meets; publish re-encodes with them.
        writer_schemas = WriterSchemas()
        decoder = Decoder(
            settings.schemas,
            settings.kafka.max_message_bytes,
            max_decode_bytes=settings.kafka.decode_bytes,
            writer_schemas=writer_schemas,
        )
        publisher = Publisher(
            producer_config(settings),
            writer_schemas,
            settings.kafka.output_topic,
            settings.kafka.dead_letter_topic,
        )
        resources.callback(publisher.close)
        dispatcher = Dispatcher(settings)
        dispatcher.start()
        resources.callback(dispatcher.close)
        filters = _filters(settings, db)
        guard = CrashGuard(
            store.crashloop, settings.kafka.group_id, settings.kafka.poison_after_deaths
        )
        guard.load()
        pipeline = Pipeline(
            decoder=decoder,
            consumer_factory=_consumer_factory(settings),
            dispatcher=dispatcher,
            store=store,
            publisher=publisher,
            batch_size=settings.dispatch.batch_size,
            batch_seconds=settings.dispatch.batch_seconds,
            max_in_flight=settings.dispatch.max_in_flight,
            filters=filters,
            filter_topic=settings.filters.topic_for,
            health=health or Health(),
            guard=guard,
            crash_marker=crash_marker_from_env(),
        )
        sender = _start_sender(settings, stop) if start_sender else None
    except BaseException:
        resources.close()
        raise
    return Broker(pipeline, resources, sender)


def _consumer_factory(settings: Settings) -> Callable[[Any], AlertConsumer]:
    kafka = settings.kafka
    config = consumer_config(
        client_config(settings), kafka.group_id, kafka.auto_offset_reset, kafka.instance_name
    )

    def factory(on_revoke: Any) -> AlertConsumer:
        return AlertConsumer(config, settings.kafka.topics, on_revoke)

    return factory


def _filters(settings: Settings, db: Any) -> Any:
    if not any(d.enabled for d in settings.filters.definitions):
        return None
    from broker.filters import FilterStage

    return FilterStage.from_settings(settings, db)


def _start_sender(settings: Settings, stop: threading.Event) -> threading.Thread | None:
    """The Fritz poster runs beside the stream when a token is configured."""
    if settings.fritz.api_token() is None:
        log.info("fritz.token not set: filter matches wait in the outbox for `nightjar post`")
        return None
    from broker.post.sender import Sender

    sender = Sender.from_settings(settings)
    thread = threading.Thread(target=sender.run, args=(stop,), name="fritz-sender", daemon=True)
    thread.start()
    log.info("posting filter matches to %s", settings.fritz.url)
    return thread
