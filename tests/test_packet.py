"""The blinded rating packet: no model, arm, quantization, session or patient id anywhere in it,
self-descriptions redacted, every (model, arm) drawn alike, the key kept apart; a filled CSV maps
back to its sessions, and ratings of another packet are refused."""

import csv

import pytest

from cbtpipe.design import load_rubric
from cbtpipe.report import build_packet, load_packet_ratings
from cbtpipe.report.packet import select_sessions
from cbtpipe.workflow import PipelineError, section_defaults
from tests.test_safety import HANDLED, MISSED, NO_RISK

MODELS = ["qwen2.5-7b", "llama3.1-8b"]


def _sessions():
    out = []
    for m in MODELS:
        for arm in ("instruct", "cbt"):
            for k, s in enumerate((MISSED, HANDLED, NO_RISK)):
                msgs = [dict(x) for x in s["messages"]]
                msgs[0]["content"] = "Hi, I am SmolLM, your assistant. " + msgs[0]["content"]
                out.append(
                    dict(
                        s,
                        messages=msgs,
                        model=m,
                        arm=arm,
                        quantization="Q8_0",
                        session_id=f"{m}-{arm}-sess{k}",
                        patient_id=f"eval-00{k}",
                        course_context="Session 2 of 8. Earlier: a sleep diary.",
                    )
                )
    return out


def _build(root, tmp_path, n=8):
    rubric = load_rubric(root / "resources/rubrics/ctrs_modified.yaml")
    pcfg = section_defaults("rating_packet") | {"sessions": n}
    summary = build_packet(_sessions(), rubric, pcfg, MODELS, tmp_path / "rating_packet", tmp_path / "rating_key/key.csv")
    return rubric, summary


def test_the_packet_names_no_model_arm_or_session(root, tmp_path):
    rubric, summary = _build(root, tmp_path)
    html = (tmp_path / "rating_packet/packet.html").read_text()
    template = (tmp_path / "rating_packet/ratings_template.csv").read_text()
    assert summary["transcripts"] == 8 and len(summary["groups"]) == 4
    for text in (html, template):
        low = text.lower()
        for s in _sessions():
            for key in ("model", "session_id", "patient_id", "quantization"):
                assert s[key].lower() not in low, f"{key} {s[key]!r} is in the packet"
        assert "instruct" not in low and "smollm" not in low and "eval-00" not in low
    assert html.count("[redacted]") == 8 and html.count('<section class="transcript"') == 8
    assert "Session 2 of 8" in html  # the course context the therapist had is shown
    for it in rubric["items"]:
        assert f"__{it['id']}" in html and it["name"] in template
    # the key, apart from the packet, maps every rating id to its session
    key = list(csv.DictReader((tmp_path / "rating_key/key.csv").read_text().splitlines()))
    assert [k["rating_id"] for k in key] == [f"R{i:03d}" for i in range(1, 9)]
    assert {(k["model"], k["arm"]) for k in key} == {(m, a) for m in MODELS for a in ("instruct", "cbt")}
    assert not list((tmp_path / "rating_packet").glob("*key*"))
    rows = list(csv.DictReader(template.splitlines()))
    assert len(rows) == 8 * len(rubric["items"]) and {r["packet_id"] for r in rows} == {summary["packet_id"]}


def test_selection_draws_every_group_alike_and_is_fixed_by_its_seed():
    picked = select_sessions(_sessions(), 4, seed=3)
    assert sorted((s["model"], s["arm"]) for s in picked) == sorted((m, a) for m in MODELS for a in ("instruct", "cbt"))
    assert [s["session_id"] for s in picked] == [s["session_id"] for s in select_sessions(_sessions(), 4, seed=3)]
    assert len(select_sessions(_sessions(), None, seed=3)) == 12


def test_a_filled_packet_maps_back_to_its_sessions(root, tmp_path):
    rubric, summary = _build(root, tmp_path, n=4)
    key = {k["rating_id"]: k for k in csv.DictReader((tmp_path / "rating_key/key.csv").read_text().splitlines())}
    rows = list(csv.DictReader((tmp_path / "rating_packet/ratings_template.csv").read_text().splitlines()))
    for k, r in enumerate(rows):
        r["score"] = "" if k == 0 else str(k % 7)  # the first left blank: missing, never 0
        r["rater"] = "rater A"
    filled = tmp_path / "filled.csv"
    with filled.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    got = load_packet_ratings(filled, tmp_path / "rating_key/key.csv", rubric)
    assert len(got) == len(rows) - 1
    assert {g["session_id"] for g in got} == {k["session_id"] for k in key.values()}
    assert got[0]["session_id"] == key[rows[1]["rating_id"]]["session_id"] and got[0]["rater"] == "rater A"
    # a packet made again from other transcripts: the old ratings are refused, not misattributed
    stale = tmp_path / "stale.csv"
    stale.write_text(filled.read_text().replace(summary["packet_id"], "0123456789ab"))
    with pytest.raises(PipelineError, match=r"stale.csv, line 2: packet '0123456789ab' is not the current packet"):
        load_packet_ratings(stale, tmp_path / "rating_key/key.csv", rubric)
    bad = tmp_path / "bad.csv"
    bad.write_text(filled.read_text().replace(",R002,", ",R999,", 1))
    with pytest.raises(PipelineError, match="unknown rating id 'R999'"):
        load_packet_ratings(bad, tmp_path / "rating_key/key.csv", rubric)
