"""Simulated DECam (DESIRT) alerts: `desirt.alert` packets from schemas/decam.

Input: count and seed. Output: `SimulatedAlert`s as the DESIRT stream sends them (Avro
container files, gzip-FITS stamps): fluxes in nJy, and `fp_hists` forced photometry of
every epoch of the last 30 days, this one included.
"""

from __future__ import annotations

from collections.abc import Iterator

from broker.schema_registry import SCHEMA_ROOT
from broker.surveys import decam
from broker.tools.simulate import SimulatedAlert
from broker.tools.simulate.packets import PacketSpec, forced_fluxes
from broker.tools.simulate.packets import generate as generate_packets
from broker.tools.simulate.sky import SurveyProfile

SPEC = PacketSpec(
    layout=decam.LAYOUT,
    schema_file=SCHEMA_ROOT / "decam" / "desirt.alert.avsc",
    profile=SurveyProfile(
        bands=("g", "r", "i", "z"),
        band_weights=(0.3, 0.3, 0.25, 0.15),
        depth={"g": 23.8, "r": 23.6, "i": 23.2, "z": 22.6},
        start_jd=2460676.5,
        window_days=30.0,
        cadence_days=(1.0, 4.0),
        seeing_pixels=(4.0, 0.6),  # 0.26" pixels
        dec_range=(-60.0, 30.0),
        night_fraction=(0.46, 0.88),  # Cerro Tololo nights in UT, as JD fractions
        kind_weights=SurveyProfile.weights(supernova=0.12, variable=0.05),
    ),
    object_prefix="DC",
    band_field="band",
    band_values={"g": "g", "r": "r", "i": "i", "z": "z"},
    score_field="reliability",
    measure=forced_fluxes,
    detections_only=False,
    candid_base=1_400_000_000,
)


def generate(n: int, seed: int) -> Iterator[SimulatedAlert]:
    return generate_packets(SPEC, n, seed)
