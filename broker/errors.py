"""The exception tree, documented in one place.

NightjarError              base of everything Nightjar raises on purpose
├── ConfigError            bad configuration; the CLI exits 2 naming the field
│   └── QueryError         a filter query broker.query cannot evaluate (also a ValueError,
│                          so the settings model reports it under the filter's field)
├── BadAlert               one message cannot become an Alert; carries a reason code.
│                          The pipeline dead-letters it and goes on.
├── TransientError         a service hiccup worth retrying (timeouts, 5xx, broker down)
└── ServiceError           a local service (Kafka, FerretDB) failed to start or stop
"""

from __future__ import annotations


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


class ServiceError(NightjarError):
    """A local service could not be built, started or stopped."""
