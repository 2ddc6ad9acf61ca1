"""broker.consume.CrashGuard on the real MongoDB-compatible server: each new guard on the same
collection is a restarted process, each `begin` without a `committed` a death.

After kafka.poison_after_deaths deaths at the same offsets the guard bisects the range, one
half per attempt, until the killer is alone; a half that passes moves the range on.
"""

from __future__ import annotations

from typing import Any

from pymongo.database import Database

from broker.consume import CrashGuard

TP = ("ztf_20240101_programid1", 0)
Db = Database[dict[str, Any]]


def restarted(db: Db, deaths_limit: int = 3) -> CrashGuard:
    guard = CrashGuard(db["crashloop"], "group-a", deaths_limit)
    guard.load()
    return guard


def test_a_killer_is_isolated_by_bisection_after_k_deaths(mongo_db: Db) -> None:
    killer = 5
    for _ in range(3):  # K deaths reading 0-7
        plan = restarted(mongo_db).begin({TP: (0, 7)})
        assert not plan.poison
    tried: list[tuple[int, int]] = []
    poisoned = None
    for _ in range(10):
        guard = restarted(mongo_db)
        first = mongo_db["crashloop"].find_one()["start"]  # type: ignore[index]
        plan = guard.begin({TP: (first, 7)})
        limit = guard.limit(TP)
        assert limit is not None, "isolating after K deaths"
        if plan.poison:
            poisoned = plan.poison[TP]
            guard.committed(TP, poisoned + 1)
            break
        tried.append((first, limit))
        if not first <= killer <= limit:
            guard.committed(TP, limit + 1)  # the half passed
        # else: this process dies (no commit)
    assert poisoned == killer, tried
    assert tried == [(0, 3), (4, 5), (4, 4), (5, 5)]
    assert mongo_db["crashloop"].count_documents({}) == 0  # isolation over: cleared


def test_progress_clears_the_count_and_a_commit_past_the_reads_the_record(mongo_db: Db) -> None:
    guard = restarted(mongo_db)
    guard.begin({TP: (0, 9)})
    guard.begin({TP: (10, 19)})
    guard.committed(TP, 10)  # batch one done, batch two in flight
    doc = mongo_db["crashloop"].find_one()
    assert doc is not None and (doc["start"], doc["end"], doc["attempts"]) == (10, 19, 1)
    for deaths in (2, 3):  # two more deaths at 10: not yet K consecutive at the same offset
        guard = restarted(mongo_db)
        assert not guard.begin({TP: (10, 19)}).poison and guard.limit(TP) is None
        assert mongo_db["crashloop"].find_one()["attempts"] == deaths  # type: ignore[index]
    guard.committed(TP, 20)
    assert mongo_db["crashloop"].count_documents({}) == 0
    # A record left at other offsets (another member committed since) is stale: ignored.
    guard = restarted(mongo_db)
    guard.begin({TP: (20, 29)})
    assert restarted(mongo_db).begin({TP: (30, 39)}).poison == {}
