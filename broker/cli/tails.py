"""`nightjar tails simulate|train|reexport|frames|evaluate`: Tails comet detection with our
own detector.

simulate: seeded triplets (.npz shards) or whole synthetic quadrants (FITS). train: a detector
-> ONNX + card. reexport: a trained detector's weights through the current serving graph.
frames: quadrant FITS (local, URLs or a ZTF exposure name) -> CSV + PNGs. evaluate: a
held-out simulated set -> evaluation.json + figures (and the model card).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from broker.errors import ConfigError
from broker.settings import Settings, load_settings
from workers.models.tails_contract import PRODUCTION_THRESHOLD

if TYPE_CHECKING:
    from broker.tools.tails.detector import Provider


log = logging.getLogger(__name__)

DEFAULT_CACHE = Path(".nightjar/tails/images")
IMAGE_SUFFIXES = (".fits", ".fits.fz", ".fits.gz", ".fz")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tails", help="Tails comet detection: simulate, train, evaluate, run on frames"
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    _simulate_parser(actions)
    _train_parser(actions)
    _reexport_parser(actions)
    _frames_parser(actions)
    _evaluate_parser(actions)
    parser.set_defaults(run=run)


def _simulate_parser(actions: argparse._SubParsersAction) -> None:
    sim = actions.add_parser("simulate", help="write seeded synthetic triplets (.npz shards)")
    sim.add_argument("--n", type=_count, default=None, help="number of triplets")
    sim.add_argument("--out", type=Path, required=True, help="output folder (created)")
    sim.add_argument("--seed", type=_count, default=0, help="random seed (default 0)")
    sim.add_argument(
        "--placement",
        choices=("stamp", "box"),
        default="stamp",
        help="stamp: 63 px alert cutouts centred on the detection; box: 256 px frame boxes",
    )
    sim.add_argument("--comet-fraction", type=_fraction, default=0.5)
    sim.add_argument(
        "--backgrounds",
        type=Path,
        action="append",
        default=[],
        metavar="ALERTS",
        help="paint onto real alert cutouts instead of simulated fields: ZTF .avro files, "
        "folders or nightly .tar.gz archives (repeatable; stamps only)",
    )
    sim.add_argument(
        "--quadrants",
        type=_count,
        default=None,
        help="instead: this many whole synthetic quadrants as FITS triplets + truth.csv",
    )
    sim.add_argument("--comets", type=_count, default=5, help="comets per quadrant (default 5)")


def _train_parser(actions: argparse._SubParsersAction) -> None:
    train = actions.add_parser("train", help="train a detector; write <name>.onnx + <name>.json")
    train.add_argument("--out", type=Path, required=True, help="output folder (created)")
    train.add_argument("--name", default="tails_default", help="file stem (default tails_default)")
    train.add_argument("--n", type=_count, default=32_000, help="simulated training triplets")
    train.add_argument("--seed", type=_count, default=1)
    train.add_argument("--data", type=Path, default=None, help="train on these shards instead")
    train.add_argument("--validation", type=_count, default=2_000, help="held-out triplets")
    train.add_argument("--epochs", type=_positive, default=12)
    train.add_argument("--batch", type=_positive, default=64)
    train.add_argument("--learning-rate", type=float, default=3e-3)
    train.add_argument("--comet-fraction", type=_fraction, default=0.4)
    train.add_argument(
        "--hard-negatives",
        type=_positive_float,
        default=1.0,
        metavar="X",
        help="weight point-source and asteroid look-alikes X times among training negatives",
    )
    train.add_argument(
        "--hard-comets",
        type=_fraction,
        default=0.0,
        metavar="F",
        help="draw this share of training comets from the compact population (small comae, "
        "short or no tails: the hardest to tell from point sources); default 0",
    )
    train.add_argument(
        "--backgrounds",
        type=Path,
        action="append",
        default=[],
        metavar="ALERTS",
        help="real alert files (as for simulate) whose cutouts are the backgrounds of "
        "--background-fraction of the training stamps",
    )
    train.add_argument("--background-fraction", type=_fraction, default=0.5)
    train.add_argument("--threads", type=_positive, default=2, help="TensorFlow threads")
    train.add_argument(
        "--widths",
        default="16,24,32,48,48",
        help="channels of the five convolution stages (default 16,24,32,48,48)",
    )


def _frames_parser(actions: argparse._SubParsersAction) -> None:
    from broker.tools.tails.detector import DEFAULT_MODEL

    frames = actions.add_parser(
        "frames", help="detect comets in whole quadrants (FITS: files, URLs or a folder)"
    )
    frames.add_argument(
        "sources",
        nargs="*",
        metavar="SOURCE",
        help="SCIENCE REFERENCE DIFFERENCE (paths or URLs), or one folder of "
        "<stem>_sciimg/_refimg/_scimrefdiffimg FITS triplets",
    )
    frames.add_argument(
        "--exposure",
        action="append",
        default=[],
        metavar="NAME",
        help="a ZTF quadrant, e.g. ztf_20191014495961_000570_zr_c05_o_q3: images fetched "
        "from the archive (repeatable)",
    )
    frames.add_argument("--archive-url", default=None, help="archive root (default: IRSA's)")
    for kind in ("science", "reference", "difference"):
        frames.add_argument(
            f"--{kind}-template", default=None, help=f"URL template of the {kind} image"
        )
    frames.add_argument("--out", type=Path, default=Path("tails-detections"))
    frames.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    frames.add_argument(
        "--threshold",
        type=_fraction,
        default=None,
        help="detection threshold (default: the model card's FPR 0.1%% point on 256 px boxes, "
        f"else {PRODUCTION_THRESHOLD})",
    )
    frames.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="downloaded images")
    frames.add_argument("--threads", type=_positive, default=2)


def _reexport_parser(actions: argparse._SubParsersAction) -> None:
    from broker.tools.tails.detector import DEFAULT_MODEL

    again = actions.add_parser(
        "reexport",
        help="export a trained detector's weights again through the current serving graph "
        "(refused unless it computes the same scores)",
    )
    again.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    again.add_argument("--card", type=Path, default=None, help="default: MODEL with .json")
    again.add_argument("--out", type=Path, required=True, help="output folder (created)")
    again.add_argument("--name", default=None, help="file stem (default: the model's)")


def _evaluate_parser(actions: argparse._SubParsersAction) -> None:
    from broker.tools.tails.detector import DEFAULT_MODEL

    evaluate = actions.add_parser("evaluate", help="score a held-out simulated set")
    evaluate.add_argument("--data", type=Path, required=True, help="shards (tails simulate)")
    evaluate.add_argument("--out", type=Path, required=True, help="folder for JSON and PNGs")
    evaluate.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    evaluate.add_argument("--threads", type=_positive, default=2)
    evaluate.add_argument(
        "--card", type=Path, default=None, help="also record the numbers in this model card"
    )


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    if args.action == "simulate":
        return _simulate(args, settings)
    if args.action == "train":
        return _train(args, settings)
    if args.action == "reexport":
        return _reexport(args)
    if args.action == "frames":
        return _frames(args, settings.models.provider)
    return _evaluate(args)


def _simulate(args: argparse.Namespace, settings: Settings) -> int:
    from broker.tools.tails import quadrant, simulate

    started = time.perf_counter()
    if args.quadrants is not None:
        if args.backgrounds:
            raise ConfigError("--backgrounds are alert cutouts: not for --quadrants")
        return _simulate_quadrants(args, quadrant)
    if args.n is None:
        raise ConfigError("tails simulate needs --n (triplets) or --quadrants (FITS frames)")
    if args.backgrounds and args.placement != "stamp":
        raise ConfigError("--backgrounds are 63 px alert cutouts: use --placement stamp")
    backgrounds = _backgrounds(args.backgrounds, settings) if args.backgrounds else None
    chunks = simulate.iter_chunks(
        args.n, args.seed, args.placement, args.comet_fraction, backgrounds=backgrounds
    )
    data = simulate.Dataset.concatenate(list(simulate.with_progress(chunks, args.n)))
    command = (
        f"nightjar tails simulate --n {args.n} --seed {args.seed} --placement {args.placement} "
        f"--comet-fraction {args.comet_fraction:g}{_background_flags(args.backgrounds)} "
        f"--out {args.out}"
    )
    summary: dict[str, Any] = {"command": command, "seed": args.seed, "placement": args.placement}
    if backgrounds is not None:
        summary["backgrounds"] = backgrounds.summary()
    paths = simulate.write(data, args.out, summary)
    comets = int(data.is_comet.sum())
    print(
        f"wrote {len(data)} triplets ({comets} comets) in {len(paths)} shards to {args.out} "
        f"in {time.perf_counter() - started:.1f} s"
    )
    return 0


def _background_flags(paths: list[Path], fraction: float | None = None) -> str:
    """The --backgrounds part of a recorded command ('' without backgrounds)."""
    if not paths:
        return ""
    flags = "".join(f" --backgrounds {path}" for path in paths)
    return flags if fraction is None else f"{flags} --background-fraction {fraction:g}"


def _backgrounds(paths: list[Path], settings: Settings) -> Any:
    from broker.decode import Decoder
    from broker.tools.tails.backgrounds import NoBackgrounds, load

    try:
        found = load(paths, Decoder(settings.schemas, settings.kafka.max_message_bytes))
    except (NoBackgrounds, FileNotFoundError) as exc:
        raise ConfigError(str(exc)) from None
    skipped = sum(found.skipped.values())
    note = f"; {skipped} not used: {dict(found.skipped)}" if skipped else ""
    print(f"backgrounds: {len(found)} real alert triplets{note}")
    return found


def _simulate_quadrants(args: argparse.Namespace, quadrant: Any) -> int:
    rows: list[dict[str, Any]] = []
    for index in range(args.quadrants):
        seed = args.seed + index
        stem = f"ztf_sim{seed:010d}_000000_zr_c01_o_q1"
        frame = quadrant.simulate_quadrant(seed, comets=args.comets)
        quadrant.write_fits(frame, args.out, stem)
        rows.extend({"frame": stem, **comet} for comet in frame.comets)
    truth = args.out / "truth.csv"
    with truth.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["frame", "x", "y", "snr", "ra", "dec"])
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {args.quadrants} quadrants ({len(rows)} comets) to {args.out}; truth: {truth}")
    return 0


def _train(args: argparse.Namespace, settings: Settings) -> int:
    from broker.tools.tails.network import Architecture
    from broker.tools.tails.train import TrainConfig, train

    widths = _widths(args.widths)
    source = f"--data {args.data}" if args.data else f"--n {args.n} --seed {args.seed}"
    on_real = _background_flags(args.backgrounds, args.background_fraction)
    command = (
        f"nightjar tails train {source} --validation {args.validation} --epochs {args.epochs} "
        f"--batch {args.batch} --learning-rate {args.learning_rate:g} "
        f"--comet-fraction {args.comet_fraction:g} --hard-negatives {args.hard_negatives:g} "
        f"--hard-comets {args.hard_comets:g}{on_real} --threads {args.threads} "
        f"--widths {','.join(map(str, widths))} --name {args.name} --out {args.out}"
    )
    config = TrainConfig(
        out=args.out,
        name=args.name,
        n=args.n,
        seed=args.seed,
        data=args.data,
        validation=args.validation,
        comet_fraction=args.comet_fraction,
        hard_negatives=args.hard_negatives,
        hard_comets=args.hard_comets,
        backgrounds=tuple(args.backgrounds),
        background_fraction=args.background_fraction,
        epochs=args.epochs,
        batch=args.batch,
        learning_rate=args.learning_rate,
        threads=args.threads,
        architecture=Architecture(widths),
        command=command,
    )
    if args.backgrounds and args.data:
        raise ConfigError("--backgrounds are for simulated training data, not with --data")
    backgrounds = _backgrounds(args.backgrounds, settings) if args.backgrounds else None
    card = train(config, backgrounds)
    onnx = card["onnx"]
    print(
        f"wrote {args.out / (args.name + '.onnx')} ({onnx['bytes']} bytes, sha256 "
        f"{onnx['sha256']}) in {card['training']['training_seconds']:.0f} s of training; "
        f"max |ONNX - TF| {onnx['max_abs_diff_stamps']:.2g} (stamps), "
        f"{onnx['max_abs_diff_boxes']:.2g} (boxes)"
    )
    return 0


def _reexport(args: argparse.Namespace) -> int:
    from broker.tools.tails.reexport import reexport

    card = args.card or args.model.with_suffix(".json")
    name = args.name or args.model.stem
    for path in (args.model, card):
        if not path.is_file():
            raise ConfigError(f"tails reexport: {path} does not exist")
    command = (
        f"nightjar tails reexport --model {_shown(args.model)} --card {_shown(card)} "
        f"--out {_shown(args.out)} --name {name}"
    )
    new = reexport(args.model, card, args.out, name, command)
    print(
        f"wrote {args.out / (name + '.onnx')} (sha256 {new['onnx']['sha256']}): scores within "
        f"{new['reexport']['max_abs_diff_vs_previous']:.2g} of {args.model}; run `nightjar "
        "tails evaluate --card` again to record its timing"
    )
    return 0


def _frames(args: argparse.Namespace, provider: Provider) -> int:
    from broker.tools.tails import frames, images
    from broker.tools.tails.detector import Detector, frame_threshold

    triplets = _frame_sources(args, images)
    detector = Detector(args.model, threads=args.threads, provider=provider)
    threshold = args.threshold
    if threshold is None:
        threshold, why = frame_threshold(args.model)
        print(f"threshold {threshold:.4f}: {why}")
    total = 0
    for sources in triplets:
        frame = images.load_frame(sources, args.cache)
        found = frames.detect(detector, frame, threshold)
        path = frames.write(found, frame, args.out)
        total += len(found)
        print(f"{frame.name}: {len(found)} detections -> {path}")
    print(f"{total} detections in {len(triplets)} frames")
    return 0


def _frame_sources(args: argparse.Namespace, images: Any) -> list[tuple[str, str, str]]:
    templates = {
        kind: value
        for kind in ("science", "reference", "difference")
        if (value := getattr(args, f"{kind}_template")) is not None
    }
    base = args.archive_url or images.IRSA
    triplets = []
    for name in args.exposure:
        urls = images.exposure_urls(name, base, templates)
        triplets.append((urls["science"], urls["reference"], urls["difference"]))
    if len(args.sources) == 3:
        triplets.append(tuple(args.sources))
    elif len(args.sources) == 1 and Path(args.sources[0]).is_dir():
        triplets.extend(folder_triplets(Path(args.sources[0])))
    elif args.sources:
        raise ConfigError(
            "tails frames takes SCIENCE REFERENCE DIFFERENCE, one folder of triplets, or "
            f"--exposure NAME; got {len(args.sources)} paths ({' '.join(args.sources)})"
        )
    if not triplets:
        raise ConfigError("tails frames: nothing to do (give images, a folder or --exposure)")
    return triplets


def folder_triplets(folder: Path) -> list[tuple[str, str, str]]:
    """<stem>_sciimg.* files with their <stem>_refimg.* and <stem>_scimrefdiffimg.* siblings."""
    triplets = []
    for science in sorted(folder.glob("*_sciimg.fits*")):
        stem = science.name.split("_sciimg")[0]
        reference = _sibling(folder, stem, "refimg")
        difference = _sibling(folder, stem, "scimrefdiffimg")
        triplets.append((str(science), str(reference), str(difference)))
    if not triplets:
        raise ConfigError(f"{folder} holds no <stem>_sciimg.fits files")
    return triplets


def _sibling(folder: Path, stem: str, suffix: str) -> Path:
    for extension in IMAGE_SUFFIXES:
        path = folder / f"{stem}_{suffix}{extension}"
        if path.is_file():
            return path
    raise ConfigError(f"{folder}: {stem}_sciimg has no {stem}_{suffix}.fits[.fz|.gz] beside it")


def _evaluate(args: argparse.Namespace) -> int:
    from broker.tools.tails.evaluate import evaluate

    try:
        summary = evaluate(args.model, args.data, args.out, args.threads)
    except FileNotFoundError as exc:
        raise ConfigError(str(exc)) from exc
    point = summary["operating_points"]["fpr_0.001"]
    rms = summary["position_rms_px"]["snr_ge_10_all"]
    print(
        f"{summary['examples']} triplets ({summary['comets']} comets): "
        f"recall {point['recall']:.4f} "
        f"(SNR >= 10: {point['recall_snr_ge_10']:.4f}) at FPR {point['fpr']:.4f}; position RMS "
        f"(SNR >= 10) {rms:.2f} px; {summary['cpu_ms_per_example_1_thread']:.3f} ms per "
        f"triplet on 1 CPU thread -> {args.out / 'evaluation.json'}"
    )
    if args.card is not None:
        _record(args, summary)
    return 0


def _record(args: argparse.Namespace, summary: dict[str, Any]) -> None:
    """Merge the evaluation (and the commands that made its data) into a model card."""
    try:
        card = json.loads(args.card.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--card {args.card} is not a readable JSON model card: {exc}") from exc
    data_info = args.data / "dataset.json"
    dataset = json.loads(data_info.read_text()) if data_info.is_file() else {}
    keep = (
        "examples",
        "comets",
        "negatives",
        "image_size",
        "roc_auc",
        "operating_points",
        "position_rms_px",
        "recall_vs_snr",
        "recall_snr_ge_10_by_morphology",
        "false_positive_rate_by_kind",
        "cpu_ms_per_example_1_thread",
    )
    entry = {key: summary[key] for key in keep}
    entry["data_command"] = dataset.get("command")
    entry["command"] = (
        f"nightjar tails evaluate --data {args.data} --model {_shown(args.model)} --out {args.out}"
    )
    card.setdefault("evaluation", {})[f"{summary['image_size']}px"] = entry
    args.card.write_text(json.dumps(card, indent=2) + "\n")
    print(f"recorded the evaluation in {args.card}")


def _shown(path: Path) -> Path:
    """`path` relative to the working folder when inside it (cards are committed)."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return path


def _widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(f"--widths {text!r}: five comma-separated integers") from None
    if len(widths) != 5 or min(widths) <= 0:
        raise ConfigError(f"--widths {text!r}: five positive comma-separated integers")
    return widths


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {value}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be within [0, 1], not {value}")
    return value
