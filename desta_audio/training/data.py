"""The training data of `train_sft.py`: a Hub dataset, a `build_dataset.py` folder or local files, as a
`DatasetDict`."""

from __future__ import annotations

import logging
from pathlib import Path

from ..dataset_loading import jsonl_dataset, load_dataset_from
from .arguments import DestaScriptArguments

logger = logging.getLogger(__name__)

DATA_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}


def load_sft_dataset(script_args: DestaScriptArguments):
    """A `DatasetDict` (or `IterableDatasetDict` when streaming) from a Hub id, a build_dataset.py folder,
    a `save_to_disk` folder, any local dataset folder, or `--data_files`."""
    import datasets

    name, files, streaming = script_args.dataset_name, script_args.data_files, script_args.dataset_streaming
    if missing := [f for f in files or [] if is_local_file_name(f) and not Path(f).is_file()]:
        raise FileNotFoundError(f"--data_files {missing[0]}: no such file")
    if files and all(Path(f).suffix.lower() == ".jsonl" for f in files) and name in (None, "json"):
        loaded = jsonl_dataset(files, streaming)
    elif files:
        builder = name or data_file_builder(files)
        loaded = datasets.load_dataset(
            builder, name=script_args.dataset_config, data_files=list(files), streaming=streaming
        )
    elif name is None:
        raise ValueError("Give --dataset_name (Hub id or folder) or --data_files.")
    else:
        loaded = load_dataset_from(name, script_args.dataset_config, streaming)
    dataset = as_dataset_dict(loaded, script_args.dataset_train_split)
    check_has_records(dataset, script_args)
    return dataset


def check_has_records(dataset, script_args: DestaScriptArguments) -> None:
    """Name a training split without records (an empty file, blank lines only, every line skipped) before the
    trainer fails on it with "Please pass `features` or at least one example". A streamed split is not counted."""
    import datasets

    split = script_args.dataset_train_split
    train = dataset.get(split)
    if not isinstance(train, datasets.Dataset) or len(train):
        return
    files = script_args.data_files
    source = f"--data_files {' '.join(files)}" if files else f"--dataset_name {script_args.dataset_name}"
    raise ValueError(
        f"{source}: split {split!r} has no records (an empty file, only blank lines, or every line skipped); "
        "training needs at least one record."
    )


def is_local_file_name(name: str) -> bool:
    """Not a URL (hf://, https://) or a glob pattern, which `datasets` resolves itself."""
    return "://" not in name and not any(c in name for c in "*?[")


def data_file_builder(files: list[str]) -> str:
    suffixes = {Path(f).suffix.lower() for f in files}
    builders = {DATA_FILE_BUILDERS.get(s) for s in suffixes}
    if len(builders) != 1 or None in builders:
        raise ValueError(
            f"Cannot tell one datasets builder from the data file types {sorted(suffixes)}; give --dataset_name (e.g. json)."
        )
    return builders.pop()


def as_dataset_dict(loaded, split: str):
    import datasets

    if isinstance(loaded, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        return loaded
    if isinstance(loaded, datasets.IterableDataset):
        return datasets.IterableDatasetDict({split: loaded})
    return datasets.DatasetDict({split: loaded})
