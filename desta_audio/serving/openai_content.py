"""OpenAI chat messages as DeSTA chats: `input_audio` and `audio_url` content parts become audio items.

An audio part may carry its transcript (`"transcript": "..."`, or `null` to have the server transcribe); the
transcripts of a whole request may instead come as one list (`mm_processor_kwargs={"transcripts": [...]}`), one
entry per audio part in order. Anything but text and audio is refused with the part's type named.
"""

import base64
import binascii
import re

# `data:[<media type>][;base64],<data>`: how OpenAI clients inline a file in `audio_url`.
DATA_URL = re.compile(r"data:(?P<media>[^;,]*)(?P<params>(;[^;,]*)*),(?P<data>.*)", re.DOTALL | re.IGNORECASE)


class ContentError(ValueError):
    """A chat message or content part the server cannot take; the message names it."""


def desta_conversation(messages: list, transcripts: list | None = None) -> list[dict]:
    """`messages` (OpenAI chat format) with audio parts as DeSTA audio items; `transcripts`, when given, are set on
    the audio items in order and must match their count."""
    conversation = [_desta_message(message, index) for index, message in enumerate(messages)]
    audio_items = [item for message in conversation for item in _content_items(message) if item["type"] == "audio"]
    if transcripts is not None:
        if not isinstance(transcripts, list) or len(transcripts) != len(audio_items):
            count = len(transcripts) if isinstance(transcripts, list) else type(transcripts).__name__
            raise ContentError(
                f"mm_processor_kwargs.transcripts must be a list with one entry (a string, or null to transcribe) "
                f"per audio part: got {count} for {len(audio_items)} audio parts."
            )
        for item, transcript in zip(audio_items, transcripts):
            item["transcript"] = transcript
    return conversation


def _content_items(message: dict) -> list:
    return message["content"] if isinstance(message["content"], list) else []


def _desta_message(message, index: int) -> dict:
    if hasattr(message, "model_dump"):
        message = message.model_dump(exclude_none=True)
    if not isinstance(message, dict):
        raise ContentError(
            f"Message {index} must be an object with 'role' and 'content'; got {type(message).__name__}."
        )
    content = message.get("content")
    if isinstance(content, (list, tuple)):
        message = {**message, "content": [_desta_part(part, index) for part in content]}
    return message


def _desta_part(part, index: int) -> dict:
    if not isinstance(part, dict) or not isinstance(part.get("type"), str):
        raise ContentError(f"Message {index}: content parts must be objects with a 'type'; got {part!r:.80}.")
    kind = part["type"]
    if kind == "text":
        return part
    if kind == "input_audio":
        item = {"type": "audio", "audio": _input_audio_bytes(part.get("input_audio"), index)}
    elif kind == "audio_url":
        item = {"type": "audio", **_audio_url_source(part.get("audio_url"), index)}
    elif kind == "audio":  # already a DeSTA item (e.g. from `LLM.chat` in Python): its source is checked later
        return part
    else:
        raise ContentError(
            f"Message {index}: DeSTA takes 'text', 'input_audio' and 'audio_url' content parts; got {kind!r}."
        )
    if "transcript" in part:
        item["transcript"] = part["transcript"]
    return item


def _input_audio_bytes(payload, index: int) -> bytes:
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), str):
        raise ContentError(f"Message {index}: an input_audio part needs 'input_audio': {{'data': <base64>, ...}}.")
    return _b64decode(payload["data"], f"Message {index}: input_audio data")


def _audio_url_source(payload, index: int) -> dict:
    url = payload.get("url") if isinstance(payload, dict) else payload
    if not isinstance(url, str) or not url:
        raise ContentError(f"Message {index}: an audio_url part needs 'audio_url': {{'url': ...}}.")
    match = DATA_URL.fullmatch(url)
    if match is None:
        return {"url": url}
    if ";base64" not in match["params"].lower():
        raise ContentError(f"Message {index}: a data: audio URL must be base64 (data:audio/wav;base64,...).")
    return {"audio": _b64decode(match["data"], f"Message {index}: the data: URL")}


def _b64decode(data: str, where: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ContentError(f"{where} is not valid base64.") from None


def openai_messages(conversation: list[dict]) -> tuple[list[dict], list]:
    """A DeSTA chat as OpenAI messages (audio as `input_audio`, read here; URLs as `audio_url`), and the audio
    items' transcripts in order (None: the server transcribes)."""
    messages, transcripts = [], []
    for message in conversation:
        content = message.get("content")
        if isinstance(content, list):
            parts = []
            for item in content:
                if item.get("type") == "audio":
                    parts.append(_openai_audio_part(item))
                    transcripts.append(item.get("transcript"))
                else:
                    parts.append(item)
            message = {**message, "content": parts}
        messages.append(message)
    return messages, transcripts


def _openai_audio_part(item: dict) -> dict:
    if item.get("url"):
        return {"type": "audio_url", "audio_url": {"url": item["url"]}}
    data = item.get("audio")
    if data is None and item.get("path") is not None:
        with open(item["path"], "rb") as handle:
            data = handle.read()
    if data is None and item.get("array") is not None:
        data = _wav_bytes(item["array"], item.get("sampling_rate", 16000))
    if not isinstance(data, (bytes, bytearray)):
        raise ContentError(f"An audio item needs a path, bytes, an array or a URL to send; got keys {sorted(item)}.")
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode(), "format": "wav"}}


def _wav_bytes(array, sampling_rate: int) -> bytes:
    """A float array as 32-bit float WAV (lossless for the model's float32 input)."""
    import io

    import numpy as np
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, np.asarray(array, dtype=np.float32), int(sampling_rate), format="WAV", subtype="FLOAT")
    return buffer.getvalue()
