"""Transcripts for served requests that bring none: the checkpoint's own Whisper, in vLLM's API-server process.

vLLM must know a prompt's length before it schedules it, and a DeSTA prompt holds each clip's transcript, so the
transcript is made where prompts are made: in the multimodal processor, before the request reaches the engine.
This runs the same rule as `pipeline()` (`transcribe_clips`: the lean greedy loop and the speech/no-speech rule) on
Whisper's encoder output, so an audio-only request gets the pipeline's transcript. The encoder therefore runs twice
for such a request (here for ASR, in the worker for the connector's taps); a request that brings its transcripts
skips all of it. `DESTA_ASR_DEVICE` (default `cpu`) and `DESTA_ASR_DTYPE` (default `float32`) choose where.
"""

import json
import logging
import os
import threading

import torch
from safetensors import safe_open
from transformers import GenerationConfig, WhisperForConditionalGeneration

from modeling_desta.configuration_desta import DestaConfig
from modeling_desta.modeling_desta import encode_taps
from modeling_desta.transcription_desta import transcribe_clips

logger = logging.getLogger(__name__)


class FrontendTranscriber:
    """A checkpoint's Whisper and Whisper tokenizer, transcribing clips from their log-mel windows."""

    def __init__(self, path: str, asr_tokenizer, device: str = "cpu", dtype: torch.dtype = torch.float32):
        if asr_tokenizer is None:
            raise ValueError(
                f"{path} has no Whisper tokenizer (asr_tokenizer/), so the server cannot transcribe: send a "
                "transcript with every clip (mm_processor_kwargs={'transcripts': [...]}, '' for none)."
            )
        self.whisper = whisper_from_checkpoint(path, dtype).to(device)
        self.tokenizer = asr_tokenizer
        self.device, self.dtype = device, dtype
        self._lock = threading.Lock()  # one transcription at a time: the renderer may call from several threads

    @torch.no_grad()
    def transcribe(
        self, features: torch.Tensor, waveforms: list, window_counts: list[int], window_samples: int, wanted: list[bool]
    ) -> list[str | None]:
        """Each wanted clip's transcript (None for the others), from its windows' features."""
        rows = [row for clip, count in enumerate(window_counts) for row in [clip] * count]
        keep = [index for index, clip in enumerate(rows) if wanted[clip]]
        states = torch.zeros(0)
        with self._lock:
            if keep:
                inputs = features[keep].to(self.device, self.dtype)
                _, kept_states = encode_taps(self.whisper.get_encoder(), inputs, [], output_last_hidden_state=True)
                states = torch.zeros((len(rows), *kept_states.shape[1:]), dtype=kept_states.dtype, device=self.device)
                states[keep] = kept_states
            return transcribe_clips(
                self.whisper, self.tokenizer, states, waveforms, window_counts, window_samples, wanted=wanted
            )


_TRANSCRIBERS: dict[str, FrontendTranscriber] = {}
_LOADING = threading.Lock()


def frontend_transcriber(path: str, asr_tokenizer) -> FrontendTranscriber:
    """One transcriber per checkpoint and process, loaded by the first request that needs it."""
    with _LOADING:
        if path not in _TRANSCRIBERS:
            _TRANSCRIBERS[path] = _load(path, asr_tokenizer)
        return _TRANSCRIBERS[path]


def _load(path: str, asr_tokenizer) -> FrontendTranscriber:
    device = os.environ.get("DESTA_ASR_DEVICE", "cpu")
    dtype = getattr(torch, os.environ.get("DESTA_ASR_DTYPE", "float32"))
    logger.info("Loading %s's Whisper for transcription on %s (%s)", path, device, dtype)
    return FrontendTranscriber(path, asr_tokenizer, device, dtype)


AUDIO_TOWER_PREFIX = "model.audio_tower."


def whisper_from_checkpoint(
    path: str | os.PathLike, dtype: torch.dtype = torch.float32
) -> WhisperForConditionalGeneration:
    """The Whisper (encoder and decoder, with its own generation config) inside a saved DeSTA checkpoint, without
    loading the LLM: what a process that only transcribes (vLLM's API server) needs. Reads only the
    `model.audio_tower.*` tensors of the checkpoint's safetensors files."""
    config = DestaConfig.from_pretrained(path)
    with torch.device("meta"):
        whisper = WhisperForConditionalGeneration(config.audio_config)
    state = {}
    for shard in _safetensors_files(path):
        with safe_open(shard, framework="pt") as tensors:
            for name in tensors.keys():
                if name.startswith(AUDIO_TOWER_PREFIX):
                    state[name[len(AUDIO_TOWER_PREFIX) :]] = tensors.get_tensor(name).to(dtype)
    if "proj_out.weight" not in state and "model.decoder.embed_tokens.weight" in state:
        state["proj_out.weight"] = state["model.decoder.embed_tokens.weight"]  # tied in Whisper checkpoints
    whisper.load_state_dict(state, strict=True, assign=True)
    if config.asr_generation_config:
        whisper.generation_config = GenerationConfig.from_dict(config.asr_generation_config)
    return whisper.eval()


def _safetensors_files(path) -> list[str]:
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as handle:
            shards = sorted(set(json.load(handle)["weight_map"].values()))
        return [os.path.join(path, shard) for shard in shards]
    single = os.path.join(path, "model.safetensors")
    if not os.path.isfile(single):
        raise FileNotFoundError(f"{path} holds no model.safetensors (or index): save the model with save_pretrained.")
    return [single]
