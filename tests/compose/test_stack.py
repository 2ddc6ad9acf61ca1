"""The operators' deployment, run for real: `make up`, alerts in, checks from outside, `make down`.

Run by `make compose-test` (tests/compose/run.sh builds the images offline first). The tests
run in file order on one stack: healthy services; the ZTF and LSST reference alerts and
simulated ones each stored once, published, or dead-lettered; filter matches posted to the
Fritz-like service once; Prometheus targets up and rules loaded; the dashboards' queries;
data kept across `make down`/`make up` with a second replay adding nothing; the README's
mongodump and mongorestore lines bringing back deleted alerts; three workers sharing batches;
`docker compose down -v` leaving nothing.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest
import yaml
from confluent_kafka.admin import AdminClient

from tests.compose.stack import (
    REPO,
    SHARED,
    Stack,
    choose_ports,
    get_json,
    readme_commands,
    wait_for,
)
from tests.e2e.test_reference_alerts import candid_of
from tests.pipeline_helpers import decoder_for, expected_outcome, output_record, read_topic

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("NIGHTJAR_COMPOSE_TEST") != "1",
        reason="the compose stack test runs with `make compose-test` (needs a Docker engine)",
    ),
    pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} (reference alerts) is absent"),
]

NIGHTJAR = Path(sys.executable).parent / "nightjar"
ARCHIVE_MAGIC = (0x8199E26D).to_bytes(4, "little")  # the first bytes of a mongodump --archive
ZTF_TOPIC = "ztf_20260101_programid1"
LSST_TOPIC = "lsst-alerts-v7"
SIMULATED = 300
UP_S, STREAM_S = 1200.0, 600.0
SERVICES = ("kafka", "mongo", "scheduler", "worker", "broker", "poster", "fritz", "prometheus")


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    stack = Stack(choose_ports())
    try:
        stack.run(["make", "check-env"])
        stack.run(["make", "up"], timeout=UP_S)
        yield stack
    finally:
        if os.environ.get("NIGHTJAR_COMPOSE_KEEP") != "1":
            subprocess.run(
                ["docker", "compose", "--profile", "*", "down", "-v"],
                cwd=REPO,
                env=stack.env,
                timeout=300,
            )


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("simulated")
    run_nightjar(["simulate", "--survey", "ztf", "--n", str(SIMULATED), "--out", str(out)])
    return out


@pytest.fixture(scope="module")
def expected(simulated: Path) -> dict[str, Counter[str]]:
    """Per survey, the keys the broker must store; per reason, the messages it must reject."""
    decoder = decoder_for(SHARED / "lsst" / "schema")
    stored: Counter[str] = Counter()
    rejected: Counter[str] = Counter()
    for path in input_files(simulated):
        verdict = expected_outcome(decoder, path.read_bytes())
        if verdict.alert is not None:
            stored[verdict.alert.survey] += 1
        else:
            rejected[str(verdict.reason)] += 1
    return {"stored": stored, "rejected": rejected}


def input_files(simulated: Path) -> list[Path]:
    folders = [SHARED / "ztf" / "alerts", SHARED / "lsst" / "alerts", simulated]
    return sorted(p for folder in folders for p in folder.rglob("*.avro"))


def run_nightjar(args: list[str], env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(NIGHTJAR), *args], capture_output=True, text=True, timeout=600, env=env
    )
    assert done.returncode == 0, f"nightjar {' '.join(args)}: {done.stdout}{done.stderr}"
    return done.stdout


def replay(stack: Stack, simulated: Path) -> None:
    """The README's replay into the stack's Kafka from the host."""
    env = stack.env | {"NIGHTJAR_SCHEMAS__LSST_SCHEMA_DIR": str(SHARED / "lsst" / "schema")}
    for paths, topic in (
        ([SHARED / "ztf" / "alerts", simulated], ZTF_TOPIC),
        ([SHARED / "lsst" / "alerts"], LSST_TOPIC),
    ):
        argv = ["replay", *map(str, paths), "--topic", topic, "--bootstrap", stack.kafka]
        run_nightjar([*argv, "--no-progress"], env=env)


def database(stack: Stack, name: str = "nightjar") -> Any:
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        stack.mongo, serverSelectionTimeoutMS=10_000
    )
    return client[name]


def stored_counts(stack: Stack) -> dict[str, int]:
    db = database(stack)
    return {
        "alerts": db["alerts"].count_documents({}),
        "rejected": db["rejected"].count_documents({}),
        "candidates": database(stack, "fritz")["candidates"].count_documents({}),
    }


def caught_up(stack: Stack) -> bool:
    """The broker's consumer group has committed every message of both input topics."""
    admin = AdminClient({"bootstrap.servers": stack.kafka})
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition

    for topic in (ZTF_TOPIC, LSST_TOPIC):
        request = ConsumerGroupTopicPartitions("nightjar", [TopicPartition(topic, 0)])
        result = admin.list_consumer_group_offsets([request])["nightjar"].result(timeout=15)
        committed = result.topic_partitions[0].offset
        high = len(read_topic(stack.kafka, topic))
        if committed < high:
            return False
    return True


def test_every_service_is_up_and_healthy(stack: Stack) -> None:
    def healthy() -> bool:
        rows = stack.containers()
        states = {(r["Service"], r["State"], r.get("Health", "")) for r in rows}
        running = {s for s, state, health in states if state == "running" and health != "unhealthy"}
        return set(SERVICES) <= running and all(
            health in ("", "healthy") for s, state, health in states if state == "running"
        )

    wait_for("every service running and healthy", healthy, timeout=300)
    models = stack.containers("models")
    assert models and models[0]["State"] == "exited" and models[0]["ExitCode"] == 0, models
    assert get_json(stack.url("NIGHTJAR_BROKER_METRICS_PORT", "/readyz"))["ok"] is True


def test_alerts_are_stored_once_published_and_dead_lettered(
    stack: Stack, simulated: Path, expected: dict[str, Counter[str]]
) -> None:
    replay(stack, simulated)
    want_stored = sum(expected["stored"].values())
    want_rejected = sum(expected["rejected"].values())
    assert want_stored > SIMULATED // 2 and want_rejected > 0, expected

    def settled() -> dict[str, int] | None:
        counts = stored_counts(stack)
        done = counts["alerts"] >= want_stored and counts["rejected"] >= want_rejected
        return counts if done else None

    counts = wait_for("every alert stored or rejected", settled, timeout=STREAM_S)
    assert counts["alerts"] == want_stored and counts["rejected"] == want_rejected, counts
    db = database(stack)
    for survey, n in expected["stored"].items():
        assert db["alerts"].count_documents({"survey": survey}) == n, survey
        output = read_topic(stack.kafka, f"nightjar.{survey}.annotated")
        candids = Counter(candid_of(survey, output_record(r.value)) for r in output)
        assert len(candids) == n and max(candids.values()) == 1, candids.most_common(3)
    dead = read_topic(stack.kafka, "nightjar.deadletter")
    assert len(dead) == want_rejected


def test_filter_matches_are_posted_to_fritz_once(stack: Stack) -> None:
    jobs = database(stack)["outbox"]
    matches = jobs.count_documents({})
    assert matches > 0, "no filter matched: nothing reached the poster"

    def posted() -> bool:
        return jobs.count_documents({"status": "done"}) == matches

    try:
        wait_for(f"{matches} outbox jobs done", posted, timeout=STREAM_S)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{outbox_diagnosis(stack)}") from None
    candidates = database(stack, "fritz")["candidates"]
    rows = list(candidates.find({}, {"obj_id": 1, "filter_id": 1, "passing_alert_id": 1}))
    per_match = Counter((r["passing_alert_id"], r["filter_id"]) for r in rows)
    assert len(rows) == matches and max(per_match.values()) == 1, per_match.most_common(3)


def outbox_diagnosis(stack: Stack) -> str:
    """The jobs not done (state, tries, last error) and the poster's and Fritz's last lines."""
    fields = ["status", "attempts", "failures", "next_attempt_at", "lease_expires_at"]
    projection = {name: 1 for name in [*fields, "last_error", "object_id", "progress"]}
    rows = database(stack)["outbox"].find({"status": {"$ne": "done"}}, projection).limit(20)
    lines = [f"{row['_id']}: {' '.join(str(row.get(f)) for f in fields)} "
             f"steps={sorted(row.get('progress') or {})} error={row.get('last_error')!r}"
             for row in rows]  # fmt: skip
    logs = subprocess.run(
        ["docker", "compose", "logs", "--no-color", "--tail", "80", "poster", "fritz"],
        cwd=REPO, env=stack.env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return "\n".join(["jobs not done:", *lines, "logs:", logs.stdout[-12000:]])


def test_prometheus_scrapes_every_target_and_loads_every_rule(stack: Stack) -> None:
    def all_up() -> list[Any] | None:
        targets = get_json(f"{stack.prometheus}/api/v1/targets")["data"]["activeTargets"]
        jobs = {t["labels"]["job"] for t in targets}
        up = all(t["health"] == "up" for t in targets)
        wanted = {"nightjar-broker", "nightjar-poster", "dask-scheduler", "dask-workers"}
        return targets if up and wanted <= jobs else None

    wait_for("every Prometheus target up", all_up, timeout=180, every=5)
    files = sorted((REPO / "deploy" / "prometheus" / "rules").glob("*.yml"))
    if not files:
        pytest.skip("deploy/prometheus/rules/*.yml is not on this branch yet (issue 12 item 2)")
    wanted = {
        rule.get("alert") or rule.get("record")
        for path in files
        for group in (yaml.safe_load(path.read_text()) or {}).get("groups", [])
        for rule in group["rules"]
    }
    groups = get_json(f"{stack.prometheus}/api/v1/rules")["data"]["groups"]
    loaded = {rule["name"] for group in groups for rule in group["rules"]}
    assert wanted and wanted <= loaded, f"not loaded: {sorted(wanted - loaded)}"
    assert not [r for g in groups for r in g["rules"] if r.get("health") == "err"]


def test_every_dashboard_query_returns_data(stack: Stack) -> None:
    # The checker of the dashboards (issue 12 item 2) lands as `nightjar dashboards check`.
    if not (REPO / "broker" / "cli" / "dashboards.py").exists():
        pytest.skip("hook: `nightjar dashboards check --prometheus URL` is not on this branch yet")
    # The alerts were all handled seconds ago: a counter born with the first alert needs a
    # second scrape (15 s apart) before rate() has a value, hence the wait.
    argv = ["dashboards", "check", "--prometheus", stack.prometheus, "--wait", "90"]
    run_nightjar(argv, env=stack.env)


def test_data_survives_down_and_up_and_a_second_replay_adds_nothing(
    stack: Stack, simulated: Path
) -> None:
    before = stored_counts(stack)
    stack.run(["make", "down"], timeout=300)
    assert stack.leftovers()["volumes"], "make down dropped the volumes"
    stack.run(["make", "up"], timeout=UP_S)
    assert stored_counts(stack) == before
    replay(stack, simulated)
    wait_for("the broker to consume the second replay", lambda: caught_up(stack), STREAM_S)
    after = stored_counts(stack)
    assert (after["alerts"], after["candidates"]) == (before["alerts"], before["candidates"])
    # A rejection is recorded per message (keyed by topic[partition]@offset): replayed bad
    # alerts are new messages, so each is recorded once more, and stored nowhere else.
    assert after["rejected"] == 2 * before["rejected"]
    assert database(stack)["outbox"].count_documents({"status": {"$ne": "done"}}) == 0


def test_the_readme_backup_brings_back_lost_alerts(
    stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """README "Back up MongoDB": its dump and restore lines run as written (the restore's
    example file name swapped for the dump's), mongodump and mongorestore in the `mongo`
    container as in mongo:7.0's image."""
    dump, restore = readme_commands("### Back up MongoDB")
    db = database(stack)
    before = stored_counts(stack)
    sample = db["alerts"].find_one({"survey": "lsst"})
    began = time.monotonic()
    stack.run(["bash", "-c", dump], cwd=tmp_path)
    dump_s = time.monotonic() - began
    [archive] = tmp_path.glob("nightjar-*.archive.gz")
    data = archive.read_bytes()
    assert gzip.decompress(data)[:4] == ARCHIVE_MAGIC, f"{archive.name}: not a mongodump archive"

    lost = db["alerts"].delete_many({"survey": "lsst"}).deleted_count
    db["rejected"].drop()
    assert sample is not None and lost > 0 and stored_counts(stack)["rejected"] == 0
    restore = re.sub(r"nightjar-\d{4}-\d{2}-\d{2}\.archive\.gz", archive.name, restore)
    began = time.monotonic()
    stack.run(["bash", "-c", restore], cwd=tmp_path)
    restore_s = time.monotonic() - began

    assert stored_counts(stack) == before
    assert db["alerts"].find_one({"_id": sample["_id"]}) == sample
    indexes = {index["name"]: index for index in db["alerts"].list_indexes()}
    assert indexes["survey_candid"].get("unique") is True and "object" in indexes, indexes
    with capsys.disabled():
        print(
            f"\n  backup: mongodump of {before['alerts']} alerts and {before['rejected']} "
            f"rejections {dump_s:.1f} s ({len(data) / 1e6:.1f} MB), mongorestore {restore_s:.1f} s"
        )


def test_three_workers_share_the_batches(stack: Stack, tmp_path: Path) -> None:
    stack.compose("up", "-d", "--wait", "--scale", "worker=3", timeout=UP_S)
    workers = [c for c in stack.containers("worker") if c["State"] == "running"]
    assert len(workers) == 3, workers
    batches_before = worker_batches(stack)
    simulate = ["simulate", "--survey", "ztf", "--n", "400", "--seed", "7"]
    run_nightjar([*simulate, "--out", str(tmp_path)])
    # In chunks, so that the broker makes several batches (one replay is one or two).
    files = sorted(tmp_path.rglob("*.avro"))
    for start in range(0, len(files), 50):
        chunk = [str(path) for path in files[start : start + 50]]
        argv = ["replay", *chunk, "--topic", ZTF_TOPIC, "--bootstrap", stack.kafka]
        run_nightjar([*argv, "--no-progress"], env=stack.env)
    wait_for("the broker to consume the new alerts", lambda: caught_up(stack), STREAM_S)

    def spread() -> dict[str, float] | None:
        grown = {w: n - batches_before.get(w, 0.0) for w, n in worker_batches(stack).items()}
        busy = {w: n for w, n in grown.items() if n > 0}
        return busy if len(busy) >= 3 else None

    wait_for("batches on three workers", spread, timeout=180, every=5)


WORKER_TASKS = (
    "import json, distributed; "
    "client = distributed.Client('tcp://127.0.0.1:8786', timeout=30); "
    "print(json.dumps(client.run(lambda dask_worker: dask_worker.state.executed_count)))"
)


def worker_batches(stack: Stack) -> dict[str, float]:
    """Tasks (annotation batches) each worker has run, asked of the scheduler it registered with."""
    out = stack.compose("exec", "-T", "scheduler", "python", "-c", WORKER_TASKS, timeout=120)
    counts: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return counts


def test_down_v_leaves_nothing_behind(stack: Stack) -> None:
    stack.compose("--profile", "*", "down", "-v", timeout=300)
    assert stack.leftovers() == {"containers": [], "volumes": [], "networks": []}
