"""Liveness and readiness for compose and Kubernetes probes, served beside /metrics.

Input: the main loop's ticks and the dependencies it waits on. Output: on one HTTP port,
GET /livez (200 while the loop has ticked recently; a wedged loop gets restarted), GET
/readyz (200 once running and no dependency is blocked; 503 with a JSON body naming what
blocks it and since when) and GET /metrics (Prometheus text). `Outage` reports the waits on
one dependency: one WARN when it starts, one at least every 30 s (what, since when, how many
batches held), one on recovery; it blocks and unblocks that dependency here.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from broker.metrics import DEPENDENCY_BLOCKED, KNOWN_DEPENDENCIES

log = logging.getLogger(__name__)

# A loop iteration polls Kafka for at most a second or two; one that has not come round
# in this long is stuck, and a restart is the cure (Kubernetes' liveness probe).
DEFAULT_STALL_SECONDS = 120.0


@dataclass(frozen=True, slots=True)
class Blocked:
    """A dependency the broker is waiting for."""

    dependency: str
    reason: str
    since: float  # time.time()


class Health:
    """Thread-safe state behind the probes: ticks, start-up, blocked dependencies."""

    def __init__(self, stall_seconds: float = DEFAULT_STALL_SECONDS) -> None:
        self.stall_seconds = stall_seconds
        self._lock = threading.Lock()
        self._last_tick = time.monotonic()
        self._running = False
        self._blocked: dict[str, Blocked] = {}
        for dependency in KNOWN_DEPENDENCIES:
            DEPENDENCY_BLOCKED.labels(dependency=dependency)  # 0 until blocked; never reset

    def tick(self) -> None:
        """The main loop came round once."""
        with self._lock:
            self._last_tick = time.monotonic()
            self._running = True

    def block(self, dependency: str, reason: str) -> Blocked:
        """Mark `dependency` unreachable; the first call's time is kept while it lasts."""
        with self._lock:
            entry = self._blocked.get(dependency)
            if entry is None:
                entry = Blocked(dependency, reason, time.time())
                self._blocked[dependency] = entry
                DEPENDENCY_BLOCKED.labels(dependency=dependency).set(1)
            return entry

    def unblock(self, dependency: str) -> Blocked | None:
        """Mark `dependency` reachable again; returns what was blocked, if anything."""
        with self._lock:
            entry = self._blocked.pop(dependency, None)
        if entry is not None:
            DEPENDENCY_BLOCKED.labels(dependency=dependency).set(0)
        return entry

    def blocked(self) -> list[Blocked]:
        with self._lock:
            return list(self._blocked.values())

    def live(self) -> tuple[bool, dict[str, Any]]:
        with self._lock:
            idle = time.monotonic() - self._last_tick
        return idle <= self.stall_seconds, {"seconds_since_loop": round(idle, 1)}

    def ready(self) -> tuple[bool, dict[str, Any]]:
        with self._lock:
            running = self._running
            blocked = [
                {"dependency": b.dependency, "reason": b.reason, "since": b.since}
                for b in self._blocked.values()
            ]
        return running and not blocked, {"running": running, "blocked": blocked}


REPORT_EVERY_S = 30.0


class Outage:
    """Reports the waits on one dependency; `retry_transient(..., outage=...)` drives it.

    The repeated WARN comes from a timer thread, every `every` seconds however long each
    try takes (a try may wait out a server-selection timeout first).
    """

    def __init__(
        self,
        dependency: str,
        health: Health,
        held: Callable[[], int] = lambda: 0,
        every: float = REPORT_EVERY_S,
    ) -> None:
        self.dependency = dependency
        self._health = health
        self._held = held  # batches read but not committed while it lasts
        self._every = every
        self._lock = threading.Lock()
        self._since: float | None = None  # time.time() of the first failure
        self._error = ""  # the last failure's
        self._ended = threading.Event()

    @property
    def waiting(self) -> bool:
        return self._since is not None

    def failed(self, error: BaseException) -> None:
        """A call failed for a reason worth waiting out."""
        with self._lock:
            self._error = str(error)
            if self._since is not None:
                return
            self._since = time.time()
            self._ended = threading.Event()
            ended = self._ended
        self._health.block(self.dependency, self._error[:300])
        log.warning(
            "%s unreachable: waiting for it (%d batches held): %s",
            self.dependency, self._held(), error,
        )  # fmt: skip
        name = f"outage-{self.dependency}"
        threading.Thread(target=self._report, args=(ended,), name=name, daemon=True).start()

    def recovered(self) -> None:
        """A call succeeded: ends the outage, if there was one."""
        with self._lock:
            since, self._since = self._since, None
            self._ended.set()
        if since is None:
            return
        self._health.unblock(self.dependency)
        log.warning(
            "%s reachable again after %.0f s: %d batches held go on",
            self.dependency, time.time() - since, self._held(),
        )  # fmt: skip

    def _report(self, ended: threading.Event) -> None:
        while not ended.wait(self._every):
            with self._lock:
                since, error = self._since, self._error
            if since is None:
                return
            stamp = time.strftime("%H:%M:%S", time.localtime(since))
            log.warning(
                "%s still unreachable since %s (%.0f s), %d batches held: %s",
                self.dependency, stamp, time.time() - since, self._held(), error,
            )  # fmt: skip


def serve(health: Health, host: str, port: int) -> ThreadingHTTPServer:
    """Start /livez, /readyz and /metrics on host:port in a daemon thread."""
    handler = type("HealthHandler", (_Handler,), {"health": health})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    log.info("metrics and probes on http://%s:%d/{metrics,livez,readyz}", host, port)
    return server


class _Handler(BaseHTTPRequestHandler):
    health: Health

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, generate_latest(), CONTENT_TYPE_LATEST)
        elif path in ("/livez", "/readyz"):
            ok, body = self.health.live() if path == "/livez" else self.health.ready()
            text = json.dumps({"ok": ok, **body}).encode()
            self._send(200 if ok else 503, text, "application/json")
        else:
            self._send(404, b"not found: try /metrics, /livez or /readyz\n", "text/plain")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Probes come every few seconds: no access log line for each."""
