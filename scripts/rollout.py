"""Snakemake entry: simulated sessions of one (model, arm, shard); resumable per session."""

import contextlib
from pathlib import Path

from cbtpipe.backends import LlamaCppBackend, make_backend
from cbtpipe.course import eval_context
from cbtpipe.io import read_json, read_jsonl, write_json, write_jsonl
from cbtpipe.llama_server import LlamaServer, LlamaServerBackend
from cbtpipe.rollout import run_rollouts, shard_profiles
from cbtpipe.rule import entry
from cbtpipe.safety import therapist_prompt

with entry(snakemake, "rollout") as log:
    rcfg = snakemake.params.rollout
    wc = snakemake.wildcards
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
    with contextlib.ExitStack() as stack:  # closes the backends, then stops the server
        if rcfg["therapist_server"]:
            server = stack.enter_context(
                LlamaServer(
                    snakemake.input.gguf,
                    parallel=rcfg["parallel_sessions"],
                    n_ctx=rcfg["therapist_n_ctx"],
                    n_gpu_layers=rcfg["therapist_n_gpu_layers"],
                    threads=therapist_spec["n_threads"],
                    log_path=Path(snakemake.log[0]).with_suffix(".server.log"),
                )
            )
            therapist = LlamaServerBackend("therapist", server)
        else:
            therapist = LlamaCppBackend(
                "therapist", therapist_spec, model_path=snakemake.input.gguf, gpu_key="rollout.therapist_n_gpu_layers"
            )
        stack.callback(therapist.close)
        patient = make_backend(rcfg["patient_backend"], snakemake.params.backends, where="rollout.patient_backend", probe=True)
        stack.callback(patient.close)
        sessions, stats = run_rollouts(
            model=wc.model,
            arm=wc.arm,
            quantization=rcfg["quantization"],
            gguf=snakemake.input.gguf,
            profiles=profiles,
            therapist=therapist,
            patient=patient,
            rcfg=rcfg,
            system_prompt=therapist_prompt(
                Path(snakemake.input.system_prompt).read_text(encoding="utf-8").strip(),
                snakemake.input.get("risk_protocol"),
                snakemake.input.get("crisis_resources"),
                snakemake.params.risk_protocol.get("country"),
            ),
            patient_template=snakemake.input.patient_prompt,
            unit_dir=snakemake.params.units,
            layout=read_json(snakemake.input.layout),
            contexts=contexts,
        )
    write_jsonl(snakemake.output.sessions, sessions)
    write_json(snakemake.output.stats, stats)
    log.info("rollout stats: %s", stats)
