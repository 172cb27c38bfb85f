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
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from processing.audio_io import TARGET_SAMPLING_RATE

from ..dataset_loading import BUILD_DATASET_SUBDIR, BUILD_RECORDS_SUBDIR
from ..files import read_jsonl, write_json_atomic
from .descriptions import record_features

logger = logging.getLogger(__name__)

SETTINGS_FILE = "build_settings.json"


class BuildLockedError(RuntimeError):
    """Another process is building the same shard, or the same folder with another shard layout."""


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
        fresh = output_dir / f".{BUILD_DATASET_SUBDIR}.new-{os.getpid()}"
        dataset.save_to_disk(str(fresh))
    swap_in(fresh, target)
    logger.info("merged %d records from %d file(s) into %s", len(dataset), len(files), target)
    return datasets.load_from_disk(str(target))


def swap_in(fresh: Path, target: Path) -> None:
    """Replace `target` by the fully written `fresh` folder: the old one is removed only after the new is in place."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(fresh, target)
    if old.exists():
        shutil.rmtree(old)


# ----------------------------------------------------------------------------- settings fingerprint and locks
def check_build_settings(output_dir: str | Path, settings: dict[str, Any], force: bool = False) -> None:
    """Record the settings that shape the records; refuse to add to a folder built with other ones (or `force`).

    Resuming with another seed, model, prompt pool or column mapping would silently mix two datasets in one.
    """
    path = Path(output_dir) / SETTINGS_FILE
    settings = json.loads(json.dumps(settings, default=str))
    with _FileLock(path.with_suffix(".lock")):  # shards starting together see one settings file
        _compare_and_record(path, settings, force)


def _compare_and_record(path: Path, settings: dict[str, Any], force: bool) -> None:
    output_dir = path.parent
    if path.exists():
        saved = json.loads(path.read_text(encoding="utf-8"))
        changed = {
            key: {"saved": saved.get(key), "now": settings.get(key)} for key in sorted(set(saved) | set(settings))
        }
        changed = {key: value for key, value in changed.items() if value["saved"] != value["now"]}
        if changed and not force:
            raise ValueError(
                f"{output_dir} holds records built with other settings ({path.name}): {changed}. Resume with the "
                "same settings, use another --output-dir, or pass --force to mix them anyway."
            )
        if changed:
            logger.warning("--force: adding records built with other settings to %s: %s", output_dir, changed)
    elif record_files(output_dir):
        logger.warning("%s has records but no %s (an older run); recording the current settings", output_dir, path.name)
    write_json_atomic(path, settings)


class _FileLock:
    """An exclusive `flock` on a file, released on exit (and by the OS when the process dies, even on kill -9).

    `blocking=False` raises `BlockingIOError` at once when another process holds it.
    """

    def __init__(self, path: Path, blocking: bool = True):
        self.path = path
        self.blocking = blocking
        self.handle = None

    def acquire(self):
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if self.blocking else fcntl.LOCK_NB))
        except BaseException:
            handle.close()
            raise
        self.handle = handle
        return self

    def release(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()


class ShardLock(_FileLock):
    """An exclusive, non-blocking lock on one shard of an output folder: a second builder of it fails clearly."""

    def __init__(self, output_dir: str | Path, shard_index: int, num_shards: int):
        super().__init__(shard_file(output_dir, shard_index, num_shards).with_suffix(".lock"), blocking=False)
        self.shard = f"shard {shard_index}/{num_shards}"

    def acquire(self) -> ShardLock:
        try:
            return super().acquire()
        except BlockingIOError:
            raise BuildLockedError(
                f"another process is building {self.shard} into {self.path.parent.parent} (lock {self.path}); "
                "wait for it, or run a different --shard-index"
            ) from None


class LayoutLock:
    """The shard layout a folder is being built with: builders of one layout (`--num-shards N`, any index) run side by
    side; a builder of another layout while they run fails clearly, since both would generate the same rows.

    Each builder holds a shared lock on `records/layout-of-N.lock`, taken *before* it checks that no other layout's
    lock is held, so of two layouts starting together at least one sees the other.
    """

    def __init__(self, output_dir: str | Path, num_shards: int):
        self.folder = records_dir(output_dir)
        self.num_shards = num_shards
        self.handle = None

    def acquire(self) -> LayoutLock:
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.folder / f"layout-of-{self.num_shards:05d}.lock", "a+")
        fcntl.flock(self.handle.fileno(), fcntl.LOCK_SH)
        for other in sorted(self.folder.glob("layout-of-*.lock")):
            if other.name != Path(self.handle.name).name and _held(other):
                self.release()
                raise BuildLockedError(
                    f"another process is building {self.folder.parent} with another shard layout ({other.stem}); "
                    f"wait for it, or use its --num-shards instead of {self.num_shards}"
                )
        return self

    def release(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None

    def __enter__(self) -> LayoutLock:
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()


def _held(path: Path) -> bool:
    """Whether any process holds a lock on `path` (tested with a non-blocking exclusive lock, released at once)."""
    import fcntl

    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        return False
