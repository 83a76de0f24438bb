"""Benchmark: what does the rollout orchestration cost over llama.cpp's raw generation?

In one process, on the same GGUF: (1) run simulated sessions through the pipeline's rollout code
(chat template, backend, session control) and record every therapist call's prompt length,
generated tokens and time; (2) replay each call as raw llama.cpp generation (``Llama.generate``
on a prompt of the same length, stopped after the same number of tokens) and time it. The ratio of
throughputs (tokens per second, prompt evaluation included in both) is the orchestration's cost.

    python scripts/bench_rollout_speed.py results/gguf/smollm2-135m/cbt/smollm2-135m-cbt-Q4_K_M.gguf \
        --sessions 3 --out results/bench/rollout_speed.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from cbtpipe.design import eval_profiles, load_attributes
from cbtpipe.llm import LlamaCppBackend
from cbtpipe.stages import run_session, session_plan
from cbtpipe.workflow import section_defaults, write_json

ROOT = Path(__file__).resolve().parents[1]


def raw_generate(llm, prompt_len: int, n_gen: int, seed: int, sampling: dict) -> float:
    filler = llm.tokenize(b" The patient talks about a difficult week at work and feeling low." * 200, add_bos=False)
    tokens = filler[:prompt_len]
    llm.reset()
    llm.set_seed(seed)
    t0 = time.perf_counter()
    gen = llm.generate(tokens, temp=sampling["temperature"], top_p=sampling["top_p"], repeat_penalty=sampling["repeat_penalty"])
    for n, _ in enumerate(gen, 1):
        if n >= n_gen:
            break
    return time.perf_counter() - t0


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("gguf")
    ap.add_argument("--sessions", type=int, default=3)
    ap.add_argument("--max-turns", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    sampling = {"temperature": 0.7, "top_p": 0.95, "max_tokens": 80, "repeat_penalty": 1.1}
    rcfg = section_defaults("rollout") | {
        "therapist": sampling,
        "patient": dict(sampling, max_tokens=60),
        "therapist_n_ctx": 2048,
        "opener": "therapist",
        "opening_message": "(The patient has arrived for today's session.)",
        "max_turns": a.max_turns,
        "end_marker": "[END]",
        "context_strategy": "truncate_oldest",
        "sessions_per_patient": 1,
        "seed": 7,
    }
    spec = {"n_ctx": 2048, "n_threads": a.threads}
    therapist = LlamaCppBackend("therapist", spec, model_path=a.gguf, cache_dir=None)
    patient = LlamaCppBackend("patient", spec, model_path=a.gguf, cache_dir=None)
    profiles = eval_profiles(load_attributes(ROOT / "resources/patient_attributes.yaml"), a.sessions, 99, [])
    system = (ROOT / "resources/prompts/therapist_system.txt").read_text().strip()
    calls = []
    for item in session_plan(profiles, rcfg):
        s = run_session(item, therapist, patient, rcfg, system, ROOT / "resources/prompts/patient_system.j2")
        calls += [m for m in s["messages"] if m["role"] == "therapist" and m["completion_tokens"] > 0]
    orch_tokens = sum(c["completion_tokens"] for c in calls)
    orch_seconds = sum(c["seconds"] for c in calls)
    raw_seconds = sum(raw_generate(therapist.llm, c["prompt_tokens"], c["completion_tokens"], 1, sampling) for c in calls)
    res = {
        "gguf": a.gguf,
        "therapist_calls": len(calls),
        "generated_tokens": orch_tokens,
        "mean_prompt_tokens": round(sum(c["prompt_tokens"] for c in calls) / max(1, len(calls)), 1),
        "orchestrated_tokens_per_second": round(orch_tokens / orch_seconds, 2),
        "raw_llama_cpp_tokens_per_second": round(orch_tokens / raw_seconds, 2),
        "ratio_orchestrated_to_raw": round(raw_seconds / orch_seconds, 4),
        "threads": a.threads,
    }
    res["orchestration_overhead_percent"] = round(100 * (1 - res["ratio_orchestrated_to_raw"]), 2)
    print(res)
    if a.out:
        write_json(a.out, res)
    therapist.close()
    patient.close()
    return res


if __name__ == "__main__":
    main()
