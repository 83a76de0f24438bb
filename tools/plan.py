#!/usr/bin/env python
"""Print the plan of a config before running it: calls, tokens, cost per provider, GPU hours and
wall time per stage, and whether each job fits its runtime limit.

    python tools/plan.py --configfile config/study.yaml
    python tools/plan.py --configfile config/study.yaml --profile profiles/slurm --api-limit gemini=8
    python tools/plan.py --configfile config/study.yaml --rates results/

--rates takes the measured tokens and seconds per call of an earlier run (a pilot with the same
backends), --api-limit the calls in flight allowed per provider (as --resources api_<b>=N).
No network call is made.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    import yaml
    from snakemake.utils import validate

    from cbtpipe.checks import check_config
    from cbtpipe.plan import build_plan, measured_rates, plan_markdown, profile_runtimes
    from cbtpipe.workflow import SCHEMA, PipelineError, resolve_defaults

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configfile", default="config.yaml")
    ap.add_argument("--rates", help="results/ folder of an earlier run, for measured rates")
    ap.add_argument("--api-limit", action="append", default=[], metavar="BACKEND=N")
    ap.add_argument("--profile", help="a Snakemake profile folder, for the jobs' runtime limits (e.g. profiles/slurm)")
    ap.add_argument("--json", action="store_true", help="print the plan as JSON")
    a = ap.parse_args(argv)
    cfg = yaml.safe_load(Path(a.configfile).read_text(encoding="utf-8"))
    try:
        validate(cfg, str(SCHEMA))
        resolve_defaults(cfg)
        check_config(cfg, ROOT)
        limits = {k: int(v) for k, v in (x.split("=", 1) for x in a.api_limit)}
        prof = Path(a.profile) if a.profile else None
        if prof is not None and prof.is_dir():
            # Snakemake 9's name for a profile's file, or the older config.yaml
            prof = next((prof / n for n in ("profile.yaml", "config.yaml") if (prof / n).is_file()), prof / "profile.yaml")
        if prof is not None and not prof.is_file():
            raise PipelineError(f"--profile: no Snakemake profile at {a.profile} (a folder with profile.yaml or config.yaml, or that file)")
        runtimes = profile_runtimes(prof) if prof else None
        plan = build_plan(cfg, ROOT, measured_rates(a.rates) if a.rates else None, limits, runtimes)
    except (PipelineError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(plan, indent=1) if a.json else plan_markdown(plan), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
