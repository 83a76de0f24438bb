"""Snakemake entry: simulated sessions of one (model, shard) in every arm, interleaved; resumable per session."""

import contextlib
from pathlib import Path

from cbtpipe.design import eval_context, risk_protocol_text
from cbtpipe.llm import LlamaCppBackend, LlamaServer, LlamaServerBackend, make_backend
from cbtpipe.stages import run_arms, shard_profiles
from cbtpipe.workflow import entry, read_json, read_jsonl, write_json, write_jsonl

with entry(snakemake, "rollout") as log:
    rcfg = snakemake.params.rollout
    wc = snakemake.wildcards
    arms = list(snakemake.params.arms)
    ggufs = list(snakemake.input.gguf)  # one per arm, in the order of the arms
    profiles = shard_profiles(read_jsonl(snakemake.input.profiles), int(wc.shard), snakemake.params.shards)
    histories = {h["patient_id"]: h for h in read_jsonl(snakemake.input.history)}
    course = snakemake.params.course
    contexts = {
        (p["id"], pos): eval_context(histories.get(p["id"]), pos, course["n_sessions"], course["phases"], snakemake.input.context)
        for p in profiles
        for pos in rcfg["positions"]
    }
    therapist_spec = {
        "n_ctx": rcfg["therapist_n_ctx"],
        "n_threads": rcfg["therapist_n_threads"] or snakemake.threads,
        "n_gpu_layers": rcfg["therapist_n_gpu_layers"],
    }
    with contextlib.ExitStack() as stack:  # closes the backends, then stops the servers
        therapists = []
        for arm, gguf in zip(arms, ggufs, strict=True):
            if rcfg["therapist_server"]:
                server = stack.enter_context(
                    LlamaServer(
                        gguf,
                        parallel=rcfg["parallel_sessions"],
                        n_ctx=rcfg["therapist_n_ctx"],
                        n_gpu_layers=rcfg["therapist_n_gpu_layers"],
                        threads=therapist_spec["n_threads"],
                        log_path=Path(snakemake.log[0]).with_suffix(f".{arm}.server.log"),
                    )
                )
                therapist = LlamaServerBackend(f"therapist-{arm}", server)
            else:
                therapist = LlamaCppBackend(f"therapist-{arm}", therapist_spec, model_path=gguf, gpu_key="rollout.therapist_n_gpu_layers")
            stack.callback(therapist.close)
            therapists.append(therapist)
        patient = make_backend(rcfg["patient_backend"], snakemake.params.backends, where="rollout.patient_backend", probe=True)
        stack.callback(patient.close)
        results = run_arms(
            model=wc.model,
            quantization=rcfg["quantization"],
            arms=[
                {"arm": arm, "gguf": gguf, "therapist": t, "unit_dir": Path(snakemake.params.units) / arm}
                for arm, gguf, t in zip(arms, ggufs, therapists, strict=True)
            ],
            profiles=profiles,
            patient=patient,
            rcfg=rcfg,
            system_prompt=Path(snakemake.input.system_prompt).read_text(encoding="utf-8"),
            protocol=risk_protocol_text(
                snakemake.input.get("risk_protocol"),
                snakemake.input.get("crisis_resources"),
                snakemake.params.risk_protocol.get("country"),
            ),
            patient_template=snakemake.input.patient_prompt,
            layout=read_json(snakemake.input.layout),
            contexts=contexts,
        )
    for (sessions, stats), out_sessions, out_stats in zip(results, snakemake.output.sessions, snakemake.output.stats, strict=True):
        write_jsonl(out_sessions, sessions)
        write_json(out_stats, stats)
        log.info("rollout stats (%s): %s", stats["arm"], stats)
