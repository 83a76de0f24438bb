"""The CTRS analysis of the judged sessions: every comparison of the report, each from its module
(``ctrs``, ``judges``, ``missing``, ``register``), in one result."""

from __future__ import annotations

from typing import Any

from .ctrs import (
    between_models,
    by_position,
    closing_sensitivity,
    context_vs_score,
    descriptives,
    length_adjusted,
    lengths,
    per_item,
    persona_sets,
    primary_endpoint,
    risk_strata,
    subtotal_comparisons,
    tuned_vs_instruct,
)
from .judges import human_agreement, inter_judge, reliability
from .missing import missing_answers, missing_bounds, missing_by_group
from .mixed import mixed_arm_by_model
from .pairs import POPULATIONS, as_float, ctrs_population, persona_set, primary_persona_set, risk_stratum
from .register import test_register
from .seeds import per_seed, pool_seeds, replicated


def _pool_seeds(totals, long, closing_totals, replicates, rubric, rcfg, seed):
    """The per-seed comparisons on the CTRS population, and the rows with the seeds pooled."""
    population = rcfg.get("ctrs_population", "no_risk")
    main_set = primary_persona_set(totals)
    pop = ctrs_population([r for r in totals if persona_set(r) == main_set], population)
    seeds = per_seed(pop, replicates, rcfg["alpha"], rcfg["bootstrap"], seed)
    score_keys = ["total", "total_pct", *rubric.get("subtotals", {}), *[i["id"] for i in rubric["items"]]]
    totals, long = pool_seeds(totals, long, replicates, score_keys)
    closing = pool_seeds(closing_totals, [], replicates, score_keys)[0] if closing_totals else closing_totals
    return totals, long, closing, seeds


def analyse(
    long: list[dict[str, str]],
    totals: list[dict[str, str]],
    rubric: dict[str, Any],
    rcfg: dict[str, Any],
    seed: int,
    human: list[dict[str, Any]] | None = None,
    closing_totals: list[dict[str, str]] | None = None,
    replicates: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Every analysis of the report, each a function above. The CTRS comparisons are made on the
    population of report.ctrs_population (patients without risk by default) of the held-out
    evaluation set where the run has one (profiles.eval_set), the other set beside; the risk
    strata and the mixed model (with an arm x risk term) use every session of that set."""
    alpha, nb = rcfg["alpha"], rcfg["bootstrap"]
    items = [i["id"] for i in rubric["items"]]
    population = rcfg.get("ctrs_population", "no_risk")
    seeds = None
    if replicated(replicates):  # training.seeds: per-seed estimates, then the seeds pooled
        totals, long, closing_totals, seeds = _pool_seeds(totals, long, closing_totals, replicates, rubric, rcfg, seed)
    models = sorted({r["model"] for r in totals})
    arms = sorted({r["arm"] for r in totals})
    threshold = rcfg.get("competence_threshold") or rubric.get("competence_threshold")
    # the held-out evaluation patients where the run has them (profiles.eval_set); the other set beside
    main_set = primary_persona_set(totals)
    everyone, totals = totals, [r for r in totals if persona_set(r) == main_set]
    ids = {r["session_id"] for r in totals}
    long = [r for r in long if r["session_id"] in ids]
    pop = ctrs_population(totals, population)
    res: dict[str, Any] = {"models": models, "arms": arms, "items": items, "threshold": threshold, "notes": []}
    if seeds:
        res["seeds"] = seeds
    res["population"] = {
        "name": population,
        "description": POPULATIONS[population],
        "patients": len({r["patient_id"] for r in pop}),
        "sessions": len(pop),
        "patients_all": len({r["patient_id"] for r in totals}),
        "sessions_all": len(totals),
        "persona_set": main_set,
        "persona_sets": sorted({persona_set(r) for r in everyone}),
    }
    if not pop and totals:
        res["notes"].append(f"no sessions in the CTRS population ({POPULATIONS[population]}): every CTRS comparison is empty")
    res["missing"] = missing_answers(long, totals)
    res["missing"]["by_group"] = missing_by_group(long, totals, models, arms)
    res["missing"]["bounds"] = missing_bounds(pop, models, rubric["min_total"], rubric["max_total"])
    res["primary"] = primary_endpoint(pop, models, rcfg, nb, seed)
    res["descriptives"] = descriptives(pop, models, arms, items, threshold)
    res["tuned_vs_instruct"], res["pooled"] = tuned_vs_instruct(pop, models, alpha, nb, seed)
    res["between_models"] = between_models(pop, models, arms, alpha, nb, seed)
    res["risk_strata"] = risk_strata(totals, models, alpha, nb, seed)
    res["persona_sets"] = persona_sets(ctrs_population(everyone, population), models, alpha, nb, seed)
    scored = [r for r in totals if r["arm"] in ("cbt", "instruct")]
    res["mixed_model"] = mixed_arm_by_model(
        [r["patient_id"] for r in scored],
        [r["model"] for r in scored],
        [r["arm"] for r in scored],
        [as_float(r["total"]) for r in scored],
        alpha=alpha,
        position=[str(r.get("position") or "1") for r in scored],
        risk=[risk_stratum(r) for r in scored],
    )
    res["per_item"] = per_item(pop, models, items, rcfg["item_correction"], alpha, nb, seed)
    res["reliability"] = reliability(long, items)
    res["inter_judge"] = inter_judge(long, items)
    res["max_total"] = rubric["max_total"]
    res["by_position"] = by_position(pop, models, alpha, nb, seed) if pop else []
    res["lengths"] = lengths(totals, models, arms)
    res["length_adjusted"] = length_adjusted(pop, models, alpha)
    res["context_vs_score"] = context_vs_score(pop, models, arms, n_boot=nb, seed=seed)
    res["subtotals"] = subtotal_comparisons(pop, rubric, models, alpha, nb, seed)
    # the closing-instruction sensitivity analysis on the same population, re-judged without the closing turn
    rejudged = ctrs_population([r for r in closing_totals or [] if persona_set(r) == main_set], population)
    res["closing"] = closing_sensitivity(pop, rejudged, models, alpha, nb, seed)
    res["tests"] = test_register(res, rcfg)
    if human:
        res["human_agreement"] = human_agreement(totals, items, human)
    return res
