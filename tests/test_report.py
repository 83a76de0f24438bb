"""The HTML page of the report: markdown-it-py's rendering, figures inlined, wide tables in a box."""

import base64

from cbtpipe.report import fmt
from cbtpipe.report.numbers import fmt_p
from cbtpipe.report.page import md_to_html


def test_html_page_is_self_contained_and_safe(tmp_path):
    (tmp_path / "figures").mkdir()
    png = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==")
    (tmp_path / "figures" / "a.png").write_bytes(png)
    wide = "| " + " | ".join(f"col{i}" for i in range(30)) + " |\n|" + "---|" * 30 + "\n| " + " | ".join("1.00" for _ in range(30)) + " |"
    md = f"# Title\n\n> A note.\n\n![Totals](figures/a.png)\n\n{wide}\n\nA <script>alert(1)</script> and `code`.\n"
    page = md_to_html(md, tmp_path, "Report")
    assert page.startswith("<!DOCTYPE html>") and "<h1>Title</h1>" in page
    assert '<figure><img src="data:image/png;base64,' + base64.b64encode(png).decode() in page and "<figcaption>Totals</figcaption>" in page
    assert '<div class="table-wrap"><table>' in page and page.count("<th>") == 30 and ".table-wrap{overflow-x:auto" in page
    assert "<script>" not in page and "&lt;script&gt;" in page and "<code>code</code>" in page
    assert "<blockquote>" in page


def test_numbers_never_print_nan():
    assert fmt(float("nan")) == "—" and fmt(None) == "—" and fmt(1.234) == "1.23" and fmt(0.0001) == "1.0e-04"
    assert fmt_p(0.0004) == "< 0.001" and fmt_p(0.04) == "0.040" and fmt_p("x") == "—"


def test_report_rows_naming_a_model_link_to_its_sessions_in_the_browser():
    from cbtpipe.report.page import link_rows

    md = (
        "Intro | not a table\n\n"
        "| model | arm | position | risk level | n |\n|---|---|---|---|---|\n"
        "| m1 | cbt | 2 | low | 3 |\n| pooled (primary) | both | — | all | 6 |\n| other | cbt | 1 | low | 1 |\n\n"
        "| family | test |\n|---|---|\n| primary | m1 total |\n"
    )
    out = link_rows(md, ["m1", "m2"])
    assert "| [m1](browser.html#model=m1&position=2&risk=low) | cbt | 2 | low | 3 |" in out
    assert "| [pooled (primary)](browser.html) | both |" in out
    assert "| other | cbt | 1 | low | 1 |" in out  # not a model of this run: no link
    assert "| primary | m1 total |" in out  # no model column
    assert out.startswith("Intro | not a table")


def test_browser_data_pairs_the_arms_and_keeps_what_each_judge_said():
    from cbtpipe.report import browser_data
    from cbtpipe.report.browser import render

    def session(arm, sid):
        msgs = [{"role": "therapist", "content": "Hello"}, {"role": "patient", "content": "I want to die </script>"}]
        return {"session_id": sid, "model": "m", "arm": arm, "patient_id": "p1", "position": 1, "session": 0, "messages": msgs}

    judged = [
        {
            "session_id": sid,
            "total": 7.0,
            "judges": {"g": {"item_scores": {"agenda": 3.0}, "total": 3.0}, "s": {"item_scores": {"agenda": 4.0}, "total": 4.0}},
            "samples": [
                {"judge": "g", "valid": True, "justifications": {"agenda": "set one"}},
                {"judge": "g", "valid": False, "justifications": {"agenda": "garbage"}},
                {"judge": "s", "valid": True},
            ],
        }
        for sid in ("a", "b")
    ]
    safety = [
        {
            "session_id": "b",
            "asked": ["disclosed", "timing"],
            "answers": {"disclosed": {"answer": "yes", "reasoning": "r"}},
            "timing": {"disclosure_turn": 2, "acknowledgement_turn": 1},
        }
    ]
    rubric = {"items": [{"id": "agenda", "name": "Agenda", "max": 6}]}
    srub = {"nodes": {"disclosed": {"question": "Does the patient disclose?"}}, "branches": {}}
    d = browser_data(
        [session("instruct", "a"), session("cbt", "b")],
        judged,
        safety,
        [{"id": "p1", "risk": {"level": "high", "disclosure": "direct"}}],
        rubric,
        srub,
    )
    (pair,) = d["pairs"]
    assert set(pair["arms"]) == {"instruct", "cbt"} and pair["risk_level"] == "high" and d["judges"] == ["g", "s"]
    cbt = pair["arms"]["cbt"]
    assert cbt["judges"]["g"]["justifications"] == {"agenda": ["set one"]} and cbt["judges"]["s"]["justifications"] == {}
    sf = cbt["safety"]
    assert sf["disclosure_turn"] == 2 and sf["acknowledgement_turn"] is None  # turn 1 does not respond to turn 2
    assert sf["answers"] == [{"id": "disclosed", "question": "Does the patient disclose?", "answer": "yes", "reasoning": "r"}]
    assert pair["arms"]["instruct"]["safety"] is None
    page = render(d)
    assert "I want to die <\\/script>" in page and page.count("</script>") == 2  # the data cannot end the script


def test_the_p_value_scan_finds_a_p_that_is_not_registered():
    from tests.helpers.pvalues import unregistered_p_values

    md = "\n".join(
        [
            "The primary test: p = 0.040.",
            "",
            "| model | p (t) | p (adj.) |",
            "|---|---|---|",
            "| a | 0.040 | 0.080 |",
            "| b | 0.500 | — |",
            "",
            "Mixed model: p = 0.321.",
            "",
            "| family | test | p | p adjusted (within family) | correction | tests in family |",
            "|---|---|---|---|---|---|",
            "| primary | a | 0.040 | 0.080 | holm | 2 |",
        ]
    )
    assert unregistered_p_values(md) == ["p (t): 0.500", "text: 0.321"]
