"""`nightjar demo`: the whole broker on this machine in about a minute, for newcomers.

Input: the settings, seeded simulated alerts of every survey and, when present, the real
sample alerts of ../shared/reference. Output: fresh demo topics and a database filled by an
in-process broker run (and posts to the Fritz-like API), tables, and a PNG gallery.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymongo
from tqdm import tqdm

from broker import app
from broker.decode import Decoder
from broker.errors import NightjarError
from broker.health import Health, serve
from broker.kafka_config import client_config
from broker.pipeline import RunStats
from broker.post.outbox import Outbox
from broker.post.sender import Sender
from broker.settings import SchemaSettings, Settings
from broker.tools.bench.monitor import PipelineWatcher
from broker.tools.demo.gallery import write_gallery
from broker.tools.demo.report import DemoReport, collect
from broker.tools.demo.setup import (
    DemoNames,
    Say,
    demo_settings,
    ensure_models,
    ensure_services,
    forget_previous,
    fritz_with_token,
    remember,
    unmatched_topics,
)
from broker.tools.replay import (
    default_producer_config,
    iter_alert_files,
    produce_messages,
    to_messages,
)
from broker.tools.scratch import admin_client, create_topics, delete_topics, drop_database
from broker.tools.simulate import iter_alerts

log = logging.getLogger(__name__)

REPOSITORY = Path(__file__).resolve().parents[3]
DEFAULT_REFERENCE = REPOSITORY.parent / "shared" / "reference"
GALLERY = "candidates.png"
# Safety net: the run normally ends when every produced message is finished.
IDLE_EXIT_S = 20.0


class DemoError(NightjarError):
    """The demo could not complete; the message says which step and why."""


@dataclass(frozen=True)
class DemoOptions:
    ztf: int = 500
    lsst: int = 200
    others: int = 5  # simulated alerts of each other survey (WINTER, PGIR, TURBO, DECam)
    seed: int = 0
    reference: Path | None = DEFAULT_REFERENCE  # real sample alerts and the models mirror
    state_dir: Path = Path(".nightjar/demo")
    start_services: bool = True
    fetch_models: bool = True
    post: bool = True  # run the Fritz sender when a token is available
    serve_metrics: bool = True
    # After the broker is done, wait until every match is posted (`make demo`'s ~180 take
    # seconds at fritz.concurrency 8), at most this long; then leave the rest to `nightjar post`.
    post_timeout_s: float = 300.0
    progress: bool = True
    timeout_s: float = 600.0


@dataclass
class DemoResult:
    names: DemoNames
    settings: Settings
    produced: dict[str, int]  # input topic -> messages delivered
    stats: RunStats
    report: DemoReport
    gallery: Path | None
    posted: bool
    metrics_url: str | None = None
    notes: list[str] = field(default_factory=list)


def run_demo(base: Settings, options: DemoOptions, say: Say) -> DemoResult:
    """Services -> models -> alerts to fresh topics -> broker until done -> report + gallery."""
    fritz_up = ensure_services(base, say, options.start_services)
    mirror = options.reference / "models" if options.reference is not None else None
    ensure_models(base, mirror, say, options.progress, fetch=options.fetch_models)
    forget_previous(base, options.state_dir, say)
    fritz = fritz_with_token(base) if options.post and fritz_up else None
    names = DemoNames.fresh()
    settings = with_reference_schemas(demo_settings(base, names, fritz), options.reference, say)
    filters = [d.name for d in settings.filters.definitions if d.enabled]
    remember(options.state_dir, names, filters)
    produced = produce_inputs(settings, names, options, say)
    metrics_url = _serve_metrics(settings, say) if options.serve_metrics else None
    stats = run_broker(
        settings, sum(produced.values()), options, posting=fritz is not None, say=say
    )
    client: pymongo.MongoClient[Any] = pymongo.MongoClient(settings.mongo_uri())
    try:
        db = client[names.database]
        report = collect(settings, names, db)
        gallery = _gallery(db, report, options.state_dir / GALLERY, say)
    finally:
        client.close()
    notes = [
        f"{topic} does not match kafka.topics {base.kafka.topics}: `nightjar run` would skip it"
        for topic in unmatched_topics(names, base.kafka.topics)
    ]
    return DemoResult(
        names, settings, produced, stats, report, gallery, fritz is not None, metrics_url, notes
    )


def produce_inputs(
    settings: Settings, names: DemoNames, options: DemoOptions, say: Say
) -> dict[str, int]:
    """Simulated plus real sample alerts into the run's input topics, one per survey."""
    create_topics(admin_client(settings), names.topics())
    config = default_producer_config(
        settings.kafka.bootstrap_servers,
        extra={k: v for k, v in client_config(settings).items() if k != "bootstrap.servers"},
    )
    produced = {}
    counts = {"ztf": options.ztf, "lsst": options.lsst}
    for survey, topic in names.inputs().items():
        count = counts.get(survey, options.others)
        messages = list(iter_alerts(survey, count, options.seed))
        real = list(_real_alerts(options.reference, survey, settings.schemas))
        say(f"{survey}: {len(messages)} simulated + {len(real)} real sample alerts -> {topic}")
        stats = produce_messages(messages + real, topic, config, progress=options.progress)
        if not stats.ok:
            raise DemoError(f"producing to {topic} failed: {'; '.join(stats.errors[:3])}")
        produced[topic] = stats.delivered
    return produced


def with_reference_schemas(settings: Settings, reference: Path | None, say: Say) -> Settings:
    """Rubin's schemas 7.0-11.0 from the reference folder, where it has them and no registry
    is configured: the real Rubin sample alert is v7.1, and schemas/ ships 11.0 only."""
    folder = reference / "lsst" / "schema" if reference is not None else None
    if folder is None or not folder.is_dir() or settings.schemas.lsst_registry_url:
        return settings
    say(f"lsst: schemas from {folder} (the real sample alerts are older than schemas/lsst)")
    schemas = settings.schemas.model_copy(update={"lsst_schema_dir": folder})
    return settings.model_copy(update={"schemas": schemas})


def _real_alerts(reference: Path | None, survey: str, schemas: SchemaSettings) -> Iterator[bytes]:
    """The reference folder's real alerts of `survey` (other surveys: other/<survey>/)."""
    if reference is None:
        return
    folder = reference / survey / "alerts"
    if survey not in ("ztf", "lsst"):
        folder = reference / "other" / survey
    if not folder.is_dir():
        return
    decoder = Decoder(schemas, max_message_bytes=2**31)
    for name, raw in iter_alert_files([folder]):
        yield from to_messages(raw, decoder, name)


def run_broker(
    settings: Settings, expected: int, options: DemoOptions, posting: bool, say: Say
) -> RunStats:
    """The broker in-process until every produced message is finished; then the poster drains."""
    stop = threading.Event()
    sender_stop = threading.Event()
    # The poster starts first: it posts matches while the broker is still running.
    sender = _start_sender(settings, sender_stop) if posting else None
    try:
        broker = app.build(settings, stop, start_sender=False)
        watching = threading.Thread(
            target=_watch,
            args=(PipelineWatcher(broker.pipeline.stats, interval=0.05), expected, stop, options),
            name="demo-watch",
            daemon=True,
        )
        watching.start()
        stats = broker.run(stop, exit_when_idle=IDLE_EXIT_S)
        watching.join(timeout=10)
        if sender is not None:
            _drain_outbox(settings, options.post_timeout_s, options.progress, say)
    finally:
        stop.set()
        sender_stop.set()
        if sender is not None:
            sender.join(timeout=30)
    if stats.stored + stats.rejected < expected:
        say(f"warning: the broker finished {stats.stored + stats.rejected} of {expected} messages")
    return stats


def _watch(
    watcher: PipelineWatcher, expected: int, stop: threading.Event, options: DemoOptions
) -> None:
    """Progress on stderr; stops the broker once every produced message is finished."""
    with tqdm(total=expected, unit="alert", desc="broker", disable=not options.progress) as bar:
        watcher.wait_for(expected, options.timeout_s, stop, bar)
    stop.set()


def _start_sender(settings: Settings, stop: threading.Event) -> threading.Thread:
    sender = Sender.from_settings(settings)
    thread = threading.Thread(target=sender.run, args=(stop,), name="demo-sender", daemon=True)
    thread.start()
    return thread


def _drain_outbox(settings: Settings, timeout_s: float, progress: bool, say: Say) -> None:
    """Wait (at most `timeout_s`) until the poster has no pending job, with a progress bar;
    say what is left, and how to send it, when the time runs out."""
    client: pymongo.MongoClient[Any] = pymongo.MongoClient(settings.mongo_uri())
    outbox = Outbox(client[settings.mongo.database])
    try:
        counts = outbox.counts()
        pending = counts.get("pending", 0)
        if pending:
            say(
                f"posting filter matches to {settings.fritz.url} ({counts.get('done', 0)} done, "
                f"{pending} pending; {settings.fritz.concurrency} at a time, waiting for all "
                f"of them, at most {timeout_s:.0f} s)"
            )
        deadline = time.monotonic() + timeout_s
        total = sum(counts.values())
        with tqdm(
            total=total, initial=total - pending, unit="match", desc="posting", disable=not progress
        ) as bar:
            while pending and time.monotonic() < deadline:
                time.sleep(0.5)  # the sender works on its own threads; poll its progress
                counts = outbox.counts()
                pending = counts.get("pending", 0)
                bar.update(total - pending - bar.n)
        if pending:
            say(
                f"{pending} matches not posted within {timeout_s:.0f} s (is the Fritz-like "
                f"service at {settings.fritz.url} answering?); send them with: "
                f"NIGHTJAR_MONGO__DATABASE={settings.mongo.database} "
                f"NIGHTJAR_FRITZ__TOKEN_FILE={settings.fritz.token_file or '<token file>'} "
                "nightjar post --exit-when-idle 10"
            )
        elif counts.get("failed", 0):
            say(f"{counts['failed']} matches were refused (see the filters table)")
    finally:
        client.close()


def _serve_metrics(settings: Settings, say: Say) -> str | None:
    if not settings.metrics.enabled:
        return None
    url = f"http://{settings.metrics.host}:{settings.metrics.port}/metrics"
    try:
        serve(Health(), settings.metrics.host, settings.metrics.port)
    except OSError as exc:
        say(f"metrics not served: {settings.metrics.host}:{settings.metrics.port} is busy ({exc})")
        return None
    say(f"metrics while the broker runs: {url}")
    return url


def _gallery(db: Any, report: DemoReport, path: Path, say: Say) -> Path | None:
    ids = [f"ztf:{c.object_id}" for c in report.top]
    light_curves = {
        str(doc["objectId"]): list(doc.get("lightcurve") or [])
        for doc in db["objects"].find({"_id": {"$in": ids}}, {"objectId": 1, "lightcurve": 1})
    }
    try:
        return write_gallery(report.top, light_curves, path, report.ranked_by)
    except ImportError:
        say("matplotlib is not installed (pip install matplotlib): no candidate gallery")
        return None


def forget(settings: Settings, names: DemoNames) -> None:
    """Delete one run's topics and database (tests; the CLI keeps the last run to look at)."""
    filters = [d.name for d in settings.filters.definitions]
    delete_topics(admin_client(settings), names.topics(filters))
    drop_database(settings, names.database)
