"""What `nightjar demo` needs before alerts flow: services, models, fresh names, settings.

Input: the configured settings and the demo's options. Output: the local services running
(started when they do not answer), the models installed (from the reference mirror when
none is), and the settings of one demo run on fresh topics and a fresh database.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from broker.errors import ConfigError, NightjarError, ServiceError
from broker.settings import FritzSettings, Settings
from broker.surveys import surveys
from broker.tools.models.fetch import fetch as fetch_model
from broker.tools.models.inventory import model_inventory
from broker.tools.scratch import admin_client, delete_topics, drop_database, unreachable
from broker.tools.services import supervisor
from broker.tools.services.base import Layout, Service
from broker.tools.services.ferretdb import FerretDBService
from broker.tools.services.fritz import FritzService
from broker.tools.services.kafka import KafkaService
from workers.models.registry import load_registry

log = logging.getLogger(__name__)

Say = Callable[[str], None]
STATE_FILE = "last_run.json"


@dataclass(frozen=True, slots=True)
class DemoNames:
    """Topics and database of one demo run; the input topics match the configured patterns."""

    run: str  # six digits: part of the ZTF topic's night number
    night: str  # yyyymmdd

    @classmethod
    def fresh(cls) -> DemoNames:
        return cls(run=f"{random.randrange(10**6):06d}", night=f"{datetime.now(UTC):%Y%m%d}")

    @property
    def ztf_topic(self) -> str:
        return f"ztf_{self.night}{self.run}_programid1"

    @property
    def lsst_topic(self) -> str:
        return f"lsst-alerts-demo-{self.run}"

    def input_topic(self, survey: str) -> str:
        """The run's input topic of `survey` (names the configured patterns match)."""
        if survey == "ztf":
            return self.ztf_topic
        if survey == "lsst":
            return self.lsst_topic
        return f"{survey}_{self.night}{self.run}"

    def inputs(self) -> dict[str, str]:
        """Input topic of every survey."""
        return {survey: self.input_topic(survey) for survey in surveys()}

    @property
    def prefix(self) -> str:
        return f"nightjar-demo-{self.run}"

    @property
    def output_template(self) -> str:
        return f"{self.prefix}.{{survey}}.annotated"

    @property
    def dead_letter(self) -> str:
        return f"{self.prefix}.deadletter"

    @property
    def filter_template(self) -> str:
        return f"{self.prefix}.filter.{{filter}}"

    @property
    def database(self) -> str:
        return f"nightjar_demo_{self.run}"

    def output_topic(self, survey: str) -> str:
        return self.output_template.format(survey=survey)

    def topics(self, filters: Sequence[str] = ()) -> list[str]:
        """Every topic the run creates or the broker writes to."""
        return [
            *self.inputs().values(),
            *(self.output_topic(survey) for survey in surveys()),
            self.dead_letter,
            *(self.filter_template.format(filter=name) for name in filters),
        ]


def demo_settings(base: Settings, names: DemoNames, fritz: FritzSettings | None) -> Settings:
    """`base` pointed at the run's topics and database (filters stay as configured)."""
    kafka = base.kafka.model_copy(
        update={
            # Exact names, not the configured patterns: those would also read other
            # people's (and earlier demos') topics from the beginning.
            "topics": list(names.inputs().values()),
            "group_id": names.prefix,
            "output_topic": names.output_template,
            "dead_letter_topic": names.dead_letter,
            "auto_offset_reset": "earliest",
        }
    )
    return base.model_copy(
        update={
            "kafka": kafka,
            "mongo": base.mongo.model_copy(update={"database": names.database}),
            "filters": base.filters.model_copy(update={"topic_template": names.filter_template}),
            "fritz": fritz or base.fritz,
        }
    )


def unmatched_topics(names: DemoNames, patterns: Sequence[str]) -> list[str]:
    """Demo input topics that `kafka.topics` as configured would not pick up."""

    def picked(topic: str) -> bool:
        return any(re.search(p, topic) if p.startswith("^") else p == topic for p in patterns)

    return [topic for topic in names.inputs().values() if not picked(topic)]


def ensure_services(settings: Settings, say: Say, start: bool) -> bool:
    """Kafka and MongoDB answer (started here if needed); True when the Fritz-like API does."""
    env = dict(os.environ)
    fritz = FritzService(env)
    problem = unreachable(settings, timeout=3)
    if problem is not None:
        required = [s for s in (KafkaService(env), FerretDBService(env)) if s.probe() is not None]
        if not start or not required:
            # Not ours to start (or not asked to): the configured address does not answer.
            raise ServiceError(problem)
        _start(required, env, say)
        problem = unreachable(settings, timeout=10)
        if problem is not None:
            raise ServiceError(problem)
    if fritz.probe() is None:
        return True
    if not start:
        return False
    try:
        _start([fritz], env, say)
    except ServiceError as exc:
        say(f"the Fritz-like API did not start, so nothing is posted: {exc}")
        return False
    return True


def _start(services: Sequence[Service], env: dict[str, str], say: Say) -> None:
    say(f"starting {', '.join(s.name for s in services)} (as `nightjar services up` does)")
    supervisor.up(services, Layout.from_env(env, Path.cwd()), say)


def ensure_models(
    settings: Settings, mirror: Path | None, say: Say, progress: bool, fetch: bool = True
) -> list[str]:
    """Install from `mirror` when no model is installed; return the models still missing."""
    installed, missing = model_inventory(settings)
    if fetch and missing and not installed and mirror is not None and mirror.is_dir():
        say(
            f"no model installed in {settings.models.dir}: installing {', '.join(missing)} "
            f"from {mirror} (converted to ONNX once; takes a few minutes)"
        )
        registry = load_registry(settings.models.registry)
        for name in missing:
            try:
                fetch_model(registry.get(name), settings.models.dir, mirror, progress)
            except (NightjarError, ImportError, OSError) as exc:
                say(f"  {name}: not installed ({exc})")
        installed, missing = model_inventory(settings)
    if missing:
        source = f" --mirror {mirror}" if mirror is not None and mirror.is_dir() else ""
        say(
            f"models not installed: {', '.join(missing)}; the demo runs without their scores. "
            f"Install them with: nightjar models fetch{source}"
        )
    return missing


def fritz_with_token(settings: Settings) -> FritzSettings | None:
    """The poster's settings with a token (configured, else the one `nightjar services up`
    wrote), or None when there is none: matches then wait in the outbox."""
    try:
        if settings.fritz.api_token():
            return settings.fritz
    except OSError as exc:
        raise ConfigError(f"fritz.token_file: cannot read it: {exc}") from exc
    path = FritzService(dict(os.environ)).token_file()
    if not path.is_file():
        return None
    return settings.fritz.model_copy(update={"token_file": path})


def remember(state_dir: Path, names: DemoNames, filters: Sequence[str]) -> None:
    """Written before anything is created, so the next run cleans up even after a crash."""
    state_dir.mkdir(parents=True, exist_ok=True)
    state = {**asdict(names), "topics": names.topics(filters), "database": names.database}
    (state_dir / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")


def forget_previous(settings: Settings, state_dir: Path, say: Say) -> None:
    """Delete the topics and database of the previous demo run (kept so people could look)."""
    path = state_dir / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    topics = [str(topic) for topic in state.get("topics", [])]
    database = str(state.get("database", ""))
    say(f"removing the previous demo run: database {database}, {len(topics)} topics")
    delete_topics(admin_client(settings), topics)
    if database.startswith("nightjar_demo_"):
        drop_database(settings, database)
    path.unlink(missing_ok=True)
