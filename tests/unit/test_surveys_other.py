"""WINTER, PGIR, TURBO and DECam: one real packet each mapped to the common Alert (values read
by hand from ../shared/reference/other with fastavro), their photometry conventions, the
writer-schema default repair, their packet scores, and the simulators."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, get_args

import pytest

from broker.avro.container import zigzag_long
from broker.decode import Decoder
from broker.errors import BadAlert
from broker.records import Alert, Annotation, ModelSkip, RejectReason, ScoringInput, Survey
from broker.settings import ModelSettings, SchemaSettings
from broker.surveys import surveys, tables
from broker.surveys.schema_repair import repair_defaults
from broker.tools.simulate import simulate
from workers.annotate import Annotator

REPO = Path(__file__).resolve().parents[2]
OTHER = REPO.parent / "shared" / "reference" / "other"
OTHERS = ("winter", "pgir", "turbo", "decam")


@pytest.fixture(scope="module")
def decoder() -> Decoder:
    return Decoder(SchemaSettings(), max_message_bytes=4 * 1024 * 1024)


def real(decoder: Decoder, relative: str) -> Alert:
    path = OTHER / relative
    if not path.is_file():
        pytest.skip(f"{path} is absent (../shared/reference/other)")
    return decoder.decode(path.read_bytes())


def scoring_input(alert: Alert) -> ScoringInput:
    return ScoringInput(
        alert.survey, alert.candid, alert.object_id, alert.ra, alert.dec, alert.jd,
        alert.candidate, alert.history, alert.cutouts, alert.schema_version,
    )  # fmt: skip


def test_every_survey_has_an_adapter_and_a_literal() -> None:
    assert set(surveys()) == set(get_args(Survey))


def test_winter_packet(decoder: Decoder) -> None:
    alert = real(decoder, "winter/3608694.avro")
    assert (alert.survey, alert.object_id, alert.candid) == ("winter", "WNTR24awati", 3608694)
    assert (alert.ra, alert.dec) == (262.57510324672927, 7.263941826142513)
    assert alert.jd == 2460381.031487338 and alert.schema_version == "0.1"
    assert [h["candid"] for h in alert.history] == [3563406]
    assert len(alert.cutouts.science) == 11519 and len(alert.cutouts.difference) == 23133
    point = tables("winter").photometry(alert.candidate)
    assert point is not None and point.filter == "2massj"  # fid 2: mirar's J
    assert point.flux == pytest.approx(10 ** (-0.4 * (13.351142883300781 - 23.9)))
    history = tables("winter").photometry(alert.history[0])
    assert history is not None and history.mjd == pytest.approx(2460380.0425021877 - 2400000.5)


def test_pgir_packet_in_vega_j(decoder: Decoder) -> None:
    alert = real(decoder, "pgir/114297926.avro")
    assert (alert.survey, alert.object_id, alert.candid) == ("pgir", "PGIR19aacbvv", 114297926)
    assert (alert.ra, alert.dec, alert.jd) == (285.8821855, 10.3545798, 2459394.72358796)
    assert len(alert.history) == 71 and alert.packet["prv_candidates"][0]["candid"] == 110322760
    jds = [h["jd"] for h in alert.history]  # oldest first, as every survey's history
    assert jds == sorted(jds) and jds[0] == 2459304.97910879
    assert alert.candidate["drb"] == 1.0 and alert.candidate["drbversion"] == "modela4.json"
    point = tables("pgir").photometry(alert.candidate)
    assert point is not None and point.filter == "2massj"
    # 10.176 Vega J is 11.086 AB: 10**(-0.4 * (11.086 - 23.9)) microjansky.
    assert point.flux == pytest.approx(10 ** (-0.4 * (10.175999641418457 + 0.91 - 23.9)))
    assert point.fluxerr == pytest.approx(point.flux * 0.050999999046325684 * math.log(10) / 2.5)


def test_turbo_packet_despite_its_schema(
    decoder: Decoder, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="broker.decode"):
        alert = real(decoder, "turbo/1.avro")
        real(decoder, "turbo/2.avro")
    # The top-level candid names the alert; the candidate's (89 in every sample) does not.
    assert (alert.survey, alert.object_id, alert.candid) == ("turbo", "None.20", 0)
    assert alert.candidate["candid"] == 89 and alert.candidate["fid"] == 1
    assert (alert.ra, alert.dec, alert.jd) == (35.64806, 13.86028, 2459875.6666435185)
    assert alert.history == () and len(alert.cutouts.science) == 5558
    repaired = [r for r in caplog.records if "turbo.alert" in r.getMessage()]
    assert len(repaired) == 1, "logged once per schema"
    assert "candidate.fid: default None does not match type int" in repaired[0].getMessage()
    assert tables("turbo").photometry(alert.candidate) is None  # no bandpass names


def test_decam_packet_in_nanojansky(decoder: Decoder) -> None:
    alert = real(decoder, "decam/alert.avro")
    object_id = "c4d_260708_015517_xxx_g_dts-1511-140151997p15275543"
    assert (alert.survey, alert.object_id, alert.candid) == ("decam", object_id, 65346)
    assert (alert.ra, alert.dec) == (210.46665487799385, 15.465407817355283)
    assert alert.jd == pytest.approx(61229.08006057 + 2400000.5)
    assert alert.schema_version == "0.1.0" and len(alert.history) == 1
    point = tables("decam").photometry(alert.candidate)
    assert point is not None and point.filter == "desg"
    assert point.flux == pytest.approx(1.3752510968520771)  # psfFlux 1375.25 nJy
    assert point.fluxerr == pytest.approx(0.25522958026120955)


def test_repair_drops_only_mismatched_defaults() -> None:
    schema = {
        "type": "record", "name": "alert", "namespace": "turbo",
        "fields": [
            {"name": "fid", "type": "int", "default": None},
            {"name": "rb", "type": ["float", "null"], "default": None},
            {"name": "flag", "type": "boolean", "default": 0},
            {"name": "n", "type": "int", "default": 3},
        ],
    }  # fmt: skip
    repaired, problems = repair_defaults(schema)
    defaults = {f["name"]: f.get("default", "absent") for f in repaired["fields"]}
    assert defaults == {"fid": "absent", "rb": None, "flag": "absent", "n": 3}
    assert len(problems) == 2 and "alert.fid" in problems[0]
    assert schema["fields"][0]["default"] is None  # the input is left alone


def test_schemas_broken_otherwise_are_still_refused(decoder: Decoder) -> None:
    schema = {"type": "record", "name": "alert", "namespace": "turbo",
              "fields": [{"name": "x", "type": "no_such_type", "default": None}]}  # fmt: skip
    text = json.dumps(schema).encode()
    # The header by hand: no Avro library writes a schema it cannot parse.
    header = b"".join(
        (
            b"Obj\x01", zigzag_long(1), zigzag_long(11), b"avro.schema",
            zigzag_long(len(text)), text, zigzag_long(0), b"\x00" * 16,
        )
    )  # fmt: skip
    with pytest.raises(BadAlert) as caught:
        decoder.decode(header)
    # The schema guard refuses it before the parser is reached (broker.avro.guard).
    assert caught.value.reason == RejectReason.BAD_SCHEMA
    assert "no_such_type" in caught.value.detail


def packet_scores(batch: list[ScoringInput]) -> list[tuple[Any, ...]]:
    annotator = Annotator.from_settings(ModelSettings(dir=REPO / "no-such-models-dir"))
    return [(*r.annotations, *r.skipped) for r in annotator.annotate(batch)]


def test_only_the_packet_scores_of_each_survey(decoder: Decoder) -> None:
    pgir = real(decoder, "pgir/114297926.avro")
    decam = real(decoder, "decam/alert.avro")
    winter = real(decoder, "winter/3608694.avro")
    found = packet_scores([scoring_input(a) for a in (pgir, decam, winter)])
    assert found[0] == (Annotation("pgir_drb", "modela4.json", 1.0),)
    assert found[1] == (Annotation("decam_reliability", None, pytest.approx(0.93080384)),)
    assert found[2] == (ModelSkip("winter_rb", "packet has no rb"),)


@pytest.mark.parametrize("survey", OTHERS)
def test_simulated_alerts_decode(decoder: Decoder, survey: str) -> None:
    alerts = list(simulate(survey, 12, seed=3))
    assert [a.data for a in simulate(survey, 12, seed=3)] == [a.data for a in alerts]
    decoded = [decoder.decode(a.data) for a in alerts]
    assert {a.survey for a in decoded} == {survey}
    assert len({a.key for a in decoded}) == 12
    assert [a.candid for a in decoded] == [a.candid for a in alerts]
    assert all(a.object_id == s.object_id for a, s in zip(decoded, alerts, strict=True))
    assert sum(len(a.history) for a in decoded) > 0
    convert = tables(survey).photometry
    points = [convert(row) for a in decoded for row in (a.candidate, *a.history)]
    assert survey == "turbo" or sum(p is not None for p in points) >= 12


def test_a_repeated_field_name_keeps_both_values() -> None:
    schema = {"type": "record", "name": "candidate", "fields": [
        {"name": "sgmag1", "type": "float"}, {"name": "x", "type": "int"},
        {"name": "sgmag1", "type": "float"}, {"name": "sgmag1_2", "type": "int"},
    ]}  # fmt: skip
    repaired, problems = repair_defaults(schema)
    names = [field["name"] for field in repaired["fields"]]
    assert names == ["sgmag1", "x", "sgmag1_3", "sgmag1_2"]
    assert problems == ["candidate.sgmag1: repeated field name, the later one read as 'sgmag1_3'"]
    assert [f["name"] for f in schema["fields"]].count("sgmag1") == 2  # input untouched
