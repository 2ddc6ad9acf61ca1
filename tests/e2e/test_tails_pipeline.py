"""The per-alert Tails stage in the running broker: ZTF alerts carrying simulated comet and
look-alike stamps -> Kafka -> `nightjar run` with the committed detector installed by
`nightjar models fetch` -> MongoDB documents and output messages with a `tails` annotation
(score, pixel x/y, ra/dec), comets scored high at the right place on the sky."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import pytest
from pymongo.database import Database

from broker.publish import ANNOTATIONS_FIELD
from broker.tools.models.fetch import fetch
from broker.tools.simulate import simulate as simulate_alerts
from broker.tools.simulate.stamps import fits_image, gzip_fits
from broker.tools.tails import simulate as tails_sim
from tests.pipeline_helpers import REPO, Rig, output_record, produce, read_topic
from workers.models.registry import load_registry
from workers.models.tails_contract import offset_to_sky

ALERTS = 120
STAMPS = ("cutoutScience", "cutoutTemplate", "cutoutDifference")

Db = Database[dict[str, Any]]


@pytest.fixture
def rig(make_rig: Any) -> Iterator[Rig]:
    rig: Rig = make_rig("tails")
    yield rig


def alerts_with_stamps(data: tails_sim.Dataset) -> tuple[list[bytes], list[dict[str, Any]]]:
    """Simulated ZTF alert packets whose three cutouts are replaced by `data`'s triplets."""
    messages, packets = [], []
    for alert, images in zip(simulate_alerts("ztf", len(data), 17), data.images, strict=True):
        reader = fastavro.reader(io.BytesIO(alert.data))
        schema = reader.writer_schema
        packet = next(iter(reader))
        assert isinstance(packet, dict)
        for channel, key in enumerate(STAMPS):
            packet[key]["stampData"] = gzip_fits(fits_image(images[..., channel]))
        buffer = io.BytesIO()
        fastavro.writer(buffer, schema, [packet])
        messages.append(buffer.getvalue())
        packets.append(packet)
    return messages, packets


def test_alerts_get_tails_scores_and_positions(rig: Rig, mongo_db: Db, tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    spec = load_registry(REPO / "config" / "models.yaml").get("tails")
    fetch(spec, models_dir, progress=False)
    data = tails_sim.simulate(ALERTS, seed=2718)
    messages, packets = alerts_with_stamps(data)
    produce(rig.bootstrap, rig.topics[0], messages)
    rig.run(NIGHTJAR_MODELS__DIR=str(models_dir), NIGHTJAR_MODELS__ENABLED='["tails"]')

    docs = {doc["candid"]: doc for doc in mongo_db["alerts"].find({}, {"cutouts": 0, "packet": 0})}
    assert len(docs) == ALERTS
    scores, errors = [], []
    for packet, is_comet, x, y, snr in zip(
        packets, data.is_comet, data.x, data.y, data.snr, strict=True
    ):
        candidate = packet["candidate"]
        tails = docs[packet["candid"]]["annotations"]["tails"]
        assert tails["version"] == spec.version
        assert set(tails) == {"score", "version", "x", "y", "ra", "dec"}
        scores.append(tails["score"])
        if is_comet and snr >= 20:
            ra, dec = offset_to_sky(candidate["ra"], candidate["dec"], x - 31.0, y - 31.0)
            cos_dec = np.cos(np.radians(dec))
            errors.append(np.hypot((tails["ra"] - ra) * cos_dec, tails["dec"] - dec) * 3600)
    scores_array = np.array(scores)
    comets, others = scores_array[data.is_comet], scores_array[~data.is_comet]
    assert np.mean(comets[:, None] > others[None, :]) > 0.9  # AUC
    assert np.median(errors) < 2.0  # arcsec: about two ZTF pixels

    published = [output_record(m.value) for m in read_topic(rig.bootstrap, rig.output_topic("ztf"))]
    assert len(published) == ALERTS
    for record in published:
        (tails,) = [s for s in record[ANNOTATIONS_FIELD]["scores"] if s["model"] == "tails"]
        stored = docs[record["candid"]]["annotations"]["tails"]
        assert tails["score"] == stored["score"]
        assert tails["extra"] == {key: stored[key] for key in ("x", "y", "ra", "dec")}
