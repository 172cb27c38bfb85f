#!/usr/bin/env python3
"""The GPU check behind benchmarks/gpu_check.sh: real-size random weights, no download. Prints one table and JSON.

1. Builds DeSTA2.5-Audio from configs at the release's shapes (whisper-large-v3 encoder+decoder, Llama-3.1-8B,
   a 6-layer Q-Former), random weights, bf16, straight on the GPU.
2. The `audio-text-to-text` pipeline on a 30 s clip at batch 1 and 8: latency, LLM decode tokens/s (a random LLM
   never stops: every row decodes --new-tokens tokens), peak GPU memory. The transcript is given, so Whisper's
   decoder does not run (a random decoder would always decode to its length limit).
3. One training step of the connector at batch 12 (30 s clips, ~300-token sequences as in the release recipe),
   activation checkpointing on, bf16 autocast, AdamW: step time and peak memory.
4. Whisper's greedy ASR on the encoder states of 30 s windows, at the same batch sizes, with a large-v3
   generation config (language detection, then transcribe): the pipeline's lean loop (`transcribe_windows`)
   against `whisper.generate` on the same encoder states, milliseconds per decode step each, and how many windows got the
   same tokens from both.
5. The same model saved, then loaded in 4-bit (bitsandbytes nf4, bf16 compute; Whisper's and the LLM's linear layers
   quantized, the connector float32) through the pipeline at batch 1. Goals: peak GPU memory <= 7 GB and LLM decode
   >= 0.6x the bf16 tokens/s of step 2 (`goals_met`).
6. If vLLM is installed: the `vllm` engine of build_dataset.py on a small random Llama (rows/s, and how many
   greedy rows match the in-process engine), and the real-size model above served by vLLM through this package's
   plugin (bf16; 30 s clips with transcripts, `LLM.chat`): requests/s and generated tokens/s.

`--tiny` (or GPU_CHECK_TINY=1) shrinks every config so the same code runs on a CPU in about a minute.
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch
from transformers import GenerationConfig, WhisperFeatureExtractor
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

from desta_audio import runtime
from desta_audio import testing as tiny_assets
from desta_audio.data.descriptions import generation_messages, load_instructions
from desta_audio.data.engines import TransformersGenerator, VLLMGenerator
from desta_audio.testing.assets import AUDIO_TOKEN
from desta_audio.training import freeze_for_sft
from desta_audio.training.collator import DestaSFTCollator
from modeling_desta import DestaConfig, DestaForConditionalGeneration
from processing import DestaProcessor
from processing.pipeline_desta import DestaAudioTextToTextPipeline

TINY_AUDIO = {
    "d_model": 64, "encoder_layers": 4, "decoder_layers": 2, "encoder_attention_heads": 4,
    "decoder_attention_heads": 4, "encoder_ffn_dim": 128, "decoder_ffn_dim": 128,
}  # fmt: skip
TINY_TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2}  # fmt: skip
CLIP_SECONDS = 30.0
TRAIN_BATCH = 12
ASR_NEW_TOKENS = 64
GOAL_4BIT_PEAK_GB = 7.0  # at batch 1, the release's sizes in 4-bit
GOAL_4BIT_DECODE_VS_BF16 = 0.6
# whisper-large-v3's generation config: 100 language tokens from 50259, then the task tokens; detect, then transcribe.
LARGE_V3_GENERATION = {
    "decoder_start_token_id": 50258, "bos_token_id": 50257, "eos_token_id": 50257, "pad_token_id": 50257,
    "no_timestamps_token_id": 50364, "is_multilingual": True,
    "lang_to_id": {f"<|{code}|>": 50259 + i for i, code in enumerate(dict.fromkeys(TO_LANGUAGE_CODE.values()))},
    "task_to_id": {"translate": 50359, "transcribe": 50360}, "forced_decoder_ids": [[1, None], [2, 50360]],
    "suppress_tokens": [1, 2, 7, 8, 9, 10, 14, 25, 26, 27, 28, 29, 31, 58, 59, 60, 61, 62, 63, 90, 91, 92, 93],
    "begin_suppress_tokens": [220, 50257], "max_length": 448,
}  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", default=os.environ.get("GPU_CHECK_TINY") == "1",
                        help="tiny configs (runs on a CPU); also GPU_CHECK_TINY=1")  # fmt: skip
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--new-tokens", type=int, default=128, help="LLM tokens decoded per row (default: 128)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8], help="pipeline batch sizes")
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=["pipeline", "train", "asr", "4bit", "vllm"], help="parts to skip"
    )
    parser.add_argument("--configs-only", action="store_true", help="build and print the configs, run nothing")
    args = parser.parse_args(argv)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return args


def build_config(tiny: bool):
    """The release's shapes (DestaConfig's defaults: whisper-large-v3, Llama-3.1-8B) or tiny ones."""

    tokenizer = tiny_tokenizer()
    options = {"audio_token_id": tokenizer.convert_tokens_to_ids(AUDIO_TOKEN), "num_audio_queries": 64}
    if tiny:
        options.update(
            audio_config={"model_type": "whisper", "num_mel_bins": 128, **TINY_AUDIO},
            text_config={"model_type": "llama", "vocab_size": len(tokenizer), **TINY_TEXT},
            audio_layer_ids=[0, 1, 2, 3],
            qformer_num_hidden_layers=2,
            qformer_intermediate_size=128,
        )
    return DestaConfig(**options)


def tiny_tokenizer():
    """The tests' Llama-3-style tokenizer (its ids fit any vocabulary; real text quality does not matter here)."""

    tokenizer = tiny_assets.build_tokenizer()
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    return tokenizer


def build_model(config, device: str, dtype: torch.dtype):

    started = time.perf_counter()
    with torch.device(device):
        model = DestaForConditionalGeneration._from_config(config, dtype=dtype).eval()
    return model, time.perf_counter() - started


def build_processor(config):

    extractor = WhisperFeatureExtractor(feature_size=config.audio_config.num_mel_bins)
    return DestaProcessor(extractor, tiny_tokenizer(), audio_token=AUDIO_TOKEN, num_audio_queries=64)


def clip(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(CLIP_SECONDS * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * (200 + 40 * seed) * t) + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


def audio_item(seed: int) -> dict:
    return {"type": "audio", "array": clip(seed), "sampling_rate": 16000, "transcript": "a thirty second test clip"}


def peak_memory_gb(device: str) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.startswith("cuda") else None


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def check_pipeline(model, processor, device: str, batch_sizes: list[int], new_tokens: int) -> list[dict]:

    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    pipe = DestaAudioTextToTextPipeline(model=model, processor=processor, device=torch.device(device))
    chats = [[{"role": "user", "content": [audio_item(i), {"type": "text", "text": "Describe the audio."}]}]
             for i in range(max(batch_sizes))]  # fmt: skip
    options = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False}
    pipe(chats[:1], batch_size=1, **{**options, "max_new_tokens": 2, "min_new_tokens": 2})  # warm-up
    rows = []
    for batch in batch_sizes:
        reset_peak(device)
        synchronize(device)
        started = time.perf_counter()
        prefill_only = pipe(chats[:batch], batch_size=batch, **{**options, "max_new_tokens": 1, "min_new_tokens": 1})
        synchronize(device)
        prefill = time.perf_counter() - started
        started = time.perf_counter()
        outputs = pipe(chats[:batch], batch_size=batch, **options)
        synchronize(device)
        latency = time.perf_counter() - started
        assert len(outputs) == len(prefill_only) == batch
        decode = max(latency - prefill, 1e-9)
        rows.append(
            {
                "part": f"pipeline batch {batch}",
                "latency_s": round(latency, 3),
                "prefill_s": round(prefill, 3),
                "decode_tokens_per_s": round(batch * (new_tokens - 1) / decode, 1),
                "peak_gpu_gb": peak_memory_gb(device),
            }
        )
    return rows


def check_training_step(model, processor, device: str) -> dict:

    freeze_for_sft(model).train()
    model.activation_checkpointing_enable()
    collator = DestaSFTCollator(processor)
    response = " ".join(["the clip holds a steady tone with faint noise"] * 8)
    records = [{"id": str(i), "messages": [{"role": "user", "content": [audio_item(i), {"type": "text", "text":
               "What do you hear?"}]}], "response": response} for i in range(TRAIN_BATCH)]  # fmt: skip
    batch = {k: v.to(device) for k, v in collator(records).items()}
    batch["input_features"] = batch["input_features"].to(model.model.audio_tower.dtype)  # frozen Whisper's dtype
    connector = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(connector, lr=1e-4, betas=(0.9, 0.98), weight_decay=0.01)
    autocast = torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)

    def step() -> float:
        with autocast:
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(connector, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    step()  # warm-up: optimizer state, allocator growth
    reset_peak(device)
    synchronize(device)
    started = time.perf_counter()
    loss = step()
    synchronize(device)
    return {
        "part": f"train step batch {TRAIN_BATCH} (checkpointing)",
        "step_s": round(time.perf_counter() - started, 3),
        "sequence_tokens": int(batch["input_ids"].shape[1]),
        "trainable_parameters_m": round(sum(p.numel() for p in connector) / 1e6, 1),
        "loss": round(loss, 3),
        "peak_gpu_gb": peak_memory_gb(device),
    }


def check_asr(model, processor, device: str, batch_sizes: list[int]) -> list[dict]:
    """The lean greedy loop against `whisper.generate` on the same encoder states (random weights decode until
    their end token or ASR_NEW_TOKENS, the same for both)."""

    whisper = model.model.audio_tower
    whisper.generation_config = GenerationConfig(**LARGE_V3_GENERATION)
    features, _ = processor.extract_features([clip(i) for i in range(max(batch_sizes))])
    with torch.no_grad():
        _, states = model.model.encode_audio(features.to(device, model.dtype), output_last_hidden_state=True)
    model.transcribe_windows(states[:1], max_new_tokens=2)  # warm-up
    rows = []
    for batch in batch_sizes:
        windows = states[:batch]
        lean, lean_s = timed(device, model.transcribe_windows, windows, max_new_tokens=ASR_NEW_TOKENS)
        generated, generate_s = timed(
            device,
            whisper.generate,
            encoder_outputs=BaseModelOutput(last_hidden_state=windows),
            max_new_tokens=ASR_NEW_TOKENS,
        )
        ours = [until_end(row, whisper.generation_config.eos_token_id) for row in lean.tokens]
        theirs = [until_end(row, whisper.generation_config.eos_token_id) for row in generated]
        steps = min(max(len(tokens) for tokens in ours) + 1, ASR_NEW_TOKENS)  # forward passes after the prompt
        rows.append(
            {
                "part": f"asr batch {batch} (lean loop vs generate)",
                "decode_steps": steps,
                "lean_ms_per_step": round(1000 * lean_s / steps, 2),
                "generate_ms_per_step": round(1000 * generate_s / steps, 2),
                "same_tokens_windows": f"{sum(a == b for a, b in zip(ours, theirs))}/{batch}",
            }
        )
    return rows


def check_4bit(folder: str, processor, device: str, new_tokens: int, bf16_rows: list[dict]) -> dict:
    """The saved model loaded in 4-bit through the pipeline at batch 1, against the goals (bf16_rows: step 2's rows)."""
    import bitsandbytes

    started = time.perf_counter()
    config = runtime.quantization_config("4bit", device)
    model = DestaForConditionalGeneration.from_pretrained(folder, quantization_config=config, device_map=device)
    load_s = time.perf_counter() - started
    row = check_pipeline(model, processor, device, [1], new_tokens)[0]
    bf16 = next((r["decode_tokens_per_s"] for r in bf16_rows if r["part"] == "pipeline batch 1"), None)
    ratio = round(row["decode_tokens_per_s"] / bf16, 2) if bf16 else None
    peak = row["peak_gpu_gb"]
    met = None if peak is None or ratio is None else peak <= GOAL_4BIT_PEAK_GB and ratio >= GOAL_4BIT_DECODE_VS_BF16
    return {
        **row,
        "part": "pipeline batch 1, 4-bit nf4",
        "load_s": round(load_s, 1),
        "linear4bit_layers": sum(isinstance(m, bitsandbytes.nn.Linear4bit) for m in model.modules()),
        "decode_vs_bf16": ratio,
        "goals_met": met,
    }


def timed(device: str, work, *args, **kwargs):
    synchronize(device)
    started = time.perf_counter()
    result = work(*args, **kwargs)
    synchronize(device)
    return result, time.perf_counter() - started


def until_end(tokens: torch.Tensor, end: int) -> list[int]:
    tokens = tokens.tolist()
    return tokens[: tokens.index(end)] if end in tokens else tokens


def check_vllm(device: str) -> dict:
    """The vllm engine on a small random Llama (head dim 64, which every vLLM attention backend supports)."""

    if importlib.util.find_spec("vllm") is None:
        return {"part": "vllm engine", "status": "skipped: vLLM is not installed"}
    with tempfile.TemporaryDirectory() as folder:
        tokenizer = tiny_assets.build_tokenizer()
        tiny_assets.build_llm(tokenizer, hidden_size=256, num_layers=4, save_dir=folder)
        pool = load_instructions()
        chats = [generation_messages(f"[00:00-00:0{1 + i % 9}] clip {i} (Duration: 3s)", pool[i]) for i in range(256)]
        engine = VLLMGenerator(folder, max_new_tokens=32, dtype="float32", gpu_memory_utilization=0.3)
        engine.generate(chats[:8], seed=0)
        started = time.perf_counter()
        rows = engine.generate(chats, seed=0)
        seconds = time.perf_counter() - started
        reference = TransformersGenerator.from_pretrained(folder, device=device, max_new_tokens=32)
        expected = [r for batch in range(0, 64, 16) for r in reference.generate(chats[batch : batch + 16], seed=0)]
    return {
        "part": "vllm engine (random Llama, hidden 256, 4 layers)",
        "rows_per_s": round(len(chats) / seconds, 1),
        "greedy_rows_equal_to_transformers": f"{sum(a == b for a, b in zip(rows, expected))}/{len(expected)}",
    }


def check_vllm_serving(folder: str, new_tokens: int, requests: int = 32) -> dict:
    """The saved real-size DeSTA through vLLM and the plugin: `requests` 30 s clips with transcripts, greedy."""
    import io

    import soundfile
    from vllm import LLM, SamplingParams

    def chat(seed: int) -> list[dict]:
        buffer = io.BytesIO()
        soundfile.write(buffer, clip(seed), 16000, format="WAV", subtype="FLOAT")
        audio = {"type": "input_audio", "input_audio": {"data": base64.b64encode(buffer.getvalue()).decode()}}
        return [{"role": "user", "content": [audio, {"type": "text", "text": "Describe the audio."}]}]

    started = time.perf_counter()
    llm = LLM(model=folder, dtype="bfloat16", gpu_memory_utilization=0.45, max_model_len=4096, seed=0)
    start_seconds = time.perf_counter() - started
    params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    transcripts = {"transcripts": [audio_item(0)["transcript"]]}
    llm.chat([chat(i) for i in range(4)], params, use_tqdm=False, mm_processor_kwargs=transcripts)  # warm-up
    chats = [chat(100 + i) for i in range(requests)]
    started = time.perf_counter()
    outputs = llm.chat(chats, params, use_tqdm=False, mm_processor_kwargs=transcripts)
    seconds = time.perf_counter() - started
    generated = sum(len(output.outputs[0].token_ids) for output in outputs)
    return {
        "part": f"vllm serving (real-size DeSTA, bf16, {requests} x 30 s clips)",
        "engine_start_s": round(start_seconds, 1),
        "requests_per_s": round(requests / seconds, 2),
        "generated_tokens_per_s": round(generated / seconds, 1),
    }


def print_table(rows: list[dict]) -> None:
    keys = ["part"] + sorted({k for row in rows for k in row} - {"part"})
    print("| " + " | ".join(keys) + " |")
    print("|" + " --- |" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row.get(k, "")) for k in keys) + " |")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    config = build_config(args.tiny)
    shapes = {
        "whisper": {k: getattr(config.audio_config, k) for k in ("d_model", "encoder_layers", "num_mel_bins")},
        "llm": {k: getattr(config.text_config, k) for k in ("hidden_size", "num_hidden_layers", "vocab_size")},
        "qformer_layers": config.qformer_num_hidden_layers,
        "device": args.device,
        "dtype": str(dtype).removeprefix("torch."),
    }
    if args.configs_only:
        print(json.dumps(shapes, indent=2))
        return 0
    rows = []
    model, seconds = build_model(config, args.device, dtype)
    parameters = sum(p.numel() for p in model.parameters())
    rows.append(
        {"part": "build from configs", "seconds": round(seconds, 1), "parameters_b": round(parameters / 1e9, 2)}
    )
    processor = build_processor(config)
    if "pipeline" not in args.skip:
        rows += check_pipeline(model, processor, args.device, args.batch_sizes, args.new_tokens)
    if "asr" not in args.skip:
        rows += check_asr(model, processor, args.device, args.batch_sizes)
    if "train" not in args.skip:
        rows.append(check_training_step(model, processor, args.device))
    vllm = "vllm" not in args.skip and importlib.util.find_spec("vllm") is not None
    saved = None
    if vllm or "4bit" not in args.skip:
        saved = tempfile.mkdtemp(prefix="gpu_check_desta_")
        model.save_pretrained(saved)
        processor.save_pretrained(saved)
    del model
    reset_peak(args.device)
    if "4bit" not in args.skip:
        rows.append(check_4bit(saved, processor, args.device, args.new_tokens, rows))
        reset_peak(args.device)
    if "vllm" not in args.skip:
        rows.append(check_vllm(args.device))
        if vllm:
            rows.append(check_vllm_serving(saved, args.new_tokens))
    print_table(rows)
    print(json.dumps({"shapes": shapes, "results": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
