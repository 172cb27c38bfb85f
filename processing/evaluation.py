"""Evaluation of DeSTA models: audio QA benchmarks and the knowledge-retention check.

Benchmarks (multiple choice in the MMAU layout, open answers, ASR): records become `EvalItem`s, each is asked
in the reference's prompt format through the `audio-text-to-text` pipeline (greedy, batched), and every answer
is appended to `predictions.jsonl` and flushed batch by batch. Scores are always computed from that file alone,
so `rescore` reproduces a run's numbers without generating, and a run that stopped resumes where it left off.

Knowledge retention (the paper's central claim: a frozen LLM keeps its text skills) compares the model with its
base LLM on text-only prompts: the exact-match rate of greedy outputs, and the mean per-token log-likelihood
difference on the same continuations (given references, or the base's own greedy outputs).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import string
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .pipeline_desta import SYSTEM_PROMPT

logger = logging.getLogger(__name__)

FORMATS = ("mcq", "open", "asr")
# The reference's MMAU prompt (examples/evaluation/MMAU-v05.15.25/inference_desta25_audio.py) and answer prefix.
MMAU_SYSTEM_PROMPT = (
    'Focus on the audio clips and instructions. Put your answer in the format "The correct answer is: "___" ".'
)
MMAU_ANSWER_PREFIX = "The correct answer is: "
ASR_PROMPT = "Transcribe the speech in the audio clip."
BENCHMARK_MAX_NEW_TOKENS = 512  # the reference's MMAU setting
RETENTION_MAX_NEW_TOKENS = 64
# Record columns tried, in order, when no audio column is named; grouping fields of the MMAU layout.
AUDIO_COLUMN_CANDIDATES = ("audio_id", "audio", "audio_path", "path", "file")
CATEGORY_COLUMN_CANDIDATES = ("task", "category", "sub-category", "difficulty")
PREDICTIONS_FILE = "predictions.jsonl"
RUN_CONFIG_FILE = "run_config.json"
RESULTS_JSON = "results.json"
RESULTS_MARKDOWN = "results.md"
RETENTION_JSON = "retention.json"
RETENTION_MARKDOWN = "retention.md"
RETENTION_PROMPTS_FILE = Path(__file__).with_name("retention_prompts.txt")
ARTICLES = {"a", "an", "the"}


# ============================================================================ scoring


def mmau_tokens(text: str) -> set[str]:
    """MMAU's tokenisation: the set of lower-cased `\\b\\w+\\b` words (Unicode word characters, digits, `_`)."""
    return set(re.findall(r"\b\w+\b", str(text).lower()))


def strip_answer_prefix(output: str) -> str:
    """The reference's `model_prediction`: every exact "The correct answer is: " removed, then stripped."""
    return output.replace(MMAU_ANSWER_PREFIX, "").strip()


def mmau_string_match(answer: str, prediction: str, choices: Sequence[str]) -> bool:
    """MMAU's official decision: every token of the answer is in the prediction, and none of the tokens that only
    wrong choices have (tokens shared with the answer excluded; choices tokenising like the answer ignored) is."""
    prediction_tokens = mmau_tokens(prediction)
    if not prediction_tokens:
        return False
    answer_tokens = mmau_tokens(answer)
    wrong_tokens: set[str] = set()
    for choice in choices:
        choice_tokens = mmau_tokens(choice)
        if choice_tokens != answer_tokens:
            wrong_tokens |= choice_tokens - answer_tokens
    return answer_tokens <= prediction_tokens and prediction_tokens.isdisjoint(wrong_tokens)


def normalize_answer(text: str) -> str:
    """Lower case, punctuation (ASCII and Unicode) to spaces, articles dropped, whitespace collapsed."""
    text = "".join(
        " " if ch in string.punctuation or unicodedata.category(ch).startswith("P") else ch for ch in str(text).lower()
    )
    return " ".join(word for word in text.split() if word not in ARTICLES)


def open_answer_match(answers: str | Sequence[str], prediction: str) -> tuple[bool, bool]:
    """(exact, contains) of a free-form prediction against one or several accepted answers, after normalisation.

    `contains` asks for the normalised answer as a whole-word run inside the normalised prediction.
    """
    accepted = [normalize_answer(a) for a in ([answers] if isinstance(answers, str) else answers)]
    accepted = [a for a in accepted if a]
    predicted = normalize_answer(prediction)
    exact = predicted in accepted
    contains = any(f" {a} " in f" {predicted} " for a in accepted)
    return exact, contains


def _wer_transform():
    import jiwer

    return jiwer.Compose(
        [
            jiwer.ToLowerCase(),
            jiwer.RemovePunctuation(),
            jiwer.RemoveMultipleSpaces(),
            jiwer.Strip(),
            jiwer.ReduceToListOfListOfWords(),
        ]
    )


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    """Corpus WER (total edits / total reference words) by `jiwer`, on lower-cased, punctuation-free text."""
    import jiwer

    transform = _wer_transform()
    return jiwer.wer(references, hypotheses, reference_transform=transform, hypothesis_transform=transform)


def _percent(part: float, whole: float) -> float:
    return round(100.0 * part / whole, 2) if whole else 0.0


def _first_answer(answer: str | Sequence[str]) -> str:
    return answer if isinstance(answer, str) else answer[0]


def _metrics(records: list[dict], fmt: str) -> dict:
    """The metrics of one group of predictions, in percent: accuracy (mcq), exact_match/contains (open), wer (asr)."""
    n = len(records)
    if fmt == "mcq":
        correct = sum(mmau_string_match(r["answer"], r["prediction"], r["choices"]) for r in records)
        return {"n": n, "correct": correct, "accuracy": _percent(correct, n)}
    if fmt == "open":
        matches = [open_answer_match(r["answer"], r["prediction"]) for r in records]
        return {
            "n": n,
            "exact_match": _percent(sum(e for e, _ in matches), n),
            "contains": _percent(sum(c for _, c in matches), n),
        }
    wer = word_error_rate([_first_answer(r["answer"]) for r in records], [r["prediction"] for r in records])
    return {"n": n, "wer": round(100.0 * wer, 2)}


PRIMARY_METRIC = {"mcq": "accuracy", "open": "contains", "asr": "wer"}


def score_predictions(records: list[dict], group_by: Sequence[str] | None = None) -> dict:
    """Overall and per-category metrics of saved prediction records (all of one format).

    `group_by` names the category fields to break down by; by default every field found in the records.
    """
    if not records:
        raise ValueError("There are no predictions to score.")
    formats = {r["format"] for r in records}
    if len(formats) != 1:
        raise ValueError(f"Predictions mix formats {sorted(formats)}; score each format separately.")
    fmt = formats.pop()
    fields = list(group_by) if group_by is not None else _category_fields(records)
    groups = {}
    for name in fields:
        members: dict[str, list[dict]] = {}
        for record in records:
            value = record.get("categories", {}).get(name)
            if value is not None:
                members.setdefault(str(value), []).append(record)
        groups[name] = {value: _metrics(members[value], fmt) for value in sorted(members)}
    return {
        "format": fmt,
        "metric": PRIMARY_METRIC[fmt],
        "unit": "percent",
        "overall": _metrics(records, fmt),
        "groups": groups,
    }


def _category_fields(records: list[dict]) -> list[str]:
    seen: dict[str, None] = {}
    for record in records:
        seen.update(dict.fromkeys(record.get("categories", {})))
    return list(seen)


def results_markdown(results: dict) -> str:
    """A Markdown table: the overall row, then one row per category value of each grouping field."""
    metric_names = [key for key in results["overall"] if key not in ("n", "correct")]
    header = "| group | value | n | " + " | ".join(f"{m} (%)" for m in metric_names) + " |"
    lines = [header, "|" + " --- |" * (3 + len(metric_names))]

    def row(group: str, value: str, metrics: dict) -> str:
        return f"| {group} | {value} | {metrics['n']} | " + " | ".join(f"{metrics[m]:.2f}" for m in metric_names) + " |"

    lines.append(row("overall", "all", results["overall"]))
    for group, values in results["groups"].items():
        lines.extend(row(group, value, metrics) for value, metrics in values.items())
    return "\n".join(lines) + "\n"


def write_results(results: dict, output_dir: str | os.PathLike) -> tuple[Path, Path]:
    """`results.json` and `results.md` in `output_dir`."""
    return _write_report(results, results_markdown(results), output_dir, RESULTS_JSON, RESULTS_MARKDOWN)


def _write_report(report: dict, markdown: str, output_dir, json_name: str, markdown_name: str) -> tuple[Path, Path]:
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path, markdown_path = output_dir / json_name, output_dir / markdown_name
    json_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    markdown_path.write_text(markdown)
    return json_path, markdown_path


# ============================================================================ predictions file


def read_predictions(path: str | os.PathLike, repair: bool = False) -> list[dict]:
    """Prediction records of a JSONL file, first record per id kept.

    A run killed mid-write leaves a torn last line: it is skipped with a warning, and with `repair=True` cut from
    the file so that appending continues on a clean line. A bad line anywhere else is an error.
    """
    path = Path(path)
    if not path.exists():
        return []
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    records, by_id, good_end = [], set(), 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            good_end += len(line) + 1
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number < len(lines) and any(rest.strip() for rest in lines[number:]):
                raise ValueError(f"{path}:{number} is not valid JSON; fix or remove that line.") from None
            logger.warning("%s: dropping a torn last line (%d bytes) left by an interrupted run", path, len(line))
            if repair:
                with open(path, "r+b") as handle:
                    handle.truncate(good_end)
            break
        good_end += len(line) + 1
        if record["id"] in by_id:
            logger.warning("%s: duplicate prediction for id %r ignored", path, record["id"])
            continue
        by_id.add(record["id"])
        records.append(record)
    return records


def records_from_reference_results(rows: list[dict]) -> list[dict]:
    """Prediction records from the reference's MMAU output JSON (items with `model_prediction`), for re-scoring.

    Like the official scorer, items without `model_prediction` are left out.
    """
    return [
        {
            "id": str(row.get("id", index)),
            "format": "mcq",
            "question": row.get("question"),
            "choices": list(row["choices"]),
            "answer": row["answer"],
            "categories": {key: row[key] for key in CATEGORY_COLUMN_CANDIDATES if row.get(key) is not None},
            "model_output": row.get("model_output"),
            "prediction": row["model_prediction"],
        }
        for index, row in enumerate(rows)
        if "model_prediction" in row
    ]


def load_prediction_records(path: str | os.PathLike) -> list[dict]:
    """Our `predictions.jsonl`, or a reference-style MMAU results `.json` list."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"predictions file not found: {path}")
    if path.suffix.lower() == ".json":
        return records_from_reference_results(json.loads(path.read_text()))
    return read_predictions(path)


def rescore(
    predictions_path: str | os.PathLike,
    output_dir: str | os.PathLike | None = None,
    group_by: Sequence[str] | None = None,
) -> dict:
    """Score saved predictions again (no model); results go next to the file unless `output_dir` is given."""
    results = score_predictions(load_prediction_records(predictions_path), group_by)
    write_results(results, output_dir or Path(predictions_path).parent)
    return results


# ============================================================================ benchmark data


@dataclass
class EvalItem:
    """One benchmark question. `audio` is a path/URL or a `datasets` audio payload; `answer` may list variants."""

    id: str
    audio: Any
    question: str
    answer: str | list[str]
    choices: list[str] = field(default_factory=list)
    categories: dict[str, Any] = field(default_factory=dict)
    transcript: str | None = None


@dataclass
class ColumnMap:
    """Record field names. `audio=None` takes the first of `AUDIO_COLUMN_CANDIDATES` present; `categories=None`
    takes those of `CATEGORY_COLUMN_CANDIDATES` present; `id` falls back to the row index when missing."""

    id: str = "id"
    question: str = "question"
    choices: str = "choices"
    answer: str = "answer"
    audio: str | None = None
    transcript: str | None = None
    categories: list[str] | None = None


def load_records(
    data_file: str | os.PathLike | None = None, dataset=None, split: str = "test", config: str | None = None
):
    """Rows from a JSON (list) / JSONL file, or a `datasets` dataset (object, `save_to_disk` folder, or Hub id)."""
    if (data_file is None) == (dataset is None):
        raise ValueError("Give exactly one of a data file or a dataset.")
    if data_file is not None:
        path = Path(data_file)
        if not path.exists():
            raise FileNotFoundError(f"data file not found: {path}")
        if path.suffix.lower() == ".jsonl":
            return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        rows = json.loads(path.read_text())
        if not isinstance(rows, list):
            raise ValueError(f"{path} must hold a JSON list of records (or use .jsonl).")
        return rows
    if not isinstance(dataset, (str, os.PathLike)):
        return dataset
    import datasets

    folder = Path(dataset)
    if (folder / "dataset_info.json").exists() or (folder / "dataset_dict.json").exists():
        loaded = datasets.load_from_disk(str(folder))
        return loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
    return datasets.load_dataset(os.fspath(dataset), config, split=split)


def detect_format(record: dict, columns: ColumnMap) -> str:
    """`mcq` when the record has a non-empty choices field, else `open`."""
    return "mcq" if record.get(columns.choices) else "open"


def build_items(
    records: Iterable[dict], columns: ColumnMap | None = None, audio_root: str | os.PathLike | None = None
) -> list[EvalItem]:
    """`EvalItem`s from records; relative audio paths are joined to `audio_root`. Ids must be unique."""
    columns = columns or ColumnMap()
    items, seen = [], set()
    for index, record in enumerate(records):
        audio_column = columns.audio or _first_present(record, AUDIO_COLUMN_CANDIDATES, "audio")
        category_columns = (
            columns.categories
            if columns.categories is not None
            else [c for c in CATEGORY_COLUMN_CANDIDATES if c in record]
        )
        item = EvalItem(
            id=str(record.get(columns.id, index)),
            audio=_resolve_audio(_required(record, audio_column, index), audio_root),
            question=record.get(columns.question) or "",
            answer=_required(record, columns.answer, index),
            choices=list(record.get(columns.choices) or []),
            categories={c: record[c] for c in category_columns if record.get(c) is not None},
            transcript=record.get(columns.transcript) if columns.transcript else None,
        )
        if item.id in seen:
            raise ValueError(f"Duplicate id {item.id!r}: ids must be unique for predictions to resume and re-score.")
        seen.add(item.id)
        items.append(item)
    return items


def _required(record: dict, column: str, index: int):
    if column not in record:
        raise ValueError(
            f"Record {index} has no {column!r} column (keys: {sorted(record)}); map it with a column flag."
        )
    return record[column]


def _first_present(record: dict, candidates: Sequence[str], what: str) -> str:
    for name in candidates:
        if name in record:
            return name
    raise ValueError(
        f"No {what} column among {list(candidates)} in a record with keys {sorted(record)}; name it with a column flag."
    )


def _resolve_audio(value, audio_root):
    if not isinstance(value, (str, os.PathLike)):
        return value
    value = os.fspath(value)
    if audio_root is None or value.startswith(("http://", "https://")) or os.path.isabs(value):
        return value
    return os.path.normpath(os.path.join(audio_root, value))


def check_audio_files(items: Iterable[EvalItem]) -> None:
    """Fail before any generation when local audio files are missing (not hours into a run)."""
    missing = [
        item.audio
        for item in items
        if isinstance(item.audio, str)
        and not item.audio.startswith(("http://", "https://"))
        and not os.path.isfile(item.audio)
    ]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise FileNotFoundError(f"audio file not found: {shown} (set --audio-root for relative paths)")


# ============================================================================ prompts


def mcq_question(question: str, choices: Sequence[str]) -> str:
    """The reference's MMAU user text: `{question} Choose from the following options: "a", "b", "c" or "d"`."""
    quoted = [f'"{choice}"' for choice in choices]
    options = ", ".join(quoted[:-1]) + " or " + quoted[-1] if len(quoted) > 1 else "".join(quoted)
    return f"{question} Choose from the following options: {options}".rstrip(", ")


def user_text(item: EvalItem, fmt: str) -> str:
    if fmt == "mcq":
        return mcq_question(item.question, item.choices)
    if fmt == "asr":
        return item.question or ASR_PROMPT
    return item.question


def resolve_system_prompt(fmt: str, system_prompt: str | None = None) -> str:
    """The given system prompt, else the reference's MMAU prompt for multiple choice and its plain one otherwise."""
    if system_prompt is not None:
        return system_prompt
    return MMAU_SYSTEM_PROMPT if fmt == "mcq" else SYSTEM_PROMPT


def build_conversation(item: EvalItem, fmt: str, system_prompt: str | None = None, no_asr: bool = False) -> list[dict]:
    """System prompt, then one user turn: the audio, a blank line, the question (reference: `<|AUDIO|>\\n\\n{q}`)."""
    audio = (
        {"type": "audio", "path": item.audio} if isinstance(item.audio, str) else {"type": "audio", "audio": item.audio}
    )
    if item.transcript is not None:
        audio["transcript"] = item.transcript
    elif no_asr:
        audio["transcript"] = ""
    return [
        {"role": "system", "content": [{"type": "text", "text": resolve_system_prompt(fmt, system_prompt)}]},
        {"role": "user", "content": [audio, {"type": "text", "text": user_text(item, fmt)}]},
    ]


def prediction_record(item: EvalItem, fmt: str, output: dict) -> dict:
    """What is saved per item: everything scoring needs, so predictions re-score without the dataset."""
    text = output["generated_text"]
    return {
        "id": item.id,
        "format": fmt,
        "question": item.question,
        "choices": item.choices,
        "answer": item.answer,
        "categories": item.categories,
        "audio": item.audio if isinstance(item.audio, str) else None,
        "model_output": text,
        "prediction": strip_answer_prefix(text) if fmt == "mcq" else text.strip(),
        "transcripts": output.get("transcripts", []),
    }


# ============================================================================ benchmark run


def load_pipeline(model, processor=None, device: str = "auto", dtype: str = "auto"):
    """The audio-text-to-text pipeline for a folder / Hub id, an in-memory model + processor, or a ready pipeline."""
    from transformers import Pipeline

    from .cli import load_pipeline as load_from_path
    from .cli import resolve_device
    from .pipeline_desta import DestaAudioTextToTextPipeline

    if isinstance(model, Pipeline):
        return model
    if isinstance(model, (str, os.PathLike)):
        return load_from_path(os.fspath(model), device, dtype)
    if processor is None:
        raise ValueError("An in-memory model needs its processor.")
    return DestaAudioTextToTextPipeline(
        model=model, processor=processor, device=None if device == "auto" else resolve_device(device)
    )


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def check_run_config(output_dir: Path, config: dict) -> None:
    """Save the settings that shape answers; refuse to resume into a folder answered with other settings, where
    old and new predictions would silently mix."""
    path = output_dir / RUN_CONFIG_FILE
    if path.exists() and (output_dir / PREDICTIONS_FILE).exists():
        saved = json.loads(path.read_text())
        changed = {key: (saved.get(key), value) for key, value in config.items() if saved.get(key) != value}
        if changed:
            raise ValueError(
                f"{output_dir} holds predictions made with other settings (saved, now): {changed}. Use another output "
                f"folder, or delete {RUN_CONFIG_FILE} there if mixing is intended."
            )
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def run_benchmark(
    pipe,
    items: Sequence[EvalItem],
    output_dir: str | os.PathLike,
    fmt: str = "mcq",
    batch_size: int = 8,
    max_new_tokens: int = BENCHMARK_MAX_NEW_TOKENS,
    system_prompt: str | None = None,
    no_asr: bool = False,
    group_by: Sequence[str] | None = None,
) -> dict:
    """Ask every item not yet in `output_dir/predictions.jsonl` (greedy), append each batch's answers, then score.

    Items already answered there are never asked again, so an interrupted run resumes by running it again.
    The results (also written as `results.json` / `results.md`) cover this run's items only.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    predictions_path = output_dir / PREDICTIONS_FILE
    check_run_config(
        output_dir,
        {
            "model": getattr(getattr(pipe, "model", None), "name_or_path", None),
            "format": fmt,
            "system_prompt": resolve_system_prompt(fmt, system_prompt),
            "max_new_tokens": max_new_tokens,
            "no_asr": no_asr,
        },
    )
    done = {record["id"] for record in read_predictions(predictions_path, repair=True)}
    todo = [item for item in items if item.id not in done]
    if done:
        logger.info(
            "resuming: %d of %d items already answered in %s", len(items) - len(todo), len(items), predictions_path
        )
    check_audio_files(todo)
    with (
        open(predictions_path, "a", encoding="utf-8") as sink,
        tqdm(total=len(todo), unit="item", desc="evaluating") as progress,
    ):
        for batch in _batches(todo, batch_size):
            conversations = [build_conversation(item, fmt, system_prompt, no_asr) for item in batch]
            outputs = pipe(conversations, batch_size=len(batch), max_new_tokens=max_new_tokens, do_sample=False)
            for item, output in zip(batch, outputs, strict=True):
                sink.write(json.dumps(prediction_record(item, fmt, output), ensure_ascii=False) + "\n")
            sink.flush()
            progress.update(len(batch))
    wanted = {item.id for item in items}
    results = score_predictions([r for r in read_predictions(predictions_path) if r["id"] in wanted], group_by)
    write_results(results, output_dir)
    return results


def evaluate_benchmark(
    model,
    output_dir: str | os.PathLike,
    processor=None,
    data_file: str | os.PathLike | None = None,
    dataset=None,
    split: str = "test",
    dataset_config: str | None = None,
    audio_root: str | os.PathLike | None = None,
    columns: ColumnMap | None = None,
    fmt: str = "auto",
    limit: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
    **run_kwargs,
) -> dict:
    """Load the data and the model, then `run_benchmark`. Relative audio paths default to the data file's folder."""
    columns = columns or ColumnMap()
    records = load_records(data_file, dataset, split, dataset_config)
    if limit is not None:
        records = records.select(range(min(limit, len(records)))) if hasattr(records, "select") else records[:limit]
    if not len(records):
        raise ValueError("The benchmark has no records.")
    if audio_root is None and data_file is not None:
        audio_root = Path(data_file).parent
    items = build_items(records, columns, audio_root)
    fmt = detect_format(records[0], columns) if fmt == "auto" else fmt
    logger.info("%d %s items", len(items), fmt)
    return run_benchmark(load_pipeline(model, processor, device, dtype), items, output_dir, fmt, **run_kwargs)


# ============================================================================ knowledge retention


@dataclass
class RetentionPrompt:
    prompt: str
    reference: str | None = None


def load_retention_prompts(path: str | os.PathLike | None = None) -> list[RetentionPrompt]:
    """Prompts from a `.txt` file (one per line, `#` comments) or a `.jsonl` of `{"prompt", "reference"?}`.

    Defaults to the built-in `retention_prompts.txt`.
    """
    path = Path(path) if path is not None else RETENTION_PROMPTS_FILE
    if not path.exists():
        raise FileNotFoundError(f"retention prompts file not found: {path}")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    if path.suffix.lower() == ".jsonl":
        rows = [json.loads(line) for line in lines if line]
        return [RetentionPrompt(row["prompt"], row.get("reference")) for row in rows]
    return [RetentionPrompt(line) for line in lines if line and not line.startswith("#")]


def unwrap_peft(model):
    """The Desta model inside a `PeftModel` (whose LoRA layers live in it), or the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _without_adapters(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict with PEFT's LoRA tensors dropped and `base_layer` wrappers flattened: the original weights."""
    return {key.replace(".base_layer.", "."): value for key, value in state.items() if ".lora_" not in key}


def rebuild_base_llm(model):
    """The base LLM of a Desta model: its `language_model` + `lm_head` as the text config's causal-LM class.

    The weights are the model's own tensors (no copy); LoRA adapters, if any, are left out, so the result is the
    LLM before adaptation. A model whose adapters were merged into its weights cannot be undone this way: pass
    the base LLM's folder or id instead.
    """
    from transformers import AutoModelForCausalLM

    desta = unwrap_peft(model)
    language_model, lm_head = desta.model.language_model, desta.lm_head
    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(desta.config.text_config)
    base.get_decoder().load_state_dict(_without_adapters(language_model.state_dict()), assign=True)
    base.get_output_embeddings().load_state_dict(_without_adapters(lm_head.state_dict()), assign=True)
    _copy_non_persistent_buffers(base.get_decoder(), language_model)
    leftover = [name for name, tensor in [*base.named_parameters(), *base.named_buffers()] if tensor.is_meta]
    if leftover:
        raise ValueError(f"Could not rebuild the base LLM from the Desta model; missing {leftover[:5]}.")
    base.generation_config = desta.generation_config
    return base.eval()


def _copy_non_persistent_buffers(target: torch.nn.Module, source: torch.nn.Module) -> None:
    """Buffers a state dict leaves out (e.g. rotary `inv_freq`), taken from the same-named source buffers."""
    for name, buffer in list(target.named_buffers()):
        if buffer.is_meta:
            module_name, _, buffer_name = name.rpartition(".")
            owner = target.get_submodule(module_name) if module_name else target
            owner.register_buffer(buffer_name, source.get_buffer(name), persistent=False)


def load_base_llm(base_llm, like):
    """A base causal LM: a folder / Hub id (on `like`'s device and dtype), an in-memory LM, or rebuilt from `like`."""
    from transformers import AutoModelForCausalLM

    if base_llm is None:
        return rebuild_base_llm(like)
    if isinstance(base_llm, (str, os.PathLike)):
        loaded = AutoModelForCausalLM.from_pretrained(os.fspath(base_llm), dtype=like.dtype)
        return loaded.to(like.device).eval()
    return base_llm.eval()


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """A single user turn through the tokenizer's chat template (plain text + BOS for tokenizers without one)."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        return tokenizer(text, add_special_tokens=False).input_ids
    return tokenizer(prompt).input_ids


def _pad(rows: list[list[int]], pad_id: int, side: str, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[index, span] = torch.tensor(row, dtype=torch.long)
        mask[index, span] = 1
    return ids.to(device), mask.to(device)


def _eos_ids(generation_config) -> set[int]:
    eos = generation_config.eos_token_id
    return set() if eos is None else {eos} if isinstance(eos, int) else set(eos)


def _cut_at_eos(ids: list[int], eos: set[int]) -> list[int]:
    for index, token in enumerate(ids):
        if token in eos:
            return ids[: index + 1]
    return ids


def _vocab_size(model) -> int:
    return unwrap_peft(model).get_output_embeddings().weight.shape[0]


@torch.no_grad()
def greedy_continuations(
    model, prompts: list[list[int]], generation_config, pad_id: int, batch_size: int, suppress: list[int]
) -> list[list[int]]:
    """Each prompt's greedy continuation (token ids, up to and including the first end-of-sequence token)."""
    device = unwrap_peft(model).device
    eos = _eos_ids(generation_config)
    extra = {"suppress_tokens": suppress} if suppress else {}
    outputs = []
    for batch in _batches(prompts, batch_size):
        input_ids, attention_mask = _pad(list(batch), pad_id, "left", device)
        generated = model.generate(
            input_ids=input_ids, attention_mask=attention_mask, generation_config=generation_config, **extra
        )
        outputs.extend(_cut_at_eos(row.tolist(), eos) for row in generated[:, input_ids.shape[1] :])
    return outputs


@torch.no_grad()
def continuation_logprobs(
    model, prompts: list[list[int]], continuations: list[list[int]], pad_id: int, batch_size: int, vocab: int
) -> list[list[float]]:
    """Teacher-forced log-probability of every continuation token given its prompt (right padding, so positions are
    the unpadded ones), normalised over the first `vocab` entries."""
    device = unwrap_peft(model).device
    results = []
    pairs = list(zip(prompts, continuations, strict=True))
    for batch in _batches(pairs, batch_size):
        input_ids, attention_mask = _pad([p + c for p, c in batch], pad_id, "right", device)
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        for row, (prompt, continuation) in enumerate(batch):
            predicting = logits[row, len(prompt) - 1 : len(prompt) + len(continuation) - 1, :vocab].float()
            targets = torch.tensor(continuation, dtype=torch.long, device=device)
            results.append(predicting.log_softmax(dim=-1).gather(1, targets[:, None])[:, 0].tolist())
    return results


def knowledge_retention(
    model,
    tokenizer,
    base_llm=None,
    prompts: Sequence[RetentionPrompt | str] | None = None,
    max_new_tokens: int = RETENTION_MAX_NEW_TOKENS,
    batch_size: int = 8,
) -> dict:
    """Compare a Desta model (optionally a `PeftModel`) with its base LLM on text-only prompts.

    `base_llm`: None rebuilds it from the model's own LLM weights (adapters left out); or a folder / Hub id / model.
    Both models get the same token ids in the same batches, so a frozen LLM gives exactly `exact_match_rate` 1.0
    and `mean_logprob_diff` 0.0. Log-likelihoods are over the same continuation per prompt: its `reference` where
    given, else the base's greedy output; `mean_logprob_diff` is the token-weighted mean of model - base.
    Where the model's vocabulary grew (an added audio token), the extra rows are ignored on both sides.
    """
    prompts = [
        p if isinstance(p, RetentionPrompt) else RetentionPrompt(p) for p in (prompts or load_retention_prompts())
    ]
    if not prompts:
        raise ValueError("No retention prompts.")
    base = load_base_llm(base_llm, unwrap_peft(model))
    model.eval()
    vocab = min(_vocab_size(model), _vocab_size(base))
    generation_config = copy.deepcopy(unwrap_peft(model).generation_config)
    generation_config.update(
        do_sample=False, max_new_tokens=max_new_tokens, temperature=None, top_p=None, top_k=None, num_beams=1
    )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    generation_config.pad_token_id = pad_id
    encoded = [prompt_ids(tokenizer, p.prompt) for p in prompts]

    model_outputs = greedy_continuations(
        model, encoded, generation_config, pad_id, batch_size, list(range(vocab, _vocab_size(model)))
    )
    base_outputs = greedy_continuations(
        base, encoded, generation_config, pad_id, batch_size, list(range(vocab, _vocab_size(base)))
    )
    continuations = [
        tokenizer(p.reference, add_special_tokens=False).input_ids if p.reference else output
        for p, output in zip(prompts, base_outputs, strict=True)
    ]
    model_logprobs = continuation_logprobs(model, encoded, continuations, pad_id, batch_size, vocab)
    base_logprobs = continuation_logprobs(base, encoded, continuations, pad_id, batch_size, vocab)
    return _retention_report(tokenizer, prompts, model_outputs, base_outputs, model_logprobs, base_logprobs)


def _retention_report(tokenizer, prompts, model_outputs, base_outputs, model_logprobs, base_logprobs) -> dict:
    items = []
    differences = []
    for prompt, ours, theirs, ours_lp, theirs_lp in zip(
        prompts, model_outputs, base_outputs, model_logprobs, base_logprobs, strict=True
    ):
        token_diffs = [a - b for a, b in zip(ours_lp, theirs_lp, strict=True)]
        differences.extend(token_diffs)
        items.append(
            {
                "prompt": prompt.prompt,
                "continuation": "reference" if prompt.reference else "base_greedy",
                "model_output": tokenizer.decode(ours, skip_special_tokens=True),
                "base_output": tokenizer.decode(theirs, skip_special_tokens=True),
                "exact_match": ours == theirs,
                "num_tokens": len(token_diffs),
                "model_mean_logprob": _mean(ours_lp),
                "base_mean_logprob": _mean(theirs_lp),
                "mean_logprob_diff": _mean(token_diffs),
            }
        )
    summary = {
        "num_prompts": len(items),
        "num_tokens": len(differences),
        "exact_match_rate": sum(item["exact_match"] for item in items) / len(items),
        "mean_logprob_diff": _mean(differences),
        "mean_abs_logprob_diff": _mean([abs(d) for d in differences]),
        "model_mean_logprob": _mean([lp for row in model_logprobs for lp in row]),
        "base_mean_logprob": _mean([lp for row in base_logprobs for lp in row]),
    }
    return {"summary": summary, "items": items}


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def retention_markdown(report: dict) -> str:
    summary = report["summary"]
    lines = ["| metric | value |", "| --- | --- |"]
    lines.extend(
        f"| {key} | {value:.6g} |" if isinstance(value, float) else f"| {key} | {value} |"
        for key, value in summary.items()
    )
    return "\n".join(lines) + "\n"


def write_retention(report: dict, output_dir: str | os.PathLike) -> tuple[Path, Path]:
    """`retention.json` and its Markdown table in `output_dir`."""
    return _write_report(report, retention_markdown(report), output_dir, RETENTION_JSON, RETENTION_MARKDOWN)


def load_model_and_tokenizer(model_id: str | os.PathLike, device: str = "auto", dtype: str = "auto"):
    """A Desta checkpoint (folder or Hub id) for text-only use, with its LLM tokenizer."""
    from transformers import AutoModelForCausalLM, AutoProcessor

    from .cli import resolve_device

    processor = AutoProcessor.from_pretrained(os.fspath(model_id), trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(os.fspath(model_id), trust_remote_code=True, dtype=dtype)
    return model.to(resolve_device(device)).eval(), processor.tokenizer


__all__ = [
    "ColumnMap",
    "EvalItem",
    "RetentionPrompt",
    "build_conversation",
    "build_items",
    "evaluate_benchmark",
    "knowledge_retention",
    "load_retention_prompts",
    "mcq_question",
    "mmau_string_match",
    "open_answer_match",
    "rebuild_base_llm",
    "rescore",
    "run_benchmark",
    "score_predictions",
    "strip_answer_prefix",
    "word_error_rate",
]
