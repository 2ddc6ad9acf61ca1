"""broker.pipeline and broker.writer without services: results split, scoring input, and the
order of a batch's steps (store, publish, then commit) with in-memory stand-ins for the stages
around the loop.

The real Kafka and MongoDB path is in tests/integration and tests/e2e.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, cast

import pytest

from broker import history
from broker.decode import Decoder
from broker.dispatch import Dispatcher
from broker.pipeline import Batch, Pipeline, scoring_input
from broker.records import Alert, AlertResult, Annotation, Origin, Rejection, ScoringInput
from broker.settings import SchemaSettings, Settings
from broker.store import StoreResult, object_key
from broker.tools.simulate import simulate
from broker.writer import AddedPoints, split_results
from tests.unit.test_dispatch import FakeClient

TOPIC = "alerts"


@pytest.fixture(scope="module")
def decoder() -> Decoder:
    return Decoder(SchemaSettings(), 4 << 20)


@pytest.fixture(scope="module")
def raws() -> list[bytes]:
    return [sim.data for sim in simulate("ztf", 60, seed=9)]


def decoded(decoder: Decoder, raws: list[bytes], count: int) -> list[Alert]:
    return [decoder.decode(raw, Origin(TOPIC, 0, i)) for i, raw in enumerate(raws[:count])]


def test_split_results_moves_worker_rejections_to_the_rejections(
    decoder: Decoder, raws: list[bytes]
) -> None:
    alerts = decoded(decoder, raws, 3)
    undecodable = Rejection("undecodable", "junk", b"junk", Origin(TOPIC, 0, 9))
    batch = Batch(alerts=alerts, rejections=[undecodable], source_ts=[10, 11, None])
    results = [
        AlertResult(alerts[0].candid, annotations=(Annotation("drb", "d6_m7", 0.5),)),
        AlertResult(alerts[1].candid, rejected=("bad_cutouts", "science stamp is all NaN")),
        AlertResult(alerts[2].candid),
    ]
    kept_alerts, kept, source_ts, rejections = split_results(batch, results)
    assert kept_alerts == [alerts[0], alerts[2]]
    assert kept == [results[0], results[2]]
    assert source_ts == [10, None]
    assert rejections[0] is undecodable
    assert rejections[1] == Rejection(
        "bad_cutouts",
        "science stamp is all NaN",
        alerts[1].raw,
        Origin(TOPIC, 0, 1),
        "ztf",
        alerts[1].candid,
        alerts[1].object_id,
    )


def test_split_results_refuses_a_short_answer(decoder: Decoder, raws: list[bytes]) -> None:
    alerts = decoded(decoder, raws, 2)
    batch = Batch(alerts=alerts, source_ts=[None, None])
    with pytest.raises(RuntimeError, match="1 results for 2"):
        split_results(batch, [AlertResult(alerts[0].candid)])


def test_scoring_input_merges_stored_points_before_the_packet_history(
    decoder: Decoder, raws: list[bytes]
) -> None:
    alert = max(decoded(decoder, raws, 60), key=lambda a: len(a.history))
    first_jd = min(entry["jd"] for entry in alert.history)
    older = {**history.point("ztf", alert.candidate), "candid": 1, "jd": first_jd - 40.0}
    own = history.point("ztf", alert.candidate)  # stored already (a replay): not its own history
    stored = {object_key("ztf", alert.object_id): [own, older], "ztf:other": [older]}
    item = scoring_input(alert, stored)
    assert item.history[0] == older
    assert len(item.history) == len(alert.history) + 1
    assert alert.candid not in [entry["candid"] for entry in item.history]
    assert (item.survey, item.candid, item.object_id, item.jd) == (
        "ztf",
        alert.candid,
        alert.object_id,
        alert.jd,
    )
    assert item.schema_version == alert.schema_version == "4.02"
    assert item.cutouts is alert.cutouts and item.candidate is alert.candidate
    assert scoring_input(alert, {}).history == alert.history


# -- the loop, with in-memory stages -----------------------------------------------------


@dataclass
class FakeMessage:
    """What the pipeline reads from a confluent_kafka.Message."""

    raw: bytes
    position: int

    def topic(self) -> str:
        return TOPIC

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self.position

    def value(self) -> bytes:
        return self.raw

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_700_000_000_000 + self.position)


class Stages:
    """Consumer, dispatcher, store and publisher stand-ins writing one shared event log."""

    def __init__(self, chunks: list[list[bytes]], failures: int = 0) -> None:
        offset = 0
        self.chunks: list[list[FakeMessage]] = []
        for chunk in chunks:
            self.chunks.append([FakeMessage(raw, offset + i) for i, raw in enumerate(chunk)])
            offset += len(chunk)
        self.failures = failures
        self.events: list[tuple[str, Any]] = []
        self.stored: list[Alert] = []
        self.results: list[AlertResult] = []
        self.assigned_at = 0.0  # partitions assigned from the start

    # consumer
    def keep_alive(self) -> None:
        self.pause()

    def poll_batch(self, max_messages: int, timeout: float) -> list[FakeMessage]:
        return self.chunks.pop(0) if self.chunks else []

    def commit(self, offsets: dict[tuple[str, int], int]) -> None:
        self.events.append(("commit", dict(offsets)))

    def pause(self) -> None:
        self.events.append(("pause", None))

    def resume(self) -> None:
        pass

    def close(self) -> None:
        self.events.append(("close", None))

    # dispatcher
    def connected(self) -> bool:
        return True

    def lost(self, error: BaseException) -> bool:
        return False

    def worker_died(self, error: BaseException) -> bool:
        return False

    def submit(self, inputs: Sequence[ScoringInput]) -> Future[list[AlertResult]]:
        future: Future[list[AlertResult]] = Future()
        if self.failures:
            self.failures -= 1
            future.set_exception(RuntimeError("worker died"))
        else:
            annotation = (Annotation("model", "v1", 0.5),)
            future.set_result([AlertResult(i.candid, annotations=annotation) for i in inputs])
        return future

    # store
    def read_history(self, alerts: Sequence[Alert]) -> dict[str, list[dict[str, Any]]]:
        return {}

    def write(self, alerts: Sequence[Alert], results: Sequence[AlertResult], _: Any) -> StoreResult:
        self.events.append(("store", [a.candid for a in alerts]))
        self.stored.extend(alerts)
        self.results.extend(results)
        return StoreResult()

    def write_rejections(self, rejections: Sequence[Rejection]) -> None:
        self.events.append(("store rejections", len(rejections)))

    # publisher
    def publish(self, alerts: Sequence[Alert], results: Any, source_ts: Any) -> dict[str, bytes]:
        self.events.append(("publish", [a.candid for a in alerts]))
        return {}

    def dead_letter(self, rejections: Sequence[Rejection]) -> None:
        self.events.append(("dead letter", [r.origin for r in rejections]))

    def flush(self) -> None:
        self.events.append(("flush", None))


def run_pipeline(
    decoder: Decoder, stages: Stages, max_in_flight: int = 2, dispatcher: Any = None
) -> Pipeline:
    pipeline = make_pipeline(decoder, stages, max_in_flight, dispatcher)
    pipeline.run(threading.Event(), exit_when_idle=0.05)
    return pipeline


def make_pipeline(
    decoder: Decoder, stages: Stages, max_in_flight: int = 2, dispatcher: Any = None
) -> Pipeline:
    factory: Callable[[Any], Any] = lambda _on_revoke: stages  # noqa: E731
    return Pipeline(
        decoder=decoder,
        consumer_factory=factory,
        dispatcher=dispatcher or cast(Any, stages),
        store=cast(Any, stages),
        publisher=cast(Any, stages),
        batch_size=10,
        batch_seconds=0.01,
        max_in_flight=max_in_flight,
    )


def test_each_batch_is_stored_and_published_before_its_offsets_are_committed(
    decoder: Decoder, raws: list[bytes]
) -> None:
    stages = Stages([raws[0:3], [b"not avro", raws[3]], raws[4:6]])
    pipeline = run_pipeline(decoder, stages, max_in_flight=1)
    names = [name for name, _ in stages.events if name not in ("pause", "resume")]
    assert names == [
        "store",
        "store rejections",
        "publish",
        "dead letter",
        "flush",
        "commit",
    ] * 3 + ["close"]
    commits = [offsets for name, offsets in stages.events if name == "commit"]
    assert commits == [{(TOPIC, 0): 3}, {(TOPIC, 0): 5}, {(TOPIC, 0): 7}]
    assert [
        origin for name, origins in stages.events if name == "dead letter" for origin in origins
    ] == [Origin(TOPIC, 0, 3)]
    assert len(stages.stored) == 6
    assert (pipeline.stats.messages, pipeline.stats.stored, pipeline.stats.rejected) == (7, 6, 1)


def test_a_failing_batch_is_retried_on_the_workers(decoder: Decoder, raws: list[bytes]) -> None:
    stages = Stages([raws[0:4]], failures=2)
    run_pipeline(decoder, stages)
    assert len(stages.stored) == 4
    assert all(result.annotations for result in stages.results)  # the third try scored them


def test_a_batch_failing_every_time_is_stored_without_scores(
    decoder: Decoder, raws: list[bytes]
) -> None:
    stages = Stages([raws[0:4], raws[4:6]], failures=3)
    run_pipeline(decoder, stages)
    assert [a.candid for a in stages.stored] == [decoded_candid(decoder, r) for r in raws[:6]]
    assert [bool(result.annotations) for result in stages.results] == [False] * 4 + [True] * 2
    commits = [offsets for name, offsets in stages.events if name == "commit"]
    assert commits == [{(TOPIC, 0): 4}, {(TOPIC, 0): 6}]


def test_points_stored_after_a_batch_read_its_history_are_added_to_it() -> None:
    # The store reads no history again: a batch learns what the batches in flight with
    # it stored since it read its own, so a detection already stored is not added twice.
    added = AddedPoints()
    first = {"ztf:a": [{"candid": 1}], "ztf:b": [{"candid": 2}]}
    added.add(first)
    mark = added.mark()  # a batch reads its history: `first` is in MongoDB already
    added.add({"ztf:a": [{"candid": 3}]})
    added.add({})
    added.add({"ztf:a": [{"candid": 4}], "ztf:c": [{"candid": 5}]})
    assert added.since(mark, {"ztf:a", "ztf:b"}) == {"ztf:a": [{"candid": 3}, {"candid": 4}]}
    assert added.since(0, {"ztf:b"}) == {"ztf:b": [{"candid": 2}]}
    added.trim(mark + 1)  # the oldest batch in flight read after the second write
    assert added.since(0, {"ztf:a"}) == {"ztf:a": [{"candid": 4}]}
    added.trim(None)
    assert added.since(0, {"ztf:a", "ztf:c"}) == {}


def test_a_later_batch_of_the_same_object_is_stored_with_the_points_of_the_earlier(
    decoder: Decoder, raws: list[bytes]
) -> None:
    alerts = decoded(decoder, raws, 60)
    by_object: dict[str, list[bytes]] = {}
    for alert in alerts:
        by_object.setdefault(alert.object_id, []).append(alert.raw)
    pair = next(raws_ for raws_ in by_object.values() if len(raws_) >= 2)
    stages = Stages([[pair[0]], [pair[1]]])
    database: dict[str, list[dict[str, Any]]] = {}
    seen: list[dict[str, Any]] = []
    write = stages.write

    def read_history(batch_alerts: Sequence[Alert]) -> dict[str, list[dict[str, Any]]]:
        keys = {object_key("ztf", a.object_id) for a in batch_alerts}
        return {key: list(database[key]) for key in keys & database.keys()}

    def recording(batch_alerts: Sequence[Alert], results: Any, stored: Any) -> StoreResult:
        # Whether the second batch read before or after the first was stored, it must be
        # stored knowing the first one's points.
        seen.append({key: list(points) for key, points in stored.items()})
        added = {object_key("ztf", a.object_id): [{"candid": a.candid}] for a in batch_alerts}
        for key, points in added.items():
            database.setdefault(key, []).extend(points)
        write(batch_alerts, results, stored)
        return StoreResult(added=added)

    stages.read_history = read_history  # type: ignore[method-assign]
    stages.write = recording  # type: ignore[method-assign]
    run_pipeline(decoder, stages, max_in_flight=2)
    first = decoder.decode(pair[0])
    key = object_key("ztf", first.object_id)
    assert seen[0] == {}
    assert seen[1] == {key: [{"candid": first.candid}]}


def decoded_candid(decoder: Decoder, raw: bytes) -> int:
    return decoder.decode(raw).candid


# -- a worker that dies, a scheduler that goes away (broker.dispatch on a stand-in client) --


def test_an_alert_that_kills_its_worker_is_dead_lettered_as_poison(
    decoder: Decoder, raws: list[bytes]
) -> None:
    killer = decoded_candid(decoder, raws[5])
    client = FakeClient(killers={killer})
    dispatcher = Dispatcher(Settings())
    dispatcher.client = cast(Any, client)
    stages = Stages([raws[0:4], raws[4:8], raws[8:10]])
    pipeline = run_pipeline(decoder, stages, dispatcher=dispatcher)

    expected = [decoded_candid(decoder, r) for r in raws[:10] if r is not raws[5]]
    assert [a.candid for a in stages.stored] == expected
    assert all(result.annotations for result in stages.results)  # every other one scored
    dead = [o for name, origins in stages.events if name == "dead letter" for o in origins]
    assert dead == [Origin(TOPIC, 0, 5)]
    # The second batch: whole once (its worker died), then one alert at a time.
    second = [decoded_candid(decoder, r) for r in raws[4:8]]
    assert client.submitted[1] == (second, True)
    assert client.submitted[2:6] == [([candid], False) for candid in second]
    commits = [offsets for name, offsets in stages.events if name == "commit"]
    assert commits == [{(TOPIC, 0): 4}, {(TOPIC, 0): 8}, {(TOPIC, 0): 10}]
    assert (pipeline.stats.stored, pipeline.stats.rejected) == (9, 1)


def test_a_lost_scheduler_holds_the_batches_and_they_go_on_once_it_is_back(
    decoder: Decoder, raws: list[bytes], monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    monkeypatch.setattr("broker.pipeline.DASK_RETRY_S", (0.01, 0.02))
    settings = Settings.model_validate({"dispatch": {"scheduler_address": "tcp://127.0.0.1:9"}})
    dispatcher = Dispatcher(settings)
    # More losses than WORKER_ATTEMPTS: a scheduler outage is not the batch's failure.
    lost = [FakeClient(lose_after=n) for n in (1, 0, 0, 0)]
    dispatcher.client = cast(Any, lost[0])
    back = FakeClient()
    clients: list[Any] = [*lost[1:], OSError("refused"), OSError("refused"), back]

    blocked: list[list[str]] = []  # while each try to join the scheduler again

    def connect(address: str, timeout: float) -> Any:
        blocked.append([b.dependency for b in pipeline.health.blocked()])
        client = clients.pop(0)
        if isinstance(client, Exception):
            raise client
        return client

    monkeypatch.setattr("broker.dispatch.Client", connect)
    stages = Stages([raws[0:3], raws[3:6], raws[6:9]])
    pipeline = make_pipeline(decoder, stages, max_in_flight=2, dispatcher=dispatcher)
    with caplog.at_level("WARNING", logger="broker.health"):
        pipeline.run(threading.Event(), exit_when_idle=0.05)

    assert [a.candid for a in stages.stored] == [decoded_candid(decoder, r) for r in raws[:9]]
    assert all(result.annotations for result in stages.results)  # none stored unscored
    assert not clients and back.plugins  # the plugin registered on the scheduler that came back
    assert blocked == [["dask"]] * 6 and pipeline.health.blocked() == []
    # Each loss (this scheduler flaps) reported once when it starts and once when it ends.
    warned = [r.getMessage() for r in caplog.records if r.getMessage().startswith("dask")]
    assert len(warned) >= 2 and len(warned) % 2 == 0, warned
    assert all("dask unreachable: waiting for it" in w for w in warned[::2]), warned
    assert all("dask reachable again" in w for w in warned[1::2]), warned
    commits = [offsets for name, offsets in stages.events if name == "commit"]
    assert commits == [{(TOPIC, 0): 3}, {(TOPIC, 0): 6}, {(TOPIC, 0): 9}]
