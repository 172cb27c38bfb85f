"""DestaProcessor: chat messages with audio -> `input_ids` / `attention_mask` / `input_features`.

Each audio becomes, in place, `<start_audio>` + `num_audio_queries` placeholder tokens per 30 s window +
the transcript's own LLM tokens + `<end_audio>` (the markers are plain text, as in the release). The model
replaces the placeholders with connector outputs; everything else is ordinary text.
"""

import math
import os

import numpy as np
import torch
from transformers import AutoProcessor, BatchFeature, ProcessorMixin
from transformers.processing_utils import ProcessingKwargs, Unpack

from .audio_io import AUDIO_SOURCE_KEYS, audio_source, load_audio
from .audio_sources import AudioSourcePolicy
from .chat_text import FENCED_SPAN, InertTextMixin, check_message, checked_messages
from .loading_processor import ASR_TOKENIZER_FOLDER, ProcessorAssemblyMixin

# Imported so that saving the processor also copies the pipeline's code next to it (remote code).
from .pipeline_desta import DEFAULT_SYSTEM_PROMPT, DestaAudioTextToTextPipeline  # noqa: F401

# The release format and the audio-token rule, shared with the model half (the same file; see its docstring).
from .release_desta import (
    DEFAULT_AUDIO_TOKEN,
    REFERENCE_AUDIO_LOCATOR,
    RELEASE_MODEL_TYPE,
)

CONTENT_JOINER = "\n\n"
# Text kwargs applied to the expanded ids; the rest of `TextKwargs` (offsets, overflow, pairs ...) has no meaning
# once audio placeholders are spliced in, and raises rather than being dropped.
SUPPORTED_TEXT_KWARGS = {
    "add_special_tokens",
    "padding",
    "padding_side",
    "truncation",
    "max_length",
    "pad_to_multiple_of",
    "return_attention_mask",
    "return_tensors",
}


class DestaProcessor(ProcessorAssemblyMixin, InertTextMixin, ProcessorMixin):
    r"""
    Wraps a Whisper feature extractor and the LLM tokenizer.

    Args:
        feature_extractor (`WhisperFeatureExtractor`): log-mel features for each 30 s window.
        tokenizer: the LLM tokenizer; it must know `audio_token` as a single token.
        audio_token (`str`): placeholder token replaced by connector outputs.
        num_audio_queries (`int`): placeholders per 30 s window (the model's `num_audio_queries`).
        audio_start_text / audio_end_text (`str`): plain-text markers around each audio span.
        max_transcript_tokens (`int`, *optional*): cap on each transcript's LLM tokens (the release trained
            with 100); `None` keeps whole transcripts.
        max_audio_seconds (`float`): longest clip accepted; longer ones raise instead of being cut.
        chat_template (`str`, *optional*): defaults to the tokenizer's.
        default_system_prompt (`str`, *optional*): system message put first in chats that have none (checkpoints
            converted from the release set the reference's `DEFAULT_SYSTEM_PROMPT`); `None` adds nothing.
        empty_transcript (`str`, defaults to `""`): text standing in for a missing or blank transcript. The
            release trained with `" "` (one token) for clips without speech; converted checkpoints set that.
        trusted_input (`bool`, defaults to `True`): `True` reads any local path or URL in a chat (local use);
            `False` is what a server sets: only arrays and bytes unless `audio_policy` opens paths or URLs.
        audio_policy (`dict`, *optional*): `AudioSourcePolicy` settings over the defaults of `trusted_input`
            (e.g. `{"allow_paths": True, "path_root": "/srv/audio"}`); saved in `processor_config.json`.

    Call kwargs are routed through `ProcessingKwargs` (flat, or nested in `text_kwargs` / `audio_kwargs`; a kwarg
    given both ways raises). Text defaults: left padding to the longest row, special tokens added, PyTorch tensors.
    `padding`, `truncation`, `max_length` and `pad_to_multiple_of` act on the ids *after* audio expansion;
    truncation that would cut into an audio span raises instead of dropping audio. Audio is always one padded
    30 s window per row; `audio_kwargs["sampling_rate"]` is the rate of bare arrays (16 kHz by default).
    """

    text_kwargs = {"padding": True, "padding_side": "left", "add_special_tokens": True, "return_tensors": "pt"}

    def __init__(
        self,
        feature_extractor,
        tokenizer,
        audio_token: str = DEFAULT_AUDIO_TOKEN,
        num_audio_queries: int = 64,
        audio_start_text: str = "<start_audio>",
        audio_end_text: str = "<end_audio>",
        max_transcript_tokens: int | None = None,
        max_audio_seconds: float = 600.0,
        chat_template: str | None = None,
        default_system_prompt: str | None = None,
        empty_transcript: str = "",
        trusted_input: bool = True,
        audio_policy: dict | None = None,
    ):
        self.audio_token = audio_token
        self.num_audio_queries = num_audio_queries
        self.audio_start_text = audio_start_text
        self.audio_end_text = audio_end_text
        self.max_transcript_tokens = max_transcript_tokens
        self.max_audio_seconds = max_audio_seconds
        self.default_system_prompt = default_system_prompt
        self.empty_transcript = empty_transcript
        self.trusted_input = trusted_input
        if isinstance(audio_policy, AudioSourcePolicy):
            audio_policy = audio_policy.to_dict()
        AudioSourcePolicy.for_input(trusted_input, audio_policy)  # unknown settings fail here, not per request
        self.audio_policy = dict(audio_policy or {})
        if chat_template is None:
            chat_template = getattr(tokenizer, "chat_template", None)
        super().__init__(feature_extractor, tokenizer, chat_template=chat_template)
        # Whisper's own tokenizer, to read transcripts; not a ProcessorMixin attribute so that a folder
        # without one (e.g. a model meant to get transcripts from its data) still saves and loads.
        self.asr_tokenizer = None
        if self.audio_token_id in (None, tokenizer.unk_token_id):
            raise ValueError(f"The tokenizer does not know the audio token {audio_token!r}; add it as a special token.")

    # ------------------------------------------------------------------ construction

    def save_pretrained(self, save_directory, **kwargs):
        saved = super().save_pretrained(save_directory, **kwargs)
        if getattr(self, "asr_tokenizer", None) is not None:
            self.asr_tokenizer.save_pretrained(os.path.join(save_directory, ASR_TOKENIZER_FOLDER))
        return saved

    @property
    def audio_token_id(self) -> int | None:
        return self.tokenizer.convert_tokens_to_ids(self.audio_token)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "input_features"]

    # ------------------------------------------------------------------ audio
    @property
    def window_samples(self) -> int:
        return self.feature_extractor.n_samples

    def source_policy(self, audio_policy: "dict | AudioSourcePolicy | None" = None) -> AudioSourcePolicy:
        """The audio source policy in force: this processor's, updated by a per-call `audio_policy`."""
        if isinstance(audio_policy, AudioSourcePolicy):
            return audio_policy
        if hasattr(audio_policy, "to_dict"):  # a policy made by another copy of this code (installed vs remote)
            audio_policy = audio_policy.to_dict()
        return AudioSourcePolicy.for_input(self.trusted_input, {**(self.audio_policy or {}), **(audio_policy or {})})

    def load_audio(self, source, audio_policy: "dict | AudioSourcePolicy | None" = None) -> np.ndarray:
        """Decode one audio item (path, URL, bytes, array, dict, AudioDecoder) to 16 kHz mono float32, within
        the audio source policy and `max_audio_seconds` (checked before the clip is decoded in full)."""
        return load_audio(
            source,
            sampling_rate=self.feature_extractor.sampling_rate,
            max_seconds=self.max_audio_seconds,
            policy=self.source_policy(audio_policy),
        )

    def num_windows(self, waveform: np.ndarray) -> int:
        """How many 30 s windows a clip spans; clips over `max_audio_seconds` raise instead of being cut."""
        seconds = len(waveform) / self.feature_extractor.sampling_rate
        if seconds > self.max_audio_seconds:
            raise ValueError(
                f"An audio clip lasts {seconds:.1f} s, over max_audio_seconds={self.max_audio_seconds:g}. "
                "Split it, or raise processor.max_audio_seconds."
            )
        return max(1, math.ceil(len(waveform) / self.window_samples))

    def split_windows(self, waveform: np.ndarray) -> list[np.ndarray]:
        size = self.window_samples
        return [waveform[start : start + size] for start in range(0, self.num_windows(waveform) * size, size)]

    def extract_features(self, waveforms: list[np.ndarray]) -> tuple[torch.Tensor, list[int]]:
        """Log-mel features of every 30 s window of every clip, in order, and each clip's window count."""
        windows, counts = [], []
        for waveform in waveforms:
            clip_windows = self.split_windows(waveform)
            windows.extend(clip_windows)
            counts.append(len(clip_windows))
        features = self.feature_extractor(
            windows, sampling_rate=self.feature_extractor.sampling_rate, return_tensors="pt", padding="max_length"
        ).input_features
        return features, counts

    # ------------------------------------------------------------------ text
    def _transcript_ids(self, transcript: str | None) -> list[int]:
        text = transcript.strip() if transcript and transcript.strip() else self.empty_transcript
        if not text:
            return []
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        return ids[: self.max_transcript_tokens] if self.max_transcript_tokens is not None else ids

    def expand_audio_tokens(self, ids: list[int], window_counts: list[int], transcripts: list[str | None]) -> list[int]:
        """Replace each audio token in `ids` with its placeholders (one per connector vector) and transcript."""
        expanded, audio_index = [], 0
        for token_id in ids:
            if token_id != self.audio_token_id:
                expanded.append(token_id)
                continue
            if audio_index >= len(window_counts):
                raise ValueError(
                    f"The text holds more audio placeholders ({self.audio_token!r}) than the {len(window_counts)} "
                    "audio clips given."
                )
            expanded.extend([token_id] * (self.num_audio_queries * window_counts[audio_index]))
            expanded.extend(self._transcript_ids(transcripts[audio_index]))
            audio_index += 1
        return expanded

    def __call__(
        self,
        text: str | list[str] | None = None,
        audio=None,
        transcripts: list[str | None] | None = None,
        **kwargs: Unpack[ProcessingKwargs],
    ) -> BatchFeature:
        """Tokenize `text` whose audio positions are marked by `audio_token` (one per clip, in order).

        `audio` is a list of clips (anything `load_audio` takes) matching the markers across the whole batch;
        `transcripts` an aligned list of strings (or `None` for no transcript).
        """
        if text is None:
            raise ValueError("DestaProcessor needs `text`; audio goes where `audio_token` appears in it.")
        audio_policy = kwargs.pop("audio_policy", None)
        output_kwargs = self._merge_kwargs(**kwargs)
        texts = [text] if isinstance(text, str) else list(text)
        audios = [] if audio is None else list(audio) if isinstance(audio, (list, tuple)) else [audio]
        transcripts = [None] * len(audios) if transcripts is None else list(transcripts)
        self._check_audio_count(texts, audios, transcripts)
        sampling_rate = output_kwargs["audio_kwargs"].get("sampling_rate")
        waveforms = [self.load_audio(_with_sampling_rate(a, sampling_rate), audio_policy) for a in audios]
        features, window_counts = self.extract_features(waveforms) if audios else (None, [])
        encoded = self._encode(texts, window_counts, transcripts, output_kwargs["text_kwargs"])
        if features is not None:
            encoded["input_features"] = features
        return encoded

    def encode_text(
        self,
        texts: list[str],
        window_counts: list[int],
        transcripts: list[str | None],
        **kwargs: Unpack[ProcessingKwargs],
    ) -> BatchFeature:
        """Token ids for rendered `texts` whose audio tokens expand to `window_counts[i]` x queries + transcript i.

        Text kwargs as for `__call__`, except that special tokens are not added by default (rendered chats have
        them already).
        """
        kwargs.setdefault("add_special_tokens", False)
        return self._encode(texts, window_counts, transcripts, self._merge_kwargs(**kwargs)["text_kwargs"])

    def _encode(
        self, texts: list[str], window_counts: list[int], transcripts: list[str | None], text_kwargs: dict
    ) -> BatchFeature:
        options = dict(text_kwargs)
        unsupported = sorted(k for k, v in options.items() if k not in SUPPORTED_TEXT_KWARGS and v not in (None, False))
        if unsupported:
            raise ValueError(f"DestaProcessor does not support the text kwargs {unsupported}.")
        return_tensors = options.get("return_tensors")
        prompt_ids = self.tokenize_prompts(texts, options.get("add_special_tokens", True))
        input_ids = self._expand_batch(prompt_ids, window_counts, transcripts)
        input_ids = [self._truncate(ids, options.get("truncation"), options.get("max_length")) for ids in input_ids]
        padding = options.get("padding", True)
        padded = self.tokenizer.pad(
            {"input_ids": input_ids},
            padding=padding,
            max_length=options.get("max_length") if padding == "max_length" else None,
            pad_to_multiple_of=options.get("pad_to_multiple_of"),
            padding_side=options.get("padding_side"),
            return_attention_mask=options.get("return_attention_mask"),
        )
        return BatchFeature(dict(padded), tensor_type=return_tensors)

    def _truncate(self, ids: list[int], truncation, max_length: int | None) -> list[int]:
        """Cut `ids` to `max_length` on the tokenizer's truncation side; never through an audio span."""
        if truncation in (None, False, "do_not_truncate"):
            return ids
        max_length = self.tokenizer.model_max_length if max_length is None else max_length
        if len(ids) <= max_length:
            return ids
        keep_left = self.tokenizer.truncation_side != "left"
        kept, dropped = (ids[:max_length], ids[max_length:]) if keep_left else (ids[-max_length:], ids[:-max_length])
        if self.audio_token_id in dropped:
            raise ValueError(
                f"Truncating a sequence of {len(ids)} tokens to max_length={max_length} would cut into its audio "
                f"placeholders ({ids.count(self.audio_token_id)} of them); raise max_length or shorten the text."
            )
        return kept

    def _expand_batch(self, batch_ids, window_counts, transcripts) -> list[list[int]]:
        expanded, offset = [], 0
        for ids in batch_ids:
            count = sum(1 for token_id in ids if token_id == self.audio_token_id)
            expanded.append(
                self.expand_audio_tokens(
                    ids, window_counts[offset : offset + count], transcripts[offset : offset + count]
                )
            )
            offset += count
        return expanded

    def _check_audio_count(self, texts: list[str], audios: list, transcripts: list) -> None:
        markers = sum(FENCED_SPAN.sub("", t).count(self.audio_token) for t in texts)
        if markers != len(audios):
            raise ValueError(
                f"The text holds {markers} audio placeholders ({self.audio_token!r}) but {len(audios)} audio clips "
                "were given; pass exactly one clip per placeholder, in order."
            )
        if len(transcripts) != len(audios):
            raise ValueError(f"Got {len(transcripts)} transcripts for {len(audios)} audio clips.")

    # ------------------------------------------------------------------ chat
    def render_conversation(
        self,
        conversation: list[dict],
        add_generation_prompt: bool = True,
        chat_template: str | None = None,
        **template_kwargs,
    ):
        """(prompt text with one `audio_token` per audio, the audio items in order).

        Content is either a list of `{"type": "text"|"audio", ...}` items (joined with a blank line), or the
        reference / DeSTA-AQA5M format: a string with `<|AUDIO|>` locators plus an `audios` list of
        `{"audio": path, "text": transcript}`, kept verbatim. Special-token strings typed in message text are
        fenced as inert text (`make_inert`); keep the returned text for `encode_text` / `__call__`. `chat_template`
        is a template or a template's name (default: the processor's); other kwargs (`tools`,
        `continue_final_message` ...) go to the template.
        """
        messages, audio_items = [], []
        for index, message in enumerate(conversation):
            check_message(message, index)
            if isinstance(message["content"], str):
                text, items = self._render_reference_content(message["content"], message.get("audios") or [])
            else:
                text, items = self._render_items(message["content"])
            messages.append({"role": message["role"], "content": text})
            audio_items.extend(items)
        if self.default_system_prompt and (not messages or messages[0]["role"] != "system"):
            messages.insert(0, {"role": "system", "content": self.default_system_prompt})
        text = self.tokenizer.apply_chat_template(
            messages,
            chat_template=self._resolve_chat_template(chat_template),
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            **template_kwargs,
        )
        return text, audio_items

    def _render_items(self, content: list) -> tuple[str, list[dict]]:
        parts, audio_items = [], []
        for item in content:
            if not isinstance(item, dict) or item.get("type") not in ("text", "audio"):
                raise ValueError(f"Content items must be {{'type': 'text'|'audio', ...}}; got {item!r}.")
            if item["type"] == "audio":
                audio_source(item)
                parts.append(self.audio_token)
                audio_items.append(item)
            else:
                text = item.get("text")
                if text is not None and not isinstance(text, str):
                    raise ValueError(f"A text item's 'text' must be a string; got {type(text).__name__}: {item!r}.")
                parts.append(self.make_inert(text or ""))
        return CONTENT_JOINER.join(parts), audio_items

    def _render_reference_content(self, content: str, audios: list[dict]) -> tuple[str, list[dict]]:
        if content.count(REFERENCE_AUDIO_LOCATOR) != len(audios):
            raise ValueError(
                f"A message marks {content.count(REFERENCE_AUDIO_LOCATOR)} audios with {REFERENCE_AUDIO_LOCATOR} "
                f"but lists {len(audios)} in 'audios'."
            )
        items = [
            {"type": "audio", "path": entry.get("audio", entry.get("path")), "transcript": entry.get("text")}
            for entry in audios
        ]
        pieces = [self.make_inert(piece) for piece in content.split(REFERENCE_AUDIO_LOCATOR)]
        return self.audio_token.join(pieces), items

    def apply_chat_template(
        self,
        conversation: list[dict] | list[list[dict]],
        chat_template: str | None = None,
        tools: list[dict] | None = None,
        documents: list[dict[str, str]] | None = None,
        add_generation_prompt: bool = False,
        continue_final_message: bool | str = False,
        return_assistant_tokens_mask: bool = False,
        tokenize: bool = False,
        return_tensors: str | None = "auto",
        return_dict: bool = False,
        load_audio_from_video: bool = False,
        processor_kwargs: dict | None = None,
        sanitize_control_tokens: bool = False,
        **kwargs,
    ):
        """`ProcessorMixin.apply_chat_template`, same signature and defaults, for chats with audio.

        The usual call: `processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=True,
        return_dict=True)` gives `input_ids`, `attention_mask` and `input_features` for one chat or a list of them
        (left-padded). Chats are lists of dicts or of message objects (dataclasses, pydantic models). Audio items
        are `{"type": "audio", "path"|"audio"|"url"|"array": ..., "transcript": optional}`, read within the
        processor's audio source policy (`audio_policy=` overrides it for this call). `processor_kwargs` go to
        `__call__` (`padding`, `max_length` ...); other kwargs are template variables.
        """
        audio_policy = kwargs.pop("audio_policy", None)
        unsupported = {
            "return_assistant_tokens_mask": return_assistant_tokens_mask,
            "load_audio_from_video": load_audio_from_video,
            "sanitize_control_tokens": sanitize_control_tokens,
        }
        if any(unsupported.values()):
            raise ValueError(
                f"DestaProcessor.apply_chat_template does not support {[k for k, v in unsupported.items() if v]}."
            )
        chat_template = self._resolve_chat_template(chat_template)
        processor_kwargs = self._prepare_processor_kwargs(
            chat_template,
            dict(processor_kwargs or {}),
            kwargs,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
            return_assistant_tokens_mask=False,
        )
        template_kwargs = {key: value for key, value in kwargs.items() if key not in processor_kwargs}
        conversations, is_batched = self._normalize_conversations(checked_messages(conversation))
        rendered = [
            self.render_conversation(
                c,
                add_generation_prompt,
                chat_template=chat_template,
                tools=tools,
                documents=documents,
                continue_final_message=continue_final_message,
                **template_kwargs,
            )
            for c in conversations
        ]
        texts = [text for text, _ in rendered]
        if not tokenize:
            texts = [self.visible_text(text) for text in texts]
            return texts if is_batched else texts[0]
        bos = self.tokenizer.bos_token
        if bos is not None and texts[0].startswith(bos):
            processor_kwargs.setdefault("add_special_tokens", False)  # the template wrote it, as in the mixin
        if return_tensors != "auto":
            processor_kwargs["return_tensors"] = return_tensors
        items = [item for _, row_items in rendered for item in row_items]
        encoded = self(
            text=texts,
            audio=[audio_source(item) for item in items],
            transcripts=[item.get("transcript") for item in items],
            **processor_kwargs,
            **({"audio_policy": audio_policy} if audio_policy is not None else {}),
        )
        return encoded if return_dict else encoded["input_ids"]

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)


def _with_sampling_rate(audio, sampling_rate: int | None):
    """A bare array at `sampling_rate` as the `{"array", "sampling_rate"}` dict `load_audio` resamples from."""
    if sampling_rate is not None and isinstance(audio, (np.ndarray, torch.Tensor)):
        return {"array": audio, "sampling_rate": sampling_rate}
    return audio


DestaProcessor.register_for_auto_class()
# `AutoProcessor` finds the class by the name a release-format config gives (`processor_class`) among registered
# processors; the model half owns the config classes, so the processor registers under their model types (pip
# users of this package then get the installed class without trust_remote_code).
AutoProcessor.register("desta", DestaProcessor, exist_ok=True)
AutoProcessor.register(RELEASE_MODEL_TYPE, DestaProcessor, exist_ok=True)

__all__ = ["AUDIO_SOURCE_KEYS", "DestaProcessor", "DEFAULT_SYSTEM_PROMPT", "audio_source"]
