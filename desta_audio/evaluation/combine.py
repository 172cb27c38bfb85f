"""The headline numbers that span several runs of one benchmark preset (`eval --combine RESULTS.json ... --benchmark`).

Several benchmarks publish one dataset per track, subset or part, so one run scores one of them; their headline is
an aggregate of runs:
- SAKURA: accuracy per track and hop; the headline per hop is the mean over its four tracks (Animal, Emotion,
  Gender, Language).
- VoiceBench: one leaderboard column per subset; Overall is the mean of the nine columns (`voicebench.overall`),
  reported only when all nine are there (the others are named). sd-qa's column here is the judge's score only (the
  leaderboard averages it with PEDANT, not implemented), so such an Overall is marked not comparable.
- Speech-IFEval: each part's follow rate; IFrate, the mean of the three parts, when all three are scored.
- Dynamic-SUPERB: the unweighted mean of task accuracies (`dynamic_superb.aggregate`).
- hearing: the probe's table over its three passes (audio, text oracle, deaf control; `hearing.table`), which a
  hearing run writes itself.
Every input is a `results.json` written by a preset run (`benchmark`, `source`, `subset`, `overall`, `groups`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from statistics import fmean

from . import dynamic_superb, hearing, speech_ifeval, voicebench

SAKURA_TRACKS = ("Animal", "Emotion", "Gender", "Language")
VOICEBENCH_COLUMN_METRIC = {
    "openbookqa": "accuracy", "mmsu": "accuracy", "bbh": "accuracy", "advbench": "refusal_rate",
    "alpacaeval_full": "score", "alpacaeval": "score", "commoneval": "score", "wildvoice": "score", "sd-qa": "gpt_score",
}  # fmt: skip


def read_runs(paths: Sequence[str | Path], benchmark: str) -> list[dict]:
    """The `results.json` of preset runs of `benchmark`; a file of another benchmark or without one is an error."""
    runs = []
    for path in paths:
        results = json.loads(Path(path).read_text(encoding="utf-8"))
        if results.get("benchmark") != benchmark:
            raise ValueError(f"{path} holds results of {results.get('benchmark')!r}, not of the {benchmark} preset.")
        runs.append({**results, "path": str(path)})
    if not runs:
        raise ValueError("Give the results.json of at least one run.")
    return runs


def combine_runs(benchmark: str, paths: Sequence[str | Path]) -> dict:
    """The benchmark's headline over the given runs (see the module docstring)."""
    combiners = {
        "sakura": _sakura,
        "voicebench": _voicebench,
        "speech-ifeval": _speech_ifeval,
        "dynamic-superb": _dynamic_superb,
        "hearing": hearing.table,
    }
    if benchmark not in combiners:
        raise ValueError(f"{benchmark} is scored in one run; --combine takes {', '.join(combiners)}.")
    return {
        "benchmark": benchmark,
        "runs": [str(p) for p in paths],
        **combiners[benchmark](read_runs(paths, benchmark)),
    }


def _sakura(runs: list[dict]) -> dict:
    per_track: dict[str, dict[str, float]] = {}
    for run in runs:
        track = _sakura_track(run)
        for hop, metrics in run["groups"].get("hop", {}).items():
            if hop in per_track.get(track, {}):
                raise ValueError(f"Two runs score SAKURA's {track} track, {hop}-hop; give each once.")
            per_track.setdefault(track, {})[hop] = metrics["accuracy"]
    hops = sorted({hop for scores in per_track.values() for hop in scores})
    per_hop = {hop: round(fmean(s[hop] for s in per_track.values() if hop in s), 2) for hop in hops}
    missing = {hop: [t for t in SAKURA_TRACKS if hop not in per_track.get(t, {})] for hop in hops}
    return {"per_track": per_track, "per_hop": per_hop, "missing_tracks": {h: m for h, m in missing.items() if m}}


def _sakura_track(run: dict) -> str:
    """The track a run scored, from its data source (`SLLM-multi-hop/AnimalQA`, `.../data/Animal/metadata.json`)."""
    match = re.search("|".join(SAKURA_TRACKS), run.get("source") or "", re.IGNORECASE)
    if match is None:
        raise ValueError(f"{run['path']}: cannot tell the SAKURA track from its source {run.get('source')!r}.")
    return match.group(0).capitalize()


def _voicebench(runs: list[dict]) -> dict:
    columns = {}
    for run in runs:
        subset = run.get("subset")
        metric = VOICEBENCH_COLUMN_METRIC.get(subset)
        if metric is None or metric not in run["overall"]:
            raise ValueError(f"{run['path']}: VoiceBench subset {subset!r} has no scored column in it.")
        name = "alpacaeval" if subset == "alpacaeval_full" else subset
        columns[name] = run["overall"][metric]
    missing = [c for c in voicebench.LEADERBOARD_COLUMNS if c not in columns]
    total = None if missing else round(voicebench.overall(columns), 2)
    return {"columns": columns, "overall": total, "missing_columns": missing, "comparable_with_leaderboard": False}


def _speech_ifeval(runs: list[dict]) -> dict:
    parts = {}
    for run in runs:
        parts.update({p: run["overall"][p] for p in speech_ifeval.PARTS if p in run["overall"]})
    complete = all(p in parts for p in speech_ifeval.PARTS)
    total = round(speech_ifeval.ifrate(*(parts[p] for p in speech_ifeval.PARTS)), 2) if complete else None
    return {"parts": parts, "ifrate": total, "missing_parts": [p for p in speech_ifeval.PARTS if p not in parts]}


def _dynamic_superb(runs: list[dict]) -> dict:
    tasks = {}
    for run in runs:
        for task, metrics in run["groups"].get("task", {}).items():
            tasks[task] = metrics["accuracy"]
    return {"tasks": tasks, **dynamic_superb.aggregate(tasks)}
