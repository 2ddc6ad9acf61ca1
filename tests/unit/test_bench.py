"""`nightjar bench` helpers: statistics, the JSON document, the pipeline watcher, timing."""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path

import numpy as np
import pytest

from broker.pipeline import RunStats
from broker.settings import ModelSettings, Settings
from broker.tools.bench.ceiling import time_workers
from broker.tools.bench.io import source_timestamp
from broker.tools.bench.machine import CpuSample, cpu_model, cpu_usage, memory_gib
from broker.tools.bench.main import BenchNames, first_batch, scenario_settings
from broker.tools.bench.monitor import PipelineWatcher
from broker.tools.bench.stats import (
    TARGETS,
    WorkerCost,
    bottleneck,
    latencies_ms,
    latency_summary,
    percentile,
    phase_document,
    scenario_document,
    stage_breakdown,
    target_check,
)
from broker.tools.simulate import iter_alerts
from workers.annotate import Annotator
from workers.models.base import OnnxModel


@pytest.mark.parametrize("q", [0, 1, 25, 50, 90, 99, 99.9, 100])
def test_percentile_matches_numpy_linear(q: float) -> None:
    rng = random.Random(3)
    values = [rng.expovariate(1 / 200) for _ in range(257)]
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)), rel=1e-12)


def test_percentile_small_and_bad_inputs() -> None:
    assert percentile([5.0], 99) == 5.0
    assert percentile([1.0, 2.0], 50) == 1.5
    assert percentile([3.0, 1.0, 2.0], 100) == 3.0  # unsorted input is fine
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match="0-100"):
        percentile([1.0], 101)


def test_latency_summary_rounds_and_counts() -> None:
    summary = latency_summary([10.0, 20.0, 30.0, 40.0, 1000.04])
    assert summary == {"p50": 30.0, "p99": pytest.approx(961.6, abs=0.05), "max": 1000.0, "n": 5}
    assert latency_summary([]) == {"p50": None, "p99": None, "max": None, "n": 0}


def test_latencies_only_from_the_latency_phase() -> None:
    pairs = [(1_500, 1_000), (2_600, 2_000), (3_100, None), (5_250, 5_000), (900, 100)]
    assert latencies_ms(pairs, since_ms=2_000) == [600.0, 250.0]


def test_stage_breakdown_splits_the_main_thread_from_the_writer() -> None:
    stages = {"store": 2.0, "decode": 1.0, "publish": 0.5, "commit": 0.1, "history": 0.4}
    table = stage_breakdown(stages, wall_seconds=5.0, alerts=1000, workers=None)
    assert list(table)[:5] == ["decode", "history", "store", "publish", "commit"]
    assert table["store"] == {"seconds": 2.0, "ms_per_alert": 2.0}
    # The main thread ran decode, history and commit (1.5 s); the writer ran beside it.
    assert table["main_thread_waiting"]["seconds"] == pytest.approx(3.5)
    assert table["wall"] == {"seconds": 5.0, "ms_per_alert": 5.0}
    assert table["bottleneck"] == "writer thread (2.50 ms/alert), mostly store"


def test_parts_of_a_stage_are_nested_not_counted_twice() -> None:
    stages = {"decode": 1.0, "store": 3.0, "store_objects": 2.0, "store_alerts": 0.5}
    table = stage_breakdown(stages, wall_seconds=5.0, alerts=1000, workers=None)
    assert "store_objects" not in table
    assert table["store"]["parts"] == {
        "store_alerts": {"seconds": 0.5, "ms_per_alert": 0.5},
        "store_objects": {"seconds": 2.0, "ms_per_alert": 2.0},
    }
    assert table["main_thread_waiting"]["seconds"] == pytest.approx(4.0)  # 5 - 1
    assert table["bottleneck"] == "writer thread (3.00 ms/alert), mostly store (store_objects)"


def test_bottleneck_names_the_slowest_of_main_thread_writer_and_workers() -> None:
    workers = WorkerCost(alerts=100, annotate_seconds=1.2, threads=2)  # 12 ms, 6 per thread
    assert bottleneck({"store": 0.3}, 100, workers) == "workers (6.00 ms/alert over 2 threads)"
    assert bottleneck({"store": 0.7}, 100, workers).startswith("writer thread (7.00")
    assert bottleneck({"decode": 0.8, "store": 0.7}, 100, workers) == (
        "main thread (8.00 ms/alert), mostly decode"
    )
    assert bottleneck({}, 0, workers) == "unknown"


def test_targets_need_every_part_met() -> None:
    assert not target_check("passthrough", 999.9, None)["meets_target"]
    assert target_check("passthrough", 1000.0, None) == {
        "target": {"sustained_alerts_per_s": 1000.0},
        "meets_target": True,
    }
    assert target_check("models", 250.0, 0.85)["meets_target"]
    assert not target_check("models", 250.0, 0.79)["meets_target"]
    assert not target_check("models", 199.0, 0.95)["meets_target"]
    assert not target_check("models", 250.0, None)["meets_target"]


def test_scenario_documents_have_the_published_shape() -> None:
    stages = {"decode": 0.5, "history": 0.1, "store": 1.0, "publish": 0.2, "commit": 0.05}
    workers = WorkerCost(
        alerts=500, annotate_seconds=2.0, model_seconds={"braai": 0.5}, threads=2,
        ceiling_alerts_per_s=400.0,
    )  # fmt: skip
    phase = phase_document(stages, {k: v * 2 for k, v in stages.items()}, 10, 1000, 210.0, 5.0)
    models = scenario_document("models", 2000, 8.0, stages, [100.0, 200.0], workers, phase, {})
    assert models["sustained_alerts_per_s"] == 250.0
    assert models["model_only_ceiling_alerts_per_s"] == 400.0
    assert models["fraction_of_ceiling"] == 0.625
    assert models["meets_target"] is False  # 250 >= 200, but 0.625 < 0.8
    assert models["target"] == TARGETS["models"]
    assert models["latency_ms"]["n"] == 2
    assert models["latency_phase"]["mean_batch_alerts"] == 100.0
    assert models["latency_phase"]["achieved_alerts_per_s"] == 200.0
    assert models["latency_phase"]["kept_up"] is True  # 200 >= 0.95 x 210
    assert models["latency_phase"]["stages_ms_per_alert"]["store"] == 1.0
    assert models["stages_seconds"]["workers"]["models_ms_per_alert"] == {"braai": 1.0}
    passthrough = scenario_document("passthrough", 2000, 1.6, stages, [], None)
    assert passthrough["sustained_alerts_per_s"] == 1250.0 and passthrough["meets_target"]
    assert "model_only_ceiling_alerts_per_s" not in passthrough
    for document in (models, passthrough):
        assert json.loads(json.dumps(document)) == document  # plain JSON data only


def test_latency_phase_that_falls_behind_is_flagged() -> None:
    phase = phase_document({}, {"store": 30.0}, 6, 1000, rate=20.0, seconds=110.0)
    assert phase["achieved_alerts_per_s"] == 9.1 and phase["kept_up"] is False
    assert phase["stages_ms_per_alert"] == {"store": 30.0}
    assert phase["mean_batch_alerts"] == pytest.approx(166.7)
    assert phase_document({}, {}, 0, 0, 20.0, 0.0)["kept_up"] is False


def test_watcher_backdates_the_first_read_and_waits_for_the_count() -> None:
    stats = RunStats()
    now = [100.0]
    watcher = PipelineWatcher(stats, clock=lambda: now[0], interval=0.001)
    stop = threading.Event()
    assert watcher.wait_for(10, timeout=0.05, abort=stop) is None  # nothing happened
    assert watcher.first_read is None

    def pipeline() -> None:
        now[0] = 105.0
        stats.stage_seconds["decode"] = 0.25
        stats.messages = 10
        stats.stored, stats.rejected = 9, 1

    thread = threading.Thread(target=pipeline)
    thread.start()
    done = watcher.wait_for(10, timeout=5, abort=stop)
    thread.join()
    assert done == 105.0
    assert watcher.first_read == 104.75
    stop.set()
    assert watcher.wait_for(11, timeout=5, abort=stop) is None


def test_bench_names_are_fresh_and_settings_isolated() -> None:
    names = BenchNames("abc123")
    assert len(set(names.topics())) == 3
    assert names.output_template.format(survey="ztf") == "nightjar-bench-abc123.ztf.annotated"
    base = Settings()
    settings = scenario_settings(base, names, Path("/tmp/no-models"))
    assert settings.kafka.topics == [names.input_topic]
    assert settings.kafka.group_id == names.group and settings.kafka.auto_offset_reset == "earliest"
    assert settings.mongo.database == names.database
    assert not settings.metrics.enabled and settings.filters.definitions == []
    assert settings.models.dir == Path("/tmp/no-models") and settings.models.provider == "cpu"
    assert scenario_settings(base, names, None).models.dir == base.models.dir


def test_source_timestamp_header() -> None:
    assert source_timestamp([("other", b"1"), ("nightjar-source-ts", b"1700000000123")]) == (
        1700000000123
    )
    assert source_timestamp({"nightjar-source-ts": b"42"}) == 42
    assert source_timestamp([("nightjar-source-ts", b"not a number")]) is None
    assert source_timestamp(None) is None


def test_machine_facts_from_proc_files(tmp_path: Path) -> None:
    (tmp_path / "cpuinfo").write_text("processor\t: 0\nmodel name\t: Example CPU @ 3GHz\n")
    (tmp_path / "meminfo").write_text("MemTotal:       24696060 kB\nMemFree: 1 kB\n")
    assert cpu_model(tmp_path / "cpuinfo") == "Example CPU @ 3GHz"
    assert memory_gib(tmp_path / "meminfo") == 23.6
    assert memory_gib(tmp_path / "missing") is None
    usage = cpu_usage(
        CpuSample(10.0, 50.0, 1.0, 2.0, {"ferretdb": 5.0, "kafka": 1.0}),
        CpuSample(12.0, 53.0, 2.0, 4.5, {"ferretdb": 6.2}),
    )
    assert usage["machine_busy_cores"] == 1.5
    assert usage["broker_process_cores"] == 0.5
    assert usage["dask_worker_cores"] == 1.25
    assert usage["ferretdb_cores"] == 0.6  # kafka was not found running in the second sample
    assert "kafka_cores" not in usage


def test_worker_timing_without_onnx_models_has_no_ceiling(tmp_path: Path) -> None:
    settings = Settings().model_copy(update={"models": ModelSettings(dir=tmp_path, provider="cpu")})
    inputs = first_batch(settings, list(iter_alerts("ztf", 12, seed=1)))
    assert len(inputs) == 12
    cost = time_workers(Annotator.from_settings(settings.models), inputs, threads=2)
    assert cost.alerts == 12 and cost.annotate_seconds > 0
    assert cost.model_seconds == {} and cost.ceiling_alerts_per_s is None


def test_worker_timing_records_every_onnx_model(model_settings: ModelSettings) -> None:
    settings = Settings().model_copy(update={"models": model_settings})
    inputs = first_batch(settings, list(iter_alerts("ztf", 16, seed=2)))
    annotator = Annotator.from_settings(model_settings)
    before = annotator.annotate(inputs)
    cost = time_workers(annotator, inputs, threads=2)
    onnx = [m.name for m in annotator.models if isinstance(m, OnnxModel)]
    assert {"braai", "btsbot", "acai_h"} <= set(onnx)
    assert set(cost.model_seconds) == set(onnx)
    assert all(seconds > 0 for seconds in cost.model_seconds.values())
    assert cost.ceiling_alerts_per_s is not None and cost.ceiling_alerts_per_s > 0
    # The recording wrappers are removed again and scoring is unchanged.
    assert all("infer" not in vars(m) for m in annotator.models if isinstance(m, OnnxModel))
    assert annotator.annotate(inputs) == before
