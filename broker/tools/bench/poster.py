"""`nightjar bench --scenario poster`: how fast filter matches reach a Fritz-like service.

Input: N seeded simulated ZTF alerts, stored and queued as filter matches in a scratch
database. Output: candidates/s and HTTP calls/s while one Sender drains that outbox into a
private Fritz-like service (its own process and database), and p50/p95 per call type.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Mapping
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import pymongo
import requests
from tqdm import tqdm

from broker.decode import Decoder
from broker.errors import NightjarError
from broker.post.outbox import Outbox, as_utc, utcnow
from broker.post.sender import Sender
from broker.post.skyportal import SkyPortalClient
from broker.records import AlertResult, Annotation, FilterMatch, Origin
from broker.settings import Settings
from broker.store import Store
from broker.tools.bench.cluster import Proc, broker_env, free_port, start, wait_until
from broker.tools.bench.stats import TARGETS, percentile
from broker.tools.scratch import drop_database, fresh_id
from broker.tools.simulate import iter_alerts

POSTER_N = 200
SEED = 42
TOKEN = "nightjar-bench-poster"
FILTER = ("bench", 1, (1,))  # name, Fritz filter id, group ids
DRAIN_TIMEOUT_S = 600.0
START_TIMEOUT_S = 60.0
# A busy night's filter rate: ZTF's busiest night (1.2 million alerts in about 10 h, the
# capacity plan's figure) is 33 alerts/s, and the configured filters pass about one demo
# alert in four (`make demo`: 183 matches of 745 alerts), so about 8 candidates/s.
BUSY_NIGHT_CANDIDATES_PER_S = TARGETS["poster"]["candidates_per_s"]
_STORE_CHUNK = 100


class PosterBenchError(NightjarError):
    """The poster scenario could not finish (the service did not start, jobs were left)."""


class TimedClient(SkyPortalClient):
    """The poster's client, also keeping how long each call took (by call name)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seconds: dict[str, list[float]] = defaultdict(list)
        self._lock = threading.Lock()

    def call(self, name: str, method: str, path: str, **options: Any) -> tuple[int, Any]:
        started = time.perf_counter()
        try:
            return super().call(name, method, path, **options)
        finally:
            with self._lock:
                self.seconds[name].append(time.perf_counter() - started)


def run_poster(settings: Settings, n: int = POSTER_N, progress: bool = True) -> dict[str, Any]:
    """Queue `n` matches, start a private Fritz-like service, time one Sender draining them."""
    run = fresh_id()
    database, fritz_database = f"nightjar_bench_{run}", f"nightjar_bench_{run}_fritz"
    with ExitStack() as cleanup:
        cleanup.callback(drop_database, settings, database)
        cleanup.callback(drop_database, settings, fritz_database)
        client: pymongo.MongoClient[Any] = pymongo.MongoClient(settings.mongo_uri(), tz_aware=True)
        cleanup.callback(client.close)
        queue_matches(settings, client[database], n, progress)
        logs = Path(cleanup.enter_context(TemporaryDirectory(prefix="nightjar-bench-poster-")))
        service, url = start_service(settings, fritz_database, logs)
        cleanup.callback(service.stop)
        fritz = settings.fritz.model_copy(update={"url": url, "token": None, "poll_seconds": 0.05})
        timed = TimedClient(url, TOKEN, fritz.timeout_seconds, **_pool(fritz))
        sender = Sender(client[database], timed, fritz)
        result = drain(sender, client[database], n, service, progress)
    return result


def _pool(fritz: Any) -> dict[str, int]:
    """The client's pool size where the settings have one (`fritz.concurrency`)."""
    concurrency = getattr(fritz, "concurrency", None)
    return {} if concurrency is None else {"pool_size": int(concurrency)}


def queue_matches(settings: Settings, db: Any, n: int, progress: bool) -> None:
    """Store `n` simulated alerts as the broker does and queue each as one filter match."""
    decoder = Decoder(settings.schemas, settings.kafka.max_message_bytes)
    store, outbox = Store(db), Outbox(db)
    outbox.ensure_indexes()
    messages = list(iter_alerts("ztf", n, SEED))
    name, filter_id, groups = FILTER
    for start_at in tqdm(
        range(0, n, _STORE_CHUNK), unit="batch", desc="queueing matches", disable=not progress
    ):
        chunk = messages[start_at : start_at + _STORE_CHUNK]
        alerts = [
            decoder.decode(raw, Origin("bench", 0, start_at + i)) for i, raw in enumerate(chunk)
        ]
        results = [AlertResult(a.candid, (Annotation("btsbot", "bench", 0.9),)) for a in alerts]
        docs = store.write(alerts, results, {}).docs
        outbox.enqueue(
            FilterMatch(name, d["_id"], d["candid"], d["objectId"], d["survey"], filter_id, groups)
            for d in docs
        )


def start_service(settings: Settings, database: str, logs: Path) -> tuple[Proc, str]:
    """The Fritz-like service in its own process (as Fritz is remote: no shared GIL)."""
    port = free_port()
    tokens = logs / "tokens"
    tokens.write_text(TOKEN + "\n")
    argv = [sys.executable, "-m", "nightjar_fritz", "serve", "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--tokens-file", str(tokens)]
    env = broker_env(
        os.environ,
        {"mongo__uri": settings.mongo_uri(), "fritz__server__database": database},
    )
    service = start("fritz", argv, env, logs)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if not service.running():
            raise PosterBenchError(f"the Fritz-like service exited:\n{service.log()[-2000:]}")
        try:
            return requests.get(f"{url}/healthz", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    wait_until(healthy, START_TIMEOUT_S, "the Fritz-like service answering /healthz", 0.2)
    return service, url


def drain(sender: Sender, db: Any, n: int, service: Proc, progress: bool) -> dict[str, Any]:
    """Run the sender until no job is pending (bounded); the scenario's document."""
    assert isinstance(sender.client, TimedClient)
    outbox = Outbox(db)
    stop = threading.Event()
    load_before = [round(v, 2) for v in os.getloadavg()]
    fritz_cpu, own_cpu = service.cpu_seconds(), time.process_time()
    started = utcnow()
    thread = threading.Thread(target=sender.run, args=(stop,), name="bench-sender", daemon=True)
    thread.start()
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    counts: dict[str, int] = {}
    with tqdm(total=n, unit="job", desc="posting", disable=not progress) as bar:
        while time.monotonic() < deadline:
            counts = outbox.counts()
            bar.update(n - counts.get("pending", 0) - bar.n)
            if not counts.get("pending", 0):
                break
            time.sleep(0.2)
    fritz_cpu, own_cpu = service.cpu_seconds() - fritz_cpu, time.process_time() - own_cpu
    stop.set()
    thread.join(timeout=60)
    if counts.get("pending", 0):
        raise PosterBenchError(
            f"{counts['pending']} of {n} jobs still pending after {DRAIN_TIMEOUT_S:.0f} s"
        )
    wall = _wall_seconds(db, started)
    done = counts.get("done", 0)
    calls = sum(len(v) for v in sender.client.seconds.values())
    return {
        "jobs": n,
        "done": done,
        "failed": counts.get("failed", 0),
        "concurrency": getattr(sender.fritz, "concurrency", 1),
        "wall_seconds": round(wall, 2),
        "candidates_per_s": round(done / wall, 2),
        "http_calls_per_s": round(calls / wall, 1),
        "http_calls": calls,
        "calls": call_latencies(sender.client.seconds),
        "cpu_cores": {
            "fritz_service": round(fritz_cpu / wall, 2),
            "bench": round(own_cpu / wall, 2),
        },
        "target": {"candidates_per_s": BUSY_NIGHT_CANDIDATES_PER_S},
        "keeps_up": done / wall >= BUSY_NIGHT_CANDIDATES_PER_S,
        "load_average_before": load_before,
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "seed": SEED,
    }


def _wall_seconds(db: Any, started: datetime) -> float:
    """From the sender's start to the last job's completion (the outbox's own clock)."""
    last = db["outbox"].find_one({"status": "done"}, {"done_at": 1}, sort=[("done_at", -1)])
    if last is None:
        raise PosterBenchError("no job was posted")
    return max((as_utc(last["done_at"]) - started).total_seconds(), 1e-6)


def call_latencies(seconds: Mapping[str, list[float]]) -> dict[str, dict[str, float | int]]:
    """{call: {n, p50_ms, p95_ms}} per call type."""
    return {
        name: {
            "n": len(values),
            "p50_ms": round(percentile(values, 50) * 1000, 1),
            "p95_ms": round(percentile(values, 95) * 1000, 1),
        }
        for name, values in sorted(seconds.items())
        if values
    }
