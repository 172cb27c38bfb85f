#!/usr/bin/env python3
"""Rows per second of the self-generation loop (decode audio, describe, generate, write) at batch 1 vs 16.

The backbone is a random Llama built from a config (no download), sized for a CPU:
hidden 256, intermediate 512, 4 layers, 4 attention heads (head dim 64), 2 KV heads, the vocabulary of
the tests' tiny Llama-3-style tokenizer (535 tokens); about 2.6 M parameters, float32. Prompts are about
150 tokens. A random model practically never emits its end token, so every row generates
--max-new-tokens tokens and the batch sizes do the same work. Prints one JSON object.

    python benchmarks/bench_build_dataset.py [--rows 32] [--max-new-tokens 32] [--batch-sizes 1 16]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import soundfile
import torch

from desta_audio import testing as tiny_assets
from desta_audio.data.builder import BuildOptions, build
from desta_audio.data.descriptions import load_instructions
from desta_audio.data.engines import TransformersGenerator
from desta_audio.data.sources import SourceColumns, folder_source

REPO_ROOT = Path(__file__).resolve().parents[1]


HIDDEN, LAYERS = 256, 4


def make_corpus(folder: Path, rows: int) -> Path:
    """`rows` sine clips of 1-4 s with speech-like metadata, so every description has text and attributes."""
    lines = []
    for i in range(rows):
        name = f"clip_{i:04d}.wav"
        soundfile.write(folder / name, tiny_assets.sine(1.0 + i % 4, freq=200 + 10 * i), 16000)
        lines.append(
            {"file": name, "text": f"sample number {i} of the benchmark", "gender": "Female", "speaking_speed": "Fast"}
        )
    metadata = folder / "meta.jsonl"
    metadata.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return metadata


def time_build(generator, metadata: Path, batch_size: int, output_dir: Path) -> dict:
    source = folder_source(metadata.parent, metadata, "file", "bench")
    columns = SourceColumns(audio="file", transcript="text", attributes=("gender", "speaking_speed"))
    options = BuildOptions(
        output_dir=output_dir, instructions=load_instructions(), batch_size=batch_size, progress=False
    )
    started = time.perf_counter()
    summary = build(source, columns, generator, options)
    seconds = time.perf_counter() - started
    return {
        "batch_size": batch_size,
        "rows": summary.written,
        "seconds": round(seconds, 3),
        "rows_per_s": round(summary.written / seconds, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=32, help="clips per measured run")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="tokens generated per row")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16], help="batch sizes to compare")
    args = parser.parse_args()

    tokenizer = tiny_assets.build_tokenizer()
    model = tiny_assets.build_llm(tokenizer, hidden_size=HIDDEN, num_layers=LAYERS)
    generator = TransformersGenerator(model, tokenizer, max_new_tokens=args.max_new_tokens)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        metadata = make_corpus(tmp, args.rows)
        time_build(generator, metadata, max(args.batch_sizes), tmp / "warmup")
        results = [time_build(generator, metadata, b, tmp / f"batch_{b}") for b in args.batch_sizes]
    report = {
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "backbone": {
            "hidden_size": HIDDEN,
            "intermediate_size": 2 * HIDDEN,
            "num_hidden_layers": LAYERS,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "vocab_size": len(tokenizer),
            "parameters": sum(p.numel() for p in model.parameters()),
        },
        "max_new_tokens": args.max_new_tokens,
        "results": results,
        "speedup_largest_vs_smallest": round(results[-1]["rows_per_s"] / results[0]["rows_per_s"], 2),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
