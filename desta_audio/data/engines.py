"""Engines that write the responses (the backbone LLM) and fill missing transcripts (Whisper).

Every engine implements `ResponseGenerator.generate(conversations, seed) -> list[str]`.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from processing.audio_io import TARGET_SAMPLING_RATE

from ..common import chunks, resolve_device

logger = logging.getLogger(__name__)


class ResponseGenerator(Protocol):
    def generate(self, conversations: Sequence[list[dict[str, str]]], seed: int) -> list[str]: ...


def render_prompt(tokenizer, messages: list[dict[str, str]]) -> str:
    """The model's own chat template with the assistant header. Tokenize it with add_special_tokens=False:
    the template already holds BOS, and adding another shifts every generation."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def stop_token_ids(tokenizer, generation_config) -> list[int]:
    """The generation config's eos ids (Llama-3.1 lists several) plus the tokenizer's eos."""
    configured = generation_config.eos_token_id
    ids = [] if configured is None else [configured] if isinstance(configured, int) else list(configured)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


class TransformersGenerator:
    """Batched generation with LEFT padding, so every prompt ends at the same position and greedy output does not depend on the batch."""

    def __init__(self, model, tokenizer, *, max_new_tokens: int = 512, temperature: float = 0.0, top_p: float = 1.0):
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        config = copy.deepcopy(model.generation_config)
        config.max_new_tokens = max_new_tokens
        config.eos_token_id = stop_token_ids(tokenizer, config)
        config.pad_token_id = tokenizer.pad_token_id
        config.do_sample = temperature > 0
        config.temperature = temperature if temperature > 0 else None
        config.top_p = top_p if temperature > 0 else None
        config.top_k = None
        self.generation_config = config
        self.model = model.eval()
        self.tokenizer = tokenizer

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, *, device: str | None = None, dtype: str = "auto", **options):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype).to(resolve_device(device))
        return cls(model, tokenizer, **options)

    @torch.inference_mode()
    def generate(self, conversations: Sequence[list[dict[str, str]]], seed: int) -> list[str]:
        torch.manual_seed(seed)
        texts = [render_prompt(self.tokenizer, c) for c in conversations]
        batch = self.tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt").to(self.model.device)
        output = self.model.generate(**batch, generation_config=self.generation_config)
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        return [text.strip() for text in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


class VLLMGenerator:
    """The same prompts through vLLM (much faster on GPUs); give it large batches."""

    def __init__(
        self,
        name_or_path: str | Path,
        *,
        max_new_tokens: int = 512,
        temperature: float = 0.0,
        top_p: float = 1.0,
        dtype: str = "auto",
    ):
        try:
            import vllm
        except ImportError as error:
            raise ImportError(
                "--backend vllm needs vLLM installed (pip install vllm); or use --backend transformers"
            ) from error
        from transformers import AutoTokenizer

        self.vllm = vllm
        self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        self.llm = vllm.LLM(model=str(name_or_path), dtype=dtype)
        self.options = {"max_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p}

    def generate(self, conversations: Sequence[list[dict[str, str]]], seed: int) -> list[str]:
        params = self.vllm.SamplingParams(**self.options, seed=seed)
        prompts = [
            {
                "prompt_token_ids": self.tokenizer(render_prompt(self.tokenizer, c), add_special_tokens=False)[
                    "input_ids"
                ]
            }
            for c in conversations
        ]
        return [out.outputs[0].text.strip() for out in self.llm.generate(prompts, params, use_tqdm=False)]


class WhisperTranscriber:
    """Greedy Whisper ASR in batches; clips over 30 s use Whisper's sequential long-form decoding instead of being cut."""

    FRAMES_PER_WINDOW = 3000

    def __init__(self, model, processor, batch_size: int = 8):
        self.model = model.eval()
        self.processor = processor
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, *, device: str | None = None, batch_size: int = 8):
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        model = WhisperForConditionalGeneration.from_pretrained(name_or_path).to(resolve_device(device))
        return cls(model, WhisperProcessor.from_pretrained(name_or_path), batch_size)

    def transcribe(self, waveforms: Sequence[np.ndarray]) -> list[str]:
        return [text for chunk in chunks(waveforms, self.batch_size) for text in self._transcribe_batch(chunk)]

    @torch.inference_mode()
    def _transcribe_batch(self, waveforms: list[np.ndarray]) -> list[str]:
        extract = {"sampling_rate": TARGET_SAMPLING_RATE, "return_tensors": "pt", "return_attention_mask": True}
        inputs = self.processor(waveforms, truncation=False, padding="longest", **extract)
        if inputs["input_features"].shape[-1] < self.FRAMES_PER_WINDOW:  # all short: the usual padded 30 s window
            inputs = self.processor(waveforms, **extract)
        inputs = inputs.to(self.model.device, self.model.dtype)
        ids = self.model.generate(**inputs, do_sample=False, num_beams=1)
        return [text.strip() for text in self.processor.batch_decode(ids, skip_special_tokens=True)]
