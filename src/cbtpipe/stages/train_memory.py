"""The base model on its device (LoRA on full precision, QLoRA on 4-bit weights) and the memory plan:
the micro-batch, gradient accumulation and gradient checkpointing that fit the device."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..workflow import (
    PipelineError,
)


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
