"""Simulated alerts: schema-valid, seeded and reproducible alert streams of every survey.

Input: survey name, count and seed. Output: alerts in the survey's wire format (Avro
container files: ZTF, WINTER, PGIR, TURBO, DECam; LSST Confluent-framed Avro, schema id
1100; the others from their schemas by `packets.py`), the same bytes for the same
seed. Objects have several alerts over days, light curves, history and FITS cutouts.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, cast

from broker.tools.simulate.stamps import BOGUS_KINDS

SIMULATORS = {
    survey: f"broker.tools.simulate.{survey}"
    for survey in ("ztf", "lsst", "winter", "pgir", "turbo", "decam")
}


@dataclass(frozen=True, slots=True)
class SimulatedAlert:
    """One simulated message with its ground truth (for tests and benchmarks)."""

    name: str  # file name stem: the alert's candid
    data: bytes  # the message as the survey sends it
    kind: str  # supernova, variable_star, or a bogus kind (cosmic_ray, dipole, hot_pixel)
    candid: int
    object_id: str

    @property
    def is_real(self) -> bool:
        return self.kind not in BOGUS_KINDS


class Simulator(Protocol):
    def generate(self, n: int, seed: int) -> Iterator[SimulatedAlert]: ...


def simulator(survey: str) -> Simulator:
    """The simulator module of `survey`; ValueError naming the known ones otherwise."""
    try:
        module = SIMULATORS[survey]
    except KeyError:
        known = ", ".join(sorted(SIMULATORS))
        raise ValueError(f"no simulator for survey {survey!r} (known: {known})") from None
    return cast(Simulator, importlib.import_module(module))


def simulate(survey: str, n: int, seed: int = 0) -> Iterator[SimulatedAlert]:
    """`n` simulated alerts of `survey` in time order, with their ground truth."""
    if n < 0 or seed < 0:
        raise ValueError(f"n and seed must be >= 0, not n={n}, seed={seed}")
    return simulator(survey).generate(n, seed)


def iter_alerts(survey: str, n: int, seed: int = 0) -> Iterator[bytes]:
    """`n` simulated messages of `survey` in wire format (same seed, same bytes)."""
    return (alert.data for alert in simulate(survey, n, seed))
