"""The exception tree, documented in one place.

NightjarError              base of everything Nightjar raises on purpose
├── ConfigError            bad configuration; the CLI exits 2 naming the field
│   └── QueryError         a filter query broker.query cannot evaluate (also a ValueError,
│                          so the settings model reports it under the filter's field)
├── BadAlert               one message cannot become an Alert; carries a reason code.
│                          The pipeline dead-letters it and goes on.
├── TransientError         a service hiccup worth retrying (timeouts, 5xx, broker down)
│   └── SchedulerLost      the external Dask scheduler (or every worker) is out of reach:
│                          batches wait for it, their worker attempts not counted
├── FencedError            another broker took this one's Kafka group.instance.id; exit 1
└── ServiceError           a local service (Kafka, FerretDB) failed to start or stop

`retry_transient` is the one retry loop: it retries TransientError alone, with capped
exponential backoff, and stops waiting as soon as its `stop` event is set. Given an
`outage` (broker.health.Outage), it reports the wait there (a WARN when it starts, every
30 s, on recovery) instead of one WARN per attempt.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class NightjarError(Exception):
    """Base class of the errors Nightjar raises deliberately."""


class ConfigError(NightjarError):
    """Invalid or missing configuration; the message names the field."""


class QueryError(ConfigError, ValueError):
    """A filter query refused by the compiler; names the filter and the operator or path."""


class BadAlert(NightjarError):
    """A message that cannot be turned into an Alert.

    `reason` is a short stable code (see `broker.records.RejectReason`) used as a
    metric label and stored with the dead-letter record; `detail` is for humans.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class TransientError(NightjarError):
    """A failure that may succeed when retried."""


class SchedulerLost(TransientError):
    """The Dask scheduler cannot be reached, or has no workers: an outage, not a bad batch."""


class FencedError(NightjarError):
    """Another consumer joined the group with this one's `kafka.instance_name`."""


class ServiceError(NightjarError):
    """A local service could not be built, started or stopped."""


class WaitReport(Protocol):
    """Where a retry loop reports an outage (broker.health.Outage)."""

    def failed(self, error: BaseException) -> None: ...

    def recovered(self) -> None: ...


def retry_transient(
    call: Callable[[], T],
    *,
    what: str,
    attempts: int | None = None,
    first_delay: float = 0.5,
    max_delay: float = 30.0,
    stop: threading.Event | None = None,
    outage: WaitReport | None = None,
) -> T:
    """`call()`, called again after each TransientError with a doubling delay up to `max_delay`.

    Re-raises the last TransientError after `attempts` calls (None: until it succeeds), or
    once `stop` is set (checked before and during each wait, so shutdown is not delayed by a
    service that stays down). Any other exception is raised at once: retrying will not help.
    """
    delay = first_delay
    made = 0
    while True:
        made += 1
        try:
            result = call()
        except TransientError as exc:
            if outage is not None:
                outage.failed(exc)
            if attempts is not None and made >= attempts:
                raise
            if stop is not None and stop.is_set():
                log.warning("%s failed (%s): stopping, so not retrying", what, exc)
                raise
            level = logging.DEBUG if outage is not None else logging.WARNING
            log.log(level, "%s failed (%s): attempt %d, retrying in %.1f s", what, exc, made, delay)
            if stop is None:
                time.sleep(delay)
            elif stop.wait(delay):
                raise
            delay = min(delay * 2, max_delay)
            continue
        if outage is not None:
            outage.recovered()
        return result
