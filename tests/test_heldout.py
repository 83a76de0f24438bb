"""Held-out evaluation patients (issue 42, item 3): drawn from attribute values that no training
course uses, the CTRS comparisons made on them, the in-distribution set reported beside them."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml

from cbtpipe.design import eval_profiles, load_attributes, load_held_out, train_val_profiles
from cbtpipe.plan import eval_patients
from cbtpipe.stats import analyse
from cbtpipe.workflow import PipelineError

ROOT = Path(__file__).resolve().parents[1]
ATTRS = ROOT / "resources/patient_attributes.yaml"


def test_held_out_patients_use_no_value_a_training_course_draws():
    attrs, held = load_attributes(ATTRS), load_held_out(ATTRS)
    assert {"situation", "core_belief", "automatic_thoughts"} <= set(held)
    train, val = train_val_profiles(attrs, 58, 6, seed=11)
    ev = eval_profiles(attrs, 30, 22, train + val, held)
    assert [p["id"] for p in ev[:2]] == ["held-000", "held-001"] and all(p["set"] == "held_out" for p in ev)

    def values(p, key):
        v = p[key]
        return [repr(x) for x in (v if key in ("presenting_problems", "automatic_thoughts") else [v])]

    for key in held:
        trained = {x for p in train + val for x in values(p, key)}
        shown = {x for p in ev for x in values(p, key)}
        assert shown <= {repr(x) for x in held[key]}, key
        assert not shown & trained, key  # the issue: no situation, belief or thought a training course used
    # the in-distribution set is as before: the same profiles, no set field
    assert eval_profiles(attrs, 3, 22, train + val) == eval_profiles(attrs, 3, 22, train + val, None)
    assert "set" not in eval_profiles(attrs, 3, 22, train + val)[0]


def test_held_out_values_must_be_new_and_name_an_attribute(tmp_path):
    data = yaml.safe_load(ATTRS.read_text())
    f = tmp_path / "a.yaml"
    data["held_out"]["situation"].append(data["situation"][0])
    f.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(PipelineError, match=r"a.yaml, line \d+: held_out.situation repeats 'a critical comment from a manager'"):
        load_held_out(f)
    data = yaml.safe_load(ATTRS.read_text())
    data["held_out"]["hobby"] = ["chess"]
    f.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(PipelineError, match="held_out.hobby is not an attribute list"):
        load_held_out(f)
    del data["held_out"]
    f.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(PipelineError, match="no held_out values"):
        load_held_out(f)
    assert "held_out" not in load_attributes(f)  # training draws never see the key


ITEMS = ["a", "b"]


def _totals():
    """Two sets of 6 patients each without risk: CBT gains 3 points on held-out patients and 1 on
    in-distribution ones."""
    rng = random.Random(1)
    rows = []
    for s, gain in (("held_out", 3.0), ("in_distribution", 1.0)):
        for k in range(6):
            pid = f"{s[:4]}-{k}"
            base = rng.uniform(4, 8)
            for arm, add in (("instruct", 0.0), ("cbt", gain + rng.uniform(-0.2, 0.2))):
                total = base + add
                rows.append(
                    {
                        "session_id": f"{pid}-{arm}",
                        "patient_id": pid,
                        "model": "m",
                        "arm": arm,
                        "quantization": "q",
                        "risk_level": "none",
                        "persona_set": s,
                        "samples": "1",
                        "valid_samples": "1",
                        "total": str(total),
                        "total_pct": str(100 * total / 12),
                        "a": str(total / 2),
                        "b": str(total / 2),
                        "position": "1",
                        "session": "0",
                    }
                )
    return rows


def test_the_ctrs_comparisons_are_on_the_held_out_set_with_the_other_beside():
    rubric = {"items": [{"id": i} for i in ITEMS], "min_total": 0, "max_total": 12}
    rc = {
        "alpha": 0.05,
        "bootstrap": 200,
        "power": 0.8,
        "item_correction": "holm",
        "primary": {"outcome": "total", "contrast": "pooled", "test": "paired_t"},
        "ctrs_population": "no_risk",
    }
    res = analyse([], _totals(), rubric, rc, seed=1)
    assert res["population"]["persona_set"] == "held_out" and res["population"]["persona_sets"] == ["held_out", "in_distribution"]
    assert res["population"]["patients"] == 6 and res["primary"]["result"]["mean_diff"] == pytest.approx(3.0, abs=0.2)
    sets = {(r["set"], r["model"]): r for r in res["persona_sets"]}
    assert sets[("held_out", "m")]["mean_diff"] == pytest.approx(3.0, abs=0.2)
    assert sets[("in_distribution", "m")]["mean_diff"] == pytest.approx(1.0, abs=0.2)
    assert any(t["test"] == "total, CBT vs instruct, m, in-distribution patients" for t in res["tests"])
    # one set only: no comparison beside, the population unchanged
    one = analyse([], [r for r in _totals() if r["persona_set"] == "in_distribution"], rubric, rc, seed=1)
    assert one["persona_sets"] == [] and one["population"]["persona_set"] == "in_distribution"


def test_both_sets_double_the_planned_patients():
    cfg = yaml.safe_load((ROOT / "config/study.yaml").read_text())
    assert cfg["profiles"]["eval_set"] == "held_out" and eval_patients(cfg) == 30
    cfg["profiles"]["eval_set"] = "both"
    assert eval_patients(cfg) == 60
