"""Loading `datasets` data from wherever it is (a `save_to_disk` folder, a `build_dataset.py` output folder, local
files, a Hub id), one split of it, and audio paths relative to an audio root."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .files import read_jsonl

logger = logging.getLogger(__name__)

# How a `build_dataset.py` output folder is laid out: JSONL shards as they are generated, then the merged dataset.
# Read here, written by `desta_audio.data.store` (which imports these, so the arrow points down).
BUILD_RECORDS_SUBDIR = "records"
BUILD_DATASET_SUBDIR = "dataset"

SAVED_DATASET_MARKERS = ("state.json", "dataset_info.json", "dataset_dict.json")


def is_saved_dataset(folder: str | os.PathLike) -> bool:
    """A folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`."""
    return any((Path(folder) / marker).exists() for marker in SAVED_DATASET_MARKERS)


def load_dataset_from(name_or_dir: str | os.PathLike, config: str | None = None, streaming: bool = False):
    """A `datasets` dataset from wherever it is: a `save_to_disk` folder, a `build_dataset.py` output folder
    (its saved `dataset/`, else its `records/*.jsonl` shards), any local data folder, or a Hub id."""
    import datasets

    folder = Path(name_or_dir)
    if folder.is_dir():
        for candidate in (folder / BUILD_DATASET_SUBDIR, folder):
            if is_saved_dataset(candidate):
                loaded = datasets.load_from_disk(str(candidate))
                return loaded.to_iterable_dataset() if streaming and isinstance(loaded, datasets.Dataset) else loaded
        shards = sorted((folder / BUILD_RECORDS_SUBDIR).glob("*.jsonl"))
        if shards:
            return jsonl_dataset(shards, streaming)
        return datasets.load_dataset(str(folder), config, streaming=streaming)
    return datasets.load_dataset(os.fspath(name_or_dir), config, streaming=streaming)


def _jsonl_records(files: list[str], signature: list) -> Iterator[dict[str, Any]]:
    for path in files:
        yield from read_jsonl(path)


def jsonl_dataset(files: Sequence[str | os.PathLike], streaming: bool = False):
    """A `datasets` dataset of JSONL files read like `read_jsonl`: a torn last line (an interrupted writer) is
    skipped with a warning, a bad line elsewhere is an error naming the file and line; files without a record give
    an empty dataset. The cache is keyed to the files' sizes and modification times, so an edited file is read
    again."""
    import datasets
    from datasets.arrow_writer import SchemaInferenceError

    files = [os.fspath(f) for f in files]
    signature = [(f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files]
    if streaming:
        return datasets.IterableDataset.from_generator(
            _jsonl_records, gen_kwargs={"files": files, "signature": signature}
        )
    try:
        return datasets.Dataset.from_generator(_jsonl_records, gen_kwargs={"files": files, "signature": signature})
    except datasets.exceptions.DatasetGenerationError as error:
        if isinstance(error.__cause__, SchemaInferenceError):  # no record at all: the caller names what is empty
            return datasets.Dataset.from_list([])
        if isinstance(error.__cause__, ValueError):  # read_jsonl's message names the file and line
            raise error.__cause__ from None
        raise


def select_split(loaded, split: str):
    """One split of a loaded dataset (a single `Dataset` is its own only split)."""
    import datasets

    if not isinstance(loaded, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        return loaded
    if split not in loaded:
        raise ValueError(f"the dataset has no split {split!r}; it has {sorted(loaded)}")
    return loaded[split]


def resolve_audio_path(value: Any, audio_root: str | os.PathLike | None) -> Any:
    """Join a relative local path to `audio_root`; absolute paths, URLs and non-path values pass through."""
    if not isinstance(value, (str, os.PathLike)):
        return value
    value = os.fspath(value)
    if audio_root is None or "://" in value or os.path.isabs(value):
        return value
    return os.path.normpath(os.path.join(os.fspath(audio_root), value))
