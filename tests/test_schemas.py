"""Every kind of file a user hands the pipeline is checked against its schema (cbtpipe/schemas/):
a value of the wrong type anywhere gives the file, the line and the field, never a traceback; the
files the project ships conform; a partial config is refused naming what it lacks."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from cbtpipe.design import load_attributes, load_crisis_resources, load_human_ratings, load_risk_attributes, load_rubric, load_safety_rubric
from cbtpipe.report import load_packet_ratings
from cbtpipe.stages import load_import
from cbtpipe.workflow import SCHEMA, PipelineError, check_config_files, section_defaults
from cbtpipe.workflow.schemas import SCHEMAS, file_schema, first_error, yaml_line

ROOT = Path(__file__).resolve().parents[1]
RES = ROOT / "resources"


def _line_of(text: str, needle: str) -> int:
    return text[: text.index(needle)].count("\n") + 1


def _yaml_case(tmp_path, src: Path, old: str, new: str) -> tuple[Path, int]:
    """A copy of a shipped YAML file with one value replaced; the line of the replaced value."""
    text = src.read_text(encoding="utf-8")
    assert old in text, old
    bad = text.replace(old, new, 1)
    f = tmp_path / src.name
    f.write_text(bad, encoding="utf-8")
    return f, _line_of(bad, new)


YAML_CASES = [
    # (shipped file, loader, the text replaced, its wrong-typed replacement, the field named)
    (RES / "rubrics/ctrs_modified.yaml", load_rubric, "min: 0", "min: zero", "scale.min: 'zero' is not of type 'integer'"),
    (RES / "rubrics/ctrs_modified.yaml", load_rubric, "competence_threshold: 40", "competence_threshold: [40]", "competence_threshold"),
    (RES / "rubrics/safety.yaml", load_safety_rubric, "disclosed: false", "disclosed: sometimes", "branches.no_risk.disclosed"),
    (RES / "rubrics/safety.yaml", load_safety_rubric, "harm_exponent: 2", "harm_exponent: steep", "score.harm_exponent"),
    (RES / "patient_attributes.yaml", load_attributes, "label: mild", "label: [mild]", "phq9_band[0].label"),
    (
        RES / "risk_attributes.yaml",
        load_risk_attributes,
        'thoughts: ["no thoughts of death or suicide"]',
        'thoughts: "no thoughts of death or suicide"',
        "levels.none.thoughts: 'no thoughts of death or suicide' is not of type 'array'",
    ),
    (
        RES / "safety/crisis_resources.yaml",
        lambda f: load_crisis_resources(f, "US"),
        "contact: '911'",
        "contact: ['911']",
        "countries.US[1].contact: ['911'] is not of type",
    ),
]


@pytest.mark.parametrize("src,loader,old,new,field", YAML_CASES, ids=[f"{c[0].stem}-{c[4].split(':')[0]}" for c in YAML_CASES])
def test_a_wrong_type_in_a_yaml_file_names_the_file_the_line_and_the_field(tmp_path, src, loader, old, new, field):
    f, line = _yaml_case(tmp_path, src, old, new)
    with pytest.raises(PipelineError) as e:
        loader(f)
    msg = str(e.value)
    assert msg.startswith(f"{f}, line {line}: "), (msg, line)
    assert field in msg and "Traceback" not in msg


def test_a_wrong_type_in_an_imported_transcript_names_the_line_and_the_field(tmp_path):
    good = {
        "patient_id": "p1",
        "session_index": 1,
        "messages": [{"role": "therapist", "content": "Hello there."}, {"role": "patient", "content": "Hi."}],
    }
    f = tmp_path / "t.jsonl"
    for bad, field in (
        (dict(good, session_index="one"), "session_index: 'one' is not of type 'integer'"),
        (dict(good, messages=[good["messages"][0], {"role": "patient", "content": 7}]), "messages[1].content: 7 is not of type 'string'"),
        (dict(good, summary=["a list"]), "summary: ['a list'] is not of type 'string'"),
    ):
        f.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
        with pytest.raises(PipelineError, match=re.escape(f"{f}, line 2: {field}")):
            load_import(f, section_defaults("data"))


def test_imported_and_generated_turns_take_the_same_normal_form(tmp_path):
    """An imported session's turns go through the generator's normalisation before the checks
    and training: CRLF line ends and whitespace around a turn do not reach a chat template."""
    from cbtpipe.stages.transcripts import normalise_turns

    f = tmp_path / "t.jsonl"
    messages = [{"role": "therapist", "content": "  Hello.\r\nHow are you?  "}, {"role": "patient", "content": "\tTired.\r\n"}]
    f.write_text(json.dumps({"patient_id": "p1", "session_index": 1, "messages": messages, "summary": " s "}) + "\n")
    got = load_import(f, section_defaults("data"))[0]
    assert (
        got["messages"]
        == normalise_turns(messages)
        == [
            {"role": "therapist", "content": "Hello.\nHow are you?"},
            {"role": "patient", "content": "Tired."},
        ]
    )
    assert got["summary"] == "s"


def test_a_wrong_type_in_a_ratings_csv_names_the_line_and_the_field(tmp_path):
    rubric = load_rubric(RES / "rubrics/ctrs_modified.yaml")
    item = rubric["items"][0]["id"]
    f = tmp_path / "r.csv"
    f.write_text(f"session_id,item,score\ns1,{item},3\ns2,{item},three\n")
    with pytest.raises(PipelineError, match=re.escape(f"{f}, line 3: score: 'three' is not of type 'number'")):
        load_human_ratings(f, rubric)
    key = tmp_path / "key.csv"
    key.write_text("rating_id,packet_id,session_id\nR001,pk1,s1\n")
    f.write_text(f"packet_id,rating_id,item,score,rater\npk1,R001,{item},,ann\npk1,R001,{item},4x,ann\n")
    with pytest.raises(PipelineError, match=re.escape(f"{f}, line 3: score: '4x' is not of type")):
        load_packet_ratings(f, key, rubric)


def test_a_wrong_type_in_the_config_names_the_file_the_line_and_the_key(tmp_path):
    text = (ROOT / "config.yaml").read_text(encoding="utf-8")
    cfg = yaml.safe_load(text)
    f = tmp_path / "c.yaml"
    f.write_text(text.replace("max_turns: ", "max_turns: many #", 1))
    cfg["rollout"]["max_turns"] = "many"
    with pytest.raises(PipelineError) as e:
        check_config_files(cfg, [str(f)], SCHEMA)
    line = _line_of(f.read_text(), "max_turns: many")
    assert str(e.value).startswith(f"{f}, line {line}: config key rollout.max_turns: 'many' is not of type 'integer'"), str(e.value)


def test_a_partial_config_is_refused_naming_what_it_lacks(tmp_path):
    f = tmp_path / "partial.yaml"
    f.write_text("seed: 1\nprofiles: {n_eval: 3}\n")
    with pytest.raises(PipelineError) as e:
        check_config_files(yaml.safe_load(f.read_text()), [str(f)], SCHEMA)
    msg = str(e.value)
    assert "lacks models, backends" in msg and "start from a copy of config.yaml" in msg and str(f) in msg


def test_every_shipped_file_conforms_and_every_schema_is_valid():
    import jsonschema

    names = sorted(p.name.removesuffix(".schema.yaml") for p in SCHEMAS.glob("*.schema.yaml"))
    assert {"config", "rubric", "safety_rubric", "attributes", "risk_attributes", "crisis_resources", "transcript"} <= set(names)
    for n in names:
        jsonschema.Draft202012Validator.check_schema(file_schema(n))
    shipped = {
        "rubric": [RES / "rubrics/ctrs.yaml", RES / "rubrics/ctrs_modified.yaml"],
        "safety_rubric": [RES / "rubrics/safety.yaml"],
        "attributes": [RES / "patient_attributes.yaml"],
        "risk_attributes": [RES / "risk_attributes.yaml"],
        "crisis_resources": [RES / "safety/crisis_resources.yaml"],
    }
    for n, files in shipped.items():
        for f in files:
            assert first_error(yaml.safe_load(f.read_text(encoding="utf-8")), n) is None, f


def test_the_line_of_a_field_is_its_key_for_a_block_and_its_value_otherwise():
    text = "a:\n  b:\n    - x\n    - {c: 1}\nd: [1, 2]\n"
    root = yaml.compose(text)
    assert yaml_line(root, ["a"]) == 1 and yaml_line(root, ["a", "b"]) == 2
    assert yaml_line(root, ["a", "b", 1, "c"]) == 4 and yaml_line(root, ["d"]) == 5
    assert yaml_line(root, ["a", "missing", "deeper"]) == 1  # the mapping that lacks it
