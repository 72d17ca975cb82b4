"""Summarises a `mutmut run` (make mutation): the share of mutants killed per module, then every survivor.

Reads `mutmut results --all true` (one line per mutant: "    <module>.<function>__mutmut_<n>: <status>").
A mutant counts as killed when a test failed or timed out on it; "no tests" counts as survived (no test
reaches that code). Exits 1 when a module listed with --goal is below it.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import Counter, defaultdict

LINE = re.compile(r"^\s+(?P<name>[\w.ǁ]+__mutmut_\d+): (?P<status>.+)$")
DETECTED = {"killed", "timeout", "caught by type check", "segfault"}


def module_of(mutant: str) -> str:
    """helpers.steps.verify.x_check__mutmut_3 -> helpers/steps/verify.py (a method's name is helpers.steps.verify.xǁClassǁname...);
    helpers.migrations.m001_s3_asset_tracking.rules.x_… -> helpers/migrations/m001_s3_asset_tracking/rules.py."""
    return "/".join(mutant.split(".")[:-1]) + ".py"  # the last part is the mutated function (never dotted)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--goal", action="append", default=[], metavar="MODULE=PERCENT", help="e.g. helpers/steps/verify.py=90")
    parser.add_argument("--mutmut", default="mutmut")
    args = parser.parse_args()
    output = subprocess.run([args.mutmut, "results", "--all", "true"], check=True, capture_output=True, text=True).stdout
    statuses: dict[str, Counter[str]] = defaultdict(Counter)
    survivors: dict[str, list[str]] = defaultdict(list)
    for line in output.splitlines():
        match = LINE.match(line)
        if not match:
            continue
        module, status = module_of(match["name"]), match["status"]
        if status == "not checked":  # outside this run (e.g. `mutmut run <names>`)
            continue
        statuses[module][status] += 1
        if status not in DETECTED and status != "skipped":
            survivors[module].append(f"{match['name']} ({status})")
    if not statuses:
        print("no mutants found: run `mutmut run` first", file=sys.stderr)
        return 1
    shares: dict[str, float] = {}
    print(f"{'module':<22} {'mutants':>7} {'killed':>7} {'survived':>8} {'no tests':>8} {'killed %':>8}")
    for module, counts in sorted(statuses.items()):
        total = sum(n for status, n in counts.items() if status != "skipped")
        killed = sum(counts[s] for s in DETECTED)
        shares[module] = 100.0 * killed / total if total else 100.0
        print(f"{module:<22} {total:>7} {killed:>7} {counts['survived']:>8} {counts['no tests']:>8} {shares[module]:>7.1f}%")
    for module, names in sorted(survivors.items()):
        print(f"\nsurvivors in {module} ({len(names)}); see one with `mutmut show <name>`:")
        for name in names:
            print(f"  {name}")
    below = []
    for goal in args.goal:
        module, _, percent = goal.partition("=")
        if shares.get(module, 0.0) < float(percent):
            below.append(f"{module}: {shares.get(module, 0.0):.1f}% < {percent}%")
    if below:
        print("\nbelow the goal: " + "; ".join(below))
    return 1 if below else 0


if __name__ == "__main__":
    raise SystemExit(main())
