"""Fine-tuning with the real tiny model: loss mask, a short LoRA run, resume after a kill."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cbtpipe.design import mask_example
from cbtpipe.workflow import PipelineError, write_jsonl

ROOT = Path(__file__).resolve().parents[1]

CONV = [
    {"role": "system", "content": "You are a CBT therapist."},
    {"role": "user", "content": "PATIENTSAYSHELLO I feel low."},
    {"role": "assistant", "content": "THERAPISTONE What has been on your mind?"},
    {"role": "user", "content": "PATIENTSAYSMORE Work mostly."},
    {"role": "assistant", "content": "THERAPISTTWO Let us put that on the agenda."},
]


NATIVE = {"system": "native", "end_of_turn": "<|im_end|>"}


def _layout(d: Path) -> Path:
    """The chat layout of the tiny model's ChatML template, as the chat_layout rule writes it."""
    p = d / "chat_layout.json"
    p.write_text(json.dumps(NATIVE))
    return p


def test_patient_tokens_carry_no_loss(tiny_hf):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_hf)
    ex = mask_example(tok, CONV, NATIVE)
    ids, mask = ex["input_ids"], ex["assistant_masks"]
    trained = tok.decode([t for t, m in zip(ids, mask, strict=True) if m])
    untrained = tok.decode([t for t, m in zip(ids, mask, strict=True) if not m])
    assert "THERAPISTONE" in trained and "THERAPISTTWO" in trained
    assert "PATIENTSAYS" not in trained and "CBT therapist" not in trained
    assert "PATIENTSAYSHELLO" in untrained and "PATIENTSAYSMORE" in untrained
    # The assistant's end-of-turn token is trained, so the model learns to stop.
    assert trained.count("<|im_end|>") == 2
    # A cut keeps ids and mask aligned.
    from cbtpipe.stages.train_data import build_examples

    short, counts = build_examples([{"messages": CONV}], tok, NATIVE, 35)
    assert counts["sessions_windowed"] == 1 and counts["examples"] == 2 and counts["windows_cut"] == 2
    assert all(len(e["input_ids"]) == len(e["assistant_masks"]) == 35 for e in short)
    # A window cut before any therapist token has nothing to learn from: it is dropped, and counted.
    none, counts = build_examples([{"messages": CONV}], tok, NATIVE, 20)
    assert none == [] and counts["windows_dropped"] == 2
    # Whole exchanges fit: two windows, each with the system prompt, none cut.
    wins, counts = build_examples([{"messages": CONV}], tok, NATIVE, 60)
    assert counts["windows_cut"] == 0 and all("CBT therapist" in tok.decode(e["input_ids"]) for e in wins)


def test_labels_built_by_trl_mask_patient_tokens(tiny_hf, tmp_path):
    """What trl actually trains on: labels are -100 on every non-assistant token."""
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from cbtpipe.stages import build_dataset

    tok = AutoTokenizer.from_pretrained(tiny_hf)
    ds, _ = build_dataset([{"messages": CONV}], tok, NATIVE, 512)
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

    from cbtpipe.stages.train_memory import load_base

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
    "threads": None,  # the worker's share of the cores (cbtpipe.workflow.hardware.job_threads)
}

TRAIN_SCRIPT = """
import json
from cbtpipe.stages import train_adapter
cfg = json.loads({cfg!r})
m = train_adapter(model_dir={model!r}, train_path={train!r}, val_path={val!r}, layout_path={layout!r}, tcfg=cfg, seed=1, unit_root={units!r},
              out_adapter={out!r} + "/adapter", out_csv={out!r} + "/log.csv", out_metrics={out!r} + "/metrics.json",
              out_plot={out!r} + "/loss.png", title="t")
"""


def _train_proc(tiny_hf, tmp_path, out):
    rows = [{"messages": CONV} for _ in range(4)]
    write_jsonl(tmp_path / "train.jsonl", rows)
    write_jsonl(tmp_path / "val.jsonl", rows[:1])
    out.mkdir(exist_ok=True)
    code = TRAIN_SCRIPT.format(
        cfg=json.dumps(TCFG),
        model=str(tiny_hf),
        train=str(tmp_path / "train.jsonl"),
        val=str(tmp_path / "val.jsonl"),
        units=str(tmp_path / "units"),
        layout=str(_layout(tmp_path)),
        out=str(out),
    )
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def test_incomplete_checkpoint_is_not_resumed_from(tmp_path):
    from cbtpipe.stages.checkpoints import last_complete_checkpoint

    for step, complete in ((2, True), (4, True), (6, False)):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        (d / "adapter_model.safetensors").write_bytes(b"x")
        if complete:
            (d / "trainer_state.json").write_text("{}")
    assert last_complete_checkpoint(tmp_path).endswith("checkpoint-4")
    assert not (tmp_path / "checkpoint-6").exists()
    assert last_complete_checkpoint(tmp_path / "none") is None


def test_a_checkpoint_is_deleted_only_when_provably_incomplete(tmp_path):
    """Marked complete but damaged since: moved aside, kept. Half-written trainer state, no mark:
    deleted. Whole trainer state, no mark (killed between save and mark): used."""
    import json

    from cbtpipe.stages.checkpoints import CHECKPOINT_MARK, last_complete_checkpoint

    def ckpt(step, state, mark=None):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        (d / "adapter_model.safetensors").write_bytes(b"weights")
        if state is not None:
            (d / "trainer_state.json").write_text(state)
        if mark is not None:
            (d / CHECKPOINT_MARK).write_text(json.dumps({"step": step, "files": mark}))
        return d

    ckpt(2, "{}", {"adapter_model.safetensors": 7, "trainer_state.json": 2})
    ckpt(4, "{}")  # killed after the Trainer's save, before the mark
    ckpt(6, '{"global_st')  # killed while writing trainer_state.json
    ckpt(8, "{}", {"adapter_model.safetensors": 999, "trainer_state.json": 2})  # truncated later
    assert last_complete_checkpoint(tmp_path).endswith("checkpoint-4")
    assert not (tmp_path / "checkpoint-6").exists()
    assert (tmp_path / "checkpoint-8.unreadable" / "adapter_model.safetensors").read_bytes() == b"weights"
    assert (tmp_path / "checkpoint-2").is_dir()


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
    from cbtpipe.stages import build_pairs, train_adapter

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
    m = train_adapter(
        model_dir=tiny_hf,
        train_path=tmp_path / "pt.jsonl",
        val_path=tmp_path / "pv.jsonl",
        layout_path=_layout(tmp_path),
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


def test_gpu_training_without_cuda_stops_at_once(tiny_hf, tmp_path):
    """models.<m>.gpus > 0 on a machine without CUDA: an error naming the key, before any work."""
    import torch

    from cbtpipe.stages import train_adapter

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    write_jsonl(tmp_path / "t.jsonl", [{"messages": CONV}])
    t0 = time.perf_counter()
    with pytest.raises(PipelineError, match=r"config key models\.tiny\.gpus is 1, but this job sees 0 CUDA device"):
        train_adapter(
            model_dir=tiny_hf,
            train_path=tmp_path / "t.jsonl",
            val_path=tmp_path / "t.jsonl",
            layout_path=_layout(tmp_path),
            tcfg=dict(TCFG),
            seed=1,
            unit_root=tmp_path / "units",
            out_adapter=tmp_path / "a",
            out_csv=tmp_path / "l.csv",
            out_metrics=tmp_path / "m.json",
            out_plot=tmp_path / "p.png",
            title="t",
            n_gpus=1,
            gpu_key="models.tiny.gpus",
        )
    assert time.perf_counter() - t0 < 30
    assert not (tmp_path / "units").exists() or not any((tmp_path / "units").rglob("checkpoint-*"))


def test_llama_offload_without_gpu_backend_names_the_key(tiny_gguf):
    import llama_cpp

    from cbtpipe.llm import LlamaCppBackend

    if llama_cpp.llama_supports_gpu_offload():
        pytest.skip("this llama.cpp build can offload to a GPU here")
    with pytest.raises(PipelineError, match=r"config key rollout\.therapist_n_gpu_layers is -1.*make setup GPU=1"):
        LlamaCppBackend("therapist", {"n_gpu_layers": -1}, model_path=tiny_gguf, gpu_key="rollout.therapist_n_gpu_layers")
    with pytest.raises(PipelineError, match=r"config key backends\.judge\.n_gpu_layers is 8"):
        LlamaCppBackend("judge", {"n_gpu_layers": 8}, model_path=tiny_gguf)


def _batch_losses(model, batch):
    """Per-example mean loss over the labelled tokens of a collated batch (padded or padding-free)."""
    import torch

    with torch.no_grad():
        # As in training: no key/value cache (transformers finds packed examples only without one).
        logits = model(**{k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids")}, use_cache=False).logits
    labels = batch["labels"]
    lp = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100, reduction="none")
    return lp, labels[:, 1:] != -100


def test_padding_free_batches_keep_the_mask_and_attend_per_example(tiny_hf):
    """A padding-free batch (examples back to back, position ids restarting) trains exactly the
    therapist tokens of each example, and each example's losses equal those of a padded batch:
    attention does not cross from one example into the next."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from cbtpipe.design import mask_example

    tok = AutoTokenizer.from_pretrained(tiny_hf)
    model = AutoModelForCausalLM.from_pretrained(tiny_hf, attn_implementation="sdpa").eval()
    other = [dict(m, content=m["content"].replace("low", "anxious and tired")) for m in CONV]
    examples = []
    for conv in (CONV, other):
        ex = mask_example(tok, conv, NATIVE)
        ex["labels"] = [t if m else -100 for t, m in zip(ex["input_ids"], ex["assistant_masks"], strict=True)]
        examples.append({"input_ids": ex["input_ids"], "labels": ex["labels"]})
    pid = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    free = DataCollatorForLanguageModeling(pad_token_id=pid, padding_free=True)(examples)
    padded = DataCollatorForLanguageModeling(pad_token_id=pid, padding_free=False)(examples)
    assert free["input_ids"].shape[0] == 1 and "attention_mask" not in free
    lens = [len(e["input_ids"]) for e in examples]
    assert free["input_ids"].shape[1] == sum(lens)
    # The labelled tokens are exactly the therapist turns of both examples.
    trained = tok.decode([t for t, lab in zip(free["input_ids"][0].tolist(), free["labels"][0].tolist(), strict=True) if lab != -100])
    assert trained.count("THERAPISTONE") == 2 and trained.count("THERAPISTTWO") == 2 and "PATIENTSAYS" not in trained
    lf, mf = _batch_losses(model, free)
    lp, mp = _batch_losses(model, padded)
    first = lf[0, : lens[0] - 1][mf[0, : lens[0] - 1]]
    second = lf[0, lens[0] : lens[0] + lens[1] - 1][mf[0, lens[0] : lens[0] + lens[1] - 1]]
    assert first.shape == lp[0][mp[0]].shape and second.shape == lp[1][mp[1]].shape
    assert (first - lp[0][mp[0]]).abs().max() < 1e-3
    assert (second - lp[1][mp[1]]).abs().max() < 1e-3


def test_memory_plan_prefers_smaller_micro_batches_to_checkpointing(tiny_hf):
    from transformers import AutoConfig

    from cbtpipe.stages.train_memory import activation_bytes, plan_memory

    cfg = AutoConfig.from_pretrained(tiny_hf)

    class M:
        config = cfg

    t = {"batch_size": 8, "grad_accum": 1, "max_length": 2048, "bf16": True, "method": "lora"}
    one = activation_bytes(cfg, 1, 2048, 2)
    assert activation_bytes(cfg, 8, 2048, 2) > 7 * one
    assert plan_memory(True, M, t, "cpu")["gradient_checkpointing"] is True
    assert plan_memory(False, M, t, "cpu", free_bytes=1)["gradient_checkpointing"] is False
    roomy = plan_memory("auto", M, t, "cuda", free_bytes=100 * activation_bytes(cfg, 8, 2048, 2))
    assert (roomy["batch_size"], roomy["grad_accum"], roomy["gradient_checkpointing"]) == (8, 1, False)
    tight = plan_memory("auto", M, t, "cuda", free_bytes=int(2.6 * one / 0.8))
    assert (tight["batch_size"], tight["grad_accum"], tight["gradient_checkpointing"]) == (2, 4, False)
    full = plan_memory("auto", M, t, "cuda", free_bytes=int(0.5 * one))
    assert (full["batch_size"], full["grad_accum"], full["gradient_checkpointing"]) == (8, 1, True)


def test_loss_subsample_is_fixed_and_bounded():
    from datasets import Dataset

    from cbtpipe.stages.train_data import loss_subsample

    ds = Dataset.from_list([{"i": i} for i in range(100)])
    a, b = loss_subsample(ds, 10, 3), loss_subsample(ds, 10, 3)
    assert len(a) == 10 and a["i"] == b["i"] and a["i"] == sorted(a["i"])
    assert loss_subsample(ds, 500, 3) is ds and loss_subsample(None, 5, 1) is None


def test_training_unit_key_follows_content_not_threads(tmp_path):
    from cbtpipe.stages.training import training_unit_key

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.safetensors").write_bytes(b"weights")
    write_jsonl(tmp_path / "t.jsonl", [{"messages": CONV}])
    write_jsonl(tmp_path / "v.jsonl", [{"messages": CONV[:3]}])

    def key(**over):
        return training_unit_key(dict(TCFG, **over), 1, tmp_path / "t.jsonl", tmp_path / "v.jsonl", tmp_path / "m", layout)

    layout = _layout(tmp_path)

    assert key(threads=1) == key(threads=2) == key(threads=16)
    assert key(max_steps=6) != key()
    before = key()
    (tmp_path / "m" / "model.safetensors").write_bytes(b"other weights")
    assert key() != before
    before = key()
    layout.write_text(json.dumps({"system": "first_user", "end_of_turn": "<|im_end|>"}))
    assert key() != before
