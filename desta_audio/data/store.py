"""The builder's output folder: one crash-safe JSONL shard per process under `records/`, merged into a
`datasets` dataset under `dataset/`. A rerun resumes by id from the shards.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

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
    """All shards' records, each id once, as a dataset saved to OUTPUT_DIR/dataset (save_to_disk) and returned."""
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
