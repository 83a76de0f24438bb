"""LoRA / QLoRA supervised fine-tuning with trl's SFTTrainer and a peft adapter.

* Loss on the therapist (assistant) turns only: examples are tokenized here under the model's
  chat layout with a mask that ``chat.mask_example`` builds from the rendered template and checks
  (the masked text is exactly each therapist turn and its end-of-turn token), which works for
  templates without ``{% generation %}`` markers; trl turns the mask into labels. Sessions longer
  than ``max_length`` become windows of whole exchanges, never cut at the end.
* Resumable: checkpoints every ``save_steps`` in a unit folder that Snakemake does not delete; a
  re-run continues from the last checkpoint.
* Outputs: the adapter in peft's format, a CSV log (step, loss, learning rate, tokens, tokens per
  second), a loss plot, and train / validation loss before and after training."""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from ..workflow import (
    PipelineError,
    cuda_or_cpu,
    hash_obj,
    job_threads,
    read_json,
    read_jsonl,
    sha256_file,
    staged_dir,
    write_json,
)
from .checkpoints import last_complete_checkpoint
from .train_data import build_dataset, loss_subsample
from .train_log import CsvLogger, plot_loss, read_log
from .train_memory import load_base, plan_memory

log = logging.getLogger("cbtpipe")


# Training settings that do not change the result (only how fast it is computed).
NOT_IN_KEY = ("threads",)


def training_unit_key(tcfg: dict[str, Any], seed: int, train_path, val_path, model_dir, layout_path) -> str:
    """The key of a training unit: what determines the adapter (settings, seed, the data and the
    base weights by content), not how many threads compute it, so a job resumed with other
    --cores continues from its checkpoint."""
    weights = Path(model_dir) / "model.safetensors"
    return hash_obj(
        {
            "tcfg": {k: v for k, v in tcfg.items() if k not in NOT_IN_KEY},
            "seed": seed,
            "train": sha256_file(train_path),
            "val": sha256_file(val_path),
            "base": sha256_file(weights) if weights.exists() else str(model_dir),
            "layout": sha256_file(layout_path),
            "template": _template_sha(model_dir),
        }
    )


def _template_sha(model_dir) -> str | None:
    """The chat template the tokenizer renders examples with (its own file, or its config's)."""
    for name in ("chat_template.jinja", "tokenizer_config.json"):
        f = Path(model_dir) / name
        if f.is_file():
            return sha256_file(f)
    return None


def lora_config(tcfg: dict[str, Any]):
    from peft import LoraConfig

    return LoraConfig(
        r=tcfg["rank"], lora_alpha=tcfg["alpha"], lora_dropout=tcfg["dropout"], target_modules=tcfg["target_modules"], task_type="CAUSAL_LM"
    )


def trainer_settings(tcfg: dict[str, Any], mem: dict[str, Any], ckpt_dir: Path, seed: int, cuda: bool, liger: bool) -> dict[str, Any]:
    """The one place where our training config becomes trl's (SFTConfig / ORPOConfig) settings."""
    import torch

    checkpointing = mem["gradient_checkpointing"]
    return dict(
        output_dir=str(ckpt_dir),
        num_train_epochs=tcfg["epochs"],
        max_steps=tcfg["max_steps"],
        per_device_train_batch_size=mem["batch_size"],
        per_device_eval_batch_size=mem["batch_size"],
        gradient_accumulation_steps=mem["grad_accum"],
        learning_rate=tcfg["learning_rate"],
        lr_scheduler_type=tcfg["lr_scheduler"],
        warmup_steps=float(tcfg["warmup_ratio"]),  # a float below 1 is a ratio of the total steps
        weight_decay=tcfg["weight_decay"],
        logging_steps=tcfg["logging_steps"],
        save_strategy="steps",
        save_steps=tcfg["save_steps"],
        save_total_limit=2,
        eval_strategy="no",
        seed=seed,
        data_seed=seed,
        max_length=tcfg["max_length"],
        gradient_checkpointing=checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if checkpointing else None,
        bf16=bool(tcfg["bf16"] or tcfg["method"] == "qlora"),
        tf32=True if cuda and torch.cuda.get_device_capability()[0] >= 8 else None,
        use_liger_kernel=liger,
        report_to=[],
        use_cpu=not cuda,
        dataloader_num_workers=0,
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=True,
    )


def sft_path(tcfg: dict[str, Any], tok, train_path, val_path, settings: dict[str, Any], layout: dict[str, Any]):
    """Supervised fine-tuning on the chat dataset, loss on therapist turns only."""
    from trl import SFTConfig, SFTTrainer

    train_rows, val_rows = read_jsonl(train_path), read_jsonl(val_path)
    ds_train, counts = build_dataset(train_rows, tok, layout, tcfg["max_length"])
    ds_val = build_dataset(val_rows, tok, layout, tcfg["max_length"])[0] if val_rows else None
    log.info(
        "chat layout %s: %d sessions -> %d examples (%d sessions split into windows of whole exchanges, %d windows cut)",
        layout["system"],
        counts["sessions"],
        counts["examples"],
        counts["sessions_windowed"],
        counts["windows_cut"],
    )
    # Padding-free: a batch is one row of its examples back to back; attention stays within each
    # example (position ids restart), labels keep the therapist-only mask. The examples are
    # already cut to max_length here, so trl need not enforce it.
    padding_free = bool(tcfg.get("padding_free", True) and not tcfg["packing"])
    if padding_free:
        settings = dict(settings, max_length=None)
    args = SFTConfig(packing=tcfg["packing"], padding_free=padding_free, assistant_only_loss=False, **settings)
    return args, SFTTrainer, ds_train, ds_val, {"chat_layout": layout["system"], "shortening": counts}


def orpo_path(tcfg: dict[str, Any], tok, train_path, val_path, settings: dict[str, Any], layout: dict[str, Any]):
    """Preference optimization (Hong et al. 2024): chosen = the synthetic therapist's turn,
    rejected = the instruct model's reply in the same context."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from datasets import Dataset
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    def pairs(path):
        rows = read_jsonl(path)
        return Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows]) if rows else None

    ds_train, ds_val = pairs(train_path), pairs(val_path)
    if ds_train is None:
        raise PipelineError(f"{train_path}: no preference pairs to train on")
    # The pairs' prompts were laid out for this model when they were built (preference.build_pairs).
    info = {"chat_layout": layout["system"]}
    return ORPOConfig(beta=tcfg["orpo_beta"], remove_unused_columns=False, **settings), ORPOTrainer, ds_train, ds_val, info


def sort_adapter_config(path: Path) -> None:
    """peft keeps target_modules as a set and writes it in the order of the set, which changes with
    Python's string hashing from one process to the next: written sorted, one training run writes
    the same adapter_config.json every time."""
    cfg = read_json(path)
    for k in ("target_modules", "modules_to_save", "exclude_modules"):
        if isinstance(cfg.get(k), list):
            cfg[k] = sorted(cfg[k])
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_training_outputs(
    trainer, tok, csv_path: Path, out_adapter, out_csv, out_metrics, out_plot, title, metrics: dict[str, Any]
) -> dict:
    """The adapter (staged, then renamed into place), the step log, the metrics and the loss plot."""
    with staged_dir(out_adapter) as tmp:
        trainer.model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        sort_adapter_config(Path(tmp) / "adapter_config.json")
    rows = read_log(csv_path)
    with open(out_csv, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["step", "epoch", "loss", "learning_rate", "tokens", "tokens_per_second"])
        w.writeheader()
        w.writerows(rows)
    tps = [float(r["tokens_per_second"]) for r in rows if r.get("tokens_per_second")]
    metrics = {**metrics, "tokens_per_second_mean": round(sum(tps) / len(tps), 2) if tps else None}
    write_json(out_metrics, metrics)
    plot_loss(rows, metrics, out_plot, title)
    return metrics


def _trainer(
    tcfg: dict[str, Any], model_dir, train_path, val_path, layout: dict[str, Any], seed: int, device: str, csv_path: Path, ckpt_dir: Path
):
    """The trl trainer of the method (SFT or ORPO) on the loaded base, with the memory plan and
    the settings it led to."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = load_base(model_dir, tcfg, device)
    mem = plan_memory(tcfg["gradient_checkpointing"], model, tcfg, device)
    log.info(
        "micro-batch %d x accumulation %d, gradient checkpointing %s (%s)",
        mem["batch_size"],
        mem["grad_accum"],
        "on" if mem["gradient_checkpointing"] else "off",
        mem["why"],
    )
    cuda = device == "cuda"
    liger = bool(cuda and tcfg.get("liger_kernel", True) and importlib.util.find_spec("liger_kernel"))
    settings = trainer_settings(tcfg, mem, ckpt_dir, seed, cuda, liger)
    path = orpo_path if tcfg["method"] == "orpo" else sft_path
    args, trainer_cls, ds_train, ds_val, data_info = path(tcfg, tok, train_path, val_path, settings, layout)
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=ds_train,
        eval_dataset=ds_val,
        processing_class=tok,
        peft_config=lora_config(tcfg),
        callbacks=[CsvLogger(csv_path)],
    )
    setup = {"mem": mem, "liger": liger, "args": args, "ds_train": ds_train, "ds_val": ds_val, "data_info": data_info}
    return trainer, tok, setup


def _train(trainer, unit: Path, ckpt_dir: Path, tcfg: dict[str, Any], seed: int, has_val: bool) -> dict[str, Any]:
    """Losses before (once per unit), training from the last complete checkpoint, losses after;
    each loss on a fixed subsample of its split: one short pass, not two over the whole set."""
    n_loss = int(tcfg.get("loss_sample", 64))
    loss_train = loss_subsample(trainer.train_dataset, n_loss, seed)
    loss_val = loss_subsample(trainer.eval_dataset, n_loss, seed) if has_val else None

    def losses(when: str) -> dict[str, float | None]:
        return {
            f"train_loss_{when}": trainer.evaluate(loss_train, metric_key_prefix="train")["train_loss"],
            f"val_loss_{when}": trainer.evaluate(loss_val)["eval_loss"] if loss_val is not None else None,
        }

    before_path = unit / "loss_before.json"
    if before_path.exists():
        before = read_json(before_path)
    else:
        before = losses("before")
        write_json(before_path, before)
    last = last_complete_checkpoint(ckpt_dir)
    if last:
        log.info("resuming from checkpoint %s", last)
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=last)
    train_seconds = time.perf_counter() - t0
    return {
        **before,
        **losses("after"),
        "resumed_from": last,
        "train_runtime_s": round(train_seconds, 2),
        "loss_examples": {"train": len(loss_train), "val": len(loss_val) if loss_val is not None else 0},
        "final_train_loss_reported": result.training_loss,
    }


def train_adapter(
    *,
    model_dir: str | Path,
    train_path: str | Path,
    val_path: str | Path,
    layout_path: str | Path,
    tcfg: dict[str, Any],
    seed: int,
    unit_root: str | Path,
    out_adapter: str | Path,
    out_csv: str | Path,
    out_metrics: str | Path,
    out_plot: str | Path,
    title: str,
    n_gpus: int = 0,
    gpu_key: str = "models.<name>.gpus",
) -> dict[str, Any]:
    """Train one LoRA/QLoRA adapter, by SFT or ORPO (``training.method``), on the device the
    config names: ``n_gpus`` CUDA devices (an error if there are fewer) or the CPU when it is 0;
    never a silent fallback. Resumes from the last complete checkpoint of its unit."""
    import torch

    device = cuda_or_cpu(gpu_key, n_gpus)
    cuda = device == "cuda"
    torch.set_num_threads(int(tcfg.get("threads") or job_threads()))
    if cuda:
        # TF32 matrix units for any float32 work left (LoRA weights, norms, the loss).
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    unit = Path(unit_root) / training_unit_key(tcfg, seed, train_path, val_path, model_dir, layout_path)
    ckpt_dir = unit / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    csv_path = unit / "train_log.csv"
    trainer, tok, s = _trainer(tcfg, model_dir, train_path, val_path, read_json(layout_path), seed, device, csv_path, ckpt_dir)
    run = _train(trainer, unit, ckpt_dir, tcfg, seed, s["ds_val"] is not None)
    mem, ds_val = s["mem"], s["ds_val"]
    metrics = {
        **{k: run[k] for k in run if k.startswith(("train_loss", "val_loss"))},
        "method": tcfg["method"],
        "steps": trainer.state.global_step,
        "resumed_from": run["resumed_from"],
        "train_runtime_s": run["train_runtime_s"],
        "tokens_seen": trainer.state.num_input_tokens_seen,
        "train_examples": len(s["ds_train"]),
        **s["data_info"],
        "val_examples": len(ds_val) if ds_val is not None else 0,
        "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "device": device,
        "gpu_name": torch.cuda.get_device_name(0) if cuda else None,
        "gradient_checkpointing": mem["gradient_checkpointing"],
        "micro_batch": mem["batch_size"],
        "grad_accum": mem["grad_accum"],
        "liger_kernel": s["liger"],
        "padding_free": bool(getattr(s["args"], "padding_free", False)),
        "loss_examples": run["loss_examples"],
        "unit_dir": str(unit),
        "final_train_loss_reported": run["final_train_loss_reported"],
    }
    return write_training_outputs(trainer, tok, csv_path, out_adapter, out_csv, out_metrics, out_plot, title, metrics)
