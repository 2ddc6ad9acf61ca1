"""The scale-out bench's arithmetic: capacity plan, cell figures, cycled alerts; and the
light-curve repair's decisions (which points to add back, which forms to pull)."""

from __future__ import annotations

import io
import math

import fastavro
import pytest

from broker import history
from broker.history import object_fix, surplus_forms
from broker.tools.bench.plan import Costs, costs_from_bench, need, plan, plan_document, table
from broker.tools.bench.scale import CellSpec, Sample, cell_document, with_idle
from broker.tools.bench.workload import CANDID_STRIDE, cycled
from broker.tools.simulate import iter_alerts

COSTS = Costs(broker_ms=4.0, model_ms=6.0, preprocess_ms=2.0, scheduler_ms=1.0)


def test_cores_are_rate_times_cost_over_utilisation() -> None:
    rubin = need("rubin", 333, COSTS, utilisation=0.5)
    assert rubin.broker_cores == pytest.approx(333 * 0.005 / 0.5, abs=0.01)  # (4 + 1) ms
    assert rubin.worker_cores_cpu_only == pytest.approx(333 * 0.008 / 0.5, abs=0.01)
    assert rubin.total_cores_cpu_only == math.ceil(3.33 + 5.328)
    assert rubin.gpus is None and rubin.total_cores_with_gpus is None


def test_gpus_take_the_models_and_leave_preprocessing_on_cpu() -> None:
    visit = need("visit", 40_000 / 60, COSTS, utilisation=1.0, gpu_alerts_per_s=500)
    assert visit.gpus == 2  # 666.7 alerts/s at 500 per GPU
    assert visit.worker_cores_with_gpus == pytest.approx(666.67 * 0.002, abs=0.01)
    assert visit.total_cores_with_gpus == math.ceil(666.67 * 0.005 + 666.67 * 0.002)


def test_the_three_streams_and_their_rates() -> None:
    rates = {n.stream: n.alerts_per_s for n in plan(COSTS)}
    assert rates == {
        "ztf_busiest_night": pytest.approx(33.3),
        "rubin_sustained": 333.0,
        "rubin_visit_40k_in_60s": pytest.approx(666.7),
    }


@pytest.mark.parametrize("bad", [0.0, 1.5, -0.1])
def test_a_utilisation_outside_0_1_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="utilisation"):
        need("x", 10, COSTS, utilisation=bad)


def test_costs_come_from_the_1x1_cell_and_the_model_share() -> None:
    cell = {"brokers": 1, "workers": 1, "cpu_ms_per_alert": {"brokers": 3.0, "workers": 10.0,
                                                              "scheduler": 0.5}}  # fmt: skip
    other = {**cell, "brokers": 2, "cpu_ms_per_alert": {"brokers": 99.0, "workers": 99.0}}
    document = {"scenarios": {"scaling": {"cells": [other, cell], "worker_model_share": 0.7}}}
    costs = costs_from_bench(document)
    assert costs == Costs(3.0, pytest.approx(7.0), pytest.approx(3.0), 0.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="--scenario scaling"):
        costs_from_bench({"scenarios": {"models": {}}})


def test_the_plan_table_has_a_row_per_stream() -> None:
    text = table(plan_document(COSTS, 0.7, None))
    rows = text.splitlines()
    assert len(rows) == 2 + 3 and rows[2].startswith("| ztf_busiest_night | 33.3 |")
    assert rows[3].endswith("| - | - | - |")


def test_a_cell_counts_cpu_and_rate_over_its_window_only() -> None:
    first = Sample(10.0, 0, {"broker-0": 1.0, "worker-0": 5.0, "scheduler": 0.0}, 100.0)
    last = Sample(20.0, 1000, {"broker-0": 5.0, "worker-0": 13.0, "scheduler": 0.5}, 118.0)
    metrics = [{"decode": 1.0, "store": 3.0, "pauses": 2.0}]
    cell = cell_document(CellSpec(1, 1, 2), first, last, metrics, {"broker-0": 200.0}, 1.0)
    assert cell["alerts_per_s"] == 100.0
    cpu = cell["cpu_ms_per_alert"]
    assert cpu["brokers"] == 4.0 and cpu["workers"] == 8.0 and cpu["scheduler"] == 0.5
    assert cpu["broker_stages"]["decode"] == 1.0 and cpu["broker_stages"]["store"] == 3.0
    assert cell["machine_busy_cores"] == 1.8 and cell["pauses"] == 2


def test_cycled_alerts_keep_their_objects_with_new_candids() -> None:
    originals = list(iter_alerts("ztf", 3, 5))
    out = cycled(originals, 7)
    records = [next(iter(fastavro.reader(io.BytesIO(raw)))) for raw in out]
    candids = [r["candid"] for r in records]  # type: ignore[call-overload,index]
    assert len(set(candids)) == 7
    assert candids[3] == candids[0] + CANDID_STRIDE and candids[6] == candids[0] + 2 * CANDID_STRIDE
    assert records[3]["objectId"] == records[0]["objectId"]  # type: ignore[call-overload,index]


def test_the_fullest_form_of_a_detection_is_kept_everywhere() -> None:
    rich = {"candid": 1, "jd": 2.0, "fid": 1, "drb": 0.9}
    poor = {"candid": 1, "jd": 2.0, "fid": 1}
    assert surplus_forms(("id", 1), [poor, rich]) == [poor]
    assert surplus_forms(("id", 1), [rich, poor]) == [poor]
    limit = {"jd": 3.0, "fid": 2}
    assert surplus_forms(("t", 3.0, 2), [limit, limit]) == []  # $pullAll would drop both


def test_a_repair_adds_back_lost_points_and_pulls_poorer_forms() -> None:
    rich = {"candid": 1, "jd": 2.0, "fid": 1, "drb": 0.9}
    poor = {"candid": 1, "jd": 2.0, "fid": 1}
    lost = {"candid": 2, "jd": 4.0, "fid": 1}
    ops = object_fix("ztf:A", [poor, lost], {"ztf:A": [rich, poor]})
    docs = [op._doc for op in ops]
    assert docs == [{"$pullAll": {"lightcurve": [poor]}},
                    {"$addToSet": {"lightcurve": {"$each": [lost]}}}]  # fmt: skip
    assert object_fix("ztf:A", [poor], {"ztf:A": [rich]}) == []
    assert history.point_key("ztf", poor) == history.point_key("ztf", rich)


def test_idle_cores_are_taken_off_per_alert_at_the_cell_rate() -> None:
    cell = {"alerts_per_s": 50.0, "cpu_ms_per_alert": {"workers": 10.0, "scheduler": 1.0}}
    idle = {"worker-0": 0.05, "worker-1": 0.05, "scheduler": 0.02}
    net = with_idle(cell, idle)["cpu_ms_per_alert_net_of_idle"]
    assert net == {"workers": 8.0, "scheduler": 0.6}  # 0.1 cores / 50 alerts/s = 2 ms
    assert "idle_cores" not in with_idle({"alerts_per_s": 1.0}, {})
