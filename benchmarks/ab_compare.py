#!/usr/bin/env python3
"""A/B a benchmark script between an older revision of the library and the working tree, interleaved.

The library folders (`modeling_desta`, `processing`, `desta_audio`) of `--base` are exported with `git archive` into
a temporary folder; the *same* benchmark script (this tree's) then runs alternately against the old and the new
library (`PYTHONPATH`), starting with a different side each round, so both see the same machine load. Prints JSON:
for every number the script reports, the median over rounds of each side and new/base.

    python benchmarks/ab_compare.py --base 5be38e1 --rounds 3 -- benchmarks/bench_inference.py --threads 1
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
LIBRARY_FOLDERS = ("modeling_desta", "processing", "desta_audio")


def export_library(revision: str, target: Path) -> None:
    archive = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "archive", revision, *LIBRARY_FOLDERS], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)


def run_script(script: list[str], library_root: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(library_root)}
    output = subprocess.run(
        [sys.executable, *script], cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=True
    ).stdout
    return json.loads(output[output.index("{") :])


def numbers(report, prefix: str = "") -> dict[str, float]:
    """Every numeric leaf of a report, keyed by its path (list items by their `batch_size` when they have one)."""
    if isinstance(report, bool):
        return {}
    if isinstance(report, (int, float)):
        return {prefix: float(report)}
    items = {}
    if isinstance(report, dict):
        for key, value in report.items():
            items.update(numbers(value, f"{prefix}.{key}" if prefix else key))
    elif isinstance(report, list):
        for index, value in enumerate(report):
            label = value.get("batch_size", index) if isinstance(value, dict) else index
            label = value.get("activation_checkpointing", label) if isinstance(value, dict) else label
            items.update(numbers(value, f"{prefix}[{label}]"))
    return items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="git revision of the library to compare against")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("script", nargs=argparse.REMAINDER, help="-- benchmark script and its arguments")
    args = parser.parse_args()
    script = args.script[1:] if args.script[:1] == ["--"] else args.script
    runs = {"base": [], "new": []}
    with tempfile.TemporaryDirectory() as base_root:
        export_library(args.base, Path(base_root))
        roots = {"base": Path(base_root), "new": REPO_ROOT}
        for round_index in range(args.rounds):
            order = ("base", "new") if round_index % 2 == 0 else ("new", "base")
            for side in order:
                runs[side].append(numbers(run_script(script, roots[side])))
    keys = [key for key in runs["new"][0] if all(key in run for run in runs["base"] + runs["new"])]
    medians = {}
    for key in keys:
        base = statistics.median(run[key] for run in runs["base"])
        new = statistics.median(run[key] for run in runs["new"])
        medians[key] = {
            "base": round(base, 4),
            "new": round(new, 4),
            "new_over_base": round(new / base, 3) if base else None,
        }
    print(json.dumps({"base": args.base, "rounds": args.rounds, "script": script, "medians": medians}, indent=2))


if __name__ == "__main__":
    main()
