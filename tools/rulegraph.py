"""Draw the workflow's rule graph without Graphviz: docs/rulegraph.{svg,png,txt}.

``snakemake --rulegraph`` writes the graph in DOT; this reads its nodes and edges, lays the
rules out in layers (a rule one layer below the deepest rule it needs) with networkx and draws
them with matplotlib, both already in the CPU lock. ``docs/rulegraph.txt`` lists the edges in
text so that a test can tell whether the drawing is still the workflow's (tests/test_structure.py).

    python tools/rulegraph.py [--configfile config/study.yaml] [--check]

The default draws the study profile (every stage, the ablations and the hub downloads); --check
exits 1 when docs/rulegraph.txt differs from the workflow's graph.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def rule_edges(configfile: str | None) -> tuple[list[str], list[tuple[str, str]]]:
    """The rules and the (needed, needing) pairs of the workflow's rule graph."""
    cmd = [sys.executable, "-m", "snakemake", "--rulegraph", "--quiet", "all"]
    if configfile:
        cmd[3:3] = ["--configfile", configfile]
    dot = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    names = dict(re.findall(r'^\s*(\d+)\[label = "([^"]+)"', dot, re.M))
    # a rule's jobs that wait on others of the same rule (an entry's judging after its instruct
    # arm's owner's) are an order, not a step of the graph
    edges = sorted({(names[a], names[b]) for a, b in re.findall(r"^\s*(\d+) -> (\d+)", dot, re.M) if names[a] != names[b]})
    return sorted(names.values()), edges


def edges_text(rules: list[str], edges: list[tuple[str, str]]) -> str:
    return "".join(f"rule {r}\n" for r in rules) + "".join(f"{a} -> {b}\n" for a, b in edges)


def draw(rules: list[str], edges: list[tuple[str, str]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.fonttype"] = "none"  # rule names stay text in the SVG (searchable, checked)
    import matplotlib.pyplot as plt
    import networkx as nx

    g = nx.DiGraph()
    g.add_nodes_from(rules)
    g.add_edges_from(edges)
    for layer, nodes in enumerate(nx.topological_generations(g)):
        for n in nodes:
            g.nodes[n]["layer"] = layer
    pos = nx.multipartite_layout(g, subset_key="layer", align="horizontal", scale=1.0)
    pos = {n: (x, -y) for n, (x, y) in pos.items()}  # the first layer on top
    width = max(
        8.0, 1.7 * max(sum(1 for n in g if g.nodes[n]["layer"] == k) for k in range(max(nx.get_node_attributes(g, "layer").values()) + 1))
    )
    layers = 1 + max(nx.get_node_attributes(g, "layer").values())
    fig, ax = plt.subplots(figsize=(width, 0.9 * layers + 1))
    nx.draw_networkx_edges(g, pos, ax=ax, edge_color="#999999", arrows=True, arrowsize=10, node_size=2600, width=1.0)
    for n, (x, y) in pos.items():
        ax.text(
            x,
            y,
            n,
            ha="center",
            va="center",
            fontsize=8,
            bbox={"boxstyle": "round,pad=0.3", "facecolor": "#eef3fb", "edgecolor": "#4a6fa5"},
        )
    ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(out.with_suffix(".svg"), metadata={"Date": None})
    fig.savefig(out.with_suffix(".png"), dpi=90)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configfile", default="config/study.yaml")
    ap.add_argument("--check", action="store_true", help="compare docs/rulegraph.txt with the workflow; draw nothing")
    a = ap.parse_args()
    rules, edges = rule_edges(a.configfile)
    text = edges_text(rules, edges)
    listing = DOCS / "rulegraph.txt"
    if a.check:
        if not listing.is_file() or listing.read_text(encoding="utf-8") != text:
            print("docs/rulegraph.txt is not the workflow's rule graph: run `make dag`", file=sys.stderr)
            return 1
        return 0
    listing.write_text(text, encoding="utf-8")
    draw(rules, edges, DOCS / "rulegraph")
    print(f"{len(rules)} rules, {len(edges)} edges -> docs/rulegraph.svg, .png, .txt")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
