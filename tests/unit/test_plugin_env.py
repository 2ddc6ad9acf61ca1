"""A worker's own NIGHTJAR_MODELS__* variables override the settings the broker shipped."""

from __future__ import annotations

import pytest

from broker.settings import ModelSettings
from workers.plugin import with_worker_environment


def test_worker_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIGHTJAR_MODELS__PROVIDER", "cuda")
    monkeypatch.setenv("NIGHTJAR_MODELS__ENABLED", '["braai", "btsbot"]')
    shipped = ModelSettings(provider="cpu", intra_op_threads=2)

    local = with_worker_environment(shipped)

    assert local.provider == "cuda"
    assert local.enabled == ["braai", "btsbot"]
    assert local.intra_op_threads == 2  # not overridden: the broker's value stays


def test_without_overrides_the_shipped_settings_are_used(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PROVIDER", "ENABLED", "DIR", "INTRA_OP_THREADS", "REGISTRY", "BTSBOT_DRB"):
        monkeypatch.delenv(f"NIGHTJAR_MODELS__{name}", raising=False)
    shipped = ModelSettings(provider="cpu")
    assert with_worker_environment(shipped) is shipped


def test_a_bad_worker_override_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIGHTJAR_MODELS__PROVIDER", "tpu")
    with pytest.raises(ValueError, match="provider"):
        with_worker_environment(ModelSettings())
