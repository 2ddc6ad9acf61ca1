"""`nightjar score`: alert files in, one JSON line per alert out, same scores as the workers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.__main__ import main
from broker.records import RejectReason, ScoringInput
from broker.settings import ModelSettings
from workers.annotate import Annotator


def score_lines(
    reference: Path, models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> list[dict[str, Any]]:
    config = tmp_path / "nightjar.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "schemas": {"lsst_schema_dir": str(reference / "lsst" / "schema")},
                "models": {"provider": "cpu"},
            }
        )
    )
    paths = [str(reference / "ztf" / "alerts"), str(reference / "lsst" / "alerts")]
    assert main(["--config", str(config), "score", "--models-dir", str(models_dir), *paths]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_score_prints_what_the_annotator_computes(
    reference: Path,
    model_settings: ModelSettings,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    ztf_samples: list[tuple[Path, dict[str, Any], ScoringInput]],
) -> None:
    lines = score_lines(reference, model_settings.dir, tmp_path, capsys)
    assert len(lines) == len(ztf_samples) + 1
    by_file = {Path(line["file"]).name: line for line in lines}
    results = Annotator.from_settings(model_settings).annotate([i for _, _, i in ztf_samples])
    for (path, packet, item), result in zip(ztf_samples, results, strict=True):
        line = by_file[path.name]
        if packet.get("objectId") is None:
            # The decoder rejects schema 1.x packets before any stamp is read (1.0's schema
            # types isdiffpos as an int: it does not resolve against ZTF 4.02).
            assert line["rejected"]["reason"] in (
                RejectReason.MISSING_FIELD,
                RejectReason.BAD_SCHEMA,
            )
            continue
        assert (line["survey"], line["candid"], line["objectId"]) == (
            "ztf",
            item.candid,
            item.object_id,
        )
        if result.rejected is not None:
            assert line["rejected"] == dict(zip(("reason", "detail"), result.rejected, strict=True))
            continue
        assert set(line["annotations"]) == {a.model for a in result.annotations}
        for annotation in result.annotations:
            printed = line["annotations"][annotation.model]
            assert printed["version"] == annotation.version
            assert printed["score"] == pytest.approx(annotation.score, abs=1e-6)
    lsst = by_file["25409136044802067.avro"]
    assert lsst["survey"] == "lsst" and lsst["objectId"] == "25401295582003262"
    assert lsst["annotations"]["reliability"]["score"] == pytest.approx(0.8079, abs=1e-4)


def test_score_rejects_a_file_that_is_not_an_alert(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bogus = tmp_path / "bogus.avro"
    bogus.write_bytes(b"this is not avro")
    assert main(["score", "--models-dir", str(tmp_path / "none"), str(bogus)]) == 0
    (line,) = [json.loads(text) for text in capsys.readouterr().out.splitlines()]
    assert line["rejected"]["reason"] == RejectReason.UNDECODABLE


def test_score_names_a_missing_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["score", str(tmp_path / "absent.avro")]) == 2
    assert "absent.avro is neither a file nor a folder" in capsys.readouterr().err
