#!/usr/bin/env python3
"""Rows per second of the self-generation loop, by engine, batch size and concurrency. Prints one JSON object.

In process (`transformers` engine): the builder end to end (decode audio, describe, generate, write) at each batch
size, with and without the shared-prefix KV cache, and the generation split into prefill (a 1-token generate of
the same batch) and decode (the rest). `openai` engine: the same rows through `transformers serve` on
127.0.0.1 at each concurrency, with and without `--continuous-batching` (skipped with --no-server).

The backbone is a random Llama built from a config (no download), sized for a CPU: hidden 256, intermediate 512,
4 layers, 4 heads (head dim 64), 2 KV heads, the tests' tiny Llama-3-style tokenizer (535 tokens); float32.
A random model practically never emits its end token, so every row generates --max-new-tokens tokens.

    python benchmarks/bench_build_dataset.py [--rows 64] [--max-new-tokens 32] [--batch-sizes 1 16 64]
        [--concurrency 1 4 16] [--repeats 3] [--no-server]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import soundfile
import torch

from desta_audio import testing as tiny_assets
from desta_audio.data.builder import BuildOptions, build
from desta_audio.data.descriptions import generation_messages, load_instructions, pick_instruction, seed_description
from desta_audio.data.engines import TransformersGenerator, render_prompt
from desta_audio.data.engines_openai import OpenAIGenerator
from desta_audio.data.sources import SourceColumns, folder_source
from desta_audio.runtime import chunks
from desta_audio.testing.servers import console_script, free_port, wait_until_healthy

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


def bench_conversations(rows: int) -> list[list[dict[str, str]]]:
    pool = load_instructions()
    descriptions = [
        seed_description(1.0 + i % 4, f"sample number {i} of the benchmark", {"gender": "Female"}) for i in range(rows)
    ]
    return [generation_messages(d, pick_instruction(pool, 0, str(i))) for i, d in enumerate(descriptions)]


def time_build(generator, metadata: Path, batch_size: int, output_dir: Path) -> dict:
    source = folder_source(metadata.parent, metadata, "file", "bench")
    columns = SourceColumns(audio="file", transcript="text", attributes=("gender", "speaking_speed"))
    options = BuildOptions(
        output_dir=output_dir, instructions=load_instructions(), batch_size=batch_size, progress=False
    )
    started = time.perf_counter()
    summary = build(source, columns, generator, options)
    seconds = time.perf_counter() - started
    return {"rows": summary.written, "seconds": round(seconds, 3), "rows_per_s": round(summary.written / seconds, 2)}


def time_generation(generator: TransformersGenerator, chats, batch_size: int, repeats: int) -> dict:
    """Generation alone, best of `repeats`: the full answers, and a 1-token generate of the same batches (prefill
    + one step). Best-of keeps the noise of a shared machine out of the comparison."""
    full_tokens = generator.generation_config.max_new_tokens

    def run(max_new_tokens: int) -> float:
        generator.generation_config.max_new_tokens = max_new_tokens
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            for batch in chunks(chats, batch_size):
                generator.generate(batch, seed=0)
            best = min(best, time.perf_counter() - started)
        return best

    try:
        prefill = run(1)
        total = run(full_tokens)
    finally:
        generator.generation_config.max_new_tokens = full_tokens
    decode = total - prefill
    return {
        "generate_s": round(total, 3),
        "prefill_s": round(prefill, 3),
        "decode_s": round(decode, 3),
        "prefill_share": round(prefill / total, 3),
        "rows_per_s": round(len(chats) / total, 2),
        "decode_tokens_per_s": round(len(chats) * (full_tokens - 1) / decode, 1) if decode > 0 else None,
    }


def in_process_results(
    model, tokenizer, metadata: Path, chats, batch_sizes, max_new_tokens, repeats, tmp: Path
) -> list:
    """Without and with the prefix cache back to back at each batch size, so a change of machine load between
    them does not pose as a speed-up."""
    generators = {
        reuse: TransformersGenerator(model, tokenizer, max_new_tokens=max_new_tokens, reuse_prefix=reuse)
        for reuse in (False, True)
    }
    for reuse, generator in generators.items():
        time_build(generator, metadata, max(batch_sizes), tmp / f"warmup_{reuse}")
    results = []
    for batch_size in batch_sizes:
        for reuse, generator in generators.items():
            row = {"engine": "transformers", "prefix_cache": reuse, "batch_size": batch_size}
            row["build"] = time_build(generator, metadata, batch_size, tmp / f"build_{reuse}_{batch_size}")
            row["generation"] = time_generation(generator, chats, batch_size, repeats)
            results.append(row)
    return results


def start_server(model_dir: Path, port: int, continuous_batching: bool, log: Path) -> subprocess.Popen:
    command = [console_script("transformers"), "serve", str(model_dir), "--host", "127.0.0.1", "--port", str(port),
               "--device", "cpu", "--continuous-batching" if continuous_batching else "--no-continuous-batching"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with log.open("w") as handle:
        server = subprocess.Popen(command, env=env, stdout=handle, stderr=handle, start_new_session=True)
    try:
        wait_until_healthy(f"http://127.0.0.1:{port}/health", server, log, 180, "transformers serve", poll_s=0.3)
    except (RuntimeError, TimeoutError):
        stop_server(server)
        raise
    return server


def stop_server(server: subprocess.Popen) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def server_results(model_dir: Path, chats, concurrencies, max_new_tokens: int, tmp: Path) -> list:
    results = []
    for continuous in (False, True):
        port = free_port()
        try:
            server = start_server(model_dir, port, continuous, tmp / f"serve_{continuous}.log")
        except RuntimeError as error:
            results.append({"engine": "openai", "continuous_batching": continuous, "error": str(error)[-500:]})
            continue
        try:
            for concurrency in concurrencies:
                engine = OpenAIGenerator(
                    f"http://127.0.0.1:{port}/v1", str(model_dir), max_new_tokens=max_new_tokens,
                    max_concurrency=concurrency, max_retries=0,
                )  # fmt: skip
                engine.generate(chats[:concurrency], seed=0)  # warm-up
                started = time.perf_counter()
                for batch in chunks(chats, max(concurrency, 16)):
                    engine.generate(batch, seed=0)
                seconds = time.perf_counter() - started
                engine.close()
                results.append(
                    {
                        "engine": "openai",
                        "server": "transformers serve",
                        "continuous_batching": continuous,
                        "concurrency": concurrency,
                        "rows": len(chats),
                        "seconds": round(seconds, 3),
                        "rows_per_s": round(len(chats) / seconds, 2),
                    }
                )
        finally:
            stop_server(server)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=64, help="clips per measured run")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="tokens generated per row")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64], help="in-process batch sizes")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16], help="openai requests in flight")
    parser.add_argument("--repeats", type=int, default=3, help="in-process generation: best of this many runs")
    parser.add_argument("--no-server", action="store_true", help="skip the transformers serve measurements")
    args = parser.parse_args()

    tokenizer = tiny_assets.build_tokenizer()
    model = tiny_assets.build_llm(tokenizer, hidden_size=HIDDEN, num_layers=LAYERS)
    chats = bench_conversations(args.rows)
    prompt_tokens = [len(tokenizer(render_prompt(tokenizer, c), add_special_tokens=False).input_ids) for c in chats]
    prefix = TransformersGenerator(model, tokenizer)
    prefix.generate(chats[:2], seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        metadata = make_corpus(tmp, args.rows)
        results = in_process_results(
            model, tokenizer, metadata, chats, args.batch_sizes, args.max_new_tokens, args.repeats, tmp
        )
        if not args.no_server:
            model.save_pretrained(tmp / "model")
            tokenizer.save_pretrained(tmp / "model")
            results += server_results(tmp / "model", chats, args.concurrency, args.max_new_tokens, tmp)
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
        "rows": args.rows,
        "prompt_tokens_mean": round(sum(prompt_tokens) / len(prompt_tokens), 1),
        "shared_prefix_tokens": len(prefix.prefix_ids),
        "max_new_tokens": args.max_new_tokens,
        "results": results,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
