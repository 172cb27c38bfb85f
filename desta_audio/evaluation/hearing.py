"""The hearing probe (`desta-audio eval --benchmark hearing --data-file LAB/probe/probe.jsonl`): does the model hear
the audio, or only guess from the question? Held-out clips of the lab (`desta_audio.lab`, other sentences, voices
and settings than its train split), every question MMAU-style multiple choice, scored by MMAU's rule.

Tasks: `sex` (on twin clips: one sentence, a male and a female voice), `rate` (on triplets: one sentence and voice,
slow / normal / fast), `sound` (speech, tone, noise or silence), `pitch` (a tone, low or high), `content` (which
of 4 sentences was said).

Every run asks the probe three times, each pass in its own folder (resumable, re-scorable):
- `audio`: the clips as they are;
- `text-oracle`: no audio; the user turn is the clip's true seed description, rendered by the dataset builder's
  own code (`data.descriptions.seed_description`, the attributes and transcript of the lab's metadata), in the
  builder's teacher layout (`<start_audio>{description}<end_audio>` + a blank line + the question), after the same
  system prompt. A text-only prompt to a DeSTA model is its base LLM's prompt, so this is the ceiling the DeSTA
  recipe aims at: what the LLM answers when it is told the truth;
- `deaf`: every clip replaced by digital silence of the same length (Whisper then hears no speech either).

Reported per pass: per-task accuracy; minimal-group accuracy (sex: both twins right; rate: all three of a triplet
right), which a model that ignores the audio cannot pass (it gives one answer to the whole group); the chance level
of each. The passes' `results.json` are combined into the run folder's `results.json` / `results.md`
(`combine_passes`, also `desta-audio eval --benchmark hearing --combine .../results.json`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

import numpy as np

from processing.audio_io import TARGET_SAMPLING_RATE, load_audio

from ..data.descriptions import generation_messages, seed_description
from ..dataset_loading import resolve_audio_path
from .data import EvalItem, mcq_question
from .scoring import mmau_string_match, score_predictions, write_report

TASKS = ("sex", "rate", "sound", "pitch", "content")
GROUP_TASKS = {"sex": "both twins right", "rate": "all three of a triplet right"}
PASSES = ("audio", "text-oracle", "deaf")


def probe_items(records: Iterable[dict], subset, audio_root) -> list[EvalItem]:
    """The lab's `probe.jsonl` records (MMAU layout plus `group`, `transcript`, `attributes`) as items. The true
    transcript and attributes stay in `extra` for the text oracle: the model itself hears through Whisper."""
    return [
        EvalItem(
            id=str(record["id"]),
            audio=resolve_audio_path(record["audio_id"], audio_root),
            question=record["question"],
            answer=record["answer"],
            choices=list(record["choices"]),
            categories={"task": record["task"]},
            extra={
                "group": record.get("group") or "",
                "transcript": record.get("transcript") or "",
                "attributes": dict(record.get("attributes") or {}),
            },
        )
        for record in records
    ]


def oracle_item(item: EvalItem, samples: int) -> EvalItem:
    """The item asked as text: its true seed description where the audio was, no audio at all."""
    extra = item.extra
    description = seed_description(samples / TARGET_SAMPLING_RATE, extra["transcript"], extra["attributes"])
    user = generation_messages(description, mcq_question(item.question, item.choices))[-1]["content"]
    return replace(item, audio=None, prompt=user, extra={**extra, "control": "text-oracle"})


def deaf_item(item: EvalItem, samples: int) -> EvalItem:
    """The item with its clip replaced by silence of the same length."""
    silence = {"array": np.zeros(samples, dtype=np.float32), "sampling_rate": TARGET_SAMPLING_RATE}
    return replace(item, audio=silence, extra={**item.extra, "control": "deaf", "silent_samples": samples})


def pass_items(items: list[EvalItem], name: str, lengths: dict[str, int]) -> list[EvalItem]:
    """The items of one pass; `lengths` holds each clip's sample count at 16 kHz."""
    if name == "audio":
        return items
    control = oracle_item if name == "text-oracle" else deaf_item
    return [control(item, lengths[item.audio]) for item in items]


def clip_lengths(items: list[EvalItem]) -> dict[str, int]:
    """Each clip's length in samples at 16 kHz, decoded as the builder and the pipeline decode it."""
    return {path: len(load_audio(path, sampling_rate=TARGET_SAMPLING_RATE)) for path in {item.audio for item in items}}


def run_passes(run: Callable[[list[EvalItem], Path, str], dict], items: list[EvalItem], output_dir) -> dict:
    """Ask the three passes, each by `run(items, folder, pass name)` (one benchmark run), then combine them."""
    lengths = clip_lengths(items)
    for name in PASSES:
        run(pass_items(items, name, lengths), Path(output_dir) / name, name)
    return combine_passes([Path(output_dir) / name / "results.json" for name in PASSES], output_dir)


def score_pass(records: list[dict]) -> dict:
    """One pass's scores: MMAU's rule per task (`groups.task`), plus `minimal_groups` and `chance`."""
    results = score_predictions(records, ["task"])
    results["minimal_groups"] = minimal_groups(records)
    results["chance"] = chance(records)
    return results


def minimal_groups(records: list[dict]) -> dict:
    """Per group task: how many twins / triplets have every clip right (percent of groups)."""
    members: dict[tuple[str, str], list[bool]] = {}
    for record in records:
        task, group = record["categories"].get("task"), (record.get("extra") or {}).get("group")
        if task in GROUP_TASKS and group:
            correct = mmau_string_match(record["answer"], record["prediction"], record["choices"])
            members.setdefault((task, group), []).append(correct)
    summary = {}
    for task in GROUP_TASKS:
        groups = [all(right) for (name, _), right in members.items() if name == task]
        if groups:
            summary[task] = {
                "groups": len(groups),
                "correct": sum(groups),
                "accuracy": _percent(sum(groups), len(groups)),
            }
    return summary


def chance(records: list[dict]) -> dict:
    """Per task, a random guesser's accuracy (mean of 1 / choices); per group task, its chance of a whole group
    (the product over the group's clips). A model that ignores the audio scores 0 on groups."""
    per_task: dict[str, list[float]] = {}
    per_group: dict[tuple[str, str], float] = {}
    for record in records:
        task, group = record["categories"].get("task"), (record.get("extra") or {}).get("group")
        per_task.setdefault(task, []).append(1 / len(record["choices"]))
        if task in GROUP_TASKS and group:
            per_group[(task, group)] = per_group.get((task, group), 1.0) / len(record["choices"])
    tasks = {task: round(100 * sum(p) / len(p), 2) for task, p in per_task.items()}
    groups = {}
    for task in GROUP_TASKS:
        odds = [p for (name, _), p in per_group.items() if name == task]
        if odds:
            groups[task] = round(100 * sum(odds) / len(odds), 2)
    return {"tasks": tasks, "minimal_groups": groups}


def _percent(part: int, whole: int) -> float:
    return round(100 * part / whole, 2) if whole else 0.0


# ----------------------------------------------------------------------------- the three passes in one table
def combine_passes(paths: list[Path], output_dir) -> dict:
    """`combine_runs("hearing", paths)` (whose combiner is `table`), written as `results.json` / `results.md`."""
    from .combine import combine_runs  # combine imports this module for `table`

    combined = combine_runs("hearing", paths)
    write_report(combined, hearing_markdown(combined), output_dir, "results.json", "results.md")
    return combined


def table(runs: list[dict]) -> dict:
    """The probe's table from its passes' results: per task and per minimal group, each pass's accuracy (percent)
    and the chance level."""
    by_pass = {run["subset"]: run for run in runs}
    unknown = sorted(set(by_pass) - set(PASSES), key=str)
    if unknown or len(by_pass) != len(runs):
        raise ValueError(f"give each hearing pass ({', '.join(PASSES)}) once; got {[run['subset'] for run in runs]}")
    reference = runs[0]
    rows = {}
    for task in TASKS:
        if task in reference["groups"].get("task", {}):
            rows[task] = {
                "n": reference["groups"]["task"][task]["n"],
                **{name: _task_accuracy(run, task) for name, run in by_pass.items()},
                "chance": reference["chance"]["tasks"].get(task),
            }
    for task, what in GROUP_TASKS.items():
        if task in reference["minimal_groups"]:
            rows[f"{task}: {what}"] = {
                "n": reference["minimal_groups"][task]["groups"],
                **{name: run["minimal_groups"].get(task, {}).get("accuracy") for name, run in by_pass.items()},
                "chance": reference["chance"]["minimal_groups"].get(task),
            }
    return {
        "source": reference.get("source"),
        "passes": {name: str(Path(run["path"]).parent) for name, run in by_pass.items()},
        "missing_passes": [name for name in PASSES if name not in by_pass],
        "unit": "percent",
        "table": rows,
    }


def _task_accuracy(run: dict, task: str) -> float | None:
    metrics = run["groups"].get("task", {}).get(task)
    return None if metrics is None else metrics["accuracy"]


def hearing_markdown(combined: dict) -> str:
    names = [name for name in PASSES if name not in combined["missing_passes"]]
    lines = [
        "| task | n | " + " | ".join(f"{name} (%)" for name in names) + " | chance (%) |",
        "|" + " --- |" * (3 + len(names)),
    ]
    for task, row in combined["table"].items():
        cells = [_cell(row.get(name)) for name in [*names, "chance"]]
        lines.append(f"| {task} | {row['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"
