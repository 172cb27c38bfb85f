"""Building a `DestaProcessor` from parts: from an LLM and a Whisper (`from_components`), from the authors' release
format (`from_release`), or from a saved folder with Whisper's own tokenizer beside it (`from_pretrained`)."""

import os

from transformers import AutoTokenizer, WhisperFeatureExtractor

from .pipeline_desta import DEFAULT_SYSTEM_PROMPT
from .release_desta import (
    HUB_KWARGS,
    RELEASE_AUDIO_END_TEXT,
    RELEASE_AUDIO_START_TEXT,
    RELEASE_EMPTY_TRANSCRIPT,
    fetch_component,
    fetch_release_tokenizer,
    hub_kwargs,
    is_release_config,
    pick_audio_token,
    read_config_dict,
)

ASR_TOKENIZER_FOLDER = "asr_tokenizer"


class ProcessorAssemblyMixin:
    """The constructors of `DestaProcessor` that fetch or assemble its parts."""

    @classmethod
    def from_components(
        cls, llm: str | os.PathLike, whisper: str | os.PathLike, audio_token: str | None = None, **kwargs
    ) -> "ProcessorAssemblyMixin":
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
    def _from_parts(
        cls, tokenizer, feature_extractor, whisper, audio_token, fetch: dict, **kwargs
    ) -> "ProcessorAssemblyMixin":
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
    ) -> "ProcessorAssemblyMixin":
        """The processor of a checkpoint in the authors' release format, in the reference's prompt format.

        Its `placeholder_token` (which must already be in the LLM's tokenizer), `prompt_size` queries, the
        `<start_audio>`/`<end_audio>` markers, the release's system prompt and `" "` for clips without speech.
        The tokenizer and feature extractor are fetched from `llm_model_id` and `encoder_model_id`.
        """
        fetch = hub_kwargs(kwargs)
        source = str(path_or_repo)
        release, tokenizer = fetch_release_tokenizer(path_or_repo, release, revision, fetch)
        whisper_id = str(release["encoder_model_id"])
        placeholder = release["placeholder_token"]
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
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "ProcessorAssemblyMixin":
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


def _load_optional_tokenizer(path, subfolder: str = "", **kwargs):
    """Whisper's tokenizer from `path` (or its `subfolder`), or None where there is none."""
    hub_kwargs = {key: kwargs[key] for key in ("revision", "token", "cache_dir", "local_files_only") if key in kwargs}
    try:
        return AutoTokenizer.from_pretrained(path, subfolder=subfolder, **hub_kwargs)
    except (OSError, ValueError, TypeError):
        return None
