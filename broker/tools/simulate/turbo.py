"""Simulated TURBO alerts: `turbo.alert` packets from schemas/turbo (its published schema,
whose mismatched defaults are repaired as decode repairs them).

Input: count and seed. Output: `SimulatedAlert`s as TURBO sends them (Avro container files,
gzip-FITS stamps), histories with detections and upper limits.
"""

from __future__ import annotations

from collections.abc import Iterator

from broker.schema_registry import SCHEMA_ROOT
from broker.surveys import turbo
from broker.tools.simulate import SimulatedAlert
from broker.tools.simulate.packets import PacketSpec, magnitudes
from broker.tools.simulate.packets import generate as generate_packets
from broker.tools.simulate.sky import SurveyProfile

SPEC = PacketSpec(
    layout=turbo.LAYOUT,
    schema_file=SCHEMA_ROOT / "turbo" / "turbo.alert.avsc",
    profile=SurveyProfile(
        bands=("g", "r"),
        band_weights=(0.5, 0.5),
        depth={"g": 19.5, "r": 19.3},
        start_jd=2460676.5,
        window_days=30.0,
        cadence_days=(0.5, 2.0),
        seeing_pixels=(2.2, 0.4),
        dec_range=(-30.0, 89.0),
        night_fraction=(0.62, 0.95),
        kind_weights=SurveyProfile.weights(supernova=0.08, variable=0.05),
    ),
    object_prefix="TRBO",
    band_field="fid",
    band_values={"g": 1, "r": 2},  # TURBO names no bands for its fids
    score_field="rb",
    measure=magnitudes,
    detections_only=False,
    candid_base=1_300_000_000,
)


def generate(n: int, seed: int) -> Iterator[SimulatedAlert]:
    return generate_packets(SPEC, n, seed)
