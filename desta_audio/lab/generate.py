"""Write a lab split: its clips (espeak-ng and sox, in parallel), a metadata CSV that `build_dataset.py` takes as
it is, and the split's questions (train: the labels JSONL and the instruction pool; probe: `probe.jsonl`, the
hearing preset's data).

    OUT/train/audio/*.wav  metadata.csv  labels.jsonl  instructions.txt  lab.json
    OUT/probe/audio/*.wav  metadata.csv  probe.jsonl  lab.json
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm.auto import tqdm

from ..files import write_jsonl_atomic
from .catalog import SPLITS
from .plan import Clip, clip_counts, plan_clips
from .questions import instruction_pool, label_records, probe_records
from .synth import check_tools, sox_silence, sox_synth, speak

logger = logging.getLogger(__name__)

METADATA_FILE = "metadata.csv"
LABELS_FILE = "labels.jsonl"
INSTRUCTIONS_FILE = "instructions.txt"
PROBE_FILE = "probe.jsonl"
MANIFEST_FILE = "lab.json"
# The columns that become the seed description's attributes (`build_dataset.py --attribute-columns`), in this order.
ATTRIBUTE_COLUMNS = ("gender", "speaking_speed", "audio_category", "pitch", "frequency")
METADATA_COLUMNS = (
    "file", "transcript", *ATTRIBUTE_COLUMNS, "sound_type", "group", "voice", "words_per_minute", "espeak_pitch",
    "hz", "seconds", "volume",
)  # fmt: skip
DEFAULT_CLIPS = {"train": 600, "probe": 240}


def attributes(clip: Clip) -> dict[str, str]:
    """The description attributes the metadata states for `clip` (blank ones left out, as the builder leaves them)."""
    values = {
        "gender": clip.sex,
        "speaking_speed": clip.speed,
        "audio_category": clip.audio_category,
        "pitch": clip.pitch,
        "frequency": f"{clip.hz} Hz" if clip.hz else "",
    }
    return {column: values[column] for column in ATTRIBUTE_COLUMNS if values[column]}


def metadata_row(clip: Clip) -> dict[str, object]:
    row = {
        "file": clip.file,
        "transcript": clip.text,
        **attributes(clip),
        "sound_type": clip.kind,
        "group": clip.group,
        "voice": clip.voice,
        "words_per_minute": clip.words_per_minute or "",
        "espeak_pitch": clip.espeak_pitch or "",
        "hz": clip.hz or "",
        "seconds": clip.seconds or "",
        "volume": clip.volume or "",
    }
    return {column: row.get(column, "") for column in METADATA_COLUMNS}


def render_clip(clip: Clip, folder: Path) -> None:
    path = folder / clip.file
    if clip.kind == "speech":
        speak(path, clip.text, voice=f"en+{clip.voice}", speed=clip.words_per_minute, pitch=clip.espeak_pitch)
    elif clip.kind == "tone":
        sox_synth(path, clip.seconds, "sine", clip.hz, volume=clip.volume)
    elif clip.kind == "noise":
        sox_synth(path, clip.seconds, f"{clip.noise}noise", volume=clip.volume)
    else:
        sox_silence(path, clip.seconds)


def prepare_folder(folder: Path) -> None:
    """An empty split folder: a lab split written before is replaced; a non-empty folder of anything else is refused
    (never deleted)."""
    if folder.exists() and any(folder.iterdir()):
        if not (folder / MANIFEST_FILE).is_file():
            raise FileExistsError(f"{folder} is not empty and holds no {MANIFEST_FILE}: give an empty or new folder")
        shutil.rmtree(folder)
    (folder / "audio").mkdir(parents=True, exist_ok=True)


def render_clips(clips: list[Clip], folder: Path, jobs: int) -> None:
    """Every clip, `jobs` synthesizer processes at a time."""
    with (
        ThreadPoolExecutor(max_workers=jobs) as pool,
        tqdm(total=len(clips), unit="clip", desc=f"lab {folder.name}") as progress,
    ):
        for _ in pool.map(lambda clip: render_clip(clip, folder), clips):
            progress.update()


def write_metadata(clips: list[Clip], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=METADATA_COLUMNS)
        writer.writeheader()
        writer.writerows(metadata_row(clip) for clip in clips)


def write_split(output_dir: str | Path, split: str, clips_total: int, seed: int = 0, jobs: int = 2) -> dict:
    """Plan, render and describe one split in `output_dir/split`; returns its manifest (also `lab.json`)."""
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1; got {jobs}")
    clip_counts(clips_total)  # a size out of bounds is refused before anything is touched
    check_tools()
    folder = Path(output_dir) / split
    prepare_folder(folder)
    started = time.monotonic()
    clips = plan_clips(split, clips_total, seed)
    render_clips(clips, folder, jobs)
    write_metadata(clips, folder / METADATA_FILE)
    if split == "train":
        records = label_records(clips, seed)
        write_jsonl_atomic(folder / LABELS_FILE, records)
        (folder / INSTRUCTIONS_FILE).write_text("\n".join(instruction_pool()) + "\n", encoding="utf-8")
    else:
        records = probe_records(clips, seed, attributes)
        write_jsonl_atomic(folder / PROBE_FILE, records)
    seconds = time.monotonic() - started
    manifest = {
        "split": split,
        "seed": seed,
        "clips": len(clips),
        "counts": clip_counts(clips_total),
        "records": len(records),
        "attribute_columns": list(ATTRIBUTE_COLUMNS),
        "seconds": round(seconds, 1),
    }
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    logger.info("%s: %d clips, %d records in %.1f s (%.0f clips/s)", folder, len(clips), len(records), seconds,
                len(clips) / max(seconds, 1e-9))  # fmt: skip
    return manifest


def make_lab(
    output_dir: str | Path,
    splits: tuple[str, ...] = SPLITS,
    clips: dict[str, int] | None = None,
    seed: int = 0,
    jobs: int = 2,
) -> list[dict]:
    """Write the given splits (default: train and probe, `DEFAULT_CLIPS` each); returns their manifests."""
    if Path(output_dir).exists() and not Path(output_dir).is_dir():
        raise NotADirectoryError(f"{output_dir} is a file; the lab writes its splits into a folder")
    sizes = {**DEFAULT_CLIPS, **(clips or {})}
    unknown = [split for split in splits if split not in SPLITS]
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}; the lab writes {', '.join(SPLITS)}")
    return [write_split(output_dir, split, sizes[split], seed, jobs) for split in splits]
