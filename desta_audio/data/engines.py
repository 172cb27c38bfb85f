"""Engines that write the responses (the backbone LLM) and fill missing transcripts (Whisper).

Every engine implements `ResponseGenerator.generate(conversations, seed) -> list[str]`: `transformers` (in
process, here), `vllm` (offline `vllm.LLM`, here) and `openai` (any OpenAI-compatible server, `engines_openai`).
An engine returns one response per conversation or raises: the builder writes a batch only when all of it is done.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from modeling_desta.compat_desta import cache_field, output_cache
from modeling_desta.transcription_desta import transcribe_clips
from processing.audio_io import TARGET_SAMPLING_RATE
from processing.processing_desta import split_windows

from ..runtime import chunks, resolve_device

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


def common_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """How many leading tokens every sequence shares."""
    length = 0
    for column in zip(*sequences):
        if any(token != column[0] for token in column[1:]):
            break
        length += 1
    return length


def template_prefix_ids(tokenizer, conversation: list[dict[str, str]]) -> list[int]:
    """The tokens of the chat before the last message's own text (system prompt, headers): rendered with two
    different last messages, what stays the same is shared by every row whose chat differs only there."""
    variant = [*conversation[:-1], {**conversation[-1], "content": "\x00"}]
    ids = [
        tokenizer(render_prompt(tokenizer, c), add_special_tokens=False)["input_ids"] for c in (conversation, variant)
    ]
    return ids[0][: common_prefix_length(ids)]


class TransformersGenerator:
    """Batched in-process generation whose greedy output does not depend on the batch.

    With `reuse_prefix` (the default) the tokens every prompt starts with (system prompt and chat scaffold, ~106
    tokens with Llama 3.1's template) are run through the model once; each batch starts from a copy of that KV
    cache, laid out as [shared prefix][padding][row's own tokens] with the padding masked out, so positions and
    attended tokens are those of the unpadded prompt (tested equal to the plain path). Without it, or when a batch
    does not share the prefix, prompts are LEFT-padded and run whole.
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        max_new_tokens: int = 512,
        temperature: float = 0.0,
        top_p: float = 1.0,
        reuse_prefix: bool = True,
    ):
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
        self.reuse_prefix = reuse_prefix
        self.prefix_ids: list[int] = []
        self.prefix_cache = None

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
        rows = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        if self.reuse_prefix and self._prefix_fits(rows, conversations[0]):
            inputs = self._inputs_after_prefix(rows)
        else:
            inputs = self.tokenizer.pad({"input_ids": rows}, return_tensors="pt").to(self.model.device)
        output = self.model.generate(**inputs, generation_config=self.generation_config)
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        return [text.strip() for text in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]

    def _prefix_fits(self, rows: list[list[int]], conversation: list[dict[str, str]]) -> bool:
        """Whether every row starts with the cached prefix (and has tokens after it); computes it when needed."""

        def fits(prefix):
            return bool(prefix) and all(len(r) > len(prefix) and r[: len(prefix)] == prefix for r in rows)

        if not fits(self.prefix_ids):
            prefix = template_prefix_ids(self.tokenizer, conversation)
            if not fits(prefix):
                return False
            ids = torch.tensor([prefix], device=self.model.device)
            self.prefix_cache = output_cache(self.model(input_ids=ids, use_cache=True))
            self.prefix_ids = prefix
            logger.info("reusing the KV cache of a %d-token prompt prefix shared by every row", len(prefix))
        return True

    def _inputs_after_prefix(self, rows: list[list[int]]) -> dict:
        """[prefix][padding][suffix] ids and mask, with a copy of the prefix cache repeated for every row."""
        shared = len(self.prefix_ids)
        width = max(len(r) for r in rows) - shared
        input_ids = torch.full((len(rows), shared + width), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        input_ids[:, :shared] = torch.tensor(self.prefix_ids)
        attention_mask[:, :shared] = 1
        for index, row in enumerate(rows):
            suffix = row[shared:]
            input_ids[index, shared + width - len(suffix) :] = torch.tensor(suffix)
            attention_mask[index, shared + width - len(suffix) :] = 1
        cache = copy.deepcopy(self.prefix_cache)
        cache.batch_repeat_interleave(len(rows))
        device = self.model.device
        return {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device), **cache_field(cache)}


class VLLMGenerator:
    """The same token ids through offline `vllm.LLM` (one GPU node; prefix caching on); give it large batches.

    `engine_options` go to `vllm.LLM` as they are (e.g. `tensor_parallel_size=8`, `gpu_memory_utilization`);
    `llm` uses an engine already built instead (a notebook's, or one shared by several builds).
    """

    def __init__(
        self,
        name_or_path: str | Path,
        *,
        max_new_tokens: int = 512,
        temperature: float = 0.0,
        top_p: float = 1.0,
        dtype: str = "auto",
        llm=None,
        **engine_options,
    ):
        try:
            import vllm
        except ImportError as error:
            raise ImportError(
                "--engine vllm needs vLLM installed (pip install vllm); or use --engine transformers or openai"
            ) from error
        from transformers import AutoTokenizer, GenerationConfig

        self.vllm = vllm
        self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        try:
            generation_config = GenerationConfig.from_pretrained(name_or_path)
        except OSError:
            generation_config = GenerationConfig()
        if llm is None:
            llm = vllm.LLM(model=str(name_or_path), dtype=dtype, enable_prefix_caching=True, **engine_options)
        self.llm = llm
        self.options = {
            "max_tokens": max_new_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "stop_token_ids": stop_token_ids(self.tokenizer, generation_config),
            "skip_special_tokens": True,
        }

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
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        # Decoded here, with the tokenizer the other engines use: vLLM's incremental detokenizer ends a reply cut
        # mid-character with U+FFFD where a whole-sequence decode does not, and rows must not depend on the engine.
        return [self.tokenizer.decode(o.outputs[0].token_ids, skip_special_tokens=True).strip() for o in outputs]


class WhisperTranscriber:
    """Whisper speech recognition for the dataset builder's `--asr-model`, through the project's one transcription
    path (`modeling_desta.transcription_desta.transcribe_clips`): greedy, 30 s windows (a longer clip is transcribed
    window by window and joined, never cut), and the pipeline's speech/no-speech rule, so a tone or noise clip gets
    an empty transcript instead of a hallucinated "You" in its seed description."""

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
        """One transcript per clip ("" where Whisper hears no speech), `batch_size` clips per encoder pass."""
        return [text for chunk in chunks(waveforms, self.batch_size) for text in self._transcribe_batch(chunk)]

    @torch.inference_mode()
    def _transcribe_batch(self, waveforms: list[np.ndarray]) -> list[str]:
        extractor = self.processor.feature_extractor
        windows = [split_windows(waveform, extractor.n_samples) for waveform in waveforms]
        features = extractor(
            [window for clip in windows for window in clip],
            sampling_rate=TARGET_SAMPLING_RATE,
            return_tensors="pt",
            padding="max_length",
        ).input_features.to(self.model.device, self.model.dtype)
        states = self.model.get_encoder()(features).last_hidden_state
        counts = [len(clip) for clip in windows]
        return transcribe_clips(self.model, self.processor.tokenizer, states, waveforms, counts, extractor.n_samples)
