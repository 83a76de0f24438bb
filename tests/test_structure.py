"""The library's structure: no import cycle among cbtpipe's modules, and one registry of backend
types and LLM stages that the rules, the schema and the plan agree with."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml

from cbtpipe.workflow import registry

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "cbtpipe"


# The library's layers, lowest first: a module imports only modules of its own layer or of the
# layers below it. "" is the package's top: the study's front door (checks, plan, rehearsal).
LAYERS = ("workflow", "llm", "design", "stages", "stats", "report", "")
# What may import a layer from outside it: its face (the package's __init__), never its modules.
SOURCES = [ROOT / "scripts", ROOT / "tools", ROOT / "rules", ROOT / "Snakefile", ROOT / "Makefile"]


def _type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def module_name(path: Path, pkg: Path = PKG) -> str:
    """'llm.base' for src/cbtpipe/llm/base.py, 'llm' for its __init__, 'plan' for plan.py."""
    parts = list(path.relative_to(pkg).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, pkg: Path = PKG, known: set[str] | None = None) -> set[str]:
    """The cbtpipe modules and faces a library module imports, anywhere in its body (deferred
    imports inside functions count: they are a cycle waiting for a caller), except under ``if
    TYPE_CHECKING``; an import from a layer's face (a name, or a module it hands out, as in
    ``from ..workflow import yamlfile``) is an import of the face.
    The registry's "module:Class" targets are plugin references resolved at call time, as entry
    points are, and are checked by their own test below."""
    me = module_name(path, pkg)
    here = me.split(".") if path.name == "__init__.py" else me.split(".")[:-1]
    if me == "":
        here = []
    known = known or {module_name(p, pkg) for p in pkg.rglob("*.py")}
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = {id(n) for blk in ast.walk(tree) if _type_checking_block(blk) for n in ast.walk(blk)}
    deps: set[str] = set()
    for n in ast.walk(tree):
        if id(n) in skip:
            continue
        if isinstance(n, ast.ImportFrom):
            if n.level:
                base = here[: len(here) - (n.level - 1)] if n.level > 1 else here
                target = ".".join([*base, *([n.module] if n.module else [])])
            elif n.module and n.module.startswith("cbtpipe"):
                target = n.module[len("cbtpipe.") :] if n.module != "cbtpipe" else ""
            else:
                continue
            if target in LAYERS[:-1] and target != layer(me):
                deps.add(target)  # through a face, a name or a module it hands out
            else:
                deps |= {f"{target}.{a.name}" if target else a.name for a in n.names} & known or {target}
        elif isinstance(n, ast.Import):
            deps |= {a.name[len("cbtpipe.") :] for a in n.names if a.name.startswith("cbtpipe.")}
    return {d for d in deps if d in known and d != me}


def import_graph(pkg: Path = PKG) -> dict[str, set[str]]:
    """Module -> the cbtpipe modules it imports (see imports_of)."""
    files = sorted(pkg.rglob("*.py"))
    known = {module_name(p, pkg) for p in files}
    return {module_name(p, pkg): imports_of(p, pkg, known) for p in files}


def layer(module: str) -> str:
    return module.split(".")[0] if module.split(".")[0] in LAYERS else ""


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Imports that run up the layers, and imports of another layer's module past its face."""
    out = []
    for m, deps in sorted(graph.items()):
        for d in sorted(deps):
            if d == "":  # the package's own __init__ (the face helper), below every layer
                continue
            lm, ld = layer(m), layer(d)
            if LAYERS.index(ld) > LAYERS.index(lm):
                out.append(f"{m} ({lm or 'top'}) imports {d} ({ld or 'top'}), a higher layer")
            elif ld and ld != lm and d != ld:
                out.append(f"{m} imports {d} past the face of {ld}")
    return out


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
        for w in sorted(graph.get(v, ())):
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


def _modules_only(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph between modules, a face standing for the modules it hands out (a lazy face
    imports none of them itself)."""
    return {m: {d for d in deps if d != "" and d not in LAYERS} for m, deps in graph.items() if m not in LAYERS and m != ""}


def test_no_import_cycle_among_the_librarys_modules():
    found = cycles(_modules_only(import_graph()))
    assert not found, f"import cycles among cbtpipe modules: {found}"


def test_the_cycle_finder_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_graph_sees_deferred_imports_but_not_type_checking_ones(tmp_path):
    pkg = tmp_path / "cbtpipe"
    for f, text in {
        "__init__.py": "",
        "workflow/__init__.py": "",
        "workflow/errors.py": "",
        "workflow/io.py": "from .errors import x\n",
        "workflow/rule.py": "def f():\n    from . import io\n",
        "llm/__init__.py": "",
        "llm/base.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..stages import y\nfrom ..workflow import yamlfile\n",
        "stages/__init__.py": "",
    }.items():
        (pkg / f).parent.mkdir(parents=True, exist_ok=True)
        (pkg / f).write_text(text)
    graph = import_graph(pkg)
    assert graph["workflow.io"] == {"workflow.errors"} and graph["workflow.rule"] == {"workflow.io"}
    assert graph["llm.base"] == {"workflow"}  # the face, not the stages under TYPE_CHECKING
    real = import_graph()
    assert real["workflow.errors"] == set() and real["workflow.registry"] == set()


def test_every_module_is_in_a_layer_and_imports_only_its_own_and_lower_layers():
    graph = import_graph()
    packages = {p.name for p in PKG.iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(LAYERS) - {""}, f"a package that is no layer: {packages ^ (set(LAYERS) - {''})}"
    assert set(layer(m) for m in graph) == set(LAYERS)
    found = layer_violations(graph)
    assert not found, "\n".join(found)


def test_the_layer_check_fails_on_an_import_that_runs_up(tmp_path):
    """A copy of the library in which a lower layer imports a higher one, or reaches past a face,
    fails the check; the same copy without that import passes."""
    import shutil

    pkg = tmp_path / "cbtpipe"
    shutil.copytree(PKG, pkg, ignore=shutil.ignore_patterns("__pycache__", "templates", "schemas"))
    assert layer_violations(import_graph(pkg)) == []
    io = pkg / "workflow" / "io.py"
    clean = io.read_text(encoding="utf-8")
    io.write_text(clean + "\n\ndef _up():\n    from ..stages import run_panel\n", encoding="utf-8")
    assert layer_violations(import_graph(pkg)) == ["workflow.io (workflow) imports stages (stages), a higher layer"]
    io.write_text(clean, encoding="utf-8")
    report = pkg / "stats" / "analysis.py"
    report.write_text(report.read_text(encoding="utf-8") + "\nfrom ..design.rubric import load_rubric\n", encoding="utf-8")
    assert layer_violations(import_graph(pkg)) == ["stats.analysis imports design.rubric past the face of design"]


def _imports_in(text: str) -> list[str]:
    return re.findall(r"(?:^|[\s\"';])from (cbtpipe[\w.]*) import", text, re.M) + re.findall(
        r"(?:^|[\s\"';])import (cbtpipe[\w.]*)", text, re.M
    )


def test_rules_entry_scripts_and_tools_import_the_layers_faces():
    """What stands outside the library (rules, entry scripts, tools) imports a layer through its
    face, or one of the top modules; never a layer's module."""
    top = {p.stem for p in PKG.glob("*.py") if p.stem != "__init__"}
    files = [f for s in SOURCES for f in ([s] if s.is_file() else sorted(s.rglob("*.py")) + sorted(s.rglob("*.smk")))]
    bad = []
    for f in files:
        for mod in _imports_in(f.read_text(encoding="utf-8")):
            rest = mod.split(".")[1:]
            ok = len(rest) == 1 and (rest[0] in LAYERS or rest[0] in top)
            if not ok:
                bad.append(f"{f.relative_to(ROOT)}: {mod}")
    assert not bad, bad


def test_each_face_names_what_its_modules_define():
    """Every name of a face is defined by the module it names, and no name is also a module of
    the layer (the face would hide the module)."""
    import importlib

    for name in LAYERS[:-1]:
        face = importlib.import_module(f"cbtpipe.{name}")
        modules = {p.stem for p in (PKG / name).glob("*.py")}
        assert face.__all__ == sorted(face.__all__) and face.__all__, name
        for attr in face.__all__:
            assert attr not in modules, f"cbtpipe.{name}.{attr} is both a name of the face and a module"
            assert getattr(face, attr) is not None


def test_backend_types_are_the_schemas_and_resolve_to_their_classes():
    schema = yaml.safe_load((PKG / "schemas" / "config.schema.yaml").read_text(encoding="utf-8"))
    enum = schema["properties"]["backends"]["additionalProperties"]["properties"]["type"]["enum"]
    assert sorted(enum) == sorted(registry.BACKEND_TYPES)
    from cbtpipe.llm import Backend

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
    assert registry.key_rules("judge.panel.greedy.backend") == {"judge", "judge_ablation", "judge_closing"}
    assert registry.key_rules("judge.backend") == {"judge", "judge_ablation", "judge_closing", "judge_turns"}
    assert registry.key_rules("patient_check.backend") == {"patient_check"}
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
    # (an explicit 0: a child that takes back its parent's)
    prio = {r: (re.findall(r"^    priority: (\w+)$", text, re.M) or [None])[-1] for r, text in _rule_blocks().items()}
    prio = {r: None if p == "0" else p for r, p in prio.items()}
    assert rules <= set(prio), rules - set(prio)
    wrong = {r: prio[r] for r in rules if (r in on_path) != (prio[r] is not None)}
    assert not wrong, f"on the way to the judgements {sorted(on_path & rules)}; priorities out of place: {wrong}"
    assert {prio[r] for r in on_path} == {"ON_PATH", "TRAINING"} and prio["train"] == "TRAINING"
    common = (ROOT / "rules" / "common.smk").read_text(encoding="utf-8")
    levels = dict(re.findall(r"^(ON_PATH|TRAINING) = (\d+)$", common, re.M))
    assert 0 < int(levels["ON_PATH"]) < int(levels["TRAINING"])


def test_no_module_over_500_lines_and_no_function_over_80():
    """The house limits over src/ and tools/ (tools/sizes.py measures them; run it to see the
    largest): a longer module or function is split along the ideas already in it."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, str(ROOT / "tools" / "sizes.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "modules over 500 lines: 0; functions over 80 lines: 0" in r.stdout


def test_the_size_check_fails_on_a_long_function(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("sizes", ROOT / "tools" / "sizes.py")
    sizes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sizes)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "long.py").write_text("def f():\n" + "    x = 1\n" * 85)
    modules, functions = sizes.measure(tmp_path, ("src",))
    assert modules == {"src/long.py": 86}
    assert sizes.over(functions, sizes.MAX_FUNCTION) == [("src/long.py:1 f", 86)]
