"""Replication over training seeds (issue 42, item 4): training.seeds makes each seed its own
entry (adapter, export, rollouts) sharing the instruct arm; the analysis gives per-seed estimates
and their spread, and pools the seeds for the comparisons, with its method named."""

from __future__ import annotations

import copy

import pytest

from cbtpipe.stats import analyse
from cbtpipe.stats.seeds import METHOD
from cbtpipe.workflow import PipelineError, expand_seeds, instruct_owners, training_seed
from tests.test_analysis import RC
from tests.test_plan import _cfg as _load


def load_config(path):
    return _load(path.parent, path.name)


def _cfg(root, seeds):
    cfg = load_config(root / "config.yaml")
    cfg["training"]["seeds"] = seeds
    return cfg


def test_each_seed_is_an_entry_of_its_own_that_shares_the_instruct_arm(root):
    cfg = _cfg(root, [7, 8, 9])
    models = sorted(cfg["models"])
    reps = expand_seeds(cfg)
    assert sorted(cfg["models"]) == sorted([*models, *(f"{m}-seed{s}" for m in models for s in (8, 9))])
    owners = instruct_owners(cfg)
    for m in models:
        assert reps[m] == {"model": m, "seed": 7} and reps[f"{m}-seed9"] == {"model": m, "seed": 9}
        assert training_seed(cfg, m) == 7 and training_seed(cfg, f"{m}-seed8") == 8
        assert owners[f"{m}-seed8"] == owners[m]  # the same base: one instruct arm
    # one seed (the default): every entry its own model, trained with the run's seed
    one = load_config(root / "config.yaml")
    before = copy.deepcopy(one["models"])
    reps1 = expand_seeds(one)
    assert one["models"] == before and all(r == {"model": m, "seed": one["seed"]} for m, r in reps1.items())
    clash = _cfg(root, [7, 8])
    clash["models"][f"{models[0]}-seed8"] = copy.deepcopy(clash["models"][models[0]])
    with pytest.raises(PipelineError, match=r"training\.seeds"):
        expand_seeds(clash)


def _rows():
    """Six patients without risk; instruct 30 + i; the CBT arm 2 higher with seed 1 and 4 higher
    with seed 2 (plus a little noise), at two positions."""
    rows = []
    for i in range(6):
        for pos in (1, 2):
            base = 30.0 + i + 5 * (pos - 1)
            for entry, arm, gain in (("m", "instruct", 0.0), ("m", "cbt", 2.0), ("m-seed2", "instruct", 0.0), ("m-seed2", "cbt", 4.0)):
                rows.append(
                    {
                        "session_id": f"{entry}-{arm}-p{i}-{pos}",
                        "patient_id": f"p{i}",
                        "model": entry,
                        "arm": arm,
                        "risk_level": "none",
                        "position": str(pos),
                        "session": "0",
                        "total": str(base + gain + (0.3 * (i % 3) if arm == "cbt" else 0.0)),
                        "closing_prompted": "0",
                    }
                )
    return rows


def test_per_seed_estimates_their_spread_and_the_pooled_comparison():
    rubric = {"items": [], "min_total": 0, "max_total": 66}
    reps = {"m": {"model": "m", "seed": 1}, "m-seed2": {"model": "m", "seed": 2}}
    res = analyse([], _rows(), rubric, RC, seed=1, replicates=reps)
    assert res["models"] == ["m"]  # the seeds are replicates of one model, not models
    sd = res["seeds"]
    assert sd["method"] == METHOD
    per = {r["seed"]: r for r in sd["per_seed"]}
    assert per[1]["mean_diff"] == pytest.approx(2.3) and per[2]["mean_diff"] == pytest.approx(4.3)
    assert per[1]["n"] == per[2]["n"] == 6
    sp = sd["spread"]["m"]
    assert sp["seeds"] == 2 and sp["mean"] == pytest.approx(3.3) and sp["sd"] == pytest.approx(2**0.5)
    # pooled: the CBT arm averaged over the seeds per session, the patients the unit (6, not 12)
    tvi = res["tuned_vs_instruct"]["m"]
    assert tvi["n"] == 6 and tvi["mean_diff"] == pytest.approx(3.3)
    assert res["descriptives"] and res["population"]["sessions"] == 24  # 6 patients x 2 positions x 2 arms
    seeds_tests = [t for t in res["tests"] if t["family"] == "exploratory: training seeds, m"]
    assert len(seeds_tests) == 2 and all(t["p_adjusted"] is not None for t in seeds_tests)
    # without replicates nothing changes: each entry is a model
    plain = analyse([], _rows(), rubric, RC, seed=1)
    assert plain["models"] == ["m", "m-seed2"] and "seeds" not in plain
