"""`nightjar models fetch|list`: install published models as verified ONNX, and show them.

fetch: canonical URLs (or --mirror DIR, offline) -> sha256 check -> ONNX conversion checked
against TensorFlow -> <models dir>/<name>/<version>/. list: one row per registry entry.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from broker.errors import ConfigError, NightjarError
from broker.settings import load_settings
from workers.models.manifest import Manifest, read_manifest
from workers.models.registry import ModelSpec, Registry, load_registry


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("models", help="fetch and list the ML models")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    fetch_parser = actions.add_parser(
        "fetch", help="download, verify and convert models to ONNX (needs the [convert] extra)"
    )
    fetch_parser.add_argument(
        "names", nargs="*", metavar="NAME", help="registry names (default: the default set)"
    )
    fetch_parser.add_argument(
        "--mirror",
        type=Path,
        default=None,
        help="take the files from this folder (or its sub-folders) instead of downloading",
    )
    fetch_parser.add_argument("--models-dir", type=Path, default=None, help="override models.dir")
    fetch_parser.add_argument("--quiet", action="store_true", help="no progress bars")
    list_parser = actions.add_parser("list", help="show the registry and what is installed")
    list_parser.add_argument("--models-dir", type=Path, default=None, help="override models.dir")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    models_dir = args.models_dir or settings.models.dir
    registry = load_registry(settings.models.registry)
    if args.action == "fetch":
        return _fetch(registry, models_dir, args.names, args.mirror, not args.quiet)
    _print_table(registry, models_dir)
    return 0


def _fetch(
    registry: Registry, models_dir: Path, names: list[str], mirror: Path | None, progress: bool
) -> int:
    from broker.tools.models.fetch import fetch

    specs = [registry.get(name) for name in names] or [
        spec for spec in registry.models.values() if spec.fetch_default and spec.needs_files
    ]
    failed = 0
    for spec in specs:
        if not spec.needs_files:
            print(f"{spec.name}: computed from the packet, nothing to fetch")
            continue
        try:
            manifest = fetch(spec, models_dir, mirror, progress)
        except ConfigError:
            raise
        except NightjarError as exc:
            # One bad file must not stop the others; the exit status reports it.
            print(f"{spec.name}: FAILED: {exc}")
            failed += 1
            continue
        diff = "-" if manifest.max_abs_diff is None else f"{manifest.max_abs_diff:.2g}"
        print(f"{spec.name} {spec.version}: installed (max |ONNX - TF| = {diff})")
    return 1 if failed else 0


def _print_table(registry: Registry, models_dir: Path) -> None:
    header = ("name", "version", "survey", "installed", "source sha256", "onnx sha256", "max diff")
    rows = [header] + [_row(spec, models_dir) for spec in registry.models.values()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    print(f"models dir: {models_dir}")


def _row(spec: ModelSpec, models_dir: Path) -> tuple[str, ...]:
    if not spec.needs_files:
        return (spec.name, spec.version, spec.survey, "packet", "-", "-", "-")
    pinned = spec.source.sha256 if spec.source and spec.source.sha256 else "not pinned"
    try:
        manifest: Manifest | None = read_manifest(models_dir, spec)
    except ConfigError:
        return (spec.name, spec.version, spec.survey, "broken", pinned[:12], "-", "-")
    if manifest is None:
        return (spec.name, spec.version, spec.survey, "no", pinned[:12], "-", "-")
    diff = "-" if manifest.max_abs_diff is None else f"{manifest.max_abs_diff:.2g}"
    return (
        spec.name,
        spec.version,
        spec.survey,
        "yes",
        manifest.source_sha256[:12],
        manifest.onnx_sha256[:12],
        diff,
    )
