"""ONNX Runtime sessions for the workers: explicit provider choice, threads, metrics.

Input: an installed model's .onnx path and `ModelSettings`. Output: an `InferenceSession`
on the provider the settings ask for ("cuda" must get CUDA, "auto" takes CUDA when present,
"cpu" forces CPU), verified after creation; never a silent fallback. Worker metrics live here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors
from prometheus_client import Counter, Gauge

from broker.errors import ConfigError
from broker.settings import ModelSettings

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
# What ONNX Runtime raises for a corrupt, truncated or unsupported model file.
ORT_LOAD_ERRORS = (
    ort_errors.Fail,
    ort_errors.InvalidArgument,
    ort_errors.InvalidProtobuf,
    ort_errors.NoSuchFile,
    ort_errors.NotImplemented,
    ort_errors.RuntimeException,
    OSError,
)

MODEL_LOADS = Counter(
    "nightjar_worker_model_loads_total",
    "Model loads in this worker process, by model and status (ok, missing, failed).",
    ["model", "status"],
)
MODEL_FAILURES = Counter(
    "nightjar_worker_model_failures_total",
    "Batches on which a model raised; its scores for that batch are missing.",
    ["model", "reason"],
)
MODEL_PROVIDER = Gauge(
    "nightjar_worker_model_provider",
    "1 for the ONNX Runtime execution provider each loaded model runs on.",
    ["model", "provider"],
)


def choose_providers(requested: str, available: Sequence[str]) -> list[str]:
    """The providers to ask ONNX Runtime for, in order; raise ConfigError if impossible."""
    if requested == "cpu":
        return [CPU]
    if requested == "cuda":
        if CUDA not in available:
            raise ConfigError(
                "models.provider is 'cuda' but ONNX Runtime offers only "
                f"{list(available)}; install onnxruntime-gpu (pip install -e '.[gpu]') "
                "with a matching CUDA, or set models.provider to 'auto' or 'cpu'"
            )
        return [CUDA, CPU]
    if requested == "auto":
        return [CUDA, CPU] if CUDA in available else [CPU]
    raise ConfigError(f"models.provider must be auto, cpu or cuda, not {requested!r}")


def open_session(
    name: str,
    path: Path,
    settings: ModelSettings,
    available: Sequence[str] | None = None,
) -> ort.InferenceSession:
    """Create the session, check the provider it really got, log it once and export it."""
    offered = ort.get_available_providers() if available is None else available
    providers = choose_providers(settings.provider, offered)
    options = ort.SessionOptions()
    # One Dask thread per core: each session stays on its own thread unless told otherwise.
    options.intra_op_num_threads = settings.intra_op_threads
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except ORT_LOAD_ERRORS as exc:
        raise ConfigError(
            f"model {name}: ONNX Runtime cannot load {path} ({exc}); reinstall it with "
            f"`nightjar models fetch {name}`"
        ) from exc
    in_use = session.get_providers()
    if not in_use or in_use[0] != providers[0]:
        # ONNX Runtime falls back to CPU when CUDA cannot start (driver, libraries): refuse.
        raise ConfigError(
            f"model {name}: asked ONNX Runtime for {providers[0]} "
            f"(models.provider={settings.provider}) but the session runs on {in_use}; "
            "check the CUDA/cuDNN installation or set models.provider to 'cpu'"
        )
    log.info(
        "model %s runs on %s (intra_op_threads=%d)", name, in_use[0], settings.intra_op_threads
    )
    MODEL_PROVIDER.labels(model=name, provider=in_use[0]).set(1)
    return session
