"""Simulated WINTER alerts: `winter.alert` packets from schemas/winter (near-infrared Y, J, Hs).

Input: count and seed. Output: `SimulatedAlert`s as WINTER sends them (Avro container files,
gzip-FITS stamps), with detections-only histories as mirar writes them.
"""

from __future__ import annotations

from collections.abc import Iterator

from broker.schema_registry import SCHEMA_ROOT
from broker.surveys import winter
from broker.tools.simulate import SimulatedAlert
from broker.tools.simulate.packets import PacketSpec, magnitudes
from broker.tools.simulate.packets import generate as generate_packets
from broker.tools.simulate.sky import SurveyProfile

SPEC = PacketSpec(
    layout=winter.LAYOUT,
    schema_file=SCHEMA_ROOT / "winter" / "winter.alert.avsc",
    profile=SurveyProfile(
        bands=("Y", "J", "H"),
        band_weights=(0.2, 0.5, 0.3),
        depth={"Y": 18.0, "J": 17.7, "H": 17.0},
        start_jd=2460676.5,  # 2025-01-01
        window_days=30.0,
        cadence_days=(1.0, 5.0),
        seeing_pixels=(2.5, 0.4),
        dec_range=(-30.0, 89.0),
        night_fraction=(0.62, 0.95),  # Palomar nights in UT, as JD fractions
        kind_weights=SurveyProfile.weights(supernova=0.1, variable=0.05),
    ),
    object_prefix="WNTR",
    band_field="fid",
    band_values={"Y": 1, "J": 2, "H": 3},  # mirar's filter ids
    score_field="rb",
    measure=magnitudes,
    candid_base=1_100_000_000,
)


def generate(n: int, seed: int) -> Iterator[SimulatedAlert]:
    return generate_packets(SPEC, n, seed)
