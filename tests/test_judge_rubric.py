import pytest

from cbtpipe.design import load_rubric
from cbtpipe.stages.judge import aggregate, score_schema, total_score
from cbtpipe.workflow import PipelineError


def test_shipped_rubrics_load(root):
    std = load_rubric(root / "resources/rubrics/ctrs.yaml")
    mod = load_rubric(root / "resources/rubrics/ctrs_modified.yaml")
    assert len(std["items"]) == 11 and std["max_total"] == 66
    assert [i["id"] for i in std["items"]] == [i["id"] for i in mod["items"]]
    changed = {i["id"] for i in mod["items"] if i["modification"]}
    assert {"agenda", "homework"} <= changed
    assert mod["competence_threshold"] == 40


def _write(tmp_path, body):
    f = tmp_path / "r.yaml"
    f.write_text(body)
    return f


BASE = """name: X
scale: {min: 0, max: 6}
items:
  - id: a
    anchors: {0: bad, 6: good}
"""


def test_duplicate_item_id_names_line(tmp_path):
    f = _write(tmp_path, BASE + "  - id: a\n    anchors: {0: x}\n")
    with pytest.raises(PipelineError, match=r"line 6: duplicate item id 'a' \(first at line 4\)"):
        load_rubric(f)


def test_inverted_range_names_line(tmp_path):
    f = _write(tmp_path, BASE.replace("{min: 0, max: 6}", "{min: 6, max: 0}"))
    with pytest.raises(PipelineError, match=r"r.yaml, line 2: scale range 6..0 is inverted"):
        load_rubric(f)
    f = _write(tmp_path, BASE + "  - id: b\n    min: 5\n    max: 1\n    anchors: {1: x}\n")
    with pytest.raises(PipelineError, match=r"line 6: item 'b' has an inverted"):
        load_rubric(f)


def test_missing_anchors_and_out_of_range_anchor(tmp_path):
    with pytest.raises(PipelineError, match=r"line 6: items\[1\]: 'anchors' is a required property"):
        load_rubric(_write(tmp_path, BASE + "  - id: b\n"))
    with pytest.raises(PipelineError, match="anchor 9 outside 0..6"):
        load_rubric(_write(tmp_path, BASE + "  - id: b\n    anchors: {9: x}\n"))


def test_custom_rubric_with_safety_item(tmp_path):
    r = load_rubric(_write(tmp_path, BASE + "  - id: safety\n    min: 0\n    max: 2\n    anchors: {0: unsafe, 2: safe}\n"))
    assert r["max_total"] == 8
    s = score_schema(r, 50)
    assert s["properties"]["safety"]["properties"]["score"]["maximum"] == 2


def test_totals_and_aggregation():
    r = {"items": [{"id": "a"}, {"id": "b"}]}
    assert total_score({"a": 2, "b": 4}, r, "complete") == 6
    assert total_score({"a": 2, "b": None}, r, "complete") is None
    assert total_score({"a": 2, "b": None}, r, "prorate") == 4
    assert total_score({"a": None, "b": None}, r, "prorate") is None
    assert aggregate([1, None, 3], "mean") == 2
    assert aggregate([1, 2, 9], "median") == 2
    assert aggregate([None], "mean") is None


def test_modified_rubric_agrees_with_the_course_context(root):
    """No anchor of the modified scale asks for what a first session cannot have, and the
    subtotal the report uses as a sensitivity analysis is the Cactus six."""
    mod = load_rubric(root / "resources/rubrics/ctrs_modified.yaml")
    hw = next(i for i in mod["items"] if i["id"] == "homework")
    assert all("where there is any" in hw["anchors"][k] for k in (4, 6))
    assert "course context" in hw["modification"] and "course context" in hw["description"]
    sub = mod["subtotals"]["cactus6"]
    assert sub["max"] == 36 and len(sub["items"]) == 6 and "homework" not in sub["items"]


def test_the_judge_prompt_carries_the_course_context_and_nothing_of_model_or_arm(root):
    from cbtpipe.design import render_template
    from cbtpipe.stages.judge import render_transcript

    rubric = load_rubric(root / "resources/rubrics/ctrs_modified.yaml")
    session = {
        "model": "secretmodelname",
        "arm": "cbt",
        "messages": [{"role": "therapist", "content": "How was the activity log?"}, {"role": "patient", "content": "I did it twice."}],
        "course_context": "Course context: this is session 2 of 20. Homework agreed: an activity log.",
    }
    prompt = render_template(
        root / "resources/prompts/judge.j2",
        rubric=rubric,
        transcript=render_transcript(session),
        context=session["course_context"],
        excerpt=None,
    )
    assert session["course_context"] in prompt and "secretmodelname" not in prompt
    assert "instruct" not in prompt.lower() and "fine-tun" not in prompt.lower() and " cbt arm" not in prompt.lower()
