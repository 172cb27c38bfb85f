"""Tiny offline stand-ins for the real components: a Llama-3-style tokenizer trained in milliseconds,
tiny Llama / Whisper models built from configs (real audio made with espeak-ng and sox is the lab's,
`desta_audio.lab.synth`).

Shared by the tests and the benchmarks (`desta_audio.testing`); nothing here touches the network.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from modeling_desta import DestaForConditionalGeneration
from processing import DestaProcessor

LLAMA3_SPLIT_REGEX = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|finetune_right_pad_id|>",
    "<|reserved_special_token_87|>",
]
AUDIO_TOKEN = "<|reserved_special_token_87|>"

# Llama-3.1's chat template, reduced to what the tests need, with {% generation %} around assistant text.
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{% generation %}{{- message['content'] | trim + '<|eot_id|>' }}{% endgeneration %}"
    "{%- else %}"
    "{{- message['content'] | trim + '<|eot_id|>' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}"
)

TRAINING_TEXT = [
    "Focus on the audio clips and instructions.",
    "What is said in the audio? Describe the speaker's emotion and gender.",
    "The quick brown fox jumps over the lazy dog. Hello world, this is a test of the tokenizer.",
    "Imagine you can hear the audio clips. Respond directly to the prompts. The correct answer is:",
    "Choose from the following options: yes, no, maybe. A beep, a tone, speech, music, noise.",
    "one two three four five six seven eight nine ten red green blue cat dog bird",
    "<start_audio> <end_audio> [00:00-00:05] (Gender: Female, Emotion: Happy, Duration: 5s)",
    "Summarise the clip in one sentence. List three facts as JSON with keys answer and reason.",
]


def build_tokenizer(save_dir: str | Path | None = None, vocab_size: int = 600):
    """A byte-level BPE tokenizer with Llama-3's split regex, specials and a chat template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(TRAINING_TEXT * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|finetune_right_pad_id|>",
        chat_template=CHAT_TEMPLATE,
    )
    if save_dir is not None:
        fast.save_pretrained(save_dir)
    return fast


def build_llm(tokenizer, hidden_size: int = 64, num_layers: int = 2, seed: int = 0, save_dir=None):
    """A tiny random Llama whose vocabulary matches `tokenizer`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    if save_dir is not None:
        model.save_pretrained(save_dir)
        tokenizer.save_pretrained(save_dir)
    return model


def build_whisper(d_model: int = 64, encoder_layers: int = 4, decoder_layers: int = 2, seed: int = 0, save_dir=None):
    """A tiny random Whisper (80 mel bins, real 30 s geometry) with its feature extractor."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    torch.manual_seed(seed)
    config = WhisperConfig(
        vocab_size=51865,
        num_mel_bins=80,
        d_model=d_model,
        encoder_layers=encoder_layers,
        decoder_layers=decoder_layers,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=2 * d_model,
        decoder_ffn_dim=2 * d_model,
        max_source_positions=1500,
        max_target_positions=64,
    )
    model = WhisperForConditionalGeneration(config).eval()
    if save_dir is not None:
        model.save_pretrained(save_dir)
        WhisperFeatureExtractor(feature_size=80).save_pretrained(save_dir)
    return model


def write_zero_length_wav(path: str | Path, rate: int = 16000) -> Path:
    """A valid WAV file holding no samples."""
    import soundfile

    soundfile.write(str(path), np.zeros(0, dtype=np.float32), rate)
    return Path(path)


def sine(seconds: float, freq: float = 440.0, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def build_servable_checkpoint(save_dir: str | Path, whisper_dir: str | Path, num_audio_queries: int = 8) -> Path:
    """A tiny DeSTA checkpoint that vLLM's CPU build can serve: a Llama with 32-dim attention heads (the smallest
    vLLM's CPU attention takes) around the given Whisper, saved with its processor."""
    save_dir = Path(save_dir)
    tokenizer = build_tokenizer(save_dir / "tokenizer")
    build_llm(tokenizer, hidden_size=128, save_dir=save_dir / "llm")
    processor = DestaProcessor.from_components(save_dir / "llm", whisper_dir, num_audio_queries=num_audio_queries)
    model = DestaForConditionalGeneration.from_components(
        save_dir / "llm", whisper_dir, processor=processor, qformer_num_hidden_layers=2, qformer_intermediate_size=256
    )
    checkpoint = save_dir / "checkpoint"
    model.save_pretrained(checkpoint)
    processor.save_pretrained(checkpoint)
    return checkpoint
