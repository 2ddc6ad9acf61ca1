"""`nightjar score PATH...`: score alert files offline, one JSON line per alert.

Input: .avro files or folders of them (ZTF container files, Confluent-framed Rubin alerts).
Output on stdout: survey, candid, objectId and annotations {name: {score, version}}, or
rejected {reason, detail}. No Kafka, no MongoDB: the history is the packet's own.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from broker import pipeline
from broker.decode import Decoder
from broker.errors import BadAlert, ConfigError
from broker.records import Alert, AlertResult, ScoringInput
from broker.settings import load_settings
from workers.annotate import Annotator

BATCH = 256


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "score", help="score .avro alert files with the installed models (no Kafka/MongoDB)"
    )
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help=".avro file or folder")
    parser.add_argument("--models-dir", type=Path, default=None, help="override models.dir")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    models = settings.models
    if args.models_dir is not None:
        models = models.model_copy(update={"dir": args.models_dir})
    files = list(alert_files(args.paths))
    annotator = Annotator.from_settings(models)
    decoder = Decoder(settings.schemas, settings.kafka.max_message_bytes)
    pending: list[tuple[Path, Alert | BadAlert]] = []
    for path in files:
        try:
            pending.append((path, decoder.decode(path.read_bytes())))
        except BadAlert as exc:
            pending.append((path, exc))
        if len(pending) >= BATCH:
            _score(annotator, pending)
            pending = []
    _score(annotator, pending)
    return 0


def alert_files(paths: Sequence[Path]) -> Iterator[Path]:
    """The .avro files named, and those under the folders named, in sorted order."""
    for path in paths:
        if path.is_dir():
            yield from sorted(path.rglob("*.avro"))
        elif path.is_file():
            yield path
        else:
            raise ConfigError(f"{path} is neither a file nor a folder")


def scoring_input(alert: Alert) -> ScoringInput:
    """The worker's view of an alert scored offline: the packet's history only, merged and
    ordered exactly as the streaming pipeline does (so scores match the stored ones)."""
    return pipeline.scoring_input(alert, {})


def _score(annotator: Annotator, pending: Sequence[tuple[Path, Alert | BadAlert]]) -> None:
    """Score the decoded alerts as one batch; print every line in file order."""
    alerts = [item for _, item in pending if isinstance(item, Alert)]
    results = iter(annotator.annotate([scoring_input(alert) for alert in alerts]))
    for path, item in pending:
        if isinstance(item, BadAlert):
            _emit({"file": str(path), "rejected": {"reason": item.reason, "detail": item.detail}})
        else:
            _emit(line(path, item, next(results)))


def line(path: Path, alert: Alert, result: AlertResult) -> dict[str, Any]:
    """The JSON document printed for one scored alert."""
    doc: dict[str, Any] = {
        "file": str(path),
        "survey": alert.survey,
        "candid": alert.candid,
        "objectId": alert.object_id,
    }
    if result.rejected is not None:
        reason, detail = result.rejected
        doc["rejected"] = {"reason": reason, "detail": detail}
        return doc
    doc["annotations"] = {
        a.model: {"score": a.score, "version": a.version, **({"extra": a.extra} if a.extra else {})}
        for a in result.annotations
    }
    if result.skipped:
        doc["skipped"] = {skip.model: skip.reason for skip in result.skipped}
    return doc


def _emit(doc: dict[str, Any]) -> None:
    print(json.dumps(doc), file=sys.stdout)
