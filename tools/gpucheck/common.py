"""What every phase of the GPU check shares: the results (written after each phase), the output
folder, the clock and its budget, the log, and the 8B model's shape."""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


T0 = time.time()


RESULTS: dict = {"phases": {}}


OUT = Path(".")


BF16_PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}


SHAPE = dict(
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    max_position_embeddings=8192,
    rope_theta=500000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)


def log(msg: str) -> None:
    print(f"[{time.time() - T0:6.1f}s] {msg}", flush=True)


def save() -> None:
    if "--decode-child" in sys.argv:
        return
    (OUT / "gpu_check.json").write_text(json.dumps(RESULTS, indent=1, default=str))


def phase(name):
    def deco(fn):
        def run(*a, **kw):
            t = time.time()
            log(f"--- {name}")
            try:
                r = fn(*a, **kw)
                RESULTS["phases"][name] = {"ok": True, "seconds": round(time.time() - t, 1), **(r or {})}
            except Exception as e:  # record and go on: the other phases still run
                RESULTS["phases"][name] = {"ok": False, "seconds": round(time.time() - t, 1), "error": f"{type(e).__name__}: {e}"}
                log(traceback.format_exc()[-3000:])
            save()
            return RESULTS["phases"][name]

        return run

    return deco


def left(budget: float) -> float:
    return budget - (time.time() - T0)
