"""Snakemake entry: sample training/validation or evaluation patient profiles."""

from cbtpipe.io import read_jsonl, write_jsonl
from cbtpipe.profiles import eval_profiles, load_attributes, train_val_profiles
from cbtpipe.rule import entry

with entry(snakemake, snakemake.rule) as log:
    attrs = load_attributes(snakemake.input.attributes)
    p = snakemake.params
    if "eval" in snakemake.output.keys():  # noqa: SIM118 (a Snakemake namedlist)
        taken = read_jsonl(snakemake.input.train) + read_jsonl(snakemake.input.val)
        ev = eval_profiles(attrs, p.n_eval, p.seed, taken)
        write_jsonl(snakemake.output.eval, ev)
        log.info("%d evaluation profiles", len(ev))
    else:
        train, val = train_val_profiles(attrs, p.n_train, p.n_val, p.seed)
        write_jsonl(snakemake.output.train, train)
        write_jsonl(snakemake.output.val, val)
        log.info("%d training and %d validation profiles", len(train), len(val))
