"""SkyPortal's HTTP API as the poster speaks it: one keep-alive client and the request bodies.

Input: a call (method, path, JSON body). Output: the envelope's data, or TransientError
(timeouts, 5xx; TimedOut when the server may have acted; RateLimited for 429) and Rejected
(4xx). The bodies follow the calls Kowalski makes for each new candidate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from broker import __version__
from broker.errors import NightjarError, TransientError
from broker.metrics import POST_REQUESTS
from broker.post.outbox import JobDoc

DEFAULT_RETRY_AFTER_SECONDS = 5.0
MAX_RETRY_AFTER_SECONDS = 300.0


class Rejected(NightjarError):
    """SkyPortal refused a call (4xx): retrying the same request will not help."""

    def __init__(self, call: str, status: int, message: str) -> None:
        super().__init__(f"{call}: HTTP {status}: {message}")
        self.call = call
        self.status = status
        self.message = message


class TimedOut(TransientError):
    """No (complete) answer: the server may have done, or may still do, what was asked."""


class RateLimited(TransientError):
    """HTTP 429: SkyPortal asks for fewer requests; `retry_after` seconds (its Retry-After
    header, else the default) before the next."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BadJob(NightjarError):
    """The job's data cannot become a SkyPortal request (e.g. its alert is gone)."""


class SkyPortalClient:
    """One requests.Session speaking SkyPortal's envelope ({"status", "data" | "message"}),
    shared by the poster's threads: up to `pool_size` kept-alive connections, never more
    (a thread waits for a free one), so each posting thread reuses its connection."""

    def __init__(
        self, base_url: str, token: str, timeout_seconds: float, pool_size: int = 1
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout_seconds
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size, pool_block=True)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers.update(
            {"Authorization": f"token {token}", "User-Agent": f"Nightjar/{__version__}"}
        )

    def call(
        self,
        name: str,
        method: str,
        path: str,
        *,
        payload: Mapping[str, Any] | None = None,
        ok: tuple[int, ...] = (200,),
    ) -> tuple[int, Any]:
        """(status, envelope data); TransientError for timeouts/5xx/429, Rejected for 4xx."""
        where = f"{method} {path}"
        try:
            response = self.session.request(
                method, self.base_url + path, json=payload, timeout=self.timeout
            )
        except requests.Timeout as exc:
            POST_REQUESTS.labels(call=name, status="timeout").inc()
            raise TimedOut(f"{where}: no answer within {self.timeout:g} s") from exc
        except requests.ConnectionError as exc:
            POST_REQUESTS.labels(call=name, status="connection").inc()
            raise TransientError(f"{where}: cannot connect to {self.base_url}: {exc}") from exc
        except requests.RequestException as exc:
            # e.g. a response cut off half-way: the server may have acted on the request.
            POST_REQUESTS.labels(call=name, status="broken").inc()
            raise TimedOut(f"{where}: {exc.__class__.__name__}: {exc}") from exc
        status = response.status_code
        POST_REQUESTS.labels(call=name, status=str(status)).inc()
        if status == 429:
            wait = _retry_after(response.headers.get("Retry-After"))
            raise RateLimited(f"{where}: HTTP 429: {_message(response)}", wait)
        if status >= 500:
            raise TransientError(f"{where}: HTTP {status}: {_message(response)}")
        if status not in ok:
            raise Rejected(name, status, _message(response))
        if method == "HEAD" or status != 200:
            return status, None
        body = _json(response)
        if not isinstance(body, dict) or body.get("status") != "success":
            raise Rejected(name, status, f"not a SkyPortal success envelope: {_message(response)}")
        return status, body.get("data")

    def close(self) -> None:
        self.session.close()


def candidate_payload(job: JobDoc, alert: Mapping[str, Any], origin: str) -> dict[str, Any]:
    """POST /api/candidates body (ObjPost + filter_ids, passing_alert_id, passed_at)."""
    try:
        ra, dec = float(alert["ra"]), float(alert["dec"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BadJob(f"alert {job['alert_id']} has no usable ra/dec: {exc}") from exc
    payload: dict[str, Any] = {
        "id": job["object_id"],
        "ra": ra,
        "dec": dec,
        "filter_ids": [job["fritz_filter_id"]],
        "passing_alert_id": job["candid"],
        "passed_at": job["passed_at"].strftime("%Y-%m-%dT%H:%M:%S.%f"),
        "origin": origin,
    }
    candidate = alert.get("candidate") or {}
    score = candidate.get("drb", candidate.get("rb"))
    if isinstance(score, int | float) and math.isfinite(score):
        payload["score"] = float(score)  # Kowalski sends the packet's real/bogus score
    return payload


def annotation_payload(job: JobDoc, alert: Mapping[str, Any]) -> dict[str, Any]:
    """POST /api/sources/{id}/annotations body: the model scores under origin nightjar:<filter>."""
    data: dict[str, Any] = {"candid": job["candid"]}
    for model, annotation in sorted((alert.get("annotations") or {}).items()):
        score = annotation.get("score") if isinstance(annotation, Mapping) else None
        if isinstance(score, int | float) and math.isfinite(score):
            data[model] = round(float(score), 6)
    payload: dict[str, Any] = {"origin": f"nightjar:{job['filter']}", "data": data}
    if job["group_ids"]:
        payload["group_ids"] = list(job["group_ids"])
    return payload


def _retry_after(header: str | None) -> float:
    """Retry-After in seconds (the delay form; an HTTP date or nothing: the default)."""
    try:
        seconds = float(header) if header else DEFAULT_RETRY_AFTER_SECONDS
    except ValueError:
        seconds = DEFAULT_RETRY_AFTER_SECONDS
    if not math.isfinite(seconds):
        seconds = DEFAULT_RETRY_AFTER_SECONDS
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


def _json(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _message(response: requests.Response) -> str:
    body = _json(response)
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return (response.text or response.reason or "").strip()[:200]
