"""Processor, audio I/O and the inference pipeline of desta-audio: the processor half of the remote-code set
(see `modeling_desta/__init__.py`). Imports nothing of this project outside this folder."""

from .audio_io import AudioDecodeError, AudioTooLongError, load_audio
from .audio_sources import AudioSourceError, AudioSourcePolicy
from .chat_text import DEFAULT_SYSTEM_PROMPT, audio_chat
from .pipeline_desta import DestaAudioTextToTextPipeline, register_pipeline
from .processing_desta import DestaProcessor

register_pipeline()

__all__ = [
    "AudioDecodeError",
    "AudioSourceError",
    "AudioSourcePolicy",
    "AudioTooLongError",
    "DEFAULT_SYSTEM_PROMPT",
    "DestaAudioTextToTextPipeline",
    "DestaProcessor",
    "audio_chat",
    "load_audio",
]
