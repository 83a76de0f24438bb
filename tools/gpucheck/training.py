"""Training on the 8B model: the project's training code (LoRA bf16 and QLoRA NF4) against trl's
default SFTConfig on the same synthetic conversations; tokens per second and MFU."""

from __future__ import annotations

import json
import random
import shutil
import statistics
import time
import traceback
from pathlib import Path

from .common import BF16_PEAK_TFLOPS, RESULTS, SHAPE, left, log, phase, save


def make_model(model_dir: Path, tok_dir: Path) -> int:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tok_dir)
    cfg = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **SHAPE)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(torch.float32)
    n = sum(p.numel() for p in model.parameters())
    model.save_pretrained(model_dir, safe_serialization=True)
    tok.save_pretrained(model_dir)
    del model
    torch.cuda.empty_cache()
    return n


def make_rows(tok_dir: Path, n: int, seed: int = 0) -> list[dict]:
    """Synthetic therapy-shaped conversations of 256 to 2048 tokens (uniform)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    rng = random.Random(seed)
    words = ["patient", "feel", "thought", "evidence", "mood", "week", "work", "sleep", "agenda", "homework", "plan", "notice", "belief"]
    rows = []
    for _ in range(n):
        target = rng.randint(256, 2000)
        msgs = [{"role": "system", "content": "You are a CBT therapist."}]
        total = 20
        while total < target:
            for role in ("user", "assistant"):
                k = rng.randint(20, 120)
                text = " ".join(rng.choice(words) for _ in range(k))
                msgs.append({"role": role, "content": text})
                total += len(tok(text)["input_ids"]) + 5
        rows.append({"messages": msgs})
    return rows


def flops_per_token(n_params: int, vocab: int, avg_len: float) -> float:
    """Model FLOPs per trained token for LoRA on a frozen base: forward 2N and backward 2N (gradients
    of the activations; the frozen weights get none), over the matmul parameters (the embedding
    lookup is no matmul), plus causal attention scores (QK^T and AV: 2 x 2 x L x d x s/2 forward,
    twice that backward)."""
    h, layers = SHAPE["hidden_size"], SHAPE["num_hidden_layers"]
    n_matmul = n_params - vocab * h
    attn = 3 * (2 * 2 * layers * h * avg_len / 2)
    return 4 * n_matmul + attn


def tps_from_csv(path: Path, skip: int = 2) -> tuple[float | None, list[float]]:
    import csv

    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    vals = [float(r["tokens_per_second"]) for r in rows if r.get("tokens_per_second") and int(r["step"]) > skip]
    return (statistics.median(vals) if vals else None), vals


def measured(log_csv: Path) -> dict:
    """Tokens per second (median over the steps after warm-up) and peak GPU memory of a run."""
    import torch

    med, vals = tps_from_csv(log_csv)
    peak = round(torch.cuda.max_memory_allocated() / 2**30, 1) if torch.cuda.is_available() else None
    return {"tokens_per_s": med, "per_step": vals, "peak_mem_GiB": peak}


def run_project(name, method, model_dir, rows_path, work: Path, steps: int, liger: bool = True, n_gpus: int = 1) -> dict:
    import torch

    from cbtpipe.stages import train_adapter

    tcfg = {
        "method": method,
        "rank": 16,
        "alpha": 32,
        "dropout": 0.0,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "learning_rate": 2e-4,
        "lr_scheduler": "constant",
        "warmup_ratio": 0.0,
        "epochs": 1,
        "max_steps": steps,
        "batch_size": 4,
        "grad_accum": 1,
        "max_length": 2048,
        "packing": False,
        "padding_free": True,
        "gradient_checkpointing": "auto",
        "liger_kernel": liger,
        "loss_sample": 8,
        "save_steps": 10_000,
        "logging_steps": 1,
        "weight_decay": 0.0,
        "bf16": True,
        "threads": 8,
    }
    out = work / name
    out.mkdir(parents=True, exist_ok=True)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    from transformers import AutoTokenizer

    from cbtpipe.design import chat_layout
    from cbtpipe.workflow import write_json

    layout_path = out / "chat_layout.json"
    write_json(layout_path, chat_layout(AutoTokenizer.from_pretrained(model_dir), "gpu-check"))
    m = train_adapter(
        model_dir=model_dir,
        train_path=rows_path,
        val_path=rows_path,
        layout_path=layout_path,
        tcfg=tcfg,
        seed=1,
        unit_root=out / "units",
        out_adapter=out / "adapter",
        out_csv=out / "log.csv",
        out_metrics=out / "metrics.json",
        out_plot=out / "loss.png",
        title=name,
        n_gpus=n_gpus,
        gpu_key="models.gpu-check.gpus",
    )
    return {
        **measured(out / "log.csv"),
        **{
            k: m.get(k)
            for k in ("micro_batch", "grad_accum", "gradient_checkpointing", "liger_kernel", "padding_free", "train_runtime_s", "steps")
        },
    }


def run_trl_default(model_dir, rows, work: Path, steps: int) -> dict:
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from cbtpipe.design import chat_layout
    from cbtpipe.stages import CsvLogger, build_dataset

    tok = AutoTokenizer.from_pretrained(model_dir)
    ds, _ = build_dataset(rows, tok, chat_layout(tok, "gpu-check"), 2048)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
    out = work / "trl_default"
    out.mkdir(parents=True, exist_ok=True)
    args = SFTConfig(
        output_dir=str(out),
        per_device_train_batch_size=4,
        max_length=2048,
        max_steps=steps,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=True,
        **({} if torch.cuda.is_available() else {"use_cpu": True, "bf16": False}),  # CPU: a dry run of this code
    )
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    tr = SFTTrainer(
        model=model,
        args=args,
        train_dataset=ds,
        processing_class=tok,
        peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"),
        callbacks=[CsvLogger(out / "log.csv")],
    )
    tr.train()
    res = {
        **measured(out / "log.csv"),
        "gradient_checkpointing": args.gradient_checkpointing,
        "padding_free": args.padding_free,
        "bf16": args.bf16,
    }
    del tr, model
    torch.cuda.empty_cache()
    return res


@phase("train")
def train_phase(assets: Path, work: Path, budget: float, steps: int):
    import gc

    import torch

    from cbtpipe.workflow import write_jsonl

    model_dir = work / "model8b"
    t = time.time()
    n_params = make_model(model_dir, assets / "tokenizer")
    log(f"random 8B model: {n_params / 1e9:.2f}B parameters, saved in {time.time() - t:.0f}s")
    rows = make_rows(assets / "tokenizer", 48)
    rows_path = work / "rows.jsonl"
    write_jsonl(rows_path, rows)
    from transformers import AutoTokenizer

    from cbtpipe.design import chat_layout
    from cbtpipe.stages import build_dataset

    tok = AutoTokenizer.from_pretrained(model_dir)
    ds, _ = build_dataset(rows, tok, chat_layout(tok, "gpu-check"), 2048)
    lens = [len(x) for x in ds["input_ids"]]
    avg = sum(lens) / len(lens)
    res = {"parameters": n_params, "examples": len(rows), "avg_tokens": round(avg), "max_tokens": max(lens), "runs": {}}
    fpt = flops_per_token(n_params, 49152, avg)
    peak = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in RESULTS.get("gpu", "")), 989.4)
    for name, fn in (
        ("trl_default_sft", lambda: run_trl_default(model_dir, rows, work, steps)),
        ("project_lora_bf16", lambda: run_project("project_lora_bf16", "lora", model_dir, rows_path, work, steps)),
        ("project_qlora_nf4", lambda: run_project("project_qlora_nf4", "qlora", model_dir, rows_path, work, steps)),
    ):
        if left(budget) < 150:
            res["runs"][name] = {"skipped": "out of time"}
            continue
        t = time.time()
        try:
            try:
                r = fn()
            except Exception as e:  # noqa: BLE001
                if not name.startswith("project") or "liger" not in repr(e).lower():
                    raise
                log(f"{name} failed with Liger ({e}); again without it")
                method = "qlora" if "qlora" in name else "lora"
                r = run_project(name + "_noliger", method, model_dir, rows_path, work, steps, liger=False)
                r["liger_error"] = f"{type(e).__name__}: {e}"[:500]
            if r.get("tokens_per_s"):
                r["mfu_vs_spec"] = round(r["tokens_per_s"] * fpt / (peak * 1e12), 3)
                if RESULTS.get("matmul_bf16_TFLOPs"):
                    r["mfu_vs_measured_matmul"] = round(r["tokens_per_s"] * fpt / (RESULTS["matmul_bf16_TFLOPs"] * 1e12), 3)
        except Exception as e:  # noqa: BLE001
            r = {"error": f"{type(e).__name__}: {e}"}
            log(traceback.format_exc()[-2500:])
        r["wall_s"] = round(time.time() - t, 1)
        res["runs"][name] = r
        log(f"{name}: {json.dumps({k: v for k, v in r.items() if k != 'per_step'})}")
        gc.collect()
        torch.cuda.empty_cache()
        RESULTS["phases"]["train"] = res
        save()
    base = res["runs"].get("trl_default_sft", {}).get("tokens_per_s")
    for r in res["runs"].values():
        if base and r.get("tokens_per_s"):
            r["speedup_vs_trl_default"] = round(r["tokens_per_s"] / base, 2)
    res["flops_per_token"] = fpt
    res["peak_TFLOPs_spec"] = peak
    shutil.rmtree(model_dir, ignore_errors=True)
    return res
