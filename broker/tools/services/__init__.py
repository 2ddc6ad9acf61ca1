"""Local services for development and tests: Kafka and FerretDB run natively (no Docker).

`REGISTRY` lists every service `nightjar services up|down|status` manages, in start
order; adding one (e.g. a Fritz-like HTTP API) means one `Service` subclass in its own
module and one entry here. The supervisor starts, probes and stops them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from broker.errors import ConfigError
from broker.tools.services.base import Layout, Service
from broker.tools.services.ferretdb import FerretDBService
from broker.tools.services.fritz import FritzService
from broker.tools.services.kafka import KafkaService

REGISTRY: dict[str, type[Service]] = {
    KafkaService.name: KafkaService,
    FerretDBService.name: FerretDBService,
    FritzService.name: FritzService,
}


def create(names: Sequence[str] = (), env: Mapping[str, str] | None = None) -> list[Service]:
    """The named services (all when `names` is empty), in registry order."""
    unknown = sorted(set(names) - set(REGISTRY))
    if unknown:
        raise ConfigError(
            f"unknown service {', '.join(unknown)}; choose from {', '.join(REGISTRY)}"
        )
    return [cls(env) for name, cls in REGISTRY.items() if not names or name in names]


__all__ = ["REGISTRY", "Layout", "Service", "create"]
