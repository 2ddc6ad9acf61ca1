"""The dashboards and alert rules against a real Prometheus scraping a real deployment.

Debian's prometheus binary (unpacked by `make prometheus`) scrapes, on 127.0.0.1, a `nightjar
run` broker, a `nightjar post` poster, a Dask scheduler and a worker running the committed
Tails model; simulated alerts (some filter matches, some garbage) flow through to MongoDB,
Kafka and the Fritz-like service. Then every dashboard query must return data (or be one
that only shows trouble: deploy/grafana/empty-when-healthy.yml) and every rule be loaded.
NIGHTJAR_DASHBOARD_PNGS=docs/dashboards redraws the README's pictures from this run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
import requests
from confluent_kafka.admin import AdminClient
from pymongo import MongoClient

from broker.cli.fritz import fritz_server
from broker.settings import Settings
from broker.tools import observe
from broker.tools.models.fetch import fetch
from broker.tools.simulate import iter_alerts
from tests.helpers import poll_until
from tests.pipeline_helpers import (
    REPO,
    BrokerProcess,
    Rig,
    create_topics,
    free_port,
    produce,
)
from workers.models.registry import load_registry

PROMETHEUS_HOME = Path(
    os.environ.get("NIGHTJAR_PROMETHEUS_HOME", Path.home() / ".cache" / "nightjar" / "prometheus")
)
BIN = Path(sys.executable).parent
TOKEN = "dashboards-test-token"
BRIGHT = 18.0  # a few simulated ZTF alerts pass it: filter matches, outbox jobs, posts
FILTERS = [{"name": "bright", "fritz_filter_id": 1, "group_ids": [1],
            "query": {"candidate.magpsf": {"$lt": BRIGHT}}}]  # fmt: skip
WAVES, ZTF, LSST, GARBAGE = 3, 60, 20, 3
PORTS = ("broker", "poster", "scheduler", "dashboard", "worker", "prometheus")


def prometheus_binary() -> Path:
    for candidate in (PROMETHEUS_HOME / "usr" / "bin" / "prometheus", shutil.which("prometheus")):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    message = f"no prometheus binary in {PROMETHEUS_HOME}/usr/bin or on PATH: run `make prometheus`"
    if os.environ.get("NIGHTJAR_REQUIRE_SERVICES") == "1":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@contextmanager
def process(argv: Sequence[str], env: Mapping[str, str], log: Path) -> Iterator[None]:
    """A subprocess in its own session, stopped (SIGTERM, then SIGKILL) on the way out."""
    with log.open("wb") as out:
        popen = subprocess.Popen(
            list(argv), env=dict(env), cwd=REPO, stdin=subprocess.DEVNULL,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        yield
        assert popen.poll() is None, f"{argv[0]} exited {popen.returncode}:\n{log.read_text()}"
    finally:
        with suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGTERM)
        try:
            popen.wait(20)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGKILL)
            popen.wait(10)


def answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def prometheus_config(path: Path, jobs: Mapping[str, int]) -> Path:
    """Job names as in the compose deployment; the rules file is the one operators load."""
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(observe.RULES_FILE)],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
            for job, port in jobs.items()
        ],
    }
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


@pytest.fixture
def fritz(mongo_uri: str, mongo_client: MongoClient[dict[str, Any]]) -> Iterator[str]:
    database = f"nightjar_dashboards_fritz_{uuid.uuid4().hex[:10]}"
    settings = Settings.model_validate(
        {"mongo": {"uri": mongo_uri}, "filters": {"definitions": FILTERS},
         "fritz": {"server": {"port": 0, "database": database, "tokens": [TOKEN],
                              "faults_enabled": True}}}
    )  # fmt: skip
    server = fritz_server(settings).start()
    try:
        # The first calls fail: the dashboards' Fritz errors and retries get data.
        requests.post(
            f"{server.url}/_test/faults", json={"status": 503, "count": 3},
            headers={"Authorization": f"token {TOKEN}"}, timeout=10,
        ).raise_for_status()  # fmt: skip
        yield server.url
    finally:
        server.stop()
        mongo_client.drop_database(database)


def test_every_panel_query_has_data_and_every_rule_is_loaded(
    make_rig: Any, kafka_admin: AdminClient, fritz: str, tmp_path: Path
) -> None:
    prometheus = prometheus_binary()
    rig: Rig = make_rig("observe")
    filter_template = f"nightjar-filter-{uuid.uuid4().hex[:10]}-{{filter}}"
    create_topics(kafka_admin, [filter_template.format(filter="bright")])
    models = tmp_path / "models"
    fetch(load_registry(REPO / "config" / "models.yaml").get("tails"), models, progress=False)
    ports = {name: free_port() for name in PORTS}
    env = rig.env(
        NIGHTJAR_MODELS__DIR=str(models),
        NIGHTJAR_DISPATCH__SCHEDULER_ADDRESS=f"tcp://127.0.0.1:{ports['scheduler']}",
        NIGHTJAR_DISPATCH__BATCH_SIZE="25",
        NIGHTJAR_DISPATCH__MAX_IN_FLIGHT="1",  # back-pressure: pauses show on the dashboard
        NIGHTJAR_FILTERS__TOPIC_TEMPLATE=filter_template,
        NIGHTJAR_FILTERS__DEFINITIONS=json.dumps(FILTERS),
        NIGHTJAR_FRITZ__URL=fritz,
        NIGHTJAR_FRITZ__POLL_SECONDS="0.2",
        NIGHTJAR_METRICS__ENABLED="true",
        NIGHTJAR_METRICS__HOST="127.0.0.1",
        NIGHTJAR_METRICS__PORT=str(ports["broker"]),
    )
    client = observe.Prometheus(f"http://127.0.0.1:{ports['prometheus']}")
    with deployment(rig, env, ports, prometheus, tmp_path) as broker, broker.diagnosed():
        started = time.time()
        send_traffic(rig, client)
        done = 'sum(nightjar_post_jobs_total{status="done"})'
        poll_until(lambda: _value(client, done) >= 1, 120, 1.0, "a job posted to Fritz")
        variables = {"dead_letter_topic": rig.dead_letter_topic}
        check_in_prometheus(client, variables, tmp_path, time.time() - started + 5)


@contextmanager
def deployment(
    rig: Rig, env: dict[str, str], ports: Mapping[str, int], prometheus: Path, tmp_path: Path
) -> Iterator[BrokerProcess]:
    """Scheduler, worker, broker, poster and Prometheus on 127.0.0.1; all stopped after."""
    jobs = {"nightjar-broker": ports["broker"], "nightjar-poster": ports["poster"],
            "dask-scheduler": ports["dashboard"], "dask-workers": ports["worker"]}  # fmt: skip
    config = prometheus_config(tmp_path / "prometheus.yml", jobs)
    with ExitStack() as stack:

        def start(name: str, argv: list[str], **extra: str) -> None:
            stack.enter_context(process(argv, {**env, **extra}, tmp_path / f"{name}.log"))

        start("scheduler", [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1",
                            "--port", str(ports["scheduler"]),
                            "--dashboard-address", f"127.0.0.1:{ports['dashboard']}"])  # fmt: skip
        poll_until(lambda: answers(f"http://127.0.0.1:{ports['dashboard']}/health"), 60,
                   message="the Dask scheduler")  # fmt: skip
        start("worker", [str(BIN / "dask"), "worker", f"tcp://127.0.0.1:{ports['scheduler']}",
                         "--host", "127.0.0.1", "--nthreads", "2", "--no-nanny",
                         "--dashboard-address", f"127.0.0.1:{ports['worker']}"])  # fmt: skip
        broker = rig.start(**{k: v for k, v in env.items() if k.startswith("NIGHTJAR_")})
        stack.callback(broker.kill)
        start("poster", [str(BIN / "nightjar"), "post", "--metrics-port", str(ports["poster"])],
              NIGHTJAR_FRITZ__TOKEN=TOKEN)  # fmt: skip
        start("prometheus", [str(prometheus), f"--config.file={config}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{ports['prometheus']}"])  # fmt: skip
        with broker.diagnosed():
            poll_until(lambda: answers(f"http://127.0.0.1:{ports['broker']}/readyz"), 120,
                       message="the broker's /readyz")  # fmt: skip
        yield broker


def send_traffic(rig: Rig, prometheus: observe.Prometheus) -> None:
    """Waves, each once the last is stored: rates and latencies get a shape over time."""
    topic = rig.topics[0]
    for wave in range(WAVES):
        alerts = [
            *iter_alerts("ztf", ZTF, seed=40 + wave),
            *iter_alerts("lsst", LSST, seed=40 + wave),
        ]
        produce(rig.bootstrap, topic, [*alerts, *[b"not an alert"] * GARBAGE])
        stored = (wave + 1) * (ZTF + LSST)
        poll_until(
            lambda stored=stored: _value(prometheus, "sum(nightjar_store_alerts_total)") >= stored,
            120, 1.0, f"{stored} alerts stored, as Prometheus sees it",
        )  # fmt: skip


def check_in_prometheus(
    prometheus: observe.Prometheus, variables: Mapping[str, str], tmp_path: Path, seconds: float
) -> None:
    dashboards, problems = observe.load_dashboards()
    assert not problems, problems
    allowed = observe.expected_empty()
    lines: list[str] = []

    def all_have_data() -> bool:
        results = observe.check_queries(dashboards, prometheus, "1m", variables)
        lines[:], ok = observe.report(results, allowed)
        return ok

    # Scrapes every second; the worker's and poster's series may come a few scrapes later.
    with suppress(AssertionError):  # the report below says which queries had no data
        poll_until(all_have_data, 60, 2.0, "every dashboard query returning data")
    print("\n".join(lines))
    assert all(line.startswith(("ok", "empty")) for line in lines), "\n".join(lines)
    targets = {t["labels"]["job"]: t["health"] for t in prometheus.targets()}
    assert targets == dict.fromkeys(
        ["nightjar-broker", "nightjar-poster", "dask-scheduler", "dask-workers"], "up"
    )
    poll_until(lambda: not observe.rules_not_loaded(prometheus), 30, 1.0, "every rule loaded")
    loaded = prometheus.rule_names()
    assert set(observe.rule_names()) <= set(loaded), loaded
    out = Path(os.environ.get("NIGHTJAR_DASHBOARD_PNGS") or tmp_path / "pngs")
    written = observe.render(dashboards, prometheus, out, seconds, "10s", variables)
    assert len(written) == sum(len(d.panels) for d in dashboards)
    assert all(path.read_bytes().startswith(b"\x89PNG") for path in written)


def _value(prometheus: observe.Prometheus, expr: str) -> float:
    """The single value of `expr` now, or -1 while it has none."""
    result = prometheus.query(expr)
    return float(result[0]["value"][1]) if result else -1.0
