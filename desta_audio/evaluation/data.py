"""Benchmark records and prompts: rows (MMAU layout, JSON/JSONL or a `datasets` dataset) become `EvalItem`s and
are asked in the reference's prompt format.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from processing import DEFAULT_SYSTEM_PROMPT, audio_chat

from ..dataset_loading import load_dataset_from, resolve_audio_path, select_split
from ..files import load_jsonl, read_json
from .scoring import strip_answer_prefix

logger = logging.getLogger(__name__)

# The reference's MMAU prompt (examples/evaluation/MMAU-v05.15.25/inference_desta25_audio.py) and answer prefix.
MMAU_SYSTEM_PROMPT = DEFAULT_SYSTEM_PROMPT + ' Put your answer in the format "The correct answer is: "___" ".'
ASR_PROMPT = "Transcribe the speech in the audio clip."
# Record columns tried, in order, when no audio column is named; grouping fields of the MMAU layout.
AUDIO_COLUMN_CANDIDATES = ("audio_id", "audio", "audio_path", "path", "file")
CATEGORY_COLUMN_CANDIDATES = ("task", "category", "sub-category", "difficulty")


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
    # A benchmark preset's exact user text (None: the format's template; "": no text turn, the audio is the query)
    # and the fields its scorer needs (instruction ids, a subset name, what the judge reads).
    prompt: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class BenchmarkColumns:
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
        return load_jsonl(path) if path.suffix.lower() == ".jsonl" else _read_json_records(path)
    if not isinstance(dataset, (str, os.PathLike)):
        return dataset
    return select_split(load_dataset_from(dataset, config), split)


def _read_json_records(path: Path) -> list[dict]:
    rows = read_json(path)
    if not isinstance(rows, list):
        raise ValueError(f"{path} must hold a JSON list of records (or use .jsonl).")
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"{path}: record {index} is a JSON {type(row).__name__}, not a record object.")
    return rows


def detect_format(record: dict, columns: BenchmarkColumns) -> str:
    """`mcq` when the record has a non-empty choices field, else `open`."""
    return "mcq" if record.get(columns.choices) else "open"


def build_items(
    records: Iterable[dict], columns: BenchmarkColumns | None = None, audio_root: str | os.PathLike | None = None
) -> list[EvalItem]:
    """`EvalItem`s from records; relative audio paths are joined to `audio_root`. Ids must be unique."""
    columns = columns or BenchmarkColumns()
    items, seen = [], set()
    for index, record in enumerate(records):
        audio_column = columns.audio or first_present(record, AUDIO_COLUMN_CANDIDATES, "audio")
        category_columns = (
            columns.categories
            if columns.categories is not None
            else [c for c in CATEGORY_COLUMN_CANDIDATES if c in record]
        )
        item = EvalItem(
            id=str(record.get(columns.id, index)),
            audio=resolve_audio_path(_required(record, audio_column, index), audio_root),
            question=record.get(columns.question) or "",
            answer=_required(record, columns.answer, index),
            choices=_choices(record, columns.choices, index),
            categories={c: record[c] for c in category_columns if record.get(c) is not None},
            transcript=record.get(columns.transcript) if columns.transcript else None,
        )
        if item.id in seen:
            raise ValueError(f"Duplicate id {item.id!r}: ids must be unique for predictions to resume and re-score.")
        seen.add(item.id)
        items.append(item)
    return items


def _choices(record: dict, column: str, index: int) -> list[str]:
    """The choices as a list of strings; a bare string would silently become one choice per character."""
    value = record.get(column)
    if value is None or (hasattr(value, "__len__") and len(value) == 0):
        return []
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
        raise ValueError(
            f"Record {index} (id {record.get('id', index)!r}): {column!r} must be a list of options; got {value!r}."
        )
    return [str(choice) for choice in value]


def item_fingerprint(item: EvalItem) -> str:
    """A hash of what an item asks and expects: a saved prediction counts only while it matches."""
    audio = item.audio if isinstance(item.audio, str) else None
    content = [item.id, audio, item.question, item.answer, item.choices, item.transcript]
    if item.prompt is not None or item.extra:
        content += [item.prompt, item.extra]
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:16]


def _required(record: dict, column: str, index: int):
    if column not in record:
        raise ValueError(
            f"Record {index} (id {record.get('id', index)!r}) has no {column!r} column (keys: {sorted(record)}); map it with a column flag."
        )
    return record[column]


def first_present(record: dict, candidates: Sequence[str], what: str) -> str:
    for name in candidates:
        if name in record:
            return name
    raise ValueError(
        f"No {what} column among {list(candidates)} in a record with keys {sorted(record)}; name it with a column flag."
    )


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


def mcq_question(question: str, choices: Sequence[str]) -> str:
    """The reference's MMAU user text: `{question} Choose from the following options: "a", "b", "c" or "d"`."""
    quoted = [f'"{choice}"' for choice in choices]
    options = ", ".join(quoted[:-1]) + " or " + quoted[-1] if len(quoted) > 1 else "".join(quoted)
    return f"{question} Choose from the following options: {options}".rstrip(", ")


def user_text(item: EvalItem, fmt: str) -> str:
    if item.prompt is not None:
        return item.prompt
    if fmt == "mcq":
        return mcq_question(item.question, item.choices)
    if fmt == "asr":
        return item.question or ASR_PROMPT
    return item.question


def resolve_system_prompt(fmt: str, system_prompt: str | None = None) -> str:
    """The given system prompt, else the reference's MMAU prompt for multiple choice and its plain one otherwise."""
    if system_prompt is not None:
        return system_prompt
    return MMAU_SYSTEM_PROMPT if fmt == "mcq" else DEFAULT_SYSTEM_PROMPT


def build_conversation(item: EvalItem, fmt: str, system_prompt: str | None = None, no_asr: bool = False) -> list[dict]:
    """System prompt, then one user turn: the audio, a blank line, the question (reference: `<|AUDIO|>\\n\\n{q}`).
    An item without audio (the hearing probe's text oracle) is asked as text alone."""
    if item.audio is None:
        return audio_chat([], user_text(item, fmt), resolve_system_prompt(fmt, system_prompt))
    audio = (
        {"type": "audio", "path": item.audio} if isinstance(item.audio, str) else {"type": "audio", "audio": item.audio}
    )
    if item.transcript is not None:
        audio["transcript"] = item.transcript
    elif no_asr:
        audio["transcript"] = ""
    return audio_chat([audio], user_text(item, fmt), resolve_system_prompt(fmt, system_prompt))


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
        "item_sha256": item_fingerprint(item),
        **({"extra": item.extra} if item.extra else {}),
        # option likelihood scoring: every choice's summed log-probability and token count (`likelihood.py`)
        **{key: output[key] for key in ("choice_logprobs", "choice_tokens") if key in output},
    }
