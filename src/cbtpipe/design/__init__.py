"""The study's design, as data and rules: patient profiles and their suicide-risk dimension, the
course of sessions, the chat layout of a model, the therapist's system prompt, prompt templates
and the CTRS rubric. No LLM is called here.

The names below are the layer's public face; each is imported from its module when first used.
"""

from .. import face

__getattr__, __dir__, __all__ = face(
    __name__,
    {
        "chat": ["apply_layout", "chat_layout", "drop_oldest_exchange", "mask_example", "token_count", "windows"],
        "course": ["check_positions", "eval_context", "phase_plan", "training_context"],
        "profiles": ["EVAL_SETS", "describe", "eval_profiles", "load_attributes", "load_held_out", "train_val_profiles"],
        "prompts": ["check_template", "render_template"],
        "risk": ["assign_risk", "check_shares", "load_risk_attributes", "risk_prompt"],
        "rubric": ["SESSION_COLUMNS", "load_human_ratings", "load_rubric"],
        "safety_rubric": [
            "BEST",
            "FAILURES",
            "HARM",
            "NA",
            "SUBOPTIMAL",
            "evaluate_flow",
            "first_resource_turn",
            "is_refusal",
            "load_crisis_resources",
            "load_safety_rubric",
            "reachable_disclosure",
            "resource_turns",
            "risk_protocol_text",
            "safety_score",
        ],
        "therapist": ["therapist_system"],
    },
)
