"""What several tools share: device and dtype resolution, crash-safe JSONL files, dataset loading, audio paths.

Each idea has its one home here; the training, data and evaluation packages import it from this module.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import Pipeline, TextIteratorStreamer, pipeline

from processing import DestaAudioTextToTextPipeline

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SAVED_DATASET_MARKERS = ("state.json", "dataset_info.json", "dataset_dict.json")
BUILD_DATASET_SUBDIR = "dataset"
BUILD_RECORDS_SUBDIR = "records"


# ----------------------------------------------------------------------------- devices, dtypes, the pipeline
def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """`"auto"` (or None) is the first GPU when there is one, else the CPU; anything else is taken as given."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"unknown device {device!r} ({error}); use cpu, cuda, cuda:N or auto") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r} was asked for, but this torch ({torch.__version__}) sees no CUDA GPU; "
            "use --device cpu or auto"
        )
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None) -> str | torch.dtype | None:
    """A dtype name (`float32`, `bfloat16`, `float16`) as a torch dtype; `"auto"`, None and dtypes pass through."""
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_pipeline(model, processor=None, device: str = "auto", dtype: str = "auto"):
    """The audio-text-to-text pipeline for a folder / Hub id, an in-memory model + processor, or a ready pipeline.

    The tools run this installed package's classes, not the checkpoint's copy of them (remote code): one set of
    classes, so `except AudioTooLongError` and `isinstance(policy, AudioSourcePolicy)` mean what they say.
    """
    if isinstance(model, Pipeline):
        return model
    if isinstance(model, (str, os.PathLike)):
        return pipeline(
            "audio-text-to-text",
            model=os.fspath(model),
            pipeline_class=DestaAudioTextToTextPipeline,
            trust_remote_code=False,
            device=resolve_device(device),
            dtype=dtype,
        )
    if processor is None:
        raise ValueError("An in-memory model needs its processor.")
    return DestaAudioTextToTextPipeline(
        model=model, processor=processor, device=None if device == "auto" else resolve_device(device)
    )


class AnswerStream:
    """Iterate for the answer's text pieces as `generate` makes them; `result` holds the pipeline's output after.

    The pipeline runs on a thread feeding a `TextIteratorStreamer`; an error there is re-raised by the iteration.
    """

    def __init__(self, pipe, conversation: list[dict], kwargs: dict):
        self.streamer = TextIteratorStreamer(pipe.processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.result: dict = {}
        self._errors: list[Exception] = []
        self._thread = threading.Thread(target=self._run, args=(pipe, conversation, kwargs), daemon=True)
        self._thread.start()

    def _run(self, pipe, conversation, kwargs) -> None:
        try:
            self.result.update(pipe(conversation, streamer=self.streamer, **kwargs))
        except Exception as error:
            self._errors.append(error)
            self.streamer.end()

    def __iter__(self) -> Iterator[str]:
        yield from self.streamer
        self._thread.join()
        if self._errors:
            raise self._errors[0]


def chunks(items: Sequence[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive slices of `size` (itertools.batched needs Python 3.12)."""
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


# ----------------------------------------------------------------------------- crash-safe JSONL
def read_jsonl(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Every record of a JSONL file written by `JsonlWriter`.

    A torn last line (a write cut short by a crash: no newline at its end, or not valid JSON) is skipped with a
    warning; a bad line anywhere else is an error naming the file and line.
    """
    path = Path(path)
    lines = path.read_bytes().split(b"\n")
    if lines[-1].strip():
        logger.warning(
            "%s: skipping a last line without its newline (%d bytes), an interrupted write", path, len(lines[-1])
        )
    lines = lines[:-1]
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(lines):
                logger.warning("%s: skipping a torn last line (%d bytes) left by an interrupted run", path, len(line))
                return
            raise ValueError(f"{path}:{number} is not valid JSON ({error.msg}); fix or remove that line.") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number} holds a JSON {type(record).__name__}, not a record object.")
        yield record


def cut_torn_tail(path: str | os.PathLike) -> None:
    """Truncate a partial last line so that the next append starts on a fresh line."""
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
            logger.warning(
                "%s: dropping a partial last line (%d bytes) left by an interrupted run", path, end - position
            )
            handle.truncate(position)


class JsonlWriter:
    """Appends whole batches of records to a JSONL file: one write, flush and fsync per batch.

    A torn last line left by an earlier crash is cut first, so appends never glue onto it.
    """

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            cut_torn_tail(path)
        self.path = path
        self.handle = open(path, "a", encoding="utf-8")

    def write(self, records: Iterable[dict[str, Any]]) -> None:
        self.handle.write("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def close(self) -> None:
        self.handle.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` to a temporary file beside `path`, fsync it, then rename it over `path`: readers never see half
    a file, and a crash leaves the old one whole."""
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_jsonl_atomic(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> None:
    """Rewrite a JSONL file whole (see `write_text_atomic`)."""
    write_text_atomic(path, "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))


# ----------------------------------------------------------------------------- datasets
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
    skipped with a warning, a bad line elsewhere is an error naming the file and line. The cache is keyed to the
    files' sizes and modification times, so an edited file is read again."""
    import datasets

    files = [os.fspath(f) for f in files]
    signature = [(f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files]
    if streaming:
        return datasets.IterableDataset.from_generator(
            _jsonl_records, gen_kwargs={"files": files, "signature": signature}
        )
    try:
        return datasets.Dataset.from_generator(_jsonl_records, gen_kwargs={"files": files, "signature": signature})
    except datasets.exceptions.DatasetGenerationError as error:
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


# ----------------------------------------------------------------------------- audio paths
def resolve_audio_path(value: Any, audio_root: str | os.PathLike | None) -> Any:
    """Join a relative local path to `audio_root`; absolute paths, URLs and non-path values pass through."""
    if not isinstance(value, (str, os.PathLike)):
        return value
    value = os.fspath(value)
    if audio_root is None or "://" in value or os.path.isabs(value):
        return value
    return os.path.normpath(os.path.join(os.fspath(audio_root), value))
