"""Module and function sizes of the library and the tools, against the house limits.

    python tools/sizes.py              # the largest modules and functions, with the limits
    python tools/sizes.py --check      # exit 1 when a module or a function is over its limit
    python tools/sizes.py --json       # every module and function, for a comparison between commits

A module's size is its number of lines; a function's (or method's) is from its ``def`` to its last
line, decorators excluded, a nested function counted in its parent too. The limits (500 and 80
lines) are the style guide's: a longer module or function is split along the ideas already in it.
``tests/test_structure.py`` runs the check.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PATHS = ("src", "tools")
MAX_MODULE = 500
MAX_FUNCTION = 80


def measure(root: Path = ROOT, paths: tuple[str, ...] = PATHS) -> tuple[dict[str, int], dict[str, int]]:
    """(module path -> lines, "path:line name" -> lines) over the Python files under ``paths``."""
    modules: dict[str, int] = {}
    functions: dict[str, int] = {}
    for top in paths:
        for f in sorted((root / top).rglob("*.py")):
            rel = f.relative_to(root).as_posix()
            text = f.read_text(encoding="utf-8")
            modules[rel] = len(text.splitlines())
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    functions[f"{rel}:{node.lineno} {node.name}"] = node.end_lineno - node.lineno + 1
    return modules, functions


def over(sizes: dict[str, int], limit: int) -> list[tuple[str, int]]:
    return sorted(((k, v) for k, v in sizes.items() if v > limit), key=lambda kv: -kv[1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="exit 1 when anything is over its limit")
    ap.add_argument("--json", action="store_true", help="print every size as JSON")
    ap.add_argument("--top", type=int, default=10, help="how many of the largest to list (default 10)")
    args = ap.parse_args(argv)
    modules, functions = measure()
    if args.json:
        print(json.dumps({"modules": modules, "functions": functions}, indent=1, sort_keys=True))
        return 0
    big_m, big_f = over(modules, MAX_MODULE), over(functions, MAX_FUNCTION)
    print(f"{len(modules)} modules, {sum(modules.values())} lines; {len(functions)} functions")
    print(f"modules over {MAX_MODULE} lines: {len(big_m)}; functions over {MAX_FUNCTION} lines: {len(big_f)}")
    print(f"\nlargest modules (limit {MAX_MODULE}):")
    for k, v in sorted(modules.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"  {v:5d}  {k}")
    print(f"\nlargest functions (limit {MAX_FUNCTION}):")
    for k, v in sorted(functions.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"  {v:5d}  {k}")
    if args.check and (big_m or big_f):
        for k, v in big_m + big_f:
            print(f"over the limit: {k} ({v} lines)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
