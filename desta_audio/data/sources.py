"""Where clips and their metadata come from: a folder of audio files (+ CSV/JSON metadata) or any `datasets`
dataset with an audio column; `prepare_row` turns one raw row into a decoded clip with its seed description.
"""

from __future__ import annotations

import csv
import inspect
import io
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from processing import DestaProcessor
from processing.audio_io import TARGET_SAMPLING_RATE, AudioTooLongError, load_audio

from ..dataset_loading import load_dataset_from, select_split
from ..files import load_jsonl, read_text
from .descriptions import Segment, format_value, parse_segments, seed_description, training_messages

logger = logging.getLogger(__name__)


# DestaProcessor refuses longer clips (so training would), so the builder skips them: the processor's default.
MAX_AUDIO_SECONDS: float = inspect.signature(DestaProcessor).parameters["max_audio_seconds"].default

AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".webm"})


@dataclass(frozen=True)
class SourceColumns:
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

    def ids(self, columns: SourceColumns) -> list[str | None]:
        """The id column, else the relative audio path (DeSTA-AQA5M's `id`); None where the row lacks it."""
        if columns.id:
            return [None if row.get(columns.id) is None else str(row[columns.id]) for row in self.rows]
        return [
            None if row.get(columns.audio) in (None, "") else self.audio_ref(row[columns.audio]) for row in self.rows
        ]


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

    def ids(self, columns: SourceColumns) -> list[str | None]:
        if columns.id:
            return [None if v is None else str(v) for v in self.dataset[columns.id]]
        return [self.fallback_ref(i) for i in range(len(self.dataset))]


def read_metadata(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a CSV/TSV (header required) or JSON Lines file. A short CSV row lacks its last columns."""
    path = Path(path)
    if path.suffix.lower() in (".csv", ".tsv"):
        text = io.StringIO(read_text(path), newline="")
        reader = csv.DictReader(text, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        return [{k: v for k, v in row.items() if k is not None and v is not None} for row in reader]
    return load_jsonl(path)


def scan_audio_dir(audio_dir: str | Path, audio_column: str) -> list[dict[str, str]]:
    """Metadata for a bare folder: one row per audio file, sorted, so row indices are stable across runs."""
    root = Path(audio_dir)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
    return [{audio_column: p.relative_to(root).as_posix()} for p in files]


def folder_source(
    audio_dir: str | Path | None, metadata: str | Path | None, audio_column: str, label: str | None
) -> FolderSource:
    if audio_dir is None and metadata is None:
        raise ValueError("a folder source needs --audio-dir, --metadata or both")
    audio_dir = Path(audio_dir) if audio_dir is not None else Path(metadata).parent
    rows = read_metadata(metadata) if metadata is not None else scan_audio_dir(audio_dir, audio_column)
    if not rows:
        raise ValueError(f"{metadata or audio_dir} holds no {'rows' if metadata else 'audio files'}")
    return FolderSource(audio_dir, rows, label or audio_dir.resolve().name)


def dataset_source(
    name: str | None,
    config: str | None,
    split: str,
    audio_column: str,
    label: str | None,
    load_from_disk: str | None = None,
) -> DatasetSource:
    """A Hub/local `datasets` dataset (`name`) or one saved with save_to_disk (`load_from_disk`)."""
    where = load_from_disk if load_from_disk is not None else name
    dataset = select_split(load_dataset_from(where, config), split)
    default_label = Path(where).resolve().name if load_from_disk is not None else name.rstrip("/").split("/")[-1]
    return DatasetSource(dataset, label or default_label, split, audio_column)


def check_columns(source, columns: SourceColumns) -> None:
    """Fail fast on a column no row has (a typo in a flag), listing the ones that exist."""
    available = source.column_names()
    missing = [c for c in columns.requested() if c not in available]
    if missing:
        raise ValueError(f"column(s) {missing} not found in the source; available: {sorted(available)}")


@dataclass
class PreparedRow:
    index: int
    id: str
    audio_ref: str
    audio: np.ndarray
    transcript: str
    attributes: dict[str, Any]
    segments: list[Segment] | None
    audio_file: str | None = None  # the absolute path of the source's own file, when it has one

    @property
    def duration(self) -> float:
        return len(self.audio) / TARGET_SAMPLING_RATE

    def description(self) -> str:
        return seed_description(self.duration, self.transcript, self.attributes, self.segments)


def decode_audio(source: Any) -> np.ndarray:
    """The clip at 16 kHz; one over MAX_AUDIO_SECONDS is refused from its header, before it is decoded in full."""
    try:
        return load_audio(source, sampling_rate=TARGET_SAMPLING_RATE, max_seconds=MAX_AUDIO_SECONDS)
    except AudioTooLongError as error:
        raise BadRow("clip over max_audio_seconds", f"{error} Skipped: training would refuse it.") from error
    except FileNotFoundError as error:
        raise BadRow("missing audio file", str(error)) from error
    except (ValueError, OSError, RuntimeError) as error:
        raise BadRow("unreadable audio", str(error)) from error


def prepare_row(source, raw: dict[str, Any], index: int, row_id: str | None, columns: SourceColumns) -> PreparedRow:
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
    return PreparedRow(
        index, row_id, audio_ref, audio, transcript or "", attributes, segments, local_audio_file(audio_source)
    )


def local_audio_file(audio_source: Any) -> str | None:
    """The absolute path of a source that is a local file (not a URL, bytes or array), else None."""
    if isinstance(audio_source, (str, os.PathLike)) and os.path.isfile(audio_source):
        return os.path.abspath(audio_source)
    return None


def make_record(
    row: PreparedRow, dataset_label: str, description: str, instruction: str, response: str
) -> dict[str, Any]:
    """A DeSTA-AQA5M record plus `audio` (an absolute path: the merge types it `datasets.Audio`) and `transcript`."""
    if row.audio_file is None:
        raise ValueError(f"row {row.id!r} has no audio file yet; the builder stores in-memory audio first")
    return {
        "id": row.id,
        "dataset": dataset_label,
        "audio": row.audio_file,
        "transcript": row.transcript,
        "seed_description": description,
        "prompt": instruction,
        "response": response,
        "messages": training_messages(row.transcript, instruction),
    }
