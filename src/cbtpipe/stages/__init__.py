"""The pipeline's stages, one module per step of the rule graph: transcripts, the chat dataset,
training and merging, model import and export to GGUF, parity, rollouts, the CTRS judge, the
safety judge and the simulated-patient check.

The names below are the layer's public face; each is imported from its module when first used.
"""

from .. import face

__getattr__, __dir__, __all__ = face(
    __name__,
    {
        "converter": ["build_tools", "check_tools_version"],
        "dataset": ["split_by_patient", "to_chat", "token_stats"],
        "export": ["convert_to_gguf", "quantize"],
        "history": ["generate_history"],
        "judge": ["run_panel", "run_turn_judging", "judge_arms", "without_closing_turn"],
        "merge": ["merge_adapter"],
        "models": ["IMPORT_CHECK_PROMPTS", "download_hub", "import_model"],
        "parity": ["parity_report"],
        "patient_check": ["run_patient_check"],
        "preference": ["build_pairs"],
        "rollout": ["run_arms", "run_session", "session_plan", "shard_profiles"],
        "safety": ["run_safety_judging"],
        "train_data": ["build_dataset"],
        "train_log": ["CsvLogger"],
        "training": ["train_adapter"],
        "transcripts": ["gather_generation", "load_import", "run_generation"],
    },
)
