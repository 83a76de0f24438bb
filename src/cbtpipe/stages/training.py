"""LoRA / QLoRA supervised fine-tuning with trl's SFTTrainer and a peft adapter.

* Loss on the therapist (assistant) turns only: examples are tokenized here under the model's
  chat layout with a mask that ``chat.mask_example`` builds from the rendered template and checks
  (the masked text is exactly each therapist turn and its end-of-turn token), which works for
  templates without ``{% generation %}`` markers; trl turns the mask into labels. Sessions longer
  than ``max_length`` become windows of whole exchanges, never cut at the end.
* Resumable: checkpoints every ``save_steps`` in a unit folder that Snakemake does not delete; a
  re-run continues from the last checkpoint.
* Outputs: the adapter in peft's format, a CSV log (step, loss, learning rate, tokens, tokens per
  second), a loss plot, and train / validation loss before and after training.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from ..design import mask_example, windows
from ..workflow import (
    PipelineError,
    Progress,
    cuda_or_cpu,
    hash_obj,
    job_threads,
    read_json,
    read_jsonl,
    sha256_file,
    staged_dir,
    write_json,
)

log = logging.getLogger("cbtpipe")

# Training settings that do not change the result (only how fast it is computed).
NOT_IN_KEY = ("threads",)


def build_examples(
    rows: list[dict[str, Any]], tokenizer, layout: dict[str, Any], max_length: int
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Tokenized examples with the therapist-only loss mask (``chat.mask_example``, checked per
    example) and how many sessions had to be shortened.

    A session longer than ``max_length`` is split into windows of whole exchanges (``chat.windows``),
    so its closing summary and homework stay in training; only a single exchange longer than
    ``max_length`` is cut, and counted."""
    examples, counts = [], {"sessions": len(rows), "examples": 0, "sessions_windowed": 0, "windows_cut": 0, "windows_dropped": 0}
    for r in rows:
        wins = windows(tokenizer, r["messages"], layout, max_length)
        counts["sessions_windowed"] += int(len(wins) > 1)
        for w in wins:
            ex = mask_example(tokenizer, w, layout)
            if len(ex["input_ids"]) > max_length:
                counts["windows_cut"] += 1
                if not any(ex["assistant_masks"][:max_length]):  # nothing left to learn from
                    counts["windows_dropped"] += 1
                    continue
            examples.append({"input_ids": ex["input_ids"][:max_length], "assistant_masks": ex["assistant_masks"][:max_length]})
    counts["examples"] = len(examples)
    return examples, counts


def build_dataset(rows: list[dict[str, Any]], tokenizer, layout: dict[str, Any], max_length: int):
    from datasets import Dataset

    examples, counts = build_examples(rows, tokenizer, layout, max_length)
    return Dataset.from_list(examples), counts


class CsvLogger:
    """A transformers TrainerCallback that appends (step, loss, lr, tokens, tokens/s) rows."""

    def __new__(cls, path: str | Path):
        from transformers import TrainerCallback

        class _Cb(TrainerCallback):
            def __init__(self, path):
                self.path = Path(path)
                self.t_last = None
                self.tokens_last = 0

            def on_train_begin(self, args, state, control, **kw):
                self.t_last = time.perf_counter()
                self.tokens_last = state.num_input_tokens_seen
                # steps left (a resumed run starts past 0), with rate, tokens/s and ETA
                self.progress = Progress(
                    "train", max(0, state.max_steps - state.global_step), "steps", tokens=lambda: state.num_input_tokens_seen, every_s=30
                )

            def on_step_end(self, args, state, control, **kw):
                self.progress.step(f"step {state.global_step}/{state.max_steps}")

            def on_save(self, args, state, control, **kw):
                # Called once the Trainer has written the whole checkpoint: mark it complete (with
                # its files' sizes), and record it as a finished unit (a test shows none is made twice).
                ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                if ckpt.is_dir():
                    files = {f.name: f.stat().st_size for f in sorted(ckpt.iterdir()) if f.is_file() and f.name != CHECKPOINT_MARK}
                    write_json(ckpt / CHECKPOINT_MARK, {"step": state.global_step, "files": files})
                with open(self.path.parent / "computed.log", "a", encoding="utf-8") as fh:
                    fh.write(f"checkpoint-{state.global_step}\n")

            def on_log(self, args, state, control, logs=None, **kw):
                if not logs or "loss" not in logs:
                    return
                now = time.perf_counter()
                toks = state.num_input_tokens_seen
                dt = now - (self.t_last or now)
                tps = (toks - self.tokens_last) / dt if dt > 0 else None
                self.t_last, self.tokens_last = now, toks
                new = not self.path.exists()
                with open(self.path, "a", newline="", encoding="utf-8") as fh:
                    w = csv.writer(fh)
                    if new:
                        w.writerow(["step", "epoch", "loss", "learning_rate", "tokens", "tokens_per_second"])
                    w.writerow(
                        [
                            state.global_step,
                            round(state.epoch or 0, 4),
                            logs["loss"],
                            logs.get("learning_rate"),
                            toks,
                            round(tps, 2) if tps else "",
                        ]
                    )
                log.info(
                    "step %d/%d loss %.4f lr %.2e tokens %d (%.1f tok/s)",
                    state.global_step,
                    state.max_steps,
                    logs["loss"],
                    logs.get("learning_rate") or 0,
                    toks,
                    tps or 0,
                )

        return _Cb(path)


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The CSV log with rows of a killed run past its last checkpoint replaced by the resumed run's."""
    rows: dict[int, dict[str, Any]] = {}
    with open(path, encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            rows[int(r["step"])] = r
    return [rows[k] for k in sorted(rows)]


def plot_loss(rows: list[dict[str, Any]], metrics: dict[str, Any], path: str | Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    steps = [int(r["step"]) for r in rows]
    ax.plot(steps, [float(r["loss"]) for r in rows], marker="o", ms=3, label="training loss")
    last = steps[-1] if steps else 1
    for key, style, label in (("val_loss_before", "--", "validation, before"), ("val_loss_after", ":", "validation, after")):
        if metrics.get(key) is not None:
            ax.axhline(metrics[key], ls=style, color="gray" if "before" in key else "green", label=f"{label}: {metrics[key]:.3f}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (assistant tokens)")
    ax.set_title(title)
    ax.set_xlim(0, max(last, 1) + 0.5)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


CHECKPOINT_MARK = "cbt-complete.json"


def checkpoint_state(d: Path) -> str:
    """'complete', 'incomplete' (provably: a kill landed while it was being saved) or 'damaged'.

    The Trainer writes a checkpoint's files with trainer_state.json last, then calls on_save, which
    writes CHECKPOINT_MARK with every file's size. With the mark, the files must match it (else the
    checkpoint was damaged after it was finished). Without it, a missing or half-written
    trainer_state.json proves the save never finished; a whole one means the kill landed between
    the Trainer's save and the mark, and the checkpoint is complete."""
    import json

    mark = d / CHECKPOINT_MARK
    if mark.exists():
        try:
            files = json.loads(mark.read_text(encoding="utf-8"))["files"]
        except (OSError, ValueError, KeyError, TypeError):
            return "damaged"
        ok = all((d / n).is_file() and (d / n).stat().st_size == size for n, size in files.items())
        return "complete" if ok else "damaged"
    try:
        json.loads((d / "trainer_state.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "incomplete"
    except ValueError:
        return "incomplete"
    except OSError:
        return "damaged"
    return "complete"


def last_complete_checkpoint(ckpt_dir: Path) -> str | None:
    """The newest complete checkpoint. One whose save was cut off is deleted (it is provably
    incomplete); one damaged after it was finished is moved aside with a warning, never deleted."""
    found = []
    for d in ckpt_dir.glob("checkpoint-*"):
        if not d.is_dir() or not d.name.split("-")[-1].isdigit():
            continue
        state = checkpoint_state(d)
        if state == "incomplete":
            log.warning("checkpoint %s is incomplete (killed while saving): deleted, training goes on from the one before", d)
            shutil.rmtree(d, ignore_errors=True)
            continue
        if state == "damaged":
            aside = d.with_name(d.name + ".unreadable")
            shutil.rmtree(aside, ignore_errors=True)
            d.rename(aside)
            log.warning("checkpoint %s does not match its completion mark (damaged after saving): moved to %s", d, aside.name)
            continue
        found.append((int(d.name.split("-")[-1]), d))
    return str(max(found)[1]) if found else None


def activation_bytes(model_config, batch_size: int, max_length: int, bytes_per_value: int = 2) -> int:
    """Activation memory of one training step without gradient checkpointing (Korthikanti et al.
    2022, with memory-efficient attention: about 34 values per token and hidden unit per layer;
    the MLP term scales with the intermediate size), plus the logits in float32."""
    cfg = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    h = int(cfg.hidden_size)
    layers = int(cfg.num_hidden_layers)
    inter = int(getattr(cfg, "intermediate_size", 4 * h) or 4 * h)
    tokens = batch_size * max_length
    per_layer = tokens * (10 * h + 6 * inter) * bytes_per_value
    logits = tokens * int(cfg.vocab_size) * 4 * 2
    return layers * per_layer + logits


def plan_memory(setting: bool | str, model, tcfg: dict[str, Any], device: str, free_bytes: int | None = None) -> dict[str, Any]:
    """Micro-batch, accumulation and gradient checkpointing for one training job.

    ``true``/``false`` are taken as configured. ``auto`` keeps the effective batch
    (batch_size x grad_accum) and first halves the micro-batch, raising the accumulation, until
    the activation estimate fits 80% of the device's free memory; only when a micro-batch of one
    still does not fit are activations recomputed (checkpointing costs about a third of the speed).
    """
    batch, accum = int(tcfg["batch_size"]), int(tcfg["grad_accum"])
    plan = {"batch_size": batch, "grad_accum": accum, "gradient_checkpointing": bool(setting), "why": "configured"}
    if setting is True or setting is False:
        return plan
    import torch

    width = 2 if tcfg.get("bf16") or tcfg.get("method") == "qlora" else 4
    if free_bytes is not None:
        free = free_bytes
    elif device == "cuda":
        free, _total = torch.cuda.mem_get_info()
    else:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    budget = 0.8 * free
    micro = batch
    while True:
        need = activation_bytes(model.config, micro, tcfg["max_length"], width)
        if need <= budget or micro == 1 or micro % 2:
            break
        micro //= 2
    fits = need <= budget
    plan.update(
        batch_size=micro if fits else batch,
        grad_accum=accum * (batch // micro) if fits else accum,
        gradient_checkpointing=not fits,
        why=f"auto: activations about {need / 2**30:.2f} GiB at micro-batch {micro}, {free / 2**30:.1f} GiB free on {device}",
    )
    return plan


def load_base(model_dir: str | Path, tcfg: dict[str, Any], device: str = "cpu"):
    import torch
    from transformers import AutoModelForCausalLM

    method = tcfg["method"]
    if method == "qlora":
        if device != "cuda":
            raise PipelineError(
                "config key training.method: qlora needs a CUDA GPU (4-bit NF4 weights through bitsandbytes), "
                "but this job was given none (models.<name>.gpus is 0); set gpus: 1 on a GPU node, or use method: lora on a CPU"
            )
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as e:
            raise PipelineError(
                "config key training.method: qlora needs bitsandbytes, which is not installed: "
                "run `make setup GPU=1` (or use the training-gpu conda environment)"
            ) from e
        from transformers import BitsAndBytesConfig

        bnb = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=bnb, dtype=torch.bfloat16)
    else:
        dtype = torch.bfloat16 if tcfg["bf16"] else torch.float32
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    # No key/value cache in training: it is never read, and transformers only gives the examples of
    # a padding-free batch their own attention when there is none.
    model.config.use_cache = False
    model.train()
    return model


def loss_subsample(ds, n: int, seed: int):
    """A fixed, seeded subsample of at most ``n`` examples (the whole split when it is smaller)."""
    if ds is None or len(ds) <= n:
        return ds
    import random

    idx = sorted(random.Random(seed).sample(range(len(ds)), n))
    return ds.select(idx)


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
    from transformers import AutoTokenizer

    # 1. device and unit
    device = cuda_or_cpu(gpu_key, n_gpus)
    cuda = device == "cuda"
    torch.set_num_threads(int(tcfg.get("threads") or job_threads()))
    if cuda:
        # TF32 matrix units for any float32 work left (LoRA weights, norms, the loss).
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    unit = Path(unit_root) / training_unit_key(tcfg, seed, train_path, val_path, model_dir, layout_path)
    layout = read_json(layout_path)
    ckpt_dir = unit / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    csv_path = unit / "train_log.csv"

    # 2. model, memory plan, trl settings
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
    liger = bool(cuda and tcfg.get("liger_kernel", True) and importlib.util.find_spec("liger_kernel"))
    settings = trainer_settings(tcfg, mem, ckpt_dir, seed, cuda, liger)

    # 3. the method's path: data, trl config, trainer class
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

    # 4. losses before (once per unit), training from the last complete checkpoint, losses after;
    # each on a fixed subsample of its split: one short pass, not two over the whole training set.
    n_loss = int(tcfg.get("loss_sample", 64))
    loss_train = loss_subsample(trainer.train_dataset, n_loss, seed)
    loss_val = loss_subsample(trainer.eval_dataset, n_loss, seed) if ds_val is not None else None

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
    after = losses("after")

    # 5. outputs
    metrics = {
        **before,
        **after,
        "method": tcfg["method"],
        "steps": trainer.state.global_step,
        "resumed_from": last,
        "train_runtime_s": round(train_seconds, 2),
        "tokens_seen": trainer.state.num_input_tokens_seen,
        "train_examples": len(ds_train),
        **data_info,
        "val_examples": len(ds_val) if ds_val is not None else 0,
        "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "device": device,
        "gpu_name": torch.cuda.get_device_name(0) if cuda else None,
        "gradient_checkpointing": mem["gradient_checkpointing"],
        "micro_batch": mem["batch_size"],
        "grad_accum": mem["grad_accum"],
        "liger_kernel": liger,
        "padding_free": bool(getattr(args, "padding_free", False)),
        "loss_examples": {"train": len(loss_train), "val": len(loss_val) if loss_val is not None else 0},
        "unit_dir": str(unit),
        "final_train_loss_reported": result.training_loss,
    }
    return write_training_outputs(trainer, tok, csv_path, out_adapter, out_csv, out_metrics, out_plot, title, metrics)


def merge_adapter(base_dir: str | Path, adapter_dir: str | Path, out_dir: str | Path, dtype: str = "float32") -> dict[str, Any]:
    """Merge a LoRA adapter into the full-precision base (never into 4-bit weights)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dt = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dt)
    model = PeftModel.from_pretrained(base, adapter_dir)
    merged = model.merge_and_unload()
    tok = AutoTokenizer.from_pretrained(base_dir)
    with staged_dir(out_dir) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    return {"dtype": dtype, "parameters": sum(p.numel() for p in merged.parameters())}
