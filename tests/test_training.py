"""Fine-tuning with the real tiny model: loss mask, a short LoRA run, resume after a kill."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cbtpipe.io import PipelineError, write_jsonl
from cbtpipe.training import assistant_mask_example

ROOT = Path(__file__).resolve().parents[1]

CONV = [
    {"role": "system", "content": "You are a CBT therapist."},
    {"role": "user", "content": "PATIENTSAYSHELLO I feel low."},
    {"role": "assistant", "content": "THERAPISTONE What has been on your mind?"},
    {"role": "user", "content": "PATIENTSAYSMORE Work mostly."},
    {"role": "assistant", "content": "THERAPISTTWO Let us put that on the agenda."},
]


def test_patient_tokens_carry_no_loss(tiny_hf):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_hf)
    ex = assistant_mask_example(tok, CONV, max_length=4096)
    ids, mask = ex["input_ids"], ex["assistant_masks"]
    trained = tok.decode([t for t, m in zip(ids, mask, strict=True) if m])
    untrained = tok.decode([t for t, m in zip(ids, mask, strict=True) if not m])
    assert "THERAPISTONE" in trained and "THERAPISTTWO" in trained
    assert "PATIENTSAYS" not in trained and "CBT therapist" not in trained
    assert "PATIENTSAYSHELLO" in untrained and "PATIENTSAYSMORE" in untrained
    # The assistant's end-of-turn token is trained, so the model learns to stop.
    assert trained.count("<|im_end|>") == 2
    # Truncation keeps ids and mask aligned.
    short = assistant_mask_example(tok, CONV, max_length=20)
    assert len(short["input_ids"]) == len(short["assistant_masks"]) == 20


def test_labels_built_by_trl_mask_patient_tokens(tiny_hf, tmp_path):
    """What trl actually trains on: labels are -100 on every non-assistant token."""
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from cbtpipe.training import build_dataset

    tok = AutoTokenizer.from_pretrained(tiny_hf)
    ds = build_dataset([{"messages": CONV}], tok, 512)
    model = AutoModelForCausalLM.from_pretrained(tiny_hf)
    args = SFTConfig(output_dir=str(tmp_path), max_steps=1, report_to=[], use_cpu=True, max_length=512)
    tr = SFTTrainer(
        model=model,
        args=args,
        train_dataset=ds,
        processing_class=tok,
        peft_config=LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"),
    )
    row = tr.train_dataset[0]
    labelled = tok.decode([t for t, lab in zip(row["input_ids"], row["labels"], strict=True) if lab != -100])
    assert "THERAPISTONE" in labelled and "PATIENTSAYS" not in labelled


def test_qlora_without_cuda_is_a_clear_error(tiny_hf):
    import torch

    from cbtpipe.training import load_base

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the error path is for CPU-only machines")
    with pytest.raises(PipelineError, match="qlora needs a CUDA GPU"):
        load_base(tiny_hf, {"method": "qlora", "gradient_checkpointing": True, "bf16": False})


TCFG = {
    "method": "lora",
    "rank": 4,
    "alpha": 8,
    "dropout": 0.0,
    "target_modules": ["q_proj", "v_proj"],
    "learning_rate": 1e-3,
    "lr_scheduler": "constant",
    "warmup_ratio": 0.0,
    "epochs": 1,
    "max_steps": 8,
    "batch_size": 1,
    "grad_accum": 1,
    "max_length": 128,
    "packing": False,
    "gradient_checkpointing": False,
    "save_steps": 2,
    "logging_steps": 1,
    "weight_decay": 0.0,
    "bf16": False,
    "threads": 2,
}

TRAIN_SCRIPT = """
import json, sys
sys.path.insert(0, {scripts!r})
from cbtpipe.training import train_sft
cfg = json.loads({cfg!r})
m = train_sft(model_dir={model!r}, train_path={train!r}, val_path={val!r}, tcfg=cfg, seed=1, unit_root={units!r},
              out_adapter={out!r} + "/adapter", out_csv={out!r} + "/log.csv", out_metrics={out!r} + "/metrics.json",
              out_plot={out!r} + "/loss.png", title="t")
"""


def _train_proc(tiny_hf, tmp_path, out):
    rows = [{"messages": CONV} for _ in range(4)]
    write_jsonl(tmp_path / "train.jsonl", rows)
    write_jsonl(tmp_path / "val.jsonl", rows[:1])
    out.mkdir(exist_ok=True)
    code = TRAIN_SCRIPT.format(
        scripts=str(ROOT / "scripts"),
        cfg=json.dumps(TCFG),
        model=str(tiny_hf),
        train=str(tmp_path / "train.jsonl"),
        val=str(tmp_path / "val.jsonl"),
        units=str(tmp_path / "units"),
        out=str(out),
    )
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def test_incomplete_checkpoint_is_not_resumed_from(tmp_path):
    from cbtpipe.training import last_complete_checkpoint

    for step, complete in ((2, True), (4, True), (6, False)):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        (d / "adapter_model.safetensors").write_bytes(b"x")
        if complete:
            (d / "trainer_state.json").write_text("{}")
    assert last_complete_checkpoint(tmp_path).endswith("checkpoint-4")
    assert not (tmp_path / "checkpoint-6").exists()
    assert last_complete_checkpoint(tmp_path / "none") is None


def test_killed_training_resumes_from_checkpoint(tiny_hf, tmp_path):
    out = tmp_path / "out"
    p = _train_proc(tiny_hf, tmp_path, out)
    units = tmp_path / "units"
    deadline = time.time() + 600
    # Kill as soon as the second checkpoint (step 4) is complete.
    while time.time() < deadline and not list(units.glob("*/checkpoints/checkpoint-4/trainer_state.json")):
        assert p.poll() is None, p.stdout.read().decode()[-3000:]
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert not (out / "metrics.json").exists()
    p2 = _train_proc(tiny_hf, tmp_path, out)
    log = p2.communicate(timeout=600)[0].decode()
    assert p2.returncode == 0, log[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["resumed_from"] and m["resumed_from"].endswith(("checkpoint-4", "checkpoint-6"))
    assert m["steps"] == 8
    steps = [int(line.split(",")[0]) for line in (out / "log.csv").read_text().splitlines()[1:]]
    assert steps == list(range(1, 9))
    assert (out / "adapter" / "adapter_config.json").exists() and (out / "loss.png").stat().st_size > 1000


def test_orpo_few_steps_on_tiny_model(tiny_hf, tiny_backend, tmp_path):
    """ORPO on pairs whose rejected reply is the instruct model's own, built by the pipeline."""
    from cbtpipe.preference import build_pairs
    from cbtpipe.training import train_sft

    rows = [{"patient_id": "p1", "session_index": 1, "messages": CONV}]
    pairs, stats = build_pairs(rows, tiny_backend, {"temperature": 0.7, "max_tokens": 24}, 1, 2, tmp_path / "units_pairs")
    assert stats["pairs"] == len(pairs) >= 1
    p = pairs[0]
    assert p["chosen"][0]["content"].startswith("THERAPIST") and p["rejected"][0]["content"] != p["chosen"][0]["content"]
    assert p["prompt"][-1]["role"] == "user"
    write_jsonl(tmp_path / "pt.jsonl", pairs)
    write_jsonl(tmp_path / "pv.jsonl", pairs[:1])
    out = tmp_path / "out"
    out.mkdir()
    cfg = dict(TCFG, method="orpo", max_steps=2, save_steps=1, orpo_beta=0.1)
    m = train_sft(
        model_dir=tiny_hf,
        train_path=tmp_path / "pt.jsonl",
        val_path=tmp_path / "pv.jsonl",
        tcfg=cfg,
        seed=1,
        unit_root=tmp_path / "units",
        out_adapter=out / "adapter",
        out_csv=out / "log.csv",
        out_metrics=out / "m.json",
        out_plot=out / "loss.png",
        title="orpo",
    )
    assert m["method"] == "orpo" and m["steps"] == 2
    assert m["val_loss_before"] is not None and m["val_loss_after"] is not None
    assert (out / "adapter" / "adapter_config.json").exists()
