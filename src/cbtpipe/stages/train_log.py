"""The training's step log (a trainer callback writing step, loss, learning rate, tokens and tokens
per second as CSV) and its loss plot."""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path
from typing import Any

from ..workflow import (
    Progress,
    write_json,
)
from .checkpoints import CHECKPOINT_MARK

log = logging.getLogger("cbtpipe")


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
