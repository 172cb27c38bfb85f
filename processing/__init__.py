"""Processor, audio I/O and the inference pipeline of desta-audio: the processor half of the remote-code set
(see `modeling_desta/__init__.py`). Imports nothing of this project outside this folder."""

from .audio_io import AudioDecodeError, load_audio
from .pipeline_desta import DestaAudioTextToTextPipeline, register_pipeline
from .processing_desta import DEFAULT_SYSTEM_PROMPT, DestaProcessor

register_pipeline()

__all__ = [
    "AudioDecodeError",
    "DEFAULT_SYSTEM_PROMPT",
    "DestaAudioTextToTextPipeline",
    "DestaProcessor",
    "load_audio",
]
