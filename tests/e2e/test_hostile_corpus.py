"""The hostile corpus (broker.tools.fuzz_corpus) through Kafka into a running broker.

Schema corruption (the fp_hists decode bomb included), zero-size array items, huge declared
lengths and counts, oversized messages, wrong magic bytes, unknown schema ids, truncations
and bit flips, mixed with good alerts (simulated, and the real samples where present): every
message is stored or dead-lettered with its reason, the broker never exits, and its peak
RSS stays within 1 GiB of its RSS when idle.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo.database import Database

from broker.tools.fuzz_corpus import hostile_corpus
from broker.tools.simulate import iter_alerts
from tests.helpers import poll_until
from tests.pipeline_helpers import (
    REFERENCE,
    BrokerProcess,
    Rig,
    decoder_for,
    expected_outcome,
    produce,
    read_topic,
)

MAX_MESSAGE_BYTES = 300_000
RSS_HEADROOM_KIB = 1 << 20  # 1 GiB
REAL_ZTF = REFERENCE / "ztf" / "alerts" / "night-20200202" / "1105522281015015000.avro"
Db = Database[dict[str, Any]]


@pytest.fixture
def rig(make_rig: Any) -> Iterator[Rig]:
    rig: Rig = make_rig("hostile")
    rig.settings["NIGHTJAR_KAFKA__MAX_MESSAGE_BYTES"] = str(MAX_MESSAGE_BYTES)
    yield rig


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of one process, in KiB, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def hostile_stream(seed: int) -> list[bytes]:
    """Good alerts with the hostile corpus spread among them."""
    rng = random.Random(seed)
    good = list(iter_alerts("ztf", 60, seed=seed)) + list(iter_alerts("lsst", 20, seed=seed))
    if REFERENCE.is_dir():
        good += [path.read_bytes() for path in sorted((REFERENCE / "ztf").rglob("*.avro"))]
    ztf = REAL_ZTF.read_bytes() if REAL_ZTF.is_file() else good[0]
    decoder = decoder_for(max_message_bytes=MAX_MESSAGE_BYTES)
    cases = hostile_corpus(ztf, good[60], decoder, seed=seed, damaged=15)
    stream = good + [case.data for case in cases]
    rng.shuffle(stream)
    return stream


def idle_rss(process: BrokerProcess) -> int:
    """The broker's RSS once its partition is assigned and it waits on the empty topic
    (stable within 20 MiB for 2 s)."""
    samples: list[int] = []

    def settled() -> bool:
        assert process.running(), process.log
        if "assigned" not in process.log:
            return False
        samples.append(memory_kib(process.popen.pid)["VmRSS"])
        recent = samples[-4:]
        return len(recent) == 4 and max(recent) - min(recent) < 20 * 1024

    with process.diagnosed():
        poll_until(settled, timeout=120, interval=0.5, message="broker assigned and idle")
    return samples[-1]


def test_hostile_corpus_is_stored_or_dead_lettered_in_bounded_memory(
    rig: Rig, mongo_db: Db
) -> None:
    stream = hostile_stream(seed=7)
    decoder = decoder_for(
        REFERENCE / "lsst" / "schema" if REFERENCE.is_dir() else None, MAX_MESSAGE_BYTES
    )
    verdicts = [expected_outcome(decoder, raw) for raw in stream]
    reasons = Counter(v.reason for v in verdicts if v.reason)
    assert {"bad_schema", "undecodable", "unknown_schema", "oversized"} <= set(reasons)
    good = {v.key for v in verdicts if v.key}

    process = rig.start()
    idle = idle_rss(process)
    produce(rig.bootstrap, rig.topics[0], stream)

    def all_handled() -> bool:
        assert process.running(), f"the broker exited:\n{process.log[-5000:]}"
        stored = mongo_db["alerts"].count_documents({})
        return stored >= len(good) and mongo_db["rejected"].count_documents({}) >= sum(
            reasons.values()
        )

    with process.diagnosed():
        poll_until(all_handled, timeout=300, interval=1.0, message="every message handled")
    peak = memory_kib(process.popen.pid)["VmHWM"]
    finished = process.terminate()
    assert finished.returncode == 0, finished.log[-5000:]
    assert "Traceback" not in finished.log
    assert peak - idle < RSS_HEADROOM_KIB, f"peak RSS {peak} KiB, idle {idle} KiB"

    assert {doc["_id"] for doc in mongo_db["alerts"].find({}, {"_id": 1})} == good
    rejected = Counter(doc["reason"] for doc in mongo_db["rejected"].find({}, {"reason": 1}))
    assert rejected == reasons
    dead = read_topic(rig.bootstrap, rig.dead_letter_topic)
    assert Counter(m.headers["nightjar-reason"].decode() for m in dead) == reasons
    print(f"hostile corpus: {len(stream)} messages, {len(good)} stored, {dict(reasons)}")
    print(f"broker RSS idle {idle / 1024:.0f} MiB, peak {peak / 1024:.0f} MiB")
