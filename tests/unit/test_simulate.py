"""broker.tools.simulate: reproducible, schema-valid, realistic alerts broker.decode accepts."""

from __future__ import annotations

import gzip
import io
from collections import Counter, defaultdict
from pathlib import Path

import fastavro
import numpy as np
import pytest

from broker.__main__ import main
from broker.decode import Decoder
from broker.records import Alert
from broker.settings import SchemaSettings
from broker.tools.simulate import SimulatedAlert, iter_alerts, simulate
from broker.tools.simulate.stamps import fits_image

SURVEYS = ("ztf", "lsst")


@pytest.fixture(scope="module")
def decoder() -> Decoder:
    return Decoder(SchemaSettings(), max_message_bytes=4 * 1024 * 1024)


@pytest.fixture(scope="module", params=SURVEYS)
def stream(request: pytest.FixtureRequest, decoder: Decoder) -> list[tuple[SimulatedAlert, Alert]]:
    alerts = list(simulate(request.param, 300, seed=0))
    return [(alert, decoder.decode(alert.data)) for alert in alerts]


@pytest.mark.parametrize("survey", SURVEYS)
def test_same_seed_same_bytes(survey: str) -> None:
    first = list(iter_alerts(survey, 25, seed=4))
    assert first == list(iter_alerts(survey, 25, seed=4))
    assert first != list(iter_alerts(survey, 25, seed=5))
    assert len(first) == 25 and len(set(first)) == 25


def test_every_alert_decodes(stream: list[tuple[SimulatedAlert, Alert]]) -> None:
    for simulated, alert in stream:
        assert alert.candid == simulated.candid
        assert alert.object_id == simulated.object_id
    candids = [alert.candid for _, alert in stream]
    assert len(set(candids)) == len(candids)
    jds = [alert.jd for _, alert in stream]
    assert jds == sorted(jds)  # a stream in time order


def test_objects_recur_and_history_links_them(stream: list[tuple[SimulatedAlert, Alert]]) -> None:
    by_object: dict[str, list[Alert]] = defaultdict(list)
    for _, alert in stream:
        by_object[alert.object_id].append(alert)
    repeated = [alerts for alerts in by_object.values() if len(alerts) >= 3]
    assert len(repeated) >= 5
    id_key = "candid" if stream[0][1].survey == "ztf" else "diaSourceId"
    for alerts in repeated:
        earlier, later = alerts[0], alerts[-1]
        assert later.jd - earlier.jd >= 1.0  # over days
        history_ids = {entry.get(id_key) for entry in later.history}
        assert earlier.candid in history_ids


def test_history_has_upper_limits(stream: list[tuple[SimulatedAlert, Alert]]) -> None:
    entries = [entry for _, alert in stream for entry in alert.history]
    if stream[0][1].survey == "ztf":
        limits = [entry for entry in entries if entry["candid"] is None]
        assert limits and all(entry["magpsf"] is None for entry in limits)
        assert all(entry["diffmaglim"] > 18 for entry in limits)
    else:
        forced = [entry for entry in entries if "diaForcedSourceId" in entry]
        assert forced and len(forced) < len(entries)


def test_real_and_bogus_differ(stream: list[tuple[SimulatedAlert, Alert]]) -> None:
    kinds = Counter(simulated.kind for simulated, _ in stream)
    assert {"supernova", "variable_star"} <= set(kinds)
    assert sum(kinds[kind] for kind in ("cosmic_ray", "dipole", "hot_pixel")) >= 0.05 * len(stream)
    score = "drb" if stream[0][1].survey == "ztf" else "reliability"
    real = [alert.candidate[score] for simulated, alert in stream if simulated.is_real]
    bogus = [alert.candidate[score] for simulated, alert in stream if not simulated.is_real]
    assert np.mean(real) > 0.75 > 0.25 > np.mean(bogus)


def test_ztf_candidate_fields_are_plausible(decoder: Decoder) -> None:
    for raw in iter_alerts("ztf", 100, seed=1):
        candidate = decoder.decode(raw).candidate
        assert 12.0 < candidate["magpsf"] < 22.5 and 0.01 < candidate["sigmapsf"] < 0.4
        assert candidate["magpsf"] <= candidate["diffmaglim"] + 0.5
        assert candidate["isdiffpos"] in ("t", "f") and candidate["fid"] in (1, 2, 3)
        assert candidate["ndethist"] >= 1 and candidate["ncovhist"] >= candidate["ndethist"]
        assert candidate["jdstarthist"] <= candidate["jd"]
        assert 0.0 <= candidate["sgscore1"] <= 1.0 and candidate["distpsnr1"] >= 0
        assert 1.0 < candidate["fwhm"] < 5.0


def _stamp_images(alert: Alert) -> list[np.ndarray]:
    astropy_fits = pytest.importorskip("astropy.io.fits")
    images = []
    for data in (alert.cutouts.science, alert.cutouts.template, alert.cutouts.difference):
        fits_bytes = gzip.decompress(data) if alert.survey == "ztf" else data
        assert len(fits_bytes) % 2880 == 0
        with astropy_fits.open(io.BytesIO(fits_bytes)) as hdus:
            hdus.verify("exception")
            assert hdus[0].header["BITPIX"] == -32
            images.append(np.array(hdus[0].data))
    return images


def test_stamps_are_valid_fits(stream: list[tuple[SimulatedAlert, Alert]]) -> None:
    shapes: Counter[tuple[int, ...]] = Counter()
    with_nan = 0
    for _, alert in stream:
        images = _stamp_images(alert)
        shapes[images[0].shape] += 1
        with_nan += any(np.isnan(image).any() for image in images)
        assert all(np.nanstd(image) > 0 for image in images)
    full = (63, 63) if stream[0][1].survey == "ztf" else (30, 30)
    assert shapes[full] >= 0.95 * len(stream)
    assert with_nan >= 1
    if full == (63, 63):
        assert shapes[(45, 63)] >= 1  # edge stamps


def test_difference_shows_the_source(decoder: Decoder) -> None:
    """A bright real detection's difference peaks at the centre, well above the noise."""
    checked = 0
    for simulated in simulate("ztf", 200, seed=2):
        alert = decoder.decode(simulated.data)
        candidate = alert.candidate
        if simulated.kind != "supernova" or candidate["magpsf"] > candidate["diffmaglim"] - 2:
            continue
        difference = _stamp_images(alert)[2]
        if difference.shape != (63, 63):
            continue
        row, column = np.unravel_index(np.nanargmax(difference), difference.shape)
        assert abs(row - 31) <= 2 and abs(column - 31) <= 2
        assert np.nanmax(difference[28:35, 28:35]) > 5 * np.nanstd(difference[:15, :15])
        checked += 1
    assert checked >= 3


def test_fits_writer_round_trips() -> None:
    astropy_fits = pytest.importorskip("astropy.io.fits")
    image = np.arange(63 * 45, dtype=np.float32).reshape(45, 63) - 100.5
    image[:3] = np.nan
    data = fits_image(image, [("BUNIT", "DN"), ("MAGZP", 26.275), ("FLAG", False)])
    with astropy_fits.open(io.BytesIO(data)) as hdus:
        assert hdus[0].header["NAXIS1"] == 63 and hdus[0].header["NAXIS2"] == 45
        assert hdus[0].header["BUNIT"] == "DN" and hdus[0].header["MAGZP"] == 26.275
        np.testing.assert_array_equal(hdus[0].data, image)


def test_ztf_files_are_standard_avro(decoder: Decoder) -> None:
    """fastavro's own reader reads them: the container framing is standard."""
    for raw in iter_alerts("ztf", 5, seed=3):
        (record,) = list(fastavro.reader(io.BytesIO(raw)))
        assert record == dict(decoder.decode(raw).packet)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="known: decam, lsst, pgir, turbo, winter, ztf"):
        list(iter_alerts("hubble", 1))
    with pytest.raises(ValueError, match=">= 0"):
        list(iter_alerts("ztf", -1))
    with pytest.raises(ValueError, match="seed=-2"):
        list(iter_alerts("ztf", 1, seed=-2))
    assert list(iter_alerts("lsst", 0)) == []


def test_cli_writes_the_same_bytes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--survey", "lsst", "--n", "4", "--out", str(tmp_path / "o")]) == 0
    written = sorted((tmp_path / "o").glob("*.avro"))
    expected = {f"{alert.name}.avro": alert.data for alert in simulate("lsst", 4, seed=0)}
    assert {path.name: path.read_bytes() for path in written} == expected
    assert "wrote 4 lsst alerts" in capsys.readouterr().out
