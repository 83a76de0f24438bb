"""Judge panels and judging modes against a loopback OpenAI-compatible server that answers from
the request's own schema: every judge's scores kept, the panel's score reduced over judges and
missing unless every judge gave one, units per judge (a changed judge re-judges alone), one call
per item in per-item mode, and the justification written before the score by default."""

import json

from cbtpipe.design import load_rubric
from cbtpipe.llm import OpenAIBackend
from cbtpipe.stages import run_panel
from cbtpipe.stages.judge import score_schema
from cbtpipe.workflow import hash_obj, judge_members, section_defaults
from tests.helpers.fault_server import FaultServer
from tests.test_safety import HANDLED, MISSED, NO_RISK

SESSIONS = [MISSED, HANDLED, NO_RISK]


def _answer(requests, broken_model=None):
    """Scores from a hash of the request, for exactly the items its schema asks; a model named
    ``broken_model`` answers with text that is not JSON."""

    def answer(body):
        requests.append(body)
        if body["model"] == broken_model:
            return "I cannot rate this."
        props = body["response_format"]["json_schema"]["schema"]["properties"]
        h = int(hash_obj([body["messages"], body["seed"], body["model"]], 8), 16)
        return json.dumps({k: {"justification": "ok", "score": (h >> i) % 7} for i, k in enumerate(props)})

    return answer


def _run(root, tmp_path, panel, broken_model=None, runs=1):
    """``runs`` runs of the panel against one server (``panel`` may be a function of the run)."""
    rubric = load_rubric(root / "resources/rubrics/ctrs_modified.yaml")
    results = []
    requests = []
    with FaultServer(slow_s=0.0, answer=_answer(requests, broken_model)) as srv:
        for k in range(runs):
            requests.clear()
            p = panel(k) if callable(panel) else panel
            judge = section_defaults("judge") | {
                "backend": "a",
                "samples": 2,
                "sampling": {"temperature": 0.7, "max_tokens": 300},
                "panel": p,
            }
            members = judge_members(judge)
            backends = {
                n: OpenAIBackend(n, {"type": "openai", "base_url": srv.url("latency"), "model": n, "max_retries": 0}, cache_dir=None)
                for n in ("a", "b")
            }
            tpl = root / "resources/prompts/judge.j2"
            out, stats = run_panel(SESSIONS, backends, rubric, members, [tpl] * len(members), tmp_path / "u", judge["panel_reducer"])
            for b in backends.values():
                b.close()
            results.append((out, stats, list(requests)))
    return (rubric, *results[0]) if runs == 1 else (rubric, results)


def test_a_panel_keeps_every_judge_and_reduces_over_them(root, tmp_path):
    panel = [{"name": "warm"}, {"name": "cold", "backend": "b", "samples": 1, "sampling": {"temperature": 0.0}}]
    rubric, out, stats, requests = _run(root, tmp_path, panel)
    assert len(requests) == 3 * (2 + 1)
    assert {r["model"] for r in requests} == {"a", "b"}
    assert {r["temperature"] for r in requests if r["model"] == "b"} == {0.0}
    assert {r["max_tokens"] for r in requests} == {300}  # the member's sampling keeps the section's other keys
    for rec in out:
        assert set(rec["judges"]) == {"warm", "cold"} and len(rec["samples"]) == 3
        assert {s["judge"] for s in rec["samples"]} == {"warm", "cold"}
        t = [rec["judges"][j]["total"] for j in ("warm", "cold")]
        assert rec["total"] == sum(t) / 2  # the mean of the judges (each the mean of its samples)
    assert set(stats["judges"]) == {"warm", "cold"} and stats["samples"] == 9


def test_a_judge_that_fails_leaves_the_panel_score_missing_and_a_changed_judge_rejudges_alone(root, tmp_path):
    def panel(run):  # the second run changes the second judge only
        return [{"name": "warm"}, {"name": "broken", "backend": "b", "max_attempts": 1, "samples": 2 - run}]

    _, [(out, _, _), (out2, stats2, requests)] = _run(root, tmp_path, panel, broken_model="b", runs=2)
    for rec in out:
        assert rec["judges"]["warm"]["total"] is not None and rec["judges"]["broken"]["total"] is None
        assert rec["total"] is None and all(v is None for v in rec["item_scores"].values())  # missing, never 0
    # the first judge is read back from its units, with no call of its own
    assert stats2["judges"]["warm"]["sessions_reused"] == 3 and stats2["judges"]["broken"]["sessions_reused"] == 0
    assert {r["model"] for r in requests} == {"b"}
    assert [r["judges"]["warm"] for r in out2] == [r["judges"]["warm"] for r in out]


def test_per_item_mode_asks_one_item_per_call(root, tmp_path):
    rubric, out, stats, requests = _run(root, tmp_path, [{"name": "items", "mode": "per_item", "samples": 1}])
    n_items = len(rubric["items"])
    assert len(requests) == 3 * n_items
    for r in requests:
        props = r["response_format"]["json_schema"]["schema"]["properties"]
        assert len(props) == 1
        (item,) = props
        prompt = r["messages"][-1]["content"]
        others = [i["name"] for i in rubric["items"] if i["id"] != item]
        assert not any(f'(id "{i["id"]}"' in prompt for i in rubric["items"] if i["id"] != item), others
    assert all(rec["total"] is not None and len(rec["samples"][0]["scores"]) == n_items for rec in out)


def test_reasoning_comes_before_the_score_by_default(root):
    rubric = load_rubric(root / "resources/rubrics/ctrs_modified.yaml")
    first = score_schema(rubric, 40)["properties"]["agenda"]["properties"]
    assert list(first) == ["justification", "score"]
    assert list(score_schema(rubric, 40, reasoning_first=False)["properties"]["agenda"]["properties"]) == ["score", "justification"]
    # no justification: the item's score is the item's value ({"agenda": 3}), half the tokens
    assert score_schema(rubric, 0)["properties"]["agenda"]["type"] == "integer"
    assert section_defaults("judge")["reasoning_first"] is True


def test_judges_sharing_a_backend_count_their_own_calls(root, tmp_path):
    _, out, stats, requests = _run(root, tmp_path, [{"name": "one"}, {"name": "two", "samples": 1}])
    assert {r["model"] for r in requests} == {"a"} and len(requests) == 9
    assert stats["judges"]["one"]["llm"]["calls"] == 6 and stats["judges"]["two"]["llm"]["calls"] == 3
    assert stats["llm"]["calls"] == 9
