"""Seed descriptions, instructions and chat messages of the DeSTA recipe (one text line per audio segment).

A seed description is what the backbone LLM "hears": `[00:00-00:03] hello there (Gender: Female, Duration: 3s)`.
An instruction drawn from the shipped pool (`instructions.txt`) is asked about it; the LLM's answer becomes the
training target for the real audio.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from processing import DEFAULT_SYSTEM_PROMPT
from processing.audio_io import TARGET_SAMPLING_RATE
from processing.processing_desta import REFERENCE_AUDIO_LOCATOR

from ..files import read_text

logger = logging.getLogger(__name__)

GENERATION_SYSTEM_PROMPT = (
    "Imagine you can hear the audio clips. The audio clips are wrapped between <start_audio> and <end_audio>. "
    "Focus on the audio clips and respond directly to the prompts."
)
DEFAULT_INSTRUCTIONS = Path(__file__).with_name("instructions.txt")


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


def load_instructions(path: str | Path | None = None) -> list[str]:
    """One instruction per non-blank line, duplicates dropped (first kept)."""
    path = Path(path or DEFAULT_INSTRUCTIONS)
    lines = (line.strip() for line in read_text(path).splitlines())
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


def training_messages(transcript: str | None, instruction: str) -> list[dict[str, Any]]:
    """The chat the audio model trains on, in DeSTA-AQA5M's layout: string content with the `<|AUDIO|>` locator
    and an `audios` list of `{"text": transcript}`.

    Every message has the same three keys (the system message an empty `audios`), so Arrow stores no null keys.
    The audio entry names no file: the clip is the record's `audio` column (a `datasets.Audio` value), which the
    training collator hands to the entry. AQA5M's entries name a relative path instead, which only resolves
    with `--audio_root` on the machine that holds the corpus.
    """
    return [
        {"role": "system", "content": DEFAULT_SYSTEM_PROMPT, "audios": []},
        {
            "role": "user",
            "content": f"{REFERENCE_AUDIO_LOCATOR}\n\n{instruction}",
            "audios": [{"text": transcript or ""}],
        },
    ]


def record_features():
    """The `datasets` schema of a merged record: `audio` decodes to 16 kHz wherever the dataset is loaded."""
    from datasets import Audio, Features, List, Value

    text = Value("string")
    return Features(
        {
            "id": text,
            "dataset": text,
            "audio": Audio(sampling_rate=TARGET_SAMPLING_RATE),
            "transcript": text,
            "seed_description": text,
            "prompt": text,
            "response": text,
            "messages": List({"role": text, "content": text, "audios": List({"text": text})}),
        }
    )
