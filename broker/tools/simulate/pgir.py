"""Simulated Palomar Gattini-IR alerts: `pgir.alert` packets from schemas/pgir (J band).

Input: count and seed. Output: `SimulatedAlert`s as PGIR sends them (Avro container files,
gzip-FITS stamps), histories with detections and upper limits.
"""

from __future__ import annotations

from collections.abc import Iterator

from broker.schema_registry import SCHEMA_ROOT
from broker.surveys import pgir
from broker.tools.simulate import SimulatedAlert
from broker.tools.simulate.packets import PacketSpec, magnitudes
from broker.tools.simulate.packets import generate as generate_packets
from broker.tools.simulate.sky import SurveyProfile

SPEC = PacketSpec(
    layout=pgir.LAYOUT,
    schema_file=SCHEMA_ROOT / "pgir" / "pgir.alert.avsc",
    profile=SurveyProfile(
        bands=("J",),
        band_weights=(1.0,),
        depth={"J": 13.5},  # Vega; Gattini-IR is shallow and wide
        start_jd=2460676.5,
        window_days=30.0,
        cadence_days=(1.0, 3.0),
        seeing_pixels=(1.6, 0.3),  # 8.7" pixels
        dec_range=(-30.0, 89.0),
        night_fraction=(0.62, 0.95),
        kind_weights=SurveyProfile.weights(supernova=0.05, variable=0.2),
    ),
    object_prefix="PGIR",
    band_field="",
    band_values={},
    score_field="drb",
    measure=magnitudes,
    detections_only=False,
    candid_base=1_200_000_000,
)


def generate(n: int, seed: int) -> Iterator[SimulatedAlert]:
    return generate_packets(SPEC, n, seed)
