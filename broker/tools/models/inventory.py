"""Which of the models `nightjar models fetch` installs by default are installed."""

from __future__ import annotations

from broker.settings import Settings
from workers.models.manifest import read_manifest
from workers.models.registry import load_registry


def model_inventory(settings: Settings) -> tuple[list[str], list[str]]:
    """(installed, missing) among the models `nightjar models fetch` installs by default."""
    registry = load_registry(settings.models.registry)
    installed: list[str] = []
    missing: list[str] = []
    for spec in registry.models.values():
        if not (spec.fetch_default and spec.needs_files):
            continue
        present = read_manifest(settings.models.dir, spec) is not None
        (installed if present else missing).append(spec.name)
    return installed, missing
