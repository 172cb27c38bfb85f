"""Self-generated training data, the DeSTA recipe (DESIGN.md §1.3).

For every clip a text *seed description* is built from its metadata, an instruction is drawn from a
pool, and the backbone LLM answers the instruction from the description alone. The answer becomes
the training target for the real audio, so targets stay in the LLM's own voice.

Output records follow DeSTA-AQA5M (`id`, `dataset`, `seed_description`, `prompt`, `response`,
`messages`) plus `audio` and `transcript`. They are appended batch by batch to one JSONL file per
shard under `OUTPUT_DIR/records/` (flushed and fsynced; a torn last line left by a hard kill is
ignored on read and cut off before the next append), so a rerun resumes by id. `merge_records`
turns all shards into a `datasets` dataset saved under `OUTPUT_DIR/dataset`.

`build_dataset.py` at the repository root is the command-line front end.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from .audio_io import load_audio

logger = logging.getLogger(__name__)

SAMPLING_RATE = 16000
GENERATION_SYSTEM_PROMPT = (
    "Imagine you can hear the audio clips. The audio clips are wrapped between <start_audio> and <end_audio>. "
    "Focus on the audio clips and respond directly to the prompts."
)
TRAINING_SYSTEM_PROMPT = "Focus on the audio clips and instructions."
DEFAULT_INSTRUCTIONS = Path(__file__).with_name("instructions.txt")
AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".webm"})
RECORDS_DIRNAME = "records"
DATASET_DIRNAME = "dataset"
MAX_SKIPPED_EXAMPLES = 1000


def chunks(items: Sequence[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive slices of `size` (itertools.batched needs Python 3.12)."""
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


# ----------------------------------------------------------------------------- seed descriptions


def round_half_up(seconds: float) -> int:
    """Whole seconds, rounding .5 up (Python's round() would send 2.5 to 2)."""
    return math.floor(seconds + 0.5)


def format_timestamp(seconds: float) -> str:
    total = round_half_up(seconds)
    return f"{total // 60:02d}:{total % 60:02d}"


def attribute_name(column: str) -> str:
    """`speaking_speed` -> `Speaking speed`: underscores to spaces, first letter upper, the rest untouched."""
    name = " ".join(column.replace("_", " ").split())
    return name[:1].upper() + name[1:]


def format_value(value: Any) -> str | None:
    """The text of an attribute value, or None for a missing one (None, NaN, blank)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    text: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)


def segment_line(segment: Segment, clip_attributes: dict[str, Any]) -> str:
    """`[MM:SS-MM:SS] text (Key: Value, ..., Duration: Ns)`; no text for non-speech segments."""
    merged = {**segment.attributes, **{k: v for k, v in clip_attributes.items() if k not in segment.attributes}}
    attributes = {attribute_name(k): v for k, v in merged.items()}
    pairs = [f"{name}: {text}" for name, value in attributes.items() if (text := format_value(value)) is not None]
    pairs.append(f"Duration: {round_half_up(segment.end - segment.start)}s")
    spoken = f"{segment.text.strip()} " if segment.text and segment.text.strip() else ""
    return f"[{format_timestamp(segment.start)}-{format_timestamp(segment.end)}] {spoken}({', '.join(pairs)})"


def seed_description(
    duration: float,
    transcript: str | None = None,
    attributes: dict[str, Any] | None = None,
    segments: Sequence[Segment] | None = None,
) -> str:
    """One line per segment; a clip without segments is one segment spanning the whole clip.

    Clip-level attributes (keyed by column name) are repeated on every segment line, after the
    segment's own (e.g. `Speaker`, which win on a clash), so each line stands alone.
    """
    attributes = attributes or {}
    if not segments:
        return segment_line(Segment(0.0, duration, transcript or ""), attributes)
    return "\n".join(segment_line(segment, attributes) for segment in segments)


def parse_segments(value: Any) -> list[Segment]:
    """Segments from a list of dicts, a JSON string of one (CSV cells) or a dict of lists (datasets' legacy Sequence).

    Each needs `start` and `end` (seconds); `text` is optional; every other scalar key (`speaker`, ...) becomes an attribute.
    """
    if isinstance(value, str):
        value = json.loads(value)
    if isinstance(value, dict):
        value = [dict(zip(value, row)) for row in zip(*value.values())]
    segments = []
    for item in value:
        start, end = float(item["start"]), float(item["end"])
        if not 0 <= start <= end:
            raise ValueError(f"segment times must satisfy 0 <= start <= end; got start={start}, end={end}")
        extra = {k: v for k, v in item.items() if k not in ("start", "end", "text") and not isinstance(v, (list, dict))}
        segments.append(Segment(start, end, item.get("text") or "", extra))
    return segments


# ----------------------------------------------------------------------------- instructions and chats


def load_instructions(path: str | Path | None = None) -> list[str]:
    """One instruction per non-blank line, duplicates dropped (first kept)."""
    path = Path(path or DEFAULT_INSTRUCTIONS)
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    instructions = list(dict.fromkeys(line for line in lines if line))
    if not instructions:
        raise ValueError(f"{path} holds no instructions")
    return instructions


def row_random(seed: int, row_id: str, purpose: str) -> random.Random:
    """A generator that depends only on (seed, row id, purpose), so resume, sharding and batch size change nothing."""
    return random.Random(f"{seed}-{row_id}-{purpose}")


def pick_instruction(instructions: Sequence[str], seed: int, row_id: str) -> str:
    return row_random(seed, row_id, "instruction").choice(instructions)


def generation_messages(description: str, instruction: str) -> list[dict[str, str]]:
    """The chat the backbone LLM answers: the seed description stands in for the audio."""
    return [
        {"role": "system", "content": GENERATION_SYSTEM_PROMPT},
        {"role": "user", "content": f"<start_audio>{description}<end_audio>\n\n{instruction}"},
    ]


def training_messages(audio_ref: str, transcript: str | None, instruction: str) -> list[dict[str, Any]]:
    """The chat the audio model trains on, in the processor's format (every content a list, one Arrow schema)."""
    return [
        {"role": "system", "content": [{"type": "text", "text": TRAINING_SYSTEM_PROMPT}]},
        {
            "role": "user",
            "content": [
                {"type": "audio", "path": audio_ref, "transcript": transcript or ""},
                {"type": "text", "text": instruction},
            ],
        },
    ]


def record_features():
    """The `datasets` schema of a record; text content items get null `path`/`transcript` and vice versa."""
    from datasets import Features, List, Value

    item = {"type": Value("string"), "text": Value("string"), "path": Value("string"), "transcript": Value("string")}
    text = Value("string")
    return Features(
        {
            "id": text,
            "dataset": text,
            "audio": text,
            "transcript": text,
            "seed_description": text,
            "prompt": text,
            "response": text,
            "messages": List({"role": text, "content": List(item)}),
        }
    )


# ----------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class ColumnMap:
    audio: str = "audio"
    transcript: str | None = None
    attributes: tuple[str, ...] = ()
    segments: str | None = None
    id: str | None = None

    def requested(self) -> list[str]:
        optional = [self.transcript, self.segments, self.id]
        return [self.audio, *self.attributes, *(c for c in optional if c)]


class BadRow(Exception):
    """A row that cannot become a record; `reason` is the summary's counting key, the message the detail."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(detail or reason)
        self.reason = reason


def required(raw: dict[str, Any], column: str) -> Any:
    if column not in raw:
        raise BadRow(f"missing column '{column}'", f"row has no '{column}' (has {sorted(raw)})")
    return raw[column]


class FolderSource:
    """Audio files under `audio_dir`, described by metadata rows whose audio column holds paths relative to it."""

    def __init__(self, audio_dir: str | Path, rows: list[dict[str, Any]], label: str):
        self.audio_dir = Path(audio_dir)
        self.rows = rows
        self.label = label

    def __len__(self) -> int:
        return len(self.rows)

    def column_names(self) -> set[str]:
        return set().union(*self.rows) if self.rows else set()

    def fetch(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        return [self.rows[i] for i in indices]

    def audio_ref(self, value: Any) -> str:
        """The path relative to audio_dir, normalised without following symlinks (datasets are often symlink farms)."""
        root = os.path.abspath(self.audio_dir)
        path = os.path.abspath(os.path.join(root, str(value)))
        if os.path.commonpath([root, path]) != root:  # outside audio_dir: keep the path as given
            return str(value)
        return Path(os.path.relpath(path, root)).as_posix()

    def audio(self, value: Any, index: int) -> tuple[str, Any]:
        ref = self.audio_ref(value)
        return ref, self.audio_dir / ref

    def ids(self, columns: ColumnMap) -> list[str | None]:
        """The id column, else the relative audio path (DeSTA-AQA5M's `id`); None where the row lacks it."""
        if columns.id:
            return [None if row.get(columns.id) is None else str(row[columns.id]) for row in self.rows]
        return [None if row.get(columns.audio) in (None, "") else self.audio_ref(row[columns.audio]) for row in self.rows]


class DatasetSource:
    """A `datasets.Dataset`; `Audio` columns are read undecoded so the source path survives and decoding errors are ours."""

    def __init__(self, dataset, label: str, split: str, audio_column: str):
        from datasets import Audio

        if isinstance(dataset.features.get(audio_column), Audio):
            dataset = dataset.cast_column(audio_column, Audio(decode=False))
        self.dataset = dataset
        self.label = label
        self.split = split

    def __len__(self) -> int:
        return len(self.dataset)

    def column_names(self) -> set[str]:
        return set(self.dataset.column_names)

    def fetch(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        columns = self.dataset[list(indices)]
        return [dict(zip(columns, values)) for values in zip(*columns.values())]

    def fallback_ref(self, index: int) -> str:
        return f"{self.label}/{self.split}/{index}"

    def audio(self, value: Any, index: int) -> tuple[str, Any]:
        """(reference, what load_audio decodes): the source's own path when it has one."""
        if isinstance(value, (str, os.PathLike)):
            return str(value), value
        if isinstance(value, dict) and value.get("path") and value.get("array") is None:
            return str(value["path"]), value.get("bytes") or value["path"]
        return self.fallback_ref(index), value

    def ids(self, columns: ColumnMap) -> list[str | None]:
        if columns.id:
            return [None if v is None else str(v) for v in self.dataset[columns.id]]
        return [self.fallback_ref(i) for i in range(len(self.dataset))]


def read_metadata(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a CSV/TSV (header required) or JSON Lines file. A short CSV row lacks its last columns."""
    path = Path(path)
    if path.suffix.lower() in (".csv", ".tsv"):
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            return [{k: v for k, v in row.items() if k is not None and v is not None} for row in reader]
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def scan_audio_dir(audio_dir: str | Path, audio_column: str) -> list[dict[str, str]]:
    """Metadata for a bare folder: one row per audio file, sorted, so row indices are stable across runs."""
    root = Path(audio_dir)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
    return [{audio_column: p.relative_to(root).as_posix()} for p in files]


def folder_source(audio_dir: str | Path | None, metadata: str | Path | None, audio_column: str, label: str | None) -> FolderSource:
    if audio_dir is None and metadata is None:
        raise ValueError("a folder source needs --audio-dir, --metadata or both")
    audio_dir = Path(audio_dir) if audio_dir is not None else Path(metadata).parent
    rows = read_metadata(metadata) if metadata is not None else scan_audio_dir(audio_dir, audio_column)
    if not rows:
        raise ValueError(f"{metadata or audio_dir} holds no {'rows' if metadata else 'audio files'}")
    return FolderSource(audio_dir, rows, label or audio_dir.resolve().name)


def dataset_source(
    name: str | None, config: str | None, split: str, audio_column: str, label: str | None, load_from_disk: str | None = None
) -> DatasetSource:
    """A Hub/local `datasets` dataset (`name`) or one saved with save_to_disk (`load_from_disk`)."""
    import datasets

    if load_from_disk is not None:
        loaded = datasets.load_from_disk(load_from_disk)
        dataset = loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
        default_label = Path(load_from_disk).resolve().name
    else:
        dataset = datasets.load_dataset(name, config, split=split)
        default_label = name.rstrip("/").split("/")[-1]
    return DatasetSource(dataset, label or default_label, split, audio_column)


def check_columns(source, columns: ColumnMap) -> None:
    """Fail fast on a column no row has (a typo in a flag), listing the ones that exist."""
    available = source.column_names()
    missing = [c for c in columns.requested() if c not in available]
    if missing:
        raise ValueError(f"column(s) {missing} not found in the source; available: {sorted(available)}")


# ----------------------------------------------------------------------------- rows


@dataclass
class PreparedRow:
    index: int
    id: str
    audio_ref: str
    audio: np.ndarray
    transcript: str
    attributes: dict[str, Any]
    segments: list[Segment] | None

    @property
    def duration(self) -> float:
        return len(self.audio) / SAMPLING_RATE

    def description(self) -> str:
        return seed_description(self.duration, self.transcript, self.attributes, self.segments)


def decode_audio(source: Any) -> np.ndarray:
    try:
        return load_audio(source, sampling_rate=SAMPLING_RATE)
    except FileNotFoundError as error:
        raise BadRow("missing audio file", str(error)) from error
    except (ValueError, OSError, RuntimeError) as error:
        raise BadRow("unreadable audio", str(error)) from error


def prepare_row(source, raw: dict[str, Any], index: int, row_id: str | None, columns: ColumnMap) -> PreparedRow:
    """Check the row's columns first (cheap), then decode its audio. Raises BadRow."""
    audio_value = required(raw, columns.audio)
    if audio_value is None or (isinstance(audio_value, str) and not audio_value.strip()):
        raise BadRow(f"empty column '{columns.audio}'")
    if row_id is None:
        raise BadRow(f"empty column '{columns.id}'")
    transcript = format_value(required(raw, columns.transcript)) if columns.transcript else None
    attributes = {column: required(raw, column) for column in columns.attributes}
    segments = None
    if columns.segments:
        try:
            segments = parse_segments(required(raw, columns.segments))
        except (ValueError, KeyError, TypeError) as error:
            raise BadRow("invalid segments", f"{type(error).__name__}: {error}") from error
        if transcript is None:
            transcript = " ".join(s.text.strip() for s in segments if s.text.strip()) or None
    audio_ref, audio_source = source.audio(audio_value, index)
    audio = decode_audio(audio_source)
    return PreparedRow(index, row_id, audio_ref, audio, transcript or "", attributes, segments)


def make_record(row: PreparedRow, dataset_label: str, description: str, instruction: str, response: str) -> dict[str, Any]:
    return {
        "id": row.id,
        "dataset": dataset_label,
        "audio": row.audio_ref,
        "transcript": row.transcript,
        "seed_description": description,
        "prompt": instruction,
        "response": response,
        "messages": training_messages(row.audio_ref, row.transcript, instruction),
    }


# ----------------------------------------------------------------------------- models


class ResponseGenerator(Protocol):
    def generate(self, conversations: Sequence[list[dict[str, str]]], seed: int) -> list[str]: ...


def render_prompt(tokenizer, messages: list[dict[str, str]]) -> str:
    """The model's own chat template with the assistant header. Tokenize it with add_special_tokens=False:
    the template already holds BOS, and adding another shifts every generation."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def stop_token_ids(tokenizer, generation_config) -> list[int]:
    """The generation config's eos ids (Llama-3.1 lists several) plus the tokenizer's eos."""
    configured = generation_config.eos_token_id
    ids = [] if configured is None else [configured] if isinstance(configured, int) else list(configured)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def resolve_device(device: str | None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


class TransformersGenerator:
    """Batched generation with LEFT padding, so every prompt ends at the same position and greedy output does not depend on the batch."""

    def __init__(self, model, tokenizer, *, max_new_tokens: int = 512, temperature: float = 0.0, top_p: float = 1.0):
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        config = copy.deepcopy(model.generation_config)
        config.max_new_tokens = max_new_tokens
        config.eos_token_id = stop_token_ids(tokenizer, config)
        config.pad_token_id = tokenizer.pad_token_id
        config.do_sample = temperature > 0
        config.temperature = temperature if temperature > 0 else None
        config.top_p = top_p if temperature > 0 else None
        config.top_k = None
        self.generation_config = config
        self.model = model.eval()
        self.tokenizer = tokenizer

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, *, device: str | None = None, dtype: str = "auto", **options):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype).to(resolve_device(device))
        return cls(model, tokenizer, **options)

    @torch.inference_mode()
    def generate(self, conversations: Sequence[list[dict[str, str]]], seed: int) -> list[str]:
        torch.manual_seed(seed)
        texts = [render_prompt(self.tokenizer, c) for c in conversations]
        batch = self.tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt").to(self.model.device)
        output = self.model.generate(**batch, generation_config=self.generation_config)
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        return [text.strip() for text in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


class VLLMGenerator:
    """The same prompts through vLLM (much faster on GPUs); give it large batches."""

    def __init__(self, name_or_path: str | Path, *, max_new_tokens: int = 512, temperature: float = 0.0, top_p: float = 1.0, dtype: str = "auto"):
        try:
            import vllm
        except ImportError as error:
            raise ImportError("--backend vllm needs vLLM installed (pip install vllm); or use --backend transformers") from error
        from transformers import AutoTokenizer

        self.vllm = vllm
        self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        self.llm = vllm.LLM(model=str(name_or_path), dtype=dtype)
        self.options = {"max_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p}

    def generate(self, conversations: Sequence[list[dict[str, str]]], seed: int) -> list[str]:
        params = self.vllm.SamplingParams(**self.options, seed=seed)
        prompts = [{"prompt_token_ids": self.tokenizer(render_prompt(self.tokenizer, c), add_special_tokens=False)["input_ids"]} for c in conversations]
        return [out.outputs[0].text.strip() for out in self.llm.generate(prompts, params, use_tqdm=False)]


class WhisperTranscriber:
    """Greedy Whisper ASR in batches; clips over 30 s use Whisper's sequential long-form decoding instead of being cut."""

    FRAMES_PER_WINDOW = 3000

    def __init__(self, model, processor, batch_size: int = 8):
        self.model = model.eval()
        self.processor = processor
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, *, device: str | None = None, batch_size: int = 8):
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        model = WhisperForConditionalGeneration.from_pretrained(name_or_path).to(resolve_device(device))
        return cls(model, WhisperProcessor.from_pretrained(name_or_path), batch_size)

    def transcribe(self, waveforms: Sequence[np.ndarray]) -> list[str]:
        return [text for chunk in chunks(waveforms, self.batch_size) for text in self._transcribe_batch(chunk)]

    @torch.inference_mode()
    def _transcribe_batch(self, waveforms: list[np.ndarray]) -> list[str]:
        extract = {"sampling_rate": SAMPLING_RATE, "return_tensors": "pt", "return_attention_mask": True}
        inputs = self.processor(waveforms, truncation=False, padding="longest", **extract)
        if inputs["input_features"].shape[-1] < self.FRAMES_PER_WINDOW:  # all short: the usual padded 30 s window
            inputs = self.processor(waveforms, **extract)
        inputs = inputs.to(self.model.device, self.model.dtype)
        ids = self.model.generate(**inputs, do_sample=False, num_beams=1)
        return [text.strip() for text in self.processor.batch_decode(ids, skip_special_tokens=True)]


# ----------------------------------------------------------------------------- output


def records_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / RECORDS_DIRNAME


def shard_file(output_dir: str | Path, shard_index: int, num_shards: int) -> Path:
    return records_dir(output_dir) / f"shard-{shard_index:05d}-of-{num_shards:05d}.jsonl"


def summary_file(output_dir: str | Path, shard_index: int, num_shards: int) -> Path:
    name = "summary.json" if num_shards == 1 else f"summary-{shard_index:05d}-of-{num_shards:05d}.json"
    return Path(output_dir) / name


def record_files(output_dir: str | Path) -> list[Path]:
    return sorted(records_dir(output_dir).glob("*.jsonl"))


def read_records(path: str | Path) -> Iterator[dict[str, Any]]:
    """Every complete record; a last line without its newline is a write cut short by a crash and is ignored."""
    with open(path, "rb") as handle:
        for line in handle:
            if line.endswith(b"\n"):
                yield json.loads(line)


def finished_ids(output_dir: str | Path) -> set[str]:
    """Ids already written by any shard, so a rerun (even with other --num-shards) never repeats a row."""
    return {record["id"] for path in record_files(output_dir) for record in read_records(path)}


def cut_torn_tail(path: Path) -> None:
    """Truncate a partial last line so the next append starts on a fresh line."""
    with open(path, "rb+") as handle:
        end = handle.seek(0, os.SEEK_END)
        position = end
        while position > 0:
            step = min(65536, position)
            handle.seek(position - step)
            block = handle.read(step)
            newline = block.rfind(b"\n")
            if newline >= 0:
                position = position - step + newline + 1
                break
            position -= step
        if position != end:
            logger.warning("%s: dropping a partial last line (%d bytes) left by an interrupted run", path, end - position)
            handle.truncate(position)


class RecordWriter:
    """Appends whole batches to a shard's JSONL file: one write, flush and fsync per batch."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            cut_torn_tail(path)
        self.handle = open(path, "a", encoding="utf-8")

    def write(self, records: Iterable[dict[str, Any]]) -> None:
        self.handle.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def close(self) -> None:
        self.handle.close()


def write_json_atomic(path: Path, data: Any) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def unique_records(files: Sequence[str]) -> Iterator[dict[str, Any]]:
    seen: set[str] = set()
    for path in files:
        for record in read_records(path):
            if record["id"] not in seen:
                seen.add(record["id"])
                yield record


def merge_records(output_dir: str | Path):
    """All shards' records, each id once, as a dataset saved to OUTPUT_DIR/dataset (save_to_disk) and returned."""
    import datasets

    output_dir = Path(output_dir)
    target = output_dir / DATASET_DIRNAME
    files = [str(p) for p in record_files(output_dir)]
    with tempfile.TemporaryDirectory(dir=output_dir, prefix=".merge-") as cache:
        if any(True for f in files for _ in read_records(f)):
            dataset = datasets.Dataset.from_generator(
                unique_records, gen_kwargs={"files": files}, features=record_features(), cache_dir=cache
            )
        else:
            dataset = datasets.Dataset.from_list([], features=record_features())
        if target.exists():
            shutil.rmtree(target)
        dataset.save_to_disk(str(target))
    logger.info("merged %d records from %d file(s) into %s", len(dataset), len(files), target)
    return datasets.load_from_disk(str(target))


# ----------------------------------------------------------------------------- the build loop


@dataclass
class BuildSummary:
    source_rows: int
    shard_rows: int = 0
    already_done: int = 0
    written: int = 0
    skipped: Counter = field(default_factory=Counter)
    skipped_rows: list[dict[str, Any]] = field(default_factory=list)
    interrupted: bool = False
    elapsed_s: float = 0.0

    def skip(self, index: int, row_id: str | None, error: BadRow) -> None:
        self.skipped[error.reason] += 1
        if len(self.skipped_rows) < MAX_SKIPPED_EXAMPLES:
            self.skipped_rows.append({"index": index, "id": row_id, "reason": error.reason, "detail": str(error)})

    def to_dict(self) -> dict[str, Any]:
        return {
            "source_rows": self.source_rows,
            "shard_rows": self.shard_rows,
            "already_done": self.already_done,
            "written": self.written,
            "skipped_total": sum(self.skipped.values()),
            "skipped": dict(self.skipped),
            "skipped_rows": self.skipped_rows,
            "interrupted": self.interrupted,
            "elapsed_s": round(self.elapsed_s, 3),
            "rows_per_s": round(self.written / self.elapsed_s, 3) if self.elapsed_s else None,
        }


@dataclass
class BuildOptions:
    output_dir: Path
    instructions: Sequence[str]
    seed: int = 0
    batch_size: int = 8
    num_shards: int = 1
    shard_index: int = 0
    require_transcript: bool = False
    progress: bool = True


def duplicate_indices(ids: Sequence[str | None]) -> set[int]:
    """Indices whose id appeared earlier in the source: the first occurrence wins whatever the sharding."""
    seen: set[str] = set()
    duplicates = set()
    for index, row_id in enumerate(ids):
        if row_id is None:
            continue
        if row_id in seen:
            duplicates.add(index)
        seen.add(row_id)
    return duplicates


def fill_transcripts(rows: list[PreparedRow], transcriber: WhisperTranscriber) -> None:
    missing = [row for row in rows if not row.transcript]
    if missing:
        for row, text in zip(missing, transcriber.transcribe([row.audio for row in missing])):
            row.transcript = text


def process_batch(source, columns, indices, ids, generator, transcriber, options: BuildOptions, summary: BuildSummary) -> list[dict[str, Any]]:
    rows = []
    for index, raw in zip(indices, source.fetch(indices)):
        try:
            rows.append(prepare_row(source, raw, index, ids[index], columns))
        except BadRow as error:
            summary.skip(index, ids[index], error)
    if transcriber is not None:
        fill_transcripts(rows, transcriber)
    if options.require_transcript:
        for row in [r for r in rows if not r.transcript]:
            summary.skip(row.index, row.id, BadRow("empty transcript", "--require-transcript is set and the row has none"))
            rows.remove(row)
    if not rows:
        return []
    descriptions = [row.description() for row in rows]
    instructions = [pick_instruction(options.instructions, options.seed, row.id) for row in rows]
    conversations = [generation_messages(d, i) for d, i in zip(descriptions, instructions)]
    batch_seed = row_random(options.seed, rows[0].id, "generation").getrandbits(63)
    responses = generator.generate(conversations, seed=batch_seed)
    return [make_record(row, source.label, d, i, r) for row, d, i, r in zip(rows, descriptions, instructions, responses)]


def build(source, columns: ColumnMap, generator: ResponseGenerator, options: BuildOptions, transcriber: WhisperTranscriber | None = None) -> BuildSummary:
    """Generate records for this shard's rows that are not written yet; write summary(.json) even when interrupted."""
    if not 0 <= options.shard_index < options.num_shards:
        raise ValueError(f"--shard-index must be in [0, {options.num_shards}); got {options.shard_index}")
    check_columns(source, columns)
    started = time.perf_counter()
    ids = source.ids(columns)
    duplicates = duplicate_indices(ids)
    done = finished_ids(options.output_dir)
    summary = BuildSummary(source_rows=len(source))
    pending = []
    for index in range(options.shard_index, len(source), options.num_shards):
        summary.shard_rows += 1
        if ids[index] in done:
            summary.already_done += 1
        elif index in duplicates:
            summary.skip(index, ids[index], BadRow("duplicate id", f"id {ids[index]!r} already used by an earlier row"))
        else:
            pending.append(index)
    logger.info("%d rows in shard %d/%d: %d already written, %d to do", summary.shard_rows, options.shard_index, options.num_shards, summary.already_done, len(pending))
    writer = RecordWriter(shard_file(options.output_dir, options.shard_index, options.num_shards))
    try:
        with tqdm(total=len(pending), unit="row", desc="generating", disable=not options.progress) as bar:
            for indices in chunks(pending, options.batch_size):
                records = process_batch(source, columns, indices, ids, generator, transcriber, options, summary)
                writer.write(records)
                summary.written += len(records)
                bar.update(len(indices))
    except KeyboardInterrupt:
        summary.interrupted = True
        raise
    finally:
        writer.close()
        summary.elapsed_s = time.perf_counter() - started
        write_json_atomic(summary_file(options.output_dir, options.shard_index, options.num_shards), summary.to_dict())
        log_summary(summary)
    return summary


def log_summary(summary: BuildSummary) -> None:
    state = "interrupted" if summary.interrupted else "done"
    logger.info("%s: %d written, %d already done, %d skipped in %.1f s", state, summary.written, summary.already_done, sum(summary.skipped.values()), summary.elapsed_s)
    for reason, count in summary.skipped.most_common():
        logger.warning("skipped %d row(s): %s", count, reason)
