"""Hostile input mixed into a good stream: the broker stores every good alert, dead-letters
every bad message with its reason, and exits 0.

Mutations: truncated, bit-flipped, random bytes, Confluent framing with an unknown schema id,
oversized, empty. A bit flip may still decode into a valid alert, so each message's expected
fate comes from `broker.decode.Decoder` and the workers' stamp check on the mutated bytes.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pymongo.database import Database

from broker.records import Origin
from broker.tools.simulate import iter_alerts
from tests.pipeline_helpers import (
    Expected,
    Rig,
    decoder_for,
    expected_outcome,
    produce,
    read_topic,
)

GOOD = 300
PER_MUTATION = 40
MAX_MESSAGE_BYTES = 300_000
Db = Database[dict[str, Any]]
Mutation = Callable[[random.Random, bytes], bytes]


def truncated(rng: random.Random, raw: bytes) -> bytes:
    return raw[: rng.randrange(1, len(raw))]


def bit_flipped(rng: random.Random, raw: bytes) -> bytes:
    data = bytearray(raw)
    for _ in range(rng.randint(1, 4)):
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    return bytes(data)


def random_bytes(rng: random.Random, _raw: bytes) -> bytes:
    return rng.randbytes(rng.randint(1, 5000))


def unknown_schema_id(rng: random.Random, raw: bytes) -> bytes:
    """Confluent framing whose schema id no registry knows, over a real record body."""
    return b"\x00" + rng.randint(9000, 99999).to_bytes(4, "big") + raw[5:]


def oversized(rng: random.Random, raw: bytes) -> bytes:
    return raw + rng.randbytes(MAX_MESSAGE_BYTES + 1000 - len(raw))


def empty(_rng: random.Random, _raw: bytes) -> bytes:
    return b""


MUTATIONS: dict[str, Mutation] = {
    "truncated": truncated,
    "bit_flipped": bit_flipped,
    "random_bytes": random_bytes,
    "unknown_schema_id": unknown_schema_id,
    "oversized": oversized,
    "empty": empty,
}


def mixed_stream(seed: int) -> list[bytes]:
    """Good ZTF and Rubin alerts with mutated copies of others spread among them."""
    rng = random.Random(seed)
    good = list(iter_alerts("ztf", GOOD - 50, seed=seed)) + list(iter_alerts("lsst", 50, seed=seed))
    lsst = good[-50:]
    bad = []
    for name, mutate in MUTATIONS.items():
        sources = lsst if name == "unknown_schema_id" else good
        bad += [mutate(rng, rng.choice(sources)) for _ in range(PER_MUTATION)]
    stream = good + bad
    rng.shuffle(stream)
    return stream


@pytest.fixture
def rig(make_rig: Any) -> Iterator[Rig]:
    rig: Rig = make_rig("bad-input")
    rig.settings["NIGHTJAR_KAFKA__MAX_MESSAGE_BYTES"] = str(MAX_MESSAGE_BYTES)
    yield rig


def test_bad_messages_are_dead_lettered_and_good_ones_stored(rig: Rig, mongo_db: Db) -> None:
    stream = mixed_stream(seed=51)
    positions = produce(rig.bootstrap, rig.topics[0], stream)
    decoder = decoder_for(max_message_bytes=MAX_MESSAGE_BYTES)
    verdicts = [expected_outcome(decoder, raw) for raw in stream]
    reasons = Counter(v.reason for v in verdicts if v.reason)
    # Damaged stamps are no rejection (the alert is stored, its image models skipped).
    assert {"undecodable", "unknown_schema", "oversized"} <= set(reasons)
    assert "bad_cutouts" not in reasons
    assert sum(reasons.values()) >= 5 * PER_MUTATION

    finished = rig.run(timeout=300)
    assert "Traceback" not in finished.log

    good_keys = {v.key for v in verdicts if v.key}
    stored = {doc["_id"] for doc in mongo_db["alerts"].find({}, {"_id": 1})}
    assert stored == good_keys
    bad = [
        (pos, raw, v) for pos, raw, v in zip(positions, stream, verdicts, strict=True) if v.reason
    ]
    check_rejections(rig, mongo_db, bad)


def check_rejections(rig: Rig, db: Db, bad: list[tuple[tuple[int, int], bytes, Expected]]) -> None:
    rejected = {doc["_id"]: doc for doc in db["rejected"].find()}
    dead = {
        m.headers["nightjar-offset"]: m for m in read_topic(rig.bootstrap, rig.dead_letter_topic)
    }
    assert len(rejected) == len(dead) == len(bad)
    for (partition, offset), raw, verdict in bad:
        doc = rejected[str(Origin(rig.topics[0], partition, offset))]
        assert (doc["reason"], doc["raw"]) == (verdict.reason, raw), offset
        assert doc["detail"]
        message = dead[str(offset).encode()]
        assert message.value == raw
        assert message.headers["nightjar-reason"] == str(verdict.reason).encode()
