"""Dask glue: load the models once per worker process, and the task that scores a batch.

Input: `ModelSettings` (shipped to workers with the plugin) and batches of `ScoringInput`.
Output: `AlertResult` lists. Without the plugin (in-process calls, tests) an Annotator is
built lazily from the default settings, once per process.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from typing import Any

import distributed

from broker.records import AlertResult, ScoringInput
from broker.settings import ModelSettings, load_settings
from workers.annotate import Annotator

log = logging.getLogger(__name__)

PLUGIN_NAME = "nightjar-annotator"
# The worker attribute that holds the process's Annotator.
WORKER_ATTRIBUTE = "nightjar_annotator"
# ... and the ModelSettings it was built from.
SETTINGS_ATTRIBUTE = "nightjar_annotator_settings"
# Test-only, read in the worker process (the broker's is broker.consume.TEST_CRASH_ENV):
# a worker scoring an alert whose objectId holds this text exits as an OOM kill would.
TEST_WORKER_CRASH_ENV = "NIGHTJAR_TEST_WORKER_CRASH_MARKER"

_fallback: Annotator | None = None
_fallback_lock = threading.Lock()


class AnnotatorPlugin(distributed.WorkerPlugin):
    """Registered by the dispatcher: `client.register_plugin(AnnotatorPlugin(settings.models))`."""

    name = PLUGIN_NAME

    def __init__(self, models: ModelSettings) -> None:
        self.models = models

    def setup(self, worker: distributed.Worker) -> None:
        models = with_worker_environment(self.models)
        # Every broker sharing an external cluster registers this plugin when it starts (or
        # restarts): same settings, same models, so the loaded ones are kept, not reloaded.
        if getattr(worker, SETTINGS_ATTRIBUTE, None) == models and isinstance(
            getattr(worker, WORKER_ATTRIBUTE, None), Annotator
        ):
            log.info("worker %s keeps its models (same settings)", worker.address)
            return
        annotator = Annotator.from_settings(models)
        # One attribute swap: a task in flight keeps the Annotator it already holds.
        setattr(worker, WORKER_ATTRIBUTE, annotator)
        setattr(worker, SETTINGS_ATTRIBUTE, models)
        log.info("worker %s loaded models: %s", worker.address, annotator.describe()["models"])

    def teardown(self, worker: distributed.Worker) -> None:
        # Dask tears the plugin down before a re-registration sets it up again (another
        # broker joining the cluster): the models stay loaded so that the tasks of the
        # brokers already running never meet a worker without them; they go with the worker.
        return None


def with_worker_environment(models: ModelSettings) -> ModelSettings:
    """The broker's model settings, with this worker's own NIGHTJAR_MODELS__* variables on top.

    A worker knows its hardware: e.g. NIGHTJAR_MODELS__PROVIDER=cuda on a GPU worker of a
    cluster whose broker runs on a CPU machine.
    """
    prefix = "NIGHTJAR_MODELS__"
    overrides: dict[str, Any] = {}
    for name, value in os.environ.items():
        if name.startswith(prefix):
            key = name[len(prefix) :].lower()
            overrides[key] = json.loads(value) if value.startswith("[") else value
    if not overrides:
        return models
    return ModelSettings.model_validate({**models.model_dump(), **overrides})


def annotate_batch(batch: list[ScoringInput]) -> list[AlertResult]:
    """The Dask task: annotate one batch with this worker's (or this process's) Annotator."""
    crash_if_marked(batch)
    return current_annotator().annotate(batch)


def crash_if_marked(batch: list[ScoringInput]) -> None:
    """Test-only: the worker process dies hard on an alert whose objectId holds the text of
    TEST_WORKER_CRASH_ENV (production never sets it)."""
    marker = os.environ.get(TEST_WORKER_CRASH_ENV)
    if marker and any(marker in item.object_id for item in batch):
        log.error("test worker crash marker found: exiting with status 137")
        os._exit(137)


def current_annotator() -> Annotator:
    try:
        worker = distributed.get_worker()
    except ValueError:
        worker = None  # not inside a Dask worker
    if worker is not None:
        annotator = getattr(worker, WORKER_ATTRIBUTE, None)
        if isinstance(annotator, Annotator):
            return annotator
    return _process_annotator()


def _process_annotator() -> Annotator:
    global _fallback
    with _fallback_lock:
        if _fallback is None:
            log.info("no %s plugin on this worker: loading models from settings", PLUGIN_NAME)
            _fallback = Annotator.from_settings(load_settings().models)
        return _fallback
