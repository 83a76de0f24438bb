"""The results browser of the CI-sized run, opened in real headless Chromium: a session pair side by
side with its scores, the disclosure highlighted, filters that narrow the list, and the report's
rows linking to their sessions."""

from __future__ import annotations

import json
from pathlib import Path

from cbtpipe.design import load_rubric, load_safety_rubric
from cbtpipe.report import browser_data, write_browser
from cbtpipe.workflow import read_jsonl
from tests.helpers import chromium

M = "smollm2-135m"


def _records(run: Path, stage: str) -> list[dict]:
    return [r for arm in ("instruct", "cbt") for r in read_jsonl(run / f"results/{stage}/{M}/{arm}/shard00.jsonl")]


def _url(page: Path, fragment: str) -> str:
    return page.resolve().as_uri() + "#" + fragment


def _pair_view(dom: chromium.Node) -> dict[str, chromium.Node]:
    main = dom.find("main", id="pair")
    assert main is not None
    return {s.attrs["data-arm"]: s for s in main.find_all("section", cls="arm")}


def test_the_default_runs_page_shows_a_session_pair_side_by_side_with_its_scores(ci_run):
    page = ci_run / "results/report/browser.html"
    assert page.is_file(), "the run did not write the browser"
    sessions = _records(ci_run, "rollouts")
    judged = {j["session_id"]: j for j in _records(ci_run, "judge")}
    safety = {x["session_id"]: x for x in _records(ci_run, "safety")}
    cbt = next(s for s in sessions if s["arm"] == "cbt" and s["position"] == 2)
    twin = next(s for s in sessions if s["arm"] == "instruct" and (s["patient_id"], s["position"]) == (cbt["patient_id"], 2))

    dom = chromium.load(_url(page, f"session={cbt['session_id']}"))
    assert dom.find("body").attrs.get("data-ready") == "1", "the page's script did not finish"
    arms = _pair_view(dom)
    assert set(arms) == {"instruct", "cbt"}
    assert arms["cbt"].attrs["data-session"] == cbt["session_id"] and arms["instruct"].attrs["data-session"] == twin["session_id"]
    for arm, s in (("cbt", cbt), ("instruct", twin)):
        turns = arms[arm].find_all("div", cls="turn")
        assert [t.attrs["data-turn"] for t in turns] == [str(i) for i in range(1, len(s["messages"]) + 1)]
        assert turns[0].find("div", cls="text").text() == s["messages"][0]["content"]
        # every judge's score of every item, as the judge records hold them
        rec = judged[s["session_id"]]
        for judge, j in rec["judges"].items():
            for item, score in j["item_scores"].items():
                row = arms[arm].find("tr", data_item=item)
                cell = row.find("td", cls="score", data_judge=judge)
                assert cell is not None, (arm, judge, item)
                assert float(cell.text()) == score
        # the greedy judge of the CI panel writes rationales: they are shown beside its scores
        why = [w for w in arms[arm].find_all("td", cls="why") if w.text().strip()]
        assert why, f"{arm}: no justification shown"
        # the safety flow's questions and answers, as the safety judge gave them
        srec = safety[s["session_id"]]
        rows = {r.attrs["data-question"]: r for r in arms[arm].find_all("tr") if "data-question" in r.attrs}
        asked = [q for q in srec["asked"] if q != "timing"]
        assert asked and list(rows) == asked
        for q in asked:
            assert rows[q].find_all("td")[1].text() == (srec["answers"][q].get("answer") or "missing")


def test_the_disclosure_and_the_first_response_are_highlighted(ci_run, tmp_path):
    """Highlighting follows the safety judge's turns: checked on the run's page for every session
    the judge found a disclosure in, and on a page of the same records with a disclosure set where
    the tiny judge found none (so the highlighting is always exercised)."""
    rollouts, judged, safety = (_records(ci_run, s) for s in ("rollouts", "judge", "safety"))
    found = [s for s in safety if (s.get("timing") or {}).get("disclosure_turn")]
    pages = [(ci_run / "results/report/browser.html", found)]
    if not found:
        s = next(x for x in safety if x["arm"] == "cbt")
        msgs = next(r for r in rollouts if r["session_id"] == s["session_id"])["messages"]
        first_patient = next(i for i, m in enumerate(msgs, 1) if m["role"] == "patient")
        reply = next((i for i, m in enumerate(msgs, 1) if i > first_patient and m["role"] == "therapist"), 0)
        s["timing"] = dict(s.get("timing") or {}, disclosure_turn=first_patient, acknowledgement_turn=reply)
        page = tmp_path / "browser.html"
        write_browser(
            page,
            browser_data(
                rollouts,
                judged,
                safety,
                read_jsonl(ci_run / "results/profiles/eval.jsonl"),
                load_rubric(ci_run / "resources/rubrics/ctrs_modified.yaml"),
                load_safety_rubric(ci_run / "resources/rubrics/safety.yaml"),
            ),
        )
        pages.append((page, [s]))
    checked = 0
    for page, recs in pages:
        for s in recs:
            t = s["timing"]
            arms = _pair_view(chromium.load(_url(page, f"session={s['session_id']}")))
            view = arms[s["arm"]]
            assert view.attrs["data-session"] == s["session_id"]
            turn = view.find("div", cls="turn", data_turn=str(t["disclosure_turn"]))
            assert "disclosure" in turn.classes and turn.find("span", cls="disclosure").text() == "disclosure"
            assert "patient" in turn.classes
            ack = t.get("acknowledgement_turn")
            responses = [d.attrs["data-turn"] for d in view.find_all("div", cls="first-response")]
            # the therapist's first response is highlighted when it comes after the disclosure
            assert responses == ([str(ack)] if ack and ack > t["disclosure_turn"] else [])
            others = [d for d in view.find_all("div", cls="disclosure") if d.attrs.get("data-turn") != str(t["disclosure_turn"])]
            assert not others, "another turn is highlighted as the disclosure"
            checked += 1
    assert checked >= 1


def test_filters_narrow_the_list_and_report_rows_link_to_their_sessions(ci_run):
    page = ci_run / "results/report/browser.html"
    data = json.loads(page.read_text().split('<script id="data" type="application/json">')[1].split("</script>")[0].replace("<\\/", "</"))
    assert {p["position"] for p in data["pairs"]} == {1, 2}
    dom = chromium.load(_url(page, f"model={M}&position=2"))
    listed = [a.attrs["data-pair"] for a in dom.find("nav", id="list").find_all("a")]
    assert listed and listed == [p["id"] for p in data["pairs"] if p["position"] == 2]
    assert dom.find("main", id="pair").attrs["data-pair"] == listed[0]
    selected = dom.find("select", id="f-position").find("option", selected="")
    assert selected is not None and selected.attrs["value"] == "2"
    # the report: each row naming the model links to the browser, narrowed by the row's position
    report = chromium.load((ci_run / "results/report/report.html").resolve().as_uri())
    links = [a.attrs["href"] for a in report.find_all("a") if a.attrs.get("href", "").startswith("browser.html")]
    assert "browser.html" in links and f"browser.html#model={M}" in links and f"browser.html#model={M}&position=2" in links
    # a link opens its sessions
    dom = chromium.load(_url(page, f"model={M}&position=1"))
    assert all(p.split("|")[2] == "1" for p in (a.attrs["data-pair"] for a in dom.find("nav", id="list").find_all("a")))
