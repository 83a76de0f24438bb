# Helpers that compute inputs, wildcards and parameters from the config.
import re

from cbtpipe.checks import check_api_keys, check_config
from cbtpipe.workflow import (
    api_resource_name,
    expand_seeds,
    instruct_owners,
    is_api,
    judge_members,
    model_training_cfg,
    resolve_defaults,
    stage_backend_names,
    training_seed,
)

resolve_defaults(config)
# training.seeds: an entry per model and further seed (<model>-seed<seed>); each entry's model and seed
REPLICATES = expand_seeds(config)
check_config(config, workflow.basedir)


def _canonical(x):
    if isinstance(x, dict):
        return {k: _canonical(x[k]) for k in sorted(x)}
    if isinstance(x, list):
        return [_canonical(v) for v in x]
    return x


# Snakemake compares params by their text: with keys in one canonical order, reordering keys in a
# config file (or another writer of it) does not make every rule look changed.
_cfg = _canonical(config)
config.clear()
config.update(_cfg)

MODELS = sorted(config["models"])
# Entries with one base share its instruct arm, built for the first of them (cbtpipe.workflow.config)
BASE_OF = instruct_owners(config)
BASES = sorted(set(BASE_OF.values()))
ARMS = config["rollout"]["arms"]
QUANTS = config["export"]["quantizations"]
OUTTYPE = config["export"]["outtype"]
RQ = config["rollout"]["quantization"]
SHARDS = [f"{i:02d}" for i in range(config["rollout"]["shards"])]
# generation is sharded by patient too (data.shards), so no job outgrows its runtime limit
DATA_SHARDS = [f"{i:02d}" for i in range(config["data"]["shards"])]
JSHARDS = SHARDS
CPU = config["resources"]["cpu_threads"]
# the jobs that are mostly Python and file work (import, merge, GGUF conversion, parity)
LIGHT_CPU = config["resources"]["light_cpu_threads"]
PROMPTS = config["data"]["prompts"]
# Job priorities: a ready job of higher priority takes a free core first. The jobs on the way to
# the sessions and their judgements go before the side outputs that only the report reads (parity,
# token statistics, the rating packet), and training, the longest step on that way, first of all:
# on two cores a side job started first held back the trainings by 6-9 s and the rollouts by 18 s
# (README, Timing).
ON_PATH = 1
TRAINING = 2


wildcard_constraints:
    model="|".join(re.escape(m) for m in MODELS),
    arm="instruct|cbt",
    variant=r"[A-Za-z0-9_-]+",
    shard=r"\d+",
    qtype=r"Q[0-9A-Z_]+",
    outtype="f16|bf16|f32",


def hf_dir(wildcards):
    return f"results/models/{wildcards.model}/{wildcards.arm}/hf"


def gguf_path(model, arm, qtype):
    return f"results/gguf/{model}/{arm}/{model}-{arm}-{qtype}.gguf"


def arm_model(model, arm):
    """The entry whose files hold this model's arm: its base's first entry for the instruct arm."""
    return BASE_OF[model] if arm == "instruct" else model


def arm_gguf(model, arm, qtype):
    return gguf_path(arm_model(model, arm), arm, qtype)


def base_hf(wildcards):
    return f"results/models/{BASE_OF[wildcards.model]}/instruct/hf"


def chat_layout_file(wildcards):
    return f"results/models/{BASE_OF[wildcards.model]}/chat_layout.json"


def parity_files():
    """Every arm's parity record, once per file (entries with one base share the instruct arm's)."""
    return list(
        dict.fromkeys(
            f"results/export/{arm_model(m, a)}/{a}/parity.json"
            for m in MODELS
            for a in ARMS
        )
    )


def import_inputs(wildcards):
    """Every file an import reads: the downloaded or local model, and a custom chat template (so
    editing one of them re-runs the import and what depends on it)."""
    m = config["models"][wildcards.model]
    src = m["source"]
    out = {}
    if src["type"] == "hub":
        out["hub"] = f"resources/hub/{wildcards.model}"
    elif src["type"] in ("gguf", "local_hf"):
        out["local"] = src["path"]
    if m.get("chat_template"):
        out["chat_template"] = m["chat_template"]
    return out


def settings(section, *paths):
    """A config section as a rule's params, without the keys that name files: those files are the
    rule's declared inputs (their content counts, through the input triggers), and moving a file
    with the same content must not re-run anything."""
    return {k: v for k, v in config[section].items() if k not in paths}


def generation_settings():
    """What generated transcripts depend on: the data section without the keys that name files
    (their content is an input) and without the shard count (units are per patient)."""
    return settings("data", "prompts", "system_prompt", "import_path", "shards")


def comparison_settings():
    """The report keys a comparison's tests read (the others, such as the ratings to import or
    the primary endpoint, do not change it)."""
    return {k: config["report"][k] for k in ("alpha", "bootstrap", "power")}


def course_settings():
    """The course an evaluation session's position belongs to (its length and phases)."""
    d = config["data"]
    return {"n_sessions": d["sessions_per_patient"], "phases": d["phases"]}


def eval_history_settings():
    """What an evaluation patient's synthetic course history depends on, and only that."""
    d = config["data"]
    keys = (
        "generator",
        "sampling",
        "sessions_per_patient",
        "phases",
        "summary_chars_max",
        "max_attempts",
    )
    return {k: d[k] for k in keys} | {"positions": config["rollout"]["positions"]}


def risk_settings():
    """profiles.risk without its file (the file is an input)."""
    return {k: v for k, v in config["profiles"]["risk"].items() if k != "attributes"}


def train_risk_settings():
    """What training profiles read of profiles.risk: nothing unless risk.train is on."""
    return risk_settings() if config["profiles"]["risk"]["train"] else {}


def train_risk_inputs(wildcards):
    if not config["profiles"]["risk"]["train"]:
        return {}
    return {"risk": config["profiles"]["risk"]["attributes"]}


def import_spec(wildcards):
    """The model settings an import reads (not its resources: mem_mb or gpus do not change it)."""
    m = config["models"][wildcards.model]
    return {
        k: m[k] for k in ("source", "dtype", "chat_template") if m.get(k) is not None
    }


def human_ratings(wildcards):
    path = config["report"]["human_ratings"]
    return [path] if path else []


def packet_ratings(wildcards):
    """A filled rating packet and the key that maps it back to its sessions."""
    path = config["report"]["packet_ratings"]
    return (
        {"packet_ratings": path, "packet_key": "results/rating_key/key.csv"}
        if path
        else {}
    )


def gpus(model):
    return config["models"][model]["gpus"]


def gpu_resources(wildcards):
    return gpus(wildcards.model)


def _partition(n_gpus):
    key = "gpu_partition" if n_gpus else "cpu_partition"
    return config["resources"][key] or ""


def partition(wildcards):
    return _partition(gpus(wildcards.model))


def cpu_partition(wildcards):
    return _partition(0)


JUDGES = judge_members(config["judge"])


def _backend_names(stages):
    """The backends that the jobs of these LLM stages (cbtpipe.workflow.registry.STAGES) call."""
    return sorted({n for st in stages for n in stage_backend_names(st, config, JUDGES)})


def backend_gpus(*stages):
    """1 if an LLM backend that these stages call offloads to a GPU."""
    return int(
        any(
            config["backends"].get(n, {}).get("n_gpu_layers", 0)
            for n in _backend_names(stages)
        )
    )


def used_backends(*stages):
    """The backends that these stages call, and only those: a job's params then change only when
    a backend it calls changes."""
    return {
        n: config["backends"][n]
        for n in _backend_names(stages)
        if n in config["backends"]
    }


def judge_settings():
    """What CTRS judgements depend on: every judge of the panel (without the path of its prompt,
    whose content is an input) and how the panel's scores are reduced."""
    return {
        "members": [{k: v for k, v in m.items() if k != "prompt"} for m in JUDGES],
        "reducer": config["judge"]["panel_reducer"],
    }


def judge_prompts():
    """The prompt template of each judge of the panel, in the panel's order."""
    return [m["prompt"] for m in JUDGES]


def api_resources(*stages):
    """One Snakemake resource per API backend a job calls, ``api_<backend>``, worth the calls it
    may have in flight (the backend's concurrency): ``--resources api_<backend>=N`` then bounds
    the calls in flight to that provider across all running jobs."""
    out = {}
    for name, spec in used_backends(*stages).items():
        if is_api(spec):
            out[api_resource_name(name)] = int(spec.get("concurrency", 1))
    return out


def backend_partition(*stages):
    return _partition(backend_gpus(*stages))


def rollout_gpus(wildcards):
    therapist = config["rollout"]["therapist_n_gpu_layers"]
    return int(bool(therapist) or backend_gpus("rollout") > 0)


def rollout_partition(wildcards):
    return _partition(rollout_gpus(wildcards))


def _env(name, on_gpu):
    """A rule's conda env: the *-gpu variant (CUDA llama.cpp, the GPU training stack) when the
    job uses a GPU."""
    return f"../envs/{name}-gpu.yaml" if on_gpu else f"../envs/{name}.yaml"


def training_env(wildcards):
    return _env("training", gpus(wildcards.model) > 0)


def rollout_env(wildcards):
    return _env("llamacpp", rollout_gpus(wildcards) > 0)


def llm_env(*stages):
    """The env of a rule of these LLM stages."""
    return _env("llm", backend_gpus(*stages) > 0)


def training_inputs(wildcards):
    """SFT trains on the chat dataset; ORPO on preference pairs built with the instruct model."""
    if model_training_cfg(config, wildcards.model)["method"] == "orpo":
        return {
            "train": f"results/data/{wildcards.model}/pairs_train.jsonl",
            "val": f"results/data/{wildcards.model}/pairs_val.jsonl",
        }
    return {"train": "results/data/train.jsonl", "val": "results/data/val.jsonl"}


def training_params(wildcards):
    """The entry's training settings; its seed is a param of its own."""
    return {
        k: v
        for k, v in model_training_cfg(config, wildcards.model).items()
        if k not in ("seed", "seeds")
    }


def entry_seed(wildcards):
    return training_seed(config, wildcards.model)


def rollout_inputs(wildcards):
    """A rollout job plays every arm: one GGUF per arm, in the order of ARMS."""
    return {
        "gguf": [arm_gguf(wildcards.model, arm, RQ) for arm in ARMS],
        "profiles": "results/profiles/eval.jsonl",
        "system_prompt": config["data"]["system_prompt"],
        "patient_prompt": config["rollout"]["patient_prompt"],
        "context": PROMPTS["context"],
        "history": "results/profiles/eval_history.jsonl",
        "layout": chat_layout_file(wildcards),
    } | protocol_inputs(wildcards)


def protocol_inputs(wildcards):
    """The risk protocol's files, read only by rollouts that use it (rollout.risk_protocol)."""
    if not rollout_settings(wildcards)["risk_protocol"]:
        return {}
    return {
        "risk_protocol": config["rollout"]["risk_protocol_prompt"],
        "crisis_resources": config["safety"]["crisis_resources"],
    }


def protocol_params(wildcards):
    """What the risk protocol's text depends on besides its files (nothing when it is off)."""
    if not rollout_settings(wildcards)["risk_protocol"]:
        return {}
    return {"country": config["safety"]["country"]}


def safety_settings():
    """The safety section as the safety judge's params: no file paths, and no settings that only
    the statistics or the rollouts read."""
    return settings("safety", "rubric", "prompt", "crisis_resources")


def safety_judged(wildcards=None):
    return expand(
        "results/safety/{model}/{arm}/shard{shard}.jsonl",
        model=MODELS,
        arm=ARMS,
        shard=SHARDS,
    )


def safety_ablation_judged(wildcards=None):
    return expand(
        "results/ablations/{variant}/safety/{model}/{arm}/shard{shard}.jsonl",
        variant=ABLATIONS,
        model=MODELS,
        arm=ARMS,
        shard=SHARDS,
    )


ABLATIONS = sorted(config["rollout"]["ablations"])


def rollout_settings(wildcards):
    """The rollout section for a main job, or with an ablation's overrides for an ablation job
    (the list of ablations itself changes no session)."""
    r = {k: v for k, v in config["rollout"].items() if k != "ablations"}
    variant = getattr(wildcards, "variant", None)
    return r | config["rollout"]["ablations"][variant] if variant else r


def ablation_judged(wildcards=None):
    return expand(
        "results/ablations/{variant}/judge/{model}/{arm}/shard{shard}.jsonl",
        variant=ABLATIONS,
        model=MODELS,
        arm=ARMS,
        shard=SHARDS,
    )


def closing_judged(wildcards=None):
    """The sessions judged again without their closing turn (rollout.at_max_turns: closing)."""
    if config["rollout"]["at_max_turns"] != "closing":
        return []
    return expand(
        "results/judge_closing/{model}/{arm}/shard{shard}.jsonl",
        model=MODELS,
        arm=ARMS,
        shard=SHARDS,
    )


def patient_checked(wildcards=None):
    """The simulated-patient check of every main-run session (patient_check.enabled)."""
    if not config["patient_check"]["enabled"]:
        return []
    return expand(
        "results/patient_check/{model}/{arm}/shard{shard}.jsonl",
        model=MODELS,
        arm=ARMS,
        shard=SHARDS,
    )


def turn_judged(wildcards=None):
    return expand(
        "results/judge_turns/{model}/{arm}/shard{shard}.jsonl",
        model=MODELS,
        arm=ARMS,
        shard=SHARDS,
    )


def transcript_inputs(wildcards):
    if config["data"]["source"] == "import":
        return {"imported": config["data"]["import_path"]}
    return {
        "shards": expand(
            "results/data/transcripts/shard{shard}.jsonl", shard=DATA_SHARDS
        ),
        "shard_stats": expand(
            "results/data/transcripts/shard{shard}.stats.json", shard=DATA_SHARDS
        ),
        "train": "results/profiles/train.jsonl",
        "val": "results/profiles/val.jsonl",
    }


def parity_ggufs(wildcards):
    return [gguf_path(wildcards.model, wildcards.arm, q) for q in [OUTTYPE, *QUANTS]]


def jobs_to_run(wf):
    """The rules of the jobs this run will run (None, meaning all, where Snakemake cannot say)."""
    try:
        return {j.rule.name for j in wf.dag.needrun_jobs()}
    except Exception:
        return None


def plan_inputs():
    """The files a plan reads (the sizes of prompts and rubrics enter its token estimates)."""
    files = [config["judge"]["rubric"], *dict.fromkeys(judge_prompts())]
    files += [config["safety"]["rubric"], config["safety"]["prompt"]]
    if config["patient_check"]["enabled"]:
        files.append(config["patient_check"]["prompt"])
    if config["data"]["source"] == "generate":
        files.append(PROMPTS["session"])
    return files


def final_outputs():
    out = [
        "results/report/report.html",
        "results/report/report.md",
        "results/report/browser.html",
    ]
    out += ["results/rating_packet/packet.html", "results/rating_key/key.csv"]
    out += parity_files()
    return out
