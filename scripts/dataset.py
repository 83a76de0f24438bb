"""Snakemake entry: chat-format train / validation JSONL split by patient (the same for every
model; token_stats counts tokens per model)."""

from pathlib import Path

from cbtpipe.design import training_context
from cbtpipe.stages import split_by_patient, to_chat
from cbtpipe.workflow import entry, read_jsonl, write_json, write_jsonl

with entry(snakemake, "dataset") as log:
    p = snakemake.params
    sessions = read_jsonl(snakemake.input.transcripts)
    system = Path(snakemake.input.system_prompt).read_text(encoding="utf-8").strip()
    splits = None
    if p.source == "generate":
        splits = {s["patient_id"]: s.get("split", "train") for s in sessions}
    train, val = split_by_patient(sessions, splits, p.n_val, p.seed)
    by_patient = {}
    for s in sessions:
        by_patient.setdefault(s["patient_id"], []).append(s)

    def chat(s):
        ctx = training_context(s, by_patient[s["patient_id"]], p.data, snakemake.input.context)
        return to_chat(s, system, p.opening, ctx)

    train_rows = [chat(s) for s in train]
    val_rows = [chat(s) for s in val]
    write_jsonl(snakemake.output.train, train_rows)
    write_jsonl(snakemake.output.val, val_rows)
    stats = {
        "train_patients": sorted({r["patient_id"] for r in train_rows}),
        "val_patients": sorted({r["patient_id"] for r in val_rows}),
        "train_sessions": len(train_rows),
        "val_sessions": len(val_rows),
    }
    write_json(snakemake.output.stats, stats)
    log.info("dataset: %d train / %d val sessions", len(train_rows), len(val_rows))
