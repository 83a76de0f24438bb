"""The library's structure: no import cycle among cbtpipe's modules, and one registry of backend
types and LLM stages that the rules, the schema and the plan agree with."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml

from cbtpipe import registry

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "cbtpipe"


def _type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def import_graph() -> dict[str, set[str]]:
    """Module -> the cbtpipe modules it imports, anywhere in its body (deferred imports inside
    functions count: they are a cycle waiting for a caller), except under ``if TYPE_CHECKING``.
    The registry's "module:Class" targets are plugin references resolved at call time, as entry
    points are, and are checked by their own test below."""
    mods = {p.stem for p in PKG.glob("*.py") if p.stem != "__init__"}
    graph: dict[str, set[str]] = {}
    for m in sorted(mods):
        tree = ast.parse((PKG / f"{m}.py").read_text(encoding="utf-8"))
        skip = {id(n) for blk in ast.walk(tree) if _type_checking_block(blk) for n in ast.walk(blk)}
        deps = set()
        for n in ast.walk(tree):
            if id(n) in skip:
                continue
            if isinstance(n, ast.ImportFrom):
                if n.level == 1 and n.module:
                    deps.add(n.module.split(".")[0])
                elif n.level == 1:
                    deps |= {a.name for a in n.names}
                elif n.module and n.module.startswith("cbtpipe."):
                    deps.add(n.module.split(".")[1])
                elif n.module == "cbtpipe":
                    deps |= {a.name for a in n.names}
            elif isinstance(n, ast.Import):
                deps |= {a.name.split(".")[1] for a in n.names if a.name.startswith("cbtpipe.")}
        graph[m] = (deps & mods) - {m}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_among_the_librarys_modules():
    found = cycles(import_graph())
    assert not found, f"import cycles among cbtpipe modules: {found}"


def test_the_cycle_finder_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_graph_sees_deferred_imports_but_not_type_checking_ones():
    graph = import_graph()
    assert "errors" in graph["io"] and "secrets" in graph["io"]
    # safety imports judge inside a function, transcripts imports backends under TYPE_CHECKING only
    # (and inside a function): both are edges, the TYPE_CHECKING one alone would not be
    assert "judge" in graph["safety"]
    assert graph["errors"] == set() and graph["registry"] == set()


def test_backend_types_are_the_schemas_and_resolve_to_their_classes():
    schema = yaml.safe_load((PKG / "schemas" / "config.schema.yaml").read_text(encoding="utf-8"))
    enum = schema["properties"]["backends"]["additionalProperties"]["properties"]["type"]["enum"]
    assert sorted(enum) == sorted(registry.BACKEND_TYPES)
    from cbtpipe.backends import Backend

    for name, t in registry.BACKEND_TYPES.items():
        cls = t.load()
        assert issubclass(cls, Backend) and cls.kind == name
    assert registry.is_api({"type": "openai"}) and not registry.is_api({"type": "llama_cpp"}) and not registry.is_api({})


def _rule_blocks() -> dict[str, str]:
    """Rule name -> its text (a ``use rule a as b with:`` rule: its parent's text, then its own)."""
    blocks: dict[str, str] = {}
    parents: dict[str, str] = {}
    for f in [ROOT / "Snakefile", *sorted((ROOT / "rules").glob("*.smk"))]:
        text = f.read_text(encoding="utf-8")
        heads = list(re.finditer(r"^(?:rule (\w+):|use rule (\w+) as (\w+) with:)", text, re.M))
        for i, m in enumerate(heads):
            end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
            if m.group(1):
                blocks[m.group(1)] = text[m.start() : end]
            else:
                parents[m.group(3)] = m.group(2)
                blocks[m.group(3)] = text[m.start() : end]
    for child, parent in parents.items():
        blocks[child] = blocks[parent] + blocks[child]
    return blocks


HELPERS = r"(?:used_backends|api_resources|backend_gpus|backend_partition|llm_env)"


def test_rules_call_the_backends_of_registered_stages_only():
    """Every rule that uses a stage's backends is one of the registry's rules of that stage, and
    every rule the registry names exists and uses its stage's backends: the start-up check of API
    keys, the plan and the rules' resources then agree on who calls what."""
    blocks = _rule_blocks()
    seen: dict[str, set[str]] = {}
    for rule, text in blocks.items():
        for stage_name in re.findall(rf'{HELPERS}\(\s*"(\w+)"', text):
            assert stage_name in registry.STAGE, f"rule {rule} names unknown LLM stage '{stage_name}'"
            seen.setdefault(stage_name, set()).add(rule)
        assert not re.search(rf"{HELPERS}\(\s*\(", text), f"rule {rule} names a backend by config key, not by stage"
    for s in registry.STAGES:
        assert seen.get(s.name, set()) == set(s.rules), f"stage {s.name}: registry rules {s.rules}, rules using it {seen.get(s.name)}"


def test_every_config_key_of_a_backend_maps_to_the_rules_that_call_it():
    assert registry.key_rules("judge.panel.greedy.backend") == {"judge", "judge_ablation"}
    assert registry.key_rules("judge.backend") == {"judge", "judge_ablation", "judge_turns"}
    assert registry.key_rules("data.generator") == {"transcripts", "eval_history"}
    for key in registry.BACKEND_KEYS:
        assert registry.key_rules(key), key
    # the plan's stages are the registry's, each bounded by a rule of its own
    assert set(registry.plan_rules()) == set(registry.STAGE)


def test_the_drawn_rule_graph_is_the_workflows():
    """docs/rulegraph.{svg,png} are drawn from the edges in docs/rulegraph.txt; those must be the
    study profile's rule graph as the Snakefile makes it now (`make dag` redraws all three)."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, str(ROOT / "tools" / "rulegraph.py"), "--check"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    listing = (ROOT / "docs" / "rulegraph.txt").read_text(encoding="utf-8")
    assert (
        "rule browser\n" in listing and "rollout -> rollout_ablation\n" not in listing and "rollout_ablation -> judge_ablation\n" in listing
    )
    svg = (ROOT / "docs" / "rulegraph.svg").read_text(encoding="utf-8")
    for line in listing.splitlines():
        if line.startswith("rule "):
            assert f">{line[5:]}<" in svg, f"docs/rulegraph.svg does not show rule {line[5:]}: run `make dag`"


def test_jobs_on_the_way_to_the_judgements_go_before_side_outputs():
    """Every rule that the judge and safety jobs wait on (docs/rulegraph.txt, the study profile's
    graph) has a priority, training the highest; a rule nothing of theirs waits on (parity, token
    statistics, the rating packet, the report) has none, so it never takes a core first."""
    listing = (ROOT / "docs" / "rulegraph.txt").read_text().splitlines()
    rules = {line[5:] for line in listing if line.startswith("rule ")}
    needs: dict[str, set[str]] = {}
    for a, b in (line.split(" -> ") for line in listing if " -> " in line):
        needs.setdefault(b, set()).add(a)
    on_path, todo = set(), ["judge", "safety", "judge_ablation", "safety_ablation"]
    while todo:
        r = todo.pop()
        if r not in on_path:
            on_path.add(r)
            todo += needs.get(r, [])
    # the last priority in a rule's text: a `use rule` child's own, else its parent's
    prio = {r: (re.findall(r"^    priority: (\w+)$", text, re.M) or [None])[-1] for r, text in _rule_blocks().items()}
    assert rules <= set(prio), rules - set(prio)
    wrong = {r: prio[r] for r in rules if (r in on_path) != (prio[r] is not None)}
    assert not wrong, f"on the way to the judgements {sorted(on_path & rules)}; priorities out of place: {wrong}"
    assert {prio[r] for r in on_path} == {"ON_PATH", "TRAINING"} and prio["train"] == "TRAINING"
    common = (ROOT / "rules" / "common.smk").read_text(encoding="utf-8")
    levels = dict(re.findall(r"^(ON_PATH|TRAINING) = (\d+)$", common, re.M))
    assert 0 < int(levels["ON_PATH"]) < int(levels["TRAINING"])
