"""Benchmark presets: the paper's table, one `--benchmark` each (MMAU, MMAR, Speech-IFEval, SAKURA, VoiceBench,
Dynamic-SUPERB Phase-2), each from its published layout with its own prompt, scorer and aggregation.

A preset turns the benchmark's records into `EvalItem`s (the exact user text, the fields its scorer needs), names
the format its predictions are scored under (`scoring.score_predictions`), its system prompt and generation length,
and, for benchmarks scored by an LLM, how to ask the judge (`judge.py`) and read its verdict. Prompts the paper used
are documented where known; `--system-prompt` and `--max-new-tokens` override them.

| benchmark | data (Hub id / local) | scored | headline |
| --- | --- | --- | --- |
| mmau | MMAU test-mini JSON | offline: MMAU's string match | accuracy |
| mmar | `BoJack/MMAR` (`MMAR-meta.json(l)` + audio) | offline: MMAU's string match | accuracy, by modality / category / sub-category |
| speech-ifeval | `kehanlu/Speech-IFEval` JSONL + audio | offline checkers; CoT by judge | IFrate (mean of the parts) |
| sakura | `SLLM-multi-hop/<Track>QA`, or the repo's `metadata.json`/`.csv` | judge (official), MMAU rule on the listed options (proxy) | accuracy per track and hop |
| voicebench | `hlt-lab/voicebench`, `--subset NAME` | offline (mcq, bbh, advbench); judge (open, sd-qa) | the subset's column |
| dynamic-superb | `DynamicSuperb/<Task>_<Dataset>` | judge (our restated prompt), options match (proxy) | accuracy per task |
| hearing | the lab's `probe/probe.jsonl` (`desta-audio lab`) | offline: MMAU's string match | per task and minimal group, beside a text oracle, a deaf control and chance |
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from processing import DEFAULT_SYSTEM_PROMPT

from ..dataset_loading import resolve_audio_path
from ..files import load_jsonl, read_json
from . import dynamic_superb, hearing, speech_ifeval
from . import voicebench as vb
from .data import AUDIO_COLUMN_CANDIDATES, MMAU_SYSTEM_PROMPT, BenchmarkColumns, EvalItem, build_items, first_present
from .judge_prompts import judge_prompt


@dataclass(frozen=True)
class Judging:
    """How a benchmark asks its judge: the messages for one prediction record (None: not judged) and the verdict
    read from the judge's replies (None: no verdict found, counted as such)."""

    messages: Callable[[dict], list[dict] | None]
    verdict: Callable[[list[str], dict], object]
    model: str | None  # the judge the benchmark's authors used (None: our prompt is a restatement, never comparable)
    prompt: str  # the prompt files' versions (`judge_prompts/`), named in results.json
    samples: int = 1
    temperature: float = 0.0
    top_p: float = 1.0


@dataclass(frozen=True)
class Preset:
    name: str
    data: str
    fmt: str
    items: Callable[[Iterable[dict], str | None, str | None], list[EvalItem]]
    system_prompt: str
    max_new_tokens: int
    group_by: tuple[str, ...] = ()
    subsets: tuple[str, ...] = ()
    judging: Judging | None = None
    # Without a judge: a verdict per prediction record by an offline rule (a proxy), where the benchmark has none.
    offline_verdict: Callable[[dict], bool] | None = None
    notes: str = ""
    # VoiceBench publishes one dataset configuration per subset: --subset is also the configuration to load.
    subset_is_config: bool = False
    # Scores of a run's prediction records, for a preset that reports more than `score_predictions` (hearing).
    offline_score: Callable[[list[dict]], dict] | None = None
    # A preset asked in several passes (hearing: audio, text oracle, deaf control): `passes(run, items, output_dir)`
    # runs each as `run(items, folder, subset)` and returns the combined results.
    passes: Callable | None = None


# ----------------------------------------------------------------------------- MMAU and MMAR
MMAR_CATEGORIES = ["modality", "category", "sub-category"]


def mmau_items(records, subset, audio_root) -> list[EvalItem]:
    return build_items(records, BenchmarkColumns(), audio_root)


def mmar_items(records, subset, audio_root) -> list[EvalItem]:
    return build_items(records, BenchmarkColumns(audio="audio_path", categories=MMAR_CATEGORIES), audio_root)


# ----------------------------------------------------------------------------- SAKURA
SAKURA_HOPS = ("single", "multi")
SAKURA_OPTION = re.compile(r"\(([a-z])\)\s*(.*?)\s*(?=\([a-z]\)|$)", re.DOTALL)
SAKURA_JUDGE_SYSTEM = judge_prompt("sakura_system.v1")
# SAKURA's judging criteria (its evaluation/llm_judge.py: gpt-4o-2024-11-20, temperature 0, top_p 0.9), restated:
# one and only one option must be chosen and it must match the ground truth; derived word forms count. For
# leaderboard parity, send SAKURA's own prompt text with the same settings.
SAKURA_JUDGE_TEMPLATE = judge_prompt("sakura.v1")
SAKURA_VERDICT = re.compile(r"Judgement:\s*\**\s*(correct|incorrect)\b", re.IGNORECASE)


def sakura_options(instruction: str) -> list[str]:
    """The options a SAKURA instruction lists inline: `... (a) dog (b) crow (c) cow (d) rooster`."""
    start = instruction.find("(a)")
    return [text.strip() for _, text in SAKURA_OPTION.findall(instruction[start:])] if start >= 0 else []


def sakura_items(records, subset, audio_root) -> list[EvalItem]:
    hop = subset or "single"
    if hop not in SAKURA_HOPS:
        raise ValueError(f"SAKURA's --subset is the hop: one of {SAKURA_HOPS}; got {hop!r}.")
    items = []
    for index, record in enumerate(_sakura_rows(records)):
        instruction, answer = record[f"{hop}_instruction"], record[f"{hop}_answer"]
        audio = _audio_or_file(record)
        items.append(
            EvalItem(
                id=str(record.get("file", index)),
                audio=resolve_audio_path(audio, audio_root),
                question=instruction,
                answer=re.sub(r"^\([a-z]\)\s*", "", answer.strip()),
                choices=sakura_options(instruction),
                categories={
                    "hop": hop,
                    **({"attribute": record["attribute_label"]} if "attribute_label" in record else {}),
                },
                prompt=instruction,
                extra={"label": answer},
            )
        )
    return items


def _sakura_rows(records) -> list[dict]:
    """Rows of the Hub datasets, or of the repository's `metadata.json` (a dict keyed by audio path)."""
    if isinstance(records, dict):
        return [{"file": path, **row} for path, row in records.items()]
    rows = list(records)
    if len(rows) == 1 and all(isinstance(v, dict) for v in rows[0].values()):
        return [{"file": path, **row} for path, row in rows[0].items()]
    return rows


def sakura_messages(record: dict) -> list[dict]:
    prompt = SAKURA_JUDGE_TEMPLATE.format(
        question=record["question"], answer=record["extra"]["label"], response=record["model_output"]
    )
    return [{"role": "system", "content": SAKURA_JUDGE_SYSTEM}, {"role": "user", "content": prompt}]


def sakura_verdict(replies: list[str], record: dict) -> bool | None:
    match = SAKURA_VERDICT.search(replies[0]) if replies else None
    return None if match is None else match.group(1).lower() == "correct"


# ----------------------------------------------------------------------------- Speech-IFEval
SPEECH_IFEVAL_SYSTEM_PROMPT = "Follow the given instructions."


def speech_ifeval_items(records, subset, audio_root) -> list[EvalItem]:
    """Items of any of the three parts (closed-ended, creative writing, chain of thought: the record's `metric`)."""
    items = []
    for index, record in enumerate(records):
        audio_column = first_present(record, ("audio_filepath", *AUDIO_COLUMN_CANDIDATES), "audio")
        part = speech_ifeval.part_of(record)
        items.append(
            EvalItem(
                id=str(record.get("id", f"{part}-{index}")),
                audio=resolve_audio_path(record[audio_column], audio_root),
                question=record["instruction"],
                answer=record.get("label") or "",
                categories={"part": part},
                prompt=record["instruction"],
                extra={
                    "metric": record["metric"],
                    "instruction_id_list": list(record.get("instruction_id_list") or []),
                    "kwargs": list(record.get("kwargs") or []),
                },
            )
        )
    return items


def speech_ifeval_messages(record: dict) -> list[dict] | None:
    """Only chain-of-thought answers go to the judge; the other parts are checked by rules."""
    if speech_ifeval.part_of(record["extra"]) != speech_ifeval.CHAIN_OF_THOUGHT:
        return None
    return speech_ifeval.cot_judge_messages(record["question"], record["model_output"])


def speech_ifeval_verdict(replies: list[str], record: dict) -> str:
    return replies[0] if replies else ""  # the judge's text: the scorer parses `Result:` itself (`eval_response`)


# ----------------------------------------------------------------------------- VoiceBench
VOICEBENCH_SUBSETS = (
    "alpacaeval", "alpacaeval_full", "commoneval", "wildvoice", "sd-qa", "openbookqa", "mmsu", "ifeval", "bbh",
    "advbench", "mtbench",
)  # fmt: skip
VOICEBENCH_OPEN = ("alpacaeval", "alpacaeval_full", "commoneval", "wildvoice")


def voicebench_items(records, subset, audio_root) -> list[EvalItem]:
    if subset not in VOICEBENCH_SUBSETS:
        raise ValueError(f"VoiceBench needs --subset, one of {VOICEBENCH_SUBSETS}; got {subset!r}.")
    items = []
    for index, record in enumerate(records):
        extra = {"subset": subset, "prompt": record.get("prompt", "")}
        extra.update({k: record[k] for k in ("id", "instruction_id_list", "kwargs") if record.get(k) is not None})
        items.append(
            EvalItem(
                id=str(record.get("id", record.get("key", index))),
                audio=resolve_audio_path(record["audio"], audio_root),
                question=record.get("prompt", ""),
                answer=record.get("reference") or "",
                categories={"subset": subset},
                prompt="",  # the spoken query is the whole turn
                extra=extra,
            )
        )
    return items


def voicebench_messages(record: dict) -> list[dict] | None:
    subset, extra = record["extra"]["subset"], record["extra"]
    if subset in VOICEBENCH_OPEN:
        return vb.judge_messages(vb.open_judge_prompt(extra["prompt"], record["model_output"]))
    if subset == "sd-qa":
        return vb.judge_messages(vb.sdqa_judge_prompt(extra["prompt"], record["answer"], record["model_output"]))
    return None


def voicebench_verdict(replies: list[str], record: dict):
    return replies  # scored per subset from every sample (`open_score`, `sdqa_gpt_score`)


# ----------------------------------------------------------------------------- Dynamic-SUPERB
def dynamic_superb_items(records, subset, audio_root) -> list[EvalItem]:
    items = []
    for index, record in enumerate(records):
        task = subset or record.get("task") or "task"
        audio = _audio_or_file(record)
        items.append(
            EvalItem(
                id=str(record.get("file", index)),
                audio=resolve_audio_path(audio, audio_root),
                question=record["instruction"],
                answer=str(record["label"]),
                categories={"task": task},
                prompt=record["instruction"],
                extra={"task": task},
            )
        )
    return items


def dynamic_superb_messages(record: dict) -> list[dict]:
    prompt = dynamic_superb.judge_prompt(record["question"], record["answer"], record["model_output"])
    return [{"role": "user", "content": prompt}]


def dynamic_superb_verdict(replies: list[str], record: dict) -> bool | None:
    return dynamic_superb.parse_verdict(replies[0]) if replies else None


def dynamic_superb_proxy(record: dict) -> bool:
    return dynamic_superb.proxy_correct(record["model_output"], record["answer"], record["question"])


def _audio_or_file(record: dict):
    """The Hub datasets' decoded `audio` column, else the repository layout's `file` path (SAKURA, Dynamic-SUPERB)."""
    return record["audio"] if record.get("audio") is not None else record["file"]


PRESETS = {
    "mmau": Preset("mmau", "MMAU test-mini (mmau-test-mini.json + audio)", "mcq", mmau_items, MMAU_SYSTEM_PROMPT, 512),
    "mmar": Preset(
        "mmar", "BoJack/MMAR (MMAR-meta.json + audio)", "mcq", mmar_items, MMAU_SYSTEM_PROMPT, 512,
        group_by=tuple(MMAR_CATEGORIES),
        notes="MMAR's official scorer is MMAU's string match; the paper's MMAR prompt is not published: MMAU's is used.",
    ),
    "speech-ifeval": Preset(
        "speech-ifeval", "kehanlu/Speech-IFEval (JSONL + audios.tar)", "speech-ifeval", speech_ifeval_items,
        SPEECH_IFEVAL_SYSTEM_PROMPT, 2048, group_by=("part",),
        judging=Judging(speech_ifeval_messages, speech_ifeval_verdict, speech_ifeval.COT_JUDGE_MODEL, "speech_ifeval_cot_system.v1"),
    ),
    "sakura": Preset(
        "sakura", "SLLM-multi-hop/{Animal,Emotion,Gender,Language}QA (split test)", "mcq", sakura_items,
        DEFAULT_SYSTEM_PROMPT, 512, group_by=("hop", "attribute"), subsets=SAKURA_HOPS,
        judging=Judging(sakura_messages, sakura_verdict, "gpt-4o-2024-11-20", "sakura.v1", top_p=0.9),
        notes="Official score: the judge. Without --judge-base-url the MMAU rule on the listed options is reported, "
        "labelled a proxy.",
    ),
    "voicebench": Preset(
        "voicebench", "hlt-lab/voicebench (--subset, split test; sd-qa: --split usa ...)", "voicebench",
        voicebench_items, DEFAULT_SYSTEM_PROMPT, 1024, group_by=("subset",), subsets=VOICEBENCH_SUBSETS,
        judging=Judging(voicebench_messages, voicebench_verdict, vb.JUDGE_MODEL, "voicebench_open.v1, voicebench_sdqa.v1", samples=3, temperature=0.5, top_p=0.95),
        subset_is_config=True,
    ),
    "dynamic-superb": Preset(
        "dynamic-superb", "DynamicSuperb/<Task>_<Dataset> (split test)", "judged", dynamic_superb_items,
        DEFAULT_SYSTEM_PROMPT, 512, group_by=("task",),
        judging=Judging(dynamic_superb_messages, dynamic_superb_verdict, None, "dynamic_superb.v1"),
        offline_verdict=dynamic_superb_proxy,
        notes="The judge prompt is a restatement (the official one could not be read); see dynamic_superb.py.",
    ),
    "hearing": Preset(
        "hearing", "the lab's probe (desta-audio lab OUT: OUT/probe/probe.jsonl)", "mcq", hearing.probe_items,
        MMAU_SYSTEM_PROMPT, 64, group_by=("task",), offline_score=hearing.score_pass, passes=hearing.run_passes,
        notes="Three passes, each in its own folder: audio, text-oracle (the true description, no audio) and deaf "
        "(silence of the same length); results.json is their table.",
    ),
}  # fmt: skip


def preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"Unknown benchmark {name!r}; known: {', '.join(PRESETS)}.")
    return PRESETS[name]


# ----------------------------------------------------------------------------- the benchmarks' own output files
def own_output_records(name: str, path) -> list[dict] | None:
    """Prediction records from a benchmark's own output file, so published outputs can be scored by our scorers
    (None when the file is ours): Speech-IFEval's JSONL (its records plus `response`, and `eval_response` from
    its judge for chain-of-thought) and SAKURA's results JSON (`{"type": hop, "results": {audio: {instruction,
    response, label}}}`)."""
    if name == "speech-ifeval" and str(path).endswith(".jsonl"):
        rows = load_jsonl(path)
        if rows and "response" in rows[0] and "model_output" not in rows[0]:
            return [_speech_ifeval_output(row, index) for index, row in enumerate(rows)]
    if name == "sakura" and str(path).endswith(".json"):
        data = read_json(path)
        if isinstance(data, dict) and isinstance(data.get("results"), dict):
            return [_sakura_output(audio, row, data.get("type")) for audio, row in data["results"].items()]
    return None


def _speech_ifeval_output(row: dict, index: int) -> dict:
    part = speech_ifeval.part_of(row)
    return {
        "id": str(row.get("id", f"{part}-{index}")),
        "format": "speech-ifeval",
        "question": row.get("instruction", ""),
        "answer": row.get("label") or "",
        "categories": {"part": part},
        "model_output": row["response"],
        "prediction": row["response"],
        "extra": {k: row.get(k) for k in ("metric", "instruction_id_list", "kwargs")},
        **({"verdict": row["eval_response"]} if row.get("eval_response") else {}),
    }


def _sakura_output(audio: str, row: dict, hop: str | None) -> dict:
    return {
        "id": audio,
        "format": "mcq",
        "question": row["instruction"],
        "choices": sakura_options(row["instruction"]),
        "answer": re.sub(r"^\([a-z]\)\s*", "", row["label"].strip()),
        "categories": {"hop": hop} if hop else {},
        "model_output": row["response"],
        "prediction": row["response"],
        "extra": {"label": row["label"]},
    }
