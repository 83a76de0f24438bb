"""The workflow layer, the lowest: errors, files and units, the configuration and its schema,
secrets, the registry of backend types and LLM stages, hardware, progress lines and the entry of
a rule's script. It imports nothing else of the package.

The names below are the layer's public face; each is imported from its module when first used.
"""

from .. import face

__getattr__, __dir__, __all__ = face(
    __name__,
    {
        "config": [
            "SCHEMA",
            "active_backends",
            "api_resource_name",
            "backend_spec",
            "expand_seeds",
            "instruct_owners",
            "judge_members",
            "model_training_cfg",
            "resolve_defaults",
            "section_defaults",
            "training_seed",
        ],
        "errors": ["PipelineError"],
        "hardware": ["cuda_or_cpu", "job_threads", "llama_build_record", "process_cpus", "require_gpu_offload"],
        "headless": ["FLAGS", "find_chromium"],
        "io": [
            "atomic_write_text",
            "die_with_parent",
            "hash_obj",
            "partial_path",
            "read_json",
            "read_jsonl",
            "remove_partial",
            "sha256_file",
            "staged_dir",
            "write_json",
            "write_jsonl",
        ],
        "progress": ["Progress"],
        "registry": ["BACKEND_TYPES", "STAGES", "is_api", "key_rules", "plan_rules", "stage_backend_names"],
        "rule": ["entry"],
        "schemas": ["check_config_files", "check_loaded", "check_record", "check_yaml", "field_name", "read_csv_rows", "yaml_line"],
        "secrets": ["check_config_secrets", "env_secret", "redact"],
        "units": ["UnitStore", "map_units", "move_aside", "shard_of"],
    },
)
