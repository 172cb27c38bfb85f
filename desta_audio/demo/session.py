"""What the web demo does, without the web: load the model in the background, check uploads, keep the chat,
stream an answer through the `audio-text-to-text` pipeline.

Nothing here imports Gradio, so the handlers are tested directly and the library never needs it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from modeling_desta.release_desta import RELEASE_REPO_ID
from processing.audio_io import TARGET_SAMPLING_RATE, AudioTooLongError
from processing.audio_sources import AudioSourcePolicy

from ..runtime import AnswerStream, load_pipeline

logger = logging.getLogger(__name__)

# Uploads are strangers' files: decoded from bytes, with the untrusted policy's caps and no paths or URLs.
UPLOAD_POLICY = AudioSourcePolicy.for_input(trusted_input=False)

DEFAULT_MODEL_ID = RELEASE_REPO_ID
MODEL_ENV_VAR = "DESTA_AUDIO_MODEL"  # a Space has no command line: its settings can set the model here
DEFAULT_MAX_UPLOAD_MB = 50
DEFAULT_MAX_NEW_TOKENS = 256
DEFAULT_TOP_P = 0.9

NO_AUDIO = "Add an audio clip first: upload a file or record one with the microphone."
EMPTY_QUESTION = "Type a question about the audio."
MODEL_FAILED = "The model could not be loaded: {error}"


class DemoInputError(ValueError):
    """Input the page can explain to its user (no audio, unreadable or over-long clip, empty question)."""


# ----------------------------------------------------------------------------- the model, loaded in the background
class ModelLoader:
    """Loads the pipeline on a thread so the page can be served, and show progress, while the weights load.

    `model` is a Hub id, a folder (ours, or the authors' release format, which loads as it is), or a ready
    pipeline (tests).
    """

    def __init__(self, model, device: str = "auto", dtype: str = "auto"):
        self.model, self.device, self.dtype = model, device, dtype
        self.pipe, self.error, self.phase = None, None, "waiting to start"
        self.started = time.monotonic()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._load, name="desta-demo-loader", daemon=True)

    def start(self) -> ModelLoader:
        self._thread.start()
        return self

    def _load(self) -> None:
        try:
            self.phase = "loading weights (the authors' release fetches its LLM and Whisper first)"
            self.pipe = load_pipeline(self.model, device=self.device, dtype=self.dtype)
            self.phase = "ready"
        except Exception as error:  # shown in the page; the server keeps running
            logger.exception("Loading %s failed", self.model)
            self.error, self.phase = error, "failed"
        finally:
            self._ready.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout)

    @property
    def ready(self) -> bool:
        return self.pipe is not None

    @property
    def on_cpu(self) -> bool:
        return self.ready and self.pipe.device.type == "cpu"

    def status(self) -> str:
        """One Markdown line for the page: progress while loading, then the model, device and dtype."""
        name = self.model if isinstance(self.model, (str, os.PathLike)) else type(self.model).__name__
        if self.error is not None:
            return "**Error:** " + MODEL_FAILED.format(error=self.error)
        if not self.ready:
            return f"**Loading** `{name}`: {self.phase} ({time.monotonic() - self.started:.0f} s)"
        line = f"**Ready:** `{name}` on **{self.pipe.device}** ({str(self.pipe.model.dtype).removeprefix('torch.')})"
        if self.on_cpu:
            line += ". Running on CPU: answers come slowly."
        return line


# ----------------------------------------------------------------------------- uploads (untrusted)
def clip_name(path: str | os.PathLike) -> str:
    return Path(path).name


def load_clip(path: str | os.PathLike, processor, max_bytes: int) -> np.ndarray:
    """An uploaded or recorded file as a 16 kHz mono waveform, or a `DemoInputError` saying what is wrong.

    Uploads come from strangers: the size is checked before the file is read, and the bytes are decoded under the
    untrusted audio policy (`processing.audio_sources`), which bounds the decoded length by `max_audio_seconds`
    before a whole clip is decoded. This is the one place the demo reads audio.
    """
    path, name = os.fspath(path), clip_name(path)
    if not os.path.isfile(path):
        raise DemoInputError(f"{name} was not received; upload it again.")
    size = os.path.getsize(path)
    if size > max_bytes:
        raise DemoInputError(
            f"{name} is {size / 2**20:.1f} MB; this demo accepts files up to {max_bytes / 2**20:.3g} MB."
        )
    try:
        return processor.load_audio(Path(path).read_bytes(), audio_policy=UPLOAD_POLICY)
    except AudioTooLongError as error:
        raise DemoInputError(too_long(name, processor.max_audio_seconds)) from error
    except Exception as error:
        logger.info("Could not decode %s: %s", path, error)
        raise DemoInputError(f"Could not read {name} as audio. Upload a WAV, FLAC, MP3 or OGG file.") from error


def too_long(name: str, limit: float) -> str:
    return f"{name} is longer than {limit:g} s, the longest clip this demo accepts."


# ----------------------------------------------------------------------------- the chat
@dataclass
class Chat:
    """The conversation so far, as the pipeline reads it (audio kept decoded, transcripts kept once known),
    and the same turns as the page shows them."""

    messages: list[dict] = field(default_factory=list)
    shown: list[dict] = field(default_factory=list)

    @property
    def has_audio(self) -> bool:
        return any(item["type"] == "audio" for message in self.messages for item in message["content"])

    def audio_items(self) -> list[dict]:
        return [item for message in self.messages for item in message["content"] if item["type"] == "audio"]


def add_user_turn(chat: Chat, question: str, files: list, processor, max_bytes: int) -> Chat:
    """A new chat with the user's turn appended; a follow-up without files asks about the clips already given."""
    question = (question or "").strip()
    if not files and not chat.has_audio:
        raise DemoInputError(NO_AUDIO)
    if not question:
        raise DemoInputError(EMPTY_QUESTION)
    items = decode_within_budget(chat, files, processor, max_bytes)
    names = ", ".join(clip_name(path) for path in files)
    shown = f"[{names}]\n\n{question}" if names else question
    return Chat(
        messages=[*chat.messages, {"role": "user", "content": [*items, {"type": "text", "text": question}]}],
        shown=[*chat.shown, {"role": "user", "content": shown}],
    )


def decode_within_budget(chat: Chat, files: list, processor, max_bytes: int) -> list[dict]:
    """The uploads as audio items, decoded one at a time within the processor's per-chat audio budget (the chat's
    earlier clips count too): too many files are refused before any is decoded, too much audio at the first clip
    past the budget, so a message of many long uploads never holds more than the budget in memory."""
    earlier = [item["array"] for item in chat.audio_items()]
    try:
        processor.check_clip_count(len(earlier) + len(files))
        items = []
        for path in files:
            waveform = load_clip(path, processor, max_bytes)
            processor.check_audio_budget([*earlier, *(item["array"] for item in items), waveform])
            items.append(
                {"type": "audio", "array": waveform, "sampling_rate": TARGET_SAMPLING_RATE, "name": clip_name(path)}
            )
    except DemoInputError:
        raise
    except ValueError as error:
        raise DemoInputError(str(error)) from None
    return items


def conversation_for(chat: Chat, system_prompt: str | None) -> list[dict]:
    """The chat as the pipeline reads it: the user's system prompt first when they typed one, else none (the
    processor then puts its `default_system_prompt` first, as for every chat)."""
    system = (system_prompt or "").strip()
    return [*([{"role": "system", "content": [{"type": "text", "text": system}]}] if system else []), *chat.messages]


def generation_kwargs(max_new_tokens: int, temperature: float) -> dict:
    """Greedy at temperature 0, else nucleus sampling at that temperature."""
    if temperature <= 0:
        return {"max_new_tokens": int(max_new_tokens), "do_sample": False}
    return {
        "max_new_tokens": int(max_new_tokens),
        "do_sample": True,
        "temperature": temperature,
        "top_p": DEFAULT_TOP_P,
    }


def answer(pipe, chat: Chat, system_prompt: str | None, kwargs: dict) -> Iterator[tuple[Chat, list[tuple[str, str]]]]:
    """Stream the reply to the chat's last user turn: (chat with the partial answer, [(clip, transcript)]) per
    piece; the transcripts come with the last one.

    The final chat keeps every clip's transcript, so follow-up turns reuse it instead of running ASR again.
    """
    stream = AnswerStream(pipe, conversation_for(chat, system_prompt), kwargs)
    text = ""
    for piece in stream:
        text += piece
        yield replace_reply(chat, text), []
    reply = stream.result["generated_text"]
    for item, transcript in zip(chat.audio_items(), stream.result["transcripts"]):
        item["transcript"] = transcript
    done = Chat(
        messages=[*chat.messages, {"role": "assistant", "content": [{"type": "text", "text": reply}]}],
        shown=replace_reply(chat, reply).shown,
    )
    yield done, [(item["name"], item["transcript"]) for item in done.audio_items()]


def replace_reply(chat: Chat, text: str) -> Chat:
    return Chat(messages=chat.messages, shown=[*chat.shown, {"role": "assistant", "content": text}])
