"""`nightjar bench`: throughput and latency of the whole pipeline on the local services.

Input: N seeded simulated ZTF alerts and scenarios (models off, or every installed model on
CPU). Output: one JSON-ready document: sustained alerts/s draining a backlog, end-to-end
latency at ~70% of that rate, per-stage costs, the workers' share and the model-only ceiling.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from tqdm import tqdm

from broker import __version__, app
from broker.decode import Decoder
from broker.errors import BadAlert, ConfigError, NightjarError
from broker.kafka_config import client_config
from broker.pipeline import RunStats, scoring_input
from broker.records import Origin, ScoringInput
from broker.settings import Settings
from broker.tools.bench.ceiling import time_workers
from broker.tools.bench.io import produce_paced, read_timestamps
from broker.tools.bench.machine import CpuSample, cpu_sample, cpu_usage, machine
from broker.tools.bench.monitor import PipelineWatcher
from broker.tools.bench.poster import POSTER_N, run_poster
from broker.tools.bench.stats import TARGETS, latencies_ms, phase_document, scenario_document
from broker.tools.models.inventory import model_inventory
from broker.tools.replay import default_producer_config, produce_messages
from broker.tools.scratch import admin_client, create_topics, delete_topics, drop_database, fresh_id
from broker.tools.simulate import iter_alerts
from workers.annotate import Annotator

log = logging.getLogger(__name__)

PIPELINE_SCENARIOS = ("passthrough", "models")
SCENARIOS = (*PIPELINE_SCENARIOS, "poster")
SEED = 42
# The latency phase runs below the measured capacity, so queueing does not dominate.
LIVE_FRACTION = 0.7
DRAIN_TIMEOUT_S = 900.0


class BenchError(NightjarError):
    """The benchmark could not complete (a phase stalled, alerts went missing)."""


@dataclass(frozen=True, slots=True)
class BenchNames:
    """Fresh Kafka and MongoDB names of one scenario run (shared services stay clean)."""

    run: str

    @property
    def input_topic(self) -> str:
        return f"nightjar-bench-{self.run}-in"

    @property
    def output_template(self) -> str:
        return f"nightjar-bench-{self.run}.{{survey}}.annotated"

    @property
    def dead_letter(self) -> str:
        return f"nightjar-bench-{self.run}.deadletter"

    @property
    def group(self) -> str:
        return f"nightjar-bench-{self.run}"

    @property
    def database(self) -> str:
        return f"nightjar_bench_{self.run}"

    def topics(self) -> list[str]:
        return [self.input_topic, self.output_template.format(survey="ztf"), self.dead_letter]


@dataclass
class Marks:
    """What the driver thread saw while the broker ran (clock: time.perf_counter)."""

    first_read: float = 0.0
    backlog_done: float = 0.0
    backlog_stages: dict[str, float] = field(default_factory=dict)
    backlog_batches: int = 0
    cpu_start: CpuSample | None = None
    cpu_end: CpuSample | None = None
    live_rate: float = 0.0
    live_started_ms: int = 0
    live_started: float = 0.0
    live_done: float = 0.0
    end_stages: dict[str, float] = field(default_factory=dict)
    end_batches: int = 0

    def cpu(self) -> dict[str, Any]:
        if self.cpu_start is None or self.cpu_end is None:
            return {}
        return cpu_usage(self.cpu_start, self.cpu_end)


def scenario_settings(base: Settings, names: BenchNames, models_dir: Path | None) -> Settings:
    """`base` on fresh names, metrics and filters off; `models_dir` None keeps the models."""
    kafka = base.kafka.model_copy(
        update={
            "topics": [names.input_topic],
            "group_id": names.group,
            "output_topic": names.output_template,
            "dead_letter_topic": names.dead_letter,
            "auto_offset_reset": "earliest",
        }
    )
    models = base.models.model_copy(update={"provider": "cpu"})
    if models_dir is not None:
        models = models.model_copy(update={"dir": models_dir, "enabled": []})
    return base.model_copy(
        update={
            "kafka": kafka,
            "mongo": base.mongo.model_copy(update={"database": names.database}),
            "models": models,
            "metrics": base.metrics.model_copy(update={"enabled": False}),
            "filters": base.filters.model_copy(update={"definitions": []}),
        }
    )


def run_bench(
    settings: Settings,
    n: int,
    scenarios: tuple[str, ...] = SCENARIOS,
    live_n: int | None = None,
    progress: bool = True,
    poster_n: int = POSTER_N,
) -> dict[str, Any]:
    """Every scenario on the same seeded alerts; the whole benchmark document."""
    if n <= 0:
        raise ConfigError(f"--n must be > 0, not {n}")
    live_n = max(1, n // 2) if live_n is None else live_n
    if "models" in scenarios and not model_inventory(settings)[0]:
        raise ConfigError(
            f"scenario models: no ONNX model is installed in {settings.models.dir}; install "
            "them with `nightjar models fetch` (or `make models`)"
        )
    pipeline = [s for s in scenarios if s in PIPELINE_SCENARIOS]
    messages = simulated(n + live_n, progress) if pipeline else []
    document: dict[str, Any] = {
        "nightjar": __version__,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "n": n,
        "latency_n": live_n,
        "poster_n": poster_n,
        "seed": SEED,
        "dispatch": settings.dispatch.model_dump(mode="json"),
        "machine": machine(settings),
        "targets": TARGETS,
        "scenarios": {},
    }
    for scenario in scenarios:
        try:
            if scenario == "poster":
                log.info("scenario poster: %d filter matches to a Fritz-like service", poster_n)
                result = run_poster(settings, poster_n, progress)
            else:
                log.info("scenario %s: %d alerts, then %d at a steady rate", scenario, n, live_n)
                result = run_scenario(settings, scenario, messages[:n], messages[n:], progress)
        except NightjarError as exc:
            # The other scenarios' numbers are still worth having: report, do not discard.
            log.error("scenario %s failed: %s", scenario, exc)
            result = {"error": f"{type(exc).__name__}: {exc}"}
        document["scenarios"][scenario] = result
    return document


def simulated(count: int, progress: bool) -> list[bytes]:
    alerts = iter_alerts("ztf", count, SEED)
    return list(tqdm(alerts, total=count, unit="alert", desc="simulating", disable=not progress))


def run_scenario(
    base: Settings, scenario: str, backlog: list[bytes], live: list[bytes], progress: bool
) -> dict[str, Any]:
    """Pre-produce the backlog, run the broker through both phases, then time the workers."""
    if scenario not in PIPELINE_SCENARIOS:
        choices = ", ".join(PIPELINE_SCENARIOS)
        raise ConfigError(f"unknown scenario {scenario!r}; choose from {choices}")
    names = BenchNames(fresh_id())
    with ExitStack() as cleanup:
        models_dir = None
        if scenario == "passthrough":
            models_dir = Path(cleanup.enter_context(TemporaryDirectory(prefix="nightjar-bench-")))
        settings = scenario_settings(base, names, models_dir)
        admin = admin_client(settings)
        cleanup.callback(drop_database, settings, names.database)
        cleanup.callback(delete_topics, admin, names.topics())
        create_topics(admin, names.topics())
        _produce_backlog(settings, names.input_topic, backlog, progress)
        marks = run_broker(settings, len(backlog), live, progress)
        pairs = read_timestamps(settings, names.output_template.format(survey="ztf"))
        threads = settings.dispatch.local_workers * settings.dispatch.local_threads_per_worker
        annotator = Annotator.from_settings(settings.models)
        workers = time_workers(annotator, first_batch(settings, backlog), threads)
    latency_phase = phase_document(
        marks.backlog_stages,
        marks.end_stages,
        marks.end_batches - marks.backlog_batches,
        len(live),
        marks.live_rate,
        marks.live_done - marks.live_started,
    )
    return scenario_document(
        scenario,
        alerts=len(backlog),
        wall_seconds=marks.backlog_done - marks.first_read,
        stages=marks.backlog_stages,
        latencies=latencies_ms(pairs, marks.live_started_ms),
        workers=workers,
        latency_phase=latency_phase,
        cpu=marks.cpu(),
    )


def _produce_backlog(settings: Settings, topic: str, messages: list[bytes], progress: bool) -> None:
    config = default_producer_config(settings.kafka.bootstrap_servers, extra=_security(settings))
    stats = produce_messages(messages, topic, config, progress=progress)
    if not stats.ok:
        raise BenchError(f"producing the backlog to {topic} failed: {stats.errors[:3]}")


def _security(settings: Settings) -> dict[str, Any]:
    return {k: v for k, v in client_config(settings).items() if k != "bootstrap.servers"}


def first_batch(settings: Settings, messages: list[bytes]) -> list[ScoringInput]:
    """The first batch the broker read, as the workers received it (empty database)."""
    decoder = Decoder(settings.schemas, settings.kafka.max_message_bytes)
    inputs = []
    for offset, raw in enumerate(messages[: settings.dispatch.batch_size]):
        try:
            alert = decoder.decode(raw, Origin("bench", 0, offset))
        except BadAlert:
            continue
        inputs.append(scoring_input(alert, {}))
    return inputs


def run_broker(settings: Settings, backlog: int, live: list[bytes], progress: bool) -> Marks:
    """The broker in-process until the backlog and then the paced stream are finished."""
    stop = threading.Event()
    broker = app.build(settings, stop, start_sender=False)
    stats = broker.pipeline.stats
    driver = _Driver(settings, stats, stop, progress)
    thread = threading.Thread(
        target=driver.run, args=(backlog, live), name="bench-driver", daemon=True
    )
    thread.start()
    try:
        broker.run(stop)
    finally:
        stop.set()
        thread.join(timeout=60)
    if driver.error is not None:
        raise driver.error
    driver.marks.end_stages = dict(stats.stage_seconds)
    driver.marks.end_batches = stats.batches
    return driver.marks


class _Driver:
    """Runs beside the pipeline: times the backlog, then feeds the paced stream."""

    def __init__(
        self, settings: Settings, stats: RunStats, stop: threading.Event, progress: bool
    ) -> None:
        self.settings = settings
        self.marks = Marks()
        self.watcher = PipelineWatcher(stats, on_first_read=self._first_read)
        self.stop = stop
        self.progress = progress
        self.error: BaseException | None = None

    def _first_read(self) -> None:
        self.marks.cpu_start = cpu_sample()

    def run(self, backlog: int, live: list[bytes]) -> None:
        try:
            self._backlog(backlog)
            self._live(backlog, live)
        except BaseException as exc:  # the top of this thread: hand it to the main thread
            self.error = exc
        finally:
            self.stop.set()  # either way the pipeline drains and returns

    def _backlog(self, count: int) -> None:
        with tqdm(
            total=count, unit="alert", desc="draining backlog", disable=not self.progress
        ) as bar:
            done = self.watcher.wait_for(count, DRAIN_TIMEOUT_S, self.stop, bar)
        if done is None or self.watcher.first_read is None:
            raise BenchError(
                f"the broker finished {self.watcher.finished()} of {count} backlog alerts "
                f"within {DRAIN_TIMEOUT_S:.0f} s (or stopped); see the log above"
            )
        self.marks.cpu_end = cpu_sample()
        self.marks.first_read = self.watcher.first_read
        self.marks.backlog_done = done
        self.marks.backlog_stages = self.watcher.stages()
        self.marks.backlog_batches = self.watcher.stats.batches
        self.marks.live_rate = LIVE_FRACTION * count / max(done - self.watcher.first_read, 1e-6)

    def _live(self, backlog: int, live: list[bytes]) -> None:
        if not live:
            return
        settings = self.settings
        config = default_producer_config(
            settings.kafka.bootstrap_servers, extra=_security(settings)
        )
        config["linger.ms"] = 1  # alerts go out as produced: latency is what we measure
        self.marks.live_started_ms = int(time.time() * 1000)
        self.marks.live_started = self.watcher.clock()
        producer = threading.Thread(
            target=produce_paced,
            args=(live, settings.kafka.topics[0], config, self.marks.live_rate, self.stop),
            name="bench-producer",
            daemon=True,
        )
        producer.start()
        timeout = 3 * len(live) / self.marks.live_rate + 60
        with tqdm(
            total=len(live), unit="alert", desc="latency phase", disable=not self.progress
        ) as bar:
            done = self.watcher.wait_for(backlog + len(live), timeout, self.stop, bar)
        producer.join(timeout=30)
        self.marks.live_done = done or 0.0
        if done is None:
            raise BenchError(
                f"the latency phase finished {self.watcher.finished() - backlog} of {len(live)} "
                f"alerts within {timeout:.0f} s"
            )
