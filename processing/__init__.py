"""Processor, audio I/O and the inference pipeline of desta-audio."""

from .audio_io import AudioDecodeError, load_audio
from .processing_desta import DEFAULT_SYSTEM_PROMPT, DestaProcessor

__all__ = ["AudioDecodeError", "DEFAULT_SYSTEM_PROMPT", "DestaProcessor", "load_audio"]
