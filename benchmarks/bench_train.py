#!/usr/bin/env python3
"""Training throughput and peak memory per step, with and without activation checkpointing.

Runs the real training path (desta_audio.training: collator -> TRL SFTTrainer with its fused LM head ->
AdamW on the connector) for a model built from configs (random weights, no download) sized for a CPU:
Whisper with tiny.en's shapes (d_model 384, 4 encoder layers, 80 mel bins), a Llama (hidden 512, 8 layers,
8 heads, 2 KV heads, the tests' tiny tokenizer), a 2-layer Q-Former with 64 queries. Each clip is a 5 s tone with
a 20-word transcript and a response of about 60 words: about 240 tokens a sequence.

Each variant runs in its own process so that peak memory is its own: on CPU the peak resident set size and
its rise over the state before training (`ru_maxrss`), on CUDA `torch.cuda.max_memory_allocated` per step.
Per step it also reports the median time of each stage: `collate` (the collator on one batch: audio, features,
tokens), `forward` (TRL's `compute_loss`: encoder, connector, LLM, fused loss) and `backward` (the rest of the
training step). Prints one JSON object.

    python benchmarks/bench_train.py [--steps 6] [--batch-size 4] [--llm-layers 8] [--device cpu|cuda]
        [--checkpointing off|on|both] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import (
    LlamaConfig,
    TrainerCallback,
    WhisperConfig,
    WhisperFeatureExtractor,
)

from desta_audio import testing as tiny_assets
from desta_audio.training import DestaScriptArguments, build_trainer, freeze_for_sft
from modeling_desta import DestaConfig, DestaForConditionalGeneration
from processing import DestaProcessor

REPO_ROOT = Path(__file__).resolve().parents[1]


TRANSCRIPT = " ".join(["the quick brown fox jumps over the lazy dog"] * 2) + " twice"
RESPONSE = " ".join(["The clip holds a steady tone at one pitch, with no speech and no music."] * 4)


def build_model(args, tokenizer) -> DestaForConditionalGeneration:
    whisper = WhisperConfig(
        num_mel_bins=80, d_model=384, encoder_layers=4, decoder_layers=4, encoder_attention_heads=6,
        decoder_attention_heads=6, encoder_ffn_dim=1536, decoder_ffn_dim=1536, vocab_size=51864,
    )  # fmt: skip
    llm = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=args.llm_hidden, intermediate_size=2 * args.llm_hidden,
        num_hidden_layers=args.llm_layers, num_attention_heads=8, num_key_value_heads=2,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    config = DestaConfig(
        audio_config=whisper.to_dict(),
        text_config=llm.to_dict(),
        audio_token_id=tokenizer.convert_tokens_to_ids(tiny_assets.AUDIO_TOKEN),
        num_audio_queries=args.queries,
        qformer_num_hidden_layers=args.qformer_layers,
        qformer_intermediate_size=1536,
    )
    torch.manual_seed(0)
    return freeze_for_sft(DestaForConditionalGeneration(config))


def records(count: int) -> list[dict]:
    clip = {"array": tiny_assets.sine(5.0, freq=440), "sampling_rate": 16000}
    return [
        {
            "id": str(i),
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "audio", **clip, "transcript": TRANSCRIPT},
                        {"type": "text", "text": "Describe the audio."},
                    ],
                }
            ],
            "response": RESPONSE,
        }
        for i in range(count)
    ]


class StepMeter(TrainerCallback):
    """Wall time, process CPU time, minor page faults and (CUDA) peak memory of every optimiser step.

    On a machine shared with other jobs the CPU time of this process is the steadier measure (wall time also
    counts the time other processes hold the cores); page faults show allocator churn (large buffers mapped and
    unmapped at every step).
    """

    def __init__(self, device: str):
        self.device = device
        self.seconds, self.cpu_seconds, self.page_faults, self.peaks = [], [], [], []

    def on_step_begin(self, args, state, control, **kwargs):
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.started = (time.perf_counter(), time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt)

    def on_step_end(self, args, state, control, **kwargs):
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peaks.append(torch.cuda.max_memory_allocated() / 2**20)
        wall, cpu, faults = self.started
        self.seconds.append(time.perf_counter() - wall)
        self.cpu_seconds.append(time.process_time() - cpu)
        self.page_faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)


class SavedActivations:
    """Bytes that autograd keeps for the backward pass during one step (unique storages, any device).

    Layers under activation checkpointing keep their own (much smaller) record through inner hooks, so this
    counts what checkpointing leaves alive: the deterministic half of "peak memory per step" on CPU, where the
    resident set size also carries allocator noise.
    """

    def __init__(self):
        self.storages: dict[int, int] = {}
        self.per_step_mb: list[float] = []

    def pack(self, tensor):
        storage = tensor.untyped_storage()
        self.storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    def wrap(self, training_step):
        def measured_step(*args, **kwargs):
            self.storages.clear()
            with torch.autograd.graph.saved_tensors_hooks(self.pack, lambda tensor: tensor):
                loss = training_step(*args, **kwargs)
            self.per_step_mb.append(sum(self.storages.values()) / 2**20)
            return loss

        return measured_step


class StageTimer:
    """Wall time of every call of a wrapped function (collator, `compute_loss`, `training_step`)."""

    def __init__(self):
        self.seconds: dict[str, list[float]] = {}

    def wrap(self, name: str, function):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            result = function(*args, **kwargs)
            self.seconds.setdefault(name, []).append(time.perf_counter() - start)
            return result

        return timed

    def medians(self, skip: int) -> dict[str, float]:
        median = {name: statistics.median(values[skip:]) for name, values in self.seconds.items()}
        return {
            "collate": round(median["collate"], 4),
            "forward": round(median["forward"], 4),
            "backward": round(median["training_step"] - median["forward"], 4),
        }


def current_rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def run_variant(args) -> dict:
    from desta_audio.training import DestaSFTConfig

    checkpointing = args.variant == "on"
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    tokenizer = tiny_assets.build_tokenizer()
    processor = DestaProcessor(
        WhisperFeatureExtractor(feature_size=80),
        tokenizer,
        audio_token=tiny_assets.AUDIO_TOKEN,
        num_audio_queries=args.queries,
    )
    model = build_model(args, tokenizer).to(args.device)
    training_args = DestaSFTConfig(
        output_dir=str(work), max_steps=args.warmup + args.steps, per_device_train_batch_size=args.batch_size,
        learning_rate=1e-4, bf16=args.device == "cuda", activation_checkpointing=checkpointing, save_strategy="no",
        report_to="none", disable_tqdm=True, logging_steps=1000, use_cpu=args.device == "cpu",
    )  # fmt: skip
    import datasets

    dataset = datasets.Dataset.from_list(records(args.batch_size * (args.warmup + args.steps)))
    meter = StepMeter(args.device)
    trainer = build_trainer(model, processor, training_args, DestaScriptArguments(), dataset, callbacks=[meter])
    saved, stages = SavedActivations(), StageTimer()
    trainer.data_collator = stages.wrap("collate", trainer.data_collator)
    trainer.compute_loss = stages.wrap("forward", trainer.compute_loss)
    trainer.training_step = saved.wrap(stages.wrap("training_step", trainer.training_step))
    rss_before = current_rss_mb()
    trainer.train()
    batch = trainer.data_collator(list(dataset.select(range(args.batch_size))))
    step_seconds = statistics.median(meter.seconds[args.warmup :])
    result = {
        "activation_checkpointing": checkpointing,
        "samples_per_s": round(args.batch_size / step_seconds, 3),
        "step_s_median": round(step_seconds, 3),
        "step_cpu_s_median": round(statistics.median(meter.cpu_seconds[args.warmup :]), 3),
        "step_page_faults_median": int(statistics.median(meter.page_faults[args.warmup :])),
        "stages_s": stages.medians(args.warmup),
        "sequence_tokens": int(batch["input_ids"].shape[1]),
        "saved_for_backward_mb": round(max(saved.per_step_mb[args.warmup :]), 1),
        "parameters_total_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "parameters_trainable_m": round(sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6, 2),
    }
    if args.device == "cuda":
        result["peak_step_memory_mb"] = round(max(meter.peaks[args.warmup :]), 1)
    else:
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result["peak_rss_mb"] = round(peak_rss, 1)
        result["peak_rss_rise_during_training_mb"] = round(peak_rss - rss_before, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="measured optimiser steps per variant")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured first steps")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--llm-hidden", type=int, default=512)
    parser.add_argument("--llm-layers", type=int, default=8)
    parser.add_argument("--queries", type=int, default=64, help="connector vectors per 30 s window")
    parser.add_argument("--qformer-layers", type=int, default=2)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--checkpointing", choices=["off", "on", "both"], default="both")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument(
        "--variant", choices=["on", "off"], help=argparse.SUPPRESS
    )  # internal: one variant, in this process
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    results = []
    for variant in ("off", "on") if args.checkpointing == "both" else (args.checkpointing,):
        output = subprocess.run(
            [sys.executable, __file__, *sys.argv[1:], "--variant", variant], capture_output=True, text=True, check=True
        )
        results.append(json.loads(output.stdout.strip().splitlines()[-1]))
    report = {
        "benchmark": "train_step",
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "measured_steps": args.steps,
        "model": {
            "whisper": "tiny.en shapes (d 384, 4 layers)",
            "llm": f"llama hidden {args.llm_hidden}, {args.llm_layers} layers",
            "queries": args.queries,
            "qformer_layers": args.qformer_layers,
        },
        "results": results,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
