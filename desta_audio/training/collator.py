"""Training batches for supervised fine-tuning: records with audio -> `input_ids`, `labels`, `input_features`.

A record is a chat whose last turn is the target answer, in either format the processor reads:
    HF style: `messages` = system + user (content lists with `{"type": "audio", "path": ...}` items) and a
        separate `response`;
    DeSTA-AQA5M reference style (also what build_dataset.py writes): string content with `<|AUDIO|>` locators
        (or the authors' `<start_audio><|AUDIO|><end_audio>`, the same thing) and an `audios` list of
        `{"audio": relpath, "text": transcript}` entries, plus `response`. build_dataset.py's entries carry only
        `text`: their audio is the record's `audio` column.
A final assistant message may stand in for `response`. Audio may be a path (relative ones are joined to
`audio_root`), a URL, an array item (`{"array", "sampling_rate"}`), a `datasets` Audio value, or missing from
the item and taken, in order, from the record's `audio_column`.

Labels cover the response tokens and the chat template's end-of-turn token only. A record is never cut: one
longer than `max_length`, or whose audio is missing or undecodable, raises `BadRecordError` (the default,
`on_bad_record="error"`) or is skipped with a warning and counted in `collator.skipped`
(`on_bad_record="skip"`). A record without any audio is a bad record too: DeSTA training is audio-grounded,
and a text-only row usually means the audio reference was lost upstream.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from processing.audio_io import AUDIO_SOURCE_KEYS, audio_source
from processing.processing_desta import REFERENCE_AUDIO_LOCATOR, DestaProcessor

from ..dataset_loading import resolve_audio_path

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
BAD_RECORD_POLICIES = ("error", "skip")
PADDING_SIDES = ("left", "right")


class BadRecordError(ValueError):
    """A record that cannot become a training example as it is; `reason` is a short key for counting."""

    def __init__(self, record_id: str, reason: str, detail: str):
        super().__init__(f"record {record_id!r}: {detail}")
        self.record_id = record_id
        self.reason = reason


@dataclass
class SFTExample:
    """A normalised record: the prompt messages (processor format) and the target response."""

    id: str
    messages: list[dict[str, Any]]
    response: str


@dataclass
class EncodedExample:
    input_ids: list[int]
    labels: list[int]
    input_features: torch.Tensor  # (windows, n_mels, frames)


# ----------------------------------------------------------------------------- records


def record_id(record: dict[str, Any], fallback: str = "?") -> str:
    value = record.get("id")
    return fallback if value is None else str(value)


def message_text(content: Any) -> str:
    """The text of a message's content: a string, or the text items of a content list joined by blank lines."""
    if isinstance(content, str):
        return content
    return "\n\n".join(item.get("text") or "" for item in content if item.get("type") == "text")


def split_response(record: dict[str, Any], rid: str) -> tuple[list[dict[str, Any]], str]:
    """(prompt messages, response): `response` is the target unless the chat already ends with the answer."""
    messages = list(record.get("messages") or [])
    if not messages:
        raise BadRecordError(rid, "no_messages", "has no messages")
    response = record.get("response")
    ends_with_answer = messages[-1].get("role") == "assistant"
    if response is not None and ends_with_answer:
        raise BadRecordError(rid, "two_targets", "has both a final assistant message and a 'response'; keep one")
    if response is None:
        if not ends_with_answer:
            raise BadRecordError(rid, "no_response", "has no 'response' and its messages do not end with the assistant")
        response = message_text(messages.pop()["content"])
    if not str(response).strip():
        raise BadRecordError(rid, "empty_response", "has an empty response")
    return messages, str(response)


def _has_source(item: dict[str, Any], keys: tuple[str, ...]) -> bool:
    return any(item.get(key) is not None for key in keys)


class _RecordAudio:
    """Hands out the record-level audio values (a single value or a list) to items that carry none."""

    def __init__(self, value: Any, rid: str):
        self.values = list(value) if isinstance(value, (list, tuple)) else ([] if value is None else [value])
        self.rid = rid

    def next(self) -> Any:
        if not self.values:
            raise BadRecordError(
                self.rid, "missing_audio", "has an audio item with no audio and no record-level audio left"
            )
        return self.values.pop(0)


def _clean_item(item: dict[str, Any]) -> dict[str, Any]:
    """Drop the null keys Arrow adds to unify item schemas (a text item gets `path=None`, and so on)."""
    return {key: value for key, value in item.items() if value is not None}


def normalize_audio_item(
    item: dict[str, Any], audio_root, record_audio: _RecordAudio, source_keys=AUDIO_SOURCE_KEYS
) -> dict[str, Any]:
    """A content item (or, with `source_keys=("audio", "path")`, a reference `audios` entry) with its audio
    resolved: taken from the record when the item names none, relative paths joined to `audio_root`."""
    item = _clean_item(item)
    if not _has_source(item, source_keys):
        item["audio"] = record_audio.next()
    for key in ("path", "audio"):
        if key in item:
            item[key] = resolve_audio_path(item[key], audio_root)
    return item


def normalize_message(message: dict[str, Any], audio_root, record_audio: _RecordAudio) -> dict[str, Any]:
    content = message["content"]
    if isinstance(content, str):
        normalized = {"role": message["role"], "content": content}
        if message.get("audios"):
            normalized["audios"] = [
                normalize_audio_item(e, audio_root, record_audio, ("audio", "path")) for e in message["audios"]
            ]
        return normalized
    items = []
    for item in content:
        if item.get("type") == "audio":
            items.append(normalize_audio_item(item, audio_root, record_audio))
        else:
            items.append(_clean_item(item))
    return {"role": message["role"], "content": items}


def unwrap_audio_locators(messages: list[dict[str, Any]], start: str, end: str) -> list[dict[str, Any]]:
    """`<start_audio><|AUDIO|><end_audio>` (the authors' training-record format) -> `<|AUDIO|>`: the processor adds
    the markers around every audio itself, so a wrapped locator would train on doubled markers."""
    wrapped = f"{start}{REFERENCE_AUDIO_LOCATOR}{end}"
    return [
        {**m, "content": m["content"].replace(wrapped, REFERENCE_AUDIO_LOCATOR)} if isinstance(m["content"], str) else m
        for m in messages
    ]


def _mentions_audio(message: dict[str, Any]) -> bool:
    content = message.get("content")
    if isinstance(content, str):
        return bool(message.get("audios"))
    return any(item.get("type") == "audio" for item in content or [])


def normalize_record(
    record: dict[str, Any], audio_root: str | os.PathLike | None = None, audio_column: str = "audio"
) -> SFTExample:
    """One dataset row (any supported format) -> `SFTExample` with resolved audio references."""
    rid = record_id(record)
    messages, response = split_response(record, rid)
    record_audio = _RecordAudio(record.get(audio_column), rid)
    has_item_audio = any(_mentions_audio(m) for m in messages)
    if not has_item_audio and record_audio.values:
        raise BadRecordError(
            rid, "unplaced_audio", f"has {audio_column!r} audio but no audio item or locator in its messages"
        )
    normalized = [normalize_message(m, audio_root, record_audio) for m in messages]
    return SFTExample(id=rid, messages=normalized, response=response)


# ----------------------------------------------------------------------------- the collator


@dataclass
class DestaSFTCollator:
    """Builds training batches from raw records, decoding audio on the fly (runs in DataLoader workers).

    Returns `input_ids`, `attention_mask`, `labels` (padded with -100) and `input_features` (every 30 s window
    of every clip, in placeholder order); with left padding also `position_ids`, so padded rows get the same
    positions, hence the same loss, as with right padding.
    """

    processor: DestaProcessor
    audio_root: str | os.PathLike | None = None
    audio_column: str = "audio"
    max_length: int | None = None
    padding_side: str = "right"
    on_bad_record: str = "error"
    skipped: Counter = field(default_factory=Counter)
    replacements: Any = None  # a map-style dataset that skipped records are replaced from (on_bad_record="skip")
    seed: int = 0
    max_replacement_draws: int = 64

    def __post_init__(self):
        if self.on_bad_record not in BAD_RECORD_POLICIES:
            raise ValueError(f"on_bad_record must be one of {BAD_RECORD_POLICIES}, got {self.on_bad_record!r}.")
        if self.padding_side not in PADDING_SIDES:
            raise ValueError(f"padding_side must be one of {PADDING_SIDES}, got {self.padding_side!r}.")
        if self.processor.tokenizer.pad_token_id is None:
            raise ValueError("The tokenizer has no pad token; set one (e.g. the end-of-text token) before training.")

    def __call__(self, records: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        encoded = [example for example in map(self._encode_or_skip, records) if example is not None]
        if len(encoded) < len(records) and self.replacements is not None:
            encoded += self._draw_replacements(len(records) - len(encoded))
        if not encoded:
            raise BadRecordError(
                ",".join(record_id(r) for r in records),
                "empty_batch",
                f"every record of this batch was skipped, and so were {self.max_replacement_draws} records drawn "
                "to replace them: the dataset is mostly unusable; check it",
            )
        return self.pad(encoded)

    def _draw_replacements(self, wanted: int) -> list[EncodedExample]:
        """Good records drawn at random from `replacements` in place of skipped ones.

        A batch keeps its size, so no rank of a distributed run waits on a step another skipped, and gradient
        accumulation stays exact; a replaced record is one more sample of the data, never a fabricated one.
        """
        if not hasattr(self, "_rng"):
            import random

            self._rng = random.Random(self.seed)
        found = []
        for _ in range(self.max_replacement_draws):
            if len(found) == wanted:
                break
            example = self._encode_or_skip(self.replacements[self._rng.randrange(len(self.replacements))])
            if example is not None:
                found.append(example)
        return found

    def is_usable(self, record: dict[str, Any]) -> bool:
        """Whether a record encodes (for filtering a streamed dataset); bad ones are counted in `skipped`."""
        return self._encode_or_skip(record) is not None

    def _encode_or_skip(self, record: dict[str, Any]) -> EncodedExample | None:
        try:
            return self.encode(record)
        except BadRecordError as error:
            if self.on_bad_record == "error":
                raise
            self.skipped[error.reason] += 1
            logger.warning("skipping %s (%s; %d skipped so far)", error, error.reason, sum(self.skipped.values()))
            return None

    def encode(self, record: dict[str, Any]) -> EncodedExample:
        """One record -> prompt ids (audio expanded) + response ids, labels on the response only."""
        example = normalize_record(record, self.audio_root, self.audio_column)
        example.messages = unwrap_audio_locators(
            example.messages, self.processor.audio_start_text, self.processor.audio_end_text
        )
        prompt_text, audio_items = self.processor.render_conversation(example.messages, add_generation_prompt=True)
        if not audio_items:
            raise BadRecordError(example.id, "no_audio", "has no audio; DeSTA training needs audio in every record")
        completion_ids = self.completion_ids(example, prompt_text)
        waveforms = [self.load_audio(item, example.id) for item in audio_items]
        try:
            prompt = self.processor(
                text=prompt_text,
                audio=waveforms,
                transcripts=[item.get("transcript") for item in audio_items],
                padding=False,
                add_special_tokens=False,
                return_tensors=None,
            )
        except ValueError as error:  # e.g. a clip over max_audio_seconds
            raise BadRecordError(example.id, "bad_audio", str(error)) from error
        prompt_ids = list(prompt["input_ids"][0])
        length = len(prompt_ids) + len(completion_ids)
        if self.max_length is not None and length > self.max_length:
            raise BadRecordError(
                example.id,
                "too_long",
                f"has {length} tokens (audio included), over max_length={self.max_length}; it is never truncated",
            )
        return EncodedExample(
            input_ids=prompt_ids + completion_ids,
            labels=[IGNORE_INDEX] * len(prompt_ids) + completion_ids,
            input_features=prompt["input_features"],
        )

    def completion_ids(self, example: SFTExample, prompt_text: str) -> list[int]:
        """Token ids of the answer and its end-of-turn marker, as the chat template renders them.

        The template renders the full chat; what follows the generation prompt is the completion. Trailing
        whitespace after the end-of-turn token (e.g. ChatML's newline) is template layout, not something the
        model generates before stopping, so it gets no label.
        """
        answer = {"role": "assistant", "content": [{"type": "text", "text": example.response}]}
        full_text, _ = self.processor.render_conversation([*example.messages, answer], add_generation_prompt=False)
        if not full_text.startswith(prompt_text):
            raise ValueError(
                "The chat template does not render the assistant turn as a continuation of the generation prompt; "
                "cannot tell the response tokens apart."
            )
        ids = self.processor.tokenize_prompts([full_text[len(prompt_text) :].rstrip()])[0]
        if self.processor.audio_token_id in ids:
            raise BadRecordError(
                example.id, "audio_token_in_response", "has the audio placeholder token in its response"
            )
        return ids

    def load_audio(self, item: dict[str, Any], rid: str) -> np.ndarray:
        try:
            return self.processor.load_audio(audio_source(item))
        except (OSError, ValueError) as error:  # missing file, undecodable or empty audio
            reason = "missing_audio" if isinstance(error, FileNotFoundError) else "bad_audio"
            raise BadRecordError(rid, reason, str(error)) from error

    def pad(self, examples: list[EncodedExample]) -> dict[str, torch.Tensor]:
        width = max(len(e.input_ids) for e in examples)
        pad_id = self.processor.tokenizer.pad_token_id
        input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
        for row, example in enumerate(examples):
            length = len(example.input_ids)
            span = slice(width - length, width) if self.padding_side == "left" else slice(0, length)
            input_ids[row, span] = torch.tensor(example.input_ids)
            labels[row, span] = torch.tensor(example.labels)
            attention_mask[row, span] = 1
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "input_features": torch.cat([e.input_features for e in examples]),
        }
        if self.padding_side == "left":
            batch["position_ids"] = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        return batch


__all__ = ["IGNORE_INDEX", "BadRecordError", "DestaSFTCollator", "SFTExample", "normalize_record"]
