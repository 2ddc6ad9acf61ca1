"""broker.tools.tails simulation and contract: reproducible triplets, honest labels, exact SNRs,
the Tails preprocessing, box tessellation, duplicate merging and stamp-offset sky positions."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest

import broker.__main__
from broker.__main__ import main
from broker.tools.tails import simulate as sim
from broker.tools.tails.canvas import Objects, Params, paint
from broker.tools.tails.field import Conditions, star_profile
from broker.tools.tails.frames import Detection, box_starts, merge
from broker.tools.tails.profiles import moffat
from broker.tools.tails.quadrant import simulate_quadrant
from broker.tools.tails.simulate import Dataset, iter_chunks
from broker.tools.tails.subjects import (
    COMPACT_RADIUS,
    HARD_NEGATIVES,
    KINDS,
    NEGATIVES,
    SNR_RANGE,
    negative_mix,
    psf_fit_snr,
)
from workers.models.tails_contract import offset_to_sky, preprocess


@pytest.fixture
def tails_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    """`nightjar tails` whether or not this checkout lists it in broker.__main__.COMMANDS yet."""
    if "tails" not in broker.__main__.COMMANDS:
        monkeypatch.setattr(broker.__main__, "COMMANDS", (*broker.__main__.COMMANDS, "tails"))


@pytest.fixture(scope="module")
def stamps() -> sim.Dataset:
    return sim.simulate(600, seed=11)


def test_same_seed_same_triplets_and_labels() -> None:
    first, again, other = sim.simulate(300, 5), sim.simulate(300, 5), sim.simulate(300, 6)
    assert np.array_equal(first.images, again.images, equal_nan=True)
    for name in sim.LABELS:
        left, right = getattr(first, name), getattr(again, name)
        assert np.array_equal(left, right, equal_nan=left.dtype.kind == "f"), name
    assert not np.array_equal(first.images, other.images, equal_nan=True)


def test_labels_describe_the_stamps(stamps: sim.Dataset) -> None:
    assert stamps.images.shape == (600, 63, 63, 3) and stamps.images.dtype == np.float32
    assert stamps.is_comet.sum() == 300  # exact fraction per chunk
    assert set(stamps.kind.tolist()) <= set(KINDS)
    assert len(set(stamps.kind[~stamps.is_comet].tolist())) >= 6  # every kind of negative
    assert np.all(stamps.kind[stamps.is_comet] == "comet")
    comets = stamps.is_comet
    for axis in (stamps.x, stamps.y):
        assert np.all((axis[comets] >= 4) & (axis[comets] <= 58))
    assert np.all((stamps.snr[comets] >= SNR_RANGE[0]) & (stamps.snr[comets] <= SNR_RANGE[1]))
    # ZTF centres an alert's cutouts on the detection: most comets sit near pixel (31, 31).
    centred = np.hypot(stamps.x[comets] - 31, stamps.y[comets] - 31) < 6
    assert 0.35 < centred.mean() < 0.8


def test_comets_are_extended_and_point_sources_are_not(stamps: sim.Dataset) -> None:
    """Second moment of the difference within 8 px of the truth, for bright sources."""

    def radius(index: np.integer) -> float:
        diff = np.nan_to_num(stamps.images[index, :, :, 2])
        rows, cols = np.indices(diff.shape)
        dist = np.hypot(cols - stamps.x[index], rows - stamps.y[index])
        near = (dist < 8) & (diff > 0)
        return float(np.sqrt(np.sum(diff[near] * dist[near] ** 2) / np.sum(diff[near])))

    bright = stamps.snr > 40
    comets = [radius(i) for i in np.flatnonzero(bright & stamps.is_comet)]
    points = [radius(i) for i in np.flatnonzero(bright & (stamps.kind == "point_source"))]
    assert len(comets) > 20 and len(points) > 3
    assert np.median(comets) > np.median(points) + 0.5


def test_painting_to_an_snr_gives_that_matched_filter_snr() -> None:
    canvas = np.zeros((2, 40, 40))
    objects = Objects(np.array([0, 1]), np.array([20.3, 15.0]), np.array([19.6, 22.2]), {})
    objects.params["fwhm"] = np.array([2.0, 3.0])

    def psf(dx: np.ndarray, dy: np.ndarray, p: Params) -> np.ndarray:
        return moffat(dx, dy, p["fwhm"])

    sigma = np.array([7.0, 12.0])
    paint(canvas, objects, psf, 15, np.array([10.0, 25.0]), "snr", sigma)
    got = np.sqrt(np.sum(canvas**2, axis=(1, 2))) / sigma
    assert np.allclose(got, [10.0, 25.0], rtol=1e-9)


@pytest.mark.usefixtures("tails_cli")
def test_cli_writes_shards_that_read_back_identically(tmp_path: Path) -> None:
    out = tmp_path / "set"
    assert main(["tails", "simulate", "--n", "300", "--seed", "3", "--out", str(out)]) == 0
    read = sim.read(out)
    expected = sim.simulate(300, 3)
    assert np.array_equal(read.images, expected.images, equal_nan=True)
    assert np.array_equal(read.kind, expected.kind)
    assert (out / sim.SUMMARY).is_file()


def test_psf_fit_snr_equals_the_painted_snr_for_a_point_source_and_is_less_for_comets(
    stamps: sim.Dataset,
) -> None:
    cond = Conditions.draw(np.random.default_rng(3), 2)
    canvas = np.zeros((2, 63, 63))
    objects = Objects(np.array([0, 1]), np.array([30.2, 20.7]), np.array([31.6, 40.1]), {})
    objects.params.update(fwhm=cond.fwhm, sx=np.zeros(2), sy=np.zeros(2))
    paint(canvas, objects, star_profile, 12, np.array([12.0, 40.0]), "snr", cond.difference_noise)
    assert np.allclose(psf_fit_snr(canvas, objects, cond), [12.0, 40.0], rtol=1e-6)
    comets = stamps.is_comet
    ratio = stamps.psf_snr[comets] / stamps.snr[comets]
    assert np.all((ratio > 0.3) & (ratio <= 1.0 + 1e-6))
    # The more extended the coma, the less of it a PSF fit catches.
    large, small = stamps.coma_radius[comets] >= 6, stamps.coma_radius[comets] < 3
    assert np.median(ratio[large]) < np.median(ratio[small])


def test_comet_morphology_is_labelled_and_old_shards_still_read(
    stamps: sim.Dataset, tmp_path: Path
) -> None:
    comets = stamps.is_comet
    for label in sim.OPTIONAL_LABELS:
        values = getattr(stamps, label)
        assert np.isfinite(values[comets]).all() and np.isnan(values[~comets]).all(), label
    assert np.all((stamps.coma_radius[comets] >= 2.0) & (stamps.coma_radius[comets] <= 10.0))
    tailless = stamps.tail_length[comets] == 0
    assert 0.05 < tailless.mean() < 0.3  # 15% are drawn without a tail
    assert np.all(stamps.tail_length[comets][~tailless] >= 3.0)
    # A shard written before the morphology labels existed reads back with them unknown.
    labels = {n: v for n, v in stamps.labels().items() if n not in sim.OPTIONAL_LABELS}
    np.savez(tmp_path / "part-0000.npz", images=stamps.images, **labels)  # type: ignore[arg-type]
    old = sim.read(tmp_path)
    assert np.array_equal(old.snr, stamps.snr) and np.isnan(old.tail_length).all()


def test_boxes_put_subjects_anywhere() -> None:
    boxes = sim.simulate(16, 2, placement="box")
    assert boxes.images.shape == (16, 256, 256, 3)
    comets = boxes.is_comet
    assert comets.sum() == 8
    assert boxes.x[comets].max() - boxes.x[comets].min() > 100


def test_preprocess_follows_the_tails_contract() -> None:
    rng = np.random.default_rng(0)
    raw = rng.normal(100.0, 10.0, (3, 20, 20, 3)).astype(np.float32)
    raw[0, 0, :5, 0] = np.nan  # science NaNs -> median of the finite science pixels
    raw[0, 3, 3, 2] = -500.0  # a masked-star residual in the difference -> 0
    raw[1, :, :, 2] = 0.0  # zero-norm difference: not scoreable
    raw[2, :, :, 1] = np.nan  # all-NaN reference: not scoreable
    inputs, reasons = preprocess(raw)
    assert reasons[0] is None
    assert reasons[1] == "difference channel has L2 norm 0"
    assert reasons[2] == "reference channel is all NaN"
    science = raw[0, :, :, 0].copy()
    science[0, :5] = np.median(science[np.isfinite(science)])
    assert np.allclose(inputs[0, :, :, 0], science / np.linalg.norm(science), atol=1e-7)
    assert inputs[0, 3, 3, 2] == 0.0
    assert np.allclose(np.linalg.norm(inputs[0], axis=(0, 1)), 1.0, atol=1e-6)
    assert not inputs[1].any() and not inputs[2].any()
    with pytest.raises(ValueError, match="N, H, W, 3"):
        preprocess(raw[0])


def test_stamp_offsets_become_sky_offsets_north_up_east_left() -> None:
    ra, dec = offset_to_sky(150.0, 60.0, 0.0, 10.0)
    assert ra == pytest.approx(150.0) and dec == pytest.approx(60.0 + 10.1 / 3600)
    ra, dec = offset_to_sky(150.0, 60.0, 10.0, 0.0)
    assert ra == pytest.approx(150.0 - 10.1 / 3600 / math.cos(math.radians(60.0)))
    ra, _ = offset_to_sky(0.0001, 0.0, 10.0, 0.0)
    assert ra == pytest.approx(360.0 + 0.0001 - 10.1 / 3600)


@pytest.mark.parametrize("length", [256, 300, 3072, 3080])
def test_boxes_cover_the_frame_with_at_least_the_overlap(length: int) -> None:
    starts = box_starts(length)
    assert starts[0] == 0 and starts[-1] + 256 == length
    assert all(b - a <= 236 for a, b in itertools.pairwise(starts))


def test_duplicates_from_overlapping_boxes_are_merged() -> None:
    found = [
        Detection("f", 0.8, 250.0, 100.0, 0, 0, 0, 0),
        Detection("f", 0.95, 252.0, 101.0, 0, 0, 236, 0),
        Detection("f", 0.9, 600.0, 100.0, 0, 0, 472, 0),
    ]
    kept = merge(found)
    assert [d.score for d in kept] == [0.95, 0.9]


def test_a_quadrant_has_its_comets_where_its_wcs_says() -> None:
    quadrant = simulate_quadrant(4, comets=3, shape=(600, 520))
    assert quadrant.images.shape == (600, 520, 3)
    sky = quadrant.wcs.all_pix2world([[c["x"], c["y"]] for c in quadrant.comets], 0)
    for comet, (ra, dec) in zip(quadrant.comets, sky, strict=True):
        assert (comet["ra"], comet["dec"]) == pytest.approx((ra, dec))
        x, y = round(comet["x"]), round(comet["y"])
        window = quadrant.images[y - 2 : y + 3, x - 2 : x + 3, 2]
        noise = np.nanstd(quadrant.images[:50, :50, 2])
        assert np.nanmax(window) > 2 * noise  # something is in the difference there


def test_training_can_weight_up_the_hard_look_alikes() -> None:
    mix = negative_mix(3.0)
    assert sum(mix.values()) == pytest.approx(1.0)
    for kind in HARD_NEGATIVES:
        assert mix[kind] > NEGATIVES[kind]
    assert mix["cosmic_ray"] < NEGATIVES["cosmic_ray"]
    assert negative_mix(1.0) == pytest.approx(NEGATIVES)
    with pytest.raises(ValueError, match="> 0"):
        negative_mix(0.0)
    hard = Dataset.concatenate(list(iter_chunks(400, 3, "stamp", 0.0, negative_mix(4.0))))
    plain = Dataset.concatenate(list(iter_chunks(400, 3, "stamp", 0.0)))

    def share(data: Dataset) -> float:
        return float(np.isin(data.kind, HARD_NEGATIVES).mean())

    assert share(hard) > share(plain) + 0.2


def test_training_can_draw_more_compact_comets_without_changing_held_out_sets() -> None:
    plain = Dataset.concatenate(list(iter_chunks(512, 8, "stamp", 1.0)))
    again = Dataset.concatenate(list(iter_chunks(512, 8, "stamp", 1.0, compact=0.0)))
    assert np.array_equal(plain.images, again.images, equal_nan=True)  # the default stream
    hard = Dataset.concatenate(list(iter_chunks(512, 8, "stamp", 1.0, compact=0.6)))
    low, high = COMPACT_RADIUS
    small = (hard.coma_radius >= low) & (hard.coma_radius <= high)
    # 0.6 from the compact population plus the natural population's own small comae.
    assert small.mean() > np.mean(plain.coma_radius <= high) + 0.25  # expected +0.34
    assert np.mean(hard.tail_length == 0) > np.mean(plain.tail_length == 0) + 0.15
    assert np.all(hard.coma_radius >= 2.0) and np.all(hard.coma_radius <= 10.0)
    with pytest.raises(ValueError, match="compact-comet share"):
        next(iter_chunks(8, 8, "stamp", 1.0, compact=1.5))


@pytest.fixture(scope="module")
def alert_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Nightjar's own simulated ZTF alerts (real wire format, 63x63 gzip-FITS cutouts),
    plus a file that is not an alert."""
    from broker.tools.simulate import simulate as simulate_alerts

    folder = tmp_path_factory.mktemp("alerts")
    for alert in simulate_alerts("ztf", 12, 4):
        (folder / f"{alert.name}.avro").write_bytes(alert.data)
    (folder / "broken.avro").write_bytes(b"Obj\x01 not really")
    return folder


@pytest.mark.usefixtures("tails_cli")
def test_real_cutouts_as_backgrounds(alert_folder: Path, tmp_path: Path) -> None:
    from broker.decode import Decoder
    from broker.settings import load_settings
    from broker.tools.tails.backgrounds import load

    settings = load_settings(None)
    backgrounds = load([alert_folder], Decoder(settings.schemas, settings.kafka.max_message_bytes))
    assert len(backgrounds) == 12 and sum(backgrounds.skipped.values()) == 1  # counted
    out = tmp_path / "on-real"
    command = ["tails", "simulate", "--n", "300", "--seed", "6", "--out", str(out)]
    assert main([*command, "--backgrounds", str(alert_folder)]) == 0
    summary = json.loads((out / "dataset.json").read_text())
    assert summary["backgrounds"]["stamps"] == 12 and "--backgrounds" in summary["command"]
    data = sim.read(out)
    assert data.images.shape == (300, 63, 63, 3) and data.is_comet.sum() == 150
    # A comet paints science and difference only: its reference is a real cutout, unchanged.
    references = backgrounds.images[..., 1]
    for index in np.flatnonzero(data.is_comet)[:20]:
        same = [
            np.array_equal(data.images[index, ..., 1], ref, equal_nan=True) for ref in references
        ]
        assert any(same)
    # Nothing painted onto the alert's own source at the centre.
    placed = np.isfinite(data.x)
    assert np.all(np.hypot(data.x[placed] - 31, data.y[placed] - 31) >= sim.CLEAR_OF_ALERT)
    again = sim.simulate(300, 6, backgrounds=backgrounds)
    assert np.array_equal(again.images, data.images, equal_nan=True)  # seeded
    with pytest.raises(ValueError, match="stamp only"):
        next(iter_chunks(8, 6, "box", backgrounds=backgrounds))


@pytest.mark.usefixtures("tails_cli")
def test_backgrounds_that_cannot_be_used_are_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "broken.avro").write_bytes(b"not an alert")
    command = ["tails", "simulate", "--n", "8", "--out", str(tmp_path / "out")]
    assert main([*command, "--backgrounds", str(tmp_path)]) == 2
    assert "no usable 63x63 alert triplets" in capsys.readouterr().err
    assert main([*command, "--placement", "box", "--backgrounds", str(tmp_path)]) == 2
    assert "--placement stamp" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_real_ztf_alerts_as_backgrounds(shared_dir: Path) -> None:
    from broker.decode import Decoder
    from broker.settings import load_settings
    from broker.tools.tails.backgrounds import load

    settings = load_settings(None)
    decoder = Decoder(settings.schemas, settings.kafka.max_message_bytes)
    backgrounds = load([shared_dir / "ztf" / "alerts"], decoder)
    # Every file is used or counted with its reason (schema 1.x JPEG stamps, edge cutouts).
    files = len(list((shared_dir / "ztf" / "alerts").rglob("*.avro")))
    assert len(backgrounds) + sum(backgrounds.skipped.values()) == files
    assert len(backgrounds) >= 10
    assert np.all((backgrounds.noise > 0.5) & (backgrounds.noise < 100))  # DN, by the MAD
    data = sim.simulate(128, 3, backgrounds=backgrounds)
    # A comet leaves the reference as it was: that finds its cutout, and the difference
    # minus the cutout's is the comet alone, painted to its SNR in the cutout's own noise.
    references = backgrounds.images[..., 1]
    checked = 0
    for index in np.flatnonzero(data.is_comet):
        reference = data.images[index, ..., 1]
        same = [np.array_equal(reference, ref, equal_nan=True) for ref in references]
        chosen = int(np.argmax(same))
        comet = data.images[index, ..., 2].astype(np.float64) - backgrounds.images[chosen, ..., 2]
        if not same[chosen] or not np.isfinite(comet).all():
            continue  # a saturated pixel: NaN in the difference
        got = np.sqrt(np.sum(comet**2)) / backgrounds.noise[chosen]
        assert got == pytest.approx(data.snr[index], rel=1e-3)
        checked += 1
    assert checked > 40
