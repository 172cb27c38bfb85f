"""DestaProcessor: chat messages with audio -> `input_ids` / `attention_mask` / `input_features`.

Each audio becomes, in place, `<start_audio>` + `num_audio_queries` placeholder tokens per 30 s window +
the transcript's own LLM tokens + `<end_audio>` (the markers are plain text, as in the release). The model
replaces the placeholders with connector outputs; everything else is ordinary text.
"""

import math
import os
import re

import numpy as np
import torch
from transformers import AutoProcessor, AutoTokenizer, BatchFeature, ProcessorMixin, WhisperFeatureExtractor

from .audio_io import AUDIO_SOURCE_KEYS, audio_source, load_audio
from .audio_sources import AudioSourcePolicy

# Imported so that saving the processor also copies the pipeline's code next to it (remote code).
from .pipeline_desta import DEFAULT_SYSTEM_PROMPT, DestaAudioTextToTextPipeline  # noqa: F401

# The release format and the audio-token rule, shared with the model half (the same file; see its docstring).
from .release_desta import (
    DEFAULT_AUDIO_TOKEN,
    HUB_KWARGS,
    REFERENCE_AUDIO_LOCATOR,
    RELEASE_AUDIO_END_TEXT,
    RELEASE_AUDIO_START_TEXT,
    RELEASE_EMPTY_TRANSCRIPT,
    RELEASE_MODEL_TYPE,
    check_release_config,
    fetch_component,
    hub_kwargs,
    is_release_config,
    pick_audio_token,
    read_config_dict,
)

CONTENT_JOINER = "\n\n"
ASR_TOKENIZER_FOLDER = "asr_tokenizer"
# Private-use characters fencing special-token strings found in message text, so that they are tokenised as
# plain text (never as the template's control tokens or the audio placeholder). Stripped from user text first.
INERT_OPEN, INERT_CLOSE = "\ue000", "\ue001"
FENCED_SPAN = re.compile(f"({INERT_OPEN}[^{INERT_CLOSE}]*{INERT_CLOSE})")
ROLE_PATTERN = re.compile(r"[A-Za-z][\w-]{0,63}")


class DestaProcessor(ProcessorMixin):
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
    """

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
    @classmethod
    def from_components(
        cls, llm: str | os.PathLike, whisper: str | os.PathLike, audio_token: str | None = None, **kwargs
    ) -> "DestaProcessor":
        """The processor for a model built by `DestaForConditionalGeneration.from_components(llm, whisper)`.

        The audio token follows the rule the model uses too (`pick_audio_token`): the reference's
        `<|reserved_special_token_87|>` when the tokenizer has it (Llama 3), else `<|AUDIO|>`, added as a special
        token only if missing. `token`, `cache_dir`, `local_files_only`, `force_download` and `proxies` are used
        to fetch both; other keyword arguments go to the processor.
        """
        fetch = hub_kwargs(kwargs)
        kwargs = {key: value for key, value in kwargs.items() if key not in HUB_KWARGS}
        tokenizer = AutoTokenizer.from_pretrained(llm, **fetch)
        feature_extractor = WhisperFeatureExtractor.from_pretrained(whisper, **fetch)
        return cls._from_parts(tokenizer, feature_extractor, whisper, audio_token, fetch, **kwargs)

    @classmethod
    def _from_parts(cls, tokenizer, feature_extractor, whisper, audio_token, fetch: dict, **kwargs) -> "DestaProcessor":
        if audio_token is None:
            audio_token = pick_audio_token(tokenizer.get_vocab())
        if audio_token not in tokenizer.get_vocab():
            tokenizer.add_special_tokens({"additional_special_tokens": [audio_token]})
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        processor = cls(feature_extractor, tokenizer, audio_token=audio_token, **kwargs)
        processor.asr_tokenizer = _load_optional_tokenizer(whisper, **fetch)
        return processor

    @classmethod
    def from_release(
        cls, path_or_repo: str | os.PathLike, release: dict | None = None, revision: str | None = None, **kwargs
    ) -> "DestaProcessor":
        """The processor of a checkpoint in the authors' release format, in the reference's prompt format.

        Its `placeholder_token` (which must already be in the LLM's tokenizer), `prompt_size` queries, the
        `<start_audio>`/`<end_audio>` markers, the release's system prompt and `" "` for clips without speech.
        The tokenizer and feature extractor are fetched from `llm_model_id` and `encoder_model_id`.
        """
        fetch = hub_kwargs(kwargs)
        source = str(path_or_repo)
        release = check_release_config(release or read_config_dict(path_or_repo, revision, **fetch) or {}, source)
        llm_id, whisper_id = str(release["llm_model_id"]), str(release["encoder_model_id"])
        tokenizer = fetch_component(AutoTokenizer.from_pretrained, llm_id, "LLM (llm_model_id)", source, **fetch)
        placeholder = release["placeholder_token"]
        if placeholder not in tokenizer.get_vocab():
            raise ValueError(
                f"placeholder_token {placeholder!r} is not in the tokenizer of {llm_id}; the reference requires an "
                "existing token, so this checkpoint does not belong to that LLM."
            )
        feature_extractor = fetch_component(
            WhisperFeatureExtractor.from_pretrained, whisper_id, "Whisper (encoder_model_id)", source, **fetch
        )
        return cls._from_parts(
            tokenizer,
            feature_extractor,
            whisper_id,
            placeholder,
            fetch,
            num_audio_queries=int(release["prompt_size"]),
            audio_start_text=RELEASE_AUDIO_START_TEXT,
            audio_end_text=RELEASE_AUDIO_END_TEXT,
            default_system_prompt=DEFAULT_SYSTEM_PROMPT,
            # The reference's data and inference put " " where a clip has no speech: one real token.
            empty_transcript=RELEASE_EMPTY_TRANSCRIPT,
        )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "DestaProcessor":
        """Load as usual, plus Whisper's tokenizer from `asr_tokenizer/` when the folder has one; a folder or repo
        in the authors' release format (`model_type` `desta25`) is built from the components it names."""
        release = None
        if not kwargs.get("subfolder"):
            release = read_config_dict(pretrained_model_name_or_path, kwargs.get("revision"), **hub_kwargs(kwargs))
        if is_release_config(release):
            return cls.from_release(pretrained_model_name_or_path, release, **kwargs)
        processor = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        processor.asr_tokenizer = _load_optional_tokenizer(
            pretrained_model_name_or_path, ASR_TOKENIZER_FOLDER, **kwargs
        )
        return processor

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
        padding: bool | str = True,
        padding_side: str = "left",
        add_special_tokens: bool = True,
        return_tensors: str | None = "pt",
        **kwargs,
    ) -> BatchFeature:
        """Tokenize `text` whose audio positions are marked by `audio_token` (one per clip, in order).

        `audio` is a list of clips (anything `load_audio` takes) matching the markers across the whole batch;
        `transcripts` an aligned list of strings (or `None` for no transcript).
        """
        if text is None:
            raise ValueError("DestaProcessor needs `text`; audio goes where `audio_token` appears in it.")
        audio_policy = kwargs.pop("audio_policy", None)
        texts = [text] if isinstance(text, str) else list(text)
        audios = [] if audio is None else list(audio) if isinstance(audio, (list, tuple)) else [audio]
        transcripts = [None] * len(audios) if transcripts is None else list(transcripts)
        self._check_audio_count(texts, audios, transcripts)
        features, window_counts = (
            self.extract_features([self.load_audio(a, audio_policy) for a in audios]) if audios else (None, [])
        )
        encoded = self.encode_text(
            texts, window_counts, transcripts, padding, padding_side, add_special_tokens, return_tensors, **kwargs
        )
        if features is not None:
            encoded["input_features"] = features
        return encoded

    def encode_text(
        self,
        texts: list[str],
        window_counts: list[int],
        transcripts: list[str | None],
        padding: bool | str = True,
        padding_side: str = "left",
        add_special_tokens: bool = False,
        return_tensors: str | None = "pt",
        **kwargs,
    ) -> BatchFeature:
        """Token ids for `texts` whose audio tokens expand to `window_counts[i]` x queries + transcript i."""
        input_ids = self._expand_batch(
            self.tokenize_prompts(texts, add_special_tokens, **kwargs), window_counts, transcripts
        )
        padded = self.tokenizer.pad(
            {"input_ids": input_ids}, padding=padding, padding_side=padding_side, return_tensors=return_tensors
        )
        return BatchFeature(
            {"input_ids": padded["input_ids"], "attention_mask": padded["attention_mask"]}, tensor_type=return_tensors
        )

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

    # ------------------------------------------------------------------ inert special tokens in message text
    def _special_token_pattern(self) -> re.Pattern | None:
        """A regex matching every special token string of the tokenizer (the audio token included)."""
        key = (id(self.tokenizer), len(self.tokenizer), self.audio_token)
        if getattr(self, "_special_pattern_key", None) != key:
            specials = {token.content for token in self.tokenizer.added_tokens_decoder.values() if token.special}
            specials |= {self.audio_token, *self.tokenizer.all_special_tokens}
            ordered = sorted((s for s in specials if s), key=len, reverse=True)
            self._special_pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None
            self._special_pattern_key = key
        return self._special_pattern

    def make_inert(self, text: str) -> str:
        """Message text with each special-token string fenced, so it is tokenised as text (no forged turns, no
        injected audio placeholders); `tokenize_prompts` honours the fences, `visible_text` removes them."""
        text = text.replace(INERT_OPEN, "").replace(INERT_CLOSE, "")
        pattern = self._special_token_pattern()
        return pattern.sub(lambda match: INERT_OPEN + match.group(0) + INERT_CLOSE, text) if pattern else text

    @staticmethod
    def visible_text(text: str) -> str:
        """Rendered text without the inert fences (what a reader should see)."""
        return text.replace(INERT_OPEN, "").replace(INERT_CLOSE, "")

    def tokenize_prompts(self, texts: list[str], add_special_tokens: bool = False, **kwargs) -> list[list[int]]:
        """Token ids of rendered texts: audio tokens become `<start_audio>` + token + `<end_audio>`, fenced
        special-token strings are tokenised as plain text. Unfenced text tokenises exactly as the tokenizer does."""
        marker = f"{self.audio_start_text}{self.audio_token}{self.audio_end_text}"
        if not any(INERT_OPEN in text for text in texts):
            encoded = self.tokenizer(
                [t.replace(self.audio_token, marker) for t in texts], add_special_tokens=add_special_tokens, **kwargs
            )
            return list(encoded["input_ids"])
        return [self._tokenize_fenced(text, marker, add_special_tokens) for text in texts]

    def _tokenize_fenced(self, text: str, marker: str, add_special_tokens: bool) -> list[int]:
        ids, first = [], True
        for part in FENCED_SPAN.split(text):
            if not part:
                continue
            fenced = part.startswith(INERT_OPEN)
            ids += self.tokenizer(
                part[1:-1] if fenced else part.replace(self.audio_token, marker),
                add_special_tokens=add_special_tokens and first,
                split_special_tokens=fenced,
            ).input_ids
            first = False
        return ids

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
    def render_conversation(self, conversation: list[dict], add_generation_prompt: bool = True, **template_kwargs):
        """(prompt text with one `audio_token` per audio, the audio items in order).

        Content is either a list of `{"type": "text"|"audio", ...}` items (joined with a blank line), or the
        reference / DeSTA-AQA5M format: a string with `<|AUDIO|>` locators plus an `audios` list of
        `{"audio": path, "text": transcript}`, kept verbatim. Special-token strings typed in message text are
        fenced as inert text (`make_inert`); keep the returned text for `encode_text` / `__call__`.
        """
        messages, audio_items = [], []
        for index, message in enumerate(conversation):
            _check_message(message, index)
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
            chat_template=self.chat_template,
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
        add_generation_prompt: bool = True,
        tokenize: bool = True,
        return_tensors: str | None = "pt",
        padding: bool | str = True,
        padding_side: str = "left",
        return_dict: bool = True,
        processor_kwargs: dict | None = None,
        **template_kwargs,
    ):
        """Render one conversation or a batch of them and, with `tokenize=True`, encode text and audio.

        Audio items are `{"type": "audio", "path"|"audio"|"url"|"array": ..., "transcript": optional}`, read
        within the processor's audio source policy (`audio_policy=` overrides it for this call).
        Extra keyword arguments (e.g. `continue_final_message`) go to the chat template. The result is always
        a dict-like `BatchFeature`; `return_dict` exists for the `any-to-any` pipeline's calling convention.
        """
        audio_policy = template_kwargs.pop("audio_policy", None)
        single = _is_single_conversation(conversation)
        conversations = [conversation] if single else list(conversation)
        rendered = [self.render_conversation(c, add_generation_prompt, **template_kwargs) for c in conversations]
        texts = [text for text, _ in rendered]
        if not tokenize:
            texts = [self.visible_text(text) for text in texts]
            return texts[0] if single else texts
        items = [item for _, row_items in rendered for item in row_items]
        return self(
            text=texts,
            audio=[audio_source(item) for item in items],
            transcripts=[item.get("transcript") for item in items],
            padding=padding,
            padding_side=padding_side,
            add_special_tokens=False,
            return_tensors=return_tensors,
            **({"audio_policy": audio_policy} if audio_policy is not None else {}),
            **(processor_kwargs or {}),
        )

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)


def _load_optional_tokenizer(path, subfolder: str = "", **kwargs):
    """Whisper's tokenizer from `path` (or its `subfolder`), or None where there is none."""
    hub_kwargs = {key: kwargs[key] for key in ("revision", "token", "cache_dir", "local_files_only") if key in kwargs}
    try:
        return AutoTokenizer.from_pretrained(path, subfolder=subfolder, **hub_kwargs)
    except (OSError, ValueError, TypeError):
        return None


def _check_message(message, index: int) -> None:
    """One clear line for a malformed message: its index and what is wrong."""
    if not isinstance(message, dict):
        raise ValueError(f"Message {index} must be a dict with 'role' and 'content'; got {type(message).__name__}.")
    missing = [key for key in ("role", "content") if key not in message]
    if missing:
        raise ValueError(f"Message {index} has no {' or '.join(map(repr, missing))}; got keys {sorted(message)}.")
    role, content = message["role"], message["content"]
    if not isinstance(role, str) or not ROLE_PATTERN.fullmatch(role):
        raise ValueError(f"Message {index} has an invalid role {role!r}; use a plain name such as 'user'.")
    if not isinstance(content, (str, list, tuple)):
        raise ValueError(
            f"Message {index} ({role}) has content {content!r}; give a string or a list of "
            "{'type': 'text'|'audio', ...} items."
        )


def _is_single_conversation(conversation) -> bool:
    return bool(conversation) and isinstance(conversation[0], dict)


DestaProcessor.register_for_auto_class()
# `AutoProcessor` finds the class by the name a release-format config gives (`processor_class`) among registered
# processors; the model half owns the config classes, so the processor registers under their model types (pip
# users of this package then get the installed class without trust_remote_code).
AutoProcessor.register("desta", DestaProcessor, exist_ok=True)
AutoProcessor.register(RELEASE_MODEL_TYPE, DestaProcessor, exist_ok=True)

__all__ = ["AUDIO_SOURCE_KEYS", "DestaProcessor", "DEFAULT_SYSTEM_PROMPT", "audio_source"]
