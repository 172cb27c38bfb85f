"""The builder's output folder: one crash-safe JSONL shard per process under `records/`, merged into a
`datasets` dataset under `dataset/`. A rerun resumes by id from the shards.

Records point at their audio by absolute path: the source's own file when it has one (nothing is copied), else
a 16 kHz FLAC the builder writes under `audio/` (a clip that came as bytes or an array, e.g. from a Parquet
dataset). The merged dataset types that column `datasets.Audio(sampling_rate=16000)` with the files' bytes
embedded, so the folder decodes on any machine it is copied to and `Dataset.push_to_hub` uploads the audio with
it. (A path-only Audio column is not an option: `save_to_disk` and `push_to_hub` embed local files themselves.)
The price is one copy of the source audio, in its own encoding, inside `dataset/`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from processing.audio_io import TARGET_SAMPLING_RATE

from ..common import BUILD_DATASET_SUBDIR, BUILD_RECORDS_SUBDIR, read_jsonl
from .descriptions import record_features

logger = logging.getLogger(__name__)


def records_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / BUILD_RECORDS_SUBDIR


def shard_file(output_dir: str | Path, shard_index: int, num_shards: int) -> Path:
    return records_dir(output_dir) / f"shard-{shard_index:05d}-of-{num_shards:05d}.jsonl"


def summary_file(output_dir: str | Path, shard_index: int, num_shards: int) -> Path:
    name = "summary.json" if num_shards == 1 else f"summary-{shard_index:05d}-of-{num_shards:05d}.json"
    return Path(output_dir) / name


def stored_clip(output_dir: str | Path, row_id: str, waveform: np.ndarray) -> str:
    """Write a clip that has no file of its own to OUTPUT_DIR/audio/ as 16 kHz FLAC; its absolute path.

    Named by a hash of the row id, written to a temporary name and renamed, so a rerun overwrites it whole.
    """
    import soundfile

    folder = Path(output_dir).resolve() / "audio"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{hashlib.sha1(row_id.encode('utf-8')).hexdigest()[:20]}.flac"
    temporary = path.with_name(path.name + ".tmp")
    soundfile.write(temporary, waveform, TARGET_SAMPLING_RATE, format="FLAC")
    os.replace(temporary, path)
    return str(path)


def record_files(output_dir: str | Path) -> list[Path]:
    return sorted(records_dir(output_dir).glob("*.jsonl"))


def finished_ids(output_dir: str | Path) -> set[str]:
    """Ids already written by any shard, so a rerun (even with other --num-shards) never repeats a row."""
    return {record["id"] for path in record_files(output_dir) for record in read_jsonl(path)}


def unique_records(files: Sequence[str]) -> Iterator[dict[str, Any]]:
    seen: set[str] = set()
    for path in files:
        for record in read_jsonl(path):
            if record["id"] not in seen:
                seen.add(record["id"])
                yield record


def merge_records(output_dir: str | Path):
    """All shards' records, each id once, as a dataset saved to OUTPUT_DIR/dataset (save_to_disk) and returned;
    `audio` is a `datasets.Audio(sampling_rate=16000)` column with the files' bytes embedded."""
    import datasets

    output_dir = Path(output_dir)
    target = output_dir / BUILD_DATASET_SUBDIR
    files = [str(p) for p in record_files(output_dir)]
    with tempfile.TemporaryDirectory(dir=output_dir, prefix=".merge-") as cache:
        if any(True for f in files for _ in read_jsonl(f)):
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
