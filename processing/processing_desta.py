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
from transformers.processing_utils import ProcessingKwargs, Unpack
from transformers.utils.chat_template_utils import render_jinja_template

from .audio_io import AUDIO_SOURCE_KEYS, audio_source, load_audio
from .audio_sources import AudioSourcePolicy
from .chat_text import (
    DEFAULT_SYSTEM_PROMPT,
    FENCED_SPAN,
    INERT_CLOSE,
    INERT_OPEN,
    check_message,
    checked_messages,
    checked_text,
    normalized_conversations,
    split_call_kwargs,
    template_reads_content_items,
    visible_text,
)

# Imported so that saving the processor also copies the pipeline's code next to it (remote code).
from .pipeline_desta import DestaAudioTextToTextPipeline  # noqa: F401

# The release format and the audio-token rule, shared with the model half (the same file; see its docstring).
from .release_desta import (
    HUB_KWARGS,
    REFERENCE_AUDIO_LOCATOR,
    RELEASE_AUDIO_END_TEXT,
    RELEASE_AUDIO_START_TEXT,
    RELEASE_EMPTY_TRANSCRIPT,
    RELEASE_MODEL_TYPE,
    fetch_component,
    fetch_release_tokenizer,
    hub_kwargs,
    is_release_config,
    pick_audio_token,
    read_config_dict,
)

ASR_TOKENIZER_FOLDER = "asr_tokenizer"

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


class DestaProcessorKwargs(ProcessingKwargs, total=False):
    # `_defaults` rather than 5.24's `text_kwargs` class attribute, which transformers < 5.24 ignores. Only values
    # that differ from the tokenizer's own defaults (`add_special_tokens=True` is the tokenizer's).
    _defaults = {"text_kwargs": {"padding": True, "padding_side": "left", "return_tensors": "pt"}}


class DestaProcessor(ProcessorMixin):
    r"""
    Wraps a Whisper feature extractor and the LLM tokenizer.

    Args:
        feature_extractor (`WhisperFeatureExtractor`): log-mel features for each 30 s window.
        tokenizer: the LLM tokenizer; it must know `audio_token` as a single token.
        audio_token (`str`, *optional*): placeholder token replaced by connector outputs; defaults to the rule the
            model's `from_components` follows too (`pick_audio_token`: Llama 3's reserved token 87, else `<|AUDIO|>`).
        num_audio_queries (`int`): placeholders per 30 s window (the model's `num_audio_queries`).
        audio_start_text / audio_end_text (`str`): plain-text markers around each audio span.
        max_transcript_tokens (`int`, *optional*): cap on each transcript's LLM tokens (the release trained
            with 100); `None` keeps whole transcripts.
        max_audio_seconds (`float`): longest clip accepted; longer ones raise instead of being cut.
        max_request_audio_seconds (`float`, defaults to 600): the audio budget of one request (one chat): its clips'
            total length. With `max_request_windows` (defaults to 20, i.e. 600 s of whole 30 s windows; every clip
            takes at least one) it bounds what one chat costs, however many clips it holds, before any feature is
            computed. Over budget is a `ValueError` naming the limit.
        chat_template (`str`, *optional*): defaults to the tokenizer's.
        default_system_prompt (`str`, *optional*): system message put first in chats that have none, whoever built
            them (`from_components` and `from_release` set the reference's `DEFAULT_SYSTEM_PROMPT`); `None` adds
            nothing.
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

    valid_processor_kwargs = DestaProcessorKwargs

    def __init__(
        self,
        feature_extractor,
        tokenizer,
        audio_token: str | None = None,
        num_audio_queries: int = 64,
        audio_start_text: str = "<start_audio>",
        audio_end_text: str = "<end_audio>",
        max_transcript_tokens: int | None = None,
        max_audio_seconds: float = 600.0,
        max_request_audio_seconds: float = 600.0,
        max_request_windows: int = 20,
        chat_template: str | None = None,
        default_system_prompt: str | None = None,
        empty_transcript: str = "",
        trusted_input: bool = True,
        audio_policy: dict | None = None,
    ):
        self.audio_token = pick_audio_token(tokenizer.get_vocab()) if audio_token is None else audio_token
        self.num_audio_queries = num_audio_queries
        self.audio_start_text = audio_start_text
        self.audio_end_text = audio_end_text
        self.max_transcript_tokens = max_transcript_tokens
        self.max_audio_seconds = max_audio_seconds
        self.max_request_audio_seconds = max_request_audio_seconds
        self.max_request_windows = max_request_windows
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
            raise ValueError(
                f"The tokenizer does not know the audio token {self.audio_token!r}; add it as a special token."
            )

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_components(
        cls, llm: str | os.PathLike, whisper: str | os.PathLike, audio_token: str | None = None, **kwargs
    ) -> "DestaProcessor":
        """The processor for a model built by `DestaForConditionalGeneration.from_components(llm, whisper)`.

        The audio token follows the rule the model uses too (`pick_audio_token`): the reference's
        `<|reserved_special_token_87|>` when the tokenizer has it (Llama 3), else `<|AUDIO|>`, added as a special
        token only if missing. `token`, `cache_dir`, `local_files_only`, `force_download` and `proxies` are used
        to fetch both; other keyword arguments go to the processor (`default_system_prompt` defaults to the
        reference's, as for the release).
        """
        fetch = hub_kwargs(kwargs)
        kwargs = {key: value for key, value in kwargs.items() if key not in HUB_KWARGS}
        kwargs.setdefault("default_system_prompt", DEFAULT_SYSTEM_PROMPT)
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
        release, tokenizer = fetch_release_tokenizer(path_or_repo, release, revision, fetch)
        whisper_id = str(release["encoder_model_id"])
        feature_extractor = fetch_component(
            WhisperFeatureExtractor.from_pretrained, whisper_id, "Whisper (encoder_model_id)", source, **fetch
        )
        return cls._from_parts(
            tokenizer,
            feature_extractor,
            whisper_id,
            release["placeholder_token"],
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

    def to_dict(self) -> dict:
        """The saved settings, always with the `auto_map` that `save_pretrained` writes for remote code (the mixin
        adds it to the instance only when saving, and `from_pretrained` drops it), so save -> load is the identity."""
        settings = super().to_dict()
        if self._auto_class is not None:
            module = type(self).__module__.rsplit(".", 1)[-1]
            settings.setdefault("auto_map", {self._auto_class: f"{module}.{type(self).__name__}"})
        return settings

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

    def check_clip_count(self, count: int) -> None:
        """Refuse, before anything is decoded, a request with more clips than its window budget (each takes one)."""
        if count > self.max_request_windows:
            raise ValueError(
                f"A request holds {count} audio clips, over max_request_windows={self.max_request_windows} (every clip "
                "takes at least one 30 s window). Send fewer clips, or raise processor.max_request_windows."
            )

    def check_audio_budget(self, waveforms: list[np.ndarray]) -> None:
        """Refuse a request whose clips, together, exceed `max_request_audio_seconds` or `max_request_windows`;
        runs on decoded clips, before feature extraction (what costs memory)."""
        self.check_clip_count(len(waveforms))
        seconds = sum(len(w) for w in waveforms) / self.feature_extractor.sampling_rate
        if seconds > self.max_request_audio_seconds:
            raise ValueError(
                f"A request holds {seconds:.1f} s of audio in {len(waveforms)} clips, over "
                f"max_request_audio_seconds={self.max_request_audio_seconds:g}. Send less audio, or raise "
                "processor.max_request_audio_seconds."
            )
        windows = sum(self.num_windows(w) for w in waveforms)
        if windows > self.max_request_windows:
            raise ValueError(
                f"A request's {len(waveforms)} clips take {windows} 30 s windows, over max_request_windows="
                f"{self.max_request_windows}. Send fewer or longer clips, or raise processor.max_request_windows."
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
        self.num_windows(waveform)  # a clip over max_audio_seconds raises here
        return split_windows(waveform, self.window_samples)

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

    visible_text = staticmethod(visible_text)

    def tokenize_prompts(self, texts: list[str], add_special_tokens: bool = False) -> list[list[int]]:
        """Token ids of rendered texts: audio tokens become `<start_audio>` + token + `<end_audio>`, fenced
        special-token strings are tokenised as plain text. Unfenced text tokenises exactly as the tokenizer does."""
        if not any(INERT_OPEN in text for text in texts):
            encoded = self.tokenizer([self._with_markers(t)[0] for t in texts], add_special_tokens=add_special_tokens)
            return list(encoded["input_ids"])
        return [self._tokenize_text(text, add_special_tokens)[0] for text in texts]

    def _with_markers(self, text: str) -> tuple[str, list[int]]:
        """`text` with each audio token wrapped in the plain-text markers, and for each of its characters the index
        of the character of `text` it comes from (a marker's characters come from their audio token)."""
        marker = f"{self.audio_start_text}{self.audio_token}{self.audio_end_text}"
        pieces, origin, position = [], [], 0
        for match in re.finditer(re.escape(self.audio_token), text):
            pieces += [text[position : match.start()], marker]
            origin += [*range(position, match.start()), *[match.start()] * len(marker)]
            position = match.end()
        pieces.append(text[position:])
        origin += range(position, len(text))
        return "".join(pieces), origin

    def _tokenize_text(self, text: str, add_special_tokens: bool) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids of one rendered text and, for each id, the `(start, end)` characters of `text` it stands for
        (`(0, 0)`-like empty spans for added special tokens)."""
        ids, spans, position = [], [], 0
        for part in FENCED_SPAN.split(text):
            if not part:
                continue
            fenced = part.startswith(INERT_OPEN)
            if fenced:
                source, origin = part[1:-1], [position + 1 + i for i in range(len(part) - 2)]
            else:
                source, origin = self._with_markers(part)
                origin = [position + i for i in origin]
            encoded = self.tokenizer(
                source,
                add_special_tokens=add_special_tokens and not ids,
                split_special_tokens=fenced,
                return_offsets_mapping=True,
            )
            ids += encoded.input_ids
            spans += [
                (origin[a], origin[b - 1] + 1) if b > a else (position, position) for a, b in encoded.offset_mapping
            ]
            position += len(part)
        return ids, spans

    def transcript_ids(self, transcript: str | None) -> list[int]:
        """A transcript's LLM ids, as inert as message text: special-token strings in it (a forged end of turn, the
        audio token) are tokenised as plain text."""
        if transcript is not None and not isinstance(transcript, str):
            raise ValueError(f"An audio item's 'transcript' must be a string or None; got {type(transcript).__name__}.")
        checked_text(transcript or "", "An audio item's transcript")
        text = transcript.strip() if transcript and transcript.strip() else self.empty_transcript
        if not text:
            return []
        ids = self.tokenizer(text, add_special_tokens=False, split_special_tokens=True).input_ids
        return ids[: self.max_transcript_tokens] if self.max_transcript_tokens is not None else ids

    def expand_audio_tokens(self, ids: list[int], window_counts: list[int], transcripts: list[str | None]) -> list[int]:
        """Replace each audio token in `ids` with its placeholders (one per connector vector) and transcript."""
        return self._expand_row(ids, [False] * len(ids), window_counts, transcripts)[0]

    def _expand_row(
        self, ids: list[int], flags: list[bool], window_counts: list[int], transcripts: list[str | None]
    ) -> tuple[list[int], list[bool]]:
        """`expand_audio_tokens`, carrying a per-token flag (the assistant mask) onto the tokens each audio becomes."""
        expanded, expanded_flags, audio_index = [], [], 0
        for token_id, flag in zip(ids, flags):
            if token_id != self.audio_token_id:
                expanded.append(token_id)
                expanded_flags.append(flag)
                continue
            if audio_index >= len(window_counts):
                raise ValueError(
                    f"The text holds more audio placeholders ({self.audio_token!r}) than the {len(window_counts)} "
                    "audio clips given."
                )
            audio_ids = [token_id] * (self.num_audio_queries * window_counts[audio_index])
            audio_ids += self.transcript_ids(transcripts[audio_index])
            expanded += audio_ids
            expanded_flags += [flag] * len(audio_ids)
            audio_index += 1
        return expanded, expanded_flags

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
        assistant_spans = kwargs.pop("assistant_spans", None)
        output_kwargs = self._merge_call_kwargs(kwargs)
        texts = [text] if isinstance(text, str) else list(text)
        audios = [] if audio is None else list(audio) if isinstance(audio, (list, tuple)) else [audio]
        transcripts = [None] * len(audios) if transcripts is None else list(transcripts)
        row_counts = self._check_audio_count(texts, audios, transcripts)
        for count in row_counts:
            self.check_clip_count(count)
        sampling_rate = output_kwargs["audio_kwargs"].get("sampling_rate")
        waveforms = [self.load_audio(_with_sampling_rate(a, sampling_rate), audio_policy) for a in audios]
        offset = 0
        for count in row_counts:
            self.check_audio_budget(waveforms[offset : offset + count])
            offset += count
        features, window_counts = self.extract_features(waveforms) if audios else (None, [])
        encoded = self._encode(texts, window_counts, transcripts, output_kwargs["text_kwargs"], assistant_spans)
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
        return self._encode(texts, window_counts, transcripts, self._merge_call_kwargs(kwargs)["text_kwargs"])

    def _merge_call_kwargs(self, kwargs: dict) -> dict[str, dict]:
        return self._merge_kwargs(DestaProcessorKwargs, tokenizer_init_kwargs=self.tokenizer.init_kwargs, **kwargs)

    def _encode(
        self,
        texts: list[str],
        window_counts: list[int],
        transcripts: list[str | None],
        text_kwargs: dict,
        assistant_spans: list[list[tuple[int, int]]] | None = None,
    ) -> BatchFeature:
        """Expanded, truncated and padded ids; with `assistant_spans` (character spans of each text's
        `{% generation %}` blocks) also `assistant_masks`, 1 on every token that overlaps a span."""
        options = dict(text_kwargs)
        unsupported = sorted(k for k, v in options.items() if k not in SUPPORTED_TEXT_KWARGS and v not in (None, False))
        if unsupported:
            raise ValueError(f"DestaProcessor does not support the text kwargs {unsupported}.")
        add_special_tokens = options.get("add_special_tokens", True)
        if assistant_spans is None:
            prompt_ids = self.tokenize_prompts(texts, add_special_tokens)
            flags = [[False] * len(ids) for ids in prompt_ids]
        else:
            tokenized = [self._tokenize_text(text, add_special_tokens) for text in texts]
            prompt_ids = [ids for ids, _ in tokenized]
            flags = [_overlaps(token_spans, spans) for (_, token_spans), spans in zip(tokenized, assistant_spans)]
        rows = self._expand_batch(prompt_ids, flags, window_counts, transcripts)
        rows = [
            self._truncate(ids, row_flags, options.get("truncation"), options.get("max_length"))
            for ids, row_flags in rows
        ]
        padding = options.get("padding", True)
        padded = dict(
            self.tokenizer.pad(
                {"input_ids": [ids for ids, _ in rows]},
                padding=padding,
                max_length=options.get("max_length") if padding == "max_length" else None,
                pad_to_multiple_of=options.get("pad_to_multiple_of"),
                padding_side=options.get("padding_side"),
                return_attention_mask=options.get("return_attention_mask"),
            )
        )
        if assistant_spans is not None:
            side = options.get("padding_side") or self.tokenizer.padding_side
            padded["assistant_masks"] = [
                _padded_flags(row_flags, len(padded_ids), side)
                for (_, row_flags), padded_ids in zip(rows, padded["input_ids"])
            ]
        return BatchFeature(padded, tensor_type=options.get("return_tensors"))

    def _truncate(self, ids: list[int], flags: list[bool], truncation, max_length: int | None):
        """Cut `ids` (and their flags) to `max_length` on the tokenizer's truncation side; never through audio."""
        if truncation in (None, False, "do_not_truncate"):
            return ids, flags
        max_length = self.tokenizer.model_max_length if max_length is None else max_length
        if len(ids) <= max_length:
            return ids, flags
        keep = slice(None, max_length) if self.tokenizer.truncation_side != "left" else slice(-max_length, None)
        dropped = ids[max_length:] if keep.start is None else ids[:-max_length]
        if self.audio_token_id in dropped:
            raise ValueError(
                f"Truncating a sequence of {len(ids)} tokens to max_length={max_length} would cut into its audio "
                f"placeholders ({ids.count(self.audio_token_id)} of them); raise max_length or shorten the text."
            )
        return ids[keep], flags[keep]

    def _expand_batch(self, batch_ids, batch_flags, window_counts, transcripts) -> list[tuple[list[int], list[bool]]]:
        expanded, offset = [], 0
        for ids, flags in zip(batch_ids, batch_flags):
            count = sum(1 for token_id in ids if token_id == self.audio_token_id)
            expanded.append(
                self._expand_row(
                    ids, flags, window_counts[offset : offset + count], transcripts[offset : offset + count]
                )
            )
            offset += count
        return expanded

    def _check_audio_count(self, texts: list[str], audios: list, transcripts: list) -> list[int]:
        """Each text's number of audio placeholders, after checking they match the clips and transcripts."""
        row_counts = [FENCED_SPAN.sub("", t).count(self.audio_token) for t in texts]
        markers = sum(row_counts)
        if markers != len(audios):
            raise ValueError(
                f"The text holds {markers} audio placeholders ({self.audio_token!r}) but {len(audios)} audio clips "
                "were given; pass exactly one clip per placeholder, in order."
            )
        if len(transcripts) != len(audios):
            raise ValueError(f"Got {len(transcripts)} transcripts for {len(audios)} audio clips.")
        return row_counts

    # ------------------------------------------------------------------ chat
    def render_conversation(
        self,
        conversation: list[dict],
        add_generation_prompt: bool = True,
        chat_template: str | None = None,
        **template_kwargs,
    ):
        """(prompt text with one `audio_token` per audio, the audio items in order).

        Content is either a list of `{"type": "text"|"audio", ...}` items, or the reference / DeSTA-AQA5M format: a
        string with `<|AUDIO|>` locators plus an `audios` list of `{"audio": path, "text": transcript}`, kept
        verbatim. A template that reads message content as a string (Llama's) gets the items joined with a blank
        line; one that reads content items gets them as items, an audio as `{"type": "audio", "text": audio_token}`.
        Special-token strings typed in message text are fenced as inert text (`make_inert`); keep the returned text
        for `encode_text` / `__call__`. `chat_template` is a template or a template's name (default: the
        processor's); other kwargs (`tools`, `continue_final_message` ...) go to the template.
        """
        text, audio_items, _, unsupported = self._render(
            conversation, add_generation_prompt, chat_template, **template_kwargs
        )
        _refuse_unsupported_items(unsupported)
        return text, audio_items

    def read_chat_audio(
        self,
        conversation: list[dict],
        add_generation_prompt: bool = True,
        chat_template: str | None = None,
        audio_policy: "dict | AudioSourcePolicy | None" = None,
        **template_kwargs,
    ) -> tuple[str, list[dict], list[np.ndarray]]:
        """(prompt text, audio items, their waveforms): `render_conversation`, then the audio read within the
        request's budget, its clip count checked before any clip is decoded and its length before any feature is
        computed. What the pipeline and a server (the vLLM plugin) do with one chat before tokenising it."""
        text, audio_items = self.render_conversation(
            conversation, add_generation_prompt, chat_template, **template_kwargs
        )
        self.check_clip_count(len(audio_items))
        waveforms = [self.load_audio(audio_source(item), audio_policy) for item in audio_items]
        self.check_audio_budget(waveforms)
        return text, audio_items, waveforms

    def _render(self, conversation, add_generation_prompt, chat_template=None, **template_kwargs):
        """(text, audio items, character spans of the `{% generation %}` blocks, item types DeSTA cannot take)."""
        template = self._resolve_chat_template(chat_template)
        as_items = template_reads_content_items(template)
        messages, audio_items, unsupported = [], [], []
        for index, message in enumerate(conversation):
            check_message(message, index)
            if isinstance(message["content"], str):
                text, items = self._render_reference_content(message["content"], message.get("audios") or [])
                content = [{"type": "text", "text": text}] if as_items else text
            else:
                content, items, skipped = self._render_items(message["content"], as_items)
                unsupported += skipped
            messages.append({**message, "content": content})
            audio_items.extend(items)
        if self.default_system_prompt and (not messages or messages[0]["role"] != "system"):
            system = self.default_system_prompt
            messages.insert(
                0, {"role": "system", "content": [{"type": "text", "text": system}] if as_items else system}
            )
        rendered, generation_spans = render_jinja_template(
            conversations=[messages],
            chat_template=template,
            return_assistant_tokens_mask=bool(re.search(r"\{%-?\s*generation\s*-?%\}", template)),
            add_generation_prompt=add_generation_prompt,
            **{**self.tokenizer.special_tokens_map, **template_kwargs},
        )
        spans = generation_spans[0] if generation_spans else []
        return rendered[0], audio_items, spans, unsupported

    def _render_items(self, content: list, as_items: bool) -> tuple:
        """(the content for the template, its audio items, the types of items DeSTA cannot take)."""
        parts, audio_items, unsupported = [], [], []
        for item in content:
            if not isinstance(item, dict) or not isinstance(item.get("type"), str):
                raise ValueError(f"Content items must be {{'type': 'text'|'audio', ...}}; got {item!r}.")
            if item["type"] == "audio":
                audio_source(item)
                parts.append({"type": "audio", "text": self.audio_token})
                audio_items.append(item)
            elif item["type"] == "text":
                text = item.get("text")
                if text is not None and not isinstance(text, str):
                    raise ValueError(f"A text item's 'text' must be a string; got {type(text).__name__}: {item!r}.")
                parts.append({**item, "text": self.make_inert(checked_text(text or "", "A text item"))})
            elif as_items:  # rendered for the template to show; tokenizing it is refused
                parts.append(item)
                unsupported.append(item["type"])
            else:
                _refuse_unsupported_items([item["type"]])
        if as_items:
            return parts, audio_items, unsupported
        return CONTENT_JOINER.join(part["text"] for part in parts), audio_items, unsupported

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
        checked_text(content, "A message's content")
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
            "load_audio_from_video": load_audio_from_video,
            "sanitize_control_tokens": sanitize_control_tokens,
        }
        if any(unsupported.values()):
            raise ValueError(
                f"DestaProcessor.apply_chat_template does not support {[k for k, v in unsupported.items() if v]}."
            )
        if continue_final_message and add_generation_prompt:
            raise ValueError(
                "continue_final_message and add_generation_prompt are not compatible: continue the final message, or "
                "add a header for a new assistant message."
            )
        if continue_final_message and return_assistant_tokens_mask:
            raise ValueError("continue_final_message is not compatible with return_assistant_tokens_mask.")
        chat_template = self._resolve_chat_template(chat_template)
        processor_kwargs, template_kwargs = split_call_kwargs(chat_template, processor_kwargs, kwargs)
        conversations, is_batched = normalized_conversations(checked_messages(conversation))
        rendered = [
            self._render(
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
        texts = [text for text, *_ in rendered]
        if not tokenize:
            texts = [self.visible_text(text) for text in texts]
            return texts if is_batched else texts[0]
        _refuse_unsupported_items([kind for *_, unsupported_types in rendered for kind in unsupported_types])
        if return_assistant_tokens_mask:
            processor_kwargs["assistant_spans"] = [spans for _, _, spans, _ in rendered]
        bos = self.tokenizer.bos_token
        if bos is not None and texts[0].startswith(bos):
            processor_kwargs.setdefault("add_special_tokens", False)  # the template wrote it, as in the mixin
        if return_tensors != "auto":
            processor_kwargs["return_tensors"] = return_tensors
        items = [item for _, row_items, _, _ in rendered for item in row_items]
        encoded = self(
            text=texts,
            audio=[audio_source(item) for item in items],
            transcripts=[item.get("transcript") for item in items],
            **processor_kwargs,
            **({"audio_policy": audio_policy} if audio_policy is not None else {}),
        )
        return encoded if return_dict else encoded["input_ids"]

    def _resolve_chat_template(self, chat_template: str | None) -> str:
        """The template to render: the processor's (its "default" when it has several), one named, or the string."""
        templates = self.chat_template
        if isinstance(templates, dict) and chat_template in templates:
            return templates[chat_template]
        if chat_template is not None:
            return chat_template
        if isinstance(templates, dict):
            if "default" not in templates:
                raise ValueError(
                    f"The processor has several chat templates ({', '.join(templates)}) and none named 'default'; "
                    "pass chat_template= with one of those names."
                )
            return templates["default"]
        if templates is None:
            raise ValueError("This processor has no chat template; pass chat_template=.")
        return templates


def split_windows(waveform: np.ndarray, window_samples: int) -> list[np.ndarray]:
    """A clip as consecutive windows of `window_samples` (30 s), the last one shorter; an empty clip is one window."""
    starts = range(0, max(len(waveform), 1), window_samples)
    return [waveform[start : start + window_samples] for start in starts]


def _refuse_unsupported_items(types: list[str]) -> None:
    if types:
        raise ValueError(
            f"DeSTA takes text and audio content items only; got {sorted(set(types))}. Use "
            "{'type': 'text', 'text': ...} and {'type': 'audio', 'path'|'url'|'audio'|'array': ...}."
        )


def _overlaps(token_spans: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[bool]:
    """For each token's character span, whether it overlaps one of `spans` (the rule of transformers' assistant
    masks: every token holding a character of a `{% generation %}` block)."""
    return [
        any(start < end and start < span_end and end > span_start for span_start, span_end in spans)
        for start, end in token_spans
    ]


def _padded_flags(flags: list[bool], length: int, side: str) -> list[int]:
    padding = [0] * (length - len(flags))
    flags = [int(flag) for flag in flags]
    return padding + flags if side == "left" else flags + padding


def _load_optional_tokenizer(path, subfolder: str = "", **kwargs):
    """Whisper's tokenizer from `path` (or its `subfolder`), or None where there is none."""
    hub_kwargs = {key: kwargs[key] for key in ("revision", "token", "cache_dir", "local_files_only") if key in kwargs}
    try:
        return AutoTokenizer.from_pretrained(path, subfolder=subfolder, **hub_kwargs)
    except (OSError, ValueError, TypeError):
        return None


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
