"""Snakemake entry: sample training/validation or evaluation patient profiles (with their
suicide-risk attributes: always for evaluation, for training only with profiles.risk.train)."""

from cbtpipe.design import assign_risk, eval_profiles, load_attributes, load_held_out, load_risk_attributes, train_val_profiles
from cbtpipe.workflow import entry, read_jsonl, write_jsonl

with entry(snakemake, snakemake.rule) as log:
    attrs = load_attributes(snakemake.input.attributes)
    p = snakemake.params
    risk = load_risk_attributes(snakemake.input.risk) if p.risk else None
    if "eval" in snakemake.output.keys():  # noqa: SIM118 (a Snakemake namedlist)
        taken = read_jsonl(snakemake.input.train) + read_jsonl(snakemake.input.val)
        # each evaluation set with the configured risk shares of its own (profiles.eval_set)
        ev = []
        if p.eval_set in ("in_distribution", "both"):
            ev += assign_risk(eval_profiles(attrs, p.n_eval, p.seed, taken), risk, p.risk, p.seed)
        if p.eval_set in ("held_out", "both"):
            held = load_held_out(snakemake.input.attributes)
            ev += assign_risk(eval_profiles(attrs, p.n_eval, p.seed, taken, held), risk, p.risk, p.seed)
        write_jsonl(snakemake.output.eval, ev)
        levels = [e["risk"]["level"] for e in ev]
        log.info("%d evaluation profiles (risk levels: %s)", len(ev), {lv: levels.count(lv) for lv in sorted(set(levels))})
    else:
        train, val = train_val_profiles(attrs, p.n_train, p.n_val, p.seed)
        if risk:
            train, val = assign_risk(train, risk, p.risk, p.seed), assign_risk(val, risk, p.risk, p.seed)
        write_jsonl(snakemake.output.train, train)
        write_jsonl(snakemake.output.val, val)
        log.info("%d training and %d validation profiles", len(train), len(val))
