"""A LoRA adapter merged into its full-precision base (never into 4-bit weights)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..workflow import (
    staged_dir,
)


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
